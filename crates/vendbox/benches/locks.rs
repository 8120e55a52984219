//! Benchmark of Agent Lock: acquire + release cycles per second over HTTP from 64 concurrent
//! clients, each cycling on keys of its own, printed next to the same cycle on Redis
//! (`SET key token NX PX` + a compare-and-delete script) from 64 connections, measured in the
//! same run:
//! - vendbox at price 0 and paid (x402 on anvil, built-in facilitator), on SQLite and on
//!   PostgreSQL;
//! - Redis in memory, and Redis with `appendfsync always` (durable before it answers, as
//!   vendbox is).
//!
//! vendbox runs in this process on a runtime of its own; Redis is a `redis-server` started here
//! on a free port and stopped by its pid. Run: `cargo bench -p vendbox --bench locks` (needs
//! anvil for the paid rows, `redis-server`, and PostgreSQL at `VENDBOX_TEST_DATABASE_URL` or
//! 127.0.0.1:5432/test for the PostgreSQL rows; what is missing is skipped and said so).

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

use serde_json::{Value, json};
use vendbox_core::Usdc;
use vendbox_pay::alloy::primitives::{Address, U256};
use vendbox_pay::alloy::signers::local::PrivateKeySigner;
use vendbox_pay::client::Challenge;
use vendbox_pay::devchain::{self, ANVIL_KEY_0, ANVIL_KEY_1, Anvil};
use vendbox_pay::exact::unix_now as now;
use vendbox_pay::wire;
use vendbox_server::config::FacilitatorKind;
use vendbox_server::{Config, Secrets, Server};
use vendbox_store::testkit::PostgresSchema;

const CLIENTS: usize = 64;
const WARM_UP: Duration = Duration::from_millis(500);
const MEASURE: Duration = Duration::from_secs(5);

/// What one configuration managed.
struct Figures {
    cycles_per_second: f64,
    p50: Duration,
    p99: Duration,
}

/// Runs `cycle(client, n)` from `CLIENTS` tasks for the warm-up and then the measured time.
async fn drive<F, Fut>(cycle: F) -> Figures
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let cycle = Arc::new(cycle);
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
                if measuring.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    times.push(started.elapsed());
                }
            }
            times
        }));
    }
    tokio::time::sleep(WARM_UP).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(MEASURE).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut times = Vec::new();
    for task in tasks {
        times.extend(task.await.unwrap());
    }
    times.sort();
    let at = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    Figures { cycles_per_second: times.len() as f64 / elapsed.as_secs_f64(), p50: at(0.5), p99: at(0.99) }
}

/// A vendbox serving `config` on a runtime of its own thread; its URL.
fn serve(config: Config) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let store = vendbox_store::open(config.store.database_url.as_deref(), &config.store.data_dir)
                .await
                .unwrap();
            let secrets = Secrets {
                signer: Some(PrivateKeySigner::from_str(ANVIL_KEY_0).unwrap()),
                facilitator_auth: None,
            };
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
    asset: Address,
    payers: Vec<PrivateKeySigner>,
}

async fn chain() -> Option<Chain> {
    let binary = devchain::find_anvil(&[])?;
    let anvil = Anvil::start(&binary, 31337).await.unwrap();
    let minter = PrivateKeySigner::from_str(ANVIL_KEY_1).unwrap();
    let asset = devchain::deploy_token(&anvil.rpc_url, &minter, "USDC", "2").await.unwrap();
    let mut payers = Vec::new();
    for _ in 0..CLIENTS {
        let payer = PrivateKeySigner::random();
        devchain::mint(&anvil.rpc_url, &minter, asset, payer.address(), U256::from(100_000_000u64))
            .await
            .unwrap();
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
        p.pay_to = Some(PrivateKeySigner::random().address().to_string());
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

/// Acquire + release cycles against a vendbox at `base`; paid when `chain` is given.
async fn vendbox_cycles(base: String, chain: Option<&Chain>, label: &str) -> Figures {
    let http = reqwest::Client::builder().pool_max_idle_per_host(CLIENTS).build().unwrap();
    let acquire = format!("{base}/x402/locks/acquire");
    let release = format!("{base}/x402/locks/release");
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
    drive(move |client, n| {
        let (http, acquire, release) = (http.clone(), acquire.clone(), release.clone());
        let (challenge, payers, label) = (challenge.clone(), payers.clone(), label.clone());
        async move {
            let key = format!("bench:{label}:{client}:{}", n % 100);
            let mut request = http.post(&acquire).json(&json!({ "key": key, "ttl_seconds": 30 }));
            if let Some(challenge) = &challenge {
                let (name, value) = challenge.pay(&payers[client], now()).unwrap();
                request = request.header(name, value);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["acquired"], true, "{body}");
            let token = body["release_token"].as_str().unwrap();
            let response = http
                .post(&release)
                .json(&json!({ "key": key, "release_token": token }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.bytes().await.unwrap();
        }
    })
    .await
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
async fn redis_cycles(redis: &Redis) -> Figures {
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", redis.port)).unwrap();
    let mut connections = Vec::new();
    for _ in 0..CLIENTS {
        connections.push(client.get_multiplexed_async_connection().await.unwrap());
    }
    let connections = Arc::new(connections);
    let release = Arc::new(redis::Script::new(
        "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end",
    ));
    drive(move |client, n| {
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
    })
    .await
}

fn row(label: &str, figures: &Figures, baseline: Option<f64>) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let ratio = baseline.map_or_else(String::new, |b| format!("{:>8.3}x", figures.cycles_per_second / b));
    println!(
        "  {label:<44} {:>9.0} cycles/s   p50 {:>7.2} ms   p99 {:>7.2} ms   {ratio}",
        figures.cycles_per_second,
        ms(figures.p50),
        ms(figures.p99)
    );
}

async fn run() {
    println!("acquire + release cycles, {CLIENTS} concurrent clients, {MEASURE:?} each:");
    let redis_memory = Redis::start(false);
    let Some(redis_memory) = redis_memory else {
        println!("  skipped: redis-server cannot be started (apt install redis-server)");
        return;
    };
    let baseline = redis_cycles(&redis_memory).await;
    drop(redis_memory);
    row("Redis SET NX PX + compare-and-delete", &baseline, None);
    let base = Some(baseline.cycles_per_second);
    if let Some(redis_durable) = Redis::start(true) {
        row("Redis, appendfsync always", &redis_cycles(&redis_durable).await, base);
    }
    println!("  (the last column: vendbox's cycles per second over Redis in memory)");

    let chain = chain().await;
    if chain.is_none() {
        println!("  paid rows skipped: anvil is not installed (scripts/setup.sh)");
    }
    let schema = PostgresSchema::create().await;
    if schema.is_none() {
        println!("  PostgreSQL rows skipped: no PostgreSQL at the test URL");
    }
    let dir = tempfile::tempdir().unwrap();
    let mut stores = vec![("SQLite", None)];
    if let Some(schema) = &schema {
        stores.push(("PostgreSQL", Some(schema.url())));
    }
    for (store, url) in &stores {
        let data = dir.path().join(format!("{store}-free"));
        let free = serve(config(&data, url.clone(), None));
        let label = format!("vendbox, price 0, {store}");
        row(&label, &vendbox_cycles(free, None, &label).await, base);
        if let Some(chain) = &chain {
            let data = dir.path().join(format!("{store}-paid"));
            let paid = serve(config(&data, url.clone(), Some(chain)));
            let label = format!("vendbox, paid 0.0001 USDC (anvil), {store}");
            row(&label, &vendbox_cycles(paid, Some(chain), &label).await, base);
        }
    }
    if let Some(chain) = chain {
        chain.anvil.stop().await;
    }
    if let Some(schema) = schema {
        schema.drop_schema().await;
    }
}

fn main() {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(run());
}
