//! The token on its chain, over JSON-RPC: balances, whether an authorization was used, where it
//! was settled, and a dry run of the transfer (`eth_call`) that refuses an empty wallet before
//! any work is done.

use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::{Filter, TransactionRequest};
use alloy::sol;
use alloy::sol_types::{SolCall, SolEvent};

use crate::eip3009::Authorization;
use crate::exact::CheckedPayment;
use crate::keys::EvmAddress;
use crate::reason::{Reason, Rejection};

sol! {
    /// The parts of an EIP-3009 token vendbox uses.
    #[allow(clippy::too_many_arguments)]
    #[sol(rpc)]
    interface Eip3009Token {
        function name() external view returns (string);
        function version() external view returns (string);
        function decimals() external view returns (uint8);
        function balanceOf(address account) external view returns (uint256);
        function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);
        function transferWithAuthorization(address from, address to, uint256 value, uint256 validAfter, uint256 validBefore, bytes32 nonce, uint8 v, bytes32 r, bytes32 s) external;
        function mint(address to, uint256 amount) external;
        function cancelAuthorization(address authorizer, bytes32 nonce, uint8 v, bytes32 r, bytes32 s) external;
        event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
        event AuthorizationCanceled(address indexed authorizer, bytes32 indexed nonce);
    }
}

/// How far back `find_settlement` looks for the transfer of a used authorization.
const LOG_LOOKBACK_BLOCKS: u64 = 50_000;

/// The chain could not be asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the chain's RPC failed: {0}")]
pub struct ChainError(pub String);

impl ChainError {
    fn from_rpc(e: impl std::fmt::Display) -> Self {
        Self(e.to_string())
    }
}

/// What became of a reserved authorization, as the chain tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Never used: nothing was charged (and vendbox never sends it afterwards).
    Unused,
    /// Transferred by this transaction: the payer was charged.
    Settled {
        /// The transaction's hash.
        transaction: String,
    },
    /// Cancelled by the payer in this transaction: nothing was charged.
    Cancelled {
        /// The transaction's hash.
        transaction: String,
    },
    /// Used, by a transaction older than the blocks searched: counted as charged.
    UsedElsewhere,
}

impl From<Recovery> for crate::method::Recovered {
    /// What a payment method reports for an authorization the chain says this of.
    fn from(found: Recovery) -> Self {
        use crate::method::Recovered;
        match found {
            Recovery::Settled { transaction } => Recovered::Settled { reference: transaction },
            Recovery::Cancelled { transaction } => Recovered::Voided {
                reason: format!(
                    "the payer cancelled the authorization on chain ({transaction}) before vendbox settled it; nothing was charged"
                ),
            },
            Recovery::UsedElsewhere => {
                Recovered::Settled { reference: "on chain (transaction not found in recent blocks)".into() }
            }
            Recovery::Unused => Recovered::Voided {
                reason:
                    "interrupted before settlement; the authorization was never used, so nothing was charged"
                        .into(),
            },
        }
    }
}

/// One EIP-3009 token on one chain.
#[derive(Debug, Clone)]
pub struct Chain {
    provider: DynProvider,
    asset: Address,
}

impl Chain {
    /// A client for the token at `asset`, through the JSON-RPC endpoint at `rpc_url`.
    pub fn connect(rpc_url: &str, asset: EvmAddress) -> Result<Self, ChainError> {
        let url = rpc_url.parse().map_err(|e| ChainError(format!("RPC URL {rpc_url:?}: {e}")))?;
        let provider = ProviderBuilder::new().connect_http(url).erased();
        Ok(Self { provider, asset: asset.get() })
    }

    /// The same token through another provider (one that signs, for the built-in facilitator).
    pub(crate) fn with_provider(provider: DynProvider, asset: Address) -> Self {
        Self { provider, asset }
    }

    /// The provider.
    pub(crate) fn provider(&self) -> &DynProvider {
        &self.provider
    }

    /// The token contract.
    pub fn asset(&self) -> EvmAddress {
        self.asset.into()
    }

    /// The chain id the node reports.
    pub async fn chain_id(&self) -> Result<u64, ChainError> {
        self.provider.get_chain_id().await.map_err(ChainError::from_rpc)
    }

    /// The token balance of `who`, in atomic units.
    pub async fn balance_of(&self, who: EvmAddress) -> Result<u64, ChainError> {
        let balance: U256 = Eip3009Token::new(self.asset, &self.provider)
            .balanceOf(who.get())
            .call()
            .await
            .map_err(ChainError::from_rpc)?;
        u64::try_from(balance)
            .map_err(|_| ChainError(format!("the balance of {who} ({balance}) is too large")))
    }

    /// Whether `from`'s authorization with `nonce` (`0x` and 64 hex digits, as payments carry it)
    /// was used or cancelled on chain.
    pub async fn authorization_used(&self, from: EvmAddress, nonce: &str) -> Result<bool, ChainError> {
        self.authorization_state(from.get(), parse_nonce(nonce)?).await
    }

    /// The transaction (its hash) that used `from`'s authorization with `nonce` (`0x` and 64 hex
    /// digits), if it is on chain.
    pub async fn settlement_of(&self, from: EvmAddress, nonce: &str) -> Result<Option<String>, ChainError> {
        let found = self.find_settlement(from.get(), parse_nonce(nonce)?).await?;
        Ok(found.map(|tx| tx.to_string()))
    }

    /// Whether `from`'s authorization with `nonce` was used or cancelled on chain.
    pub(crate) async fn authorization_state(&self, from: Address, nonce: B256) -> Result<bool, ChainError> {
        Eip3009Token::new(self.asset, &self.provider)
            .authorizationState(from, nonce)
            .call()
            .await
            .map_err(ChainError::from_rpc)
    }

    /// The transaction that used `from`'s authorization with `nonce`, if it is on chain.
    pub(crate) async fn find_settlement(
        &self,
        from: Address,
        nonce: B256,
    ) -> Result<Option<B256>, ChainError> {
        self.find_log(Eip3009Token::AuthorizationUsed::SIGNATURE_HASH, from, nonce).await
    }

    /// The transaction in which `from` cancelled its authorization with `nonce`, if there is one
    /// (`authorizationState` is true for a cancelled authorization as for a used one, though no
    /// money moved).
    pub(crate) async fn find_cancellation(
        &self,
        from: Address,
        nonce: B256,
    ) -> Result<Option<B256>, ChainError> {
        self.find_log(Eip3009Token::AuthorizationCanceled::SIGNATURE_HASH, from, nonce).await
    }

    async fn find_log(&self, event: B256, from: Address, nonce: B256) -> Result<Option<B256>, ChainError> {
        let latest = self.provider.get_block_number().await.map_err(ChainError::from_rpc)?;
        let filter = Filter::new()
            .address(self.asset)
            .event_signature(event)
            .topic1(from.into_word())
            .topic2(nonce)
            .from_block(latest.saturating_sub(LOG_LOOKBACK_BLOCKS))
            .to_block(latest);
        let logs = self.provider.get_logs(&filter).await.map_err(ChainError::from_rpc)?;
        Ok(logs.first().and_then(|log| log.transaction_hash))
    }

    /// What became of the authorization `nonce` of `payer` (a payment's replay key, as text),
    /// which vendbox reserved and may not have settled: after a crash, the chain decides.
    pub async fn recover(&self, payer: &str, nonce: &str) -> Result<Recovery, ChainError> {
        let payer: Address = payer.parse().map_err(|e| ChainError(format!("payer `{payer}`: {e}")))?;
        let nonce: B256 = nonce.parse().map_err(|e| ChainError(format!("nonce `{nonce}`: {e}")))?;
        if !self.authorization_state(payer, nonce).await? {
            return Ok(Recovery::Unused);
        }
        // Used or cancelled: only a transfer charged the payer.
        if let Some(tx) = self.find_settlement(payer, nonce).await? {
            return Ok(Recovery::Settled { transaction: tx.to_string() });
        }
        if let Some(tx) = self.find_cancellation(payer, nonce).await? {
            return Ok(Recovery::Cancelled { transaction: tx.to_string() });
        }
        Ok(Recovery::UsedElsewhere)
    }

    /// Runs the transfer with `eth_call` as `sender` would send it: refuses, with the payer's
    /// reason, what would revert on chain.
    pub(crate) async fn simulate(
        &self,
        payment: &CheckedPayment,
        sender: Address,
    ) -> Result<(), VerifyError> {
        let request = transfer_request(self.asset, payment).from(sender);
        match self.provider.call(request).await {
            Ok(_) => Ok(()),
            Err(e) => Err(classify_revert(&e.to_string())),
        }
    }

    /// Waits up to `timeout` for the node to answer.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<u64, ChainError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.chain_id().await {
                Ok(id) => return Ok(id),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// A nonce as payments carry it: `0x` and 64 hex digits.
fn parse_nonce(nonce: &str) -> Result<B256, ChainError> {
    nonce.parse().map_err(|e| ChainError(format!("nonce `{nonce}`: {e}")))
}

/// Why a payment could not be verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The payment is bad: the payer's fault, answered with 402.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// vendbox could not find out (chain or facilitator down): nobody's fault, answered with 503.
    #[error("the payment could not be verified now: {0}")]
    Unavailable(String),
}

impl From<ChainError> for VerifyError {
    fn from(e: ChainError) -> Self {
        VerifyError::Unavailable(e.0)
    }
}

/// The `transferWithAuthorization` transaction for `payment`.
pub(crate) fn transfer_request(asset: Address, payment: &CheckedPayment) -> TransactionRequest {
    let Authorization { from, to, value, valid_after, valid_before, nonce } = payment.authorization;
    let signature = payment.signature;
    let call = Eip3009Token::transferWithAuthorizationCall {
        from,
        to,
        value,
        validAfter: valid_after,
        validBefore: valid_before,
        nonce,
        v: 27 + u8::from(signature.v()),
        r: signature.r().into(),
        s: signature.s().into(),
    };
    TransactionRequest::default().to(asset).input(call.abi_encode().into())
}

/// Maps a revert of `transferWithAuthorization` to the payer's reason.
pub fn classify_revert(message: &str) -> VerifyError {
    let lower = message.to_ascii_lowercase();
    let (reason, what) = if lower.contains("exceeds balance") || lower.contains("insufficient") {
        (Reason::InsufficientFunds, "the payer's balance is below the price")
    } else if lower.contains("used or canceled") || lower.contains("used or cancelled") {
        (Reason::NonceUsed, "this authorization's nonce was already used on chain; sign a new one")
    } else if lower.contains("not yet valid") {
        (Reason::ValidAfter, "the authorization is not yet valid on chain")
    } else if lower.contains("expired") {
        (Reason::ValidBefore, "the authorization has expired on chain")
    } else if lower.contains("invalid signature") {
        (Reason::Signature, "the token refuses the signature")
    } else if lower.contains("revert") {
        (Reason::TransactionState, "the transfer would revert on chain")
    } else {
        return VerifyError::Unavailable(message.to_owned());
    };
    VerifyError::Rejected(Rejection::new(reason, format!("{what} ({})", first_line(message))))
}

fn first_line(text: &str) -> &str {
    let line = text.lines().next().unwrap_or(text);
    line.get(..200).unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverts_name_the_payers_fault() {
        let reason = |m: &str| match classify_revert(m) {
            VerifyError::Rejected(r) => Some(r.reason),
            VerifyError::Unavailable(_) => None,
        };
        assert_eq!(
            reason(
                "server returned an error response: error code 3: execution reverted: ERC20: transfer amount exceeds balance"
            ),
            Some(Reason::InsufficientFunds)
        );
        assert_eq!(
            reason("execution reverted: FiatTokenV2: authorization is used or canceled"),
            Some(Reason::NonceUsed)
        );
        assert_eq!(
            reason("execution reverted: FiatTokenV2: authorization is expired"),
            Some(Reason::ValidBefore)
        );
        assert_eq!(reason("execution reverted"), Some(Reason::TransactionState));
        assert_eq!(reason("error sending request: connection refused"), None);
    }
}
