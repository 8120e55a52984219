//! E2B end to end: the stock `e2b` SDKs, unchanged (Python `tests/clients/e2b_sdk.py`, 2.63.0
//! pinned in `requirements.txt`; JavaScript `e2b_sdk.mjs`, 2.51.0 in `tests/clients/e2b`), with
//! `E2B_API_URL` and `E2B_SANDBOX_URL` pointed at the real binary and `E2B_API_KEY` a vendbox API
//! key whose credits were topped up with the official x402 client on a local chain. Each creates
//! a sandbox (template, timeout, metadata, envs), runs commands (foreground with callbacks,
//! background + wait, stdin, kill, 30 seconds), reads and writes files, watches a directory,
//! drives a PTY, reaches a server in the box by `get_host`, connects more handles (Python: each
//! earlier handle keeps running commands after a connect), sets the timeout and kills it; the key's
//! credits go down by exactly each sandbox's price (less the unused minutes a kill refunds, as for
//! any box ended early). The control plane's refusals are E2B's: an unknown template is 404, a
//! killed sandbox is 404.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod boxhost;
mod shop;
mod support;

use std::process::Command;

use serde_json::{Value, json};
use shop::Shop;
use vendbox_pay::Wallet;

/// The domain box ports are served under, as the SDK's `get_host` names them.
const DOMAIN: &str = "e2b.vendbox.test";

fn ready() -> bool {
    let installed = |module: &str| {
        let ok = Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            support::requirement_missing(&format!("the {module} Python package is not installed"));
        }
        ok
    };
    installed("eth_account")
        && installed("e2b")
        && boxhost::boxes_supported()
        && shop::python_client_installed()
}

/// A new API key of `wallet`.
async fn api_key(shop: &Shop, wallet: &Wallet) -> String {
    let body = json!({ "label": "e2b" }).to_string();
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

/// Sends `method path` with `key` and a JSON `body`: status and answer.
async fn send(shop: &Shop, key: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request =
        reqwest::Client::new().request(method.parse().unwrap(), shop.url(path)).header("x-api-key", key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn balance(shop: &Shop, key: &str) -> String {
    let (status, account) = send(shop, key, "GET", "/v1/account", None).await;
    assert_eq!(status, 200, "{account}");
    account["balance"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stock_sdks_run_a_sandbox_paid_by_credits() {
    if !ready() {
        return;
    }
    let Some(shop) = Shop::open(31337, &[("VENDBOX_SERVER__PORTS_DOMAIN", DOMAIN)]).await else { return };
    let _cleanup = boxhost::Cleanup::after(shop.vendbox.child.id(), shop.dir.path().join("state"));
    let wallet = shop.payer().await;
    let key = api_key(&shop, &wallet).await;
    let header = format!("X-API-Key: {key}");
    let body = json!({ "amount": "1" }).to_string();
    shop.run_client_on(
        "python3",
        "pay_x402.py",
        &wallet,
        "/v1/account/topup",
        &["--method", "POST", "--json", &body, "--header", &header],
    );
    assert_eq!(balance(&shop, &key).await, "1.00");

    // E2B's refusals, in E2B's shape.
    let (status, answer) =
        send(&shop, &key, "POST", "/v2/sandboxes", Some(json!({ "templateID": "no-such-template" }))).await;
    assert_eq!((status, answer["code"].as_u64()), (404, Some(404)), "{answer}");
    let (status, answer) = send(&shop, "", "GET", "/v2/sandboxes", None).await;
    assert_eq!(status, 401, "{answer}");

    let mut ids = vec![sdk(&shop, &key, "python3", "e2b_sdk.py")];
    if shop::clients_installed("e2b/node_modules/e2b") {
        ids.push(sdk(&shop, &key, "node", "e2b_sdk.mjs"));
    }

    // The credits paid exactly the sandbox's price: 300 seconds are 5 minutes at 0.001 a minute
    // (a shorter timeout costs nothing more); killing it early refunded its unused whole minutes
    // as a `refund` entry naming it, as for any box ended early.
    let (status, page) = send(&shop, &key, "GET", "/v1/account/ledger?limit=50", None).await;
    assert_eq!(status, 200, "{page}");
    let entries = page["entries"].as_array().unwrap();
    let of = |kind: &str| {
        entries.iter().filter(|e| e["kind"] == kind).map(|e| e["amount"].clone()).collect::<Vec<_>>()
    };
    assert_eq!(of("charge"), vec![json!("-0.005"); ids.len()], "{page}");
    let refunds = of("refund");
    assert!(refunds.len() <= ids.len(), "{page}");
    let refunded: f64 = refunds.iter().map(|r| r.as_str().unwrap().parse::<f64>().unwrap()).sum();
    let left: f64 = balance(&shop, &key).await.parse().unwrap();
    let paid = 0.005 * f64::from(u32::try_from(ids.len()).unwrap());
    assert!((left - (1.0 - paid + refunded)).abs() < 1e-9, "balance {left}, refunded {refunded}: {page}");
    let id = &ids[0];
    let (status, answer) = send(&shop, &key, "GET", &format!("/sandboxes/{id}"), None).await;
    assert_eq!((status, answer["code"].as_u64()), (404, Some(404)), "killed: {answer}");
    let (status, answer) = send(&shop, &key, "POST", &format!("/sandboxes/{id}/pause"), None).await;
    assert_eq!(status, 404, "a killed sandbox is not found: {answer}");
}

/// Runs `script` (the stock SDK driven through every step) with `program` against the shop, as
/// `key`, checks what it saw, and answers the sandbox's id.
fn sdk(shop: &Shop, key: &str, program: &str, script: &str) -> String {
    let output = Command::new(program)
        .arg(shop::repo_root().join("tests/clients").join(script))
        .arg(shop.url(""))
        .env("E2B_API_URL", shop.url(""))
        .env("E2B_SANDBOX_URL", shop.url(""))
        .env("E2B_API_KEY", key)
        .env("E2B_DOMAIN", DOMAIN)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{script} failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let id = seen["sandbox_id"].as_str().unwrap().to_owned();
    let id = id.as_str();
    eprintln!("{script}: sandbox {id}, made in {} s", seen["create_seconds"]);

    assert!(seen["listed"].as_array().unwrap().iter().any(|s| s == id), "{seen}");
    assert_eq!(seen["metadata"], json!({ "job": "e2b-test" }));
    assert_eq!(seen["run"]["stdout"], "hello\n");
    assert_eq!(seen["run"]["stderr"], "oops\n");
    assert_eq!(seen["run"]["callback_stdout"], "hello\n");
    assert_eq!(seen["run"]["callback_stderr"], "oops\n");
    assert_eq!(seen["run"]["exit_code"], 0);
    assert_eq!(seen["exit_3"], 3);
    assert_eq!(seen["background"], "done\n");
    assert_eq!(seen["stdin"], "to stdin\n");
    assert_eq!(seen["kill_pid_listed"], true, "{seen}");
    assert_eq!(seen["killed"], true);
    assert_ne!(seen["killed_exit"], "no error");
    assert_eq!(seen["long"]["stdout"], "slept\n");
    assert!(seen["long"]["seconds"].as_f64().unwrap() >= 30.0, "{seen}");
    assert_eq!(seen["write"], "/tmp/e2b/a.txt");
    assert_eq!(seen["read"], "hello file");
    assert_eq!((&seen["made_dir"], &seen["made_dir_again"]), (&json!(true), &json!(false)));
    assert_eq!(seen["list"], json!(["a.txt", "sub"]));
    assert_eq!(seen["renamed"], "/tmp/e2b/b.txt");
    assert_eq!(seen["exists_after_rename"], json!([false, true]));
    assert_eq!(seen["exists_after_remove"], false);
    assert!(seen["watch"].as_array().unwrap().iter().any(|e| e[0] == "new.txt"), "{seen}");
    let pty = seen["pty"].as_str().unwrap();
    assert!(pty.contains("24 80") && pty.contains("pty-42") && pty.contains("30 100"), "{pty:?}");
    assert_eq!(seen["host"], format!("8000-{id}.{DOMAIN}"));
    assert_eq!(seen["served"], "served-from-box\n", "{seen}");
    if script == "e2b_sdk.py" {
        // A second `Sandbox.connect` handle and the original one both run commands, before and
        // after a third connect: a connect adds an access token, it does not replace one.
        assert_eq!(seen["connected"], id, "{seen}");
        assert_eq!(seen["second_run"], "from-second\n", "{seen}");
        assert_eq!(seen["first_after_connect"], "from-first\n", "{seen}");
        assert_eq!(seen["third_run"], "from-third\n", "{seen}");
        assert_eq!(seen["second_after_third"], "second-again\n", "{seen}");
        assert_eq!(seen["first_after_third"], "first-again\n", "{seen}");
    }
    assert_eq!(seen["running_before_kill"], true);
    assert!(!seen["listed_after_kill"].as_array().unwrap().iter().any(|s| s == id), "{seen}");
    id.to_owned()
}
