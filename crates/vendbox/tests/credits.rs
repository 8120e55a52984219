//! Prepaid credits end to end, on the real binary and a local chain: a wallet makes an API key
//! (signed with `eth_account`), tops up with the official x402 Python client, and then 100
//! concurrent 0.0001 USDC lock acquisitions paid from its credits leave the balance exactly
//! right with no transaction on the chain; a short balance gets a 402 naming what is missing;
//! a locks-only key cannot buy a box and a key with a 0.01 USDC daily cap is refused on the
//! purchase that would cross it; the account, its ledger and its payments are listed. A
//! wallet-signed top-up goes through the x402 client's paid retry of the same signed request (its
//! 402 gave the nonce back), and a third send of it is refused `nonce_reused`. The hundred locks
//! also split across two hosts sharing PostgreSQL leave the one balance exactly right. A crash
//! after a top-up's payment moved and before its credits were booked is repaired on restart,
//! once; and a per-minute box bought with x402 and ended early refunds its unused minutes to the
//! wallet's credits, once, the entry naming the lease.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod boxhost;
mod shop;
mod support;

use std::process::Command;

use serde_json::{Value, json};
use shop::Shop;
use vendbox_pay::Wallet;

fn signer_installed() -> bool {
    let ok = Command::new("python3").args(["-c", "import eth_account"]).status().is_ok_and(|s| s.success());
    if !ok {
        support::requirement_missing("the eth_account Python package is not installed");
    }
    ok
}

/// A new API key of `wallet` with `grant` (scope and caps).
async fn api_key(shop: &Shop, wallet: &Wallet, grant: Value) -> String {
    let body = grant.to_string();
    let mut request = reqwest::Client::new()
        .post(shop.url("/compute/api-keys"))
        .header("content-type", "application/json")
        .body(body.clone());
    for (name, value) in shop::sign_auth(wallet, "POST", "/compute/api-keys", &body) {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 201);
    response.json::<Value>().await.unwrap()["api_key"].as_str().unwrap().to_owned()
}

/// Sends `method path` with `key` and a JSON `body`: status, headers, answer.
async fn send(
    shop: &Shop,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request =
        reqwest::Client::new().request(method.parse().unwrap(), shop.url(path)).header("x-api-key", key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (status, headers, response.json().await.unwrap_or(Value::Null))
}

/// The chain's height, to see that credits send no transaction.
async fn block_number(shop: &Shop) -> u64 {
    let answer: Value = reqwest::Client::new()
        .post(&shop.anvil.rpc_url)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    u64::from_str_radix(answer["result"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

/// Tops `key`'s wallet up by `amount` with the official x402 Python client.
fn top_up(shop: &Shop, payer: &Wallet, key: &str, amount: &str) -> Value {
    let body = json!({ "amount": amount }).to_string();
    let header = format!("X-API-Key: {key}");
    shop.run_client_on(
        "python3",
        "pay_x402.py",
        payer,
        "/v1/account/topup",
        &["--method", "POST", "--json", &body, "--header", &header],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credits_pay_for_a_hundred_locks_at_once_without_the_chain() {
    if !signer_installed() || !shop::python_client_installed() {
        return;
    }
    let Some(shop) = Shop::open(31337, &[]).await else { return };
    let wallet = shop.payer().await;
    let key = api_key(&shop, &wallet, json!({ "label": "locks" })).await;

    // Without credits: a 402 that names credits and says what is missing.
    let (status, headers, body) =
        send(&shop, &key, "POST", "/x402/locks/acquire", Some(json!({ "key": "k:first" }))).await;
    assert_eq!(status, 402, "{body}");
    let credits: Value = serde_json::from_str(headers["vendbox-credits"].to_str().unwrap()).unwrap();
    assert_eq!(credits["error"], "insufficient_credits", "{credits}");
    assert!(credits["message"].as_str().unwrap().contains("0.0001 USDC short"), "{credits}");
    assert!(credits["topup"].as_str().unwrap().ends_with("/v1/account/topup"), "{credits}");

    // A top-up with the official client: booked once the x402 payment settled.
    let before = shop.balance(wallet.address()).await;
    let paid = top_up(&shop, &wallet, &key, "0.01");
    assert_eq!(paid["status"], 200, "{paid}");
    assert_eq!(before - shop.balance(wallet.address()).await, 10_000, "the wallet paid 0.01 USDC on chain");
    let (_, _, account) = send(&shop, &key, "GET", "/v1/account", None).await;
    assert_eq!(account["balance"], "0.01", "{account}");
    assert_eq!(account["recent"][0]["kind"], "top_up", "{account}");

    // 100 locks at once, 0.0001 USDC each: exactly the balance, and no block on the chain.
    let height = block_number(&shop).await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let (url, key) = (shop.url("/x402/locks/acquire"), key.clone());
        tasks.push(tokio::spawn(async move {
            let response = reqwest::Client::new()
                .post(url)
                .header("x-api-key", key)
                .json(&json!({ "key": format!("k:{i}"), "ttl_seconds": 60 }))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let receipt = response.headers().get("vendbox-receipt").map(|v| v.to_str().unwrap().to_owned());
            let body: Value = response.json().await.unwrap();
            (status, receipt, body)
        }));
    }
    let mut references = std::collections::HashSet::new();
    for task in tasks {
        let (status, receipt, body) = task.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["acquired"], true, "{body}");
        let receipt: Value = serde_json::from_str(&receipt.expect("a credits receipt")).unwrap();
        assert_eq!(receipt["method"], "credits");
        assert!(references.insert(receipt["reference"].as_str().unwrap().to_owned()), "one entry each");
    }
    assert_eq!(block_number(&shop).await, height, "credits sent no transaction");
    let (_, _, account) = send(&shop, &key, "GET", "/v1/account", None).await;
    assert_eq!((&account["balance"], &account["held"]), (&json!("0.00"), &json!("0.00")), "{account}");

    // Now short: refused, and not charged.
    let (status, _, body) =
        send(&shop, &key, "POST", "/x402/locks/acquire", Some(json!({ "key": "k:one-more" }))).await;
    assert_eq!(status, 402, "{body}");

    // The ledger by pages: 100 charges and the top-up.
    let mut entries = Vec::new();
    let mut path = "/v1/account/ledger?limit=40".to_owned();
    loop {
        let (status, _, page) = send(&shop, &key, "GET", &path, None).await;
        assert_eq!(status, 200, "{page}");
        entries.extend(page["entries"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/account/ledger?limit=40&before={next}"),
            None => break,
        }
    }
    assert_eq!(entries.len(), 101);
    assert_eq!(entries.iter().filter(|e| e["kind"] == "charge").count(), 100);

    // The wallet's payments: the x402 top-up and the 100 credit charges settled, the short
    // ones voided, with what each bought.
    let (status, _, payments) = send(&shop, &key, "GET", "/v1/account/payments?limit=5", None).await;
    assert_eq!(status, 200, "{payments}");
    assert_eq!(payments["totals"]["settled"]["count"], 101, "{payments}");
    assert_eq!(payments["totals"]["settled"]["amount"], "0.02", "{payments}");
    assert_eq!(payments["payments"].as_array().unwrap().len(), 5);
    assert!(payments["next"].is_string());
    let methods: Vec<&str> =
        payments["payments"].as_array().unwrap().iter().map(|p| p["method"].as_str().unwrap()).collect();
    assert!(methods.iter().all(|m| *m == "credits"), "{methods:?}");

    // Without a key or signature: 401.
    let response = reqwest::Client::new().get(shop.url("/v1/account")).send().await.unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_scopes_and_daily_caps_are_enforced_at_purchase() {
    if !signer_installed() || !shop::python_client_installed() {
        return;
    }
    let Some(shop) = Shop::open(31337, &[]).await else { return };
    let wallet = shop.payer().await;
    let owner = api_key(&shop, &wallet, json!({ "label": "owner" })).await;
    assert_eq!(top_up(&shop, &wallet, &owner, "0.10")["status"], 200);

    // A locks-only key takes locks, and cannot buy a box.
    let locks_only = api_key(&shop, &wallet, json!({ "scope": { "kind": "locks_only" } })).await;
    let (status, _, body) =
        send(&shop, &locks_only, "POST", "/x402/locks/acquire", Some(json!({ "key": "s:1" }))).await;
    assert_eq!(status, 200, "{body}");
    let (status, headers, body) =
        send(&shop, &locks_only, "POST", "/v1/boxes", Some(json!({ "offer": "h3retik-micro" }))).await;
    assert_eq!(status, 402, "{body}");
    let credits: Value = serde_json::from_str(headers["vendbox-credits"].to_str().unwrap()).unwrap();
    assert_eq!(credits["error"], "key_scope", "{credits}");

    // A key capped at 0.01 USDC a day: 100 locks pass, the 101st would cross the cap.
    let capped = api_key(&shop, &wallet, json!({ "daily_cap": "0.01" })).await;
    for i in 0..100 {
        let (status, _, body) =
            send(&shop, &capped, "POST", "/x402/locks/acquire", Some(json!({ "key": format!("c:{i}") })))
                .await;
        assert_eq!(status, 200, "{i}: {body}");
    }
    let (status, headers, body) =
        send(&shop, &capped, "POST", "/x402/locks/acquire", Some(json!({ "key": "c:over" }))).await;
    assert_eq!(status, 402, "{body}");
    let credits: Value = serde_json::from_str(headers["vendbox-credits"].to_str().unwrap()).unwrap();
    assert_eq!(credits["error"], "key_daily_cap", "{credits}");
    // The wallet's other keys are not capped by it.
    let (status, _, body) =
        send(&shop, &owner, "POST", "/x402/locks/acquire", Some(json!({ "key": "c:owner" }))).await;
    assert_eq!(status, 200, "{body}");
    let (_, _, account) = send(&shop, &owner, "GET", "/v1/account", None).await;
    assert_eq!(account["balance"], "0.0898", "0.10 less 102 locks: {account}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wallet_signed_top_up_is_paid_by_the_x402_clients_retry_and_not_replayed() {
    if !signer_installed() || !shop::python_client_installed() {
        return;
    }
    let Some(shop) = Shop::open(31337, &[]).await else { return };
    let wallet = shop.payer().await;
    let body = json!({ "amount": "0.02" }).to_string();
    let signed = shop::sign_auth(&wallet, "POST", "/v1/account/topup", &body);

    // The official client sends the signed request, is answered 402, and re-sends it unchanged
    // (the same X-Auth-Nonce) with its payment: the 402 gave the nonce back.
    let mut args = vec!["--method".to_owned(), "POST".to_owned(), "--json".to_owned(), body.clone()];
    for (name, value) in &signed {
        args.extend(["--header".to_owned(), format!("{name}: {value}")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let before = shop.balance(wallet.address()).await;
    let paid = shop.run_client_on("python3", "pay_x402.py", &wallet, "/v1/account/topup", &args);
    assert_eq!(paid["status"], 200, "{paid}");
    assert_eq!(paid["body"]["amount"], "0.02", "{paid}");
    assert_eq!(before - shop.balance(wallet.address()).await, 20_000, "paid once on chain");

    // A third send of the same signed request: its nonce is spent now.
    let mut again = reqwest::Client::new()
        .post(shop.url("/v1/account/topup"))
        .header("content-type", "application/json")
        .body(body.clone());
    for (name, value) in &signed {
        again = again.header(name, value);
    }
    let response = again.send().await.unwrap();
    assert_eq!(response.status(), 401);
    let refused: Value = response.json().await.unwrap();
    assert_eq!(refused["error"]["code"], "nonce_reused", "{refused}");

    // The account holds the one top-up.
    let path = "/v1/account";
    let mut request = reqwest::Client::new().get(shop.url(path));
    for (name, value) in shop::sign_auth(&wallet, "GET", path, "") {
        request = request.header(name, value);
    }
    let account: Value = request.send().await.unwrap().json().await.unwrap();
    assert_eq!(account["balance"], "0.02", "{account}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hosts_on_one_postgresql_spend_one_balance_exactly() {
    if !signer_installed() || !shop::python_client_installed() {
        return;
    }
    let Some(schema) = vendbox_store::testkit::PostgresSchema::create().await else { return };
    let url = schema.url();
    let env = [("VENDBOX_STORE__DATABASE_URL", url.as_str())];
    let Some(shop) = Shop::open(31337, &env).await else { return };
    let other_dir = tempfile::tempdir().unwrap();
    let other = shop::serve(&shop.anvil, shop.asset, shop.pay_to, other_dir.path(), &env);
    let wallet = shop.payer().await;
    let key = api_key(&shop, &wallet, json!({ "label": "two hosts" })).await;
    assert_eq!(top_up(&shop, &wallet, &key, "0.01")["status"], 200);

    // 100 locks at 0.0001 USDC, half through each host, all at once: exactly the balance.
    let height = block_number(&shop).await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let base = if i % 2 == 0 { shop.url("") } else { other.url.clone() };
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let response = reqwest::Client::new()
                .post(format!("{base}/x402/locks/acquire"))
                .header("x-api-key", key)
                .json(&json!({ "key": format!("two:{i}"), "ttl_seconds": 60 }))
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }));
    }
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(block_number(&shop).await, height, "credits sent no transaction");
    let (_, _, account) = send(&shop, &key, "GET", "/v1/account", None).await;
    assert_eq!((&account["balance"], &account["held"]), (&json!("0.00"), &json!("0.00")), "{account}");
    // Either host refuses the next one.
    let response = reqwest::Client::new()
        .post(format!("{}/x402/locks/acquire", other.url))
        .header("x-api-key", &key)
        .json(&json!({ "key": "two:over" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 402);
    drop(other);
    drop(shop);
    schema.drop_schema().await;
}

/// The `top_up` entries of `key`'s account, and its balance.
async fn top_ups(shop: &Shop, key: &str) -> (usize, Value) {
    let (status, _, page) = send(shop, key, "GET", "/v1/account/ledger?limit=200", None).await;
    assert_eq!(status, 200, "{page}");
    let count = page["entries"].as_array().unwrap().iter().filter(|e| e["kind"] == "top_up").count();
    let (_, _, account) = send(shop, key, "GET", "/v1/account", None).await;
    (count, account["balance"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_a_top_up_was_paid_is_repaired_on_restart_once() {
    if !signer_installed() || !shop::python_client_installed() {
        return;
    }
    // The x402 transfer of the top-up goes through, then vendbox dies before booking the credits.
    let Some(mut shop) = Shop::open(31337, &[("VENDBOX_FAULTS", "pause-after-settle=60")]).await else {
        return;
    };
    let wallet = shop.payer().await;
    let key = api_key(&shop, &wallet, json!({ "label": "crash" })).await;
    let before = shop.balance(wallet.address()).await;
    let body = json!({ "amount": "0.02" }).to_string();
    let (url, header, payer) = (shop.url("/v1/account/topup"), format!("X-API-Key: {key}"), wallet.clone());
    let client = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(shop::repo_root().join("tests/clients/pay_x402.py"))
            .args([url.as_str(), "--method", "POST", "--json", &body, "--header", &header])
            .env("VENDBOX_WALLET_KEY", payer.secret_hex())
            .output()
            .unwrap()
    });
    support::eventually(std::time::Duration::from_secs(30), "the top-up's transfer on chain", async || {
        let paid = before - shop.balance(wallet.address()).await;
        if paid == 20_000 { Ok(()) } else { Err(format!("paid {paid}")) }
    })
    .await;
    let (count, balance) = top_ups(&shop, &key).await;
    assert_eq!((count, balance), (0, json!("0.00")), "not booked before the crash");
    shop.vendbox.crash();
    let _ = client.await.unwrap();

    // Restarted: the settlement worker finds the payment settled on chain, and the top-up is
    // booked, once.
    shop.vendbox = shop.serve(&[("VENDBOX_PAYMENTS__SETTLE_GRACE_SECS", "1")]);
    support::eventually(
        std::time::Duration::from_secs(40),
        "the top-up booked after the restart",
        async || {
            let (count, balance) = top_ups(&shop, &key).await;
            if count == 1 { Ok(balance) } else { Err(format!("{count} top-ups, balance {balance}")) }
        },
    )
    .await;
    // Two more rounds of the workers, and another restart: still once.
    tokio::time::sleep(std::time::Duration::from_secs(11)).await;
    shop.vendbox.crash();
    shop.vendbox = shop.serve(&[("VENDBOX_PAYMENTS__SETTLE_GRACE_SECS", "1")]);
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    assert_eq!(top_ups(&shop, &key).await, (1, json!("0.02")));
    assert_eq!(before - shop.balance(wallet.address()).await, 20_000, "paid once on chain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_minute_box_ended_early_refunds_its_unused_minutes_once() {
    if !boxhost::boxes_supported() || !signer_installed() || !shop::python_client_installed() {
        return;
    }
    let Some(shop) = Shop::open(31337, &[]).await else { return };
    let _cleanup = boxhost::Cleanup::after(shop.vendbox.child.id(), shop.dir.path().join("state"));
    let wallet = shop.payer().await;
    // 10 minutes at 0.04 and one action at 0.01: 0.41 USDC with x402.
    let body = json!({ "offer": "h3retik-custom", "minutes": 10, "actions": 1 }).to_string();
    let paid = shop.run_client_on(
        "python3",
        "pay_x402.py",
        &wallet,
        "/v1/boxes",
        &["--method", "POST", "--json", &body],
    );
    assert_eq!(paid["status"], 201, "{paid}");
    let (id, token) = (paid["body"]["id"].as_str().unwrap(), paid["body"]["token"].as_str().unwrap());
    assert_eq!(shop::FUNDS - shop.balance(wallet.address()).await, 410_000);

    let end = async || {
        let response = reqwest::Client::new()
            .delete(shop.url(&format!("/v1/boxes/{id}")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json::<Value>().await.unwrap_or(Value::Null))
    };
    let (status, ended) = end().await;
    assert_eq!((status, &ended["state"]), (200, &json!("terminated")), "{ended}");
    // Ended within its first minute: 9 whole minutes unused, their time part back as credits.
    let key = api_key(&shop, &wallet, json!({ "label": "refund" })).await;
    let (_, _, account) = send(&shop, &key, "GET", "/v1/account", None).await;
    assert_eq!(account["balance"], "0.36", "{account}");
    assert_eq!(account["recent"][0]["kind"], "refund", "{account}");
    assert_eq!(account["recent"][0]["reference"], id, "the entry names the lease: {account}");
    // Ended again: nothing more.
    let _ = end().await;
    let (_, _, account) = send(&shop, &key, "GET", "/v1/account", None).await;
    assert_eq!(account["balance"], "0.36", "{account}");
    assert_eq!(account["recent"].as_array().unwrap().len(), 1, "{account}");
}

/// x402Compute's plan, made to boot the host's userland (no image to build).
const COMPUTE_CATALOG: &str = r#"
[[offers]]
id = "x402compute-vc2-1c-1gb"
images = ["host"]
default_image = "host"
resources = { vcpu = 1, memory_mb = 512, disk_gb = 1 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_is_provisioned_with_an_api_key_and_extended_with_a_signature_from_credits() {
    if !boxhost::boxes_supported() || !signer_installed() || !shop::python_client_installed() {
        return;
    }
    let Some(mut shop) = Shop::open(84532, &[]).await else { return };
    std::fs::write(shop.dir.path().join("vendbox.toml"), COMPUTE_CATALOG).unwrap();
    shop.vendbox = shop.serve(&[]);
    let _cleanup = boxhost::Cleanup::after(shop.vendbox.child.id(), shop.dir.path().join("state"));
    let wallet = shop.payer().await;
    let key = api_key(&shop, &wallet, json!({ "label": "machines" })).await;
    let topped = top_up(&shop, &wallet, &key, "1.00");
    assert_eq!(topped["status"], 200, "{topped}");
    let height = block_number(&shop).await;
    // 6 USD a month by the minute: 1 hour is 0.008334, 2 hours 0.016667.
    let (one_hour, two_hours) = (8_334_u64, 16_667_u64);

    // Provisioned with the API key: paid from credits, the receipt names the ledger entry.
    let order = json!({ "plan": "vc2-1c-1gb", "prepaid_hours": 1, "label": "credits" });
    let (status, headers, made) = send(&shop, &key, "POST", "/compute/provision", Some(order)).await;
    assert_eq!((status, &made["success"]), (200, &json!(true)), "{made}");
    let receipt: Value = serde_json::from_str(headers["vendbox-receipt"].to_str().unwrap()).unwrap();
    assert_eq!(
        (receipt["method"].as_str(), receipt["amount"].as_str()),
        (Some("credits"), Some("0.008334 USDC"))
    );
    let id = made["order"]["id"].as_str().unwrap().to_owned();
    let (status, _, got) = send(&shop, &key, "GET", &format!("/compute/instances/{id}"), None).await;
    assert_eq!((status, got["instance"]["status"].as_str()), (200, Some("active")), "{got}");

    // Extended with the wallet's signature alone: paid from the same credits.
    let path = format!("/compute/instances/{id}/extend");
    let body = json!({ "extend_hours": 2 }).to_string();
    let mut request = reqwest::Client::new()
        .post(shop.url(&path))
        .header("content-type", "application/json")
        .body(body.clone());
    for (name, value) in shop::sign_auth(&wallet, "POST", &path, &body) {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let paid_with = response.headers().get("vendbox-receipt").map(|v| v.to_str().unwrap().to_owned());
    let extended: Value = response.json().await.unwrap();
    assert_eq!((status, extended["extended_hours"].as_u64()), (200, Some(2)), "{extended}");
    assert!(paid_with.is_some_and(|r| r.contains("\"credits\"")), "paid with credits: {extended}");

    // The balance went down by exactly both prices, two charges in the ledger, and the chain
    // saw no transaction.
    let (_, _, account) = send(&shop, &key, "GET", "/v1/account", None).await;
    assert_eq!(1_000_000 - one_hour - two_hours, 974_999);
    assert_eq!(account["balance"], "0.974999", "{account}");
    let charges: Vec<&Value> =
        account["recent"].as_array().unwrap().iter().filter(|e| e["kind"] == "charge").collect();
    assert_eq!(charges.len(), 2, "{account}");
    assert_eq!(block_number(&shop).await, height, "credits sent nothing to the chain");
}
