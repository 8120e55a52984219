//! Benchmark of x402 payments, printed as ratios against baselines measured in the same run:
//! - the off-chain check of one payment (decode the header, check terms, recover the EIP-3009
//!   signer) against a bare secp256k1 recovery, on one core: median, p90 and p99 of each and as
//!   a ratio, then checks per second;
//! - the latency the payment gate adds to `GET /catalog`: the same route paid (verify on chain,
//!   reserve, settle on anvil, record) against free (price 0), one request at a time: median,
//!   p90 and p99 of each and as a ratio.
//!
//! Each pair runs warm-up rounds first and throws them away, then alternates baseline and subject
//! in ABBA order (see `common/stats.rs`); every p99 comes from at least 100 samples.
//!
//! Run: `cargo bench -p vendbox --bench payments` (needs anvil: `scripts/setup.sh` installs it;
//! without it the bench fails rather than leave the gate unmeasured).

#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::str::FromStr;
use std::time::Instant;

use vendbox_core::Usdc;
use vendbox_pay::alloy::primitives::{Address, U256};
use vendbox_pay::alloy::signers::local::PrivateKeySigner;
use vendbox_pay::client::{self, Challenge};
use vendbox_pay::devchain::{self, ANVIL_KEY_0, ANVIL_KEY_1, Anvil};
use vendbox_pay::exact::{self, Acceptance, Charge, Requirements, SentPayment, unix_now as now};
use vendbox_pay::{Network, wire};
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

fn requirements() -> Requirements {
    Requirements::new(
        Acceptance {
            network: Network::new(84532),
            asset: Address::repeat_byte(0xaa),
            asset_name: "USDC".into(),
            asset_version: "2".into(),
            pay_to: Address::repeat_byte(0xbb),
            max_timeout_seconds: 300,
        },
        Charge {
            amount: Usdc(10_000),
            resource: "http://127.0.0.1/catalog".into(),
            description: "bench".into(),
            mime_type: "application/json".into(),
        },
    )
}

fn signature_checks() {
    let r = requirements();
    let signer = PrivateKeySigner::random();
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
            assert_eq!(sig.recover_address_from_prehash(hash).unwrap(), signer.address());
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
    stats::row("bare secp256k1 recovery (baseline)", LABEL_WIDTH, &bare);
    stats::row("full off-chain payment check", LABEL_WIDTH, &full);
    stats::ratio_row("  ratio to the baseline", LABEL_WIDTH, &full, &bare);
    let bare_rate = stats::per_second(bare.count(), bare.total(), "bare secp256k1 recoveries per second");
    let full_rate = stats::per_second(full.count(), full.total(), "full payment checks per second");
    println!(
        "  checks per second: baseline {bare_rate:.0}, vendbox {full_rate:.0}, {:.2} of the baseline",
        stats::ratio(full_rate, bare_rate, "the ratio of checks per second")
    );
}

async fn serve(config: &Config) -> String {
    let store = vendbox_store::open(None, &config.store.data_dir).await.unwrap();
    let secrets =
        Secrets { signer: Some(PrivateKeySigner::from_str(ANVIL_KEY_0).unwrap()), facilitator_auth: None };
    let server = Server::bind(config, store, secrets).await.unwrap();
    let url = format!("http://{}", server.local_addr().unwrap());
    tokio::spawn(server.run(std::future::pending()));
    url
}

/// `GET url`, with a payment header when given; panics unless it answers 200.
async fn get_catalog(http: &reqwest::Client, url: &str, payment: Option<(&'static str, String)>) {
    let mut request = http.get(url);
    if let Some((name, value)) = payment {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
}

async fn gate_latency() {
    let binary = devchain::find_anvil(&[])
        .expect("cannot measure the payment gate: anvil is not installed (scripts/setup.sh installs it)");
    let anvil = Anvil::start(&binary, 31337).await.unwrap();
    let minter = PrivateKeySigner::from_str(ANVIL_KEY_1).unwrap();
    let asset = devchain::deploy_token(&anvil.rpc_url, &minter, "USDC", "2").await.unwrap();
    let payer = PrivateKeySigner::random();
    devchain::mint(&anvil.rpc_url, &minter, asset, payer.address(), U256::from(1_000_000_000u64))
        .await
        .unwrap();

    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut config = Config::load(None, Vec::new()).unwrap();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.ssh.listen = "127.0.0.1:0".parse().unwrap();
    let p = &mut config.payments;
    p.network = "eip155:31337".into();
    p.asset = asset.to_string();
    p.pay_to = Some(PrivateKeySigner::random().address().to_string());
    p.rpc_url.clone_from(&anvil.rpc_url);
    p.facilitator = FacilitatorKind::Builtin;
    config.store.data_dir = dirs.0.path().to_owned();
    let paid = serve(&config).await;
    config.store.data_dir = dirs.1.path().to_owned();
    for offer in &mut config.offers {
        if offer.id.as_str() == "vpsagent-catalog" {
            offer.price.base = Usdc::ZERO;
        }
    }
    let free = serve(&config).await;

    let http = reqwest::Client::new();
    let response = http.get(format!("{paid}/catalog")).send().await.unwrap();
    let header = response.headers().get(wire::PAYMENT_REQUIRED).unwrap().to_str().unwrap().to_owned();
    let challenge = Challenge::read(Some(&header), &response.bytes().await.unwrap()).unwrap();
    let count = REQUESTS.warm_up + REQUESTS.measured;
    let mut payments =
        (0..count).map(|_| challenge.pay(&payer, now()).unwrap()).collect::<Vec<_>>().into_iter();

    let (free, paid) = (format!("{free}/catalog"), format!("{paid}/catalog"));
    let times = stats::alternate_async(
        REQUESTS,
        || stats::timed(get_catalog(&http, &free, None)),
        || stats::timed(get_catalog(&http, &paid, Some(payments.next().unwrap()))),
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
    anvil.stop().await;
}

fn main() {
    signature_checks();
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(gate_latency());
}
