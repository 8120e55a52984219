//! Capability tokens: bearer secrets made with the OS's CSPRNG, shown once, stored as a SHA-256
//! hash, and compared in constant time.

use std::fmt;

use rand::RngCore;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token lets its bearer do with a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// Everything below, and running commands in the box.
    Root,
    /// Read the lease's status.
    Read,
    /// Pay to move the lease's `expires_at`.
    Extend,
    /// End the lease now.
    Terminate,
}

impl Capability {
    /// Whether a token with this capability may do what `wanted` allows.
    pub fn allows(self, wanted: Capability) -> bool {
        self == Capability::Root || self == wanted
    }

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Root => "root",
            Capability::Read => "read",
            Capability::Extend => "extend",
            Capability::Terminate => "terminate",
        }
    }

    /// The capability stored under `name`, if any.
    pub fn from_name(name: &str) -> Option<Capability> {
        [Capability::Root, Capability::Read, Capability::Extend, Capability::Terminate]
            .into_iter()
            .find(|c| c.as_str() == name)
    }
}

/// A bearer secret in clear text. It exists only between its creation and the response that
/// hands it to the buyer; `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretToken(String);

/// Prefix of every token vendbox issues, so that leaked tokens are easy to recognise in logs
/// and secret scanners.
pub const TOKEN_PREFIX: &str = "vbx_";

impl SecretToken {
    /// A new token with 256 bits from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        Self(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
    }

    /// Wraps a token presented by a client (for hashing and comparison).
    pub fn presented(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The clear text, to hand to the buyer exactly once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The hash that is stored instead of the token.
    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.0.as_bytes()).into())
    }
}

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretToken(<redacted>)")
    }
}

/// SHA-256 of a [`SecretToken`]: what the store keeps.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// Whether `presented` is the token this hash was made from, in time independent of where
    /// the two differ.
    pub fn verify(&self, presented: &SecretToken) -> bool {
        self.0.ct_eq(&presented.hash().0).into()
    }

    /// Lowercase hex, as stored.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the stored hex form.
    pub fn from_hex(text: &str) -> Option<TokenHash> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(TokenHash(out))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({})", &self.to_hex()[..12])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_long() {
        let a = SecretToken::generate();
        let b = SecretToken::generate();
        assert_ne!(a, b);
        assert!(a.expose().starts_with(TOKEN_PREFIX));
        assert_eq!(a.expose().len(), TOKEN_PREFIX.len() + 64);
    }

    #[test]
    fn hash_verifies_only_the_same_token() {
        let token = SecretToken::generate();
        let hash = token.hash();
        assert!(hash.verify(&SecretToken::presented(token.expose())));
        assert!(!hash.verify(&SecretToken::generate()));
        assert!(!hash.verify(&SecretToken::presented("")));
        assert_eq!(TokenHash::from_hex(&hash.to_hex()), Some(hash));
        assert_eq!(TokenHash::from_hex("zz"), None);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let token = SecretToken::generate();
        assert!(!format!("{token:?}").contains(&token.expose()[4..]));
    }

    #[test]
    fn root_allows_everything_others_only_themselves() {
        assert!(Capability::Root.allows(Capability::Terminate));
        assert!(Capability::Read.allows(Capability::Read));
        assert!(!Capability::Read.allows(Capability::Terminate));
        assert!(!Capability::Extend.allows(Capability::Root));
        for c in [Capability::Root, Capability::Read, Capability::Extend, Capability::Terminate] {
            assert_eq!(Capability::from_name(c.as_str()), Some(c));
        }
    }
}
