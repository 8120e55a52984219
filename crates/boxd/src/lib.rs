//! boxd: PID 1 of every box. It reaps every child, starts processes (with pipes or a
//! pseudo-terminal), serves files and tunnels TCP connections to the box's loopback for the
//! host, over HTTP/1.1 on a Unix socket.
//!
//! The protocol's shapes are in [`wire`]. boxd runs on one current-thread tokio runtime; the
//! only other threads are tokio's blocking pool, used for file-system work and gone when idle.

pub use boxd_wire as wire;

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
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::reaper::Reaper;
use crate::table::ProcessTable;

/// Where boxd takes its connections from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A socket path boxd binds itself (tests and tools outside a box); a stale socket file
    /// there is removed first.
    Path(PathBuf),
    /// A listening Unix socket handed over as standard input (as inetd and systemd's
    /// `StandardInput=socket` do). This is how a box's boxd is started: the host binds the
    /// socket in a directory the box cannot reach, so no process in the box can move, replace
    /// or redirect it.
    Stdin,
}

/// How boxd is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    /// Where to listen.
    pub listen: Listen,
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
    // Outside a box boxd is not PID 1; orphans of its children must still come to it.
    // No core dumps, and /proc/1's memory and descriptors are not another process's to open
    // unless it may trace boxd (the box's seccomp filter also refuses tracing PID 1).
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .context("cannot make boxd non-dumpable")?;
    let own_pid = rustix::process::getpid();
    rustix::process::set_child_subreaper(Some(own_pid)).context("cannot become a child subreaper")?;
    // Registered before the first spawn, so no SIGCHLD is missed.
    let sigchld = signal(SignalKind::child()).context("cannot watch SIGCHLD")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;

    let boxd = Arc::new(Boxd::default());
    let reaping = Arc::clone(&boxd);
    tokio::spawn(async move { reaping.reaper.run(sigchld).await });

    let (listener, socket) = match options.listen {
        Listen::Path(path) => (bind(&path)?, Some(path)),
        Listen::Stdin => (listener_from_stdin()?, None),
    };

    let app = routes::router(Arc::clone(&boxd));
    let served = tokio::select! {
        served = axum::serve(listener, app).into_future() => served.context("serving failed"),
        _ = sigterm.recv() => Ok(()),
        _ = sigint.recv() => Ok(()),
    };
    boxd.processes.kill_all();
    if let Some(socket) = socket {
        let _ = std::fs::remove_file(&socket);
    }
    served
}

/// Binds a fresh socket at `socket`, readable by its owner only.
fn bind(socket: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot remove the stale socket {}", socket.display()));
        }
        _ => {}
    }
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot set the mode of {}", socket.display()))?;
    Ok(listener)
}

/// Takes the listening socket the host handed over as standard input, and puts `/dev/null` in
/// its place, so no process boxd starts can inherit it. The copy boxd keeps is close-on-exec.
fn listener_from_stdin() -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::fd::AsFd as _;
    let stdin = std::io::stdin();
    let fd = stdin.as_fd();
    let listening = rustix::net::sockopt::socket_acceptconn(fd)
        .context("standard input is not a socket: start boxd with `--socket PATH` instead")?;
    if !listening {
        anyhow::bail!("standard input is a socket that does not listen");
    }
    let owned = fd.try_clone_to_owned().context("cannot take the listening socket")?;
    let null = std::fs::File::open("/dev/null").context("cannot open /dev/null")?;
    rustix::stdio::dup2_stdin(&null).context("cannot close standard input")?;
    let listener = std::os::unix::net::UnixListener::from(owned);
    listener.set_nonblocking(true).context("cannot make the listening socket non-blocking")?;
    tokio::net::UnixListener::from_std(listener).context("cannot serve on the listening socket")
}
