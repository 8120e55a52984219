//! x402 end to end on a real local chain: anvil, vendbox's EIP-3009 token, the real `vendbox`
//! binary with the built-in facilitator, and payers that are the ecosystem's official clients,
//! vendbox's own `fetch`, or hand-made proofs that are wrong in exactly one way.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

mod shop;
mod support;

use std::str::FromStr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use shop::{FUNDS, PRICE, Shop, anvil_binary, clients_installed, now, python_client_installed, repo_root};
use tokio::io::AsyncBufReadExt as _;
use vendbox_core::PaymentState;
use vendbox_pay::chain::Chain;
use vendbox_pay::client::{self, Challenge};
use vendbox_pay::devchain::{self, ANVIL_KEY_1};
use vendbox_pay::facilitator::Facilitator as _;
use vendbox_pay::wire::{self, PaymentPayloadV1, PaymentPayloadV2, SettlementResponse};
use vendbox_pay::{EvmAddress, Wallet};

fn receipt(value: &Value) -> SettlementResponse {
    serde_json::from_value(value["payment_response"].clone()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// The ecosystem's clients pay.

#[tokio::test]
async fn the_official_python_client_pays_over_v2() {
    if !python_client_installed() {
        return;
    }
    let Some(shop) = Shop::open(31337, &[]).await else { return };
    let payer = shop.payer().await;
    let result = shop.run_client("python3", "pay_x402.py", &payer);
    assert_eq!(result["status"], 200, "{result}");
    assert!(result["body"].as_array().unwrap().iter().any(|s| s["sku"] == "sandbox_1h"));
    let receipt = receipt(&result);
    assert!(receipt.success);
    assert_eq!(receipt.network, "eip155:31337");
    assert!(receipt.transaction.starts_with("0x"));
    shop.assert_paid_once(payer.address(), 0).await;
}

#[tokio::test]
async fn the_official_js_client_pays_over_v2() {
    if !clients_installed("node_modules/@x402/fetch") {
        return;
    }
    let Some(shop) = Shop::open(31337, &[]).await else { return };
    let payer = shop.payer().await;
    let result = shop.run_client("node", "pay_x402_v2.mjs", &payer);
    assert_eq!(result["status"], 200, "{result}");
    assert_eq!(receipt(&result).network, "eip155:31337");
    shop.assert_paid_once(payer.address(), 0).await;
}

#[tokio::test]
async fn the_v1_client_pays_on_base_sepolia() {
    if !clients_installed("node_modules/x402-fetch") {
        return;
    }
    let Some(shop) = Shop::open(84532, &[]).await else { return };
    let payer = shop.payer().await;
    let result = shop.run_client("node", "pay_x402_v1.mjs", &payer);
    assert_eq!(result["status"], 200, "{result}");
    let receipt = receipt(&result);
    assert_eq!(receipt.network, "base-sepolia", "v1 names the network");
    shop.assert_paid_once(payer.address(), 0).await;
}

#[tokio::test]
async fn vendbox_fetch_pays_within_its_limit_and_refuses_above_it() {
    let Some(shop) = Shop::open(31337, &[]).await else { return };
    let payer = shop.payer().await;
    let fetch = |max: &str| {
        std::process::Command::new(support::BIN)
            .args(["fetch", &shop.url("/catalog"), "--max-price", max])
            .env("VENDBOX_WALLET_KEY", payer.secret_hex())
            .output()
            .unwrap()
    };
    let refused = fetch("0.009");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("above --max-price"));
    assert_eq!(shop.balance(payer.address()).await, FUNDS, "nothing paid above the limit");

    let paid = fetch("0.01");
    let stderr = String::from_utf8_lossy(&paid.stderr);
    assert!(paid.status.success(), "{stderr}");
    let skus: Value = serde_json::from_slice(&paid.stdout).unwrap();
    assert_eq!(skus.as_array().unwrap().len(), 9);
    assert!(stderr.contains("transaction 0x"), "{stderr}");
    shop.assert_paid_once(payer.address(), 0).await;
}

#[tokio::test]
async fn receipts_name_a_payment_the_payer_can_look_up() {
    let Some(shop) = Shop::open(31337, &[]).await else { return };
    let payer = shop.payer().await;
    for version in [1, 2] {
        let challenge = shop.challenge().await;
        let header = if version == 2 {
            (
                wire::PAYMENT_SIGNATURE,
                client::pay_v2(
                    &payer,
                    &challenge.v2.as_ref().unwrap().accepts[0],
                    &challenge.v2.as_ref().unwrap().resource,
                    now(),
                )
                .unwrap(),
            )
        } else {
            (
                wire::X_PAYMENT,
                client::pay_v1(&payer, &challenge.v1.as_ref().unwrap().accepts[0], now()).unwrap(),
            )
        };
        let (status, headers, _) = shop.get_catalog((header.0, &header.1)).await;
        assert_eq!(status, 200);
        let name = if version == 2 { wire::PAYMENT_RESPONSE } else { wire::X_PAYMENT_RESPONSE };
        let receipt: SettlementResponse = wire::decode_header(headers[name].to_str().unwrap()).unwrap();
        let id = headers["vendbox-payment-id"].to_str().unwrap();
        let payment: Value =
            reqwest::get(shop.url(&format!("/v1/payments/{id}"))).await.unwrap().json().await.unwrap();
        assert_eq!(payment["state"], "settled");
        assert_eq!(payment["transaction"], receipt.transaction.as_str());
        assert_eq!(payment["payer"], payer.address().to_string().to_lowercase());
        assert_eq!(payment["method"], format!("x402-exact-v{version}"));
    }
    assert_eq!(shop.balance(shop.pay_to).await, 2 * PRICE);
    let missing = reqwest::get(shop.url("/v1/payments/7d4a8f5e-0b1c-4c55-9d1e-3f2a7b6c8d90")).await.unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unknown_payment", "{body}");
}

#[tokio::test]
async fn the_402_offers_one_charge_in_both_versions() {
    let Some(shop) = Shop::open(31337, &[]).await else { return };
    let challenge = shop.challenge().await;
    let v1 = &challenge.v1.as_ref().unwrap().accepts[0];
    let v2 = challenge.v2.as_ref().unwrap();
    assert_eq!(v1.max_amount_required, "10000");
    assert_eq!(v2.accepts[0].amount, "10000");
    assert_eq!(v2.accepts[0].network, "eip155:31337");
    assert_eq!(v1.pay_to, v2.accepts[0].pay_to);
    assert_eq!(v1.asset, shop.asset.to_string());
    assert_eq!(v2.resource.url, shop.url("/catalog"));
    assert_eq!(v1.extra.as_ref().unwrap()["name"], "USDC");
    assert!(v1.max_timeout_seconds > 0 && !v1.description.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Each wrong payment is refused with its reason, and moves no money.

/// One row of the rejection table: a payment wrong in one way.
async fn refused(shop: &Shop, payer: &Wallet, header: (&str, String), status: u16, code: &str) {
    let to_before = shop.balance(shop.pay_to).await;
    let from_before = shop.balance(payer.address()).await;
    let (got, headers, body) = shop.get_catalog((header.0, &header.1)).await;
    assert_eq!(got, status, "{body}");
    let reason = if status == 402 { body["error"].as_str() } else { body["error"]["code"].as_str() };
    assert_eq!(reason, Some(code), "{body}");
    if status == 402 {
        let v2: wire::PaymentRequiredV2 =
            wire::decode_header(headers[wire::PAYMENT_REQUIRED].to_str().unwrap()).unwrap();
        assert_eq!(v2.error.as_deref(), Some(code), "the v2 header says why too");
        assert!(!body["message"].as_str().unwrap().is_empty());
    }
    assert!(headers.get(wire::PAYMENT_RESPONSE).is_none() && headers.get("vendbox-payment-id").is_none());
    assert_eq!(shop.balance(shop.pay_to).await, to_before, "no money moved");
    assert_eq!(shop.balance(payer.address()).await, from_before, "no money moved");
}

/// A v2 payload for the catalog, signed by `signer`, after `tamper` changed the terms it signs.
fn v2_payment(
    challenge: &Challenge,
    signer: &Wallet,
    tamper: impl FnOnce(&mut wire::RequirementsV2),
) -> PaymentPayloadV2 {
    let offered = challenge.v2.as_ref().unwrap();
    let mut terms = offered.accepts[0].clone();
    tamper(&mut terms);
    let header = client::pay_v2(signer, &terms, &offered.resource, now()).unwrap();
    let mut payload: PaymentPayloadV2 = wire::decode_header(&header).unwrap();
    payload.accepted = offered.accepts[0].clone();
    payload
}

fn v2_header(payload: &PaymentPayloadV2) -> (&'static str, String) {
    (wire::PAYMENT_SIGNATURE, wire::encode_header(payload))
}

/// One row of the rejection table as a test: a funded payer sends the payment `wrong` builds
/// (from the 402, the payer and an unrelated key) and gets `status` with `code`; nothing moves.
async fn rejection(
    status: u16,
    code: &str,
    wrong: impl FnOnce(&Challenge, &Wallet, &Wallet) -> (&'static str, String),
) {
    let Some(shop) = Shop::open(31337, &[]).await else { return };
    let payer = shop.payer().await;
    let header = wrong(&shop.challenge().await, &payer, &Wallet::random());
    refused(&shop, &payer, header, status, code).await;
}

#[tokio::test]
async fn refuses_a_wrong_payee() {
    rejection(402, "invalid_exact_evm_payload_recipient_mismatch", |c, payer, other| {
        v2_header(&v2_payment(c, payer, |t| t.pay_to = other.address().to_string()))
    })
    .await;
}

#[tokio::test]
async fn refuses_an_amount_too_low() {
    rejection(402, "invalid_exact_evm_payload_authorization_value_mismatch", |c, payer, _| {
        v2_header(&v2_payment(c, payer, |t| t.amount = (PRICE - 1).to_string()))
    })
    .await;
}

#[tokio::test]
async fn refuses_an_amount_too_high() {
    rejection(402, "invalid_exact_evm_payload_authorization_value_mismatch", |c, payer, _| {
        v2_header(&v2_payment(c, payer, |t| t.amount = (PRICE + 1).to_string()))
    })
    .await;
}

#[tokio::test]
async fn refuses_a_signature_for_another_asset() {
    rejection(402, "invalid_exact_evm_payload_signature", |c, payer, other| {
        v2_header(&v2_payment(c, payer, |t| t.asset = other.address().to_string()))
    })
    .await;
}

#[tokio::test]
async fn refuses_a_signature_for_another_chain() {
    rejection(402, "invalid_exact_evm_payload_signature", |c, payer, _| {
        v2_header(&v2_payment(c, payer, |t| t.network = "eip155:8453".into()))
    })
    .await;
}

#[tokio::test]
async fn refuses_a_v1_payment_naming_another_network() {
    rejection(402, "invalid_network", |c, payer, _| {
        let header = client::pay_v1(payer, &c.v1.as_ref().unwrap().accepts[0], now()).unwrap();
        let mut v1: PaymentPayloadV1 = wire::decode_header(&header).unwrap();
        v1.network = "base".into();
        (wire::X_PAYMENT, wire::encode_header(&v1))
    })
    .await;
}

#[tokio::test]
async fn refuses_an_expired_authorization() {
    rejection(402, "invalid_exact_evm_payload_authorization_valid_before", |c, payer, _| {
        let mut p = v2_payment(c, payer, |_| {});
        resign(&mut p, payer, c, |a| {
            a.set_valid_after(now() - 3600);
            a.set_valid_before(now() - 60);
        });
        v2_header(&p)
    })
    .await;
}

#[tokio::test]
async fn refuses_an_authorization_not_yet_valid() {
    rejection(402, "invalid_exact_evm_payload_authorization_valid_after", |c, payer, _| {
        let mut p = v2_payment(c, payer, |_| {});
        resign(&mut p, payer, c, |a| a.set_valid_after(now() + 3600));
        v2_header(&p)
    })
    .await;
}

#[tokio::test]
async fn refuses_a_bad_signature() {
    rejection(402, "invalid_exact_evm_payload_signature", |c, payer, _| {
        let mut p = v2_payment(c, payer, |_| {});
        p.payload.signature = format!("0x{}1c", "ab".repeat(64));
        v2_header(&p)
    })
    .await;
}

#[tokio::test]
async fn refuses_a_signature_by_another_key() {
    rejection(402, "invalid_exact_evm_payload_signature", |c, payer, other| {
        let mut p = v2_payment(c, other, |_| {});
        p.payload.authorization.from = payer.address().to_string();
        v2_header(&p)
    })
    .await;
}

#[tokio::test]
async fn refuses_an_empty_wallet() {
    let Some(shop) = Shop::open(31337, &[]).await else { return };
    let empty = Wallet::random();
    let header = v2_header(&v2_payment(&shop.challenge().await, &empty, |_| {}));
    refused(&shop, &empty, header, 402, "insufficient_funds").await;
}

#[tokio::test]
async fn refuses_malformed_base64() {
    rejection(400, "payment_header_not_base64", |_, _, _| {
        (wire::PAYMENT_SIGNATURE, "%%%not base64%%%".into())
    })
    .await;
}

#[tokio::test]
async fn refuses_malformed_json() {
    rejection(400, "payment_header_malformed", |_, _, _| {
        (
            wire::PAYMENT_SIGNATURE,
            base64::engine::general_purpose::STANDARD.encode(r#"{"x402Version":2,"accepted":"#),
        )
    })
    .await;
}

#[tokio::test]
async fn refuses_an_oversized_header() {
    rejection(400, "payment_header_too_large", |_, _, _| (wire::PAYMENT_SIGNATURE, "A".repeat(16 * 1024)))
        .await;
}

#[tokio::test]
async fn refuses_a_v2_payload_whose_accepted_differs_from_the_offer() {
    // A lower amount, signed as such and claimed as accepted.
    rejection(402, "invalid_payment_requirements", |c, payer, _| {
        let mut p = v2_payment(c, payer, |t| t.amount = "1".into());
        p.accepted.amount = "1".into();
        v2_header(&p)
    })
    .await;
    // Another payee in `accepted`, the signature untouched.
    rejection(402, "invalid_payment_requirements", |c, payer, other| {
        let mut p = v2_payment(c, payer, |_| {});
        p.accepted.pay_to = other.address().to_string();
        v2_header(&p)
    })
    .await;
}

/// Changes the authorization in `p` and signs it again with `signer`.
fn resign(
    p: &mut PaymentPayloadV2,
    signer: &Wallet,
    challenge: &Challenge,
    change: impl FnOnce(&mut vendbox_pay::eip3009::Authorization),
) {
    let mut auth = vendbox_pay::eip3009::Authorization::from_wire(&p.payload.authorization).unwrap();
    change(&mut auth);
    let terms = &challenge.v2.as_ref().unwrap().accepts[0];
    p.payload = client::sign(signer, &auth, &terms.network, &terms.asset, terms.extra.as_ref()).unwrap();
}

#[tokio::test]
async fn a_nonce_already_used_on_chain_is_refused() {
    let Some(shop) = Shop::open(31337, &[]).await else { return };
    let payer = shop.payer().await;
    let challenge = shop.challenge().await;
    let p = v2_payment(&challenge, &payer, |_| {});
    // The payer's authorization is used on chain elsewhere (here: another vendbox-like party
    // sends it straight to the token), then offered to vendbox.
    let checked = vendbox_pay::exact::check(
        vendbox_pay::exact::SentPayment::V2(p.clone()),
        &requirements_of(&shop, &challenge),
        now(),
    )
    .unwrap();
    let other = vendbox_pay::facilitator::BuiltinFacilitator::new(
        &shop.anvil.rpc_url,
        shop.asset,
        &Wallet::from_str(ANVIL_KEY_1).unwrap(),
    )
    .unwrap();
    other.settle(&checked, &requirements_of(&shop, &challenge)).await.unwrap();
    refused(&shop, &payer, v2_header(&p), 402, "invalid_exact_evm_nonce_already_used").await;
}

fn requirements_of(shop: &Shop, challenge: &Challenge) -> vendbox_pay::exact::Requirements {
    shop.requirements_of(challenge)
}

#[tokio::test]
async fn the_same_authorization_sent_twenty_times_at_once_pays_once() {
    let Some(shop) = Shop::open(31337, &[]).await else { return };
    let payer = shop.payer().await;
    let challenge = shop.challenge().await;
    let header = v2_header(&v2_payment(&challenge, &payer, |_| {}));
    let attempts = (0..20).map(|_| shop.get_catalog((header.0, &header.1)));
    let results = futures_util::future::join_all(attempts).await;
    let ok = results.iter().filter(|(s, _, _)| *s == 200).count();
    assert_eq!(
        ok,
        1,
        "exactly one succeeds: {:?}",
        results.iter().map(|r| (r.0, r.2["error"].clone())).collect::<Vec<_>>()
    );
    for (status, _, body) in results.iter().filter(|(s, _, _)| *s != 200) {
        assert_eq!(*status, 402);
        let code = body["error"].as_str().unwrap();
        assert!(code == "payment_replayed" || code == "invalid_exact_evm_nonce_already_used", "{body}");
    }
    shop.assert_paid_once(payer.address(), 0).await;
    // And later, once more: refused by the store, before any chain is asked.
    refused(&shop, &payer, header.clone(), 402, "payment_replayed").await;
}

// ---------------------------------------------------------------------------------------------
// Pay on success, and crashes between reserve and settle.

#[tokio::test]
async fn work_that_fails_after_verification_charges_nothing() {
    let Some(shop) = Shop::open(31337, &[("VENDBOX_FAULTS", "fail-work")]).await else { return };
    let payer = shop.payer().await;
    let challenge = shop.challenge().await;
    let header = v2_header(&v2_payment(&challenge, &payer, |_| {}));
    let (status, headers, body) = shop.get_catalog((header.0, &header.1)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (500, Some("internal")), "{body}");
    let id = headers["vendbox-payment-id"].to_str().unwrap();
    let payment: Value =
        reqwest::get(shop.url(&format!("/v1/payments/{id}"))).await.unwrap().json().await.unwrap();
    assert_eq!(payment["state"], "voided", "{payment}");
    assert!(payment["transaction"].is_null());
    assert_eq!(shop.balance(payer.address()).await, FUNDS);
    assert_eq!(shop.balance(shop.pay_to).await, 0);
}

/// Opens the store of a stopped-or-running vendbox, to see payments the way it left them.
async fn payments_of(shop: &Shop) -> Vec<vendbox_core::Payment> {
    payments_in(&*store_of(shop, None).await).await
}

/// The store `shop`'s vendbox keeps its payments in: `database`, or its data directory's SQLite.
async fn store_of(shop: &Shop, database: Option<&str>) -> std::sync::Arc<dyn vendbox_store::Store> {
    vendbox_store::open(database, &shop.dir.path().join("state")).await.unwrap()
}

/// Every payment in `store`, in any state.
async fn payments_in(store: &dyn vendbox_store::Store) -> Vec<vendbox_core::Payment> {
    let far = chrono::Utc::now() + chrono::Duration::hours(1);
    let mut all = Vec::new();
    for state in PaymentState::ALL {
        all.extend(store.payments_in_state(state, far, 100).await.unwrap());
    }
    all
}

async fn wait_for(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A fresh payer pays `GET /catalog` from a task of its own: the payer, its header and the task.
async fn pay_in_background(
    shop: &Shop,
) -> (Wallet, (&'static str, String), tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>) {
    let payer = shop.payer().await;
    let header = v2_header(&v2_payment(&shop.challenge().await, &payer, |_| {}));
    let request = reqwest::Client::new().get(shop.url("/catalog")).header(header.0, header.1.clone());
    (payer, header, tokio::spawn(request.send()))
}

/// Restarts vendbox (with `env`, its payments in `database` or else its data directory) with a
/// short grace and waits until the settlement worker finished every payment the crash left
/// `verified`.
async fn restart_and_settle(
    shop: &mut Shop,
    env: &[(&str, &str)],
    database: Option<&str>,
) -> Vec<vendbox_core::Payment> {
    let mut env = env.to_vec();
    env.push(("VENDBOX_PAYMENTS__SETTLE_GRACE_SECS", "1"));
    shop.vendbox = shop.serve(&env);
    let store = store_of(shop, database).await;
    wait_for("the settlement worker to finish the payment", Duration::from_secs(30), async || {
        payments_in(&*store).await.iter().all(|p| p.state != PaymentState::Verified)
    })
    .await;
    payments_in(&*store).await
}

/// A shop (started with `env`, its payments in `database` or else its data directory) that
/// crashed while a payment was reserved and not yet settled (the client got no answer); its
/// payer and the payment's header.
async fn crashed_with_a_payment_reserved(
    env: &[(&str, &str)],
    database: Option<&str>,
) -> Option<(Shop, Wallet, (&'static str, String))> {
    let mut env = env.to_vec();
    env.push(("VENDBOX_FAULTS", "pause-before-settle=60"));
    let mut shop = Shop::open(31337, &env).await?;
    let (payer, header, request) = pay_in_background(&shop).await;
    let store = store_of(&shop, database).await;
    wait_for("the payment to be reserved", Duration::from_secs(20), async || {
        payments_in(&*store).await.iter().any(|p| p.state == PaymentState::Verified)
    })
    .await;
    shop.vendbox.crash();
    assert!(request.await.unwrap().is_err(), "the client got no answer");
    Some((shop, payer, header))
}

#[tokio::test]
async fn a_crash_before_settlement_voids_the_payment_and_charges_nothing() {
    let Some((mut shop, payer, header)) = crashed_with_a_payment_reserved(&[], None).await else { return };

    let payments = restart_and_settle(&mut shop, &[], None).await;
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0].state, PaymentState::Voided, "{payments:?}");
    assert_eq!(shop.balance(payer.address()).await, FUNDS, "nothing was charged");
    // The authorization vendbox voided is never taken again.
    refused(&shop, &payer, header, 402, "payment_replayed").await;
}

#[tokio::test]
async fn a_crash_after_the_transfer_records_it_as_settled_once() {
    let Some(mut shop) = Shop::open(31337, &[("VENDBOX_FAULTS", "pause-after-settle=60")]).await else {
        return;
    };
    let (payer, header, request) = pay_in_background(&shop).await;
    wait_for("the transfer on chain", Duration::from_secs(20), async || {
        shop.balance(shop.pay_to).await == PRICE
    })
    .await;
    shop.vendbox.crash();
    assert!(request.await.unwrap().is_err());
    assert_eq!(payments_of(&shop).await[0].state, PaymentState::Verified, "the crash left it in between");

    let payment = restart_and_settle(&mut shop, &[], None).await.remove(0);
    assert_eq!(payment.state, PaymentState::Settled);
    let auth = &serde_json::from_str::<Value>(payment.proof.as_deref().unwrap()).unwrap()["payment"]["payload"]
        ["authorization"];
    let tx = shop
        .chain
        .settlement_of(auth["from"].as_str().unwrap().parse().unwrap(), auth["nonce"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(payment.settlement_ref, Some(tx), "the receipt names the real transfer");
    shop.assert_paid_once(payer.address(), 0).await;
    // Sent again, the same authorization is refused (from the store): it paid once and only once.
    refused(&shop, &payer, header, 402, "payment_replayed").await;
}

// ---------------------------------------------------------------------------------------------
// `vendbox dev`.

#[tokio::test]
async fn vendbox_dev_prints_a_funded_wallet_that_can_pay() {
    if anvil_binary().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(support::BIN)
        .args(["dev", "--listen", "127.0.0.1:0", "--json"])
        .current_dir(dir.path())
        .env("VENDBOX_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let info: Value = loop {
        let line =
            tokio::time::timeout(Duration::from_mins(1), lines.next_line()).await.unwrap().unwrap().unwrap();
        if line.starts_with('{') {
            break serde_json::from_str(&line).unwrap();
        }
    };
    let output = tokio::process::Command::new(support::BIN)
        .args(["fetch", &format!("{}/catalog", info["url"].as_str().unwrap())])
        .env("VENDBOX_WALLET_KEY", info["agent_key"].as_str().unwrap())
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let chain =
        Chain::connect(info["rpc_url"].as_str().unwrap(), info["asset"].as_str().unwrap().parse().unwrap())
            .unwrap();
    let agent: EvmAddress = info["agent_address"].as_str().unwrap().parse().unwrap();
    assert_eq!(chain.balance_of(agent).await.unwrap(), 100_000_000 - PRICE);
    // SIGTERM stops vendbox and the anvil it started.
    std::process::Command::new("kill").args(["-TERM", &child.id().unwrap().to_string()]).status().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await.unwrap().unwrap();
    assert!(status.success());
    assert!(chain.chain_id().await.is_err(), "anvil stopped with vendbox dev");
}

// ---------------------------------------------------------------------------------------------
// A remote facilitator: the official Python facilitator, over HTTP.

/// `tests/clients/facilitator.py` (the official x402 facilitator behind its HTTP API), stopped by
/// its pid when dropped.
struct OfficialFacilitator {
    child: std::process::Child,
    url: String,
}

impl OfficialFacilitator {
    fn start(rpc_url: &str, auth: &str) -> OfficialFacilitator {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new("python3")
            .arg(repo_root().join("tests/clients/facilitator.py"))
            .args(["--rpc-url", rpc_url, "--key", ANVIL_KEY_1, "--require-auth", auth, "--quiet"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.trim().strip_prefix("facilitator listening on ").unwrap().to_owned();
        OfficialFacilitator { child, url }
    }

    async fn stats(&self) -> Value {
        reqwest::get(format!("{}/stats", self.url)).await.unwrap().json().await.unwrap()
    }
}

impl Drop for OfficialFacilitator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_remote_facilitator_verifies_and_settles_with_its_auth_header() {
    if !python_client_installed() {
        return;
    }
    let Some(mut shop) = Shop::open(31337, &[]).await else { return };
    let facilitator = OfficialFacilitator::start(&shop.anvil.rpc_url, "Bearer s3cret");
    let remote = |auth: &'static str| {
        let url = facilitator.url.clone();
        move |shop: &Shop| {
            shop.serve(&[
                ("VENDBOX_PAYMENTS__FACILITATOR", "remote"),
                ("VENDBOX_PAYMENTS__FACILITATOR_URL", url.as_str()),
                ("VENDBOX_FACILITATOR_AUTH", auth),
            ])
        }
    };
    shop.vendbox.crash();
    shop.vendbox = remote("Authorization: Bearer s3cret")(&shop);
    let payer = shop.payer().await;
    let challenge = shop.challenge().await;
    let header = v2_header(&v2_payment(&challenge, &payer, |_| {}));
    let (status, headers, body) = shop.get_catalog((header.0, &header.1)).await;
    assert_eq!(status, 200, "{body}");
    let receipt: SettlementResponse =
        wire::decode_header(headers[wire::PAYMENT_RESPONSE].to_str().unwrap()).unwrap();
    let id = headers["vendbox-payment-id"].to_str().unwrap();
    let payment: Value =
        reqwest::get(shop.url(&format!("/v1/payments/{id}"))).await.unwrap().json().await.unwrap();
    assert_eq!(
        (payment["state"].as_str(), payment["transaction"].as_str()),
        (Some("settled"), Some(receipt.transaction.as_str()))
    );

    // v1 on a chain without a v1 name: the official facilitator cannot route it (HTTP 500), so
    // vendbox answers 503 and nothing moves.
    let v1 = client::pay_v1(&payer, &challenge.v1.as_ref().unwrap().accepts[0], now()).unwrap();
    let (status, _, body) = shop.get_catalog((wire::X_PAYMENT, &v1)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("payment_verification_unavailable")),
        "{body}"
    );
    shop.assert_paid_once(payer.address(), 0).await;
    let calls = facilitator.stats().await;
    assert!(calls["verify"].as_u64().unwrap() >= 1 && calls["settle"].as_u64().unwrap() >= 1, "{calls}");

    // A wrong auth header: the facilitator refuses vendbox, so vendbox cannot verify and says so.
    shop.vendbox.crash();
    shop.vendbox = remote("Authorization: Bearer wrong")(&shop);
    let challenge = shop.challenge().await;
    let header = v2_header(&v2_payment(&challenge, &payer, |_| {}));
    let (status, _, body) = shop.get_catalog((header.0, &header.1)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("payment_verification_unavailable")),
        "{body}"
    );
    assert!(facilitator.stats().await["unauthorized"].as_u64().unwrap() >= 1);
    assert_eq!(shop.balance(payer.address()).await, FUNDS - PRICE, "nothing more moved");
}

#[tokio::test]
async fn an_authorization_the_payer_cancelled_after_a_crash_is_voided_not_settled() {
    let Some((mut shop, payer, header)) = crashed_with_a_payment_reserved(&[], None).await else { return };
    // While vendbox is down the payer cancels the authorization on chain: `authorizationState`
    // now reads true, as for a used one, but no money moved.
    let sent: PaymentPayloadV2 = wire::decode_header(&header.1).unwrap();
    let nonce = &sent.payload.authorization.nonce;
    let domain = vendbox_pay::exact::Acceptance::new(
        vendbox_pay::Network::new(31337),
        shop.asset,
        "USDC",
        "2",
        shop.pay_to,
        60,
    )
    .domain();
    let gas = Wallet::from_str(ANVIL_KEY_1).unwrap();
    vendbox_pay::devchain::cancel_authorization(&shop.anvil.rpc_url, &gas, &domain, &payer, nonce)
        .await
        .unwrap();
    assert!(shop.chain.authorization_used(payer.address(), nonce).await.unwrap());

    let payments = restart_and_settle(&mut shop, &[], None).await;
    assert_eq!(payments[0].state, PaymentState::Voided, "{payments:?}");
    assert!(payments[0].void_reason.as_deref().unwrap().contains("cancelled"), "{payments:?}");
    assert_eq!(shop.balance(payer.address()).await, FUNDS, "nothing was charged");
}

/// Stops the shop's chain, so that anything vendbox still asks of it fails.
fn stop_chain(shop: &Shop) {
    let pid = shop.anvil.pid().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
}

#[tokio::test]
async fn a_refused_header_sent_again_is_answered_without_asking_the_chain() {
    let Some(shop) = Shop::open(31337, &[]).await else { return };
    let empty = Wallet::random();
    let header = v2_header(&v2_payment(&shop.challenge().await, &empty, |_| {}));
    refused(&shop, &empty, header.clone(), 402, "insufficient_funds").await;
    stop_chain(&shop);
    // Answered from what vendbox remembers; asking the stopped chain would be a 503.
    let (status, _, body) = shop.get_catalog((header.0, &header.1)).await;
    assert_eq!((status, body["error"].as_str()), (402, Some("insufficient_funds")), "{body}");
}

#[tokio::test]
async fn a_replayed_authorization_is_refused_without_asking_the_chain() {
    let Some(shop) = Shop::open(31337, &[]).await else { return };
    let payer = shop.payer().await;
    let header = v2_header(&v2_payment(&shop.challenge().await, &payer, |_| {}));
    let (status, _, body) = shop.get_catalog((header.0, &header.1)).await;
    assert_eq!(status, 200, "{body}");
    stop_chain(&shop);
    let (status, _, body) = shop.get_catalog((header.0, &header.1)).await;
    assert_eq!((status, body["error"].as_str()), (402, Some("payment_replayed")), "{body}");
}

/// `GET /catalog` on the vendbox at `base` with the payment `header`: status and body.
async fn catalog_at(base: &str, header: &(&'static str, String)) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("{base}/catalog"))
        .header(header.0, &header.1)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn one_authorization_sent_to_two_hosts_on_one_database_charges_once() {
    let Some(schema) = vendbox_store::testkit::PostgresSchema::create().await else { return };
    let url = schema.url();
    // Two hosts that sell the same thing under one public URL, so a payment for one is a payment
    // for the other, and keep their payments in one PostgreSQL database.
    let env = [("VENDBOX_DATABASE_URL", url.as_str()), ("VENDBOX_SERVER__PUBLIC_URL", "http://vendbox.test")];
    let Some(shop) = Shop::open(31337, &env).await else { return };
    let second = shop.serve(&env);
    for base in [&shop.vendbox.url, &second.url] {
        let health: Value = reqwest::get(format!("{base}/healthz")).await.unwrap().json().await.unwrap();
        assert_eq!(health["store"], "postgres", "{health}");
    }
    let payer = shop.payer().await;
    let header = v2_header(&v2_payment(&shop.challenge().await, &payer, |_| {}));

    // At once, to both: one is served and charged.
    let (a, b) = tokio::join!(catalog_at(&shop.vendbox.url, &header), catalog_at(&second.url, &header));
    let statuses = [a.0, b.0];
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{a:?} {b:?}");
    let loser = if a.0 == 200 { &b } else { &a };
    assert_eq!(loser.0, 402, "{loser:?}");
    // The store refuses the loser unless the winner's transfer was already on chain.
    let code = loser.1["error"].as_str().unwrap();
    assert!(code == "payment_replayed" || code == "invalid_exact_evm_nonce_already_used", "{loser:?}");
    shop.assert_paid_once(payer.address(), 0).await;

    // Afterwards, to either host: refused by the shared store alone (the chain is stopped, so
    // any call to it would be a 503).
    stop_chain(&shop);
    for base in [&shop.vendbox.url, &second.url] {
        let (status, body) = catalog_at(base, &header).await;
        assert_eq!((status, body["error"].as_str()), (402, Some("payment_replayed")), "{body}");
    }
    drop(second);
    drop(shop);
    schema.drop_schema().await;
}

#[tokio::test]
async fn an_authorization_a_crashed_host_reserved_is_refused_by_another_host_and_charged_at_most_once() {
    let Some(schema) = vendbox_store::testkit::PostgresSchema::create().await else { return };
    let url = schema.url();
    // Two hosts selling under one public URL, their payments in one PostgreSQL database. Host A
    // crashes after reserving the payment and before settling it.
    let env = [("VENDBOX_DATABASE_URL", url.as_str()), ("VENDBOX_SERVER__PUBLIC_URL", "http://vendbox.test")];
    let Some((mut shop, payer, header)) = crashed_with_a_payment_reserved(&env, Some(&url)).await else {
        return;
    };
    let store = store_of(&shop, Some(&url)).await;
    let reserved = payments_in(&*store).await;
    assert_eq!(reserved.len(), 1, "{reserved:?}");
    assert_eq!(reserved[0].state, PaymentState::Verified, "the crash left it reserved: {reserved:?}");

    // Host B reaches no chain (its RPC URL is a port nothing listens on), so whatever it refuses
    // without a 503 it refused from the store alone.
    let nowhere = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let mut b = env.to_vec();
    b.push(("VENDBOX_PAYMENTS__RPC_URL", nowhere.as_str()));
    shop.vendbox = shop.serve(&b);
    let health: Value = reqwest::get(shop.url("/healthz")).await.unwrap().json().await.unwrap();
    assert_eq!(health["store"], "postgres", "{health}");
    // A fresh authorization shows B cannot ask the chain: it cannot be verified.
    let other = shop.payer().await;
    let fresh = v2_header(&v2_payment(&shop.challenge().await, &other, |_| {}));
    refused(&shop, &other, fresh, 503, "payment_verification_unavailable").await;
    // The authorization A reserved: refused by the shared store, and nothing moves.
    refused(&shop, &payer, header.clone(), 402, "payment_replayed").await;
    assert_eq!(payments_in(&*store).await, reserved, "B reserved nothing and finished nothing");

    // A restarts and repairs: interrupted before settlement, the payment is voided and the payer
    // is charged nothing (the authorization never reached the chain).
    let payments = restart_and_settle(&mut shop, &env, Some(&url)).await;
    assert_eq!(payments.len(), 1, "{payments:?}");
    assert_eq!(payments[0].state, PaymentState::Voided, "{payments:?}");
    let nonce = wire::decode_header::<PaymentPayloadV2>(&header.1).unwrap().payload.authorization.nonce;
    assert!(!shop.chain.authorization_used(payer.address(), &nonce).await.unwrap());
    assert_eq!(shop.balance(payer.address()).await, FUNDS, "nothing was charged");
    assert_eq!(shop.balance(shop.pay_to).await, 0, "nothing was taken");
    // And A, repaired, never takes the authorization again.
    refused(&shop, &payer, header, 402, "payment_replayed").await;
    drop(shop);
    drop(store);
    schema.drop_schema().await;
}

// ---------------------------------------------------------------------------------------------
// A crash with many settlements in flight.

/// One of anvil's JSON-RPC methods (mining, the pool) on the shop's chain; its result.
async fn anvil_rpc(shop: &Shop, method: &str, params: Value) -> Value {
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let answer: Value = reqwest::Client::new()
        .post(&shop.anvil.rpc_url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(answer.get("error").is_none(), "{method}: {answer}");
    answer["result"].clone()
}

/// Transactions in the chain's pool: ready to be mined, and queued behind a missing nonce.
async fn pool(shop: &Shop) -> (u64, u64) {
    let status = anvil_rpc(shop, "txpool_status", serde_json::json!([])).await;
    let count = |v: &Value| match v {
        Value::String(hex) => u64::from_str_radix(hex.trim_start_matches("0x"), 16).unwrap(),
        other => other.as_u64().unwrap(),
    };
    (count(&status["pending"]), count(&status["queued"]))
}

#[tokio::test]
async fn batched_settlement_without_a_multicall_on_the_chain_stops_start_up_naming_the_key() {
    let Some(shop) = Shop::open(31337, &[]).await else { return };
    let nowhere = Wallet::random().address().to_string();
    let env = [
        ("VENDBOX_PAYMENTS__SETTLE_BATCH", "10"),
        ("VENDBOX_PAYMENTS__MULTICALL", nowhere.as_str()),
        ("VENDBOX_PAYMENTS__NETWORK", "eip155:31337"),
        ("VENDBOX_PAYMENTS__ASSET", &shop.asset.to_string()),
        ("VENDBOX_PAYMENTS__PAY_TO", &shop.pay_to.to_string()),
        ("VENDBOX_PAYMENTS__RPC_URL", shop.anvil.rpc_url.as_str()),
        ("VENDBOX_PAYMENTS__FACILITATOR", "builtin"),
        ("VENDBOX_SIGNER_KEY", devchain::ANVIL_KEY_0),
    ];
    let mut child = std::process::Command::new(support::BIN)
        .current_dir(shop.dir.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", "refused"])
        .env_remove("VENDBOX_DATABASE_URL")
        .env("VENDBOX_SSH__LISTEN", "127.0.0.1:0")
        .envs(env)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vendbox started with settle_batch and no contract at payments.multicall");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    let said = stderr.to_lowercase();
    assert!(said.contains("payments.multicall") && said.contains(&nowhere.to_lowercase()), "{stderr}");
}

/// Settlements waiting in the chain's pool (a batch counts its calls), and the transactions
/// that carry them.
async fn settlements_pooled(shop: &Shop) -> (u64, u64) {
    let content = anvil_rpc(shop, "txpool_content", serde_json::json!([])).await;
    let (mut settlements, mut transactions) = (0, 0);
    for by_nonce in content["pending"].as_object().into_iter().flat_map(|senders| senders.values()) {
        for tx in by_nonce.as_object().unwrap().values() {
            transactions += 1;
            let to = tx["to"].as_str().unwrap_or_default();
            let input = hex::decode(tx["input"].as_str().unwrap().trim_start_matches("0x")).unwrap();
            settlements += if to.eq_ignore_ascii_case(&devchain::MULTICALL3.to_string()) {
                // aggregate3(Call3[]): the selector, the array's offset, then its length.
                u64::from_be_bytes(input[60..68].try_into().unwrap())
            } else {
                1
            };
        }
    }
    (settlements, transactions)
}

#[tokio::test]
async fn a_crash_with_fifty_settlements_in_flight_settles_each_once_or_voids_it() {
    crash_with_fifty_settlements_in_flight(1).await;
}

#[tokio::test]
async fn a_crash_with_fifty_batched_settlements_in_flight_settles_each_once_or_voids_it() {
    crash_with_fifty_settlements_in_flight(10).await;
}

/// Kills vendbox (settling up to `batch` payments a transaction) with fifty settlements in the
/// pool and later payments still being verified, reserved or sent; after a restart, each is
/// settled once with the transfer that used its authorization, or voided with it unused.
async fn crash_with_fifty_settlements_in_flight(batch: usize) {
    let most = batch.to_string();
    let env = [("VENDBOX_PAYMENTS__SETTLE_BATCH", most.as_str())];
    let Some(mut shop) = Shop::open(31337, &env).await else { return };
    let payer = shop.payer().await;
    let challenge = shop.challenge().await;
    let headers: Vec<_> = (0..80).map(|_| v2_header(&v2_payment(&challenge, &payer, |_| {}))).collect();
    // Blocks come only when the test mines one: the settlements vendbox sends pile up in the
    // pool, sent and not mined. The payments come one every 15 ms (3 ms when batched, so that
    // several wait while a batch is sent), so that when the fiftieth settlement is in the pool
    // later payments are still being verified, reserved or sent.
    let every = if batch > 1 { 3 } else { 15 };
    anvil_rpc(&shop, "evm_setAutomine", serde_json::json!([false])).await;
    let http = reqwest::Client::new();
    let requests: Vec<_> = (0u64..)
        .zip(&headers)
        .map(|(i, (name, value))| {
            let request = http.get(shop.url("/catalog")).header(*name, value);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(every * i)).await;
                request.send().await
            })
        })
        .collect();
    wait_for("fifty settlements in the pool", Duration::from_mins(1), async || {
        settlements_pooled(&shop).await.0 >= 50
    })
    .await;
    shop.vendbox.crash();
    let (settlements, transactions) = settlements_pooled(&shop).await;
    eprintln!("at the crash: {settlements} settlements in {transactions} transactions");
    if batch > 1 {
        assert!(
            transactions < settlements,
            "batched: {settlements} settlements in {transactions} transactions"
        );
    }
    for request in requests {
        assert!(request.await.unwrap().is_err(), "nothing was mined, so nothing was answered");
    }
    // The chain goes on without vendbox: what it sent is mined, and nothing waits on a gap.
    assert_eq!(pool(&shop).await.1, 0, "no settlement is queued behind a missing nonce");
    anvil_rpc(&shop, "evm_setAutomine", serde_json::json!([true])).await;
    anvil_rpc(&shop, "evm_mine", serde_json::json!([])).await;
    assert_eq!(pool(&shop).await, (0, 0));

    let payments = restart_and_settle(&mut shop, &env, None).await;
    assert!(payments.len() >= 50, "{} reserved", payments.len());
    let mut settled = 0;
    for payment in &payments {
        let (from, nonce) = (payment.replay_key.payer.parse().unwrap(), &payment.replay_key.nonce);
        let transfer = shop.chain.settlement_of(from, nonce).await.unwrap();
        match payment.state {
            PaymentState::Settled => {
                settled += 1;
                assert_eq!(payment.settlement_ref, transfer, "{payment:?}");
            }
            PaymentState::Voided => {
                assert_eq!(transfer, None, "voided and charged: {payment:?}");
                assert!(!shop.chain.authorization_used(from, nonce).await.unwrap(), "{payment:?}");
            }
            state @ PaymentState::Verified => panic!("left {state:?}: {payment:?}"),
        }
    }
    assert!(settled >= 50, "the fifty in the pool were mined: {settled} settled");
    let voided = payments.iter().filter(|p| p.state == PaymentState::Voided).count();
    eprintln!("after the crash: {settled} settled, {voided} voided");
    // Every authorization the chain used belongs to a settled payment, and each moved one price.
    for (_, value) in &headers {
        let nonce = wire::decode_header::<PaymentPayloadV2>(value).unwrap().payload.authorization.nonce;
        if shop.chain.authorization_used(payer.address(), &nonce).await.unwrap() {
            let recorded = payments.iter().find(|p| p.replay_key.nonce.eq_ignore_ascii_case(&nonce));
            assert_eq!(recorded.map(|p| p.state), Some(PaymentState::Settled), "{nonce}");
        }
    }
    let moved = settled * PRICE;
    assert_eq!(shop.balance(payer.address()).await, FUNDS - moved, "each settled payment charged once");
    assert_eq!(shop.balance(shop.pay_to).await, moved);

    // The restarted vendbox reads its nonce from the chain and settles the next payment at once.
    let header = v2_header(&v2_payment(&shop.challenge().await, &payer, |_| {}));
    let (status, _, body) = shop.get_catalog((header.0, &header.1)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(shop.balance(shop.pay_to).await, moved + PRICE);
}
