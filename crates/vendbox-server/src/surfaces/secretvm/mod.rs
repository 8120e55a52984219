//! SecretVM's agent API (`../shared/seeds/secretvm.md`), path for path: `POST
//! /api/agent/add-funds` (an x402 top-up, v2 `payment-signature` or v1 `x-payment`), `GET
//! /api/agent/balance`, `POST /api/vm/create` (multipart, a docker-compose file) and `GET
//! /api/agent/vm/{id}`. Every route takes SecretVM's own `x-agent-*` signature, verified by
//! `vendbox_service::Vms` over the body as the seed signs it; the hash of a request answered 402
//! is given back, so the seed's client may send the same signed request again with its payment.
//! Balances are the wallet's credits, the same ledger as `/v1/account`, in minor units (USDC
//! atomic units, 6 decimals) as strings. There is no TEE: `skip_attest` is accepted and a VM's
//! status says that nothing is attested.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{FromRequest as _, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use vendbox_core::{AccountAddress, Usdc};
use vendbox_service::vms::compose::MAX_COMPOSE_BYTES;
use vendbox_service::vms::{FileMeta, NO_ATTESTATION, create_signing_body};
use vendbox_service::{Agent, AgentRequest, NewVm, VmError, VmView};

use super::Routes;
use super::native::account::{CreditSale, sell_credits};
use crate::app::AppState;
use crate::error::ApiError;

/// The form field of the compose file.
const COMPOSE_FIELD: &str = "dockercompose";

/// Most form fields taken besides the file.
const MAX_FIELDS: usize = 64;

/// SecretVM's operations.
pub fn routes() -> Routes {
    Routes {
        quick: OpenApiRouter::new()
            .routes(routes!(add_funds))
            .routes(routes!(balance))
            .routes(routes!(create_vm))
            .routes(routes!(vm_status)),
        ..Routes::default()
    }
}

impl From<VmError> for ApiError {
    /// The one place a SecretVM refusal gets its HTTP status.
    fn from(e: VmError) -> Self {
        let status = match &e {
            VmError::BadHeader { .. }
            | VmError::SignatureMismatch { .. }
            | VmError::TimestampOutOfWindow { .. }
            | VmError::Replayed => StatusCode::UNAUTHORIZED,
            VmError::InsufficientBalance { .. } => StatusCode::PAYMENT_REQUIRED,
            VmError::Invalid { .. } | VmError::Compose(_) | VmError::UnknownVmType(_) => {
                StatusCode::BAD_REQUEST
            }
            VmError::Unsupported { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            VmError::NotFound(_) => StatusCode::NOT_FOUND,
            VmError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            VmError::Store(store) => {
                tracing::warn!(error = %store, "the SecretVM surface could not reach the store");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        let error = ApiError::new(status, e.code(), e.to_string());
        match e.field() {
            Some(field) => error.with_field(field),
            None => error,
        }
    }
}

/// Verifies the request's `x-agent-*` headers over `body` (as signed).
async fn agent(
    state: &AppState,
    headers: &HeaderMap,
    method: &str,
    uri: &Uri,
    body: &str,
) -> Result<Agent, ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let request = AgentRequest {
        address: header("x-agent-address"),
        signature: header("x-agent-signature"),
        timestamp: header("x-agent-timestamp"),
        method,
        path: uri.path(),
        body,
    };
    Ok(state.vms.verify(&request).await?)
}

/// Refuses a request without the three `x-agent-*` headers (their values are checked later).
fn signed(headers: &HeaderMap) -> Result<(), ApiError> {
    for name in ["x-agent-address", "x-agent-signature", "x-agent-timestamp"] {
        if !headers.contains_key(name) {
            return Err(VmError::BadHeader {
                header: match name {
                    "x-agent-address" => "x-agent-address",
                    "x-agent-signature" => "x-agent-signature",
                    _ => "x-agent-timestamp",
                },
                message: format!(
                    "{name} is required: sign every request as the SecretVM agent API describes"
                ),
            }
            .into());
        }
    }
    Ok(())
}

/// Gives back the request's hash when it was answered 402 (nothing done, nothing charged).
async fn answered(state: &AppState, agent: &Agent, response: Response) -> Response {
    if response.status() == StatusCode::PAYMENT_REQUIRED {
        state.vms.release(agent).await;
    }
    response
}

/// An amount to add, from the query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AmountQuery {
    /// USDC to add (`"1"`, `"0.5"`), when the body does not say.
    pub amount_usdc: Option<String>,
}

/// A balance, in minor units.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BalanceView {
    /// The wallet's credits in minor units (USDC atomic units, 6 decimals), as a string.
    pub balance: String,
}

/// A top-up made.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FundsAdded {
    /// The balance after it, in minor units, as a string.
    pub balance: String,
    /// `x402`.
    pub payment_method: String,
}

/// Adds funds with x402: `amount_usdc` in the JSON body or the query.
#[utoipa::path(
    post,
    path = "/api/agent/add-funds",
    operation_id = "secretvmAddFunds",
    tag = "secretvm",
    params(AmountQuery),
    request_body(content = String, content_type = "application/json", description = "`{\"amount_usdc\": \"1\"}`, as signed"),
    responses(
        (status = 200, description = "Funds added once the payment settled", body = FundsAdded),
        (status = 400, description = "No amount, or one outside the operator's bounds", body = crate::error::ErrorBody),
        (status = 401, description = "A missing or wrong x-agent signature, or a replay", body = crate::error::ErrorBody),
        (status = 402, description = "Pay the amount with x402 (v2 PAYMENT-REQUIRED, v1 body)"),
    )
)]
pub async fn add_funds(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Query(query): Query<AmountQuery>,
    text: String,
) -> Response {
    let agent = match agent(&state, &headers, "POST", &uri, &text).await {
        Ok(agent) => agent,
        Err(e) => return e.into_response(),
    };
    let response = match amount(&text, query) {
        Ok(amount) => top_up(&state, &headers, agent.account.clone(), amount).await,
        Err(e) => e.into_response(),
    };
    answered(&state, &agent, response).await
}

/// `amount_usdc` from the JSON body (a string or a number), else from the query.
fn amount(body: &str, query: AmountQuery) -> Result<Usdc, ApiError> {
    let bad = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, "invalid_amount", m).with_field("amount_usdc");
    let from_body = if body.trim().is_empty() {
        None
    } else {
        let value: serde_json::Value =
            serde_json::from_str(body).map_err(|_| bad("the body must be JSON: {\"amount_usdc\": \"1\"}"))?;
        match &value["amount_usdc"] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Null => None,
            _ => return Err(bad("`amount_usdc` must be a decimal string of USDC")),
        }
    };
    let text = from_body.or(query.amount_usdc).ok_or_else(|| bad("`amount_usdc` is required"))?;
    let amount: Usdc =
        text.parse().map_err(|_| bad("`amount_usdc` must be a decimal amount of USDC (\"1\", \"0.5\")"))?;
    Ok(amount)
}

/// Buys `amount` of credits for `account` through the payment gate (x402 only: credits cannot
/// buy credits), booked once the payment settled, as `/v1/account/topup` does.
async fn top_up(state: &AppState, headers: &HeaderMap, account: AccountAddress, amount: Usdc) -> Response {
    let sale = CreditSale {
        resource: "/api/agent/add-funds",
        what: "SecretVM agent funds",
        amount_field: Some("amount_usdc"),
    };
    let vms = state.vms.clone();
    sell_credits(state, headers, account, amount, sale, move |account, amount, _| async move {
        // The balance it will be once booked (booked after settlement, or by the top-up worker).
        let before = vms.balance(&account).await?;
        Ok(FundsAdded {
            balance: before.atomic().saturating_add(amount.atomic()).to_string(),
            payment_method: "x402".into(),
        })
    })
    .await
}

/// The wallet's balance.
#[utoipa::path(
    get,
    path = "/api/agent/balance",
    operation_id = "secretvmBalance",
    tag = "secretvm",
    responses(
        (status = 200, description = "The balance in minor units", body = BalanceView),
        (status = 401, description = "A missing or wrong x-agent signature, or a replay", body = crate::error::ErrorBody),
    )
)]
pub async fn balance(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json<BalanceView>, ApiError> {
    let agent = agent(&state, &headers, "GET", &uri, "").await?;
    let balance = state.vms.balance(&agent.account).await?;
    Ok(Json(BalanceView { balance: balance.atomic().to_string() }))
}

/// A VM as `create` answers it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedVm {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// When it was made.
    pub created_at: String,
    /// When it last changed.
    pub updated_at: String,
    /// Its VM type.
    pub vm_type: String,
    /// Its id again (SecretVM's `vm_uid`).
    pub vm_uid: String,
    /// Where its first published port is served.
    #[serde(rename = "vmDomain")]
    pub vm_domain: String,
    /// Whether it was only recorded, not started.
    pub skip_launch: bool,
    /// `creating`, or `created` with `skip_launch`.
    pub status: String,
    /// Always true (forced, as SecretVM forces it).
    pub upgradeability: bool,
    /// What is attested: nothing.
    pub attestation: String,
}

/// A VM's status.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VmStatus {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// `creating`, `running`, `stopped` (its balance ran out), `failed` or `created`.
    pub status: String,
    /// Why it stopped or failed.
    pub status_reason: Option<String>,
    /// Where its first published port is served.
    #[serde(rename = "vmDomain")]
    pub vm_domain: String,
    /// Its id (SecretVM's `vmId`).
    #[serde(rename = "vmId")]
    pub vm_id: String,
    /// Its id (SecretVM's `vmUid`).
    #[serde(rename = "vmUid")]
    pub vm_uid: String,
    /// When it was made.
    pub created_at: String,
    /// When it last changed.
    pub updated_at: String,
    /// What is attested: nothing.
    pub attestation: String,
}

fn time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Makes a VM from a docker-compose file (multipart).
#[utoipa::path(
    post,
    path = "/api/vm/create",
    operation_id = "secretvmCreateVm",
    tag = "secretvm",
    request_body(content_type = "multipart/form-data", description = "`name`, `vmTypeId`, the `dockercompose` file, and SecretVM's optional fields"),
    responses(
        (status = 200, description = "The VM, being made", body = CreatedVm),
        (status = 400, description = "A missing field, a compose file that cannot run, an unknown VM type", body = crate::error::ErrorBody),
        (status = 401, description = "A missing or wrong x-agent signature (over the fields and the file's metadata), or a replay", body = crate::error::ErrorBody),
        (status = 402, description = "Insufficient balance", body = crate::error::ErrorBody),
        (status = 422, description = "An option vendbox cannot honour", body = crate::error::ErrorBody),
    )
)]
pub async fn create_vm(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    request: Request,
) -> Response {
    // Unsigned requests are refused before their body is read.
    if let Err(e) = signed(&headers) {
        return e.into_response();
    }
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", m);
    let mut form = match Multipart::from_request(request, &()).await {
        Ok(form) => form,
        Err(e) => return bad(format!("send multipart/form-data: {e}")).into_response(),
    };
    let mut fields = BTreeMap::new();
    let mut file: Option<(FileMeta, Vec<u8>)> = None;
    loop {
        let part = match form.next_field().await {
            Ok(Some(part)) => part,
            Ok(None) => break,
            Err(e) => return bad(format!("the multipart body cannot be read: {e}")).into_response(),
        };
        let name = part.name().unwrap_or_default().to_owned();
        if name == COMPOSE_FIELD && part.file_name().is_some() {
            let original = part.file_name().unwrap_or_default().to_owned();
            let mime = part.content_type().unwrap_or("application/octet-stream").to_owned();
            let bytes = match part.bytes().await {
                Ok(bytes) if bytes.len() <= MAX_COMPOSE_BYTES => bytes,
                Ok(_) => {
                    return bad(format!("the compose file is at most {MAX_COMPOSE_BYTES} bytes"))
                        .with_field(COMPOSE_FIELD)
                        .into_response();
                }
                Err(e) => return bad(format!("the compose file cannot be read: {e}")).into_response(),
            };
            file = Some((FileMeta::of(&name, &original, &mime, &bytes), bytes.to_vec()));
        } else {
            let value = match part.text().await {
                Ok(value) => value,
                Err(e) => return bad(format!("field `{name}` cannot be read: {e}")).into_response(),
            };
            if fields.len() >= MAX_FIELDS {
                return bad(format!("at most {MAX_FIELDS} fields")).into_response();
            }
            fields.insert(name, value);
        }
    }
    let Some((meta, compose)) = file else {
        return bad(format!("the `{COMPOSE_FIELD}` file is required"))
            .with_field(COMPOSE_FIELD)
            .into_response();
    };
    let signed = create_signing_body(&fields, &meta);
    let agent = match agent(&state, &headers, "POST", &uri, &signed).await {
        Ok(agent) => agent,
        Err(e) => return e.into_response(),
    };
    let response = match state.vms.create(&agent.account, NewVm { fields, compose }).await {
        Ok(view) => Json(created(view)).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    };
    answered(&state, &agent, response).await
}

fn created(view: VmView) -> CreatedVm {
    let vm = view.vm;
    CreatedVm {
        id: vm.id.clone(),
        name: vm.name,
        created_at: time(vm.created_at),
        updated_at: time(vm.updated_at),
        vm_type: vm.vm_type,
        vm_uid: vm.id,
        vm_domain: view.domain,
        skip_launch: view.skip_launch,
        status: vm.status,
        upgradeability: true,
        attestation: NO_ATTESTATION.into(),
    }
}

/// A VM's status, for its owner only (404 for a VM that is missing or another's).
#[utoipa::path(
    get,
    path = "/api/agent/vm/{id}",
    operation_id = "secretvmVmStatus",
    tag = "secretvm",
    params(("id" = String, Path, description = "The VM")),
    responses(
        (status = 200, description = "The VM", body = VmStatus),
        (status = 401, description = "A missing or wrong x-agent signature, or a replay", body = crate::error::ErrorBody),
        (status = 404, description = "No such VM of this agent", body = crate::error::ErrorBody),
    )
)]
pub async fn vm_status(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
) -> Result<Json<VmStatus>, ApiError> {
    let agent = agent(&state, &headers, "GET", &uri, "").await?;
    let view = state.vms.get(&agent.account, &id).await?;
    let vm = view.vm;
    Ok(Json(VmStatus {
        id: vm.id.clone(),
        name: vm.name,
        status: vm.status,
        status_reason: vm.status_reason,
        vm_domain: view.domain,
        vm_id: vm.id.clone(),
        vm_uid: vm.id,
        created_at: time(vm.created_at),
        updated_at: time(vm.updated_at),
        attestation: NO_ATTESTATION.into(),
    }))
}
