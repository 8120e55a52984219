//! Watching one child from spawn to exit: pumping its output to a [`Sink`], enforcing its
//! timeout, and waiting for the reaper to report how it ended.

use std::time::Duration;

use axum::body::Bytes;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustix::process::Signal;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::fdio::{self, Reader};
use crate::reaper::Exit;
use crate::spawn::ChildOutput;
use crate::table::{ProcessTable, signal_group};
use crate::wire::{Event, ExitInfo};

/// Bytes read from a child in one go.
const READ_CHUNK: usize = 16 * 1024;

/// How long output is still read after the child exits, when something it left behind (a
/// background job) keeps the pipes open.
const DRAIN_GRACE: Duration = Duration::from_millis(100);

/// Which of a child's outputs a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Stdout,
    Stderr,
    Pty,
}

/// Output kept by `POST /process/run`.
#[derive(Debug, Default)]
pub(crate) struct Collected {
    /// Bytes kept per stream.
    max: usize,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    pub(crate) stdout_truncated: bool,
    pub(crate) stderr_truncated: bool,
}

impl Collected {
    pub(crate) fn new(max_output_bytes: u64) -> Self {
        Self { max: usize::try_from(max_output_bytes).unwrap_or(usize::MAX), ..Self::default() }
    }

    fn push(&mut self, source: Source, data: &[u8]) {
        let (buf, truncated) = match source {
            Source::Stdout | Source::Pty => (&mut self.stdout, &mut self.stdout_truncated),
            Source::Stderr => (&mut self.stderr, &mut self.stderr_truncated),
        };
        let keep = data.len().min(self.max.saturating_sub(buf.len()));
        buf.extend_from_slice(&data[..keep]);
        *truncated |= keep < data.len();
    }
}

/// Where a child's output goes.
#[derive(Debug)]
pub(crate) enum Sink<'a> {
    /// Events to the host's stream; dropped once the host goes away.
    Stream(&'a mpsc::Sender<Bytes>),
    /// Kept for the run result.
    Collect(&'a mut Collected),
}

impl Sink<'_> {
    async fn output(&mut self, source: Source, data: &[u8]) {
        match self {
            Sink::Stream(tx) => {
                if tx.is_closed() {
                    return;
                }
                let chunk = BASE64.encode(data);
                let event = match source {
                    Source::Stdout => Event::Stdout(chunk),
                    Source::Stderr => Event::Stderr(chunk),
                    Source::Pty => Event::Pty(chunk),
                };
                send_event(tx, &event).await;
            }
            Sink::Collect(collected) => collected.push(source, data),
        }
    }
}

/// Sends `event` as one NDJSON line, unless the host stopped listening.
pub(crate) async fn send_event(tx: &mpsc::Sender<Bytes>, event: &Event) {
    let Ok(mut line) = serde_json::to_vec(event) else { return };
    line.push(b'\n');
    // An error means the host dropped the stream; the process runs on regardless.
    let _ = tx.send(Bytes::from(line)).await;
}

/// The child a supervisor watches.
#[derive(Debug)]
pub(crate) struct Watched {
    pub(crate) pid: u32,
    pub(crate) started: Instant,
    pub(crate) exit: oneshot::Receiver<Exit>,
    pub(crate) output: ChildOutput,
    pub(crate) timeout: Option<Duration>,
}

/// Pumps the child's output into `sink` until it has exited and its output is drained, killing
/// its process group if the timeout passes first. Removes it from `table` when it exits.
pub(crate) async fn supervise(table: &ProcessTable, watched: Watched, mut sink: Sink<'_>) -> ExitInfo {
    let Watched { pid, started, exit: mut exit_rx, output, timeout } = watched;
    let ChildOutput { mut stdout, mut stderr, mut pty } = output;
    let deadline = timeout.map(|t| started + t);
    let mut buf = vec![0_u8; READ_CHUNK];
    let mut timed_out = false;
    let mut ended: Option<(Exit, Instant)> = None;
    let mut drain_until = None;
    loop {
        if ended.is_some() && stdout.is_none() && stderr.is_none() && pty.is_none() {
            break;
        }
        tokio::select! {
            ready = fdio::readable(stdout.as_ref()) => {
                if !pump(ready, stdout.as_ref(), &mut buf, Source::Stdout, &mut sink).await {
                    stdout = None;
                }
            }
            ready = fdio::readable(stderr.as_ref()) => {
                if !pump(ready, stderr.as_ref(), &mut buf, Source::Stderr, &mut sink).await {
                    stderr = None;
                }
            }
            ready = fdio::readable(pty.as_ref()) => {
                if !pump(ready, pty.as_ref(), &mut buf, Source::Pty, &mut sink).await {
                    pty = None;
                }
            }
            exit = &mut exit_rx, if ended.is_none() => {
                // The reaper never drops a registered sender; no status is a lost child.
                let exit = exit.unwrap_or(Exit { code: None, signal: None });
                let now = Instant::now();
                ended = Some((exit, now));
                drain_until = Some(now + DRAIN_GRACE);
                table.remove(pid);
            }
            () = sleep_until(deadline), if !timed_out && ended.is_none() => {
                timed_out = true;
                let _ = signal_group(pid, Signal::KILL);
            }
            () = sleep_until(drain_until) => break,
        }
    }
    let (exit, at) = ended.unwrap_or((Exit { code: None, signal: None }, Instant::now()));
    ExitInfo {
        exit_code: exit.code,
        signal: exit.signal,
        timed_out,
        duration_ms: u64::try_from((at - started).as_millis()).unwrap_or(u64::MAX),
    }
}

/// Reads one chunk after a readiness wakeup and hands it to `sink`; false once the stream ended.
async fn pump(
    ready: std::io::Result<()>,
    reader: Option<&Reader>,
    buf: &mut [u8],
    source: Source,
    sink: &mut Sink<'_>,
) -> bool {
    let (Ok(()), Some(reader)) = (ready, reader) else { return false };
    match fdio::try_read(reader, buf) {
        None => true,
        Some(Ok(0) | Err(_)) => false,
        Some(Ok(n)) => {
            sink.output(source, &buf[..n]).await;
            true
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
