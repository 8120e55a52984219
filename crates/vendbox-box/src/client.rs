//! `BoxdClient`: the host's side of boxd's protocol (HTTP/1.1 with JSON over the box's Unix
//! socket). One connection per call: a Unix socket connects in microseconds, and no state is
//! kept between calls, so a box that restarts or ends never leaves a broken pooled connection.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use boxd::wire::{
    EntryInfo, Event, MoveRequest, RunRequest, RunResult, StartRequest, TCP_CONNECT_TIMEOUT, TCP_UPGRADE,
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

/// A client of one box's boxd.
#[derive(Debug, Clone)]
pub struct BoxdClient {
    socket: PathBuf,
}

/// The events of a started process, as boxd streams them.
#[derive(Debug)]
pub struct ExecStream {
    body: Incoming,
    buffer: Vec<u8>,
}

impl ExecStream {
    /// The next event, or `None` when the stream ended.
    pub async fn next(&mut self) -> Result<Option<Event>, BoxError> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                let event = serde_json::from_slice(&line[..end])
                    .map_err(|e| BoxError::Unreachable(format!("boxd sent a bad event: {e}")))?;
                return Ok(Some(event));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(BoxError::Unreachable(e.to_string())),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
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
    /// A client for the boxd listening on `socket`.
    pub fn new(socket: PathBuf) -> BoxdClient {
        BoxdClient { socket }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether boxd's socket exists yet.
    pub fn socket_exists(&self) -> bool {
        self.socket.exists()
    }

    /// Sends `request` on a new connection to boxd (which may be upgraded to a raw stream).
    async fn exchange(&self, request: Request<Full<Bytes>>) -> Result<hyper::Response<Incoming>, BoxError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| BoxError::Unreachable(format!("{}: {e}", self.socket.display())))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| BoxError::Unreachable(e.to_string()))?;
        tokio::spawn(connection.with_upgrades());
        sender.send_request(request).await.map_err(|e| BoxError::Unreachable(e.to_string()))
    }

    async fn send(
        &self,
        method: Method,
        uri: &str,
        body: Bytes,
        json: bool,
    ) -> Result<hyper::Response<Incoming>, BoxError> {
        let call = async {
            let content_type = if json { "application/json" } else { "application/octet-stream" };
            let request = Request::builder()
                .method(method)
                .uri(uri)
                .header(http::header::HOST, "boxd")
                .header(http::header::CONTENT_TYPE, content_type)
                .body(Full::new(body))
                .map_err(|e| BoxError::Unreachable(e.to_string()))?;
            self.exchange(request).await
        };
        let response = tokio::time::timeout(CONNECT_TIMEOUT, call).await.map_err(|_| {
            BoxError::Unreachable(format!("boxd did not answer within {CONNECT_TIMEOUT:?}"))
        })??;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(error_of(response).await)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        uri: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, BoxError> {
        let body = match body {
            Some(body) => {
                Bytes::from(serde_json::to_vec(body).map_err(|e| BoxError::Unreachable(e.to_string()))?)
            }
            None => Bytes::new(),
        };
        let response = self.send(method, uri, body, true).await?;
        let bytes = collect(response).await?;
        serde_json::from_slice(&bytes).map_err(|e| BoxError::Unreachable(format!("boxd sent bad JSON: {e}")))
    }

    /// Asks boxd whether it is alive.
    pub async fn health(&self) -> Result<serde_json::Value, BoxError> {
        self.call(Method::GET, "/health", None::<&()>).await
    }

    /// Runs a command to completion and returns its output (capped as the request says).
    pub async fn run(&self, request: &RunRequest) -> Result<RunResult, BoxError> {
        self.call(Method::POST, "/process/run", Some(request)).await
    }

    /// Starts a process and streams its events.
    pub async fn start(&self, request: &StartRequest) -> Result<ExecStream, BoxError> {
        let body =
            Bytes::from(serde_json::to_vec(request).map_err(|e| BoxError::Unreachable(e.to_string()))?);
        let response = self.send(Method::POST, "/process/start", body, true).await?;
        Ok(ExecStream { body: response.into_body(), buffer: Vec::new() })
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

    /// A file's contents.
    pub async fn read_file(&self, path: &str) -> Result<Bytes, BoxError> {
        let response =
            self.send(Method::GET, &format!("/files?path={}", encode(path)), Bytes::new(), false).await?;
        collect(response).await
    }

    /// Writes a file (creating its parents) with `mode`.
    pub async fn write_file(
        &self,
        path: &str,
        contents: Bytes,
        mode: u32,
    ) -> Result<serde_json::Value, BoxError> {
        let uri = format!("/files?path={}&mode={mode:o}", encode(path));
        let response = self.send(Method::PUT, &uri, contents, false).await?;
        let bytes = collect(response).await?;
        serde_json::from_slice(&bytes).map_err(|e| BoxError::Unreachable(format!("boxd sent bad JSON: {e}")))
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
        let call = async {
            let request = Request::builder()
                .method(Method::GET)
                .uri(format!("/tcp?port={port}"))
                .header(http::header::HOST, "boxd")
                .header(http::header::CONNECTION, "Upgrade")
                .header(http::header::UPGRADE, TCP_UPGRADE)
                .body(Full::new(Bytes::new()))
                .map_err(|e| BoxError::Unreachable(e.to_string()))?;
            self.exchange(request).await
        };
        // boxd itself waits up to `TCP_CONNECT_TIMEOUT` for the port before it answers.
        let limit = CONNECT_TIMEOUT + TCP_CONNECT_TIMEOUT;
        let mut response = tokio::time::timeout(limit, call)
            .await
            .map_err(|_| BoxError::Unreachable(format!("boxd did not answer within {limit:?}")))??;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(error_of(response).await);
        }
        let upgraded = hyper::upgrade::on(&mut response)
            .await
            .map_err(|e| BoxError::Unreachable(format!("the upgrade to a TCP tunnel failed: {e}")))?;
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

async fn collect(response: hyper::Response<Incoming>) -> Result<Bytes, BoxError> {
    Ok(response.into_body().collect().await.map_err(|e| BoxError::Unreachable(e.to_string()))?.to_bytes())
}

/// boxd's error answer as a `BoxError::Boxd`.
async fn error_of(response: hyper::Response<Incoming>) -> BoxError {
    let status = response.status();
    let bytes = collect(response).await.unwrap_or_default();
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
