//! Boxes: the `Backend` trait every way of running a box implements, the local namespace
//! backend, and the client that talks to boxd (PID 1 of every box) over its Unix socket.
//!
//! Callers (the server's lease lifecycle) see only [`Backend`], [`BoxSpec`] and [`BoxdClient`]:
//! a Kubernetes, cloud or microVM backend can follow without touching them.

mod client;
mod error;
pub mod fake;
pub mod image;
pub mod local;

/// boxd's protocol: what a command is, what it answers, and the events of its stream. Code above
/// boxes names these through `vendbox_box`, never through boxd.
pub use boxd_wire as wire;

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use client::{BoxdClient, BoxdStream, Connector, ExecStream, TcpTunnel, UnixConnector};
pub use error::BoxError;

/// A box's id: chosen by the caller (the lease's box id), unique on the host, used for its
/// directory and cgroup names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BoxId(String);

impl BoxId {
    /// A box id from text: 1-64 characters of `[a-z0-9-]`, so it is safe in paths and cgroup names.
    pub fn new(id: &str) -> Result<BoxId, BoxError> {
        let ok = !id.is_empty()
            && id.len() <= 64
            && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok { Ok(BoxId(id.to_owned())) } else { Err(BoxError::BadId(id.to_owned())) }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BoxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The limits a box runs under; they come from the offer it was sold by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// CPUs' worth of time per period (1 = one full core).
    pub vcpu: u32,
    /// Memory in MiB (for a `host` box, including its writable layer's contents).
    pub memory_mb: u32,
    /// Size of the box's disk in MiB: an image box's whole writable root (an ext4 file), a
    /// `host` box's writable layer (/root, /home, /tmp, /var/tmp, in memory).
    pub disk_mb: u32,
    /// Most processes and threads alive at once.
    pub pids: u32,
}

impl Limits {
    /// The process limit for a box of `memory_mb`: generous for real work, far below what hurts
    /// the host.
    pub fn pids_for(memory_mb: u32) -> u32 {
        (memory_mb / 4).clamp(64, 4096)
    }
}

/// Everything a backend needs to make a box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoxSpec {
    /// Its id.
    pub id: BoxId,
    /// Root filesystem image (`host` is the one every host has).
    pub image: String,
    /// Resource limits.
    pub limits: Limits,
    /// Whether it may reach the internet; without it the box has only its own loopback.
    pub egress: bool,
    /// The pod it belongs to, if any (only for a backend whose [`Backend::pods`] says so).
    pub pod: Option<Pod>,
}

/// A box's place in a pod: boxes of one owner that share one network namespace (they reach
/// each other on 127.0.0.1) and named volumes kept on the disk of the pod's first box, as the
/// containers of a Kubernetes pod or a compose project do. Nothing outside the pod shares them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    /// The pod's first box, made before the others and destroyed after them: the pod's network
    /// namespace and volumes are its. The first box names itself here.
    pub first: BoxId,
    /// The named volumes this box mounts: each a directory on the first box's disk, shared by
    /// every box of the pod that names it.
    pub volumes: Vec<Volume>,
}

/// A named volume of a pod as one box mounts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Its name: 1-64 of `[A-Za-z0-9_.-]`, not starting with `.`.
    pub name: String,
    /// Where the box sees it: an absolute path without `..`, outside `/proc`, `/dev`, `/sys`.
    pub path: String,
}

impl Volume {
    /// Why this volume cannot be mounted, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && !self.name.starts_with('.')
            && self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !name_ok {
            return Err(format!(
                "volume name `{}` must be 1-64 of letters, digits, `_`, `.`, `-`",
                self.name
            ));
        }
        let path = std::path::Path::new(&self.path);
        let plain = path.is_absolute()
            && self.path.len() <= 1024
            && !self.path.contains('\0')
            && path
                .components()
                .all(|c| matches!(c, std::path::Component::RootDir | std::path::Component::Normal(_)));
        let top = path.components().nth(1).map(|c| c.as_os_str().to_string_lossy().into_owned());
        match top.as_deref() {
            _ if !plain => Err(format!("volume path `{}` is not a plain absolute path", self.path)),
            None | Some("proc" | "dev" | "sys" | ".boxd") => {
                Err(format!("volume path `{}` is not one a volume can be mounted at", self.path))
            }
            Some(_) => Ok(()),
        }
    }
}

/// What a backend knows of a box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BoxStatus {
    /// boxd answers.
    Running,
    /// Its processes exist but boxd does not answer.
    Unresponsive,
    /// Nothing of it runs any more (its directory may remain until destroyed).
    Gone,
}

/// A way of running boxes.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// Short name for logs and health (`local`).
    fn name(&self) -> &'static str;

    /// Makes the box and returns once its boxd answers, or fails having left nothing behind.
    async fn create(&self, spec: &BoxSpec) -> Result<(), BoxError>;

    /// Whether the box runs and answers.
    async fn status(&self, id: &BoxId) -> Result<BoxStatus, BoxError>;

    /// A client for the box's boxd (commands, files).
    fn boxd(&self, id: &BoxId) -> BoxdClient;

    /// Ends every process of the box and removes everything it had. Destroying a box that is
    /// already gone succeeds.
    async fn destroy(&self, id: &BoxId) -> Result<(), BoxError>;

    /// The boxes this backend instance has on the host, running or not, for reconciliation.
    async fn list(&self) -> Result<Vec<BoxId>, BoxError>;

    /// What this backend's boxes hold of the host now (for admission control). Boxes whose
    /// limits are unknown count as boxes only.
    async fn usage(&self) -> Result<Usage, BoxError> {
        Ok(Usage { boxes: self.list().await?.len(), ..Usage::default() })
    }

    /// Whether it makes pods: boxes whose spec names a [`Pod`] share the first box's network
    /// namespace and mount its volumes. A backend that cannot refuses such a spec.
    fn pods(&self) -> bool {
        false
    }

    /// What the host can give boxes in all (memory after a reserve for the host, pids).
    fn capacity(&self) -> Usage {
        Usage { boxes: usize::MAX, memory_mb: u64::MAX, pids: u64::MAX }
    }

    /// Stops and removes what the backend runs beside its boxes (the local backend's warm
    /// slots), when vendbox stops. Boxes stay.
    async fn close(&self) {}
}

/// Boxes and the sums of their limits: what a backend's boxes hold, or what a host can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Boxes.
    pub boxes: usize,
    /// Memory limits (which also bound each box's writable layer), in MiB.
    pub memory_mb: u64,
    /// Process limits.
    pub pids: u64,
}

impl Usage {
    /// What one box of `limits` holds.
    pub fn of(limits: Limits) -> Usage {
        Usage { boxes: 1, memory_mb: u64::from(limits.memory_mb), pids: u64::from(limits.pids) }
    }

    /// The sum of two usages.
    #[must_use]
    pub fn plus(self, other: Usage) -> Usage {
        Usage {
            boxes: self.boxes.saturating_add(other.boxes),
            memory_mb: self.memory_mb.saturating_add(other.memory_mb),
            pids: self.pids.saturating_add(other.pids),
        }
    }

    /// `self` less `other`, never below zero.
    #[must_use]
    pub fn minus(self, other: Usage) -> Usage {
        Usage {
            boxes: self.boxes.saturating_sub(other.boxes),
            memory_mb: self.memory_mb.saturating_sub(other.memory_mb),
            pids: self.pids.saturating_sub(other.pids),
        }
    }

    /// Whether `self` fits within `capacity`, and what runs out first if not.
    pub fn exceeds(self, capacity: Usage) -> Option<&'static str> {
        if self.boxes > capacity.boxes {
            Some("boxes")
        } else if self.memory_mb > capacity.memory_mb {
            Some("memory")
        } else if self.pids > capacity.pids {
            Some("processes")
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Volume;

    #[test]
    fn a_volume_is_a_plain_name_at_a_plain_absolute_path() {
        let volume = |name: &str, path: &str| Volume { name: name.into(), path: path.into() }.check();
        assert!(volume("data", "/srv/data").is_ok());
        assert!(volume("db_1.x-y", "/var/lib/db").is_ok());
        for (name, path) in [
            ("", "/d"),
            (".hidden", "/d"),
            ("a/b", "/d"),
            ("data", "relative"),
            ("data", "/"),
            ("data", "/srv/../etc"),
            ("data", "/proc/x"),
            ("data", "/dev"),
            ("data", "/sys/fs"),
            ("data", "/.boxd"),
        ] {
            assert!(volume(name, path).is_err(), "{name} {path}");
        }
    }
}
