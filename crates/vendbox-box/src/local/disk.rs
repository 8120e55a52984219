//! A box's disk: a sparse ext4 file system in a file of the offer's size under the data
//! directory (`boxes/<box>/disk.img`), on a loop device while the box runs, with the box's
//! record beside it (`boxes/<box>/box.json`: image, limits, uid), so that a box outlives vendbox
//! and a host reboot and is started again from its disk.
//!
//! A new disk is a copy of an empty file system of its size, made once per size with `mkfs.ext4`
//! (`boxes/.empty-<bytes>.img`) and copied block for block where it holds data (a reflink where
//! the host's file system can share blocks), which takes a fraction of what `mkfs.ext4` takes.
//! Every disk of one size so shares its file system's UUID; nothing on the host names a box's
//! disk by it (a disk is found by its path and mounted through its loop device).
//!
//! The file system's size is the hard bound: a write past it fails with `ENOSPC` in the box.
//! Its pages are the box's memory only while cached, so memory and disk limits are independent.
//! The loop device reads and writes the file with direct I/O (the host does not cache the disk a
//! second time) and is released by the kernel when the file system is unmounted.

use std::fs;
use std::os::unix::fs::{PermissionsExt as _, chown};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rustix::mount::MountFlags;
use serde::{Deserialize, Serialize};

use crate::error::BoxError;
use crate::{BoxId, Limits};

/// What the host keeps about a box with a disk, beside the disk, for as long as the disk lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DiskRecord {
    pub(crate) id: BoxId,
    /// The image below the disk.
    pub(crate) image: String,
    /// The host uid of the box's root; the disk's files are owned by it.
    pub(crate) uid: u32,
    pub(crate) limits: Limits,
    pub(crate) egress: bool,
    /// Its pod, if it is in one (absent in records of older vendbox versions).
    #[serde(default)]
    pub(crate) pod: Option<crate::Pod>,
}

/// The disks of one data directory (`<data>/boxes`, root's alone).
#[derive(Debug, Clone)]
pub(crate) struct Disks {
    dir: PathBuf,
}

impl Disks {
    pub(crate) fn of_data_dir(data_dir: &Path) -> Disks {
        Disks { dir: data_dir.join("boxes") }
    }

    fn box_dir(&self, id: &BoxId) -> PathBuf {
        self.dir.join(id.as_str())
    }

    /// The disk's file.
    pub(crate) fn file(&self, id: &BoxId) -> PathBuf {
        self.box_dir(id).join("disk.img")
    }

    /// The record of box `id`'s disk, if it has one.
    pub(crate) fn record(&self, id: &BoxId) -> Option<DiskRecord> {
        let text = fs::read(self.box_dir(id).join("box.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Boxes with a disk.
    pub(crate) fn ids(&self) -> Vec<BoxId> {
        let Ok(entries) = fs::read_dir(&self.dir) else { return Vec::new() };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|name| BoxId::new(&name).ok())
            .filter(|id| self.box_dir(id).join("box.json").is_file())
            .collect()
    }

    /// The boxes whose disk lies on image `image`.
    pub(crate) fn users_of(&self, image: &str) -> Vec<String> {
        let mut users: Vec<String> = self
            .ids()
            .into_iter()
            .filter_map(|id| self.record(&id))
            .filter(|r| r.image == image)
            .map(|r| r.id.to_string())
            .collect();
        users.sort();
        users
    }

    /// Makes `dir` (a box's or a warm slot's, in the disks' directory) and the disks' directory,
    /// root's alone.
    fn make_dir(&self, dir: &Path) -> Result<(), BoxError> {
        for dir in [&self.dir, dir] {
            match fs::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(BoxError::Io { context: format!("creating {}", dir.display()), source: e });
                }
            }
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(BoxError::io(format!("setting the mode of {}", dir.display())))?;
        }
        Ok(())
    }

    /// Makes an empty disk of `size_bytes` for `record`'s box, and writes the record.
    pub(crate) fn create(&self, record: &DiskRecord, size_bytes: u64) -> Result<(), BoxError> {
        self.make_dir(&self.box_dir(&record.id))?;
        let empty = self.empty_disk(size_bytes, record.id.as_str())?;
        copy_sparse(&empty, &self.file(&record.id))?;
        self.write_record(record)
    }

    /// The empty file system of `size_bytes` new disks are copied from, made now if this is the
    /// first disk of that size (`id` names the box asking, for a file of its own while it is
    /// made: two boxes may make it at once, and either result serves).
    fn empty_disk(&self, size_bytes: u64, id: &str) -> Result<PathBuf, BoxError> {
        let empty = self.dir.join(format!(".empty-{size_bytes}.img"));
        if fs::metadata(&empty).is_ok_and(|m| m.is_file() && m.len() == size_bytes) {
            return Ok(empty);
        }
        let partial = self.dir.join(format!(".empty-{size_bytes}.{id}.partial"));
        let made = (|| {
            let file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&partial)
                .map_err(BoxError::io(format!("creating {}", partial.display())))?;
            file.set_len(size_bytes).map_err(BoxError::io(format!("sizing {}", partial.display())))?;
            // No blocks reserved for root (the box's bound is the whole disk), inode tables and
            // the journal left uninitialised (never read before written; the disk stays sparse).
            run(Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
                .arg(&partial))?;
            // On disk before it has its name, so that a crash never leaves a torn one under it.
            file.sync_all().map_err(BoxError::io(format!("writing {}", partial.display())))?;
            fs::rename(&partial, &empty).map_err(BoxError::io(format!("placing {}", empty.display())))
        })();
        if made.is_err() {
            let _ = fs::remove_file(&partial);
        }
        made.map(|()| empty)
    }

    pub(crate) fn write_record(&self, record: &DiskRecord) -> Result<(), BoxError> {
        let path = self.box_dir(&record.id).join("box.json");
        let partial = path.with_extension("json.partial");
        let text = serde_json::to_vec(record).map_err(|e| BoxError::Start(e.to_string()))?;
        fs::write(&partial, text).map_err(BoxError::io(format!("writing {}", partial.display())))?;
        fs::rename(&partial, &path).map_err(BoxError::io(format!("writing {}", path.display())))
    }

    /// Mounts box `id`'s disk at `target` (`nosuid`, `nodev`) and makes sure it has the overlay's
    /// `upper` (the box's, owned by `uid`) and `work` (root's) directories.
    ///
    /// The disk's top directory is never shown to the box (only `upper` is, through the overlay),
    /// so the host's paths in it are its own.
    pub(crate) fn mount(&self, id: &BoxId, target: &Path, uid: u32) -> Result<(), BoxError> {
        Self::mount_file(&self.file(id), id.as_str(), target, uid)
    }

    /// Makes an empty disk of `size_bytes` for warm slot `name` (`boxes/<name>/disk.img`, with
    /// no record: no box has it yet) and mounts it at `target` as [`Disks::mount`] does.
    pub(crate) fn prepare(
        &self,
        name: &str,
        size_bytes: u64,
        target: &Path,
        uid: u32,
    ) -> Result<(), BoxError> {
        let dir = self.dir.join(name);
        self.make_dir(&dir)?;
        let empty = self.empty_disk(size_bytes, name)?;
        let file = dir.join("disk.img");
        copy_sparse(&empty, &file)?;
        fs::create_dir(target).map_err(BoxError::io(format!("creating {}", target.display())))?;
        Self::mount_file(&file, name, target, uid)
    }

    /// Gives warm slot `name`'s disk (mounted, see [`Disks::prepare`]) to box `record.id`, and
    /// writes the box's record beside it.
    pub(crate) fn hand_over(&self, name: &str, record: &DiskRecord) -> Result<(), BoxError> {
        let (from, to) = (self.dir.join(name), self.box_dir(&record.id));
        fs::rename(&from, &to).map_err(BoxError::io(format!(
            "giving {} to box {}",
            from.display(),
            record.id
        )))?;
        self.write_record(record)
    }

    /// Deletes warm slot `name`'s disk (unmounted). Idempotent.
    pub(crate) fn remove_prepared(&self, name: &str) {
        let _ = fs::remove_dir_all(self.dir.join(name));
    }

    fn mount_file(file: &Path, id: &str, target: &Path, uid: u32) -> Result<(), BoxError> {
        let file = file.to_owned();
        let (device, held) = loop_device::attach(&file)?;
        let mounted = rustix::mount::mount(
            &device,
            target,
            "ext4",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOATIME,
            Some(c"noinit_itable"),
        );
        // The device clears itself when nothing holds it: once the file system is unmounted, or
        // now if the mount failed.
        drop(held);
        mounted.map_err(|e| BoxError::Io {
            context: format!(
                "mounting the disk {} ({}) at {}",
                file.display(),
                device.display(),
                target.display()
            ),
            source: e.into(),
        })?;
        for (name, owner, mode) in [("upper", uid, 0o755), ("work", 0, 0o700)] {
            let dir = target.join(name);
            match fs::symlink_metadata(&dir) {
                Ok(meta) if meta.is_dir() => continue,
                Ok(_) => {
                    return Err(BoxError::Start(format!(
                        "the disk of box {id} has a `{name}` that is not a directory"
                    )));
                }
                Err(_) => {}
            }
            fs::create_dir(&dir).map_err(BoxError::io(format!("creating {}", dir.display())))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
                .map_err(BoxError::io(format!("setting the mode of {}", dir.display())))?;
            chown(&dir, Some(owner), Some(owner))
                .map_err(BoxError::io(format!("handing {} to the box", dir.display())))?;
        }
        Ok(())
    }

    /// Keeps box `id`'s disk and record, out of sight, until `until` (Unix seconds), when
    /// [`Disks::purge_retired`] deletes them: the operator's grace after a lease ends.
    pub(crate) fn retire(&self, id: &BoxId, until: u64) -> Result<(), BoxError> {
        let retired = self.dir.join(".ended");
        match fs::create_dir(&retired) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(BoxError::Io { context: format!("creating {}", retired.display()), source: e });
            }
        }
        match fs::rename(self.box_dir(id), retired.join(format!("{id}.{until}"))) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BoxError::Io { context: format!("keeping the disk of box {id}"), source: e }),
        }
    }

    /// Deletes the retired disks whose grace ended by `now` (Unix seconds).
    pub(crate) fn purge_retired(&self, now: u64) {
        let Ok(entries) = fs::read_dir(self.dir.join(".ended")) else { return };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let until = name.rsplit_once('.').and_then(|(_, until)| until.parse::<u64>().ok());
            if until.is_none_or(|until| until <= now) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Deletes box `id`'s disk and record. Idempotent.
    pub(crate) fn remove(&self, id: &BoxId) -> Result<(), BoxError> {
        match fs::remove_dir_all(self.box_dir(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BoxError::Io { context: format!("removing the disk of box {id}"), source: e }),
        }
    }
}

/// Loop devices, set up with the kernel's own interface (`/dev/loop-control` and
/// `LOOP_CONFIGURE`, Linux 5.8) rather than `losetup`: a box's start runs no process for its disk.
mod loop_device {
    use std::fs;
    use std::os::fd::{AsRawFd as _, BorrowedFd};
    use std::path::{Path, PathBuf};

    use crate::error::BoxError;

    /// `LOOP_CTL_GET_FREE` of `linux/loop.h`.
    const LOOP_CTL_GET_FREE: libc::Ioctl = 0x4C82;
    /// `LOOP_CONFIGURE` of `linux/loop.h`.
    const LOOP_CONFIGURE: libc::Ioctl = 0x4C0A;
    /// `LO_FLAGS_AUTOCLEAR`: the device lets its file go when its last holder closes it.
    const LO_FLAGS_AUTOCLEAR: u32 = 4;
    /// `LO_FLAGS_DIRECT_IO`: the file is read and written past the host's page cache.
    const LO_FLAGS_DIRECT_IO: u32 = 16;
    /// How often another process may take the free device first before attaching gives up.
    const TRIES: usize = 16;

    /// `struct loop_info64` of `linux/loop.h`.
    #[repr(C)]
    struct LoopInfo64 {
        device: u64,
        inode: u64,
        rdevice: u64,
        offset: u64,
        size_limit: u64,
        number: u32,
        encrypt_type: u32,
        encrypt_key_size: u32,
        flags: u32,
        file_name: [u8; 64],
        crypt_name: [u8; 64],
        encrypt_key: [u8; 32],
        init: [u64; 2],
    }

    /// `struct loop_config` of `linux/loop.h`.
    #[repr(C)]
    struct LoopConfig {
        fd: u32,
        block_size: u32,
        info: LoopInfo64,
        reserved: [u64; 8],
    }

    // The kernel's sizes: `struct loop_info64` is 232 bytes, `struct loop_config` 304.
    const _: () = assert!(size_of::<LoopInfo64>() == 232 && size_of::<LoopConfig>() == 304);

    /// Attaches `file` to a free loop device, with direct I/O and cleared automatically: its
    /// path, and the open device, which holds it until dropped (mount it first).
    pub(super) fn attach(file: &Path) -> Result<(PathBuf, fs::File), BoxError> {
        let open = |path: &Path| {
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(BoxError::io(format!("opening {}", path.display())))
        };
        let backing = open(file)?;
        let control = open(Path::new("/dev/loop-control"))?;
        let fd = u32::try_from(backing.as_raw_fd())
            .map_err(|_| BoxError::Start("a negative descriptor".into()))?;
        for _ in 0..TRIES {
            let number = ioctl(std::os::fd::AsFd::as_fd(&control), LOOP_CTL_GET_FREE, None)
                .map_err(BoxError::io("asking /dev/loop-control for a free loop device"))?;
            let path = PathBuf::from(format!("/dev/loop{number}"));
            let device = open(&path)?;
            let config = LoopConfig {
                fd,
                block_size: 0,
                info: LoopInfo64 {
                    device: 0,
                    inode: 0,
                    rdevice: 0,
                    offset: 0,
                    size_limit: 0,
                    number: 0,
                    encrypt_type: 0,
                    encrypt_key_size: 0,
                    flags: LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO,
                    file_name: [0; 64],
                    crypt_name: [0; 64],
                    encrypt_key: [0; 32],
                    init: [0; 2],
                },
                reserved: [0; 8],
            };
            match ioctl(std::os::fd::AsFd::as_fd(&device), LOOP_CONFIGURE, Some(&config)) {
                Ok(_) => return Ok((path, device)),
                // Another process took it between the two calls.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => {
                    return Err(BoxError::Io {
                        context: format!("attaching {} to {}", file.display(), path.display()),
                        source: e,
                    });
                }
            }
        }
        Err(BoxError::Start(format!("no loop device stayed free for {}", file.display())))
    }

    /// `ioctl(fd, request)` or `ioctl(fd, request, config)`: its non-negative result.
    #[allow(unsafe_code)]
    fn ioctl(fd: BorrowedFd<'_>, request: libc::Ioctl, config: Option<&LoopConfig>) -> std::io::Result<i32> {
        // SAFETY: `fd` is an open descriptor borrowed for the call. The two requests made here
        // are `LOOP_CTL_GET_FREE`, which takes no argument, and `LOOP_CONFIGURE`, which reads a
        // `struct loop_config` through the pointer: `config` is one, laid out as the kernel's
        // (`repr(C)`, the same fields in the same order), and lives across the call. The kernel
        // writes no memory of this process for either.
        let result = unsafe {
            match config {
                Some(config) => libc::ioctl(fd.as_raw_fd(), request, std::ptr::from_ref(config)),
                None => libc::ioctl(fd.as_raw_fd(), request),
            }
        };
        if result < 0 { Err(std::io::Error::last_os_error()) } else { Ok(result) }
    }
}

/// Copies `from` to a new file `to`, holes kept: a reflink where the file system can share
/// blocks, else each run of data copied in the kernel (`copy_file_range`) and the holes skipped.
fn copy_sparse(from: &Path, to: &Path) -> Result<(), BoxError> {
    use rustix::fs::SeekFrom;
    let context = || format!("copying {} to {}", from.display(), to.display());
    let source = fs::File::open(from).map_err(BoxError::io(context()))?;
    let target =
        fs::OpenOptions::new().write(true).create_new(true).open(to).map_err(BoxError::io(context()))?;
    let len = source.metadata().map_err(BoxError::io(context()))?.len();
    target.set_len(len).map_err(BoxError::io(context()))?;
    if rustix::fs::ioctl_ficlone(&target, &source).is_ok() {
        return Ok(());
    }
    let failed = |e: rustix::io::Errno| BoxError::Io { context: context(), source: e.into() };
    let mut offset = 0;
    while offset < len {
        let mut data = match rustix::fs::seek(&source, SeekFrom::Data(offset)) {
            Ok(data) => data,
            // Only a hole is left.
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(failed(e)),
        };
        let hole = rustix::fs::seek(&source, SeekFrom::Hole(data)).map_err(failed)?;
        let mut at = data;
        while data < hole {
            let chunk = usize::try_from(hole - data).unwrap_or(usize::MAX);
            match rustix::fs::copy_file_range(&source, Some(&mut data), &target, Some(&mut at), chunk) {
                Ok(0) => return Err(BoxError::Start(format!("{}: the source ended early", context()))),
                Ok(_) => {}
                Err(e) => return Err(failed(e)),
            }
        }
        offset = hole;
    }
    Ok(())
}

/// Runs a host tool to completion; its standard output, or why it failed.
fn run(command: &mut Command) -> Result<String, BoxError> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .output()
        .map_err(BoxError::io(format!("running {program}")))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(BoxError::Start(format!(
            "{program} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}
