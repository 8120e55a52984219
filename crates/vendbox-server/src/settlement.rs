//! `SettlementWorker`: finishes payments a crash left `verified` (reserved, not yet settled or
//! voided). The chain decides: an authorization used on chain is recorded as settled, with the
//! transaction that used it; one not used is voided, and vendbox never sends it afterwards. Either
//! way the payer is charged at most once.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use vendbox_core::{Payment, PaymentState};
use vendbox_pay::chain::{Chain, Recovery};
use vendbox_store::{PaymentOutcome, Store, StoreError};

use crate::worker::{Next, WorkResult, Worker};

/// How often the worker looks when there is nothing to do.
pub const SETTLEMENT_INTERVAL: Duration = Duration::from_secs(5);

/// Payments looked at per round.
const BATCH: u32 = 50;

/// The settlement worker.
#[derive(Debug)]
pub struct SettlementWorker {
    /// Where payments live.
    pub store: Arc<dyn Store>,
    /// The token's chain.
    pub chain: Chain,
    /// A payment younger than this may still be in a live request; it is left alone.
    pub grace: Duration,
}

#[async_trait]
impl Worker for SettlementWorker {
    fn name(&self) -> &'static str {
        "settlement"
    }

    async fn work(&self) -> WorkResult {
        let grace = chrono::Duration::from_std(self.grace).unwrap_or(chrono::Duration::MAX);
        let before = Utc::now() - grace;
        let asset = self.chain.asset().to_string().to_ascii_lowercase();
        // Only this chain's token: payments of another asset (an earlier configuration) are
        // never picked, so they cannot fill every batch and keep the worker busy for nothing.
        let stale =
            self.store.payments_of_asset_in_state(&asset, PaymentState::Verified, before, BATCH).await?;
        for payment in &stale {
            let outcome = self.resolve(payment).await?;
            match self.store.finish_payment(payment.id, &outcome, Utc::now()).await {
                Ok(_) => {
                    tracing::info!(payment = %payment.id, ?outcome, "finished a payment left in between");
                }
                Err(StoreError::Conflict(_)) => {} // someone else finished it first
                Err(e) => return Err(e.into()),
            }
        }
        Ok(if stale.len() == BATCH as usize { Next::Busy } else { Next::Idle(SETTLEMENT_INTERVAL) })
    }
}

impl SettlementWorker {
    async fn resolve(
        &self,
        payment: &Payment,
    ) -> Result<PaymentOutcome, Box<dyn std::error::Error + Send + Sync>> {
        let key = &payment.replay_key;
        Ok(match self.chain.recover(&key.payer, &key.nonce).await? {
            Recovery::Settled { transaction } => PaymentOutcome::Settled { settlement_ref: transaction },
            Recovery::Cancelled { transaction } => PaymentOutcome::Voided {
                reason: format!(
                    "the payer cancelled the authorization on chain ({transaction}) before vendbox settled it; nothing was charged"
                ),
            },
            Recovery::UsedElsewhere => PaymentOutcome::Settled {
                settlement_ref: "on chain (transaction not found in recent blocks)".into(),
            },
            Recovery::Unused => PaymentOutcome::Voided {
                reason:
                    "interrupted before settlement; the authorization was never used, so nothing was charged"
                        .into(),
            },
        })
    }
}
