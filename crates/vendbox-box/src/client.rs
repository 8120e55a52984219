//! `BoxdClient`: the host's side of boxd's protocol (HTTP/1.1 with JSON), over whatever
//! [`Connector`] reaches the box: its Unix socket on this host today (`UnixConnector`), a TCP
//! link or a port forward for a remote backend. One connection per call: a Unix socket connects
//! in microseconds, and no state is kept between calls, so a box that restarts or ends never
//! leaves a broken pooled connection.
//!
//! boxd runs inside the box, so its answers are hostile input: every answer is read with a cap
//! on its size and a deadline on the whole of it (not only its head), so a box that stalls,
//! lies about lengths or sends without end costs that box's call and nothing else.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::wire::{
    EntryInfo, Event, MoveRequest, ProcessList, RunRequest, RunResult, StartRequest, TCP_CONNECT_TIMEOUT,
    TCP_UPGRADE, WriteResult,
};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::BoxError;

/// How long a call may take to connect to boxd and get its answer's head.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a control call (health, stat, list, signals, acknowledgements) may take in all.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// The most a control answer or an error answer may hold.
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// How long boxd may take past a command's own time limit to report how it ended (it kills the
/// command at its limit, then collects its output).
const RUN_GRACE: Duration = Duration::from_secs(15);

/// The time limit of a command whose request sets none (the longest the server allows).
const MAX_RUN_TIME: Duration = Duration::from_mins(30);

/// The longest line of a process's event stream (boxd sends output in chunks far smaller).
const MAX_EVENT_BYTES: usize = 1 << 20;

/// How long a file download may take in all.
pub(crate) const FILE_TIMEOUT: Duration = Duration::from_mins(10);

/// A byte stream to one boxd.
pub trait BoxdStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> BoxdStream for T {}

/// How a client reaches one box's boxd: a fresh stream per call. Failing to connect means boxd
/// saw nothing of the call.
#[async_trait::async_trait]
pub trait Connector: Send + Sync + std::fmt::Debug {
    /// A new stream to boxd.
    async fn connect(&self) -> io::Result<Box<dyn BoxdStream>>;

    /// Where it connects, for messages.
    fn describe(&self) -> String;

    /// The Unix socket it connects to, when it is one on this host.
    fn unix_socket(&self) -> Option<&Path> {
        None
    }
}

/// boxd's Unix socket on this host (the local backend's boxes).
#[derive(Debug, Clone)]
pub struct UnixConnector {
    socket: PathBuf,
}

#[async_trait::async_trait]
impl Connector for UnixConnector {
    async fn connect(&self) -> io::Result<Box<dyn BoxdStream>> {
        Ok(Box::new(tokio::net::UnixStream::connect(&self.socket).await?))
    }

    fn describe(&self) -> String {
        self.socket.display().to_string()
    }

    fn unix_socket(&self) -> Option<&Path> {
        Some(&self.socket)
    }
}

/// A client of one box's boxd.
#[derive(Debug, Clone)]
pub struct BoxdClient {
    connector: std::sync::Arc<dyn Connector>,
}

/// The events of a started process, as boxd streams them.
#[derive(Debug)]
pub struct ExecStream {
    body: Incoming,
    buffer: Vec<u8>,
    /// When the stream must have ended (its command's time limit and a grace), if it has one.
    deadline: Option<tokio::time::Instant>,
}

impl ExecStream {
    /// The next event, or `None` when the stream ended. A line longer than boxd ever sends, or
    /// a stream still open past the command's time limit, is an error.
    pub async fn next(&mut self) -> Result<Option<Event>, BoxError> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                let event = serde_json::from_slice(&line[..end])
                    .map_err(|e| BoxError::AnswerLost(format!("boxd sent a bad event: {e}")))?;
                return Ok(Some(event));
            }
            if self.buffer.len() > MAX_EVENT_BYTES {
                return Err(BoxError::AnswerLost(format!(
                    "boxd sent an event longer than {MAX_EVENT_BYTES} bytes"
                )));
            }
            let frame = match self.deadline {
                Some(deadline) => {
                    tokio::time::timeout_at(deadline, self.body.frame()).await.map_err(|_| {
                        BoxError::AnswerLost("boxd kept the stream open past the command's time limit".into())
                    })?
                }
                None => self.body.frame().await,
            };
            match frame {
                None => return Ok(None),
                Some(Err(e)) => return Err(BoxError::AnswerLost(e.to_string())),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// A file's bytes as boxd streams them, from [`BoxdClient::read_file_stream`]: at most the
/// size boxd announced (which the caller's cap already bounds), within [`FILE_TIMEOUT`].
#[derive(Debug)]
pub struct FileStream {
    body: Incoming,
    /// The size boxd announced.
    pub size: u64,
    read: u64,
    deadline: tokio::time::Instant,
}

impl FileStream {
    /// The next chunk, or `None` at the end. More bytes than announced, or a download past
    /// [`FILE_TIMEOUT`], is an error.
    pub async fn next(&mut self) -> Result<Option<Bytes>, BoxError> {
        loop {
            let frame = tokio::time::timeout_at(self.deadline, self.body.frame()).await.map_err(|_| {
                BoxError::AnswerLost(format!("the file did not arrive within {FILE_TIMEOUT:?}"))
            })?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => return Err(BoxError::AnswerLost(e.to_string())),
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    self.read += data.len() as u64;
                    if self.read > self.size {
                        return Err(BoxError::AnswerLost(format!(
                            "boxd sent more than the {} bytes it announced",
                            self.size
                        )));
                    }
                    return Ok(Some(data));
                }
            }
        }
    }

    /// The whole file.
    pub async fn collect(mut self) -> Result<Bytes, BoxError> {
        let mut out = Vec::with_capacity(usize::try_from(self.size.min(1 << 20)).unwrap_or_default());
        while let Some(chunk) = self.next().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(out))
    }
}

/// A byte stream to a TCP port inside a box, from [`BoxdClient::connect_tcp`]. Shutting down
/// its write half closes the box side's write half; reading end-of-file means the box side
/// closed its write half.
#[derive(Debug)]
pub struct TcpTunnel(TokioIo<Upgraded>);

impl AsyncRead for TcpTunnel {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TcpTunnel {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl BoxdClient {
    /// A client for the boxd listening on the Unix socket `socket` on this host.
    pub fn new(socket: PathBuf) -> BoxdClient {
        BoxdClient::with_connector(std::sync::Arc::new(UnixConnector { socket }))
    }

    /// A client for the boxd `connector` reaches.
    pub fn with_connector(connector: std::sync::Arc<dyn Connector>) -> BoxdClient {
        BoxdClient { connector }
    }

    /// The Unix socket this client talks to, when it talks to one on this host.
    pub fn socket(&self) -> Option<&Path> {
        self.connector.unix_socket()
    }

    /// Sends `request` on a new connection to boxd (which may be upgraded to a raw stream) and
    /// waits up to `head_within` for the answer's head. Failing to connect is `Unreachable`
    /// (boxd never saw the request); anything after is `AnswerLost` (it may have acted on it).
    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
        head_within: Duration,
    ) -> Result<hyper::Response<Incoming>, BoxError> {
        let connect = async {
            let stream = self
                .connector
                .connect()
                .await
                .map_err(|e| BoxError::Unreachable(format!("{}: {e}", self.connector.describe())))?;
            hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| BoxError::Unreachable(e.to_string()))
        };
        let (mut sender, connection) =
            tokio::time::timeout(CONNECT_TIMEOUT, connect).await.map_err(|_| {
                BoxError::Unreachable(format!("boxd did not take the connection within {CONNECT_TIMEOUT:?}"))
            })??;
        tokio::spawn(connection.with_upgrades());
        tokio::time::timeout(head_within, sender.send_request(request))
            .await
            .map_err(|_| BoxError::AnswerLost(format!("boxd did not answer within {head_within:?}")))?
            .map_err(|e| BoxError::AnswerLost(e.to_string()))
    }

    /// Sends a request and waits up to `head_within` for its answer's head; an error answer is
    /// read (bounded) into a `BoxError::Boxd`.
    async fn send(
        &self,
        method: Method,
        uri: &str,
        body: Bytes,
        json: bool,
        head_within: Duration,
    ) -> Result<hyper::Response<Incoming>, BoxError> {
        let content_type = if json { "application/json" } else { "application/octet-stream" };
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::HOST, "boxd")
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(body))
            .map_err(|e| BoxError::Unreachable(e.to_string()))?;
        let response = self.exchange(request, head_within).await?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(error_of(response).await)
    }

    /// A control call: its whole answer within [`CALL_TIMEOUT`] and [`MAX_ANSWER_BYTES`].
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        uri: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, BoxError> {
        self.call_within(method, uri, body, CALL_TIMEOUT, MAX_ANSWER_BYTES).await
    }

    /// A call whose whole answer, head and body, must come within `within` and `max_bytes`.
    async fn call_within<T: DeserializeOwned>(
        &self,
        method: Method,
        uri: &str,
        body: Option<&impl Serialize>,
        within: Duration,
        max_bytes: usize,
    ) -> Result<T, BoxError> {
        let body = match body {
            Some(body) => {
                Bytes::from(serde_json::to_vec(body).map_err(|e| BoxError::Unreachable(e.to_string()))?)
            }
            None => Bytes::new(),
        };
        let deadline = tokio::time::Instant::now() + within;
        let response = self.send(method, uri, body, true, within).await?;
        let bytes = collect(response, max_bytes, deadline).await?;
        serde_json::from_slice(&bytes).map_err(|e| BoxError::AnswerLost(format!("boxd sent bad JSON: {e}")))
    }

    /// Asks boxd whether it is alive.
    pub async fn health(&self) -> Result<serde_json::Value, BoxError> {
        self.call(Method::GET, "/health", None::<&()>).await
    }

    /// Runs a command to completion and returns its output (capped as the request says). The
    /// answer may take as long as the command's time limit allows, and a little more.
    pub async fn run(&self, request: &RunRequest) -> Result<RunResult, BoxError> {
        let limit = request.process.timeout_ms.map_or(MAX_RUN_TIME, Duration::from_millis);
        // Each output stream's kept bytes, escaped as JSON at worst (`\u00XX`), and the rest.
        let output = usize::try_from(request.max_output_bytes).unwrap_or(usize::MAX);
        let max_bytes = output.saturating_mul(12).saturating_add(64 * 1024);
        self.call_within(Method::POST, "/process/run", Some(request), limit + RUN_GRACE, max_bytes).await
    }

    /// Starts a process and streams its events. The stream must end within the process's time
    /// limit (and a grace) when it has one.
    pub async fn start(&self, request: &StartRequest) -> Result<ExecStream, BoxError> {
        let body =
            Bytes::from(serde_json::to_vec(request).map_err(|e| BoxError::Unreachable(e.to_string()))?);
        let response = self.send(Method::POST, "/process/start", body, true, CONNECT_TIMEOUT).await?;
        let deadline = request
            .process
            .timeout_ms
            .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms) + RUN_GRACE);
        Ok(ExecStream { body: response.into_body(), buffer: Vec::new(), deadline })
    }

    /// The processes boxd started that still run.
    pub async fn processes(&self) -> Result<ProcessList, BoxError> {
        self.call(Method::GET, "/process", None::<&()>).await
    }

    /// Writes `data` to the process's stdin (or its terminal).
    pub async fn input(&self, pid: u32, data: &[u8]) -> Result<(), BoxError> {
        use base64::Engine as _;
        let body = serde_json::json!({ "data": base64::engine::general_purpose::STANDARD.encode(data) });
        self.call::<serde_json::Value>(Method::POST, &format!("/process/{pid}/input"), Some(&body)).await?;
        Ok(())
    }

    /// Closes the process's stdin.
    pub async fn close_input(&self, pid: u32) -> Result<(), BoxError> {
        let body = serde_json::json!({ "eof": true });
        self.call::<serde_json::Value>(Method::POST, &format!("/process/{pid}/input"), Some(&body)).await?;
        Ok(())
    }

    /// Sends `signal` (`SIGTERM`, `SIGKILL`…) to the process's group.
    pub async fn signal(&self, pid: u32, signal: &str) -> Result<(), BoxError> {
        let body = serde_json::json!({ "signal": signal });
        self.call::<serde_json::Value>(Method::POST, &format!("/process/{pid}/signal"), Some(&body)).await?;
        Ok(())
    }

    /// Resizes the process's terminal.
    pub async fn resize(&self, pid: u32, rows: u16, cols: u16) -> Result<(), BoxError> {
        let body = serde_json::json!({ "rows": rows, "cols": cols });
        self.call::<serde_json::Value>(Method::POST, &format!("/process/{pid}/resize"), Some(&body)).await?;
        Ok(())
    }

    /// A file's contents, if it is a regular file of at most `max_bytes`.
    pub async fn read_file(&self, path: &str, max_bytes: u64) -> Result<Bytes, BoxError> {
        self.read_file_stream(path, max_bytes).await?.collect().await
    }

    /// At most `length` bytes of a regular file from `offset`, and the whole file's size.
    pub async fn read_range(&self, path: &str, offset: u64, length: u32) -> Result<(u64, Bytes), BoxError> {
        let uri = format!("/files?path={}&offset={offset}&length={length}", encode(path));
        let response = self.send(Method::GET, &uri, Bytes::new(), false, CONNECT_TIMEOUT).await?;
        let size = announced_size(&response)?;
        let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
        let bytes = collect(response, length as usize, deadline).await?;
        Ok((size, bytes))
    }

    /// A file's contents as a stream, if it is a regular file of at most `max_bytes`: boxd
    /// announces the size first, and a file over the cap is refused (`BoxError::TooLarge`)
    /// before any byte is read.
    pub async fn read_file_stream(&self, path: &str, max_bytes: u64) -> Result<FileStream, BoxError> {
        let uri = format!("/files?path={}", encode(path));
        let response = self.send(Method::GET, &uri, Bytes::new(), false, CONNECT_TIMEOUT).await?;
        let size = announced_size(&response)?;
        if size > max_bytes {
            return Err(BoxError::TooLarge { size, limit: max_bytes });
        }
        let deadline = tokio::time::Instant::now() + FILE_TIMEOUT;
        Ok(FileStream { body: response.into_body(), size, read: 0, deadline })
    }

    /// Writes a file (creating its parents) with `mode`.
    pub async fn write_file(
        &self,
        path: &str,
        contents: Bytes,
        mode: u32,
    ) -> Result<serde_json::Value, BoxError> {
        let uri = format!("/files?path={}&mode={mode:o}", encode(path));
        let within = FILE_TIMEOUT;
        let deadline = tokio::time::Instant::now() + within;
        let response = self.send(Method::PUT, &uri, contents, false, within).await?;
        let bytes = collect(response, MAX_ANSWER_BYTES, deadline).await?;
        serde_json::from_slice(&bytes).map_err(|e| BoxError::AnswerLost(format!("boxd sent bad JSON: {e}")))
    }

    /// Writes `data` into the regular file `path` at `offset`, in place (never truncated, the
    /// rest kept, zeros past the end; a missing file is created with mode 0644); the bytes boxd
    /// says it wrote. Meant for ranges of a few MiB: the whole call, answer included, within
    /// [`CALL_TIMEOUT`], and the answer within [`MAX_ANSWER_BYTES`].
    pub async fn write_range(&self, path: &str, offset: u64, data: Bytes) -> Result<u64, BoxError> {
        let uri = format!("/files?path={}&offset={offset}", encode(path));
        let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
        let response = self.send(Method::PUT, &uri, data, false, CALL_TIMEOUT).await?;
        let bytes = collect(response, MAX_ANSWER_BYTES, deadline).await?;
        let written: WriteResult = serde_json::from_slice(&bytes)
            .map_err(|e| BoxError::AnswerLost(format!("boxd sent bad JSON: {e}")))?;
        Ok(written.size)
    }

    /// What is at `path` (not following a final symlink).
    pub async fn stat(&self, path: &str) -> Result<EntryInfo, BoxError> {
        self.call(Method::GET, &format!("/fs/stat?path={}", encode(path)), None::<&()>).await
    }

    /// The entries under the directory `path`, `depth` levels deep.
    pub async fn list(&self, path: &str, depth: u32) -> Result<Vec<EntryInfo>, BoxError> {
        #[derive(serde::Deserialize)]
        struct Listing {
            entries: Vec<EntryInfo>,
        }
        let listing: Listing = self
            .call(Method::GET, &format!("/fs/list?path={}&depth={depth}", encode(path)), None::<&()>)
            .await?;
        Ok(listing.entries)
    }

    /// Opens a byte stream to `port` on the box's loopback (`127.0.0.1`), on a connection of its
    /// own: boxd connects first, so a port nothing listens on is `connect_failed`.
    pub async fn connect_tcp(&self, port: u16) -> Result<TcpTunnel, BoxError> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(format!("/tcp?port={port}"))
            .header(http::header::HOST, "boxd")
            .header(http::header::CONNECTION, "Upgrade")
            .header(http::header::UPGRADE, TCP_UPGRADE)
            .body(Full::new(Bytes::new()))
            .map_err(|e| BoxError::Unreachable(e.to_string()))?;
        // boxd itself waits up to `TCP_CONNECT_TIMEOUT` for the port before it answers.
        let mut response = self.exchange(request, CONNECT_TIMEOUT + TCP_CONNECT_TIMEOUT).await?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(error_of(response).await);
        }
        let upgraded = hyper::upgrade::on(&mut response)
            .await
            .map_err(|e| BoxError::AnswerLost(format!("the upgrade to a TCP tunnel failed: {e}")))?;
        Ok(TcpTunnel(TokioIo::new(upgraded)))
    }

    /// Creates the directory `path` and its missing parents; a directory already there is no error.
    pub async fn mkdir(&self, path: &str) -> Result<EntryInfo, BoxError> {
        self.call(Method::POST, &format!("/fs/mkdir?path={}", encode(path)), None::<&()>).await
    }

    /// Moves `from` to `to`, which must not exist yet (`exists` otherwise); `to`'s missing
    /// parents are created. What is now at `to`.
    pub async fn rename(&self, from: &str, to: &str) -> Result<EntryInfo, BoxError> {
        let body = MoveRequest { from: from.to_owned(), to: to.to_owned() };
        self.call(Method::POST, "/fs/move", Some(&body)).await
    }

    /// Removes a file or a directory tree.
    pub async fn remove(&self, path: &str) -> Result<(), BoxError> {
        self.call::<serde_json::Value>(Method::DELETE, &format!("/fs?path={}", encode(path)), None::<&()>)
            .await?;
        Ok(())
    }
}

/// The size of a file as boxd announced it.
fn announced_size(response: &hyper::Response<Incoming>) -> Result<u64, BoxError> {
    response
        .headers()
        .get(crate::wire::FILE_SIZE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| BoxError::AnswerLost("boxd did not say how big the file is".into()))
}

/// An answer's body: at most `max_bytes`, whole by `deadline`.
async fn collect(
    response: hyper::Response<Incoming>,
    max_bytes: usize,
    deadline: tokio::time::Instant,
) -> Result<Bytes, BoxError> {
    let limited = http_body_util::Limited::new(response.into_body(), max_bytes);
    let collected = tokio::time::timeout_at(deadline, limited.collect())
        .await
        .map_err(|_| BoxError::AnswerLost("boxd's answer did not arrive in time".into()))?
        .map_err(|e| BoxError::AnswerLost(format!("boxd's answer could not be read: {e}")))?;
    Ok(collected.to_bytes())
}

/// boxd's error answer as a `BoxError::Boxd`.
async fn error_of(response: hyper::Response<Incoming>) -> BoxError {
    let status = response.status();
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    let bytes = collect(response, 64 * 1024, deadline).await.unwrap_or_default();
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let field = |name: &str| value["error"][name].as_str().map(str::to_owned);
    BoxError::Boxd {
        status: status.as_u16(),
        code: field("code").unwrap_or_else(|| status_code_name(status)),
        message: field("message").unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned()),
    }
}

fn status_code_name(status: StatusCode) -> String {
    status.canonical_reason().unwrap_or("error").to_lowercase().replace(' ', "_")
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}
