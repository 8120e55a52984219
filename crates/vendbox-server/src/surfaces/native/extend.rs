//! `POST /v1/boxes/{id}/extend`: more time for an active box, paid like its purchase (the
//! offer's per-minute price, without its base), with a token carrying `extend` (the root token
//! does). The expiry moves only once the payment settled.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use vendbox_core::{Capability, DurationRule, PriceRule, Usdc};

use super::boxes::{sell_extension, service};
use crate::app::AppState;
use crate::auth::optional_bearer;
use crate::error::ApiError;
use crate::gate;
use crate::json::ApiJson;

/// More time to buy.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    /// Minutes to add, at least 1 and at most what the offer sells at once.
    #[schema(example = 30, minimum = 1)]
    pub minutes: u32,
}

/// An extension bought.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Extended {
    /// The box.
    pub id: String,
    /// Minutes added.
    pub minutes: u32,
    /// What they cost, in USDC.
    pub price_usdc: Usdc,
    /// The box's new end.
    pub expires_at: DateTime<Utc>,
}

/// Adds minutes to an active box; paid (x402, MPP or credits).
#[utoipa::path(post, path = "/v1/boxes/{id}/extend", operation_id = "extendBox", tag = "boxes",
    security(("lease_token" = [])), params(("id" = String, Path, description = "Box id")), request_body = ExtendRequest,
    responses((status = 200, description = "Extended and paid", body = Extended),
        (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody),
        (status = 402, description = "Payment required"),
        (status = 409, description = "`not_active` (only an active box can be extended) or `not_extendable` (a fixed package)", body = crate::error::ErrorBody)))]
pub async fn extend(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<ExtendRequest>,
) -> Result<Response, ApiError> {
    let boxes = service(&state)?;
    let lease = boxes.open(&id, optional_bearer(&headers).as_ref(), Capability::Extend).await?;
    let offer = state.catalog.now().offer(lease.offer_id.as_str())?.clone();
    let DurationRule::Range { max_minutes: most, .. } = offer.duration else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_extendable",
            format!("`{}` is sold as a fixed package and cannot be extended; buy another box", offer.id),
        ));
    };
    let minutes = request.minutes;
    if minutes == 0 || minutes > most {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "out_of_range",
            format!("`minutes` must be between 1 and {most} (the most this box sells at once)"),
        )
        .with_field("minutes"));
    }
    let price = PriceRule { base: Usdc::ZERO, ..offer.price }.price(minutes, 0)?;
    let extension = boxes.extension(&lease, minutes)?;
    let answer =
        Extended { id: lease.id.to_string(), minutes, price_usdc: price, expires_at: extension.until };
    let path = format!("/v1/boxes/{id}/extend");
    let sold = sell_extension(&state, &headers, extension, price, &path, &offer.title, Json(answer)).await?;
    Ok(gate::respond(sold, |answer| answer))
}
