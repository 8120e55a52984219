//! x402Compute's API keys, path for path, with vendbox's scope and caps: `POST /compute/api-keys`
//! (the wallet's signature only; the key `vbk_…` is shown once), `GET /compute/api-keys` and
//! `DELETE /compute/api-keys/{id}` (the wallet's signature only). A key is accepted as
//! `X-API-Key` everywhere, and as `Authorization: Bearer vbk_…` on native routes.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use vendbox_core::{KeyScope, Usdc};
use vendbox_service::{ApiKey, Auth, NewKey};

use crate::app::AppState;
use crate::auth::{Authenticated, refusal};
use crate::error::ApiError;
use crate::json;

/// The seed's create body, with vendbox's scope and caps.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// A name for the key.
    #[schema(example = "my-agent")]
    pub label: Option<String>,
    /// What the key may buy (default: anything).
    pub scope: Option<KeyScope>,
    /// Most the key may spend per UTC day, in USDC (default: no cap).
    pub daily_cap: Option<Usdc>,
    /// Most the key may spend in all, in USDC (default: no cap).
    pub total_cap: Option<Usdc>,
}

/// The seed's create answer: the key, shown this once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    /// The key (`vbk_…`); only its hash is kept, so keep it now.
    pub api_key: String,
    /// Its id.
    pub id: String,
    /// Its label.
    pub label: Option<String>,
    /// What it may buy.
    pub scope: KeyScope,
    /// Its daily cap.
    pub daily_cap: Option<Usdc>,
    /// Its total cap.
    pub total_cap: Option<Usdc>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
}

/// One key in the list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    /// Its id.
    pub id: String,
    /// Its label.
    pub label: Option<String>,
    /// The key's last four characters.
    pub key_last4: String,
    /// What it may buy.
    pub scope: KeyScope,
    /// Its daily cap.
    pub daily_cap: Option<Usdc>,
    /// Its total cap.
    pub total_cap: Option<Usdc>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<ApiKey> for KeyView {
    fn from(key: ApiKey) -> Self {
        KeyView {
            id: key.grant.id,
            label: key.label,
            key_last4: key.last4,
            scope: key.grant.scope,
            daily_cap: key.grant.daily_cap,
            total_cap: key.grant.total_cap,
            created_at: key.created_at,
            revoked_at: key.revoked_at,
        }
    }
}

/// The seed's list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyList {
    /// The wallet's keys, oldest first, revoked ones included.
    pub api_keys: Vec<KeyView>,
}

/// A revoked key.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Revoked {
    /// Always true.
    pub success: bool,
    /// The key as it is now.
    pub api_key: KeyView,
}

/// The key service.
pub(crate) fn auth(state: &AppState) -> Auth {
    state.auth()
}

/// Makes an API key for the signing wallet.
#[utoipa::path(post, path = "/compute/api-keys", operation_id = "createComputeApiKey", tag = "x402compute",
    request_body(content = Option<CreateKey>, content_type = "application/json"),
    security(("wallet_signature" = [])),
    responses((status = 201, body = CreatedKey),
        (status = 400, body = crate::error::ErrorBody),
        (status = 401, description = "No valid wallet signature", body = crate::error::ErrorBody),
        (status = 403, description = "An API key cannot make keys", body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    body: Bytes,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let request: CreateKey = json::parse_optional(&body)?;
    let new = NewKey {
        label: request.label,
        scope: request.scope.unwrap_or_default(),
        daily_cap: request.daily_cap,
        total_cap: request.total_cap,
    };
    let (secret, key) = auth(&state).create_key(&principal, new).await.map_err(refusal)?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            api_key: secret.expose().to_owned(),
            id: key.grant.id,
            label: key.label,
            scope: key.grant.scope,
            daily_cap: key.grant.daily_cap,
            total_cap: key.grant.total_cap,
            created_at: key.created_at,
        }),
    ))
}

/// The wallet's keys.
#[utoipa::path(get, path = "/compute/api-keys", operation_id = "listComputeApiKeys", tag = "x402compute",
    security(("wallet_signature" = []), ("api_key" = [])),
    responses((status = 200, body = KeyList), (status = 401, body = crate::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<Json<KeyList>, ApiError> {
    let keys = auth(&state).keys(&principal).await.map_err(refusal)?;
    Ok(Json(KeyList { api_keys: keys.into_iter().map(KeyView::from).collect() }))
}

/// Revokes a key: it opens nothing from now on.
#[utoipa::path(delete, path = "/compute/api-keys/{id}", operation_id = "revokeComputeApiKey", tag = "x402compute",
    security(("wallet_signature" = [])),
    responses((status = 200, body = Revoked), (status = 401, body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn revoke(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<Revoked>, ApiError> {
    let key = auth(&state).revoke(&principal, &id).await.map_err(refusal)?;
    Ok(Json(Revoked { success: true, api_key: key.into() }))
}
