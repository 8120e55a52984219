//! `Lock`: a TTL lock on a key with a fencing token, and the validation of lock requests.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, FieldErrorCode};

/// Shortest TTL a lock may have, in seconds.
pub const MIN_TTL_SECONDS: u32 = 5;
/// Longest TTL a lock may have, in seconds (one day).
pub const MAX_TTL_SECONDS: u32 = 86_400;
/// TTL when the request names none, in seconds.
pub const DEFAULT_TTL_SECONDS: u32 = 900;
/// Largest metadata object, serialized, in bytes.
pub const MAX_METADATA_BYTES: usize = 4096;

/// A number handed out with every grant of a lock; strictly increasing per key and never reused,
/// so a resource can refuse writes from a holder whose lock has passed to someone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FencingToken(pub u64);

/// A validated lock key: 3 to 256 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LockKey(String);

impl LockKey {
    /// Checks the length rule.
    pub fn parse(text: &str) -> Result<Self, CoreError> {
        let chars = text.chars().count();
        if !(3..=256).contains(&chars) {
            return Err(CoreError::field(
                "key",
                FieldErrorCode::InvalidValue,
                format!("`key` must be 3 to 256 characters; got {chars}"),
            ));
        }
        Ok(Self(text.to_owned()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks a TTL in seconds (of an acquisition or a renewal) against the bounds.
pub fn check_ttl(ttl_seconds: u32) -> Result<u32, CoreError> {
    if (MIN_TTL_SECONDS..=MAX_TTL_SECONDS).contains(&ttl_seconds) {
        return Ok(ttl_seconds);
    }
    Err(CoreError::field(
        "ttl_seconds",
        FieldErrorCode::OutOfRange,
        format!("`ttl_seconds` must be between {MIN_TTL_SECONDS} and {MAX_TTL_SECONDS}; got {ttl_seconds}"),
    ))
}

/// A request to hold a key, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct LockRequest {
    /// What to lock.
    pub key: LockKey,
    /// Who asks (an agent, wallet or worker name).
    pub owner: Option<String>,
    /// How long the grant lasts, in seconds.
    pub ttl_seconds: u32,
    /// Small coordination context shown to readers.
    pub metadata: Option<serde_json::Value>,
}

impl LockRequest {
    /// Validates each field, defaulting the TTL to 900 s.
    pub fn new(
        key: &str,
        owner: Option<String>,
        ttl_seconds: Option<u32>,
        metadata: Option<serde_json::Value>,
    ) -> Result<Self, CoreError> {
        let key = LockKey::parse(key)?;
        if let Some(o) = &owner
            && o.chars().count() > 160
        {
            return Err(CoreError::field(
                "owner",
                FieldErrorCode::InvalidValue,
                "`owner` must be at most 160 characters",
            ));
        }
        let ttl_seconds = check_ttl(ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS))?;
        if let Some(m) = &metadata {
            if !m.is_object() {
                return Err(CoreError::field(
                    "metadata",
                    FieldErrorCode::WrongType,
                    "`metadata` must be a JSON object",
                ));
            }
            if m.to_string().len() > MAX_METADATA_BYTES {
                return Err(CoreError::field(
                    "metadata",
                    FieldErrorCode::InvalidValue,
                    format!("`metadata` must serialize to at most {MAX_METADATA_BYTES} bytes"),
                ));
            }
        }
        Ok(Self { key, owner, ttl_seconds, metadata })
    }
}

/// A granted lock, as readers see it (never with its release token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lock {
    /// What is locked.
    pub key: LockKey,
    /// Who holds it.
    pub owner: Option<String>,
    /// This grant's fencing token.
    pub fencing_token: FencingToken,
    /// When this grant was made.
    pub acquired_at: DateTime<Utc>,
    /// When this grant lapses unless renewed.
    pub expires_at: DateTime<Utc>,
    /// How long the last acquisition or renewal made it last, in milliseconds; a renewal that
    /// names no TTL extends by this much.
    pub ttl_ms: u64,
    /// When the holder released it, in the store's clock; `None` while it is held (or lapsed).
    pub released_at: Option<DateTime<Utc>>,
    /// Coordination context.
    pub metadata: Option<serde_json::Value>,
}

impl Lock {
    /// When the last acquisition or renewal happened, in the store's clock.
    pub fn renewed_at(&self) -> DateTime<Utc> {
        let ttl = chrono::Duration::milliseconds(i64::try_from(self.ttl_ms).unwrap_or(i64::MAX));
        self.expires_at.checked_sub_signed(ttl).unwrap_or(self.acquired_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_each_field() {
        let ok = LockRequest::new("bounty:create:x", Some("agent".into()), None, None).unwrap();
        assert_eq!(ok.ttl_seconds, DEFAULT_TTL_SECONDS);
        let field_of = |e: CoreError| match e {
            CoreError::Field(f) => f.field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field_of(LockRequest::new("ab", None, None, None).unwrap_err()), "key");
        assert_eq!(field_of(LockRequest::new(&"k".repeat(257), None, None, None).unwrap_err()), "key");
        assert_eq!(
            field_of(LockRequest::new("abc", Some("o".repeat(161)), None, None).unwrap_err()),
            "owner"
        );
        assert_eq!(field_of(LockRequest::new("abc", None, Some(4), None).unwrap_err()), "ttl_seconds");
        assert_eq!(field_of(LockRequest::new("abc", None, Some(86_401), None).unwrap_err()), "ttl_seconds");
        let big = serde_json::json!({ "x": "y".repeat(5000) });
        assert_eq!(field_of(LockRequest::new("abc", None, None, Some(big)).unwrap_err()), "metadata");
        let not_object = serde_json::json!([1]);
        assert_eq!(field_of(LockRequest::new("abc", None, None, Some(not_object)).unwrap_err()), "metadata");
    }
}
