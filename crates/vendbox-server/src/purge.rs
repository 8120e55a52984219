//! `QuotePurge`: deletes quotes whose price no longer holds and that nothing refers to.

use std::time::Duration;

use async_trait::async_trait;
use vendbox_service::Records;

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
