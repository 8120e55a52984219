//! Every limit of the HTTP API that needs no real box, from both sides: at the limit the request
//! is served, one past it is refused with the status and code the documentation gives. Request
//! bodies, the request timeout, the per-address cap, the payment header's size and its
//! authorization's validity window, lock TTLs, keys, owners and metadata, session, machine, box
//! and rental lengths, and the box capacity (`max_boxes`, `memory_mb`). The real router runs in
//! process, configured from a `vendbox.toml` with small limits, over SQLite in a temporary
//! directory, vendbox-box's in-memory `FakeBackend` and a facilitator that accepts every payment;
//! the per-address cap is checked through a loopback socket, since it counts client addresses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tower::ServiceExt;
use vendbox_box::Backend as _;
use vendbox_box::fake::FakeBackend;
use vendbox_core::{LeaseId, LeaseState};
use vendbox_pay::Wallet;
use vendbox_pay::client;
use vendbox_pay::exact::SETTLE_MARGIN_SECS;
use vendbox_pay::fake::AcceptingFacilitator;
use vendbox_pay::wire::{self, MAX_HEADER_BYTES, PaymentPayloadV2, PaymentRequiredV2};
use vendbox_pay::x402::X402Exact;
use vendbox_server::boxes::Boxes;
use vendbox_server::metrics::Metrics;
use vendbox_server::{AppParts, AppState, Config, Limits, router};
use vendbox_store::{SqliteStore, Store};

/// Offers sold for nothing, so that "served" means made, acquired or extended; and a small box.
const FREE: &str = r#"
[[offers]]
id = "h3retik-lock"
price = { base = "0" }

[[offers]]
id = "h3retik-lock-renew"
price = { base = "0" }

[[offers]]
id = "h3retik-custom"
price = { per_minute = "0", per_action = "0" }

[[offers]]
id = "bare-linux-machine"
price = { base = "0", per_minute = "0" }

[[offers]]
id = "vpsagent-sandbox-1h"
price = { base = "0" }

[[offers]]
id = "test-box"
kind = "sandbox"
title = "A small box for tests"
resources = { vcpu = 1, memory_mb = 256, disk_gb = 1 }
duration = { rule = "range", min_minutes = 1, max_minutes = 60 }
actions = { rule = "unlimited" }
images = ["host"]
default_image = "host"
price = {}
"#;

/// Locks at their published price, for the payment tests.
const PAID_LOCKS: &str = "[[offers]]\nid = \"h3retik-lock\"\nprice = { base = \"0.0001\" }\n";

/// The H3RETIK acquisition route.
const ACQUIRE: &str = "/x402/locks/acquire";

/// A valid OpenSSH public key line.
const SSH_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test";

/// A vendbox configured from `FREE` and `toml`, as `vendbox serve` configures itself.
struct Shop {
    router: Router,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    backend: Arc<FakeBackend>,
    _dir: tempfile::TempDir,
}

/// How paid offers are paid for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Payments {
    /// No payee: only free offers are sold.
    None,
    /// A payee and a facilitator that accepts every payment.
    Accepted,
}

async fn shop(toml: &str) -> Shop {
    shop_with(toml, Payments::None).await
}

async fn shop_with(toml: &str, payments: Payments) -> Shop {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vendbox.toml");
    std::fs::write(&file, format!("{FREE}\n{toml}")).unwrap();
    let config = Config::load(Some(&file), []).unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open_file(&dir.path().join("vendbox.db")).await.unwrap());
    let public_url = "http://vendbox.test".to_owned();
    let gate = match payments {
        Payments::None => vendbox_service::Payments::unconfigured(store.clone(), public_url),
        Payments::Accepted => {
            let mut payments = config.payments.clone();
            payments.pay_to = Some("0x2222222222222222222222222222222222222222".into());
            let acceptance = payments.acceptance().unwrap().expect("a payee is set");
            let x402 = X402Exact::new(acceptance, Arc::new(AcceptingFacilitator));
            vendbox_service::Payments::new(vec![Arc::new(x402)], store.clone(), public_url)
        }
    };
    let backend = Arc::new(FakeBackend::new(dir.path().join("sockets")));
    let boxes = Boxes::new(backend.clone(), store.clone());
    let capacity = config.boxes.capacity(boxes.capacity());
    let metrics = Arc::new(Metrics::new());
    let vms = vendbox_service::Vms::new(
        store.clone(),
        Err("no VMs in these tests".into()),
        vendbox_service::LiveCatalog::default(),
        vendbox_service::VmSettings::default(),
    );
    let state = AppState::from(AppParts {
        catalog: config.catalog().into(),
        store: store.clone(),
        metrics: metrics.clone(),
        payments: Arc::new(gate),
        lock_waiters: Arc::default(),
        boxes: Ok(Arc::new(boxes.with_capacity(capacity))),
        ssh: None,
        vms,
    });
    // As `Server::new` reads them.
    let limits = Limits {
        request_timeout: config.server.request_timeout(),
        max_body_bytes: config.server.max_body_bytes,
        max_file_bytes: config.boxes.max_file_bytes,
        max_requests_per_peer: config.server.max_requests_per_peer,
        auth_window: std::time::Duration::from_secs(config.server.auth_window_secs),
    };
    Shop { router: router(state, limits), store, metrics, backend, _dir: dir }
}

/// An answer: status, headers, and the body as JSON (or as a JSON string when it is not JSON).
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    /// The error of a refusal: `{"error":{"code","message","field"}}`, or on the Storefront's
    /// routes its seed's dialect, `{"error":"<message>","code","field"}`.
    fn error(&self) -> &Value {
        if self.body["error"].is_object() { &self.body["error"] } else { &self.body }
    }

    /// The error code of a refusal.
    fn code(&self) -> Option<&str> {
        self.error()["code"].as_str()
    }

    /// The field a refusal blames.
    fn field(&self) -> Option<&str> {
        self.error()["field"].as_str()
    }

    /// Asserts a coded refusal: this status, this code and, when given, this field.
    fn refused(&self, status: StatusCode, code: &str, field: Option<&str>, what: &str) {
        assert_eq!(self.status, status, "{what}: {}", self.body);
        assert_eq!(self.code(), Some(code), "{what}: {}", self.body);
        if field.is_some() {
            assert_eq!(self.field(), field, "{what}: {}", self.body);
        }
    }

    /// Asserts a success with this status.
    fn served(&self, status: StatusCode, what: &str) -> &Value {
        assert_eq!(self.status, status, "{what}: {}", self.body);
        &self.body
    }
}

impl Shop {
    async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Answer { status, headers, body }
    }

    async fn post(&self, path: &str, bearer: Option<&str>, body: &Value) -> Answer {
        self.send(post_raw(path, bearer, body.to_string().into_bytes())).await
    }
}

fn post_raw(path: &str, bearer: Option<&str>, body: Vec<u8>) -> Request<Body> {
    let mut request = Request::post(path).header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = bearer {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    request.body(Body::from(body)).unwrap()
}

/// `{"offer_id":"bare-linux-machine","minutes":90}` followed by spaces up to `size` bytes.
fn quote_of_size(size: usize) -> Vec<u8> {
    let mut body = br#"{"offer_id":"bare-linux-machine","minutes":90}"#.to_vec();
    assert!(body.len() <= size);
    body.resize(size, b' ');
    body
}

#[tokio::test]
async fn a_body_of_max_body_bytes_is_read_and_one_byte_more_is_payload_too_large() {
    let shop = shop("[server]\nmax_body_bytes = 4096\n").await;
    let at = shop.send(post_raw("/v1/quotes", None, quote_of_size(4096))).await;
    assert_eq!(at.served(StatusCode::CREATED, "4096 bytes")["offer_id"], "bare-linux-machine");
    let over = shop.send(post_raw("/v1/quotes", None, quote_of_size(4097))).await;
    over.refused(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", None, "4097 bytes");

    // The same without a length announced: the body is counted as it arrives.
    let streamed = |size: usize| {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            quote_of_size(size).chunks(1000).map(|c| Ok(c.to_vec())).collect();
        Request::post("/v1/quotes")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from_stream(futures_util::stream::iter(chunks)))
            .unwrap()
    };
    shop.send(streamed(4096)).await.served(StatusCode::CREATED, "4096 bytes streamed");
    let over = shop.send(streamed(4097)).await;
    over.refused(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", None, "4097 bytes streamed");
}

#[tokio::test]
async fn a_request_inside_the_timeout_is_answered_and_one_past_it_is_request_timeout() {
    // The setting is in whole seconds: a box made in half of it is sold, one that takes one and a
    // half times it is not waited for.
    let shop = shop("[server]\nrequest_timeout_secs = 2\n").await;
    let order = json!({ "offer": "test-box", "minutes": 10 });
    shop.backend.create_takes(Duration::from_secs(1));
    let started = Instant::now();
    let inside = shop.post("/v1/boxes", None, &order).await;
    assert_eq!(inside.served(StatusCode::CREATED, "a box made in 1 s")["state"], "active");
    assert!(started.elapsed() >= Duration::from_secs(1));

    shop.backend.create_takes(Duration::from_secs(3));
    let started = Instant::now();
    let past = shop.post("/v1/boxes", None, &order).await;
    past.refused(StatusCode::SERVICE_UNAVAILABLE, "request_timeout", None, "a box made in 3 s");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(2) && waited < Duration::from_secs(3), "answered after {waited:?}");
}

/// A request to the router behind `addr` from `from`, on a connection of its own: the status
/// and the body as JSON.
async fn http(addr: SocketAddr, from: [u8; 4], request: &str) -> (u16, Value) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body =
        text.split("\r\n\r\n").nth(1).and_then(|b| serde_json::from_str(b).ok()).unwrap_or(Value::Null);
    (status, body)
}

/// A health check on a connection of its own.
const HEALTH: &str = "GET /healthz HTTP/1.1\r\nhost: vendbox.test\r\nconnection: close\r\n\r\n";

/// A request from 127.0.0.1 that stays in flight until the stream is dropped: its body never
/// finishes arriving.
async fn held(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = "POST /v1/quotes HTTP/1.1\r\nhost: vendbox.test\r\ncontent-type: application/json\r\n\
                content-length: 100\r\n\r\n{\"offer_id\"";
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Waits until `n` requests are in flight.
async fn in_flight(shop: &Shop, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while shop.metrics.in_flight.get() != n {
        assert!(Instant::now() < deadline, "{} requests in flight, not {n}", shop.metrics.in_flight.get());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_address_at_its_cap_is_served_and_one_request_more_is_too_many_requests() {
    let shop = shop("[server]\nmax_requests_per_peer = 2\n").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = shop.router.clone().into_make_service_with_connect_info::<SocketAddr>();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // One request in flight: a second one from the same address is the cap's last place.
    let first = held(addr).await;
    in_flight(&shop, 1).await;
    let (status, body) = http(addr, [127, 0, 0, 1], HEALTH).await;
    assert_eq!((status, &body["status"]), (200, &json!("ok")), "{body}");

    // Two in flight: the address is at its cap, and a third is refused; another address is not.
    let second = held(addr).await;
    in_flight(&shop, 2).await;
    let (status, body) = http(addr, [127, 0, 0, 1], HEALTH).await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("too_many_requests")), "{body}");
    let (status, _) = http(addr, [127, 0, 0, 2], HEALTH).await;
    assert_eq!(status, 200);

    // A place is given back when its client goes away.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http(addr, [127, 0, 0, 1], HEALTH).await;
        if status == 200 {
            break;
        }
        assert_eq!(body["error"]["code"], "too_many_requests", "{body}");
        assert!(Instant::now() < deadline, "the place of a request whose client left was not given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(second);
    server.abort();
}

/// An envd request (E2B's in-sandbox API) from 127.0.0.1 for sandbox `id`, by the
/// `E2b-Sandbox-Id` header or by its `49983-{id}` host name, that stays in flight until the
/// stream is dropped: its body never finishes arriving.
async fn held_envd(addr: SocketAddr, id: &str, by_host: bool) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = if by_host {
        format!("POST /filesystem.Filesystem/Stat HTTP/1.1\r\nhost: 49983-{id}.{E2B_DOMAIN}\r\n")
    } else {
        format!("POST /filesystem.Filesystem/Stat HTTP/1.1\r\nhost: vendbox.test\r\ne2b-sandbox-id: {id}\r\n")
    };
    let rest = "content-type: application/json\r\ncontent-length: 100\r\n\r\n{\"path\"";
    stream.write_all(format!("{head}{rest}").as_bytes()).await.unwrap();
    stream
}

/// The ports domain of the envd test.
const E2B_DOMAIN: &str = "e2b.vendbox.test";

/// An envd `Stat` of sandbox `id` on a connection of its own, by the `E2b-Sandbox-Id` header or
/// by its `49983-{id}` host name.
fn envd_stat(id: &str, by_host: bool) -> String {
    let target = if by_host {
        format!("host: 49983-{id}.{E2B_DOMAIN}\r\n")
    } else {
        format!("host: vendbox.test\r\ne2b-sandbox-id: {id}\r\n")
    };
    format!(
        "POST /filesystem.Filesystem/Stat HTTP/1.1\r\n{target}content-type: application/json\r\n\
         content-length: 2\r\nconnection: close\r\n\r\n{{}}"
    )
}

#[tokio::test]
async fn envd_requests_are_under_the_same_per_address_cap_and_layers_as_the_api() {
    let shop = shop("[server]\nmax_requests_per_peer = 2\n").await;
    // Served as `Server::run` serves it: E2B's sandbox requests picked out in front.
    let app =
        vendbox_server::surfaces::native::ports::by_host_name(shop.router.clone(), Some(E2B_DOMAIN.into()));
    let app = vendbox_server::surfaces::e2b::front::in_front(app, Some(E2B_DOMAIN.into()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // Two envd requests in flight, one by header and one by host name: counted as in flight by
    // the metrics, and the address is at its cap.
    let first = held_envd(addr, "sbx-a", false).await;
    in_flight(&shop, 1).await;
    let second = held_envd(addr, "sbx-b", true).await;
    in_flight(&shop, 2).await;

    // A third envd request is refused as the API refuses, and so is any API request.
    let (status, body) = http(addr, [127, 0, 0, 1], &envd_stat("sbx-c", false)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("too_many_requests")), "envd: {body}");
    let (status, body) = http(addr, [127, 0, 0, 1], HEALTH).await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("too_many_requests")), "api: {body}");
    // One count for the whole API: the index, the Bazaar listing and the MCP endpoint (routers
    // of their own) refuse the address too.
    for path in ["/", "/discovery/resources", "/mcp"] {
        let request = format!("GET {path} HTTP/1.1\r\nhost: vendbox.test\r\nconnection: close\r\n\r\n");
        let (status, body) = http(addr, [127, 0, 0, 1], &request).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (429, Some("too_many_requests")),
            "{path}: {body}"
        );
    }

    // Another address reaches envd both ways, which answers in its own (Connect) terms, with a
    // request id.
    for by_host in [false, true] {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 2], 0))).unwrap();
        let mut stream = socket.connect(addr).await.unwrap();
        stream.write_all(envd_stat("sbx-c", by_host).as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        let raw = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        assert!(!raw.starts_with("http/1.1 429") && !raw.starts_with("http/1.1 2"), "{raw}");
        assert!(raw.contains("\r\nx-request-id: "), "envd's answer has no request id: {raw}");
        let body: Value = serde_json::from_str(raw.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert!(body["code"].is_string() && body.get("error").is_none(), "not envd's answer: {body}");
    }

    // Places are given back when envd's clients go away.
    drop(first);
    drop(second);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http(addr, [127, 0, 0, 1], &envd_stat("sbx-d", true)).await;
        if status != 429 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the places of envd requests whose clients left were not given back: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The metrics name envd's routes, with the RPC method kept out of the labels.
    let metrics = shop.metrics.render();
    assert!(metrics.contains("route=\"envd /filesystem.Filesystem/{method}\""), "{metrics}");
    assert!(!metrics.contains("/filesystem.Filesystem/Stat"), "{metrics}");
    server.abort();
}

/// `POST /x402/locks/acquire` of `key`, with a payment header when given.
fn acquire_paid(key: &str, payment: Option<(&str, &str)>) -> Request<Body> {
    let mut request = Request::post(ACQUIRE).header(header::CONTENT_TYPE, "application/json");
    if let Some((name, value)) = payment {
        request = request.header(name, value);
    }
    request.body(Body::from(json!({ "key": key }).to_string())).unwrap()
}

/// Unix seconds now.
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A real payment for acquiring `key` (x402 v2) with an authorization valid after `valid_after`
/// and before `valid_before` (Unix seconds): the header's JSON, before base64.
async fn payment(shop: &Shop, signer: &Wallet, key: &str, valid_after: u64, valid_before: u64) -> Vec<u8> {
    let asked = shop.send(acquire_paid(key, None)).await;
    assert_eq!(asked.status, StatusCode::PAYMENT_REQUIRED, "{}", asked.body);
    let required = asked.headers.get(wire::PAYMENT_REQUIRED).unwrap().to_str().unwrap();
    let challenge: PaymentRequiredV2 = wire::decode_header(required).unwrap();
    let r = challenge.accepts.iter().find(|r| r.scheme == "exact").unwrap();
    let mut authorization =
        client::authorize(signer.address(), &r.pay_to, &r.amount, valid_after, r.max_timeout_seconds)
            .unwrap();
    authorization.set_valid_after(valid_after);
    authorization.set_valid_before(valid_before);
    let payload = client::sign(signer, &authorization, &r.network, &r.asset, r.extra.as_ref()).unwrap();
    let body = PaymentPayloadV2 {
        x402_version: 2,
        resource: Some(challenge.resource.clone()),
        accepted: r.clone(),
        payload,
        extensions: None,
    };
    serde_json::to_vec(&body).unwrap()
}

/// A real payment for acquiring `key`, its JSON padded with spaces so that its base64 is exactly
/// the limit long.
async fn padded(shop: &Shop, signer: &Wallet, key: &str) -> String {
    let now = unix_now();
    let mut json = payment(shop, signer, key, now - 600, now + 300).await;
    json.resize(MAX_HEADER_BYTES / 4 * 3, b' ');
    let header = BASE64.encode(json);
    assert_eq!(header.len(), MAX_HEADER_BYTES);
    header
}

#[tokio::test]
async fn a_payment_header_at_the_size_limit_pays_and_one_byte_more_is_payment_header_too_large() {
    let shop = shop_with(PAID_LOCKS, Payments::Accepted).await;
    let signer = Wallet::random();
    let at_limit = padded(&shop, &signer, "paid:at-the-limit").await;
    let paid = shop.send(acquire_paid("paid:at-the-limit", Some((wire::PAYMENT_SIGNATURE, &at_limit)))).await;
    assert_eq!(paid.served(StatusCode::OK, "a header of 8192 bytes")["acquired"], true);
    assert!(paid.headers.contains_key("payment-response"), "no receipt");

    // The same kind of header with one byte more (a space, which decoding would trim).
    let over = format!("{} ", padded(&shop, &signer, "paid:over-the-limit").await);
    assert_eq!(over.len(), MAX_HEADER_BYTES + 1);
    let refused =
        shop.send(acquire_paid("paid:over-the-limit", Some((wire::PAYMENT_SIGNATURE, &over)))).await;
    refused.refused(StatusCode::BAD_REQUEST, "payment_header_too_large", None, "a header of 8193 bytes");
    let read = shop.send(Request::get("/x402/locks/paid:over-the-limit").body(Body::empty()).unwrap()).await;
    assert_eq!(read.served(StatusCode::OK, "read")["held"], false);
}

#[tokio::test]
async fn an_authorization_valid_from_now_and_past_the_settle_margin_pays_and_one_outside_is_refused() {
    let shop = shop_with(PAID_LOCKS, Payments::Accepted).await;
    let signer = Wallet::random();
    let margin = SETTLE_MARGIN_SECS;
    let pay = |key: &'static str, valid_after: u64, valid_before: u64| {
        let (shop, signer) = (&shop, &signer);
        async move {
            let json = payment(shop, signer, key, valid_after, valid_before).await;
            let header = BASE64.encode(json);
            shop.send(acquire_paid(key, Some((wire::PAYMENT_SIGNATURE, &header)))).await
        }
    };
    // Valid from this second, and until two seconds past the margin (a second of slack for the
    // clock to tick between signing and checking).
    let now = unix_now();
    let paid = pay("window:inside", now, now + margin + 2).await;
    assert_eq!(paid.served(StatusCode::OK, "valid from now to the margin and 2 s")["acquired"], true);
    // Valid only from the next seconds, or not past the margin: refused, and nothing is held.
    let now = unix_now();
    let early = pay("window:early", now + 2, now + 300).await;
    assert_eq!(early.status, StatusCode::PAYMENT_REQUIRED, "{}", early.body);
    assert_eq!(early.body["error"], "invalid_exact_evm_payload_authorization_valid_after", "{}", early.body);
    let now = unix_now();
    let late = pay("window:late", now - 600, now + margin).await;
    assert_eq!(late.status, StatusCode::PAYMENT_REQUIRED, "{}", late.body);
    assert_eq!(late.body["error"], "invalid_exact_evm_payload_authorization_valid_before", "{}", late.body);
    for key in ["window:early", "window:late"] {
        let read = shop.send(Request::get(format!("/x402/locks/{key}")).body(Body::empty()).unwrap()).await;
        assert_eq!(read.served(StatusCode::OK, key)["held"], false);
    }
}

#[tokio::test]
async fn lock_ttls_of_5_and_86400_seconds_are_granted_and_4_and_86401_are_out_of_range() {
    let shop = shop("").await;
    for (ttl, key) in [(5, "ttl:five"), (86_400, "ttl:day")] {
        // H3RETIK's surface.
        let got = shop.post("/x402/locks/acquire", None, &json!({ "key": key, "ttl_seconds": ttl })).await;
        let body = got.served(StatusCode::OK, &format!("acquire {ttl}"));
        assert_eq!(
            (body["acquired"].as_bool(), body["lock"]["ttl_seconds"].as_u64()),
            (Some(true), Some(ttl))
        );
        let token = body["release_token"].as_str().unwrap();
        let renew = json!({ "key": key, "release_token": token, "ttl_seconds": ttl });
        let renewed = shop.post("/x402/locks/renew", None, &renew).await;
        assert_eq!(renewed.served(StatusCode::OK, &format!("renew {ttl}"))["lock"]["ttl_seconds"], ttl);
        // The native surface.
        let native = format!("/v1/locks/native:{key}");
        let got = shop.post(&native, None, &json!({ "ttl_seconds": ttl })).await;
        let body = got.served(StatusCode::CREATED, &format!("native acquire {ttl}"));
        assert_eq!(body["lock"]["ttl_seconds"], ttl);
        let token = body["release_token"].as_str().unwrap().to_owned();
        let renewed =
            shop.post(&format!("{native}/renew"), Some(&token), &json!({ "ttl_seconds": ttl })).await;
        assert_eq!(
            renewed.served(StatusCode::OK, &format!("native renew {ttl}"))["lock"]["ttl_seconds"],
            ttl
        );
    }

    // A held key of each surface to renew with a TTL out of range.
    let body = shop.post("/x402/locks/acquire", None, &json!({ "key": "ttl:held" })).await.body;
    let token = body["release_token"].as_str().unwrap().to_owned();
    let native = shop.post("/v1/locks/ttl:native-held", None, &json!({})).await.body;
    let native_token = native["release_token"].as_str().unwrap().to_owned();
    for ttl in [4, 86_401] {
        let what = format!("ttl_seconds {ttl}");
        let out =
            shop.post("/x402/locks/acquire", None, &json!({ "key": "ttl:out", "ttl_seconds": ttl })).await;
        out.refused(StatusCode::BAD_REQUEST, "out_of_range", Some("ttl_seconds"), &format!("acquire {what}"));
        let out = shop.post("/v1/locks/ttl:out", None, &json!({ "ttl_seconds": ttl })).await;
        out.refused(StatusCode::BAD_REQUEST, "out_of_range", Some("ttl_seconds"), &format!("native {what}"));
        let renew = json!({ "key": "ttl:held", "release_token": token, "ttl_seconds": ttl });
        let out = shop.post("/x402/locks/renew", None, &renew).await;
        out.refused(StatusCode::BAD_REQUEST, "out_of_range", Some("ttl_seconds"), &format!("renew {what}"));
        let out = shop
            .post("/v1/locks/ttl:native-held/renew", Some(&native_token), &json!({ "ttl_seconds": ttl }))
            .await;
        out.refused(
            StatusCode::BAD_REQUEST,
            "out_of_range",
            Some("ttl_seconds"),
            &format!("native renew {what}"),
        );
    }
    // Nothing was granted past the bounds.
    let read = shop.send(Request::get("/x402/locks/ttl:out").body(Body::empty()).unwrap()).await;
    assert_eq!(read.served(StatusCode::OK, "read")["held"], false);
}

#[tokio::test]
async fn lock_keys_owners_and_metadata_at_their_size_are_granted_and_one_more_is_invalid_value() {
    let shop = shop("").await;
    // Keys count characters, not bytes: 256 two-byte characters are a key.
    for key in ["abc".to_owned(), "k".repeat(256), "é".repeat(256)] {
        let got = shop.post(ACQUIRE, None, &json!({ "key": key })).await;
        assert_eq!(
            got.served(StatusCode::OK, &format!("a key of {} characters", key.chars().count()))["acquired"],
            true
        );
    }
    for key in ["ab".to_owned(), "k".repeat(257), "é".repeat(257)] {
        let out = shop.post(ACQUIRE, None, &json!({ "key": key })).await;
        let what = format!("a key of {} characters", key.chars().count());
        out.refused(StatusCode::BAD_REQUEST, "invalid_value", Some("key"), &what);
    }
    // The native surface reads the key from its path.
    let got = shop.post(&format!("/v1/locks/{}", "n".repeat(256)), None, &json!({})).await;
    got.served(StatusCode::CREATED, "a native key of 256 characters");
    let out = shop.post(&format!("/v1/locks/{}", "n".repeat(257)), None, &json!({})).await;
    out.refused(StatusCode::BAD_REQUEST, "invalid_value", Some("key"), "a native key of 257 characters");

    let got = shop.post(ACQUIRE, None, &json!({ "key": "owner:at", "owner": "o".repeat(160) })).await;
    assert_eq!(got.served(StatusCode::OK, "an owner of 160 characters")["lock"]["owner"], "o".repeat(160));
    let out = shop.post(ACQUIRE, None, &json!({ "key": "owner:over", "owner": "o".repeat(161) })).await;
    out.refused(StatusCode::BAD_REQUEST, "invalid_value", Some("owner"), "an owner of 161 characters");

    // `{"p":"…"}` serialises to 8 bytes and the string.
    let metadata = |size: usize| json!({ "p": "m".repeat(size - 8) });
    assert_eq!(metadata(4096).to_string().len(), 4096);
    let got = shop.post(ACQUIRE, None, &json!({ "key": "metadata:at", "metadata": metadata(4096) })).await;
    assert_eq!(got.served(StatusCode::OK, "metadata of 4096 bytes")["lock"]["metadata"], metadata(4096));
    let out = shop.post(ACQUIRE, None, &json!({ "key": "metadata:over", "metadata": metadata(4097) })).await;
    out.refused(StatusCode::BAD_REQUEST, "invalid_value", Some("metadata"), "metadata of 4097 bytes");
}

#[tokio::test]
async fn session_minutes_and_actions_at_their_bounds_are_sold_and_one_past_is_out_of_range() {
    let shop = shop("").await;
    for (minutes, actions) in [(1, 1), (360, 300)] {
        let what = format!("{minutes} minutes and {actions} actions");
        let sold =
            shop.post("/x402/sessions", None, &json!({ "minutes": minutes, "actions": actions })).await;
        let body = sold.served(StatusCode::OK, &what);
        assert_eq!(
            (body["status"].as_str(), body["actions_remaining"].as_u64()),
            (Some("active"), Some(actions))
        );
    }
    for (minutes, actions, field) in
        [(0, 1, "minutes"), (361, 1, "minutes"), (1, 0, "actions"), (1, 301, "actions")]
    {
        let what = format!("{minutes} minutes and {actions} actions");
        let out = shop.post("/x402/sessions", None, &json!({ "minutes": minutes, "actions": actions })).await;
        out.refused(StatusCode::BAD_REQUEST, "out_of_range", Some(field), &what);
    }
    assert_eq!(shop.backend.list().await.unwrap().len(), 2, "a box was made for a refused session");
}

#[tokio::test]
async fn machine_and_box_minutes_at_their_bounds_are_sold_and_one_past_is_out_of_range() {
    let shop = shop("").await;
    let order = |minutes: u32, n: u32| {
        json!({
            "request_id": format!("0a1b2c3d-0000-4000-8000-{n:012}"),
            "product_id": "bare-linux-machine",
            "duration_minutes": minutes,
            "ssh_public_key": SSH_KEY,
        })
    };
    let mut machine = Value::Null;
    for (n, minutes) in [15, 360].into_iter().enumerate() {
        let sold = shop.post("/api/machines", None, &order(minutes, u32::try_from(n).unwrap())).await;
        machine = sold.served(StatusCode::ACCEPTED, &format!("a machine for {minutes} minutes")).clone();
    }
    for (n, minutes) in [14, 361].into_iter().enumerate() {
        let out = shop.post("/api/machines", None, &order(minutes, 10 + u32::try_from(n).unwrap())).await;
        let what = format!("a machine for {minutes} minutes");
        out.refused(StatusCode::BAD_REQUEST, "out_of_range", Some("duration_minutes"), &what);
    }
    // An extension adds at least a minute and at most what the offer sells at once (360).
    let extend = format!("/api/machines/{}/extend", machine["machine_id"].as_str().unwrap());
    let token = machine["management"]["extend_token"].as_str().unwrap();
    for minutes in [1, 360] {
        let extended = shop.post(&extend, Some(token), &json!({ "additional_minutes": minutes })).await;
        extended.served(StatusCode::OK, &format!("an extension of {minutes} minutes"));
    }
    for minutes in [0, 361] {
        let out = shop.post(&extend, Some(token), &json!({ "additional_minutes": minutes })).await;
        out.refused(
            StatusCode::BAD_REQUEST,
            "out_of_range",
            Some("additional_minutes"),
            &format!("an extension of {minutes} minutes"),
        );
    }

    // The native API sells the same offer within the offer's own range.
    for minutes in [15, 360] {
        let sold =
            shop.post("/v1/boxes", None, &json!({ "offer": "bare-linux-machine", "minutes": minutes })).await;
        sold.served(StatusCode::CREATED, &format!("a box for {minutes} minutes"));
    }
    for minutes in [14, 361] {
        let out =
            shop.post("/v1/boxes", None, &json!({ "offer": "bare-linux-machine", "minutes": minutes })).await;
        out.refused(
            StatusCode::BAD_REQUEST,
            "out_of_range",
            Some("minutes"),
            &format!("a box for {minutes} minutes"),
        );
    }
    assert_eq!(shop.backend.list().await.unwrap().len(), 4, "a box was made for a refused order");
}

#[tokio::test]
async fn rental_renewals_of_1_and_12_periods_are_sold_and_0_and_13_are_out_of_range() {
    let shop = shop("").await;
    let rented = shop.post("/rent", None, &json!({ "sku": "sandbox_1h" })).await;
    let rental = rented.served(StatusCode::OK, "a rental").clone();
    let renew = format!(
        "/rentals/{}/renew?token={}",
        rental["rental_id"].as_str().unwrap(),
        rental["root_token"].as_str().unwrap()
    );
    let mut expires = rental["expires_at"].as_i64().unwrap();
    for periods in [1_i64, 12] {
        let renewed = shop.post(&renew, None, &json!({ "periods": periods })).await;
        let body = renewed.served(StatusCode::OK, &format!("{periods} periods"));
        let now = body["current_expires_at"].as_i64().unwrap();
        assert_eq!(now - expires, periods * 3_600_000, "{body}");
        expires = now;
    }
    for periods in [0, 13] {
        let out = shop.post(&renew, None, &json!({ "periods": periods })).await;
        out.refused(StatusCode::BAD_REQUEST, "out_of_range", Some("periods"), &format!("{periods} periods"));
    }
}

/// Buys a `test-box` (256 MiB) through the native API: the answer.
async fn buy(shop: &Shop) -> Answer {
    shop.post("/v1/boxes", None, &json!({ "offer": "test-box", "minutes": 10 })).await
}

#[tokio::test]
async fn max_boxes_and_memory_sell_the_last_box_that_fits_and_refuse_the_next_with_sold_out() {
    for (toml, limit) in [
        ("[boxes]\nmax_boxes = 2\n", "max_boxes = 2"),
        // Two 256 MiB boxes exactly fill 256 MiB sold twice over.
        ("[boxes]\nmemory_mb = 256\nmemory_overcommit = 2.0\n", "memory_mb = 256 × 2"),
    ] {
        let shop = shop(toml).await;
        let first = buy(&shop).await;
        first.served(StatusCode::CREATED, &format!("{limit}: the first box"));
        buy(&shop).await.served(StatusCode::CREATED, &format!("{limit}: the last box that fits"));
        let full = buy(&shop).await;
        full.refused(StatusCode::SERVICE_UNAVAILABLE, "sold_out", None, &format!("{limit}: one box more"));
        // The refused purchase left nothing behind: no box, no lease.
        assert_eq!(shop.backend.list().await.unwrap().len(), 2, "{limit}");
        let live =
            shop.store.leases_in_states(&[LeaseState::Provisioning, LeaseState::Active]).await.unwrap();
        assert_eq!(live.len(), 2, "{limit}");
        // A box that ends makes room for one more.
        let id = first.body["id"].as_str().unwrap();
        let end = Request::delete(format!("/v1/boxes/{id}"))
            .header(header::AUTHORIZATION, format!("Bearer {}", first.body["token"].as_str().unwrap()))
            .body(Body::empty())
            .unwrap();
        shop.send(end).await.served(StatusCode::OK, &format!("{limit}: ending a box"));
        buy(&shop).await.served(StatusCode::CREATED, &format!("{limit}: a box once one ended"));
        let lease: LeaseId = id.parse().unwrap();
        assert_eq!(shop.store.get_lease(lease).await.unwrap().unwrap().state, LeaseState::Terminated);
    }
}

#[tokio::test]
async fn a_wait_of_60_seconds_is_taken_and_61_is_out_of_range() {
    let shop = Arc::new(shop("").await);
    // The key is held by someone else; a waiter of up to 60 s is accepted and served by the
    // release, past the 30 s request timeout's reach (it is answered well within it here).
    let held = shop.post("/v1/locks/wait:key", None, &json!({})).await;
    let token = held.served(StatusCode::CREATED, "first grant")["release_token"].as_str().unwrap().to_owned();
    let waiter = {
        let shop = shop.clone();
        tokio::spawn(async move { shop.post("/v1/locks/wait:key?wait_seconds=60", None, &json!({})).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "a waiter was answered while the key was held");
    let release = Request::delete("/v1/locks/wait:key").header("authorization", format!("Bearer {token}"));
    let released = shop.send(release.body(Body::empty()).unwrap()).await;
    released.served(StatusCode::OK, "release");
    let got = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
    assert_eq!(got.served(StatusCode::CREATED, "the waiter's grant")["lock"]["fencing_token"], 2);

    for bad in ["61", "3600", "-1", "soon"] {
        let out = shop.post(&format!("/v1/locks/wait:other?wait_seconds={bad}"), None, &json!({})).await;
        out.refused(StatusCode::BAD_REQUEST, "out_of_range", Some("wait_seconds"), &format!("wait {bad}"));
    }
    let read = shop.send(Request::get("/v1/locks/wait:other").body(Body::empty()).unwrap()).await;
    assert_eq!(read.served(StatusCode::OK, "nothing granted past the bound")["held"], false);
}
