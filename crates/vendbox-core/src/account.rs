//! `Account`: a wallet address with a credit balance kept as a ledger of signed entries.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, FieldErrorCode};

/// An EVM address, normalised to lowercase `0x` + 40 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccountAddress(String);

impl AccountAddress {
    /// Parses and normalises an address; `field` names the request field for the error.
    pub fn parse(text: &str, field: &str) -> Result<Self, CoreError> {
        let t = text.trim();
        let hex_part = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X"));
        match hex_part {
            Some(h) if h.len() == 40 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Ok(Self(format!("0x{}", h.to_ascii_lowercase())))
            }
            _ => Err(CoreError::field(
                field,
                FieldErrorCode::InvalidValue,
                format!("`{field}` must be 0x followed by 40 hex digits"),
            )),
        }
    }

    /// The normalised text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why the balance of an account changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerKind {
    /// Credits bought (positive).
    TopUp,
    /// Credits spent on a purchase (negative).
    Charge,
    /// A charge given back (positive).
    Refund,
}

impl LedgerKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerKind::TopUp => "top_up",
            LedgerKind::Charge => "charge",
            LedgerKind::Refund => "refund",
        }
    }

    /// The kind stored under `name`.
    pub fn from_name(name: &str) -> Option<LedgerKind> {
        [LedgerKind::TopUp, LedgerKind::Charge, LedgerKind::Refund].into_iter().find(|k| k.as_str() == name)
    }

    /// Whether entries of this kind add to the balance.
    pub fn is_credit(self) -> bool {
        matches!(self, LedgerKind::TopUp | LedgerKind::Refund)
    }
}

/// One change to an account's balance. The balance is the sum of its entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Position in the ledger.
    pub id: i64,
    /// Whose balance.
    pub account: AccountAddress,
    /// Why.
    pub kind: LedgerKind,
    /// Signed change in atomic USDC units (negative for charges).
    pub delta_atomic: i64,
    /// What caused it (a payment id, a lease id); unique per account and kind, so a retried
    /// operation cannot be booked twice.
    pub reference: String,
    /// When it was booked.
    pub created_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalised_and_checked() {
        let a = AccountAddress::parse("0xAbCdEf0123456789abcdef0123456789ABCDEF01", "payer").unwrap();
        assert_eq!(a.as_str(), "0xabcdef0123456789abcdef0123456789abcdef01");
        for bad in [
            "",
            "0x12",
            "abcdef0123456789abcdef0123456789abcdef01",
            "0xZZcdef0123456789abcdef0123456789abcdef01",
        ] {
            assert!(AccountAddress::parse(bad, "payer").is_err(), "{bad}");
        }
    }
}
