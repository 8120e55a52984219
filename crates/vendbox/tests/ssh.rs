//! The SSH gateway end to end with the real OpenSSH client: keys given at purchase, commands
//! and exit statuses, environment, an interactive PTY session, scp and sftp, `-L` forwarding,
//! and refusals for a wrong key, an expired lease and a terminated one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod boxhost;
mod support;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use boxhost::{Bought, BoxHost};
use serde_json::json;

/// A host selling boxes, with the gateway's port and a box bought with a key.
struct Scene {
    host: BoxHost,
    port: String,
    key: PathBuf,
    bought: Bought,
}

async fn scene(minutes: u32) -> Option<Scene> {
    let host = BoxHost::start()?;
    let ssh = host.vendbox.as_ref().unwrap().ssh.clone().expect("the SSH gateway runs");
    let port = ssh.rsplit(':').next().unwrap().to_owned();
    let (key, public) = support::ssh_keypair(host.dir.path(), "agent");
    let bought =
        host.buy_with(&json!({ "offer": "test-box", "minutes": minutes, "ssh_public_key": public })).await;
    Some(Scene { host, port, key, bought })
}

impl Scene {
    /// The options every OpenSSH tool gets: this key only, no host-key prompts, no agent.
    fn options(key: &Path) -> Vec<String> {
        [
            "-i",
            key.to_str().unwrap(),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
        ]
        .into_iter()
        .map(String::from)
        .collect()
    }

    fn ssh(&self, key: &Path, extra: &[&str], command: &str) -> Output {
        Command::new("ssh")
            .args(Self::options(key))
            .args(["-p", &self.port])
            .args(extra)
            .arg("root@127.0.0.1")
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn ssh_runs_commands_with_their_exit_status_and_environment() {
    let Some(s) = scene(10).await else { return };
    let out = s.ssh(&s.key, &[], "uname -a; id; hostname");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("Linux box "), "{stdout}");
    assert!(stdout.contains("uid=0(root)"), "{stdout}");
    let out = s.ssh(&s.key, &[], "echo to stderr >&2; exit 7");
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(text(&out.stderr), "to stderr\n");
    let out = s.ssh(&s.key, &["-o", "SetEnv=GREETING=hello"], "echo $GREETING");
    assert_eq!(text(&out.stdout), "hello\n");
    // stdin reaches the command, and its end is the command's end of input.
    let mut child = Command::new("ssh")
        .args(Scene::options(&s.key))
        .args(["-p", &s.port, "root@127.0.0.1", "wc -c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&vec![b'x'; 100_000]).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout).trim(), "100000");
}

#[tokio::test]
async fn an_interactive_session_gets_a_terminal() {
    let Some(s) = scene(10).await else { return };
    let mut child = Command::new("ssh")
        .args(Scene::options(&s.key))
        .args(["-tt", "-p", &s.port, "root@127.0.0.1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The session's output, read on a thread (a blocking read) and kept as it comes.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = {
        let (mut stdout, seen) = (child.stdout.take().unwrap(), seen.clone());
        std::thread::spawn(move || {
            use std::io::Read as _;
            let mut chunk = [0_u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut chunk) {
                seen.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        })
    };
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"tty; echo TERM=$TERM; echo $((6*7))\n").unwrap();
    // `exit` once the shell has answered, and stdin stays open until the session ends: its end
    // of input could cut the session before the shell read the line.
    support::eventually(Duration::from_secs(15), "the shell to answer 42", async || {
        let out = text(&seen.lock().unwrap());
        if out.contains("42\r\n") { Ok(()) } else { Err(out) }
    })
    .await;
    stdin.write_all(b"exit 3\n").unwrap();
    let status = support::eventually(Duration::from_secs(15), "the session to end", async || {
        child.try_wait().unwrap().ok_or("running")
    })
    .await;
    drop(stdin);
    reader.join().unwrap();
    let stdout = text(&seen.lock().unwrap());
    assert!(stdout.contains("/dev/pts/"), "{stdout}");
    assert!(!stdout.contains("TERM=\r"), "the client's TERM is passed: {stdout}");
    assert_eq!(status.code(), Some(3), "{stdout}");
}

#[tokio::test]
async fn scp_and_sftp_move_files_in_and_out() {
    let Some(s) = scene(10).await else { return };
    let local = s.host.dir.path().join("payload.bin");
    let bytes: Vec<u8> =
        (0..10 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(&local, &bytes).unwrap();
    let scp = |from: &str, to: &str| {
        Command::new("scp").args(Scene::options(&s.key)).args(["-P", &s.port, from, to]).output().unwrap()
    };
    let out = scp(local.to_str().unwrap(), "root@127.0.0.1:/root/payload.bin");
    assert!(out.status.success(), "scp in: {}", text(&out.stderr));
    let sum = s.ssh(&s.key, &[], "sha256sum /root/payload.bin | cut -d' ' -f1");
    let back = s.host.dir.path().join("back.bin");
    let out = scp("root@127.0.0.1:/root/payload.bin", back.to_str().unwrap());
    assert!(out.status.success(), "scp out: {}", text(&out.stderr));
    let got = std::fs::read(&back).unwrap();
    let first = got.iter().zip(&bytes).position(|(a, b)| a != b);
    assert!(got == bytes, "the file came back changed: {} bytes, first difference at {first:?}", got.len());
    let local_sum = Command::new("sha256sum").arg(&local).output().unwrap();
    assert_eq!(text(&sum.stdout).trim(), text(&local_sum.stdout).split(' ').next().unwrap());

    let batch = s.host.dir.path().join("batch");
    std::fs::write(
        &batch,
        "mkdir /root/made\nls -l /root\nrename /root/payload.bin /root/made/moved.bin\nls /root/made\n",
    )
    .unwrap();
    let out = Command::new("sftp")
        .args(Scene::options(&s.key))
        .args(["-P", &s.port, "-b", batch.to_str().unwrap(), "root@127.0.0.1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "sftp: {}", text(&out.stderr));
    let listing = text(&out.stdout);
    assert!(listing.contains("payload.bin") && listing.contains("10485760"), "{listing}");
    assert!(listing.contains("moved.bin"), "{listing}");
}

#[tokio::test]
async fn local_forwarding_reaches_a_server_inside_the_box() {
    let Some(s) = scene(10).await else { return };
    let out = s.ssh(
        &s.key,
        &[],
        "cd /tmp && echo inside-the-box > index.html && (setsid python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 &) ; echo started",
    );
    assert!(text(&out.stdout).contains("started"), "{}", text(&out.stderr));
    let local_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut tunnel = Command::new("ssh")
        .args(Scene::options(&s.key))
        .args(["-N", "-p", &s.port, "-L", &format!("{local_port}:127.0.0.1:8000"), "root@127.0.0.1"])
        .spawn()
        .unwrap();
    // The server in the box starts in the background: wait until it answers through the tunnel.
    let url = format!("http://127.0.0.1:{local_port}/index.html");
    let body = support::eventually(
        Duration::from_secs(15),
        "the box's server to answer through the tunnel",
        async || match reqwest::get(&url).await {
            Ok(response) if response.status() == 200 => Ok(response.text().await.unwrap()),
            Ok(response) => Err(response.status().to_string()),
            Err(e) => Err(e.to_string()),
        },
    )
    .await;
    tunnel.kill().unwrap();
    tunnel.wait().unwrap();
    assert_eq!(body, "inside-the-box\n");
}

#[tokio::test]
async fn wrong_keys_and_ended_leases_are_refused_and_open_sessions_end_with_the_lease() {
    let Some(s) = scene(10).await else { return };
    let (stranger, _) = support::ssh_keypair(s.host.dir.path(), "stranger");
    let out = s.ssh(&stranger, &[], "true");
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out.stderr).contains("Permission denied"), "{}", text(&out.stderr));

    // A session open while the lease is terminated is ended with the reason.
    let mut open = Command::new("ssh")
        .args(Scene::options(&s.key))
        .args(["-p", &s.port, "root@127.0.0.1", "echo ready; sleep 120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The session runs once its first line arrives (read on a thread: a blocking read).
    let mut stdout = open.stdout.take().unwrap();
    let first = std::thread::spawn(move || {
        use std::io::Read as _;
        let mut line = Vec::new();
        let mut byte = [0_u8; 1];
        while stdout.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        String::from_utf8_lossy(&line).into_owned()
    });
    let first = tokio::task::spawn_blocking(move || first.join().unwrap()).await.unwrap();
    assert_eq!(first, "ready");
    assert_eq!(s.host.end(&s.bought).await.0, 200);
    let started = Instant::now();
    let out = open.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "the session outlived its lease");
    assert!(!out.status.success(), "the session was cut, not finished");

    let out = s.ssh(&s.key, &[], "true");
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("terminated"), "{}", text(&out.stderr));
}

#[tokio::test]
async fn an_expired_lease_is_refused_with_a_message() {
    let Some(s) = scene(1).await else { return };
    assert!(s.ssh(&s.key, &[], "true").status.success());
    let (_, view) = s.host.get(&format!("/v1/boxes/{}", s.bought.id), &s.bought.token).await;
    let expires: chrono::DateTime<chrono::Utc> = view["expires_at"].as_str().unwrap().parse().unwrap();
    assert!(view["ssh_command"].as_str().unwrap().starts_with("ssh -p "), "{view}");
    // Sleep to the expiry itself (a deadline the test knows), then wait on what is observable:
    // the box's state turning `expired`, within the expiry worker's bound.
    tokio::time::sleep((expires - chrono::Utc::now()).to_std().unwrap_or_default()).await;
    let lease = format!("/v1/boxes/{}", s.bought.id);
    support::eventually(Duration::from_secs(10), "the lease to show as expired", async || {
        let (_, view) = s.host.get(&lease, &s.bought.token).await;
        if view["state"] == "expired" { Ok(()) } else { Err(view) }
    })
    .await;
    let out = s.ssh(&s.key, &[], "true");
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("time has run out"), "{}", text(&out.stderr));
}

#[tokio::test]
async fn vendbox_ssh_opens_a_lease_by_its_id() {
    let Some(s) = scene(10).await else { return };
    let out = Command::new(support::BIN)
        .args(["ssh", &s.bought.id, "-i", s.key.to_str().unwrap(), "--url", &s.host.url("")])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
        ])
        .args(["--", "echo from $(hostname)"])
        .env("VENDBOX_LEASE_TOKEN", &s.bought.token)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "from box\n", "{}", text(&out.stderr));
    let out = Command::new(support::BIN)
        .args(["ssh", &s.bought.id, "--url", &s.host.url(""), "true"])
        .env("VENDBOX_LEASE_TOKEN", "vbx_wrong")
        .output()
        .unwrap();
    assert!(!out.status.success());
    // The command prints the status and message, not the code: this is `bad_token`'s message.
    assert!(
        text(&out.stderr).contains("401 Unauthorized: this token does not give `read` on this box"),
        "{}",
        text(&out.stderr)
    );
}

/// Drives `ssh -tt` from a real terminal (Python's `pty`), resizing it half way; the output.
const RESIZE_DRIVER: &str = r#"
import fcntl, os, pty, select, struct, sys, termios, time
args = sys.argv[1:]
pid, fd = pty.fork()
if pid == 0:
    os.execvp("ssh", ["ssh"] + args)
def size(rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
size(30, 100)
out = b""
closed = False
def wait(seconds):
    # Reads what the session prints for `seconds`, or until it ends.
    global out, closed
    end = time.time() + seconds
    while time.time() < end and not closed:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            closed = not chunk
            out += chunk
def wait_for(count, seconds):
    # Until the shell has answered `count` size lines (or time runs out).
    end = time.time() + seconds
    while time.time() < end and not closed and out.count(b"size=") - out.count(b"size=$") < count:
        wait(0.1)
os.write(fd, b"echo size=$(stty size)\n")
wait_for(1, 15)
size(40, 120)
# The new size travels to the box as a window-change message: ask again until the shell reports
# it (or time runs out, and the test names what never came).
end = time.time() + 15
asked = 1
while b"size=40 120" not in out and time.time() < end:
    os.write(fd, b"echo size=$(stty size)\n")
    asked += 1
    wait_for(asked, end - time.time())
os.write(fd, b"exit\n")
# Until the session ends (the terminal reads end of file), then reap ssh, stopping it if it hangs.
wait(15)
if os.waitpid(pid, os.WNOHANG) == (0, 0):
    os.kill(pid, 9)
    os.waitpid(pid, 0)
sys.stdout.write(out.decode("utf-8", "replace"))
"#;

#[tokio::test]
async fn a_terminal_resize_reaches_the_shell() {
    let Some(s) = scene(10).await else { return };
    let args: Vec<String> = Scene::options(&s.key)
        .into_iter()
        .chain(["-tt".into(), "-p".into(), s.port.clone(), "root@127.0.0.1".into()])
        .collect();
    let out = Command::new("python3").arg("-c").arg(RESIZE_DRIVER).args(&args).output().unwrap();
    let stdout = text(&out.stdout);
    assert!(stdout.contains("size=30 100"), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("size=40 120"), "the new size did not reach the shell: {stdout}");
}

impl Scene {
    /// `ssh user@host command` with `key`.
    fn ssh_as(&self, key: &Path, user: &str, command: &str) -> Output {
        Command::new("ssh")
            .args(Self::options(key))
            .args(["-p", &self.port, &format!("{user}@127.0.0.1"), command])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

#[tokio::test]
async fn a_squatted_key_never_lands_its_owner_in_a_strangers_box() {
    let Some(s) = scene(10).await else { return };
    s.host.ok(&s.bought, "echo owner > /root/whose").await;
    let public = std::fs::read_to_string(s.key.with_extension("pub")).unwrap();
    // A stranger buys a box and attaches the owner's public key (public keys are public).
    let squatter = s
        .host
        .buy_with(&json!({ "offer": "test-box", "minutes": 10, "ssh_public_key": public.trim() }))
        .await;
    s.host.ok(&squatter, "echo squatter > /root/whose").await;

    // `root@` cannot tell which box the owner meant: refused, not guessed.
    let out = s.ssh_as(&s.key, "root", "cat /root/whose");
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("Permission denied"), "{}", text(&out.stderr));
    // The purchase's `ssh_command` names the lease, and lands in the owner's own box.
    let (_, view) = s.host.get(&format!("/v1/boxes/{}", s.bought.id), &s.bought.token).await;
    let command = view["ssh_command"].as_str().unwrap();
    assert!(command.ends_with(&format!("{}@127.0.0.1", s.bought.id)), "{command}");
    let out = s.ssh_as(&s.key, &s.bought.id, "cat /root/whose");
    assert_eq!(text(&out.stdout), "owner\n", "{}", text(&out.stderr));

    // Once the squatter's box is gone, `root@` opens the owner's one box again.
    assert_eq!(s.host.end(&squatter).await.0, 200);
    let out = s.ssh_as(&s.key, "root", "cat /root/whose");
    assert_eq!(text(&out.stdout), "owner\n", "{}", text(&out.stderr));
}

#[tokio::test]
async fn an_ssh_command_runs_past_five_seconds() {
    let Some(s) = scene(10).await else { return };
    let started = Instant::now();
    let out = s.ssh(&s.key, &[], "sleep 7; echo done");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "done\n");
    assert!(started.elapsed() >= Duration::from_secs(7));
}

/// vendbox's peak resident memory so far, in bytes (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// Whether the server closed `stream` (end of file, or a reset) within `within`; bytes it sent
/// first (its version line) are read past.
fn closed_within(stream: &mut std::net::TcpStream, within: Duration) -> bool {
    use std::io::Read as _;
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

#[tokio::test]
async fn a_thousand_connections_that_never_log_in_cost_a_bounded_few_for_a_bounded_time() {
    let env =
        [("VENDBOX_SSH__PREAUTH_TIMEOUT_SECS", "3"), ("VENDBOX_SSH__MAX_UNAUTHENTICATED_PER_PEER", "32")];
    let Some(host) = BoxHost::start_with("", &env) else { return };
    let ssh = host.vendbox.as_ref().unwrap().ssh.clone().unwrap();
    let pid = host.vendbox.as_ref().unwrap().child.id();
    let (key, public) = support::ssh_keypair(host.dir.path(), "agent");
    let bought =
        host.buy_with(&json!({ "offer": "test-box", "minutes": 10, "ssh_public_key": public })).await;
    let before = peak_rss(pid);

    // A thousand connections from one address: half say hello and stop, half say nothing.
    let mut attackers = Vec::new();
    for i in 0..1000 {
        let mut stream = std::net::TcpStream::connect(&ssh).unwrap();
        if i % 2 == 0 {
            stream.write_all(b"SSH-2.0-attacker\r\n").unwrap();
        }
        attackers.push(stream);
    }
    // All but the per-address allowance are closed at once.
    let mut held = 0;
    for stream in &mut attackers {
        if !closed_within(stream, Duration::from_millis(20)) {
            held += 1;
        }
    }
    assert!(held <= 32, "{held} connections are held before logging in");

    // Another client logs in and works meanwhile.
    let port = ssh.rsplit(':').next().unwrap();
    let out = Command::new("ssh")
        .args(Scene::options(&key))
        .args(["-b", "127.0.0.2", "-p", port, &format!("{}@127.0.0.1", bought.id), "echo in"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "in\n", "{}", text(&out.stderr));

    // The held ones are dropped once the time to log in has passed.
    for (i, stream) in attackers.iter_mut().enumerate() {
        assert!(closed_within(stream, Duration::from_secs(6)), "connection {i} outlived the login time");
    }
    let grew = peak_rss(pid).saturating_sub(before);
    assert!(grew < 64 << 20, "vendbox's peak memory grew by {} MiB", grew >> 20);
}

#[tokio::test]
async fn a_big_download_streams_through_a_gateway_of_bounded_memory() {
    let Some(s) = scene(10).await else { return };
    let pid = s.host.vendbox.as_ref().unwrap().child.id();
    // 48 MiB (sparse in the box): a gateway that held downloads whole grew by more than the
    // bound (20 MiB for 16 MiB), and one that read no request while an answer waited for the
    // client's window stalled at about 23 MiB.
    let size: u64 = 48 << 20;
    let made = s.ssh(&s.key, &[], &format!("truncate -s {size} /root/big && echo made"));
    assert_eq!(text(&made.stdout), "made\n", "{}", text(&made.stderr));
    let before = peak_rss(pid);
    let back = s.host.dir.path().join("big.bin");
    let out = Command::new("scp")
        .args(Scene::options(&s.key))
        .args(["-P", &s.port, "root@127.0.0.1:/root/big", back.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "scp out: {}", text(&out.stderr));
    assert_eq!(std::fs::metadata(&back).unwrap().len(), size);
    let grew = peak_rss(pid).saturating_sub(before);
    assert!(grew < 10 << 20, "the gateway's peak memory grew by {} MiB", grew >> 20);
}

/// vendbox's resident memory now, in bytes (`VmRSS`).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// The SHA-256 of `local`, in hex.
fn local_sha256(local: &Path) -> String {
    let out = Command::new("sha256sum").arg(local).output().unwrap();
    text(&out.stdout).split(' ').next().unwrap().to_owned()
}

impl Scene {
    /// The SHA-256 of `path` in the box, in hex.
    fn box_sha256(&self, path: &str) -> String {
        let out = self.ssh(&self.key, &[], &format!("sha256sum {path} | cut -d' ' -f1"));
        assert!(out.status.success(), "sha256sum {path}: {}", text(&out.stderr));
        text(&out.stdout).trim().to_owned()
    }
}

#[tokio::test]
async fn a_big_upload_streams_through_a_gateway_of_bounded_memory() {
    let Some(s) = scene(10).await else { return };
    let pid = s.host.vendbox.as_ref().unwrap().child.id();
    // 64 MiB: a gateway that held an upload until CLOSE grew by all of it.
    let size: u32 = 64 << 20;
    let local = s.host.dir.path().join("up.bin");
    let bytes: Vec<u8> = (0..size).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(&local, &bytes).unwrap();
    drop(bytes);
    let (peak_before, rss_before) = (peak_rss(pid), rss(pid));
    let started = Instant::now();
    let out = Command::new("scp")
        .args(Scene::options(&s.key))
        .args(["-P", &s.port, local.to_str().unwrap(), "root@127.0.0.1:/root/up.bin"])
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(out.status.success(), "scp in: {}: {}", out.status, text(&out.stderr));
    let (peak_after, rss_after) = (peak_rss(pid), rss(pid));
    eprintln!(
        "64 MiB up in {took:.2?} ({:.1} MiB/s); vendbox VmRSS {} -> {} MiB, VmHWM {} -> {} MiB",
        64.0 / took.as_secs_f64(),
        rss_before >> 20,
        rss_after >> 20,
        peak_before >> 20,
        peak_after >> 20,
    );
    assert_eq!(s.box_sha256("/root/up.bin"), local_sha256(&local));
    let grew = peak_after.saturating_sub(peak_before);
    assert!(grew < 16 << 20, "the gateway's peak memory grew by {} MiB", grew >> 20);
}

#[tokio::test]
async fn a_resumed_upload_writes_the_rest_in_place() {
    let Some(s) = scene(10).await else { return };
    let pid = s.host.vendbox.as_ref().unwrap().child.id();
    // The box holds the first part, made there (not sent): 40 MiB and a few bytes of `yes`.
    let part: usize = (40 << 20) + 12_345;
    let made = s.ssh(&s.key, &[], &format!("yes vendbox | head -c {part} > /root/resumed.bin && echo made"));
    assert_eq!(text(&made.stdout), "made\n", "{}", text(&made.stderr));
    // The whole file: that part, then 3 MiB and a few bytes that differ with their offset, so a
    // rest written anywhere but at the part's end shows.
    let mut bytes: Vec<u8> = b"vendbox\n".iter().copied().cycle().take(part).collect();
    bytes.extend((0..(3 << 20) + 777_u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    let local = s.host.dir.path().join("resumed.bin");
    std::fs::write(&local, &bytes).unwrap();
    let batch = s.host.dir.path().join("batch");
    std::fs::write(&batch, format!("reput {} /root/resumed.bin\n", local.display())).unwrap();

    let before = peak_rss(pid);
    let out = Command::new("sftp")
        .args(Scene::options(&s.key))
        .args(["-P", &s.port, "-b", batch.to_str().unwrap(), "root@127.0.0.1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "sftp reput: {}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(s.box_sha256("/root/resumed.bin"), local_sha256(&local));
    // Resuming sends only the rest, and a gateway that read the part already there into its
    // memory at OPEN grew by all of it.
    let grew = peak_rss(pid).saturating_sub(before);
    eprintln!("resumed upload: vendbox VmHWM grew by {} MiB", grew >> 20);
    assert!(grew < 16 << 20, "the gateway's peak memory grew by {} MiB", grew >> 20);
}
