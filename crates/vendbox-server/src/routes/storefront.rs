//! The Agentic Compute Storefront, path for path (`../shared/seeds/agentic-compute-storefront.openapi.json`):
//! `GET /api/health`, `POST /api/machines` (paid over x402 here; `request_id` makes a request
//! sent twice make one machine and charge once), `GET`/`DELETE /api/machines/{id}` and
//! `POST /api/machines/{id}/extend` (paid; the expiry moves only once the extension settled),
//! with separate read, extend and terminate tokens (bearer, shown once, hashed at rest).
//! A machine is a box reached over the SSH gateway with the key given at creation.

use std::sync::{Arc, Mutex, PoisonError};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vendbox_core::{Capability, Lease, LeaseState, OfferKind, QuoteParams, SecretToken};

use crate::app::AppState;
use crate::auth::optional_bearer;
use crate::boxes::SshKey;
use crate::error::ApiError;
use crate::json::ApiJson;
use crate::routes::boxes as native;

/// The seed's `Health`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StorefrontHealth {
    /// Always `ok`.
    pub status: &'static str,
    /// The products for sale.
    pub products: Vec<String>,
}

/// The seed's `CreateMachineRequest`.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMachineRequest {
    /// Idempotency key (a UUID): the same request sent again makes no second machine.
    pub request_id: String,
    /// `bare-linux-machine` (or another product this vendbox sells).
    pub product_id: String,
    /// Lease length, 15 to 360 minutes.
    #[schema(minimum = 15, maximum = 360)]
    pub duration_minutes: u32,
    /// The SSH public key to log in with.
    pub ssh_public_key: String,
}

/// The seed's `ExtendMachineRequest`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendMachineRequest {
    /// Minutes to add (at least 1).
    #[schema(minimum = 1)]
    pub additional_minutes: u32,
}

/// The seed's `Machine`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Machine {
    /// `machine_` and 16 hex digits.
    pub machine_id: String,
    /// The product.
    pub product: String,
    /// Who runs it.
    pub provider: String,
    /// `provisioning`, `active`, `terminating`, `terminated` or `failed`.
    pub status: String,
    /// Where to `ssh` to.
    pub host: Option<String>,
    /// Always `root`.
    pub username: String,
    /// `ssh -p PORT root@HOST`, ready to paste.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_command: Option<String>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it ends.
    pub expires_at: Option<DateTime<Utc>>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
}

/// The seed's `ManagementTokens`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ManagementTokens {
    /// Reads the machine.
    pub read_token: String,
    /// Extends it.
    pub extend_token: String,
    /// Terminates it.
    pub terminate_token: String,
}

/// The seed's `MachineWithManagement`: the only answer that shows the tokens.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MachineWithManagement {
    /// The machine.
    #[serde(flatten)]
    pub machine: Machine,
    /// Its tokens.
    pub management: ManagementTokens,
}

/// A machine id for a lease: `machine_` and the first 16 hex digits of its id.
fn machine_id(lease: &Lease) -> String {
    let hex: String = lease.id.to_string().chars().filter(char::is_ascii_hexdigit).take(16).collect();
    format!("machine_{hex}")
}

fn machine(lease: &Lease, state: &AppState) -> Machine {
    let status = match lease.state {
        LeaseState::Pending | LeaseState::Provisioning => "provisioning",
        LeaseState::Active => "active",
        LeaseState::Expired | LeaseState::Terminated => "terminated",
        LeaseState::Failed => "failed",
    };
    let product = state
        .catalog
        .offer(lease.offer_id.as_str())
        .ok()
        .and_then(|o| o.labels.get("product_id").cloned())
        .unwrap_or_else(|| lease.offer_id.to_string());
    Machine {
        machine_id: machine_id(lease),
        product,
        provider: "vendbox".into(),
        status: status.into(),
        host: state.ssh.as_ref().map(|s| s.host.clone()),
        username: "root".into(),
        // The lease's id as the user opens exactly this machine, whoever else holds the key.
        ssh_command: state.ssh.as_ref().map(|s| s.command(&lease.id.to_string())),
        created_at: lease.created_at,
        expires_at: lease.expires_at,
        failure_reason: lease.failure_reason.clone(),
    }
}

/// Service health and the products for sale.
#[utoipa::path(get, path = "/api/health", operation_id = "health", tag = "storefront",
    responses((status = 200, body = StorefrontHealth)))]
pub async fn health(State(state): State<AppState>) -> Json<StorefrontHealth> {
    let products = state
        .catalog
        .offers
        .iter()
        .filter(|o| o.available && o.kind == OfferKind::Machine)
        .filter_map(|o| o.labels.get("product_id").cloned())
        .collect();
    Json(StorefrontHealth { status: "ok", products })
}

fn bad(code: &'static str, field: &str, message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message).with_field(field)
}

/// Leases a machine: 402 with its price, then a box with the key installed, paid once it
/// answers. The same `request_id` again answers the same machine (without its tokens) and
/// charges nothing.
#[utoipa::path(post, path = "/api/machines", operation_id = "createMachine", tag = "storefront",
    request_body = CreateMachineRequest,
    responses((status = 202, body = MachineWithManagement), (status = 200, description = "The same request_id again: the machine it made", body = Machine),
        (status = 400, body = crate::error::ErrorBody), (status = 402, description = "Payment required (or the payment was refused)"),
        (status = 409, description = "The request_id was used with another body, or its first request is still running", body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<CreateMachineRequest>,
) -> Result<Response, ApiError> {
    if uuid::Uuid::parse_str(&request.request_id).is_err() || request.request_id.len() != 36 {
        return Err(bad("bad_request_id", "request_id", "`request_id` must be a UUID".into()));
    }
    let offer = state
        .catalog
        .offers
        .iter()
        .find(|o| o.kind == OfferKind::Machine && o.labels.get("product_id") == Some(&request.product_id))
        .ok_or_else(|| {
            bad("unknown_product", "product_id", format!("`{}` is not a product here", request.product_id))
        })?
        .clone();
    if !(15..=360).contains(&request.duration_minutes) {
        return Err(bad(
            "out_of_range",
            "duration_minutes",
            "`duration_minutes` must be between 15 and 360".into(),
        ));
    }
    let key = SshKey::parse(&request.ssh_public_key, "ssh_public_key")?;
    let params = QuoteParams { minutes: Some(request.duration_minutes), ..QuoteParams::default() };
    offer.quote(&params)?;
    let boxes = native::service(&state)?;
    let body_hash = hex_sha256(&serde_json::to_vec(&request).unwrap_or_default());
    match boxes.claim_request(&request.request_id, &body_hash).await? {
        None => {}
        Some((hash, Some(answer))) if hash == body_hash => {
            let machine: Machine = serde_json::from_str(&answer).map_err(|e| ApiError::internal(&e))?;
            let lease = boxes.lease_by_prefix(&lease_prefix(&machine.machine_id)).await?;
            let current = lease.map_or(machine, |l| self::machine(&l, &state));
            return Ok((StatusCode::OK, Json(current)).into_response());
        }
        Some((hash, _)) if hash != body_hash => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "request_id_reused",
                "this request_id was sent with another body; use a new request_id for a new machine",
            ));
        }
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "request_in_progress",
                "a request with this request_id is still being served; send it again in a moment",
            ));
        }
    }
    let made: Arc<Mutex<Option<(vendbox_core::LeaseId, Machine)>>> = Arc::default();
    let slot = made.clone();
    let answer_state = state.clone();
    let capabilities = vec![Capability::Read, Capability::Extend, Capability::Terminate];
    let access = native::Access { ssh_keys: vec![key], capabilities };
    let response =
        native::buy(&state, &headers, offer.id.as_str(), &params, "/api/machines", access, move |p| {
            let machine = machine(&p.lease, &answer_state);
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some((p.lease.id, machine.clone()));
            let management = ManagementTokens {
                read_token: p.token(Capability::Read),
                extend_token: p.token(Capability::Extend),
                terminate_token: p.token(Capability::Terminate),
            };
            (StatusCode::ACCEPTED, Json(MachineWithManagement { machine, management })).into_response()
        })
        .await;
    let made = made.lock().unwrap_or_else(PoisonError::into_inner).take();
    let succeeded = matches!(&response, Ok(r) if r.status().is_success());
    match made {
        Some((lease, machine)) if succeeded => {
            let answer = serde_json::to_string(&machine).map_err(|e| ApiError::internal(&e))?;
            boxes.finish_request(&request.request_id, Some(lease), &answer).await?;
        }
        _ => boxes.release_request(&request.request_id).await,
    }
    response
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().fold(String::with_capacity(64), |mut out, b| {
        use std::fmt::Write as _;
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// The lease id prefix (`xxxxxxxx-xxxx-xxxx`) a `machine_…` id stands for.
fn lease_prefix(machine_id: &str) -> String {
    let hex = machine_id.strip_prefix("machine_").unwrap_or_default();
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return String::new();
    }
    format!("{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..])
}

/// The machine `id` if the bearer token gives `wanted` on it: 404, 401 (no or foreign token) or
/// 403 (a token of this machine without that capability) otherwise.
async fn open(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
    wanted: Capability,
) -> Result<Lease, ApiError> {
    let boxes = native::service(state)?;
    let missing = || ApiError::not_found("machine_not_found", format!("there is no machine `{id}`"));
    let lease = boxes.lease_by_prefix(&lease_prefix(id)).await?.ok_or_else(missing)?;
    let token: Option<SecretToken> = optional_bearer(headers);
    // A token of this machine without the capability is forbidden (403); anything else that
    // does not open it is unauthorized (401, from `authorize`).
    if let Some(token) = &token
        && let Some(capability) = boxes.capability_of(&lease, token).await?
        && !capability.allows(wanted)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "wrong_token",
            format!("this token cannot {0} this machine; use its {0}_token", wanted.as_str()),
        ));
    }
    boxes.authorize(lease, token.as_ref(), wanted).await
}

/// The machine (read token).
#[utoipa::path(get, path = "/api/machines/{machine_id}", operation_id = "getMachine", tag = "storefront",
    security(("lease_token" = [])),
    responses((status = 200, body = Machine), (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Machine>, ApiError> {
    let lease = open(&state, &headers, &id, Capability::Read).await?;
    Ok(Json(machine(&lease, &state)))
}

/// Terminates the machine now (terminate token).
#[utoipa::path(delete, path = "/api/machines/{machine_id}", operation_id = "terminateMachine", tag = "storefront",
    security(("lease_token" = [])),
    responses((status = 200, body = Machine), (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn terminate(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Machine>, ApiError> {
    let lease = open(&state, &headers, &id, Capability::Terminate).await?;
    let ended = native::service(&state)?.terminate(&lease).await?;
    Ok(Json(machine(&ended, &state)))
}

/// Adds minutes to the machine (extend token); paid at the product's per-minute price, and the
/// expiry moves only once the payment settled.
#[utoipa::path(post, path = "/api/machines/{machine_id}/extend", operation_id = "extendMachine", tag = "storefront",
    security(("lease_token" = [])), request_body = ExtendMachineRequest,
    responses((status = 200, body = Machine), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody),
        (status = 402, description = "Payment required (or the payment was refused)"), (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody), (status = 409, description = "The machine is not active", body = crate::error::ErrorBody)))]
pub async fn extend(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<ExtendMachineRequest>,
) -> Result<Response, ApiError> {
    let lease = open(&state, &headers, &id, Capability::Extend).await?;
    let minutes = request.additional_minutes;
    if minutes == 0 {
        return Err(bad(
            "out_of_range",
            "additional_minutes",
            "`additional_minutes` must be at least 1".into(),
        ));
    }
    let offer = state.catalog.offer(lease.offer_id.as_str())?.clone();
    let price =
        vendbox_core::PriceRule { base: vendbox_core::Usdc::ZERO, ..offer.price }.price(minutes, 0)?;
    let extension = native::service(&state)?.extension(&lease, minutes)?;
    let body = machine(&Lease { expires_at: Some(extension.until), ..lease }, &state);
    let path = format!("/api/machines/{id}/extend");
    native::sell_extension(
        &state,
        &headers,
        extension,
        price,
        &path,
        &offer.title,
        (StatusCode::OK, Json(body)),
    )
    .await
}
