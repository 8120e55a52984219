//! Benchmark of boxes on this host, in one run:
//! - create-to-first-exec latency (`POST /v1/boxes`, then `exec true`), p50/p99, against the
//!   baseline of a bare `bwrap … /bin/true` spawn with the same namespaces, as the same kind of
//!   unprivileged uid;
//! - exec round trip of `true` through the API on one box, p50/p99, against the round trip of
//!   `GET /healthz` (the HTTP stack alone);
//! - SSH: connect + authenticate + `true` through the gateway against OpenSSH's own sshd on
//!   this machine, and from `POST /v1/boxes` (with a key) to the first successful `ssh … true`;
//! - idle density: how many idle boxes this host holds (up to `VENDBOX_BENCH_BOXES`, default
//!   500) and the host memory each costs (MemAvailable before and after, and the box cgroups'
//!   own accounting).
//!
//! vendbox runs in this process on a runtime of its own, with the local backend; this benchmark
//! program is also each box's PID 1 (`boxes boxd --listen-stdin`), as the vendbox binary is in
//! production. Needs root and bubblewrap. Run: `cargo bench -p vendbox --bench boxes`.

#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vendbox_box::local::{LocalBackend, LocalConfig, NAMESPACES};
use vendbox_server::{Config, Secrets, Server};

const CREATES: usize = 40;
/// Exec round trips measured (a box of the custom offer holds at most 300 actions).
const EXECS: usize = 250;

fn percentiles(mut times: Vec<Duration>) -> (Duration, Duration) {
    times.sort_unstable();
    let at = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    (at(0.5), at(0.99))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn row(label: &str, (p50, p99): (Duration, Duration), baseline: Option<(Duration, Duration)>) {
    let ratio = baseline.map_or_else(String::new, |(b50, b99)| {
        format!(
            "   {:>6.2}x p50  {:>6.2}x p99",
            p50.as_secs_f64() / b50.as_secs_f64(),
            p99.as_secs_f64() / b99.as_secs_f64()
        )
    });
    println!("  {label:<52} p50 {:>8.2} ms   p99 {:>8.2} ms{ratio}", ms(p50), ms(p99));
}

/// A vendbox selling a free small box, on a runtime of its own thread; its URL and the SSH
/// gateway's address.
fn serve(data_dir: PathBuf) -> (String, std::net::SocketAddr) {
    let mut config = Config::load(None, Vec::new()).unwrap();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.ssh.listen = "127.0.0.1:0".parse().unwrap();
    config.server.request_timeout_secs = 120;
    config.store.data_dir = data_dir;
    // The density rows measure how many idle boxes the host holds, past what admission control
    // would sell by their memory limits.
    config.boxes.memory_overcommit = 1000.0;
    for offer in &mut config.offers {
        if offer.id.as_str() == "h3retik-custom" {
            offer.price = vendbox_core::PriceRule::default();
            offer.resources.memory_mb = 256;
            offer.resources.disk_gb = 1;
            offer.resources.vcpu = 1;
        }
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let store = vendbox_store::open(None, &config.store.data_dir).await.unwrap();
            let server = Server::bind(&config, store, Secrets::default()).await.unwrap();
            tx.send((format!("http://{}", server.local_addr().unwrap()), server.ssh_addr().unwrap()))
                .unwrap();
            server.run(std::future::pending()).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

/// The bare spawn: the same namespaces and read-only /usr, as an unprivileged uid, `/bin/true`.
fn bare_bwrap() -> Duration {
    let started = Instant::now();
    let status = Command::new("bwrap")
        .args(NAMESPACES)
        .args([
            "--ro-bind",
            "/usr",
            "/usr",
            "--symlink",
            "usr/bin",
            "/bin",
            "--symlink",
            "usr/lib",
            "/lib",
            "--symlink",
            "usr/lib64",
            "/lib64",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
            "/bin/true",
        ])
        .uid(2_099_999)
        .gid(2_099_999)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    started.elapsed()
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn buy(&self) -> (String, String) {
        self.buy_with(&json!({ "offer": "h3retik-custom", "minutes": 60, "actions": 300 })).await
    }

    async fn buy_with(&self, body: &Value) -> (String, String) {
        let answer: Value = self
            .http
            .post(format!("{}/v1/boxes", self.base))
            .json(body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = answer["id"].as_str().unwrap_or_else(|| panic!("{answer}")).to_owned();
        (id, answer["token"].as_str().unwrap().to_owned())
    }

    async fn exec_true(&self, (id, token): &(String, String)) {
        let out: Value = self
            .http
            .post(format!("{}/v1/boxes/{id}/exec", self.base))
            .bearer_auth(token)
            .json(&json!({ "argv": ["true"] }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(out["exit_code"], 0, "{out}");
    }

    async fn end(&self, (id, token): &(String, String)) {
        self.http.delete(format!("{}/v1/boxes/{id}", self.base)).bearer_auth(token).send().await.unwrap();
    }
}

fn mem_available_kib() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("state");
    std::fs::create_dir_all(&data_dir).unwrap();
    let (url, ssh_addr) = serve(data_dir.clone());
    let client = Client { http: reqwest::Client::new(), base: url };
    println!("boxes on this host ({} CPUs):", std::thread::available_parallelism().map_or(0, usize::from));

    // Warm caches, then alternate the two measurements so that both see the same machine.
    let _ = bare_bwrap();
    let warm = client.buy().await;
    client.exec_true(&warm).await;
    let (mut bare, mut create) = (Vec::new(), Vec::new());
    for _ in 0..CREATES {
        bare.push(bare_bwrap());
        let started = Instant::now();
        let b = client.buy().await;
        client.exec_true(&b).await;
        create.push(started.elapsed());
        client.end(&b).await;
    }
    let bare = percentiles(bare);
    row("bare `bwrap … /bin/true` spawn (baseline)", bare, None);
    row("create box + first exec, through the API", percentiles(create), Some(bare));

    client.end(&warm).await;
    let warm = client.buy().await;
    client.exec_true(&warm).await;
    let (mut health, mut exec) = (Vec::new(), Vec::new());
    for _ in 0..EXECS {
        let started = Instant::now();
        client.http.get(format!("{}/healthz", client.base)).send().await.unwrap().bytes().await.unwrap();
        health.push(started.elapsed());
        let started = Instant::now();
        client.exec_true(&warm).await;
        exec.push(started.elapsed());
    }
    let health = percentiles(health);
    row("GET /healthz round trip (baseline)", health, None);
    row("exec `true` round trip, through the API", percentiles(exec), Some(health));
    client.end(&warm).await;

    ssh(&client, ssh_addr, dir.path()).await;

    let target: usize = std::env::var("VENDBOX_BENCH_BOXES").ok().and_then(|v| v.parse().ok()).unwrap_or(500);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = mem_available_kib();
    let started = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..target {
        idle.push(client.buy().await);
    }
    let made = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = mem_available_kib();
    // Every box answers after the others were made.
    for b in idle.iter().step_by(25) {
        client.exec_true(b).await;
    }
    let per_box_host = (before.saturating_sub(after)) as f64 / idle.len() as f64;
    let cgroup_bytes: u64 = std::fs::read_dir("/sys/fs/cgroup/memory/vendbox")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .flat_map(|instance| std::fs::read_dir(instance.path()).into_iter().flatten().filter_map(Result::ok))
        .filter_map(|b| std::fs::read_to_string(b.path().join("memory.usage_in_bytes")).ok())
        .filter_map(|t| t.trim().parse::<u64>().ok())
        .sum();
    println!(
        "  idle density: {} boxes made in {:.1} s ({:.1} ms each); host memory {:.0} KiB per box (MemAvailable), \
         box cgroups {:.0} KiB per box",
        idle.len(),
        made.as_secs_f64(),
        ms(made) / idle.len() as f64,
        per_box_host,
        cgroup_bytes as f64 / 1024.0 / idle.len() as f64
    );
    let ended = Instant::now();
    for b in &idle {
        client.end(b).await;
    }
    println!("  ending {} boxes took {:.1} s", idle.len(), ended.elapsed().as_secs_f64());
    // Leave nothing behind: this instance's cgroup parents and run directory.
    let exe = std::env::current_exe().unwrap().to_string_lossy().into_owned();
    let config =
        LocalConfig { data_dir, boxd: vec![exe, "boxd".into()], run_root: PathBuf::from("/run/vendbox") };
    LocalBackend::new(config).unwrap().remove_all().await.unwrap();
}

/// `ssh … true` with `key` to `port`, timed; panics unless it succeeds.
fn ssh_true(key: &std::path::Path, port: u16) -> Duration {
    let started = Instant::now();
    let status = Command::new("ssh")
        .args(["-i", key.to_str().unwrap(), "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"])
        .args(["-p", &port.to_string(), "root@127.0.0.1", "true"])
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    started.elapsed()
}

/// OpenSSH's own sshd on a free port, with `key` authorized for root; stopped by its pid.
struct Sshd {
    child: std::process::Child,
    port: u16,
}

impl Sshd {
    fn start(dir: &std::path::Path, public_key: &str) -> Option<Sshd> {
        let sshd = PathBuf::from("/usr/sbin/sshd");
        if !sshd.exists() {
            return None;
        }
        std::fs::create_dir_all("/run/sshd").ok()?;
        let host_key = dir.join("sshd_host_key");
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&host_key)
            .status()
            .ok()?;
        std::fs::write(dir.join("authorized_keys"), public_key).ok()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPermitRootLogin yes\n\
                 StrictModes no\nUsePAM no\nPasswordAuthentication no\nPidFile none\n",
                host_key.display(),
                dir.join("authorized_keys").display()
            ),
        )
        .ok()?;
        let child = Command::new(sshd).arg("-D").arg("-f").arg(&config).stderr(Stdio::null()).spawn().ok()?;
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > Duration::from_secs(5) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Sshd { child, port })
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SSH figures: session setup plus `true` against OpenSSH's sshd and the gateway, and the time
/// from buying a box to its first successful SSH command.
async fn ssh(client: &Client, gateway: std::net::SocketAddr, dir: &std::path::Path) {
    let key = dir.join("bench_key");
    Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status().unwrap();
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let Some(sshd) = Sshd::start(dir, &public) else {
        println!(
            "  skipped the SSH rows: OpenSSH's sshd cannot be started here (apt install openssh-server)"
        );
        return;
    };
    let body =
        json!({ "offer": "h3retik-custom", "minutes": 60, "actions": 300, "ssh_public_key": public.trim() });
    let target = client.buy_with(&body).await;
    let (mut baseline, mut gateway_times) = (Vec::new(), Vec::new());
    for _ in 0..30 {
        baseline.push(ssh_true(&key, sshd.port));
        gateway_times.push(ssh_true(&key, gateway.port()));
    }
    drop(sshd);
    client.end(&target).await;
    let baseline = percentiles(baseline);
    row("OpenSSH sshd: connect, authenticate, run `true` (baseline)", baseline, None);
    row(
        "vendbox gateway: connect, authenticate, run `true` in the box",
        percentiles(gateway_times),
        Some(baseline),
    );
    let mut to_first = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let bought = client.buy_with(&body).await;
        let _ = ssh_true(&key, gateway.port());
        to_first.push(started.elapsed());
        client.end(&bought).await;
    }
    row("POST /v1/boxes with a key, then the first `ssh … true`", percentiles(to_first), Some(baseline));
}

fn main() {
    // This program is also each box's PID 1.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("boxd") {
        let listen = match args.iter().skip_while(|a| *a != "--socket").nth(1) {
            Some(socket) => boxd::Listen::Path(PathBuf::from(socket)),
            None => boxd::Listen::Stdin,
        };
        boxd::run(boxd::RunOptions { listen }).unwrap();
        return;
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(run());
}
