//! `Batches`: settlements that wait together go out together, as one Multicall3 `aggregate3`
//! transaction whose calls may each fail alone.
//!
//! Settlements queue for one task. It takes everything waiting (up to the most a batch may
//! hold), dry-runs the batch with `eth_call`, answers those whose transfer would revert (the
//! payer's reason, nothing sent), sends the rest as one transaction (its gas limit twice the
//! most a payment of an earlier batch took, or the node's estimate before any was mined) and
//! goes on to the next batch without waiting for the receipt: batching costs no waiting, since a
//! batch holds what queued while the previous one was being sent. A batch of one is sent as a
//! plain transfer.
//!
//! On a chain that mines each transaction as it arrives (a local one), a batch waits for the
//! previous one's receipt before it is sent (at most [`WAIT_FOR_PREVIOUS`]): what queues
//! meanwhile goes with it, so the chain mines fewer, fuller blocks. There a block costs more than
//! the calls in it (anvil recomputes the state root over the whole chain's state for each block,
//! a cost that grows with every payment), and sending at once made blocks of two payments at
//! 8 in flight and later payments 1.6× slower than the first (`benches/payments.rs`). On other
//! chains, blocks come at their own pace and hold whatever was sent, so batches go at once.
//!
//! On such a chain a batch is also sent to come back mined (`eth_sendRawTransactionSync`, see
//! [`Until::Mined`]): its receipt is the node's answer, with no block watched for. And it is not
//! dry-run: every call the node would run twice (once to try, once to mine) costs the chain as
//! much as the block's other work, and a transfer that fails in the batch fails alone anyway, its
//! reason asked for then ([`Settler::left_unsettled`]). A transfer alone is sent with twice the
//! gas one took, once one was mined, rather than the node's estimate (several runs of it).
//!
//! Once mined, each payment reads its outcome from the receipt: the token's `AuthorizationUsed`
//! log for its authorization means it was transferred; no such log means its call failed in the
//! batch (the chain then says whether the authorization was used elsewhere or is unused, the
//! payer not charged). A batch whose nonce another transaction took is sent again for those
//! whose authorizations are still unused, as single settlements are.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use alloy::primitives::{Address, B256};
use alloy::providers::Provider;
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::sol;
use alloy::sol_types::{SolCall, SolEvent};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::{Confirmation, InFlight, RESENDS, SettleError, Settler, Until, gave_up};
use crate::chain::{Eip3009Token, transfer_request};
use crate::exact::CheckedPayment;

sol! {
    /// Multicall3's `aggregate3`, as deployed at its canonical address on public chains (and by
    /// `vendbox dev` on its local chain: `contracts/VendboxMulticall.sol`).
    interface Multicall3 {
        struct Call3 {
            address target;
            bool allowFailure;
            bytes callData;
        }
        struct Result {
            bool success;
            bytes returnData;
        }
        function aggregate3(Call3[] calldata calls) external payable returns (Result[] memory returnData);
    }
}

/// One settlement waiting for a batch.
#[derive(Debug)]
struct Item {
    payment: CheckedPayment,
    /// Transactions sent for it whose nonce another transaction took.
    replaced: u32,
    answer: oneshot::Sender<Result<B256, SettleError>>,
}

impl Item {
    fn answer(self, outcome: Result<B256, SettleError>) {
        let _ = self.answer.send(outcome);
    }
}

/// The queue of settlements to batch, and its task (started with the first settlement).
#[derive(Debug)]
pub(super) struct Batches {
    multicall: Address,
    most: usize,
    queue: OnceLock<mpsc::UnboundedSender<Item>>,
}

impl Batches {
    pub(super) fn new(multicall: Address, most: usize) -> Self {
        Self { multicall, most, queue: OnceLock::new() }
    }

    pub(super) fn multicall(&self) -> Address {
        self.multicall
    }

    /// Queues `payment` for the next batch and waits for its outcome.
    pub(super) async fn settle(
        &self,
        settler: &Arc<Settler>,
        payment: &CheckedPayment,
    ) -> Result<B256, SettleError> {
        let queue = self.queue.get_or_init(|| {
            let (queue, waiting) = mpsc::unbounded_channel();
            let batcher = Batcher {
                settler: settler.clone(),
                multicall: self.multicall,
                most: self.most,
                per_payment_gas: AtomicU64::new(0),
                unmined: settler.mines_on_arrival.then(|| Arc::new(Semaphore::new(1))),
            };
            tokio::spawn(batcher.run(waiting, queue.downgrade()));
            queue
        });
        let (answer, outcome) = oneshot::channel();
        let item = Item { payment: payment.clone(), replaced: 0, answer };
        if queue.send(item).is_err() {
            return Err(SettleError::NotSent("the settlement queue is closed".into()));
        }
        outcome.await.unwrap_or_else(|_| {
            Err(SettleError::Unconfirmed {
                transaction: None,
                message: "the batch holding this settlement was lost".into(),
            })
        })
    }
}

/// The task that makes and sends batches.
struct Batcher {
    settler: Arc<Settler>,
    multicall: Address,
    most: usize,
    /// The most gas a payment of a mined batch took (its share of the transaction's gas), once
    /// one was mined: later batches are sent with twice that a payment as their limit, without
    /// asking the node to estimate (their `eth_call` dry run already showed what succeeds).
    per_payment_gas: AtomicU64,
    /// On a chain that mines on arrival, the one batch that may be unmined: the next waits for
    /// its receipt (see the module's documentation).
    unmined: Option<Arc<Semaphore>>,
}

/// The longest a batch waits for the previous one's receipt, so that a transaction the chain is
/// slow to mine holds the others back only this long.
const WAIT_FOR_PREVIOUS: Duration = Duration::from_millis(100);

/// A transaction's own gas, besides its calls'.
const TRANSACTION_GAS: u64 = 21_000;

impl Batcher {
    /// Sends what waits, batch after batch, until the facilitator is gone.
    async fn run(self, mut waiting: mpsc::UnboundedReceiver<Item>, again: mpsc::WeakUnboundedSender<Item>) {
        let this = Arc::new(self);
        while let Some(first) = waiting.recv().await {
            let previous_mined = this.previous_mined().await;
            let mut items = vec![first];
            while items.len() < this.most {
                match waiting.try_recv() {
                    Ok(item) => items.push(item),
                    Err(_) => break,
                }
            }
            this.send(items, &again, previous_mined).await;
        }
    }

    /// What a send waits for: on a chain that mines on arrival, its block, since the next batch
    /// waits for it anyway; elsewhere, only the node's pool.
    fn until(&self) -> Until {
        if self.settler.mines_on_arrival { Until::Mined { within: WAIT_FOR_PREVIOUS } } else { Until::Pooled }
    }

    /// Where the chain mines on arrival, waits for the previous batch's receipt (at most
    /// [`WAIT_FOR_PREVIOUS`]); the permit to hold until this batch's receipt is in, if it came.
    async fn previous_mined(&self) -> Option<OwnedSemaphorePermit> {
        let unmined = self.unmined.clone()?;
        tokio::time::timeout(WAIT_FOR_PREVIOUS, unmined.acquire_owned()).await.ok()?.ok()
    }

    /// Dry-runs `items` together, answers those that would fail, sends the rest, and leaves the
    /// receipt to a task of its own, which lets `unmined` go once the receipt is in.
    async fn send(
        self: &Arc<Self>,
        items: Vec<Item>,
        again: &mpsc::WeakUnboundedSender<Item>,
        unmined: Option<OwnedSemaphorePermit>,
    ) {
        // On a chain that mines on arrival, a transfer that would fail is sent and fails alone:
        // its reason is asked for then (see `Settler::left_unsettled`), not by a dry run of
        // every batch ahead of it.
        let mut items = if self.settler.mines_on_arrival { items } else { self.dry_run(items).await };
        match items.len() {
            0 => {}
            1 => {
                let Some(item) = items.pop() else { return };
                match self.settler.send_one(&item.payment, self.until()).await {
                    Ok(sent) => {
                        let this = self.clone();
                        let again = again.clone();
                        tokio::spawn(async move {
                            let finished = this.settler.finish_one(&item.payment, sent).await;
                            drop(unmined);
                            match finished {
                                Some(outcome) => item.answer(outcome),
                                None => resend(item, &again),
                            }
                        });
                    }
                    Err(e) => item.answer(Err(e)),
                }
            }
            _ => {
                let request = self.request(&items);
                let gas = match self.per_payment_gas.load(Ordering::Relaxed) {
                    0 => None,
                    per_payment => Some(TRANSACTION_GAS + 2 * per_payment * items.len() as u64),
                };
                match self.settler.send(request, gas, self.until()).await {
                    Ok(sent) => {
                        tracing::info!(
                            transaction = %sent.hash, nonce = sent.nonce, payments = items.len(),
                            "batched settlement sent"
                        );
                        let this = self.clone();
                        let again = again.clone();
                        tokio::spawn(async move { this.finish(items, sent, &again, unmined).await });
                    }
                    Err(e) => {
                        for item in items {
                            item.answer(Err(e.clone()));
                        }
                    }
                }
            }
        }
    }

    /// The `aggregate3` transaction transferring each of `items`, every call allowed to fail.
    fn request(&self, items: &[Item]) -> TransactionRequest {
        let asset = self.settler.chain.asset().get();
        let calls = items
            .iter()
            .map(|item| Multicall3::Call3 {
                target: asset,
                allowFailure: true,
                callData: transfer_request(asset, &item.payment).input.into_input().unwrap_or_default(),
            })
            .collect();
        let call = Multicall3::aggregate3Call { calls };
        TransactionRequest::default()
            .from(self.settler.sender)
            .to(self.multicall)
            .input(call.abi_encode().into())
    }

    /// Runs the batch with `eth_call` and answers each item whose transfer would revert, with
    /// the payer's reason; returns the others. A batch of one is left to the plain transfer's
    /// own dry run (its gas estimate).
    async fn dry_run(&self, items: Vec<Item>) -> Vec<Item> {
        if items.len() < 2 {
            return items;
        }
        let provider = self.settler.chain.provider();
        let results = match provider.call(self.request(&items)).await {
            Ok(output) => match Multicall3::aggregate3Call::abi_decode_returns(&output) {
                Ok(results) if results.len() == items.len() => results,
                Ok(_) | Err(_) => {
                    let error = SettleError::NotSent(format!(
                        "the multicall at {} answered what aggregate3 does not; is it Multicall3?",
                        self.multicall
                    ));
                    for item in items {
                        item.answer(Err(error.clone()));
                    }
                    return Vec::new();
                }
            },
            Err(e) => {
                let error = Settler::not_sent(&e);
                for item in items {
                    item.answer(Err(error.clone()));
                }
                return Vec::new();
            }
        };
        let mut kept = Vec::with_capacity(items.len());
        for (item, result) in items.into_iter().zip(results) {
            if result.success {
                kept.push(item);
                continue;
            }
            let reason = alloy::sol_types::decode_revert_reason(&result.returnData)
                .unwrap_or_else(|| "the transfer reverts".into());
            let error = Settler::not_sent(&format!("execution reverted: {reason}"));
            item.answer(Err(error));
        }
        kept
    }

    /// Waits for the batch `sent` and answers each of `items` from its receipt.
    async fn finish(
        &self,
        items: Vec<Item>,
        mut sent: InFlight,
        again: &mpsc::WeakUnboundedSender<Item>,
        unmined: Option<OwnedSemaphorePermit>,
    ) {
        let hash = sent.hash;
        let confirmation = self.settler.transactions.confirm(&mut sent, self.settler.receipt_timeout).await;
        drop(unmined);
        match confirmation {
            Confirmation::Mined(receipt) => {
                if receipt.status() && !items.is_empty() {
                    let per_payment = receipt.gas_used / items.len() as u64;
                    self.per_payment_gas.fetch_max(per_payment, Ordering::Relaxed);
                }
                for item in items {
                    if transferred(&receipt, self.settler.chain.asset().get(), &item.payment) {
                        item.answer(Ok(hash));
                        continue;
                    }
                    // Its call failed in the batch.
                    let outcome = self.settler.left_unsettled(&item.payment, hash).await;
                    item.answer(outcome);
                }
            }
            Confirmation::TimedOut => {
                for item in items {
                    item.answer(Err(self.settler.timed_out(hash)));
                }
            }
            Confirmation::Replaced => {
                tracing::warn!(transaction = %hash, "another transaction took the batch's nonce");
                for item in items {
                    match self.settler.after_replacement(&item.payment).await {
                        Some(outcome) => item.answer(outcome),
                        None => resend(item, again),
                    }
                }
            }
        }
    }
}

/// Queues `item` again, after another transaction took the nonce of the one that carried it.
fn resend(mut item: Item, again: &mpsc::WeakUnboundedSender<Item>) {
    item.replaced += 1;
    if item.replaced >= RESENDS {
        item.answer(Err(gave_up()));
        return;
    }
    match again.upgrade() {
        Some(queue) => {
            if let Err(mpsc::error::SendError(item)) = queue.send(item) {
                item.answer(Err(SettleError::NotSent("the settlement queue is closed".into())));
            }
        }
        None => item.answer(Err(SettleError::NotSent("the facilitator stopped".into()))),
    }
}

/// Whether `receipt` holds the token's `AuthorizationUsed` log for `payment`'s authorization.
fn transferred(receipt: &TransactionReceipt, asset: Address, payment: &CheckedPayment) -> bool {
    let (from, nonce) = (payment.authorization.from, payment.authorization.nonce);
    receipt.status()
        && receipt.inner.logs().iter().any(|log| {
            let topics = log.topics();
            log.address() == asset
                && topics.len() == 3
                && topics[0] == Eip3009Token::AuthorizationUsed::SIGNATURE_HASH
                && topics[1] == from.into_word()
                && topics[2] == nonce
        })
}
