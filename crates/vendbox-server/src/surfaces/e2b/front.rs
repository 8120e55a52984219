//! Where a request for a sandbox goes, before the API's router: the SDKs address a sandbox at
//! `E2B_SANDBOX_URL` with `E2b-Sandbox-Id` and `E2b-Sandbox-Port` headers, or by host name
//! (`{port}-{id}.{domain}`) when the operator set `[server] ports_domain`. Port 49983 is envd
//! (served by [`super::envd::router`]); any other port is the sandbox's own server, reached
//! through the port proxy (`/v1/boxes/{id}/ports/{port}/…`) with the sandbox's token (the
//! `e2b-traffic-access-token` or `X-Access-Token` header) as the proxy's bearer. Every other
//! request goes on unchanged, with the ports domain handed to the control plane's handlers.
//!
//! [`in_front`] only marks an envd request (a [`SandboxTarget`] in its extensions); the API's
//! router hands it to envd with [`to_envd`], a layer inside its own, so an envd request passes
//! the request id, tracing, metrics, the per-address cap and the panic catcher like any other,
//! but not the request timeout (envd's Connect streams last as long as their process) nor
//! `authenticate` (envd's token is checked by envd).

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Uri, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use tower::ServiceExt as _;

use super::ENVD_PORT;
use super::envd::{ACCESS_TOKEN, SandboxTarget};
use super::sandboxes::SandboxDomain;

/// The header naming the sandbox.
const SANDBOX_ID: HeaderName = HeaderName::from_static("e2b-sandbox-id");
/// The header naming the sandbox's port.
const SANDBOX_PORT: HeaderName = HeaderName::from_static("e2b-sandbox-port");
/// The header E2B's proxy reads a sandbox's traffic token from.
const TRAFFIC_TOKEN: HeaderName = HeaderName::from_static("e2b-traffic-access-token");

/// `app` (the API's [`router`](crate::app::router)) with sandbox requests picked out in front of
/// it: envd's marked for [`to_envd`], other ports' sent to the port proxy.
pub fn in_front(app: Router, domain: Option<String>) -> Router {
    let domain = domain.map(|d| d.trim_start_matches('.').to_ascii_lowercase()).filter(|d| !d.is_empty());
    app.layer(middleware::from_fn(move |request: Request, next: Next| {
        let domain = domain.clone();
        async move { route(request, next, domain).await }
    }))
}

/// The layer of the API's router that serves an envd request ([`in_front`] marked it) with
/// `envd` ([`super::envd::router`]) instead of the API's routes.
pub async fn to_envd(State(envd): State<Router>, request: Request, next: Next) -> Response {
    if request.extensions().get::<SandboxTarget>().is_none() {
        return next.run(request).await;
    }
    match envd.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// The route an envd request is counted under in the metrics (`None` for any other request):
/// envd's routes, with the RPC method as a placeholder, so that no client can make new labels.
pub fn metrics_route(request: &Request) -> Option<&'static str> {
    request.extensions().get::<SandboxTarget>()?;
    let path = request.uri().path();
    Some(if path.starts_with("/process.Process/") {
        "envd /process.Process/{method}"
    } else if path.starts_with("/filesystem.Filesystem/") {
        "envd /filesystem.Filesystem/{method}"
    } else if path == "/files" {
        "envd /files"
    } else if path == "/health" {
        "envd /health"
    } else {
        "envd unmatched"
    })
}

/// The sandbox and port a request is for: by its headers, or by its host name.
fn target(request: &Request, domain: Option<&str>) -> Option<(String, u16, bool)> {
    let headers = request.headers();
    if let Some(id) = headers.get(SANDBOX_ID).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()) {
        let port = headers.get(SANDBOX_PORT).and_then(|v| v.to_str().ok()).and_then(|p| p.parse().ok());
        return Some((id.to_owned(), port.unwrap_or(ENVD_PORT), true));
    }
    let domain = domain?;
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).or_else(|| request.uri().host())?;
    let host = host.to_ascii_lowercase();
    let host = host
        .rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host.as_str(), |(h, _)| h);
    let label = host.strip_suffix(domain)?.strip_suffix('.')?;
    let (port, id) = label.split_once('-')?;
    if label.contains('.') || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((id.to_owned(), port.parse().ok()?, false))
}

async fn route(mut request: Request, next: Next, domain: Option<String>) -> Response {
    request.extensions_mut().insert(SandboxDomain(domain.clone()));
    let Some((id, port, by_header)) = target(&request, domain.as_deref()) else {
        return next.run(request).await;
    };
    if port == ENVD_PORT {
        // Served by `to_envd`, under the API's layers.
        request.extensions_mut().insert(SandboxTarget(id));
        return next.run(request).await;
    }
    // Another port: the port proxy, with the sandbox's token as its bearer.
    let token = request.headers().get(TRAFFIC_TOKEN).or_else(|| request.headers().get(ACCESS_TOKEN)).cloned();
    if let Some(token) = token
        && request.headers().get(header::AUTHORIZATION).is_none()
        && let Ok(bearer) = HeaderValue::from_str(&format!("Bearer {}", token.to_str().unwrap_or_default()))
    {
        request.headers_mut().insert(header::AUTHORIZATION, bearer);
    }
    if by_header {
        let path_and_query = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
        if let Ok(uri) = format!("/v1/boxes/{id}/ports/{port}{path_and_query}").parse::<Uri>() {
            *request.uri_mut() = uri;
        }
    }
    next.run(request).await
}
