//! Starting a process: the command line, the clean environment, the working directory, and
//! stdio as pipes, `/dev/null` or a new pseudo-terminal.
//!
//! A pipe child gets its own process group so signals and timeouts reach everything it starts.
//! A terminal child is started through util-linux `setsid -c`, which makes the terminal its
//! controlling one and then execs the command in place: boxd's child is not a group leader, so
//! `setsid` does not fork and the pid boxd reports is the command's. Either way the child's pid
//! is also its process group id.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use axum::http::StatusCode;
use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::fdio::{self, Reader, Writer};
use crate::reaper::{Exit, Reaper};
use crate::table::signal_group;
use crate::wire::PtySize;

/// The home directory inside a box: the default working directory, and the base of relative paths.
pub(crate) const HOME: &str = "/root";

/// `PATH` of every child unless the request overrides it.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to start, borrowed from a start or run request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Launch<'a> {
    pub(crate) cmd: &'a str,
    pub(crate) args: &'a [String],
    pub(crate) shell: bool,
    pub(crate) envs: &'a BTreeMap<String, String>,
    pub(crate) cwd: Option<&'a str>,
    pub(crate) user: Option<&'a str>,
    /// Give the child a stdin pipe (ignored with a terminal, which is always writable).
    pub(crate) stdin: bool,
    pub(crate) pty: Option<PtySize>,
}

impl<'a> Launch<'a> {
    /// What a request asks to run, with its stdin and terminal choices.
    pub(crate) fn of(process: &'a crate::wire::ProcessSpec, stdin: bool, pty: Option<PtySize>) -> Launch<'a> {
        Launch {
            cmd: &process.cmd,
            args: &process.args,
            shell: process.shell,
            envs: &process.envs,
            cwd: process.cwd.as_deref(),
            user: process.user.as_deref(),
            stdin,
            pty,
        }
    }
}

/// The readable ends of a child's output.
#[derive(Debug)]
pub(crate) struct ChildOutput {
    pub(crate) stdout: Option<Reader>,
    pub(crate) stderr: Option<Reader>,
    /// The terminal master.
    pub(crate) pty: Option<Reader>,
}

/// A child that was just started.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) pid: u32,
    /// When `spawn` returned; durations count from here.
    pub(crate) started: Instant,
    /// Resolves when the reaper collects the child.
    pub(crate) exit: oneshot::Receiver<Exit>,
    /// The stdin pipe when asked for, or the terminal master: where input goes, and for a
    /// terminal also what is resized.
    pub(crate) input: Option<Writer>,
    pub(crate) output: ChildOutput,
}

/// Resolves `path` against [`HOME`] when it is relative.
pub(crate) fn resolve(path: &str) -> PathBuf {
    Path::new(HOME).join(path)
}

/// Starts `launch`, or says why it cannot be started.
pub(crate) fn spawn(reaper: &Reaper, launch: &Launch<'_>) -> Result<Spawned, ApiError> {
    if let Some(user) = launch.user
        && user != "root"
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_user",
            format!("user `{user}` is not supported; processes run as root"),
        ));
    }
    if launch.cmd.is_empty() {
        return Err(ApiError::bad_request("`cmd` must not be empty"));
    }
    let cwd = resolve(launch.cwd.unwrap_or(HOME));
    if !cwd.is_dir() {
        return Err(ApiError::bad_request(format!("the working directory {} does not exist", cwd.display())));
    }
    let shell_args;
    let (program, args) = if launch.shell {
        shell_args = ["-c".to_owned(), launch.cmd.to_owned()];
        ("/bin/sh", &shell_args[..])
    } else {
        (launch.cmd, launch.args)
    };
    let mut env: BTreeMap<&str, &str> =
        [("PATH", DEFAULT_PATH), ("HOME", HOME), ("USER", "root"), ("LANG", "C.UTF-8")].into();
    env.extend(launch.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())));

    let mut command;
    let mut master = None;
    if let Some(size) = launch.pty {
        env.entry("TERM").or_insert("xterm-256color");
        let path = env.get("PATH").copied().unwrap_or(DEFAULT_PATH);
        if find_program(program, path, &cwd).is_none() {
            return Err(spawn_failed(launch.cmd, &io::Error::from(io::ErrorKind::NotFound)));
        }
        let setsid = find_program("setsid", DEFAULT_PATH, &cwd).ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "spawn_failed",
                "`setsid` (util-linux) is missing",
            )
        })?;
        let (pty_master, slave) = open_pty(size).map_err(|e| ApiError::internal(&e))?;
        let (slave_out, slave_err) = (clone_fd(&slave)?, clone_fd(&slave)?);
        command = Command::new(setsid);
        command.arg("-c").arg("--").arg(program).args(args);
        command.stdin(Stdio::from(slave)).stdout(Stdio::from(slave_out)).stderr(Stdio::from(slave_err));
        master = Some(pty_master);
    } else {
        command = Command::new(program);
        command.args(args).process_group(0);
        command.stdin(if launch.stdin { Stdio::piped() } else { Stdio::null() });
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    command.env_clear().envs(env).current_dir(&cwd);

    let (mut child, exit) = reaper.spawn(&mut command).map_err(|e| spawn_failed(launch.cmd, &e))?;
    let started = Instant::now();
    // Closes boxd's copies of the terminal slave, so the master sees EOF when the child is done.
    drop(command);
    let pid = child.id();
    let read = |fd: Option<OwnedFd>| fd.map(fdio::reader).transpose();
    let built = (|| {
        let (input, pty) = match master {
            Some(master) => (Some(master.try_clone()?), Some(master)),
            None => (child.stdin.take().map(OwnedFd::from), None),
        };
        Ok::<_, io::Error>(Spawned {
            pid,
            started,
            exit,
            input: input.map(fdio::writer).transpose()?,
            output: ChildOutput {
                stdout: read(child.stdout.take().map(OwnedFd::from))?,
                stderr: read(child.stderr.take().map(OwnedFd::from))?,
                pty: read(pty)?,
            },
        })
    })();
    built.map_err(|e| {
        // The child runs but cannot be watched: stop it rather than leave it unaccounted for.
        let _ = signal_group(pid, rustix::process::Signal::KILL);
        ApiError::internal(&e)
    })
}

/// A 4xx/5xx `spawn_failed` for an OS error from starting `cmd`.
fn spawn_failed(cmd: &str, err: &io::Error) -> ApiError {
    let status = match err.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied | io::ErrorKind::InvalidInput => {
            StatusCode::BAD_REQUEST
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, "spawn_failed", format!("cannot start `{cmd}`: {err}"))
}

fn clone_fd(fd: &OwnedFd) -> Result<OwnedFd, ApiError> {
    fd.try_clone().map_err(|e| ApiError::internal(&e))
}

/// Finds the executable `program` would run: itself when it names a path, else the first match
/// in `path`.
fn find_program(program: &str, path: &str, cwd: &Path) -> Option<PathBuf> {
    let executable =
        |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        let p = cwd.join(program);
        return executable(&p).then_some(p);
    }
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|p| executable(p))
}

/// Opens a new pseudo-terminal of `size`: (master, slave).
fn open_pty(size: PtySize) -> io::Result<(OwnedFd, OwnedFd)> {
    let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let slave =
        rustix::fs::open(name.as_c_str(), OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC, Mode::empty())?;
    rustix::termios::tcsetwinsize(&slave, winsize(size))?;
    Ok((master, slave))
}

/// `size` as the kernel's `struct winsize`.
pub(crate) fn winsize(size: PtySize) -> Winsize {
    Winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 }
}
