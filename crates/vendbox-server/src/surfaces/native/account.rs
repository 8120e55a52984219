//! `/v1/account…`: a wallet's credits, authenticated by its signature or one of its API keys
//! (401 `auth_required` without). `POST /v1/account/topup` buys credits with x402 (any amount
//! within the operator's `[credits] topup_min`/`topup_max`), booked as a `top_up` entry only
//! once the payment settled (by the top-up worker when the request could not book it); `GET
//! /v1/account` shows the balance, what is held and the newest
//! entries; `GET /v1/account/ledger` and `GET /v1/account/payments` page through the ledger and
//! the wallet's payments (x402 and credits) with a `before` cursor.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use vendbox_core::{LedgerEntry, LedgerKind, Payment, PaymentId, PaymentMethod, PaymentState, Usdc};
use vendbox_pay::ChargeKind;
use vendbox_service::{AccountError, Delivery};

use crate::app::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::gate;
use crate::json::ApiJson;

/// Most entries or payments on one page.
const MAX_PAGE: u32 = 200;

/// Entries `GET /v1/account` shows.
const RECENT: u32 = 10;

impl From<AccountError> for ApiError {
    /// The one place an account refusal gets its HTTP status.
    fn from(e: AccountError) -> Self {
        let code = e.code();
        match e {
            AccountError::TopUpOutOfRange { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string()).with_field("amount")
            }
            AccountError::BadCursor => {
                ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string()).with_field("before")
            }
            AccountError::Store(store) => store.into(),
        }
    }
}

/// A top-up to buy.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopUpRequest {
    /// How much credit to buy, in USDC (`"0.50"`); paid with x402.
    #[schema(value_type = String, example = "0.50")]
    pub amount: Usdc,
}

/// A top-up bought.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TopUp {
    /// Whose credits.
    pub account: String,
    /// How much was added.
    #[schema(value_type = String, example = "0.50")]
    pub amount: Usdc,
    /// The x402 payment (the `top_up` entry's reference).
    pub payment_id: PaymentId,
}

/// One ledger entry.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EntryView {
    /// The entry's id (a credits receipt's `reference`).
    pub id: i64,
    /// `top_up`, `charge` or `refund`.
    #[schema(value_type = String, example = "charge")]
    pub kind: LedgerKind,
    /// The change, in USDC, negative for charges (`"-0.0001"`).
    #[schema(example = "-0.0001")]
    pub amount: String,
    /// What caused it: the payment id (top-ups and charges) or the lease (refunds).
    pub reference: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

impl From<LedgerEntry> for EntryView {
    fn from(e: LedgerEntry) -> Self {
        let magnitude = Usdc(e.delta_atomic.unsigned_abs());
        let amount = if e.delta_atomic < 0 {
            format!("-{}", magnitude.to_decimal_string())
        } else {
            magnitude.to_decimal_string()
        };
        EntryView { id: e.id, kind: e.kind, amount, reference: e.reference, created_at: e.created_at }
    }
}

/// An account and its credits.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AccountView {
    /// The wallet.
    pub account: String,
    /// The sum of the ledger.
    #[schema(value_type = String)]
    pub balance: Usdc,
    /// Held for purchases in progress.
    #[schema(value_type = String)]
    pub held: Usdc,
    /// What a new purchase may spend.
    #[schema(value_type = String)]
    pub available: Usdc,
    /// The newest entries.
    pub recent: Vec<EntryView>,
    /// Where to buy credits.
    pub topup: String,
    /// Smallest top-up.
    #[schema(value_type = String)]
    pub topup_min: Usdc,
    /// Largest top-up.
    #[schema(value_type = String)]
    pub topup_max: Usdc,
}

/// A page's cursor and size.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// The `next` of the previous page.
    pub before: Option<String>,
    /// Items per page (1 to 200, 50 by default).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

impl PageQuery {
    fn limit(&self) -> u32 {
        self.limit.unwrap_or(50).clamp(1, MAX_PAGE)
    }
}

/// A page of the ledger.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LedgerPage {
    /// Newest first.
    pub entries: Vec<EntryView>,
    /// The cursor of the next page (`?before=`), when there may be one.
    pub next: Option<String>,
}

/// One payment of the wallet.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PaymentLine {
    /// The payment (`Vendbox-Payment-Id`).
    pub id: PaymentId,
    /// How it was paid.
    pub method: PaymentMethod,
    /// `settled`, `voided` (nothing was charged) or `verified` (in progress).
    pub state: PaymentState,
    /// Why it was voided.
    pub void_reason: Option<String>,
    /// How much.
    #[schema(value_type = String)]
    pub amount: Usdc,
    /// What it bought.
    pub purchase: Option<String>,
    /// Where the money moved: the transaction (x402) or the ledger entry (credits).
    pub reference: Option<String>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<Payment> for PaymentLine {
    fn from(p: Payment) -> Self {
        PaymentLine {
            id: p.id,
            method: p.method,
            state: p.state,
            void_reason: p.void_reason,
            amount: p.amount,
            purchase: p.purchase,
            reference: p.settlement_ref,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

/// How many payments in one state, and their sum.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Total {
    /// How many.
    pub count: u64,
    /// Their sum.
    #[schema(value_type = String)]
    pub amount: Usdc,
}

/// Totals over all the wallet's payments.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Totals {
    /// Money moved.
    pub settled: Total,
    /// Nothing charged.
    pub voided: Total,
    /// In progress.
    pub verified: Total,
}

/// A page of the wallet's payments.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PaymentsPage {
    /// Newest first.
    pub payments: Vec<PaymentLine>,
    /// The cursor of the next page (`?before=`), when there may be one.
    pub next: Option<String>,
    /// Over every payment of the wallet.
    pub totals: Totals,
}

/// Buys credits with x402.
#[utoipa::path(
    post,
    path = "/v1/account/topup",
    operation_id = "topUpAccount",
    tag = "account",
    request_body = TopUpRequest,
    responses(
        (status = 200, description = "Credits added once the payment settled", body = TopUp),
        (status = 400, description = "An amount outside the operator's bounds", body = crate::error::ErrorBody),
        (status = 401, description = "No wallet signature or API key", body = crate::error::ErrorBody),
        (status = 402, description = "Pay the amount with x402"),
    )
)]
pub async fn topup(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    headers: HeaderMap,
    ApiJson(request): ApiJson<TopUpRequest>,
) -> Response {
    let sale = CreditSale { resource: "/v1/account/topup", what: "credits top-up", amount_field: None };
    sell_credits(
        &state,
        &headers,
        principal.account,
        request.amount,
        sale,
        move |account, amount, payment| async move {
            Ok(TopUp { account: account.to_string(), amount, payment_id: payment })
        },
    )
    .await
}

/// What a surface's sale of credits is called and where it is sold.
pub(crate) struct CreditSale {
    /// The route that sells them, for the payment's resource.
    pub resource: &'static str,
    /// What the charge is called in its description ("credits top-up").
    pub what: &'static str,
    /// The request's field that holds the amount, named in a refusal of it.
    pub amount_field: Option<&'static str>,
}

/// Sells `requested` credits to `account` for a payment through the gate: the amount is checked
/// against `[credits]`, the top-up is written down before the money moves and booked once it
/// moved (pay-on-success; should booking fail or the process die in between, the top-up worker
/// books it, and the entry's reference is the payment, so booking it again changes nothing).
/// `answer` makes the surface's answer from the account, the amount and the payment.
pub(crate) async fn sell_credits<T, A, W>(
    state: &AppState,
    headers: &HeaderMap,
    account: vendbox_core::AccountAddress,
    requested: Usdc,
    sale: CreditSale,
    answer: A,
) -> Response
where
    T: Serialize,
    A: FnOnce(vendbox_core::AccountAddress, Usdc, PaymentId) -> W,
    W: Future<Output = Result<T, ApiError>>,
{
    let accounts = state.accounts();
    let amount = match accounts.top_up_amount(requested) {
        Ok(amount) => amount,
        Err(e) => {
            let error = ApiError::from(e);
            let error = match sale.amount_field {
                Some(field) => error.with_field(field),
                None => error,
            };
            return error.into_response();
        }
    };
    let description = format!("{} of {amount} for {account}", sale.what);
    let charge = match state.payments.charge_for(ChargeKind::TopUp, amount, sale.resource, &description) {
        Ok(charge) => charge,
        Err(e) => return ApiError::from(e).into_response(),
    };
    gate::pay(&state.payments, headers, charge, move |payment| async move {
        let payment = payment.ok_or_else(|| ApiError::internal(&"a top-up without a payment"))?;
        accounts.pend_top_up(&account, amount, payment).await.map_err(ApiError::from)?;
        let answer = answer(account.clone(), amount, payment).await?;
        Ok(Delivery::delivered(Json(answer)).after_settlement(async move {
            accounts.book_top_up(&account, amount, payment).await.map(|_| ()).map_err(ApiError::from)
        }))
    })
    .await
}

/// The account's balance and newest entries.
#[utoipa::path(
    get,
    path = "/v1/account",
    operation_id = "getAccount",
    tag = "account",
    responses(
        (status = 200, description = "The account", body = AccountView),
        (status = 401, description = "No wallet signature or API key", body = crate::error::ErrorBody),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<Json<AccountView>, ApiError> {
    let summary = state.accounts().summary(&principal.account, RECENT).await?;
    let policy = state.catalog.now().credits;
    Ok(Json(AccountView {
        account: principal.account.to_string(),
        balance: summary.funds.balance,
        held: summary.funds.held,
        available: summary.funds.available(),
        recent: summary.recent.into_iter().map(EntryView::from).collect(),
        topup: "/v1/account/topup".into(),
        topup_min: policy.topup_min,
        topup_max: policy.topup_max,
    }))
}

/// The account's ledger, newest first, by pages.
#[utoipa::path(
    get,
    path = "/v1/account/ledger",
    operation_id = "getAccountLedger",
    tag = "account",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of entries", body = LedgerPage),
        (status = 401, description = "No wallet signature or API key", body = crate::error::ErrorBody),
    )
)]
pub async fn ledger(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Query(page): Query<PageQuery>,
) -> Result<Json<LedgerPage>, ApiError> {
    let limit = page.limit();
    let entries = state.accounts().ledger(&principal.account, page.before.as_deref(), limit).await?;
    let next = (entries.len() == limit as usize).then(|| entries.last().map(|e| e.id.to_string())).flatten();
    Ok(Json(LedgerPage { entries: entries.into_iter().map(EntryView::from).collect(), next }))
}

/// The wallet's payments (x402 and credits), newest first, by pages, with totals.
#[utoipa::path(
    get,
    path = "/v1/account/payments",
    operation_id = "getAccountPayments",
    tag = "account",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of payments", body = PaymentsPage),
        (status = 401, description = "No wallet signature or API key", body = crate::error::ErrorBody),
    )
)]
pub async fn payments(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Query(page): Query<PageQuery>,
) -> Result<Json<PaymentsPage>, ApiError> {
    let found = state.accounts().payments(&principal.account, page.before.as_deref(), page.limit()).await?;
    let mut totals = Totals::default();
    for t in found.totals {
        let total = Total { count: t.count, amount: t.amount };
        match t.state {
            PaymentState::Settled => totals.settled = total,
            PaymentState::Voided => totals.voided = total,
            PaymentState::Verified => totals.verified = total,
        }
    }
    Ok(Json(PaymentsPage {
        payments: found.payments.into_iter().map(PaymentLine::from).collect(),
        next: found.next,
        totals,
    }))
}
