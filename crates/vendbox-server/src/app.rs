//! The axum application: shared state, routes, and the layers every request passes through
//! (request id, tracing, metrics, timeout, body limit, panic catcher, JSON 404/405).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use vendbox_service::LiveCatalog;
use vendbox_store::Store;

use crate::boxes::Boxes;
use crate::error::ApiError;
use crate::metrics::{Metrics, RequestLabels, RouteLabels};
use crate::openapi;
use crate::surfaces::{self, storefront};

/// Header carrying the request id, set by vendbox when the client sends none.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What every handler can reach: [`AppParts`] behind one `Arc`, so that the copies the router's
/// layers and extractors take of it for every request cost one reference count, not one per
/// part (a dozen counters that the server's threads took turns to bump, several times a request).
#[derive(Debug, Clone)]
pub struct AppState(Arc<AppParts>);

impl From<AppParts> for AppState {
    fn from(parts: AppParts) -> AppState {
        AppState(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// The parts of [`AppState`].
#[derive(Debug)]
pub struct AppParts {
    /// Offers for sale as this host can make them now (they follow its image store): a handler
    /// takes one snapshot (`catalog.now()`) and judges its whole request by it.
    pub catalog: LiveCatalog,
    /// Persistent state.
    pub store: Arc<dyn Store>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The payment gate of paid routes.
    pub payments: Arc<vendbox_service::Payments>,
    /// This host's waiters for held lock keys, in arrival order.
    pub lock_waiters: Arc<vendbox_service::LockWaiters>,
    /// The boxes for sale, or why this vendbox runs none.
    pub boxes: Result<Arc<Boxes>, Arc<str>>,
    /// Where the SSH gateway answers, when it runs.
    pub ssh: Option<SshEndpoint>,
    /// SecretVM's agents and VMs.
    pub vms: vendbox_service::Vms,
}

impl AppState {
    /// Quotes, payments and the store's health, as the services keep them.
    pub fn records(&self) -> vendbox_service::Records {
        vendbox_service::Records::new(self.store.clone(), self.catalog.now())
    }

    /// Accounts and their credits, under the catalog's credits policy.
    pub fn accounts(&self) -> vendbox_service::Accounts {
        vendbox_service::Accounts::new(self.store.clone(), self.catalog.now().credits)
    }

    /// API keys, for managing them (the signature window plays no part there: `authenticate`
    /// checked the signature already).
    pub fn auth(&self) -> vendbox_service::Auth {
        vendbox_service::Auth::new(self.store.clone(), std::time::Duration::ZERO)
    }

    /// The lock services, over this vendbox's store and catalog.
    pub fn locks(&self) -> vendbox_service::Locks {
        vendbox_service::Locks::new(self.store.clone(), self.catalog.now())
            .with_waiters(self.lock_waiters.clone())
    }
}

/// Where clients reach the SSH gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshEndpoint {
    /// Host name or address clients connect to.
    pub host: String,
    /// Its port.
    pub port: u16,
}

impl SshEndpoint {
    /// `ssh -p PORT user@HOST`, ready to paste.
    pub fn command(&self, user: &str) -> String {
        if self.port == 22 {
            format!("ssh {user}@{}", self.host)
        } else {
            format!("ssh -p {} {user}@{}", self.port, self.host)
        }
    }
}

/// Limits applied to every request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest time to answer a request.
    pub request_timeout: Duration,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Largest file sent into a box, in bytes.
    pub max_file_bytes: usize,
    /// Requests one client address may have in flight at once.
    pub max_requests_per_peer: usize,
    /// How far a signed request's timestamp may be from the server's clock, either way.
    pub auth_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            max_body_bytes: 1024 * 1024,
            max_file_bytes: 64 * 1024 * 1024,
            max_requests_per_peer: 256,
            auth_window: Duration::from_mins(5),
        }
    }
}

/// Every operation of the API, from each surface's one list (`surfaces::*::routes`): a handler
/// listed there is both served and described in `/openapi.json`, so the two cannot drift apart.
pub fn operations(limits: Limits) -> OpenApiRouter<AppState> {
    let timeout = |limit: Duration| {
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "request_timeout",
                    "the request took too long; try again",
                )
            }))
            .timeout(limit)
    };
    let surfaces::Routes { quick, waits, long } = surfaces::all();
    let api = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(quick)
        .layer(timeout(limits.request_timeout))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes));
    // An acquisition may wait for its key (`wait_seconds`, up to a minute) beyond the request
    // timeout, and no longer.
    let waits = waits
        .layer(timeout(limits.request_timeout + vendbox_service::locks::MAX_WAIT))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes));
    // Commands and file transfers run as long as they need (a command's own time limit bounds
    // it) and move bigger bodies than the rest of the API.
    let long = long.layer(DefaultBodyLimit::max(limits.max_file_bytes));
    api.merge(waits).merge(long)
}

/// The whole HTTP API: every surface's operations, `/openapi.json`, `/metrics`, and what calls
/// them in process: `/discovery/resources` (x402 Bazaar) and `/mcp` (the MCP tools).
pub fn router(state: AppState, limits: Limits) -> Router {
    let (api, doc) = operations(limits).split_for_parts();
    let (document, declarations) = described(doc);
    let api = api
        .route("/openapi.json", get(move || std::future::ready(openapi::serve(document.clone()))))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone())
        .layer(middleware::from_fn_with_state(declarations, crate::discovery::declare_on_402));
    // One count of each address's requests in flight, whichever of the routers below serves them.
    let load = crate::peers::PeerLoad::new(limits.max_requests_per_peer);
    let api = layered(api, &state, limits, &load);
    // What calls the rest of the router in process: the Bazaar listing and the MCP tools.
    let discovery =
        layered(crate::discovery::route(api.clone(), state.catalog.clone()), &state, limits, &load);
    let mcp = layered(surfaces::mcp::route(api.clone()), &state, limits, &load);
    let index =
        layered(crate::index::route(state.catalog.clone(), state.ssh.is_some()), &state, limits, &load);
    api.merge(index).merge(discovery).merge(mcp)
}

/// The OpenAPI document as served, and the Bazaar declarations read from it: the same for every
/// router of this build, so made once.
fn described(doc: utoipa::openapi::OpenApi) -> (Bytes, Arc<crate::discovery::Declarations>) {
    static DESCRIBED: std::sync::OnceLock<(Bytes, Arc<crate::discovery::Declarations>)> =
        std::sync::OnceLock::new();
    DESCRIBED
        .get_or_init(|| {
            let doc = serde_json::to_value(openapi::versioned(doc)).unwrap_or_default();
            let declarations = Arc::new(crate::discovery::Declarations::from_openapi(&doc));
            (Bytes::from(serde_json::to_vec(&doc).unwrap_or_default()), declarations)
        })
        .clone()
}

/// `routes` under the layers every request passes.
fn layered(routes: Router, state: &AppState, limits: Limits, load: &Arc<crate::peers::PeerLoad>) -> Router {
    let authenticator = crate::auth::Authenticator {
        auth: vendbox_service::Auth::new(state.store.clone(), limits.auth_window),
        max_body_bytes: limits.max_body_bytes,
    };
    let envd = surfaces::e2b::envd::router(state.clone(), limits.max_file_bytes);
    routes.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
            .layer(PropagateRequestIdLayer::new(REQUEST_ID))
            .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
                tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
            })
            .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)))
            .layer(middleware::from_fn_with_state(state.clone(), record_metrics))
            .layer(middleware::from_fn(storefront::dialect))
            .layer(middleware::from_fn(code_plain_refusals))
            .layer(middleware::from_fn_with_state(load.clone(), crate::peers::cap))
            .layer(CatchPanicLayer::custom(|_panic: Box<dyn std::any::Any + Send>| {
                ApiError::internal(&"a handler panicked").into_response()
            }))
            // envd's requests (`front::in_front` marked them) under every layer above, not
            // `authenticate`'s: envd checks its own token.
            .layer(middleware::from_fn_with_state(envd, surfaces::e2b::front::to_envd))
            .layer(middleware::from_fn_with_state(authenticator, crate::auth::authenticate))
            ,
    )
}

/// The most of a plain-text refusal's body that is read to code it.
const MAX_PLAIN_REFUSAL_BYTES: usize = 4096;

/// Turns the refusals axum's extractors answer themselves in plain text (a path id that is not
/// UTF-8, a query string that does not deserialise, a body of the wrong type…) into coded JSON
/// errors, so that every 4xx of the API is `{"error":{"code","message"}}`.
async fn code_plain_refusals(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if !status.is_client_error() || !plain {
        return response;
    }
    let body = axum::body::to_bytes(response.into_body(), MAX_PLAIN_REFUSAL_BYTES).await.unwrap_or_default();
    let message = String::from_utf8_lossy(&body).trim().to_owned();
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        _ if message.starts_with("Invalid URL") => "invalid_path",
        _ if message.starts_with("Failed to deserialize query string") => "invalid_query",
        _ if status == StatusCode::BAD_REQUEST => "bad_request",
        _ => "refused",
    };
    ApiError::new(
        status,
        code,
        if message.is_empty() { "the request was refused".to_owned() } else { message },
    )
    .into_response()
}

async fn record_metrics(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = surfaces::e2b::front::metrics_route(&request).map_or_else(
        || {
            request
                .extensions()
                .get::<MatchedPath>()
                .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned())
        },
        str::to_owned,
    );
    let method = request.method().to_string();
    let started = Instant::now();
    let _in_flight = InFlight::enter(&state.metrics);
    let response = next.run(request).await;
    let status = response.status().as_u16();
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels { method: method.clone(), route: route.clone(), status })
        .inc();
    state
        .metrics
        .latency
        .get_or_create(&RouteLabels { method, route })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Counts a request as in flight until dropped, also when the client goes away mid-request and
/// the handler's future is dropped.
struct InFlight(prometheus_client::metrics::gauge::Gauge);

impl InFlight {
    fn enter(metrics: &Metrics) -> Self {
        metrics.in_flight.inc();
        Self(metrics.in_flight.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.render(),
    )
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(
        "not_found",
        format!("there is nothing at {}; GET /openapi.json lists the API", request.uri().path()),
    )
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", request.method(), request.uri().path()),
    )
}
