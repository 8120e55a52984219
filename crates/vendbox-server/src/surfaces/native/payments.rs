//! `GET /v1/payments/{id}`: the payer sees where its payment is (`verified`, `settled` with the
//! transaction hash, or `voided` with the reason). The id comes in the `Vendbox-Payment-Id` header.

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::Serialize;
use vendbox_core::{PaymentId, PaymentMethod, PaymentState, Usdc};

use crate::app::AppState;
use crate::error::ApiError;

/// A payment, as its payer sees it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PaymentView {
    /// Payment id.
    pub id: PaymentId,
    /// How it was paid.
    pub method: PaymentMethod,
    /// `verified` (reserved, no money moved yet), `settled` or `voided`.
    pub state: PaymentState,
    /// Amount in USDC.
    pub amount_usdc: Usdc,
    /// The chain (CAIP-2).
    #[schema(example = "eip155:84532")]
    pub network: String,
    /// The token contract.
    pub asset: String,
    /// Who paid.
    pub payer: String,
    /// The settlement transaction, once settled.
    pub transaction: Option<String>,
    /// Why it was voided (the payer was not charged).
    pub void_reason: Option<String>,
    /// When it was reserved.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// A payment made to this vendbox.
#[utoipa::path(
    get,
    path = "/v1/payments/{id}",
    operation_id = "getPayment",
    tag = "payments",
    params(("id" = String, Path, description = "Payment id, from the `Vendbox-Payment-Id` response header")),
    responses(
        (status = 200, description = "The payment", body = PaymentView),
        (status = 404, description = "No such payment", body = crate::error::ErrorBody),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<PaymentView>, ApiError> {
    let p = state.records().payment_of(&id).await?;
    Ok(Json(PaymentView {
        id: p.id,
        method: p.method,
        state: p.state,
        amount_usdc: p.amount,
        network: p.replay_key.chain,
        asset: p.replay_key.asset,
        payer: p.replay_key.payer,
        transaction: p.settlement_ref,
        void_reason: p.void_reason,
        created_at: p.created_at,
        updated_at: p.updated_at,
    }))
}
