//! Benchmark of Agent Lock: acquire + release cycles from 64 concurrent clients, each cycling on
//! keys of its own, against the same cycle on Redis (`SET key token NX PX` + a compare-and-delete
//! script) from 64 connections, measured in the same run:
//! - Redis with `appendfsync always` (durable before it answers, as vendbox is);
//! - vendbox over HTTP at price 0 and paid (x402 on anvil, built-in facilitator, and prepaid
//!   credits spent with an API key: one x402 top-up, then no transaction per lock), on SQLite
//!   and on PostgreSQL;
//! - the HTTP ceiling: the same client sending the cycle's two requests to a path vendbox
//!   answers 404, through every layer and no handler or store (no lock cycle can beat it);
//! - contended, at price 0: the 64 clients share 8 keys and wait for them
//!   (`POST /v1/locks/{key}?wait_seconds=60`), so each cycle is a handover and its time includes
//!   the wait.
//!
//! Each of these is measured in windows alternated with windows of the baseline, Redis in
//! memory: one warm-up pair of windows, thrown away, then four of each in ABBA order (see
//! `common/stats.rs`); each window also lets its clients run a while before it counts. For each
//! it prints cycles per second and the median, p90 and p99 of one cycle's time (from thousands
//! of cycles) next to the baseline's of the same windows, and both as ratios.
//!
//! vendbox runs in this process on a runtime of its own; Redis is a `redis-server` started here
//! on a free port and stopped by its pid. Run: `cargo bench -p vendbox --bench locks` (needs
//! `redis-server`, without which nothing can be compared and the bench fails; anvil for the paid
//! rows and PostgreSQL at `VENDBOX_TEST_DATABASE_URL` or 127.0.0.1:5432/test for the PostgreSQL
//! rows: those are skipped without them, and it says so).
//!
//! `VENDBOX_BENCH_PARTS` (comma-separated: durable, ceiling, contended, paid) runs only those rows besides
//! the baseline and price 0 (`paid` is x402 and credits, which are compared with price 0);
//! `VENDBOX_BENCH_STORES` (sqlite, postgresql) only those stores. Both default to all. A credits
//! run on SQLite alone: `VENDBOX_BENCH_PARTS=paid VENDBOX_BENCH_STORES=sqlite cargo bench -p
//! vendbox --bench locks`.

#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use vendbox_core::Usdc;
use vendbox_pay::client::Challenge;
use vendbox_pay::devchain::{self, ANVIL_KEY_0, ANVIL_KEY_1, Anvil};
use vendbox_pay::exact::unix_now as now;
use vendbox_pay::wire;
use vendbox_pay::{EvmAddress, Wallet};
use vendbox_server::config::FacilitatorKind;
use vendbox_server::{Config, Secrets, Server};
use vendbox_store::testkit::PostgresSchema;

#[path = "common/stats.rs"]
mod stats;

use stats::{Rounds, Summary};

const CLIENTS: usize = 64;
/// How long each window lets its clients run (tasks starting, connections opening) before it
/// counts their cycles.
const WINDOW_WARM_UP: Duration = Duration::from_millis(300);
/// How long each window counts cycles.
const WINDOW: Duration = Duration::from_millis(1500);
/// Windows per side for each row: a warm-up pair thrown away, then measured pairs.
const WINDOWS: Rounds = Rounds { warm_up: 1, measured: 4 };
/// Width of the row labels.
const LABEL_WIDTH: usize = 50;

/// One acquire + release cycle of client `client`, its `n`th.
type Cycle = Arc<dyn Fn(usize, u64) -> BoxFuture<'static, ()> + Send + Sync>;

/// What one window measured.
struct Window {
    /// The time of each cycle that ended while the window counted.
    cycles: Vec<Duration>,
    /// How long the window counted.
    elapsed: Duration,
}

/// Runs `cycle` from `CLIENTS` tasks for a window: its warm-up, then the counted time.
async fn drive(cycle: &Cycle) -> Window {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let (cycle, measuring, stop) = (cycle.clone(), measuring.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                cycle(client, n).await;
                n += 1;
                // The cycles that ended inside the counted time: their number over that time is
                // the rate, whenever they started.
                if measuring.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    times.push(started.elapsed());
                }
            }
            times
        }));
    }
    tokio::time::sleep(WINDOW_WARM_UP).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(WINDOW).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut cycles = Vec::new();
    for task in tasks {
        cycles.extend(task.await.unwrap());
    }
    Window { cycles, elapsed }
}

/// The windows of one side, pooled: cycles per second over all of them, and each cycle's time.
struct Figures {
    cycles_per_second: f64,
    latency: Summary,
}

impl Figures {
    fn of(what: &str, windows: Vec<Window>) -> Figures {
        let elapsed = windows.iter().map(|w| w.elapsed).sum();
        let cycles: Vec<Duration> = windows.into_iter().flat_map(|w| w.cycles).collect();
        let cycles_per_second = stats::per_second(cycles.len(), elapsed, &format!("{what}'s cycles"));
        Figures { cycles_per_second, latency: Summary::of(&format!("{what}'s cycle time"), cycles) }
    }
}

/// Measures `subject` in windows alternated with windows of `baseline`, and prints both and
/// their ratios.
async fn compare(label: &str, baseline: &Cycle, subject: &Cycle) {
    compare_with(BASELINE, baseline, label, subject).await;
}

/// As [`compare`], against another baseline, named `baseline_label`.
async fn compare_with(baseline_label: &str, baseline: &Cycle, label: &str, subject: &Cycle) {
    let windows = stats::alternate_async(WINDOWS, || drive(baseline), || drive(subject)).await;
    let base = Figures::of(baseline_label, windows.baseline);
    let figures = Figures::of(label, windows.subject);
    println!("{label}:");
    stats::header(LABEL_WIDTH);
    stats::row(baseline_label, LABEL_WIDTH, &base.latency);
    stats::row(label, LABEL_WIDTH, &figures.latency);
    stats::ratio_row("  cycle time, ratio to the baseline", LABEL_WIDTH, &figures.latency, &base.latency);
    let what = format!("{label}'s cycles per second over the baseline's");
    println!(
        "  cycles per second: baseline {:.0}, this {:.0}, {:.3} of the baseline",
        base.cycles_per_second,
        figures.cycles_per_second,
        stats::ratio(figures.cycles_per_second, base.cycles_per_second, &what)
    );
}

/// The label of the baseline's rows.
const BASELINE: &str = "Redis SET NX PX + compare-and-delete (baseline)";

/// A vendbox serving `config` on a runtime of its own thread; its URL.
fn serve(config: Config) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Named, so that a profile tells the server's threads from the clients'.
        let runtime =
            tokio::runtime::Builder::new_multi_thread().thread_name("vendbox").enable_all().build().unwrap();
        runtime.block_on(async move {
            let store = vendbox_store::open(config.store.database_url.as_deref(), &config.store.data_dir)
                .await
                .unwrap();
            let secrets =
                Secrets { signer: Some(Wallet::from_str(ANVIL_KEY_0).unwrap()), facilitator_auth: None };
            let server = Server::bind(&config, store, secrets).await.unwrap();
            tx.send(format!("http://{}", server.local_addr().unwrap())).unwrap();
            server.run(std::future::pending()).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

/// A chain with the token and one funded payer per client.
struct Chain {
    anvil: Anvil,
    asset: EvmAddress,
    payers: Vec<Wallet>,
}

async fn chain() -> Option<Chain> {
    let binary = devchain::find_anvil(&[])?;
    let anvil = Anvil::start(&binary, 31337).await.unwrap();
    let minter = Wallet::from_str(ANVIL_KEY_1).unwrap();
    let asset = devchain::deploy_token(&anvil.rpc_url, &minter, "USDC", "2").await.unwrap();
    let mut payers = Vec::new();
    for _ in 0..CLIENTS {
        let payer = Wallet::random();
        devchain::mint(&anvil.rpc_url, &minter, asset, payer.address(), 100_000_000).await.unwrap();
        payers.push(payer);
    }
    Some(Chain { anvil, asset, payers })
}

fn config(data_dir: &std::path::Path, database_url: Option<String>, chain: Option<&Chain>) -> Config {
    let mut config = Config::load(None, Vec::new()).unwrap();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.ssh.listen = "127.0.0.1:0".parse().unwrap();
    data_dir.clone_into(&mut config.store.data_dir);
    config.store.database_url = database_url;
    if let Some(chain) = chain {
        let p = &mut config.payments;
        p.network = "eip155:31337".into();
        p.asset = chain.asset.to_string();
        p.pay_to = Some(Wallet::random().address().to_string());
        p.rpc_url.clone_from(&chain.anvil.rpc_url);
        p.facilitator = FacilitatorKind::Builtin;
    } else {
        for offer in &mut config.offers {
            if offer.id.as_str().starts_with("h3retik-lock") {
                offer.price.base = Usdc::ZERO;
            }
        }
    }
    config
}

/// How the cycles of a row pay for their locks.
#[derive(Clone, Copy)]
enum Pay<'a> {
    /// The locks cost nothing.
    Free,
    /// Each acquisition carries an x402 payment signed by its client's payer.
    X402(&'a Chain),
    /// Each acquisition names this API key, whose wallet's credits pay.
    Credits(&'a str),
}

/// The `X-Auth-*` headers `wallet` signs for `method path` with `body` (the signed message of
/// `vendbox_service::auth::signed_message`).
fn signed(wallet: &Wallet, method: &str, path: &str, body: &str) -> Vec<(&'static str, String)> {
    use sha2::Digest as _;
    let timestamp = chrono::Utc::now().timestamp_millis();
    let nonce = format!("bench-{timestamp}-{}", rand::random::<u64>());
    let body_sha256 = hex::encode(sha2::Sha256::digest(body.as_bytes()));
    let message = vendbox_service::auth::signed_message(method, path, timestamp, &nonce, &body_sha256);
    vec![
        ("x-auth-address", wallet.address().to_string()),
        ("x-auth-chain", "base".into()),
        ("x-auth-signature", wallet.sign_personal_message(message.as_bytes())),
        ("x-auth-timestamp", timestamp.to_string()),
        ("x-auth-nonce", nonce),
        ("x-auth-sig-encoding", "hex".into()),
    ]
}

/// A new API key of `wallet` at the vendbox at `base`, whose credits were topped up by
/// `amount` USDC with one x402 payment.
async fn funded_key(base: &str, wallet: &Wallet, amount: &str) -> String {
    let http = reqwest::Client::new();
    let mut request =
        http.post(format!("{base}/compute/api-keys")).header("content-type", "application/json");
    for (name, value) in signed(wallet, "POST", "/compute/api-keys", "{}") {
        request = request.header(name, value);
    }
    let response = request.body("{}").send().await.unwrap();
    assert_eq!(response.status(), 201);
    let key = response.json::<Value>().await.unwrap()["api_key"].as_str().unwrap().to_owned();
    let topup = format!("{base}/v1/account/topup");
    let body = json!({ "amount": amount });
    let response = http.post(&topup).header("x-api-key", &key).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 402);
    let header = response.headers().get(wire::PAYMENT_REQUIRED).unwrap().to_str().unwrap().to_owned();
    let challenge = Challenge::read(Some(&header), &response.bytes().await.unwrap()).unwrap();
    let (name, value) = challenge.pay(wallet, now()).unwrap();
    let response =
        http.post(&topup).header("x-api-key", &key).header(name, value).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    key
}

/// The acquire + release cycle against a vendbox at `base`, paying as `pay` says.
async fn vendbox_cycle(base: String, pay: Pay<'_>, label: &str) -> Cycle {
    let http = reqwest::Client::builder().pool_max_idle_per_host(CLIENTS).build().unwrap();
    let acquire = format!("{base}/x402/locks/acquire");
    let release = format!("{base}/x402/locks/release");
    let (chain, key) = match pay {
        Pay::Free => (None, None),
        Pay::X402(chain) => (Some(chain), None),
        Pay::Credits(key) => (None, Some(key.to_owned())),
    };
    // A paying client that has seen the 402 once pays every later request at once.
    let challenge = if chain.is_some() {
        let response = http.post(&acquire).json(&json!({ "key": "bench:probe" })).send().await.unwrap();
        assert_eq!(response.status(), 402);
        let header = response.headers().get(wire::PAYMENT_REQUIRED).unwrap().to_str().unwrap().to_owned();
        Some(Arc::new(Challenge::read(Some(&header), &response.bytes().await.unwrap()).unwrap()))
    } else {
        None
    };
    let payers = Arc::new(chain.map(|c| c.payers.clone()).unwrap_or_default());
    let label = label.to_owned();
    Arc::new(move |client, n| {
        let (http, acquire, release) = (http.clone(), acquire.clone(), release.clone());
        let (challenge, payers, label, api_key) =
            (challenge.clone(), payers.clone(), label.clone(), key.clone());
        async move {
            let key = format!("bench:{label}:{client}:{}", n % 100);
            let mut request = http.post(&acquire).json(&json!({ "key": key, "ttl_seconds": 30 }));
            if let Some(challenge) = &challenge {
                let (name, value) = challenge.pay(&payers[client], now()).unwrap();
                request = request.header(name, value);
            }
            if let Some(api_key) = &api_key {
                request = request.header("x-api-key", api_key);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["acquired"], true, "{body}");
            let token = body["release_token"].as_str().unwrap();
            let response = release_request(&http, &release, &key, token).await;
            assert_eq!(response.status(), 200);
            response.bytes().await.unwrap();
        }
        .boxed()
    })
}

/// The cycle's release: `key` with `token`, posted to `url` as H3RETIK's release body.
async fn release_request(http: &reqwest::Client, url: &str, key: &str, token: &str) -> reqwest::Response {
    http.post(url).json(&json!({ "key": key, "release_token": token })).send().await.unwrap()
}

/// The HTTP ceiling: the cycle's two requests, with the same client, bodies and connections,
/// to a path vendbox's router answers 404: every layer a lock request passes, no handler, no
/// store. No lock cycle can run faster than this on the same host.
fn ceiling_cycle(base: String) -> Cycle {
    let http = reqwest::Client::builder().pool_max_idle_per_host(CLIENTS).build().unwrap();
    let (acquire, release) =
        (format!("{base}/bench/nowhere/acquire"), format!("{base}/bench/nowhere/release"));
    Arc::new(move |client, n| {
        let (http, acquire, release) = (http.clone(), acquire.clone(), release.clone());
        async move {
            let key = format!("bench:ceiling:{client}:{}", n % 100);
            let response =
                http.post(&acquire).json(&json!({ "key": key, "ttl_seconds": 30 })).send().await.unwrap();
            assert_eq!(response.status(), 404);
            response.bytes().await.unwrap();
            let response = release_request(&http, &release, &key, &"0".repeat(64)).await;
            assert_eq!(response.status(), 404);
            response.bytes().await.unwrap();
        }
        .boxed()
    })
}

/// Keys the contended row's clients share.
const CONTENDED_KEYS: usize = 8;

/// The contended cycle against a free vendbox at `base`: every client takes one of
/// `CONTENDED_KEYS` keys, waiting for it (`wait_seconds`) while another client holds it, and
/// releases it at once. A cycle's time is the wait plus the handover; cycles per second are
/// handovers per second.
fn contended_cycle(base: String, label: &str) -> Cycle {
    let http = reqwest::Client::builder().pool_max_idle_per_host(CLIENTS).build().unwrap();
    let label = label.to_owned();
    Arc::new(move |client, _n| {
        let (http, base, label) = (http.clone(), base.clone(), label.clone());
        async move {
            let key = format!("{base}/v1/locks/bench:{label}:{}", client % CONTENDED_KEYS);
            let response = http
                .post(format!("{key}?wait_seconds=60"))
                .json(&json!({ "ttl_seconds": 30 }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201, "a waiter was not served");
            let body: Value = response.json().await.unwrap();
            let token = body["release_token"].as_str().unwrap();
            let response = http.delete(&key).bearer_auth(token).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.bytes().await.unwrap();
        }
        .boxed()
    })
}

/// A `redis-server` of this run, on a free port, stopped by its pid when dropped.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start(fsync_always: bool) -> Option<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if fsync_always {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        let child = command.spawn().ok()?;
        let redis = Redis { child, port, _dir: dir };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > Duration::from_secs(10) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The same cycle on Redis: `SET key token NX PX 30000`, then delete it only if it still holds
/// our token (the compare-and-delete script Redis documents for locks).
async fn redis_cycle(redis: &Redis) -> Cycle {
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", redis.port)).unwrap();
    let mut connections = Vec::new();
    for _ in 0..CLIENTS {
        connections.push(client.get_multiplexed_async_connection().await.unwrap());
    }
    let connections = Arc::new(connections);
    let release = Arc::new(redis::Script::new(
        "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end",
    ));
    Arc::new(move |client, n| {
        let (connections, release) = (connections.clone(), release.clone());
        async move {
            let mut connection = connections[client].clone();
            let key = format!("bench:{client}:{}", n % 100);
            let token = format!("{client}-{n}-{}", rand::random::<u64>());
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(30_000)
                .query_async(&mut connection)
                .await
                .unwrap();
            assert_eq!(set.as_deref(), Some("OK"));
            let deleted: i64 = release.key(&key).arg(&token).invoke_async(&mut connection).await.unwrap();
            assert_eq!(deleted, 1);
        }
        .boxed()
    })
}

async fn run() {
    println!(
        "acquire + release cycles, {CLIENTS} concurrent clients; per row {} windows of {WINDOW:?} per side \
         in ABBA order after {} warm-up pair(s), each window after {WINDOW_WARM_UP:?} of running:",
        WINDOWS.measured, WINDOWS.warm_up
    );
    let redis_memory = Redis::start(false)
        .expect("cannot measure the baseline: redis-server cannot be started (apt install redis-server)");
    let baseline = redis_cycle(&redis_memory).await;
    if chosen("VENDBOX_BENCH_PARTS", "durable") {
        let redis_durable = Redis::start(true).expect("redis-server with appendfsync always did not start");
        compare("Redis, appendfsync always", &baseline, &redis_cycle(&redis_durable).await).await;
        drop(redis_durable);
    }

    let chain = if chosen("VENDBOX_BENCH_PARTS", "paid") { chain().await } else { None };
    if chain.is_none() && chosen("VENDBOX_BENCH_PARTS", "paid") {
        println!("  paid rows skipped: anvil is not installed (scripts/setup.sh)");
    }
    let schema =
        if chosen("VENDBOX_BENCH_STORES", "postgresql") { PostgresSchema::create().await } else { None };
    if schema.is_none() && chosen("VENDBOX_BENCH_STORES", "postgresql") {
        println!("  PostgreSQL rows skipped: no PostgreSQL at the test URL");
    }
    let dir = tempfile::tempdir().unwrap();
    let mut stores = Vec::new();
    if chosen("VENDBOX_BENCH_STORES", "sqlite") {
        stores.push(("SQLite", None));
    }
    if let Some(schema) = &schema {
        stores.push(("PostgreSQL", Some(schema.url())));
    }
    for (store, url) in &stores {
        let data = dir.path().join(format!("{store}-free"));
        let free = serve(config(&data, url.clone(), None));
        let label = format!("vendbox, price 0, {store}");
        let free_label = label.clone();
        let free_cycle = vendbox_cycle(free.clone(), Pay::Free, &label).await;
        if chosen("VENDBOX_BENCH_PARTS", "ceiling") && *store == "SQLite" {
            let label = "vendbox, the same two requests answered 404 (no handler)";
            compare(label, &baseline, &ceiling_cycle(free.clone())).await;
        }
        compare(&label, &baseline, &free_cycle).await;
        if chosen("VENDBOX_BENCH_PARTS", "contended") {
            let label = format!("vendbox, {CLIENTS} waiting on {CONTENDED_KEYS} keys, {store}");
            compare(&label, &baseline, &contended_cycle(free, &label)).await;
        }
        if let Some(chain) = &chain {
            let data = dir.path().join(format!("{store}-paid"));
            let paid = serve(config(&data, url.clone(), Some(chain)));
            let label = format!("vendbox, paid 0.0001 USDC (anvil), {store}");
            let x402_label = label.clone();
            let x402_cycle = vendbox_cycle(paid.clone(), Pay::X402(chain), &label).await;
            compare(&label, &baseline, &x402_cycle).await;
            // Credits: one top-up on chain (40 USDC of the first payer's 100, once per store),
            // then every lock from the balance. Compared with the baseline, and with the same
            // cycle at price 0 and paid with x402, in windows of their own.
            let key = funded_key(&paid, &chain.payers[0], "40").await;
            let label = format!("vendbox, paid 0.0001 USDC from credits, {store}");
            let credits_cycle = vendbox_cycle(paid, Pay::Credits(&key), &label).await;
            compare(&label, &baseline, &credits_cycle).await;
            compare_with(&free_label, &free_cycle, &label, &credits_cycle).await;
            compare_with(&x402_label, &x402_cycle, &label, &credits_cycle).await;
        }
    }
    drop(redis_memory);
    if let Some(chain) = chain {
        chain.anvil.stop().await;
    }
    if let Some(schema) = schema {
        schema.drop_schema().await;
    }
}

/// Whether `name` is among the comma-separated names in the environment variable `var` (all are
/// when it is not set).
fn chosen(var: &str, name: &str) -> bool {
    std::env::var(var).map_or(true, |names| names.split(',').any(|n| n.trim().eq_ignore_ascii_case(name)))
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name("clients")
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}
