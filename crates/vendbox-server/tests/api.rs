//! The native API through the real router (no socket): catalog, quotes, errors, request ids,

#![allow(clippy::unwrap_used, clippy::too_many_lines)]
//! metrics and the OpenAPI document, on SQLite and on PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use vendbox_server::{AppParts, AppState, Config, Limits, router};
use vendbox_store::testkit::PostgresSchema;
use vendbox_store::{SqliteStore, Store};

struct TestApp {
    router: Router,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

async fn app() -> TestApp {
    app_with(Limits::default()).await
}

async fn app_with(limits: Limits) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open_file(&dir.path().join("vendbox.db")).await.unwrap());
    TestApp { router: app_on(store.clone(), limits), store, _dir: dir }
}

fn app_on(store: Arc<dyn Store>, limits: Limits) -> Router {
    let config = Config::load(None, []).unwrap();
    let payments =
        Arc::new(vendbox_service::Payments::unconfigured(store.clone(), "http://vendbox.test".into()));
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
        payments,
        lock_waiters: Arc::default(),
        boxes: Err("no boxes in these tests".into()),
        ssh: None,
        vms,
    });
    router(state, limits)
}

async fn call(router: &Router, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, headers, body)
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn post_json(path: &str, body: &str) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

/// Every package of the five seed APIs, with its published (or documented default) price.
const SEED_PACKAGES: &[(&str, Option<&str>)] = &[
    ("h3retik-micro", Some("0.19")),
    ("h3retik-probe", Some("0.60")),
    ("h3retik-ops", Some("2.70")),
    ("h3retik-deep", Some("8.10")),
    ("h3retik-custom", None),
    ("h3retik-lock", Some("0.0001")),
    ("vpsagent-sandbox-1h", Some("0.50")),
    ("vpsagent-sandbox-6h", Some("2.00")),
    ("vpsagent-sandbox-24h", Some("5.00")),
    ("vpsagent-server-small-1mo", Some("9.99")),
    ("vpsagent-server-small-12mo", Some("99.99")),
    ("vpsagent-server-medium-1mo", Some("19.99")),
    ("vpsagent-server-medium-12mo", Some("199.99")),
    ("vpsagent-server-large-1mo", Some("35.99")),
    ("vpsagent-server-large-12mo", Some("359.99")),
    ("vpsagent-catalog", Some("0.01")),
    ("bare-linux-machine", None),
    ("gpu-h100-machine", None),
    ("x402compute-vcg-a100-1c-2g-6gb", None),
    ("secretvm-small", None),
    ("secretvm-medium", None),
    ("secretvm-large", None),
];

#[tokio::test]
async fn offers_list_every_seed_package_with_its_price() {
    let app = app().await;
    let (status, _, body) = call(&app.router, get("/v1/offers")).await;
    assert_eq!(status, StatusCode::OK);
    let offers = body["offers"].as_array().unwrap();
    assert_eq!(body["count"], offers.len());
    for (id, price) in SEED_PACKAGES {
        let offer = offers.iter().find(|o| o["id"] == *id).unwrap_or_else(|| panic!("{id} missing"));
        match price {
            Some(p) => assert_eq!(offer["price_usdc"], *p, "{id}"),
            None => assert!(offer["price_usdc"].is_null() && offer["pricing"].is_object(), "{id}"),
        }
    }
    // H3RETIK's packages keep their minutes and actions.
    let micro = offers.iter().find(|o| o["id"] == "h3retik-micro").unwrap();
    assert_eq!(micro["duration"], json!({"rule": "fixed", "minutes": 5}));
    assert_eq!(micro["actions"], json!({"rule": "fixed", "actions": 3}));
    assert_eq!(micro["price_atomic"], "190000");
    // VpsAgent's nine SKUs on two tracks.
    let skus: Vec<_> =
        offers.iter().filter(|o| o["surface"] == "vpsagent" && o["labels"]["sku"].is_string()).collect();
    assert_eq!(skus.len(), 9);
    assert_eq!(skus.iter().filter(|o| o["labels"]["track"] == "sandbox").count(), 3);
    // x402Compute's published plan, regions and OS image.
    let a100 = offers.iter().find(|o| o["id"] == "x402compute-vcg-a100-1c-2g-6gb").unwrap();
    assert_eq!(a100["pricing"]["per_month"], "90.00");
    assert_eq!(a100["regions"], json!(["lax", "ewr", "ord"]));
    assert_eq!(a100["resources"]["gpu"]["vram_gb"], 80);
    // SecretVM's minimum balance for buying from credits.
    assert_eq!(body["credits"]["min_balance"], "0.0001");

    let (_, _, filtered) = call(&app.router, get("/v1/offers?surface=h3retik&kind=lock")).await;
    let ids: Vec<_> = filtered["offers"].as_array().unwrap().iter().map(|o| o["id"].clone()).collect();
    assert_eq!(ids, vec![json!("h3retik-lock"), json!("h3retik-lock-renew")]);
    let (status, _, body) = call(&app.router, get("/v1/offers?kind=spaceship")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_query");
}

#[tokio::test]
async fn one_offer_or_a_json_404() {
    let app = app().await;
    let (status, _, body) = call(&app.router, get("/v1/offers/storefront-nothing")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("unknown_offer")));
    let (status, _, body) = call(&app.router, get("/v1/offers/gpu-h100-machine")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["pricing"]["base"], "1.00");
}

#[tokio::test]
async fn quotes_price_a_custom_session_and_a_storefront_machine() {
    let app = app().await;
    let (status, _, q) = call(
        &app.router,
        post_json(
            "/v1/quotes",
            r#"{"offer_id":"h3retik-custom","minutes":20,"actions":12,"region":"europe"}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{q}");
    // 20 × 0.04 + 12 × 0.01
    assert_eq!((q["price_usdc"].as_str(), q["price_atomic"].as_str()), (Some("0.92"), Some("920000")));
    assert_eq!(q["region"], "europe");

    let (status, _, q) =
        call(&app.router, post_json("/v1/quotes", r#"{"offer_id":"bare-linux-machine","minutes":90}"#)).await;
    assert_eq!(status, StatusCode::CREATED, "{q}");
    // 0.25 base + 90 × 0.01
    assert_eq!(q["price_usdc"], "1.15");
    let (_, _, q) =
        call(&app.router, post_json("/v1/quotes", r#"{"offer_id":"gpu-h100-machine","minutes":90}"#)).await;
    // 1.00 base + 90 × 0.06
    assert_eq!(q["price_usdc"], "6.40");

    // The quote is stored and can be read back.
    let id = q["id"].as_str().unwrap();
    let stored = app.store.get_quote(id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.terms.price.atomic(), 6_400_000);
    let (status, _, again) = call(&app.router, get(&format!("/v1/quotes/{id}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, q);
    let (status, _, _) = call(&app.router, get("/v1/quotes/not-a-quote")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn quotes_reject_bad_input_naming_the_field() {
    let app = app().await;
    let cases = [
        (r#"{"offer_id":"h3retik-custom","minutes":361,"actions":3}"#, "out_of_range", Some("minutes")),
        (r#"{"offer_id":"h3retik-custom","minutes":0,"actions":3}"#, "out_of_range", Some("minutes")),
        (r#"{"offer_id":"h3retik-custom","minutes":10,"actions":301}"#, "out_of_range", Some("actions")),
        (r#"{"offer_id":"bare-linux-machine","minutes":14}"#, "out_of_range", Some("minutes")),
        (r#"{"offer_id":"bare-linux-machine","minutes":361}"#, "out_of_range", Some("minutes")),
        (r#"{"offer_id":"h3retik-custom","minutes":-5,"actions":3}"#, "out_of_range", Some("minutes")),
        (r#"{"offer_id":"no-such-offer"}"#, "unknown_offer", Some("offer_id")),
        (r#"{"offer_id":"h3retik-custom","minutes":"ten","actions":3}"#, "wrong_type", Some("minutes")),
        (r#"{"offer_id":42}"#, "wrong_type", Some("offer_id")),
        (
            r#"{"offer_id":"h3retik-custom","minutes":10,"actions":3,"colour":"red"}"#,
            "unknown_field",
            Some("colour"),
        ),
        (r#"{"minutes":10}"#, "missing_field", Some("offer_id")),
        (r#"{"offer_id":"h3retik-custom","actions":3}"#, "missing_field", Some("minutes")),
        (
            r#"{"offer_id":"h3retik-custom","minutes":10,"actions":3,"region":"mars"}"#,
            "unsupported_value",
            Some("region"),
        ),
        (r#"{"offer_id":"h3retik-micro","minutes":6}"#, "not_adjustable", Some("minutes")),
        (r#"{"offer_id":"h3retik-custom","#, "malformed_json", None),
    ];
    for (body, code, field) in cases {
        let (status, _, err) = call(&app.router, post_json("/v1/quotes", body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {err}");
        assert_eq!(err["error"]["code"], code, "{body} → {err}");
        assert_eq!(err["error"]["field"].as_str(), field, "{body} → {err}");
        assert!(err["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let not_json = Request::post("/v1/quotes")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("{}"))
        .unwrap();
    let (status, _, err) = call(&app.router, not_json).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, Some("unsupported_media_type"))
    );
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let app = app_with(Limits { max_body_bytes: 64, ..Limits::default() }).await;
    let router = &app.router;
    let big = format!(r#"{{"offer_id":"{}"}}"#, "x".repeat(100));
    let (status, _, err) = call(router, post_json("/v1/quotes", &big)).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );
}

#[tokio::test]
async fn slow_requests_time_out_with_a_json_error() {
    let app = app_with(Limits { request_timeout: Duration::from_millis(100), ..Limits::default() }).await;
    let router = &app.router;
    // A body that never finishes arriving keeps the handler waiting past the timeout.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(1);
    tx.send(Ok(axum::body::Bytes::from_static(b"{\"offer_id\""))).await.unwrap();
    let mut rx = rx;
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let request = Request::post("/v1/quotes")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap();
    let (status, _, err) = call(router, request).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("request_timeout"))
    );
    drop(tx);
}

#[tokio::test]
async fn errors_are_json_and_requests_carry_ids() {
    let app = app().await;
    let (status, headers, body) = call(&app.router, get("/no/such/path")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    assert!(headers.get("x-request-id").is_some_and(|v| v.len() >= 32));
    let (status, _, body) =
        call(&app.router, Request::delete("/v1/offers").body(Body::empty()).unwrap()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );
    // On the Storefront's paths, what the router itself answers speaks the seed's dialect too:
    // `{"error": "<message>", "code"}`, with the request id.
    let (status, headers, body) = call(&app.router, get("/api/no/such/path")).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{body}");
    assert!(body["error"].as_str().is_some_and(|m| m.contains("/api/no/such/path")), "{body}");
    assert!(headers.get("x-request-id").is_some_and(|v| v.len() >= 32));
    let (status, _, body) =
        call(&app.router, Request::put("/api/machines").body(Body::empty()).unwrap()).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed")));
    assert!(body["error"].is_string(), "{body}");
    let mine =
        Request::get("/healthz").header("x-request-id", "agent-chosen-id").body(Body::empty()).unwrap();
    let (status, headers, body) = call(&app.router, mine).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-request-id"], "agent-chosen-id");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["store"], "sqlite");
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let app = app().await;
    for _ in 0..3 {
        call(&app.router, get("/v1/offers/h3retik-micro")).await;
    }
    call(&app.router, get("/v1/offers/nope")).await;
    let response = app.router.clone().oneshot(get("/metrics")).await.unwrap();
    assert!(
        response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(
        text.contains(r#"vendbox_http_requests_total{method="GET",route="/v1/offers/{id}",status="200"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"vendbox_http_requests_total{method="GET",route="/v1/offers/{id}",status="404"} 1"#),
        "{text}"
    );
    assert!(text.contains("vendbox_http_request_duration_seconds_bucket"), "{text}");
    assert!(text.contains(r#"vendbox_build_info{version=""#), "{text}");
}

#[tokio::test]
async fn openapi_document_is_valid_openapi_3_1() {
    let app = app().await;
    let (status, _, doc) = call(&app.router, get("/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    for path in ["/healthz", "/v1/offers", "/v1/offers/{id}", "/v1/quotes", "/v1/quotes/{id}"] {
        assert!(doc["paths"][path].is_object(), "{path} missing from the document");
    }
    let output = validate_openapi(&serde_json::to_vec(&doc).unwrap());
    assert!(
        output.status.success(),
        "openapi-spec-validator rejected /openapi.json:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs the reference validator for OpenAPI 3.1 (Python's openapi-spec-validator, installed by
/// scripts/setup.sh) on `document`.
fn validate_openapi(document: &[u8]) -> std::process::Output {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), document).unwrap();
    std::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys\n\
             from openapi_spec_validator import validate, OpenAPIV31SpecValidator\n\
             validate(json.load(open(sys.argv[1])), cls=OpenAPIV31SpecValidator)",
        ])
        .arg(file.path())
        .output()
        .expect("python3 runs (scripts/setup.sh installs openapi-spec-validator)")
}

#[tokio::test]
async fn the_validator_rejects_a_broken_document() {
    // Proves the check above can fail: the same validator on a document missing `info`.
    let output = validate_openapi(br#"{"openapi":"3.1.0","paths":{}}"#);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("info"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotes_work_on_postgres_too() {
    let Some(schema) = PostgresSchema::create().await else { return };
    let store: Arc<dyn Store> = Arc::new(schema.store().await.unwrap());
    let router = app_on(store.clone(), Limits::default());
    let outcome = tokio::spawn(async move {
        let (status, _, q) =
            call(&router, post_json("/v1/quotes", r#"{"offer_id":"bare-linux-machine","minutes":90}"#)).await;
        assert_eq!(status, StatusCode::CREATED, "{q}");
        let stored = store.get_quote(q["id"].as_str().unwrap().parse().unwrap()).await.unwrap().unwrap();
        assert_eq!(stored.terms.price.atomic(), 1_150_000);
        let (_, _, health) = call(&router, get("/healthz")).await;
        assert_eq!(health["store"], "postgres");
    })
    .await;
    schema.drop_schema().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
