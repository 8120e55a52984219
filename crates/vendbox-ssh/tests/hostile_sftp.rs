//! Property tests of the SFTP subsystem against hostile clients: arbitrary bytes, arbitrary
//! packets, and sessions of well-formed requests with hostile values (handles that were never
//! opened, offsets and sizes at the edges of `u64`, odd paths and flags) fed to `sftp::serve`
//! over an in-memory pipe. Its boxd is a fake on a Unix socket that answers from the path's name
//! alone (`d…` is a directory, `f…` a three-byte file, `l…` a symlink, `big…` a 1 TiB file,
//! anything else is missing) and runs nothing, so no hostile request touches a real file system.
//!
//! The properties: `serve` never panics, ends when the client does and gives its stream back;
//! every answer is a packet a client can parse, and a session of well-formed requests gets one
//! answer per request, with the request's id, in order.
//!
//! `serve` is private to the crate, so this test compiles `src/sftp.rs` into itself, as
//! `tests/sftp.rs` does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "../src/sftp.rs"]
mod sftp;

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use bytes::{BufMut as _, Bytes, BytesMut};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestError, TestRunner};
use russh_sftp::protocol::Packet;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use vendbox_box::BoxdClient;

/// `cases` per property, or `PROPTEST_CASES` when set (for a longer run by hand).
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(cases);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

// SFTP version 3 packet types.
const INIT: u8 = 1;
const VERSION: u8 = 2;
const OPEN: u8 = 3;
const CLOSE: u8 = 4;
const READ: u8 = 5;
const WRITE: u8 = 6;
const LSTAT: u8 = 7;
const FSTAT: u8 = 8;
const SETSTAT: u8 = 9;
const FSETSTAT: u8 = 10;
const OPENDIR: u8 = 11;
const READDIR: u8 = 12;
const REMOVE: u8 = 13;
const MKDIR: u8 = 14;
const RMDIR: u8 = 15;
const REALPATH: u8 = 16;
const STAT: u8 = 17;
const RENAME: u8 = 18;
const READLINK: u8 = 19;
const SYMLINK: u8 = 20;
const STATUS: u8 = 101;
const HANDLE: u8 = 102;
const DATA: u8 = 103;
const NAME: u8 = 104;
const ATTRS: u8 = 105;
const EXTENDED: u8 = 200;

/// What `serve` reads at most per request, as it says (`MAX_PACKET`).
const MAX_PACKET: usize = 256 * 1024;

// ---------------------------------------------------------------------------------------------
// The fake boxd.

/// A file-system entry as boxd's JSON (`EntryInfo`).
fn entry_json(path: &str, kind: &str, size: u64, mode: u32, target: Option<&str>) -> String {
    let name = path.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("/");
    let target = target.map_or_else(|| "null".to_owned(), json_string);
    format!(
        r#"{{"name":{},"path":{},"kind":"{kind}","size":{size},"mode":{mode},"modified_ms":1700000000123,"symlink_target":{target}}}"#,
        json_string(name),
        json_string(path),
    )
}

fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What the fake file system has at `path`: decided by the last component's name alone.
fn stat(path: &str) -> Option<String> {
    let last = path.rsplit('/').next().unwrap_or_default();
    if path == "/" || last == "root" || last == "tmp" || last.starts_with('d') {
        Some(entry_json(path, "dir", 4096, 0o755, None))
    } else if last.starts_with("big") {
        Some(entry_json(path, "file", 1 << 40, 0o644, None))
    } else if last.starts_with('f') {
        Some(entry_json(path, "file", 3, 0o644, None))
    } else if last == "loop" {
        Some(entry_json(path, "symlink", 4, 0o777, Some("loop")))
    } else if last.starts_with('l') {
        Some(entry_json(path, "symlink", 2, 0o777, Some("f-target")))
    } else {
        None
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `path` parameter of a request target.
fn path_of(target: &str) -> String {
    let query = target.split_once('?').map_or("", |(_, q)| q);
    query.split('&').find_map(|pair| pair.strip_prefix("path=")).map(percent_decode).unwrap_or_default()
}

/// The answer to one request: status, extra headers, body.
fn respond(method: &str, target: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let route = target.split('?').next().unwrap_or_default();
    let path = path_of(target);
    let not_found =
        || (404, String::new(), br#"{"error":{"code":"not_found","message":"no such entry"}}"#.to_vec());
    let ok = |json: String| (200, String::new(), json.into_bytes());
    match (method, route) {
        ("GET", "/fs/stat") => stat(&path).map_or_else(not_found, ok),
        ("GET", "/files") => match stat(&path) {
            Some(entry) if entry.contains(r#""kind":"file""#) => {
                let size = if path.rsplit('/').next().unwrap_or_default().starts_with("big") { 1u64 << 40 } else { 3 };
                (200, format!("x-file-size: {size}\r\n"), b"abc".to_vec())
            }
            Some(_) => (400, String::new(), br#"{"error":{"code":"not_a_file","message":"not a file"}}"#.to_vec()),
            None => not_found(),
        },
        ("PUT", "/files") => ok(format!(r#"{{"path":{},"size":{}}}"#, json_string(&path), body.len())),
        ("GET", "/fs/list") => {
            let base = path.trim_end_matches('/');
            ok(format!(
                r#"{{"entries":[{},{},{}]}}"#,
                entry_json(&format!("{base}/d1"), "dir", 4096, 0o755, None),
                entry_json(&format!("{base}/f1"), "file", 3, 0o644, None),
                entry_json(&format!("{base}/l1"), "symlink", 2, 0o777, Some("f1")),
            ))
        }
        ("POST", "/fs/mkdir") => ok(entry_json(&path, "dir", 4096, 0o755, None)),
        ("POST", "/fs/move") => ok(entry_json("/root/moved", "file", 3, 0o644, None)),
        ("DELETE", "/fs") => ok(r#"{"ok":true}"#.to_owned()),
        ("POST", "/process/run") => ok(r#"{"exit_code":0,"signal":null,"timed_out":false,"duration_ms":1,"stdout":"","stderr":"","stdout_truncated":false,"stderr_truncated":false}"#.to_owned()),
        _ => (404, String::new(), br#"{"error":{"code":"not_found","message":"no such route"}}"#.to_vec()),
    }
}

/// Answers one HTTP/1.1 request on `stream`, then closes it.
async fn answer(mut stream: UnixStream) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut request_line = head.lines().next().unwrap_or_default().split(' ');
    let (method, target) = (request_line.next().unwrap_or_default(), request_line.next().unwrap_or_default());
    let length: usize = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = &buf[head_end..buf.len().min(head_end + length)];
    let (status, headers, reply) = respond(method, target, body);
    let head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{headers}connection: close\r\n\r\n",
        reply.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&reply).await?;
    stream.shutdown().await
}

/// Serves the fake boxd on `socket` for as long as the runtime runs.
fn start_fake_boxd(socket: &Path) {
    let listener = UnixListener::bind(socket).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer(stream));
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Sessions.

/// A runtime with a fake boxd, where sessions run.
struct Harness {
    rt: tokio::runtime::Runtime,
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn harness() -> Harness {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("boxd.sock");
    rt.block_on(async { start_fake_boxd(&socket) });
    Harness { rt, socket, _dir: dir }
}

/// What a session did: the answers, and how `serve` ended.
struct Session {
    answers: Vec<Bytes>,
    /// The bytes after the last whole answer (none when the stream ended cleanly).
    trailing: usize,
}

/// Sends `input` (then end-of-file) to a fresh `serve` and reads every answer, concurrently so
/// that neither side waits on a full pipe. Fails if `serve` panics or does not end.
fn session(h: &Harness, input: Vec<u8>) -> Result<Session, TestCaseError> {
    h.rt.block_on(async {
        let (client, server) = tokio::io::duplex(64 * 1024);
        // The stream comes back, and is dropped here: the client then reads to its end.
        let boxd = BoxdClient::new(h.socket.clone());
        let serving = tokio::spawn(async move { sftp::serve(server, boxd).await.is_some() });
        let (mut reader, mut writer) = tokio::io::split(client);
        let write = async move {
            // `serve` may stop reading (a request over its limit): a broken pipe is expected.
            let _ = writer.write_all(&input).await;
            let _ = writer.shutdown().await;
        };
        let read = async move {
            let mut out = Vec::new();
            let _ = reader.read_to_end(&mut out).await;
            out
        };
        let ((), output) = tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(write, read) })
            .await
            .map_err(|_| TestCaseError::fail("serve did not end after the client closed"))?;
        match tokio::time::timeout(Duration::from_secs(5), serving).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return Err(TestCaseError::fail("serve did not give its stream back")),
            Ok(Err(e)) if e.is_panic() => return Err(TestCaseError::fail(format!("serve panicked: {e}"))),
            Ok(Err(e)) => return Err(TestCaseError::fail(format!("serve failed: {e}"))),
            Err(_) => return Err(TestCaseError::fail("serve did not end")),
        }
        let mut answers = Vec::new();
        let mut rest = &output[..];
        while rest.len() >= 4 {
            let length = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if rest.len() < 4 + length {
                break;
            }
            answers.push(Bytes::copy_from_slice(&rest[4..4 + length]));
            rest = &rest[4 + length..];
        }
        Ok(Session { answers, trailing: rest.len() })
    })
}

/// Every answer is a whole packet a client parses, of a kind a server sends.
fn check_answers(session: &Session) -> Result<Vec<Packet>, TestCaseError> {
    prop_assert_eq!(session.trailing, 0, "serve wrote a partial packet");
    let mut packets = Vec::new();
    for answer in &session.answers {
        let kind = answer.first().copied();
        prop_assert!(
            matches!(kind, Some(VERSION | STATUS | HANDLE | DATA | NAME | ATTRS | 201)),
            "serve answered with packet type {kind:?}"
        );
        let packet = Packet::try_from(&mut answer.clone())
            .map_err(|e| TestCaseError::fail(format!("an answer does not parse: {e} ({answer:?})")))?;
        if let Packet::Data(data) = &packet {
            prop_assert!(data.data.len() <= MAX_PACKET, "a DATA answer of {} bytes", data.data.len());
        }
        packets.push(packet);
    }
    Ok(packets)
}

// ---------------------------------------------------------------------------------------------
// Requests.

fn put_string(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u32(u32::try_from(bytes.len()).unwrap());
    out.put_slice(bytes);
}

/// SFTP v3 file attributes, as a client sends them.
#[derive(Debug, Clone, Default)]
struct Attrs {
    size: Option<u64>,
    uid_gid: Option<(u32, u32)>,
    permissions: Option<u32>,
    times: Option<(u32, u32)>,
}

impl Attrs {
    fn put(&self, out: &mut BytesMut) {
        let flags = u32::from(self.size.is_some())
            | (u32::from(self.uid_gid.is_some()) << 1)
            | (u32::from(self.permissions.is_some()) << 2)
            | (u32::from(self.times.is_some()) << 3);
        out.put_u32(flags);
        if let Some(size) = self.size {
            out.put_u64(size);
        }
        if let Some((uid, gid)) = self.uid_gid {
            out.put_u32(uid);
            out.put_u32(gid);
        }
        if let Some(permissions) = self.permissions {
            out.put_u32(permissions);
        }
        if let Some((atime, mtime)) = self.times {
            out.put_u32(atime);
            out.put_u32(mtime);
        }
    }
}

/// One well-formed client packet.
#[derive(Debug, Clone)]
enum Request {
    Init(u32),
    Open(String, u32, Attrs),
    Close(String),
    Read(String, u64, u32),
    Write(String, u64, Vec<u8>),
    Lstat(String),
    Fstat(String),
    SetStat(String, Attrs),
    FSetStat(String, Attrs),
    OpenDir(String),
    ReadDir(String),
    Remove(String),
    MkDir(String, Attrs),
    RmDir(String),
    RealPath(String),
    Stat(String),
    Rename(String, String),
    ReadLink(String),
    Symlink(String, String),
    Extended(String, Vec<u8>),
    /// A packet only servers send, sent by the client.
    ServerOnly(u8),
}

impl Request {
    /// The framed packet (length, type, id, fields).
    fn encode(&self, id: u32) -> Vec<u8> {
        let mut out = BytesMut::new();
        let (kind, has_id) = match self {
            Request::Init(_) => (INIT, false),
            Request::Open(..) => (OPEN, true),
            Request::Close(_) => (CLOSE, true),
            Request::Read(..) => (READ, true),
            Request::Write(..) => (WRITE, true),
            Request::Lstat(_) => (LSTAT, true),
            Request::Fstat(_) => (FSTAT, true),
            Request::SetStat(..) => (SETSTAT, true),
            Request::FSetStat(..) => (FSETSTAT, true),
            Request::OpenDir(_) => (OPENDIR, true),
            Request::ReadDir(_) => (READDIR, true),
            Request::Remove(_) => (REMOVE, true),
            Request::MkDir(..) => (MKDIR, true),
            Request::RmDir(_) => (RMDIR, true),
            Request::RealPath(_) => (REALPATH, true),
            Request::Stat(_) => (STAT, true),
            Request::Rename(..) => (RENAME, true),
            Request::ReadLink(_) => (READLINK, true),
            Request::Symlink(..) => (SYMLINK, true),
            Request::Extended(..) => (EXTENDED, true),
            Request::ServerOnly(kind) => (*kind, true),
        };
        out.put_u8(kind);
        if has_id {
            out.put_u32(id);
        }
        match self {
            Request::Init(version) => out.put_u32(*version),
            Request::Open(path, flags, attrs) => {
                put_string(&mut out, path.as_bytes());
                out.put_u32(*flags);
                attrs.put(&mut out);
            }
            Request::Close(h) | Request::Fstat(h) | Request::ReadDir(h) => put_string(&mut out, h.as_bytes()),
            Request::Read(h, offset, len) => {
                put_string(&mut out, h.as_bytes());
                out.put_u64(*offset);
                out.put_u32(*len);
            }
            Request::Write(h, offset, data) => {
                put_string(&mut out, h.as_bytes());
                out.put_u64(*offset);
                put_string(&mut out, data);
            }
            Request::Lstat(p)
            | Request::OpenDir(p)
            | Request::Remove(p)
            | Request::RmDir(p)
            | Request::RealPath(p)
            | Request::Stat(p)
            | Request::ReadLink(p) => put_string(&mut out, p.as_bytes()),
            Request::SetStat(p, attrs) | Request::FSetStat(p, attrs) | Request::MkDir(p, attrs) => {
                put_string(&mut out, p.as_bytes());
                attrs.put(&mut out);
            }
            Request::Rename(a, b) | Request::Symlink(a, b) => {
                put_string(&mut out, a.as_bytes());
                put_string(&mut out, b.as_bytes());
            }
            Request::Extended(name, data) => {
                put_string(&mut out, name.as_bytes());
                out.put_slice(data);
            }
            Request::ServerOnly(_) => out.put_u32(0),
        }
        let mut framed = Vec::with_capacity(out.len() + 4);
        framed.extend_from_slice(&u32::try_from(out.len()).unwrap().to_be_bytes());
        framed.extend_from_slice(&out);
        framed
    }
}

/// Paths the fake file system answers in every way, and hostile ones.
fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec![
            "fa", "fb", "/root/f2", "~/f3", "fnew", "missing", "new-file", "d1", "/root/d2", "/", "", ".", "~",
            "la", "loop", "big", "bigger", "nodir/fx", "../../etc/f", "/tmp/f9", "d1/../fz", "a\0b", "f\u{202e}x",
        ])
        .prop_map(str::to_owned),
        1 => ".{0,16}",
        1 => Just("f".repeat(4096)),
    ]
}

/// Handles: the ones `serve` gives out first (it numbers them from 1), and ones it never gave.
fn handle() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec!["1", "2", "3"]).prop_map(str::to_owned),
        1 => prop::sample::select(vec!["4", "0", "", "x", "18446744073709551616", "-1"]).prop_map(str::to_owned),
        1 => ".{0,8}",
    ]
}

/// Offsets and sizes: small ones, ones around the mebibyte a handle's write-behind buffer holds,
/// and ones at the edges of what a file may hold (`i64::MAX`) and of `u64`.
fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..8,
        2 => 0u64..100_000,
        3 => prop::sample::select(vec![
            (1 << 20) - 1,
            1 << 20,
            (512 << 20) + 1,
            u64::from(u32::MAX),
            1 << 40,
            (1 << 63) - 2,
            1 << 63,
            u64::MAX - 1024,
            u64::MAX - 1,
            u64::MAX,
        ]),
        1 => any::<u64>(),
    ]
}

/// Offsets for `WRITE` and sizes for `FSETSTAT`: any [`offset`], up to `u64::MAX` (a write
/// or size near it once overflowed the session's count of held bytes, when written files were
/// held in memory:
/// `regression_a_write_near_u64_max_does_not_panic`, `regression_fsetstat_near_u64_max_does_not_panic`).
fn bounded_offset() -> impl Strategy<Value = u64> {
    offset()
}

fn open_flags() -> impl Strategy<Value = u32> {
    // READ 1, WRITE 2, APPEND 4, CREAT 8, TRUNC 0x10, EXCL 0x20.
    prop_oneof![
        4 => prop::sample::select(vec![1, 0x1a, 0xa, 0xc, 0x3, 0x2a, 0x2, 0x13, 0x0, 0x3f]),
        1 => any::<u32>(),
    ]
}

fn attrs() -> impl Strategy<Value = Attrs> {
    (
        prop::option::of(bounded_offset()),
        prop::option::of(any::<(u32, u32)>()),
        prop::option::of(prop_oneof![Just(0o644), Just(0o4755), Just(0o170_777), any::<u32>()]),
        prop::option::of(any::<(u32, u32)>()),
    )
        .prop_map(|(size, uid_gid, permissions, times)| Attrs { size, uid_gid, permissions, times })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        1 => prop_oneof![Just(3u32), any::<u32>()].prop_map(Request::Init),
        5 => (path(), open_flags(), attrs()).prop_map(|(p, f, a)| Request::Open(p, f, a)),
        2 => handle().prop_map(Request::Close),
        2 => (handle(), offset(), prop_oneof![Just(32_768u32), any::<u32>()]).prop_map(|(h, o, l)| Request::Read(h, o, l)),
        6 => (handle(), bounded_offset(), prop::collection::vec(any::<u8>(), 0..64)).prop_map(|(h, o, d)| Request::Write(h, o, d)),
        1 => path().prop_map(Request::Lstat),
        1 => handle().prop_map(Request::Fstat),
        1 => (path(), attrs()).prop_map(|(p, a)| Request::SetStat(p, a)),
        3 => (handle(), attrs()).prop_map(|(h, a)| Request::FSetStat(h, a)),
        1 => path().prop_map(Request::OpenDir),
        1 => handle().prop_map(Request::ReadDir),
        1 => path().prop_map(Request::Remove),
        1 => (path(), attrs()).prop_map(|(p, a)| Request::MkDir(p, a)),
        1 => path().prop_map(Request::RmDir),
        1 => path().prop_map(Request::RealPath),
        1 => path().prop_map(Request::Stat),
        1 => (path(), path()).prop_map(|(a, b)| Request::Rename(a, b)),
        1 => path().prop_map(Request::ReadLink),
        1 => (path(), path()).prop_map(|(a, b)| Request::Symlink(a, b)),
        1 => (
            prop_oneof![Just("limits@openssh.com".to_owned()), Just("posix-rename@openssh.com".to_owned()), ".{0,12}"],
            prop::collection::vec(any::<u8>(), 0..16),
        )
            .prop_map(|(n, d)| Request::Extended(n, d)),
        1 => prop::sample::select(vec![VERSION, STATUS, HANDLE, DATA, NAME, ATTRS, 201]).prop_map(Request::ServerOnly),
    ]
}

/// Runs `strategy`'s cases through `property` on one harness; panics with the minimal failure.
fn run<S: Strategy>(
    label: &str,
    cases: u32,
    strategy: S,
    property: impl Fn(&Harness, S::Value) -> Result<(), TestCaseError>,
) {
    let h = harness();
    let mut runner = TestRunner::new(config(cases));
    match runner.run(&strategy, |value| property(&h, value)) {
        Ok(()) => {}
        Err(TestError::Fail(why, value)) => panic!("{label}: {why}\nminimal input: {value:?}"),
        Err(e) => panic!("{label}: {e}"),
    }
}

/// A session of well-formed requests: one answer each, with its id, in order.
fn check_session(h: &Harness, requests: &[Request]) -> Result<(), TestCaseError> {
    let mut input = Vec::new();
    for (i, request) in requests.iter().enumerate() {
        input.extend(request.encode(u32::try_from(i).unwrap() + 1000));
    }
    let session = session(h, input)?;
    let answers = check_answers(&session)?;
    prop_assert_eq!(answers.len(), requests.len(), "one answer per request");
    for (i, (request, (answer, raw))) in requests.iter().zip(answers.iter().zip(&session.answers)).enumerate()
    {
        // Every answer but VERSION carries the request's id right after its type; a packet that
        // is no request has no id, and is refused with id 0.
        let id = raw.get(1..5).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        match request {
            Request::Init(_) => prop_assert!(matches!(answer, Packet::Version(_)), "INIT got {answer:?}"),
            Request::ServerOnly(_) => prop_assert!(matches!(answer, Packet::Status(_)), "got {answer:?}"),
            _ => {
                prop_assert_eq!(id, Some(u32::try_from(i).unwrap() + 1000), "{:?} got {:?}", request, answer);
            }
        }
    }
    Ok(())
}

#[test]
fn sessions_of_hostile_requests() {
    run("sessions", 256, prop::collection::vec(request(), 1..24), |h, requests| check_session(h, &requests));
}

/// The same, each session starting as a client's would: INIT, then a file open for reading and a
/// new file open for writing, so that reads, writes and size changes meet open handles of both
/// kinds (and writes meet what a handle's write-behind buffer already holds).
#[test]
fn sessions_with_open_files() {
    let prologue = [
        Request::Init(3),
        Request::Open("fa".into(), 0x1, Attrs::default()),
        Request::Open("fnew".into(), 0x1a, Attrs::default()),
    ];
    run("sessions with open files", 256, prop::collection::vec(request(), 1..16), |h, requests| {
        let all: Vec<Request> = prologue.iter().cloned().chain(requests).collect();
        check_session(h, &all)
    });
}

/// Packets of arbitrary bytes, framed: the type byte mostly one `serve` knows.
#[test]
fn arbitrary_packets() {
    let packet = (
        prop_oneof![3 => 1u8..=20, 1 => prop::sample::select(vec![0, 21, 100, 101, 102, 105, 200, 201, 255])],
        prop::collection::vec(any::<u8>(), 0..96),
    );
    run("arbitrary packets", 256, prop::collection::vec(packet, 1..12), |h, packets| {
        let mut input = Vec::new();
        for (kind, body) in &packets {
            input.extend_from_slice(&u32::try_from(body.len() + 1).unwrap().to_be_bytes());
            input.push(*kind);
            input.extend_from_slice(body);
        }
        let session = session(h, input)?;
        check_answers(&session)?;
        // A packet that does not parse is answered (BAD_MESSAGE); none is dropped in silence.
        prop_assert_eq!(session.answers.len(), packets.len());
        Ok(())
    });
}

/// Well-formed requests cut short, with bytes changed, or with lengths that lie.
#[test]
fn damaged_requests() {
    let strategy = (
        prop::collection::vec(request(), 1..8),
        prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        prop::option::of(any::<usize>()),
    );
    run("damaged requests", 256, strategy, |h, (requests, flips, cut)| {
        let mut input: Vec<u8> =
            requests.iter().enumerate().flat_map(|(i, r)| r.encode(u32::try_from(i).unwrap())).collect();
        for (at, byte) in flips {
            let i = at % input.len();
            input[i] = byte;
        }
        if let Some(cut) = cut {
            input.truncate(cut % (input.len() + 1));
        }
        let session = session(h, input)?;
        check_answers(&session)?;
        Ok(())
    });
}

/// Arbitrary bytes, unframed.
#[test]
fn arbitrary_streams() {
    run("arbitrary streams", 256, prop::collection::vec(any::<u8>(), 0..512), |h, input| {
        check_answers(&session(h, input)?)?;
        Ok(())
    });
}

proptest! {
    #![proptest_config(config(1024))]

    /// russh-sftp's packet parser itself, on any payload.
    #[test]
    fn the_packet_parser_never_panics(kind in any::<u8>(), body in prop::collection::vec(any::<u8>(), 0..128)) {
        let mut bytes = BytesMut::new();
        bytes.put_u8(kind);
        bytes.put_slice(&body);
        let _ = Packet::try_from(&mut bytes.freeze());
    }
}

/// A request longer than `serve` takes ends the session without an answer, and a length field
/// that promises more than arrives ends it too; neither panics.
#[test]
fn oversized_and_short_frames_end_the_session() {
    let h = harness();
    let mut huge = u32::try_from(MAX_PACKET + 1).unwrap().to_be_bytes().to_vec();
    huge.extend_from_slice(&[OPEN; 64]);
    let session_huge = session(&h, huge).unwrap();
    assert!(session_huge.answers.is_empty());
    let mut short = 1000u32.to_be_bytes().to_vec();
    short.extend_from_slice(&[STAT, 0, 0, 0, 1]);
    assert!(session(&h, short).unwrap().answers.is_empty());
}

/// INIT, a three-byte file open for reading, a new file open for writing (handle "2"), then `last`.
fn holding_bytes_then(last: Request) -> Vec<Request> {
    vec![
        Request::Init(3),
        Request::Open("fa".into(), 0x1, Attrs::default()),
        Request::Open("fnew".into(), 0x1a, Attrs::default()),
        last,
    ]
}

/// Found by `sessions_with_open_files` and `sessions_of_hostile_requests` when written files were
/// held in memory (minimal input: with bytes held in another open file, `WRITE` handle "2" at offset `u64::MAX - 1` with no data):
/// `held - len + end` overflows in `Server::write` (`src/sftp.rs`), and `serve` panics (in a
/// release build the sum wraps, the check passes, and `Vec::resize` to `usize::MAX` panics).
#[test]
fn regression_a_write_near_u64_max_does_not_panic() {
    let h = harness();
    check_session(&h, &holding_bytes_then(Request::Write("2".into(), u64::MAX - 1, Vec::new()))).unwrap();
}

/// The same sum in `Server::fsetstat`: `FSETSTAT` handle "2" to size `u64::MAX` while another
/// open file holds bytes.
#[test]
fn regression_fsetstat_near_u64_max_does_not_panic() {
    let h = harness();
    let attrs = Attrs { size: Some(u64::MAX), ..Attrs::default() };
    check_session(&h, &holding_bytes_then(Request::FSetStat("2".into(), attrs))).unwrap();
}

/// The fake boxd answers every operation as a box would, so the properties above reach past the
/// parser into `serve`'s handling of files, directories, links and sizes.
#[test]
fn every_operation_reaches_the_fake_boxd() {
    let h = harness();
    let requests = [
        Request::Init(3),
        Request::Open("fa".into(), 0x1, Attrs::default()),
        Request::Read("1".into(), 0, 10),
        Request::Open("fnew".into(), 0x1a, Attrs::default()),
        Request::Write("2".into(), 0, b"hello".to_vec()),
        Request::Fstat("2".into()),
        Request::Close("2".into()),
        Request::OpenDir("d1".into()),
        Request::ReadDir("3".into()),
        Request::Stat("la".into()),
        Request::Stat("loop".into()),
        Request::Open("big".into(), 0x1, Attrs::default()),
        Request::MkDir("newdir".into(), Attrs { permissions: Some(0o700), ..Attrs::default() }),
        Request::Rename("fa".into(), "d1/fb".into()),
        Request::SetStat("fa".into(), Attrs { size: Some(1), times: Some((1, 2)), ..Attrs::default() }),
        Request::Extended("limits@openssh.com".into(), Vec::new()),
        Request::Open("fnew2".into(), 0x1a, Attrs::default()),
        Request::Write("5".into(), u64::MAX >> 1, b"x".to_vec()),
        Request::Write("5".into(), (1 << 20) - 2, vec![7; 64]),
        Request::Write("5".into(), 0, b"y".to_vec()),
        Request::FSetStat("5".into(), Attrs { size: Some(u64::MAX), ..Attrs::default() }),
        Request::Close("5".into()),
    ];
    let input: Vec<u8> =
        requests.iter().enumerate().flat_map(|(i, r)| r.encode(u32::try_from(i).unwrap())).collect();
    let answers = check_answers(&session(&h, input).unwrap()).unwrap();
    let ok =
        |p: &Packet| matches!(p, Packet::Status(s) if s.status_code == russh_sftp::protocol::StatusCode::Ok);
    let failed = |p: &Packet, why: &str| matches!(p, Packet::Status(s) if s.error_message.contains(why));
    assert!(matches!(&answers[2], Packet::Data(d) if d.data == b"abc"), "{:?}", answers[2]);
    assert!(ok(&answers[4]), "{:?}", answers[4]);
    assert!(matches!(&answers[5], Packet::Attrs(a) if a.attrs.size == Some(5)), "{:?}", answers[5]);
    assert!(ok(&answers[6]), "{:?}", answers[6]);
    assert!(matches!(&answers[8], Packet::Name(n) if n.files.len() == 3), "{:?}", answers[8]);
    assert!(matches!(&answers[9], Packet::Attrs(a) if a.attrs.size == Some(3)), "{:?}", answers[9]);
    assert!(failed(&answers[10], "too many levels of symbolic links"), "{:?}", answers[10]);
    // A 1 TiB file opens for reading: it is read range by range, never held.
    assert!(matches!(&answers[11], Packet::Handle(_)), "{:?}", answers[11]);
    assert!(answers[12..15].iter().all(ok), "{:?}", &answers[12..15]);
    assert!(matches!(&answers[15], Packet::ExtendedReply(_)), "{:?}", answers[15]);
    // Writes and sizes past what a file may hold are refused; the others are held, sent to boxd
    // (a write that does not continue the held ones sends them first), and closed.
    assert!(failed(&answers[17], "may not reach past byte"), "{:?}", answers[17]);
    assert!(ok(&answers[18]) && ok(&answers[19]), "{:?}", &answers[18..20]);
    assert!(failed(&answers[20], "may not be longer than"), "{:?}", answers[20]);
    assert!(ok(&answers[21]), "{:?}", answers[21]);
}
