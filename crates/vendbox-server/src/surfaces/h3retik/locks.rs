//! H3RETIK's Agent Lock, path for path: `POST /x402/locks/acquire`, its `release` and `renew`,
//! and `GET /x402/locks/{key}`, with the key and the release token in the body. The rules and the
//! answers' bodies are the native lock surface's (`surfaces::native::locks`), which this one
//! shares.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use vendbox_core::{LockKey, LockRequest, SecretToken};

use crate::app::AppState;
use crate::error::ApiError;
use crate::json::ApiJson;
use crate::surfaces::native::locks::{
    AcquireResponse, LockStatus, ReleaseResponse, RenewResponse, acquire, read, release, renew,
};

/// A request to take a key.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcquireRequest {
    /// Unique lock key, 3 to 256 characters.
    #[schema(example = "h1dr4:x-mention:2066895922949464487", min_length = 3, max_length = 256)]
    pub key: String,
    /// Agent, wallet or worker name, up to 160 characters.
    #[schema(example = "h1dr4-agent", max_length = 160)]
    pub owner: Option<String>,
    /// Seconds before the lock lapses unless renewed: 5 to 86400, 900 when absent.
    #[schema(example = 900, minimum = 5, maximum = 86400)]
    pub ttl_seconds: Option<u32>,
    /// Small coordination context (a JSON object of at most 4096 bytes), shown to readers.
    pub metadata: Option<serde_json::Value>,
}

/// A request to release a key.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    /// The key.
    pub key: String,
    /// The token the acquisition returned.
    pub release_token: String,
}

/// A request to extend a held key.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// The key.
    pub key: String,
    /// The token the acquisition returned.
    pub release_token: String,
    /// New TTL from now, 5 to 86400 seconds; the grant's last TTL when absent.
    #[schema(minimum = 5, maximum = 86400)]
    pub ttl_seconds: Option<u32>,
}

/// Tries to take a key for the caller. Pay on success: `acquired: true` settles the payment
/// before answering; `acquired: false` (the key is held) voids it, so nothing is charged, unless
/// the operator's acquire offer says `labels.charge_when_held = true` (H3RETIK's own rule: the
/// attempt is what is sold), when it settles too and the answer carries the receipt.
#[utoipa::path(
    post,
    path = "/x402/locks/acquire",
    operation_id = "acquireAgentLockX402",
    tag = "h3retik",
    request_body = AcquireRequest,
    responses(
        (status = 200, description = "Paid (or free) and attempted: `acquired: true` with `release_token`, or `acquired: false` while another actor holds the key (not charged by default; charged when the acquire offer has `labels.charge_when_held = true`)", body = AcquireResponse),
        (status = 400, description = "Invalid key, owner, TTL, metadata or body, or an unreadable payment header", body = crate::error::ErrorBody),
        (status = 402, description = "Payment required (or refused): x402 v1 body, v2 `PAYMENT-REQUIRED` header"),
        (status = 503, description = "Locks are not offered here, or payments cannot be taken now", body = crate::error::ErrorBody),
    )
)]
pub async fn h3retik_acquire(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<AcquireRequest>,
) -> Result<Response, ApiError> {
    let request = LockRequest::new(&body.key, body.owner, body.ttl_seconds, body.metadata)?;
    acquire(&state, &headers, request, "/x402/locks/acquire", StatusCode::OK, None).await
}

/// Ends the caller's grant. Free. Again with the same token: the same answer
/// (`already_released: true`). A token whose grant lapsed or passed to someone else is refused
/// with 409 and changes nothing.
#[utoipa::path(
    post,
    path = "/x402/locks/release",
    operation_id = "releaseAgentLockX402",
    tag = "h3retik",
    request_body = ReleaseRequest,
    responses(
        (status = 200, description = "Released (or already released by this token)", body = ReleaseResponse),
        (status = 400, description = "Invalid key or body", body = crate::error::ErrorBody),
        (status = 409, description = "`lock_not_held` (the token holds no grant on this key: never, or the key passed on) or `lock_expired` (its grant lapsed); nothing changed", body = crate::error::ErrorBody),
    )
)]
pub async fn h3retik_release(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ReleaseRequest>,
) -> Result<Json<ReleaseResponse>, ApiError> {
    let key = LockKey::parse(&body.key)?;
    release(&state, &key, &SecretToken::presented(body.release_token)).await
}

/// Extends the caller's unexpired grant to `ttl_seconds` from now (its last TTL when absent),
/// keeping its fencing token. Paid at the catalog's renewal price, on success only: a lapsed,
/// released or superseded grant is refused with 409 before any payment is asked for, and one
/// that lapses while the payment is checked is refused and charges nothing.
#[utoipa::path(
    post,
    path = "/x402/locks/renew",
    operation_id = "renewAgentLockX402",
    tag = "h3retik",
    request_body = RenewRequest,
    responses(
        (status = 200, description = "Renewed", body = RenewResponse),
        (status = 400, description = "Invalid key, TTL or body", body = crate::error::ErrorBody),
        (status = 402, description = "Payment required (or refused)"),
        (status = 409, description = "`lock_not_held`, `lock_expired` or `lock_released`; nothing changed and nothing was charged", body = crate::error::ErrorBody),
        (status = 503, description = "Renewals are not offered here, or payments cannot be taken now", body = crate::error::ErrorBody),
    )
)]
pub async fn h3retik_renew(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RenewRequest>,
) -> Result<Response, ApiError> {
    let key = LockKey::parse(&body.key)?;
    let token = SecretToken::presented(body.release_token);
    renew(&state, &headers, key, token, body.ttl_seconds, "/x402/locks/renew").await
}

/// Who holds `key` and until when; never the release token. Free.
#[utoipa::path(
    get,
    path = "/x402/locks/{key}",
    operation_id = "getAgentLockX402",
    tag = "h3retik",
    params(("key" = String, Path, description = "The key")),
    responses(
        (status = 200, description = "`held` and, when held, the grant", body = LockStatus),
        (status = 400, description = "Invalid key", body = crate::error::ErrorBody),
    )
)]
pub async fn h3retik_get(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<Json<LockStatus>, ApiError> {
    read(&state, &key).await
}
