//! Root filesystem images: the store under the data directory (`images/<name>/rootfs` and its
//! `image.json`), Debian images built with `mmdebstrap`, and OCI archives imported with `umoci`.
//!
//! An image is read-only once it is in the store: boxes see it through an idmapped, read-only
//! mount below their own disk (see `local::root`), so no box can change it. `host` is not in the
//! store: it is the host's own `/usr`, read-only, and needs nothing built.

use std::fs;
use std::io::{BufRead as _, BufReader, Read};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::BoxError;

/// The image every host has: its own `/usr`, read-only, with a private writable layer.
pub const HOST: &str = "host";

/// Bumped whenever what a recipe makes changes in a way its package list does not show, so that
/// caches keyed by [`Recipe::key`] build again.
const RECIPE_REVISION: u32 = 1;

/// An image `vendbox image build` knows how to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recipe {
    /// The image's name in the store and in offers.
    pub name: &'static str,
    /// The Debian suite it is made from.
    pub suite: &'static str,
    /// Packages installed beyond Debian's essential set and apt.
    pub packages: &'static [&'static str],
}

/// The tools agents expect on a machine.
const AGENT_TOOLS: &[&str] = &[
    "bash",
    "coreutils",
    "ca-certificates",
    "curl",
    "git",
    "python3",
    "python3-pip",
    "python3-venv",
    "procps",
    "iproute2",
    "iputils-ping",
    "less",
    "nano",
    "vim-tiny",
    "xz-utils",
    "unzip",
];

/// Every image `vendbox image build` makes.
pub const RECIPES: [Recipe; 1] = [Recipe { name: "debian-12", suite: "bookworm", packages: AGENT_TOOLS }];

impl Recipe {
    /// The recipe called `name`.
    pub fn named(name: &str) -> Option<Recipe> {
        RECIPES.into_iter().find(|r| r.name == name)
    }

    /// A short hash of everything that decides what the recipe makes (for caches of built
    /// images).
    pub fn key(&self) -> String {
        let text = format!("{RECIPE_REVISION}\n{}\n{}\n{}", self.name, self.suite, self.packages.join(","));
        hex::encode(&Sha256::digest(text.as_bytes())[..6])
    }
}

/// What the store knows of an image (`image.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Its name.
    pub name: String,
    /// Where it came from (`mmdebstrap bookworm`, `oci FILE`).
    pub source: String,
    /// The recipe key it was built from, for built images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<String>,
    /// When it was made, in Unix seconds.
    pub created_at: u64,
    /// Bytes its files take.
    pub bytes: u64,
}

/// One line of a build's or import's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A step begins (`downloading packages`).
    Step(String),
    /// A line of the tool's own output.
    Output(String),
}

/// The images of one data directory.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
}

/// Changes to an image store's directory, while this lives ([`ImageStore::watch`]).
#[derive(Debug)]
pub struct ImageChanges {
    /// The inotify watch; dropping it ends the watch (and its thread).
    _watcher: notify::RecommendedWatcher,
    /// Marked changed by every event; changes while nobody looked count as one.
    changed: tokio::sync::watch::Receiver<()>,
}

impl ImageChanges {
    /// Returns once the directory changed since the last call (at once if it did meanwhile).
    pub async fn changed(&mut self) {
        if self.changed.changed().await.is_err() {
            // The watcher's end is gone: nothing will be told again.
            std::future::pending::<()>().await;
        }
    }
}

/// Whether `name` can name an image: 1-64 characters of `[a-z0-9._-]`, starting with a letter
/// or digit.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

impl ImageStore {
    /// The store of the data directory `data_dir` (`<data_dir>/images`).
    pub fn of_data_dir(data_dir: &Path) -> ImageStore {
        ImageStore { dir: data_dir.join("images") }
    }

    /// The directory that holds the images.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The root file system of image `name`, if the store has it.
    pub fn rootfs(&self, name: &str) -> Option<PathBuf> {
        if !valid_name(name) {
            return None;
        }
        let dir = self.dir.join(name);
        (dir.join("image.json").is_file() && dir.join("rootfs").is_dir()).then(|| dir.join("rootfs"))
    }

    /// What the store knows of image `name`.
    pub fn info(&self, name: &str) -> Option<ImageInfo> {
        if !valid_name(name) {
            return None;
        }
        let text = fs::read(self.dir.join(name).join("image.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Every image in the store, by name.
    pub fn list(&self) -> Vec<ImageInfo> {
        let Ok(entries) = fs::read_dir(&self.dir) else { return Vec::new() };
        let mut images: Vec<ImageInfo> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|name| self.info(&name))
            .collect();
        images.sort_by(|a, b| a.name.cmp(&b.name));
        images
    }

    /// Whether a box could be made from image `name` now (`host` always can), and why not.
    pub fn check(&self, name: &str) -> Result<(), String> {
        if name == HOST || self.rootfs(name).is_some() {
            return Ok(());
        }
        let how = if Recipe::named(name).is_some() {
            format!("`vendbox image build {name}`")
        } else {
            format!("`vendbox image import FILE --name {name}`")
        };
        Err(format!("this host has no image `{name}`; its operator can make it with {how}"))
    }

    /// Tells of every change to the store's directory from now on (an image placed by its one
    /// rename, one taken away by its rename before deletion), through inotify: whoever follows
    /// the store looks again when told, rather than looking on every request. Creates the
    /// directory if it is missing, so that there is one to watch.
    pub fn watch(&self) -> Result<ImageChanges, BoxError> {
        self.create_dir()?;
        let (tell, changed) = tokio::sync::watch::channel(());
        // Any event in the directory, or an error (events may have been lost), means "look
        // again"; what is there is read from the directory itself, not from the event.
        let mut watcher = notify::recommended_watcher(move |_: notify::Result<notify::Event>| {
            tell.send_replace(());
        })
        .map_err(|e| BoxError::Image(format!("watching {}: {e}", self.dir.display())))?;
        notify::Watcher::watch(&mut watcher, &self.dir, notify::RecursiveMode::NonRecursive)
            .map_err(|e| BoxError::Image(format!("watching {}: {e}", self.dir.display())))?;
        Ok(ImageChanges { _watcher: watcher, changed })
    }

    fn create_dir(&self) -> Result<(), BoxError> {
        fs::create_dir_all(&self.dir).map_err(BoxError::io(format!("creating {}", self.dir.display())))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o755))
            .map_err(BoxError::io(format!("setting the mode of {}", self.dir.display())))
    }

    fn prepare(&self, name: &str) -> Result<PathBuf, BoxError> {
        if !valid_name(name) || name == HOST {
            return Err(BoxError::Image(format!(
                "`{name}` cannot name an image (1-64 of a-z, 0-9, `.`, `_`, `-`; not `host`)"
            )));
        }
        if self.dir.join(name).exists() {
            return Err(BoxError::Image(format!(
                "image `{name}` exists; remove it first with `vendbox image rm {name}`"
            )));
        }
        self.create_dir()?;
        let partial = self.dir.join(format!(".partial-{name}-{}", std::process::id()));
        remove_tree(&partial)?;
        fs::create_dir(&partial).map_err(BoxError::io(format!("creating {}", partial.display())))?;
        fs::set_permissions(&partial, fs::Permissions::from_mode(0o700))
            .map_err(BoxError::io(format!("setting the mode of {}", partial.display())))?;
        Ok(partial)
    }

    /// Puts a finished image in place: its record, then one rename, so that a half-made image
    /// is never seen.
    fn finish(
        &self,
        partial: &Path,
        name: &str,
        source: String,
        recipe: Option<String>,
    ) -> Result<ImageInfo, BoxError> {
        let rootfs = partial.join("rootfs");
        fs::set_permissions(&rootfs, fs::Permissions::from_mode(0o755))
            .map_err(BoxError::io("setting the mode of the image's root"))?;
        let info = ImageInfo {
            name: name.to_owned(),
            source,
            recipe,
            created_at: unix_now(),
            bytes: tree_bytes(&rootfs),
        };
        let text = serde_json::to_vec_pretty(&info).map_err(|e| BoxError::Image(e.to_string()))?;
        fs::write(partial.join("image.json"), text).map_err(BoxError::io("writing image.json"))?;
        fs::set_permissions(partial, fs::Permissions::from_mode(0o755))
            .map_err(BoxError::io(format!("setting the mode of {}", partial.display())))?;
        fs::rename(partial, self.dir.join(name)).map_err(BoxError::io(format!("placing image `{name}`")))?;
        Ok(info)
    }

    /// Builds image `recipe` with `mmdebstrap` (from `mirror`, or mmdebstrap's default), telling
    /// `progress` what happens. Takes minutes; needs root and the Debian mirror.
    pub fn build(
        &self,
        recipe: Recipe,
        mirror: Option<&str>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<ImageInfo, BoxError> {
        let tool = find("mmdebstrap").ok_or_else(|| {
            BoxError::Image("`mmdebstrap` is not installed: apt-get install mmdebstrap".into())
        })?;
        let partial = self.prepare(recipe.name)?;
        let result = (|| {
            let rootfs = partial.join("rootfs");
            let mut command = Command::new(tool);
            command
                .arg("--variant=apt")
                .arg("--mode=root")
                .arg("--format=directory")
                .arg(format!("--include={}", recipe.packages.join(",")))
                // Manuals, documentation and translations are most of a Debian system's files
                // and no agent reads them; copyright files stay.
                .args([
                    "--dpkgopt=path-exclude=/usr/share/man/*",
                    "--dpkgopt=path-exclude=/usr/share/doc/*",
                    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                    "--dpkgopt=path-exclude=/usr/share/locale/*",
                    "--dpkgopt=path-exclude=/usr/share/info/*",
                ])
                .arg(recipe.suite)
                .arg(&rootfs);
            if let Some(mirror) = mirror {
                command.arg(mirror);
            }
            progress(Progress::Step(format!(
                "mmdebstrap {} ({} packages and Debian's essential set)",
                recipe.suite,
                recipe.packages.len()
            )));
            run_streaming(command, progress)?;
            progress(Progress::Step("making it a box's root".into()));
            customize(&rootfs)?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                let source = format!("mmdebstrap {} ({})", recipe.suite, recipe.packages.join(" "));
                self.finish(&partial, recipe.name, source, Some(recipe.key()))
            }
            Err(e) => {
                let _ = remove_tree(&partial);
                Err(e)
            }
        }
    }

    /// Imports `file` (an OCI image layout, as a directory or a tar archive, or a `docker save`
    /// archive) as image `name`: `skopeo` turns a Docker archive into an OCI layout, `umoci`
    /// applies the layers (whiteouts included).
    pub fn import(
        &self,
        name: &str,
        file: &Path,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<ImageInfo, BoxError> {
        let umoci = find("umoci")
            .ok_or_else(|| BoxError::Image("`umoci` is not installed: apt-get install umoci".into()))?;
        let file = fs::canonicalize(file).map_err(BoxError::io(format!("reading {}", file.display())))?;
        let partial = self.prepare(name)?;
        let result = (|| {
            let layout = if file.is_dir() {
                file.clone()
            } else {
                let unpacked = partial.join("archive");
                fs::create_dir(&unpacked).map_err(BoxError::io("creating a directory for the archive"))?;
                progress(Progress::Step(format!("unpacking {}", file.display())));
                let mut tar = Command::new("tar");
                tar.arg("-xf").arg(&file).arg("-C").arg(&unpacked).arg("--no-same-owner");
                run_streaming(tar, progress)?;
                if unpacked.join("index.json").is_file() && unpacked.join("oci-layout").is_file() {
                    unpacked
                } else if unpacked.join("manifest.json").is_file() {
                    let skopeo = find("skopeo").ok_or_else(|| {
                        BoxError::Image(
                            "a Docker archive needs `skopeo` to become an OCI layout: apt-get install skopeo"
                                .into(),
                        )
                    })?;
                    let layout = partial.join("oci");
                    progress(Progress::Step("converting the Docker archive to an OCI layout".into()));
                    let mut convert = Command::new(skopeo);
                    convert
                        .arg("copy")
                        .arg(format!("docker-archive:{}", file.display()))
                        .arg(format!("oci:{}:import", layout.display()));
                    run_streaming(convert, progress)?;
                    layout
                } else {
                    return Err(BoxError::Image(format!(
                        "{} is neither an OCI image layout (index.json, oci-layout) nor a `docker save` archive (manifest.json)",
                        file.display()
                    )));
                }
            };
            let tag = oci_tag(&layout)?;
            progress(Progress::Step(format!("applying the layers of {tag}")));
            let bundle = partial.join("bundle");
            let mut unpack = Command::new(umoci);
            unpack.arg("unpack").arg("--image").arg(format!("{}:{tag}", layout.display())).arg(&bundle);
            run_streaming(unpack, progress)?;
            fs::rename(bundle.join("rootfs"), partial.join("rootfs"))
                .map_err(BoxError::io("moving the unpacked root into place"))?;
            remove_tree(&bundle)?;
            remove_tree(&partial.join("archive"))?;
            remove_tree(&partial.join("oci"))?;
            progress(Progress::Step("making it a box's root".into()));
            customize(&partial.join("rootfs"))?;
            Ok(())
        })();
        match result {
            Ok(()) => self.finish(&partial, name, format!("oci {}", file.display()), None),
            Err(e) => {
                let _ = remove_tree(&partial);
                Err(e)
            }
        }
    }

    /// Removes image `name`, unless a box stands on it: `users` names the boxes whose records
    /// name it. It is asked while no box is being made ([`ImageStore::hold`]), so a box made at
    /// the same time either has its record by then (and the image stays) or finds the image
    /// gone before it mounts it (and is refused before it is charged).
    pub fn remove(&self, name: &str, users: impl FnOnce() -> Vec<String>) -> Result<(), BoxError> {
        let doomed = self.dir.join(format!(".removing-{name}-{}", std::process::id()));
        {
            let _alone = self.lock(rustix::fs::FlockOperation::LockExclusive)?;
            if self.info(name).is_none() {
                return Err(BoxError::Image(format!("there is no image `{name}`")));
            }
            let users = users();
            if !users.is_empty() {
                return Err(BoxError::Image(format!(
                    "image `{name}` is the root of {} box(es) ({}); it can be removed once they are gone",
                    users.len(),
                    users.join(", ")
                )));
            }
            // Out of sight in one rename; deleted after the store is let go.
            fs::rename(self.dir.join(name), &doomed)
                .map_err(BoxError::io(format!("removing image `{name}`")))?;
        }
        remove_tree(&doomed)
    }

    /// Holds every image of the store against removal while the hold lives: a box being made
    /// takes one before it looks for its image and keeps it until its disk's record names the
    /// image, which [`ImageStore::remove`] then sees. Holds are shared (boxes are made at once);
    /// a removal waits for them, and they for it (it takes milliseconds: a check and a rename).
    /// The lock is `<data>/images.lock`, beside the store rather than in it, so that taking it
    /// is no event for the store's watchers; it works across processes (`vendbox image rm`).
    ///
    /// # Errors
    /// The lock file cannot be opened or locked.
    pub fn hold(&self) -> Result<ImagesHeld, BoxError> {
        self.lock(rustix::fs::FlockOperation::LockShared).map(|file| ImagesHeld { _lock: file })
    }

    fn lock(&self, how: rustix::fs::FlockOperation) -> Result<fs::File, BoxError> {
        let path = self.dir.with_extension("lock");
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(BoxError::io(format!("creating {}", parent.display())))?;
        }
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(BoxError::io(format!("opening {}", path.display())))?;
        rustix::fs::flock(&file, how)
            .map_err(|e| BoxError::Io { context: format!("locking {}", path.display()), source: e.into() })?;
        Ok(file)
    }
}

/// A hold on an image store against removal ([`ImageStore::hold`]); let go when dropped.
#[derive(Debug)]
pub struct ImagesHeld {
    _lock: fs::File,
}

/// What makes a file system tree a good root for boxes: a name for the machine, apt allowed to
/// run as the box's root (the box maps one uid; apt's `_apt` sandbox user does not exist in it),
/// pip allowed to install for root as on any machine an agent rents, and no host resolver.
fn customize(rootfs: &Path) -> Result<(), BoxError> {
    let write = |relative: &str, text: &str| -> Result<(), BoxError> {
        let path = inside(rootfs, relative)?;
        fs::write(&path, text).map_err(BoxError::io(format!("writing {}", path.display())))
    };
    write("etc/hostname", "box\n")?;
    write("etc/hosts", "127.0.0.1\tlocalhost box\n::1\tlocalhost ip6-localhost ip6-loopback\n")?;
    write("etc/resolv.conf", "")?;
    if fs::symlink_metadata(rootfs.join("etc/apt")).is_ok_and(|m| m.is_dir()) {
        write(
            "etc/apt/apt.conf.d/90vendbox",
            "// vendbox: boxes map one uid, so apt runs as root.\nAPT::Sandbox::User \"root\";\n",
        )?;
    }
    write("etc/pip.conf", "[global]\nbreak-system-packages = true\nroot-user-action = ignore\n")?;
    Ok(())
}

/// The host path of `relative` in the image at `rootfs`, its directories made where missing and
/// a link at its end removed, without following any link: an imported image is hostile input,
/// and its `/etc` may be a link to the host's.
fn inside(rootfs: &Path, relative: &str) -> Result<PathBuf, BoxError> {
    let mut path = rootfs.to_path_buf();
    let parts: Vec<&str> = relative.split('/').collect();
    let (name, dirs) = parts.split_last().unwrap_or((&"", &[]));
    for dir in dirs {
        path.push(dir);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(BoxError::Image(format!(
                    "the image's /{} is a link or a file, not a directory: vendbox follows no link out of an image",
                    path.strip_prefix(rootfs).unwrap_or(&path).display()
                )));
            }
            Err(_) => fs::create_dir(&path).map_err(BoxError::io(format!("creating {}", path.display())))?,
        }
    }
    path.push(name);
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_dir() => Err(BoxError::Image(format!("the image's /{relative} is a directory"))),
        Ok(meta) if meta.file_type().is_symlink() => {
            fs::remove_file(&path).map_err(BoxError::io(format!("replacing {}", path.display())))?;
            Ok(path)
        }
        _ => Ok(path),
    }
}

/// The one tag of the OCI layout at `layout` (its `index.json`'s first manifest).
fn oci_tag(layout: &Path) -> Result<String, BoxError> {
    let text = fs::read(layout.join("index.json")).map_err(BoxError::io("reading the OCI index"))?;
    let index: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| BoxError::Image(format!("the OCI index: {e}")))?;
    index["manifests"]
        .as_array()
        .and_then(|m| m.first())
        .and_then(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| {
            BoxError::Image("the OCI layout names no image (no org.opencontainers.image.ref.name)".into())
        })
}

/// Runs `command`, passing each line it prints to `progress`; fails with its last lines.
fn run_streaming(mut command: Command, progress: &mut dyn FnMut(Progress)) -> Result<(), BoxError> {
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(BoxError::io(format!("starting {program}")))?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let (lines, receive) = std::sync::mpsc::channel::<String>();
    let readers: Vec<_> = [
        stdout.map(|s| Box::new(s) as Box<dyn Read + Send>),
        stderr.map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|stream| {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
                let _ = lines.send(String::from_utf8_lossy(&line).trim_end().to_owned());
            }
        })
    })
    .collect();
    drop(lines);
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    for line in receive {
        if tail.len() == 20 {
            tail.pop_front();
        }
        tail.push_back(line.clone());
        progress(Progress::Output(line));
    }
    for reader in readers {
        let _ = reader.join();
    }
    let status = child.wait().map_err(BoxError::io(format!("waiting for {program}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(BoxError::Image(format!(
            "{program} failed ({status}):\n{}",
            tail.into_iter().collect::<Vec<_>>().join("\n")
        )))
    }
}

fn remove_tree(dir: &Path) -> Result<(), BoxError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BoxError::Io { context: format!("removing {}", dir.display()), source: e }),
    }
}

/// Bytes the files under `dir` take on disk (without following links or leaving its file
/// system).
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(top) = fs::symlink_metadata(dir) else { return 0 };
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.filter_map(Result::ok) {
            let Ok(meta) = entry.metadata() else { continue };
            total += meta.blocks() * 512;
            if meta.is_dir() && meta.dev() == top.dev() {
                pending.push(entry.path());
            }
        }
    }
    total
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `program` on `PATH`, or in the usual system directories.
fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/bin", "/usr/sbin", "/bin", "/sbin"])
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["debian-12", "ubuntu-24.04", "a", "my_image"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "-x", ".x", "Debian", "a/b", "..", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_missing_image_says_how_to_make_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::of_data_dir(dir.path());
        assert!(store.check("host").is_ok());
        assert!(store.check("debian-12").unwrap_err().contains("vendbox image build debian-12"));
        assert!(store.check("ubuntu-24.04").unwrap_err().contains("vendbox image import"));
        assert!(store.list().is_empty());
    }

    #[test]
    fn an_image_is_not_removed_while_a_box_of_it_is_being_made() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::of_data_dir(dir.path());
        let image = dir.path().join("images/tiny");
        fs::create_dir_all(image.join("rootfs/etc")).unwrap();
        let info =
            ImageInfo { name: "tiny".into(), source: "test".into(), recipe: None, created_at: 0, bytes: 0 };
        fs::write(image.join("image.json"), serde_json::to_vec(&info).unwrap()).unwrap();
        // A box is being made: it holds the store, and has no record yet.
        let making = store.hold().unwrap();
        let record = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let removal = std::thread::spawn({
            let (store, record) = (ImageStore::of_data_dir(dir.path()), record.clone());
            move || store.remove("tiny", || record.lock().unwrap().clone())
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!removal.is_finished(), "the image was removed while a box of it was being made");
        assert!(store.rootfs("tiny").is_some());
        // The box's record names the image before the box lets the store go.
        record.lock().unwrap().push("box-1".into());
        drop(making);
        let refused = removal.join().unwrap().unwrap_err().to_string();
        assert!(refused.contains("is the root of 1 box(es) (box-1)"), "{refused}");
        assert!(store.rootfs("tiny").is_some());
        // With no box on it, it goes.
        store.remove("tiny", Vec::new).unwrap();
        assert!(store.rootfs("tiny").is_none());
    }

    #[test]
    fn recipe_keys_change_with_the_packages() {
        let a = Recipe::named("debian-12").unwrap();
        let b = Recipe { packages: &["bash"], ..a };
        assert_ne!(a.key(), b.key());
        assert_eq!(a.key(), Recipe::named("debian-12").unwrap().key());
    }
}
