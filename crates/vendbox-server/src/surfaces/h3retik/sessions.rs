//! H3RETIK's disposable VPS sessions, path for path: `POST /x402/sessions/micro`, `/probe`,
//! `/ops`, `/deep` and `POST /x402/sessions` (custom minutes and actions), with the seed's
//! request validation and response fields. A session is a box; its `session_token` is the box's
//! bearer token. vendbox adds, on the same surface, `POST /x402/sessions/{session_id}/exec` to run
//! a command (one action) and `GET /x402/sessions/{session_id}` to read the session.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use vendbox_core::{Capability, Lease, LeaseState, OfferKind, QuoteParams};

use crate::app::AppState;
use crate::auth::optional_bearer;
use crate::error::ApiError;
use crate::json::{self, ApiJson};
use crate::surfaces::native::boxes::{self, ExecRequest, ExecResponse};

/// The offer custom sessions are sold from.
pub const CUSTOM_OFFER: &str = "h3retik-custom";

/// The seed's `Location` values.
pub const LOCATIONS: [&str; 4] = ["auto", "us", "europe", "asia"];

/// The seed's `FixedPackageInput`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FixedPackageInput {
    /// Preferred compute region: `auto` (default), `us`, `europe` or `asia`.
    #[schema(example = "auto")]
    pub location: Option<String>,
}

/// The seed's `CustomSessionInput`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomSessionInput {
    /// Requested compute minutes, 1 to 360.
    #[schema(minimum = 1, maximum = 360, example = 20)]
    pub minutes: u32,
    /// Maximum commands allowed in the session, 1 to 300.
    #[schema(minimum = 1, maximum = 300, example = 12)]
    pub actions: u32,
    /// Preferred compute region: `auto` (default), `us`, `europe` or `asia`.
    pub location: Option<String>,
}

/// The seed's `SessionResponse`, with the session token.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionResponse {
    /// Always true.
    pub ok: bool,
    /// The session's id.
    pub session_id: String,
    /// Bearer token for the session's commands; shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    /// When the compute window closes.
    pub expires_at: Option<DateTime<Utc>>,
    /// Commands left.
    pub actions_remaining: Option<u32>,
    /// The region it runs in.
    pub location: String,
    /// `micro`, `probe`, `ops`, `deep` or `custom`.
    pub package: String,
    /// `active`, `expired`, `terminated` or `failed`.
    pub status: LeaseState,
    /// Where to send commands (`POST`, bearer `session_token`).
    pub exec_url: String,
}

fn session_response(lease: &Lease, token: Option<String>) -> SessionResponse {
    let package =
        lease.offer_id.as_str().strip_prefix("h3retik-").unwrap_or(lease.offer_id.as_str()).to_owned();
    SessionResponse {
        ok: true,
        session_id: lease.id.to_string(),
        session_token: token,
        expires_at: lease.expires_at,
        actions_remaining: lease.actions_remaining,
        location: lease.region.clone().unwrap_or_else(|| "auto".into()),
        package,
        status: lease.state,
        exec_url: format!("/x402/sessions/{}/exec", lease.id),
    }
}

fn location(asked: Option<String>) -> Result<String, ApiError> {
    let location = asked.unwrap_or_else(|| "auto".into());
    if LOCATIONS.contains(&location.as_str()) {
        Ok(location)
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_location",
            format!("`location` must be one of {}; got `{location}`", LOCATIONS.join(", ")),
        )
        .with_field("location"))
    }
}

/// Buys a session of `offer_id` and answers with the seed's body.
async fn sell(
    state: &AppState,
    headers: &HeaderMap,
    offer_id: &str,
    params: QuoteParams,
    path: &str,
) -> Result<Response, ApiError> {
    let bought = boxes::buy(state, headers, offer_id, &params, path, boxes::Access::root(Vec::new())).await?;
    Ok(crate::gate::respond(bought, |provisioned| {
        let body = session_response(&provisioned.lease, Some(provisioned.token(Capability::Root)));
        (StatusCode::OK, Json(body))
    }))
}

/// The sandbox offer of the H3RETIK package `package`.
fn package_offer(state: &AppState, package: &str) -> Result<String, ApiError> {
    state
        .catalog
        .now()
        .labelled("package", package)
        .find(|o| o.kind == OfferKind::Sandbox && o.surface == "h3retik")
        .map(|o| o.id.to_string())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_package",
                format!("this vendbox does not sell the `{package}` package"),
            )
        })
}

macro_rules! fixed_package {
    ($name:ident, $package:literal, $operation:literal, $summary:literal) => {
        #[doc = $summary]
        #[utoipa::path(post, path = concat!("/x402/sessions/", $package), operation_id = $operation, tag = "h3retik",
            summary = $summary, request_body(content = Option<FixedPackageInput>, content_type = "application/json"),
            responses((status = 200, body = SessionResponse), (status = 402, description = "Payment required"),
                (status = 400, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody)))]
        pub async fn $name(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
            let input: FixedPackageInput = json::parse_optional(&body)?;
            let offer = package_offer(&state, $package)?;
            let params = QuoteParams { region: Some(location(input.location)?), ..QuoteParams::default() };
            sell(&state, &headers, &offer, params, concat!("/x402/sessions/", $package)).await
        }
    };
}

fixed_package!(
    micro,
    "micro",
    "createMicroX402Session",
    "Micro disposable VPS session (5 minutes, 3 actions)"
);
fixed_package!(
    probe,
    "probe",
    "createProbeX402Session",
    "Probe disposable VPS session (15 minutes, 10 actions)"
);
fixed_package!(ops, "ops", "createOpsX402Session", "Ops disposable VPS session (60 minutes, 50 actions)");
fixed_package!(
    deep,
    "deep",
    "createDeepX402Session",
    "Deep disposable VPS session (180 minutes, 150 actions)"
);

/// Custom disposable VPS session: minutes 1-360, actions 1-300.
#[utoipa::path(post, path = "/x402/sessions", operation_id = "createCustomX402Session", tag = "h3retik",
    request_body = CustomSessionInput,
    responses((status = 200, body = SessionResponse), (status = 402, description = "Payment required"),
        (status = 400, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody)))]
pub async fn custom(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(input): ApiJson<CustomSessionInput>,
) -> Result<Response, ApiError> {
    for (field, value, max) in [("minutes", input.minutes, 360), ("actions", input.actions, 300)] {
        if !(1..=max).contains(&value) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "out_of_range",
                format!("`{field}` must be between 1 and {max}; got {value}"),
            )
            .with_field(field));
        }
    }
    let catalog = state.catalog.now();
    let offer = catalog.offer(CUSTOM_OFFER).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_package",
            "this vendbox does not sell custom sessions",
        )
    })?;
    let offer = offer.id.to_string();
    let params = QuoteParams {
        minutes: Some(input.minutes),
        actions: Some(input.actions),
        region: Some(location(input.location)?),
        image: None,
    };
    sell(&state, &headers, &offer, params, "/x402/sessions").await
}

/// Reads a session (bearer `session_token`).
#[utoipa::path(get, path = "/x402/sessions/{session_id}", operation_id = "getX402Session", tag = "h3retik",
    security(("lease_token" = [])),
    responses((status = 200, body = SessionResponse), (status = 401, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<SessionResponse>, ApiError> {
    let lease =
        boxes::service(&state)?.open(&id, optional_bearer(&headers).as_ref(), Capability::Read).await?;
    Ok(Json(session_response(&lease, None)))
}

/// The answer to a session command: the command's result plus the session's id.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionExecResponse {
    /// Always true when the command ran (whatever its exit code).
    pub ok: bool,
    /// The session.
    pub session_id: String,
    /// The command's result.
    #[serde(flatten)]
    pub result: ExecResponse,
}

/// Runs one command in the session (one action). Bearer `session_token`. Body: `command` (a
/// shell line) or `argv`, optional `env`, `cwd`, `timeout_seconds`. When the session's actions
/// are used up: 409 `actions_exhausted`; after its window: 410 `box_expired`.
#[utoipa::path(post, path = "/x402/sessions/{session_id}/exec", operation_id = "execX402Session", tag = "h3retik",
    security(("lease_token" = [])), request_body = ExecRequest,
    responses((status = 200, body = SessionExecResponse), (status = 401, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody), (status = 410, body = crate::error::ErrorBody)))]
pub async fn exec(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<ExecRequest>,
) -> Result<Json<SessionExecResponse>, ApiError> {
    let boxes = boxes::service(&state)?;
    let lease = boxes.open(&id, optional_bearer(&headers).as_ref(), Capability::Root).await?;
    let result = boxes::run(&boxes, &lease, request).await?;
    Ok(Json(SessionExecResponse { ok: true, session_id: lease.id.to_string(), result }))
}
