//! envd's `process.Process` over boxd's processes: `Start` (a server stream of the process's
//! events), `Connect` (the same events of a running process, from when it attaches), `List`,
//! `SendInput`, `StreamInput` (a client stream), `SendSignal`, `CloseStdin` and `Update` (a
//! PTY's size).
//!
//! A started process's events are pumped from boxd by a task of the host's own and fanned out
//! to its `Start` stream and any `Connect` streams, so a process outlives the client's stream
//! (as in E2B: a background command goes on when its handle is dropped) and the pump ends with
//! the process (its time limit, the `Connect-Timeout-Ms` of `Start`, or the box's end).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use envd_proto::process::{
    CloseStdinRequest, CloseStdinResponse, ConnectRequest, ConnectResponse, ListRequest, ListResponse,
    ProcessConfig, ProcessEvent, ProcessInfo, ProcessInput, ProcessSelector, SendInputRequest,
    SendInputResponse, SendSignalRequest, SendSignalResponse, Signal, StartRequest, StartResponse,
    StreamInputRequest, StreamInputResponse, UpdateRequest, UpdateResponse, process_event, process_input,
    process_selector, stream_input_request,
};
use futures_util::StreamExt as _;
use tokio::sync::broadcast;
use vendbox_box::wire::{self, Event, ExitInfo, PtySize};
use vendbox_box::{BoxdClient, ExecStream};
use vendbox_core::LeaseId;

use super::connect::{self, Code, Frames, RpcError};
use super::envd::{self, Opened, SandboxTarget};
use crate::app::AppState;

/// Events a slow stream may fall behind by before it skips some (boxd reads output 16 KiB at a
/// time, so a process's fan-out holds at most 16 MiB).
const FAN_OUT: usize = 1024;

/// How long a stream stays silent before it sends a keep-alive.
const KEEPALIVE: Duration = Duration::from_secs(30);

/// The running processes' fan-outs, by lease and pid.
type Pumps = Mutex<HashMap<(LeaseId, u32), broadcast::Sender<ProcessEvent>>>;

fn pumps() -> &'static Pumps {
    static PUMPS: OnceLock<Pumps> = OnceLock::new();
    PUMPS.get_or_init(Pumps::default)
}

/// Serves one `process.Process` call.
pub async fn call(
    state: &AppState,
    target: &SandboxTarget,
    method: &str,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let opened = match envd::open(state, headers, target).await {
        Ok(opened) => opened,
        Err(e) if matches!(method, "Start" | "Connect") => return connect::stream_error(&e),
        Err(e) => return e.into_response(),
    };
    if method == "StreamInput" {
        return match stream_input(&opened, body).await {
            Ok(()) => connect::streaming(futures_util::stream::iter([
                connect::message_frame(&StreamInputResponse {}),
                connect::end_frame(None),
            ])),
            Err(e) => connect::stream_error(&e),
        };
    }
    let body = match axum::body::to_bytes(body, connect::MAX_MESSAGE_BYTES + 5).await {
        Ok(body) => body,
        Err(e) => {
            return RpcError::new(Code::InvalidArgument, format!("cannot read the request: {e}"))
                .into_response();
        }
    };
    match method {
        "Start" => match start(&opened, headers, &body).await {
            Ok(response) => response,
            Err(e) => connect::stream_error(&e),
        },
        "Connect" => match attach(&opened, &body).await {
            Ok(response) => response,
            Err(e) => connect::stream_error(&e),
        },
        _ => unary(&opened, method, &body).await.unwrap_or_else(IntoResponse::into_response),
    }
}

async fn unary(opened: &Opened, method: &str, body: &Bytes) -> Result<Response, RpcError> {
    let boxd = &opened.boxd;
    Ok(match method {
        "List" => {
            let _: ListRequest = connect::unary(body)?;
            let processes = boxd.processes().await?.processes.into_iter().map(info).collect();
            connect::reply(&ListResponse { processes })
        }
        "SendInput" => {
            let request: SendInputRequest = connect::unary(body)?;
            let pid = pid_of(boxd, request.process.as_ref()).await?;
            send(boxd, pid, request.input.as_ref()).await?;
            connect::reply(&SendInputResponse {})
        }
        "SendSignal" => {
            let request: SendSignalRequest = connect::unary(body)?;
            let pid = pid_of(boxd, request.process.as_ref()).await?;
            let signal = match Signal::try_from(request.signal) {
                Ok(Signal::Sigkill) => "SIGKILL",
                Ok(Signal::Sigterm) => "SIGTERM",
                _ => return Err(RpcError::new(Code::InvalidArgument, "send SIGTERM or SIGKILL")),
            };
            boxd.signal(pid, signal).await?;
            connect::reply(&SendSignalResponse {})
        }
        "CloseStdin" => {
            let request: CloseStdinRequest = connect::unary(body)?;
            let pid = pid_of(boxd, request.process.as_ref()).await?;
            boxd.close_input(pid).await?;
            connect::reply(&CloseStdinResponse {})
        }
        "Update" => {
            let request: UpdateRequest = connect::unary(body)?;
            let pid = pid_of(boxd, request.process.as_ref()).await?;
            if let Some(size) = request.pty.and_then(|p| p.size) {
                let rows = u16::try_from(size.rows).unwrap_or(u16::MAX);
                let cols = u16::try_from(size.cols).unwrap_or(u16::MAX);
                boxd.resize(pid, rows, cols).await?;
            }
            connect::reply(&UpdateResponse {})
        }
        _ => {
            return Err(RpcError::new(
                Code::Unimplemented,
                format!("process.Process has no method `{method}`"),
            ));
        }
    })
}

fn info(p: wire::ProcessInfo) -> ProcessInfo {
    ProcessInfo {
        config: Some(ProcessConfig { cmd: p.cmd, args: p.args, envs: HashMap::new(), cwd: None }),
        pid: p.pid,
        tag: p.tag,
    }
}

/// The pid a selector names (a tag is looked up among the running processes).
async fn pid_of(boxd: &BoxdClient, selector: Option<&ProcessSelector>) -> Result<u32, RpcError> {
    match selector.and_then(|s| s.selector.as_ref()) {
        Some(process_selector::Selector::Pid(pid)) => Ok(*pid),
        Some(process_selector::Selector::Tag(tag)) => boxd
            .processes()
            .await?
            .processes
            .into_iter()
            .find(|p| p.tag.as_deref() == Some(tag.as_str()))
            .map(|p| p.pid)
            .ok_or_else(|| RpcError::new(Code::NotFound, format!("no process tagged `{tag}`"))),
        None => Err(RpcError::new(Code::InvalidArgument, "name the process by pid or tag")),
    }
}

async fn send(boxd: &BoxdClient, pid: u32, input: Option<&ProcessInput>) -> Result<(), RpcError> {
    match input.and_then(|i| i.input.as_ref()) {
        Some(process_input::Input::Stdin(data) | process_input::Input::Pty(data)) => {
            Ok(boxd.input(pid, data).await?)
        }
        None => Ok(()),
    }
}

/// `StreamInput`: a start naming the process, then its input, as the client sends them.
async fn stream_input(opened: &Opened, body: Body) -> Result<(), RpcError> {
    let mut frames = Frames::default();
    let mut chunks = body.into_data_stream();
    let mut pid = None;
    loop {
        while let Some(payload) = frames.next_frame()? {
            let request: StreamInputRequest = connect::unary(&payload)?;
            match request.event {
                Some(stream_input_request::Event::Start(start)) => {
                    pid = Some(pid_of(&opened.boxd, start.process.as_ref()).await?);
                }
                Some(stream_input_request::Event::Data(data)) => {
                    let pid =
                        pid.ok_or_else(|| RpcError::new(Code::InvalidArgument, "start the stream first"))?;
                    send(&opened.boxd, pid, data.input.as_ref()).await?;
                }
                Some(stream_input_request::Event::Keepalive(_)) | None => {}
            }
        }
        match chunks.next().await {
            Some(Ok(chunk)) => frames.push(&chunk)?,
            Some(Err(e)) => {
                return Err(RpcError::new(Code::Canceled, format!("the input stream broke: {e}")));
            }
            None => return Ok(()),
        }
    }
}

/// `Start`: the process started in the box, its events streamed.
async fn start(opened: &Opened, headers: &HeaderMap, body: &Bytes) -> Result<Response, RpcError> {
    let request: StartRequest = connect::first_message(body)?;
    let config = request.process.unwrap_or_default();
    let mut envs = opened.sandbox.env_vars.clone();
    envs.extend(config.envs);
    let timeout_ms = headers
        .get("connect-timeout-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0);
    let pty = request.pty.and_then(|p| p.size).map(|s| PtySize {
        rows: u16::try_from(s.rows).unwrap_or(u16::MAX),
        cols: u16::try_from(s.cols).unwrap_or(u16::MAX),
    });
    let spec = wire::ProcessSpec {
        cmd: config.cmd,
        args: config.args,
        shell: false,
        envs,
        cwd: config.cwd.filter(|c| !c.is_empty()),
        user: None,
        timeout_ms,
        tag: request.tag,
    };
    let boxd = opened.boxes.begin_use(&opened.lease).await?;
    let start =
        wire::StartRequest { process: spec, stdin: request.stdin.unwrap_or(true) || pty.is_some(), pty };
    let mut stream = boxd.start(&start).await?;
    let Some(Event::Start { pid }) = stream.next().await? else {
        return Err(RpcError::new(Code::Internal, "the box did not report the process's start"));
    };
    let (sender, receiver) = broadcast::channel(FAN_OUT);
    let key = (opened.lease.id, pid);
    pumps().lock().unwrap_or_else(PoisonError::into_inner).insert(key, sender.clone());
    tokio::spawn(pump(stream, sender, key));
    let started =
        ProcessEvent { event: Some(process_event::Event::Start(process_event::StartEvent { pid })) };
    Ok(events(Some(started), receiver, |event| connect::message_frame(&StartResponse { event: Some(event) })))
}

/// `Connect`: a running process's events from now on.
async fn attach(opened: &Opened, body: &Bytes) -> Result<Response, RpcError> {
    let request: ConnectRequest = connect::first_message(body)?;
    let pid = pid_of(&opened.boxd, request.process.as_ref()).await?;
    let receiver = pumps()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&(opened.lease.id, pid))
        .map(broadcast::Sender::subscribe)
        .ok_or_else(|| RpcError::new(Code::NotFound, format!("process with pid {pid} not found")))?;
    let started =
        ProcessEvent { event: Some(process_event::Event::Start(process_event::StartEvent { pid })) };
    Ok(events(Some(started), receiver, |event| {
        connect::message_frame(&ConnectResponse { event: Some(event) })
    }))
}

/// A streaming answer of `first` and the fan-out's events, with keep-alives while it is silent,
/// ended after the process's end (or with an error when the box's stream broke).
fn events(
    first: Option<ProcessEvent>,
    receiver: broadcast::Receiver<ProcessEvent>,
    frame: fn(ProcessEvent) -> Bytes,
) -> Response {
    struct Reading {
        first: Option<ProcessEvent>,
        receiver: broadcast::Receiver<ProcessEvent>,
        done: bool,
    }
    let reading = Reading { first, receiver, done: false };
    let frames = futures_util::stream::unfold(reading, move |mut r| async move {
        if r.done {
            return None;
        }
        if let Some(first) = r.first.take() {
            return Some((frame(first), r));
        }
        loop {
            match tokio::time::timeout(KEEPALIVE, r.receiver.recv()).await {
                Err(_) => {
                    let alive = ProcessEvent {
                        event: Some(process_event::Event::Keepalive(process_event::KeepAlive {})),
                    };
                    return Some((frame(alive), r));
                }
                Ok(Ok(event)) => {
                    let end = matches!(event.event, Some(process_event::Event::End(_)));
                    let bytes = frame(event);
                    if end {
                        r.done = true;
                        let mut both = bytes.to_vec();
                        both.extend_from_slice(&connect::end_frame(None));
                        return Some((Bytes::from(both), r));
                    }
                    return Some((bytes, r));
                }
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    r.done = true;
                    let lost = RpcError::new(
                        Code::Unavailable,
                        "the box's process stream ended before the process did",
                    );
                    return Some((connect::end_frame(Some(&lost)), r));
                }
            }
        }
    });
    connect::streaming(frames)
}

/// Reads the box's events of one process and fans them out until it ends.
async fn pump(mut stream: ExecStream, sender: broadcast::Sender<ProcessEvent>, key: (LeaseId, u32)) {
    let decode = |data: &str| base64::engine::general_purpose::STANDARD.decode(data).unwrap_or_default();
    loop {
        let event = match stream.next().await {
            Ok(Some(Event::Stdout(data))) => {
                data_event(process_event::data_event::Output::Stdout(decode(&data)))
            }
            Ok(Some(Event::Stderr(data))) => {
                data_event(process_event::data_event::Output::Stderr(decode(&data)))
            }
            Ok(Some(Event::Pty(data))) => data_event(process_event::data_event::Output::Pty(decode(&data))),
            Ok(Some(Event::End(exit))) => {
                let _ = sender.send(end_event(exit));
                break;
            }
            Ok(Some(Event::Start { .. })) => continue,
            Ok(None) | Err(_) => break,
        };
        let _ = sender.send(event);
    }
    pumps().lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
}

fn data_event(output: process_event::data_event::Output) -> ProcessEvent {
    ProcessEvent {
        event: Some(process_event::Event::Data(process_event::DataEvent { output: Some(output) })),
    }
}

/// envd's end event, as Go's `os.ProcessState` says it: `exit status N` or `signal: killed`.
fn end_event(exit: ExitInfo) -> ProcessEvent {
    let (exit_code, exited, status) = match (exit.exit_code, exit.signal) {
        (Some(code), _) => (code, true, format!("exit status {code}")),
        (None, Some(signal)) => (-1, false, format!("signal: {}", signal_name(signal))),
        (None, None) => (-1, false, "unknown".to_owned()),
    };
    let error = exit.timed_out.then(|| "the command's time limit passed; it was killed".to_owned());
    ProcessEvent {
        event: Some(process_event::Event::End(process_event::EndEvent { exit_code, exited, status, error })),
    }
}

fn signal_name(signal: i32) -> String {
    match signal {
        9 => "killed".into(),
        15 => "terminated".into(),
        2 => "interrupt".into(),
        1 => "hangup".into(),
        other => format!("signal {other}"),
    }
}
