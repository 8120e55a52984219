//! envd, the in-sandbox API of E2B, served by the host for a sandbox [`super::front`] picked:
//! `POST /process.Process/*` and `POST /filesystem.Filesystem/*` (Connect RPC, JSON codec),
//! `GET`/`POST /files` and `GET /health`. A call presents the sandbox's envd access token
//! (`X-Access-Token`, its lease's root token) and is translated onto the box's boxd.
//!
//! Why here and not in boxd: boxd is PID 1 of every box and its answers are hostile input;
//! decoding Connect on the host keeps the protocol, the token check and the limits on the
//! host's side, boxd keeps one API (the SSH gateway and the native API use it too), and a
//! sandbox's envd cannot be replaced by anything running in it.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use vendbox_box::BoxdClient;
use vendbox_core::{Lease, SecretToken};
use vendbox_service::{Boxes, E2bSandbox, Sandboxes};

use super::connect::{Code, RpcError};
use super::{files, filesystem, process};
use crate::app::AppState;
use crate::surfaces::native::boxes as native;

/// The header the SDKs send the envd access token in.
pub const ACCESS_TOKEN: &str = "x-access-token";

/// The sandbox a request to envd is for, as [`super::front`] found it.
#[derive(Debug, Clone)]
pub struct SandboxTarget(pub String);

/// An opened sandbox: its record, lease, box service and boxd.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The sandbox's record (its environment variables).
    pub sandbox: E2bSandbox,
    /// Its lease, usable.
    pub lease: Lease,
    /// The box service.
    pub boxes: Arc<Boxes>,
    /// Its boxd.
    pub boxd: BoxdClient,
}

/// Opens the sandbox a request is for by its access token.
pub async fn open(state: &AppState, headers: &HeaderMap, target: &SandboxTarget) -> Result<Opened, RpcError> {
    let token = headers
        .get(ACCESS_TOKEN)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(SecretToken::presented);
    let boxes = native::service(state)?;
    let (sandbox, lease) = Sandboxes::new(boxes.clone())
        .open(&target.0, token.as_ref())
        .await
        .map_err(|e| RpcError::from(crate::error::ApiError::from(e)))?;
    let boxd = boxes.boxd(&lease)?;
    Ok(Opened { sandbox, lease, boxes, boxd })
}

impl From<vendbox_service::LeaseError> for RpcError {
    fn from(e: vendbox_service::LeaseError) -> Self {
        RpcError::from(crate::error::ApiError::from(e))
    }
}

/// envd's routes, for requests [`super::front`] sends here with a [`SandboxTarget`].
pub fn router(state: AppState, max_file_bytes: usize) -> Router {
    Router::new()
        .route("/process.Process/{method}", post(process_call))
        .route("/filesystem.Filesystem/{method}", post(filesystem_call))
        .route(
            "/files",
            get(files::download).post(files::upload).layer(DefaultBodyLimit::max(max_file_bytes)),
        )
        .route("/health", get(health))
        .fallback(|| async { RpcError::new(Code::NotFound, "envd has no such route").into_response() })
        .layer(DefaultBodyLimit::max(super::connect::MAX_MESSAGE_BYTES))
        .with_state(state)
}

/// `GET /health`: envd answers (204) once the sandbox's box does; 502 for a sandbox that is not
/// running.
async fn health(
    State(state): State<AppState>,
    Extension(target): Extension<SandboxTarget>,
    headers: HeaderMap,
) -> Response {
    match open(&state, &headers, &target).await {
        Ok(opened) => match opened.boxd.health().await {
            Ok(_) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => RpcError::from(e).into_response(),
        },
        // As E2B's proxy answers for a sandbox that is not running (the SDKs' `is_running` reads
        // it so).
        Err(e) if e.code == Code::NotFound => (
            StatusCode::BAD_GATEWAY,
            axum::Json(serde_json::json!({ "code": 502, "message": format!("sandbox {} is not running: {}", target.0, e.message) })),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn process_call(
    State(state): State<AppState>,
    Extension(target): Extension<SandboxTarget>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    process::call(&state, &target, &method, &headers, body).await
}

async fn filesystem_call(
    State(state): State<AppState>,
    Extension(target): Extension<SandboxTarget>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    filesystem::call(&state, &target, &method, &headers, &body).await
}
