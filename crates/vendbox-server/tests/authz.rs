//! The authorization table: every operation of the API × every kind of token a caller can
//! present, through the real router in process.
//!
//! The operations come from `/openapi.json`, which is the router's own list (`app::operations`
//! routes and documents each handler from one place), so a route added without a row here fails
//! `every_operation_has_exactly_one_row`. The kinds of token: none, a foreign one (another live
//! lease's root token, or another key's release token), the token of a lease or grant that has
//! ended (presented on that ended thing), and the read, extend, terminate and root tokens of the
//! thing the path names. Each row says what the operation needs; the expected answer for each
//! kind follows from it, and refusals are checked by status and exact code.
//!
//! The vendbox under test sells (a payee, no facilitator, so a purchase gets its 402) and makes
//! no boxes (a box's boxd does not answer): an operation that passes its token check answers
//! anything but a token refusal, and a paid one answers its 402.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use chrono::Utc;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use vendbox_box::fake::FakeBackend;
use vendbox_core::{Capability, Lease, LeaseId, LeaseState, LockKey, SecretToken};
use vendbox_pay::EvmAddress;
use vendbox_pay::Network;
use vendbox_pay::exact::Acceptance;
use vendbox_pay::fake::NoFacilitator;
use vendbox_pay::x402::X402Exact;
use vendbox_server::boxes::Boxes;
use vendbox_server::{AppParts, AppState, Config, Limits, router};
use vendbox_service::Payments;
use vendbox_store::{SqliteStore, Store};

/// A valid OpenSSH public key line.
const SSH_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test";

/// What a caller presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    None,
    Foreign,
    Ended,
    Read,
    Extend,
    Terminate,
    Root,
}

const KINDS: [Kind; 7] =
    [Kind::None, Kind::Foreign, Kind::Ended, Kind::Read, Kind::Extend, Kind::Terminate, Kind::Root];

impl Kind {
    /// The capability of the path's own lease this kind presents, if any.
    fn capability(self) -> Option<Capability> {
        match self {
            Kind::Read => Some(Capability::Read),
            Kind::Extend => Some(Capability::Extend),
            Kind::Terminate => Some(Capability::Terminate),
            Kind::Root => Some(Capability::Root),
            Kind::None | Kind::Foreign | Kind::Ended => None,
        }
    }
}

/// Which lease family a path's id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// `/v1/boxes/{id}` and `/x402/sessions/{session_id}`.
    Box,
    /// VpsAgent's `/rentals/{rental_id}` and `/instance/{rental_id}`.
    Rental,
    /// The Storefront's `/api/machines/{machine_id}`.
    Machine,
}

/// How an operation reads the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// `Authorization: Bearer …`.
    Bearer,
    /// `?token=…` (VpsAgent).
    Query,
    /// `release_token` in the JSON body (H3RETIK locks).
    Body,
}

/// An answer expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Past the token check: anything but a token refusal (401, 403, or a 404 for the thing).
    Passes,
    /// Past the token check, and then asked to pay.
    Pays,
    /// Refused with this status and code.
    Refused(u16, &'static str),
}

/// What an operation asks of its caller.
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// Anyone; whatever token is sent, the same answer with this status.
    Open(u16),
    /// A purchase: whatever token is sent, the 402 with payment terms.
    Purchase,
    /// A token of the lease the path names carrying `wanted` (a root token carries everything).
    /// `ended` is the answer on a lease that has ended, with its own root token; `paid`, when
    /// passing leads to a 402.
    Lease { family: Family, wanted: Capability, via: Via, ended: Outcome, paid: bool },
    /// The release token of the grant on the key (path or body); `paid` when passing leads to a
    /// 402.
    Lock { via: Via, paid: bool },
}

/// Every operation, with what it asks. Keep one row per (method, path) of `/openapi.json`.
#[allow(clippy::too_many_lines)]
fn table() -> Vec<(&'static str, &'static str, Rule)> {
    use Capability::{Extend, Read, Root, Terminate};
    use Family::{Box, Machine, Rental};
    use Outcome::{Passes, Refused};
    let gone = Refused(410, "box_expired");
    let lease = |family, wanted, via, ended| Rule::Lease { family, wanted, via, ended, paid: false };
    vec![
        ("GET", "/healthz", Rule::Open(200)),
        ("GET", "/v1/offers", Rule::Open(200)),
        ("GET", "/v1/offers/{id}", Rule::Open(200)),
        ("POST", "/v1/quotes", Rule::Open(201)),
        ("GET", "/v1/quotes/{id}", Rule::Open(200)),
        ("GET", "/v1/payments/{id}", Rule::Open(404)),
        ("GET", "/catalog", Rule::Purchase),
        ("POST", "/rent", Rule::Purchase),
        ("GET", "/rentals/{rental_id}", Rule::Open(200)),
        (
            "POST",
            "/rentals/{rental_id}/renew",
            Rule::Lease {
                family: Rental,
                wanted: Extend,
                via: Via::Query,
                ended: Refused(409, "not_active"),
                paid: true,
            },
        ),
        ("GET", "/instance/{rental_id}", lease(Rental, Root, Via::Query, Passes)),
        ("GET", "/api/health", Rule::Open(200)),
        ("POST", "/api/machines", Rule::Purchase),
        ("POST", "/api/machine/mpp/orders/validate", Rule::Open(200)),
        ("POST", "/api/machine/mpp/orders", Rule::Purchase),
        ("GET", "/api/machine/mpp/orders/{order_id}", Rule::Open(404)),
        ("GET", "/api/machines/{machine_id}", lease(Machine, Read, Via::Bearer, Passes)),
        ("DELETE", "/api/machines/{machine_id}", lease(Machine, Terminate, Via::Bearer, Passes)),
        (
            "POST",
            "/api/machines/{machine_id}/extend",
            Rule::Lease {
                family: Machine,
                wanted: Extend,
                via: Via::Bearer,
                // The Storefront's document gives extend no 409: its dialect says 400.
                ended: Refused(400, "not_active"),
                paid: true,
            },
        ),
        ("POST", "/x402/locks/acquire", Rule::Purchase),
        ("POST", "/x402/locks/release", Rule::Lock { via: Via::Body, paid: false }),
        ("POST", "/x402/locks/renew", Rule::Lock { via: Via::Body, paid: true }),
        ("GET", "/x402/locks/{key}", Rule::Open(200)),
        ("GET", "/v1/locks/{key}", Rule::Open(200)),
        ("POST", "/v1/locks/{key}", Rule::Purchase),
        ("DELETE", "/v1/locks/{key}", Rule::Lock { via: Via::Bearer, paid: false }),
        ("POST", "/v1/locks/{key}/renew", Rule::Lock { via: Via::Bearer, paid: true }),
        ("POST", "/x402/sessions/micro", Rule::Purchase),
        ("POST", "/x402/sessions/probe", Rule::Purchase),
        ("POST", "/x402/sessions/ops", Rule::Purchase),
        ("POST", "/x402/sessions/deep", Rule::Purchase),
        ("POST", "/x402/sessions", Rule::Purchase),
        ("GET", "/x402/sessions/{session_id}", lease(Box, Read, Via::Bearer, Passes)),
        ("POST", "/v1/boxes", Rule::Purchase),
        ("GET", "/v1/boxes/{id}", lease(Box, Read, Via::Bearer, Passes)),
        ("DELETE", "/v1/boxes/{id}", lease(Box, Terminate, Via::Bearer, Passes)),
        ("POST", "/x402/sessions/{session_id}/exec", lease(Box, Root, Via::Bearer, gone)),
        ("POST", "/v1/boxes/{id}/exec", lease(Box, Root, Via::Bearer, gone)),
        ("POST", "/v1/boxes/{id}/exec/stream", lease(Box, Root, Via::Bearer, gone)),
        ("GET", "/v1/boxes/{id}/files", lease(Box, Root, Via::Bearer, gone)),
        ("PUT", "/v1/boxes/{id}/files", lease(Box, Root, Via::Bearer, gone)),
        ("GET", "/v1/boxes/{id}/dir", lease(Box, Root, Via::Bearer, gone)),
        (
            "POST",
            "/v1/boxes/{id}/extend",
            Rule::Lease {
                family: Box,
                wanted: Extend,
                via: Via::Bearer,
                ended: Refused(409, "not_active"),
                paid: true,
            },
        ),
        // x402Compute's management takes a wallet signature or an API key, never a lease's
        // token: whatever token is sent, 401 `auth_required` (tests/accounts_auth.rs and
        // tests/x402compute.rs check signatures and keys).
        ("POST", "/compute/api-keys", Rule::Open(401)),
        ("GET", "/compute/api-keys", Rule::Open(401)),
        ("DELETE", "/compute/api-keys/{id}", Rule::Open(401)),
        ("GET", "/compute/instances", Rule::Open(401)),
        ("GET", "/compute/instances/{id}", Rule::Open(401)),
        ("DELETE", "/compute/instances/{id}", Rule::Open(401)),
        ("POST", "/compute/instances/{id}/password", Rule::Open(401)),
        ("POST", "/compute/instances/{id}/extend", Rule::Open(401)),
        // x402Compute's discovery is open; a provision is paid by whoever pays (the payer owns it).
        ("GET", "/compute/plans", Rule::Open(200)),
        ("GET", "/compute/regions", Rule::Open(200)),
        ("GET", "/compute/os", Rule::Open(200)),
        ("POST", "/compute/provision", Rule::Purchase),
        // An account's credits, likewise: a wallet signature or an API key (tests/credits.rs).
        ("GET", "/v1/account", Rule::Open(401)),
        ("POST", "/v1/account/topup", Rule::Open(401)),
        ("GET", "/v1/account/ledger", Rule::Open(401)),
        ("GET", "/v1/account/payments", Rule::Open(401)),
        // SecretVM's agent API takes its own x-agent signature, never a lease's token: whatever
        // token is sent, 401 `bad_agent_header` (tests/secretvm.rs checks signatures).
        ("POST", "/api/agent/add-funds", Rule::Open(401)),
        ("GET", "/api/agent/balance", Rule::Open(401)),
        ("POST", "/api/vm/create", Rule::Open(401)),
        ("GET", "/api/agent/vm/{id}", Rule::Open(401)),
    ]
    .into_iter()
    // Ports in: a box's server, with the box's root token.
    .chain(["/v1/boxes/{id}/ports/{port}/", "/v1/boxes/{id}/ports/{port}/{*path}"].into_iter().flat_map(
        |path| {
            ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
                .map(|method| (method, path, lease(Box, Root, Via::Bearer, gone)))
        },
    ))
    .chain(e2b_table())
    .collect()
}

/// E2B's control plane takes an API key (`E2B_API_KEY`), never a lease's token: whatever token
/// is sent, E2B's 401 (tests/e2b.rs drives it with the stock SDKs).
fn e2b_table() -> Vec<(&'static str, &'static str, Rule)> {
    vec![
        ("POST", "/sandboxes", Rule::Open(401)),
        ("GET", "/sandboxes", Rule::Open(401)),
        ("POST", "/v2/sandboxes", Rule::Open(401)),
        ("GET", "/v2/sandboxes", Rule::Open(401)),
        ("GET", "/sandboxes/{id}", Rule::Open(401)),
        ("DELETE", "/sandboxes/{id}", Rule::Open(401)),
        ("POST", "/sandboxes/{id}/timeout", Rule::Open(401)),
        ("POST", "/sandboxes/{id}/connect", Rule::Open(401)),
        ("POST", "/v2/sandboxes/{id}/connect", Rule::Open(401)),
        ("POST", "/sandboxes/{id}/refreshes", Rule::Open(401)),
        ("POST", "/sandboxes/{id}/pause", Rule::Open(401)),
        ("POST", "/sandboxes/{id}/resume", Rule::Open(401)),
        ("POST", "/sandboxes/{id}/fork", Rule::Open(401)),
        ("POST", "/sandboxes/{id}/snapshots", Rule::Open(401)),
        ("PUT", "/sandboxes/{id}/network", Rule::Open(401)),
    ]
}

/// The answer `rule` asks for when `kind` is presented.
fn expected(rule: Rule, kind: Kind) -> Outcome {
    match rule {
        Rule::Open(_) => Outcome::Passes,
        Rule::Purchase => Outcome::Pays,
        Rule::Lease { family, wanted, ended, paid, .. } => match kind {
            Kind::None => Outcome::Refused(401, "missing_token"),
            Kind::Foreign => Outcome::Refused(401, "bad_token"),
            Kind::Ended => ended,
            _ => match kind.capability() {
                Some(c) if c.allows(wanted) && paid => Outcome::Pays,
                Some(c) if c.allows(wanted) => Outcome::Passes,
                // The Storefront tells a token of this machine without the capability (403)
                // from one that is not this machine's (401).
                _ if family == Family::Machine => Outcome::Refused(403, "wrong_token"),
                _ => Outcome::Refused(401, "bad_token"),
            },
        },
        Rule::Lock { via, paid } => match kind {
            Kind::None if via == Via::Body => Outcome::Refused(400, "missing_field"),
            Kind::None => Outcome::Refused(401, "missing_token"),
            Kind::Ended => Outcome::Refused(409, "lock_expired"),
            Kind::Root if paid => Outcome::Pays,
            Kind::Root => Outcome::Passes,
            // Another key's token, and a lease's tokens, hold nothing on this key.
            _ => Outcome::Refused(409, "lock_not_held"),
        },
    }
}

/// A lease of each family in the store, live and ended, each with a token of every capability.
#[derive(Debug, Clone)]
struct Leases {
    live: Lease,
    ended: Lease,
    /// Tokens of `live`, by capability.
    tokens: Vec<(Capability, String)>,
    /// The root token of `ended`.
    ended_root: String,
}

impl Leases {
    fn token(&self, capability: Capability) -> String {
        self.tokens.iter().find(|(c, _)| *c == capability).unwrap().1.clone()
    }
}

/// A held lock, another held lock, and a lapsed one.
#[derive(Debug, Clone)]
struct Locks {
    key: String,
    token: String,
    other_token: String,
    lapsed_key: String,
    lapsed_token: String,
}

struct Harness {
    router: Router,
    boxes: Leases,
    rentals: Leases,
    machines: Leases,
    locks: Locks,
    quote_id: String,
    _dir: tempfile::TempDir,
}

const ALL: [Capability; 4] = [Capability::Root, Capability::Read, Capability::Extend, Capability::Terminate];

async fn insert(store: &dyn Store, offer: &str, state: LeaseState) -> (Lease, Vec<(Capability, String)>) {
    let now = Utc::now();
    let id = LeaseId::new_random();
    let live = state == LeaseState::Active;
    let lease = Lease {
        id,
        offer_id: offer.parse().unwrap(),
        quote_id: None,
        payment_id: None,
        state,
        region: Some("auto".into()),
        image: Some("host".into()),
        box_id: Some(id.to_string()),
        created_at: now - chrono::Duration::hours(3),
        expires_at: Some(if live {
            now + chrono::Duration::hours(2)
        } else {
            now - chrono::Duration::hours(1)
        }),
        actions_remaining: Some(100),
        failure_reason: None,
    };
    let tokens: Vec<(Capability, SecretToken)> = ALL.iter().map(|c| (*c, SecretToken::generate())).collect();
    let hashes: Vec<_> = tokens.iter().map(|(c, t)| (*c, t.hash())).collect();
    store.insert_lease(&lease, &hashes).await.unwrap();
    (lease, tokens.into_iter().map(|(c, t)| (c, t.expose().to_owned())).collect())
}

async fn leases(store: &dyn Store, offer: &str) -> Leases {
    let (live, tokens) = insert(store, offer, LeaseState::Active).await;
    let (ended, ended_tokens) = insert(store, offer, LeaseState::Expired).await;
    let ended_root = ended_tokens.iter().find(|(c, _)| *c == Capability::Root).unwrap().1.clone();
    Leases { live, ended, tokens, ended_root }
}

async fn grant(store: &dyn Store, key: &str, ttl: Duration) -> String {
    let token = SecretToken::generate();
    store.acquire_lock(&LockKey::parse(key).unwrap(), Some("seed"), None, ttl, &token.hash()).await.unwrap();
    token.expose().to_owned()
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    // In memory: about 500 harnesses are made, and a file's fsyncs (migrations, grants) would
    // take most of the test's time.
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_url("sqlite::memory:").await.unwrap());
    let config = Config::load(None, []).unwrap();
    let acceptance = Acceptance::new(
        Network::new(84532),
        EvmAddress::repeat_byte(0xaa),
        "USDC",
        "2",
        EvmAddress::repeat_byte(0xbb),
        60,
    );
    let payments = Payments::new(
        vec![Arc::new(X402Exact::new(acceptance, Arc::new(NoFacilitator)))],
        store.clone(),
        "http://vendbox.test".into(),
    );
    let backend =
        Arc::new(FakeBackend::new(dir.path().join("sockets")).refusing("these tests make no boxes"));
    let boxes = leases(store.as_ref(), "h3retik-custom").await;
    let rentals = leases(store.as_ref(), "vpsagent-sandbox-1h").await;
    let machines = leases(store.as_ref(), "bare-linux-machine").await;
    let lapsed_key = "authz:lapsed".to_owned();
    let lapsed_token = grant(store.as_ref(), &lapsed_key, Duration::from_millis(1)).await;
    let locks = Locks {
        key: "authz:held".into(),
        token: grant(store.as_ref(), "authz:held", Duration::from_hours(1)).await,
        other_token: grant(store.as_ref(), "authz:other", Duration::from_hours(1)).await,
        lapsed_key,
        lapsed_token,
    };
    // The lapse is judged by the database's clock: wait until the store says so.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.get_lock(&LockKey::parse(&locks.lapsed_key).unwrap()).await.unwrap().is_some() {
        assert!(std::time::Instant::now() < deadline, "a 1 ms grant never lapsed");
        tokio::task::yield_now().await;
    }
    let vms = vendbox_service::Vms::new(
        store.clone(),
        Err("no VMs in these tests".into()),
        vendbox_service::LiveCatalog::default(),
        vendbox_service::VmSettings::default(),
    );
    let state = AppState::from(AppParts {
        catalog: config.catalog().into(),
        boxes: Ok(Arc::new(Boxes::new(backend, store.clone()))),
        store,
        metrics: Arc::default(),
        payments: Arc::new(payments),
        lock_waiters: Arc::default(),
        ssh: None,
        vms,
    });
    let router = router(state, Limits::default());
    let (status, quote) =
        send(&router, Method::POST, "/v1/quotes", None, Some(json!({ "offer_id": "h3retik-micro" }))).await;
    assert_eq!(status, StatusCode::CREATED, "{quote}");
    let quote_id = quote["id"].as_str().unwrap().to_owned();
    Harness { router, boxes, rentals, machines, locks, quote_id, _dir: dir }
}

async fn send(
    router: &Router,
    method: Method,
    uri: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = bearer {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = match body {
        Some(body) => request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap())),
        None => request.body(Body::empty()),
    };
    let response = router.clone().oneshot(request.unwrap()).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// The error code of an answer: vendbox's `{"error":{"code"}}`, the Storefront's
/// `{"error":"…","code"}`, or the x402 body's `error`.
fn code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .or_else(|| body["code"].as_str())
        .or_else(|| body["error"].as_str())
        .unwrap_or("")
}

/// The lease family a path names, if it names one.
fn family_of(template: &str) -> Option<Family> {
    if template.contains("{rental_id}") {
        Some(Family::Rental)
    } else if template.contains("{machine_id}") {
        Some(Family::Machine)
    } else if template.starts_with("/v1/boxes/{id}") || template.contains("{session_id}") {
        Some(Family::Box)
    } else {
        None
    }
}

/// The id a Storefront path gives a machine.
fn machine_id(lease: &Lease) -> String {
    let hex: String = lease.id.to_string().chars().filter(char::is_ascii_hexdigit).take(16).collect();
    format!("machine_{hex}")
}

/// The request `kind` makes of the operation: its path filled in, the token placed where the
/// operation reads it, and a body it accepts.
fn request(h: &Harness, template: &str, rule: Rule, kind: Kind) -> (String, Option<String>, Option<Value>) {
    let leases = family_of(template).map(|f| match f {
        Family::Box => &h.boxes,
        Family::Rental => &h.rentals,
        Family::Machine => &h.machines,
    });
    // The lease the path names: the ended one for `Ended`, the live one otherwise.
    let lease = leases.map(|l| if kind == Kind::Ended { &l.ended } else { &l.live });
    let lease_token = |l: &Leases| match kind {
        Kind::None => None,
        // The root token of another live lease, of another family.
        Kind::Foreign => Some(if l.live.id == h.boxes.live.id {
            h.rentals.token(Capability::Root)
        } else {
            h.boxes.token(Capability::Root)
        }),
        Kind::Ended => Some(l.ended_root.clone()),
        other => Some(l.token(other.capability().unwrap())),
    };
    let lock_token = match kind {
        Kind::None => None,
        Kind::Foreign => Some(h.locks.other_token.clone()),
        Kind::Ended => Some(h.locks.lapsed_token.clone()),
        Kind::Root => Some(h.locks.token.clone()),
        other => Some(h.boxes.token(other.capability().unwrap())),
    };
    let (token, via) = match rule {
        Rule::Lease { via, .. } => (lease_token(leases.unwrap()), via),
        Rule::Lock { via, .. } => (lock_token, via),
        // Whatever it is, it is sent; it must change nothing.
        Rule::Open(_) | Rule::Purchase => (lease_token(&h.boxes), Via::Bearer),
    };
    let key = if kind == Kind::Ended { &h.locks.lapsed_key } else { &h.locks.key };
    let mut path = template
        .replace(
            "{id}",
            &match template {
                t if t.starts_with("/v1/offers/") => "h3retik-micro".to_owned(),
                t if t.starts_with("/v1/quotes/") => h.quote_id.clone(),
                t if t.starts_with("/v1/payments/")
                    || t.starts_with("/compute/")
                    || t.starts_with("/api/agent/") =>
                {
                    uuid_like()
                }
                t if t.contains("/sandboxes/") => uuid_like(),
                _ => lease.map(|l| l.id.to_string()).unwrap_or_default(),
            },
        )
        .replace("{rental_id}", &lease.map(|l| l.id.to_string()).unwrap_or_default())
        .replace("{session_id}", &lease.map(|l| l.id.to_string()).unwrap_or_default())
        .replace("{machine_id}", &lease.map(machine_id).unwrap_or_default())
        .replace("{key}", key)
        .replace("{port}", "8000")
        .replace("{*path}", "index.html");
    if template.ends_with("/files") || template.ends_with("/dir") {
        path.push_str("?path=/root/authz.txt");
    }
    if via == Via::Query
        && let Some(token) = &token
    {
        path = format!("{path}?token={token}");
    }
    let lock_body = |extra: Value| {
        let mut body = json!({ "key": key });
        if let Some(token) = &token {
            body["release_token"] = json!(token);
        }
        if let Value::Object(extra) = extra {
            body.as_object_mut().unwrap().extend(extra);
        }
        body
    };
    let body = match template {
        "/v1/quotes" => Some(json!({ "offer_id": "h3retik-micro" })),
        "/rent" => Some(json!({ "sku": "sandbox_1h" })),
        "/api/machines" | "/api/machine/mpp/orders/validate" | "/api/machine/mpp/orders" => Some(json!({
            "request_id": "6f1c7a43-5d7e-4f43-9d55-3a9b3c1f0e21",
            "product_id": "bare-linux-machine",
            "duration_minutes": 60,
            "ssh_public_key": SSH_KEY,
        })),
        "/api/machines/{machine_id}/extend" => Some(json!({ "additional_minutes": 60 })),
        "/x402/locks/acquire" => Some(json!({ "key": "authz:new", "ttl_seconds": 60 })),
        "/x402/locks/release" => Some(lock_body(json!({}))),
        "/x402/locks/renew" => Some(lock_body(json!({ "ttl_seconds": 60 }))),
        "/v1/locks/{key}" | "/v1/locks/{key}/renew" => Some(json!({ "ttl_seconds": 60 })),
        "/x402/sessions" => Some(json!({ "minutes": 30, "actions": 10 })),
        "/v1/boxes" => Some(json!({ "offer": "h3retik-custom", "minutes": 30, "actions": 10 })),
        "/compute/provision" => Some(json!({ "plan": "vc2-1c-1gb", "prepaid_hours": 1 })),
        "/compute/instances/{id}/extend" => Some(json!({ "extend_hours": 1 })),
        "/v1/boxes/{id}/extend" => Some(json!({ "minutes": 30 })),
        t if t.ends_with("/exec") || t.ends_with("/exec/stream") => Some(json!({ "command": "true" })),
        t if t.ends_with("/files") => Some(json!("text")),
        _ => None,
    };
    let bearer = if via == Via::Bearer { token } else { None };
    (path, bearer, body)
}

/// A fresh id of the shape payments use.
fn uuid_like() -> String {
    LeaseId::new_random().to_string()
}

/// The (method, path) of every operation `/openapi.json` lists.
async fn documented(router: &Router) -> BTreeSet<(String, String)> {
    let (status, doc) = send(router, Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "put", "post", "delete", "patch", "head", "options", "trace"]
                .contains(&method.as_str())
            {
                operations.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    operations
}

#[tokio::test]
async fn every_operation_has_exactly_one_row() {
    let h = harness().await;
    let documented = documented(&h.router).await;
    let rows: Vec<(String, String)> =
        table().iter().map(|(m, p, _)| ((*m).to_owned(), (*p).to_owned())).collect();
    let listed: BTreeSet<_> = rows.iter().cloned().collect();
    assert_eq!(listed.len(), rows.len(), "an operation has two rows");
    let missing: Vec<_> = documented.difference(&listed).collect();
    assert!(missing.is_empty(), "operations with no row in the authorization table: {missing:?}");
    let stale: Vec<_> = listed.difference(&documented).collect();
    assert!(stale.is_empty(), "rows for operations the API no longer has: {stale:?}");
}

#[tokio::test]
async fn every_operation_answers_every_kind_of_token_as_its_row_says() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for (method, template, rule) in table() {
        let mut open_status = None;
        for kind in KINDS {
            // A fresh vendbox for each call: passing calls change state (a release, an end).
            let h = harness().await;
            let (path, bearer, body) = request(&h, template, rule, kind);
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let (status, answer) = send(&h.router, method.clone(), &path, bearer.as_deref(), body).await;
            let code = code(&answer);
            let want = expected(rule, kind);
            let token_refusal = matches!(status.as_u16(), 401 | 403 | 404)
                || ["missing_token", "bad_token", "wrong_token", "lock_not_held", "lock_expired"]
                    .contains(&code);
            let ok = match want {
                Outcome::Passes => !token_refusal,
                Outcome::Pays => status == StatusCode::PAYMENT_REQUIRED,
                // A HEAD answer has no body: its status alone says which refusal it is.
                Outcome::Refused(s, _) if method == Method::HEAD => status.as_u16() == s,
                Outcome::Refused(s, c) => status.as_u16() == s && code == c,
            };
            if let Rule::Open(expected_status) = rule {
                // The same answer whatever is presented.
                let seen = *open_status.get_or_insert(status.as_u16());
                if seen != status.as_u16() || status.as_u16() != expected_status {
                    failures.push(format!("{method} {path} ({kind:?}): {status} {code}, expected {expected_status} for every token"));
                }
                checked += 1;
                continue;
            }
            if !ok {
                failures
                    .push(format!("{method} {template} ({kind:?}): {status} `{code}`, expected {want:?}"));
            }
            checked += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} calls broke the table:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(checked, table().len() * KINDS.len());
}
