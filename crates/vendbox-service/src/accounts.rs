//! [`Accounts`]: what a wallet reads and does with its credits: top-ups (bounded by the
//! operator's `[credits] topup_min`/`topup_max`, written down as pending before the x402
//! payment settles and booked once it did, by the request or, when it died or failed after the
//! money moved, by the settlement worker: once per payment either way), its
//! balance and recent entries, its ledger by pages, and its payments (x402 by payer, credits by
//! account: both are the payment's payer) by pages with totals per state.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use vendbox_core::{AccountAddress, CreditsPolicy, LedgerEntry, Payment, PaymentId, PaymentState, Usdc};
use vendbox_store::{Funds, PaymentTotal, PendingTopUp, Store, StoreError};

use crate::clock::{Clock, SystemClock};

/// Why an account request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// A top-up outside the operator's bounds.
    #[error("a top-up is between {min} and {max}")]
    TopUpOutOfRange {
        /// The smallest.
        min: Usdc,
        /// The largest.
        max: Usdc,
    },
    /// A page cursor that is not one this vendbox gave.
    #[error("`before` is not a cursor from an earlier page")]
    BadCursor,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AccountError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            AccountError::TopUpOutOfRange { .. } => "topup_out_of_range",
            AccountError::BadCursor => "bad_cursor",
            AccountError::Store(_) => "internal",
        }
    }
}

/// An account as its owner sees it.
#[derive(Debug, Clone)]
pub struct AccountSummary {
    /// Balance and holds.
    pub funds: Funds,
    /// The newest entries.
    pub recent: Vec<LedgerEntry>,
}

/// A page of a wallet's payments, with totals over all of them.
#[derive(Debug, Clone)]
pub struct PaymentsPage {
    /// Newest first.
    pub payments: Vec<Payment>,
    /// The cursor of the next page, when there may be one.
    pub next: Option<String>,
    /// Per state, over every payment of the wallet.
    pub totals: Vec<PaymentTotal>,
}

/// Accounts and their credits.
#[derive(Debug, Clone)]
pub struct Accounts {
    store: Arc<dyn Store>,
    policy: CreditsPolicy,
    clock: Arc<dyn Clock>,
}

impl Accounts {
    /// Accounts kept in `store`, under the operator's `policy`.
    pub fn new(store: Arc<dyn Store>, policy: CreditsPolicy) -> Accounts {
        Accounts { store, policy, clock: Arc::new(SystemClock) }
    }

    /// `amount` if a top-up may be that much.
    pub fn top_up_amount(&self, amount: Usdc) -> Result<Usdc, AccountError> {
        let (min, max) = (self.policy.topup_min, self.policy.topup_max);
        if amount < min || amount > max {
            return Err(AccountError::TopUpOutOfRange { min, max });
        }
        Ok(amount)
    }

    /// Writes down the top-up `payment` buys, before the payment settles: if it then settles and
    /// the top-up is not booked (the process died, the store failed), the settlement worker books
    /// it ([`Accounts::book_owed_top_ups`]).
    pub async fn pend_top_up(
        &self,
        account: &AccountAddress,
        amount: Usdc,
        payment: PaymentId,
    ) -> Result<(), AccountError> {
        let top_up = PendingTopUp { payment, account: account.clone(), amount };
        Ok(self.store.pend_top_up(&top_up, self.clock.now()).await?)
    }

    /// Books the top-up paid by `payment` (once, however often it is asked).
    pub async fn book_top_up(
        &self,
        account: &AccountAddress,
        amount: Usdc,
        payment: PaymentId,
    ) -> Result<LedgerEntry, AccountError> {
        let top_up = PendingTopUp { payment, account: account.clone(), amount };
        Ok(self.store.book_top_up(&top_up, self.clock.now()).await?)
    }

    /// Books up to `limit` top-ups whose payment settled and that were not booked, and forgets
    /// those whose payment was voided; whether there may be more.
    pub async fn book_owed_top_ups(&self, limit: u32) -> Result<bool, AccountError> {
        let unfinished = self.store.unfinished_top_ups(limit).await?;
        for (top_up, state) in &unfinished {
            if *state == PaymentState::Settled {
                let entry = self.store.book_top_up(top_up, self.clock.now()).await?;
                tracing::info!(payment = %top_up.payment, account = %top_up.account, entry = entry.id, "booked a top-up left unbooked");
            } else {
                self.store.drop_pending_top_up(top_up.payment).await?;
            }
        }
        Ok(unfinished.len() == limit as usize)
    }

    /// The account's funds and its `recent` newest entries.
    pub async fn summary(
        &self,
        account: &AccountAddress,
        recent: u32,
    ) -> Result<AccountSummary, AccountError> {
        let funds = self.store.funds(account, self.clock.now()).await?;
        let recent = self.store.ledger_page(account, None, recent).await?;
        Ok(AccountSummary { funds, recent })
    }

    /// Up to `limit` entries older than the cursor `before` (an entry id), newest first.
    pub async fn ledger(
        &self,
        account: &AccountAddress,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<LedgerEntry>, AccountError> {
        let before = before.map(|b| b.parse::<i64>().map_err(|_| AccountError::BadCursor)).transpose()?;
        Ok(self.store.ledger_page(account, before, limit).await?)
    }

    /// Up to `limit` payments of the wallet older than the cursor `before`, newest first, and
    /// the totals of all its payments.
    pub async fn payments(
        &self,
        account: &AccountAddress,
        before: Option<&str>,
        limit: u32,
    ) -> Result<PaymentsPage, AccountError> {
        let before = before.map(parse_payment_cursor).transpose()?;
        let payments = self.store.payments_by_payer(account.as_str(), before, limit).await?;
        let next = (payments.len() == limit as usize)
            .then(|| payments.last().map(|p| format!("{}_{}", p.created_at.timestamp_millis(), p.id)))
            .flatten();
        let totals = self.store.payment_totals(account.as_str()).await?;
        Ok(PaymentsPage { payments, next, totals })
    }
}

/// A payments cursor: `<created_at ms>_<payment id>`.
fn parse_payment_cursor(text: &str) -> Result<(DateTime<Utc>, PaymentId), AccountError> {
    let (at, id) = text.split_once('_').ok_or(AccountError::BadCursor)?;
    let at =
        at.parse::<i64>().ok().and_then(DateTime::from_timestamp_millis).ok_or(AccountError::BadCursor)?;
    let id = id.parse::<PaymentId>().map_err(|_| AccountError::BadCursor)?;
    Ok((at, id))
}
