//! `POST /v1/quotes` and `GET /v1/quotes/{id}`: price an offer for the buyer's parameters.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use vendbox_core::{OfferId, Quote, QuoteId, QuoteParams, Usdc};

use crate::app::AppState;
use crate::error::ApiError;
use crate::json::ApiJson;

/// What the buyer wants priced.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuoteRequest {
    /// The offer (`GET /v1/offers`).
    #[schema(example = "h3retik-custom")]
    pub offer_id: String,
    /// Minutes, for offers sold by time within bounds.
    #[schema(example = 20)]
    pub minutes: Option<u32>,
    /// Actions, for offers with a chosen budget.
    #[schema(example = 12)]
    pub actions: Option<u32>,
    /// Region; the offer's default when absent.
    pub region: Option<String>,
    /// Image; the offer's default when absent.
    pub image: Option<String>,
}

/// A priced purchase, valid until `expires_at`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QuoteView {
    /// Quote id.
    pub id: QuoteId,
    /// The offer.
    pub offer_id: OfferId,
    /// Minutes bought.
    pub minutes: Option<u32>,
    /// Actions bought.
    pub actions: Option<u32>,
    /// Region.
    pub region: Option<String>,
    /// Image.
    pub image: Option<String>,
    /// Price in USDC.
    pub price_usdc: Usdc,
    /// Price in atomic units (6 decimals), as a string.
    #[schema(example = "920000")]
    pub price_atomic: String,
    /// Always `USDC`.
    #[schema(example = "USDC")]
    pub currency: &'static str,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// The price holds until then.
    pub expires_at: DateTime<Utc>,
}

impl From<&Quote> for QuoteView {
    fn from(q: &Quote) -> Self {
        Self {
            id: q.id,
            offer_id: q.offer_id.clone(),
            minutes: q.terms.minutes,
            actions: q.terms.actions,
            region: q.terms.region.clone(),
            image: q.terms.image.clone(),
            price_usdc: q.terms.price,
            price_atomic: q.terms.price.atomic().to_string(),
            currency: "USDC",
            created_at: q.created_at,
            expires_at: q.expires_at,
        }
    }
}

/// Prices an offer for the given parameters and keeps the quote for ten minutes.
#[utoipa::path(
    post,
    path = "/v1/quotes",
    operation_id = "createQuote",
    tag = "catalog",
    request_body = QuoteRequest,
    responses(
        (status = 201, description = "Priced", body = QuoteView),
        (status = 400, description = "A field is wrong; `error.field` names it", body = crate::error::ErrorBody),
        (status = 415, description = "Not JSON", body = crate::error::ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<QuoteRequest>,
) -> Result<(StatusCode, Json<QuoteView>), ApiError> {
    let params = QuoteParams {
        minutes: request.minutes,
        actions: request.actions,
        region: request.region,
        image: request.image,
    };
    let quote = state.records().quote(&request.offer_id, &params).await?;
    Ok((StatusCode::CREATED, Json(QuoteView::from(&quote))))
}

/// A quote made earlier.
#[utoipa::path(
    get,
    path = "/v1/quotes/{id}",
    operation_id = "getQuote",
    tag = "catalog",
    params(("id" = String, Path, description = "Quote id")),
    responses(
        (status = 200, description = "The quote", body = QuoteView),
        (status = 404, description = "No such quote", body = crate::error::ErrorBody),
    )
)]
pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<QuoteView>, ApiError> {
    let quote = state.records().quote_of(&id).await?;
    Ok(Json(QuoteView::from(&quote)))
}
