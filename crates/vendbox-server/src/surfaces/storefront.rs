//! The Agentic Compute Storefront, path for path (`../shared/seeds/agentic-compute-storefront.openapi.json`):
//! `GET /api/health`, `POST /api/machines` (paid over x402 here; `request_id` makes a request
//! sent twice make one machine and charge once), `GET`/`DELETE /api/machines/{id}` and
//! `POST /api/machines/{id}/extend` (paid; the expiry moves only once the extension settled),
//! with separate read, extend and terminate tokens (bearer, shown once, hashed at rest).
//! A machine is a box reached over the SSH gateway with the key given at creation.
//!
//! Every answer speaks the seed's dialect: an error is the seed's `Error`,
//! `{"error": "<message>"}`, with vendbox's stable `code` (and the `field` at fault) beside it,
//! and its status is one the seed uses (400, 401, 403, 404; 5xx for what the server cannot do
//! now). The 402 of a paid call is the x402 body, unchanged: paying over x402 is vendbox's
//! addition (the seed pays through MPP orders, `storefront_orders`, which vendbox serves too).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
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
use crate::surfaces::Routes;
use crate::surfaces::native::boxes as native;

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

/// The seed's `Error`, with vendbox's stable code: the body of every refusal on `/api/*`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StorefrontError {
    /// What is wrong and what to do, for people (the seed's only field).
    pub error: String,
    /// vendbox's stable machine-readable code (`wrong_token`, `out_of_range`).
    #[schema(example = "out_of_range")]
    pub code: String,
    /// The request field at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// vendbox's native error body (`crate::error::ErrorBody`), as the gate and the helpers shared
/// with other surfaces render it, read back to be said again in the seed's dialect.
#[derive(Debug, Deserialize)]
struct NativeError {
    error: NativeErrorDetail,
}

/// The inside of [`NativeError`].
#[derive(Debug, Deserialize)]
struct NativeErrorDetail {
    code: String,
    message: String,
    field: Option<String>,
}

/// The most of an error body read to translate it.
const MAX_ERROR_BYTES: usize = 64 * 1024;

/// The status the seed gives a refusal. It refuses requests with 400, 401, 403 and 404 only, so
/// vendbox's other client errors (a `request_id` conflict, a body of the wrong media type or
/// size) are its 400, their code saying which. 402 (x402) and server errors keep theirs.
fn seed_status(status: StatusCode) -> StatusCode {
    match status {
        StatusCode::CONFLICT | StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            StatusCode::BAD_REQUEST
        }
        other => other,
    }
}

/// A refusal in the seed's dialect, keeping `headers` (a payment id, a receipt).
fn refusal(status: StatusCode, body: StorefrontError, mut headers: HeaderMap) -> Response {
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::CONTENT_TYPE);
    let mut response = (seed_status(status), Json(body)).into_response();
    for (name, value) in &headers {
        response.headers_mut().insert(name, value.clone());
    }
    response
}

/// A refusal rendered natively (`{"error":{"code","message"}}`: by a handler, the gate, the
/// extractors or the router) said again as the seed's `Error`. A 402 stays the x402 body.
async fn in_dialect(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || status == StatusCode::PAYMENT_REQUIRED {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_ERROR_BYTES).await.unwrap_or_default();
    match serde_json::from_slice::<NativeError>(&bytes) {
        Ok(NativeError { error: NativeErrorDetail { code, message, field } }) => {
            refusal(status, StorefrontError { error: message, code, field }, parts.headers)
        }
        Err(_) => Response::from_parts(parts, axum::body::Body::from(bytes)),
    }
}

/// Every answer on the Storefront's paths in its dialect, whoever rendered it: the handlers, and
/// also the router's 404 and 405, the request timeout, the per-client cap and the panic
/// catcher, which know nothing of surfaces.
pub(crate) async fn dialect(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let ours = request.uri().path().starts_with("/api/");
    let response = next.run(request).await;
    if ours { in_dialect(response).await } else { response }
}

/// A machine id for a lease: `machine_` and the first 16 hex digits of its id.
fn machine_id(lease: &Lease) -> String {
    let hex: String = lease.id.to_string().chars().filter(char::is_ascii_hexdigit).take(16).collect();
    format!("machine_{hex}")
}

pub(crate) fn machine(lease: &Lease, state: &AppState) -> Machine {
    let status = match lease.state {
        LeaseState::Pending | LeaseState::Provisioning => "provisioning",
        LeaseState::Active => "active",
        LeaseState::Expired | LeaseState::Terminated => "terminated",
        LeaseState::Failed => "failed",
    };
    let product = state
        .catalog
        .now()
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

/// The Storefront's operations.
pub fn routes() -> Routes {
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    Routes {
        quick: OpenApiRouter::new()
            .routes(routes!(health))
            .routes(routes!(create))
            .routes(routes!(get, terminate))
            .routes(routes!(extend)),
        ..Routes::default()
    }
}

/// Service health and the products for sale.
#[utoipa::path(get, path = "/api/health", operation_id = "health", tag = "storefront",
    responses((status = 200, body = StorefrontHealth)))]
pub async fn health(State(state): State<AppState>) -> Json<StorefrontHealth> {
    let products = state
        .catalog
        .now()
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

/// Leases a machine: 402 with its price (x402, vendbox's addition), then 202 with a box that has
/// the key installed, paid once it answers. A `request_id` is one machine: sent again it is
/// refused with `request_id_used` (its tokens were shown once) and charges nothing; with another
/// body, `request_id_reused`; while its first request is served, `request_in_progress` (all
/// three vendbox's 409 conflicts, which the seed answers 400).
#[utoipa::path(post, path = "/api/machines", operation_id = "createMachine", tag = "storefront",
    request_body = CreateMachineRequest,
    responses((status = 202, description = "Machine lease accepted and paid; the management tokens are shown once, here", body = MachineWithManagement),
        (status = 400, description = "A bad body, or a request_id already used (`request_id_used`, `request_id_reused`, `request_in_progress`)", body = StorefrontError),
        (status = 402, description = "Payment required (or the payment was refused): the x402 body, vendbox's addition"),
        (status = 503, description = "No box can be sold now (`sold_out`, `boxes_unavailable`) or payments cannot be taken", body = StorefrontError)))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<CreateMachineRequest>,
) -> Result<Response, ApiError> {
    create_machine(&state, &headers, request).await
}

/// What a `CreateMachineRequest` buys, checked before any payment is asked for.
pub(crate) struct Order {
    /// The machine offer.
    pub(crate) offer: vendbox_core::Offer,
    /// Its duration.
    pub(crate) params: QuoteParams,
    /// The key to log in with.
    pub(crate) key: SshKey,
}

/// Checks `request` (a UUID `request_id`, a product sold here, 15 to 360 minutes, an SSH key)
/// and prices it, before any payment is asked for.
pub(crate) fn order(state: &AppState, request: &CreateMachineRequest) -> Result<Order, ApiError> {
    if uuid::Uuid::parse_str(&request.request_id).is_err() || request.request_id.len() != 36 {
        return Err(bad("bad_request_id", "request_id", "`request_id` must be a UUID".into()));
    }
    let offer = state
        .catalog
        .now()
        .labelled("product_id", &request.product_id)
        .find(|o| o.kind == OfferKind::Machine)
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
    Ok(Order { offer, params, key })
}

async fn create_machine(
    state: &AppState,
    headers: &HeaderMap,
    request: CreateMachineRequest,
) -> Result<Response, ApiError> {
    let Order { offer, params, key } = order(state, &request)?;
    let boxes = native::service(state)?;
    let body_hash = hex_sha256(&serde_json::to_vec(&request).unwrap_or_default());
    match boxes.claim_request(&request.request_id, &body_hash).await? {
        None => {}
        Some((hash, Some(answer))) if hash == body_hash => {
            let machine: Machine = serde_json::from_str(&answer).map_err(|e| ApiError::internal(&e))?;
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "request_id_used",
                format!(
                    "this request_id already made {}, and nothing was charged again; its tokens were shown once, in the answer to that request. Use a new request_id for a new machine",
                    machine.machine_id
                ),
            )
            .with_field("request_id"));
        }
        Some((hash, _)) if hash != body_hash => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "request_id_reused",
                "this request_id was sent with another body; use a new request_id for a new machine",
            )
            .with_field("request_id"));
        }
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "request_in_progress",
                "a request with this request_id is still being served; send it again in a moment",
            )
            .with_field("request_id"));
        }
    }
    let capabilities = vec![Capability::Read, Capability::Extend, Capability::Terminate];
    let access = native::Access { ssh_keys: vec![key], capabilities };
    let bought = native::buy(state, headers, offer.id.as_str(), &params, "/api/machines", access).await;
    // The request id keeps what it made only when the machine was made and paid for; otherwise
    // it is free for the client's retry.
    match &bought {
        Ok(Ok(paid)) => {
            let answer = serde_json::to_string(&machine(&paid.value.lease, state))
                .map_err(|e| ApiError::internal(&e))?;
            boxes.finish_request(&request.request_id, Some(paid.value.lease.id), &answer).await?;
        }
        _ => boxes.release_request(&request.request_id).await,
    }
    Ok(crate::gate::respond(bought?, |made| {
        let management = ManagementTokens {
            read_token: made.token(Capability::Read),
            extend_token: made.token(Capability::Extend),
            terminate_token: made.token(Capability::Terminate),
        };
        (
            StatusCode::ACCEPTED,
            Json(MachineWithManagement { machine: machine(&made.lease, state), management }),
        )
    }))
}

pub(crate) fn hex_sha256(bytes: &[u8]) -> String {
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
    Ok(boxes.authorize(lease, token.as_ref(), wanted).await?)
}

/// The `machine_id` path parameter.
const MACHINE_ID: &str = "`machine_` and 16 lowercase hex digits";

/// The machine (read token).
#[utoipa::path(get, path = "/api/machines/{machine_id}", operation_id = "getMachine", tag = "storefront",
    params(("machine_id" = String, Path, description = MACHINE_ID)), security(("lease_token" = [])),
    responses((status = 200, body = Machine), (status = 401, body = StorefrontError), (status = 403, body = StorefrontError), (status = 404, body = StorefrontError)))]
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
    params(("machine_id" = String, Path, description = MACHINE_ID)), security(("lease_token" = [])),
    responses((status = 200, body = Machine), (status = 401, body = StorefrontError), (status = 403, body = StorefrontError), (status = 404, body = StorefrontError)))]
pub async fn terminate(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Machine>, ApiError> {
    let lease = open(&state, &headers, &id, Capability::Terminate).await?;
    let ended = native::service(&state)?.terminate(&lease).await?;
    Ok(Json(machine(&ended, &state)))
}

/// Adds minutes to the machine (extend token); paid at the product's per-minute price (x402, a
/// 402 first), and the expiry moves only once the payment settled. A machine that is no longer
/// active is refused with 400 `not_active` before any payment is asked for.
#[utoipa::path(post, path = "/api/machines/{machine_id}/extend", operation_id = "extendMachine", tag = "storefront",
    params(("machine_id" = String, Path, description = MACHINE_ID)), security(("lease_token" = [])),
    request_body = ExtendMachineRequest,
    responses((status = 200, body = Machine),
        (status = 400, description = "A bad body, or a machine that is not active (`not_active`)", body = StorefrontError),
        (status = 401, body = StorefrontError),
        (status = 402, description = "Payment required (or the payment was refused): the x402 body, vendbox's addition"),
        (status = 403, body = StorefrontError), (status = 404, body = StorefrontError)))]
pub async fn extend(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<ExtendMachineRequest>,
) -> Result<Response, ApiError> {
    let lease = open(&state, &headers, &id, Capability::Extend).await?;
    extend_machine(&state, &headers, &id, lease, request).await
}

async fn extend_machine(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
    lease: Lease,
    request: ExtendMachineRequest,
) -> Result<Response, ApiError> {
    let minutes = request.additional_minutes;
    if minutes == 0 {
        return Err(bad(
            "out_of_range",
            "additional_minutes",
            "`additional_minutes` must be at least 1".into(),
        ));
    }
    let offer = state.catalog.now().offer(lease.offer_id.as_str())?.clone();
    // One extension adds at most what the offer sells at once.
    if let vendbox_core::DurationRule::Range { max_minutes, .. } = offer.duration
        && minutes > max_minutes
    {
        return Err(bad(
            "out_of_range",
            "additional_minutes",
            format!(
                "`additional_minutes` must be between 1 and {max_minutes} (the most this machine sells at once)"
            ),
        ));
    }
    let price =
        vendbox_core::PriceRule { base: vendbox_core::Usdc::ZERO, ..offer.price }.price(minutes, 0)?;
    let extension = native::service(state)?.extension(&lease, minutes)?;
    let body = machine(&Lease { expires_at: Some(extension.until), ..lease }, state);
    let path = format!("/api/machines/{id}/extend");
    let sold = native::sell_extension(
        state,
        headers,
        extension,
        price,
        &path,
        &offer.title,
        (StatusCode::OK, Json(body)),
    )
    .await?;
    Ok(crate::gate::respond(sold, |body| body))
}
