//! Facilitators verify and settle payments. Two sit behind one trait: the built-in one talks to
//! the chain itself and settles with the operator's key; the remote one asks an x402 facilitator
//! service over HTTP (`/verify`, `/settle`, `/supported`).

use std::fmt;
use std::time::Duration;

use alloy::network::EthereumWallet;
use alloy::primitives::{Address, B256};
use alloy::providers::fillers::{ChainIdFiller, GasFiller};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::chain::{Chain, ChainError, VerifyError, classify_revert, transfer_request};
use crate::exact::{CheckedPayment, Requirements, Version};
use crate::reason::{Reason, Rejection};

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

/// Settles on chain itself, with the operator's key.
#[derive(Debug)]
pub struct BuiltinFacilitator {
    /// The token, through a provider that signs with the operator's key.
    chain: Chain,
    /// Who sends the settlement transactions (and pays their gas).
    sender: Address,
    /// Held while a transaction gets its account nonce and is sent (and only then: gas and fees
    /// are estimated before), so that concurrent settlements never share a nonce or leave a gap.
    send: Mutex<()>,
    /// How long to wait for a settlement's receipt.
    receipt_timeout: Duration,
}

impl BuiltinFacilitator {
    /// A facilitator for the token at `asset`, sending through `rpc_url` with `signer`.
    pub fn new(rpc_url: &str, asset: Address, signer: PrivateKeySigner) -> Result<Self, ChainError> {
        let url = rpc_url.parse().map_err(|e| ChainError(format!("RPC URL {rpc_url:?}: {e}")))?;
        let sender = signer.address();
        let provider = ProviderBuilder::new()
            .disable_recommended_fillers()
            .filler(GasFiller::default())
            .filler(ChainIdFiller::default())
            .with_simple_nonce_management()
            .wallet(EthereumWallet::from(signer))
            .connect_http(url)
            .erased();
        Ok(Self {
            chain: Chain::with_provider(provider, asset),
            sender,
            send: Mutex::new(()),
            receipt_timeout: Duration::from_mins(1),
        })
    }

    /// The address that sends settlements.
    pub fn sender(&self) -> Address {
        self.sender
    }

    /// The chain it settles on.
    pub fn chain(&self) -> &Chain {
        &self.chain
    }
}

#[async_trait]
impl Facilitator for BuiltinFacilitator {
    fn kind(&self) -> &'static str {
        "builtin"
    }

    async fn verify(&self, payment: &CheckedPayment, requirements: &Requirements) -> Result<(), VerifyError> {
        let auth = &payment.authorization;
        if self.chain.asset() != requirements.acceptance.asset {
            return Err(VerifyError::Unavailable("the facilitator serves another token".into()));
        }
        // The dry run refuses an empty wallet (and every other revert) with its reason; the
        // authorization state is asked alongside, so that a used nonce is named as such.
        let (used, dry_run) = tokio::join!(
            self.chain.authorization_used(auth.from, auth.nonce),
            self.chain.simulate(payment, self.sender)
        );
        if used? {
            return Err(Rejection::new(
                Reason::NonceUsed,
                "this authorization's nonce was already used on chain; sign a new one",
            )
            .into());
        }
        dry_run
    }

    async fn settle(
        &self,
        payment: &CheckedPayment,
        _requirements: &Requirements,
    ) -> Result<B256, SettleError> {
        let not_sent = |e: &dyn fmt::Display| match classify_revert(&e.to_string()) {
            VerifyError::Rejected(r) => SettleError::Refused(r),
            VerifyError::Unavailable(m) => SettleError::NotSent(m),
        };
        let provider = self.chain.provider();
        // Gas and fees are asked for before taking the turn, so that only the nonce and the send
        // are one at a time.
        let request = transfer_request(self.chain.asset(), payment).from(self.sender);
        let (gas, fees) =
            tokio::join!(provider.estimate_gas(request.clone()), provider.estimate_eip1559_fees());
        let gas = gas.map_err(|e| not_sent(&e))?;
        let fees = fees.map_err(|e| not_sent(&e))?;
        let request = request
            .gas_limit(gas)
            .max_fee_per_gas(fees.max_fee_per_gas)
            .max_priority_fee_per_gas(fees.max_priority_fee_per_gas);
        let pending = {
            let _turn = self.send.lock().await;
            provider.send_transaction(request).await.map_err(|e| not_sent(&e))?
        };
        let hash = *pending.tx_hash();
        tracing::info!(transaction = %hash, payer = %payment.payer(), "settlement sent");
        match pending.with_timeout(Some(self.receipt_timeout)).get_receipt().await {
            Ok(receipt) if receipt.status() => Ok(hash),
            Ok(_) => Err(SettleError::Reverted(hash)),
            Err(e) => Err(SettleError::Unconfirmed { transaction: Some(hash), message: e.to_string() }),
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
