//! `Sender`: the operator account's transactions, sent one after another without waiting for
//! earlier receipts. It keeps the account nonce itself and holds it across each send, so that
//! transactions reach the node in nonce order: neither a failed send nor a crash can leave a gap
//! that strands later transactions in the node's pool (where one could be mined long after its
//! payment was voided). When the nonce is in doubt (refused as taken, or a send whose fate is
//! unknown) it is read again from the node before the next send.
//!
//! After a send, [`Sender::confirm`] waits for the receipt through the shared block watcher, and
//! now and then looks for what else can happen: the transaction dropped from the pool (sent
//! again, the same bytes), or its nonce taken by another transaction (it can never be mined).
//!
//! A send may ask to come back mined ([`Until::Mined`]): the node is then sent
//! `eth_sendRawTransactionSync` (EIP-7966), which answers with the receipt once a block holds the
//! transaction, so that nothing is polled and no watcher round trip is waited for. That is for a
//! chain that mines on arrival, where it answers within a block's work; a node without the method
//! is sent plain transactions from then on, and one that does not answer in time leaves the
//! transaction to the watcher, as any other.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use alloy::network::eip2718::Encodable2718;
use alloy::network::{EthereumWallet, NetworkTransactionBuilder, TransactionBuilder};
use alloy::primitives::{Address, B256};
use alloy::providers::{DynProvider, Provider};
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::transports::TransportError;
use tokio::sync::OnceCell;

use super::receipts::{Receipts, Watch};

/// How long a fee estimate is used for: fees are asked for once per this, not once per payment.
const FEES_FOR: Duration = Duration::from_secs(1);
/// How often a transaction waited for is looked up directly (dropped? replaced?) besides the
/// block watcher.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// How long a node may take to serve the receipt of a transaction its account nonce counts.
const RECEIPT_LAG: Duration = Duration::from_millis(500);
/// Sends of the same bytes before a send whose fate is unknown is given up.
const SEND_TRIES: u32 = 3;
/// The JSON-RPC error code of a method the node does not have.
const METHOD_NOT_FOUND: i64 = -32601;
/// The EIP-7966 error code of a transaction taken into the pool but not mined within the wait.
const SYNC_TIMED_OUT: i64 = 4;

/// What a send waits for before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Until {
    /// The node took the transaction into its pool; the receipt comes through the watcher.
    Pooled,
    /// A block holds it, for up to `within` (where the node serves `eth_sendRawTransactionSync`;
    /// otherwise, and after `within`, as [`Until::Pooled`]).
    Mined { within: Duration },
}

/// The operator's account, sending.
#[derive(Debug)]
pub(super) struct Sender {
    provider: DynProvider,
    wallet: EthereumWallet,
    address: Address,
    /// The next account nonce, `None` until read from the node (and after anything that makes it
    /// uncertain). Held across each send: sends reach the node in nonce order.
    next: tokio::sync::Mutex<Option<u64>>,
    chain_id: OnceCell<u64>,
    /// The latest fee estimate (max fee, priority fee) and when it was made.
    fees: Mutex<Option<(Instant, (u128, u128))>>,
    receipts: Arc<Receipts>,
    /// Whether the node may serve `eth_sendRawTransactionSync`: false once it said it does not.
    sync: AtomicBool,
}

/// A transaction the node accepted, waited for.
#[derive(Debug)]
pub(super) struct InFlight {
    pub(super) hash: B256,
    pub(super) nonce: u64,
    /// Its signed bytes, sent again if the node drops it.
    raw: Vec<u8>,
    /// Its registration with the block watcher: made before the send, or, for a send that was
    /// to come back mined and did not, when it is first waited for.
    watch: Option<Watch>,
    /// Its receipt, when the send came back mined.
    mined: Option<TransactionReceipt>,
}

/// Why a transaction is not in the node's pool.
#[derive(Debug)]
pub(super) enum SendError {
    /// Nothing was sent (the node refused it, or it could not be built): nobody is charged.
    NotSent(String),
    /// Sent, and the node never said whether it took it.
    Unknown { hash: B256, message: String },
}

/// What became of a transaction waited for.
#[derive(Debug)]
pub(super) enum Confirmation {
    /// In a block, with its receipt (whose status is false when it reverted).
    Mined(Box<TransactionReceipt>),
    /// Another transaction took its nonce: it can never be mined.
    Replaced,
    /// Not mined within the time given.
    TimedOut,
}

/// What a node's refusal of a send means.
enum Refusal {
    /// It already holds this very transaction.
    Known,
    /// The nonce is taken (mined, or another transaction holds it in the pool).
    NonceTaken,
    /// Anything else: the transaction is not in the pool.
    Other,
}

fn mined(receipt: TransactionReceipt) -> Confirmation {
    Confirmation::Mined(Box::new(receipt))
}

fn refusal(message: &str) -> Refusal {
    let lower = message.to_ascii_lowercase();
    if lower.contains("already known") || lower.contains("already imported") {
        Refusal::Known
    } else if lower.contains("nonce too low")
        || lower.contains("underpriced")
        || lower.contains("nonce has already been used")
    {
        Refusal::NonceTaken
    } else {
        Refusal::Other
    }
}

impl Sender {
    pub(super) fn new(
        provider: DynProvider,
        wallet: EthereumWallet,
        address: Address,
        receipts: Arc<Receipts>,
    ) -> Self {
        Self {
            provider,
            wallet,
            address,
            next: tokio::sync::Mutex::new(None),
            chain_id: OnceCell::new(),
            fees: Mutex::new(None),
            receipts,
            sync: AtomicBool::new(true),
        }
    }

    /// The fees to offer: the node's estimate, asked for at most once per [`FEES_FOR`].
    pub(super) async fn fees(&self) -> Result<(u128, u128), TransportError> {
        let cached = *self.fees.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, fees)) = cached
            && at.elapsed() < FEES_FOR
        {
            return Ok(fees);
        }
        let estimate = self.provider.estimate_eip1559_fees().await?;
        let fees = (estimate.max_fee_per_gas, estimate.max_priority_fee_per_gas);
        *self.fees.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), fees));
        Ok(fees)
    }

    async fn chain_id(&self) -> Result<u64, TransportError> {
        self.chain_id.get_or_try_init(|| self.provider.get_chain_id()).await.copied()
    }

    /// Signs `request` (gas and fees set) with the next nonce and sends it, without waiting for
    /// earlier transactions to be mined; with [`Until::Mined`], the node may answer once it has
    /// mined this one (see the module's documentation). A nonce the node says is taken is read
    /// again and the transaction signed anew; the same bytes are sent again while the node does
    /// not answer.
    pub(super) async fn send(
        &self,
        request: TransactionRequest,
        until: Until,
    ) -> Result<InFlight, SendError> {
        let chain_id = self.chain_id().await.map_err(|e| SendError::NotSent(e.to_string()))?;
        let request = request.from(self.address).with_chain_id(chain_id);
        let mut taken = 0;
        loop {
            let mut next = self.next.lock().await;
            let nonce = match *next {
                Some(nonce) => nonce,
                None => self
                    .provider
                    .get_transaction_count(self.address)
                    .pending()
                    .await
                    .map_err(|e| SendError::NotSent(e.to_string()))?,
            };
            let envelope = request
                .clone()
                .nonce(nonce)
                .build(&self.wallet)
                .await
                .map_err(|e| SendError::NotSent(e.to_string()))?;
            let hash = *envelope.tx_hash();
            let raw = envelope.encoded_2718();
            let sync = match until {
                Until::Mined { within } if self.sync.load(Ordering::Relaxed) => Some(within),
                _ => None,
            };
            // Registered before it is sent, so that the block holding it cannot pass unseen; a
            // send that is to come back mined registers only if it does not (see `confirm`).
            let watch = match sync {
                Some(_) => None,
                None => Some(self.receipts.watch(hash).await.map_err(|e| SendError::NotSent(e.0))?),
            };
            let mut mined = None;
            let mut tries = 0;
            let failure = loop {
                tries += 1;
                // Sent again (no answer), it goes as a plain transaction: the watcher finds it.
                let answer = match sync {
                    Some(within) if tries == 1 => self.send_sync(&raw, within).await,
                    _ => self.provider.send_raw_transaction(&raw).await.map(|_| None),
                };
                match answer {
                    Ok(receipt) => {
                        mined = receipt;
                        break None;
                    }
                    Err(e) => match e.as_error_resp().map(|r| refusal(&r.message)) {
                        Some(Refusal::Known) => break None,
                        Some(Refusal::NonceTaken) => break Some((Refusal::NonceTaken, e.to_string())),
                        Some(Refusal::Other) => break Some((Refusal::Other, e.to_string())),
                        None if tries < SEND_TRIES => {
                            tracing::warn!(transaction = %hash, error = %e, "sending again");
                        }
                        None => break Some((Refusal::Known, e.to_string())),
                    },
                }
            };
            match failure {
                None => {
                    *next = Some(nonce + 1);
                    if watch.is_some() {
                        self.receipts.sent();
                    }
                    return Ok(InFlight { hash, nonce, raw, watch, mined });
                }
                // The nonce is used: read it again from the node and sign anew.
                Some((Refusal::NonceTaken, message)) => {
                    *next = None;
                    taken += 1;
                    tracing::warn!(nonce, error = %message, "settlement nonce taken; reading it again");
                    if taken >= SEND_TRIES {
                        return Err(SendError::NotSent(message));
                    }
                }
                // Refused: not in the pool, and the nonce is still free for the next one.
                Some((Refusal::Other, message)) => {
                    *next = Some(nonce);
                    return Err(SendError::NotSent(message));
                }
                // No answer: it may be in the pool or not; the node says which before the next.
                Some((Refusal::Known, message)) => {
                    *next = None;
                    return Err(SendError::Unknown { hash, message });
                }
            }
        }
    }

    /// Sends `raw` with `eth_sendRawTransactionSync`: its receipt, or `None` when the node took
    /// it but did not mine it `within` (the node's own time-out, or this one: a node that holds
    /// the call has the transaction). A node without the method is sent the plain transaction,
    /// now and from then on.
    async fn send_sync(
        &self,
        raw: &[u8],
        within: Duration,
    ) -> Result<Option<TransactionReceipt>, TransportError> {
        let call = self.provider.raw_request::<_, TransactionReceipt>(
            "eth_sendRawTransactionSync".into(),
            (alloy::primitives::Bytes::copy_from_slice(raw),),
        );
        match tokio::time::timeout(within, call).await {
            Ok(Ok(receipt)) => Ok(Some(receipt)),
            Ok(Err(e)) => match e.as_error_resp().map(|r| r.code) {
                Some(METHOD_NOT_FOUND) => {
                    tracing::info!("the node has no eth_sendRawTransactionSync; sending plain transactions");
                    self.sync.store(false, Ordering::Relaxed);
                    self.provider.send_raw_transaction(raw).await.map(|_| None)
                }
                Some(SYNC_TIMED_OUT) => Ok(None),
                _ => Err(e),
            },
            Err(_) => Ok(None),
        }
    }

    /// Waits up to `timeout` for `sent` to be mined; sends it again if the node dropped it.
    pub(super) async fn confirm(&self, sent: &mut InFlight, timeout: Duration) -> Confirmation {
        if let Some(receipt) = sent.mined.take() {
            return mined(receipt);
        }
        if sent.watch.is_none() {
            // Sent to come back mined, and it did not: watched from now on, and looked for once
            // in case a block took it before. Without a watch, the lookups below still find it.
            sent.watch = self.receipts.watch(sent.hash).await.ok();
            if let Ok(Some(receipt)) = self.provider.get_transaction_receipt(sent.hash).await {
                return mined(receipt);
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let check = tokio::time::Instant::now() + CHECK_EVERY;
            let watched = async {
                match sent.watch.as_mut() {
                    Some(watch) => watch.receipt().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(receipt) = watched => return mined(receipt),
                () = tokio::time::sleep_until(check.min(deadline)) => {}
            }
            if let Ok(Some(receipt)) = self.provider.get_transaction_receipt(sent.hash).await {
                return mined(receipt);
            }
            if let Ok(used) = self.provider.get_transaction_count(self.address).latest().await
                && used > sent.nonce
            {
                // Mined just now, or never: the receipt says which. A node may count a mined
                // transaction before it serves its receipt (anvil does), so the receipt is asked
                // for again after a moment before the transaction is taken for replaced.
                tokio::time::sleep(RECEIPT_LAG).await;
                match self.provider.get_transaction_receipt(sent.hash).await {
                    Ok(Some(receipt)) => return mined(receipt),
                    Ok(None) => return Confirmation::Replaced,
                    Err(_) => {}
                }
            }
            if matches!(self.provider.get_transaction_by_hash(sent.hash).await, Ok(None)) {
                tracing::warn!(transaction = %sent.hash, "the node dropped a settlement; sending it again");
                let _ = self.provider.send_raw_transaction(&sent.raw).await;
            }
            if tokio::time::Instant::now() >= deadline {
                return Confirmation::TimedOut;
            }
        }
    }
}
