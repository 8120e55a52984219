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
use vendbox_pay::alloy::signers::local::PrivateKeySigner;
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
    chrono::DateTime::parse_from_rfc3339(value.as_str().unwrap()).unwrap().timestamp_millis()
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

    /// Sends `request`; the status and body, or `None` when no answer came (or a 5xx, whose
    /// effect is unknown).
    async fn send(request: reqwest::RequestBuilder) -> Option<(u16, Value)> {
        let response = request.send().await.ok()?;
        let status = response.status().as_u16();
        let body = response.json().await.ok()?;
        (status < 500).then_some((status, body))
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
        let answer = Self::send(request).await;
        let (outcome, granted) = match answer {
            Some((200 | 201, body)) if body["acquired"] == true => {
                let lock = &body["lock"];
                let fencing = body["fencing_token"].as_u64().unwrap();
                assert_eq!(lock["fencing_token"], fencing);
                assert_eq!(lock["owner"], json!(owner));
                let token = body["release_token"].as_str().unwrap().to_owned();
                let outcome = Outcome::Granted {
                    fencing,
                    acquired_at: ms(&lock["acquired_at"]),
                    expires_at: ms(&lock["expires_at"]),
                };
                (outcome, Some((fencing, token)))
            }
            Some((200, body)) => {
                assert_eq!(body["acquired"], false, "{body}");
                assert!(body.get("release_token").is_none(), "a holder's token is never shown: {body}");
                (Outcome::Held { fencing: body["lock"]["fencing_token"].as_u64().unwrap() }, None)
            }
            Some((status, body)) => panic!("acquire answered {status}: {body}"),
            None => (Outcome::Unknown, None),
        };
        self.record(key, Op::Acquire, None, invoked, outcome);
        granted
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
        let outcome = match Self::send(request).await {
            Some((200, body)) => {
                let lock = &body["lock"];
                assert_eq!(lock["ttl_seconds"], ttl);
                Outcome::Renewed {
                    fencing: lock["fencing_token"].as_u64().unwrap(),
                    renewed_at: ms(&lock["renewed_at"]),
                    expires_at: ms(&lock["expires_at"]),
                }
            }
            Some((409, body)) => {
                Outcome::Refused { code: body["error"]["code"].as_str().unwrap().to_owned() }
            }
            Some((status, body)) => panic!("renew answered {status}: {body}"),
            None => Outcome::Unknown,
        };
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
        let outcome = match Self::send(request).await {
            Some((200, body)) => Outcome::Released {
                fencing: body["fencing_token"].as_u64().unwrap(),
                released_at: ms(&body["released_at"]),
                already: body["already_released"].as_bool().unwrap(),
            },
            Some((409, body)) => {
                Outcome::Refused { code: body["error"]["code"].as_str().unwrap().to_owned() }
            }
            Some((status, body)) => panic!("release answered {status}: {body}"),
            None => Outcome::Unknown,
        };
        let released = matches!(outcome, Outcome::Released { .. });
        self.record(key, Op::Release, Some(grant.0), invoked, outcome);
        released
    }

    async fn read(&mut self, key: &str) {
        let base = self.base();
        let path = if self.native() { "v1/locks" } else { "x402/locks" };
        let invoked = self.start.elapsed();
        let outcome = match Self::send(self.http.get(format!("{base}/{path}/{key}"))).await {
            Some((200, body)) => {
                assert!(body.to_string().find("vbx_").is_none(), "a read never shows a token: {body}");
                let held = (body["held"] == true).then(|| {
                    (body["lock"]["fencing_token"].as_u64().unwrap(), ms(&body["lock"]["expires_at"]))
                });
                Outcome::Read { held }
            }
            Some((status, body)) => panic!("read answered {status}: {body}"),
            None => Outcome::Unknown,
        };
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

fn assert_history_holds(history: &[Event]) {
    match lockcheck::check(history) {
        Ok(summary) => {
            eprintln!("history: {}", lockcheck::describe(&summary));
            // Typical runs: 30-36 grants, 27-33 handovers, 9-12 stale operations; the floors
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
// The checker can see what it looks for.

fn grant(client: usize, fencing: u64, at: u64, acquired_at: i64, expires_at: i64) -> Event {
    Event {
        client,
        key: "k".into(),
        op: Op::Acquire,
        grant: None,
        invoked: Duration::from_millis(at),
        completed: Duration::from_millis(at + 5),
        outcome: Outcome::Granted { fencing, acquired_at, expires_at },
    }
}

fn later(client: usize, op: Op, fencing: u64, at: u64, outcome: Outcome) -> Event {
    Event {
        client,
        key: "k".into(),
        op,
        grant: (op != Op::Read).then_some(fencing),
        invoked: Duration::from_millis(at),
        completed: Duration::from_millis(at + 5),
        outcome,
    }
}

#[test]
fn the_checker_accepts_a_clean_handover_and_rejects_each_kind_of_violation() {
    let clean = vec![
        grant(0, 1, 0, 1000, 6000),
        later(0, Op::Renew, 1, 100, Outcome::Renewed { fencing: 1, renewed_at: 1100, expires_at: 6100 }),
        later(1, Op::Acquire, 0, 200, Outcome::Held { fencing: 1 }),
        later(2, Op::Read, 1, 250, Outcome::Read { held: Some((1, 6100)) }),
        later(0, Op::Release, 1, 300, Outcome::Released { fencing: 1, released_at: 1300, already: false }),
        grant(1, 2, 400, 1400, 6400),
        later(0, Op::Release, 1, 500, Outcome::Refused { code: "lock_not_held".into() }),
    ];
    assert!(lockcheck::check(&clean).is_ok(), "{:?}", lockcheck::check(&clean));

    let broken = |mut events: Vec<Event>, what: &str| {
        let found = lockcheck::check(&events).expect_err(what);
        events.clear();
        found.join("\n")
    };
    // Overlap: the second grant starts before the first was released.
    let mut overlap = clean.clone();
    overlap[5] = grant(1, 2, 400, 1200, 6200);
    assert!(broken(overlap, "overlap").contains("overlap"));
    // A grant that lapsed is followed too early.
    let mut early = clean[..4].to_vec();
    early.push(grant(1, 2, 400, 6000, 11_000));
    assert!(broken(early, "early").contains("overlap"));
    // Fencing tokens that go backwards in real time, or repeat.
    let mut backwards = clean.clone();
    backwards[5] = grant(1, 0, 400, 1400, 6400);
    assert!(broken(backwards, "backwards").contains("higher token"));
    let mut twice = clean.clone();
    twice[5] = grant(1, 1, 400, 1400, 6400);
    assert!(broken(twice, "repeat").contains("granted twice"));
    // A stale release that succeeded.
    let mut stale = clean.clone();
    stale[6] =
        later(0, Op::Release, 1, 500, Outcome::Released { fencing: 1, released_at: 1500, already: false });
    assert!(broken(stale, "stale release").contains("stale token"));
    // A renewal after expiry.
    let mut late = clean[..1].to_vec();
    late.push(later(
        0,
        Op::Renew,
        1,
        100,
        Outcome::Renewed { fencing: 1, renewed_at: 6500, expires_at: 11_500 },
    ));
    assert!(broken(late, "late renewal").contains("outside its life"));
    // A read showing an expiry no one set (a stale renewal that changed something).
    let mut changed = clean.clone();
    changed[3] = later(2, Op::Read, 1, 250, Outcome::Read { held: Some((1, 9999)) });
    assert!(broken(changed, "changed").contains("no acquisition or renewal"));
    // A read showing a released grant as held.
    let mut ghost = clean.clone();
    ghost.push(later(2, Op::Read, 1, 350, Outcome::Read { held: Some((1, 6100)) }));
    assert!(broken(ghost, "ghost").contains("after its release"));
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
    if let Err(violations) = lockcheck::check(&history) {
        panic!("the counter's lock history breaks the rules:\n{}", violations.join("\n"));
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
    payer: &PrivateKeySigner,
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
    let wrong = json!({ "key": "queue:item-9", "release_token": "vbx_wrong", "ttl_seconds": 60 });
    let challenge = lock_challenge(&renew, &wrong).await;
    let (status, headers, error) = paid_post(&renew, &wrong, &challenge, &payer).await;
    assert_eq!((status, error["error"]["code"].as_str()), (409, Some("lock_not_held")));
    assert_eq!(payment_state(&shop, &headers).await["state"], "voided");
    assert_eq!(shop.balance(payer.address()).await, shop::FUNDS - LOCK_PRICE, "a refused renewal is free");

    let right = json!({ "key": "queue:item-9", "release_token": token, "ttl_seconds": 60 });
    let (status, headers, renewed) = paid_post(&renew, &right, &challenge, &payer).await;
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(renewed["lock"]["ttl_seconds"], 60);
    assert_eq!(payment_state(&shop, &headers).await["state"], "settled");
    assert_eq!(shop.balance(payer.address()).await, shop::FUNDS - 2 * LOCK_PRICE);
    assert_eq!(shop.balance(shop.pay_to).await, 2 * LOCK_PRICE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_whose_settlement_fails_is_given_back() {
    let Some(shop) = Shop::open(31337, &[("VENDBOX_FAULTS", "pause-before-settle=3")]).await else { return };
    let payer = shop.payer().await;
    let url = shop.url("/x402/locks/acquire");
    let body = json!({ "key": "wallet:pay-invoice-77" });
    let challenge = lock_challenge(&url, &body).await;
    let (name, value) = challenge.pay(&payer, shop::now()).unwrap();
    let request = reqwest::Client::new().post(&url).header(name, value.clone()).json(&body).send();
    let pending = tokio::spawn(request);
    // While vendbox waits to settle, the payer's authorization is used on chain by someone else,
    // so vendbox's own settlement fails.
    tokio::time::sleep(Duration::from_secs(1)).await;
    shop.spend_elsewhere(&challenge, &value).await;

    let response = pending.await.unwrap().unwrap();
    assert_eq!(response.status(), 402);
    let refusal: Value = response.json().await.unwrap();
    assert!(refusal["error"].as_str().is_some(), "{refusal}");
    let read: Value =
        reqwest::get(shop.url("/x402/locks/wallet:pay-invoice-77")).await.unwrap().json().await.unwrap();
    assert_eq!(read["held"], false, "the unpaid grant was released at once: {read}");
}
