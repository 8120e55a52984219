//! x402Compute end to end, on the real binary and a local chain (id 84532): plans, regions and
//! OS images; a provision paid with the official `x402-fetch` 1.2 client (x402 v1, with an SSH
//! key that then logs in) and one paid with the official Python `x402` client (no key); listing
//! with a wallet signature made by `eth_account`; the one-time password (once, then 409; 409 for
//! the keyed instance) that logs in over SSH; an extension paid with the Python client; an API
//! key that lists until it is revoked; another wallet sees nothing (404); `network: solana` is
//! refused; destroy. The plan used boots the `host` image (the test's `vendbox.toml`), so no
//! Ubuntu image is built.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod boxhost;
mod shop;
mod support;

use std::process::{Command, Stdio};

use serde_json::{Value, json};
use shop::Shop;
use vendbox_pay::Wallet;

/// The plan the test buys, made to boot the host's userland.
const CATALOG: &str = r#"
[[offers]]
id = "x402compute-vc2-1c-1gb"
images = ["host"]
default_image = "host"
resources = { vcpu = 1, memory_mb = 512, disk_gb = 1 }
"#;

/// 6 USD a month, by the minute, rounded up to the USDC unit.
fn price_of(hours: u64) -> u64 {
    (6_000_000 * hours * 60).div_ceil(43_200)
}

fn ready() -> bool {
    let signer =
        Command::new("python3").args(["-c", "import eth_account"]).status().is_ok_and(|s| s.success());
    if !signer {
        support::requirement_missing("the eth_account Python package is not installed");
    }
    signer
        && boxhost::boxes_supported()
        && shop::python_client_installed()
        && shop::clients_installed("node_modules/x402-fetch")
}

/// Sends `method path` with `body` and `headers`: the status and the JSON answer.
async fn send(
    shop: &Shop,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(String, String)],
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method.parse().unwrap(), shop.url(path))
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Sends `method path` signed by `wallet`.
async fn signed(shop: &Shop, wallet: &Wallet, method: &str, path: &str, body: &str) -> (u16, Value) {
    send(shop, method, path, body, &shop::sign_auth(wallet, method, path, body)).await
}

/// Sends `method path` with API key `key`.
async fn keyed(shop: &Shop, key: &str, method: &str, path: &str) -> (u16, Value) {
    send(shop, method, path, "", &[("X-API-Key".to_owned(), key.to_owned())]).await
}

fn code(answer: &(u16, Value)) -> (u16, &str) {
    (answer.0, answer.1["error"]["code"].as_str().unwrap_or("-"))
}

/// Runs `ssh … root@gateway 'id -u'` with `auth` options; what it printed.
fn ssh(port: &str, auth: &[&str], env: &[(&str, &std::path::Path)]) -> (String, String) {
    let mut command = Command::new("ssh");
    command
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
        ])
        .args(auth)
        .args(["-p", port, "root@127.0.0.1", "id -u"])
        .stdin(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    let out = command.output().unwrap();
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Plans, regions and OS images from the catalog; the provision's 402 (x402 v1, hourly rate ×
/// `prepaid_hours`); `network: solana` refused.
async fn discovery_and_challenge(shop: &Shop, order: &Value) {
    // Discovery, from the catalog.
    let (status, plans) = send(shop, "GET", "/compute/plans?type=vps", "", &[]).await;
    assert_eq!(status, 200, "{plans}");
    let plan = plans["plans"].as_array().unwrap().iter().find(|p| p["id"] == "vc2-1c-1gb").unwrap();
    assert_eq!((plan["type"].as_str(), plan["available"].as_bool()), (Some("VPS"), Some(true)), "{plan}");
    assert_eq!((plan["vcpu_count"].as_u64(), plan["monthly_cost"].as_f64()), (Some(1), Some(6.0)), "{plan}");
    assert!(plans["plans"].as_array().unwrap().iter().all(|p| p["type"] == "VPS"), "{plans}");
    assert_eq!(plans["count"].as_u64(), Some(plans["plans"].as_array().unwrap().len() as u64));
    let (_, gpu) = send(shop, "GET", "/compute/plans?type=vcg", "", &[]).await;
    assert_eq!(gpu["plans"][0]["gpu_type"], "NVIDIA A100", "{gpu}");
    assert_eq!(
        (gpu["plans"][0]["ram"].as_u64(), gpu["plans"][0]["gpu_vram_gb"].as_u64()),
        (Some(120_832), Some(80))
    );
    let (_, regions) = send(shop, "GET", "/compute/regions", "", &[]).await;
    let lax = regions["regions"].as_array().unwrap().iter().find(|r| r["id"] == "lax").unwrap();
    assert_eq!((lax["city"].as_str(), lax["country"].as_str()), (Some("Los Angeles"), Some("US")), "{lax}");
    let (status, os) = send(shop, "GET", "/compute/os", "", &[]).await;
    assert!(status == 200 && os["os_options"].is_array(), "{os}");

    // The 402: x402 v1, hourly rate × prepaid_hours.
    let (status, challenge) = send(shop, "POST", "/compute/provision", &order.to_string(), &[]).await;
    assert_eq!(status, 402, "{challenge}");
    assert_eq!(challenge["x402Version"], 1, "{challenge}");
    let accept = &challenge["accepts"][0];
    assert_eq!(accept["scheme"], "exact");
    assert_eq!(accept["maxAmountRequired"], price_of(2).to_string(), "{accept}");
    assert!(accept["resource"].as_str().unwrap().ends_with("/compute/provision"), "{accept}");
    assert_eq!(accept["extra"]["version"], "2", "{accept}");
    let mut solana = order.clone();
    solana["network"] = json!("solana");
    let refused = send(shop, "POST", "/compute/provision", &solana.to_string(), &[]).await;
    assert_eq!(code(&refused), (400, "unsupported_network"), "{refused:?}");
}

/// The one-time password: never for the keyed instance; once for the other, and it logs in.
async fn password_once(shop: &Shop, payer: &Wallet, id_key: &str, id_pw: &str, port: &str) {
    // The one-time password: never for the keyed one; once for the other, and it logs in.
    let path = format!("/compute/instances/{id_key}/password");
    assert_eq!(code(&signed(shop, payer, "POST", &path, "").await), (409, "ssh_key_instance"));
    let path = format!("/compute/instances/{id_pw}/password");
    let issued = signed(shop, payer, "POST", &path, "").await;
    assert_eq!(issued.0, 200, "{issued:?}");
    assert_eq!(
        (issued.1["access"]["method"].as_str(), issued.1["access"]["username"].as_str()),
        (Some("one_time_password"), Some("root"))
    );
    let password = issued.1["access"]["password"].as_str().unwrap().to_owned();
    assert_eq!(code(&signed(shop, payer, "POST", &path, "").await), (409, "password_already_issued"));
    let askpass = shop.dir.path().join("askpass.sh");
    std::fs::write(&askpass, format!("#!/bin/sh\necho '{password}'\n")).unwrap();
    Command::new("chmod").arg("700").arg(&askpass).status().unwrap();
    let password_auth = ["-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password"];
    let env: [(&str, &std::path::Path); 3] = [
        ("SSH_ASKPASS", askpass.as_path()),
        ("SSH_ASKPASS_REQUIRE", std::path::Path::new("force")),
        ("DISPLAY", std::path::Path::new("none")),
    ];
    let (out, err) = ssh(port, &password_auth, &env);
    assert_eq!(out, "0\n", "{err}");
}

/// Another wallet: nothing listed, and each instance is 404, also to destroy.
async fn another_wallet_sees_nothing(shop: &Shop, other: &Wallet, id_key: &str, id_pw: &str) {
    // Another wallet: nothing listed, and each instance is 404, also to destroy.
    let theirs = signed(shop, other, "GET", "/compute/instances", "").await;
    assert_eq!((theirs.0, theirs.1["count"].as_u64()), (200, Some(0)), "{theirs:?}");
    for (method, path) in [
        ("GET", format!("/compute/instances/{id_key}")),
        ("DELETE", format!("/compute/instances/{id_key}")),
        ("POST", format!("/compute/instances/{id_pw}/password")),
    ] {
        assert_eq!(
            code(&signed(shop, other, method, &path, "").await),
            (404, "instance_not_found"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn x402compute_provisions_with_both_official_clients_and_manages_instances_for_their_owner_only() {
    if !ready() {
        return;
    }
    let Some(mut shop) = Shop::open(84532, &[]).await else { return };
    std::fs::write(shop.dir.path().join("vendbox.toml"), CATALOG).unwrap();
    shop.vendbox = shop.serve(&[]);
    let _cleanup = boxhost::Cleanup::after(shop.vendbox.child.id(), shop.dir.path().join("state"));
    let (payer, other) = (shop.payer().await, Wallet::random());

    let order = json!({ "plan": "vc2-1c-1gb", "region": "lax", "prepaid_hours": 2, "network": "base" });
    discovery_and_challenge(&shop, &order).await;

    // Provision with x402-fetch (v1), with an SSH key: no password in the answer.
    let (key_file, public) = support::ssh_keypair(shop.dir.path(), "agent_key");
    let mut keyed_order = order.clone();
    keyed_order["ssh_public_key"] = json!(public);
    keyed_order["label"] = json!("with-key");
    let body = keyed_order.to_string();
    let args = ["--method", "POST", "--json", body.as_str()];
    let first = shop.run_client_on("node", "pay_x402_v1.mjs", &payer, "/compute/provision", &args);
    assert_eq!(first["status"], 200, "{first}");
    assert_eq!(first["body"]["success"], true, "{first}");
    let with_key = first["body"]["order"].clone();
    assert_eq!(
        (with_key["status"].as_str(), with_key["plan"].as_str()),
        (Some("active"), Some("vc2-1c-1gb"))
    );
    assert_eq!(with_key["region"], "lax");
    assert!(first["body"]["tx_hash"].as_str().unwrap().starts_with("0x"), "{first}");
    assert!(!first["body"].to_string().contains("password\":"), "no password: {first}");
    assert_eq!(shop.balance(payer.address()).await, shop::FUNDS - price_of(2));
    let port = with_key["ssh_port"].as_u64().unwrap().to_string();
    let key_auth = ["-i", key_file.to_str().unwrap(), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"];
    let (out, err) = ssh(&port, &key_auth, &[]);
    assert_eq!(out, "0\n", "{err}");

    // Provision with the Python client, no key.
    let body = json!({ "plan": "vc2-1c-1gb", "prepaid_hours": 1, "label": "no-key" }).to_string();
    let args = ["--method", "POST", "--json", body.as_str()];
    let second = shop.run_client_on("python3", "pay_x402.py", &payer, "/compute/provision", &args);
    assert_eq!(second["status"], 200, "{second}");
    let no_key = second["body"]["order"].clone();
    let (id_key, id_pw) = (with_key["id"].as_str().unwrap(), no_key["id"].as_str().unwrap());
    assert_eq!(shop.balance(payer.address()).await, shop::FUNDS - price_of(2) - price_of(1));

    // Listed with the payer's signature, newest first.
    let listed = signed(&shop, &payer, "GET", "/compute/instances", "").await;
    assert_eq!(listed.0, 200, "{listed:?}");
    let ids: Vec<&str> =
        listed.1["instances"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [id_pw, id_key], "{listed:?}");
    let got = signed(&shop, &payer, "GET", &format!("/compute/instances/{id_key}"), "").await;
    assert_eq!((got.0, got.1["instance"]["access_method"].as_str()), (200, Some("ssh_key")), "{got:?}");
    assert_eq!(code(&send(&shop, "GET", "/compute/instances", "", &[]).await), (401, "auth_required"));

    password_once(&shop, &payer, id_key, id_pw, &port).await;
    another_wallet_sees_nothing(&shop, &other, id_key, id_pw).await;

    // An API key lists the instances, pays an extension (Python client), and stops at revocation.
    let made = signed(&shop, &payer, "POST", "/compute/api-keys", r#"{"label":"agent"}"#).await;
    assert_eq!(made.0, 201, "{made:?}");
    let (key, key_id) =
        (made.1["api_key"].as_str().unwrap().to_owned(), made.1["id"].as_str().unwrap().to_owned());
    let listed = keyed(&shop, &key, "GET", "/compute/instances").await;
    assert_eq!((listed.0, listed.1["count"].as_u64()), (200, Some(2)), "{listed:?}");
    let before: chrono::DateTime<chrono::Utc> =
        listed.1["instances"][0]["expires_at"].as_str().unwrap().parse().unwrap();
    let header = format!("X-API-Key: {key}");
    let body = json!({ "extend_hours": 3, "network": "base" }).to_string();
    let args = ["--method", "POST", "--json", body.as_str(), "--header", header.as_str()];
    let extended = shop.run_client_on(
        "python3",
        "pay_x402.py",
        &payer,
        &format!("/compute/instances/{id_pw}/extend"),
        &args,
    );
    assert_eq!(
        (extended["status"].as_u64(), extended["body"]["extended_hours"].as_u64()),
        (Some(200), Some(3)),
        "{extended}"
    );
    let after: chrono::DateTime<chrono::Utc> =
        keyed(&shop, &key, "GET", &format!("/compute/instances/{id_pw}")).await.1["instance"]["expires_at"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
    assert_eq!(after - before, chrono::Duration::hours(3));
    assert_eq!(shop.balance(payer.address()).await, shop::FUNDS - price_of(2) - price_of(1) - price_of(3));
    let revoked = signed(&shop, &payer, "DELETE", &format!("/compute/api-keys/{key_id}"), "").await;
    assert_eq!(revoked.0, 200, "{revoked:?}");
    assert_eq!(keyed(&shop, &key, "GET", "/compute/instances").await.0, 401);

    // Destroy: gone from the list, shown as destroyed.
    let destroyed = signed(&shop, &payer, "DELETE", &format!("/compute/instances/{id_key}"), "").await;
    assert_eq!(
        (destroyed.0, destroyed.1["instance"]["status"].as_str()),
        (200, Some("destroyed")),
        "{destroyed:?}"
    );
    let listed = signed(&shop, &payer, "GET", "/compute/instances", "").await;
    assert_eq!(listed.1["count"].as_u64(), Some(1), "{listed:?}");
    let gone = signed(&shop, &payer, "GET", &format!("/compute/instances/{id_key}"), "").await;
    assert_eq!(gone.1["instance"]["status"], "destroyed", "{gone:?}");
    let (out, _) = ssh(&port, &key_auth, &[]);
    assert_ne!(out, "0\n", "the destroyed instance no longer opens");
}
