//! Idmapped mounts: a view of a directory whose files, owned by root on the host, appear owned by
//! a box's uid, so that the box's root owns its image without the image being copied or chowned.
//!
//! The mapping is a user namespace that maps uid and gid 0 to the box's uid (the one mapping
//! the box itself has). A short-lived `unshare --user` process provides it; once the mount
//! holds the namespace the process is ended.

use std::fs;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::mount::{MoveMountFlags, OpenTreeFlags};

use crate::error::BoxError;

/// `MOUNT_ATTR_RDONLY` of `linux/mount.h`.
const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
/// `MOUNT_ATTR_NOSUID` of `linux/mount.h`.
const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
/// `MOUNT_ATTR_NODEV` of `linux/mount.h`.
const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
/// `MOUNT_ATTR_IDMAP` of `linux/mount.h`.
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// How long the helper process may take to enter its namespace.
const NAMESPACE_TIMEOUT: Duration = Duration::from_secs(5);

/// A user namespace mapping uid and gid 0 to `uid`, as an open `/proc/PID/ns/user`.
pub(crate) fn namespace_for(uid: u32) -> Result<OwnedFd, BoxError> {
    namespace_mapping(0, uid)
}

/// A user namespace mapping uid and gid `inside` to `outside`: through a mount idmapped with
/// it, files owned by host uid `inside` appear owned by `outside` (a pod's volume, owned by its
/// first box's uid, as another box of the pod sees it).
pub(crate) fn namespace_mapping(inside: u32, outside: u32) -> Result<OwnedFd, BoxError> {
    let mut helper = Command::new("unshare")
        .args(["--user", "--", "sleep", "30"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(BoxError::io("starting `unshare` for an idmapped mount"))?;
    let result = (|| {
        let pid = helper.id();
        let own = fs::read_link("/proc/self/ns/user").map_err(BoxError::io("reading our user namespace"))?;
        let started = Instant::now();
        while fs::read_link(format!("/proc/{pid}/ns/user"))
            .map_err(BoxError::io("reading a user namespace"))?
            == own
        {
            if started.elapsed() > NAMESPACE_TIMEOUT {
                return Err(BoxError::Start("the idmapping helper did not enter its user namespace".into()));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        for map in ["uid_map", "gid_map"] {
            fs::write(format!("/proc/{pid}/{map}"), format!("{inside} {outside} 1\n"))
                .map_err(BoxError::io(format!("writing the idmapping helper's {map}")))?;
        }
        let ns = fs::File::open(format!("/proc/{pid}/ns/user"))
            .map_err(BoxError::io("opening the idmapping helper's user namespace"))?;
        Ok(OwnedFd::from(ns))
    })();
    let _ = helper.kill();
    let _ = helper.wait();
    result
}

/// Mounts `source` again at `target`, with files shown as owned per the namespace's mapping
/// (`namespace_for`: host uid 0 as the box's uid); read-only when `read_only`. Always `nosuid`
/// and `nodev`. `source`'s last component is not followed if it is a symbolic link.
pub(crate) fn bind(
    source: &Path,
    target: &Path,
    namespace: BorrowedFd<'_>,
    read_only: bool,
) -> Result<(), BoxError> {
    let tree = rustix::mount::open_tree(
        rustix::fs::CWD,
        source,
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| BoxError::Io {
        context: format!("cloning the mount of {}", source.display()),
        source: e.into(),
    })?;
    let mut attributes = MOUNT_ATTR_IDMAP | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    if read_only {
        attributes |= MOUNT_ATTR_RDONLY;
    }
    set_attributes(tree.as_fd(), attributes, namespace).map_err(|e| BoxError::Io {
        context: format!(
            "idmapping {} (the kernel needs idmapped mounts, Linux 5.12 or later)",
            source.display()
        ),
        source: e,
    })?;
    rustix::mount::move_mount(
        tree.as_fd(),
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| BoxError::Io { context: format!("mounting {}", target.display()), source: e.into() })
}

/// `mount_setattr(tree, "", AT_EMPTY_PATH, {attributes, userns_fd: namespace})`: rustix has no
/// wrapper for it, so this is the backend's one system call made by hand.
#[allow(unsafe_code)]
fn set_attributes(tree: BorrowedFd<'_>, attributes: u64, namespace: BorrowedFd<'_>) -> std::io::Result<()> {
    // `struct mount_attr` (MOUNT_ATTR_SIZE_VER0): attr_set, attr_clr, propagation, userns_fd,
    // four u64s in this order, which a `[u64; 4]` lays out exactly.
    let userns =
        u64::try_from(namespace.as_raw_fd()).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
    let attr: [u64; 4] = [attributes, 0, 0, userns];
    let path = c"";
    // SAFETY: every pointer handed to the kernel points to memory that lives across the call
    // (`path` is a static C string, `attr` is on this frame) and the size passed is `attr`'s own;
    // the kernel only reads them. `tree` and `namespace` are open descriptors borrowed for the
    // call. The call changes no memory of this process.
    let result = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            path.as_ptr(),
            libc::AT_EMPTY_PATH,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if result == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}
