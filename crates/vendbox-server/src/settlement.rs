//! `SettlementWorker`: finishes payments a crash left `verified` (reserved, not yet settled or
//! voided), through `Payments::finish_interrupted`: each payment method asks where the money is.
//! A payment whose money moved is recorded as settled, one whose money did not is voided, and
//! vendbox never settles it afterwards. Either way the payer is charged at most once.
//!
//! `TopUpWorker`: books the credits of top-ups whose x402 payment settled and that were not
//! booked (the process died or the store failed after the money moved, or the payment was only
//! found settled by the settlement worker), through `Accounts::book_owed_top_ups`; once each.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use vendbox_service::{Accounts, Payments};

use crate::worker::{Next, WorkResult, Worker};

/// How often the worker looks when there is nothing to do.
pub const SETTLEMENT_INTERVAL: Duration = Duration::from_secs(5);

/// Payments looked at per method and round.
const BATCH: u32 = 50;

/// The settlement worker.
#[derive(Debug)]
pub struct SettlementWorker {
    /// The gate, with its payment methods and store.
    pub payments: Arc<Payments>,
    /// A payment younger than this may still be in a live request; it is left alone.
    pub grace: Duration,
}

#[async_trait]
impl Worker for SettlementWorker {
    fn name(&self) -> &'static str {
        "settlement"
    }

    async fn work(&self) -> WorkResult {
        let more = self.payments.finish_interrupted(self.grace, BATCH).await?;
        Ok(if more { Next::Busy } else { Next::Idle(SETTLEMENT_INTERVAL) })
    }
}

/// The worker that books top-ups owed.
#[derive(Debug)]
pub struct TopUpWorker {
    /// Where top-ups are written down and booked.
    pub accounts: Accounts,
}

#[async_trait]
impl Worker for TopUpWorker {
    fn name(&self) -> &'static str {
        "top-ups"
    }

    async fn work(&self) -> WorkResult {
        let more = self.accounts.book_owed_top_ups(BATCH).await?;
        Ok(if more { Next::Busy } else { Next::Idle(SETTLEMENT_INTERVAL) })
    }
}
