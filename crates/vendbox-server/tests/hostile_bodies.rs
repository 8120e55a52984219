//! Property tests of the HTTP API against hostile request bodies, through the real router in
//! process (no socket), as `tests/api.rs` builds it: arbitrary bytes, arbitrary JSON and objects
//! with each route's own field names holding arbitrary values, sent to every route that takes a
//! body (quotes, H3RETIK and native locks, boxes, sessions, the Storefront's machines, VpsAgent's
//! rentals), with and without `Content-Type: application/json`. Two vendboxes answer: one that
//! sells nothing (no payee, no boxes), and one that sells (a payee but no facilitator, and a
//! backend whose boxes never answer) with a box, a rental, a machine and a lock already in its
//! store, so that bodies reach the checks behind the tokens. Any bytes in the ids of those
//! routes' paths, and any query string where one is read, get the same properties.
//!
//! The properties: never a 5xx, except the 503s the API documents for what this vendbox cannot
//! do (`payments_unconfigured`, `boxes_unavailable`, and `box_unavailable` for a box that does
//! not answer); every refusal is JSON, `{"error":{"code":…,"message":…}}` (on the Storefront's
//! paths its own `{"error":"…","code":…}`), or for a 402 the
//! x402 body (`{"x402Version":1,"error":"<code>","accepts":[…]}`) with its `PAYMENT-REQUIRED`
//! header.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use chrono::Utc;
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestError, TestRunner};
use serde_json::{Map, Value, json};
use tower::ServiceExt;
use vendbox_box::fake::FakeBackend;
use vendbox_core::{Capability, Lease, LeaseId, LeaseState, LockKey, SecretToken};
use vendbox_pay::EvmAddress;
use vendbox_pay::exact::Acceptance;
use vendbox_pay::fake::NoFacilitator;
use vendbox_pay::x402::X402Exact;
use vendbox_pay::{Network, wire};
use vendbox_server::boxes::Boxes;
use vendbox_server::{AppParts, AppState, Config, Limits, router};
use vendbox_service::Payments;
use vendbox_store::{SqliteStore, Store};

/// Cases per route, or `PROPTEST_CASES` when set (for a longer run by hand).
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(64);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// A valid OpenSSH public key line.
const SSH_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test";

/// Which vendbox answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// No payee and no boxes: paid routes answer 503 `payments_unconfigured`, box routes 503
    /// `boxes_unavailable`.
    Bare,
    /// A payee (so a request without payment gets its 402), no facilitator, and a backend whose
    /// boxes never answer.
    Selling,
}

impl Setup {
    /// The 503 codes this vendbox may answer with whatever the body: what it is not set up to do.
    fn documented_503s(self) -> &'static [&'static str] {
        match self {
            Setup::Bare => &["payments_unconfigured", "boxes_unavailable"],
            // The seeded boxes do not exist, so commands and files meet a box that does not
            // answer; the backend refuses to make boxes.
            Setup::Selling => &["box_unavailable", "boxes_unavailable"],
        }
    }
}

/// What is already in the store: leases with their tokens, and a held lock.
#[derive(Debug, Clone)]
struct Seeded {
    box_id: String,
    root_token: String,
    rental_id: String,
    rental_token: String,
    machine_id: String,
    read_token: String,
    extend_token: String,
    lock_key: String,
    lock_token: String,
}

struct Harness {
    rt: tokio::runtime::Runtime,
    router: Router,
    seeded: Seeded,
    setup: Setup,
    _dir: tempfile::TempDir,
}

async fn lease(
    store: &dyn Store,
    offer: &str,
    capabilities: &[Capability],
    actions: Option<u32>,
) -> (Lease, Vec<String>) {
    let now = Utc::now();
    let id = LeaseId::new_random();
    let lease = Lease {
        id,
        offer_id: offer.parse().unwrap(),
        quote_id: None,
        payment_id: None,
        state: LeaseState::Active,
        region: Some("auto".into()),
        image: Some("host".into()),
        box_id: Some(id.to_string()),
        created_at: now,
        expires_at: Some(now + chrono::Duration::hours(2)),
        actions_remaining: actions,
        failure_reason: None,
    };
    let tokens: Vec<SecretToken> = capabilities.iter().map(|_| SecretToken::generate()).collect();
    let hashes: Vec<_> = capabilities.iter().zip(&tokens).map(|(c, t)| (*c, t.hash())).collect();
    store.insert_lease(&lease, &hashes).await.unwrap();
    (lease, tokens.iter().map(|t| t.expose().to_owned()).collect())
}

async fn seed(store: &dyn Store) -> Seeded {
    let (boxed, root) = lease(store, "h3retik-custom", &[Capability::Root], Some(1000)).await;
    let (rental, rental_root) = lease(store, "vpsagent-sandbox-1h", &[Capability::Root], None).await;
    let (machine, machine_tokens) = lease(
        store,
        "bare-linux-machine",
        &[Capability::Read, Capability::Extend, Capability::Terminate],
        None,
    )
    .await;
    let hex: String = machine.id.to_string().chars().filter(char::is_ascii_hexdigit).take(16).collect();
    let lock_key = "seeded:lock:1".to_owned();
    let lock_token = SecretToken::generate();
    store
        .acquire_lock(
            &LockKey::parse(&lock_key).unwrap(),
            Some("seed"),
            None,
            Duration::from_hours(1),
            &lock_token.hash(),
        )
        .await
        .unwrap();
    Seeded {
        box_id: boxed.id.to_string(),
        root_token: root[0].clone(),
        rental_id: rental.id.to_string(),
        rental_token: rental_root[0].clone(),
        machine_id: format!("machine_{hex}"),
        read_token: machine_tokens[0].clone(),
        extend_token: machine_tokens[1].clone(),
        lock_key,
        lock_token: lock_token.expose().to_owned(),
    }
}

fn harness(setup: Setup) -> Harness {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(rt.block_on(SqliteStore::open_file(&dir.path().join("vendbox.db"))).unwrap());
    let config = Config::load(None, []).unwrap();
    let public_url = "http://vendbox.test".to_owned();
    let (gate, boxes) = match setup {
        Setup::Bare => {
            (Payments::unconfigured(store.clone(), public_url), Err("no boxes in these tests".into()))
        }
        Setup::Selling => {
            let acceptance = Acceptance::new(
                Network::new(84532),
                EvmAddress::repeat_byte(0xaa),
                "USDC",
                "2",
                EvmAddress::repeat_byte(0xbb),
                60,
            );
            let x402 = X402Exact::new(acceptance, Arc::new(NoFacilitator));
            let gate = Payments::new(vec![Arc::new(x402)], store.clone(), public_url);
            let backend =
                Arc::new(FakeBackend::new(dir.path().join("sockets")).refusing("these tests make no boxes"));
            (gate, Ok(Arc::new(Boxes::new(backend, store.clone()))))
        }
    };
    let seeded = rt.block_on(seed(store.as_ref()));
    let vms = vendbox_service::Vms::new(
        store.clone(),
        Err("no VMs in these tests".into()),
        vendbox_service::LiveCatalog::default(),
        vendbox_service::VmSettings::default(),
    );
    let state = AppState::from(AppParts {
        catalog: config.catalog().into(),
        store,
        metrics: Arc::default(),
        payments: Arc::new(gate),
        lock_waiters: Arc::default(),
        boxes,
        ssh: None,
        vms,
    });
    Harness { rt, router: router(state, Limits::default()), seeded, setup, _dir: dir }
}

/// How a route reads its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    /// `ApiJson`: JSON, and only with a JSON content type.
    Json,
    /// Optional JSON, read whatever the content type (empty means every field absent).
    Optional,
    /// Bytes (a file upload).
    Raw,
}

/// One route that takes a body, with its fields and the values worth trying in them.
struct Route {
    method: Method,
    /// Paths to send to: the seeded thing's first, then others.
    paths: Vec<String>,
    /// Bearer tokens to present: the right one first, then a weaker one, nonsense, none.
    bearers: Vec<Option<String>>,
    body: BodyKind,
    fields: Vec<Field>,
}

fn strings(items: &[&str]) -> Vec<Value> {
    items.iter().map(|s| json!(s)).collect()
}

/// Values of one field: ones the route accepts, and ones at or past its edges.
#[derive(Debug, Clone)]
struct Field {
    name: &'static str,
    valid: Vec<Value>,
    edge: Vec<Value>,
}

fn field(name: &'static str, valid: Vec<Value>, edge: Vec<Value>) -> Field {
    Field { name, valid, edge }
}

#[allow(clippy::too_many_lines, reason = "a table of routes and their values")]
fn route(name: &str, s: &Seeded) -> Route {
    let offer = |name| {
        field(
            name,
            strings(&["h3retik-micro", "h3retik-custom", "vpsagent-sandbox-1h", "bare-linux-machine"]),
            strings(&[
                "h3retik-lock",
                "vpsagent-server-small-1mo",
                "gpu-h100-machine",
                "x402compute-vcg-a100-1c-2g-6gb",
                "secretvm-small",
                "no-such-offer",
                "NOT AN ID",
                "",
            ]),
        )
    };
    let minutes = |name| {
        field(
            name,
            vec![json!(15), json!(20), json!(90), json!(360)],
            vec![
                json!(0),
                json!(1),
                json!(14),
                json!(361),
                json!(u32::MAX),
                json!(-1),
                json!(1.5),
                json!("10"),
            ],
        )
    };
    let actions = field(
        "actions",
        vec![json!(1), json!(12), json!(300)],
        vec![json!(0), json!(301), json!(u32::MAX), json!(u64::MAX)],
    );
    let region = |name| {
        field(
            name,
            strings(&["auto", "us", "europe", "asia"]),
            strings(&["eu", "USA", "lax", "mars", "", "AUTO"]),
        )
    };
    let image = field("image", strings(&["host"]), strings(&["ubuntu-24.04", "debian-12", "nope", ""]));
    let key = field(
        "key",
        strings(&[&s.lock_key, "abc", "h1dr4:x-mention:2066895922949464487"]),
        vec![
            json!("ab"),
            json!("a/b/c"),
            json!(" spaced "),
            json!("ключ-🔑"),
            json!("k".repeat(256)),
            json!("k".repeat(257)),
        ],
    );
    let owner = field(
        "owner",
        vec![json!("agent"), json!("o".repeat(160))],
        vec![json!(""), json!("o".repeat(161)), json!("\u{202e}evil"), json!("a\nb")],
    );
    let ttl = field(
        "ttl_seconds",
        vec![json!(5), json!(900), json!(86400)],
        vec![json!(0), json!(4), json!(86401), json!(u32::MAX), json!(-5)],
    );
    let metadata = field(
        "metadata",
        vec![json!({}), json!({"job": 1}), json!({"deep": {"er": [1, 2, {"x": null}]}})],
        vec![json!({"big": "x".repeat(5000)}), json!([]), json!("text"), json!(null), json!(7)],
    );
    let token = field("release_token", strings(&[&s.lock_token]), strings(&["not-a-token", ""]));
    let ssh_key = field(
        "ssh_public_key",
        strings(&[SSH_KEY]),
        strings(&[
            "ssh-ed25519 AAAA",
            "ssh-rsa AAAAB3NzaC1yc2E=",
            "",
            "\n\n",
            &format!("{SSH_KEY}\n{SSH_KEY}"),
        ]),
    );
    let location =
        field("location", strings(&["auto", "us", "europe", "asia"]), strings(&["mars", "", "Auto"]));
    let exec_fields = vec![
        field("command", strings(&["true", "echo hi", "rm -rf /"]), strings(&["", "   ", "\0"])),
        field(
            "argv",
            vec![json!(["true"]), json!(["ls", "-l", "/"])],
            vec![json!([]), json!([""]), json!([1, 2])],
        ),
        field(
            "env",
            vec![json!({}), json!({"A": "b"})],
            vec![json!({"": ""}), json!({"PATH": "/x", "LD_PRELOAD": "/tmp/x.so"}), json!({"A": 1})],
        ),
        field("cwd", strings(&["/", "/root", "rel/dir"]), strings(&["", "../..", "\0"])),
        field(
            "timeout_seconds",
            vec![json!(1), json!(60), json!(1800)],
            vec![json!(0), json!(1801), json!(u64::MAX), json!(-1)],
        ),
    ];
    let box_bearers =
        vec![Some(s.root_token.clone()), Some(s.read_token.clone()), Some("nonsense".into()), None];
    let exec_paths = |prefix: &str, suffix: &str, id: &str| {
        vec![
            format!("{prefix}/{id}{suffix}"),
            format!("{prefix}/{}{suffix}", LeaseId::new_random()),
            format!("{prefix}/not-an-id{suffix}"),
        ]
    };
    let plain = |path: &str| vec![path.to_owned()];
    let none = vec![None];
    let post = |paths, bearers, body, fields| Route { method: Method::POST, paths, bearers, body, fields };
    match name {
        "quotes" => post(
            plain("/v1/quotes"),
            none,
            BodyKind::Json,
            vec![offer("offer_id"), minutes("minutes"), actions, region("region"), image],
        ),
        "rent" => post(
            plain("/rent"),
            none,
            BodyKind::Json,
            vec![
                field(
                    "sku",
                    strings(&["sandbox_1h", "sandbox_24h", "server_small_1mo", "server_large_12mo"]),
                    strings(&["nope", "", "SANDBOX_1H"]),
                ),
                region("region"),
            ],
        ),
        "rental_renew" => post(
            vec![
                format!("/rentals/{}/renew?token={}", s.rental_id, s.rental_token),
                format!("/rentals/{}/renew?token=wrong", s.rental_id),
                format!("/rentals/{}/renew", s.rental_id),
                format!("/rentals/{}/renew?token={}", LeaseId::new_random(), s.rental_token),
                "/rentals/nope/renew?token=x".to_owned(),
            ],
            none,
            BodyKind::Optional,
            vec![field(
                "periods",
                vec![json!(1), json!(12)],
                vec![json!(0), json!(13), json!(u32::MAX), json!(-1), json!(u64::MAX)],
            )],
        ),
        "machines" => post(
            plain("/api/machines"),
            none,
            BodyKind::Json,
            vec![
                field(
                    "request_id",
                    strings(&[
                        "6f1c7a43-5d7e-4f43-9d55-3a9b3c1f0e21",
                        "0d5e6f4a-1b2c-4d3e-8f90-123456789abc",
                    ]),
                    strings(&[
                        "6F1C7A43-5D7E-4F43-9D55-3A9B3C1F0E21",
                        "6f1c7a435d7e4f439d553a9b3c1f0e21",
                        "{6f1c7a43-5d7e-4f43-9d55-3a9b3c1f0e21}",
                        "nope",
                    ]),
                ),
                field(
                    "product_id",
                    strings(&["bare-linux-machine", "gpu-h100-machine"]),
                    strings(&["nope", ""]),
                ),
                minutes("duration_minutes"),
                ssh_key,
            ],
        ),
        "machine_extend" => post(
            vec![
                format!("/api/machines/{}/extend", s.machine_id),
                "/api/machines/machine_0000000000000000/extend".into(),
                "/api/machines/x/extend".into(),
            ],
            vec![Some(s.extend_token.clone()), Some(s.read_token.clone()), Some("nonsense".into()), None],
            BodyKind::Json,
            vec![minutes("additional_minutes")],
        ),
        "locks_acquire" => {
            post(plain("/x402/locks/acquire"), none, BodyKind::Json, vec![key, owner, ttl, metadata])
        }
        "locks_release" => post(plain("/x402/locks/release"), none, BodyKind::Json, vec![key, token]),
        "locks_renew" => post(plain("/x402/locks/renew"), none, BodyKind::Json, vec![key, token, ttl]),
        "native_lock_acquire" => post(
            vec![format!("/v1/locks/{}", s.lock_key), "/v1/locks/another-key".into(), "/v1/locks/ab".into()],
            none,
            BodyKind::Optional,
            vec![owner, ttl, metadata],
        ),
        "native_lock_renew" => post(
            vec![format!("/v1/locks/{}/renew", s.lock_key), "/v1/locks/another-key/renew".into()],
            vec![Some(s.lock_token.clone()), Some("nonsense".into()), None],
            BodyKind::Optional,
            vec![ttl],
        ),
        "boxes" => post(
            plain("/v1/boxes"),
            none,
            BodyKind::Json,
            vec![offer("offer"), minutes("minutes"), actions, region("region"), image, ssh_key],
        ),
        "box_exec" => {
            post(exec_paths("/v1/boxes", "/exec", &s.box_id), box_bearers, BodyKind::Json, exec_fields)
        }
        "box_exec_stream" => {
            post(exec_paths("/v1/boxes", "/exec/stream", &s.box_id), box_bearers, BodyKind::Json, exec_fields)
        }
        "box_files" => Route {
            method: Method::PUT,
            paths: vec![
                format!("/v1/boxes/{}/files?path=/root/x", s.box_id),
                format!("/v1/boxes/{}/files?path=x&mode=755", s.box_id),
                format!("/v1/boxes/{}/files?path=x&mode=99999", s.box_id),
                format!("/v1/boxes/{}/files?path=", s.box_id),
                format!("/v1/boxes/{}/files?path=x", LeaseId::new_random()),
            ],
            bearers: box_bearers,
            body: BodyKind::Raw,
            fields: Vec::new(),
        },
        "sessions_custom" => {
            post(plain("/x402/sessions"), none, BodyKind::Json, vec![minutes("minutes"), actions, location])
        }
        "sessions_fixed" => post(
            ["micro", "probe", "ops", "deep"].iter().map(|p| format!("/x402/sessions/{p}")).collect(),
            none,
            BodyKind::Optional,
            vec![location],
        ),
        "session_exec" => {
            post(exec_paths("/x402/sessions", "/exec", &s.box_id), box_bearers, BodyKind::Json, exec_fields)
        }
        other => panic!("no route {other}"),
    }
}

/// Field names of every route, and a few others, for arbitrary objects.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "offer_id", "offer", "minutes", "actions", "region", "image", "sku", "periods", "request_id",
            "product_id", "duration_minutes", "ssh_public_key", "additional_minutes", "key", "owner",
            "ttl_seconds", "metadata", "release_token", "command", "argv", "env", "cwd",
            "timeout_seconds", "location", "__proto__", "",
        ])
        .prop_map(str::to_owned),
        1 => ".{0,10}",
    ]
}

/// Arbitrary JSON with boundary numbers and odd strings.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(vec![
            json!(0),
            json!(-1),
            json!(u32::MAX),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1e308)
        ]),
        ".{0,24}".prop_map(Value::String),
        "[\\x00-\\x1f]{0,4}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// An object of `route`'s fields, each present with chance `present`, holding a valid value,
/// an edge value or an arbitrary one in the proportions `weights`, and sometimes (chance `extra`)
/// one field too many.
fn shaped(route: &Route, present: f64, weights: [u32; 3], extra: f64) -> BoxedStrategy<Vec<u8>> {
    let fields: Vec<BoxedStrategy<Option<(String, Value)>>> = route
        .fields
        .iter()
        .map(|f| {
            let name = f.name;
            let value = proptest::strategy::Union::new_weighted(vec![
                (weights[0], prop::sample::select(f.valid.clone()).boxed()),
                (weights[1], prop::sample::select(f.edge.clone()).boxed()),
                (weights[2], json_value().boxed()),
            ]);
            prop::option::weighted(present, value.prop_map(move |v| (name.to_owned(), v))).boxed()
        })
        .collect();
    (fields, prop::option::weighted(extra, (key(), json_value())))
        .prop_map(|(fields, extra)| {
            let mut object: Map<String, Value> = fields.into_iter().flatten().collect();
            if let Some((k, v)) = extra {
                object.insert(k, v);
            }
            serde_json::to_vec(&Value::Object(object)).unwrap()
        })
        .boxed()
}

/// A body for `route`: bytes, arbitrary JSON, broken JSON, nothing, or objects of the route's
/// own fields, plausible (to reach the checks behind the parser) or wild.
fn body(route: &Route) -> BoxedStrategy<Vec<u8>> {
    let mut choices: Vec<(u32, BoxedStrategy<Vec<u8>>)> = vec![
        (1, prop::collection::vec(any::<u8>(), 0..256).boxed()),
        (2, json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()).boxed()),
        (1, Just(Vec::new()).boxed()),
        (1, "[ \\t\\r\\n]{1,4}".prop_map(String::into_bytes).boxed()),
        (
            1,
            prop::sample::select(vec![
                "{",
                "[",
                "{\"a\":",
                "nul",
                "\"\\ud800\"",
                "{\"a\":1}{}",
                "1e999",
                "\u{feff}{}",
                "{\"a\":1,\"a\":2}",
            ])
            .prop_map(|s| s.as_bytes().to_vec())
            .boxed(),
        ),
    ];
    if !route.fields.is_empty() {
        // Plausible: what a careful client sends, with an edge here and there.
        choices.push((8, shaped(route, 0.85, [90, 8, 2], 0.02)));
        // Wild: the route's fields with anything in them.
        choices.push((4, shaped(route, 0.7, [2, 2, 1], 0.2)));
    }
    proptest::strategy::Union::new_weighted(choices).boxed()
}

/// Content types to send: mostly JSON's, sometimes others or none.
fn content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        8 => Just(Some("application/json".to_owned())),
        1 => prop::sample::select(vec![
            "application/json; charset=utf-8",
            "APPLICATION/JSON",
            "application/problem+json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "",
            "application/octet-stream",
        ])
        .prop_map(|s| Some(s.to_owned())),
        1 => Just(None),
    ]
}

/// The answer to one request: status, the `PAYMENT-REQUIRED` header's presence, content type and body.
struct Answer {
    status: StatusCode,
    payment_required: bool,
    content_type: String,
    body: Vec<u8>,
}

impl Answer {
    /// `402 payment_required`, `400 wrong_type`: the status and the code, for counting.
    fn summary(&self) -> String {
        let json: Value = serde_json::from_slice(&self.body).unwrap_or_default();
        let code = json["error"]["code"].as_str().or_else(|| json["error"].as_str()).unwrap_or("-");
        format!("{} {code}", self.status.as_u16())
    }
}

async fn send(router: &Router, request: Request<Body>) -> Answer {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let payment_required = response.headers().contains_key(wire::PAYMENT_REQUIRED);
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    // A stream (Server-Sent Events) that never ends must not hang the test.
    let body = match tokio::time::timeout(Duration::from_secs(5), response.into_body().collect()).await {
        Ok(collected) => collected.map(|c| c.to_bytes().to_vec()).unwrap_or_default(),
        Err(_) => b"<still streaming>".to_vec(),
    };
    Answer { status, payment_required, content_type, body }
}

/// The properties every answer has.
fn check(setup: Setup, answer: &Answer) -> Result<(), TestCaseError> {
    let status = answer.status;
    let text = String::from_utf8_lossy(&answer.body);
    if status.is_success() {
        if answer.content_type.starts_with("application/json") {
            prop_assert!(
                serde_json::from_slice::<Value>(&answer.body).is_ok(),
                "{status} with bad JSON: {text}"
            );
        }
        return Ok(());
    }
    let json: Value = serde_json::from_slice(&answer.body)
        .map_err(|e| TestCaseError::fail(format!("{status} is not JSON ({e}): {text}")))?;
    if status == StatusCode::PAYMENT_REQUIRED {
        // The x402 v1 body: the reason is a code in `error`, and the ways to pay in `accepts`.
        prop_assert_eq!(&json["x402Version"], &json!(1), "402 without x402Version: {}", text);
        prop_assert!(json["error"].as_str().is_some_and(|c| !c.is_empty()), "402 without a code: {}", text);
        prop_assert!(
            json["accepts"].as_array().is_some_and(|a| !a.is_empty()),
            "402 offers nothing: {}",
            text
        );
        prop_assert!(answer.payment_required, "402 without PAYMENT-REQUIRED: {}", text);
        return Ok(());
    }
    // vendbox's shape, `{"error":{"code","message"}}`, or the Storefront's on its paths,
    // `{"error":"<message>","code"}` (`tests/seeds.rs` pins which path speaks which).
    let (code, message) = match &json["error"] {
        Value::String(message) => (json["code"].as_str().unwrap_or_default(), message.as_str()),
        error => (error["code"].as_str().unwrap_or_default(), error["message"].as_str().unwrap_or_default()),
    };
    prop_assert!(!code.is_empty(), "{} without an error code: {}", status, text);
    prop_assert!(!message.is_empty(), "{} without an error message: {}", status, text);
    prop_assert!(
        !status.is_server_error()
            || (status == StatusCode::SERVICE_UNAVAILABLE && setup.documented_503s().contains(&code)),
        "{status} {code}: {text}"
    );
    Ok(())
}

/// Sends hostile bodies to the route `name` of a fresh `setup` vendbox.
/// Runs `strategy`'s cases against a fresh `setup` vendbox: `request` makes each case's request
/// (and says what it was, for a failure), and every answer must pass [`check`].
fn run_cases<S: Strategy>(
    setup: Setup,
    label: &str,
    strategy: impl FnOnce(&Seeded) -> S,
    request: impl Fn(&S::Value) -> (Request<Body>, String),
) {
    let h = harness(setup);
    let strategy = strategy(&h.seeded);
    let mut runner = TestRunner::new(config());
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::<String, u32>::new());
    let outcome = runner.run(&strategy, |case| {
        let (request, what) = request(&case);
        let answer = h.rt.block_on(send(&h.router, request));
        *seen.lock().unwrap().entry(answer.summary()).or_default() += 1;
        check(h.setup, &answer).map_err(|e| TestCaseError::fail(format!("{what}\n{e}")))
    });
    // What was answered, for `--no-capture`: shows which checks the cases reached.
    eprintln!("{setup:?} {label}: {:?}", seen.lock().unwrap());
    match outcome {
        Ok(()) => {}
        Err(TestError::Fail(why, _)) => panic!("{setup:?} {label}: {why}"),
        Err(e) => panic!("{setup:?} {label}: {e}"),
    }
}

/// Sends hostile bodies to the route `name`.
fn hostile_bodies(setup: Setup, name: &str) {
    let table = std::cell::OnceCell::new();
    run_cases(
        setup,
        name,
        |seeded| {
            let route = table.get_or_init(|| route(name, seeded));
            (
                body(route),
                content_type(),
                // The first path and bearer are the right ones: most requests get past them.
                prop_oneof![2 => Just(route.paths[0].clone()), 1 => prop::sample::select(route.paths.clone())],
                prop_oneof![2 => Just(route.bearers[0].clone()), 1 => prop::sample::select(route.bearers.clone())],
            )
        },
        |(body, content_type, path, bearer)| {
            let route = table.get().expect("made with the strategy");
            let mut request = Request::builder().method(route.method.clone()).uri(path);
            let content_type = match route.body {
                BodyKind::Raw => content_type.as_ref().map(|_| "application/octet-stream".to_owned()),
                _ => content_type.clone(),
            };
            if let Some(content_type) = &content_type {
                request = request.header(header::CONTENT_TYPE, content_type);
            }
            if let Some(token) = bearer {
                request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let mut what = format!(
                "{} {path} (content-type {content_type:?}, bearer {:?})\nbody: ",
                route.method,
                bearer.is_some()
            );
            let _ = write!(what, "{}", String::from_utf8_lossy(body));
            (request.body(Body::from(body.clone())).unwrap(), what)
        },
    );
}

/// `bytes` percent-encoded, except the unreserved characters.
fn percent_encode(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, &b| {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
        out
    })
}

/// Text for a path segment or a query value: arbitrary bytes (percent-encoded, so any byte, valid
/// UTF-8 or not, arrives), or broken escapes sent as they are.
fn hostile_component() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..24).prop_map(|b| percent_encode(&b)),
        2 => ".{0,12}".prop_map(|s| percent_encode(s.as_bytes())),
        1 => prop::sample::select(vec![
            "%", "%G1", "%FF", "%C0%AF", "%ED%A0%80", "%00", "%2F", "%2e%2e", "..", ".", "%25", "%20",
        ])
        .prop_map(str::to_owned),
    ]
}

/// Routes that take a body and an id in their path, as `(method, before, after)`.
const PATH_ROUTES: [(&str, &str, &str); 8] = [
    ("POST", "/rentals/", "/renew?token=t"),
    ("POST", "/api/machines/", "/extend"),
    ("POST", "/v1/locks/", ""),
    ("POST", "/v1/locks/", "/renew"),
    ("POST", "/v1/boxes/", "/exec"),
    ("POST", "/v1/boxes/", "/exec/stream"),
    ("POST", "/x402/sessions/", "/exec"),
    ("PUT", "/v1/boxes/", "/files?path=x"),
];

/// Any bytes in the id of a route's path (the body is a plausible one).
fn hostile_path_segments(setup: Setup) {
    run_cases(
        setup,
        "path segments",
        |_| (prop::sample::select(PATH_ROUTES.to_vec()), hostile_component()),
        |((method, before, after), segment)| {
            let uri = format!("{before}{segment}{after}");
            let request = Request::builder()
                .method(*method)
                .uri(&uri)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::AUTHORIZATION, "Bearer nonsense")
                .body(Body::from(r#"{"command":"true"}"#))
                .unwrap();
            (request, format!("{method} {uri}"))
        },
    );
}

/// Any query string on the routes that read one (a rental's token, a file's path and mode).
fn hostile_query_strings(setup: Setup) {
    run_cases(
        setup,
        "query strings",
        |seeded| {
            let key = prop_oneof![
                3 => prop::sample::select(vec!["token", "path", "mode"]).prop_map(str::to_owned),
                1 => hostile_component(),
            ];
            let pairs =
                prop::collection::vec((key, prop::option::of(hostile_component())), 0..4).prop_map(|pairs| {
                    pairs
                        .into_iter()
                        .map(|(k, v)| match v {
                            Some(v) => format!("{k}={v}"),
                            None => k,
                        })
                        .collect::<Vec<_>>()
                        .join("&")
                });
            let paths = vec![
                ("POST", format!("/rentals/{}/renew", seeded.rental_id)),
                ("PUT", format!("/v1/boxes/{}/files", seeded.box_id)),
            ];
            (prop::sample::select(paths), pairs, Just(seeded.root_token.clone()))
        },
        |((method, path), query, token)| {
            let uri = format!("{path}?{query}");
            let request = Request::builder()
                .method(*method)
                .uri(&uri)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Body::from("{}"))
                .unwrap();
            (request, format!("{method} {uri}"))
        },
    );
}

#[test]
fn bare_path_segments() {
    hostile_path_segments(Setup::Bare);
}

#[test]
fn selling_path_segments() {
    hostile_path_segments(Setup::Selling);
}

#[test]
fn bare_query_strings() {
    hostile_query_strings(Setup::Bare);
}

#[test]
fn selling_query_strings() {
    hostile_query_strings(Setup::Selling);
}

macro_rules! hostile_routes {
    ($($test:ident: $setup:ident $route:literal),* $(,)?) => {$(
        #[test]
        fn $test() {
            hostile_bodies(Setup::$setup, $route);
        }
    )*};
}

hostile_routes! {
    bare_quotes: Bare "quotes",
    bare_rent: Bare "rent",
    bare_rental_renew: Bare "rental_renew",
    bare_machines: Bare "machines",
    bare_machine_extend: Bare "machine_extend",
    bare_locks_acquire: Bare "locks_acquire",
    bare_locks_release: Bare "locks_release",
    bare_locks_renew: Bare "locks_renew",
    bare_native_lock_acquire: Bare "native_lock_acquire",
    bare_native_lock_renew: Bare "native_lock_renew",
    bare_boxes: Bare "boxes",
    bare_box_exec: Bare "box_exec",
    bare_box_exec_stream: Bare "box_exec_stream",
    bare_box_files: Bare "box_files",
    bare_sessions_custom: Bare "sessions_custom",
    bare_sessions_fixed: Bare "sessions_fixed",
    bare_session_exec: Bare "session_exec",
    selling_quotes: Selling "quotes",
    selling_rent: Selling "rent",
    selling_rental_renew: Selling "rental_renew",
    selling_machines: Selling "machines",
    selling_machine_extend: Selling "machine_extend",
    selling_locks_acquire: Selling "locks_acquire",
    selling_locks_release: Selling "locks_release",
    selling_locks_renew: Selling "locks_renew",
    selling_native_lock_acquire: Selling "native_lock_acquire",
    selling_native_lock_renew: Selling "native_lock_renew",
    selling_boxes: Selling "boxes",
    selling_box_exec: Selling "box_exec",
    selling_box_exec_stream: Selling "box_exec_stream",
    selling_box_files: Selling "box_files",
    selling_sessions_custom: Selling "sessions_custom",
    selling_sessions_fixed: Selling "sessions_fixed",
    selling_session_exec: Selling "session_exec",
}

/// Sends each request to a fresh `setup` vendbox and checks that every answer is a coded 4xx,
/// fails naming every one that is not.
fn assert_coded(setup: Setup, requests: impl FnOnce(&Seeded) -> Vec<Request<Body>>) {
    let h = harness(setup);
    let mut wrong = Vec::new();
    for request in requests(&h.seeded) {
        let what = format!("{} {}", request.method(), request.uri());
        let answer = h.rt.block_on(send(&h.router, request));
        let json: Value = serde_json::from_slice(&answer.body).unwrap_or_default();
        // vendbox's shape, or the Storefront's on its paths.
        let code = json["error"]["code"].as_str().or_else(|| json["code"].as_str()).unwrap_or_default();
        if !answer.status.is_client_error() || code.is_empty() {
            wrong.push(format!("{what}: {} {}", answer.status, String::from_utf8_lossy(&answer.body)));
        }
    }
    assert!(wrong.is_empty(), "not coded 4xx refusals:\n{}", wrong.join("\n"));
}

/// Found by `bare_path_segments` (minimal input `POST /rentals/%FF/renew?token=t`): a path id
/// that is not UTF-8 once decoded gets axum's plain-text `400 Invalid URL: Invalid UTF-8 in
/// `rental_id``, not a coded JSON error. Every `Path` extractor answers so, GET and DELETE too.
#[test]
fn regression_a_path_id_that_is_not_utf8_gets_a_coded_400() {
    assert_coded(Setup::Selling, |_| {
        [
            ("POST", "/rentals/%FF/renew?token=t"),
            ("POST", "/v1/locks/%FF"),
            ("POST", "/v1/boxes/%80/exec"),
            ("GET", "/v1/offers/%FF"),
            ("GET", "/x402/locks/%C0%AF"),
            ("DELETE", "/api/machines/%FF"),
        ]
        .into_iter()
        .map(|(method, uri)| {
            Request::builder()
                .method(method)
                .uri(uri)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(r#"{"command":"true"}"#))
                .unwrap()
        })
        .collect()
    });
}

/// Found by `bare_query_strings` (minimal input `PUT /v1/boxes/{id}/files?`): a query string
/// that does not deserialise gets axum's plain-text `400 Failed to deserialize query string: …`,
/// not a coded JSON error (`GET /v1/offers` already turns its own into `invalid_query`).
#[test]
fn regression_a_bad_query_string_gets_a_coded_400() {
    assert_coded(Setup::Selling, |s| {
        let bearer = format!("Bearer {}", s.root_token);
        vec![
            Request::put(format!("/v1/boxes/{}/files?", s.box_id))
                .header(header::AUTHORIZATION, &bearer)
                .body(Body::from("x"))
                .unwrap(),
            Request::get(format!("/v1/boxes/{}/files?path=a&path=b", s.box_id))
                .header(header::AUTHORIZATION, &bearer)
                .body(Body::empty())
                .unwrap(),
            Request::post(format!("/rentals/{}/renew?token=a&token=b", s.rental_id))
                .body(Body::empty())
                .unwrap(),
            Request::get(format!("/instance/{}?token=a&token=b", s.rental_id)).body(Body::empty()).unwrap(),
        ]
    });
}
