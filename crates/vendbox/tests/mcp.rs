//! The MCP tools, driven by the official MCP Python SDK (`mcp` on PyPI,
//! `tests/clients/mcp_client.py`) over stdio (`vendbox mcp`, an API key's credits paying) and
//! over streamable HTTP (`/mcp` with the API key): the tools are listed with their schemas, a box
//! is bought within a max price (and refused above it, with nothing spent), `python3 -c
//! 'print(6*7)'` answers 42, a long command reports progress, a file is written, listed and read
//! back, a wrong token and an ended box are tool errors saying what to do, and a lock is taken,
//! renewed and released; the credits go down by exactly what the tools said they paid.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod boxhost;
mod shop;
mod support;

use std::process::Command;

use serde_json::{Value, json};
use shop::Shop;
use vendbox_core::Usdc;
use vendbox_pay::Wallet;

/// The tools every MCP connection lists.
const TOOLS: [&str; 15] = [
    "acquire_lock",
    "balance",
    "buy_box",
    "exec",
    "extend_box",
    "list_files",
    "list_offers",
    "quote",
    "read_file",
    "release_lock",
    "renew_lock",
    "ssh_details",
    "terminate_box",
    "top_up",
    "write_file",
];

fn mcp_sdk_installed() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import mcp, eth_account, x402"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        support::requirement_missing("the mcp, eth_account and x402 Python packages are not installed");
    }
    ok
}

/// A shop, and an API key of a wallet holding 0.50 USDC of credits.
async fn shop_with_credits() -> Option<(Shop, String)> {
    let shop = Shop::open(31337, &[]).await?;
    let wallet = shop.payer().await;
    let key = api_key(&shop, &wallet).await;
    let body = json!({ "amount": "0.50" }).to_string();
    let header = format!("X-API-Key: {key}");
    let paid = shop.run_client_on(
        "python3",
        "pay_x402.py",
        &wallet,
        "/v1/account/topup",
        &["--method", "POST", "--json", &body, "--header", &header],
    );
    assert_eq!(paid["status"], 200, "{paid}");
    Some((shop, key))
}

async fn api_key(shop: &Shop, wallet: &Wallet) -> String {
    let body = json!({ "label": "mcp" }).to_string();
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

/// Runs `mcp_client.py` with `args`; what it saw.
fn drive(args: &[&str]) -> Value {
    let output = Command::new("python3")
        .arg(shop::repo_root().join("tests/clients/mcp_client.py"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "mcp_client.py failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().rev().find(|l| l.starts_with('{')).unwrap()).unwrap()
}

fn usdc(value: &Value) -> Usdc {
    value.as_str().unwrap_or_else(|| panic!("not an amount: {value}")).parse().unwrap()
}

/// What every transport must show.
fn check(seen: &Value) {
    let tools: Vec<&str> = seen["tools"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(tools, TOOLS, "{seen}");
    // Schemas a model can follow: buy_box requires the offer and the max price, and documents them.
    let buy = &seen["schemas"]["buy_box"];
    let required: Vec<&str> =
        buy["required"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    assert!(required.contains(&"offer_id") && required.contains(&"max_price_usdc"), "{buy}");
    assert!(buy["properties"]["offer_id"]["description"].as_str().unwrap().contains("list_offers"), "{buy}");

    assert!(seen["offers"]["count"].as_u64().unwrap() > 0, "{}", seen["offers"]);
    // Over the max price: a tool error that says what to do, and nothing spent.
    let refused = seen["too_cheap"]["error"].as_str().expect("a tool error");
    assert!(
        refused.contains("more than max_price_usdc") && refused.contains("nothing was bought"),
        "{refused}"
    );
    assert_eq!(seen["balance_before"]["balance"], "0.50", "{}", seen["balance_before"]);

    let bought = &seen["bought"];
    assert_eq!(bought["state"], "active", "{bought}");
    assert_eq!(bought["paid_usdc"], seen["quote"]["price_usdc"], "the quoted price was paid: {bought}");
    let box_price = usdc(&bought["paid_usdc"]);
    assert_eq!(
        usdc(&seen["balance_before"]["balance"]).atomic()
            - usdc(&seen["balance_after_box"]["balance"]).atomic(),
        box_price.atomic(),
        "the credits went down by exactly the box's price"
    );

    assert_eq!(seen["exec"]["exit_code"], 0, "{}", seen["exec"]);
    assert_eq!(seen["exec"]["stdout"], "42\n", "{}", seen["exec"]);
    assert_eq!(seen["long"]["stdout"], "tick 1\ntick 2\ntick 3\n", "{}", seen["long"]);
    let progress = seen["progress"].as_array().unwrap();
    assert!(progress.len() >= 3, "a progress notification per line of output: {progress:?}");
    assert!(progress.iter().any(|p| p["message"] == "tick 2"), "{progress:?}");

    assert_eq!(seen["write"]["size"], 15, "{}", seen["write"]);
    let names: Vec<&str> =
        seen["list"]["entries"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["hello.txt"], "{}", seen["list"]);
    assert_eq!(seen["read"]["content"], "hello from mcp\n", "{}", seen["read"]);
    assert_eq!(seen["read"]["encoding"], "utf8");
    assert_eq!(seen["ssh"]["state"], "active", "{}", seen["ssh"]);
    assert!(seen["ssh"]["ssh"].is_string(), "{}", seen["ssh"]);

    let wrong = seen["wrong_token"]["error"].as_str().expect("a tool error");
    assert!(wrong.contains("Pass the token buy_box"), "{wrong}");

    assert_eq!(seen["lock"]["acquired"], true, "{}", seen["lock"]);
    assert!(seen["lock"]["fencing_token"].as_u64().is_some(), "{}", seen["lock"]);
    assert_eq!(seen["renew"]["renewed"], true, "{}", seen["renew"]);
    assert_eq!(seen["lock"]["lock"]["key"], "mcp:deploy");
    assert_eq!(seen["release"]["released"], true, "{}", seen["release"]);
    let lock_prices = usdc(&seen["lock"]["paid_usdc"]).atomic() + usdc(&seen["renew"]["paid_usdc"]).atomic();
    assert!(lock_prices > 0);
    assert_eq!(
        usdc(&seen["balance_after_box"]["balance"]).atomic()
            - usdc(&seen["balance_after_lock"]["balance"]).atomic(),
        lock_prices,
        "the credits went down by exactly the lock's prices"
    );

    assert_eq!(seen["terminate"]["state"], "terminated", "{}", seen["terminate"]);
    let after = seen["after_end"]["error"].as_str().expect("a tool error");
    assert!(after.contains("box_terminated") && after.contains("buy_box"), "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_mcp_client_buys_and_uses_a_box_and_a_lock_over_stdio() {
    if !boxhost::boxes_supported() || !mcp_sdk_installed() {
        return;
    }
    let Some((shop, key)) = shop_with_credits().await else { return };
    let _cleanup = boxhost::Cleanup::after(shop.vendbox.child.id(), shop.dir.path().join("state"));
    let seen = drive(&["stdio", support::BIN, &shop.vendbox.url, &key]);
    check(&seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_mcp_client_buys_and_uses_a_box_and_a_lock_over_http() {
    if !boxhost::boxes_supported() || !mcp_sdk_installed() {
        return;
    }
    let Some((shop, key)) = shop_with_credits().await else { return };
    let _cleanup = boxhost::Cleanup::after(shop.vendbox.child.id(), shop.dir.path().join("state"));

    // Without an API key, /mcp is refused before any MCP is spoken.
    let response = reqwest::Client::new()
        .post(shop.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "auth_required", "{body}");

    let seen = drive(&["http", &shop.vendbox.url, &key]);
    check(&seen);
}
