//! `Quote`: an offer plus the buyer's parameters, priced, valid for a short while.

use chrono::{DateTime, Duration, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{OfferId, QuoteId};
use crate::offer::QuoteTerms;

/// How long a quote's price holds.
pub const QUOTE_VALIDITY: Duration = Duration::minutes(10);

/// A priced purchase that a payment can refer to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    /// Its id.
    pub id: QuoteId,
    /// The offer quoted.
    pub offer_id: OfferId,
    /// Resolved parameters and price.
    pub terms: QuoteTerms,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// After this, the price no longer holds.
    pub expires_at: DateTime<Utc>,
}

impl Quote {
    /// A new quote made at `now` (kept to the millisecond, as stored).
    pub fn new(offer_id: OfferId, terms: QuoteTerms, now: DateTime<Utc>) -> Self {
        let now = now.trunc_subsecs(3);
        Self { id: QuoteId::new_random(), offer_id, terms, created_at: now, expires_at: now + QUOTE_VALIDITY }
    }

    /// Whether the price still holds at `now`.
    pub fn is_valid_at(&self, now: DateTime<Utc>) -> bool {
        now < self.expires_at
    }
}
