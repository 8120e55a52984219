//! `Principal`: who a request speaks for, once the HTTP layer has authenticated it (a wallet's
//! signature, or an API key the wallet made), and what an API key is allowed to buy.

use rand::RngCore;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};

use crate::account::AccountAddress;
use crate::money::Usdc;
use crate::token::SecretToken;

/// Prefix of every API key, which is how `Authorization: Bearer` tells a key from a lease's or
/// lock's token (`vbx_`).
pub const API_KEY_PREFIX: &str = "vbk_";

/// A new API key: `vbk_` and 256 bits from the operating system's CSPRNG in hex. Only its
/// SHA-256 is stored.
pub fn generate_api_key() -> SecretToken {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    SecretToken::presented(format!("{API_KEY_PREFIX}{}", hex::encode(bytes)))
}

/// The account an authenticated request speaks for. Only the HTTP layer's authentication makes
/// one (never a header a client writes as such): a wallet signature gives `key: None`, which is
/// the wallet itself and unlimited; an API key gives the key's grant, whose scope and caps the
/// credits method enforces at purchase time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The wallet whose account this is.
    pub account: AccountAddress,
    /// The API key the request presented, with what it may spend; `None` for a signature.
    pub key: Option<KeyGrant>,
}

impl Principal {
    /// The wallet itself, proven by its signature: no limits beyond its balance.
    pub fn wallet(account: AccountAddress) -> Principal {
        Principal { account, key: None }
    }

    /// The id of the API key the request came with, if any.
    pub fn key_id(&self) -> Option<&str> {
        self.key.as_ref().map(|k| k.id.as_str())
    }
}

/// What one API key may do: its scope and its spending caps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyGrant {
    /// The key's id (as listed by `GET /compute/api-keys`), never the key itself.
    pub id: String,
    /// What the key may buy.
    pub scope: KeyScope,
    /// Most the key may spend per UTC day, if capped.
    pub daily_cap: Option<Usdc>,
    /// Most the key may spend over its life, if capped.
    pub total_cap: Option<Usdc>,
}

/// What an API key may buy. Serialised as `{"kind": "all"}`, `{"kind": "locks_only"}` or
/// `{"kind": "boxes_up_to", "max_price": "0.50"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum KeyScope {
    /// Anything the wallet could buy.
    #[default]
    All,
    /// Locks only (acquire, renew); no boxes or machines.
    LocksOnly,
    /// Locks, and boxes or machines whose single purchase costs at most `max_price`.
    BoxesUpTo {
        /// The highest price of one box purchase the key may pay.
        max_price: Usdc,
    },
}

impl KeyScope {
    /// The stored form (JSON), for a store column.
    pub fn to_stored(self) -> String {
        serde_json::to_string(&self).unwrap_or_else(|_| "{\"kind\":\"all\"}".into())
    }

    /// The scope stored as `text`; `None` if it is not one.
    pub fn from_stored(text: &str) -> Option<KeyScope> {
        serde_json::from_str(text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip_through_their_stored_form() {
        for scope in [KeyScope::All, KeyScope::LocksOnly, KeyScope::BoxesUpTo { max_price: Usdc(500_000) }] {
            assert_eq!(KeyScope::from_stored(&scope.to_stored()), Some(scope));
        }
        assert_eq!(
            serde_json::to_value(KeyScope::BoxesUpTo { max_price: Usdc(500_000) }).unwrap(),
            serde_json::json!({"kind": "boxes_up_to", "max_price": "0.50"})
        );
        assert_eq!(KeyScope::from_stored("{\"kind\":\"everything\"}"), None);
    }

    #[test]
    fn api_keys_are_prefixed_and_unguessable() {
        let (a, b) = (generate_api_key(), generate_api_key());
        assert!(a.expose().starts_with(API_KEY_PREFIX) && a.expose().len() == 68, "{}", a.expose().len());
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn a_wallet_principal_has_no_key() {
        let account = AccountAddress::parse("0x00000000000000000000000000000000000000aa", "a").unwrap();
        let p = Principal::wallet(account.clone());
        assert_eq!(p.account, account);
        assert_eq!(p.key_id(), None);
    }
}
