//! `Receipts`: one watcher of the chain's new blocks for every settlement in flight. A settlement
//! registers its transaction before sending it; while anyone waits, the watcher asks for the head
//! every `interval` (a few milliseconds on a local chain), and at once after a transaction was
//! sent, reads each new block's receipts in one call and hands each waiter its own. Nobody polls
//! for a receipt of their own, and nobody sleeps for a fixed time before looking.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use alloy::eips::BlockId;
use alloy::primitives::B256;
use alloy::providers::{DynProvider, Provider};
use alloy::rpc::types::TransactionReceipt;
use alloy::transports::TransportError;
use tokio::sync::oneshot;

use crate::chain::ChainError;

/// Blocks read at once when the watcher is behind the head.
const CATCH_UP: u64 = 32;

/// Transactions waited for, each with where its receipt goes.
type Waiters = HashMap<B256, oneshot::Sender<TransactionReceipt>>;

/// The block watcher shared by a facilitator's settlements.
#[derive(Debug)]
pub(super) struct Receipts {
    provider: DynProvider,
    /// How long the watcher waits before asking for the head again, when it has not moved.
    interval: Duration,
    /// Who waits for which transaction.
    waiters: Mutex<Waiters>,
    /// Whether a watching task runs. Held while one starts or decides to stop, so that a
    /// transaction registered meanwhile is never left without a watcher.
    running: tokio::sync::Mutex<bool>,
    /// Wakes the watcher before its interval is up: a transaction was just sent, and a local
    /// chain that mines on arrival already holds it in a block.
    sent: tokio::sync::Notify,
}

/// One registered transaction: its receipt, once a block holds it. Dropping it unregisters.
#[derive(Debug)]
pub(super) struct Watch {
    receipts: Arc<Receipts>,
    hash: B256,
    /// Where the watcher sends the receipt; `None` once it answered or let go.
    receipt: Option<oneshot::Receiver<TransactionReceipt>>,
}

impl Receipts {
    /// A watcher over `provider` that asks for the head every `interval` while anyone waits.
    pub(super) fn new(provider: DynProvider, interval: Duration) -> Arc<Receipts> {
        Arc::new(Receipts {
            provider,
            interval,
            waiters: Mutex::new(HashMap::new()),
            running: tokio::sync::Mutex::new(false),
            sent: tokio::sync::Notify::new(),
        })
    }

    /// Says a registered transaction was sent: the watcher asks for the head now rather than
    /// at the end of its interval.
    pub(super) fn sent(&self) {
        self.sent.notify_one();
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `hash`, to be called before the transaction is sent: every block that can hold
    /// it is then read. Starts the watcher when none runs, from the head as it is now.
    pub(super) async fn watch(self: &Arc<Self>, hash: B256) -> Result<Watch, ChainError> {
        let (sender, receipt) = oneshot::channel();
        self.waiters().insert(hash, sender);
        let watch = Watch { receipts: self.clone(), hash, receipt: Some(receipt) };
        let mut running = self.running.lock().await;
        if !*running {
            let head = self.provider.get_block_number().await.map_err(|e| ChainError(e.to_string()))?;
            *running = true;
            tokio::spawn(self.clone().run(head));
        }
        Ok(watch)
    }

    /// Reads every block after `seen` as it comes, until nobody waits.
    async fn run(self: Arc<Self>, mut seen: u64) {
        loop {
            match self.provider.get_block_number().await {
                Ok(head) if head > seen => {
                    // The blocks behind are read together, so that a busy chain never outruns
                    // the watcher, and handed out in order.
                    let last = head.min(seen + CATCH_UP);
                    let mut reads = tokio::task::JoinSet::new();
                    for number in seen + 1..=last {
                        let provider = self.provider.clone();
                        reads.spawn(async move {
                            (number, provider.get_block_receipts(BlockId::number(number)).await)
                        });
                    }
                    let mut blocks = std::collections::BTreeMap::new();
                    while let Some(read) = reads.join_next().await {
                        if let Ok((number, receipts)) = read {
                            blocks.insert(number, receipts);
                        }
                    }
                    for number in seen + 1..=last {
                        let Some(receipts) = blocks.remove(&number) else { break };
                        if !self.deliver(number, receipts).await {
                            break;
                        }
                        seen = number;
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "the receipt watcher could not read the head"),
            }
            {
                let mut running = self.running.lock().await;
                if self.waiters().is_empty() {
                    *running = false;
                    return;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.interval) => {}
                () = self.sent.notified() => {}
            }
        }
    }

    /// Hands `receipts`, those of block `number`, to their waiters; false when the block could
    /// not be read (it is read again on the next round).
    async fn deliver(
        &self,
        number: u64,
        receipts: Result<Option<Vec<TransactionReceipt>>, TransportError>,
    ) -> bool {
        match receipts {
            Ok(Some(receipts)) => {
                let mut waiters = self.waiters();
                for receipt in receipts {
                    if let Some(waiter) = waiters.remove(&receipt.transaction_hash) {
                        let _ = waiter.send(receipt);
                    }
                }
                true
            }
            Ok(None) => false,
            // A node without `eth_getBlockReceipts`: ask for each waiter's receipt instead.
            Err(e) => {
                tracing::debug!(error = %e, block = number, "block receipts unavailable; asking one by one");
                let hashes: Vec<B256> = self.waiters().keys().copied().collect();
                for hash in hashes {
                    if let Ok(Some(receipt)) = self.provider.get_transaction_receipt(hash).await
                        && let Some(waiter) = self.waiters().remove(&hash)
                    {
                        let _ = waiter.send(receipt);
                    }
                }
                true
            }
        }
    }
}

impl Watch {
    /// The receipt, once a block holds the transaction; `None` if the watcher let it go (and
    /// never again after that: a later call waits forever).
    pub(super) async fn receipt(&mut self) -> Option<TransactionReceipt> {
        let Some(receiver) = self.receipt.as_mut() else { return std::future::pending().await };
        let receipt = receiver.await.ok();
        self.receipt = None;
        receipt
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.receipts.waiters().remove(&self.hash);
    }
}
