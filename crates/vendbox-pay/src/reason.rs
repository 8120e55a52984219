//! Why a payment is refused, with the reason codes of the x402 specification so that every
//! client can tell what went wrong (MPP's problem types are derived from them, `mpp::problem`).

use std::fmt;

/// A reason a payment proof is refused. The codes are the x402 specification's where it has
/// one, and vendbox's own (`payment_replayed`, `payment_header_*`) where it has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The payer's balance is below the amount.
    InsufficientFunds,
    /// `validAfter` is in the future.
    ValidAfter,
    /// `validBefore` has passed, or passes before the payment could settle.
    ValidBefore,
    /// The authorized value is not exactly the price.
    Value,
    /// The signature is malformed or was not made by `from` over these terms.
    Signature,
    /// `to` is not the operator's payee.
    RecipientMismatch,
    /// The authorization's nonce was already used or cancelled on chain.
    NonceUsed,
    /// The network is not the one offered.
    Network,
    /// The payload is not a well-formed `exact` payload.
    Payload,
    /// A v2 payload's `accepted` is not what was offered.
    Requirements,
    /// The scheme is not `exact`.
    Scheme,
    /// The protocol version is neither 1 nor 2.
    Version,
    /// The transfer would revert (simulation failed).
    TransactionState,
    /// vendbox already took this authorization.
    Replayed,
    /// The payment header is not base64.
    HeaderEncoding,
    /// The payment header is not the expected JSON.
    HeaderJson,
    /// The payment header is larger than any honest payment.
    HeaderTooLarge,
    /// The account's available credit (balance less holds) is below the price.
    CreditsShort,
    /// The API key's scope does not cover this purchase.
    KeyScope,
    /// The purchase would take the API key past its daily cap.
    KeyDailyCap,
    /// The purchase would take the API key past its total cap.
    KeyTotalCap,
    /// An MPP credential echoes a challenge vendbox did not issue for this request (its id is
    /// not bound to its fields, or they name another realm, price, payee or route).
    ChallengeInvalid,
    /// An MPP credential echoes a challenge that has expired.
    ChallengeExpired,
    /// An MPP credential is not base64url JSON of the scheme's shape.
    CredentialMalformed,
    /// The request's body is not the one its MPP challenge was issued for (`digest`).
    BodyDigest,
    /// An MPP credential's authorization was not signed for the challenge it echoes (its
    /// EIP-3009 nonce is not the challenge's hash).
    ChallengeNonce,
    /// An MPP credential pays with a method or intent vendbox does not take (it takes the `evm`
    /// method's `charge` intent): answered with 400, as the draft says, not with a 402 offering
    /// terms vendbox could not accept.
    MethodUnsupported,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 27] = [
        Reason::InsufficientFunds,
        Reason::ValidAfter,
        Reason::ValidBefore,
        Reason::Value,
        Reason::Signature,
        Reason::RecipientMismatch,
        Reason::NonceUsed,
        Reason::Network,
        Reason::Payload,
        Reason::Requirements,
        Reason::Scheme,
        Reason::Version,
        Reason::TransactionState,
        Reason::Replayed,
        Reason::HeaderEncoding,
        Reason::HeaderJson,
        Reason::HeaderTooLarge,
        Reason::CreditsShort,
        Reason::KeyScope,
        Reason::KeyDailyCap,
        Reason::KeyTotalCap,
        Reason::ChallengeInvalid,
        Reason::ChallengeExpired,
        Reason::CredentialMalformed,
        Reason::BodyDigest,
        Reason::ChallengeNonce,
        Reason::MethodUnsupported,
    ];

    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            Reason::InsufficientFunds => "insufficient_funds",
            Reason::ValidAfter => "invalid_exact_evm_payload_authorization_valid_after",
            Reason::ValidBefore => "invalid_exact_evm_payload_authorization_valid_before",
            Reason::Value => "invalid_exact_evm_payload_authorization_value_mismatch",
            Reason::Signature => "invalid_exact_evm_payload_signature",
            Reason::RecipientMismatch => "invalid_exact_evm_payload_recipient_mismatch",
            Reason::NonceUsed => "invalid_exact_evm_nonce_already_used",
            Reason::Network => "invalid_network",
            Reason::Payload => "invalid_payload",
            Reason::Requirements => "invalid_payment_requirements",
            Reason::Scheme => "unsupported_scheme",
            Reason::Version => "invalid_x402_version",
            Reason::TransactionState => "invalid_transaction_state",
            Reason::Replayed => "payment_replayed",
            Reason::HeaderEncoding => "payment_header_not_base64",
            Reason::HeaderJson => "payment_header_malformed",
            Reason::HeaderTooLarge => "payment_header_too_large",
            Reason::CreditsShort => "insufficient_credits",
            Reason::KeyScope => "key_scope",
            Reason::KeyDailyCap => "key_daily_cap",
            Reason::KeyTotalCap => "key_total_cap",
            Reason::ChallengeInvalid => "invalid_challenge",
            Reason::ChallengeExpired => "challenge_expired",
            Reason::CredentialMalformed => "malformed_credential",
            Reason::BodyDigest => "body_digest_mismatch",
            Reason::ChallengeNonce => "challenge_nonce_mismatch",
            Reason::MethodUnsupported => "method_unsupported",
        }
    }

    /// The reason with this code.
    pub fn from_code(code: &str) -> Option<Reason> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }

    /// The reason for a code as any x402 implementation spells it (the specification's, the
    /// official Python and JavaScript facilitators'), for answers of a remote facilitator.
    pub fn from_any_code(code: &str) -> Option<Reason> {
        Self::from_code(code).or(match code {
            "invalid_exact_evm_insufficient_balance" => Some(Reason::InsufficientFunds),
            "invalid_exact_evm_signature" | "invalid_exact_evm_failed_to_verify_signature" => {
                Some(Reason::Signature)
            }
            "invalid_exact_evm_payload_authorization_value" | "invalid_exact_evm_authorization_value" => {
                Some(Reason::Value)
            }
            "invalid_exact_evm_recipient_mismatch" => Some(Reason::RecipientMismatch),
            "network_mismatch" | "invalid_exact_evm_network_mismatch" => Some(Reason::Network),
            "invalid_scheme" | "invalid_exact_evm_scheme" => Some(Reason::Scheme),
            "invalid_exact_evm_transaction_simulation_failed" | "transaction_failed" => {
                Some(Reason::TransactionState)
            }
            _ => None,
        })
    }

    /// True when the header itself could not be read: answered with 400, not 402.
    pub fn is_malformed_request(self) -> bool {
        matches!(
            self,
            Reason::HeaderEncoding | Reason::HeaderJson | Reason::HeaderTooLarge | Reason::MethodUnsupported
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A refused payment: the reason and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Rejection {
    /// Why, as a stable code.
    pub reason: Reason,
    /// What is wrong and what to do.
    pub message: String,
}

impl Rejection {
    /// A rejection for `reason`.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self { reason, message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.code()), "{} twice", r.code());
            assert_eq!(Reason::from_code(r.code()), Some(r));
        }
        assert_eq!(
            Reason::from_any_code("invalid_exact_evm_insufficient_balance"),
            Some(Reason::InsufficientFunds)
        );
        assert_eq!(Reason::from_any_code("invalid_exact_evm_signature"), Some(Reason::Signature));
        assert_eq!(Reason::from_any_code("no_such_code"), None);
    }
}
