//! Limits that need a real box, from both sides, with the real binary, bubblewrap and the real
//! OpenSSH client: at the limit the request is served, one past it is refused (or cut) as the
//! documentation says. Over HTTP: a command's `timeout_seconds` on every exec path, the output
//! kept per stream, and the largest upload (`[boxes] max_file_bytes`). Over SSH: sessions per
//! connection, logged-in connections per lease, the time to log in, and connections waiting to
//! log in per address and in all. One box per test; small limits are set through configuration.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod boxhost;
mod support;

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use boxhost::{Bought, BoxHost};
use serde_json::{Value, json};

/// A command's answer on any exec path: the status, and the body (JSON, or the event stream's
/// text).
async fn exec(host: &BoxHost, path: &str, token: &str, body: &Value) -> (u16, Value) {
    let response = host.http.post(host.url(path)).bearer_auth(token).json(body).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test]
async fn command_time_limits_output_and_uploads_are_served_at_their_limit_and_refused_past_it() {
    let env = [("VENDBOX_BOXES__MAX_FILE_BYTES", "4096")];
    let Some(host) = BoxHost::start_with("", &env) else { return };
    let b = host.buy("test-box", 10).await;

    // `timeout_seconds` is 1 to 1800 on each exec path: a session's commands take the box's
    // token as well.
    for path in [
        format!("/v1/boxes/{}/exec", b.id),
        format!("/v1/boxes/{}/exec/stream", b.id),
        format!("/x402/sessions/{}/exec", b.id),
    ] {
        for seconds in [1, 1800] {
            let what = format!("{path} with timeout_seconds {seconds}");
            let (status, out) =
                exec(&host, &path, &b.token, &json!({ "command": "echo ok", "timeout_seconds": seconds }))
                    .await;
            assert_eq!(status, 200, "{what}: {out}");
            match &out {
                Value::String(events) => {
                    assert!(events.contains("event: exit"), "{what}: {events}");
                    assert!(events.contains("\"exit_code\":0"), "{what}: {events}");
                }
                out => assert_eq!(
                    (out["stdout"].as_str(), out["timed_out"].as_bool()),
                    (Some("ok\n"), Some(false)),
                    "{what}: {out}"
                ),
            }
        }
        for seconds in [0, 1801] {
            let what = format!("{path} with timeout_seconds {seconds}");
            let (status, out) =
                exec(&host, &path, &b.token, &json!({ "command": "echo ok", "timeout_seconds": seconds }))
                    .await;
            assert_eq!(status, 400, "{what}: {out}");
            assert_eq!(
                (out["error"]["code"].as_str(), out["error"]["field"].as_str()),
                (Some("out_of_range"), Some("timeout_seconds")),
                "{what}: {out}"
            );
        }
    }

    // Output: exactly 1 MiB per stream is kept whole, one byte more is cut to 1 MiB and flagged.
    // stderr carries NUL bytes, the output whose JSON escaping is the longest.
    let cap = 1_usize << 20;
    for (size, cut) in [(cap, false), (cap + 1, true)] {
        let line = format!("head -c {size} /dev/zero | tr '\\0' x; head -c {size} /dev/zero >&2");
        let (status, out) = host.sh(&b, &line, 60).await;
        assert_eq!(status, 200, "{size} bytes: {}", out["error"]);
        let stdout = out["stdout"].as_str().unwrap();
        let stderr = out["stderr"].as_str().unwrap();
        assert_eq!((stdout.len(), stderr.len()), (cap, cap), "{size} bytes");
        assert!(stdout.bytes().all(|c| c == b'x') && stderr.bytes().all(|c| c == 0), "{size} bytes changed");
        assert_eq!(
            (out["stdout_truncated"].as_bool(), out["stderr_truncated"].as_bool(), out["exit_code"].as_i64()),
            (Some(cut), Some(cut), Some(0)),
            "{size} bytes"
        );
    }

    // Uploads: a file of `max_file_bytes` is written whole, one byte more is refused unwritten.
    let put = |path: &str, size: usize| {
        let url = host.url(&format!("/v1/boxes/{}/files?path={path}", b.id));
        host.http.put(url).bearer_auth(&b.token).body(vec![b'u'; size]).send()
    };
    let response = put("/root/at-limit", 4096).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["size"], 4096);
    assert_eq!(host.ok(&b, "stat -c %s /root/at-limit").await, "4096\n");
    let response = put("/root/over-limit", 4097).await.unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    assert_eq!(host.ok(&b, "test -e /root/over-limit || echo none").await, "none\n");
}

/// A box bought with a key, and the SSH gateway's address.
struct Gateway {
    host: BoxHost,
    addr: String,
    key: PathBuf,
    bought: Bought,
}

impl Gateway {
    /// `ssh` to `addr` (host:port) as the lease, with this key only, no prompts and no agent,
    /// and `options` before the destination; the remote command comes next.
    fn ssh_to(&self, addr: &str, options: &[&str]) -> Command {
        let (ip, port) = addr.rsplit_once(':').unwrap();
        let mut command = Command::new("ssh");
        command
            .args(["-i", self.key.to_str().unwrap()])
            .args(["-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"])
            .args(["-p", port])
            .args(options)
            .arg(format!("{}@{ip}", self.bought.id))
            .stdin(Stdio::null());
        command
    }

    fn ssh(&self) -> Command {
        self.ssh_to(&self.addr, &[])
    }

    /// `ssh` through the connection of the master listening on `control`, with `options`. It
    /// cannot fall back to a connection of its own (OpenSSH would, when the master's session is
    /// refused): its proxy command fails.
    fn through(&self, control: &Path, options: &[&str]) -> Command {
        let mut all =
            vec!["-o", "ControlMaster=no", "-o", "ProxyCommand=false", "-S", control.to_str().unwrap()];
        all.extend_from_slice(options);
        self.ssh_to(&self.addr, &all)
    }
}

/// Runs `command` with `line` as the remote command.
fn run(mut command: Command, line: &str) -> Output {
    command.arg(line).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// An `ssh` that stays open until dropped (then killed by its pid): a remote command that has
/// started once it printed `up`, or a master connection.
struct Holder(Child);

impl Holder {
    fn start(mut command: Command) -> Holder {
        let mut child =
            command.arg("echo up; sleep 120").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        if line != "up\n" {
            let mut stderr = String::new();
            child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
            let _ = child.kill();
            let _ = child.wait();
            panic!("a session that should be open said {line:?}: {stderr}");
        }
        Holder(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `probe` until it is true, for at most `within`.
fn until(within: Duration, what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !probe() {
        assert!(Instant::now() < deadline, "waited {within:?} for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP proxy for one client: it connects to `upstream` as soon as the client arrives, then
/// passes nothing either way for `delay`. To the gateway, the client is silent that long.
fn slow_proxy(upstream: &str, delay: Duration) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let upstream = upstream.to_owned();
    std::thread::spawn(move || {
        let (client, _) = listener.accept().unwrap();
        let server = TcpStream::connect(&upstream).unwrap();
        std::thread::sleep(delay);
        let pipe = |mut from: TcpStream, mut to: TcpStream| {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from, &mut to);
                let _ = to.shutdown(std::net::Shutdown::Write);
            })
        };
        pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
        pipe(server, client);
    });
    addr
}

/// A connection to the gateway from `from` that never logs in.
async fn silent(gateway: &str, from: [u8; 4]) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let stream = socket.connect(gateway.parse().unwrap()).await.unwrap().into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
}

/// Whether the gateway closed `stream` (end of file, or a reset) within `within`; bytes it sent
/// first (its version line) are read past.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0_u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_limits_are_served_at_their_limit_and_refused_past_it() {
    let env = [
        ("VENDBOX_SSH__PREAUTH_TIMEOUT_SECS", "3"),
        ("VENDBOX_SSH__MAX_UNAUTHENTICATED", "5"),
        ("VENDBOX_SSH__MAX_UNAUTHENTICATED_PER_PEER", "3"),
        ("VENDBOX_SSH__MAX_CONNECTIONS_PER_LEASE", "2"),
        ("VENDBOX_SSH__MAX_CHANNELS_PER_CONNECTION", "2"),
    ];
    let Some(host) = BoxHost::start_with("", &env) else { return };
    let addr = host.vendbox.as_ref().unwrap().ssh.clone().expect("the SSH gateway runs");
    let (key, public) = support::ssh_keypair(host.dir.path(), "agent");
    let bought =
        host.buy_with(&json!({ "offer": "test-box", "minutes": 10, "ssh_public_key": public })).await;
    let g = Gateway { host, addr, key, bought };

    // Sessions per connection (2): a master connection opens none; two sessions through it are
    // its limit, a third is refused, and closing one makes room again.
    let control = g.host.dir.path().join("control");
    let master_options = ["-o", "ControlMaster=yes", "-N", "-S", control.to_str().unwrap()];
    let master = Holder(g.ssh_to(&g.addr, &master_options).stdout(Stdio::null()).spawn().unwrap());
    until(Duration::from_secs(20), "the master connection", || {
        g.through(&control, &["-O", "check"]).stderr(Stdio::null()).status().unwrap().success()
    });
    let first = Holder::start(g.through(&control, &[]));
    let second = Holder::start(g.through(&control, &[]));
    let third = run(g.through(&control, &[]), "echo in");
    assert!(!third.status.success() && text(&third.stdout).is_empty(), "a third session opened");
    let refused = text(&third.stderr);
    assert!(refused.contains("Session open refused by peer"), "{refused}");
    drop(first);
    until(Duration::from_secs(10), "a session to open once one closed", || {
        text(&run(g.through(&control, &[]), "echo in").stdout) == "in\n"
    });
    drop(second);
    drop(master);

    // Logged-in connections per lease (2): the master's place is given back once it is gone,
    // then two connections are the lease's limit, and a third is refused its login.
    let first = Holder::start(g.ssh());
    let mut second = None;
    until(Duration::from_secs(10), "a second connection to log in", || {
        let mut command = g.ssh();
        command.arg("echo up; sleep 120").stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = command.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        if line == "up\n" {
            second = Some(Holder(child));
            return true;
        }
        let _ = child.wait();
        false
    });
    let third = run(g.ssh(), "echo in");
    assert!(!third.status.success() && text(&third.stdout).is_empty(), "a third connection logged in");
    assert!(text(&third.stderr).contains("Permission denied"), "{}", text(&third.stderr));
    drop(first);
    until(Duration::from_secs(10), "a login once a connection closed", || {
        text(&run(g.ssh(), "echo in").stdout) == "in\n"
    });
    drop(second);

    // The time to log in (3 s), counted from the connection: a client silent for 1.5 s still
    // logs in; one silent for 4 s is cut before it can.
    let late = slow_proxy(&g.addr, Duration::from_millis(1500));
    let out = run(g.ssh_to(&late, &[]), "echo in");
    assert_eq!(text(&out.stdout), "in\n", "logging in at about 2 s: {}", text(&out.stderr));
    let too_late = slow_proxy(&g.addr, Duration::from_secs(4));
    let started = Instant::now();
    let out = run(g.ssh_to(&too_late, &[]), "echo in");
    assert!(!out.status.success() && text(&out.stdout).is_empty(), "logged in after 4 s");
    assert!(started.elapsed() < Duration::from_secs(10), "the cut client hung for {:?}", started.elapsed());

    // Connections waiting to log in: 3 per address and 5 in all. The fourth from one address is
    // closed at once, and so is the sixth in all from another address; the others are held.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(silent(&g.addr, [127, 0, 0, 1]).await);
    }
    let mut fourth = silent(&g.addr, [127, 0, 0, 1]).await;
    for _ in 0..2 {
        held.push(silent(&g.addr, [127, 0, 0, 2]).await);
    }
    let mut sixth = silent(&g.addr, [127, 0, 0, 2]).await;
    assert!(
        closed_within(&mut fourth, Duration::from_secs(1)),
        "a fourth connection from one address is held"
    );
    assert!(closed_within(&mut sixth, Duration::from_secs(1)), "a sixth connection in all is held");
    for (i, stream) in held.iter_mut().enumerate() {
        assert!(
            !closed_within(stream, Duration::from_millis(100)),
            "connection {i}, within the limits, was closed"
        );
    }
    // Their places are given back when they are cut at the time to log in.
    for stream in &mut held {
        assert!(
            closed_within(stream, Duration::from_secs(6)),
            "a silent connection outlived the time to log in"
        );
    }
    let out = run(g.ssh(), "echo in");
    assert_eq!(text(&out.stdout), "in\n", "{}", text(&out.stderr));
}
