//! A box's layer: a tmpfs under the host's run directory whose top directory holds what the host
//! keeps about the box (boxd's socket, its record, its log), and what the box's root is made of.
//!
//! A box of the `host` image writes to the tmpfs itself (its private /etc, /root, /home, /tmp,
//! /var/tmp): its pages are charged to the box's memory cgroup as the box writes them, and its
//! size option stops writes at the box's disk bound with `ENOSPC`. A box of a built image has its
//! root there as an overlay ([`create_overlay`]): the image, idmapped and read-only, below; the
//! box's disk above.

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};

use crate::error::BoxError;

/// Directories of the layer the box writes to, owned by its uid, and where the box sees them.
/// Host code never resolves a path under one of them: the box can put a symlink anywhere there.
pub(crate) const WRITABLE: [(&str, &str, u32); 4] = [
    ("rw/root", "/root", 0o700),
    ("rw/home", "/home", 0o755),
    ("rw/tmp", "/tmp", 0o1777),
    ("rw/var-tmp", "/var/tmp", 0o1777),
];

/// Host /etc entries a box reads (shared libraries, name service, certificates, the
/// alternatives links much of /usr/bin points through); bound read-only where the host has them.
pub(crate) const HOST_ETC: [&str; 16] = [
    "alternatives",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "nsswitch.conf",
    "ssl",
    "ca-certificates",
    "localtime",
    "profile",
    "profile.d",
    "bash.bashrc",
    "inputrc",
    "terminfo",
    "os-release",
    "debian_version",
    "mime.types",
];

/// Where an image box's overlay is mounted in its layer: the root bubblewrap binds as `/`.
pub(crate) const OVERLAY_ROOT: &str = "root";

/// How much of the tmpfs an image box's layer takes: boxd's socket, the records and the log.
pub(crate) const IMAGE_LAYER_BYTES: u64 = 4 * 1024 * 1024;

/// Fills the layer of an image box at `dir` (its top mounted by [`mount_top`] with
/// [`IMAGE_LAYER_BYTES`]): the image's `rootfs`, idmapped to `uid` and read-only, at `lower`; the box's disk at `disk`; and the overlay of the two at
/// [`OVERLAY_ROOT`]. Every directory the host names here is one the box cannot reach: the box
/// sees only the overlay, never `lower`, `disk` or the disk's top directory.
/// `namespace`: a user namespace mapping root to `uid` made ahead ([`super::idmap::namespace_for`]),
/// or `None` to make it now. `disk_mounted`: the box's disk is at `disk` already (a warm slot's).
pub(crate) fn create_overlay(
    dir: &Path,
    rootfs: &Path,
    disks: &super::disk::Disks,
    id: &crate::BoxId,
    uid: u32,
    namespace: Option<std::os::fd::OwnedFd>,
    disk_mounted: bool,
) -> Result<(), BoxError> {
    for (name, mode) in [("lower", 0o700), ("disk", 0o700), (OVERLAY_ROOT, 0o755)] {
        mkdir(&dir.join(name), mode)?;
    }
    let namespace = match namespace {
        Some(namespace) => namespace,
        None => super::idmap::namespace_for(uid)?,
    };
    super::idmap::bind(rootfs, &dir.join("lower"), std::os::fd::AsFd::as_fd(&namespace), true)?;
    if !disk_mounted {
        disks.mount(id, &dir.join("disk"), uid)?;
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        dir.join("lower").display(),
        dir.join("disk/upper").display(),
        dir.join("disk/work").display()
    );
    let options =
        std::ffi::CString::new(options).map_err(|_| BoxError::Start("a layer path holds a NUL".into()))?;
    rustix::mount::mount(
        "vendbox-box",
        dir.join(OVERLAY_ROOT),
        "overlay",
        MountFlags::NOSUID | MountFlags::NODEV,
        Some(options.as_c_str()),
    )
    .map_err(|e| BoxError::Io {
        context: format!("mounting the overlay root in {}", dir.display()),
        source: e.into(),
    })
}

/// Mounts the layer's tmpfs at `dir`, mode 0711: the top a box's layer is made in, where the
/// host binds boxd's socket before the rest of the layer is there.
pub(crate) fn mount_top(dir: &Path, size_bytes: u64) -> Result<(), BoxError> {
    fs::create_dir_all(dir).map_err(BoxError::io(format!("creating {}", dir.display())))?;
    // 0711: the box's uid passes through to its directories; it cannot list the top, where
    // the host keeps boxd's socket, the box's record and its log.
    let options = std::ffi::CString::new(format!("size={size_bytes},mode=0711")).unwrap_or_default();
    rustix::mount::mount(
        "vendbox-box",
        dir,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        Some(options.as_c_str()),
    )
    .map_err(|e| BoxError::Io { context: format!("mounting a tmpfs at {}", dir.display()), source: e.into() })
}

/// Mounts the layer top mounted at `from` (a warm slot's) at `to` (its box's) instead, with what
/// is mounted in it (a slot's disk), and removes `from`: a bind mount of the same file systems,
/// so boxd's socket, the log and every descriptor open on them stay as they are (a bind, not a
/// move, works under a shared mount too).
pub(crate) fn move_top(from: &Path, to: &Path) -> Result<(), BoxError> {
    fs::create_dir(to).map_err(BoxError::io(format!("creating {}", to.display())))?;
    rustix::mount::mount_bind_recursive(from, to).map_err(|e| BoxError::Io {
        context: format!("mounting {} at {}", from.display(), to.display()),
        source: e.into(),
    })?;
    while is_mount_point(from) {
        rustix::mount::unmount(from, UnmountFlags::DETACH).map_err(|e| BoxError::Io {
            context: format!("unmounting {}", from.display()),
            source: e.into(),
        })?;
    }
    fs::remove_dir(from).map_err(BoxError::io(format!("removing {}", from.display())))
}

/// Unmounts the disk a warm slot mounted in layer `dir` for a box that has none (or another).
pub(crate) fn remove_disk(dir: &Path) -> Result<(), BoxError> {
    let disk = dir.join("disk");
    rustix::mount::unmount(&disk, UnmountFlags::DETACH)
        .map_err(|e| BoxError::Io { context: format!("unmounting {}", disk.display()), source: e.into() })?;
    fs::remove_dir(&disk).map_err(BoxError::io(format!("removing {}", disk.display())))
}

/// Sets the size of the layer top mounted at `dir` to `size_bytes` (a `host` box's disk bound).
pub(crate) fn resize_top(dir: &Path, size_bytes: u64) -> Result<(), BoxError> {
    let options = std::ffi::CString::new(format!("size={size_bytes}")).unwrap_or_default();
    rustix::mount::mount_remount(dir, MountFlags::NOSUID | MountFlags::NODEV, options.as_c_str()).map_err(
        |e| BoxError::Io { context: format!("resizing the tmpfs at {}", dir.display()), source: e.into() },
    )
}

/// Fills the layer at `dir` (its top mounted by [`mount_top`] with the box's disk bound) for a
/// box of the `host` image whose root is host `uid`.
pub(crate) fn create(dir: &Path, uid: u32) -> Result<(), BoxError> {
    let etc = dir.join("etc");
    mkdir(&etc, 0o755)?;
    let files = [
        (
            "passwd",
            "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        ),
        ("group", "root:x:0:\nnogroup:x:65534:\n"),
        ("hostname", "box\n"),
        ("hosts", "127.0.0.1\tlocalhost box\n::1\tlocalhost\n"),
        ("resolv.conf", ""),
    ];
    for (name, text) in files {
        fs::write(etc.join(name), text).map_err(BoxError::io(format!("writing {name} of the box")))?;
    }
    for entry in HOST_ETC {
        match fs::metadata(Path::new("/etc").join(entry)) {
            Ok(meta) if meta.is_dir() => mkdir(&etc.join(entry), 0o755)?,
            Ok(_) => fs::write(etc.join(entry), "").map_err(BoxError::io(format!("placing /etc/{entry}")))?,
            Err(_) => {}
        }
    }
    mkdir(&dir.join("rw"), 0o711)?;
    for (path, _, mode) in WRITABLE {
        let path = dir.join(path);
        mkdir(&path, mode)?;
        chown(&path, Some(uid), Some(uid))
            .map_err(BoxError::io(format!("handing {} to the box", path.display())))?;
    }
    Ok(())
}

fn mkdir(path: &Path, mode: u32) -> Result<(), BoxError> {
    match fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(BoxError::Io { context: format!("creating {}", path.display()), source: e }),
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(BoxError::io(format!("setting the mode of {}", path.display())))
}

/// Unmounts and removes the layer at `dir`. Idempotent.
pub(crate) fn remove(dir: &Path) -> Result<(), BoxError> {
    if !dir.exists() {
        return Ok(());
    }
    // Lazy: a process still holding a file open cannot keep the box's memory alive for long, and
    // the box's processes are gone by now.
    while is_mount_point(dir) {
        if let Err(e) = rustix::mount::unmount(dir, UnmountFlags::DETACH) {
            return Err(BoxError::Io { context: format!("unmounting {}", dir.display()), source: e.into() });
        }
    }
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BoxError::Io { context: format!("removing {}", dir.display()), source: e }),
    }
}

/// Whether `dir` is a mount point (per `/proc/self/mountinfo`).
pub(crate) fn is_mount_point(dir: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else { return false };
    let wanted = dir.to_string_lossy();
    info.lines().any(|line| line.split(' ').nth(4) == Some(wanted.as_ref()))
}

/// The socket boxd listens on, as the host sees it: in the layer's top directory, which is
/// root's and mounted in no box, so every component of the path is out of the box's reach.
pub(crate) fn socket(dir: &Path) -> PathBuf {
    dir.join("boxd.sock")
}

/// Binds boxd's socket (mode 0600, root's) for the box whose layer is `dir`.
pub(crate) fn bind_socket(dir: &Path) -> Result<std::os::unix::net::UnixListener, BoxError> {
    let path = socket(dir);
    let listener = std::os::unix::net::UnixListener::bind(&path)
        .map_err(BoxError::io(format!("binding {}", path.display())))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
        .map_err(BoxError::io(format!("setting the mode of {}", path.display())))?;
    Ok(listener)
}
