//! Benchmark of x402 payments, printed as ratios against baselines measured in the same run:
//! - the off-chain check of one payment (decode the header, check terms, recover the EIP-3009
//!   signer) against a bare secp256k1 recovery with `k256`, on one core: median, p90 and p99 of
//!   each and as a ratio, then checks per second; and the bare recovery vendbox uses
//!   (libsecp256k1) against `k256`'s on the same signatures;
//! - the latency the payment gate adds to `GET /catalog`: the same route paid (verify on chain,
//!   reserve, settle on anvil, record) against free (price 0), one request at a time: median,
//!   p90 and p99 of each and as a ratio;
//! - paid throughput on `GET /catalog` with C requests in flight (C = 1, 8, 32, 128 by default):
//!   pre-signed payments, each verified, reserved, settled on anvil and recorded, against the free
//!   route at the same C: paid requests per second, p50 and p99, and the median of the first
//!   500 payments against the last 500 (a settlement path that slows as it works shows there);
//!   and the chain's own slowing next to it: the median time anvil takes to mine a block of one
//!   plain transfer, before the level and after it.
//! - MPP against x402 on the same paid `GET /catalog`, C requests in flight (C = 1, 8, 32 by
//!   default): MPP credentials (one challenge each, fetched and signed beforehand) against x402
//!   payments, each verified, reserved, settled on anvil and recorded: requests per second, p50
//!   and p99 of each, and MPP's rate as a share of x402's.
//! - batched settlement against a transaction per payment on the same paid `GET /catalog`, C in
//!   flight: requests per second, p50, p99 and the settlement transactions each side sent, and
//!   the batched side's rate against the single side's;
//! - gas per payment from real receipts: a transaction per payment against batches of up to 10
//!   and 50 (one `aggregate3` transaction each), and each as a ratio of the single transfer's.
//! - vendbox against the official Python reference stack on the same paid `GET /catalog`
//!   (0.01 USDC), C requests in flight (C = 8, 32 by default): the same pre-signed payments and
//!   client code on both, each side on a fresh anvil chain. The reference is
//!   `tests/clients/reference_server.py`, started and stopped (by pid) here: x402 2.25.0's FastAPI
//!   middleware and `x402ResourceServer` under uvicorn, settling through `HTTPFacilitatorClient`
//!   with the official facilitator (`x402FacilitatorSync`, in `tests/clients/facilitator.py`).
//!   Paid requests per second, p50 and p99 of each, and vendbox's rate as a multiple of the
//!   reference's. After each side the payee's and the payer's token balances must have moved by
//!   the price times every paid answer, or the bench fails.
//!
//! Each pair runs warm-up rounds first and throws them away, then alternates baseline and subject
//! in ABBA order (see `common/stats.rs`); every p99 comes from at least 100 samples.
//!
//! Run: `cargo bench -p vendbox --bench payments` (needs anvil: `scripts/setup.sh` installs it;
//! without it the bench fails rather than leave the gate unmeasured). For a quick run:
//! `VENDBOX_BENCH_PAYMENTS=200` (payments per level, default 2,000),
//! `VENDBOX_BENCH_CONCURRENCY=1,8,32` (the levels), `VENDBOX_BENCH_PARTS=throughput` (any of
//! `signatures`, `gate`, `throughput`, `mpp`, `batched`, `gas`, `reference`; all by default),
//! `VENDBOX_BENCH_REFERENCE_PAYMENTS=100` (payments per level to the reference stack, default
//! 200 and at most `VENDBOX_BENCH_PAYMENTS`). The `reference` part needs python3 with
//! `tests/clients/requirements.txt` installed (`scripts/setup.sh` does).
//! `VENDBOX_BENCH_SETTLE_BATCH=50` has the vendboxes of the `gate`, `throughput`, `mpp` and
//! `reference` parts settle up to 50 payments a transaction (`payments.settle_batch`).

#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::str::FromStr;
use std::time::{Duration, Instant};

use vendbox_core::Usdc;
use vendbox_pay::client::{self, Challenge};
use vendbox_pay::devchain::{self, ANVIL_KEY_0, ANVIL_KEY_1, Anvil};
use vendbox_pay::exact::{self, Acceptance, Charge, Requirements, SentPayment, unix_now as now};
use vendbox_pay::mpp::client::{self as mpp, NonceDerivation};
use vendbox_pay::{EvmAddress, Network, Wallet, wire};
use vendbox_server::config::FacilitatorKind;
use vendbox_server::{Config, Secrets, Server};

#[path = "common/stats.rs"]
mod stats;

use stats::{Rounds, Summary};

/// Signature checks per side: one check per round.
const SIGNATURES: Rounds = Rounds { warm_up: 300, measured: 3000 };
/// Requests per side through the payment gate; each paid one settles on anvil.
const REQUESTS: Rounds = Rounds { warm_up: 20, measured: 200 };
/// Width of the row labels.
const LABEL_WIDTH: usize = 48;
/// What each payer is minted, in atomic units.
const PAYER_FUNDS: u64 = 1_000_000_000_000;

fn requirements() -> Requirements {
    Requirements::new(
        Acceptance::new(
            Network::new(84532),
            EvmAddress::repeat_byte(0xaa),
            "USDC",
            "2",
            EvmAddress::repeat_byte(0xbb),
            300,
        ),
        Charge {
            amount: Usdc(10_000),
            resource: "http://127.0.0.1/catalog".into(),
            description: "bench".into(),
            mime_type: "application/json".into(),
            kind: vendbox_pay::ChargeKind::Other,
        },
    )
}

fn signature_checks() {
    let r = requirements();
    let signer = Wallet::random();
    let count = SIGNATURES.warm_up + SIGNATURES.measured;
    let headers: Vec<String> =
        (0..count).map(|_| client::pay_v2(&signer, &r.v2(), &r.resource(), now()).unwrap()).collect();
    let decoded: Vec<_> = headers
        .iter()
        .map(|h| {
            let p: wire::PaymentPayloadV2 = wire::decode_header(h).unwrap();
            let auth = vendbox_pay::eip3009::Authorization::from_wire(&p.payload.authorization).unwrap();
            let sig = vendbox_pay::eip3009::parse_signature(&p.payload.signature).unwrap();
            (auth.signing_hash(&r.acceptance.domain()), sig)
        })
        .collect();

    // One check per sample, each side on payments of its own.
    let (mut bare_inputs, mut full_inputs) = (decoded.iter(), headers.iter());
    let times = stats::alternate(
        SIGNATURES,
        || {
            let (hash, sig) = bare_inputs.next().unwrap();
            let started = Instant::now();
            assert_eq!(EvmAddress::from(sig.recover_address_from_prehash(hash).unwrap()), signer.address());
            started.elapsed()
        },
        || {
            let header = full_inputs.next().unwrap();
            let started = Instant::now();
            let sent = SentPayment::from_headers(Some(header), None).unwrap().unwrap();
            exact::check(sent, &r, now()).unwrap();
            started.elapsed()
        },
    );
    let bare = Summary::of("bare secp256k1 recoveries", times.baseline);
    let full = Summary::of("full off-chain payment checks", times.subject);
    println!(
        "signature checks, one core, one check per sample, {} per side in ABBA order after {} \
         warm-up rounds:",
        SIGNATURES.measured, SIGNATURES.warm_up
    );
    stats::header(LABEL_WIDTH);
    stats::row("bare recovery with k256 (baseline)", LABEL_WIDTH, &bare);
    stats::row("full off-chain payment check", LABEL_WIDTH, &full);
    stats::ratio_row("  ratio to the baseline", LABEL_WIDTH, &full, &bare);
    let bare_rate = stats::per_second(bare.count(), bare.total(), "bare secp256k1 recoveries per second");
    let full_rate = stats::per_second(full.count(), full.total(), "full payment checks per second");
    println!(
        "  checks per second: baseline {bare_rate:.0}, vendbox {full_rate:.0}, {:.2} of the baseline",
        stats::ratio(full_rate, bare_rate, "the ratio of checks per second")
    );

    // The recovery the full check uses (libsecp256k1) against k256's, on the same signatures.
    let (mut k256_inputs, mut libsecp_inputs) = (decoded.iter().cycle(), decoded.iter().cycle().skip(1));
    let times = stats::alternate(
        SIGNATURES,
        || {
            let (hash, sig) = k256_inputs.next().unwrap();
            let started = Instant::now();
            assert_eq!(EvmAddress::from(sig.recover_address_from_prehash(hash).unwrap()), signer.address());
            started.elapsed()
        },
        || {
            let (hash, sig) = libsecp_inputs.next().unwrap();
            let started = Instant::now();
            assert_eq!(
                vendbox_pay::eip3009::recover_address(sig, hash).map(EvmAddress::from),
                Some(signer.address())
            );
            started.elapsed()
        },
    );
    let k256 = Summary::of("k256 recoveries", times.baseline);
    let libsecp = Summary::of("libsecp256k1 recoveries", times.subject);
    stats::row("bare recovery with k256 (baseline)", LABEL_WIDTH, &k256);
    stats::row("bare recovery with libsecp256k1 (vendbox's)", LABEL_WIDTH, &libsecp);
    stats::ratio_row("  ratio to the baseline", LABEL_WIDTH, &libsecp, &k256);
    let k256_rate = stats::per_second(k256.count(), k256.total(), "k256 recoveries per second");
    let libsecp_rate =
        stats::per_second(libsecp.count(), libsecp.total(), "libsecp256k1 recoveries per second");
    println!(
        "  recoveries per second: k256 {k256_rate:.0}, libsecp256k1 {libsecp_rate:.0}, {:.2}x",
        stats::ratio(libsecp_rate, k256_rate, "the ratio of recoveries per second")
    );
}

async fn serve(config: &Config) -> String {
    serve_until(config, std::future::pending()).await.0
}

/// A vendbox serving `config` until `shutdown` resolves: its base URL, and its task.
async fn serve_until(
    config: &Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (String, tokio::task::JoinHandle<std::io::Result<()>>) {
    let store = vendbox_store::open(None, &config.store.data_dir).await.unwrap();
    let secrets = Secrets { signer: Some(Wallet::from_str(ANVIL_KEY_0).unwrap()), facilitator_auth: None };
    let server = Server::bind(config, store, secrets).await.unwrap();
    let url = format!("http://{}", server.local_addr().unwrap());
    (url, tokio::spawn(server.run(shutdown)))
}

/// `GET url`, with a payment header when given; panics unless it answers 200.
async fn get_catalog(http: &reqwest::Client, url: &str, payment: Option<(&'static str, String)>) {
    let mut request = http.get(url);
    if let Some((name, value)) = payment {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    // What a refused payment says about itself: x402 v2 puts the reason in these headers.
    let said: Vec<String> = [wire::PAYMENT_REQUIRED, wire::PAYMENT_RESPONSE]
        .into_iter()
        .filter_map(|name| {
            let value = response.headers().get(name)?.to_str().ok()?;
            let decoded = wire::decode_header::<serde_json::Value>(value).ok()?;
            Some(format!("{name}: {decoded}"))
        })
        .collect();
    let body = response.bytes().await.unwrap();
    assert_eq!(status, 200, "GET {url}: {} {}", String::from_utf8_lossy(&body), said.join("; "));
}

/// A fresh anvil with the token ("USDC", "2") deployed, a payer holding a million of it, and
/// Multicall3 at its canonical address.
async fn token_chain() -> (Anvil, EvmAddress, Wallet) {
    let binary = devchain::find_anvil(&[])
        .expect("cannot measure the payment gate: anvil is not installed (scripts/setup.sh installs it)");
    let anvil = Anvil::start(&binary, 31337).await.unwrap();
    let minter = Wallet::from_str(ANVIL_KEY_1).unwrap();
    let asset = devchain::deploy_token(&anvil.rpc_url, &minter, "USDC", "2").await.unwrap();
    let payer = Wallet::random();
    devchain::mint(&anvil.rpc_url, &minter, asset, payer.address(), PAYER_FUNDS).await.unwrap();
    devchain::place_multicall(&anvil.rpc_url).await.unwrap();
    (anvil, asset, payer)
}

/// vendbox on `anvil`'s token with the built-in facilitator, paid to `pay_to`, its data in `dir`.
fn vendbox_config(anvil: &Anvil, asset: EvmAddress, pay_to: EvmAddress, dir: &std::path::Path) -> Config {
    let mut config = Config::load(None, Vec::new()).unwrap();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.ssh.listen = "127.0.0.1:0".parse().unwrap();
    let p = &mut config.payments;
    p.network = format!("eip155:{}", anvil.chain_id);
    p.asset = asset.to_string();
    p.pay_to = Some(pay_to.to_string());
    p.rpc_url.clone_from(&anvil.rpc_url);
    p.facilitator = FacilitatorKind::Builtin;
    p.settle_batch = settle_batch();
    dir.clone_into(&mut config.store.data_dir);
    config
}

/// The most one settlement transaction holds, from `VENDBOX_BENCH_SETTLE_BATCH` (default 1: a
/// transaction per payment, vendbox's default).
fn settle_batch() -> usize {
    std::env::var("VENDBOX_BENCH_SETTLE_BATCH")
        .map_or(1, |v| v.parse().expect("VENDBOX_BENCH_SETTLE_BATCH: the most a settlement batch holds"))
}

/// The x402 challenge of the 402 that `GET url` answers without a payment.
async fn challenge(url: &str) -> Challenge {
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), 402, "GET {url} without a payment");
    let header = response
        .headers()
        .get(wire::PAYMENT_REQUIRED)
        .unwrap_or_else(|| panic!("GET {url}: the 402 has no {} header", wire::PAYMENT_REQUIRED))
        .to_str()
        .unwrap()
        .to_owned();
    Challenge::read(Some(&header), &response.bytes().await.unwrap()).unwrap()
}

/// anvil with the token, a funded payer, and two vendboxes selling `GET /catalog` on it: one at
/// its price, one free (the baseline).
struct Shops {
    anvil: Anvil,
    /// `GET /catalog` of the vendbox that charges.
    paid: String,
    /// `GET /catalog` of the vendbox that gives it away.
    free: String,
    challenge: Challenge,
    payer: Wallet,
    /// Their data directories, removed when dropped.
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Shops {
    /// Shops settling as `VENDBOX_BENCH_SETTLE_BATCH` says.
    async fn open() -> Shops {
        Shops::open_with(settle_batch()).await
    }

    /// Shops whose paid vendbox settles up to `settle_batch` payments in one transaction.
    async fn open_with(settle_batch: usize) -> Shops {
        let (anvil, asset, payer) = token_chain().await;
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut config = vendbox_config(&anvil, asset, Wallet::random().address(), dirs.0.path());
        config.payments.settle_batch = settle_batch;
        let paid = format!("{}/catalog", serve(&config).await);
        config.store.data_dir = dirs.1.path().to_owned();
        for offer in &mut config.offers {
            if offer.id.as_str() == "vpsagent-catalog" {
                offer.price.base = Usdc::ZERO;
            }
        }
        let free = format!("{}/catalog", serve(&config).await);
        let challenge = challenge(&paid).await;
        Shops { anvil, paid, free, challenge, payer, _dirs: dirs }
    }

    /// `count` payments for `GET /catalog`, signed now.
    fn payments(&self, count: usize) -> Vec<(&'static str, String)> {
        (0..count).map(|_| self.challenge.pay(&self.payer, now()).unwrap()).collect()
    }
    /// `count` MPP credentials for `GET /catalog`: a challenge each (one pays once), signed now.
    async fn mpp_payments(&self, count: usize) -> Vec<(&'static str, String)> {
        let http = reqwest::Client::new();
        let mut credentials = Vec::with_capacity(count);
        for _ in 0..count {
            let response = http.get(&self.paid).send().await.unwrap();
            let offer = response
                .headers()
                .get_all("www-authenticate")
                .iter()
                .flat_map(|v| mpp::parse_challenges(v.to_str().unwrap()).unwrap())
                .next()
                .expect("the 402 offers MPP");
            let credential =
                mpp::pay(&self.payer, &offer, "USDC", "2", NonceDerivation::Concatenated).unwrap();
            credentials.push(("authorization", credential));
        }
        credentials
    }
}

async fn gate_latency(shops: &Shops) {
    let http = reqwest::Client::new();
    let mut payments = shops.payments(REQUESTS.warm_up + REQUESTS.measured).into_iter();
    let times = stats::alternate_async(
        REQUESTS,
        || stats::timed(get_catalog(&http, &shops.free, None)),
        || stats::timed(get_catalog(&http, &shops.paid, Some(payments.next().unwrap()))),
    )
    .await;
    let free = Summary::of("free GET /catalog", times.baseline);
    let paid = Summary::of("paid GET /catalog", times.subject);
    println!(
        "payment gate on GET /catalog, one request at a time, {} per side in ABBA order after {} \
         warm-up rounds (anvil, built-in facilitator, SQLite):",
        REQUESTS.measured, REQUESTS.warm_up
    );
    stats::header(LABEL_WIDTH);
    stats::row("free, price 0 (baseline)", LABEL_WIDTH, &free);
    stats::row("paid: verify, reserve, settle on anvil, record", LABEL_WIDTH, &paid);
    stats::ratio_row("  ratio to the baseline", LABEL_WIDTH, &paid, &free);
    println!(
        "  added by the gate at the median: {}",
        stats::duration(paid.median().saturating_sub(free.median())).trim_start()
    );
}

/// What one level of concurrency measured on one side.
struct Level {
    /// Requests per second over the whole level.
    rate: f64,
    all: Summary,
    /// The first and the last `edge` requests, in the order they were sent.
    first: Summary,
    last: Summary,
}

/// Sends `requests` (each `None` for the free route, or a payment) to `url` with `concurrency`
/// in flight, in order; every answer must be 200.
async fn level(
    http: &reqwest::Client,
    url: &str,
    requests: Vec<Option<(&'static str, String)>>,
    concurrency: usize,
    edge: usize,
) -> Level {
    let count = requests.len();
    let queue = std::sync::Mutex::new(requests.into_iter().enumerate());
    let started = Instant::now();
    let workers = (0..concurrency).map(|_| async {
        let mut times = Vec::new();
        loop {
            let next = queue.lock().unwrap().next();
            let Some((index, payment)) = next else { break };
            times.push((index, stats::timed(get_catalog(http, url, payment)).await));
        }
        times
    });
    let mut times: Vec<_> = futures_util::future::join_all(workers).await.into_iter().flatten().collect();
    let elapsed = started.elapsed();
    times.sort_unstable_by_key(|(index, _)| *index);
    let pick = |range: std::ops::Range<usize>| times[range].iter().map(|(_, t)| *t).collect::<Vec<_>>();
    Level {
        rate: stats::per_second(count, elapsed, "requests per second"),
        all: Summary::of("requests", pick(0..count)),
        first: Summary::of("the first requests", pick(0..edge)),
        last: Summary::of("the last requests", pick(count - edge..count)),
    }
}

/// Payments per level, from `VENDBOX_BENCH_PAYMENTS` (default 2,000).
fn payments_per_level() -> usize {
    std::env::var("VENDBOX_BENCH_PAYMENTS")
        .map_or(2000, |v| v.parse().expect("VENDBOX_BENCH_PAYMENTS: a count"))
}

/// The levels of concurrency, from `VENDBOX_BENCH_CONCURRENCY` (default 1,8,32,128).
fn concurrency_levels() -> Vec<usize> {
    std::env::var("VENDBOX_BENCH_CONCURRENCY").map_or_else(
        |_| vec![1, 8, 32, 128],
        |v| v.split(',').map(|c| c.trim().parse().expect("VENDBOX_BENCH_CONCURRENCY: counts")).collect(),
    )
}

async fn throughput() {
    let count = payments_per_level();
    assert!(count >= 2, "VENDBOX_BENCH_PAYMENTS must be at least 2");
    let edge = (count / 2).min(500);
    let http = reqwest::Client::new();
    println!(
        "paid throughput on GET /catalog, {count} pre-signed payments per level against {count} \
         free requests at the same concurrency (anvil with automine, built-in facilitator, SQLite; \
         each level on a chain and vendboxes of its own, since anvil slows as its chain grows); \
         first and last: the medians of the first and last {edge} sent:"
    );
    println!(
        "  {:>4}  {:<5} {:>9}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}",
        "C", "side", "req/s", "p50", "p99", "first p50", "last p50", "last/first"
    );
    for (round, concurrency) in concurrency_levels().into_iter().enumerate() {
        let shops = Shops::open().await;
        // Warm-up: connections opened, caches filled; thrown away.
        let warm = (2 * concurrency).max(10);
        level(&http, &shops.free, vec![None; warm], concurrency, warm / 2).await;
        let warm_paid = shops.payments(warm).into_iter().map(Some).collect();
        level(&http, &shops.paid, warm_paid, concurrency, warm / 2).await;

        let payments = shops.payments(count).into_iter().map(Some).collect();
        let chain_before = chain_block_time(&shops.anvil.rpc_url, CHAIN_PROBES).await;
        // Alternate which side runs first, so that neither always runs on a quieter machine.
        let (free, paid) = if round % 2 == 0 {
            let free = level(&http, &shops.free, vec![None; count], concurrency, edge).await;
            (free, level(&http, &shops.paid, payments, concurrency, edge).await)
        } else {
            let paid = level(&http, &shops.paid, payments, concurrency, edge).await;
            (level(&http, &shops.free, vec![None; count], concurrency, edge).await, paid)
        };
        for (side, l) in [("free", &free), ("paid", &paid)] {
            println!(
                "  {concurrency:>4}  {side:<5} {:>9.1}  {}  {}  {}  {}  {:>9.2}x",
                l.rate,
                stats::duration(l.all.median()),
                l.all.p99().map_or_else(|| "        --".to_owned(), stats::duration),
                stats::duration(l.first.median()),
                stats::duration(l.last.median()),
                stats::ratio(
                    l.last.median().as_secs_f64(),
                    l.first.median().as_secs_f64(),
                    "last against first"
                ),
            );
        }
        let chain_after = chain_block_time(&shops.anvil.rpc_url, CHAIN_PROBES).await;
        println!(
            "  {concurrency:>4}  paid requests per second: {:.2}% of the free route's",
            100.0 * stats::ratio(paid.rate, free.rate, "paid against free requests per second")
        );
        println!(
            "  {concurrency:>4}  the chain alone, a block of one plain transfer (median of {CHAIN_PROBES}): \
             {} before the level, {} after: {:.2}x",
            stats::duration(chain_before),
            stats::duration(chain_after),
            stats::ratio(chain_after.as_secs_f64(), chain_before.as_secs_f64(), "chain after against before"),
        );
        shops.anvil.stop().await;
    }
}

/// MPP-paid against x402-paid requests per second on the same paid `GET /catalog`.
async fn mpp_against_x402() {
    let count = payments_per_level();
    assert!(count >= 2, "VENDBOX_BENCH_PAYMENTS must be at least 2");
    let edge = (count / 2).min(500);
    let levels =
        std::env::var("VENDBOX_BENCH_CONCURRENCY").map_or_else(|_| vec![1, 8, 32], |_| concurrency_levels());
    let http = reqwest::Client::new();
    println!(
        "MPP against x402 on the same paid GET /catalog, {count} pre-signed payments of each per level \
         (MPP: one challenge each, fetched beforehand; anvil with automine, built-in facilitator, SQLite; \
         each level on a chain and vendboxes of its own):"
    );
    println!("  {:>4}  {:<5} {:>9}  {:>10}  {:>10}", "C", "side", "req/s", "p50", "p99");
    for (round, concurrency) in levels.into_iter().enumerate() {
        let shops = Shops::open().await;
        let warm = (2 * concurrency).max(10);
        let warm_x402 = shops.payments(warm).into_iter().map(Some).collect();
        level(&http, &shops.paid, warm_x402, concurrency, warm / 2).await;
        let warm_mpp = shops.mpp_payments(warm).await.into_iter().map(Some).collect();
        level(&http, &shops.paid, warm_mpp, concurrency, warm / 2).await;

        let x402_payments = shops.payments(count).into_iter().map(Some).collect();
        let mpp_payments = shops.mpp_payments(count).await.into_iter().map(Some).collect();
        let (x402, mpp) = if round % 2 == 0 {
            let x402 = level(&http, &shops.paid, x402_payments, concurrency, edge).await;
            (x402, level(&http, &shops.paid, mpp_payments, concurrency, edge).await)
        } else {
            let mpp = level(&http, &shops.paid, mpp_payments, concurrency, edge).await;
            (level(&http, &shops.paid, x402_payments, concurrency, edge).await, mpp)
        };
        for (side, l) in [("x402", &x402), ("mpp", &mpp)] {
            println!(
                "  {concurrency:>4}  {side:<5} {:>9.1}  {}  {}",
                l.rate,
                stats::duration(l.all.median()),
                l.all.p99().map_or_else(|| "        --".to_owned(), stats::duration),
            );
        }
        println!(
            "  {concurrency:>4}  MPP-paid requests per second: {:.2}% of x402's",
            100.0 * stats::ratio(mpp.rate, x402.rate, "MPP against x402 requests per second")
        );
        shops.anvil.stop().await;
    }
}

/// Paid throughput with each payment settled in a transaction of its own against settlements
/// batched (up to 50 a transaction), on the same paid `GET /catalog`, each on a chain of its own.
async fn batched_against_single() {
    let count = payments_per_level();
    assert!(count >= 2, "VENDBOX_BENCH_PAYMENTS must be at least 2");
    let edge = (count / 2).min(500);
    let http = reqwest::Client::new();
    println!(
        "batched settlement against a transaction per payment on paid GET /catalog, {count} \
         pre-signed payments per side and level (anvil with automine, built-in facilitator, \
         SQLite; each side on a chain and vendbox of its own):"
    );
    println!(
        "  {:>4}  {:<8} {:>9}  {:>10}  {:>10}  {:>12}",
        "C", "side", "req/s", "p50", "p99", "transactions"
    );
    for (round, concurrency) in concurrency_levels().into_iter().enumerate() {
        let mut sides = Vec::new();
        let order: [usize; 2] = if round % 2 == 0 { [1, BATCH] } else { [BATCH, 1] };
        for most in order {
            let shops = Shops::open_with(most).await;
            let warm = (2 * concurrency).max(10);
            let warm_paid = shops.payments(warm).into_iter().map(Some).collect();
            level(&http, &shops.paid, warm_paid, concurrency, warm / 2).await;
            let before = block_number(&shops.anvil.rpc_url).await;
            let payments = shops.payments(count).into_iter().map(Some).collect();
            let measured = level(&http, &shops.paid, payments, concurrency, edge).await;
            // anvil mines a block per transaction: the blocks are the settlement transactions.
            let transactions = block_number(&shops.anvil.rpc_url).await - before;
            sides.push((most, measured, transactions));
            shops.anvil.stop().await;
        }
        sides.sort_by_key(|(most, _, _)| *most);
        for (most, l, transactions) in &sides {
            let side = if *most == 1 { "single" } else { "batched" };
            println!(
                "  {concurrency:>4}  {side:<8} {:>9.1}  {}  {}  {transactions:>12}",
                l.rate,
                stats::duration(l.all.median()),
                l.all.p99().map_or_else(|| "        --".to_owned(), stats::duration),
            );
        }
        println!(
            "  {concurrency:>4}  batched requests per second: {:.2}x a transaction per payment",
            stats::ratio(sides[1].1.rate, sides[0].1.rate, "batched against single requests per second")
        );
    }
}

/// The most a batch holds in the batched throughput rows.
const BATCH: usize = 50;

/// Blocks of one plain transfer timed at each end of a throughput level.
const CHAIN_PROBES: usize = 25;

/// The chain's own time for a block, as its state is now: the median of `count` plain
/// transfers of 1 wei between two of anvil's own accounts, each sent with
/// `eth_sendTransactionSync` (answered once it is mined). Such a transfer adds no state, so
/// what it takes grows only with what the chain already holds.
async fn chain_block_time(rpc_url: &str, count: usize) -> Duration {
    let http = reqwest::Client::new();
    let accounts = rpc(&http, rpc_url, "eth_accounts", serde_json::json!([])).await;
    let accounts = accounts.as_array().unwrap();
    // The last two: neither sends settlements nor mints.
    let (from, to) = (&accounts[accounts.len() - 1], &accounts[accounts.len() - 2]);
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let transfer = serde_json::json!([{"from": from, "to": to, "value": "0x1"}]);
        let started = Instant::now();
        rpc(&http, rpc_url, "eth_sendTransactionSync", transfer).await;
        times.push(started.elapsed());
    }
    times.sort_unstable();
    times[times.len() / 2]
}

/// The result of JSON-RPC `method` with `params` at `rpc_url`; fails the bench on an error.
async fn rpc(
    http: &reqwest::Client,
    rpc_url: &str,
    method: &str,
    params: serde_json::Value,
) -> serde_json::Value {
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let answer: serde_json::Value =
        http.post(rpc_url).json(&body).send().await.unwrap().json().await.unwrap();
    assert!(answer.get("error").is_none(), "{method}: {answer}");
    answer["result"].clone()
}

/// A JSON-RPC quantity (`0x…`) as a number.
fn quantity(value: &serde_json::Value) -> u64 {
    let hex = value.as_str().unwrap_or_else(|| panic!("a quantity, got {value}"));
    u64::from_str_radix(hex.trim_start_matches("0x"), 16).unwrap()
}

async fn block_number(rpc_url: &str) -> u64 {
    quantity(&rpc(&reqwest::Client::new(), rpc_url, "eth_blockNumber", serde_json::json!([])).await)
}

/// Gas per payment from real receipts: a transaction per payment against batches of 10 and 50
/// through Multicall3 (`aggregate3`), on one anvil chain.
async fn gas_per_payment() {
    use vendbox_pay::facilitator::{BuiltinFacilitator, Facilitator};
    const PAYMENTS: usize = 100;
    let binary = devchain::find_anvil(&[])
        .expect("cannot measure settlement gas: anvil is not installed (scripts/setup.sh installs it)");
    let anvil = Anvil::start(&binary, 31337).await.unwrap();
    let minter = Wallet::from_str(ANVIL_KEY_1).unwrap();
    let asset = devchain::deploy_token(&anvil.rpc_url, &minter, "USDC", "2").await.unwrap();
    let multicall = devchain::place_multicall(&anvil.rpc_url).await.unwrap();
    let payer = Wallet::random();
    devchain::mint(&anvil.rpc_url, &minter, asset, payer.address(), 1_000_000_000_000).await.unwrap();
    let mut r = requirements();
    r.acceptance =
        Acceptance::new(Network::new(31337), asset, "USDC", "2", EvmAddress::repeat_byte(0xbb), 300);
    let settler = Wallet::from_str(ANVIL_KEY_0).unwrap();
    let http = reqwest::Client::new();
    println!(
        "settlement gas per payment, from the receipts of {PAYMENTS} payments per row (anvil, \
         built-in facilitator; a batch is one aggregate3 transaction, every call allowed to fail):"
    );
    println!("  {:<34} {:>12} {:>16} {:>10}", "settled", "transactions", "gas per payment", "ratio");
    let mut single_gas = None;
    for most in [1, 10, 50] {
        let facilitator =
            BuiltinFacilitator::new(&anvil.rpc_url, asset, &settler).unwrap().batching(multicall, most);
        let payments: Vec<_> = (0..PAYMENTS)
            .map(|_| {
                let header = client::pay_v2(&payer, &r.v2(), &r.resource(), now()).unwrap();
                exact::check(SentPayment::V2(wire::decode_header(&header).unwrap()), &r, now()).unwrap()
            })
            .collect();
        // Queued together, so that batches fill: each batch takes the `most` that wait.
        let hashes: Vec<_> =
            futures_util::future::join_all(payments.iter().map(|p| facilitator.settle(p, &r)))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
        let transactions: std::collections::BTreeSet<_> = hashes.iter().copied().collect();
        let mut gas = 0u64;
        for tx in &transactions {
            let params = serde_json::json!([tx.to_string()]);
            let receipt = rpc(&http, &anvil.rpc_url, "eth_getTransactionReceipt", params).await;
            gas += quantity(&receipt["gasUsed"]);
        }
        let per_payment = gas as f64 / PAYMENTS as f64;
        let baseline = *single_gas.get_or_insert(per_payment);
        let label = if most == 1 {
            "a transaction per payment".to_owned()
        } else {
            format!("in batches of up to {most}")
        };
        println!(
            "  {label:<34} {:>12} {per_payment:>16.0} {:>9.3}x",
            transactions.len(),
            stats::ratio(per_payment, baseline, "gas per payment against a transaction per payment")
        );
    }
    anvil.stop().await;
}

/// The price of `GET /catalog` on both stacks of the `reference` part: 0.01 USDC.
const CATALOG_PRICE: u64 = 10_000;
/// The official Python stack, as a bench helper.
const REFERENCE_SERVER: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/clients/reference_server.py");
/// How long the reference server may take to say it listens.
const REFERENCE_START: Duration = Duration::from_secs(90);
/// How long, after a level, the payee's balance may take to show every paid answer.
const SETTLED_WITHIN: Duration = Duration::from_mins(1);
/// How long a stack may take to stop.
const STOPPED_WITHIN: Duration = Duration::from_secs(30);

/// One stack selling `GET /catalog` at [`CATALOG_PRICE`] on an anvil chain of its own: vendbox,
/// or the official Python reference stack. The harness that pays them is the same.
struct Stack {
    /// Its name in the output.
    name: &'static str,
    anvil: Anvil,
    /// `GET /catalog`.
    url: String,
    challenge: Challenge,
    payer: Wallet,
    /// The token, read for the balances that must have moved.
    token: vendbox_pay::chain::Chain,
    /// Who is paid.
    pay_to: EvmAddress,
    /// What serves it: vendbox in this process, or the reference server's process.
    server: StackServer,
}

/// What serves a [`Stack`], stopped after it is measured.
enum StackServer {
    /// vendbox's task, the sender that stops it, and its data directory (removed when dropped).
    Vendbox(
        tokio::task::JoinHandle<std::io::Result<()>>,
        tokio::sync::oneshot::Sender<()>,
        tempfile::TempDir,
    ),
    /// The reference server's process, stopped by its pid.
    Reference(tokio::process::Child),
}

impl Stack {
    /// vendbox with its built-in facilitator and SQLite, on a fresh chain.
    async fn vendbox() -> Stack {
        let (anvil, asset, payer) = token_chain().await;
        let pay_to = Wallet::random().address();
        let dir = tempfile::tempdir().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = vendbox_config(&anvil, asset, pay_to, dir.path());
        let (url, task) = serve_until(&config, async move {
            let _ = stopped.await;
        })
        .await;
        let server = StackServer::Vendbox(task, stop, dir);
        Stack::ready("vendbox", anvil, format!("{url}/catalog"), payer, asset, pay_to, server).await
    }

    /// `tests/clients/reference_server.py` (x402's FastAPI middleware, `x402ResourceServer`, the
    /// official facilitator), on a fresh chain; its facilitator pays the gas with anvil's first key.
    async fn reference() -> Stack {
        use tokio::io::AsyncBufReadExt as _;
        let (anvil, asset, payer) = token_chain().await;
        let pay_to = Wallet::random().address();
        let mut process = tokio::process::Command::new("python3")
            .arg(REFERENCE_SERVER)
            .args(["--rpc-url", &anvil.rpc_url, "--key", ANVIL_KEY_0])
            .args(["--network", &format!("eip155:{}", anvil.chain_id)])
            .args(["--asset", &asset.to_string(), "--pay-to", &pay_to.to_string()])
            .args(["--price", &CATALOG_PRICE.to_string(), "--name", "USDC", "--version", "2"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start the reference stack: python3 is missing (scripts/setup.sh installs it)");
        let mut lines = tokio::io::BufReader::new(process.stdout.take().unwrap()).lines();
        let url = tokio::time::timeout(REFERENCE_START, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.trim().strip_prefix("reference server listening on ") {
                    return Some(url.to_owned());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            panic!(
                "cannot measure the reference stack: {REFERENCE_SERVER} did not say it listens within \
                 {REFERENCE_START:?} (its errors are above; `pip install -r tests/clients/requirements.txt` \
                 installs what it needs)"
            )
        });
        let server = StackServer::Reference(process);
        Stack::ready("reference", anvil, format!("{url}/catalog"), payer, asset, pay_to, server).await
    }

    async fn ready(
        name: &'static str,
        anvil: Anvil,
        url: String,
        payer: Wallet,
        asset: EvmAddress,
        pay_to: EvmAddress,
        server: StackServer,
    ) -> Stack {
        let challenge = challenge(&url).await;
        assert_eq!(
            challenge.price(),
            Some((CATALOG_PRICE, format!("eip155:{}", anvil.chain_id))),
            "{name}: GET /catalog should cost {CATALOG_PRICE} on the bench's chain"
        );
        let token = vendbox_pay::chain::Chain::connect(&anvil.rpc_url, asset).unwrap();
        Stack { name, anvil, url, challenge, payer, token, pay_to, server }
    }

    /// `count` payments for `GET /catalog`, signed now.
    fn payments(&self, count: usize) -> Vec<Option<(&'static str, String)>> {
        (0..count).map(|_| Some(self.challenge.pay(&self.payer, now()).unwrap())).collect()
    }

    /// Panics unless, within [`SETTLED_WITHIN`], exactly `answers` × the price moved on chain from
    /// the payer to the payee: every paid answer was settled, once.
    async fn check_settled(&self, answers: usize) {
        let moved = answers as u64 * CATALOG_PRICE;
        let deadline = Instant::now() + SETTLED_WITHIN;
        loop {
            let paid = self.token.balance_of(self.pay_to).await.unwrap();
            let spent = PAYER_FUNDS - self.token.balance_of(self.payer.address()).await.unwrap();
            assert!(
                paid <= moved && spent <= moved,
                "{}: {answers} paid answers at {CATALOG_PRICE} should move {moved} on chain, but the \
                 payee received {paid} and the payer spent {spent}",
                self.name
            );
            if paid == moved && spent == moved {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {answers} paid answers at {CATALOG_PRICE} should move {moved} on chain, but after \
                 {SETTLED_WITHIN:?} the payee has received {paid} and the payer spent {spent}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops what serves it (vendbox's task; the reference server by SIGTERM to its pid, which
    /// stops its facilitator), then anvil.
    async fn stop(self) {
        match self.server {
            StackServer::Vendbox(task, stop, _dir) => {
                let _ = stop.send(());
                let stopped = tokio::time::timeout(STOPPED_WITHIN, task).await;
                stopped.expect("vendbox did not stop").unwrap().unwrap();
            }
            StackServer::Reference(mut process) => {
                let pid = process.id().unwrap().to_string();
                std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
                let Ok(status) = tokio::time::timeout(STOPPED_WITHIN, process.wait()).await else {
                    process.kill().await.unwrap();
                    panic!(
                        "the reference server (pid {pid}) did not stop within {STOPPED_WITHIN:?} of SIGTERM"
                    );
                };
                assert!(status.unwrap().success(), "the reference server (pid {pid}) failed on SIGTERM");
            }
        }
        self.anvil.stop().await;
    }

    /// Warm-up (thrown away), then `count` pre-signed payments with `concurrency` in flight; checks
    /// that every paid answer was settled on chain.
    async fn measure(self, count: usize, concurrency: usize) -> Level {
        let http = reqwest::Client::new();
        let warm = (2 * concurrency).max(10);
        level(&http, &self.url, self.payments(warm), concurrency, warm / 2).await;
        let measured = level(&http, &self.url, self.payments(count), concurrency, count / 2).await;
        drop(http);
        self.check_settled(warm + count).await;
        self.stop().await;
        measured
    }
}

/// Payments per level for the reference stack, from `VENDBOX_BENCH_REFERENCE_PAYMENTS` (default
/// 200, and never more than vendbox gets): it is slow, and 100 already hold a p99.
fn reference_payments_per_level() -> usize {
    std::env::var("VENDBOX_BENCH_REFERENCE_PAYMENTS")
        .map_or(200, |v| v.parse().expect("VENDBOX_BENCH_REFERENCE_PAYMENTS: a count"))
        .min(payments_per_level())
}

/// vendbox against the official Python reference stack, the same harness on both.
async fn against_reference() {
    let count = payments_per_level();
    let reference_count = reference_payments_per_level();
    assert!(reference_count >= 2, "VENDBOX_BENCH_REFERENCE_PAYMENTS must be at least 2");
    let levels =
        std::env::var("VENDBOX_BENCH_CONCURRENCY").map_or_else(|_| vec![8, 32], |_| concurrency_levels());
    println!(
        "vendbox against the official Python reference stack on paid GET /catalog (0.01 USDC), the same \
         harness on both (pre-signed v2 payments, C in flight), each side on a fresh anvil chain with \
         automine: vendbox with its built-in facilitator ({}) and SQLite, {count} payments per level; the \
         reference: x402 2.25.0's FastAPI middleware and x402ResourceServer under uvicorn (one worker), \
         settling through HTTPFacilitatorClient with the official facilitator (x402FacilitatorSync over \
         web3, tests/clients/facilitator.py), {reference_count} payments per level{}; both after a \
         warm-up of max(2C, 10) payments, and both checked on chain (the payee received and the payer \
         spent the price times every paid answer):",
        match settle_batch() {
            1 => "a transaction per payment".to_owned(),
            most => format!("settlements batched, up to {most} a transaction"),
        },
        if reference_count < count { " (fewer: it is slow)" } else { "" }
    );
    println!("  {:>4}  {:<9} {:>6} {:>9}  {:>10}  {:>10}", "C", "stack", "n", "paid/s", "p50", "p99");
    for (round, concurrency) in levels.into_iter().enumerate() {
        // Alternate which side runs first, so that neither always runs on a quieter machine.
        let (ours, reference) = if round % 2 == 0 {
            let ours = Stack::vendbox().await.measure(count, concurrency).await;
            (ours, Stack::reference().await.measure(reference_count, concurrency).await)
        } else {
            let reference = Stack::reference().await.measure(reference_count, concurrency).await;
            (Stack::vendbox().await.measure(count, concurrency).await, reference)
        };
        for (side, l) in [("vendbox", &ours), ("reference", &reference)] {
            println!(
                "  {concurrency:>4}  {side:<9} {:>6} {:>9.1}  {}  {}",
                l.all.count(),
                l.rate,
                stats::duration(l.all.median()),
                l.all.p99().map_or_else(|| "        --".to_owned(), stats::duration),
            );
            stats::explain_missing(
                &l.all,
                "raise VENDBOX_BENCH_PAYMENTS or VENDBOX_BENCH_REFERENCE_PAYMENTS",
            );
        }
        let p99 = match (ours.all.p99(), reference.all.p99()) {
            (Some(ours), Some(reference)) => format!(
                ", p99 {:.1}x lower",
                stats::ratio(reference.as_secs_f64(), ours.as_secs_f64(), "the p99 ratio")
            ),
            _ => String::new(),
        };
        println!(
            "  {concurrency:>4}  vendbox/reference: {:.1}x the paid requests per second (issue 19 asks \
             20x), p50 {:.1}x lower{p99}",
            stats::ratio(
                ours.rate,
                reference.rate,
                "vendbox against the reference's paid requests per second"
            ),
            stats::ratio(
                reference.all.median().as_secs_f64(),
                ours.all.median().as_secs_f64(),
                "the p50 ratio"
            ),
        );
    }
}

/// Which parts to run, from `VENDBOX_BENCH_PARTS` (default all).
fn part(name: &str) -> bool {
    std::env::var("VENDBOX_BENCH_PARTS").map_or(true, |parts| parts.split(',').any(|p| p.trim() == name))
}

fn main() {
    if part("signatures") {
        signature_checks();
    }
    if part("gas") {
        // One thread: the payments queued together are all waiting when a batch is made.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(gas_per_payment());
    }
    if part("gate") || part("throughput") || part("mpp") || part("batched") || part("reference") {
        tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
            if part("gate") {
                let shops = Shops::open().await;
                gate_latency(&shops).await;
                shops.anvil.stop().await;
            }
            if part("throughput") {
                throughput().await;
            }
            if part("mpp") {
                mpp_against_x402().await;
            }
            if part("batched") {
                batched_against_single().await;
            }
            if part("reference") {
                against_reference().await;
            }
        });
    }
}
