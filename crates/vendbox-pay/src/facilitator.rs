//! Facilitators verify and settle payments. Two sit behind one trait: the built-in one talks to
//! the chain itself and settles with the operator's key; the remote one asks an x402 facilitator
//! service over HTTP (`/verify`, `/settle`, `/supported`).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use alloy::network::EthereumWallet;
use alloy::primitives::{Address, B256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::chain::{Chain, ChainError, VerifyError, classify_revert, transfer_request};
use crate::exact::{CheckedPayment, Requirements, Version};
use crate::keys::{EvmAddress, Wallet};
use crate::reason::{Reason, Rejection};

mod batch;
mod receipts;
mod sender;

use batch::Batches;
use receipts::Receipts;
use sender::{Confirmation, InFlight, SendError, Sender, Until};

/// Why a settlement did not take the money.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettleError {
    /// Nothing was sent; the payer was not charged.
    #[error("the settlement was not sent: {0}")]
    NotSent(String),
    /// The transfer was refused on chain (or would be); the payer was not charged.
    #[error("the settlement was refused: {0}")]
    Refused(Rejection),
    /// Sent, and reverted; the payer was not charged.
    #[error("the settlement transaction {0} reverted")]
    Reverted(B256),
    /// Sent, but no receipt came in time: the chain decides, and the settlement worker finds out.
    #[error("the settlement transaction {transaction:?} is not confirmed yet: {message}")]
    Unconfirmed {
        /// The transaction, when its hash is known.
        transaction: Option<B256>,
        /// What happened.
        message: String,
    },
}

/// Verifies and settles `exact` payments.
#[async_trait]
pub trait Facilitator: Send + Sync + fmt::Debug {
    /// `builtin` or `remote`, for logs.
    fn kind(&self) -> &'static str;

    /// The checks that need the chain: nonce unused, balance, and a dry run of the transfer.
    async fn verify(&self, payment: &CheckedPayment, requirements: &Requirements) -> Result<(), VerifyError>;

    /// Takes the money: returns the transaction hash once the transfer is on chain.
    async fn settle(
        &self,
        payment: &CheckedPayment,
        requirements: &Requirements,
    ) -> Result<B256, SettleError>;
}

/// Settles on chain itself, with the operator's key, at the chain's speed: settlements are sent
/// one after another without waiting for earlier receipts (the account nonce is kept here, see
/// [`sender`]), and their receipts come from one watcher of new blocks (see [`receipts`]). With
/// [`BuiltinFacilitator::batching`], settlements that wait together go out as one Multicall3
/// transaction (see [`batch`]).
#[derive(Debug)]
pub struct BuiltinFacilitator {
    settler: Arc<Settler>,
    /// Where settlements queue when they are batched.
    batches: Option<Batches>,
}

/// What sends and confirms settlements, shared with the batching task.
#[derive(Debug)]
struct Settler {
    /// The token.
    chain: Chain,
    /// Who sends the settlement transactions (and pays their gas).
    sender: Address,
    /// The sender's transactions: nonce, signing, sending, confirming.
    transactions: Sender,
    /// How long to wait for a settlement's receipt.
    receipt_timeout: Duration,
    /// Whether the chain mines each transaction as it arrives (a node on this machine).
    mines_on_arrival: bool,
    /// The most gas a transfer sent alone took, once one was mined (0 before).
    transfer_gas: AtomicU64,
}

/// How often the receipt watcher asks a node on this machine for its head while a settlement
/// waits: a local chain mines at once, so its receipts come within a few milliseconds.
const LOCAL_HEAD_INTERVAL: Duration = Duration::from_millis(3);
/// The same for a remote node, well within one block of any chain vendbox settles on.
const REMOTE_HEAD_INTERVAL: Duration = Duration::from_millis(500);
/// Settlements sent anew when another transaction took the nonce of the one sent.
const RESENDS: u32 = 3;

/// Whether `rpc_url` names a node on this machine.
fn is_local(rpc_url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(rpc_url) else { return false };
    let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// How a chain mines the transactions it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mining {
    /// Each as it arrives, in a block of its own (a development node, such as anvil's automine).
    OnArrival,
    /// In blocks that come at the chain's own pace.
    Paced,
}

impl BuiltinFacilitator {
    /// A facilitator for the token at `asset`, sending through `rpc_url` with `signer`. A node
    /// on this machine is taken to mine on arrival (see [`Mining`]), any other one at its pace.
    pub fn new(rpc_url: &str, asset: EvmAddress, wallet: &Wallet) -> Result<Self, ChainError> {
        let mining = if is_local(rpc_url) { Mining::OnArrival } else { Mining::Paced };
        Self::with_mining(rpc_url, asset, wallet, mining)
    }

    /// The same, on a chain that mines as `mining` says.
    pub fn with_mining(
        rpc_url: &str,
        asset: EvmAddress,
        wallet: &Wallet,
        mining: Mining,
    ) -> Result<Self, ChainError> {
        let signer = wallet.signer().clone();
        let url = rpc_url.parse().map_err(|e| ChainError(format!("RPC URL {rpc_url:?}: {e}")))?;
        let mines_on_arrival = mining == Mining::OnArrival;
        let interval = if mines_on_arrival { LOCAL_HEAD_INTERVAL } else { REMOTE_HEAD_INTERVAL };
        let sender = signer.address();
        let provider = ProviderBuilder::new().disable_recommended_fillers().connect_http(url).erased();
        let receipts = Receipts::new(provider.clone(), interval);
        let settler = Settler {
            chain: Chain::with_provider(provider.clone(), asset.get()),
            sender,
            transactions: Sender::new(provider, EthereumWallet::from(signer), sender, receipts),
            receipt_timeout: Duration::from_mins(1),
            mines_on_arrival,
            transfer_gas: AtomicU64::new(0),
        };
        Ok(Self { settler: Arc::new(settler), batches: None })
    }

    /// The same facilitator, settling up to `most` authorizations in one transaction through the
    /// Multicall3 (`aggregate3`) contract at `multicall`: those that wait while a transaction is
    /// being sent go together in the next one, and one that fails there fails alone. `most` of 0
    /// or 1 settles each payment in a transaction of its own.
    #[must_use]
    pub fn batching(mut self, multicall: EvmAddress, most: usize) -> Self {
        self.batches = (most > 1).then(|| Batches::new(multicall.get(), most));
        self
    }

    /// The address that sends settlements.
    pub fn sender(&self) -> EvmAddress {
        self.settler.sender.into()
    }

    /// The chain it settles on.
    pub fn chain(&self) -> &Chain {
        &self.settler.chain
    }

    /// Whether the chain has a contract at the batching address (true when not batching).
    pub async fn check_batching(&self) -> Result<bool, ChainError> {
        let Some(batches) = &self.batches else { return Ok(true) };
        let code = self
            .settler
            .chain
            .provider()
            .get_code_at(batches.multicall())
            .await
            .map_err(|e| ChainError(e.to_string()))?;
        Ok(!code.is_empty())
    }
}

impl Settler {
    /// A refusal of the node or of a dry run, as a settlement error: the payer's fault when the
    /// transfer would revert, a failure to send otherwise.
    fn not_sent(e: &dyn fmt::Display) -> SettleError {
        match classify_revert(&e.to_string()) {
            VerifyError::Rejected(r) => SettleError::Refused(r),
            VerifyError::Unavailable(m) => SettleError::NotSent(m),
        }
    }

    /// Signs and sends `request` with the next nonce. Its gas limit is `gas` when the caller
    /// knows it (a batch that was dry-run already); otherwise the node estimates it, with a
    /// margin, and the estimate is also the last dry run, so what would revert is not sent.
    async fn send(
        &self,
        request: TransactionRequest,
        gas: Option<u64>,
        until: Until,
    ) -> Result<InFlight, SettleError> {
        let provider = self.chain.provider();
        let estimate = async {
            match gas {
                Some(gas) => Ok(gas),
                // A margin: an earlier settlement still in flight may change what this one touches.
                None => provider.estimate_gas(request.clone()).await.map(|gas| gas + gas / 5),
            }
        };
        let (gas, fees) = tokio::join!(estimate, self.transactions.fees());
        let gas = gas.map_err(|e| Self::not_sent(&e))?;
        let (max_fee, priority_fee) = fees.map_err(|e| Self::not_sent(&e))?;
        let request = request.gas_limit(gas).max_fee_per_gas(max_fee).max_priority_fee_per_gas(priority_fee);
        self.transactions.send(request, until).await.map_err(|e| match e {
            SendError::NotSent(message) => Self::not_sent(&message),
            SendError::Unknown { hash, message } => {
                SettleError::Unconfirmed { transaction: Some(hash), message }
            }
        })
    }

    /// Sends the transfer of `payment` alone. Its gas limit is the node's estimate, which is
    /// also its dry run; on a chain that mines on arrival, once a transfer was mined, it is
    /// twice what one took, with no estimate asked (an estimate is several runs of the transfer
    /// on such a chain's one busy node): one that fails is mined reverted, and its reason asked
    /// for then (see [`Settler::left_unsettled`]).
    async fn send_one(&self, payment: &CheckedPayment, until: Until) -> Result<InFlight, SettleError> {
        let request = transfer_request(self.chain.asset().get(), payment).from(self.sender);
        let gas = match self.transfer_gas.load(Ordering::Relaxed) {
            most if most > 0 && self.mines_on_arrival => Some(2 * most),
            _ => None,
        };
        let sent = self.send(request, gas, until).await?;
        tracing::info!(transaction = %sent.hash, nonce = sent.nonce, payer = %payment.payer(), "settlement sent");
        Ok(sent)
    }

    /// What became of `payment`'s transfer, sent alone as `sent`: `None` when another transaction
    /// took its nonce and the authorization is still unused, so that it may be sent again.
    async fn finish_one(
        &self,
        payment: &CheckedPayment,
        mut sent: InFlight,
    ) -> Option<Result<B256, SettleError>> {
        let hash = sent.hash;
        match self.transactions.confirm(&mut sent, self.receipt_timeout).await {
            Confirmation::Mined(receipt) if receipt.status() => {
                self.transfer_gas.fetch_max(receipt.gas_used, Ordering::Relaxed);
                Some(Ok(hash))
            }
            Confirmation::Mined(_) => Some(self.left_unsettled(payment, hash).await),
            Confirmation::TimedOut => Some(Err(self.timed_out(hash))),
            Confirmation::Replaced => {
                tracing::warn!(transaction = %hash, "another transaction took the settlement's nonce");
                self.after_replacement(payment).await
            }
        }
    }

    fn timed_out(&self, hash: B256) -> SettleError {
        SettleError::Unconfirmed {
            transaction: Some(hash),
            message: format!("no receipt within {:?}", self.receipt_timeout),
        }
    }

    /// Sends `payment`'s transfer alone, again while another transaction takes its nonce.
    async fn settle_one(&self, payment: &CheckedPayment) -> Result<B256, SettleError> {
        for _ in 0..RESENDS {
            let sent = self.send_one(payment, Until::Pooled).await?;
            if let Some(outcome) = self.finish_one(payment, sent).await {
                return outcome;
            }
        }
        Err(gave_up())
    }

    /// What became of `payment` when `transaction`, which carried its transfer, was mined without
    /// moving its money: settled by another transaction or cancelled (see
    /// [`Settler::after_replacement`]), or unused, the payer not charged: refused with the
    /// payer's reason when the transfer run alone now reverts (an emptied wallet), reverted
    /// otherwise. On a chain that mines on arrival, where nothing is dry-run before it is sent,
    /// an authorization another transaction used is refused as used, as a dry run would have
    /// refused it: such a chain mines what it is sent at once, so it was used before this send.
    async fn left_unsettled(&self, payment: &CheckedPayment, transaction: B256) -> Result<B256, SettleError> {
        match self.after_replacement(payment).await {
            Some(Ok(_)) if self.mines_on_arrival => {
                return Err(SettleError::Refused(Rejection::new(
                    Reason::NonceUsed,
                    "this authorization's nonce was already used on chain; sign a new one",
                )));
            }
            Some(outcome) => return outcome,
            None => {}
        }
        match self.chain.simulate(payment, self.sender).await {
            Err(VerifyError::Rejected(refused)) => Err(SettleError::Refused(refused)),
            Ok(()) | Err(VerifyError::Unavailable(_)) => Err(SettleError::Reverted(transaction)),
        }
    }

    /// What the chain says of `payment`'s authorization once the settlement sent for it can no
    /// longer be mined (another transaction took its nonce), or once the transaction that
    /// carried it left it out: settled by some transaction, cancelled by the payer, or free to be
    /// sent again (`None`). Anything less certain is unconfirmed, and the settlement worker asks
    /// the chain again later.
    async fn after_replacement(&self, payment: &CheckedPayment) -> Option<Result<B256, SettleError>> {
        let (from, nonce) = (payment.authorization.from, payment.authorization.nonce);
        let unconfirmed =
            |message: String| Some(Err(SettleError::Unconfirmed { transaction: None, message }));
        match self.chain.authorization_state(from, nonce).await {
            Ok(false) => return None,
            Ok(true) => {}
            Err(e) => return unconfirmed(e.0),
        }
        match self.chain.find_settlement(from, nonce).await {
            Ok(Some(transaction)) => return Some(Ok(transaction)),
            Ok(None) => {}
            Err(e) => return unconfirmed(e.0),
        }
        match self.chain.find_cancellation(from, nonce).await {
            Ok(Some(_)) => Some(Err(SettleError::Refused(Rejection::new(
                Reason::NonceUsed,
                "the payer cancelled this authorization on chain before it was settled",
            )))),
            Ok(None) => {
                unconfirmed("the authorization is used on chain by a transaction not found yet".into())
            }
            Err(e) => unconfirmed(e.0),
        }
    }
}

/// The error of a settlement whose nonce was taken [`RESENDS`] times.
fn gave_up() -> SettleError {
    SettleError::NotSent("the settlement's nonce was taken by other transactions again and again".into())
}

#[async_trait]
impl Facilitator for BuiltinFacilitator {
    fn kind(&self) -> &'static str {
        "builtin"
    }

    async fn verify(&self, payment: &CheckedPayment, requirements: &Requirements) -> Result<(), VerifyError> {
        let auth = &payment.authorization;
        let chain = &self.settler.chain;
        if chain.asset().get() != requirements.acceptance.asset {
            return Err(VerifyError::Unavailable("the facilitator serves another token".into()));
        }
        // The dry run refuses a used nonce, an empty wallet and every other revert. Only when it
        // refuses is the authorization's state asked, so that a used nonce is named as such: a
        // payment that goes through costs the chain one call, not two.
        match chain.simulate(payment, self.settler.sender).await {
            Err(VerifyError::Rejected(refused)) => {
                if chain.authorization_state(auth.from, auth.nonce).await? {
                    return Err(Rejection::new(
                        Reason::NonceUsed,
                        "this authorization's nonce was already used on chain; sign a new one",
                    )
                    .into());
                }
                Err(VerifyError::Rejected(refused))
            }
            dry_run => dry_run,
        }
    }

    async fn settle(
        &self,
        payment: &CheckedPayment,
        _requirements: &Requirements,
    ) -> Result<B256, SettleError> {
        match &self.batches {
            Some(batches) => batches.settle(&self.settler, payment).await,
            None => self.settler.settle_one(payment).await,
        }
    }
}

/// An x402 facilitator service, over HTTP.
#[derive(Debug, Clone)]
pub struct RemoteFacilitator {
    http: reqwest::Client,
    /// Base URL; `/verify`, `/settle` and `/supported` are under it.
    base: String,
    /// Sent with every call, when the service wants one (`Authorization: Bearer …`).
    auth_header: Option<(String, String)>,
}

impl RemoteFacilitator {
    /// A client for the facilitator at `base`.
    pub fn new(base: &str, auth_header: Option<(String, String)>) -> Result<Self, ChainError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_mins(1))
            .build()
            .map_err(|e| ChainError(format!("HTTP client: {e}")))?;
        Ok(Self { http, base: base.trim_end_matches('/').to_owned(), auth_header })
    }

    /// `GET /supported`: the kinds of payment it settles.
    pub async fn supported(&self) -> Result<Value, String> {
        let request = self.with_auth(self.http.get(format!("{}/supported", self.base)));
        let response = request.send().await.map_err(|e| e.to_string())?;
        response.error_for_status().map_err(|e| e.to_string())?.json().await.map_err(|e| e.to_string())
    }

    fn with_auth(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth_header {
            Some((name, value)) => request.header(name, value),
            None => request,
        }
    }

    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        payment: &CheckedPayment,
        requirements: &Requirements,
    ) -> Result<T, String> {
        let version = payment.sent.version();
        let requirements = match version {
            Version::V1 => serde_json::to_value(requirements.v1()),
            Version::V2 => serde_json::to_value(requirements.v2()),
        }
        .map_err(|e| e.to_string())?;
        let body = json!({
            "x402Version": version.number(),
            "paymentPayload": payment.sent.to_json(),
            "paymentRequirements": requirements,
        });
        let request = self.with_auth(self.http.post(format!("{}{path}", self.base)).json(&body));
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let text = response.text().await.map_err(|e| e.to_string())?;
        serde_json::from_str(&text)
            .map_err(|_| format!("{path} answered {status}: {}", text.chars().take(200).collect::<String>()))
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VerifyResponse {
    is_valid: bool,
    #[serde(default)]
    invalid_reason: Option<String>,
    #[serde(default)]
    invalid_message: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SettleResponse {
    success: bool,
    #[serde(default)]
    error_reason: Option<String>,
    #[serde(default)]
    transaction: Option<String>,
}

fn remote_rejection(code: Option<String>, message: Option<String>) -> Rejection {
    let code = code.unwrap_or_else(|| "unknown".into());
    let reason = Reason::from_any_code(&code).unwrap_or(Reason::TransactionState);
    Rejection::new(
        reason,
        format!("the facilitator refused the payment: {code} {}", message.unwrap_or_default()),
    )
}

#[async_trait]
impl Facilitator for RemoteFacilitator {
    fn kind(&self) -> &'static str {
        "remote"
    }

    async fn verify(&self, payment: &CheckedPayment, requirements: &Requirements) -> Result<(), VerifyError> {
        let answer: VerifyResponse =
            self.call("/verify", payment, requirements).await.map_err(VerifyError::Unavailable)?;
        if answer.is_valid {
            Ok(())
        } else {
            Err(remote_rejection(answer.invalid_reason, answer.invalid_message).into())
        }
    }

    async fn settle(
        &self,
        payment: &CheckedPayment,
        requirements: &Requirements,
    ) -> Result<B256, SettleError> {
        let answer: SettleResponse = self
            .call("/settle", payment, requirements)
            .await
            .map_err(|m| SettleError::Unconfirmed { transaction: None, message: m })?;
        let transaction = answer.transaction.as_deref().and_then(|t| t.parse::<B256>().ok());
        match (answer.success, transaction) {
            (true, Some(hash)) => Ok(hash),
            (true, None) => Err(SettleError::Unconfirmed {
                transaction: None,
                message: "the facilitator settled but sent no transaction hash".into(),
            }),
            (false, Some(hash)) => Err(SettleError::Reverted(hash)),
            (false, None) => Err(SettleError::Refused(remote_rejection(answer.error_reason, None))),
        }
    }
}

/// What a facilitator's settlement `result` means to a payment method, whose receipt for a
/// transaction (empty when none is known) `receipt` makes.
pub(crate) fn settlement(
    result: Result<B256, SettleError>,
    receipt: impl Fn(&str) -> crate::method::Receipt,
) -> Result<crate::method::Receipt, crate::method::SettleFailure> {
    use crate::method::SettleFailure;
    match result {
        Ok(tx) => Ok(receipt(&tx.to_string())),
        Err(SettleError::Unconfirmed { transaction, message }) => {
            let tx = transaction.map(|t| t.to_string()).unwrap_or_default();
            Err(SettleFailure::Unconfirmed { receipt: receipt(&tx), message })
        }
        Err(SettleError::Refused(r)) => Err(SettleFailure::Refused(r)),
        Err(e) => Err(SettleFailure::Failed(e.to_string())),
    }
}
