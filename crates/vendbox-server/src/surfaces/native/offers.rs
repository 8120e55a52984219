//! `GET /v1/offers` and `GET /v1/offers/{id}`: the catalog, with prices in USDC.

use std::collections::BTreeMap;
use std::fmt::Write as _;

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
    /// What a purchase includes, in plain words: compute, network, image, SSH, commands and
    /// time (for a box), or what a lock or call gives.
    pub includes: BTreeMap<&'static str, String>,
    /// Surface-specific names (a VpsAgent `sku`, a plan `type`).
    pub labels: BTreeMap<String, String>,
}

impl OfferView {
    /// The view of `offer` on a vendbox whose SSH gateway runs (`ssh`) or not.
    pub fn of(offer: &Offer, ssh: bool) -> Self {
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
            includes: includes(offer, ssh),
            labels: offer.labels.clone(),
        }
    }
}

/// What buying `offer` gives, in words an agent can act on.
fn includes(offer: &Offer, ssh: bool) -> BTreeMap<&'static str, String> {
    let mut out = BTreeMap::new();
    match offer.kind {
        OfferKind::Sandbox | OfferKind::Machine => {
            let r = &offer.resources;
            let mut compute = format!("{} vCPU, {} MiB memory, {} GB disk", r.vcpu, r.memory_mb, r.disk_gb);
            if let Some(gpu) = &r.gpu {
                let _ = write!(compute, ", GPU: {}", serde_json::to_string(gpu).unwrap_or_default());
            }
            out.insert("compute", compute);
            out.insert(
                "network",
                if offer.includes_egress() {
                    "outbound internet access".to_owned()
                } else {
                    "no network access (the box has only its own loopback); its servers are reachable through ports in".to_owned()
                },
            );
            let image = offer.default_image.clone().unwrap_or_else(|| "host".to_owned());
            out.insert(
                "image",
                if offer.images.len() > 1 {
                    format!("{image} by default; also {}", offer.images.join(", "))
                } else {
                    image
                },
            );
            out.insert(
                "ssh",
                if ssh {
                    "yes: give `ssh_public_key` when buying, then use the box's `ssh_command`".to_owned()
                } else {
                    "no: this vendbox runs no SSH gateway (use exec and files)".to_owned()
                },
            );
            out.insert(
                "actions",
                match offer.actions {
                    ActionRule::Unlimited => "unlimited commands".to_owned(),
                    ActionRule::Fixed { actions } => format!("{actions} commands (one action each)"),
                    ActionRule::Range { min, max } => {
                        format!("{min} to {max} commands, chosen at purchase (`actions`)")
                    }
                },
            );
            out.insert(
                "duration",
                match offer.duration {
                    DurationRule::Fixed { minutes } => format!("{minutes} minutes; cannot be extended"),
                    DurationRule::Range { min_minutes, max_minutes, step_minutes } => format!(
                        "{min_minutes} to {max_minutes} minutes in steps of {step_minutes}, chosen at purchase (`minutes`); extendable; unused whole minutes refunded as credits when ended early"
                    ),
                    DurationRule::None => "until ended".to_owned(),
                },
            );
            out.insert("buy", "POST /v1/boxes (or the buy_box MCP tool)".to_owned());
        }
        OfferKind::Lock => {
            if offer.labels.get("operation").map(String::as_str) == Some(vendbox_service::locks::RENEW) {
                out.insert("lock", "more time for a lock you hold, from now".to_owned());
                out.insert("buy", "POST /v1/locks/{key}/renew (or the renew_lock MCP tool)".to_owned());
            } else {
                out.insert(
                    "lock",
                    "a TTL lock on one key with a release token and a fencing token".to_owned(),
                );
                out.insert("buy", "POST /v1/locks/{key} (or the acquire_lock MCP tool)".to_owned());
            }
        }
        OfferKind::Discovery => {
            out.insert("call", "one paid API call".to_owned());
        }
    }
    out
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
    let catalog = state.catalog.now();
    let offers: Vec<OfferView> = catalog
        .offers
        .iter()
        .filter(|o| filter.kind.is_none_or(|k| o.kind == k))
        .filter(|o| filter.surface.as_deref().is_none_or(|s| o.surface == s))
        .map(|o| OfferView::of(o, state.ssh.is_some()))
        .collect();
    Ok(Json(OfferList { count: offers.len(), offers, credits: catalog.credits }))
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
    let catalog = state.catalog.now();
    let offer = catalog.offer(&id).map_err(|e| ApiError::not_found("unknown_offer", e.to_string()))?;
    Ok(Json(OfferView::of(offer, state.ssh.is_some())))
}
