//! boxd: PID 1 of every box. It reaps every child, starts processes (with pipes or a
//! pseudo-terminal), serves files and tunnels TCP connections to the box's loopback for the
//! host, over HTTP/1.1 on a Unix socket.
//!
//! The protocol's shapes are in [`wire`]. boxd runs on one current-thread tokio runtime; the
//! only other threads are tokio's blocking pool, used for file-system work and gone when idle.

pub mod wire;

mod error;
mod extract;
mod fdio;
mod files;
mod reaper;
mod routes;
mod spawn;
mod supervise;
mod table;
mod tcp;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::reaper::Reaper;
use crate::table::ProcessTable;

/// How boxd is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    /// Where to listen; a stale socket file there is removed first.
    pub socket: PathBuf,
}

/// What every request handler shares.
#[derive(Debug, Default)]
struct Boxd {
    reaper: Reaper,
    processes: ProcessTable,
}

/// Runs boxd until SIGTERM or SIGINT, then SIGKILLs every process group it started and returns.
pub fn run(options: RunOptions) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .thread_keep_alive(Duration::from_secs(5))
        .build()
        .context("cannot start the tokio runtime")?;
    let result = runtime.block_on(serve(options));
    // Blocking file work still in flight is abandoned rather than waited for.
    runtime.shutdown_background();
    result
}

async fn serve(options: RunOptions) -> anyhow::Result<()> {
    let socket = options.socket;
    // Outside a box boxd is not PID 1; orphans of its children must still come to it.
    let own_pid = rustix::process::getpid();
    rustix::process::set_child_subreaper(Some(own_pid)).context("cannot become a child subreaper")?;
    // Registered before the first spawn, so no SIGCHLD is missed.
    let sigchld = signal(SignalKind::child()).context("cannot watch SIGCHLD")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;

    let boxd = Arc::new(Boxd::default());
    let reaping = Arc::clone(&boxd);
    tokio::spawn(async move { reaping.reaper.run(sigchld).await });

    match std::fs::remove_file(&socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot remove the stale socket {}", socket.display()));
        }
        _ => {}
    }
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot set the mode of {}", socket.display()))?;

    let app = routes::router(Arc::clone(&boxd));
    let served = tokio::select! {
        served = axum::serve(listener, app).into_future() => served.context("serving failed"),
        _ = sigterm.recv() => Ok(()),
        _ = sigint.recv() => Ok(()),
    };
    boxd.processes.kill_all();
    let _ = std::fs::remove_file(&socket);
    served
}
