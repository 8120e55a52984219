//! [`Auth`]: who a request speaks for. A wallet proves itself by signing the request (EIP-191
//! `personal_sign` over [`signed_message`]: method, path with query, timestamp, nonce and the
//! body's SHA-256), with a timestamp inside a bounded window and a nonce used once in it; or an
//! API key the wallet made stands for it, within the key's scope and caps. Either gives a
//! [`Principal`]. Keys are made, listed and revoked here too.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use vendbox_core::{AccountAddress, KeyGrant, KeyScope, Principal, SecretToken, Usdc, generate_api_key};
use vendbox_store::{ApiKey, Store, StoreError};

use crate::clock::{Clock, SystemClock};

/// The first line of every signed message: the scheme and its version.
pub const SIGNATURE_SCHEME: &str = "vendbox-auth-v1";

/// How far a signed request's timestamp may be from the server's clock, either way, by default.
pub const DEFAULT_WINDOW: Duration = Duration::minutes(5);

/// Longest nonce accepted, in bytes.
pub const MAX_NONCE_BYTES: usize = 128;

/// Longest API key label, in characters.
pub const MAX_LABEL_CHARS: usize = 100;

/// API keys one wallet may hold unrevoked.
pub const MAX_LIVE_KEYS: usize = 100;

/// The text a wallet signs for one request, with EIP-191 `personal_sign`: six lines joined by
/// `\n` (no trailing newline): [`SIGNATURE_SCHEME`], the method in capitals, the path with its
/// query string exactly as sent, the timestamp in Unix milliseconds, the nonce, and the body's
/// SHA-256 in lowercase hex (that of the empty string when there is no body).
pub fn signed_message(
    method: &str,
    path_and_query: &str,
    timestamp_ms: i64,
    nonce: &str,
    body_sha256: &str,
) -> String {
    format!(
        "{SIGNATURE_SCHEME}\n{}\n{path_and_query}\n{timestamp_ms}\n{nonce}\n{body_sha256}",
        method.to_ascii_uppercase()
    )
}

/// A request's signature headers and what it signed, as the HTTP layer read them.
#[derive(Debug, Clone)]
pub struct SignedRequest<'a> {
    /// `X-Auth-Address`.
    pub address: &'a str,
    /// `X-Auth-Chain`: `base` (the only one accepted).
    pub chain: &'a str,
    /// `X-Auth-Signature`: 65 bytes in hex.
    pub signature: &'a str,
    /// `X-Auth-Timestamp`: Unix milliseconds, as sent.
    pub timestamp: &'a str,
    /// `X-Auth-Nonce`.
    pub nonce: &'a str,
    /// `X-Auth-Sig-Encoding`: `hex` (or absent).
    pub encoding: Option<&'a str>,
    /// The request's method.
    pub method: &'a str,
    /// The request's path with its query string.
    pub path_and_query: &'a str,
    /// The SHA-256 of the request's body, lowercase hex.
    pub body_sha256: &'a str,
}

/// What a new API key may do, as its wallet asked.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    /// A name for it.
    pub label: Option<String>,
    /// What it may buy.
    pub scope: KeyScope,
    /// Most it may spend per UTC day.
    pub daily_cap: Option<Usdc>,
    /// Most it may spend in all.
    pub total_cap: Option<Usdc>,
}

/// Why a request is not authenticated, or a key not made or revoked.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A signature header is missing or unreadable.
    #[error("{message}")]
    BadHeader {
        /// The header.
        header: &'static str,
        /// What is wrong.
        message: String,
    },
    /// `X-Auth-Chain` names a chain vendbox does not verify.
    #[error("X-Auth-Chain `{0}` is not supported; sign with an EVM wallet and send `base`")]
    UnsupportedChain(String),
    /// The signature does not recover to `X-Auth-Address` over this request.
    #[error(
        "the signature is not X-Auth-Address's over this request ({0}); sign the message the README describes"
    )]
    BadSignature(String),
    /// The timestamp is too far from the server's clock.
    #[error("X-Auth-Timestamp is {off_ms} ms from the server's clock; it must be within {window_secs} s")]
    TimestampOutOfWindow {
        /// How far off, signed (positive: in the future).
        off_ms: i64,
        /// The window, either way.
        window_secs: i64,
    },
    /// The nonce was used before by this address within the window.
    #[error("X-Auth-Nonce was used before; sign every request with a new nonce")]
    NonceReused,
    /// No API key has this value.
    #[error("the API key is not known")]
    UnknownApiKey,
    /// The API key was revoked.
    #[error("the API key was revoked")]
    RevokedApiKey,
    /// Making or managing API keys needs a wallet signature, not another key.
    #[error("this needs the wallet's own signature (X-Auth-* headers), not an API key")]
    SignatureRequired,
    /// A request to make a key is not acceptable.
    #[error("{message}")]
    InvalidKey {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The wallet has no key with this id.
    #[error("there is no API key `{0}` of this wallet")]
    KeyNotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AuthError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::BadHeader { .. } => "bad_auth_header",
            AuthError::UnsupportedChain(_) => "unsupported_chain",
            AuthError::BadSignature(_) => "bad_signature",
            AuthError::TimestampOutOfWindow { .. } => "timestamp_out_of_window",
            AuthError::NonceReused => "nonce_reused",
            AuthError::UnknownApiKey => "unknown_api_key",
            AuthError::RevokedApiKey => "revoked_api_key",
            AuthError::SignatureRequired => "signature_required",
            AuthError::InvalidKey { .. } => "invalid_api_key_request",
            AuthError::KeyNotFound(_) => "api_key_not_found",
            AuthError::Store(_) => "store_unavailable",
        }
    }

    /// The header or field the error is about, if one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            AuthError::BadHeader { header, .. } => Some(header),
            AuthError::UnsupportedChain(_) => Some("X-Auth-Chain"),
            AuthError::BadSignature(_) => Some("X-Auth-Signature"),
            AuthError::TimestampOutOfWindow { .. } => Some("X-Auth-Timestamp"),
            AuthError::NonceReused => Some("X-Auth-Nonce"),
            AuthError::InvalidKey { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// Authentication over the store.
#[derive(Debug, Clone)]
pub struct Auth {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    window: Duration,
}

impl Auth {
    /// Authentication over `store`, with the system clock and a window of `window` either way.
    pub fn new(store: Arc<dyn Store>, window: std::time::Duration) -> Auth {
        Auth {
            store,
            clock: Arc::new(SystemClock),
            window: Duration::from_std(window).unwrap_or(DEFAULT_WINDOW),
        }
    }

    /// The same, telling time by `clock`.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Auth {
        self.clock = clock;
        self
    }

    /// The wallet that signed `request`, once its timestamp is in the window and its nonce was
    /// claimed (the claim is the last step: a request refused for another reason uses no nonce).
    pub async fn verify_signature(&self, request: &SignedRequest<'_>) -> Result<Principal, AuthError> {
        let bad = |header: &'static str, message: String| AuthError::BadHeader { header, message };
        let chain = request.chain.trim();
        if !chain.eq_ignore_ascii_case("base") {
            return Err(AuthError::UnsupportedChain(chain.to_owned()));
        }
        if let Some(encoding) = request.encoding.map(str::trim).filter(|e| !e.eq_ignore_ascii_case("hex")) {
            return Err(bad(
                "X-Auth-Sig-Encoding",
                format!("`{encoding}` is not taken for base; send `hex`"),
            ));
        }
        let account = AccountAddress::parse(request.address, "X-Auth-Address")
            .map_err(|_| bad("X-Auth-Address", "X-Auth-Address must be 0x and 40 hex digits".into()))?;
        let timestamp: i64 = request.timestamp.trim().parse().map_err(|_| {
            bad("X-Auth-Timestamp", "X-Auth-Timestamp must be Unix time in milliseconds".into())
        })?;
        let nonce = request.nonce;
        if nonce.is_empty() || nonce.len() > MAX_NONCE_BYTES || !nonce.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(
                "X-Auth-Nonce",
                format!("X-Auth-Nonce must be 1 to {MAX_NONCE_BYTES} printable ASCII characters"),
            ));
        }
        let signed_at = DateTime::<Utc>::from_timestamp_millis(timestamp)
            .ok_or_else(|| bad("X-Auth-Timestamp", "X-Auth-Timestamp is out of range".into()))?;
        let now = self.clock.now_ms();
        let off = signed_at - now;
        if off.abs() > self.window {
            return Err(AuthError::TimestampOutOfWindow {
                off_ms: off.num_milliseconds(),
                window_secs: self.window.num_seconds(),
            });
        }
        let message =
            signed_message(request.method, request.path_and_query, timestamp, nonce, request.body_sha256);
        let signer = vendbox_pay::recover_personal_signer(message.as_bytes(), request.signature)
            .map_err(|e| AuthError::BadSignature(e.0))?;
        if signer.to_lowercase() != account.as_str() {
            return Err(AuthError::BadSignature(format!("it recovers to {signer}")));
        }
        // Kept until the timestamp leaves the window: a replay later is refused by its time.
        if !self.store.claim_auth_nonce(&account, nonce, signed_at + self.window, now).await? {
            return Err(AuthError::NonceReused);
        }
        Ok(Principal::wallet(account))
    }

    /// Gives back the nonce of a signed request of `account` that was answered 402 Payment
    /// Required, so that the same request, signature and all, may be sent again with a payment:
    /// the official x402 clients re-send a request answered 402 with its headers unchanged.
    ///
    /// A 402 means the request did nothing and was charged nothing, so letting its signature
    /// through once more cannot make it act twice: the nonce is claimed again by the next send
    /// and kept for good by any answer other than a 402. Two sends in flight at once still race
    /// for one claim (the loser is refused `nonce_reused`). A paid retry that is replayed is held
    /// by its payment's own single use as well: an x402 payment settles once, so even a copy
    /// sent after a 402 of that retry cannot be paid for twice.
    pub async fn release_nonce(&self, account: &AccountAddress, nonce: &str) -> Result<(), AuthError> {
        self.store.release_auth_nonce(account, nonce).await?;
        Ok(())
    }

    /// The wallet and grant of the API key `presented`.
    pub async fn api_key(&self, presented: &SecretToken) -> Result<Principal, AuthError> {
        let key = self.store.api_key_by_hash(&presented.hash()).await?.ok_or(AuthError::UnknownApiKey)?;
        if key.revoked_at.is_some() {
            return Err(AuthError::RevokedApiKey);
        }
        Ok(Principal { account: key.account, key: Some(key.grant) })
    }

    /// Makes an API key for the wallet `by` proved itself: the key (shown once) and its record.
    pub async fn create_key(&self, by: &Principal, new: NewKey) -> Result<(SecretToken, ApiKey), AuthError> {
        let account = wallet_itself(by)?;
        let label = new.label.map(|l| l.trim().to_owned()).filter(|l| !l.is_empty());
        if label
            .as_ref()
            .is_some_and(|l| l.chars().count() > MAX_LABEL_CHARS || l.chars().any(char::is_control))
        {
            return Err(AuthError::InvalidKey {
                field: "label",
                message: format!(
                    "`label` must be at most {MAX_LABEL_CHARS} characters, without control characters"
                ),
            });
        }
        for (field, cap) in [("daily_cap", new.daily_cap), ("total_cap", new.total_cap)] {
            if cap == Some(Usdc::ZERO) {
                return Err(AuthError::InvalidKey {
                    field,
                    message: format!("`{field}` must be above zero (leave it out for no cap)"),
                });
            }
        }
        let live = self.store.api_keys_of(account).await?.iter().filter(|k| k.revoked_at.is_none()).count();
        if live >= MAX_LIVE_KEYS {
            return Err(AuthError::InvalidKey {
                field: "api_key",
                message: format!("a wallet holds at most {MAX_LIVE_KEYS} live keys; revoke one first"),
            });
        }
        let secret = generate_api_key();
        let text = secret.expose();
        let key = ApiKey {
            account: account.clone(),
            grant: KeyGrant {
                id: uuid::Uuid::new_v4().to_string(),
                scope: new.scope,
                daily_cap: new.daily_cap,
                total_cap: new.total_cap,
            },
            label,
            last4: text[text.len() - 4..].to_owned(),
            created_at: self.clock.now_ms(),
            revoked_at: None,
        };
        self.store.insert_api_key(&key, &secret.hash()).await?;
        Ok((secret, key))
    }

    /// The API keys of the wallet `by` speaks for, oldest first (a key sees its wallet's list).
    pub async fn keys(&self, by: &Principal) -> Result<Vec<ApiKey>, AuthError> {
        Ok(self.store.api_keys_of(&by.account).await?)
    }

    /// Revokes key `id` of the wallet `by` proved itself.
    pub async fn revoke(&self, by: &Principal, id: &str) -> Result<ApiKey, AuthError> {
        let account = wallet_itself(by)?;
        self.store
            .revoke_api_key(account, id, self.clock.now_ms())
            .await?
            .ok_or_else(|| AuthError::KeyNotFound(id.to_owned()))
    }

    /// Deletes nonces whose window has ended.
    pub async fn purge_nonces(&self) -> Result<u64, StoreError> {
        self.store.purge_auth_nonces(self.clock.now_ms()).await
    }
}

/// The wallet, when `by` is the wallet's own signature.
fn wallet_itself(by: &Principal) -> Result<&AccountAddress, AuthError> {
    if by.key.is_some() {
        return Err(AuthError::SignatureRequired);
    }
    Ok(&by.account)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signed_message_is_six_lines() {
        assert_eq!(
            signed_message("post", "/compute/api-keys?x=1", 1_700_000_000_000, "n1", "e3b0"),
            "vendbox-auth-v1\nPOST\n/compute/api-keys?x=1\n1700000000000\nn1\ne3b0"
        );
    }
}
