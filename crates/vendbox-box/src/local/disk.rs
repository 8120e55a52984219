//! A box's disk: a sparse ext4 file system in a file of the offer's size under the data
//! directory (`boxes/<box>/disk.img`), on a loop device while the box runs, with the box's
//! record beside it (`boxes/<box>/box.json`: image, limits, uid), so that a box outlives vendbox
//! and a host reboot and is started again from its disk.
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

    /// Makes an empty disk of `size_bytes` for `record`'s box, and writes the record.
    pub(crate) fn create(&self, record: &DiskRecord, size_bytes: u64) -> Result<(), BoxError> {
        for dir in [&self.dir, &self.box_dir(&record.id)] {
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
        let file = self.file(&record.id);
        let disk = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&file)
            .map_err(BoxError::io(format!("creating {}", file.display())))?;
        disk.set_len(size_bytes).map_err(BoxError::io(format!("sizing {}", file.display())))?;
        drop(disk);
        // No blocks reserved for root (the box's bound is the whole disk), inode tables and the
        // journal left uninitialised (never read before written; the disk stays sparse).
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
            .arg(&file))?;
        self.write_record(record)
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
        let file = self.file(id);
        let device = run(Command::new("losetup").args(["--find", "--show", "--direct-io=on"]).arg(&file))?;
        let device = device.trim().to_owned();
        let mounted = rustix::mount::mount(
            device.as_str(),
            target,
            "ext4",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOATIME,
            Some(c"noinit_itable"),
        );
        // Detaching a mounted loop device only marks it: the kernel releases it when the file
        // system is unmounted. Unmounted (a failed mount), it is released now.
        let detached = run(Command::new("losetup").arg("--detach").arg(&device));
        mounted.map_err(|e| BoxError::Io {
            context: format!("mounting the disk {} ({device}) at {}", file.display(), target.display()),
            source: e.into(),
        })?;
        detached?;
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
