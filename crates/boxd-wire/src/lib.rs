//! The JSON shapes of boxd's protocol, shared with the host-side client: request bodies, query
//! strings, responses and the events of a process stream.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How much of each output stream `POST /process/run` keeps when the request does not say.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 1 << 20;

/// The header of `GET /files` that gives the file's size when it was opened, so a reader can
/// refuse a file too big for it before any byte comes (the body may still differ: a file can
/// grow while it is read, and a reader must bound what it takes either way).
pub const FILE_SIZE_HEADER: &str = "x-file-size";

/// The protocol named in the `Upgrade` header of `GET /tcp` and of its `101` answer.
pub const TCP_UPGRADE: &str = "tcp";

/// How long `GET /tcp` waits for the box's port to accept before answering `connect_failed`.
pub const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Always true: boxd answered.
    pub ok: bool,
    /// boxd's own pid (1 inside a box).
    pub pid: u32,
    /// boxd's crate version.
    pub version: String,
}

/// The size of a pseudo-terminal, in character cells. Also the body of `POST /process/{pid}/resize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    /// Lines.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// What to run, common to `POST /process/start` and `POST /process/run` (flattened into both,
/// so its fields sit at the top level of their JSON).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// The program (looked up in `PATH`), or a shell command line when `shell` is true.
    pub cmd: String,
    /// Arguments; ignored when `shell` is true.
    #[serde(default)]
    pub args: Vec<String>,
    /// Run `/bin/sh -c <cmd>` instead of `cmd` itself.
    #[serde(default)]
    pub shell: bool,
    /// Extra environment variables, on top of boxd's clean base environment.
    #[serde(default)]
    pub envs: BTreeMap<String, String>,
    /// Working directory: absolute, or relative to `/root`. Defaults to `/root`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Only `root` (or absent) is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Kill the process group after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// A label the host chooses, shown in `GET /process` while the process runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// `POST /process/start`: start a process and stream its output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRequest {
    /// What to run.
    #[serde(flatten)]
    pub process: ProcessSpec,
    /// Give the process a stdin pipe the host writes through `/process/{pid}/input`; otherwise
    /// stdin is `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
    /// Run the process on a new pseudo-terminal of this size; its output is then `pty` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<PtySize>,
}

/// `POST /process/run`: run a process to completion and answer with its collected output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRequest {
    /// What to run.
    #[serde(flatten)]
    pub process: ProcessSpec,
    /// How many bytes of each of stdout and stderr to keep; the rest is read and discarded.
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes: u64,
}

fn default_max_output_bytes() -> u64 {
    DEFAULT_MAX_OUTPUT_BYTES
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// The exit code, when the process exited on its own.
    pub exit_code: Option<i32>,
    /// The signal number that killed it, when one did.
    pub signal: Option<i32>,
    /// boxd killed the process group because `timeout_ms` passed.
    pub timed_out: bool,
    /// Milliseconds from spawn to exit.
    pub duration_ms: u64,
}

/// One line of the `POST /process/start` stream. Output chunks are base64, in the order read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// Always first.
    Start {
        /// The process's pid, for `/process/{pid}/…`.
        pid: u32,
    },
    /// A chunk of stdout, base64.
    Stdout(String),
    /// A chunk of stderr, base64.
    Stderr(String),
    /// A chunk read from the pseudo-terminal, base64.
    Pty(String),
    /// Always last.
    End(ExitInfo),
}

/// The answer to `POST /process/run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunResult {
    /// The exit code, when the process exited on its own.
    pub exit_code: Option<i32>,
    /// The signal number that killed it, when one did.
    pub signal: Option<i32>,
    /// boxd killed the process group because `timeout_ms` passed.
    pub timed_out: bool,
    /// Milliseconds from spawn to exit.
    pub duration_ms: u64,
    /// Standard output, lossy UTF-8, at most `max_output_bytes` bytes before conversion.
    pub stdout: String,
    /// Standard error, lossy UTF-8, at most `max_output_bytes` bytes before conversion.
    pub stderr: String,
    /// Some stdout was discarded.
    pub stdout_truncated: bool,
    /// Some stderr was discarded.
    pub stderr_truncated: bool,
}

/// A running process started through boxd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Its pid.
    pub pid: u32,
    /// `cmd` as requested.
    pub cmd: String,
    /// `args` as requested.
    pub args: Vec<String>,
    /// The host's label.
    pub tag: Option<String>,
    /// It runs on a pseudo-terminal.
    pub pty: bool,
}

/// `GET /process`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessList {
    /// Running processes, by pid.
    pub processes: Vec<ProcessInfo>,
}

/// `POST /process/{pid}/input`. `data` is written first, then stdin is closed if `eof` is set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct InputRequest {
    /// Bytes to write, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Close stdin (on a pseudo-terminal: send the EOF character, Ctrl-D).
    #[serde(default)]
    pub eof: bool,
}

/// The signals the host may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignalName {
    /// Polite termination.
    #[serde(rename = "SIGTERM")]
    Term,
    /// Forced termination.
    #[serde(rename = "SIGKILL")]
    Kill,
    /// Ctrl-C.
    #[serde(rename = "SIGINT")]
    Int,
    /// Hang-up.
    #[serde(rename = "SIGHUP")]
    Hup,
    /// Ctrl-\.
    #[serde(rename = "SIGQUIT")]
    Quit,
    /// User-defined 1.
    #[serde(rename = "SIGUSR1")]
    Usr1,
    /// User-defined 2.
    #[serde(rename = "SIGUSR2")]
    Usr2,
    /// Stop (cannot be caught).
    #[serde(rename = "SIGSTOP")]
    Stop,
    /// Continue after a stop.
    #[serde(rename = "SIGCONT")]
    Cont,
}

/// `POST /process/{pid}/signal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalRequest {
    /// Which signal to send to the process group.
    pub signal: SignalName,
}

/// `{"ok":true}`, the answer of requests that have nothing else to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Always true.
    pub ok: bool,
}

/// The query string of file requests that name one path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathQuery {
    /// Absolute, or relative to `/root`.
    pub path: String,
}

/// The query string of `GET /files`: the whole file, or `length` bytes from `offset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadQuery {
    /// Absolute, or relative to `/root`.
    pub path: String,
    /// Where to start (0 when absent); past the end reads nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The most bytes to send (to the end when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
}

/// The query string of `PUT /files`: the body replaces the whole file, or, with `offset`, is
/// written into it at that offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteQuery {
    /// Absolute, or relative to `/root`.
    pub path: String,
    /// Permission bits in octal, such as `0644` (the default) or `755`: those of the new file
    /// (a whole-file write), or of the file created when it is missing (a write at an offset;
    /// an existing file keeps its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Where to write the body in place, as `pwrite` does: the file is not truncated, the
    /// bytes around the range are kept, and a range past the end extends the file with zeros.
    /// Without it the body replaces the whole file atomically (readers see the old file or the
    /// new one, never a half-written one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// The query string of `GET /fs/list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListQuery {
    /// Absolute, or relative to `/root`.
    pub path: String,
    /// How many levels to descend, 1 (the default) to 10; larger values are capped at 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u32>,
}

/// The query string of `GET /tcp`, which upgrades the connection to a byte stream to a TCP port
/// inside the box.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpQuery {
    /// The port, 1 to 65535.
    pub port: u16,
    /// A loopback address (`127.0.0.0/8` or `::1`); defaults to `127.0.0.1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// The answer to `PUT /files`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResult {
    /// The absolute path written.
    pub path: String,
    /// Bytes written (the body's length; with `offset`, not the file's size).
    pub size: u64,
}

/// What kind of thing a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed).
    Symlink,
    /// A device, socket or FIFO.
    Other,
}

/// One file-system entry, as `lstat` sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryInfo {
    /// The last path component (`/` for the root).
    pub name: String,
    /// The absolute path.
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Last modification, milliseconds since the Unix epoch.
    pub modified_ms: Option<i64>,
    /// Where a symlink points.
    pub symlink_target: Option<String>,
}

/// `GET /fs/list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryList {
    /// Entries sorted by path.
    pub entries: Vec<EntryInfo>,
}

/// `POST /fs/move`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRequest {
    /// The existing path.
    pub from: String,
    /// The new path; must not exist yet.
    pub to: String,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable machine-readable code: `bad_request`, `not_found`, `is_directory`, `not_directory`,
    /// `not_a_file`, `exists`, `no_such_process`, `unsupported_user`, `spawn_failed`,
    /// `connect_failed` or `io_error`.
    pub code: String,
    /// What is wrong, for people.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_externally_tagged() {
        let line = |e: &Event| serde_json::to_string(e).unwrap_or_default();
        assert_eq!(line(&Event::Start { pid: 7 }), r#"{"start":{"pid":7}}"#);
        assert_eq!(line(&Event::Stdout("aGk=".into())), r#"{"stdout":"aGk="}"#);
        assert_eq!(line(&Event::Pty("eA==".into())), r#"{"pty":"eA=="}"#);
        let end = Event::End(ExitInfo { exit_code: Some(0), signal: None, timed_out: false, duration_ms: 3 });
        assert_eq!(line(&end), r#"{"end":{"exit_code":0,"signal":null,"timed_out":false,"duration_ms":3}}"#);
    }

    #[test]
    fn run_request_defaults() {
        let req: RunRequest = serde_json::from_str(r#"{"cmd":"true"}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(req.max_output_bytes, DEFAULT_MAX_OUTPUT_BYTES);
        assert!(req.process.args.is_empty() && !req.process.shell && req.process.cwd.is_none());
    }
}
