//! The harness: starts a `boxd` on a socket in a temporary directory and talks HTTP/1.1 to it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use boxd::wire::Event;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::upgrade::Upgraded;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustix::process::{Pid, Signal};
use serde_json::Value;

/// A running boxd, stopped (SIGTERM, then SIGKILL) when dropped.
pub(crate) struct Boxd {
    child: Child,
    /// Scratch space for the test; boxd's socket is in here too.
    pub(crate) dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Boxd {
    pub(crate) async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run/boxd.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_boxd"))
            .arg("--socket")
            .arg(&socket)
            .current_dir(dir.path())
            .env("BOXD_TEST_LEAK", "1")
            .spawn()
            .unwrap();
        let boxd = Self { child, dir, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(stream) = tokio::net::UnixStream::connect(&boxd.socket).await {
                drop(stream);
                break;
            }
            assert!(Instant::now() < deadline, "boxd did not start listening");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        boxd
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends SIGTERM and waits up to `wait` for boxd to exit; its exit code.
    pub(crate) fn terminate(&mut self, wait: Duration) -> Option<i32> {
        signal(self.pid(), Signal::TERM);
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> hyper::Response<Incoming> {
        let stream = tokio::net::UnixStream::connect(&self.socket).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
            .await
            .expect("no response for 30 s")
            .unwrap()
    }

    /// One request with a raw body; the status and the whole response body.
    pub(crate) async fn call(&self, method: &str, uri: &str, body: impl Into<Bytes>) -> (StatusCode, Bytes) {
        let req = Request::builder().method(method).uri(uri).body(Full::new(body.into())).unwrap();
        let resp = self.send(req).await;
        let status = resp.status();
        let body = tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect())
            .await
            .expect("the response took too long")
            .unwrap()
            .to_bytes();
        (status, body)
    }

    /// One request with a JSON body (`Value::Null` for none); the status and the JSON answer.
    pub(crate) async fn json(&self, method: &str, uri: &str, body: Value) -> (StatusCode, Value) {
        let body = if body.is_null() { Bytes::new() } else { Bytes::from(body.to_string()) };
        let (status, bytes) = self.call(method, uri, body).await;
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
        (status, value)
    }

    /// `GET uri` on a fresh connection asking for a TCP tunnel (without the `Upgrade` header
    /// when `upgrade` is false): the upgraded stream, or the status and JSON error of a refusal.
    pub(crate) async fn tunnel(
        &self,
        uri: &str,
        upgrade: bool,
    ) -> Result<TokioIo<Upgraded>, (StatusCode, Value)> {
        let stream = tokio::net::UnixStream::connect(&self.socket).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn.with_upgrades());
        let mut req = Request::builder().uri(uri).header("host", "boxd").header("connection", "Upgrade");
        if upgrade {
            req = req.header("upgrade", "tcp");
        }
        let req = req.body(Full::new(Bytes::new())).unwrap();
        let mut resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
            .await
            .expect("no response for 30 s")
            .unwrap();
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let status = resp.status();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            let value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
            return Err((status, value));
        }
        assert_eq!(resp.headers()["upgrade"], "tcp");
        Ok(TokioIo::new(hyper::upgrade::on(&mut resp).await.unwrap()))
    }

    /// `POST /process/start`; the event stream.
    pub(crate) async fn start_process(&self, body: Value) -> Events {
        let req = Request::builder()
            .method("POST")
            .uri("/process/start")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let resp = self.send(req).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
        Events { body: resp.into_body(), buf: Vec::new() }
    }
}

impl Drop for Boxd {
    fn drop(&mut self) {
        if self.terminate(Duration::from_secs(2)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends `sig` to one pid.
pub(crate) fn signal(pid: u32, sig: Signal) {
    let pid = Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
    let _ = rustix::process::kill_process(pid, sig);
}

/// The NDJSON events of a started process.
pub(crate) struct Events {
    body: Incoming,
    buf: Vec<u8>,
}

impl Events {
    /// The next event, or `None` at the end of the stream.
    pub(crate) async fn next(&mut self) -> Option<Event> {
        tokio::time::timeout(Duration::from_secs(20), self.next_inner()).await.expect("no event for 20 s")
    }

    async fn next_inner(&mut self) -> Option<Event> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            let frame = self.body.frame().await?.unwrap();
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }

    /// The pid of the first event, which must be `start`.
    pub(crate) async fn started(&mut self) -> u32 {
        match self.next().await {
            Some(Event::Start { pid }) => pid,
            other => panic!("expected start, got {other:?}"),
        }
    }

    /// Reads output events (any stream, decoded and concatenated) until `text` appears in them.
    pub(crate) async fn output_until(&mut self, text: &str) -> String {
        let mut out = String::new();
        while !out.contains(text) {
            match self.next().await {
                Some(Event::Stdout(b) | Event::Stderr(b) | Event::Pty(b)) => {
                    out.push_str(&String::from_utf8_lossy(&BASE64.decode(b).unwrap()));
                }
                other => panic!("expected output containing {text:?}, got {other:?} after {out:?}"),
            }
        }
        out
    }

    /// Reads to the end: (stdout, stderr, pty) decoded, and the `end` event.
    pub(crate) async fn finish(&mut self) -> (String, String, String, boxd::wire::ExitInfo) {
        let (mut stdout, mut stderr, mut pty) = (Vec::new(), Vec::new(), Vec::new());
        loop {
            match self.next().await {
                Some(Event::Stdout(b)) => stdout.extend(BASE64.decode(b).unwrap()),
                Some(Event::Stderr(b)) => stderr.extend(BASE64.decode(b).unwrap()),
                Some(Event::Pty(b)) => pty.extend(BASE64.decode(b).unwrap()),
                Some(Event::End(end)) => {
                    assert!(self.next().await.is_none(), "events after end");
                    let s = |v: Vec<u8>| String::from_utf8_lossy(&v).into_owned();
                    return (s(stdout), s(stderr), s(pty), end);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

/// `s` percent-encoded for a query string.
pub(crate) fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Whether a process exists and is not a zombie.
pub(crate) fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| state(&stat) != 'Z')
}

/// The state letter of a `/proc/<pid>/stat` line.
pub(crate) fn state(stat: &str) -> char {
    stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()).unwrap_or('?')
}

/// The children of `pid`, from `/proc/<pid>/task/*/children`.
pub(crate) fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let children = std::fs::read_to_string(task.unwrap().path().join("children")).unwrap_or_default();
        out.extend(children.split_whitespace().map(|p| p.parse::<u32>().unwrap()));
    }
    out
}

/// Waits up to `within` for `cond`.
pub(crate) async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
