//! Where a request for a sandbox goes, before the API's router: the SDKs address a sandbox at
//! `E2B_SANDBOX_URL` with `E2b-Sandbox-Id` and `E2b-Sandbox-Port` headers, or by host name
//! (`{port}-{id}.{domain}`) when the operator set `[server] ports_domain`. Port 49983 is envd
//! (served by [`super::envd::router`]); any other port is the sandbox's own server, reached
//! through the port proxy (`/v1/boxes/{id}/ports/{port}/…`) with the sandbox's token (the
//! `e2b-traffic-access-token` or `X-Access-Token` header) as the proxy's bearer. Every other
//! request goes on unchanged, with the ports domain handed to the control plane's handlers.

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Uri, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use tower::ServiceExt as _;

use super::ENVD_PORT;
use super::envd::{ACCESS_TOKEN, SandboxTarget};
use super::sandboxes::SandboxDomain;
use crate::app::AppState;

/// The header naming the sandbox.
const SANDBOX_ID: HeaderName = HeaderName::from_static("e2b-sandbox-id");
/// The header naming the sandbox's port.
const SANDBOX_PORT: HeaderName = HeaderName::from_static("e2b-sandbox-port");
/// The header E2B's proxy reads a sandbox's traffic token from.
const TRAFFIC_TOKEN: HeaderName = HeaderName::from_static("e2b-traffic-access-token");

/// `app` with sandbox requests taken out in front of it.
pub fn in_front(app: Router, state: AppState, domain: Option<String>, max_file_bytes: usize) -> Router {
    let domain = domain.map(|d| d.trim_start_matches('.').to_ascii_lowercase()).filter(|d| !d.is_empty());
    let envd = envd_router(state, max_file_bytes);
    app.layer(middleware::from_fn(move |request: Request, next: Next| {
        let envd = envd.clone();
        let domain = domain.clone();
        async move { route(request, next, envd, domain).await }
    }))
}

fn envd_router(state: AppState, max_file_bytes: usize) -> Router {
    super::envd::router(state, max_file_bytes)
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

async fn route(mut request: Request, next: Next, envd: Router, domain: Option<String>) -> Response {
    request.extensions_mut().insert(SandboxDomain(domain.clone()));
    let Some((id, port, by_header)) = target(&request, domain.as_deref()) else {
        return next.run(request).await;
    };
    if port == ENVD_PORT {
        request.extensions_mut().insert(SandboxTarget(id));
        return match envd.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
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
