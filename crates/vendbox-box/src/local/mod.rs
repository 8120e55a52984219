//! The local backend: each box is a bubblewrap sandbox on this host.
//!
//! A box gets user, pid, mount, net, uts, ipc and cgroup namespaces; its root is an unprivileged
//! host uid of its own (from a host-wide range, so no two boxes share one); as its root, either
//! the host's /usr (and the /bin, /lib… links into it) read-only with a private /etc and a
//! writable layer of bounded size in memory ([`layer`]: the `host` image), or an overlay of a
//! built image (idmapped and read-only, [`idmap`]) under a disk of its own ([`disk`]); a cgroup
//! with the offer's memory, pids, cpu and cpuset limits ([`cgroup`]); a seccomp filter
//! ([`seccomp`]); no network but its own loopback unless the offer has egress. boxd runs as its
//! PID 1 and answers on a Unix socket in the layer. Boxes outlive the vendbox process that made
//! them, so a restarted vendbox finds them again ([`Backend::list`]), and image boxes outlive a
//! reboot on their disks.
//!
//! Boxes may form pods ([`pod`]): a box whose spec names a pod is born in the network namespace
//! of the pod's first box and mounts the pod's named volumes from that box's disk.

mod cgroup;
mod disk;
mod idmap;
mod layer;
mod net;
mod pod;
mod seccomp;
mod warm;

use std::fs;
use std::io::{ErrorKind, Write as _};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use command_fds::{CommandFdExt as _, FdMapping};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::client::BoxdClient;
use crate::error::BoxError;
use crate::{Backend, BoxId, BoxSpec, BoxStatus};

pub use net::{EgressConfig, Prefix, REFUSED_RANGES};
pub use seccomp::{DENIED as DENIED_SYSCALLS, DENIED_SOCKET_FAMILIES};
pub use warm::DEFAULT_WARM;

/// First host uid handed to a box's root; boxes take uids from `[UID_BASE, UID_BASE + UID_COUNT)`.
pub const UID_BASE: u32 = 2_000_000;
/// How many uids the range holds (also the most boxes a host can run at once).
pub const UID_COUNT: u32 = 100_000;

/// The bubblewrap arguments of a box's namespaces: user (root inside mapped to the box's uid
/// outside), pid, ipc, uts, cgroup and net.
pub const NAMESPACES: [&str; 10] = [
    "--unshare-user",
    "--unshare-pid",
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-cgroup",
    "--unshare-net",
    "--uid",
    "0",
    "--gid",
    "0",
];

/// The descriptor bubblewrap reads the seccomp filter from (standard input carries boxd's
/// listening socket).
const SECCOMP_FD: i32 = 3;

/// The descriptor a held bubblewrap reads the box's arguments from (see [`Held`]).
const ARGS_FD: i32 = 4;

/// How long a box may take to answer before its creation fails.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Settings of the local backend.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The vendbox data directory; it names this instance, so that boxes of other instances on
    /// the same host are never touched.
    pub data_dir: PathBuf,
    /// The program that runs as the box's PID 1 and its arguments before `--socket PATH`
    /// (`vendbox boxd`).
    pub boxd: Vec<String>,
    /// Host directory for layers and uid claims (`/run/vendbox`).
    pub run_root: PathBuf,
}

/// What the backend writes about each box, in its layer, so that a restarted vendbox can find
/// and end it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BoxRecord {
    id: BoxId,
    uid: u32,
    /// Host pid of the box's outermost process (bubblewrap's monitor).
    pid: Option<u32>,
    /// The limits it was made with (absent in records of older vendbox versions).
    #[serde(default)]
    limits: Option<crate::Limits>,
}

/// Boxes as bubblewrap sandboxes on this host.
#[derive(Debug)]
pub struct LocalBackend {
    config: LocalConfig,
    instance: String,
    cgroups: cgroup::Hierarchies,
    /// Starts held bubblewraps (shared with the warm slots' maker).
    spawner: Arc<Spawner>,
    boxd_exe: PathBuf,
    /// lxcfs's view of `/proc` (`/var/lib/lxcfs/proc`), when the host runs it: a box reads its
    /// own limits in `/proc/meminfo` (`free`), `/proc/cpuinfo`, `/proc/stat`, `/proc/uptime`….
    lxcfs: Option<PathBuf>,
    /// Each box's limits, as made here or read once from its record (for [`Backend::usage`],
    /// which every purchase asks: its records are not read again each time).
    limits: std::sync::Mutex<std::collections::HashMap<BoxId, crate::Limits>>,
    /// Network egress, when the operator gives it ([`LocalBackend::enable_egress`]).
    net: Option<Arc<net::Network>>,
    /// Boxes' starts made ahead of their purchase ([`warm`]).
    warm: warm::Warm,
    /// The images boxes are made from (`<data>/images`).
    images: crate::image::ImageStore,
    /// The disks of image boxes (`<data>/boxes`).
    disks: disk::Disks,
    /// How long a box's disk is kept after the box is destroyed (zero: deleted at once).
    disk_grace: Duration,
    /// Held while a box is started again from its disk, so that two callers never start it twice.
    reviving: tokio::sync::Mutex<()>,
}

impl LocalBackend {
    /// Checks the host (bubblewrap, cgroup controllers, root) and prepares the run directory.
    pub fn new(config: LocalConfig) -> Result<LocalBackend, BoxError> {
        if !rustix::process::geteuid().is_root() {
            return Err(BoxError::Unsupported("the local backend needs vendbox to run as root".into()));
        }
        let bwrap = find_program("bwrap").ok_or_else(|| {
            BoxError::Unsupported("bubblewrap (`bwrap`) is not installed: apt-get install bubblewrap".into())
        })?;
        let cgroups = cgroup::Hierarchies::detect()?;
        let data_dir = fs::canonicalize(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone());
        let instance = hex::encode(&Sha256::digest(data_dir.to_string_lossy().as_bytes())[..6]);
        // Only host-wide directories now: this instance's own appear with its first box, so a
        // vendbox that never makes one leaves nothing on the host.
        // The run directory: root's, and only traversable by others (a box's uid passes through
        // it to its own layer; no uid can list it). The uid claims: root's alone.
        for (dir, mode) in [(config.run_root.clone(), 0o711), (config.run_root.join("uids"), 0o700)] {
            fs::create_dir_all(&dir).map_err(BoxError::io(format!("creating {}", dir.display())))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
                .map_err(BoxError::io(format!("setting the mode of {}", dir.display())))?;
        }
        let exe =
            config.boxd.first().ok_or_else(|| BoxError::Unsupported("no boxd program configured".into()))?;
        let boxd_exe = reachable_copy(Path::new(exe), &config.run_root)?;
        let mut boxd = vec!["/.boxd".to_owned()];
        boxd.extend(config.boxd.iter().skip(1).cloned());
        boxd.push("--listen-stdin".into());
        let spawner = Arc::new(Spawner { bwrap, boxd, seccomp: seccomp::filter() });
        tracing::info!(cgroups = %cgroups.describe(), instance, "local box backend ready");
        let backend = LocalBackend {
            config,
            instance,
            cgroups,
            spawner,
            boxd_exe,
            lxcfs: lxcfs_proc(),
            limits: std::sync::Mutex::default(),
            net: None,
            warm: warm::Warm::new(warm::DEFAULT_WARM),
            images: crate::image::ImageStore::of_data_dir(&data_dir),
            disks: disk::Disks::of_data_dir(&data_dir),
            disk_grace: Duration::ZERO,
            reviving: tokio::sync::Mutex::new(()),
        };
        // After a reboot the uid claims are gone: the uids that own boxes' disks are claimed
        // again at once, before a new box could take one (the boxes start again later).
        for id in backend.disks.ids() {
            if let Some(record) = backend.disks.record(&id)
                && let Err(e) = backend.claim_this_uid(&id, record.uid)
            {
                tracing::warn!(box_id = %id, error = %e, "the uid of a box's disk could not be claimed again");
            }
        }
        Ok(backend)
    }

    fn instance_dir(&self) -> PathBuf {
        self.config.run_root.join(&self.instance)
    }

    fn layer_dir(&self, id: &BoxId) -> PathBuf {
        self.instance_dir().join(id.as_str())
    }

    fn record(&self, id: &BoxId) -> Option<BoxRecord> {
        let text = fs::read(self.layer_dir(id).join("box.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn write_record(&self, record: &BoxRecord) -> Result<(), BoxError> {
        let path = self.layer_dir(&record.id).join("box.json");
        let text = serde_json::to_vec(record).map_err(|e| BoxError::Start(e.to_string()))?;
        fs::write(&path, text).map_err(BoxError::io(format!("writing {}", path.display())))
    }

    /// Writes box `spec`'s record: its uid, and its monitor's pid once it has one.
    fn record_box(&self, spec: &BoxSpec, uid: u32, pid: Option<u32>) -> Result<(), BoxError> {
        self.write_record(&BoxRecord { id: spec.id.clone(), uid, pid, limits: Some(spec.limits) })
    }

    /// Claims a free uid for a box: a marker file per uid, created exclusively.
    fn claim_uid(&self, id: &BoxId) -> Result<u32, BoxError> {
        claim_uid(&self.config.run_root, &self.instance, id.as_str())
    }

    /// Claims `uid` for box `id` again (a box started again from its disk, whose files that uid
    /// owns); fine when `id` holds it already.
    fn claim_this_uid(&self, id: &BoxId, uid: u32) -> Result<(), BoxError> {
        let marker = self.config.run_root.join("uids").join(uid.to_string());
        let owner = format!("{}/{}", self.instance, id);
        match fs::OpenOptions::new().write(true).create_new(true).open(&marker) {
            Ok(_) => fs::write(&marker, owner).map_err(BoxError::io("claiming a uid")),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                if fs::read_to_string(&marker).is_ok_and(|held| held == owner) {
                    Ok(())
                } else {
                    Err(BoxError::Start(format!(
                        "the uid {uid} that owns the disk of box {id} went to another box"
                    )))
                }
            }
            Err(e) => Err(BoxError::Io { context: "claiming a uid".into(), source: e }),
        }
    }

    /// Gives `uid` back if box `id` holds it (after a reboot, another box may).
    fn release_uid_of(&self, id: &BoxId, uid: u32) {
        let marker = self.config.run_root.join("uids").join(uid.to_string());
        if fs::read_to_string(&marker).is_ok_and(|held| held == format!("{}/{}", self.instance, id)) {
            self.release_uid(uid);
        }
    }

    fn release_uid(&self, uid: u32) {
        let _ = fs::remove_file(self.config.run_root.join("uids").join(uid.to_string()));
    }

    /// bubblewrap's arguments for a box (what a held bubblewrap reads, see [`Held`]); boxd's
    /// command follows them on bubblewrap's command line.
    fn bwrap_args(&self, layer: &Path, spec: &BoxSpec) -> Vec<String> {
        let mut args: Vec<String> = NAMESPACES.into_iter().map(String::from).collect();
        args.extend(["--hostname", "box", "--new-session", "--as-pid-1"].into_iter().map(String::from));
        // bubblewrap drops every capability; the box's root keeps one, to bind ports below 1024
        // (a web server on port 80) in a network namespace of the box's own user namespace. It
        // means nothing anywhere else (an egress box's namespace opens those ports by sysctl).
        args.extend(["--cap-add", "CAP_NET_BIND_SERVICE"].into_iter().map(String::from));
        if spec.image == crate::image::HOST {
            host_root_args(layer, &mut args);
        } else {
            // The overlay (image below, the box's disk above) is the whole root; the kernel's
            // views come on top of it.
            args.extend(["--bind".into(), host_str(&layer.join(layer::OVERLAY_ROOT)), "/".into()]);
            args.extend(
                ["--proc", "/proc", "--dev", "/dev", "--chdir", "/root"].into_iter().map(String::from),
            );
        }
        // Asked again for each box: a bind of a dead lxcfs's file would stop the box from starting.
        if let Some(lxcfs) = self.lxcfs.as_ref().filter(|dir| dir.join("meminfo").is_file()) {
            for file in LXCFS_PROC {
                args.extend(["--ro-bind".into(), host_str(&lxcfs.join(file)), format!("/proc/{file}")]);
            }
        }
        if let Some(pod) = &spec.pod {
            // Born in the pod's namespace, which the host made (see `start`).
            args.retain(|a| a != "--unshare-net");
            pod::bwrap_args(layer, &pod.volumes, &mut args);
        }
        args.extend(["--ro-bind".into(), host_str(&self.boxd_exe), "/.boxd".into()]);
        args.extend(["--setenv".into(), "HOME".into(), "/root".into()]);
        if let (true, Some(net)) = (spec.egress, &self.net) {
            net.bwrap_args(&mut args);
        }
        args.extend(["--seccomp".into(), SECCOMP_FD.to_string()]);
        args
    }
}

/// The root of a box of the `host` image: bubblewrap's tmpfs with the host's /usr (and the
/// /bin, /lib… links into it) read-only, the layer's private /etc with the host entries the
/// userland needs, and the layer's writable directories.
fn host_root_args(layer: &Path, args: &mut Vec<String>) {
    args.extend(["--ro-bind", "/usr", "/usr"].into_iter().map(String::from));
    for top in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        let host = Path::new("/").join(top);
        match fs::read_link(&host) {
            Ok(target) => {
                args.extend(["--symlink".into(), target.to_string_lossy().into_owned(), host_str(&host)]);
            }
            Err(_) if host.is_dir() => {
                args.extend(["--ro-bind".into(), host_str(&host), host_str(&host)]);
            }
            Err(_) => {}
        }
    }
    args.extend(["--ro-bind".into(), host_str(&layer.join("etc")), "/etc".into()]);
    for entry in layer::HOST_ETC {
        let host = Path::new("/etc").join(entry);
        args.extend(["--ro-bind-try".into(), host_str(&host), host_str(&host)]);
    }
    for (inside_layer, inside_box, _) in layer::WRITABLE {
        args.extend(["--bind".into(), host_str(&layer.join(inside_layer)), inside_box.into()]);
    }
    args.extend(
        ["--proc", "/proc", "--dev", "/dev", "--dir", "/var", "--dir", "/run", "--chdir", "/root"]
            .into_iter()
            .map(String::from),
    );
}

impl LocalBackend {
    /// The network namespace box `spec` is born in, when the host makes or picks one: its pod's
    /// (the first box's, made with it), or its own with egress; `None`: bubblewrap's own. A pod's
    /// first box started `again` keeps the namespace its pod's other boxes are still in (with
    /// egress, while its link is there too: after a reboot neither is). `true` with it: the
    /// namespace was made now, empty, and needs its link ([`net::Network::connect`]).
    async fn network(&self, spec: &BoxSpec, again: bool) -> Result<(Option<PathBuf>, bool), BoxError> {
        match (&spec.pod, &self.net) {
            (Some(pod), _) if pod.first != spec.id => {
                let path = net::namespace_of(&self.instance, &pod.first);
                if path.exists() {
                    Ok((Some(path), false))
                } else {
                    Err(BoxError::Start(format!(
                        "the network of pod {} is gone: its first box does not run",
                        pod.first
                    )))
                }
            }
            (Some(_), Some(net)) if spec.egress && again && net.attached(&spec.id).await? => {
                Ok((Some(net::namespace_of(&self.instance, &spec.id)), false))
            }
            (_, Some(net)) if spec.egress => {
                net.make_namespace(spec.id.as_str()).await.map(|path| (Some(path), true))
            }
            (Some(_), _) => {
                net::loopback_namespace(&self.instance, &spec.id).await.map(|path| (Some(path), false))
            }
            _ => Ok((None, false)),
        }
    }

    /// Mounts `pod`'s volumes in the layer of box `spec` (root: host `uid`), from the disk of the
    /// pod's first box.
    async fn mount_volumes(&self, spec: &BoxSpec, pod: &crate::Pod, uid: u32) -> Result<(), BoxError> {
        let first_uid = if pod.first == spec.id {
            uid
        } else {
            self.disks.record(&pod.first).map(|r| r.uid).ok_or_else(|| {
                BoxError::Start(format!("the pod's first box {} has no disk for volumes", pod.first))
            })?
        };
        let (first_layer, dir, volumes) =
            (self.layer_dir(&pod.first), self.layer_dir(&spec.id), pod.volumes.clone());
        blocking(move || pod::mount_volumes(&first_layer, first_uid, &dir, uid, &volumes)).await
    }

    /// Starts box `spec` as host `uid`: its root (on `new_disk`, made first, for a new box of an
    /// image; else on the disk it has), its network and its cgroup, then boxd. `again`: the box
    /// is started again from its disk (see `revive`).
    ///
    /// bubblewrap is started early, held before it does anything: it reads its arguments from a
    /// pipe (`--args`), and blocks there until the host writes them. While it waits it is moved
    /// into the box's cgroups, the root is made, and an egress box's link is made in the
    /// namespace it waits in, all at once. On cgroup v1 a process's first move waits for an RCU
    /// grace period (about 10 ms); here that wait overlaps the root's disk and mounts and the
    /// network's host tools. Everything bubblewrap makes is born in the box's cgroups, so nothing
    /// is ever outside them and nothing is moved after it runs.
    async fn start(
        &self,
        spec: &BoxSpec,
        uid: u32,
        new_disk: Option<(disk::DiskRecord, u64)>,
        again: bool,
    ) -> Result<(), BoxError> {
        let begun = Instant::now();
        instance_dir_ready(&self.instance_dir())?;
        let layer = self.layer_dir(&spec.id);
        let host = spec.image == crate::image::HOST;
        // The layer's top first: boxd's socket is bound there, in a root-owned directory no box
        // mounts, and handed to bubblewrap (then boxd) as its standard input.
        let top_bytes = if host {
            u64::from(spec.limits.disk_mb.max(16)) * 1024 * 1024
        } else {
            layer::IMAGE_LAYER_BYTES
        };
        layer::mount_top(&layer, top_bytes)?;
        let listener = layer::bind_socket(&layer)?;
        // The network (host tools run one after another), the root (a disk, mounts) and the held
        // bubblewrap (its cgroups) need nothing of each other but bubblewrap's network namespace:
        // they are made at once.
        let root = async {
            let started = Instant::now();
            self.make_root(spec, uid, &layer, new_disk, None, None).await?;
            Ok::<_, BoxError>(started.elapsed())
        };
        let held = async {
            let started = Instant::now();
            let (netns, connect) = self.network(spec, again).await?;
            let namespace = started.elapsed();
            // An egress box's link is made while its bubblewrap waits in the (empty) namespace.
            let link = async {
                if let (true, Some(net)) = (connect, &self.net) {
                    net.connect(spec.id.as_str(), uid).await?;
                }
                Ok::<_, BoxError>(started.elapsed())
            };
            let held = async {
                let held = self.hold_bubblewrap(spec, uid, &layer, netns.as_deref(), listener).await;
                (held, started.elapsed())
            };
            match tokio::join!(link, held) {
                (Ok(link), (Ok(held), cgroup)) => Ok((held, namespace, link, cgroup)),
                (Err(e), (Ok(mut held), _)) => {
                    held.kill().await;
                    Err(e)
                }
                (_, (Err(e), _)) => Err(e),
            }
        };
        let (root, held) = tokio::join!(root, held);
        let (root, (held, namespace, link, cgroup)) = match (root, held) {
            (Ok(root), Ok(held)) => (root, held),
            (Err(e), Ok((mut held, ..))) => {
                held.kill().await;
                return Err(e);
            }
            (_, Err(e)) => return Err(e),
        };
        let ready = begun.elapsed();
        let boxd = self.run_held(spec, &layer, held).await?;
        tracing::debug!(
            box_id = %spec.id,
            namespace_ms = namespace.as_secs_f64() * 1e3,
            link_ms = link.as_secs_f64() * 1e3,
            held_ms = cgroup.as_secs_f64() * 1e3,
            root_ms = root.as_secs_f64() * 1e3,
            ready_ms = ready.as_secs_f64() * 1e3,
            boxd_ms = boxd.as_secs_f64() * 1e3,
            "box started"
        );
        Ok(())
    }

    /// Starts box `spec` from warm `slot` (see [`warm`]): the slot's names become the box's, the
    /// box's limits are written, its root is made (on `new_disk` for a box of an image) while an
    /// egress box's network is renamed, and the slot's bubblewrap is let go.
    async fn start_warm(
        &self,
        spec: &BoxSpec,
        slot: warm::Slot,
        new_disk: Option<(disk::DiskRecord, u64)>,
    ) -> Result<(), BoxError> {
        let begun = Instant::now();
        let warm::Slot { name, uid, egress, mut held, idmap, layer: slot_layer, disk } = slot;
        // The slot's disk serves a box of an image whose disk has its size; for any other box it
        // goes (unmounted at once; its blocks are freed with its file).
        let premade = disk.is_some() && disk == new_disk.as_ref().map(|(_, size)| *size);
        let layer = self.layer_dir(&spec.id);
        let pid = held.child.id().unwrap_or_default();
        // The names first, the record with them: from here on, a failure is cleaned up as any
        // box's is (`destroy`), and what is still the slot's by name as a slot's.
        let named = (|| {
            layer::move_top(&slot_layer, &layer)?;
            self.record_box(spec, uid, Some(pid))?;
            let marker = self.config.run_root.join("uids").join(uid.to_string());
            fs::write(&marker, format!("{}/{}", self.instance, spec.id))
                .map_err(BoxError::io("claiming a uid"))?;
            self.cgroups.rename(&self.instance, &name, spec.id.as_str())?;
            self.cgroups.limit(&self.instance, spec.id.as_str(), spec.limits)?;
            if spec.image == crate::image::HOST {
                layer::resize_top(&layer, u64::from(spec.limits.disk_mb.max(16)) * 1024 * 1024)?;
            }
            if disk.is_some() && !premade {
                layer::remove_disk(&layer)?;
                self.disks.remove_prepared(&name);
            }
            Ok::<_, BoxError>(())
        })();
        let renamed = begun.elapsed();
        let made = match named {
            Ok(()) => {
                let premade = premade.then_some(name.as_str());
                self.make_root(spec, uid, &layer, new_disk, Some(idmap), premade).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = made {
            held.kill().await;
            self.maker().remove(&name).await;
            return Err(e);
        }
        let ready = begun.elapsed();
        // The network's names are the host's bookkeeping: the box's link works under either. So
        // they change while boxd starts (the host's end of the link is down a moment, before the
        // box answers), and the box is handed over once both are done.
        let network = async {
            match (egress, &self.net) {
                (true, Some(net)) => net.rename(&name, &spec.id).await,
                _ => Ok(()),
            }
        };
        let (boxd, network) = tokio::join!(self.run_held(spec, &layer, held), network);
        let boxd = match (boxd, network) {
            (Ok(boxd), Ok(())) => boxd,
            (Err(e), _) | (_, Err(e)) => {
                self.maker().remove(&name).await;
                return Err(e);
            }
        };
        tracing::debug!(
            box_id = %spec.id,
            slot = name,
            renamed_ms = renamed.as_secs_f64() * 1e3,
            ready_ms = ready.as_secs_f64() * 1e3,
            boxd_ms = boxd.as_secs_f64() * 1e3,
            "box started warm"
        );
        Ok(())
    }

    /// What makes and removes this backend's warm slots.
    fn maker(&self) -> warm::Maker {
        warm::Maker {
            instance: self.instance.clone(),
            instance_dir: self.instance_dir(),
            run_root: self.config.run_root.clone(),
            cgroups: self.cgroups.clone(),
            spawner: Arc::clone(&self.spawner),
            net: self.net.clone(),
            disks: self.disks.clone(),
        }
    }

    /// Removes what the warm slots of a vendbox that is gone (a crash) left on the host; for
    /// start-up.
    pub async fn remove_stale_slots(&self) {
        self.maker().remove_stale().await;
    }

    /// The warm slots ready to start a box from: each one's name and its held bubblewrap's pid
    /// (a box started from one keeps that process as its outermost).
    pub fn warm_slots(&self) -> Vec<(String, u32)> {
        self.warm.ready()
    }

    /// The names of every warm slot of this data directory that has anything on the host, made
    /// by this vendbox or by another that ran on the same data directory.
    pub fn warm_leftovers(&self) -> Vec<String> {
        self.maker().names()
    }

    /// Keeps `size` warm slots of each kind of box (with and without egress) ready to start
    /// from, once such a box was bought (0: every box starts cold). See [`warm`].
    #[must_use]
    pub fn with_warm(mut self, size: usize) -> LocalBackend {
        self.warm.set_size(size);
        self
    }

    /// Lets `held` go with box `spec`'s arguments (its root is made in `layer`) and waits for
    /// boxd to answer; how long that took.
    async fn run_held(&self, spec: &BoxSpec, layer: &Path, held: Held) -> Result<Duration, BoxError> {
        let mut child = held.release(&self.bwrap_args(layer, spec)).await?;
        let client = self.boxd(&spec.id);
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = fs::read_to_string(layer.join("bwrap.log")).unwrap_or_default();
                return Err(BoxError::Start(format!("bubblewrap exited ({status}): {}", log.trim())));
            }
            if client.health().await.is_ok() {
                break;
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(BoxError::Start(format!("boxd did not answer within {START_TIMEOUT:?}")));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let boxd = started.elapsed();
        // Reap the monitor when the box ends; after a vendbox restart init does.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(boxd)
    }

    /// Makes box `spec`'s root in its layer (whose top is mounted): the `host` image's private
    /// /etc and writable directories, or an image's overlay on the box's disk (`new_disk`, made
    /// first for a new box); then its pod's volumes.
    async fn make_root(
        &self,
        spec: &BoxSpec,
        uid: u32,
        layer: &Path,
        new_disk: Option<(disk::DiskRecord, u64)>,
        idmap: Option<OwnedFd>,
        premade: Option<&str>,
    ) -> Result<(), BoxError> {
        if spec.image == crate::image::HOST {
            let dir = layer.to_owned();
            blocking(move || layer::create(&dir, uid)).await?;
        } else {
            let rootfs = self.images.rootfs(&spec.image).ok_or_else(|| {
                BoxError::Unsupported(self.images.check(&spec.image).err().unwrap_or_default())
            })?;
            let (dir, disks, id) = (layer.to_owned(), self.disks.clone(), spec.id.clone());
            let premade = premade.map(str::to_owned);
            blocking(move || {
                match (new_disk, &premade) {
                    (Some((record, _)), Some(slot)) => disks.hand_over(slot, &record)?,
                    (Some((record, size)), None) => disks.create(&record, size)?,
                    (None, _) => {}
                }
                layer::create_overlay(&dir, &rootfs, &disks, &id, uid, idmap, premade.is_some())
            })
            .await?;
        }
        if let Some(pod) = spec.pod.as_ref().filter(|p| !p.volumes.is_empty()) {
            self.mount_volumes(spec, pod, uid).await?;
        }
        Ok(())
    }

    /// Starts bubblewrap for box `spec` as host `uid` in `netns` (its own when `None`), held
    /// before its first step (see [`Held`]), and moves it into the box's cgroups, made here.
    async fn hold_bubblewrap(
        &self,
        spec: &BoxSpec,
        uid: u32,
        layer: &Path,
        netns: Option<&Path>,
        listener: std::os::unix::net::UnixListener,
    ) -> Result<Held, BoxError> {
        let procs = self.cgroups.create(&self.instance, spec.id.as_str(), spec.limits)?;
        self.record_box(spec, uid, None)?;
        let mut held = self.spawner.spawn(uid, layer, netns, listener)?;
        let pid = held.child.id().unwrap_or_default();
        let moved = async {
            self.record_box(spec, uid, Some(pid))?;
            // bubblewrap waits for its arguments, so it has made nothing yet: once it is in the
            // box's cgroups, whatever it starts is born there.
            join_cgroups(procs, pid).await
        };
        match moved.await {
            Ok(()) => Ok(held),
            Err(e) => {
                held.kill().await;
                Err(e)
            }
        }
    }
}

/// Makes the directory of an instance's layers, root's and only traversable by others (a box's
/// uid passes through it to its own layer).
fn instance_dir_ready(dir: &Path) -> Result<(), BoxError> {
    fs::create_dir_all(dir).map_err(BoxError::io(format!("creating {}", dir.display())))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o711))
        .map_err(BoxError::io(format!("setting the mode of {}", dir.display())))
}

/// Moves process `pid` into the cgroups whose `cgroup.procs` files are `procs`.
async fn join_cgroups(procs: Vec<PathBuf>, pid: u32) -> Result<(), BoxError> {
    blocking(move || {
        for file in &procs {
            fs::write(file, pid.to_string())
                .map_err(BoxError::io(format!("moving the box into {}", file.display())))?;
        }
        Ok(())
    })
    .await
}

/// What starts a box's bubblewrap, held (see [`Held`]).
#[derive(Debug)]
struct Spawner {
    bwrap: PathBuf,
    /// boxd's command line in the box, after bubblewrap's own arguments.
    boxd: Vec<String>,
    /// The seccomp program, handed to bubblewrap through a pipe.
    seccomp: Vec<u8>,
}

impl Spawner {
    /// Starts bubblewrap as host `uid` in `netns` (its own when `None`), held before its first
    /// step; boxd will listen on `listener` (bubblewrap's standard input), and bubblewrap's
    /// errors go to the log in `layer`.
    fn spawn(
        &self,
        uid: u32,
        layer: &Path,
        netns: Option<&Path>,
        listener: std::os::unix::net::UnixListener,
    ) -> Result<Held, BoxError> {
        // The filter fits in a pipe's buffer, so it is written whole before bubblewrap starts;
        // bubblewrap reads it from `SECCOMP_FD` and closes that before it starts boxd.
        let (seccomp, mut filter) =
            std::io::pipe().map_err(BoxError::io("making a pipe for the seccomp filter"))?;
        filter.write_all(&self.seccomp).map_err(BoxError::io("writing the seccomp filter"))?;
        drop(filter);
        let (args, release) =
            std::io::pipe().map_err(BoxError::io("making a pipe for bubblewrap's arguments"))?;
        let log =
            fs::File::create(layer.join("bwrap.log")).map_err(BoxError::io("creating the box's log"))?;
        let mut command = tokio::process::Command::new(&self.bwrap);
        command
            .args(["--args".to_owned(), ARGS_FD.to_string()])
            .args(&self.boxd)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .uid(uid)
            .gid(uid)
            .process_group(0)
            .fd_mappings(vec![
                FdMapping { parent_fd: OwnedFd::from(seccomp), child_fd: SECCOMP_FD },
                FdMapping { parent_fd: OwnedFd::from(args), child_fd: ARGS_FD },
            ])
            .map_err(|e| BoxError::Start(format!("handing bubblewrap its seccomp filter: {e}")))?
            .stdin(Stdio::from(OwnedFd::from(listener)))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(false);
        let child = net::spawn_in(netns, || command.spawn()).map_err(BoxError::io("starting bubblewrap"))?;
        Ok(Held { child, release })
    }
}

/// A bubblewrap started for a box and held before its first step: it reads its arguments (every
/// namespace, mount and limit of the box) from `release`, and blocks there until they are written
/// and the pipe is closed. Without them it makes nothing and runs nothing.
struct Held {
    child: tokio::process::Child,
    release: std::io::PipeWriter,
}

impl Held {
    /// Hands bubblewrap its arguments (NUL-terminated, as `--args` reads them) and lets it go;
    /// bubblewrap, or the error (bubblewrap killed).
    async fn release(self, args: &[String]) -> Result<tokio::process::Child, BoxError> {
        let mut bytes = Vec::with_capacity(args.iter().map(|a| a.len() + 1).sum());
        for arg in args {
            bytes.extend_from_slice(arg.as_bytes());
            bytes.push(0);
        }
        // Closing the pipe (dropping it) is what lets bubblewrap go on: it reads to the end. The
        // arguments are a few KiB, within a pipe's buffer, and bubblewrap reads them at once.
        let Held { mut child, mut release } = self;
        let written = release.write_all(&bytes);
        drop(release);
        match written {
            Ok(()) => Ok(child),
            Err(e) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                Err(BoxError::Io { context: "handing bubblewrap the box's arguments".into(), source: e })
            }
        }
    }

    /// Kills the held bubblewrap (before it made anything) and reaps it.
    async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

impl LocalBackend {
    /// Destroys every box of this instance and removes the instance's directories and cgroups,
    /// as if it had never run (for tests and for retiring a data directory).
    pub async fn remove_all(&self) -> Result<(), BoxError> {
        self.warm.close().await;
        self.maker().remove_all().await;
        for id in self.list().await? {
            self.destroy(&id).await?;
        }
        self.disks.purge_retired(u64::MAX);
        self.cgroups.remove_instance(&self.instance).await?;
        net::remove_instance(&self.instance, &self.config.run_root).await;
        match fs::remove_dir_all(self.instance_dir()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BoxError::Io {
                context: format!("removing {}", self.instance_dir().display()),
                source: e,
            }),
        }
    }

    /// Host pids of every process of the box (empty once it is gone).
    pub fn pids(&self, id: &BoxId) -> Vec<i32> {
        self.cgroups.pids(&self.instance, id.as_str())
    }

    /// The box's process limit and how many forks it has refused, from its cgroup (v1 or v2).
    pub fn pids_limit(&self, id: &BoxId) -> Option<(u64, u64)> {
        self.cgroups.pids_limit(&self.instance, id.as_str())
    }

    /// Whether anything of the box remains on the host: processes, cgroups or its layer.
    pub fn leaves_traces(&self, id: &BoxId) -> Vec<String> {
        let mut traces = Vec::new();
        if !self.pids(id).is_empty() {
            traces.push(format!("processes {:?}", self.pids(id)));
        }
        if self.cgroups.list(&self.instance).iter().any(|n| n == id.as_str()) {
            traces.push("a cgroup".into());
        }
        traces.extend(net::traces(&self.instance, id));
        let layer = self.layer_dir(id);
        if layer::is_mount_point(&layer) {
            traces.push(format!("a mount at {}", layer.display()));
        }
        if layer.exists() {
            traces.push(format!("the directory {}", layer.display()));
        }
        if self.disks.file(id).exists() {
            traces.push(format!("a disk at {}", self.disks.file(id).display()));
        }
        traces
    }
}

impl LocalBackend {
    /// Starts box `id` again from its disk when its processes are gone (a host reboot, a box
    /// whose PID 1 died): what its last run left is cleared, its uid claimed again, and a fresh
    /// boxd started on the same root. Processes do not survive; files on its disk do.
    async fn revive(&self, id: &BoxId) -> BoxStatus {
        // Another box of a pod needs the first box running: its network and its volumes' disk.
        let first = self.disks.record(id).and_then(|r| r.pod).map(|p| p.first).filter(|first| first != id);
        if let Some(first) = first
            && !matches!(self.status(&first).await, Ok(BoxStatus::Running))
        {
            tracing::warn!(box_id = %id, pod = %first, "the first box of this box's pod does not run");
            return BoxStatus::Gone;
        }
        let _one_at_a_time = self.reviving.lock().await;
        if self.layer_dir(id).exists() && self.boxd(id).health().await.is_ok() {
            return BoxStatus::Running;
        }
        let Some(record) = self.disks.record(id) else { return BoxStatus::Gone };
        tracing::info!(box_id = %id, image = record.image, "starting a box again from its disk");
        let spec = BoxSpec {
            id: id.clone(),
            image: record.image.clone(),
            limits: record.limits,
            egress: record.egress,
            pod: record.pod.clone(),
        };
        // The pod's first box keeps the namespace its pod's other boxes may still be in, with
        // or without egress (`network`).
        let keeps_network = record.pod.as_ref().is_some_and(|p| p.first == *id);
        let result = async {
            self.cgroups.destroy(&self.instance, id.as_str()).await?;
            if !keeps_network {
                net::detach(&self.instance, id.as_str()).await;
            }
            layer::remove(&self.layer_dir(id))?;
            self.claim_this_uid(id, record.uid)?;
            self.start(&spec, record.uid, None, true).await
        };
        match result.await {
            Ok(()) => BoxStatus::Running,
            Err(e) => {
                tracing::warn!(box_id = %id, error = %e, "a box could not be started again from its disk");
                let _ = self.cgroups.destroy(&self.instance, id.as_str()).await;
                net::detach(&self.instance, id.as_str()).await;
                let _ = layer::remove(&self.layer_dir(id));
                BoxStatus::Gone
            }
        }
    }

    /// Keeps each box's disk for `grace` after the box is destroyed (out of sight, under
    /// `<data>/boxes/.ended`), then deletes it: the operator's grace after a lease ends.
    #[must_use]
    pub fn with_disk_grace(mut self, grace: Duration) -> LocalBackend {
        self.disk_grace = grace;
        self
    }

    /// Why box `spec` cannot join `pod`, if it cannot: its volumes must be plain, and live on
    /// the first box's disk (a box of the `host` image has none); another box joins only a
    /// first box that runs.
    fn check_pod(&self, spec: &BoxSpec, pod: &crate::Pod) -> Result<(), BoxError> {
        for volume in &pod.volumes {
            volume.check().map_err(BoxError::Unsupported)?;
        }
        let first_has_disk = if pod.first == spec.id {
            spec.image != crate::image::HOST
        } else {
            if !self.layer_dir(&pod.first).exists() {
                return Err(BoxError::Start(format!("the pod's first box {} does not run", pod.first)));
            }
            self.disks.record(&pod.first).is_some()
        };
        if !pod.volumes.is_empty() && !first_has_disk {
            return Err(BoxError::Unsupported(
                "a pod's volumes live on its first box's disk, and a box of the `host` image has none".into(),
            ));
        }
        Ok(())
    }

    /// The images this backend makes boxes from.
    pub fn images(&self) -> &crate::image::ImageStore {
        &self.images
    }

    /// The boxes whose disk lies on image `image` (it cannot be removed while they are).
    pub fn boxes_on_image(&self, image: &str) -> Vec<String> {
        self.disks.users_of(image)
    }
}

#[async_trait]
impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn create(&self, spec: &BoxSpec) -> Result<(), BoxError> {
        if spec.egress && self.net.is_none() {
            return Err(BoxError::Unsupported(
                "this vendbox gives boxes no network egress ([egress])".into(),
            ));
        }
        // No image is removed while a box of it is being made, before the box's disk record
        // names it (`ImageStore::remove` looks for such records).
        let _image = if spec.image == crate::image::HOST { None } else { Some(self.images.hold()?) };
        self.images.check(&spec.image).map_err(BoxError::Unsupported)?;
        if let Some(pod) = &spec.pod {
            self.check_pod(spec, pod)?;
        }
        if self.layer_dir(&spec.id).exists() || self.disks.record(&spec.id).is_some() {
            return Err(BoxError::Start(format!("box {} exists already", spec.id)));
        }
        // A box in a pod joins its pod's network, and a cgroup is renamed only on cgroup v1:
        // those start cold.
        let slot = if spec.pod.is_none() && self.cgroups.renames() {
            let disk = (spec.image != crate::image::HOST).then(|| disk_bytes(spec.limits));
            self.warm.take(|| self.maker(), spec.egress, warm::Want { limits: spec.limits, disk })
        } else {
            None
        };
        let new_disk = |uid: u32| {
            (spec.image != crate::image::HOST).then(|| {
                let record = disk::DiskRecord {
                    id: spec.id.clone(),
                    image: spec.image.clone(),
                    uid,
                    limits: spec.limits,
                    egress: spec.egress,
                    pod: spec.pod.clone(),
                };
                (record, disk_bytes(spec.limits))
            })
        };
        if let Some(slot) = slot {
            let uid = slot.uid;
            match self.start_warm(spec, slot, new_disk(uid)).await {
                Ok(()) => return Ok(()),
                // A slot is only a head start: without it the box starts cold, as it would have
                // (what the slot made of the box goes first).
                Err(e) => {
                    tracing::warn!(box_id = %spec.id, error = %e, "a warm slot failed; the box starts cold");
                    self.destroy(&spec.id).await?;
                }
            }
        }
        let uid = self.claim_uid(&spec.id)?;
        let started = self.start(spec, uid, new_disk(uid), false).await;
        match started {
            Ok(()) => Ok(()),
            Err(e) => {
                match self.destroy(&spec.id).await {
                    // `destroy` gives the uid back once nothing of the box is left; without a
                    // record it cannot know the uid, so it is given back here.
                    Ok(()) => self.release_uid(uid),
                    // Something of the box may still run as that uid: it stays claimed.
                    Err(cleanup) => {
                        tracing::warn!(box_id = %spec.id, error = %cleanup, "cleaning up a box that did not start");
                    }
                }
                Err(e)
            }
        }
    }

    async fn status(&self, id: &BoxId) -> Result<BoxStatus, BoxError> {
        if !self.layer_dir(id).exists() {
            return Ok(if self.disks.record(id).is_some() { self.revive(id).await } else { BoxStatus::Gone });
        }
        if self.boxd(id).health().await.is_ok() {
            return Ok(BoxStatus::Running);
        }
        if self.cgroups.pids(&self.instance, id.as_str()).is_empty() {
            Ok(if self.disks.record(id).is_some() { self.revive(id).await } else { BoxStatus::Gone })
        } else {
            Ok(BoxStatus::Unresponsive)
        }
    }

    fn boxd(&self, id: &BoxId) -> BoxdClient {
        BoxdClient::new(layer::socket(&self.layer_dir(id)))
    }

    async fn destroy(&self, id: &BoxId) -> Result<(), BoxError> {
        let record = self.record(id);
        if let Some(record) = &record
            && let Some(pid) = record.pid.and_then(|p| i32::try_from(p).ok())
        {
            // The monitor and boxd, in case the box died before it joined its cgroup. A pid
            // is only killed while it still runs as the box's own uid: after a reboot or a
            // crash the recorded number may belong to anything.
            for pid in std::iter::once(pid).chain(children_of(pid.unsigned_abs())) {
                if runs_as(pid, record.uid)
                    && let Some(pid) = rustix::process::Pid::from_raw(pid)
                {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        }
        self.cgroups.destroy(&self.instance, id.as_str()).await?;
        net::detach(&self.instance, id.as_str()).await;
        layer::remove(&self.layer_dir(id))?;
        let disk_uid = self.disks.record(id).map(|r| r.uid);
        if self.disk_grace.is_zero() {
            self.disks.remove(id)?;
        } else {
            self.disks.retire(id, unix_now().saturating_add(self.disk_grace.as_secs()))?;
        }
        for uid in record.map(|r| r.uid).into_iter().chain(disk_uid) {
            self.release_uid_of(id, uid);
        }
        Ok(())
    }

    async fn usage(&self) -> Result<crate::Usage, BoxError> {
        let ids = self.list().await?;
        let mut known = self.limits.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Forget boxes that are gone; learn those made by an earlier vendbox from their record.
        known.retain(|id, _| ids.contains(id));
        let mut usage = crate::Usage::default();
        for id in ids {
            // A box still being made may have no record yet: it is asked again next time.
            let limits = match known.get(&id) {
                Some(limits) => Some(*limits),
                None => self
                    .record(&id)
                    .and_then(|r| r.limits)
                    .or_else(|| self.disks.record(&id).map(|r| r.limits))
                    .inspect(|l| {
                        known.insert(id.clone(), *l);
                    }),
            };
            usage = usage.plus(match limits {
                Some(limits) => crate::Usage::of(limits),
                None => crate::Usage { boxes: 1, ..crate::Usage::default() },
            });
        }
        Ok(usage)
    }

    fn pods(&self) -> bool {
        true
    }

    fn capacity(&self) -> crate::Usage {
        host_capacity()
    }

    async fn close(&self) {
        self.warm.close().await;
    }

    async fn list(&self) -> Result<Vec<BoxId>, BoxError> {
        let mut names = self.cgroups.list(&self.instance);
        if let Ok(entries) = fs::read_dir(self.instance_dir()) {
            names.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter_map(|e| e.file_name().into_string().ok()),
            );
        }
        let mut ids: Vec<BoxId> = names.iter().filter_map(|n| BoxId::new(n).ok()).collect();
        // The sweep lists boxes every few seconds: disks whose grace ended go then.
        self.disks.purge_retired(unix_now());
        ids.extend(self.disks.ids());
        ids.sort();
        ids.dedup();
        Ok(ids)
    }
}

/// Claims a free uid for `name` (a box's id or a warm slot's name) of `instance`: a marker file
/// per uid under `run_root`, created exclusively, naming its owner.
fn claim_uid(run_root: &Path, instance: &str, name: &str) -> Result<u32, BoxError> {
    let start = u32::from_le_bytes(Sha256::digest(name.as_bytes())[..4].try_into().unwrap_or([0; 4]));
    let dir = run_root.join("uids");
    for step in 0..UID_COUNT {
        let uid = UID_BASE + (start.wrapping_add(step) % UID_COUNT);
        let marker = dir.join(uid.to_string());
        match fs::OpenOptions::new().write(true).create_new(true).open(&marker) {
            Ok(_) => {
                fs::write(&marker, format!("{instance}/{name}")).map_err(BoxError::io("claiming a uid"))?;
                return Ok(uid);
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(BoxError::Io { context: "claiming a uid".into(), source: e }),
        }
    }
    Err(BoxError::Unsupported("every box uid of this host is in use".into()))
}

/// The size of a box's disk: its limit, and at least 64 MiB.
fn disk_bytes(limits: crate::Limits) -> u64 {
    u64::from(limits.disk_mb.max(64)) * 1024 * 1024
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Runs `work` (host tools and mounts: `mkfs.ext4`, `losetup`, the overlay) on a thread that may
/// block, not on the runtime's.
async fn blocking(work: impl FnOnce() -> Result<(), BoxError> + Send + 'static) -> Result<(), BoxError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| BoxError::Start(format!("a blocking step failed: {e}")))?
}

/// The files of `/proc` that lxcfs shows per cgroup and boxes see through it.
const LXCFS_PROC: [&str; 6] = ["cpuinfo", "meminfo", "stat", "uptime", "loadavg", "swaps"];

/// lxcfs's `/proc` when the host runs lxcfs at `/var/lib/lxcfs` (Debian's `lxcfs` service), with
/// every file boxes are shown.
fn lxcfs_proc() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mounted = mountinfo.lines().any(|line| {
        line.split(' ').nth(4) == Some("/var/lib/lxcfs")
            && line.split_once(" - ").is_some_and(|(_, right)| right.starts_with("fuse.lxcfs "))
    });
    let proc = PathBuf::from("/var/lib/lxcfs/proc");
    (mounted && LXCFS_PROC.iter().all(|file| proc.join(file).is_file())).then_some(proc)
}

/// The boxes of data directory `data_dir` whose disk lies on image `image` (for `vendbox image
/// rm`, which refuses to take an image from under a box).
pub fn boxes_on_image(data_dir: &Path, image: &str) -> Vec<String> {
    disk::Disks::of_data_dir(data_dir).users_of(image)
}

fn host_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// What this host can give boxes: its memory less a reserve for the host (a tenth, at least
/// 1 GiB), half the kernel's pid space, and one box per uid of the range.
fn host_capacity() -> crate::Usage {
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let total_mb = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024);
    let reserve_mb = (total_mb / 10).max(1024);
    let pid_max = fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(32_768);
    crate::Usage {
        boxes: UID_COUNT as usize,
        memory_mb: total_mb.saturating_sub(reserve_mb),
        pids: pid_max / 2,
    }
}

/// Whether process `pid` runs with the real uid `uid` (per `/proc/<pid>/status`).
fn runs_as(pid: i32, uid: u32) -> bool {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else { return false };
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next())
        .is_some_and(|real| real == uid.to_string())
}

/// The direct children of `pid` (from `/proc/<pid>/task/*/children`).
fn children_of(pid: u32) -> Vec<i32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|text| text.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<_>>())
        .collect()
}

/// `program` on `PATH`, or in the usual system directories.
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/bin", "/usr/sbin", "/bin"])
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| candidate.is_file())
}

/// `exe` itself when every uid can reach and run it (a box's uid must, to start it), else a copy
/// under `run_root` that can.
fn reachable_copy(exe: &Path, run_root: &Path) -> Result<PathBuf, BoxError> {
    let exe = fs::canonicalize(exe).map_err(BoxError::io(format!("finding boxd at {}", exe.display())))?;
    let world_can_reach = exe
        .ancestors()
        .skip(1)
        .all(|dir| fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
        && fs::metadata(&exe).is_ok_and(|m| m.permissions().mode() & 0o005 == 0o005);
    if world_can_reach {
        return Ok(exe);
    }
    // Named by size and modification time, so a start-up finds an earlier copy without reading
    // the program again, and a rebuilt program gets a copy of its own.
    let meta = fs::metadata(&exe).map_err(BoxError::io(format!("reading {}", exe.display())))?;
    let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    let copy = run_root.join(format!("boxd-{}-{}", meta.len(), modified.map_or(0, |d| d.as_nanos())));
    if !copy.exists() {
        let partial = copy.with_extension("partial");
        fs::copy(&exe, &partial).map_err(BoxError::io(format!("writing {}", partial.display())))?;
        fs::set_permissions(&partial, fs::Permissions::from_mode(0o755))
            .map_err(BoxError::io(format!("making {} executable", partial.display())))?;
        fs::rename(&partial, &copy).map_err(BoxError::io(format!("placing {}", copy.display())))?;
    }
    Ok(copy)
}
