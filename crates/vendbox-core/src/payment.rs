//! `Payment`: one attempt to pay a quote, its replay key and its state machine.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::CoreError;
use crate::ids::{PaymentId, QuoteId};
use crate::money::Usdc;

/// How the buyer paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PaymentMethod {
    /// x402 `exact` scheme, protocol version 1 (`X-PAYMENT`).
    X402ExactV1,
    /// x402 `exact` scheme, protocol version 2 (`PAYMENT-SIGNATURE`).
    X402ExactV2,
    /// MPP `Payment` scheme, EVM `charge` intent.
    MppEvmCharge,
    /// Prepaid credits of an account.
    Credits,
}

impl PaymentMethod {
    /// Every method.
    pub const ALL: [PaymentMethod; 4] = [
        PaymentMethod::X402ExactV1,
        PaymentMethod::X402ExactV2,
        PaymentMethod::MppEvmCharge,
        PaymentMethod::Credits,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentMethod::X402ExactV1 => "x402-exact-v1",
            PaymentMethod::X402ExactV2 => "x402-exact-v2",
            PaymentMethod::MppEvmCharge => "mpp-evm-charge",
            PaymentMethod::Credits => "credits",
        }
    }

    /// The method stored under `name`.
    pub fn from_name(name: &str) -> Option<PaymentMethod> {
        Self::ALL.into_iter().find(|m| m.as_str() == name)
    }
}

/// Where a payment is: `verified → settled | voided`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentState {
    /// The proof checked out and its replay key is reserved; no money has moved.
    Verified,
    /// The money moved; `settlement_ref` says where.
    Settled,
    /// Let go: the buyer was not charged.
    Voided,
}

impl PaymentState {
    /// Every state.
    pub const ALL: [PaymentState; 3] = [PaymentState::Verified, PaymentState::Settled, PaymentState::Voided];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentState::Verified => "verified",
            PaymentState::Settled => "settled",
            PaymentState::Voided => "voided",
        }
    }

    /// The state stored under `name`.
    pub fn from_name(name: &str) -> Option<PaymentState> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// `next` if `self → next` is a move of the machine.
    pub fn checked_move(self, next: PaymentState) -> Result<PaymentState, CoreError> {
        match (self, next) {
            (PaymentState::Verified, PaymentState::Settled | PaymentState::Voided) => Ok(next),
            _ => Err(CoreError::IllegalTransition {
                entity: "payment",
                from: self.as_str(),
                to: next.as_str(),
            }),
        }
    }
}

/// What makes a payment authorization unique: the same key can pay only once, ever.
///
/// Parts are normalised to lowercase so that `0xAbC…` and `0xabc…` are one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReplayKey {
    /// Chain (CAIP-2, `eip155:8453`) or `credits`.
    pub chain: String,
    /// Token contract address, or `usdc` for credits.
    pub asset: String,
    /// Who pays.
    pub payer: String,
    /// The authorization's nonce (EIP-3009 `nonce`), or a request id for credits.
    pub nonce: String,
}

impl ReplayKey {
    /// A normalised key.
    pub fn new(chain: &str, asset: &str, payer: &str, nonce: &str) -> Self {
        Self {
            chain: chain.trim().to_ascii_lowercase(),
            asset: asset.trim().to_ascii_lowercase(),
            payer: payer.trim().to_ascii_lowercase(),
            nonce: nonce.trim().to_ascii_lowercase(),
        }
    }
}

/// One attempt to pay a quote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// Its id.
    pub id: PaymentId,
    /// What it pays for.
    pub quote_id: Option<QuoteId>,
    /// How.
    pub method: PaymentMethod,
    /// Its replay key (payer and nonce included).
    pub replay_key: ReplayKey,
    /// How much.
    pub amount: Usdc,
    /// Where it is.
    pub state: PaymentState,
    /// Transaction hash (or ledger entry) once settled.
    pub settlement_ref: Option<String>,
    /// Why it was voided.
    pub void_reason: Option<String>,
    /// The proof as received, for the settlement worker to finish after a crash.
    pub proof: Option<String>,
    /// What it paid for, for people (the charge's description and resource).
    pub purchase: Option<String>,
    /// When it was reserved.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_verified_payments_move() {
        use PaymentState::{Settled, Verified, Voided};
        assert_eq!(Verified.checked_move(Settled), Ok(Settled));
        assert_eq!(Verified.checked_move(Voided), Ok(Voided));
        for (from, to) in [(Settled, Voided), (Voided, Settled), (Settled, Settled), (Verified, Verified)] {
            assert_eq!(from.checked_move(to).unwrap_err().code(), "illegal_transition");
        }
    }

    #[test]
    fn replay_keys_ignore_case_and_spaces() {
        assert_eq!(
            ReplayKey::new("eip155:8453", "0xABC", " 0xDeF", "0x01"),
            ReplayKey::new("EIP155:8453", "0xabc", "0xdef", "0x01 ")
        );
    }

    #[test]
    fn names_round_trip() {
        for m in PaymentMethod::ALL {
            assert_eq!(PaymentMethod::from_name(m.as_str()), Some(m));
        }
        for s in PaymentState::ALL {
            assert_eq!(PaymentState::from_name(s.as_str()), Some(s));
        }
    }
}
