//! Each seed API's dialect, proven against the seed itself. The real binary sells on anvil with
//! real payments and real boxes; every exchange on the Storefront (`/api/*`) and H3RETIK
//! (`/x402/*`) surfaces is recorded (method, path, status, content type, JSON body) and checked
//! by `seeds/validate.py` against that seed's own OpenAPI document (copies in `tests/seeds/`):
//! the status must be one the operation documents, and the body must validate against its
//! schema. The only undocumented status allowed is vendbox's x402 402 on the two Storefront
//! operations it charges for (`POST /api/machines`, `POST /api/machines/{machine_id}/extend`: the
//! seed pays through MPP orders).
//!
//! Paths vendbox serves under those prefixes that the seeds do not document are driven but
//! skipped by the validator (each test asserts exactly which were skipped): H3RETIK's
//! `GET /x402/sessions/{session_id}`, `POST /x402/sessions/{session_id}/exec`,
//! `POST /x402/locks/release`, `POST /x402/locks/renew` and `GET /x402/locks/{key}`. The
//! Storefront's MPP order paths (`/api/machine/mpp/orders…`) are checked against the seed in
//! `tests/mpp.rs`, where they are paid with MPP.
//!
//! VpsAgent's document (`vpsagent.md`) is not a formal OpenAPI file; its fields, headers and
//! statuses are pinned here in Rust. The validator's own refusals are tested without a chain.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod boxhost;
mod shop;
mod support;

use std::path::PathBuf;
use std::process::Command;

use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use serde_json::{Value, json};
use shop::Shop;
use vendbox_pay::Wallet;
use vendbox_pay::client::{self, Challenge};
use vendbox_pay::wire;

// ---------------------------------------------------------------------------------------------
// Recording exchanges, and the validator.

/// What a request sends as its body.
#[derive(Clone, Copy)]
enum Sent<'a> {
    /// No body.
    Nothing,
    /// JSON, as `application/json`.
    Json(&'a Value),
    /// These bytes as this content type.
    Raw(&'a str, &'a str),
}

/// One answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    /// The x402 terms of a 402.
    fn challenge(&self) -> Challenge {
        assert_eq!(self.status, 402, "{}", self.body);
        let header = self.headers.get(wire::PAYMENT_REQUIRED).map(|v| v.to_str().unwrap());
        Challenge::read(header, &serde_json::to_vec(&self.body).unwrap()).unwrap()
    }

    /// A base64 JSON header, decoded.
    fn header_json(&self, name: &str) -> Value {
        let value = self.headers.get(name).unwrap_or_else(|| panic!("no {name} header: {:?}", self.headers));
        wire::decode_header(value.to_str().unwrap()).unwrap()
    }
}

/// How a request pays.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// Sends requests to one vendbox and keeps every exchange.
struct Recorder {
    http: reqwest::Client,
    base: String,
    exchanges: Vec<Value>,
}

impl Recorder {
    fn new(base: &str) -> Recorder {
        Recorder { http: reqwest::Client::new(), base: base.to_owned(), exchanges: Vec::new() }
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        sent: Sent<'_>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = self.http.request(method.clone(), format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request = match sent {
            Sent::Nothing => request,
            Sent::Json(body) => request.json(body),
            Sent::Raw(content_type, bytes) => {
                request.header(CONTENT_TYPE, content_type).body(bytes.to_owned())
            }
        };
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let content_type = headers.get(CONTENT_TYPE).map(|v| v.to_str().unwrap().to_owned());
        let bytes = response.bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        self.exchanges.push(json!({
            "method": method.as_str(), "path": path, "status": status,
            "content_type": content_type, "body": body,
        }));
        Answer { status, headers, body }
    }

    async fn post(&mut self, path: &str, token: Option<&str>, body: &Value) -> Answer {
        self.send(Method::POST, path, token, Sent::Json(body), &[]).await
    }

    async fn get(&mut self, path: &str, token: Option<&str>) -> Answer {
        self.send(Method::GET, path, token, Sent::Nothing, &[]).await
    }

    /// Sends the request unpaid (its 402 is recorded too), then paid in `version`.
    async fn pay(
        &mut self,
        payer: &Wallet,
        version: Version,
        method: Method,
        path: &str,
        token: Option<&str>,
        sent: Sent<'_>,
    ) -> Answer {
        let unpaid = self.send(method.clone(), path, token, sent, &[]).await;
        let challenge = unpaid.challenge();
        let (name, value) = match version {
            Version::V2 => challenge.pay(payer, shop::now()).unwrap(),
            Version::V1 => {
                let terms = &challenge.v1.as_ref().unwrap().accepts[0];
                (wire::X_PAYMENT, client::pay_v1(payer, terms, shop::now()).unwrap())
            }
        };
        self.send(method, path, token, sent, &[(name, &value)]).await
    }
}

fn seeds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/seeds")
}

/// Whether `seeds/validate.py` can run (python3 with openapi-schema-validator).
fn validator_installed() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import openapi_schema_validator, referencing"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        support::requirement_missing(
            "python3 with openapi-schema-validator is not installed (the seed validator needs it)",
        );
    }
    ok
}

/// `validate.py`'s report on `exchanges` against `seed`, with `x402` the operations allowed an
/// undocumented x402 402 (`"POST /api/machines"`).
fn validate(seed: &str, exchanges: &[Value], x402: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("exchanges.json");
    std::fs::write(&file, serde_json::to_vec(exchanges).unwrap()).unwrap();
    let mut command = Command::new("python3");
    command.arg(seeds_dir().join("validate.py")).arg(seeds_dir().join(seed)).arg(&file);
    for operation in x402 {
        command.args(["--x402", operation]);
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("validate.py printed no report ({e}): {stdout}\n{}", String::from_utf8_lossy(&output.stderr))
    })
}

/// Asserts that every exchange the seed documents validated, that `checked` were checked, and
/// that exactly `skipped` (vendbox's additions, as `METHOD path -> status`) were skipped.
fn assert_valid(report: &Value, checked: usize, skipped: &[String]) {
    let failures: Vec<&str> =
        report["failures"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(failures.is_empty(), "answers the seed does not allow:\n{}", failures.join("\n"));
    let got: Vec<&str> = report["skipped"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(got, skipped, "skipped (not in the seed)");
    assert_eq!(report["checked"], checked, "{report}");
}

/// A Storefront refusal: the seed's `{"error": "<message>"}` with vendbox's `code`.
#[track_caller]
fn storefront_refusal(answer: &Answer, status: u16, code: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert!(answer.body["error"].as_str().is_some_and(|m| !m.is_empty()), "{}", answer.body);
    assert_eq!(answer.body["code"], code, "{}", answer.body);
}

// ---------------------------------------------------------------------------------------------
// The Agentic Compute Storefront.

#[tokio::test]
async fn storefront_answers_are_the_seeds_every_error_included() {
    if !(validator_installed() && boxhost::boxes_supported()) {
        return;
    }
    let Some(shop) = Shop::open(31337, &[]).await else { return };
    let _cleanup = boxhost::Cleanup::after(shop.vendbox.child.id(), shop.dir.path().join("state"));
    let payer = shop.payer().await;
    let (_, public) = support::ssh_keypair(shop.dir.path(), "agent_key");
    let mut r = Recorder::new(&shop.vendbox.url);
    // Refusals, checked after the seed's own verdict on every answer.
    let mut refused: Vec<(Answer, u16, &str)> = Vec::new();

    let health = r.get("/api/health", None).await;
    assert_eq!(health.status, 200, "{}", health.body);

    // Bad bodies: 400 with the seed's error body, before any payment is asked for.
    let order = json!({
        "request_id": "0b6e0f9e-4a8c-4c43-9a0e-5d7a2f1c3b4d",
        "product_id": "bare-linux-machine",
        "duration_minutes": 15,
        "ssh_public_key": public,
    });
    let with = |key: &str, value: Value| {
        let mut body = order.clone();
        body[key] = value;
        body
    };
    let mut without_key = order.clone();
    without_key.as_object_mut().unwrap().remove("ssh_public_key");
    for (body, code) in [
        (with("colour", json!("red")), "unknown_field"),
        (without_key, "missing_field"),
        (with("duration_minutes", json!(5)), "out_of_range"),
        (with("duration_minutes", json!("long")), "wrong_type"),
        (with("request_id", json!("not-a-uuid")), "bad_request_id"),
        (with("product_id", json!("tpu-v5")), "unknown_product"),
        (with("ssh_public_key", json!("not a key")), "bad_ssh_key"),
    ] {
        let answer = r.post("/api/machines", None, &body).await;
        refused.push((answer, 400, code));
    }
    let answer = r.send(Method::POST, "/api/machines", None, Sent::Raw("application/json", "{"), &[]).await;
    refused.push((answer, 400, "malformed_json"));
    // A body that is not JSON at all: vendbox's 415, which the seed answers 400.
    let answer = r.send(Method::POST, "/api/machines", None, Sent::Raw("text/plain", "hello"), &[]).await;
    refused.push((answer, 400, "unsupported_media_type"));

    // 402 (vendbox's x402), then paid: 202 with the tokens, once.
    let made = r.pay(&payer, Version::V2, Method::POST, "/api/machines", None, Sent::Json(&order)).await;
    assert_eq!(made.status, 202, "{}", made.body);
    let id = made.body["machine_id"].as_str().unwrap().to_owned();
    let tokens = made.body["management"].clone();
    let token = |name: &str| tokens[name].as_str().unwrap().to_owned();
    let (read, extend, terminate) = (token("read_token"), token("extend_token"), token("terminate_token"));
    assert_eq!(shop.balance(payer.address()).await, shop::FUNDS - 400_000, "0.25 + 15 × 0.01");
    // The same request_id again: no second machine, no charge, and a refusal the seed knows.
    let again = r.post("/api/machines", None, &order).await;
    assert!(again.body.to_string().contains(&id), "the refusal names the machine: {}", again.body);
    refused.push((again, 400, "request_id_used"));
    refused.push((
        r.post("/api/machines", None, &with("duration_minutes", json!(16))).await,
        400,
        "request_id_reused",
    ));
    assert_eq!(shop.balance(payer.address()).await, shop::FUNDS - 400_000);

    // Reading: the read token; no token, a stranger's, another capability, an unknown id.
    let machine = format!("/api/machines/{id}");
    let seen = r.get(&machine, Some(&read)).await;
    assert_eq!((seen.status, seen.body["status"].as_str()), (200, Some("active")), "{}", seen.body);
    refused.push((r.get(&machine, None).await, 401, "missing_token"));
    refused.push((r.get(&machine, Some("vbx_not_a_token")).await, 401, "bad_token"));
    refused.push((r.get(&machine, Some(&extend)).await, 403, "wrong_token"));
    refused.push((
        r.get("/api/machines/machine_0000000000000000", Some(&read)).await,
        404,
        "machine_not_found",
    ));
    refused.push((r.get("/api/machines/nonsense", Some(&read)).await, 404, "machine_not_found"));

    // Extending: 402 (vendbox's x402), then paid; and every refusal before any payment.
    let path = format!("{machine}/extend");
    let minutes = json!({ "additional_minutes": 1 });
    for (body, code) in [
        (json!({ "additional_minutes": 0 }), "out_of_range"),
        (json!({ "minutes": 1 }), "unknown_field"),
        (json!({ "additional_minutes": -1 }), "out_of_range"),
    ] {
        refused.push((r.post(&path, Some(&extend), &body).await, 400, code));
    }
    refused.push((r.post(&path, None, &minutes).await, 401, "missing_token"));
    refused.push((r.post(&path, Some("vbx_not_a_token"), &minutes).await, 401, "bad_token"));
    refused.push((r.post(&path, Some(&read), &minutes).await, 403, "wrong_token"));
    refused.push((
        r.post("/api/machines/machine_0000000000000000/extend", Some(&extend), &minutes).await,
        404,
        "machine_not_found",
    ));
    let extended = r.pay(&payer, Version::V2, Method::POST, &path, Some(&extend), Sent::Json(&minutes)).await;
    assert_eq!(extended.status, 200, "{}", extended.body);
    assert_eq!(shop.balance(payer.address()).await, shop::FUNDS - 400_000 - 10_000);

    // Terminating: the terminate token only.
    for (token, status, code) in [
        (None, 401, "missing_token"),
        (Some("vbx_not_a_token"), 401, "bad_token"),
        (Some(read.as_str()), 403, "wrong_token"),
    ] {
        let answer = r.send(Method::DELETE, &machine, token, Sent::Nothing, &[]).await;
        refused.push((answer, status, code));
    }
    let answer = r
        .send(Method::DELETE, "/api/machines/machine_0000000000000000", Some(&terminate), Sent::Nothing, &[])
        .await;
    refused.push((answer, 404, "machine_not_found"));
    let ended = r.send(Method::DELETE, &machine, Some(&terminate), Sent::Nothing, &[]).await;
    assert_eq!((ended.status, ended.body["status"].as_str()), (200, Some("terminated")), "{}", ended.body);
    // An ended machine cannot be extended (vendbox's 409, the seed's 400), and costs nothing.
    refused.push((r.post(&path, Some(&extend), &minutes).await, 400, "not_active"));
    let seen = r.get(&machine, Some(&read)).await;
    assert_eq!((seen.status, seen.body["status"].as_str()), (200, Some("terminated")), "{}", seen.body);
    assert_eq!(shop.balance(payer.address()).await, shop::FUNDS - 400_000 - 10_000);

    let report = validate(
        "agentic-compute-storefront.openapi.json",
        &r.exchanges,
        &["POST /api/machines", "POST /api/machines/{machine_id}/extend"],
    );
    assert_valid(&report, r.exchanges.len(), &[]);
    for (answer, status, code) in &refused {
        storefront_refusal(answer, *status, code);
    }
}

// ---------------------------------------------------------------------------------------------
// H3RETIK Cloud: sessions and Agent Lock.

#[tokio::test]
async fn h3retik_answers_are_the_seeds_sessions_and_locks() {
    if !(validator_installed() && boxhost::boxes_supported()) {
        return;
    }
    let Some(shop) = Shop::open(31337, &[]).await else { return };
    let _cleanup = boxhost::Cleanup::after(shop.vendbox.child.id(), shop.dir.path().join("state"));
    let payer = shop.payer().await;
    let other = shop.payer().await;
    let mut r = Recorder::new(&shop.vendbox.url);

    // Every package: its 402, and its bad bodies (400).
    for package in ["micro", "probe", "ops", "deep"] {
        let path = format!("/x402/sessions/{package}");
        let unpaid = r.send(Method::POST, &path, None, Sent::Nothing, &[]).await;
        assert_eq!(unpaid.status, 402, "{}", unpaid.body);
        let unpaid = r.post(&path, None, &json!({ "location": "europe" })).await;
        assert_eq!(unpaid.status, 402, "{}", unpaid.body);
        for body in [json!({ "location": "mars" }), json!({ "region": "us" }), json!([])] {
            let answer = r.post(&path, None, &body).await;
            assert_eq!(answer.status, 400, "{path} {body}: {}", answer.body);
        }
    }
    let custom = json!({ "minutes": 1, "actions": 1, "location": "auto" });
    assert_eq!(r.post("/x402/sessions", None, &custom).await.status, 402);
    for body in [
        json!({ "minutes": 0, "actions": 1 }),
        json!({ "minutes": 361, "actions": 1 }),
        json!({ "minutes": 1, "actions": 301 }),
        json!({ "minutes": 1 }),
        json!({ "minutes": 1, "actions": 1, "x": 1 }),
    ] {
        let answer = r.post("/x402/sessions", None, &body).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.body);
    }

    // Paid: a micro package and a custom session, each a running box.
    let empty = json!({});
    let micro =
        r.pay(&payer, Version::V2, Method::POST, "/x402/sessions/micro", None, Sent::Json(&empty)).await;
    assert_eq!((micro.status, micro.body["actions_remaining"].as_u64()), (200, Some(3)), "{}", micro.body);
    let session = r.pay(&payer, Version::V1, Method::POST, "/x402/sessions", None, Sent::Json(&custom)).await;
    assert_eq!(session.status, 200, "{}", session.body);
    assert_eq!(shop.balance(payer.address()).await, shop::FUNDS - 190_000 - 50_000);
    // vendbox's additions on the same surface (not in the seed): read a session, run a command.
    let id = micro.body["session_id"].as_str().unwrap();
    let token = micro.body["session_token"].as_str().unwrap();
    assert_eq!(r.get(&format!("/x402/sessions/{id}"), Some(token)).await.status, 200);
    let ran =
        r.post(&format!("/x402/sessions/{id}/exec"), Some(token), &json!({ "command": "echo hi" })).await;
    assert_eq!((ran.status, ran.body["stdout"].as_str()), (200, Some("hi\n")), "{}", ran.body);

    // Agent Lock: 402, bad bodies, acquired:true, acquired:false (voided: not charged).
    let key = json!({ "key": "seeds:lock:1", "owner": "agent-a", "ttl_seconds": 60 });
    assert_eq!(r.post("/x402/locks/acquire", None, &key).await.status, 402);
    for body in [
        json!({ "key": "ab" }),
        json!({ "key": "seeds:lock:1", "ttl_seconds": 1 }),
        json!({ "key": "seeds:lock:1", "colour": "red" }),
        json!({ "owner": "agent-a" }),
    ] {
        let answer = r.post("/x402/locks/acquire", None, &body).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.body);
    }
    let granted =
        r.pay(&payer, Version::V2, Method::POST, "/x402/locks/acquire", None, Sent::Json(&key)).await;
    assert_eq!((granted.status, granted.body["acquired"].as_bool()), (200, Some(true)), "{}", granted.body);
    let before = shop.balance(other.address()).await;
    let held = r.pay(&other, Version::V2, Method::POST, "/x402/locks/acquire", None, Sent::Json(&key)).await;
    assert_eq!((held.status, held.body["acquired"].as_bool()), (200, Some(false)), "{}", held.body);
    assert!(held.body.get("release_token").is_none(), "{}", held.body);
    assert_eq!(shop.balance(other.address()).await, before, "a held key charges nothing by default");
    // vendbox's additions: read, renew and release.
    let release_token = granted.body["release_token"].as_str().unwrap();
    assert_eq!(r.get("/x402/locks/seeds:lock:1", None).await.status, 200);
    let renew = json!({ "key": "seeds:lock:1", "release_token": release_token });
    let renewed =
        r.pay(&payer, Version::V2, Method::POST, "/x402/locks/renew", None, Sent::Json(&renew)).await;
    assert_eq!(renewed.status, 200, "{}", renewed.body);
    assert_eq!(r.post("/x402/locks/release", None, &renew).await.status, 200);

    let report = validate("h3retik-cloud.openapi.json", &r.exchanges, &[]);
    let additions = [
        format!("GET /x402/sessions/{id} -> 200"),
        format!("POST /x402/sessions/{id}/exec -> 200"),
        "GET /x402/locks/seeds:lock:1 -> 200".to_owned(),
        "POST /x402/locks/renew -> 402".to_owned(),
        "POST /x402/locks/renew -> 200".to_owned(),
        "POST /x402/locks/release -> 200".to_owned(),
    ];
    assert_valid(&report, r.exchanges.len() - additions.len(), &additions);
}

/// H3RETIK's document settles a paid acquisition that finds the key held; vendbox voids it unless
/// the acquire offer says `charge_when_held = true`.
#[tokio::test]
async fn a_held_key_is_charged_only_when_the_acquire_offer_says_so() {
    if !validator_installed() {
        return;
    }
    let Some(mut shop) = Shop::open(31337, &[]).await else { return };
    let (holder, late) = (shop.payer().await, shop.payer().await);
    let price = 100;
    let mut r = Recorder::new(&shop.vendbox.url);
    let key = json!({ "key": "seeds:held:1", "ttl_seconds": 600 });
    let granted =
        r.pay(&holder, Version::V2, Method::POST, "/x402/locks/acquire", None, Sent::Json(&key)).await;
    assert_eq!(granted.body["acquired"], true, "{}", granted.body);
    let held = r.pay(&late, Version::V1, Method::POST, "/x402/locks/acquire", None, Sent::Json(&key)).await;
    assert_eq!((held.status, held.body["acquired"].as_bool()), (200, Some(false)), "{}", held.body);
    assert!(held.headers.get(wire::X_PAYMENT_RESPONSE).is_none(), "voided: no receipt");
    assert_eq!(shop.balance(late.address()).await, shop::FUNDS, "the default voids it");

    // The operator chooses H3RETIK's rule: the attempt is what is sold.
    let config = "[[offers]]\nid = \"h3retik-lock\"\nlabels = { charge_when_held = true }\n";
    std::fs::write(shop.dir.path().join("vendbox.toml"), config).unwrap();
    shop.vendbox = shop.serve(&[]);
    let mut charged = Recorder::new(&shop.vendbox.url);
    let paid_before = shop.balance(shop.pay_to).await;
    for version in [Version::V1, Version::V2] {
        let held =
            charged.pay(&late, version, Method::POST, "/x402/locks/acquire", None, Sent::Json(&key)).await;
        assert_eq!((held.status, held.body["acquired"].as_bool()), (200, Some(false)), "{}", held.body);
        assert!(held.body.get("release_token").is_none(), "{}", held.body);
        let receipt = match version {
            Version::V1 => held.header_json(wire::X_PAYMENT_RESPONSE),
            Version::V2 => held.header_json(wire::PAYMENT_RESPONSE),
        };
        assert_eq!(receipt["success"], true, "{receipt}");
        let id = held.headers["vendbox-payment-id"].to_str().unwrap();
        let payment: Value =
            reqwest::get(shop.url(&format!("/v1/payments/{id}"))).await.unwrap().json().await.unwrap();
        assert_eq!(payment["state"], "settled", "{payment}");
    }
    assert_eq!(shop.balance(late.address()).await, shop::FUNDS - 2 * price);
    assert_eq!(shop.balance(shop.pay_to).await, paid_before + 2 * price);
    // The native mirror sells from the same offer.
    let native = shop.url("/v1/locks/seeds:held:1");
    let unpaid = reqwest::Client::new().post(&native).send().await.unwrap();
    let header = unpaid.headers()[wire::PAYMENT_REQUIRED].to_str().unwrap().to_owned();
    let challenge = Challenge::read(Some(&header), &unpaid.bytes().await.unwrap()).unwrap();
    let (name, value) = challenge.pay(&late, shop::now()).unwrap();
    let held = reqwest::Client::new().post(&native).header(name, value).send().await.unwrap();
    assert_eq!(held.status(), 200);
    assert_eq!(held.json::<Value>().await.unwrap()["acquired"], false);
    assert_eq!(shop.balance(late.address()).await, shop::FUNDS - 3 * price);

    let mut all = r.exchanges;
    all.extend(charged.exchanges);
    let report = validate("h3retik-cloud.openapi.json", &all, &[]);
    assert_valid(&report, all.len(), &[]);
}

// ---------------------------------------------------------------------------------------------
// The validator refuses what the seeds do not allow.

#[test]
fn the_validator_refuses_what_the_seeds_do_not_allow() {
    if !validator_installed() {
        return;
    }
    let exchange = |method: &str, path: &str, status: u16, content_type: &str, body: Value| json!({ "method": method, "path": path, "status": status, "content_type": content_type, "body": body });
    let json = "application/json";
    let machine = json!({
        "machine_id": "machine_0123456789abcdef", "product": "bare-linux-machine", "provider": "vendbox",
        "status": "active", "host": "127.0.0.1", "username": "root",
        "created_at": "2026-01-01T00:00:00Z", "expires_at": "2026-01-01T00:15:00Z",
    });
    let x402 = json!({ "x402Version": 1, "error": "payment_required", "accepts": [{ "scheme": "exact" }] });
    let storefront = [
        // The seed's own shapes pass.
        (exchange("GET", "/api/machines/machine_0123456789abcdef", 200, json, machine.clone()), None),
        (
            exchange(
                "GET",
                "/api/machines/x",
                404,
                json,
                json!({ "error": "no such machine", "code": "machine_not_found" }),
            ),
            None,
        ),
        (exchange("POST", "/api/machines", 402, json, x402.clone()), None),
        // vendbox's native error body is not the seed's `Error`.
        (
            exchange(
                "GET",
                "/api/machines/x",
                404,
                json,
                json!({ "error": { "code": "machine_not_found", "message": "no" } }),
            ),
            Some("is not of type 'string'"),
        ),
        // A status the operation does not list.
        (
            exchange(
                "POST",
                "/api/machines",
                409,
                json,
                json!({ "error": "reused", "code": "request_id_reused" }),
            ),
            Some("status 409 is not documented"),
        ),
        (exchange("POST", "/api/machines", 200, json, machine.clone()), Some("status 200 is not documented")),
        // A 402 where vendbox adds none, and a 402 that is not x402.
        (exchange("GET", "/api/machines/x", 402, json, x402.clone()), Some("status 402 is not documented")),
        (
            exchange("POST", "/api/machines", 402, json, json!({ "error": "pay" })),
            Some("without an x402 v1 body"),
        ),
        // A body that breaks the schema: a required field missing, a value outside an enum.
        (
            exchange("POST", "/api/machines", 202, json, machine.clone()),
            Some("'management' is a required property"),
        ),
        (
            exchange("GET", "/api/health", 200, json, json!({ "status": "fine", "products": [] })),
            Some("'ok' was expected"),
        ),
        // The right body as the wrong content type.
        (
            exchange("GET", "/api/health", 200, "text/plain", json!({ "status": "ok", "products": [] })),
            Some("content type 'text/plain'"),
        ),
    ];
    let h3retik = [
        // Through the document's `responses: {"$ref": …}` to a map of statuses.
        (
            exchange(
                "POST",
                "/x402/sessions/micro",
                200,
                json,
                json!({ "ok": true, "session_id": "s", "location": "auto" }),
            ),
            None,
        ),
        (
            exchange("POST", "/x402/sessions/micro", 200, json, json!({ "ok": "yes" })),
            Some("'yes' is not of type 'boolean'"),
        ),
        (
            exchange("POST", "/x402/sessions/probe", 200, json, json!({ "expires_at": "tomorrow" })),
            Some("is not a 'date-time'"),
        ),
        (exchange("POST", "/x402/sessions", 200, json, json!({ "location": "mars" })), Some("is not one of")),
        (
            exchange("POST", "/x402/locks/acquire", 200, json, json!({ "acquired": "no" })),
            Some("is not of type 'boolean'"),
        ),
        (exchange("POST", "/x402/locks/acquire", 409, json, json!({})), Some("status 409 is not documented")),
        (
            exchange("POST", "/x402/sessions/micro", 404, json, json!({})),
            Some("status 404 is not documented"),
        ),
        // A path the seed does not have is skipped, not judged.
        (exchange("POST", "/x402/locks/release", 418, json, json!({})), None),
    ];
    for (seed, cases, x402_ops) in [
        ("agentic-compute-storefront.openapi.json", &storefront[..], &["POST /api/machines"][..]),
        ("h3retik-cloud.openapi.json", &h3retik[..], &[][..]),
    ] {
        let exchanges: Vec<Value> = cases.iter().map(|(exchange, _)| exchange.clone()).collect();
        let report = validate(seed, &exchanges, x402_ops);
        for ((exchange, expected), result) in cases.iter().zip(report["results"].as_array().unwrap()) {
            let problems: Vec<&str> =
                result.as_array().map(|p| p.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            match expected {
                None => assert!(problems.is_empty(), "{exchange} should pass: {problems:?}"),
                Some(why) => assert!(
                    problems.len() == 1 && problems[0].contains(why),
                    "{exchange} should fail with {why:?}: {problems:?}"
                ),
            }
        }
        if seed.starts_with("h3retik") {
            assert_eq!(report["skipped"], json!(["POST /x402/locks/release -> 418"]), "{report}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// VpsAgent (vpsagent.md), pinned field by field.

const SKUS: [&str; 9] = [
    "sandbox_1h",
    "sandbox_6h",
    "sandbox_24h",
    "server_small_1mo",
    "server_small_12mo",
    "server_medium_1mo",
    "server_medium_12mo",
    "server_large_1mo",
    "server_large_12mo",
];
/// VpsAgent's 402 header (spelled here, not taken from `vendbox_pay::wire`, so that this test
/// builds against a vendbox without it and fails on the missing header).
const X_PAYMENT_REQUIRED: &str = "x-payment-required";
const RENTAL_STATUSES: [&str; 4] = ["pending_settlement", "active", "renewing", "expired"];

#[track_caller]
fn is_uuid(value: &Value) {
    let text = value.as_str().unwrap_or_else(|| panic!("{value} is not a string"));
    assert!(uuid_like(text), "{text} is not a UUID");
}

fn uuid_like(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[track_caller]
fn is_tx(value: &Value) {
    let text = value.as_str().unwrap_or_else(|| panic!("{value} is not a string"));
    assert!(text.len() == 66 && text.starts_with("0x"), "{text} is not a transaction hash");
}

/// A VpsAgent 402: `X-Payment-Required`, and the `PaymentChallenge` body with `PaymentRequirements`
/// carrying both `maxAmountRequired` and `amount`; the v2 `PAYMENT-REQUIRED` stays for x402 clients.
#[track_caller]
fn assert_vpsagent_challenge(answer: &Answer, amount: &str, resource_path: &str) {
    assert_eq!(answer.status, 402, "{}", answer.body);
    let body = &answer.body;
    assert_eq!(answer.header_json(X_PAYMENT_REQUIRED), *body, "X-Payment-Required is the body");
    assert!(answer.headers.contains_key(wire::PAYMENT_REQUIRED), "the v2 header stays");
    assert_eq!(body["x402Version"], 1, "{body}");
    // `error`: the seed types it null or object; vendbox keeps x402 v1's reason code, a string,
    // which the x402 specification and its official clients read.
    assert!(body["error"].is_string(), "{body}");
    let accepts = body["accepts"].as_array().unwrap();
    assert!(!accepts.is_empty(), "{body}");
    for terms in accepts {
        assert_eq!(terms["scheme"], "exact", "{terms}");
        assert!(terms["network"].is_string(), "{terms}");
        assert_eq!(terms["maxAmountRequired"], amount, "{terms}");
        assert_eq!(terms["amount"], amount, "the same as maxAmountRequired (CDP reads both): {terms}");
        let resource = terms["resource"].as_str().unwrap();
        assert!(resource.starts_with("http://127.0.0.1:") && resource.ends_with(resource_path), "{terms}");
        assert!(terms["description"].is_string(), "{terms}");
        assert_eq!(terms["mimeType"], "application/json", "{terms}");
        assert!(terms["payTo"].as_str().unwrap().starts_with("0x"), "{terms}");
        assert!(terms["maxTimeoutSeconds"].is_u64(), "{terms}");
        assert!(terms["asset"].as_str().unwrap().starts_with("0x"), "{terms}");
        assert!(terms["extra"].is_object(), "{terms}");
        assert!(terms.get("outputSchema").is_none_or(Value::is_object), "{terms}");
    }
}

/// A paid VpsAgent answer: `X-Payment-Response`, base64 JSON of `{tx, network}` (with x402's
/// own receipt fields), whichever version paid.
#[track_caller]
fn assert_vpsagent_receipt(answer: &Answer) -> Value {
    assert_eq!(answer.status, 200, "{}", answer.body);
    let receipt = answer.header_json(wire::X_PAYMENT_RESPONSE);
    is_tx(&receipt["tx"]);
    assert_eq!(receipt["network"], "eip155:31337", "{receipt}");
    assert_eq!((&receipt["transaction"], &receipt["success"]), (&receipt["tx"], &json!(true)), "{receipt}");
    receipt
}

#[tokio::test]
async fn vpsagent_answers_carry_every_documented_field_header_and_status() {
    if !boxhost::boxes_supported() {
        return;
    }
    let Some(mut shop) = Shop::open(31337, &[]).await else { return };
    // One SKU this vendbox does not rent now, for the documented 503.
    let config = "[[offers]]\nid = \"vpsagent-server-large-12mo\"\navailable = false\n";
    std::fs::write(shop.dir.path().join("vendbox.toml"), config).unwrap();
    shop.vendbox = shop.serve(&[]);
    let _cleanup = boxhost::Cleanup::after(shop.vendbox.child.id(), shop.dir.path().join("state"));
    let (first, second) = (shop.payer().await, shop.payer().await);
    let mut r = Recorder::new(&shop.vendbox.url);

    // GET /healthz: 200.
    assert_eq!(r.get("/healthz", None).await.status, 200);

    // GET /catalog: 402 (0.01 USDC), then paid in either version: 200, the SKUs and the receipt.
    let unpaid = r.get("/catalog", None).await;
    assert_vpsagent_challenge(&unpaid, "10000", "/catalog");
    for (payer, version) in [(&first, Version::V1), (&second, Version::V2)] {
        let catalog = r.pay(payer, version, Method::GET, "/catalog", None, Sent::Nothing).await;
        let receipt = assert_vpsagent_receipt(&catalog);
        if version == Version::V2 {
            let v2 = catalog.header_json(wire::PAYMENT_RESPONSE);
            assert_eq!(v2["transaction"], receipt["tx"], "PAYMENT-RESPONSE stays for v2 clients");
        }
        let skus = catalog.body.as_array().unwrap();
        let names: Vec<&str> = skus.iter().map(|s| s["sku"].as_str().unwrap()).collect();
        assert_eq!(names, SKUS, "{}", catalog.body);
        for sku in skus {
            assert!(["sandbox", "server"].contains(&sku["track"].as_str().unwrap()), "{sku}");
            assert!(sku["price_usdc"].is_number() && sku["duration_minutes"].is_u64(), "{sku}");
            assert!(sku["spec_floor"]["vcpu"].is_u64() && sku["spec_floor"]["memory_mb"].is_u64(), "{sku}");
            assert!(sku["available"].is_boolean() && sku["description"].is_string(), "{sku}");
        }
        assert_eq!(skus[8]["available"], false, "{}", skus[8]);
    }

    // POST /rent: 400 for a bad body, 402, 503 for a SKU not rented now, then 200.
    for body in [json!({}), json!({ "sku": "server_huge_1mo" }), json!({ "sku": 7 })] {
        let answer = r.post("/rent", None, &body).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.body);
    }
    let answer = r.post("/rent", None, &json!({ "sku": "server_large_12mo" })).await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    let sandbox = json!({ "sku": "sandbox_1h", "region": "EU" });
    let unpaid = r.post("/rent", None, &sandbox).await;
    assert_vpsagent_challenge(&unpaid, "500000", "/rent");
    let rented = r.pay(&first, Version::V1, Method::POST, "/rent", None, Sent::Json(&sandbox)).await;
    let receipt = assert_vpsagent_receipt(&rented);
    let rental = &rented.body;
    is_uuid(&rental["rental_id"]);
    assert_eq!(rental["sku"], "sandbox_1h");
    assert!(rental["ipv4"].is_string() || rental["ipv4"].is_null(), "{rental}");
    assert!(rental["expires_at"].is_i64(), "Unix ms: {rental}");
    let token = rental["root_token"].as_str().unwrap().to_owned();
    assert_eq!((rental["root_user"].as_str(), rental["root_password"].is_string()), (Some("root"), true));
    assert_eq!(rental["status"], "pending_settlement", "the seed's only value: {rental}");
    assert!(rental["note"].is_string(), "{rental}");
    let id = rental["rental_id"].as_str().unwrap().to_owned();

    // GET /rentals/{id}: 200 with the snapshot, 404 for an unknown one.
    let snapshot = r.get(&format!("/rentals/{id}"), None).await;
    assert_eq!(snapshot.status, 200, "{}", snapshot.body);
    let s = &snapshot.body;
    is_uuid(&s["rental_id"]);
    assert_eq!((s["sku"].as_str(), s["track"].as_str()), (Some("sandbox_1h"), Some("sandbox")), "{s}");
    assert!(RENTAL_STATUSES.contains(&s["status"].as_str().unwrap()), "{s}");
    assert_eq!(s["status"], "active", "{s}");
    assert!(s["created_at"].is_i64() && s["expires_at"].is_i64(), "{s}");
    assert!(s["grace_until"].is_null() || s["grace_until"].is_i64(), "{s}");
    assert_eq!(s["settle_tx_hash"], receipt["tx"], "{s}");
    assert_eq!(s["renewal_count"], 0, "{s}");
    assert!(s["last_renewal_tx_hash"].is_null(), "{s}");
    for unknown in ["/rentals/7d4a8f5e-0b1c-4c55-9d1e-3f2a7b6c8d90", "/rentals/nothing"] {
        assert_eq!(r.get(unknown, None).await.status, 404, "{unknown}");
    }

    // GET /instance/{id}?token=: 200, 401 without or with a wrong token, 404 for an unknown one.
    let instance = r.get(&format!("/instance/{id}?token={token}"), None).await;
    assert_eq!(instance.status, 200, "{}", instance.body);
    let i = &instance.body;
    is_uuid(&i["rental_id"]);
    assert!(i["ipv4"].is_string() || i["ipv4"].is_null(), "{i}");
    assert!(RENTAL_STATUSES.contains(&i["status"].as_str().unwrap()), "{i}");
    assert_eq!((i["running"].as_bool(), i["status"].as_str()), (Some(true), Some("active")), "{i}");
    assert!(i["expires_at"].is_i64(), "{i}");
    assert_eq!((i["root_user"].as_str(), i["root_password"].as_str()), (Some("root"), Some(token.as_str())));
    assert!(i.get("note").is_none_or(Value::is_string), "note is a string when present: {i}");
    assert_eq!(r.get(&format!("/instance/{id}"), None).await.status, 401);
    assert_eq!(r.get(&format!("/instance/{id}?token=vbx_wrong"), None).await.status, 401);
    let unknown = r.get(&format!("/instance/7d4a8f5e-0b1c-4c55-9d1e-3f2a7b6c8d90?token={token}"), None).await;
    assert_eq!(unknown.status, 404);

    // POST /rentals/{id}/renew?token=: 401, 404, 402, then 200; expires_at moves one period.
    let renew = |t: &str| format!("/rentals/{id}/renew?token={t}");
    let one = json!({ "periods": 1 });
    assert_eq!(r.post(&format!("/rentals/{id}/renew"), None, &one).await.status, 401);
    assert_eq!(r.post(&renew("vbx_wrong"), None, &one).await.status, 401);
    let unknown = format!("/rentals/7d4a8f5e-0b1c-4c55-9d1e-3f2a7b6c8d90/renew?token={token}");
    assert_eq!(r.post(&unknown, None, &one).await.status, 404);
    let unpaid = r.post(&renew(&token), None, &one).await;
    assert_vpsagent_challenge(&unpaid, "500000", &format!("/rentals/{id}/renew"));
    let before = rental["expires_at"].as_i64().unwrap();
    let renewed = r.pay(&second, Version::V2, Method::POST, &renew(&token), None, Sent::Json(&one)).await;
    assert_vpsagent_receipt(&renewed);
    let n = &renewed.body;
    assert_eq!((n["rental_id"].as_str(), n["status"].as_str()), (Some(id.as_str()), Some("renewing")), "{n}");
    assert_eq!(n["current_expires_at"].as_i64(), Some(before + 3_600_000), "{n}");
    assert!(n["predicted_expires_at"].is_i64(), "{n}");
    assert!(n.get("manual_step").is_none_or(Value::is_string), "{n}");

    // A rental that has ended: renewing is 409 (and charges nothing); the instance says so.
    let ended = r.send(Method::DELETE, &format!("/v1/boxes/{id}"), Some(&token), Sent::Nothing, &[]).await;
    assert_eq!(ended.status, 200, "{}", ended.body);
    let paid_before = shop.balance(second.address()).await;
    assert_eq!(r.post(&renew(&token), None, &one).await.status, 409);
    assert_eq!(shop.balance(second.address()).await, paid_before);
    let instance = r.get(&format!("/instance/{id}?token={token}"), None).await;
    let i = &instance.body;
    assert_eq!(
        (instance.status, i["running"].as_bool(), i["status"].as_str()),
        (200, Some(false), Some("expired")),
        "{i}"
    );
    assert!(i["note"].is_string(), "{i}");
}
