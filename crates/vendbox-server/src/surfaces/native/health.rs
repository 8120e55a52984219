//! `GET /healthz`: liveness and store reachability.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use crate::app::AppState;
use crate::error::ApiError;

/// Health of this vendbox.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` when the store answers.
    #[schema(example = "ok")]
    pub status: &'static str,
    /// vendbox version.
    pub version: &'static str,
    /// `sqlite` or `postgres`.
    pub store: &'static str,
}

/// Liveness probe: answers 200 when the store answers, 503 otherwise.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "health",
    responses(
        (status = 200, description = "Serving", body = Health),
        (status = 503, description = "The store does not answer", body = crate::error::ErrorBody),
    )
)]
pub async fn healthz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    let store = state.records().ping().await.map_err(|e| {
        tracing::error!(error = %e, "store does not answer");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "the store does not answer")
    })?;
    Ok(Json(Health { status: "ok", version: env!("CARGO_PKG_VERSION"), store }))
}
