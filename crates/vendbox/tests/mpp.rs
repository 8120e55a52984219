//! MPP, the "Payment" HTTP authentication scheme, end to end on a local chain: the official
//! clients (pympp and mppx, their `evm` charge) pay a lock acquisition and the token balances move
//! by exactly the price; every attack on a challenge or a credential is refused with the draft's
//! problem type, and no money moves; a Storefront MPP order (validate, unpaid, paid) makes one
//! order, one machine and one transfer however often its credential is sent.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod boxhost;
mod shop;
mod support;

use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use shop::{FUNDS, Shop};
use vendbox_pay::mpp::client::{self, NonceDerivation};
use vendbox_pay::mpp::{BindingSecret, ChallengeFields, PROBLEM_BASE};
use vendbox_pay::{EvmAddress, Wallet};

/// The default catalog's lock price in atomic units.
const LOCK_PRICE: u64 = 100;
/// The challenge secret the test's vendbox binds with (so that the test can forge an expired
/// challenge that is otherwise genuine).
const SECRET: &str = "vendbox-mpp-test-secret-of-at-least-32-bytes";

async fn open() -> Option<Shop> {
    Shop::open(31337, &[("VENDBOX_MPP_SECRET", SECRET)]).await
}

fn lock_body(owner: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({ "owner": owner, "ttl_seconds": 60 })).unwrap()
}

/// `POST url` with `body` and, if given, `Authorization: auth`.
async fn post(url: &str, body: &[u8], auth: Option<&str>) -> (u16, HeaderMap, Value) {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
    post_with(url, body, &headers).await
}

/// `POST url` with `body` and `headers`.
async fn post_with(url: &str, body: &[u8], headers: &[(&str, &str)]) -> (u16, HeaderMap, Value) {
    let mut request =
        reqwest::Client::new().post(url).header("content-type", "application/json").body(body.to_vec());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (status, headers, response.json().await.unwrap_or(Value::Null))
}

/// The MPP challenge of a 402.
fn mpp_challenge(headers: &HeaderMap) -> ChallengeFields {
    let found: Vec<ChallengeFields> = headers
        .get_all("www-authenticate")
        .iter()
        .flat_map(|v| client::parse_challenges(v.to_str().unwrap()).unwrap())
        .collect();
    assert_eq!(found.len(), 1, "one Payment challenge per method: {headers:?}");
    found.into_iter().next().unwrap()
}

/// The MPP challenge for `POST url` with `body`.
async fn challenge(url: &str, body: &[u8]) -> ChallengeFields {
    let (status, headers, answer) = post(url, body, None).await;
    assert_eq!(status, 402, "{answer}");
    assert!(headers.contains_key("payment-required"), "x402's challenge is offered beside MPP's");
    assert_eq!(answer["x402Version"], 1, "without an MPP credential the body stays x402's: {answer}");
    assert_eq!(headers["cache-control"], "no-store");
    mpp_challenge(&headers)
}

fn pay(payer: &Wallet, fields: &ChallengeFields, derivation: NonceDerivation) -> String {
    client::pay(payer, fields, "USDC", "2", derivation).unwrap()
}

/// Asserts a 402 refusal with problem type `kind`, and a fresh challenge.
fn assert_refused(what: &str, (status, headers, body): &(u16, HeaderMap, Value), kind: &str) {
    assert_eq!(*status, 402, "{what}: {body}");
    assert_eq!(headers["content-type"], "application/problem+json", "{what}");
    assert_eq!(body["type"], format!("{PROBLEM_BASE}{kind}"), "{what}: {body}");
    assert_eq!(body["status"], 402, "{what}");
    assert!(!headers.contains_key("payment-receipt"), "{what}: no receipt on a refusal");
    let _ = mpp_challenge(headers);
}

fn assert_paid(what: &str, (status, headers, body): &(u16, HeaderMap, Value)) {
    assert!((200..300).contains(status), "{what}: {status} {body}");
    let receipt = headers["payment-receipt"].to_str().unwrap();
    let receipt = vendbox_pay::mpp::decode_json(receipt).unwrap();
    assert_eq!(receipt["status"], "success", "{what}");
    assert_eq!(receipt["method"], "evm", "{what}");
    assert!(receipt["reference"].as_str().unwrap().starts_with("0x"), "{what}: {receipt}");
    assert_eq!(headers["cache-control"], "private", "{what}");
}

async fn balances(shop: &Shop, payer: EvmAddress) -> (u64, u64) {
    (shop.balance(payer).await, shop.balance(shop.pay_to).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_clients_pay_a_lock_with_mpp() {
    let python = std::process::Command::new("python3")
        .args(["-c", "import mpp.methods.evm.client"])
        .status()
        .is_ok_and(|s| s.success());
    let node = shop::repo_root().join("tests/clients/mpp/node_modules/mppx").exists();
    if !python || !node {
        support::requirement_missing("the official MPP clients (pympp[evm], mppx) are not installed");
        return;
    }
    let Some(shop) = open().await else { return };
    let (asset, chain_id) = (shop.asset.to_string(), shop.anvil.chain_id.to_string());
    for (program, script, key) in [("python3", "pay_mpp.py", "pympp"), ("node", "pay_mpp.mjs", "mppx")] {
        let payer = shop.payer().await;
        let (_, payee_before) = balances(&shop, payer.address()).await;
        let body = String::from_utf8(lock_body(key)).unwrap();
        let args = ["--method", "POST", "--json", &body, "--asset", &asset, "--chain-id", &chain_id];
        let result = shop.run_client_on(program, script, &payer, &format!("/v1/locks/mpp-{key}"), &args);
        assert!((200..300).contains(&result["status"].as_u64().unwrap()), "{key}: {result}");
        assert_eq!(result["body"]["acquired"], true, "{key}: {result}");
        assert_eq!(result["receipt"]["status"], "success", "{key}: {result}");
        assert_eq!(result["cache_control"], "private", "{key}: {result}");
        assert_eq!(result["credential"]["challenge"]["method"], "evm", "{key} paid with MPP: {result}");
        assert!(
            result["credential"]["challenge"]["digest"].is_string(),
            "{key}: the body is bound: {result}"
        );
        assert!(
            result.get("payment_response").is_none_or(Value::is_null),
            "{key} did not pay x402: {result}"
        );
        assert_eq!(
            balances(&shop, payer.address()).await,
            (FUNDS - LOCK_PRICE, payee_before + LOCK_PRICE),
            "{key}: the balances moved by exactly the price"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_are_refused_with_the_drafts_problem_types_and_no_money_moves() {
    let Some(shop) = open().await else { return };
    let payer = shop.payer().await;
    let (_, payee_before) = balances(&shop, payer.address()).await;
    let url = |key: &str| shop.url(&format!("/v1/locks/mpp-{key}"));
    let body = lock_body("attacker");

    // An honest payment, with the draft's nonce derivation: paid once.
    let honest = challenge(&url("a"), &body).await;
    let credential = pay(&payer, &honest, NonceDerivation::Concatenated);
    assert_paid("honest", &post(&url("a"), &body, Some(&credential)).await);

    // The same credential again.
    assert_refused("replayed", &post(&url("a"), &body, Some(&credential)).await, "invalid-challenge");
    // The same challenge, paid by another wallet: a challenge is paid once, whoever pays it.
    let other_payer = shop.payer().await;
    let (other_before, _) = balances(&shop, other_payer.address()).await;
    let second_wallet = pay(&other_payer, &honest, NonceDerivation::Concatenated);
    assert_refused(
        "paid by another wallet",
        &post(&url("a"), &body, Some(&second_wallet)).await,
        "invalid-challenge",
    );
    assert_eq!(balances(&shop, other_payer.address()).await.0, other_before, "the other wallet paid nothing");

    // A credential signed for one challenge, echoing another.
    let first = challenge(&url("b"), &body).await;
    let second = challenge(&url("b"), &body).await;
    assert_ne!(first.id, second.id, "every challenge is new");
    let mut crossed = client::credential(&payer, &first, "USDC", "2", NonceDerivation::Concatenated).unwrap();
    crossed.challenge = second.clone();
    assert_refused(
        "signed for another challenge",
        &post(&url("b"), &body, Some(&crossed.to_authorization())).await,
        "verification-failed",
    );
    // A genuine credential of another route (another lock).
    let other = pay(&payer, &first, NonceDerivation::Concatenated);
    assert_refused("another route", &post(&url("c"), &body, Some(&other)).await, "invalid-challenge");

    // Tampered request (a lower price) and opaque, signed as tampered.
    let mut cheaper = first.clone();
    let mut request = cheaper.request_json().unwrap();
    request["amount"] = json!("1");
    cheaper.request = vendbox_pay::mpp::encode_json(&request);
    assert_refused(
        "tampered request",
        &post(&url("b"), &body, Some(&pay(&payer, &cheaper, NonceDerivation::Concatenated))).await,
        "invalid-challenge",
    );
    let mut moved = first.clone();
    moved.opaque = Some(vendbox_pay::mpp::encode_json(&json!({ "resource": url("c") })));
    assert_refused(
        "tampered opaque",
        &post(&url("b"), &body, Some(&pay(&payer, &moved, NonceDerivation::Concatenated))).await,
        "invalid-challenge",
    );

    // Another body than the one the challenge was issued for.
    assert!(first.digest.is_some(), "a request with a body is bound to it");
    let credential = pay(&payer, &first, NonceDerivation::Concatenated);
    assert_refused(
        "another body",
        &post(&url("b"), &lock_body("someone-else"), Some(&credential)).await,
        "invalid-challenge",
    );

    // An expired challenge, otherwise genuine (bound with vendbox's secret).
    let secret = BindingSecret::new(SECRET.as_bytes()).unwrap();
    let mut expired = first.clone();
    expired.expires = Some("2020-01-01T00:00:00Z".into());
    let expired = expired.bound(&secret);
    assert_refused(
        "expired",
        &post(&url("b"), &body, Some(&pay(&payer, &expired, NonceDerivation::Concatenated))).await,
        "payment-expired",
    );

    // A challenge id forged without the secret.
    let mut forged = first.clone();
    forged.expires = Some("2099-01-01T00:00:00Z".into());
    let forged = forged.bound(&BindingSecret::new(&[42; 32]).unwrap());
    assert_refused(
        "forged id",
        &post(&url("b"), &body, Some(&pay(&payer, &forged, NonceDerivation::Concatenated))).await,
        "invalid-challenge",
    );

    // A malformed credential.
    assert_refused(
        "malformed",
        &post(&url("b"), &body, Some("Payment !!not-base64!!")).await,
        "malformed-credential",
    );

    // A method vendbox does not take (its challenge otherwise genuine): 400, not a 402 offering
    // terms for it.
    let mut tempo = client::credential(&payer, &first, "USDC", "2", NonceDerivation::Concatenated).unwrap();
    tempo.challenge.method = "tempo".into();
    tempo.challenge = tempo.challenge.clone().bound(&secret);
    let (status, headers, problem) = post(&url("b"), &body, Some(&tempo.to_authorization())).await;
    assert_eq!(status, 400, "another method: {problem}");
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(problem["type"], format!("{PROBLEM_BASE}method-unsupported"), "{problem}");
    assert_eq!(problem["status"], 400);
    assert!(problem["detail"].as_str().unwrap().contains("tempo"), "{problem}");
    assert!(!headers.contains_key("payment-receipt"));

    assert_eq!(
        balances(&shop, payer.address()).await,
        (FUNDS - LOCK_PRICE, payee_before + LOCK_PRICE),
        "only the honest payment moved money"
    );

    // pympp's nonce derivation is taken too; one credential sent ten times at once settles once.
    let fresh = challenge(&url("d"), &body).await;
    let credential = pay(&payer, &fresh, NonceDerivation::JsonArray);
    let target = url("d");
    let sends = (0..10).map(|_| post(&target, &body, Some(&credential)));
    let answers = futures_util::future::join_all(sends).await;
    let paid: Vec<_> = answers.iter().filter(|a| (200..300).contains(&a.0)).collect();
    assert_eq!(paid.len(), 1, "one of ten: {:?}", answers.iter().map(|a| a.0).collect::<Vec<_>>());
    assert_paid("pympp's derivation", paid[0]);
    for refused in answers.iter().filter(|a| a.0 == 402) {
        assert_refused("concurrent", refused, "invalid-challenge");
    }
    assert_eq!(
        balances(&shop, payer.address()).await,
        (FUNDS - 2 * LOCK_PRICE, payee_before + 2 * LOCK_PRICE),
        "two payments, each of exactly the price"
    );
}

/// A valid OpenSSH public key line.
const SSH_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test";

/// A 15-minute bare Linux machine: 0.25 + 0.01 × 15 USDC.
const ORDER_PRICE: u64 = 400_000;

fn order_body(request_id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "request_id": request_id,
        "product_id": "bare-linux-machine",
        "duration_minutes": 15,
        "ssh_public_key": SSH_KEY,
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storefront_order_is_one_order_one_machine_and_one_transfer() {
    if !boxhost::boxes_supported() {
        return;
    }
    let Some(shop) = open().await else { return };
    let _cleanup = boxhost::Cleanup::after(shop.vendbox.child.id(), shop.dir.path().join("state"));
    let payer = shop.payer().await;
    let (_, payee_before) = balances(&shop, payer.address()).await;
    let orders = shop.url("/api/machine/mpp/orders");
    let body = order_body("0b6f6c1e-3c1a-4d8e-9a57-2f7d3c9e1a42");

    // The quote, with no side effect.
    let (status, _, valid) = post(&format!("{orders}/validate"), &body, None).await;
    assert_eq!(status, 200, "{valid}");
    assert_eq!(
        (valid["protocol"].as_str(), valid["product_type"].as_str()),
        (Some("mpp"), Some("machine_lease"))
    );
    assert_eq!(valid["methods"], json!(["evm"]));
    let quote = &valid["quote"];
    assert_eq!(
        (quote["amount_cents"].as_u64(), quote["amount"].as_str()),
        (Some(40), Some("0.40")),
        "{valid}"
    );
    assert_eq!(
        (quote["base_fee_cents"].as_u64(), quote["unit_price_cents_per_minute"].as_u64()),
        (Some(25), Some(1))
    );

    // Unpaid: 402 with the challenges and the order, which nothing records yet.
    let (status, headers, unpaid) = post(&orders, &body, None).await;
    assert_eq!(status, 402, "{unpaid}");
    let order_id = unpaid["order_id"].as_str().unwrap().to_owned();
    assert!(order_id.starts_with("order_") && unpaid["status"] == "unpaid", "{unpaid}");
    let challenge = mpp_challenge(&headers);
    let (again, _, repeated) = post(&orders, &body, None).await;
    assert_eq!((again, repeated["order_id"].as_str()), (402, Some(order_id.as_str())), "the same order");
    let poll = |id: &str| reqwest::get(format!("{orders}/{id}"));
    assert_eq!(poll(&order_id).await.unwrap().status(), 404, "an unpaid order leaves nothing behind");

    // The paid retry, sent ten times at once with one credential.
    let credential = pay(&payer, &challenge, NonceDerivation::Concatenated);
    let answers =
        futures_util::future::join_all((0..10).map(|_| post(&orders, &body, Some(&credential)))).await;
    let made: Vec<_> = answers.iter().filter(|a| a.0 == 202 && a.2.get("machine").is_some()).collect();
    assert_eq!(made.len(), 1, "one machine: {:?}", answers.iter().map(|a| (a.0, &a.2)).collect::<Vec<_>>());
    let (_, paid_headers, paid) = made[0];
    assert_paid("the order", &(202, paid_headers.clone(), paid.clone()));
    assert_eq!(
        (paid["order_id"].as_str(), paid["status"].as_str()),
        (Some(order_id.as_str()), Some("settled"))
    );
    assert_eq!((paid["payment_status"].as_str(), paid["is_paid"].as_bool()), (Some("paid"), Some(true)));
    assert!(paid["machine"]["management"]["terminate_token"].is_string(), "{paid}");
    assert!(paid["machine"]["machine_id"].as_str().unwrap().starts_with("machine_"), "{paid}");
    for (status, _, other) in answers.iter().filter(|a| a.2.get("machine").is_none()) {
        let settled_again = *status == 202 && other["status"] == "settled";
        let in_progress = *status == 400 && other["code"] == "request_in_progress";
        let replayed = *status == 402 && other["type"] == format!("{PROBLEM_BASE}invalid-challenge");
        assert!(settled_again || in_progress || replayed, "{status} {other}");
    }
    assert_eq!(
        balances(&shop, payer.address()).await,
        (FUNDS - ORDER_PRICE, payee_before + ORDER_PRICE),
        "one transfer of exactly the price"
    );
    let polled: Value = poll(&order_id).await.unwrap().json().await.unwrap();
    assert_eq!(
        (polled["status"].as_str(), polled["is_paid"].as_bool()),
        (Some("settled"), Some(true)),
        "{polled}"
    );
    assert!(polled.get("machine").is_none(), "the tokens were shown once: {polled}");

    // Idempotency-Key names the order instead of request_id.
    let other = order_body("5d0e8a7c-1b2f-4c3d-8e9f-0a1b2c3d4e5f");
    let keyed = [("idempotency-key", "agent-order-7")];
    let (_, _, first) = post_with(&orders, &other, &keyed).await;
    let (_, _, second) =
        post_with(&orders, &order_body("9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"), &keyed).await;
    assert_eq!(first["order_id"], second["order_id"], "one key, one order");
    assert_ne!(first["order_id"], json!(order_id));

    // Every answer validates against the seed's own document.
    let exchange = |method: &str, path: &str, status: u16, content_type: &str, body: &Value| json!({ "method": method, "path": path, "status": status, "content_type": content_type, "body": body });
    let order_path = format!("/api/machine/mpp/orders/{order_id}");
    let exchanges = [
        exchange("POST", "/api/machine/mpp/orders/validate", 200, "application/json", &valid),
        exchange("POST", "/api/machine/mpp/orders", 402, "application/json", &unpaid),
        exchange("POST", "/api/machine/mpp/orders", 202, "application/json", paid),
        exchange("GET", &order_path, 200, "application/json", &polled),
    ];
    assert_seed_valid(&exchanges);

    // The official clients pay an order too, each with its own request id.
    let python = std::process::Command::new("python3")
        .args(["-c", "import mpp.methods.evm.client"])
        .status()
        .is_ok_and(|s| s.success());
    let node = shop::repo_root().join("tests/clients/mpp/node_modules/mppx").exists();
    if !python || !node {
        support::requirement_missing("the official MPP clients (pympp[evm], mppx) are not installed");
        return;
    }
    let clients = [
        ("python3", "pay_mpp.py", "pympp", "7e6d5c4b-3a29-4180-9f7e-6d5c4b3a2918"),
        ("node", "pay_mpp.mjs", "mppx", "3c2b1a09-8f7e-4d6c-9b5a-4e3d2c1b0a98"),
    ];
    for (program, script, key, request_id) in clients {
        let buyer = shop.payer().await;
        let (_, payee_before) = balances(&shop, buyer.address()).await;
        let body = String::from_utf8(order_body(request_id)).unwrap();
        let (asset, chain_id) = (shop.asset.to_string(), shop.anvil.chain_id.to_string());
        let args = ["--method", "POST", "--json", &body, "--asset", &asset, "--chain-id", &chain_id];
        let result = shop.run_client_on(program, script, &buyer, "/api/machine/mpp/orders", &args);
        assert_eq!(result["status"], 202, "{key}: {result}");
        assert_eq!(result["body"]["status"], "settled", "{key}: {result}");
        assert!(result["body"]["machine"]["machine_id"].is_string(), "{key}: {result}");
        assert_eq!(result["receipt"]["status"], "success", "{key}: {result}");
        assert_eq!(result["credential"]["challenge"]["method"], "evm", "{key} paid with MPP: {result}");
        assert_eq!(
            balances(&shop, buyer.address()).await,
            (FUNDS - ORDER_PRICE, payee_before + ORDER_PRICE),
            "{key}: one transfer of exactly the price"
        );
    }
}

/// Checks `exchanges` with `tests/seeds/validate.py` against the Storefront's own document, when
/// the validator can run.
fn assert_seed_valid(exchanges: &[Value]) {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/seeds");
    let ready = std::process::Command::new("python3")
        .args(["-c", "import openapi_schema_validator, referencing"])
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        support::requirement_missing("python3 with openapi-schema-validator is not installed");
        return;
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(exchanges).unwrap()).unwrap();
    let output = std::process::Command::new("python3")
        .arg(dir.join("validate.py"))
        .arg(dir.join("agentic-compute-storefront.openapi.json"))
        .arg(file.path())
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["failures"], json!([]), "{report}");
    assert_eq!(report["checked"], exchanges.len(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vendbox_fetch_pays_with_mpp() {
    let Some(shop) = open().await else { return };
    let payer = shop.payer().await;
    let (_, payee_before) = balances(&shop, payer.address()).await;
    let body = String::from_utf8(lock_body("fetch")).unwrap();
    let output = std::process::Command::new(support::BIN)
        .args(["fetch", &shop.url("/v1/locks/mpp-fetch"), "-X", "POST", "-d", &body, "--pay", "mpp"])
        .env("VENDBOX_WALLET_KEY", payer.secret_hex())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answer["acquired"], true, "{answer}");
    assert!(stderr.contains("transaction 0x"), "{stderr}");
    assert_eq!(
        balances(&shop, payer.address()).await,
        (FUNDS - LOCK_PRICE, payee_before + LOCK_PRICE),
        "paid exactly the price, once"
    );
}
