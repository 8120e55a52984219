//! The VpsAgent surface (`../shared/seeds/vpsagent.md`), path for path: `GET /catalog`, paid
//! discovery at the catalog's price. (`GET /healthz` is shared with the native API.) The
//! rentals are in `rentals.rs`.
//!
//! VpsAgent's payment dialect: a 402 carries the x402 v1 body (its `accepts` with both
//! `maxAmountRequired` and `amount`) and `X-Payment-Required` (the gate sends both on every
//! surface), and a paid answer carries `X-Payment-Response`, base64 JSON with the settlement's
//! `tx` and `network`, whichever x402 version paid ([`with_receipt`]).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::Response;
use serde::Serialize;
use vendbox_core::{Catalog, DurationRule, Offer, OfferKind};
use vendbox_pay::wire::{self, SettlementResponse};

use crate::app::AppState;
use crate::error::ApiError;

/// The offer whose price is the catalog call's.
pub const CATALOG_OFFER: &str = "vpsagent-catalog";

/// One rentable SKU, in VpsAgent's shape.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CatalogSku {
    /// `sandbox_1h` … `server_large_12mo`.
    #[schema(example = "sandbox_1h")]
    pub sku: String,
    /// `sandbox` or `server`.
    #[schema(example = "sandbox")]
    pub track: String,
    /// Price in USDC, as a JSON number.
    #[schema(example = 0.5)]
    pub price_usdc: f64,
    /// How long a rental lasts.
    pub duration_minutes: u32,
    /// The least a box of this SKU has.
    pub spec_floor: SpecFloor,
    /// Whether it can be rented now.
    pub available: bool,
    /// What it is for.
    pub description: String,
}

/// A SKU's minimum resources.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SpecFloor {
    /// vCPUs.
    pub vcpu: u32,
    /// Memory in MiB.
    pub memory_mb: u32,
}

/// Lists the rentable SKUs of both tracks. Paid discovery: 0.01 USDC per call by default, settled
/// before the answer is sent, with the receipt in `X-PAYMENT-RESPONSE` / `PAYMENT-RESPONSE`.
#[utoipa::path(
    get,
    path = "/catalog",
    operation_id = "listCatalog",
    tag = "vpsagent",
    responses(
        (status = 200, description = "The SKUs; the receipt is in `X-Payment-Response` (base64 JSON with `tx` and `network`), and in `PAYMENT-RESPONSE` for a v2 payment", body = [CatalogSku]),
        (status = 400, description = "The payment header cannot be read", body = crate::error::ErrorBody),
        (status = 402, description = "Payment required (or the payment sent was refused): x402 v1 body (also base64 in `X-Payment-Required`), v2 `PAYMENT-REQUIRED` header"),
        (status = 503, description = "Payments are not configured, or cannot be verified now", body = crate::error::ErrorBody),
    )
)]
pub async fn catalog(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let catalog = state.catalog.now();
    let offer = catalog.offer(CATALOG_OFFER)?;
    let price = offer.price.price(0, 0)?;
    let charge = state.payments.charge(price, "/catalog", &offer.title)?;
    let skus = skus(&catalog);
    let response =
        crate::gate::pay_on_success(&state.payments, &headers, charge, async move { Ok(Json(skus)) }).await;
    Ok(with_receipt(response))
}

/// VpsAgent's receipt: x402's settlement response with the transaction also as `tx`.
#[derive(Debug, Serialize)]
struct Receipt {
    /// What the gate's receipt said.
    #[serde(flatten)]
    settlement: SettlementResponse,
    /// The settlement's transaction hash, as VpsAgent names it.
    tx: String,
}

/// A paid VpsAgent answer with `X-Payment-Response` (`{tx, network, …}` in base64 JSON), also
/// when a v2 payment paid it (its `PAYMENT-RESPONSE` stays). Other answers are left as they are.
pub fn with_receipt(mut response: Response) -> Response {
    let headers = response.headers();
    let sent = [wire::X_PAYMENT_RESPONSE, wire::PAYMENT_RESPONSE]
        .into_iter()
        .find_map(|name| headers.get(name).and_then(|v| v.to_str().ok()));
    let Some(mut settlement) = sent.and_then(|v| wire::decode_header::<SettlementResponse>(v).ok()) else {
        return response;
    };
    // VpsAgent names networks as x402 v1 does (`base-sepolia`), also for a v2 payment.
    if let Some(network) = vendbox_pay::Network::parse(&settlement.network) {
        settlement.network = network.v1_label();
    }
    let receipt = Receipt { tx: settlement.transaction.clone(), settlement };
    if let Ok(value) = HeaderValue::from_str(&wire::encode_header(&receipt)) {
        let headers = response.headers_mut();
        headers.insert(HeaderName::from_static(wire::X_PAYMENT_RESPONSE), value);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("payment-response, x-payment-response, vendbox-payment-id"),
        );
    }
    response
}

/// The catalog's SKUs: every VpsAgent offer that carries a `sku` label.
pub fn skus(catalog: &Catalog) -> Vec<CatalogSku> {
    catalog
        .offers
        .iter()
        .filter(|o| o.surface == "vpsagent" && o.kind != OfferKind::Discovery)
        .filter_map(sku)
        .collect()
}

fn sku(offer: &Offer) -> Option<CatalogSku> {
    let minutes = match offer.duration {
        DurationRule::Fixed { minutes } => minutes,
        DurationRule::Range { min_minutes, .. } => min_minutes,
        DurationRule::None => 0,
    };
    let price = offer.price.price(minutes, 0).ok()?;
    Some(CatalogSku {
        sku: offer.labels.get("sku")?.clone(),
        track: offer.labels.get("track").cloned().unwrap_or_else(|| "sandbox".into()),
        #[allow(
            clippy::cast_precision_loss,
            reason = "a display price; exact amounts travel as atomic units"
        )]
        price_usdc: price.atomic() as f64 / 1e6,
        duration_minutes: minutes,
        spec_floor: SpecFloor { vcpu: offer.resources.vcpu, memory_mb: offer.resources.memory_mb },
        available: offer.available,
        description: offer.description.clone(),
    })
}
