//! `QuotePurge`: deletes quotes whose price no longer holds and that nothing refers to, and
//! `NoncePurge`: deletes signed requests' nonces whose timestamp window has ended.

use std::time::Duration;

use async_trait::async_trait;
use vendbox_service::{Auth, Records};

use crate::worker::{Next, WorkResult, Worker};

/// How often expired quotes are purged.
pub const PURGE_INTERVAL: Duration = Duration::from_mins(1);

/// The purge worker.
#[derive(Debug)]
pub struct QuotePurge {
    /// Where quotes live, and the clock they expire by.
    pub records: Records,
}

#[async_trait]
impl Worker for QuotePurge {
    fn name(&self) -> &'static str {
        "quote-purge"
    }

    async fn work(&self) -> WorkResult {
        let deleted = self.records.purge_expired_quotes().await?;
        if deleted > 0 {
            tracing::debug!(deleted, "purged expired quotes");
        }
        Ok(Next::Idle(PURGE_INTERVAL))
    }
}

/// The nonce purge worker: a nonce is kept only while its request's timestamp could still be
/// accepted (a replay after that is refused by its time).
#[derive(Debug)]
pub struct NoncePurge {
    /// Where nonces live, and the clock their windows end by.
    pub auth: Auth,
}

#[async_trait]
impl Worker for NoncePurge {
    fn name(&self) -> &'static str {
        "nonce-purge"
    }

    async fn work(&self) -> WorkResult {
        let deleted = self.auth.purge_nonces().await?;
        if deleted > 0 {
            tracing::debug!(deleted, "purged used nonces");
        }
        Ok(Next::Idle(PURGE_INTERVAL))
    }
}
