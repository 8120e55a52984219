//! `QuotePurge`: deletes quotes whose price no longer holds and that nothing refers to.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use vendbox_store::Store;

use crate::worker::{Next, WorkResult, Worker};

/// How often expired quotes are purged.
pub const PURGE_INTERVAL: Duration = Duration::from_mins(1);

/// The purge worker.
#[derive(Debug)]
pub struct QuotePurge {
    /// Where quotes live.
    pub store: Arc<dyn Store>,
}

#[async_trait]
impl Worker for QuotePurge {
    fn name(&self) -> &'static str {
        "quote-purge"
    }

    async fn work(&self) -> WorkResult {
        let deleted = self.store.delete_expired_quotes(Utc::now()).await?;
        if deleted > 0 {
            tracing::debug!(deleted, "purged expired quotes");
        }
        Ok(Next::Idle(PURGE_INTERVAL))
    }
}
