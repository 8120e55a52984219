//! `ProcessTable`: the running processes started through boxd, with the handles the host needs
//! to write to them and resize their terminals.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rustix::io::Errno;
use rustix::process::{Pid, Signal};

use crate::error::ApiError;
use crate::fdio::Writer;
use crate::wire::ProcessInfo;

/// One running process.
#[derive(Debug)]
struct Running {
    /// What `GET /process` shows.
    info: ProcessInfo,
    /// The stdin pipe until the host closes it, or the terminal master; `None` when started
    /// without either.
    input: Option<Arc<Writer>>,
}

/// Where `/process/{pid}/input` writes.
#[derive(Debug, Clone)]
pub(crate) struct InputTarget {
    pub(crate) stream: Arc<Writer>,
    /// The stream is a terminal master (EOF is then the Ctrl-D character).
    pub(crate) pty: bool,
}

/// Running processes by pid; an entry lives from spawn until the reaper reports the exit.
#[derive(Debug, Default)]
pub(crate) struct ProcessTable {
    running: Mutex<BTreeMap<u32, Running>>,
}

impl ProcessTable {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u32, Running>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a process that was just started.
    pub(crate) fn insert(&self, info: ProcessInfo, input: Option<Writer>) {
        self.lock().insert(info.pid, Running { info, input: input.map(Arc::new) });
    }

    /// Forgets a process that ended.
    pub(crate) fn remove(&self, pid: u32) {
        self.lock().remove(&pid);
    }

    /// Every running process, by pid.
    pub(crate) fn list(&self) -> Vec<ProcessInfo> {
        self.lock().values().map(|r| r.info.clone()).collect()
    }

    /// Where input for `pid` goes.
    pub(crate) fn input(&self, pid: u32) -> Result<InputTarget, ApiError> {
        let running = self.lock();
        let running = running.get(&pid).ok_or_else(|| ApiError::no_such_process(pid))?;
        match &running.input {
            Some(input) => Ok(InputTarget { stream: Arc::clone(input), pty: running.info.pty }),
            None => Err(ApiError::bad_request(format!(
                "process {pid} has no open stdin: start it with `\"stdin\": true` and do not send EOF before the last data"
            ))),
        }
    }

    /// Closes `pid`'s stdin pipe (once every write in flight is done).
    pub(crate) fn close_stdin(&self, pid: u32) {
        if let Some(running) = self.lock().get_mut(&pid)
            && !running.info.pty
        {
            running.input = None;
        }
    }

    /// The terminal master of `pid`.
    pub(crate) fn pty(&self, pid: u32) -> Result<Arc<Writer>, ApiError> {
        let running = self.lock();
        let running = running.get(&pid).ok_or_else(|| ApiError::no_such_process(pid))?;
        running
            .input
            .clone()
            .filter(|_| running.info.pty)
            .ok_or_else(|| ApiError::bad_request(format!("process {pid} does not run on a terminal")))
    }

    /// Sends `signal` to the process group of `pid`, which must be running.
    pub(crate) fn signal(&self, pid: u32, signal: Signal) -> Result<(), ApiError> {
        if !self.lock().contains_key(&pid) {
            return Err(ApiError::no_such_process(pid));
        }
        signal_group(pid, signal).map_err(|e| match e.raw_os_error() {
            Some(code) if code == Errno::SRCH.raw_os_error() => ApiError::no_such_process(pid),
            _ => ApiError::internal(&e),
        })
    }

    /// SIGKILLs the process group of every running process.
    pub(crate) fn kill_all(&self) {
        for pid in self.lock().keys() {
            let _ = signal_group(*pid, Signal::KILL);
        }
    }
}

/// Sends `signal` to the process group led by `pid`, or to `pid` alone while it is not yet a
/// group leader (a terminal child between fork and `setsid`).
pub(crate) fn signal_group(pid: u32, signal: Signal) -> io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    match rustix::process::kill_process_group(pid, signal) {
        Err(Errno::SRCH) => Ok(rustix::process::kill_process(pid, signal)?),
        result => Ok(result?),
    }
}
