//! Machine leases end to end, paid with the official Python x402 client on anvil: the
//! Agentic Compute Storefront (`/api/machines`: one machine per `request_id`, separate tokens,
//! paid extensions) and VpsAgent (`/rent`, `/rentals/{id}`, renewals, `/instance/{id}`), with
//! SSH into what was bought.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod boxhost;
mod shop;
mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use shop::Shop;

fn ready() -> bool {
    boxhost::boxes_supported() && shop::python_client_installed()
}

/// Pays `method path` with the official client; its JSON line (status, body, receipt).
fn pay(shop: &Shop, payer: &vendbox_pay::Wallet, path: &str, body: &Value, headers: &[&str]) -> Value {
    let body = body.to_string();
    let mut args = vec!["--method", "POST", "--json", body.as_str()];
    for h in headers {
        args.extend(["--header", h]);
    }
    shop.client_answer("python3", "pay_x402.py", payer, path, &args, false)
}

async fn send(method: reqwest::Method, url: &str, token: &str) -> (u16, Value) {
    let response = reqwest::Client::new().request(method, url).bearer_auth(token).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn storefront_machines_are_made_once_per_request_id_with_separate_tokens_and_paid_extensions() {
    if !ready() {
        return;
    }
    let Some(shop) = Shop::open(31337, &[]).await else { return };
    let payer = shop.payer().await;
    let _cleanup = boxhost::Cleanup::after(shop.vendbox.child.id(), shop.dir.path().join("state"));
    let (key, public) = support::ssh_keypair(shop.dir.path(), "agent_key");
    let health: Value = reqwest::get(shop.url("/api/health")).await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");
    assert!(health["products"].as_array().unwrap().contains(&json!("bare-linux-machine")), "{health}");

    let order = json!({
        "request_id": "6f1c2a4e-8b3d-4f5a-9c7e-1d2b3a4c5e6f",
        "product_id": "bare-linux-machine",
        "duration_minutes": 30,
        "ssh_public_key": public,
    });
    let first = pay(&shop, &payer, "/api/machines", &order, &[]);
    assert_eq!(first["status"], 202, "{first}");
    assert_eq!(first["payment_response"]["success"], true, "{first}");
    let machine = &first["body"];
    let id = machine["machine_id"].as_str().unwrap();
    assert!(
        id.len() == 24
            && id.starts_with("machine_")
            && id[8..].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{id}"
    );
    assert_eq!(machine["status"], "active");
    let price = 250_000 + 30 * 10_000; // 0.25 + 0.01 × 30 minutes
    assert_eq!(shop.balance(payer.address()).await, shop::FUNDS - price);
    // The same request again: refused in the seed's dialect (it documents no second answer),
    // naming the machine, with no tokens and no second charge.
    let again = pay(&shop, &payer, "/api/machines", &order, &[]);
    assert_eq!(
        (again["status"].as_u64(), again["body"]["code"].as_str()),
        (Some(400), Some("request_id_used")),
        "{again}"
    );
    assert!(again["body"]["error"].as_str().is_some_and(|m| m.contains(id)), "{again}");
    assert!(again["body"].get("management").is_none() && again["payment_response"].is_null(), "{again}");
    assert_eq!(shop.balance(payer.address()).await, shop::FUNDS - price);
    let mut changed = order.clone();
    changed["duration_minutes"] = json!(60);
    let other_body = pay(&shop, &payer, "/api/machines", &changed, &[]);
    assert_eq!(
        (other_body["status"].as_u64(), other_body["body"]["code"].as_str()),
        (Some(400), Some("request_id_reused")),
        "{other_body}"
    );
    assert_eq!(shop.balance(payer.address()).await, shop::FUNDS - price);

    // The key given at purchase logs in.
    let ssh = machine["ssh_command"].as_str().unwrap().split_whitespace().collect::<Vec<_>>();
    let out = Command::new("ssh")
        .args(["-i", key.to_str().unwrap(), "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"])
        .args(&ssh[1..])
        .arg("echo hello from $(hostname)")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from box\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let tokens = &machine["management"];
    let url = shop.url(&format!("/api/machines/{id}"));
    let read = tokens["read_token"].as_str().unwrap();
    let (status, seen) = send(reqwest::Method::GET, &url, read).await;
    assert_eq!((status, seen["machine_id"].as_str()), (200, Some(id)));
    // A read token cannot terminate; a foreign token is not even recognised.
    let (status, refused) = send(reqwest::Method::DELETE, &url, read).await;
    assert_eq!((status, refused["code"].as_str()), (403, Some("wrong_token")), "{refused}");
    let (status, refused) = send(reqwest::Method::DELETE, &url, "vbx_someone_else").await;
    assert_eq!((status, refused["code"].as_str()), (401, Some("bad_token")), "{refused}");

    // Extending by 45 minutes costs 45 × 0.01 and moves expires_at by exactly that.
    let before: chrono::DateTime<chrono::Utc> = seen["expires_at"].as_str().unwrap().parse().unwrap();
    let bearer = format!("Authorization: Bearer {}", tokens["extend_token"].as_str().unwrap());
    let extended = pay(
        &shop,
        &payer,
        &format!("/api/machines/{id}/extend"),
        &json!({ "additional_minutes": 45 }),
        &[&bearer],
    );
    assert_eq!(extended["status"], 200, "{extended}");
    assert_eq!(extended["payment_response"]["success"], true);
    let (_, seen) = send(reqwest::Method::GET, &url, read).await;
    let after: chrono::DateTime<chrono::Utc> = seen["expires_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(after - before, chrono::Duration::minutes(45));
    assert_eq!(shop.balance(payer.address()).await, shop::FUNDS - price - 45 * 10_000);

    let (status, ended) =
        send(reqwest::Method::DELETE, &url, tokens["terminate_token"].as_str().unwrap()).await;
    assert_eq!((status, ended["status"].as_str()), (200, Some("terminated")), "{ended}");
}

#[tokio::test]
async fn vpsagent_rentals_log_in_with_their_password_renew_with_their_token_and_refuse_the_rest() {
    if !ready() {
        return;
    }
    let Some(shop) = Shop::open(31337, &[]).await else { return };
    let payer = shop.payer().await;
    let _cleanup = boxhost::Cleanup::after(shop.vendbox.child.id(), shop.dir.path().join("state"));
    let rented = pay(&shop, &payer, "/rent", &json!({ "sku": "sandbox_1h", "region": "EU" }), &[]);
    assert_eq!(rented["status"], 200, "{rented}");
    let rental = &rented["body"];
    // `pending_settlement` is the only status the seed gives a new rental (vendbox has settled).
    assert_eq!(
        (rental["root_user"].as_str(), rental["status"].as_str()),
        (Some("root"), Some("pending_settlement"))
    );
    let id = rental["rental_id"].as_str().unwrap();
    let token = rental["root_token"].as_str().unwrap();
    assert_eq!(shop.balance(payer.address()).await, shop::FUNDS - 500_000);

    let snapshot: Value =
        reqwest::get(shop.url(&format!("/rentals/{id}"))).await.unwrap().json().await.unwrap();
    assert_eq!(
        (snapshot["status"].as_str(), snapshot["track"].as_str()),
        (Some("active"), Some("sandbox")),
        "{snapshot}"
    );
    assert!(snapshot["settle_tx_hash"].as_str().unwrap().starts_with("0x"), "{snapshot}");
    let (status, instance) =
        send(reqwest::Method::GET, &shop.url(&format!("/instance/{id}?token={token}")), "").await;
    assert_eq!((status, instance["running"].as_bool()), (200, Some(true)), "{instance}");
    let (status, refused) =
        send(reqwest::Method::GET, &shop.url(&format!("/instance/{id}?token=vbx_wrong")), "").await;
    assert_eq!((status, refused["error"]["code"].as_str()), (401, Some("bad_token")), "{refused}");

    // ssh as root with root_password, through OpenSSH's askpass.
    let askpass = shop.dir.path().join("askpass.sh");
    std::fs::write(&askpass, format!("#!/bin/sh\necho '{}'\n", rental["root_password"].as_str().unwrap()))
        .unwrap();
    Command::new("chmod").arg("700").arg(&askpass).status().unwrap();
    let port = rental["ssh_port"].as_u64().unwrap().to_string();
    let out = Command::new("ssh")
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
        ])
        .args(["-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password", "-p", &port])
        .arg("root@127.0.0.1")
        .arg("id -u")
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", "none")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n", "{}", String::from_utf8_lossy(&out.stderr));

    // Renewals: a wrong token is refused before any payment; the right one adds a period (the
    // payer's last 0.50 USDC).
    let renew = |t: &str| format!("/rentals/{id}/renew?token={t}");
    let wrong = pay(&shop, &payer, &renew("vbx_wrong"), &json!({ "periods": 1 }), &[]);
    assert_eq!(
        (wrong["status"].as_u64(), wrong["body"]["error"]["code"].as_str()),
        (Some(401), Some("bad_token")),
        "{wrong}"
    );
    let before = rental["expires_at"].as_i64().unwrap();
    let renewed = pay(&shop, &payer, &renew(token), &json!({ "periods": 1 }), &[]);
    assert_eq!(renewed["status"], 200, "{renewed}");
    assert_eq!(renewed["body"]["current_expires_at"].as_i64().unwrap() - before, 3_600_000);
    let snapshot: Value =
        reqwest::get(shop.url(&format!("/rentals/{id}"))).await.unwrap().json().await.unwrap();
    assert_eq!(
        (snapshot["renewal_count"].as_u64(), snapshot["expires_at"].as_i64()),
        (Some(1), Some(before + 3_600_000))
    );
    assert_eq!(shop.balance(payer.address()).await, shop::FUNDS - 500_000 * 2);

    // A rental that has ended cannot be renewed, and nothing is charged for trying.
    let (status, _) = send(reqwest::Method::DELETE, &shop.url(&format!("/v1/boxes/{id}")), token).await;
    assert_eq!(status, 200);
    let late = pay(&shop, &payer, &renew(token), &json!({ "periods": 1 }), &[]);
    assert_eq!(
        (late["status"].as_u64(), late["body"]["error"]["code"].as_str()),
        (Some(409), Some("not_active")),
        "{late}"
    );
    assert_eq!(shop.balance(payer.address()).await, shop::FUNDS - 500_000 * 2);
    let unknown = pay(&shop, &payer, "/rent", &json!({ "sku": "server_huge_1mo" }), &[]);
    assert_eq!(
        (unknown["status"].as_u64(), unknown["body"]["error"]["code"].as_str()),
        (Some(400), Some("unknown_sku")),
        "{unknown}"
    );
    assert_eq!(shop.balance(payer.address()).await, shop::FUNDS - 500_000 * 2);
}

#[tokio::test]
async fn a_rental_whose_box_cannot_be_made_charges_nothing() {
    if !ready() {
        return;
    }
    let Some(shop) = Shop::open(31337, &[("VENDBOX_BOXES__BOXD_COMMAND", "[\"/bin/false\"]")]).await else {
        return;
    };
    let payer = shop.payer().await;
    let _cleanup = boxhost::Cleanup::after(shop.vendbox.child.id(), shop.dir.path().join("state"));
    let failed = pay(&shop, &payer, "/rent", &json!({ "sku": "sandbox_1h" }), &[]);
    assert_eq!(
        (failed["status"].as_u64(), failed["body"]["error"]["code"].as_str()),
        (Some(503), Some("box_unavailable")),
        "{failed}"
    );
    assert!(failed["payment_response"].is_null(), "{failed}");
    assert_eq!(shop.balance(payer.address()).await, shop::FUNDS);
}

#[tokio::test]
async fn an_expired_rental_cannot_be_renewed_and_nothing_is_charged() {
    if !ready() {
        return;
    }
    let Some(mut shop) = Shop::open(31337, &[]).await else { return };
    // The one-hour sandbox, made to last one minute for this test.
    let config = "[[offers]]\nid = \"vpsagent-sandbox-1h\"\nduration = { rule = \"fixed\", minutes = 1 }\n";
    std::fs::write(shop.dir.path().join("vendbox.toml"), config).unwrap();
    shop.vendbox = shop.serve(&[]);
    let _cleanup = boxhost::Cleanup::after(shop.vendbox.child.id(), shop.dir.path().join("state"));
    let payer = shop.payer().await;
    let rented = pay(&shop, &payer, "/rent", &json!({ "sku": "sandbox_1h" }), &[]);
    assert_eq!(rented["status"], 200, "{rented}");
    let id = rented["body"]["rental_id"].as_str().unwrap();
    let token = rented["body"]["root_token"].as_str().unwrap();
    let expires = rented["body"]["expires_at"].as_i64().unwrap();
    // Sleep to the expiry itself (a time the test knows), then wait on what is observable: the
    // rental's status turning `expired`, within the expiry worker's bound.
    let wait = expires - chrono::Utc::now().timestamp_millis();
    tokio::time::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0))).await;
    let snapshot = shop.url(&format!("/rentals/{id}"));
    support::eventually(Duration::from_secs(10), "the rental to show as expired", async || {
        let seen: Value = reqwest::get(&snapshot).await.unwrap().json().await.unwrap();
        if seen["status"] == "expired" { Ok(()) } else { Err(seen) }
    })
    .await;
    let paid_before = shop.balance(payer.address()).await;
    let late =
        pay(&shop, &payer, &format!("/rentals/{id}/renew?token={token}"), &json!({ "periods": 1 }), &[]);
    assert_eq!(
        (late["status"].as_u64(), late["body"]["error"]["code"].as_str()),
        (Some(409), Some("not_active")),
        "{late}"
    );
    assert_eq!(shop.balance(payer.address()).await, paid_before);
}
