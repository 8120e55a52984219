//! Wallet-signature authentication and API keys, end to end on the real binary: requests signed
//! with `eth_account` (and one with `viem`) as the README shows; a replay, a reused nonce, a
//! timestamp outside the window, a signature over another body or path, and one by another
//! wallet are each refused with their code; an API key works (as `X-API-Key` and as a `vbk_`
//! bearer) until it is revoked, and never after.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use serde_json::{Value, json};
use support::Vendbox;
use vendbox_pay::Wallet;

fn clients() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients")
}

fn signer_installed() -> bool {
    let ok = Command::new("python3").args(["-c", "import eth_account"]).status().is_ok_and(|s| s.success());
    if !ok {
        support::requirement_missing("the eth_account Python package is not installed");
    }
    ok
}

fn viem_installed() -> bool {
    let ok = clients().join("node_modules/viem").exists();
    if !ok {
        support::requirement_missing("viem is not installed (npm install --prefix tests/clients)");
    }
    ok
}

/// The `X-Auth-*` headers `wallet` makes for `method path body` with `sign_auth.py` (eth_account),
/// with `extra` arguments (`--timestamp`, `--nonce`, `--address`).
fn sign(wallet: &Wallet, method: &str, path: &str, body: &str, extra: &[&str]) -> Vec<(String, String)> {
    run_signer("python3", "sign_auth.py", wallet, method, path, body, extra)
}

fn run_signer(
    program: &str,
    script: &str,
    wallet: &Wallet,
    method: &str,
    path: &str,
    body: &str,
    extra: &[&str],
) -> Vec<(String, String)> {
    let output = Command::new(program)
        .current_dir(clients())
        .arg(script)
        .args([method, path, body])
        .args(extra)
        .env("VENDBOX_WALLET_KEY", wallet.secret_hex())
        .output()
        .unwrap();
    assert!(output.status.success(), "{script}: {}", String::from_utf8_lossy(&output.stderr));
    let headers: serde_json::Map<String, Value> = serde_json::from_slice(&output.stdout).unwrap();
    headers.into_iter().map(|(k, v)| (k, v.as_str().unwrap().to_owned())).collect()
}

/// Sends `method path` with `body` and `headers`; the status and the JSON answer.
async fn send(
    vendbox: &Vendbox,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(String, String)],
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method.parse().unwrap(), format!("{}{path}", vendbox.url))
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn code(answer: &(u16, Value)) -> (u16, &str) {
    (answer.0, answer.1["error"]["code"].as_str().unwrap_or("-"))
}

fn start(dir: &tempfile::TempDir, env: &[(&str, &str)]) -> Vendbox {
    Vendbox::start_with(dir.path(), &["--data-dir", "state"], env)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[tokio::test]
async fn signed_requests_are_refused_on_replay_stale_time_other_body_path_or_wallet() {
    if !signer_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vendbox = start(&dir, &[("VENDBOX_SERVER__AUTH_WINDOW_SECS", "60")]);
    let (wallet, other) = (Wallet::random(), Wallet::random());
    let body = json!({ "label": "first" }).to_string();

    let headers = sign(&wallet, "POST", "/compute/api-keys", &body, &[]);
    let made = send(&vendbox, "POST", "/compute/api-keys", &body, &headers).await;
    assert_eq!(made.0, 201, "{made:?}");
    assert_eq!(made.1["label"], "first");
    // The same request again, byte for byte: a replay.
    let replay = send(&vendbox, "POST", "/compute/api-keys", &body, &headers).await;
    assert_eq!(code(&replay), (401, "nonce_reused"), "{replay:?}");
    // Another request, signed afresh, reusing that nonce.
    let nonce = headers.iter().find(|(n, _)| n == "X-Auth-Nonce").unwrap().1.clone();
    let reused = sign(&wallet, "GET", "/compute/api-keys", "", &["--nonce", &nonce]);
    assert_eq!(code(&send(&vendbox, "GET", "/compute/api-keys", "", &reused).await), (401, "nonce_reused"));

    // Timestamps out of the 60 s window, either way; one inside it passes.
    for off in [-90_000, 90_000] {
        let ts = (now_ms() + off).to_string();
        let stale = sign(&wallet, "GET", "/compute/api-keys", "", &["--timestamp", &ts]);
        let answer = send(&vendbox, "GET", "/compute/api-keys", "", &stale).await;
        assert_eq!(code(&answer), (401, "timestamp_out_of_window"), "{off}: {answer:?}");
    }
    let ts = (now_ms() - 30_000).to_string();
    let recent = sign(&wallet, "GET", "/compute/api-keys", "", &["--timestamp", &ts]);
    let listed = send(&vendbox, "GET", "/compute/api-keys", "", &recent).await;
    assert_eq!(listed.0, 200, "{listed:?}");
    assert_eq!(listed.1["api_keys"].as_array().unwrap().len(), 1);

    // A signature over another body, another path, another query: each refused.
    let signed = sign(&wallet, "POST", "/compute/api-keys", r#"{"label":"a"}"#, &[]);
    let swapped = send(&vendbox, "POST", "/compute/api-keys", r#"{"label":"b"}"#, &signed).await;
    assert_eq!(code(&swapped), (401, "bad_signature"), "{swapped:?}");
    let signed = sign(&wallet, "GET", "/compute/instances", "", &[]);
    assert_eq!(code(&send(&vendbox, "GET", "/compute/api-keys", "", &signed).await), (401, "bad_signature"));
    let signed = sign(&wallet, "GET", "/compute/api-keys?page=1", "", &[]);
    assert_eq!(code(&send(&vendbox, "GET", "/compute/api-keys", "", &signed).await), (401, "bad_signature"));
    let signed = sign(&wallet, "GET", "/compute/api-keys", "", &[]);
    assert_eq!(code(&send(&vendbox, "DELETE", "/compute/api-keys", "", &signed).await).1, "bad_signature");
    // Another wallet's signature, claiming this wallet's address.
    let address = wallet.address().to_string();
    let forged = sign(&other, "GET", "/compute/api-keys", "", &["--address", &address]);
    let answer = send(&vendbox, "GET", "/compute/api-keys", "", &forged).await;
    assert_eq!(code(&answer), (401, "bad_signature"), "{answer:?}");
    // A signature that is not one, a chain that is not verified, and none at all.
    let mut broken = sign(&wallet, "GET", "/compute/api-keys", "", &[]);
    broken.iter_mut().find(|(n, _)| n == "X-Auth-Signature").unwrap().1 = "0x1234".into();
    assert_eq!(code(&send(&vendbox, "GET", "/compute/api-keys", "", &broken).await), (401, "bad_signature"));
    let mut solana = sign(&wallet, "GET", "/compute/api-keys", "", &[]);
    solana.iter_mut().find(|(n, _)| n == "X-Auth-Chain").unwrap().1 = "solana".into();
    assert_eq!(
        code(&send(&vendbox, "GET", "/compute/api-keys", "", &solana).await),
        (401, "unsupported_chain")
    );
    assert_eq!(code(&send(&vendbox, "GET", "/compute/api-keys", "", &[]).await), (401, "auth_required"));
    // None of the refused requests made a key.
    let fresh = sign(&wallet, "GET", "/compute/api-keys", "", &[]);
    let listed = send(&vendbox, "GET", "/compute/api-keys", "", &fresh).await;
    assert_eq!(listed.1["api_keys"].as_array().unwrap().len(), 1, "{listed:?}");

    // viem's signMessage makes the same kind of signature.
    if viem_installed() {
        let viem = run_signer("node", "sign_auth.mjs", &wallet, "GET", "/compute/api-keys", "", &[]);
        let answer = send(&vendbox, "GET", "/compute/api-keys", "", &viem).await;
        assert_eq!(answer.0, 200, "{answer:?}");
    }
}

#[tokio::test]
async fn an_api_key_works_until_revoked_and_never_after() {
    if !signer_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vendbox = start(&dir, &[]);
    let wallet = Wallet::random();
    let body = json!({
        "label": "sub-agent",
        "scope": { "kind": "boxes_up_to", "max_price": "0.50" },
        "daily_cap": "0.01",
    })
    .to_string();
    let made = send(
        &vendbox,
        "POST",
        "/compute/api-keys",
        &body,
        &sign(&wallet, "POST", "/compute/api-keys", &body, &[]),
    )
    .await;
    assert_eq!(made.0, 201, "{made:?}");
    let key = made.1["api_key"].as_str().unwrap().to_owned();
    let id = made.1["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("vbk_"), "{key}");
    assert_eq!(made.1["scope"], json!({ "kind": "boxes_up_to", "max_price": "0.50" }));
    assert_eq!(made.1["daily_cap"], "0.01");

    let by_header = [("X-API-Key".to_owned(), key.clone())];
    let by_bearer = [("Authorization".to_owned(), format!("Bearer {key}"))];
    for headers in [&by_header, &by_bearer] {
        let listed = send(&vendbox, "GET", "/compute/api-keys", "", headers).await;
        assert_eq!(listed.0, 200, "{listed:?}");
        let keys = listed.1["api_keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0]["id"], id.as_str());
        assert_eq!(keys[0]["key_last4"], &key[key.len() - 4..]);
        assert!(keys[0].get("api_key").is_none(), "the key is shown once only: {listed:?}");
        assert_eq!(keys[0]["revoked_at"], Value::Null);
    }
    // A key cannot make or revoke keys: that takes the wallet's signature.
    let refused = send(&vendbox, "POST", "/compute/api-keys", "{}", &by_header).await;
    assert_eq!(code(&refused), (403, "signature_required"), "{refused:?}");
    let path = format!("/compute/api-keys/{id}");
    assert_eq!(code(&send(&vendbox, "DELETE", &path, "", &by_header).await), (403, "signature_required"));
    // Another wallet cannot revoke it.
    let stranger = Wallet::random();
    let answer = send(&vendbox, "DELETE", &path, "", &sign(&stranger, "DELETE", &path, "", &[])).await;
    assert_eq!(code(&answer), (404, "api_key_not_found"), "{answer:?}");
    // A bearer that is not an API key stays a box's or lock's token: it authenticates nobody.
    let token = [("Authorization".to_owned(), "Bearer vbx_0123".to_owned())];
    assert_eq!(code(&send(&vendbox, "GET", "/compute/api-keys", "", &token).await), (401, "auth_required"));

    let revoked = send(&vendbox, "DELETE", &path, "", &sign(&wallet, "DELETE", &path, "", &[])).await;
    assert_eq!(revoked.0, 200, "{revoked:?}");
    assert!(revoked.1["api_key"]["revoked_at"].is_string(), "{revoked:?}");
    for headers in [&by_header, &by_bearer] {
        let answer = send(&vendbox, "GET", "/compute/api-keys", "", headers).await;
        assert_eq!(code(&answer), (401, "revoked_api_key"), "{answer:?}");
    }
    let unknown = [("X-API-Key".to_owned(), format!("vbk_{}", "0".repeat(64)))];
    assert_eq!(
        code(&send(&vendbox, "GET", "/compute/api-keys", "", &unknown).await),
        (401, "unknown_api_key")
    );
    // The wallet still sees the key, revoked.
    let listed =
        send(&vendbox, "GET", "/compute/api-keys", "", &sign(&wallet, "GET", "/compute/api-keys", "", &[]))
            .await;
    assert!(listed.1["api_keys"][0]["revoked_at"].is_string(), "{listed:?}");
}
