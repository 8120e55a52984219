//! Agent Lock end to end against the real `vendbox` binary: the H3RETIK and native surfaces,
//! histories of concurrent clients that pause past their TTL checked by `lockcheck`, a counter
//! protected with and without fencing, on SQLite and on two processes sharing PostgreSQL, with
//! a kill -9 and restart in the middle of each run.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc, clippy::too_many_lines)]

mod lockcheck;
mod shop;
mod support;

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use lockcheck::{Event, Op, Outcome};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use shop::Shop;
use support::Vendbox;
use vendbox_pay::Wallet;
use vendbox_pay::client::Challenge;
use vendbox_pay::wire;
use vendbox_store::testkit::PostgresSchema;

/// Shortest TTL a lock may have: the runs below pause longer than this.
const TTL: u64 = 5;

/// Locks at price 0, as a private deployment would sell them.
const FREE_LOCKS: &str = r#"
[[offers]]
id = "h3retik-lock"
price = { base = "0" }

[[offers]]
id = "h3retik-lock-renew"
price = { base = "0" }
"#;

/// One or two vendbox processes on one store, and where clients reach them.
struct Cluster {
    dir: tempfile::TempDir,
    instances: Vec<Vendbox>,
    urls: Arc<RwLock<Vec<String>>>,
    schema: Option<PostgresSchema>,
}

impl Cluster {
    /// One vendbox on SQLite.
    fn sqlite() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vendbox.toml"), FREE_LOCKS).unwrap();
        let mut cluster =
            Cluster { dir, instances: Vec::new(), urls: Arc::new(RwLock::new(Vec::new())), schema: None };
        cluster.add();
        cluster
    }

    /// Two vendbox processes sharing one PostgreSQL schema.
    async fn postgres_pair() -> Option<Cluster> {
        let schema = PostgresSchema::create().await?;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vendbox.toml"), FREE_LOCKS).unwrap();
        let mut cluster = Cluster {
            dir,
            instances: Vec::new(),
            urls: Arc::new(RwLock::new(Vec::new())),
            schema: Some(schema),
        };
        cluster.add();
        cluster.add();
        Some(cluster)
    }

    fn start(&self) -> Vendbox {
        let mut args = vec!["--data-dir".to_owned(), "state".to_owned()];
        if let Some(schema) = &self.schema {
            args.extend(["--database-url".to_owned(), schema.url()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Vendbox::start(self.dir.path(), &args)
    }

    fn add(&mut self) {
        let vendbox = self.start();
        self.urls.write().unwrap().push(vendbox.url.clone());
        self.instances.push(vendbox);
    }

    fn url(&self) -> String {
        self.urls.read().unwrap()[0].clone()
    }

    /// Kills instance `i` with SIGKILL and starts it again on the same store.
    fn crash_and_restart(&mut self, i: usize) {
        self.instances[i].crash();
        let vendbox = self.start();
        self.urls.write().unwrap()[i].clone_from(&vendbox.url);
        self.instances[i] = vendbox;
    }

    async fn close(mut self) {
        self.instances.clear();
        if let Some(schema) = self.schema.take() {
            schema.drop_schema().await;
        }
    }
}

/// Store time in Unix milliseconds.
fn ms(value: &Value) -> i64 {
    store_ms(value).unwrap()
}

/// Store time in Unix milliseconds, when `value` is one.
fn store_ms(value: &Value) -> Option<i64> {
    Some(chrono::DateTime::parse_from_rfc3339(value.as_str()?).ok()?.timestamp_millis())
}

/// What came back for one request of a [`LockClient`].
enum Answer {
    /// A status below 500 and a JSON body.
    Json(u16, Value),
    /// The connection was refused (an instance being restarted): nothing reached vendbox.
    NotSent,
    /// Sent, and no answer came back whole: a timeout, or the connection broke (a crash).
    Lost,
    /// An answer no correct vendbox gives: a 5xx, or a body that is not JSON.
    Broken(String),
}

impl Answer {
    /// The outcome of anything but a JSON answer, or of one `parse` does not take.
    fn outcome(self, parse: impl FnOnce(u16, &Value) -> Option<Outcome>) -> Outcome {
        match self {
            Answer::Json(status, body) => {
                parse(status, &body).unwrap_or_else(|| Outcome::Failed { answer: format!("{status} {body}") })
            }
            Answer::NotSent => Outcome::NotSent,
            Answer::Lost => Outcome::Unknown,
            Answer::Broken(answer) => Outcome::Failed { answer },
        }
    }
}

/// A grant's fencing token, start and expiry, as `lock` shows them.
fn life(lock: &Value) -> Option<(u64, i64, i64)> {
    Some((lock["fencing_token"].as_u64()?, store_ms(&lock["acquired_at"])?, store_ms(&lock["expires_at"])?))
}

/// The outcome of a 409 refusal.
fn refusal(status: u16, body: &Value) -> Option<Outcome> {
    (status == 409).then_some(())?;
    Some(Outcome::Refused { code: body["error"]["code"].as_str()?.to_owned() })
}

/// A client of the lock API that records what it did. Even clients speak H3RETIK's surface,
/// odd ones the native one; each request goes to the next vendbox of the cluster.
struct LockClient {
    id: usize,
    http: reqwest::Client,
    urls: Arc<RwLock<Vec<String>>>,
    start: Instant,
    turn: usize,
    events: Vec<Event>,
}

impl LockClient {
    fn new(id: usize, urls: Arc<RwLock<Vec<String>>>, start: Instant) -> LockClient {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        LockClient { id, http, urls, start, turn: id, events: Vec::new() }
    }

    fn native(&self) -> bool {
        self.id % 2 == 1
    }

    fn base(&mut self) -> String {
        let urls = self.urls.read().unwrap();
        self.turn += 1;
        urls[self.turn % urls.len()].clone()
    }

    /// Sends `request`. Only a refused connection, a timeout or a broken connection leave the
    /// outcome open; any answer that came back whole is judged.
    async fn send(request: reqwest::RequestBuilder) -> Answer {
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) if e.is_connect() => return Answer::NotSent,
            Err(e) if e.is_timeout() || e.is_request() => return Answer::Lost,
            Err(e) => return Answer::Broken(format!("no answer: {e}")),
        };
        let status = response.status().as_u16();
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(e) if e.is_timeout() || e.is_body() || e.is_request() => return Answer::Lost,
            Err(e) => return Answer::Broken(format!("{status}, then no body: {e}")),
        };
        match serde_json::from_slice::<Value>(&body) {
            Ok(body) if status < 500 => Answer::Json(status, body),
            _ => Answer::Broken(format!("{status} {}", String::from_utf8_lossy(&body))),
        }
    }

    fn record(&mut self, key: &str, op: Op, grant: Option<u64>, invoked: Duration, outcome: Outcome) {
        let completed = self.start.elapsed();
        self.events.push(Event {
            client: self.id,
            key: key.to_owned(),
            op,
            grant,
            invoked,
            completed,
            outcome,
        });
    }

    /// Tries to take `key`: its fencing token and release token when granted.
    async fn acquire(&mut self, key: &str, ttl: u64) -> Option<(u64, String)> {
        let base = self.base();
        let owner = format!("client-{}", self.id);
        let request = if self.native() {
            self.http
                .post(format!("{base}/v1/locks/{key}"))
                .json(&json!({ "owner": owner, "ttl_seconds": ttl, "metadata": { "client": self.id } }))
        } else {
            self.http.post(format!("{base}/x402/locks/acquire")).json(
                &json!({ "key": key, "owner": owner, "ttl_seconds": ttl, "metadata": { "client": self.id } }),
            )
        };
        let invoked = self.start.elapsed();
        let mut token = None;
        let outcome = Self::send(request).await.outcome(|status, body| {
            let lock = &body["lock"];
            let (fencing, acquired_at, expires_at) = life(lock)?;
            match (status, &body["acquired"]) {
                (200 | 201, Value::Bool(true)) => {
                    (body["fencing_token"] == fencing && lock["owner"] == json!(owner)).then_some(())?;
                    token = Some((fencing, body["release_token"].as_str()?.to_owned()));
                    Some(Outcome::Granted { fencing, acquired_at, expires_at })
                }
                // A holder's token is never shown.
                (200, Value::Bool(false)) if body.get("release_token").is_none() => {
                    Some(Outcome::Held { fencing, acquired_at, expires_at })
                }
                _ => None,
            }
        });
        self.record(key, Op::Acquire, None, invoked, outcome);
        token
    }

    async fn renew(&mut self, key: &str, grant: &(u64, String), ttl: u64) -> bool {
        let base = self.base();
        let request = if self.native() {
            self.http
                .post(format!("{base}/v1/locks/{key}/renew"))
                .bearer_auth(&grant.1)
                .json(&json!({ "ttl_seconds": ttl }))
        } else {
            self.http
                .post(format!("{base}/x402/locks/renew"))
                .json(&json!({ "key": key, "release_token": grant.1, "ttl_seconds": ttl }))
        };
        let invoked = self.start.elapsed();
        let outcome = Self::send(request).await.outcome(|status, body| {
            let lock = &body["lock"];
            if status != 200 {
                return refusal(status, body);
            }
            (lock["ttl_seconds"] == ttl).then_some(())?;
            Some(Outcome::Renewed {
                fencing: lock["fencing_token"].as_u64()?,
                renewed_at: store_ms(&lock["renewed_at"])?,
                expires_at: store_ms(&lock["expires_at"])?,
            })
        });
        let renewed = matches!(outcome, Outcome::Renewed { .. });
        self.record(key, Op::Renew, Some(grant.0), invoked, outcome);
        renewed
    }

    async fn release(&mut self, key: &str, grant: &(u64, String)) -> bool {
        let base = self.base();
        let request = if self.native() {
            self.http.delete(format!("{base}/v1/locks/{key}")).bearer_auth(&grant.1)
        } else {
            self.http
                .post(format!("{base}/x402/locks/release"))
                .json(&json!({ "key": key, "release_token": grant.1 }))
        };
        let invoked = self.start.elapsed();
        let outcome = Self::send(request).await.outcome(|status, body| {
            if status != 200 {
                return refusal(status, body);
            }
            Some(Outcome::Released {
                fencing: body["fencing_token"].as_u64()?,
                released_at: store_ms(&body["released_at"])?,
                already: body["already_released"].as_bool()?,
            })
        });
        let released = matches!(outcome, Outcome::Released { .. });
        self.record(key, Op::Release, Some(grant.0), invoked, outcome);
        released
    }

    async fn read(&mut self, key: &str) {
        let base = self.base();
        let path = if self.native() { "v1/locks" } else { "x402/locks" };
        let invoked = self.start.elapsed();
        let request = self.http.get(format!("{base}/{path}/{key}"));
        let outcome = Self::send(request).await.outcome(|status, body| {
            // A read never shows a token.
            (status == 200 && !body.to_string().contains("vbx_")).then_some(())?;
            let held = match body["held"] {
                Value::Bool(true) => {
                    Some((body["lock"]["fencing_token"].as_u64()?, store_ms(&body["lock"]["expires_at"])?))
                }
                Value::Bool(false) => None,
                _ => return None,
            };
            Some(Outcome::Read { held })
        });
        self.record(key, Op::Read, None, invoked, outcome);
    }
}

// ---------------------------------------------------------------------------------------------
// The surfaces.

async fn post(url: &str, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::new().post(url).json(body).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn h3retik_locks_acquire_renew_release_and_read() {
    let cluster = Cluster::sqlite();
    let base = cluster.url();
    let acquire = format!("{base}/x402/locks/acquire");
    let body = json!({ "key": "h1dr4:x-mention:2066895922949464487", "owner": "h1dr4-agent", "ttl_seconds": 900, "metadata": { "tweet": 1 } });
    let (status, first) = post(&acquire, &body).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!((first["ok"].clone(), first["acquired"].clone()), (json!(true), json!(true)));
    let token = first["release_token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("vbx_") && token.len() > 40);
    assert_eq!(first["fencing_token"], 1);
    assert_eq!(first["lock"]["owner"], "h1dr4-agent");
    assert_eq!(first["lock"]["metadata"], json!({ "tweet": 1 }));
    assert_eq!(ms(&first["lock"]["expires_at"]) - ms(&first["lock"]["acquired_at"]), 900_000);

    // Held: acquired=false, the holder's grant without its token.
    let (status, held) = post(&acquire, &json!({ "key": body["key"], "owner": "other" })).await;
    assert_eq!(status, 200);
    assert_eq!(held["acquired"], false);
    assert_eq!(held["lock"]["owner"], "h1dr4-agent");
    assert!(held.get("release_token").is_none() && !held.to_string().contains(&token));

    // Read: never the token.
    let read_url = format!("{base}/x402/locks/h1dr4:x-mention:2066895922949464487");
    let read: Value = reqwest::get(&read_url).await.unwrap().json().await.unwrap();
    assert_eq!(read["held"], true);
    assert_eq!(read["lock"]["fencing_token"], 1);
    assert!(!read.to_string().contains(&token));

    // Renew: only with the token; keeps the fencing token; TTL defaults to the grant's.
    let renew = format!("{base}/x402/locks/renew");
    let (status, wrong) =
        post(&renew, &json!({ "key": body["key"], "release_token": "vbx_not-the-token" })).await;
    assert_eq!((status, wrong["error"]["code"].as_str()), (409, Some("lock_not_held")));
    let (status, renewed) =
        post(&renew, &json!({ "key": body["key"], "release_token": token, "ttl_seconds": 60 })).await;
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(renewed["lock"]["fencing_token"], 1);
    assert_eq!(ms(&renewed["lock"]["expires_at"]) - ms(&renewed["lock"]["renewed_at"]), 60_000);
    let (_, renewed) = post(&renew, &json!({ "key": body["key"], "release_token": token })).await;
    assert_eq!(renewed["lock"]["ttl_seconds"], 60, "a renewal without TTL keeps the last one");

    // Release: idempotent; the key is free after.
    let release = format!("{base}/x402/locks/release");
    let (status, wrong) =
        post(&release, &json!({ "key": body["key"], "release_token": "vbx_not-the-token" })).await;
    assert_eq!((status, wrong["error"]["code"].as_str()), (409, Some("lock_not_held")));
    let still: Value = reqwest::get(&read_url).await.unwrap().json().await.unwrap();
    assert_eq!(still["held"], true, "a wrong token changed nothing");
    let (status, released) = post(&release, &json!({ "key": body["key"], "release_token": token })).await;
    assert_eq!(status, 200);
    assert_eq!(
        (released["released"].clone(), released["already_released"].clone()),
        (json!(true), json!(false))
    );
    let (status, again) = post(&release, &json!({ "key": body["key"], "release_token": token })).await;
    assert_eq!(status, 200);
    assert_eq!(again["already_released"], true);
    assert_eq!(again["released_at"], released["released_at"]);
    let (status, refused) = post(&renew, &json!({ "key": body["key"], "release_token": token })).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (409, Some("lock_released")));
    let free: Value = reqwest::get(&read_url).await.unwrap().json().await.unwrap();
    assert_eq!(free["held"], false);

    // The next grant has the next fencing token; the old token is now stale.
    let (_, second) = post(&acquire, &json!({ "key": body["key"] })).await;
    assert_eq!((second["acquired"].clone(), second["fencing_token"].clone()), (json!(true), json!(2)));
    assert_eq!(second["lock"]["ttl_seconds"], 900, "the seed's default TTL");
    assert!(ms(&second["lock"]["acquired_at"]) >= ms(&released["released_at"]));
    let (status, stale) = post(&release, &json!({ "key": body["key"], "release_token": token })).await;
    assert_eq!((status, stale["error"]["code"].as_str()), (409, Some("lock_not_held")));
    cluster.close().await;
}

#[tokio::test]
async fn the_openapi_document_names_every_lock_operation() {
    let cluster = Cluster::sqlite();
    let doc: Value =
        reqwest::get(format!("{}/openapi.json", cluster.url())).await.unwrap().json().await.unwrap();
    let operation = |path: &str, method: &str| doc["paths"][path][method]["operationId"].clone();
    assert_eq!(operation("/x402/locks/acquire", "post"), "acquireAgentLockX402", "the seed's operationId");
    assert_eq!(operation("/x402/locks/release", "post"), "releaseAgentLockX402");
    assert_eq!(operation("/x402/locks/renew", "post"), "renewAgentLockX402");
    assert_eq!(operation("/x402/locks/{key}", "get"), "getAgentLockX402");
    for method in ["get", "post", "delete"] {
        assert!(operation("/v1/locks/{key}", method).is_string(), "{method} /v1/locks/{{key}}");
    }
    assert!(operation("/v1/locks/{key}/renew", "post").is_string());
    let input = &doc["components"]["schemas"]["AcquireRequest"];
    assert_eq!(input["additionalProperties"], false);
    assert_eq!(input["properties"]["ttl_seconds"]["maximum"], 86_400);
    cluster.close().await;
}

#[tokio::test]
async fn lock_requests_are_validated_as_the_seed_says() {
    let cluster = Cluster::sqlite();
    let acquire = format!("{}/x402/locks/acquire", cluster.url());
    let cases = [
        (json!({ "key": "ab" }), "invalid_value", "key"),
        (json!({ "key": "k".repeat(257) }), "invalid_value", "key"),
        (json!({ "owner": "x" }), "missing_field", "key"),
        (json!({ "key": "abc", "owner": "o".repeat(161) }), "invalid_value", "owner"),
        (json!({ "key": "abc", "ttl_seconds": 4 }), "out_of_range", "ttl_seconds"),
        (json!({ "key": "abc", "ttl_seconds": 86_401 }), "out_of_range", "ttl_seconds"),
        (json!({ "key": "abc", "ttl_seconds": -1 }), "out_of_range", "ttl_seconds"),
        (json!({ "key": "abc", "ttl_seconds": "900" }), "wrong_type", "ttl_seconds"),
        (json!({ "key": "abc", "metadata": [1] }), "wrong_type", "metadata"),
        (json!({ "key": "abc", "metadata": { "x": "y".repeat(5000) } }), "invalid_value", "metadata"),
        (json!({ "key": "abc", "colour": "red" }), "unknown_field", "colour"),
    ];
    for (body, code, field) in cases {
        let (status, error) = post(&acquire, &body).await;
        assert_eq!(status, 400, "{body}: {error}");
        assert_eq!(error["error"]["code"], code, "{body}: {error}");
        assert_eq!(error["error"]["field"], field, "{body}: {error}");
    }
    let base = cluster.url();
    let (status, error) = post(&format!("{base}/x402/locks/renew"), &json!({ "key": "abc" })).await;
    assert_eq!((status, error["error"]["field"].as_str()), (400, Some("release_token")));
    let (status, error) = post(
        &format!("{base}/x402/locks/renew"),
        &json!({ "key": "abc", "release_token": "t", "ttl_seconds": 1 }),
    )
    .await;
    assert_eq!((status, error["error"]["field"].as_str()), (400, Some("ttl_seconds")));
    let read = reqwest::get(format!("{base}/x402/locks/ab")).await.unwrap();
    assert_eq!(read.status(), 400);
    // Nothing was granted by any of it.
    let read: Value = reqwest::get(format!("{base}/x402/locks/abc")).await.unwrap().json().await.unwrap();
    assert_eq!(read["held"], false);
    cluster.close().await;
}

#[tokio::test]
async fn native_locks_take_the_key_in_the_path_and_the_token_as_bearer() {
    let cluster = Cluster::sqlite();
    let http = reqwest::Client::new();
    let url = format!("{}/v1/locks/queue%2Fitem-7", cluster.url());
    let response = http.post(&url).send().await.unwrap();
    assert_eq!(response.status(), 201, "an empty body takes the defaults");
    let first: Value = response.json().await.unwrap();
    assert_eq!(first["lock"]["key"], "queue/item-7");
    let token = first["release_token"].as_str().unwrap().to_owned();
    let response = http.post(&url).json(&json!({ "owner": "b" })).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["acquired"], false);
    // The H3RETIK surface sees the same lock.
    let read: Value = reqwest::get(format!("{}/x402/locks/queue%2Fitem-7", cluster.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["lock"]["fencing_token"], 1);

    let response = http.post(format!("{url}/renew")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "missing_token");
    let response = http
        .post(format!("{url}/renew"))
        .bearer_auth(&token)
        .json(&json!({ "ttl_seconds": 30 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["lock"]["ttl_seconds"], 30);
    let response = http.delete(&url).bearer_auth("vbx_wrong").send().await.unwrap();
    assert_eq!(response.status(), 409);
    let response = http.delete(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["released"], true);
    let read: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(read["held"], false);
    cluster.close().await;
}

#[tokio::test]
async fn locks_are_not_sold_where_the_catalog_has_no_lock_offer() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("vendbox.toml"), "[[offers]]\nid = \"h3retik-lock\"\navailable = false\n")
        .unwrap();
    let vendbox = Vendbox::start(dir.path(), &["--data-dir", "state"]);
    let (status, error) =
        post(&format!("{}/x402/locks/acquire", vendbox.url), &json!({ "key": "abc" })).await;
    assert_eq!((status, error["error"]["code"].as_str()), (503, Some("not_offered")));
}

#[tokio::test]
async fn paid_locks_need_a_payee_before_they_are_sold() {
    // The default catalog sells locks at 0.0001 USDC; with no payee configured vendbox says so.
    let dir = tempfile::tempdir().unwrap();
    let vendbox = Vendbox::start(dir.path(), &["--data-dir", "state"]);
    let (status, error) =
        post(&format!("{}/x402/locks/acquire", vendbox.url), &json!({ "key": "abc" })).await;
    assert_eq!((status, error["error"]["code"].as_str()), (503, Some("payments_unconfigured")));
    // Releasing and reading are free.
    let (status, error) =
        post(&format!("{}/x402/locks/release", vendbox.url), &json!({ "key": "abc", "release_token": "x" }))
            .await;
    assert_eq!((status, error["error"]["code"].as_str()), (409, Some("lock_not_held")));
}

// ---------------------------------------------------------------------------------------------
// Histories: clients that pause past their TTL, checked by lockcheck.

/// Runs `clients` clients over `keys` keys for `length`, crashing and restarting instance 0 half
/// way; returns the merged history.
async fn run_history(cluster: &mut Cluster, clients: usize, keys: usize, length: Duration) -> Vec<Event> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for id in 0..clients {
        let mut client = LockClient::new(id, cluster.urls.clone(), start);
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(id as u64);
            while start.elapsed() < length {
                let key = format!("history:key-{}", rng.gen_range(0..keys));
                let Some(grant) = client.acquire(&key, TTL).await else {
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(20..200))).await;
                    continue;
                };
                match rng.gen_range(0..100) {
                    // Work briefly, perhaps renew, release.
                    0..60 => {
                        tokio::time::sleep(Duration::from_millis(rng.gen_range(10..300))).await;
                        if rng.gen_bool(0.5) {
                            client.renew(&key, &grant, TTL + 1).await;
                            tokio::time::sleep(Duration::from_millis(rng.gen_range(10..200))).await;
                        }
                        client.release(&key, &grant).await;
                    }
                    // Pause past the TTL (a GC pause, a stopped VM), then act on the stale token,
                    // then look at the key.
                    60..85 => {
                        tokio::time::sleep(Duration::from_millis(TTL * 1000 + rng.gen_range(300..1500)))
                            .await;
                        if rng.gen_bool(0.5) {
                            client.renew(&key, &grant, TTL).await;
                        }
                        client.release(&key, &grant).await;
                        client.read(&key).await;
                    }
                    // Walk away: the grant lapses by itself.
                    _ => client.read(&key).await,
                }
            }
            client.events
        }));
    }
    tokio::time::sleep(length / 2).await;
    tokio::task::block_in_place(|| cluster.crash_and_restart(0));
    let mut history = Vec::new();
    for task in tasks {
        history.extend(task.await.unwrap());
    }
    history
}

/// What a history run must show besides following the rules. Each client has at most one
/// request in flight, so the crash leaves at most 8 unanswered of the 900-1150 operations a run
/// sends (measured: 0-2, besides 1-6 refused connections, which did nothing); renewals inside
/// the TTL succeed 7-17 times a run.
const HISTORY_BOUNDS: lockcheck::Bounds = lockcheck::Bounds { unknown_per_mille: 20, min_renewals: 3 };

fn assert_history_holds(history: &[Event]) {
    match lockcheck::check(history, &HISTORY_BOUNDS) {
        Ok(summary) => {
            eprintln!("history: {}", lockcheck::describe(&summary));
            // Typical runs: 22-43 grants, 19-40 handovers, 9-18 stale operations; the floors
            // leave room for a loaded machine and still prove the run exercised each rule.
            assert!(summary.grants > 12, "too few grants to mean anything: {summary:?}");
            assert!(summary.handovers_checked > 8, "{summary:?}");
            assert!(summary.stale_refused > 1, "the pauses produced stale tokens: {summary:?}");
            assert!(summary.held > 5, "clients contended: {summary:?}");
        }
        Err(violations) => panic!("the history breaks the lock's rules:\n{}", violations.join("\n")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_on_sqlite_hold_across_a_crash() {
    let mut cluster = Cluster::sqlite();
    let history = run_history(&mut cluster, 8, 3, Duration::from_secs(20)).await;
    cluster.close().await;
    assert_history_holds(&history);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_on_two_hosts_sharing_postgres_hold_across_a_crash() {
    let Some(mut cluster) = Cluster::postgres_pair().await else { return };
    let history = run_history(&mut cluster, 8, 3, Duration::from_secs(20)).await;
    cluster.close().await;
    assert_history_holds(&history);
}

// ---------------------------------------------------------------------------------------------
// Fencing: a counter that lost updates without it, and none with it.

/// The resource a lock protects: a counter that, when fenced, refuses any operation carrying a
/// token lower than the highest it has seen.
#[derive(Debug, Default)]
struct Counter {
    value: u64,
    highest: u64,
    refused: u64,
}

impl Counter {
    fn read(&mut self, token: u64, fenced: bool) -> Option<u64> {
        if fenced {
            if token < self.highest {
                self.refused += 1;
                return None;
            }
            self.highest = token;
        }
        Some(self.value)
    }

    fn write(&mut self, token: u64, value: u64, fenced: bool) -> bool {
        if fenced {
            if token < self.highest {
                self.refused += 1;
                return false;
            }
            self.highest = token;
        }
        self.value = value;
        true
    }
}

/// Clients add `per_client` each to a counter under one lock; client 0 pauses past its TTL
/// between its first read and write, while the others go on. Instance 0 is killed and restarted
/// during the run. The counter, and the number of increments clients believe they made.
async fn run_counter(cluster: &mut Cluster, fenced: bool, clients: usize, per_client: u64) -> (Counter, u64) {
    let counter = Arc::new(Mutex::new(Counter::default()));
    let key = format!("counter:{}", if fenced { "fenced" } else { "unfenced" });
    let start = Instant::now();
    let paused = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for id in 0..clients {
        let (counter, key, paused) = (counter.clone(), key.clone(), paused.clone());
        let mut client = LockClient::new(id, cluster.urls.clone(), start);
        if id > 0 {
            // The others start once client 0 holds the lock and has read.
            paused.notified().await;
            paused.notify_one();
        }
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            let mut first = true;
            while done < per_client {
                let Some(grant) = client.acquire(&key, TTL).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let read = counter.lock().unwrap().read(grant.0, fenced);
                if let Some(value) = read {
                    if id == 0 && first {
                        first = false;
                        paused.notify_one();
                        tokio::time::sleep(Duration::from_secs(TTL + 2)).await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    if counter.lock().unwrap().write(grant.0, value + 1, fenced) {
                        done += 1;
                    }
                }
                client.release(&key, &grant).await;
            }
            (done, client.events)
        }));
    }
    // While the others work through the lapsed lock and client 0 still sleeps.
    let crash_at = start + Duration::from_secs(TTL + 1);
    tokio::time::sleep_until(crash_at.into()).await;
    tokio::task::block_in_place(|| cluster.crash_and_restart(0));
    let mut increments = 0;
    let mut history = Vec::new();
    for task in tasks {
        let (done, events) = task.await.unwrap();
        increments += done;
        history.extend(events);
    }
    // At most 4 requests in flight at the crash, of 320-710 (measured: 0-1); no renewals here.
    let bounds = lockcheck::Bounds { unknown_per_mille: 20, min_renewals: 0 };
    match lockcheck::check(&history, &bounds) {
        Ok(summary) => eprintln!("counter history: {}", lockcheck::describe(&summary)),
        Err(violations) => panic!("the counter's lock history breaks the rules:\n{}", violations.join("\n")),
    }
    let counter = std::mem::take(&mut *counter.lock().unwrap());
    (counter, increments)
}

async fn fencing_prevents_lost_updates(cluster: &mut Cluster) {
    let (unfenced, believed) = run_counter(cluster, false, 4, 6).await;
    assert!(
        unfenced.value < believed,
        "without fencing the paused client overwrites newer increments: {} counted, {believed} made",
        unfenced.value
    );
    eprintln!("without fencing: {} of {believed} increments survived", unfenced.value);
    let (fenced, believed) = run_counter(cluster, true, 4, 6).await;
    assert_eq!(believed, 24);
    assert_eq!(fenced.value, believed, "with fencing no update is lost");
    assert!(fenced.refused >= 1, "the paused client's stale write was refused by its token");
    eprintln!(
        "with fencing: {} of {believed} increments survived; {} stale operations refused",
        fenced.value, fenced.refused
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_prevent_lost_updates_on_sqlite_across_a_crash() {
    let mut cluster = Cluster::sqlite();
    fencing_prevents_lost_updates(&mut cluster).await;
    cluster.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_prevent_lost_updates_on_two_hosts_sharing_postgres_across_a_crash() {
    let Some(mut cluster) = Cluster::postgres_pair().await else { return };
    fencing_prevents_lost_updates(&mut cluster).await;
    cluster.close().await;
}

// ---------------------------------------------------------------------------------------------
// Paid locks, on a real chain: pay on success.

/// The default catalog's lock price in atomic units (0.0001 USDC, as H3RETIK publishes).
const LOCK_PRICE: u64 = 100;

/// The 402 of a lock request: its challenge.
async fn lock_challenge(url: &str, body: &Value) -> Challenge {
    let response = reqwest::Client::new().post(url).json(body).send().await.unwrap();
    assert_eq!(response.status(), 402);
    let header = response.headers().get(wire::PAYMENT_REQUIRED).unwrap().to_str().unwrap().to_owned();
    let challenge = Challenge::read(Some(&header), &response.bytes().await.unwrap()).unwrap();
    assert_eq!(challenge.price().unwrap().0, LOCK_PRICE);
    challenge
}

/// Sends `body` to `url` paid by `payer`: status, headers and body.
async fn paid_post(
    url: &str,
    body: &Value,
    challenge: &Challenge,
    payer: &Wallet,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let (name, value) = challenge.pay(payer, shop::now()).unwrap();
    let response = reqwest::Client::new().post(url).header(name, value).json(body).send().await.unwrap();
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (status, headers, response.json().await.unwrap())
}

async fn payment_state(shop: &Shop, headers: &reqwest::header::HeaderMap) -> Value {
    let id = headers["vendbox-payment-id"].to_str().unwrap();
    reqwest::get(shop.url(&format!("/v1/payments/{id}"))).await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_paid_acquisitions_of_one_key_grant_one_and_charge_once() {
    let Some(shop) = Shop::open(31337, &[]).await else { return };
    let url = shop.url("/x402/locks/acquire");
    let body = json!({ "key": "bounty:create:the-one", "ttl_seconds": 60 });
    let challenge = lock_challenge(&url, &body).await;
    let mut payers = Vec::new();
    for _ in 0..50 {
        payers.push(shop.payer().await);
    }
    let attempts = payers.iter().map(|payer| paid_post(&url, &body, &challenge, payer));
    let results = futures_util::future::join_all(attempts).await;

    let mut winners = Vec::new();
    for (i, (status, headers, answer)) in results.iter().enumerate() {
        assert_eq!(*status, 200, "{answer}");
        if answer["acquired"] == true {
            winners.push(i);
            let receipt: wire::SettlementResponse =
                wire::decode_header(headers[wire::PAYMENT_RESPONSE].to_str().unwrap()).unwrap();
            assert!(receipt.success && receipt.transaction.starts_with("0x"));
            assert_eq!(payment_state(&shop, headers).await["state"], "settled");
        } else {
            assert!(headers.get(wire::PAYMENT_RESPONSE).is_none(), "no receipt when nothing was sold");
            assert_eq!(answer["lock"]["fencing_token"], 1);
            let payment = payment_state(&shop, headers).await;
            assert_eq!(payment["state"], "voided", "{payment}");
        }
    }
    assert_eq!(winners.len(), 1, "exactly one acquisition");
    let winner = winners[0];
    for (i, payer) in payers.iter().enumerate() {
        let expected = if i == winner { shop::FUNDS - LOCK_PRICE } else { shop::FUNDS };
        assert_eq!(shop.balance(payer.address()).await, expected, "payer {i}");
    }
    assert_eq!(shop.balance(shop.pay_to).await, LOCK_PRICE, "exactly one settlement reached the payee");
}

#[tokio::test]
async fn the_official_python_client_pays_for_a_lock_and_is_not_charged_when_it_is_held() {
    if !shop::python_client_installed() {
        return;
    }
    let Some(shop) = Shop::open(31337, &[]).await else { return };
    let payer = shop.payer().await;
    let args =
        ["--method", "POST", "--json", r#"{"key":"h1dr4:x-mention:1","owner":"py","ttl_seconds":900}"#];
    let first = shop.run_client_on("python3", "pay_x402.py", &payer, "/x402/locks/acquire", &args);
    assert_eq!(first["status"], 200, "{first}");
    assert_eq!(first["body"]["acquired"], true, "{first}");
    assert!(first["body"]["release_token"].as_str().unwrap().starts_with("vbx_"));
    assert_eq!(first["payment_response"]["success"], true, "{first}");
    assert_eq!(shop.balance(payer.address()).await, shop::FUNDS - LOCK_PRICE);

    // Again: the key is held; the answer is acquired=false, and nothing more is charged.
    let second = shop.run_client_on("python3", "pay_x402.py", &payer, "/x402/locks/acquire", &args);
    assert_eq!(second["status"], 200, "{second}");
    assert_eq!(second["body"]["acquired"], false, "{second}");
    assert!(second["payment_response"].is_null(), "{second}");
    assert_eq!(shop.balance(payer.address()).await, shop::FUNDS - LOCK_PRICE);
    assert_eq!(shop.balance(shop.pay_to).await, LOCK_PRICE);
}

#[tokio::test]
async fn renewals_are_paid_only_when_they_renew() {
    let Some(shop) = Shop::open(31337, &[]).await else { return };
    let payer = shop.payer().await;
    let acquire = shop.url("/x402/locks/acquire");
    let body = json!({ "key": "queue:item-9", "ttl_seconds": 30 });
    let challenge = lock_challenge(&acquire, &body).await;
    let (status, _, lock) = paid_post(&acquire, &body, &challenge, &payer).await;
    assert_eq!(status, 200, "{lock}");
    let token = lock["release_token"].as_str().unwrap();

    let renew = shop.url("/x402/locks/renew");
    let right = json!({ "key": "queue:item-9", "release_token": token, "ttl_seconds": 60 });
    let challenge = lock_challenge(&renew, &right).await;
    // A token that holds nothing on the key is refused before any payment is asked for, and a
    // payment sent with it anyway is never taken: no payment is recorded, nothing moves.
    let wrong = json!({ "key": "queue:item-9", "release_token": "vbx_wrong", "ttl_seconds": 60 });
    let unpaid = reqwest::Client::new().post(&renew).json(&wrong).send().await.unwrap();
    assert_eq!(unpaid.status(), 409);
    assert_eq!(unpaid.json::<Value>().await.unwrap()["error"]["code"], "lock_not_held");
    let (status, headers, error) = paid_post(&renew, &wrong, &challenge, &payer).await;
    assert_eq!((status, error["error"]["code"].as_str()), (409, Some("lock_not_held")));
    assert!(headers.get("vendbox-payment-id").is_none(), "a refused renewal records no payment: {headers:?}");
    assert_eq!(shop.balance(payer.address()).await, shop::FUNDS - LOCK_PRICE, "a refused renewal is free");

    let (status, headers, renewed) = paid_post(&renew, &right, &challenge, &payer).await;
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(renewed["lock"]["ttl_seconds"], 60);
    assert_eq!(payment_state(&shop, &headers).await["state"], "settled");
    assert_eq!(shop.balance(payer.address()).await, shop::FUNDS - 2 * LOCK_PRICE);
    assert_eq!(shop.balance(shop.pay_to).await, 2 * LOCK_PRICE);
}

/// Polls `probe` every 20 ms until it yields something; fails naming `what` after `limit`.
async fn wait_until<T>(what: &str, limit: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(started.elapsed() < limit, "waited {limit:?} for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_whose_settlement_fails_is_given_back() {
    let Some(shop) = Shop::open(31337, &[("VENDBOX_FAULTS", "pause-before-settle=3")]).await else { return };
    let payer = shop.payer().await;
    let url = shop.url("/x402/locks/acquire");
    let read_url = shop.url("/x402/locks/wallet:pay-invoice-77");
    let body = json!({ "key": "wallet:pay-invoice-77" });
    let challenge = lock_challenge(&url, &body).await;
    let (name, value) = challenge.pay(&payer, shop::now()).unwrap();
    let request = reqwest::Client::new().post(&url).header(name, value.clone()).json(&body).send();
    let pending = tokio::spawn(request);
    // vendbox verifies the payment, grants the key, and waits to settle.
    let granted = wait_until(
        "vendbox to grant the key and pause before settling",
        Duration::from_secs(20),
        async || {
            let read: Value = reqwest::get(&read_url).await.unwrap().json().await.unwrap();
            (read["held"] == true).then_some(read)
        },
    )
    .await;
    assert_eq!(granted["lock"]["fencing_token"], 1, "{granted}");
    // Meanwhile the payer's authorization is used on chain by someone else, so that vendbox's
    // own settlement of it fails.
    shop.spend_elsewhere(&challenge, &value).await;
    assert!(!pending.is_finished(), "vendbox answered before the authorization was spent elsewhere");

    let response = pending.await.unwrap().unwrap();
    assert_eq!(response.status(), 402);
    let headers = response.headers().clone();
    let refusal: Value = response.json().await.unwrap();
    // The token refuses the transfer of a used authorization, and vendbox says so. A payment
    // refused before the work (the same code) has no payment id: this one was reserved, granted
    // and voided at settlement.
    assert_eq!(refusal["error"], "invalid_exact_evm_nonce_already_used", "{refusal}");
    assert!(headers.get(wire::PAYMENT_RESPONSE).is_none(), "no receipt for money that did not move");
    let payment = payment_state(&shop, &headers).await;
    assert_eq!(payment["state"], "voided", "{payment}");
    let reason = payment["void_reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("settlement failed: the settlement was refused"), "{payment}");

    // The unpaid grant was given back before the answer, not left to lapse in 900 s: the key
    // reads free, and the next buyer gets it under the next fencing token.
    let read: Value = reqwest::get(&read_url).await.unwrap().json().await.unwrap();
    assert_eq!(read["held"], false, "the unpaid grant was released at once: {read}");
    let next = shop.payer().await;
    let challenge = lock_challenge(&url, &body).await;
    let (status, headers, second) = paid_post(&url, &body, &challenge, &next).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(
        (second["acquired"].clone(), second["fencing_token"].clone()),
        (json!(true), json!(2)),
        "{second}"
    );
    assert_eq!(payment_state(&shop, &headers).await["state"], "settled");
    // The first payer paid once, to whoever spent the authorization; vendbox took nothing more.
    assert_eq!(shop.balance(payer.address()).await, shop::FUNDS - LOCK_PRICE);
    assert_eq!(shop.balance(next.address()).await, shop::FUNDS - LOCK_PRICE);
}
