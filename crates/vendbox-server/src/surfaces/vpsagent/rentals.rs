//! VpsAgent's rentals, path for path (`../shared/seeds/vpsagent.md`): `POST /rent` (sku,
//! region), `GET /rentals/{id}` (public snapshot), `POST /rentals/{id}/renew?token=` (1–12
//! periods, paid; `expires_at` moves only once the renewal settled) and
//! `GET /instance/{id}?token=`. A rental is a box reached over the SSH gateway as `root`, with
//! the rental's `root_token` as its password; the payment settles once the box answers.
//!
//! The answers keep the seed's values: a new rental says `pending_settlement` and a renewal
//! `renewing`, the only values the seed gives those answers, although vendbox has settled both
//! before it answers (their `note` says so, and `GET /rentals/{id}` shows `active` at once).
//! Paid answers carry VpsAgent's `X-Payment-Response` ([`super::catalog::with_receipt`]).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use vendbox_core::{Capability, Catalog, Lease, LeaseState, Offer, OfferKind, QuoteParams, SecretToken};

use crate::app::AppState;
use crate::error::ApiError;
use crate::json::{self, ApiJson};
use crate::surfaces::native::boxes as native;

/// The seed's `RentBody`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RentBody {
    /// `sandbox_1h` … `server_large_12mo` (`GET /catalog`).
    #[schema(example = "server_small_1mo")]
    pub sku: String,
    /// Region preference (`US`, `EU`…); the default region when absent or unknown.
    pub region: Option<String>,
}

/// The seed's `RentalCreated`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RentalCreated {
    /// The rental.
    pub rental_id: String,
    /// What was rented.
    pub sku: String,
    /// The address to `ssh` to.
    pub ipv4: Option<String>,
    /// The SSH gateway's port (vendbox serves SSH on its own port, not 22).
    pub ssh_port: Option<u16>,
    /// `ssh -p PORT root@HOST`, ready to paste.
    pub ssh_command: Option<String>,
    /// When it ends, Unix ms.
    pub expires_at: Option<i64>,
    /// Bearer for `GET /instance/{id}` and renewals. Shown here once; treat it as a credential.
    pub root_token: String,
    /// Always `root`.
    pub root_user: &'static str,
    /// The SSH password (the root token itself).
    pub root_password: String,
    /// `pending_settlement`, the seed's only value here; vendbox has in fact settled once the box
    /// answered, so the rental is live when this comes (`GET /rentals/{id}` says `active`).
    #[schema(example = "pending_settlement")]
    pub status: &'static str,
    /// What to do next.
    pub note: String,
}

/// The seed's `RentalStatus`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RentalStatus {
    /// The rental.
    pub rental_id: String,
    /// What was rented.
    pub sku: String,
    /// `sandbox` or `server`.
    pub track: String,
    /// `active` or `expired` (vendbox never leaves a rental pending: it settles before it answers).
    pub status: &'static str,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub expires_at: Option<i64>,
    /// Always null: a rental ends at `expires_at`.
    pub grace_until: Option<i64>,
    /// The transaction that paid for it.
    pub settle_tx_hash: Option<String>,
    /// Renewals so far.
    pub renewal_count: u32,
    /// The transaction of the latest renewal.
    pub last_renewal_tx_hash: Option<String>,
}

/// `?token=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct TokenQuery {
    /// The rental's `root_token`.
    pub token: Option<String>,
}

/// The seed's `RenewBody`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct RenewBody {
    /// How many of the SKU's periods to add, 1 to 12 (default 1).
    #[schema(minimum = 1, maximum = 12)]
    pub periods: Option<u32>,
}

/// The seed's `RenewalCreated`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RenewalCreated {
    /// The rental.
    pub rental_id: String,
    /// `renewing`, the seed's only value here; vendbox has in fact settled the renewal and moved
    /// `expires_at` before answering (`GET /rentals/{id}` says `active`).
    #[schema(example = "renewing")]
    pub status: &'static str,
    /// The new expiry, Unix ms.
    pub current_expires_at: i64,
    /// The same: nothing is left to happen.
    pub predicted_expires_at: i64,
    /// How many renewals the rental has had.
    pub renewal_count: u32,
    /// What happened.
    pub note: String,
}

/// The seed's `InstanceStatus`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InstanceStatus {
    /// The rental.
    pub rental_id: String,
    /// The address to `ssh` to.
    pub ipv4: Option<String>,
    /// Whether its box answers now.
    pub running: bool,
    /// Unix ms.
    pub expires_at: Option<i64>,
    /// `active` or `expired`.
    pub status: &'static str,
    /// Always `root`.
    pub root_user: &'static str,
    /// The SSH password (the root token).
    pub root_password: String,
    /// `ssh -p PORT root@HOST`.
    pub ssh_command: Option<String>,
    /// Why it is not running, when it is not (absent otherwise: the seed types it a string).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

fn ms(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn rental_status(lease: &Lease) -> &'static str {
    if lease.state == LeaseState::Active { "active" } else { "expired" }
}

/// The offer of a VpsAgent SKU: 400 for a SKU the seed does not name, 503 for one this vendbox
/// does not sell.
fn sku_offer<'a>(catalog: &'a Catalog, sku: &str) -> Result<&'a Offer, ApiError> {
    let offer = catalog.labelled("sku", sku).find(|o| o.surface == "vpsagent").ok_or_else(|| {
        ApiError::new(StatusCode::BAD_REQUEST, "unknown_sku", format!("`{sku}` is not a SKU (GET /catalog)"))
            .with_field("sku")
    })?;
    if !offer.available || !matches!(offer.kind, OfferKind::Sandbox | OfferKind::Machine) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "sku_unavailable",
            format!("this vendbox does not rent `{sku}` now"),
        ));
    }
    Ok(offer)
}

/// A region preference as one of the offer's regions (`EU` → `europe`); the default otherwise.
fn region(offer: &Offer, asked: Option<&str>) -> Option<String> {
    let asked = asked?.trim().to_ascii_lowercase();
    let asked = match asked.as_str() {
        "eu" => "europe".to_owned(),
        "na" | "usa" => "us".to_owned(),
        other => other.to_owned(),
    };
    offer.regions.iter().find(|r| **r == asked).cloned()
}

/// Rents a SKU: 402 with its price, then a box, paid once it answers.
#[utoipa::path(post, path = "/rent", operation_id = "rent", tag = "vpsagent", request_body = RentBody,
    responses((status = 200, description = "Rented, paid and running; the receipt is in `X-Payment-Response` (base64 JSON with `tx` and `network`)", body = RentalCreated),
        (status = 400, body = crate::error::ErrorBody),
        (status = 402, description = "Payment required (or the payment was refused): x402 v1 body, also in `X-Payment-Required`"),
        (status = 503, description = "SKU not rented here, or no box could be made (nothing charged)", body = crate::error::ErrorBody)))]
pub async fn rent(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RentBody>,
) -> Result<Response, ApiError> {
    let catalog = state.catalog.now();
    let offer = sku_offer(&catalog, &body.sku)?;
    let params = QuoteParams { region: region(offer, body.region.as_deref()), ..QuoteParams::default() };
    let sku = body.sku.clone();
    let ssh = state.ssh.clone();
    let bought =
        native::buy(&state, &headers, offer.id.as_str(), &params, "/rent", native::Access::root(Vec::new()))
            .await?;
    let response = crate::gate::respond(bought, move |made| {
        let token = made.token(Capability::Root);
        let created = RentalCreated {
                rental_id: made.lease.id.to_string(),
                sku,
                ipv4: ssh.as_ref().map(|s| s.host.clone()),
                ssh_port: ssh.as_ref().map(|s| s.port),
                ssh_command: ssh.as_ref().map(|s| s.command("root")),
                expires_at: made.lease.expires_at.map(ms),
                root_password: token.clone(),
                root_token: token,
                root_user: "root",
                status: "pending_settlement",
                note: "Paid and running: vendbox settled once the box answered. ssh as root with root_password, or run ssh_command.".into(),
            };
        (StatusCode::OK, Json(created))
    });
    Ok(super::catalog::with_receipt(response))
}

/// A rental's public lifecycle snapshot.
#[utoipa::path(get, path = "/rentals/{rental_id}", operation_id = "getRental", tag = "vpsagent",
    responses((status = 200, body = RentalStatus), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RentalStatus>, ApiError> {
    let boxes = native::service(&state)?;
    let lease = rental(&state, &id).await?;
    let catalog = state.catalog.now();
    let offer = catalog.offer(lease.offer_id.as_str()).ok();
    let (renewal_count, last_renewal) = boxes.renewals(lease.id).await?;
    Ok(Json(RentalStatus {
        rental_id: lease.id.to_string(),
        sku: offer.and_then(|o| o.labels.get("sku").cloned()).unwrap_or_default(),
        track: offer.and_then(|o| o.labels.get("track").cloned()).unwrap_or_default(),
        status: rental_status(&lease),
        created_at: ms(lease.created_at),
        expires_at: lease.expires_at.map(ms),
        grace_until: None,
        settle_tx_hash: boxes.settlement_of(lease.payment_id).await,
        renewal_count,
        last_renewal_tx_hash: boxes.settlement_of(last_renewal).await,
    }))
}

/// The rental `id`, or 404.
async fn rental(state: &AppState, id: &str) -> Result<Lease, ApiError> {
    let missing = || ApiError::not_found("rental_not_found", format!("there is no rental `{id}`"));
    let lease_id = id.parse().map_err(|_| missing())?;
    native::service(state)?.lease(lease_id).await?.filter(|l| l.box_id.is_some()).ok_or_else(missing)
}

/// The rental `id` if `token` is its root token: 404 and 401 otherwise.
async fn authorized(
    state: &AppState,
    id: &str,
    token: Option<String>,
    wanted: Capability,
) -> Result<Lease, ApiError> {
    let lease = rental(state, id).await?;
    let token = token.filter(|t| !t.is_empty()).map(SecretToken::presented);
    Ok(native::service(state)?.authorize(lease, token.as_ref(), wanted).await?)
}

/// Adds 1–12 of the SKU's periods; paid, and `expires_at` moves only once the renewal settled.
#[utoipa::path(post, path = "/rentals/{rental_id}/renew", operation_id = "renew", tag = "vpsagent",
    params(TokenQuery), request_body(content = Option<RenewBody>, content_type = "application/json"),
    responses((status = 200, description = "Renewed and paid; the receipt is in `X-Payment-Response` (base64 JSON with `tx` and `network`)", body = RenewalCreated),
        (status = 400, description = "`periods` is not 1 to 12, or the body is not JSON", body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody),
        (status = 402, description = "Payment required (or the payment was refused): x402 v1 body, also in `X-Payment-Required`"),
        (status = 404, body = crate::error::ErrorBody), (status = 409, description = "The rental is not active", body = crate::error::ErrorBody)))]
pub async fn renew(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<TokenQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let lease = authorized(&state, &id, query.token, Capability::Extend).await?;
    let request: RenewBody = json::parse_optional(&body)?;
    let periods = request.periods.unwrap_or(1);
    if !(1..=12).contains(&periods) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "out_of_range",
            "`periods` must be between 1 and 12",
        )
        .with_field("periods"));
    }
    let offer = state.catalog.now().offer(lease.offer_id.as_str())?.clone();
    let terms = offer.quote(&QuoteParams::default())?;
    let minutes = terms.minutes.unwrap_or(0).saturating_mul(periods);
    let price = terms.price.checked_mul(u64::from(periods)).ok_or(vendbox_core::CoreError::PriceOverflow)?;
    let boxes = native::service(&state)?;
    let extension = boxes.extension(&lease, minutes)?;
    let (count, _) = boxes.renewals(lease.id).await?;
    let body = RenewalCreated {
        rental_id: lease.id.to_string(),
        status: "renewing",
        current_expires_at: ms(extension.until),
        predicted_expires_at: ms(extension.until),
        renewal_count: count + 1,
        note: "Settled: expires_at has moved to current_expires_at.".into(),
    };
    let path = format!("/rentals/{id}/renew");
    let sold = native::sell_extension(
        &state,
        &headers,
        extension,
        price,
        &path,
        &offer.title,
        (StatusCode::OK, Json(body)),
    )
    .await?;
    Ok(super::catalog::with_receipt(crate::gate::respond(sold, |body| body)))
}

/// Live status: whether the box answers, its address and expiry, and the SSH password.
#[utoipa::path(get, path = "/instance/{rental_id}", operation_id = "getInstance", tag = "vpsagent",
    params(TokenQuery),
    responses((status = 200, body = InstanceStatus), (status = 401, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn instance(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<TokenQuery>,
) -> Result<Json<InstanceStatus>, ApiError> {
    let password = query.token.clone().unwrap_or_default();
    let lease = authorized(&state, &id, query.token, Capability::Root).await?;
    let note = native::service(&state)?.check_usable(&lease).err().map(|e| e.to_string());
    let running = match native::service(&state)?.boxd(&lease) {
        Ok(client) if note.is_none() => client.health().await.is_ok(),
        _ => false,
    };
    Ok(Json(InstanceStatus {
        rental_id: lease.id.to_string(),
        ipv4: state.ssh.as_ref().map(|s| s.host.clone()),
        running,
        expires_at: lease.expires_at.map(ms),
        status: rental_status(&lease),
        root_user: "root",
        root_password: password,
        // `root_password` opens exactly this rental, whatever the user name.
        ssh_command: state.ssh.as_ref().map(|s| s.command("root")),
        note,
    }))
}
