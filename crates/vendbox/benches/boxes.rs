//! Benchmark of boxes on this host, in one run:
//! - create-to-first-exec latency (`POST /v1/boxes`, then `exec true`) against the baseline of a
//!   bare `bwrap … /bin/true` spawn with the same namespaces, as the same kind of unprivileged
//!   uid: median, p90 and p99;
//! - the same from the `debian-12` image (an overlay root on an ext4 disk of its own) against the
//!   same bare spawn, when the data directory can have that image (`VENDBOX_BENCH_IMAGES`, an
//!   images directory holding it, or the tests' cache); skipped, saying so, without it;
//! - exec round trip of `true` through the API on one box against the round trip of
//!   `GET /healthz` (the HTTP stack alone): median, p90 and p99;
//! - SSH: connect + authenticate + `true` through the gateway against OpenSSH's own sshd on
//!   this machine (median, p90 and p99), and from `POST /v1/boxes` (with a key) to the first
//!   successful `ssh … true` against the same sshd session: median and p90 only, since each
//!   round makes a box and opens two sessions and this pair runs fewer rounds than a p99 needs
//!   (the output says so);
//! - E2B: the stock `e2b` Python SDK's `Sandbox.create` and first `commands.run` (`true`),
//!   timed by the SDK's process (`tests/clients/e2b_bench.py`, one round per request), against
//!   vendbox's native create and first exec of a box of the same size and image, alternated;
//!   skipped, saying so, without the `e2b` package;
//! - idle density: how many idle boxes this host holds (up to `VENDBOX_BENCH_BOXES`, default
//!   500, or as many as vendbox sells before it answers `sold_out`) and the memory each costs:
//!   MemAvailable before and after, and the boxes' memory cgroups' own accounting, now and at
//!   peak (`memory.current` and `memory.peak` on cgroup v2, `memory.usage_in_bytes` and
//!   `memory.max_usage_in_bytes` on v1). Each box's memory cgroup is the one its processes are
//!   in (`/proc/<pid>/cgroup`, with the pids the backend finds in the box's cgroups), under that
//!   hierarchy's mount point.
//!
//! vendbox serves with its default `[boxes] warm` (box starts made ahead of a purchase);
//! `VENDBOX_BENCH_WARM=0` makes every box start cold. The create pairs' rounds are 250 ms apart,
//! so that what one purchase leaves running (the kernel's teardown of its box's network, the
//! warm slot made in its place) is done before the next pair of samples;
//! `VENDBOX_BENCH_SETTLE_MS=0` runs them back to back.
//!
//! Every pair runs warm-up rounds first and throws them away, then alternates baseline and
//! subject in ABBA order (see `common/stats.rs`); every row says how many samples it holds, and
//! a p99 is printed only from at least 100. A figure that cannot be measured (a cgroup file
//! missing, memory that did not move) fails the bench; none is printed as zero. The boxes, their
//! cgroups and their run directory are removed at the end, also after a failure.
//!
//! vendbox runs in this process on a runtime of its own, with the local backend; this benchmark
//! program is also each box's PID 1 (`boxes boxd --listen-stdin`), as the vendbox binary is in
//! production. Needs root and bubblewrap (and openssh-server for the SSH rows, which are skipped
//! without it, saying so). Run: `cargo bench -p vendbox --bench boxes`; `VENDBOX_BENCH_PARTS`
//! (comma-separated: create, image, exec, e2b, ssh, density) runs only those parts;
//! `VENDBOX_BENCH_LOG` (a tracing filter, e.g. `vendbox_box=debug`) logs each box's start phases;
//! `VENDBOX_BENCH_DENSITY_IMAGE=debian-12` makes the idle boxes of that image (and measures their
//! disks).

#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::os::unix::process::CommandExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vendbox_box::BoxId;
use vendbox_box::local::{LocalBackend, LocalConfig, NAMESPACES};
use vendbox_server::{Config, Secrets, Server};

#[path = "common/stats.rs"]
mod stats;

use stats::{Rounds, Summary};

/// Create + first exec rounds (a box takes from tens of milliseconds to half a second to make).
const CREATES: Rounds = Rounds { warm_up: 5, measured: 100 };
/// Exec round trips on one box (a box of the custom offer holds 300 actions: its first exec, the
/// warm-up and the measured rounds stay below that).
const EXECS: Rounds = Rounds { warm_up: 20, measured: 250 };
/// SSH sessions through the gateway and through OpenSSH's sshd.
const SSH_SESSIONS: Rounds = Rounds { warm_up: 5, measured: 100 };
/// Purchases followed by the first SSH command. Each round also opens an OpenSSH session (about
/// half a second on two busy cores), so this pair runs fewer rounds than a p99 needs, to keep
/// the run to a few minutes: median and p90 only.
const SSH_FIRST: Rounds = Rounds { warm_up: 2, measured: 20 };
/// Native create + first exec against the E2B SDK's create + first run (each round also starts
/// and ends a box on each side).
const E2B_CREATES: Rounds = Rounds { warm_up: 3, measured: 40 };
/// Create + first exec rounds from the debian-12 image.
const IMAGE_CREATES: Rounds = Rounds { warm_up: 5, measured: 100 };
/// Width of the row labels.
const LABEL_WIDTH: usize = 76;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Prints a baseline and a subject measured in alternation, and the subject's ratios.
fn rows(baseline_label: &str, baseline: &Summary, subject_label: &str, subject: &Summary) {
    stats::row(baseline_label, LABEL_WIDTH, baseline);
    stats::row(subject_label, LABEL_WIDTH, subject);
    stats::ratio_row("  ratio to the baseline", LABEL_WIDTH, subject, baseline);
}

/// A vendbox selling a free small box (also as its E2B sandbox), on a runtime of its own thread;
/// its URL, the SSH gateway's address and an API key for the E2B SDK.
/// vendbox serving in this program: its thread, and the way to stop it.
struct Serving {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Serving {
    /// Stops vendbox as a signal would (its warm slots are removed, the boxes stay) and waits.
    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

fn serve(data_dir: PathBuf) -> (String, std::net::SocketAddr, String, Serving) {
    let mut config = Config::load(None, Vec::new()).unwrap();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.ssh.listen = "127.0.0.1:0".parse().unwrap();
    config.server.request_timeout_secs = 120;
    config.store.data_dir = data_dir;
    // The density rows measure how many idle boxes the host holds, past what admission control
    // would sell by their memory limits.
    config.boxes.memory_overcommit = 1000.0;
    // `VENDBOX_BENCH_WARM=0`: every box starts cold (no warm slots), to compare.
    if let Some(warm) = std::env::var("VENDBOX_BENCH_WARM").ok().and_then(|w| w.parse().ok()) {
        config.boxes.warm = warm;
    }
    let debian = config.store.data_dir.join("images/debian-12/image.json").is_file();
    for offer in &mut config.offers {
        if offer.id.as_str() == "e2b-sandbox" {
            offer.price = vendbox_core::PriceRule::default();
            offer.resources.memory_mb = 256;
            offer.resources.disk_gb = 1;
            offer.resources.vcpu = 1;
        }
        if offer.id.as_str() == "h3retik-custom" {
            if debian {
                offer.images = vec!["host".into(), "debian-12".into()];
            }
            offer.price = vendbox_core::PriceRule::default();
            offer.resources.memory_mb = 256;
            offer.resources.disk_gb = 1;
            offer.resources.vcpu = 1;
        }
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let store = vendbox_store::open(None, &config.store.data_dir).await.unwrap();
            let owner = vendbox_core::Principal::wallet(
                vendbox_core::AccountAddress::parse("0x00000000000000000000000000000000000e2b00", "owner")
                    .unwrap(),
            );
            let new = vendbox_service::NewKey {
                label: Some("e2b bench".into()),
                scope: vendbox_core::KeyScope::All,
                daily_cap: None,
                total_cap: None,
            };
            let (key, _) = vendbox_service::Auth::new(store.clone(), Duration::from_mins(5))
                .create_key(&owner, new)
                .await
                .unwrap();
            let server = Server::bind(&config, store, Secrets::default()).await.unwrap();
            let url = format!("http://{}", server.local_addr().unwrap());
            tx.send((url, server.ssh_addr().unwrap(), key.expose().to_owned())).unwrap();
            server
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
    });
    let (url, ssh, key) = rx.recv().unwrap();
    (url, ssh, key, Serving { stop, thread })
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
        self.buy_with(&Self::small_box()).await
    }

    /// A purchase of the free small box, for an hour, with 300 actions.
    fn small_box() -> Value {
        json!({ "offer": "h3retik-custom", "minutes": 60, "actions": 300 })
    }

    async fn buy_with(&self, body: &Value) -> (String, String) {
        self.try_buy(body).await.unwrap_or_else(|answer| panic!("{answer}"))
    }

    /// Buys a box; the answer when there is none.
    async fn try_buy(&self, body: &Value) -> Result<(String, String), Value> {
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
        match (answer["id"].as_str(), answer["token"].as_str()) {
            (Some(id), Some(token)) => Ok((id.to_owned(), token.to_owned())),
            _ => Err(answer),
        }
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
        .expect("cannot measure host memory: /proc/meminfo has no MemAvailable line")
}

/// A box's memory cgroup: its directory, and whether it is in the unified (v2) hierarchy.
struct MemoryCgroup {
    dir: PathBuf,
    v2: bool,
}

impl MemoryCgroup {
    /// The memory cgroup box `id`'s processes are in: `/proc/<pid>/cgroup` names it (the v1
    /// hierarchy with the memory controller where there is one, else the unified one), under the
    /// mount point `/proc/self/mountinfo` gives that hierarchy. It must be the box's own.
    fn of(backend: &LocalBackend, id: &str) -> Result<MemoryCgroup, String> {
        let box_id = BoxId::new(id).map_err(|e| format!("box id {id}: {e}"))?;
        let pid = *backend
            .pids(&box_id)
            .first()
            .ok_or_else(|| format!("box {id} has no process in its cgroups (LocalBackend::pids)"))?;
        let file = format!("/proc/{pid}/cgroup");
        let text = std::fs::read_to_string(&file).map_err(|e| format!("reading {file}: {e}"))?;
        // `hierarchy-id:controllers:path`; the unified hierarchy is `0::path`.
        let entries: Vec<(&str, &str, &str)> = text
            .lines()
            .filter_map(|l| {
                let (id, rest) = l.split_once(':')?;
                let (controllers, path) = rest.split_once(':')?;
                Some((id, controllers, path))
            })
            .collect();
        let v1 = entries.iter().find(|(_, controllers, _)| controllers.split(',').any(|c| c == "memory"));
        let (v2, path) = match v1 {
            Some((_, _, path)) => (false, *path),
            None => match entries.iter().find(|(id, controllers, _)| *id == "0" && controllers.is_empty()) {
                Some((_, _, path)) => (true, *path),
                None => return Err(format!("{file} names no memory cgroup:\n{text}")),
            },
        };
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
        // `… root mount_point options - fstype source super_options`
        let mount = mountinfo.lines().find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut left = left.split(' ');
            let (root, mount_point) = (left.nth(3)?, left.next()?);
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let super_options = right.nth(1).unwrap_or_default();
            let wanted = if v2 {
                fstype == "cgroup2"
            } else {
                fstype == "cgroup" && super_options.split(',').any(|o| o == "memory")
            };
            wanted.then(|| (root.to_owned(), PathBuf::from(mount_point)))
        });
        let hierarchy = if v2 { "the cgroup2 hierarchy" } else { "the v1 memory hierarchy" };
        let (root, mount_point) =
            mount.ok_or_else(|| format!("{hierarchy} is not mounted (/proc/self/mountinfo)"))?;
        let relative = path.strip_prefix(root.as_str()).ok_or_else(|| {
            format!("box {id}'s memory cgroup {path} is outside {hierarchy}'s mount of {root}")
        })?;
        let dir = mount_point.join(relative.trim_start_matches('/'));
        if dir.file_name().and_then(|n| n.to_str()) != Some(id) {
            return Err(format!(
                "box {id}'s process {pid} is in memory cgroup {}, not in one of the box's own",
                dir.display()
            ));
        }
        Ok(MemoryCgroup { dir, v2 })
    }

    /// The files holding the memory in use now and the most used so far.
    fn files(&self) -> (&'static str, &'static str) {
        if self.v2 {
            ("memory.current", "memory.peak")
        } else {
            ("memory.usage_in_bytes", "memory.max_usage_in_bytes")
        }
    }

    /// Bytes in `file` of this cgroup.
    fn read(&self, file: &str) -> Result<u64, String> {
        let path = self.dir.join(file);
        let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        text.trim().parse().map_err(|e| format!("{} holds {text:?}: {e}", path.display()))
    }
}

/// The memory the boxes' cgroups account for, summed over the boxes; `Err` says what could not
/// be read (a box whose cgroup holds no figure must not count as zero).
fn cgroup_memory(backend: &LocalBackend, ids: &[&str]) -> Result<String, String> {
    let (mut current, mut peak, mut peak_missing) = (0u64, 0u64, None);
    let mut files = None;
    for id in ids {
        let cgroup = MemoryCgroup::of(backend, id)?;
        let (now_file, peak_file) = cgroup.files();
        files = Some((cgroup.v2, now_file, peak_file));
        current += cgroup.read(now_file)?;
        match cgroup.read(peak_file) {
            Ok(bytes) => peak += bytes,
            // `memory.peak` is newer than cgroup v2 itself (Linux 5.19).
            Err(e) if cgroup.v2 && !cgroup.dir.join(peak_file).exists() => peak_missing = Some(e),
            Err(e) => return Err(e),
        }
    }
    let (v2, now_file, peak_file) = files.ok_or("no box to read a cgroup of")?;
    if current == 0 {
        return Err(format!("every box's {now_file} reads 0: the memory controller accounts nothing here"));
    }
    let kib = |bytes: u64| bytes as f64 / 1024.0 / ids.len() as f64;
    let version = if v2 { "v2" } else { "v1" };
    let peak = match peak_missing {
        Some(e) => format!("peak not measured ({e}: Linux before 5.19)"),
        None => format!("{:.0} KiB at peak ({peak_file})", kib(peak)),
    };
    Ok(format!("box cgroups ({version}) {:.0} KiB now ({now_file}), {peak}", kib(current)))
}

/// The backend of the same instance as the server's on `data_dir`: its boxes' pids, and their
/// removal at the end.
fn backend(data_dir: &Path) -> LocalBackend {
    let exe = std::env::current_exe().unwrap().to_string_lossy().into_owned();
    let config = LocalConfig {
        data_dir: data_dir.to_owned(),
        boxd: vec![exe, "boxd".into()],
        run_root: PathBuf::from("/run/vendbox"),
    };
    LocalBackend::new(config).unwrap()
}

async fn run(dir: &Path, data_dir: &Path, serving: &mut Option<Serving>) {
    let (url, ssh_addr, e2b_key, served) = serve(data_dir.to_owned());
    *serving = Some(served);
    let client = &Client { http: reqwest::Client::new(), base: url };
    println!(
        "boxes on this host ({} CPUs); each pair alternates baseline and subject in ABBA order after \
         warm-up rounds that are thrown away:",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    stats::header(LABEL_WIDTH);

    if part("create") {
        create_pair(client, None).await;
    }
    if part("image") {
        if data_dir.join("images/debian-12/image.json").is_file() {
            create_pair(client, Some("debian-12")).await;
        } else {
            println!(
                "debian-12 rows skipped: no image (set VENDBOX_BENCH_IMAGES to an images directory \
                 holding it, or run `vendbox image build debian-12`)"
            );
        }
    }
    if part("exec") {
        exec_pair(client).await;
    }
    if part("e2b") {
        e2b_pair(client, &e2b_key).await;
    }
    if part("ssh") {
        ssh(client, ssh_addr, dir).await;
    }
    if part("density") {
        density(client, data_dir).await;
    }
}

/// Whether part `name` runs (`VENDBOX_BENCH_PARTS`, all by default).
/// The pause between a create pair's rounds (`VENDBOX_BENCH_SETTLE_MS`, default 250; 0: back to
/// back, each purchase timed against what the one before it left running).
fn settle() -> Duration {
    let ms = std::env::var("VENDBOX_BENCH_SETTLE_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(250);
    Duration::from_millis(ms)
}

fn part(name: &str) -> bool {
    std::env::var("VENDBOX_BENCH_PARTS").map_or(true, |parts| parts.split(',').any(|p| p.trim() == name))
}

/// Create + first exec of boxes of `image` (the offer's default, `host`, when none) against the
/// bare bubblewrap spawn.
async fn create_pair(client: &Client, image: Option<&str>) {
    let mut body = Client::small_box();
    if let Some(image) = image {
        body["image"] = json!(image);
    }
    let body = &body;
    let times = stats::alternate_async(
        if image.is_some() { IMAGE_CREATES } else { CREATES },
        || async { bare_bwrap() },
        || async move {
            let started = Instant::now();
            let b = client.buy_with(body).await;
            client.exec_true(&b).await;
            let elapsed = started.elapsed();
            client.end(&b).await;
            // What a purchase leaves running (the kernel's teardown of the ended box's network,
            // the warm slot made in its place) finishes before the next round, as between an
            // agent's purchases, so neither side of the pair is timed against it.
            tokio::time::sleep(settle()).await;
            elapsed
        },
    )
    .await;
    let bare = Summary::of("bare bwrap spawns", times.baseline);
    let create = Summary::of("box creations", times.subject);
    let subject = match image {
        Some(image) => format!("create box + first exec, {image} (overlay, ext4 disk)"),
        None => "create box + first exec, through the API".to_owned(),
    };
    let subject = match settle().as_millis() {
        0 => format!("{subject}, back to back"),
        ms => format!("{subject}, {ms} ms apart"),
    };
    rows("bare `bwrap … /bin/true` spawn (baseline)", &bare, &subject, &create);
    stats::explain_missing(&create, "this pair ran fewer rounds");
}

/// Create + first exec through vendbox's native API against the stock E2B SDK's
/// `Sandbox.create` + first `commands.run`, of boxes of the same size and image. The SDK runs in
/// a Python process of its own that times each round itself (from the call to the answer) when
/// asked for one, so interpreter start-up is not counted and the pair alternates.
async fn e2b_pair(client: &Client, key: &str) {
    use std::io::{BufRead as _, BufReader, Write as _};
    let ok = Command::new("python3").args(["-c", "import e2b"]).status().is_ok_and(|s| s.success());
    if !ok {
        println!(
            "E2B rows skipped: the e2b Python package is not installed (tests/clients/requirements.txt)"
        );
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients/e2b_bench.py");
    let mut sdk = Command::new("python3")
        .arg(script)
        .env("E2B_API_URL", &client.base)
        .env("E2B_SANDBOX_URL", &client.base)
        .env("E2B_API_KEY", key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pipe = std::sync::Mutex::new((sdk.stdin.take().unwrap(), BufReader::new(sdk.stdout.take().unwrap())));
    let times = stats::alternate_async(
        E2B_CREATES,
        || async {
            let started = Instant::now();
            let b = client.buy().await;
            client.exec_true(&b).await;
            let elapsed = started.elapsed();
            client.end(&b).await;
            elapsed
        },
        || async {
            // The SDK's process runs the round; vendbox serves it on a runtime of its own.
            let mut pipe = pipe.lock().unwrap();
            let (input, output) = &mut *pipe;
            writeln!(input, "round").unwrap();
            let mut line = String::new();
            output.read_line(&mut line).unwrap();
            let ms: f64 =
                line.trim().parse().unwrap_or_else(|_| panic!("the E2B SDK round failed: {line:?}"));
            Duration::from_secs_f64(ms / 1000.0)
        },
    )
    .await;
    drop(pipe);
    let _ = sdk.wait();
    rows(
        "create box + first exec, native API (baseline)",
        &Summary::of("native creations", times.baseline),
        "E2B SDK Sandbox.create + first commands.run",
        &Summary::of("E2B SDK creations", times.subject),
    );
}

/// Exec round trips on one box against `GET /healthz`.
async fn exec_pair(client: &Client) {
    let warm = &client.buy().await;
    client.exec_true(warm).await;
    let health = format!("{}/healthz", client.base);
    let times = stats::alternate_async(
        EXECS,
        || {
            stats::timed(async {
                client.http.get(&health).send().await.unwrap().bytes().await.unwrap();
            })
        },
        || stats::timed(client.exec_true(warm)),
    )
    .await;
    rows(
        "GET /healthz round trip (baseline)",
        &Summary::of("GET /healthz round trips", times.baseline),
        "exec `true` round trip, through the API",
        &Summary::of("exec round trips", times.subject),
    );
    client.end(warm).await;
}

/// How many idle boxes this host holds (up to `VENDBOX_BENCH_BOXES`, or until vendbox sells no
/// more) and the memory each costs; fails, once the boxes are ended, when a memory figure cannot
/// be measured.
async fn density(client: &Client, data_dir: &Path) {
    let target: usize = std::env::var("VENDBOX_BENCH_BOXES").ok().and_then(|v| v.parse().ok()).unwrap_or(500);
    // `VENDBOX_BENCH_DENSITY_IMAGE=debian-12`: the idle boxes are of that image (an overlay root
    // and a disk each), and the disk each takes is measured too.
    let image = std::env::var("VENDBOX_BENCH_DENSITY_IMAGE").ok();
    let mut body = Client::small_box();
    if let Some(image) = &image {
        body["image"] = json!(image);
    }
    let backend = backend(data_dir);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = mem_available_kib();
    let started = Instant::now();
    let (mut idle, mut sold_out) = (Vec::new(), None);
    while idle.len() < target {
        match client.try_buy(&body).await {
            Ok(bought) => idle.push(bought),
            Err(answer) if answer["error"]["code"] == "sold_out" => {
                sold_out = Some(answer["error"]["message"].as_str().unwrap_or_default().to_owned());
                break;
            }
            Err(answer) => panic!("buying idle box {} of {target}: {answer}", idle.len() + 1),
        }
    }
    let made = started.elapsed();
    assert!(
        !idle.is_empty(),
        "cannot measure idle density: no idle box was made (VENDBOX_BENCH_BOXES {target}){}",
        sold_out.as_deref().map(|why| format!("; sold_out: {why}")).unwrap_or_default()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = mem_available_kib();
    // Every box answers after the others were made.
    for b in idle.iter().step_by(25) {
        client.exec_true(b).await;
    }
    let ids: Vec<&str> = idle.iter().map(|(id, _)| id.as_str()).collect();
    let cgroups = cgroup_memory(&backend, &ids);
    let disks: u64 = ids
        .iter()
        .filter_map(|id| std::fs::metadata(data_dir.join("boxes").join(id).join("disk.img")).ok())
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
        .sum();
    println!(
        "  idle density{}: {} boxes made in {:.1} s ({:.1} ms each){}",
        image.as_deref().map(|i| format!(" ({i})")).unwrap_or_default(),
        idle.len(),
        made.as_secs_f64(),
        ms(made) / idle.len() as f64,
        sold_out.map_or_else(
            || format!(" (VENDBOX_BENCH_BOXES {target})"),
            |why| format!("; then vendbox sold no more: {why}")
        )
    );
    if image.is_some() {
        println!(
            "  disk per idle box: {:.0} KiB allocated (disk.img)",
            disks as f64 / 1024.0 / idle.len() as f64
        );
    }
    let ended = Instant::now();
    for b in &idle {
        client.end(b).await;
    }
    println!("  ending {} boxes took {:.1} s", idle.len(), ended.elapsed().as_secs_f64());

    // Memory per box, or a loud failure now that the boxes are gone.
    let mut unmeasured = Vec::new();
    match cgroups {
        Ok(line) => println!("  memory per idle box: {line}"),
        Err(e) => unmeasured.push(format!("the box cgroups' memory: {e}")),
    }
    if after < before {
        println!(
            "  memory per idle box: host {:.0} KiB (MemAvailable before and after)",
            (before - after) as f64 / idle.len() as f64
        );
    } else {
        unmeasured.push(format!(
            "host memory per box: MemAvailable went from {before} KiB to {after} KiB while {} boxes \
             were made (other processes freed memory meanwhile; run again on a quieter host)",
            idle.len()
        ));
    }
    assert!(unmeasured.is_empty(), "cannot measure:\n  {}", unmeasured.join("\n  "));
}

/// `ssh … true` with `key` to `port`, timed; panics unless it succeeds.
fn ssh_true(key: &Path, port: u16) -> Duration {
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
    fn start(dir: &Path, public_key: &str) -> Option<Sshd> {
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
/// from buying a box to its first successful SSH command against the same sshd session.
async fn ssh(client: &Client, gateway: std::net::SocketAddr, dir: &Path) {
    let key = &dir.join("bench_key");
    Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(key).status().unwrap();
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let Some(sshd) = Sshd::start(dir, &public) else {
        println!(
            "  skipped the SSH rows: OpenSSH's sshd cannot be started here (apt install openssh-server)"
        );
        return;
    };
    let sshd_port = sshd.port;
    let body =
        &json!({ "offer": "h3retik-custom", "minutes": 60, "actions": 300, "ssh_public_key": public.trim() });
    let target = client.buy_with(body).await;
    let times = stats::alternate_async(
        SSH_SESSIONS,
        || async move { ssh_true(key, sshd_port) },
        || async move { ssh_true(key, gateway.port()) },
    )
    .await;
    client.end(&target).await;
    let baseline_label = "OpenSSH sshd: connect, authenticate, run `true` (baseline)";
    rows(
        baseline_label,
        &Summary::of("OpenSSH sessions", times.baseline),
        "vendbox gateway: connect, authenticate, run `true` in the box",
        &Summary::of("gateway sessions", times.subject),
    );

    let times = stats::alternate_async(
        SSH_FIRST,
        || async move { ssh_true(key, sshd_port) },
        || async move {
            let started = Instant::now();
            let bought = client.buy_with(body).await;
            let _ = ssh_true(key, gateway.port());
            let elapsed = started.elapsed();
            client.end(&bought).await;
            elapsed
        },
    )
    .await;
    drop(sshd);
    let to_first = Summary::of("purchases to the first SSH command", times.subject);
    rows(
        baseline_label,
        &Summary::of("OpenSSH sessions", times.baseline),
        "POST /v1/boxes with a key, then the first `ssh … true`",
        &to_first,
    );
    stats::explain_missing(
        &to_first,
        "each round makes a box and opens two SSH sessions, so this pair runs fewer rounds",
    );
}

/// An images directory holding debian-12: `VENDBOX_BENCH_IMAGES`, else the tests' cache.
fn debian_images() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("VENDBOX_BENCH_IMAGES") {
        return Some(PathBuf::from(dir));
    }
    let key = vendbox_box::image::Recipe::named("debian-12")?.key();
    let cached = PathBuf::from(format!("/var/cache/vendbox-test/debian-12-{key}/images"));
    cached.join("debian-12/image.json").is_file().then_some(cached)
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
    // `VENDBOX_BENCH_LOG=vendbox_box=debug` prints where each box's start spent its time.
    if let Ok(filter) = std::env::var("VENDBOX_BENCH_LOG") {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("state");
    std::fs::create_dir_all(&data_dir).unwrap();
    if let Some(images) = debian_images() {
        std::os::unix::fs::symlink(images, data_dir.join("images")).unwrap();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut serving = None;
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(run(dir.path(), &data_dir, &mut serving));
    }));
    // Leave nothing behind, also when a figure could not be measured: vendbox stops first (and
    // with it the making of warm slots), then this instance's boxes, its cgroup parents and its
    // run directory go.
    if let Some(serving) = serving {
        serving.stop();
    }
    runtime.block_on(backend(&data_dir).remove_all()).unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
