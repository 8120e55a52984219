//! E2B, as the stock `e2b` SDKs speak it (`E2B_API_URL` and `E2B_SANDBOX_URL` pointed at
//! vendbox, `E2B_API_KEY` a vendbox API key whose credits pay).
//!
//! - `sandboxes`: the control plane, path for path (`/sandboxes`, `/v2/sandboxes`, get, kill,
//!   timeout, connect, refreshes; pause, resume, fork, snapshots and network changes answer
//!   E2B's own error shape saying vendbox does not do them). The rules are
//!   `vendbox_service::Sandboxes`'; a sandbox is bought like any box, through the gate.
//! - `envd`: the in-box API (Connect RPC with the JSON codec: `process.Process`,
//!   `filesystem.Filesystem`; `/files`, `/health`), reached by the `E2b-Sandbox-Id` header or
//!   by `49983-{id}.{ports_domain}` host names, and translated here onto boxd's own API
//!   (`connect` holds the protocol's framing). Other ports of a sandbox go to the port proxy.
//!
//! Errors are E2B's: `{"code": <status>, "message": …}` on the control plane, Connect's
//! `{"code": "not_found", "message": …}` on envd.

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use vendbox_service::E2bError;

use super::Routes;
use crate::error::ApiError;

pub mod connect;
pub mod envd;
pub mod files;
pub mod filesystem;
pub mod front;
pub mod process;
pub mod sandboxes;

/// The envd version vendbox's envd speaks as: the SDKs switch features on by it (stdin on
/// demand, the default user, closing stdin, octet-stream uploads).
pub const ENVD_VERSION: &str = "0.5.7";

/// The port E2B's envd listens on in a sandbox.
pub const ENVD_PORT: u16 = 49983;

/// E2B's operations (envd is served by [`front`], outside the API's router).
pub fn routes() -> Routes {
    Routes {
        quick: OpenApiRouter::new()
            .routes(routes!(sandboxes::create, sandboxes::list))
            .routes(routes!(sandboxes::create_v2, sandboxes::list_v2))
            .routes(routes!(sandboxes::get, sandboxes::kill))
            .routes(routes!(sandboxes::set_timeout))
            .routes(routes!(sandboxes::connect))
            .routes(routes!(sandboxes::connect_v2))
            .routes(routes!(sandboxes::refresh))
            .routes(routes!(sandboxes::pause))
            .routes(routes!(sandboxes::resume))
            .routes(routes!(sandboxes::fork))
            .routes(routes!(sandboxes::snapshot))
            .routes(routes!(sandboxes::network)),
        ..Routes::default()
    }
}

/// E2B's error body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct E2bErrorBody {
    /// The HTTP status, again.
    pub code: u16,
    /// What is wrong.
    pub message: String,
}

/// A refusal of the control plane, answered in E2B's shape with the status vendbox gives it.
#[derive(Debug)]
pub struct Refusal(pub ApiError);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let Refusal(error) = self;
        if error.status.is_server_error() && error.code == "internal" {
            return error.into_response();
        }
        let body = E2bErrorBody { code: error.status.as_u16(), message: error.message };
        (error.status, Json(body)).into_response()
    }
}

impl<E: Into<ApiError>> From<E> for Refusal {
    fn from(e: E) -> Self {
        Refusal(e.into())
    }
}

impl From<E2bError> for ApiError {
    fn from(e: E2bError) -> Self {
        let code = e.code();
        match e {
            E2bError::TemplateNotFound(_) | E2bError::NotFound(_) => ApiError::not_found(code, e.to_string()),
            E2bError::Lease(e) => e.into(),
        }
    }
}
