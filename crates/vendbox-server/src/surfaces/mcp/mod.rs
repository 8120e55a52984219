//! MCP, the Model Context Protocol: vendbox's native API as tools an agent calls (offers and
//! quotes, boxes and machines, commands with progress, files, SSH, extensions, locks, credits).
//!
//! One implementation of the tools ([`Tools`]) speaks the native HTTP API through a
//! [`NativeApi`], whoever serves it: at `/mcp` (streamable HTTP, [`route`]) the server hands each
//! call to its own router in process, with the caller's API key; `vendbox mcp` (stdio,
//! [`serve_stdio`]) sends them to a vendbox URL, paying with an API key's credits or a wallet
//! within a spend cap. Speaking HTTP rather than calling the services keeps every rule
//! (authentication, the payment gate, prices, tokens, limits) where the native API applies it,
//! once, and makes the two transports answer alike.

mod args;
mod calls;
mod sse;
mod tools;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use rmcp::ServiceExt as _;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tower::ServiceExt as _;
use vendbox_core::{Principal, Usdc};

use crate::error::ApiError;

pub use axum::extract::Request;
pub use tools::Tools;

/// A native API answer.
pub type Response = axum::http::Response<Body>;

/// Where the MCP endpoint is served.
pub const PATH: &str = "/mcp";

/// How much a request may spend, and with what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    /// Sent with no account and no payment: a paid route answers its 402, which tells the price.
    Probe,
    /// Sent as the caller's account (its API key), never paid by a wallet.
    Free,
    /// Sent as the caller's account; a 402 may be paid by the caller's wallet up to this much.
    UpTo(Usdc),
}

/// A boxed future of a native API answer.
pub type Answer = Pin<Box<dyn Future<Output = Result<Response, String>> + Send>>;

/// The native HTTP API, wherever it is: this server's router in process, or a vendbox URL.
pub trait NativeApi: Send + Sync + std::fmt::Debug + 'static {
    /// Sends `request` (a path and query under the API's root, the lease's or lock's bearer
    /// token, a body), spending as `spend` says; an error when the API could not be reached.
    fn send(&self, request: Request, spend: Spend) -> Answer;
}

/// This server's own router, called in process: the request passes every layer an HTTP
/// request does (authentication, the gate, limits), without a socket.
#[derive(Debug, Clone)]
pub struct InProcess(pub Router);

impl NativeApi for InProcess {
    fn send(&self, request: Request, _spend: Spend) -> Answer {
        let router = self.0.clone();
        Box::pin(async move { router.oneshot(request).await.map_err(|e| e.to_string()) })
    }
}

/// The `/mcp` route over `api` (the rest of the router, without `/mcp`): streamable HTTP, for
/// callers with an API key (`X-API-Key` or `Authorization: Bearer vbk_…`, checked by
/// `auth::authenticate` in front of it); the tools act as that key's account.
pub fn route(api: Router) -> Router {
    let api: Arc<dyn NativeApi> = Arc::new(InProcess(api));
    let book = calls::TokenBook::shared();
    let service = StreamableHttpService::new(
        move || Ok(Tools::new(api.clone(), book.clone())),
        Arc::new(LocalSessionManager::default()),
        // The Host check defends servers on a laptop from DNS rebinding; this one is an API
        // that authenticates every request with a key, reached under the operator's names.
        StreamableHttpServerConfig::default().disable_allowed_hosts(),
    );
    Router::new().route_service(PATH, service).layer(middleware::from_fn(require_key))
}

/// Refuses a request to `/mcp` that carries no account (401 `auth_required`).
async fn require_key(request: Request, next: Next) -> Response {
    if request.extensions().get::<Principal>().is_none() {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "auth_required",
            "send an API key as `X-API-Key: vbk_…` or `Authorization: Bearer vbk_…`; a wallet makes \
             one with POST /compute/api-keys",
        )
        .into_response();
    }
    next.run(request).await
}

/// A request's parts, for a [`NativeApi`] that sends it elsewhere: method, path and query,
/// headers, and the body's bytes (at most `limit`).
pub async fn request_parts(
    request: Request,
    limit: usize,
) -> Result<(String, String, Vec<(String, Vec<u8>)>, Vec<u8>), String> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, limit).await.map_err(|e| e.to_string())?;
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect();
    let path = parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_owned(), ToString::to_string);
    Ok((parts.method.as_str().to_owned(), path, headers, body.to_vec()))
}

/// A response received elsewhere: its status, headers, and its body's chunks as they arrive.
pub fn response(
    status: u16,
    headers: &[(String, Vec<u8>)],
    chunks: tokio::sync::mpsc::Receiver<Result<Vec<u8>, String>>,
) -> Result<Response, String> {
    let mut builder = axum::http::Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(name.as_str(), value.as_slice());
    }
    let stream = futures_util::stream::unfold(chunks, |mut chunks| async move {
        chunks
            .recv()
            .await
            .map(|chunk| (chunk.map(axum::body::Bytes::from).map_err(std::io::Error::other), chunks))
    });
    builder.body(Body::from_stream(stream)).map_err(|e| e.to_string())
}

/// Serves the tools over standard input and output until the client closes them.
pub async fn serve_stdio(api: Arc<dyn NativeApi>) -> Result<(), String> {
    let tools = Tools::new(api, calls::TokenBook::shared());
    let running = tools.serve(rmcp::transport::stdio()).await.map_err(|e| e.to_string())?;
    running.waiting().await.map_err(|e| e.to_string())?;
    Ok(())
}
