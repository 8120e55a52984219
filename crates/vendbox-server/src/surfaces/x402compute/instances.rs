//! x402Compute's instances, path for path: `POST /compute/provision` (paid: the plan's hourly
//! rate × `prepaid_hours`; x402 v1 `X-Payment`, or credits for an authenticated request), and,
//! for the owner only (a wallet signature or an API key; another wallet's instance is 404),
//! `GET /compute/instances`, `GET`/`DELETE /compute/instances/{id}`,
//! `POST /compute/instances/{id}/password` (the one-time root password of an instance given no
//! SSH key; 409 after, and 409 for one given a key) and `POST /compute/instances/{id}/extend`
//! (paid, at the same rate). An instance is a box reached through the SSH gateway as `root`, with
//! its key or its one-time password. The rules are `vendbox_service::Compute`'s; these handlers
//! read the seed's shapes and answer in them.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use vendbox_core::{Catalog, Lease, LeaseState, Offer, QuoteParams};
use vendbox_pay::ChargeKind;
use vendbox_service::{
    Compute, ComputeError, ComputeInstance, ComputeOrder, Delivery, Paid, PayError, SshKey,
};

use crate::app::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::gate;
use crate::json;
use crate::surfaces::native::boxes as native;

use super::plans;

/// The seed's provision body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ProvisionBody {
    /// The plan (`GET /compute/plans`).
    #[schema(example = "vc2-1c-1gb")]
    pub plan: String,
    /// A region the plan runs in (`GET /compute/regions`); the plan's default when absent.
    #[schema(example = "lax")]
    pub region: Option<String>,
    /// An OS image id (`GET /compute/os`); the plan's default when absent.
    #[schema(example = 2284)]
    pub os_id: Option<i64>,
    /// A name for the instance.
    pub label: Option<String>,
    /// Hours to prepay, 1 to 8760 (default 1); the price is the hourly rate times this.
    #[schema(example = 720)]
    pub prepaid_hours: Option<u32>,
    /// An OpenSSH public key that opens the instance; without one, ask for the one-time password.
    pub ssh_public_key: Option<String>,
    /// The payment network: an EVM one (`base`, `base-sepolia`, `eip155:…`); `solana` is refused.
    #[schema(example = "base")]
    pub network: Option<String>,
}

/// The seed's extend body.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct ExtendBody {
    /// Hours to add, 1 to 8760 (default 1), at the plan's hourly rate.
    #[schema(example = 720)]
    pub extend_hours: Option<u32>,
    /// The payment network, as for provision.
    pub network: Option<String>,
}

/// An instance, in the shape of the seed's `order` (with how to reach it).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InstanceView {
    /// The instance's id.
    pub id: String,
    /// The box's id (the seed's provider instance id).
    pub vultr_instance_id: Option<String>,
    /// Its plan.
    pub plan: String,
    /// Its region.
    pub region: Option<String>,
    /// `pending`, `active`, `expired`, `destroyed` or `failed`.
    pub status: &'static str,
    /// The address to `ssh` to (the SSH gateway's).
    pub ip_address: Option<String>,
    /// The SSH gateway's port.
    pub ssh_port: Option<u16>,
    /// Always `root`.
    pub username: &'static str,
    /// `ssh -p PORT root@HOST`.
    pub ssh_command: Option<String>,
    /// `ssh_key` (it was given one) or `one_time_password`.
    pub access_method: &'static str,
    /// Its label.
    pub label: Option<String>,
    /// The OS image id asked for.
    pub os_id: Option<i64>,
    /// When it was provisioned.
    pub created_at: DateTime<Utc>,
    /// When it ends.
    pub expires_at: Option<DateTime<Utc>>,
}

/// The seed's provision answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Provisioned {
    /// Always true.
    pub success: bool,
    /// The instance.
    pub order: InstanceView,
    /// The settlement's transaction (for credits, the ledger entry).
    pub tx_hash: Option<String>,
}

/// The caller's instances.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InstanceList {
    /// Those not ended, newest first.
    pub instances: Vec<InstanceView>,
    /// How many.
    pub count: usize,
}

/// One instance.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InstanceAnswer {
    /// Always true.
    pub success: bool,
    /// The instance.
    pub instance: InstanceView,
}

/// The one-time password answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PasswordAnswer {
    /// Always true.
    pub success: bool,
    /// How to log in.
    pub access: Access,
}

/// The seed's `access`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Access {
    /// `one_time_password`.
    pub method: &'static str,
    /// `root`.
    pub username: &'static str,
    /// The address to `ssh` to.
    pub ip_address: Option<String>,
    /// The SSH gateway's port.
    pub ssh_port: Option<u16>,
    /// The root password, shown this once.
    pub password: String,
}

/// The extend answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Extended {
    /// Always true.
    pub success: bool,
    /// The instance, with its new `expires_at`.
    pub instance: InstanceView,
    /// Hours added.
    pub extended_hours: u32,
    /// The settlement's transaction.
    pub tx_hash: Option<String>,
}

fn status_of(lease: &Lease) -> &'static str {
    match lease.state {
        LeaseState::Pending | LeaseState::Provisioning => "pending",
        LeaseState::Active => "active",
        LeaseState::Expired => "expired",
        LeaseState::Terminated => "destroyed",
        LeaseState::Failed => "failed",
    }
}

fn view(state: &AppState, instance: &ComputeInstance, lease: &Lease) -> InstanceView {
    let ssh = state.ssh.as_ref();
    InstanceView {
        id: lease.id.to_string(),
        vultr_instance_id: lease.box_id.clone(),
        plan: instance.plan.clone(),
        region: instance.region.clone().or_else(|| lease.region.clone()),
        status: status_of(lease),
        ip_address: ssh.map(|s| s.host.clone()),
        ssh_port: ssh.map(|s| s.port),
        username: "root",
        ssh_command: ssh.map(|s| s.command("root")),
        access_method: if instance.ssh_key_given { "ssh_key" } else { "one_time_password" },
        label: instance.label.clone(),
        os_id: instance.os_id,
        created_at: instance.created_at,
        expires_at: lease.expires_at,
    }
}

fn refused(e: ComputeError) -> ApiError {
    let code = e.code();
    match e {
        ComputeError::NotFound(_) => ApiError::not_found(code, e.to_string()),
        ComputeError::SshKeyGiven | ComputeError::PasswordIssued => {
            ApiError::new(StatusCode::CONFLICT, code, e.to_string())
        }
        ComputeError::NoPayer => ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string()),
        ComputeError::Lease(e) => e.into(),
    }
}

fn compute(state: &AppState) -> Result<Compute, ApiError> {
    Ok(Compute::new(native::service(state)?))
}

/// Refuses a payment network vendbox does not take: Solana (out of scope) and anything that is
/// not an EVM network.
fn check_network(network: Option<&str>) -> Result<(), ApiError> {
    let Some(network) = network.map(str::trim).filter(|n| !n.is_empty()) else { return Ok(()) };
    if network.to_ascii_lowercase().starts_with("solana") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_network",
            "Solana payments are not accepted by this vendbox; pay in USDC on an EVM network (`base`)",
        )
        .with_field("network"));
    }
    if vendbox_pay::Network::parse(network).is_none() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_network",
            format!(
                "`{network}` is not a payment network this vendbox takes; pay on an EVM network (`base`)"
            ),
        )
        .with_field("network"));
    }
    Ok(())
}

/// Whole hours as minutes, 1 to 8760 hours.
fn hours(asked: Option<u32>, field: &str) -> Result<u32, ApiError> {
    let hours = asked.unwrap_or(1);
    if !(1..=8760).contains(&hours) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "out_of_range",
            format!("`{field}` must be between 1 and 8760"),
        )
        .with_field(field));
    }
    Ok(hours * 60)
}

/// The offer of plan `plan`: 400 for a plan vendbox does not list, 503 for one it cannot make.
fn plan_offer<'a>(catalog: &'a Catalog, plan: &str) -> Result<&'a Offer, ApiError> {
    let offer = plans::plan_offers(catalog).find(|o| o.labels.get("plan").is_some_and(|p| p == plan));
    let offer = offer.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "unknown_plan",
            format!("`{plan}` is not a plan (GET /compute/plans)"),
        )
        .with_field("plan")
    })?;
    if !offer.available {
        let why = offer.unavailable_reason.as_deref().unwrap_or("it is not sold now");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "plan_unavailable",
            format!("this vendbox cannot provision `{plan}`: {why}"),
        ));
    }
    Ok(offer)
}

/// The payment's settlement reference, for the answer's `tx_hash`.
async fn tx_hash<T>(state: &AppState, result: &Result<Paid<T>, PayError<ApiError>>) -> Option<String> {
    let payment = result.as_ref().ok()?.payment;
    native::service(state).ok()?.settlement_of(payment).await
}

/// Provisions an instance of a plan: 402 with its price, then a box, paid once it answers.
#[utoipa::path(post, path = "/compute/provision", operation_id = "provisionCompute", tag = "x402compute",
    request_body = ProvisionBody,
    security((), ("wallet_signature" = []), ("api_key" = [])),
    responses((status = 200, description = "Provisioned and paid; the receipt is in `X-Payment-Response`", body = Provisioned),
        (status = 400, description = "A bad body, an unknown plan or OS, or a network not taken (`solana`: `unsupported_network`)", body = crate::error::ErrorBody),
        (status = 402, description = "Payment required: the x402 v1 body (`x402Version`, `accepts` with `maxAmountRequired` = hourly rate × `prepaid_hours` in atomic USDC)"),
        (status = 503, description = "The plan cannot be provisioned here, or no box could be made (nothing charged)", body = crate::error::ErrorBody)))]
pub async fn provision(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: ProvisionBody = json::parse(&body)?;
    check_network(request.network.as_deref())?;
    let catalog = state.catalog.now();
    let offer = plan_offer(&catalog, &request.plan)?.clone();
    let image = match request.os_id {
        None => None,
        Some(id) => Some(
            catalog
                .images
                .iter()
                .find(|i| i.os_id.is_some_and(|o| i64::from(o) == id))
                .map(|i| i.id.clone())
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "unknown_os",
                        format!("`{id}` is not an OS id (GET /compute/os)"),
                    )
                    .with_field("os_id")
                })?,
        ),
    };
    let minutes = hours(request.prepaid_hours, "prepaid_hours")?;
    let params = QuoteParams { minutes: Some(minutes), actions: None, region: request.region.clone(), image };
    let terms = offer.quote(&params)?;
    let ssh_key =
        request.ssh_public_key.as_deref().map(|k| SshKey::parse(k, "ssh_public_key")).transpose()?;
    let boxes = native::service(&state)?;
    boxes.admit(&offer).await?;
    let charge =
        state.payments.charge_for(ChargeKind::Box, terms.price, "/compute/provision", &offer.title)?;
    let order = ComputeOrder {
        plan: request.plan,
        region: request.region,
        os_id: request.os_id,
        label: request.label,
        ssh_key,
    };
    let service = Compute::new(boxes.clone());
    let work = |payment| async move {
        let (made, instance) = service.provision(&offer, &terms, payment, order).await.map_err(refused)?;
        let id = made.lease.id;
        Ok(Delivery::delivered((made.lease, instance)).undo_with(async move { boxes.unpaid(id).await }))
    };
    let result = state.payments.pay(&gate::proof(&state.payments, &headers), charge, work).await;
    let tx_hash = tx_hash(&state, &result).await;
    Ok(gate::respond(result, |(lease, instance)| {
        Json(Provisioned { success: true, order: view(&state, &instance, &lease), tx_hash })
    }))
}

/// The caller's instances that have not ended.
#[utoipa::path(get, path = "/compute/instances", operation_id = "listComputeInstances", tag = "x402compute",
    security(("wallet_signature" = []), ("api_key" = [])),
    responses((status = 200, body = InstanceList), (status = 401, body = crate::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<Json<InstanceList>, ApiError> {
    let all = compute(&state)?.instances(&principal.account).await.map_err(refused)?;
    let instances: Vec<InstanceView> = all.iter().map(|(i, l)| view(&state, i, l)).collect();
    Ok(Json(InstanceList { count: instances.len(), instances }))
}

/// One of the caller's instances.
#[utoipa::path(get, path = "/compute/instances/{id}", operation_id = "getComputeInstance", tag = "x402compute",
    security(("wallet_signature" = []), ("api_key" = [])),
    responses((status = 200, body = InstanceAnswer), (status = 401, body = crate::error::ErrorBody),
        (status = 404, description = "No such instance of the caller's", body = crate::error::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<InstanceAnswer>, ApiError> {
    let (instance, lease) = compute(&state)?.instance(&principal.account, &id).await.map_err(refused)?;
    Ok(Json(InstanceAnswer { success: true, instance: view(&state, &instance, &lease) }))
}

/// Destroys one of the caller's instances now.
#[utoipa::path(delete, path = "/compute/instances/{id}", operation_id = "destroyComputeInstance", tag = "x402compute",
    security(("wallet_signature" = []), ("api_key" = [])),
    responses((status = 200, body = InstanceAnswer), (status = 401, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody)))]
pub async fn destroy(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<InstanceAnswer>, ApiError> {
    let (instance, lease) = compute(&state)?.destroy(&principal.account, &id).await.map_err(refused)?;
    Ok(Json(InstanceAnswer { success: true, instance: view(&state, &instance, &lease) }))
}

/// The one-time root password of an instance given no SSH key: shown once.
#[utoipa::path(post, path = "/compute/instances/{id}/password", operation_id = "computeInstancePassword", tag = "x402compute",
    security(("wallet_signature" = []), ("api_key" = [])),
    responses((status = 200, body = PasswordAnswer), (status = 401, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody),
        (status = 409, description = "Issued already (`password_already_issued`), or the instance was given an SSH key (`ssh_key_instance`)", body = crate::error::ErrorBody)))]
pub async fn password(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<PasswordAnswer>, ApiError> {
    let (password, _, _) = compute(&state)?.issue_password(&principal.account, &id).await.map_err(refused)?;
    let ssh = state.ssh.as_ref();
    Ok(Json(PasswordAnswer {
        success: true,
        access: Access {
            method: "one_time_password",
            username: "root",
            ip_address: ssh.map(|s| s.host.clone()),
            ssh_port: ssh.map(|s| s.port),
            password: password.expose().to_owned(),
        },
    }))
}

/// Extends one of the caller's instances by whole hours, at its plan's hourly rate; paid, and
/// `expires_at` moves once the payment settled.
#[utoipa::path(post, path = "/compute/instances/{id}/extend", operation_id = "extendComputeInstance", tag = "x402compute",
    request_body(content = Option<ExtendBody>, content_type = "application/json"),
    security(("wallet_signature" = []), ("api_key" = [])),
    responses((status = 200, description = "Extended and paid", body = Extended),
        (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody),
        (status = 402, description = "Payment required: the x402 v1 body"),
        (status = 404, body = crate::error::ErrorBody),
        (status = 409, description = "The instance is not active", body = crate::error::ErrorBody)))]
pub async fn extend(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: ExtendBody = json::parse_optional(&body)?;
    check_network(request.network.as_deref())?;
    let minutes = hours(request.extend_hours, "extend_hours")?;
    let (instance, lease) = compute(&state)?.instance(&principal.account, &id).await.map_err(refused)?;
    let catalog = state.catalog.now();
    let offer = catalog.offer(lease.offer_id.as_str())?;
    let price = offer.price.price(minutes, 0)?;
    let boxes = native::service(&state)?;
    let extension = boxes.extension(&lease, minutes)?;
    let mut extended = lease.clone();
    extended.expires_at = Some(extension.until);
    let answer = view(&state, &instance, &extended);
    let path = format!("/compute/instances/{id}/extend");
    let result =
        native::sell_extension(&state, &headers, extension, price, &path, &offer.title, Json(answer)).await?;
    let tx_hash = tx_hash(&state, &result).await;
    Ok(gate::respond(result, |Json(instance)| {
        Json(Extended { success: true, instance, extended_hours: minutes / 60, tx_hash })
    }))
}
