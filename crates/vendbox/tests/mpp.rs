//! MPP, the "Payment" HTTP authentication scheme, end to end on a local chain: the official
//! clients (pympp and mppx, their `evm` charge) pay a lock acquisition and the token balances move
//! by exactly the price; every attack on a challenge or a credential is refused with the draft's
//! problem type, and no money moves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

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
    let mut request =
        reqwest::Client::new().post(url).header("content-type", "application/json").body(body.to_vec());
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
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
