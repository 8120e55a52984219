//! Bearer tokens: how a request presents the token of what it bought (a lock's release token, a
//! box's lease token).

use axum::http::{HeaderMap, StatusCode, header};
use vendbox_core::SecretToken;

use crate::error::ApiError;

/// The token in `Authorization: Bearer …`, if the request sent one.
pub fn optional_bearer(headers: &HeaderMap) -> Option<SecretToken> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(SecretToken::presented)
}

/// The bearer token of a request that needs one; 401 `missing_token` naming `what` otherwise.
pub fn bearer(headers: &HeaderMap, what: &str) -> Result<SecretToken, ApiError> {
    optional_bearer(headers).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            format!("send {what} as `Authorization: Bearer …`"),
        )
    })
}
