//! E2B's control plane, path for path (E2B's published `spec/openapi.yml`): create
//! (`POST /sandboxes`, and `/v2/sandboxes` as the SDKs send it), list (`GET /sandboxes`,
//! `/v2/sandboxes`), get and kill (`/sandboxes/{id}`), set timeout, connect (v1 and v2) and
//! refreshes. A sandbox is a box of the catalog's `e2b` offer, its template one of the offer's
//! images, bought for its timeout by the minute through the gate (an API key's credits pay); a
//! timeout set later than the sandbox's end buys the minutes beyond it the same way. Pause,
//! resume, fork, snapshots and network changes answer E2B's error shape: vendbox does not do
//! them.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use vendbox_core::{Capability, Lease, Offer, Principal, QuoteParams};
use vendbox_pay::ChargeKind;
use vendbox_service::e2b::{self as rules, E2bOrder, E2bSandbox, Sandboxes};
use vendbox_service::{Delivery, Paid, PayError};

use super::{E2bErrorBody, ENVD_VERSION, Refusal};
use crate::app::AppState;
use crate::error::ApiError;
use crate::gate;
use crate::json;
use crate::surfaces::native::boxes as native;

/// The catalog's surface name for the offer E2B sandboxes are sold as.
pub const SURFACE: &str = "e2b";

/// E2B's default timeout, in seconds, when a create gives none.
const DEFAULT_TIMEOUT_SECS: u64 = 15;

/// The domain sandboxes' ports are served under (`[server] ports_domain`), handed to the
/// handlers by [`super::front`]; none when vendbox serves no box host names.
#[derive(Debug, Clone, Default)]
pub struct SandboxDomain(pub Option<String>);

/// E2B's `NewSandbox` (the fields vendbox reads; others, such as `mcp` or `network`, are
/// accepted and ignored).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewSandbox {
    /// The template: `base` (the default image) or an image of the `e2b` offer.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Seconds to live (default 15), bought by the whole minute.
    pub timeout: Option<u64>,
    /// The owner's metadata.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Environment variables of every process in it.
    #[serde(default)]
    pub env_vars: Option<BTreeMap<String, String>>,
    /// Whether it reaches the internet (vendbox's offer decides; accepted and ignored).
    #[serde(rename = "allow_internet_access")]
    pub allow_internet_access: Option<bool>,
    /// `false` or absent: vendbox does not auto-pause.
    pub auto_pause: Option<bool>,
    /// Anything else E2B's API takes.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// E2B's `Sandbox`: a sandbox just made or connected to.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxView {
    /// The template it was made from.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Its id.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// The template's alias.
    pub alias: String,
    /// This vendbox's client id (E2B's deprecated field).
    #[serde(rename = "clientID")]
    pub client_id: &'static str,
    /// The envd version vendbox speaks as.
    pub envd_version: &'static str,
    /// The token of its envd (the lease's root token): the SDK sends it as `X-Access-Token`.
    pub envd_access_token: String,
    /// The same token, for its ports (`e2b-traffic-access-token`).
    pub traffic_access_token: Option<String>,
    /// The domain its ports are served under, when vendbox serves box host names.
    pub domain: Option<String>,
}

/// E2B's `ListedSandbox` and `SandboxDetail`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxDetail {
    /// The template it was made from.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// The template's alias.
    pub alias: String,
    /// Its id.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// E2B's deprecated client id.
    #[serde(rename = "clientID")]
    pub client_id: &'static str,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ends.
    pub end_at: DateTime<Utc>,
    /// vCPUs.
    pub cpu_count: u32,
    /// Memory.
    #[serde(rename = "memoryMB")]
    pub memory_mb: u32,
    /// Disk.
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u32,
    /// The owner's metadata.
    pub metadata: BTreeMap<String, String>,
    /// Always `running`: vendbox does not pause.
    pub state: &'static str,
    /// The envd version.
    pub envd_version: &'static str,
    /// Its envd token (get only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    /// The domain of its ports (get only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

/// E2B's `SandboxTimeoutRequest` and `ConnectSandbox`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct TimeoutBody {
    /// Seconds from now after which it ends.
    pub timeout: u64,
}

/// E2B's `SandboxRefreshRequest`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct RefreshBody {
    /// Seconds to keep it alive from now (at most 3600).
    pub duration: Option<u64>,
}

/// `?metadata=` of the list routes (`key=value&…`, URL-encoded).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Only sandboxes with this metadata.
    pub metadata: Option<String>,
    /// `running` or `paused` (comma-separated); vendbox's sandboxes all run.
    pub state: Option<String>,
}

/// The offer E2B sandboxes are sold as: the catalog's available offer of surface `e2b`.
fn offer(state: &AppState) -> Result<Offer, ApiError> {
    state.catalog.now().offers.iter().find(|o| o.surface == SURFACE && o.available).cloned().ok_or_else(
        || {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "e2b_unavailable",
                "this vendbox sells no E2B sandboxes (no available offer of surface `e2b` in its catalog)",
            )
        },
    )
}

fn sandboxes(state: &AppState) -> Result<Sandboxes, ApiError> {
    Ok(Sandboxes::new(native::service(state)?))
}

/// The caller, or E2B's 401.
fn caller(principal: Option<Extension<Principal>>) -> Result<Principal, Refusal> {
    principal.map(|Extension(p)| p).ok_or_else(|| {
        Refusal(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "auth_required",
            "send a vendbox API key as E2B_API_KEY (the X-API-Key header)",
        ))
    })
}

fn view(sandbox: &E2bSandbox, lease_id: String, token: String, domain: &SandboxDomain) -> SandboxView {
    SandboxView {
        template_id: sandbox.template.clone(),
        sandbox_id: lease_id,
        alias: sandbox.template.clone(),
        client_id: "vendbox",
        envd_version: ENVD_VERSION,
        envd_access_token: token.clone(),
        traffic_access_token: Some(token),
        domain: domain.0.clone(),
    }
}

fn detail(state: &AppState, sandbox: &E2bSandbox, lease: &Lease) -> SandboxDetail {
    let resources = state.catalog.now().offer(lease.offer_id.as_str()).map(|o| o.resources.clone()).ok();
    SandboxDetail {
        template_id: sandbox.template.clone(),
        alias: sandbox.template.clone(),
        sandbox_id: lease.id.to_string(),
        client_id: "vendbox",
        started_at: lease.created_at,
        end_at: lease.expires_at.unwrap_or(lease.created_at),
        cpu_count: resources.as_ref().map_or(1, |r| r.vcpu),
        memory_mb: resources.as_ref().map_or(0, |r| r.memory_mb),
        disk_size_mb: resources.as_ref().map_or(0, |r| r.disk_gb.saturating_mul(1024)),
        metadata: sandbox.metadata.clone(),
        state: "running",
        envd_version: ENVD_VERSION,
        envd_access_token: None,
        domain: None,
    }
}

/// Creates a sandbox: its timeout is bought by the minute (402, or the caller's credits), the
/// box made from the template, and paid once it answers.
async fn create_sandbox(
    state: &AppState,
    owner: Principal,
    headers: &HeaderMap,
    domain: &SandboxDomain,
    body: &Bytes,
    path: &str,
) -> Result<Response, Refusal> {
    let request: NewSandbox = json::parse(body)?;
    let offer = offer(state)?;
    let image = rules::image_of(&offer, &request.template_id)?;
    let seconds = request.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS).min(rules::MAX_TIMEOUT_SECS);
    let params = QuoteParams {
        minutes: Some(rules::minutes_of(seconds)),
        actions: None,
        region: None,
        image: Some(image),
    };
    let terms = offer.quote(&params)?;
    let service = sandboxes(state)?;
    service.boxes().admit(&offer).await?;
    let charge = state.payments.charge_for(ChargeKind::Box, terms.price, path, &offer.title)?;
    let order = E2bOrder {
        template: request.template_id.trim().to_owned(),
        metadata: request.metadata.unwrap_or_default(),
        env_vars: request.env_vars.unwrap_or_default(),
    };
    let boxes = service.boxes().clone();
    let work = |payment| async move {
        let (made, sandbox) =
            service.create(owner.account, &offer, &terms, payment, order).await.map_err(ApiError::from)?;
        let id = made.lease.id;
        Ok(Delivery::delivered((made, sandbox)).undo_with(async move { boxes.unpaid(id).await }))
    };
    let result: Result<Paid<_>, PayError<ApiError>> =
        state.payments.pay(&gate::proof(&state.payments, headers), charge, work).await;
    if let Err(PayError::Work { error, .. }) = result {
        return Err(Refusal(error));
    }
    Ok(gate::respond(result, |(made, sandbox)| {
        let token = made.token(Capability::Root);
        (StatusCode::CREATED, Json(view(&sandbox, made.lease.id.to_string(), token, domain)))
    }))
}

/// Creates a sandbox from a template (E2B's `POST /sandboxes`).
#[utoipa::path(post, path = "/sandboxes", operation_id = "e2bCreateSandbox", tag = "e2b",
    request_body = NewSandbox, security(("api_key" = [])),
    responses((status = 201, body = SandboxView), (status = 401, body = E2bErrorBody),
        (status = 402, description = "Payment required: the timeout's price (an API key's credits pay it)"),
        (status = 404, description = "No such template", body = E2bErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    domain: Option<Extension<SandboxDomain>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let owner = caller(principal)?;
    create_sandbox(&state, owner, &headers, &domain.map(|d| d.0).unwrap_or_default(), &body, "/sandboxes")
        .await
}

/// Creates a sandbox (E2B's `POST /v2/sandboxes`, which the SDKs send).
#[utoipa::path(post, path = "/v2/sandboxes", operation_id = "e2bCreateSandboxV2", tag = "e2b",
    request_body = NewSandbox, security(("api_key" = [])),
    responses((status = 201, body = SandboxView), (status = 401, body = E2bErrorBody),
        (status = 402, description = "Payment required"), (status = 404, body = E2bErrorBody)))]
pub async fn create_v2(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    domain: Option<Extension<SandboxDomain>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let owner = caller(principal)?;
    create_sandbox(&state, owner, &headers, &domain.map(|d| d.0).unwrap_or_default(), &body, "/v2/sandboxes")
        .await
}

/// The caller's running sandboxes, filtered by metadata (`key=value&…`).
async fn listed(
    state: &AppState,
    principal: Option<Extension<Principal>>,
    query: &ListQuery,
) -> Result<Vec<SandboxDetail>, Refusal> {
    let principal = caller(principal)?;
    let wanted: Vec<(String, String)> = query.metadata.as_deref().map(url_pairs).unwrap_or_default();
    let paused_only = query.state.as_deref().is_some_and(|s| !s.split(',').any(|s| s.trim() == "running"));
    if paused_only {
        return Ok(Vec::new());
    }
    let all = sandboxes(state)?.sandboxes(&principal.account).await.map_err(ApiError::from)?;
    Ok(all
        .iter()
        .filter(|(s, _)| wanted.iter().all(|(k, v)| s.metadata.get(k) == Some(v)))
        .map(|(s, l)| detail(state, s, l))
        .collect())
}

/// `key=value&…` with percent-encoding undone.
fn url_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&text[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The caller's running sandboxes (E2B's deprecated `GET /sandboxes`).
#[utoipa::path(get, path = "/sandboxes", operation_id = "e2bListSandboxes", tag = "e2b",
    params(ListQuery), security(("api_key" = [])),
    responses((status = 200, body = Vec<SandboxDetail>), (status = 401, body = E2bErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<SandboxDetail>>, Refusal> {
    Ok(Json(listed(&state, principal, &query).await?))
}

/// The caller's sandboxes (E2B's `GET /v2/sandboxes`; one page, no `X-Next-Token`).
#[utoipa::path(get, path = "/v2/sandboxes", operation_id = "e2bListSandboxesV2", tag = "e2b",
    params(ListQuery), security(("api_key" = [])),
    responses((status = 200, body = Vec<SandboxDetail>), (status = 401, body = E2bErrorBody)))]
pub async fn list_v2(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<SandboxDetail>>, Refusal> {
    Ok(Json(listed(&state, principal, &query).await?))
}

/// One of the caller's sandboxes.
#[utoipa::path(get, path = "/sandboxes/{id}", operation_id = "e2bGetSandbox", tag = "e2b",
    security(("api_key" = [])),
    responses((status = 200, body = SandboxDetail), (status = 401, body = E2bErrorBody),
        (status = 404, body = E2bErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    domain: Option<Extension<SandboxDomain>>,
    Path(id): Path<String>,
) -> Result<Json<SandboxDetail>, Refusal> {
    let principal = caller(principal)?;
    let (sandbox, lease) =
        sandboxes(&state)?.sandbox(&principal.account, &id).await.map_err(ApiError::from)?;
    let mut detail = detail(&state, &sandbox, &lease);
    detail.domain = domain.and_then(|Extension(SandboxDomain(d))| d);
    Ok(Json(detail))
}

/// Kills one of the caller's sandboxes now.
#[utoipa::path(delete, path = "/sandboxes/{id}", operation_id = "e2bKillSandbox", tag = "e2b",
    security(("api_key" = [])),
    responses((status = 204, description = "Killed"), (status = 401, body = E2bErrorBody),
        (status = 404, body = E2bErrorBody)))]
pub async fn kill(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    Path(id): Path<String>,
) -> Result<StatusCode, Refusal> {
    let principal = caller(principal)?;
    sandboxes(&state)?.kill(&principal.account, &id).await.map_err(ApiError::from)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Moves a sandbox's end to `seconds` from now: later buys the whole minutes beyond its
/// current end (through the gate, the end moving once paid), earlier just moves it.
async fn retime(
    state: &AppState,
    headers: &HeaderMap,
    principal: &Principal,
    id: &str,
    seconds: u64,
    path: &str,
) -> Result<Option<Response>, Refusal> {
    let service = sandboxes(state)?;
    let (_, lease) = service.sandbox(&principal.account, id).await.map_err(ApiError::from)?;
    let Some(expires_at) = lease.expires_at else { return Ok(None) };
    let (until, minutes) = rules::timeout_change(service.now(), expires_at, seconds);
    if minutes == 0 {
        service.shorten(&lease, until.min(expires_at)).await.map_err(ApiError::from)?;
        return Ok(None);
    }
    let catalog = state.catalog.now();
    let offer = catalog.offer(lease.offer_id.as_str())?;
    let price = offer.price.price(minutes, 0)?;
    let extension = service.boxes().extension(&lease, minutes)?;
    let result =
        native::sell_extension(state, headers, extension, price, path, &offer.title, StatusCode::NO_CONTENT)
            .await?;
    match result {
        Ok(_) => Ok(None),
        Err(PayError::Work { error, .. }) => Err(Refusal(error)),
        Err(e) => Ok(Some(gate::refusal(e))),
    }
}

/// Sets a sandbox to end `timeout` seconds from now.
#[utoipa::path(post, path = "/sandboxes/{id}/timeout", operation_id = "e2bSetSandboxTimeout", tag = "e2b",
    request_body = TimeoutBody, security(("api_key" = [])),
    responses((status = 204, description = "Its end moved"), (status = 401, body = E2bErrorBody),
        (status = 402, description = "Payment required for the minutes beyond its end"),
        (status = 404, body = E2bErrorBody)))]
pub async fn set_timeout(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Refusal> {
    let principal = caller(principal)?;
    let request: TimeoutBody = json::parse(&body)?;
    let path = format!("/sandboxes/{id}/timeout");
    Ok(retime(&state, &headers, &principal, &id, request.timeout, &path)
        .await?
        .unwrap_or_else(|| StatusCode::NO_CONTENT.into_response()))
}

/// Keeps a sandbox alive `duration` seconds more from now (never shortens it).
#[utoipa::path(post, path = "/sandboxes/{id}/refreshes", operation_id = "e2bRefreshSandbox", tag = "e2b",
    request_body(content = Option<RefreshBody>, content_type = "application/json"), security(("api_key" = [])),
    responses((status = 204, description = "Refreshed"), (status = 401, body = E2bErrorBody),
        (status = 402, description = "Payment required"), (status = 404, body = E2bErrorBody)))]
pub async fn refresh(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Refusal> {
    let principal = caller(principal)?;
    let request: RefreshBody = json::parse_optional(&body)?;
    let seconds = request.duration.unwrap_or(DEFAULT_TIMEOUT_SECS).min(3600);
    let service = sandboxes(&state)?;
    let (_, lease) = service.sandbox(&principal.account, &id).await.map_err(ApiError::from)?;
    let left = lease.expires_at.map_or(0, |e| u64::try_from((e - service.now()).num_seconds()).unwrap_or(0));
    if seconds <= left {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let path = format!("/sandboxes/{id}/refreshes");
    Ok(retime(&state, &headers, &principal, &id, seconds, &path)
        .await?
        .unwrap_or_else(|| StatusCode::NO_CONTENT.into_response()))
}

/// Connects to a running sandbox: its details and envd token, its end moved no earlier than
/// `timeout` seconds from now (buying the minutes beyond, as set-timeout does).
async fn connect_to(
    state: &AppState,
    principal: Option<Extension<Principal>>,
    domain: Option<Extension<SandboxDomain>>,
    headers: &HeaderMap,
    id: &str,
    body: &Bytes,
) -> Result<Response, Refusal> {
    let principal = caller(principal)?;
    let request: TimeoutBody = json::parse(body)?;
    let service = sandboxes(state)?;
    let (sandbox, lease) = service.sandbox(&principal.account, id).await.map_err(ApiError::from)?;
    let left = lease.expires_at.map_or(0, |e| u64::try_from((e - service.now()).num_seconds()).unwrap_or(0));
    if request.timeout > left {
        let path = format!("/sandboxes/{id}/connect");
        if let Some(refused) = retime(state, headers, &principal, id, request.timeout, &path).await? {
            return Ok(refused);
        }
    }
    let token = service.issue_access_token(&lease).await.map_err(ApiError::from)?;
    let token = token.expose().to_owned();
    let domain = domain.map(|d| d.0).unwrap_or_default();
    Ok((StatusCode::OK, Json(view(&sandbox, lease.id.to_string(), token, &domain))).into_response())
}

/// Connects to a sandbox (E2B's `POST /sandboxes/{id}/connect`).
#[utoipa::path(post, path = "/sandboxes/{id}/connect", operation_id = "e2bConnectSandbox", tag = "e2b",
    request_body = TimeoutBody, security(("api_key" = [])),
    responses((status = 200, body = SandboxView), (status = 401, body = E2bErrorBody),
        (status = 404, body = E2bErrorBody)))]
pub async fn connect(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    domain: Option<Extension<SandboxDomain>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Refusal> {
    connect_to(&state, principal, domain, &headers, &id, &body).await
}

/// Connects to a sandbox (E2B's `POST /v2/sandboxes/{id}/connect`).
#[utoipa::path(post, path = "/v2/sandboxes/{id}/connect", operation_id = "e2bConnectSandboxV2", tag = "e2b",
    request_body = TimeoutBody, security(("api_key" = [])),
    responses((status = 200, body = SandboxView), (status = 401, body = E2bErrorBody),
        (status = 404, body = E2bErrorBody)))]
pub async fn connect_v2(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    domain: Option<Extension<SandboxDomain>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Refusal> {
    connect_to(&state, principal, domain, &headers, &id, &body).await
}

/// What vendbox does not do, in E2B's shape (after the caller's own sandbox was found).
async fn unsupported(
    state: &AppState,
    principal: Option<Extension<Principal>>,
    id: &str,
    what: &str,
) -> Result<Response, Refusal> {
    let principal = caller(principal)?;
    sandboxes(state)?.sandbox(&principal.account, id).await.map_err(ApiError::from)?;
    Err(Refusal(ApiError::new(
        StatusCode::CONFLICT,
        "e2b_not_supported",
        format!("{what} is not supported by this vendbox; kill the sandbox and create a new one"),
    )))
}

macro_rules! unsupported_operations {
    ($($name:ident, $path:literal, $id:literal, $what:literal;)*) => {$(
        #[doc = concat!("E2B's `", $path, "`: ", $what, " is not supported (409, E2B's error shape).")]
        #[utoipa::path(post, path = $path, operation_id = $id, tag = "e2b", security(("api_key" = [])),
            responses((status = 409, description = "Not supported by vendbox", body = E2bErrorBody),
                (status = 401, body = E2bErrorBody), (status = 404, body = E2bErrorBody)))]
        pub async fn $name(
            State(state): State<AppState>,
            principal: Option<Extension<Principal>>,
            Path(id): Path<String>,
        ) -> Result<Response, Refusal> {
            unsupported(&state, principal, &id, $what).await
        }
    )*};
}

unsupported_operations! {
    pause, "/sandboxes/{id}/pause", "e2bPauseSandbox", "pausing a sandbox";
    resume, "/sandboxes/{id}/resume", "e2bResumeSandbox", "resuming a paused sandbox";
    fork, "/sandboxes/{id}/fork", "e2bForkSandbox", "forking a sandbox";
    snapshot, "/sandboxes/{id}/snapshots", "e2bSnapshotSandbox", "taking a snapshot of a sandbox";
}

/// E2B's `PUT /sandboxes/{id}/network`: changing a sandbox's network is not supported.
#[utoipa::path(put, path = "/sandboxes/{id}/network", operation_id = "e2bSandboxNetwork", tag = "e2b",
    security(("api_key" = [])),
    responses((status = 409, description = "Not supported by vendbox", body = E2bErrorBody),
        (status = 401, body = E2bErrorBody), (status = 404, body = E2bErrorBody)))]
pub async fn network(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    unsupported(&state, principal, &id, "changing a sandbox's network").await
}
