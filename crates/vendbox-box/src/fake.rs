//! `FakeBackend`: an in-process backend for fast tests of the code above boxes (the service
//! layer, the HTTP surfaces), needing no root, bubblewrap or cgroups. It keeps its boxes in
//! memory, counts their limits like the local backend, and can be told to fail a creation or
//! to lose a box. Its boxes have no boxd: a client for one reaches a socket path where nothing
//! listens, so a command sent there fails with [`BoxError::Unreachable`] (never acted on).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::{Backend, BoxError, BoxId, BoxSpec, BoxStatus, BoxdClient, Usage};

/// Boxes in memory.
#[derive(Debug)]
pub struct FakeBackend {
    boxes: Mutex<BTreeMap<BoxId, BoxSpec>>,
    destroyed: Mutex<Vec<BoxId>>,
    fail_next_create: Mutex<Option<String>>,
    fail_next_destroy: Mutex<Option<String>>,
    create_takes: Mutex<std::time::Duration>,
    refuses: Option<String>,
    capacity: Usage,
    sockets: PathBuf,
}

impl FakeBackend {
    /// A backend with room for everything, whose boxd sockets would be under `sockets` (a
    /// directory where nothing listens: a temporary one).
    pub fn new(sockets: impl Into<PathBuf>) -> FakeBackend {
        FakeBackend {
            boxes: Mutex::default(),
            destroyed: Mutex::default(),
            fail_next_create: Mutex::default(),
            fail_next_destroy: Mutex::default(),
            create_takes: Mutex::default(),
            refuses: None,
            capacity: Usage { boxes: usize::MAX, memory_mb: u64::MAX, pids: u64::MAX },
            sockets: sockets.into(),
        }
    }

    /// The same backend, making no boxes at all: every `create` is refused as
    /// [`BoxError::Unsupported`] saying `why` (a host that cannot run boxes).
    #[must_use]
    pub fn refusing(self, why: &str) -> FakeBackend {
        FakeBackend { refuses: Some(why.to_owned()), ..self }
    }

    /// The same backend selling up to `capacity`.
    #[must_use]
    pub fn with_capacity(self, capacity: Usage) -> FakeBackend {
        FakeBackend { capacity, ..self }
    }

    /// The next `create` fails with [`BoxError::Start`] saying `why`, having made nothing.
    pub fn fail_next_create(&self, why: &str) {
        *lock(&self.fail_next_create) = Some(why.to_owned());
    }

    /// The next `destroy` fails with [`BoxError::Unreachable`] saying `why`, leaving the box.
    pub fn fail_next_destroy(&self, why: &str) {
        *lock(&self.fail_next_destroy) = Some(why.to_owned());
    }

    /// From now on a box exists as soon as `create` is called, but `create` returns only after
    /// `time` (a slow start, to cut off).
    pub fn create_takes(&self, time: std::time::Duration) {
        *lock(&self.create_takes) = time;
    }

    /// The box disappears without being destroyed (a host that lost it).
    pub fn lose(&self, id: &BoxId) {
        lock(&self.boxes).remove(id);
    }

    /// The boxes there are now, with their specs.
    pub fn boxes(&self) -> Vec<(BoxId, BoxSpec)> {
        lock(&self.boxes).iter().map(|(id, spec)| (id.clone(), spec.clone())).collect()
    }

    /// Every box `destroy` was called for, in order (also for boxes already gone).
    pub fn destroyed(&self) -> Vec<BoxId> {
        lock(&self.destroyed).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait]
impl Backend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn create(&self, spec: &BoxSpec) -> Result<(), BoxError> {
        if let Some(why) = &self.refuses {
            return Err(BoxError::Unsupported(why.clone()));
        }
        if let Some(why) = lock(&self.fail_next_create).take() {
            return Err(BoxError::Start(why));
        }
        lock(&self.boxes).insert(spec.id.clone(), spec.clone());
        let takes = *lock(&self.create_takes);
        if !takes.is_zero() {
            tokio::time::sleep(takes).await;
        }
        Ok(())
    }

    async fn status(&self, id: &BoxId) -> Result<BoxStatus, BoxError> {
        Ok(if lock(&self.boxes).contains_key(id) { BoxStatus::Running } else { BoxStatus::Gone })
    }

    fn boxd(&self, id: &BoxId) -> BoxdClient {
        BoxdClient::new(self.sockets.join(format!("{id}.sock")))
    }

    async fn destroy(&self, id: &BoxId) -> Result<(), BoxError> {
        if let Some(why) = lock(&self.fail_next_destroy).take() {
            return Err(BoxError::Unreachable(why));
        }
        lock(&self.destroyed).push(id.clone());
        lock(&self.boxes).remove(id);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<BoxId>, BoxError> {
        Ok(lock(&self.boxes).keys().cloned().collect())
    }

    async fn usage(&self) -> Result<Usage, BoxError> {
        Ok(lock(&self.boxes).values().fold(Usage::default(), |sum, spec| sum.plus(Usage::of(spec.limits))))
    }

    fn pods(&self) -> bool {
        true
    }

    fn capacity(&self) -> Usage {
        self.capacity
    }
}
