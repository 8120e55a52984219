//! Agent Lock, native: TTL locks with fencing tokens, paid per grant, at `/v1/locks/{key}` (the
//! key in the path, the release token as a bearer). H3RETIK's surface (`surfaces::h3retik::locks`,
//! the key and token in the body) shares this module's rules and answers' bodies.
//!
//! Acquiring and renewing are sold at the catalog's prices (pay on success: a key already held
//! answers `acquired: false` and charges nothing, unless the acquire offer says
//! `charge_when_held = true`, H3RETIK's own rule; a renewal that fails charges nothing).
//! Paid from credits, an acquisition without a wait is checked, granted and charged in one write
//! of the store (`Payments::pay_spending`, `Locks::acquire_paid`), answered as any other.
//! Releasing and reading are free. Every decision about time is the store's clock's.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use vendbox_core::{Lock, LockKey, LockRequest, SecretToken, check_ttl};
use vendbox_pay::ChargeKind;
use vendbox_service::locks::{Acquired, Released};

use crate::app::AppState;
use crate::error::ApiError;
use crate::json;
use vendbox_service::Delivery;

pub use vendbox_service::locks::{ACQUIRE, CHARGE_WHEN_HELD, RENEW, WhenHeld};

/// The native acquisition: the key is in the path.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NativeAcquireRequest {
    /// Agent, wallet or worker name, up to 160 characters.
    pub owner: Option<String>,
    /// Seconds before the lock lapses unless renewed: 5 to 86400, 900 when absent.
    #[schema(minimum = 5, maximum = 86400)]
    pub ttl_seconds: Option<u32>,
    /// Small coordination context (a JSON object of at most 4096 bytes).
    pub metadata: Option<serde_json::Value>,
}

/// The native renewal: key in the path, token as bearer.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NativeRenewRequest {
    /// New TTL from now, 5 to 86400 seconds; the grant's last TTL when absent.
    #[schema(minimum = 5, maximum = 86400)]
    pub ttl_seconds: Option<u32>,
}

/// A grant as anyone may see it: never its release token.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LockView {
    /// The key.
    pub key: String,
    /// Who holds it, as they named themselves.
    pub owner: Option<String>,
    /// This grant's fencing token: strictly increasing per key, never reused. Pass it to the
    /// resource the lock protects, and have it refuse tokens lower than the highest it has seen.
    pub fencing_token: u64,
    /// When the grant was made (the store's clock).
    pub acquired_at: DateTime<Utc>,
    /// When it was last acquired or renewed (the store's clock).
    pub renewed_at: DateTime<Utc>,
    /// When it lapses unless renewed (the store's clock).
    pub expires_at: DateTime<Utc>,
    /// The TTL of the last acquisition or renewal, in seconds.
    pub ttl_seconds: u64,
    /// Coordination context given at acquisition.
    pub metadata: Option<serde_json::Value>,
}

impl From<&Lock> for LockView {
    fn from(lock: &Lock) -> Self {
        Self {
            key: lock.key.as_str().to_owned(),
            owner: lock.owner.clone(),
            fencing_token: lock.fencing_token.0,
            acquired_at: lock.acquired_at,
            renewed_at: lock.renewed_at(),
            expires_at: lock.expires_at,
            ttl_seconds: lock.ttl_ms.div_ceil(1000),
            metadata: lock.metadata.clone(),
        }
    }
}

/// The answer to an acquisition.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AcquireResponse {
    /// The request was served.
    pub ok: bool,
    /// `true`: the caller holds the key under `lock`. `false`: someone else does (`lock` is
    /// theirs, without its token), and nothing was charged.
    pub acquired: bool,
    /// The grant.
    pub lock: LockView,
    /// Only when acquired: the secret that renews and releases this grant. Shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_token: Option<String>,
    /// Only when acquired: the grant's fencing token (also in `lock`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fencing_token: Option<u64>,
}

/// The answer to a release.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReleaseResponse {
    /// The request was served.
    pub ok: bool,
    /// The grant is over; the key is free unless granted since.
    pub released: bool,
    /// `true` when this token had already released its grant (releasing is idempotent).
    pub already_released: bool,
    /// The key.
    pub key: String,
    /// The fencing token of the grant released.
    pub fencing_token: u64,
    /// When it was released (the store's clock).
    pub released_at: DateTime<Utc>,
}

/// The answer to a renewal.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RenewResponse {
    /// The request was served.
    pub ok: bool,
    /// The grant now lasts until `lock.expires_at`.
    pub renewed: bool,
    /// The grant, with its new expiry.
    pub lock: LockView,
}

/// The answer to a read.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LockStatus {
    /// The request was served.
    pub ok: bool,
    /// The key.
    pub key: String,
    /// Whether an unexpired grant holds the key.
    pub held: bool,
    /// That grant, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<LockView>,
}

/// How long a native acquisition waits for a held key.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Wait up to this many seconds (1 to 60) for a held key instead of answering at once: the
    /// key is granted when its holder releases it or its grant lapses, to this vendbox's waiters
    /// in arrival order. Without it (or 0), a held key is answered at once.
    #[param(minimum = 0, maximum = 60)]
    pub wait_seconds: Option<u32>,
}

/// Native acquisition of `key`: as `POST /x402/locks/acquire`, answering 201 when acquired.
#[utoipa::path(
    post,
    path = "/v1/locks/{key}",
    operation_id = "acquireLock",
    tag = "locks",
    params(("key" = String, Path, description = "The key, 3 to 256 characters (percent-encode `/`)"), WaitQuery),
    request_body(content = NativeAcquireRequest, description = "Optional"),
    responses(
        (status = 201, description = "Acquired; `release_token` is shown once", body = AcquireResponse),
        (status = 200, description = "Held by another actor: `acquired: false`, not charged (unless the acquire offer has `labels.charge_when_held = true`)", body = AcquireResponse),
        (status = 400, description = "Invalid key, owner, TTL, metadata or body", body = crate::error::ErrorBody),
        (status = 402, description = "Payment required (or refused)"),
        (status = 503, description = "Locks are not offered here, or payments cannot be taken now", body = crate::error::ErrorBody),
    )
)]
pub async fn native_acquire(
    State(state): State<AppState>,
    Path(key): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    query: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let bad_wait = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "out_of_range",
            "`wait_seconds` must be a whole number from 0 to 60",
        )
        .with_field("wait_seconds")
    };
    let Query(query) = query.map_err(|_| bad_wait())?;
    let wait = match query.wait_seconds {
        None | Some(0) => None,
        Some(s) if u64::from(s) <= vendbox_service::locks::MAX_WAIT.as_secs() => {
            Some(std::time::Duration::from_secs(u64::from(s)))
        }
        Some(_) => return Err(bad_wait()),
    };
    let body: NativeAcquireRequest = json::parse_optional(&body)?;
    let request = LockRequest::new(&key, body.owner, body.ttl_seconds, body.metadata)?;
    acquire(&state, &headers, request, uri.path(), StatusCode::CREATED, wait).await
}

/// Native release of `key`, with the release token as a bearer.
#[utoipa::path(
    delete,
    path = "/v1/locks/{key}",
    operation_id = "releaseLock",
    tag = "locks",
    params(("key" = String, Path, description = "The key")),
    security(("release_token" = [])),
    responses(
        (status = 200, description = "Released (or already released by this token)", body = ReleaseResponse),
        (status = 401, description = "No bearer token", body = crate::error::ErrorBody),
        (status = 409, description = "`lock_not_held` or `lock_expired`; nothing changed", body = crate::error::ErrorBody),
    )
)]
pub async fn native_release(
    State(state): State<AppState>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Result<Json<ReleaseResponse>, ApiError> {
    let key = LockKey::parse(&key)?;
    release(&state, &key, &bearer(&headers)?).await
}

/// Native renewal of `key`, with the release token as a bearer.
#[utoipa::path(
    post,
    path = "/v1/locks/{key}/renew",
    operation_id = "renewLock",
    tag = "locks",
    params(("key" = String, Path, description = "The key")),
    security(("release_token" = [])),
    request_body(content = NativeRenewRequest, description = "Optional"),
    responses(
        (status = 200, description = "Renewed", body = RenewResponse),
        (status = 400, description = "Invalid key, TTL or body", body = crate::error::ErrorBody),
        (status = 401, description = "No bearer token", body = crate::error::ErrorBody),
        (status = 402, description = "Payment required (or refused)"),
        (status = 409, description = "`lock_not_held`, `lock_expired` or `lock_released`; nothing changed and nothing was charged", body = crate::error::ErrorBody),
    )
)]
pub async fn native_renew(
    State(state): State<AppState>,
    Path(key): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: NativeRenewRequest = json::parse_optional(&body)?;
    let key = LockKey::parse(&key)?;
    let token = bearer(&headers)?;
    renew(&state, &headers, key, token, body.ttl_seconds, uri.path()).await
}

/// Native read of `key`: as `GET /x402/locks/{key}`.
#[utoipa::path(
    get,
    path = "/v1/locks/{key}",
    operation_id = "getLock",
    tag = "locks",
    params(("key" = String, Path, description = "The key")),
    responses(
        (status = 200, description = "`held` and, when held, the grant", body = LockStatus),
        (status = 400, description = "Invalid key", body = crate::error::ErrorBody),
    )
)]
pub async fn native_get(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<Json<LockStatus>, ApiError> {
    read(&state, &key).await
}

pub(crate) async fn acquire(
    state: &AppState,
    headers: &HeaderMap,
    request: LockRequest,
    path: &str,
    created: StatusCode,
    wait: Option<std::time::Duration>,
) -> Result<Response, ApiError> {
    let locks = state.locks();
    let offer = locks.offer(ACQUIRE)?;
    let charge = state.payments.charge_for(ChargeKind::Lock, offer.price.price(0, 0)?, path, &offer.title)?;
    let when_held = locks.when_held();
    let paid_alone = (locks.clone(), request.clone());
    let work = async move {
        let acquired = match wait {
            Some(wait) => locks.acquire_waiting(&request, wait).await?,
            None => locks.acquire(&request).await?,
        };
        Ok(match acquired {
            Acquired::Granted { lock, release_token } => {
                // Unpaid after all: give the key back at once rather than at expiry.
                let undo = locks.give_back(lock.key.clone(), &release_token);
                Delivery::delivered(answer(Acquired::Granted { lock, release_token }, created))
                    .undo_with(undo)
            }
            held @ Acquired::Held(_) => match when_held {
                WhenHeld::Void => Delivery::not_delivered(answer(held, created)),
                WhenHeld::Charge => Delivery::delivered(answer(held, created)),
            },
        })
    };
    if wait.is_some() {
        // A wait tries the key until it is free, paid once (with credits: held for the wait).
        return Ok(crate::gate::pay(&state.payments, headers, charge, |_| work).await);
    }
    // Paid from credits, the grant and its charge are one write of the store.
    let (locks, request) = paid_alone;
    let spend = |spend| async move {
        Ok(locks.acquire_paid(&request, spend).await?.map(|acquired| answer(acquired, created)))
    };
    Ok(crate::gate::pay_spending(&state.payments, headers, charge, |_| work, spend).await)
}

/// The answer to an acquisition: `created` and the release token (shown once) for a grant, 200
/// and the holder's grant (never its token) for a key held by another.
fn answer(acquired: Acquired, created: StatusCode) -> (StatusCode, Json<AcquireResponse>) {
    match acquired {
        Acquired::Granted { lock, release_token } => (
            created,
            Json(AcquireResponse {
                ok: true,
                acquired: true,
                lock: LockView::from(&lock),
                release_token: Some(release_token.expose().to_owned()),
                fencing_token: Some(lock.fencing_token.0),
            }),
        ),
        Acquired::Held(holder) => (
            StatusCode::OK,
            Json(AcquireResponse {
                ok: true,
                acquired: false,
                lock: LockView::from(&holder),
                release_token: None,
                fencing_token: None,
            }),
        ),
    }
}

pub(crate) async fn renew(
    state: &AppState,
    headers: &HeaderMap,
    key: LockKey,
    token: SecretToken,
    ttl_seconds: Option<u32>,
    path: &str,
) -> Result<Response, ApiError> {
    let ttl_seconds = ttl_seconds.map(check_ttl).transpose()?;
    let locks = state.locks();
    let offer = locks.offer(RENEW)?;
    // A token that holds nothing is refused before payment is asked for (the renewal itself
    // checks again, atomically, once paid).
    locks.check_holder(&key, &token).await?;
    let charge = state.payments.charge_for(ChargeKind::Lock, offer.price.price(0, 0)?, path, &offer.title)?;
    let work = async move {
        let lock = locks.renew(&key, &token, ttl_seconds).await?;
        Ok(Json(RenewResponse { ok: true, renewed: true, lock: LockView::from(&lock) }))
    };
    Ok(crate::gate::pay_on_success(&state.payments, headers, charge, work).await)
}

pub(crate) async fn release(
    state: &AppState,
    key: &LockKey,
    token: &SecretToken,
) -> Result<Json<ReleaseResponse>, ApiError> {
    let Released { lock, already_released } = state.locks().release(key, token).await?;
    let released_at =
        lock.released_at.ok_or_else(|| ApiError::internal(&"a released lock has no release time"))?;
    Ok(Json(ReleaseResponse {
        ok: true,
        released: true,
        already_released,
        key: key.as_str().to_owned(),
        fencing_token: lock.fencing_token.0,
        released_at,
    }))
}

pub(crate) async fn read(state: &AppState, key: &str) -> Result<Json<LockStatus>, ApiError> {
    let key = LockKey::parse(key)?;
    let lock = state.locks().holder(&key).await?;
    Ok(Json(LockStatus {
        ok: true,
        key: key.as_str().to_owned(),
        held: lock.is_some(),
        lock: lock.as_ref().map(LockView::from),
    }))
}

/// The bearer token of a native lock request.
fn bearer(headers: &HeaderMap) -> Result<SecretToken, ApiError> {
    crate::auth::bearer(headers, "the lock's release token")
}
