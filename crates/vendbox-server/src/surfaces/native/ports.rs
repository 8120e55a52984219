//! Ports in: HTTP and WebSocket (any HTTP/1.1 upgrade) to a server listening in a box, at
//! `/v1/boxes/{id}/ports/{port}/…` and, when the operator sets `[server] ports_domain`, at
//! `{port}-{id}.{ports_domain}`. Every method is forwarded: those HTTP names have an operation
//! each (HEAD and OPTIONS included), and any other (WebDAV's `PROPFIND`, an extension's) goes
//! through the same path's fallback ([`at_root`], [`below`]).
//!
//! The way in is boxd's TCP tunnel to the box's loopback (the one SSH `-L` uses), so it works
//! the same with and without egress and the host never enters a box's network namespace. The
//! caller presents the box's root token as a bearer: a server in a box may be a shell or a
//! notebook, so reaching it is as strong as running a command (read, extend and terminate
//! tokens are refused). The token is not passed on to the box. Port traffic spends no action.
//! The one exception is a running SecretVM VM's published port, reached by the VM's id
//! (`{port}-{vm id}.{ports_domain}`, its `vmDomain`) without a token: a VM's page is public.
//!
//! What the box answers is hostile: its response head is read within [`HEAD_TIMEOUT`] and
//! [`MAX_HEAD_BYTES`], hop-by-hop headers are dropped both ways, and bodies are streamed (the
//! client's pace bounds what is held), never gathered.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use utoipa_axum::router::UtoipaMethodRouter;
use utoipa_axum::routes;
use vendbox_core::Capability;

use super::boxes::service;
use crate::app::AppState;
use crate::auth::optional_bearer;
use crate::error::ApiError;

/// Longest wait for the box's server to answer a request's head.
pub const HEAD_TIMEOUT: Duration = Duration::from_mins(1);
/// Largest response head (status line and headers) taken from a box.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Headers that belong to one hop and are never forwarded (RFC 9110 §7.6.1), and the bearer.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Marks a request that came in by a box host name (its path is the box's own).
#[derive(Debug, Clone, Copy)]
struct ByHostName;

/// One operation per method and path (OpenAPI wants an operation id of each): `port_get`
/// serves `GET /v1/boxes/{id}/ports/{port}/`, `port_get_path` `GET …/{port}/{*path}`, and so on.
macro_rules! operations {
    ($($method:ident: $at_root:ident, $below:ident;)*) => {$(
        /// The box's server at `/` of the port.
        #[utoipa::path($method, path = "/v1/boxes/{id}/ports/{port}/", tag = "boxes",
            security(("lease_token" = [])),
            params(("id" = String, Path, description = "The box"),
                ("port" = u16, Path, description = "A TCP port a server listens on in the box (its loopback or any address)")),
            responses((status = 200, description = "Whatever the box's server answers, also 101 for a WebSocket"),
                (status = 502, description = "port_closed: nothing accepts on the port; bad_gateway: the answer was not HTTP", body = crate::error::ErrorBody),
                (status = 504, description = "port_timeout: the server did not answer in time", body = crate::error::ErrorBody)))]
        pub async fn $at_root(
            State(state): State<AppState>,
            Path((id, port)): Path<(String, u16)>,
            request: Request,
        ) -> Result<Response, ApiError> {
            forward(&state, &id, port, request).await
        }

        /// The box's server at a path below the port (`…/ports/8000/static/app.js` reaches
        /// `/static/app.js`; the query string is kept).
        #[utoipa::path($method, path = "/v1/boxes/{id}/ports/{port}/{*path}", tag = "boxes",
            security(("lease_token" = [])),
            params(("id" = String, Path, description = "The box"),
                ("port" = u16, Path, description = "A TCP port a server listens on in the box"),
                ("*path" = String, Path, description = "The path on the box's server")),
            responses((status = 200, description = "Whatever the box's server answers, also 101 for a WebSocket"),
                (status = 502, description = "port_closed or bad_gateway", body = crate::error::ErrorBody),
                (status = 504, description = "port_timeout", body = crate::error::ErrorBody)))]
        pub async fn $below(
            State(state): State<AppState>,
            Path((id, port, _path)): Path<(String, u16, String)>,
            request: Request,
        ) -> Result<Response, ApiError> {
            forward(&state, &id, port, request).await
        }
    )*};
}

operations! {
    get: port_get, port_get_path;
    post: port_post, port_post_path;
    put: port_put, port_put_path;
    patch: port_patch, port_patch_path;
    delete: port_delete, port_delete_path;
    head: port_head, port_head_path;
    options: port_options, port_options_path;
}

/// The operations at `/v1/boxes/{id}/ports/{port}/`, and any other method there.
pub fn at_root() -> UtoipaMethodRouter<AppState> {
    let (schemas, paths, methods) =
        routes!(port_get, port_post, port_put, port_patch, port_delete, port_head, port_options);
    let other = |State(state): State<AppState>, Path((id, port)): Path<(String, u16)>, request: Request| async move {
        forward(&state, &id, port, request).await
    };
    (schemas, paths, methods.fallback(other))
}

/// The operations at `/v1/boxes/{id}/ports/{port}/{*path}`, and any other method there.
pub fn below() -> UtoipaMethodRouter<AppState> {
    let (schemas, paths, methods) = routes!(
        port_get_path,
        port_post_path,
        port_put_path,
        port_patch_path,
        port_delete_path,
        port_head_path,
        port_options_path
    );
    let other = |State(state): State<AppState>,
                 Path((id, port, _path)): Path<(String, u16, String)>,
                 request: Request| async move { forward(&state, &id, port, request).await };
    (schemas, paths, methods.fallback(other))
}

/// Sends `request` to port `port` of box `id` and answers with what it says.
async fn forward(state: &AppState, id: &str, port: u16, mut request: Request) -> Result<Response, ApiError> {
    let boxes = service(state)?;
    let bearer = optional_bearer(request.headers());
    // A SecretVM VM's published port is public, as SecretVM's VM domains are (`id` is the VM's).
    let public = match bearer {
        None => state.vms.public_lease(id, port).await,
        Some(_) => None,
    };
    let lease = match public {
        Some(lease) => lease,
        None => boxes.open(id, bearer.as_ref(), Capability::Root).await?,
    };
    let boxd = boxes.boxd(&lease)?;
    if port == 0 {
        return Err(
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_port", "ports are 1-65535").with_field("port")
        );
    }
    let tunnel = boxd.connect_tcp(port).await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "port_closed",
            format!("nothing in the box accepts connections on port {port}: {e}"),
        )
    })?;
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD_BYTES)
        .handshake(TokioIo::new(tunnel))
        .await
        .map_err(|e| bad_gateway(format!("cannot speak HTTP to port {port}: {e}")))?;
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    let upgrade = wanted_upgrade(request.headers());
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
    let prefix = format!("/v1/boxes/{id}/ports/{port}");
    // A request by host name was rewritten onto the prefix: the client never saw it.
    let shown = request.extensions().get::<ByHostName>().is_none();
    let outgoing = outgoing(request, &prefix, shown, upgrade.as_ref())?;
    let mut response = match tokio::time::timeout(HEAD_TIMEOUT, sender.send_request(outgoing)).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            return Err(bad_gateway(format!("the server on port {port} did not answer in HTTP: {e}")));
        }
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "port_timeout",
                format!("the server on port {port} did not answer within {HEAD_TIMEOUT:?}"),
            ));
        }
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let (Some(client_upgrade), Some(protocol)) = (client_upgrade, upgrade) else {
            return Err(bad_gateway("the box's server switched protocols unasked".into()));
        };
        let box_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            let (Ok(client), Ok(inside)) = (client_upgrade.await, box_upgrade.await) else { return };
            let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(inside)).await;
        });
        let (mut parts, _) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol);
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// The request as the box's server gets it: its path below the port, hop-by-hop headers and
/// the bearer dropped, `X-Forwarded-*` added (`X-Forwarded-Prefix` only when the client used
/// the prefix itself: `shown`).
fn outgoing(
    request: Request,
    prefix: &str,
    shown: bool,
    upgrade: Option<&HeaderValue>,
) -> Result<http::Request<Body>, ApiError> {
    let (mut parts, body) = request.into_parts();
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let inner = path_and_query.strip_prefix(prefix).unwrap_or(path_and_query);
    let inner = if inner.starts_with('/') { inner.to_owned() } else { format!("/{inner}") };
    parts.uri = inner.parse::<Uri>().map_err(|_| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", "the path cannot be forwarded")
    })?;
    let host = parts.headers.get(header::HOST).cloned();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::AUTHORIZATION);
    if let Some(host) = host {
        parts.headers.insert(HeaderName::from_static("x-forwarded-host"), host);
    }
    parts.headers.insert(HeaderName::from_static("x-forwarded-proto"), HeaderValue::from_static("http"));
    if shown && let Ok(value) = HeaderValue::from_str(prefix) {
        parts.headers.insert(HeaderName::from_static("x-forwarded-prefix"), value);
    }
    if let Some(protocol) = upgrade {
        parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol.clone());
    }
    parts.version = http::Version::HTTP_11;
    let body = if upgrade.is_some() { Body::empty() } else { body };
    Ok(http::Request::from_parts(parts, body))
}

/// The protocol a request asks to upgrade to (`Connection: upgrade` and `Upgrade: websocket`).
fn wanted_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if asks { headers.get(header::UPGRADE).cloned() } else { None }
}

/// Drops hop-by-hop headers, and those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
}

fn bad_gateway(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, "bad_gateway", message)
}

/// Serves `{port}-{id}.{domain}` host names as `/v1/boxes/{id}/ports/{port}/…` of `app`; other
/// host names reach `app` unchanged. Nothing but the box's server is reachable by a box host
/// name.
pub fn by_host_name(app: Router, domain: Option<String>) -> Router {
    let Some(domain) =
        domain.map(|d| d.trim_start_matches('.').to_ascii_lowercase()).filter(|d| !d.is_empty())
    else {
        return app;
    };
    let rewrite = tower::ServiceBuilder::new()
        .map_request(move |request: Request| rewrite_host(request, &domain))
        .service(app);
    Router::new().fallback_service(rewrite)
}

fn rewrite_host(mut request: Request, domain: &str) -> Request {
    if request.extensions().get::<crate::surfaces::e2b::envd::SandboxTarget>().is_some() {
        // An E2B sandbox's envd, by its `49983-{id}` host name: served by envd, not the proxy.
        return request;
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().host())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let host = host
        .rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host.as_str(), |(h, _)| h);
    let Some(label) = host.strip_suffix(domain).and_then(|l| l.strip_suffix('.')) else { return request };
    let Some((port, id)) = label.split_once('-') else { return request };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || label.contains('.') {
        return request;
    }
    let path_and_query = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("/v1/boxes/{id}/ports/{port}{path_and_query}").parse::<Uri>() else {
        return request;
    };
    *request.uri_mut() = uri;
    request.extensions_mut().insert(ByHostName);
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(host: &str, path: &str) -> (String, bool) {
        let request = Request::builder().uri(path).header(header::HOST, host).body(Body::empty()).unwrap();
        let request = rewrite_host(request, "boxes.example.com");
        (request.uri().to_string(), request.extensions().get::<ByHostName>().is_some())
    }

    #[test]
    fn box_host_names_become_port_paths_and_nothing_else_does() {
        let id = "0193f1e2-7c4a-7d3e-9a10-5b2c3d4e5f60";
        assert_eq!(
            rewritten(&format!("8000-{id}.boxes.example.com"), "/static/app.js?v=2"),
            (format!("/v1/boxes/{id}/ports/8000/static/app.js?v=2"), true)
        );
        assert_eq!(
            rewritten(&format!("8000-{id}.Boxes.Example.com:8402"), "/"),
            (format!("/v1/boxes/{id}/ports/8000/"), true)
        );
        for host in [
            "boxes.example.com",
            "vendbox.example.com",
            "8000-x.y.boxes.example.com",
            "web-x.boxes.example.com",
            "-x.boxes.example.com",
            "8000-x.boxes.example.com.evil.test",
        ] {
            assert_eq!(rewritten(host, "/healthz"), ("/healthz".to_owned(), false), "{host}");
        }
    }
}
