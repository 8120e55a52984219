//! `Records`: what a buyer can look up before and after paying (quotes, which hold a price for
//! ten minutes, and payments), and whether the store answers at all.

use std::sync::Arc;

use vendbox_core::{Catalog, CoreError, Payment, PaymentId, Quote, QuoteId, QuoteParams};
use vendbox_store::{Store, StoreError};

use crate::clock::{Clock, SystemClock};

/// Why a record could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// No quote has this id.
    #[error("there is no quote `{0}`")]
    UnknownQuote(String),
    /// No payment has this id.
    #[error("there is no payment {0}")]
    UnknownPayment(String),
    /// A rule of the domain model (an unknown offer, a field out of range…).
    #[error(transparent)]
    Rule(#[from] CoreError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RecordError {
    /// The stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            RecordError::UnknownQuote(_) => "unknown_quote",
            RecordError::UnknownPayment(_) => "unknown_payment",
            RecordError::Rule(e) => e.code(),
            RecordError::Store(_) => "internal",
        }
    }
}

/// Quotes, payments and the store's health.
#[derive(Debug, Clone)]
pub struct Records {
    store: Arc<dyn Store>,
    catalog: Arc<Catalog>,
    clock: Arc<dyn Clock>,
}

impl Records {
    /// Records kept in `store`, priced by `catalog`.
    pub fn new(store: Arc<dyn Store>, catalog: Arc<Catalog>) -> Records {
        Records { store, catalog, clock: Arc::new(SystemClock) }
    }

    /// The same records telling the time by `clock`.
    #[must_use]
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Records {
        Records { clock, ..self }
    }

    /// Prices offer `offer_id` for `params` and keeps the quote.
    pub async fn quote(&self, offer_id: &str, params: &QuoteParams) -> Result<Quote, RecordError> {
        let offer = self.catalog.offer(offer_id)?;
        let terms = offer.quote(params)?;
        let quote = Quote::new(offer.id.clone(), terms, self.clock.now());
        self.store.insert_quote(&quote).await?;
        Ok(quote)
    }

    /// The quote `id`.
    pub async fn quote_of(&self, id: &str) -> Result<Quote, RecordError> {
        let unknown = || RecordError::UnknownQuote(id.to_owned());
        let quote_id: QuoteId = id.parse().map_err(|_| unknown())?;
        self.store.get_quote(quote_id).await?.ok_or_else(unknown)
    }

    /// The payment `id`.
    pub async fn payment_of(&self, id: &str) -> Result<Payment, RecordError> {
        let unknown = || RecordError::UnknownPayment(id.to_owned());
        let payment_id: PaymentId = id.parse().map_err(|_| unknown())?;
        self.store.get_payment(payment_id).await?.ok_or_else(unknown)
    }

    /// Deletes quotes whose price no longer holds and that nothing refers to; how many.
    pub async fn purge_expired_quotes(&self) -> Result<u64, RecordError> {
        Ok(self.store.delete_expired_quotes(self.clock.now()).await?)
    }

    /// The store's kind (`sqlite`, `postgres`) once it answered.
    pub async fn ping(&self) -> Result<&'static str, RecordError> {
        self.store.ping().await?;
        Ok(self.store.backend())
    }
}
