//! `Reaper`: boxd's side of being PID 1. It spawns children and reaps every exited child,
//! orphans included, handing each status to whoever waits for that pid.
//!
//! Spawning and reaping take the same lock, so a child is registered before its exit can be
//! collected: no status is lost and any unregistered pid is an orphan whose status is dropped.
//! Nothing else in boxd may call `wait` (so no `tokio::process`, no `Child::wait`).

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard, PoisonError};

use rustix::io::Errno;
use rustix::process::{Pid, WaitOptions, WaitStatus, wait};
use tokio::sync::oneshot;

/// How a child ended, as `waitpid` reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exit {
    /// The exit code, when it exited on its own.
    pub(crate) code: Option<i32>,
    /// The signal that killed it.
    pub(crate) signal: Option<i32>,
}

impl From<WaitStatus> for Exit {
    fn from(status: WaitStatus) -> Self {
        Self { code: status.exit_status(), signal: status.terminating_signal() }
    }
}

/// The children boxd waits for.
#[derive(Debug, Default)]
pub(crate) struct Reaper {
    /// Pid → where to deliver its exit. Held while spawning and while reaping.
    waiters: Mutex<HashMap<Pid, oneshot::Sender<Exit>>>,
}

impl Reaper {
    fn lock(&self) -> MutexGuard<'_, HashMap<Pid, oneshot::Sender<Exit>>> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spawns `command` and registers it; the receiver yields its exit once reaped.
    pub(crate) fn spawn(&self, command: &mut Command) -> io::Result<(Child, oneshot::Receiver<Exit>)> {
        let mut waiters = self.lock();
        let child = command.spawn()?;
        let (tx, rx) = oneshot::channel();
        waiters.insert(Pid::from_child(&child), tx);
        Ok((child, rx))
    }

    /// Reaps every child that has exited, without blocking.
    pub(crate) fn reap(&self) {
        let mut waiters = self.lock();
        loop {
            // `wait` is waitpid(-1): any child. (`waitpid(None)` would be pid 0: only children in
            // boxd's own process group, and every process boxd starts has a group of its own.)
            match wait(WaitOptions::NOHANG) {
                Ok(Some((pid, status))) => {
                    if let Some(tx) = waiters.remove(&pid) {
                        // The supervisor may be gone already; the status is then of no use.
                        let _ = tx.send(Exit::from(status));
                    }
                }
                Err(Errno::INTR) => {}
                // Nothing exited (`None`) or no children at all (`ECHILD`).
                Ok(None) | Err(_) => break,
            }
        }
    }

    /// Reaps on every SIGCHLD, forever. `sigchld` must exist before the first spawn.
    pub(crate) async fn run(&self, mut sigchld: tokio::signal::unix::Signal) {
        loop {
            self.reap();
            if sigchld.recv().await.is_none() {
                return;
            }
        }
    }
}
