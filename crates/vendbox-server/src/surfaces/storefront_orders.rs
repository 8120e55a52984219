//! The Agentic Compute Storefront's MPP orders, path for path
//! (`../shared/seeds/agentic-compute-storefront.openapi.json`): `POST
//! /api/machine/mpp/orders/validate` (the quote and the accepted MPP methods, nothing changes),
//! `POST /api/machine/mpp/orders` (without a credential: 402 with the gate's challenges, MPP's in
//! `WWW-Authenticate`, and `{order_id, status: "unpaid"}`; the identical body again with
//! `Authorization: Payment …`: 202 with the order, the machine and its management tokens, and
//! `Payment-Receipt`) and `GET /api/machine/mpp/orders/{order_id}`.
//!
//! The order's idempotency key is its `request_id`, or the `Idempotency-Key` header when one is
//! sent; the order id is derived from it, so validation, the unpaid request and the paid retry
//! name the same order. A key is claimed in the store before the work (as `POST /api/machines`
//! claims its `request_id`): sent again while it is served, it is refused
//! (`request_in_progress`); once its order settled, it answers the settled order again (without
//! the tokens, shown once) and charges nothing; with another body, `request_id_reused`. One key
//! makes one order, one machine and one transfer however often it is sent.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use vendbox_core::{Capability, Usdc};

use super::storefront::{self, CreateMachineRequest, MachineWithManagement, ManagementTokens, Order};
use crate::app::AppState;
use crate::error::ApiError;
use crate::json::ApiJson;
use crate::surfaces::Routes;
use crate::surfaces::native::boxes as native;

/// The header a client may name its own idempotency key in.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The most of a 402's body read to reshape it.
const MAX_CHALLENGE_BYTES: usize = 64 * 1024;

/// The seed's `CheckoutQuote`: the price in US cents (rounded up from USDC's atomic units).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CheckoutQuote {
    /// The product.
    pub product_id: String,
    /// Lease length.
    pub duration_minutes: u32,
    /// The base fee.
    pub base_fee_cents: u64,
    /// The price of a minute.
    pub unit_price_cents_per_minute: u64,
    /// What the order costs.
    pub amount_cents: u64,
    /// The same, as `D.CC`.
    pub amount: String,
    /// Always `usd` (paid in USDC).
    pub currency: &'static str,
}

/// The seed's `ValidateOrderResponse`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ValidateOrderResponse {
    /// Always `mpp`.
    pub protocol: &'static str,
    /// The MPP payment methods accepted (`evm`).
    pub methods: Vec<String>,
    /// Always `machine_lease`.
    pub product_type: &'static str,
    /// The price.
    pub quote: CheckoutQuote,
    /// The request's idempotency key, to send again on `POST /api/machine/mpp/orders`.
    pub request_id: String,
}

/// The seed's `MppOrder`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MppOrder {
    /// `order_` and 32 hex digits, derived from the idempotency key.
    pub order_id: String,
    /// `unpaid` or `settled`.
    pub status: String,
    /// `unpaid` or `paid`.
    pub payment_status: String,
    /// Whether it was paid.
    pub is_paid: bool,
    /// `payment_required`, `payment_in_progress` or `machine_ready`.
    pub current_step: String,
    /// Where to poll it.
    pub order_complete_url: String,
    /// The machine and its tokens: only in the answer to the paid request.
    #[serde(default, skip_serializing_if = "Option::is_none", skip_deserializing)]
    #[schema(value_type = Option<Object>)]
    pub machine: Option<MachineWithManagement>,
}

/// The MPP orders' operations.
pub fn routes() -> Routes {
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    Routes {
        quick: OpenApiRouter::new().routes(routes!(validate)).routes(routes!(create)).routes(routes!(get)),
        ..Routes::default()
    }
}

/// Checks an order and prices it: no payment is asked for and nothing is made.
#[utoipa::path(post, path = "/api/machine/mpp/orders/validate", operation_id = "validateOrder", tag = "storefront",
    request_body = CreateMachineRequest,
    responses((status = 200, body = ValidateOrderResponse),
        (status = 400, description = "A bad body", body = storefront::StorefrontError)))]
pub async fn validate(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateMachineRequest>,
) -> Result<Json<ValidateOrderResponse>, ApiError> {
    let Order { offer, params, .. } = storefront::order(&state, &request)?;
    let price = offer.quote(&params)?.price;
    let quote = CheckoutQuote {
        product_id: request.product_id,
        duration_minutes: request.duration_minutes,
        base_fee_cents: cents(offer.price.base),
        unit_price_cents_per_minute: cents(offer.price.per_minute),
        amount_cents: cents(price),
        amount: format!("{}.{:02}", cents(price) / 100, cents(price) % 100),
        currency: "usd",
    };
    let methods = if state.payments.methods().iter().any(|m| m.name() == "mpp") {
        vec![vendbox_pay::mpp::evm::METHOD.to_owned()]
    } else {
        Vec::new()
    };
    Ok(Json(ValidateOrderResponse {
        protocol: "mpp",
        methods,
        product_type: "machine_lease",
        quote,
        request_id: request.request_id,
    }))
}

/// Creates an order: 402 with the MPP challenges and `{order_id, status: "unpaid"}` until the
/// identical body comes with a credential, then 202 with the paid order and its machine.
#[utoipa::path(post, path = "/api/machine/mpp/orders", operation_id = "createOrder", tag = "storefront",
    request_body = CreateMachineRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "The order's idempotency key instead of request_id")),
    responses((status = 202, description = "Order settled: the order, the machine and its tokens (shown once), `Payment-Receipt`", body = MppOrder),
        (status = 400, description = "A bad body, or a key in use (`request_in_progress`) or sent with another body (`request_id_reused`)", body = storefront::StorefrontError),
        (status = 402, description = "MPP payment required: `WWW-Authenticate` challenges; body `{order_id, status: \"unpaid\"}`")))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<CreateMachineRequest>,
) -> Result<Response, ApiError> {
    let Order { offer, params, key } = storefront::order(&state, &request)?;
    let idempotency = headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .unwrap_or(&request.request_id);
    let order_id = order_id(idempotency);
    let claim = claim_key(&order_id);
    let url = state.payments.url(&format!("/api/machine/mpp/orders/{order_id}"));
    let boxes = native::service(&state)?;
    let body_hash = storefront::hex_sha256(&serde_json::to_vec(&request).unwrap_or_default());
    match boxes.claim_request(&claim, &body_hash).await? {
        None => {}
        Some((hash, Some(answer))) if hash == body_hash => {
            let order: MppOrder = serde_json::from_str(&answer).map_err(|e| ApiError::internal(&e))?;
            return Ok((StatusCode::ACCEPTED, Json(order)).into_response());
        }
        Some((hash, _)) if hash != body_hash => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "request_id_reused",
                "this order's key was sent with another body; use a new request_id for a new order",
            )
            .with_field("request_id"));
        }
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "request_in_progress",
                "this order is being paid for; send it again in a moment",
            )
            .with_field("request_id"));
        }
    }
    let capabilities = vec![Capability::Read, Capability::Extend, Capability::Terminate];
    let access = native::Access { ssh_keys: vec![key], capabilities };
    let path = "/api/machine/mpp/orders";
    let bought = native::buy(&state, &headers, offer.id.as_str(), &params, path, access).await;
    match &bought {
        Ok(Ok(paid)) => {
            let settled = settled(&order_id, &url, None);
            let answer = serde_json::to_string(&settled).map_err(|e| ApiError::internal(&e))?;
            boxes.finish_request(&claim, Some(paid.value.lease.id), &answer).await?;
        }
        _ => boxes.release_request(&claim).await,
    }
    let response = crate::gate::respond(bought?, |made| {
        let management = ManagementTokens {
            read_token: made.token(Capability::Read),
            extend_token: made.token(Capability::Extend),
            terminate_token: made.token(Capability::Terminate),
        };
        let machine = MachineWithManagement { machine: storefront::machine(&made.lease, &state), management };
        (StatusCode::ACCEPTED, Json(settled(&order_id, &url, Some(machine))))
    });
    if response.status() != StatusCode::PAYMENT_REQUIRED {
        return Ok(response);
    }
    Ok(unpaid(response, &order_id).await)
}

/// The order, paid or not.
#[utoipa::path(get, path = "/api/machine/mpp/orders/{order_id}", operation_id = "getOrder", tag = "storefront",
    params(("order_id" = String, Path, description = "The order's id")),
    responses((status = 200, body = MppOrder),
        (status = 404, description = "No such order", body = storefront::StorefrontError)))]
pub async fn get(
    State(state): State<AppState>,
    Path(order_id): Path<String>,
) -> Result<Json<MppOrder>, ApiError> {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no order {order_id}"));
    let well_formed = order_id
        .strip_prefix("order_")
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    if !well_formed {
        return Err(not_found());
    }
    let url = state.payments.url(&format!("/api/machine/mpp/orders/{order_id}"));
    match native::service(&state)?.request_claim(&claim_key(&order_id)).await? {
        Some((_, Some(answer))) => {
            Ok(Json(serde_json::from_str(&answer).map_err(|e| ApiError::internal(&e))?))
        }
        Some((_, None)) => {
            Ok(Json(MppOrder { current_step: "payment_in_progress".into(), ..unpaid_order(&order_id, &url) }))
        }
        None => Err(not_found()),
    }
}

/// The order id of idempotency key `key`.
fn order_id(key: &str) -> String {
    let hash = storefront::hex_sha256(format!("mpp-order\0{key}").as_bytes());
    format!("order_{}", &hash[..32])
}

/// The store's claim of order `order_id`.
fn claim_key(order_id: &str) -> String {
    format!("mpp-{order_id}")
}

fn unpaid_order(order_id: &str, url: &str) -> MppOrder {
    MppOrder {
        order_id: order_id.to_owned(),
        status: "unpaid".into(),
        payment_status: "unpaid".into(),
        is_paid: false,
        current_step: "payment_required".into(),
        order_complete_url: url.to_owned(),
        machine: None,
    }
}

fn settled(order_id: &str, url: &str, machine: Option<MachineWithManagement>) -> MppOrder {
    MppOrder {
        order_id: order_id.to_owned(),
        status: "settled".into(),
        payment_status: "paid".into(),
        is_paid: true,
        current_step: "machine_ready".into(),
        order_complete_url: url.to_owned(),
        machine,
    }
}

/// The gate's 402 as the seed has it: the same headers (the challenges), and the body
/// `{order_id, status: "unpaid"}`, with the problem's members when the gate refused a credential.
async fn unpaid(response: Response, order_id: &str) -> Response {
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_CHALLENGE_BYTES).await.unwrap_or_default();
    let gate: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let mut answer = if gate.get("type").is_some() { gate } else { serde_json::json!({}) };
    answer["order_id"] = order_id.into();
    answer["status"] = "unpaid".into();
    let bytes = serde_json::to_vec(&answer).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(bytes))
}

/// Atomic USDC units (10⁻⁶) in US cents, rounded up.
fn cents(amount: Usdc) -> u64 {
    amount.atomic().div_ceil(10_000)
}
