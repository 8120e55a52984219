//! The HTTP API: the router, health, and the process endpoints. File endpoints are in
//! [`crate::files`], the TCP tunnel in [`crate::tcp`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustix::process::Signal;
use tokio::sync::mpsc;

use crate::Boxd;
use crate::error::ApiError;
use crate::extract::{JsonBody, PidParam};
use crate::spawn::{Launch, Spawned, spawn};
use crate::supervise::{Collected, Sink, Watched, send_event, supervise};
use crate::wire::{
    Ack, Event, Health, InputRequest, ProcessInfo, ProcessList, PtySize, RunRequest, RunResult, SignalName,
    SignalRequest, StartRequest,
};
use crate::{fdio, files, tcp};

/// Events buffered between a process and a slow host before the process's reads wait.
const EVENT_QUEUE: usize = 16;

/// The whole API.
pub(crate) fn router(boxd: Arc<Boxd>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/process", get(list))
        .route("/process/start", post(start))
        .route("/process/run", post(run))
        .route("/process/{pid}/input", post(input))
        .route("/process/{pid}/signal", post(signal))
        .route("/process/{pid}/resize", post(resize))
        .route("/files", get(files::read).put(files::write))
        .route("/fs/stat", get(files::stat))
        .route("/fs/list", get(files::list))
        .route("/fs/mkdir", post(files::mkdir))
        .route("/fs", delete(files::remove))
        .route("/fs/move", post(files::rename))
        .route("/tcp", get(tcp::tunnel))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(boxd)
}

async fn health() -> Json<Health> {
    Json(Health { ok: true, pid: std::process::id(), version: env!("CARGO_PKG_VERSION").to_owned() })
}

async fn list(State(boxd): State<Arc<Boxd>>) -> Json<ProcessList> {
    Json(ProcessList { processes: boxd.processes.list() })
}

/// Spawns `launch` and records it in the process table.
fn launch(boxd: &Boxd, launch: &Launch<'_>, tag: Option<String>) -> Result<Spawned, ApiError> {
    let mut spawned = spawn(&boxd.reaper, launch)?;
    let info = ProcessInfo {
        pid: spawned.pid,
        cmd: launch.cmd.to_owned(),
        args: launch.args.to_vec(),
        tag,
        pty: launch.pty.is_some(),
    };
    boxd.processes.insert(info, spawned.input.take());
    Ok(spawned)
}

fn watched(spawned: Spawned, timeout_ms: Option<u64>) -> Watched {
    Watched {
        pid: spawned.pid,
        started: spawned.started,
        exit: spawned.exit,
        output: spawned.output,
        timeout: timeout_ms.map(Duration::from_millis),
    }
}

async fn start(
    State(boxd): State<Arc<Boxd>>,
    JsonBody(req): JsonBody<StartRequest>,
) -> Result<Response, ApiError> {
    let spec = Launch::of(&req.process, req.stdin, req.pty);
    let spawned = launch(&boxd, &spec, req.process.tag.clone())?;
    let (tx, rx) = mpsc::channel::<Bytes>(EVENT_QUEUE);
    send_event(&tx, &Event::Start { pid: spawned.pid }).await;
    let watched = watched(spawned, req.process.timeout_ms);
    tokio::spawn(async move {
        let end = supervise(&boxd.processes, watched, Sink::Stream(&tx)).await;
        send_event(&tx, &Event::End(end)).await;
    });
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, Infallible>(line), rx))
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(events)).into_response())
}

async fn run(
    State(boxd): State<Arc<Boxd>>,
    JsonBody(req): JsonBody<RunRequest>,
) -> Result<Json<RunResult>, ApiError> {
    let spec = Launch::of(&req.process, false, None);
    let spawned = launch(&boxd, &spec, req.process.tag.clone())?;
    let watched = watched(spawned, req.process.timeout_ms);
    let max = req.max_output_bytes;
    // A task of its own, so the process is still watched and reaped if the host hangs up.
    let (end, out) = tokio::spawn(async move {
        let mut out = Collected::new(max);
        let end = supervise(&boxd.processes, watched, Sink::Collect(&mut out)).await;
        (end, out)
    })
    .await
    .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(RunResult {
        exit_code: end.exit_code,
        signal: end.signal,
        timed_out: end.timed_out,
        duration_ms: end.duration_ms,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        stdout_truncated: out.stdout_truncated,
        stderr_truncated: out.stderr_truncated,
    }))
}

/// The terminal's end-of-file character (Ctrl-D).
const VEOF: u8 = 0x04;

async fn input(
    State(boxd): State<Arc<Boxd>>,
    PidParam(pid): PidParam,
    JsonBody(req): JsonBody<InputRequest>,
) -> Result<Json<Ack>, ApiError> {
    let data = match &req.data {
        Some(data) => Some(
            BASE64.decode(data).map_err(|e| ApiError::bad_request(format!("`data` is not base64: {e}")))?,
        ),
        None if req.eof => None,
        None => return Err(ApiError::bad_request("send `data`, `eof`, or both")),
    };
    let target = boxd.processes.input(pid)?;
    if let Some(data) = data {
        fdio::write_all(&target.stream, &data).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                ApiError::bad_request(format!("process {pid} closed its stdin"))
            } else {
                ApiError::internal(&e)
            }
        })?;
    }
    if req.eof {
        if target.pty {
            fdio::write_all(&target.stream, &[VEOF]).await.map_err(|e| ApiError::internal(&e))?;
        } else {
            boxd.processes.close_stdin(pid);
        }
    }
    Ok(Json(Ack { ok: true }))
}

async fn signal(
    State(boxd): State<Arc<Boxd>>,
    PidParam(pid): PidParam,
    JsonBody(req): JsonBody<SignalRequest>,
) -> Result<Json<Ack>, ApiError> {
    let signal = match req.signal {
        SignalName::Term => Signal::TERM,
        SignalName::Kill => Signal::KILL,
        SignalName::Int => Signal::INT,
        SignalName::Hup => Signal::HUP,
        SignalName::Quit => Signal::QUIT,
        SignalName::Usr1 => Signal::USR1,
        SignalName::Usr2 => Signal::USR2,
        SignalName::Stop => Signal::STOP,
        SignalName::Cont => Signal::CONT,
    };
    boxd.processes.signal(pid, signal)?;
    Ok(Json(Ack { ok: true }))
}

async fn resize(
    State(boxd): State<Arc<Boxd>>,
    PidParam(pid): PidParam,
    JsonBody(size): JsonBody<PtySize>,
) -> Result<Json<Ack>, ApiError> {
    let master = boxd.processes.pty(pid)?;
    rustix::termios::tcsetwinsize(&*master, crate::spawn::winsize(size))
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(Ack { ok: true }))
}
