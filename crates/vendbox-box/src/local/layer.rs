//! A box's writable layer: a tmpfs of bounded size under the host's run directory that holds
//! the box's private /etc, /root, /home, /tmp, /var/tmp and boxd's socket directory.
//!
//! The tmpfs's pages are charged to the box's memory cgroup as the box writes them, and its size
//! option stops writes at the box's disk bound with `ENOSPC`.

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

/// Mounts and fills the layer at `dir` for a box whose root is host `uid`.
pub(crate) fn create(dir: &Path, size_bytes: u64, uid: u32) -> Result<(), BoxError> {
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
    .map_err(|e| BoxError::Io {
        context: format!("mounting a tmpfs at {}", dir.display()),
        source: e.into(),
    })?;
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
