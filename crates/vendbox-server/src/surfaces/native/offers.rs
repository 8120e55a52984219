//! `GET /v1/offers` and `GET /v1/offers/{id}`: the catalog, with prices in USDC.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use vendbox_core::{
    ActionRule, CreditsPolicy, DurationRule, Offer, OfferId, OfferKind, PriceRule, QuoteParams, Resources,
    Usdc,
};

use crate::app::AppState;
use crate::error::ApiError;

/// An offer as buyers see it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OfferView {
    /// Stable id, used in quotes and purchases.
    pub id: OfferId,
    /// What is sold.
    pub kind: OfferKind,
    /// The API surface that sells it first.
    pub surface: String,
    /// One line.
    pub title: String,
    /// What it is good for.
    pub description: String,
    /// Compute behind it.
    pub resources: Resources,
    /// How long it lasts.
    pub duration: DurationRule,
    /// Its command budget.
    pub actions: ActionRule,
    /// Regions to choose from.
    pub regions: Vec<String>,
    /// Region when none is named.
    pub default_region: Option<String>,
    /// Images to choose from.
    pub images: Vec<String>,
    /// Image when none is named.
    pub default_image: Option<String>,
    /// How the price is computed, in USDC.
    pub pricing: PriceRule,
    /// The price in USDC when it does not depend on the buyer's choices (fixed packages, locks,
    /// paid calls); null when it does (then ask `POST /v1/quotes`).
    pub price_usdc: Option<Usdc>,
    /// The same price in atomic units (6 decimals), as a string.
    pub price_atomic: Option<String>,
    /// Whether it can be bought now.
    pub available: bool,
    /// Why not, when this host cannot make it (an image it has not built).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable_reason: Option<String>,
    /// Whether its box reaches the internet (under this vendbox's egress policy); absent for
    /// offers that sell no box.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<bool>,
    /// Surface-specific names (a VpsAgent `sku`, a plan `type`).
    pub labels: BTreeMap<String, String>,
}

impl OfferView {
    fn of(offer: &Offer) -> Self {
        let mut always = offer.clone();
        always.available = true;
        let fixed = always.quote(&QuoteParams::default()).ok().map(|t| t.price);
        Self {
            id: offer.id.clone(),
            kind: offer.kind,
            surface: offer.surface.clone(),
            title: offer.title.clone(),
            description: offer.description.clone(),
            resources: offer.resources.clone(),
            duration: offer.duration,
            actions: offer.actions,
            regions: offer.regions.clone(),
            default_region: offer.default_region.clone(),
            images: offer.images.clone(),
            default_image: offer.default_image.clone(),
            pricing: offer.price,
            price_usdc: fixed,
            price_atomic: fixed.map(|p| p.atomic().to_string()),
            available: offer.available,
            unavailable_reason: offer.unavailable_reason.clone(),
            egress: matches!(offer.kind, vendbox_core::OfferKind::Sandbox | vendbox_core::OfferKind::Machine)
                .then(|| offer.includes_egress()),
            labels: offer.labels.clone(),
        }
    }
}

/// The list of offers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OfferList {
    /// Offers in catalog order.
    pub offers: Vec<OfferView>,
    /// How many.
    pub count: usize,
    /// Rules for buying from prepaid credits.
    pub credits: CreditsPolicy,
}

/// Filters for the offer list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OfferFilter {
    /// Only offers of this kind.
    pub kind: Option<OfferKind>,
    /// Only offers of this surface (`h3retik`, `vpsagent`, …).
    pub surface: Option<String>,
}

/// Lists every offer for sale, with its price in USDC.
#[utoipa::path(
    get,
    path = "/v1/offers",
    operation_id = "listOffers",
    tag = "catalog",
    params(OfferFilter),
    responses(
        (status = 200, description = "The catalog", body = OfferList),
        (status = 400, description = "Bad filter", body = crate::error::ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    filter: Result<Query<OfferFilter>, QueryRejection>,
) -> Result<Json<OfferList>, ApiError> {
    let Query(filter) =
        filter.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let offers: Vec<OfferView> = state
        .catalog
        .offers
        .iter()
        .filter(|o| filter.kind.is_none_or(|k| o.kind == k))
        .filter(|o| filter.surface.as_deref().is_none_or(|s| o.surface == s))
        .map(OfferView::of)
        .collect();
    Ok(Json(OfferList { count: offers.len(), offers, credits: state.catalog.credits }))
}

/// One offer.
#[utoipa::path(
    get,
    path = "/v1/offers/{id}",
    operation_id = "getOffer",
    tag = "catalog",
    params(("id" = String, Path, description = "Offer id")),
    responses(
        (status = 200, description = "The offer", body = OfferView),
        (status = 404, description = "No such offer", body = crate::error::ErrorBody),
    )
)]
pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<OfferView>, ApiError> {
    let offer = state.catalog.offer(&id).map_err(|e| ApiError::not_found("unknown_offer", e.to_string()))?;
    Ok(Json(OfferView::of(offer)))
}
