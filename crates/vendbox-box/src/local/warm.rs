//! Warm slots: the slow parts of a box's start, made before anyone buys the box.
//!
//! Two steps of a start wait on the host rather than on the box: moving bubblewrap into the
//! box's cgroups (on cgroup v1 a process's first move waits for an RCU grace period, 10–70 ms)
//! and, for a box with egress, its link (host tools: a process each). A slot is both, made in
//! the background: a claimed uid; a held bubblewrap (see [`super::Held`]) already in cgroups of
//! the slot's own with the last box's limits; its layer's top mounted with boxd's socket bound;
//! for egress, a network namespace (bubblewrap waits in it) linked to the host under the policy;
//! and the user namespace that idmaps an image to the slot's uid.
//!
//! A purchase of a box that is not in a pod and is not started again from its disk takes a slot
//! of its kind (with or without egress) when one is ready: the slot's names become the box's
//! (the cgroups are renamed, the layer's top is mounted under the box's name, the namespace and
//! the host's end of the link renamed), the box's own limits are written, its root is made, and
//! bubblewrap is let go with the box's arguments. Nothing of the box runs before it is in its
//! cgroups, as on the cold path. Without a slot, the purchase takes the cold path
//! ([`super::LocalBackend::start`]), and a slot of that kind is made for the next one.
//!
//! A slot's name starts with [`SLOT_PREFIX`]; `_` is no box id's character, so no listing of
//! boxes (cgroups, layers, namespaces) takes a slot for a box and no sweep destroys one. The
//! slots of an earlier run (a crash, `kill -9`) are removed by name when the pool starts and by
//! [`super::LocalBackend::remove_all`]. A bubblewrap held in a slot of a vendbox that died reads
//! the end of its arguments' pipe and exits: given no arguments it makes no box.
//!
//! Slots are kept only where a cgroup can be renamed (every controller on cgroup v1); on cgroup
//! v2 every box takes the cold path.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::cgroup::Hierarchies;
use super::{Held, Spawner, layer, net};
use crate::Limits;
use crate::error::BoxError;

/// The start of every slot's name.
pub(crate) const SLOT_PREFIX: &str = "_warm";

/// How many slots of each kind (with and without egress) are kept, unless the operator says
/// otherwise (`[boxes] warm`).
pub const DEFAULT_WARM: usize = 2;

/// How long the pool waits after a slot could not be made before it tries again.
const RETRY: Duration = Duration::from_secs(2);

/// How long after a slot was taken the pool waits before it makes the next one, while a slot
/// of that kind is still ready: the box just bought is starting and about to run its first
/// command, and on a small host a slot's making (a bubblewrap, cgroups, a namespace, a disk)
/// would take CPU from it. A kind with no slot left is refilled at once.
const QUIET: Duration = Duration::from_millis(100);

/// A box's start made ahead.
pub(crate) struct Slot {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) egress: bool,
    /// Bubblewrap, held, in the slot's cgroups (and, with egress, its namespace).
    pub(crate) held: Held,
    /// A user namespace mapping root to `uid` (an image's idmapped mount for a box of `uid`).
    pub(crate) idmap: OwnedFd,
    /// The layer's top (mounted), where boxd's socket is bound.
    pub(crate) layer: PathBuf,
    /// The size of the empty disk mounted at the layer's `disk` (see [`super::disk::Disks::prepare`]),
    /// when the last box of this kind had one.
    pub(crate) disk: Option<u64>,
}

/// What a slot of one kind is made with: the last box of that kind's limits, and its disk's size
/// when it had one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Want {
    pub(crate) limits: Limits,
    pub(crate) disk: Option<u64>,
}

/// What makes and removes slots.
#[derive(Debug)]
pub(crate) struct Maker {
    pub(crate) instance: String,
    pub(crate) instance_dir: PathBuf,
    pub(crate) run_root: PathBuf,
    pub(crate) cgroups: Hierarchies,
    pub(crate) spawner: Arc<Spawner>,
    pub(crate) net: Option<Arc<net::Network>>,
    pub(crate) disks: super::disk::Disks,
}

impl Maker {
    /// Makes a slot with egress or without, as `want` says.
    async fn make(&self, egress: bool, want: Want) -> Result<Slot, BoxError> {
        static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let made = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{SLOT_PREFIX}{:x}-{made:x}", std::process::id());
        let uid = super::claim_uid(&self.run_root, &self.instance, &name)?;
        match self.fill(&name, uid, egress, want).await {
            Ok((held, idmap, layer)) => Ok(Slot { name, uid, egress, held, idmap, layer, disk: want.disk }),
            Err(e) => {
                self.remove(&name).await;
                Err(e)
            }
        }
    }

    async fn fill(
        &self,
        name: &str,
        uid: u32,
        egress: bool,
        want: Want,
    ) -> Result<(Held, OwnedFd, PathBuf), BoxError> {
        super::instance_dir_ready(&self.instance_dir)?;
        let layer = self.instance_dir.join(name);
        // A box of a built image keeps this size; a `host` box's is set to its disk at purchase.
        layer::mount_top(&layer, layer::IMAGE_LAYER_BYTES)?;
        let listener = layer::bind_socket(&layer)?;
        let net = match (egress, &self.net) {
            (false, _) => None,
            (true, Some(net)) => Some(net),
            (true, None) => return Err(BoxError::Unsupported("no egress to make a slot with".into())),
        };
        let netns = match net {
            Some(net) => Some(net.make_namespace(name).await?),
            None => None,
        };
        let link = async {
            match net {
                Some(net) => net.connect(name, uid).await,
                None => Ok(()),
            }
        };
        let held = async {
            let procs = self.cgroups.create(&self.instance, name, want.limits)?;
            let mut held = self.spawner.spawn(uid, &layer, netns.as_deref(), listener)?;
            let pid = held.child.id().unwrap_or_default();
            match super::join_cgroups(procs, pid).await {
                Ok(()) => Ok(held),
                Err(e) => {
                    held.kill().await;
                    Err(e)
                }
            }
        };
        // The idmapping, and the disk a box of an image mounts (its file system's first mount
        // reads its metadata: the longest step of such a box's root).
        let idmap = async {
            let (disks, disk, slot) = (self.disks.clone(), layer.join("disk"), name.to_owned());
            tokio::task::spawn_blocking(move || {
                if let Some(size) = want.disk {
                    disks.prepare(&slot, size, &disk, uid)?;
                }
                super::idmap::namespace_for(uid)
            })
            .await
            .map_err(|e| BoxError::Start(format!("making an idmapping: {e}")))?
        };
        let (link, held, idmap) = tokio::join!(link, held, idmap);
        match (link, held, idmap) {
            (Ok(()), Ok(held), Ok(idmap)) => Ok((held, idmap, layer)),
            (link, held, idmap) => {
                if let Ok(mut held) = held {
                    held.kill().await;
                }
                Err(link.err().or(idmap.err()).unwrap_or_else(|| BoxError::Start("a slot failed".into())))
            }
        }
    }

    /// Removes what slot `name` left: its processes and cgroups, its network, its layer and its
    /// uid. Idempotent.
    pub(crate) async fn remove(&self, name: &str) {
        if let Err(e) = self.cgroups.destroy(&self.instance, name).await {
            tracing::warn!(slot = name, error = %e, "removing a warm slot's cgroups");
        }
        net::detach(&self.instance, name).await;
        if let Err(e) = layer::remove(&self.instance_dir.join(name)) {
            tracing::warn!(slot = name, error = %e, "removing a warm slot's layer");
        }
        self.disks.remove_prepared(name);
        release_uids_of(&self.run_root, &format!("{}/{name}", self.instance));
    }

    /// Removes the slots of this instance whose vendbox is gone (a crash, `kill -9`): a slot's
    /// name holds the pid of the process that made it. (Another process may have the same data
    /// directory open, a tool looking at boxes: its slots stay.)
    pub(crate) async fn remove_stale(&self) {
        for name in self.names().iter().filter(|name| !maker_runs(name)) {
            self.remove(name).await;
        }
    }

    /// Removes every slot of this instance, by name, whoever made it.
    pub(crate) async fn remove_all(&self) {
        for name in &self.names() {
            self.remove(name).await;
        }
        // Uids claimed for a slot whose making stopped before anything else of it was there.
        release_uids_of(&self.run_root, &format!("{}/{SLOT_PREFIX}", self.instance));
    }

    /// The names of every slot of this instance that has cgroups, a namespace or a layer.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.cgroups.list(&self.instance).into_iter().filter(|n| n.starts_with(SLOT_PREFIX)).collect();
        names.extend(net::namespaces_named(&self.instance, SLOT_PREFIX));
        if let Ok(entries) = fs::read_dir(&self.instance_dir) {
            names.extend(
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.starts_with(SLOT_PREFIX)),
            );
        }
        names.sort();
        names.dedup();
        names
    }
}

/// Whether the process that made slot `name` still runs.
fn maker_runs(name: &str) -> bool {
    let pid = name.strip_prefix(SLOT_PREFIX).and_then(|rest| rest.split_once('-')).map(|(pid, _)| pid);
    pid.and_then(|pid| u32::from_str_radix(pid, 16).ok())
        .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// Gives back every uid whose claim's owner starts with `owner`.
fn release_uids_of(run_root: &std::path::Path, owner: &str) {
    let dir = run_root.join("uids");
    let Ok(entries) = fs::read_dir(&dir) else { return };
    for entry in entries.filter_map(Result::ok) {
        if fs::read_to_string(entry.path()).is_ok_and(|held| held.starts_with(owner)) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The slots ready, and the kinds wanted.
#[derive(Default)]
struct State {
    slots: Vec<Slot>,
    /// The limits of the last box of each kind (index: with egress), for the kinds kept warm:
    /// a kind is kept from its first purchase on, so a vendbox that sells no box makes none.
    wanted: [Option<Want>; 2],
    /// When a slot was last taken.
    taken: Option<std::time::Instant>,
    closed: bool,
}

/// A running pool: its maker, its slots, and the task that refills it.
struct Pool {
    maker: Maker,
    size: usize,
    state: Mutex<State>,
    wake: tokio::sync::Notify,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Pool {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What the refill task does next.
    fn next(&self) -> Next {
        let state = self.state();
        if state.closed {
            return Next::Stop;
        }
        let short = [false, true].into_iter().find_map(|egress| {
            let want = state.wanted[usize::from(egress)]?;
            let ready = state.slots.iter().filter(|s| s.egress == egress).count();
            (ready < self.size).then_some((egress, want, ready))
        });
        let since_taken = state.taken.map(|t| t.elapsed());
        match (short, since_taken) {
            (Some((_, _, ready)), Some(since)) if ready > 0 && since < QUIET => {
                Next::Later(QUIET.saturating_sub(since))
            }
            (Some((egress, want, _)), _) => Next::Make { egress, want },
            (None, _) => Next::Wait,
        }
    }

    async fn refill(self: Arc<Pool>) {
        self.maker.remove_stale().await;
        loop {
            let (egress, want) = match self.next() {
                Next::Stop => return,
                Next::Wait => {
                    self.wake.notified().await;
                    continue;
                }
                Next::Later(after) => {
                    tokio::select! {
                        () = tokio::time::sleep(after) => {}
                        () = self.wake.notified() => {}
                    }
                    continue;
                }
                Next::Make { egress, want } => (egress, want),
            };
            let begun = std::time::Instant::now();
            let made = self.maker.make(egress, want).await;
            tracing::debug!(egress, made_ms = begun.elapsed().as_secs_f64() * 1e3, "warm slot made");
            match made {
                Ok(slot) => {
                    let closed = {
                        let mut state = self.state();
                        if state.closed {
                            Some(slot)
                        } else {
                            state.slots.push(slot);
                            None
                        }
                    };
                    if let Some(slot) = closed {
                        discard(&self.maker, slot).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a warm slot could not be made; boxes start cold meanwhile");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }
}

/// What the refill task does next.
enum Next {
    /// The pool is closed.
    Stop,
    /// Every kind wanted has its slots: wait for a purchase.
    Wait,
    /// A slot was just taken and one of its kind is left: look again after this long.
    Later(Duration),
    /// Make a slot of this kind.
    Make { egress: bool, want: Want },
}

/// Kills a slot's bubblewrap and removes the rest of it.
async fn discard(maker: &Maker, mut slot: Slot) {
    slot.held.kill().await;
    maker.remove(&slot.name).await;
}

/// The warm slots of a backend, started with its first box.
pub(crate) struct Warm {
    size: usize,
    pool: OnceLock<Arc<Pool>>,
}

impl std::fmt::Debug for Warm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ready = self.pool.get().map_or(0, |p| p.state().slots.len());
        f.debug_struct("Warm").field("size", &self.size).field("ready", &ready).finish()
    }
}

impl Warm {
    /// A pool that keeps `size` slots of each kind (0: none).
    pub(crate) fn new(size: usize) -> Warm {
        Warm { size, pool: OnceLock::new() }
    }

    /// How many slots of each kind are kept.
    pub(crate) fn set_size(&mut self, size: usize) {
        self.size = size;
    }

    /// A slot for a box of `egress` like `want`, if one is ready; the pool starts (with
    /// `maker`) on the first call and keeps slots of this kind from now on.
    pub(crate) fn take(&self, maker: impl FnOnce() -> Maker, egress: bool, want: Want) -> Option<Slot> {
        if self.size == 0 {
            return None;
        }
        let pool = self.pool.get_or_init(|| {
            let pool = Arc::new(Pool {
                maker: maker(),
                size: self.size,
                state: Mutex::default(),
                wake: tokio::sync::Notify::new(),
                task: Mutex::default(),
            });
            let task = tokio::spawn(Arc::clone(&pool).refill());
            *pool.task.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(task);
            pool
        });
        let slot = {
            let mut state = pool.state();
            if state.closed {
                return None;
            }
            state.wanted[usize::from(egress)] = Some(want);
            let at = state.slots.iter().position(|s| s.egress == egress);
            let slot = at.map(|at| state.slots.swap_remove(at));
            if slot.is_some() {
                state.taken = Some(std::time::Instant::now());
            }
            slot
        };
        pool.wake.notify_one();
        slot
    }

    /// The slots ready: each one's name and its held bubblewrap's pid.
    pub(crate) fn ready(&self) -> Vec<(String, u32)> {
        let Some(pool) = self.pool.get() else { return Vec::new() };
        pool.state().slots.iter().map(|s| (s.name.clone(), s.held.child.id().unwrap_or_default())).collect()
    }

    /// Stops refilling and removes every slot ready; waits for a slot being made.
    pub(crate) async fn close(&self) {
        let Some(pool) = self.pool.get() else { return };
        let slots = {
            let mut state = pool.state();
            state.closed = true;
            std::mem::take(&mut state.slots)
        };
        pool.wake.notify_one();
        for slot in slots {
            discard(&pool.maker, slot).await;
        }
        let task = pool.task.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for Warm {
    /// A backend dropped without [`Warm::close`] stops refilling; its slots' bubblewraps read
    /// the end of their arguments and exit, and the rest of them goes with the next pool's start
    /// or `remove_all`.
    fn drop(&mut self) {
        if let Some(pool) = self.pool.get() {
            pool.state().closed = true;
            if let Some(task) = pool.task.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
                task.abort();
            }
        }
    }
}
