//! Who a request is. Bearer tokens: how a request presents the token of what it bought (a
//! lock's release token, a box's lease token). And the account it speaks for: a wallet's
//! signature (`X-Auth-*`, x402Compute's headers) or an API key (`X-API-Key`, or a `vbk_` bearer),
//! checked by [`authenticate`] before any handler runs and handed on as a [`Principal`].

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use vendbox_core::{API_KEY_PREFIX, Principal, SecretToken};
use vendbox_service::{Auth, AuthError, SignedRequest};

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

/// `X-API-Key`: an API key (`vbk_…`).
pub const X_API_KEY: &str = "x-api-key";

/// The signature headers (x402Compute's names).
const X_AUTH_ADDRESS: &str = "x-auth-address";
const X_AUTH_CHAIN: &str = "x-auth-chain";
const X_AUTH_SIGNATURE: &str = "x-auth-signature";
const X_AUTH_TIMESTAMP: &str = "x-auth-timestamp";
const X_AUTH_NONCE: &str = "x-auth-nonce";
const X_AUTH_SIG_ENCODING: &str = "x-auth-sig-encoding";

tokio::task_local! {
    /// The principal the request being served was authenticated as, for the payment gate
    /// (`gate::proof`), which sees headers only.
    static PRINCIPAL: Option<Principal>;
}

/// The principal [`authenticate`] found for the request being served, if any.
pub fn current_principal() -> Option<Principal> {
    PRINCIPAL.try_with(Clone::clone).ok().flatten()
}

/// What [`authenticate`] needs: the service, and the most of a signed body it reads.
#[derive(Debug, Clone)]
pub struct Authenticator {
    /// Signatures, nonces and keys.
    pub auth: Auth,
    /// Largest body a signed request may have (its hash is part of what is signed).
    pub max_body_bytes: usize,
}

/// Middleware: a request with `X-Auth-*` headers (a wallet's signature), `X-API-Key` or
/// `Authorization: Bearer vbk_…` (an API key) is authenticated here, and its [`Principal`] put
/// in the request's extensions (and, for the payment gate, in [`current_principal`]); a bad
/// signature or key is a 401 with its code, before any handler runs. Any other request passes
/// untouched: `Authorization: Bearer` without the `vbk_` prefix stays a lease's or lock's token.
/// Every request's body is hashed as it is read, for the payment gate ([`crate::digest`]).
pub async fn authenticate(State(auth): State<Authenticator>, request: Request, next: Next) -> Response {
    let (request, digest) = crate::digest::hashing(request);
    crate::digest::scope(digest, authenticated(auth, request, next)).await
}

async fn authenticated(auth: Authenticator, request: Request, next: Next) -> Response {
    let signed = [X_AUTH_ADDRESS, X_AUTH_CHAIN, X_AUTH_SIGNATURE, X_AUTH_TIMESTAMP, X_AUTH_NONCE]
        .iter()
        .any(|h| request.headers().contains_key(*h));
    let outcome = if signed {
        match by_signature(&auth, request).await {
            Ok((principal, request)) => return signed_request(&auth, principal, request, next).await,
            Err(e) => Err(e),
        }
    } else if let Some(key) = api_key(request.headers()) {
        match key {
            Ok(key) => auth.auth.api_key(&key).await.map(|p| (p, request)).map_err(refusal),
            Err(e) => Err(e),
        }
    } else {
        return PRINCIPAL.scope(None, next.run(request)).await;
    };
    match outcome {
        Ok((principal, mut request)) => {
            request.extensions_mut().insert(principal.clone());
            PRINCIPAL.scope(Some(principal), next.run(request)).await
        }
        Err(error) => error.into_response(),
    }
}

/// Serves a request whose signature was verified (its nonce claimed); when the answer is 402
/// (nothing done, nothing charged) the nonce is given back, so that the x402 client's paid retry
/// of the very same request is accepted (see [`Auth::release_nonce`](vendbox_service::Auth)).
async fn signed_request(
    auth: &Authenticator,
    principal: Principal,
    mut request: Request,
    next: Next,
) -> Response {
    let nonce = request.headers().get(X_AUTH_NONCE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let account = principal.account.clone();
    request.extensions_mut().insert(principal.clone());
    let response = PRINCIPAL.scope(Some(principal), next.run(request)).await;
    if response.status() == StatusCode::PAYMENT_REQUIRED
        && let Some(nonce) = nonce
        && let Err(e) = auth.auth.release_nonce(&account, &nonce).await
    {
        // The retry is then refused `nonce_reused`; the client signs afresh.
        tracing::warn!(error = %e, "the nonce of a signed request answered 402 could not be given back");
    }
    response
}

/// The API key a request presents: `X-API-Key`, or a `vbk_` bearer.
fn api_key(headers: &HeaderMap) -> Option<Result<SecretToken, ApiError>> {
    if let Some(value) = headers.get(X_API_KEY) {
        return Some(
            value
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(SecretToken::presented)
                .ok_or_else(|| refusal(AuthError::UnknownApiKey)),
        );
    }
    optional_bearer(headers).filter(|t| t.expose().starts_with(API_KEY_PREFIX)).map(Ok)
}

async fn by_signature(auth: &Authenticator, request: Request) -> Result<(Principal, Request), ApiError> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, auth.max_body_bytes).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("a signed request's body is at most {} bytes", auth.max_body_bytes),
        )
    })?;
    let header = |name: &'static str| -> Result<&str, ApiError> {
        parts.headers.get(name).and_then(|v| v.to_str().ok()).ok_or_else(|| {
            refusal(AuthError::BadHeader {
                header: header_name(name),
                message: format!("a signed request carries {} as text", header_name(name)),
            })
        })
    };
    let body_sha256 = format!("{:x}", Sha256::digest(&body));
    let path_and_query = parts.uri.path_and_query().map_or_else(|| parts.uri.path(), |p| p.as_str());
    let signed = SignedRequest {
        address: header(X_AUTH_ADDRESS)?,
        chain: header(X_AUTH_CHAIN)?,
        signature: header(X_AUTH_SIGNATURE)?,
        timestamp: header(X_AUTH_TIMESTAMP)?,
        nonce: header(X_AUTH_NONCE)?,
        encoding: parts.headers.get(X_AUTH_SIG_ENCODING).map(|v| v.to_str().unwrap_or("?")),
        method: parts.method.as_str(),
        path_and_query,
        body_sha256: &body_sha256,
    };
    let principal = auth.auth.verify_signature(&signed).await.map_err(refusal)?;
    Ok((principal, Request::from_parts(parts, Body::from(body))))
}

fn header_name(name: &str) -> &'static str {
    match name {
        X_AUTH_ADDRESS => "X-Auth-Address",
        X_AUTH_CHAIN => "X-Auth-Chain",
        X_AUTH_SIGNATURE => "X-Auth-Signature",
        X_AUTH_TIMESTAMP => "X-Auth-Timestamp",
        _ => "X-Auth-Nonce",
    }
}

/// The response for an authentication refusal: 401 with its code (503 when the store failed).
pub fn refusal(error: AuthError) -> ApiError {
    let status = match &error {
        AuthError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        AuthError::SignatureRequired => StatusCode::FORBIDDEN,
        AuthError::InvalidKey { .. } => StatusCode::BAD_REQUEST,
        AuthError::KeyNotFound(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::UNAUTHORIZED,
    };
    if let AuthError::Store(e) = &error {
        tracing::warn!(error = %e, "authentication could not reach the store");
    }
    let message = if matches!(error, AuthError::Store(_)) {
        "authentication could not be checked right now; try again".to_owned()
    } else {
        error.to_string()
    };
    let api = ApiError::new(status, error.code(), message);
    match error.field() {
        Some(field) => api.with_field(field),
        None => api,
    }
}

/// The principal of an authenticated request; 401 `auth_required` when it has none.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Principal>().cloned().map(Authenticated).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "auth_required",
                "sign the request with your wallet (X-Auth-* headers) or send an API key (X-API-Key)",
            )
        })
    }
}
