//! Benchmark of x402 payments, printed as ratios against baselines measured in the same run:
//! - signature checks per second on one core: the whole off-chain check of a payment (decode the
//!   header, check terms, recover the EIP-3009 signer) against a bare secp256k1 recovery;
//! - the latency the payment gate adds to `GET /catalog`: the same route paid (verify on chain,
//!   reserve, settle on anvil, record) against free (price 0), one request at a time.
//!
//! Run: `cargo bench -p vendbox --bench payments` (needs anvil: `scripts/setup.sh` installs it).

#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::str::FromStr;
use std::time::{Duration, Instant};

use vendbox_core::Usdc;
use vendbox_pay::alloy::primitives::{Address, U256};
use vendbox_pay::alloy::signers::local::PrivateKeySigner;
use vendbox_pay::client::{self, Challenge};
use vendbox_pay::devchain::{self, ANVIL_KEY_0, ANVIL_KEY_1, Anvil};
use vendbox_pay::exact::{self, Acceptance, Charge, Requirements, SentPayment, unix_now as now};
use vendbox_pay::{Network, wire};
use vendbox_server::config::FacilitatorKind;
use vendbox_server::{Config, Secrets, Server};

const SIGNATURES: usize = 3000;
const REQUESTS: usize = 200;

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
    let headers: Vec<String> =
        (0..SIGNATURES).map(|_| client::pay_v2(&signer, &r.v2(), &r.resource(), now()).unwrap()).collect();
    let decoded: Vec<_> = headers
        .iter()
        .map(|h| {
            let p: wire::PaymentPayloadV2 = wire::decode_header(h).unwrap();
            let auth = vendbox_pay::eip3009::Authorization::from_wire(&p.payload.authorization).unwrap();
            let sig = vendbox_pay::eip3009::parse_signature(&p.payload.signature).unwrap();
            (auth.signing_hash(&r.acceptance.domain()), sig)
        })
        .collect();

    let started = Instant::now();
    for (hash, sig) in &decoded {
        assert_eq!(sig.recover_address_from_prehash(hash).unwrap(), signer.address());
    }
    let bare = SIGNATURES as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    for h in &headers {
        let sent = SentPayment::from_headers(Some(h), None).unwrap().unwrap();
        exact::check(sent, &r, now()).unwrap();
    }
    let full = SIGNATURES as f64 / started.elapsed().as_secs_f64();
    println!("signature checks, one core, {SIGNATURES} payments:");
    println!("  baseline: bare secp256k1 recovery      {bare:>9.0} /s");
    println!(
        "  vendbox:  full off-chain payment check {full:>9.0} /s   ratio {:.2} of baseline",
        full / bare
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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn gate_latency() {
    let Some(binary) = devchain::find_anvil(&[]) else {
        println!("gate latency: skipped (anvil is not installed; run scripts/setup.sh)");
        return;
    };
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
    let payments: Vec<_> = (0..REQUESTS).map(|_| challenge.pay(&payer, now()).unwrap()).collect();

    let mut free_times = Vec::new();
    let mut paid_times = Vec::new();
    for (name, value) in &payments {
        let started = Instant::now();
        let r = http.get(format!("{free}/catalog")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        free_times.push(started.elapsed());

        let started = Instant::now();
        let r = http.get(format!("{paid}/catalog")).header(*name, value).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        paid_times.push(started.elapsed());
    }
    free_times.sort();
    paid_times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "payment gate on GET /catalog, {REQUESTS} sequential requests each (anvil, built-in facilitator, SQLite):"
    );
    for (label, p) in [("p50", 0.5), ("p99", 0.99)] {
        let (f, pd) = (percentile(&free_times, p), percentile(&paid_times, p));
        println!(
            "  {label}: free {:>7.2} ms   paid {:>7.2} ms   added {:>7.2} ms   ratio {:.1}x",
            ms(f),
            ms(pd),
            ms(pd) - ms(f),
            ms(pd) / ms(f)
        );
    }
    anvil.stop().await;
}

fn main() {
    signature_checks();
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(gate_latency());
}
