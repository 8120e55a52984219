//! The chain's words that cross `vendbox-pay`'s API, as vendbox's own types: an account's
//! address ([`EvmAddress`]) and a signing key ([`Wallet`]). The Ethereum library underneath stays
//! inside this crate, so that the rest of vendbox neither depends on it nor breaks when it
//! changes.

use std::fmt;
use std::str::FromStr;

use alloy::primitives::{Address, eip191_hash_message};
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;

use crate::eip3009::{parse_signature, recover_address};

/// An account or contract address on an EVM chain. Parsed from `0x` and 40 hex digits in any
/// case; shown checksummed (EIP-55).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EvmAddress(Address);

impl EvmAddress {
    /// The zero address.
    pub const ZERO: EvmAddress = EvmAddress(Address::ZERO);

    /// The address as the Ethereum library has it.
    pub(crate) fn get(self) -> Address {
        self.0
    }

    /// The address whose 20 bytes are all `byte` (for tests and examples).
    pub fn repeat_byte(byte: u8) -> EvmAddress {
        EvmAddress(Address::repeat_byte(byte))
    }

    /// In lowercase hex, as replay keys and the store keep addresses.
    pub fn to_lowercase(self) -> String {
        self.0.to_string().to_ascii_lowercase()
    }
}

impl From<Address> for EvmAddress {
    fn from(address: Address) -> Self {
        EvmAddress(address)
    }
}

impl FromStr for EvmAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let hex = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")).unwrap_or("");
        if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{text:?} is not a 0x address (0x and 40 hex digits)"));
        }
        // Any case is taken: a mixed-case address whose checksum is off is still the address.
        hex.to_ascii_lowercase()
            .parse::<Address>()
            .map(EvmAddress)
            .map_err(|e| format!("{text:?} is not a 0x address: {e}"))
    }
}

impl fmt::Display for EvmAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_checksum(None))
    }
}

impl fmt::Debug for EvmAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for EvmAddress {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for EvmAddress {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A secp256k1 signing key: the operator's settlement key, or a payer's in tests and
/// `vendbox fetch`. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct Wallet(PrivateKeySigner);

impl Wallet {
    /// A new key from the operating system's random source.
    pub fn random() -> Wallet {
        Wallet(PrivateKeySigner::random())
    }

    /// Its address.
    pub fn address(&self) -> EvmAddress {
        EvmAddress(self.0.address())
    }

    /// The private key as `0x` and 64 hex digits, to hand to a client that pays with it.
    pub fn secret_hex(&self) -> String {
        format!("0x{}", alloy::hex::encode(self.0.to_bytes()))
    }

    /// The key as the Ethereum library has it.
    pub(crate) fn signer(&self) -> &PrivateKeySigner {
        &self.0
    }
}

impl Wallet {
    /// Signs `message` as `personal_sign` does (EIP-191, version `0x45`): 65 bytes `r ‖ s ‖ v`
    /// in hex with `0x`, `v` as 27 or 28.
    pub fn sign_personal_message(&self, message: &[u8]) -> String {
        let signature =
            self.0.sign_hash_sync(&eip191_hash_message(message)).expect("a local key signs any 32-byte hash");
        format!("0x{}", alloy::hex::encode(signature.as_bytes()))
    }
}

/// Why an EIP-191 signature names no signer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadSignature(pub String);

/// The address whose key signed `message` as `personal_sign` does (EIP-191: keccak256 of
/// `"\x19Ethereum Signed Message:\n" ‖ len ‖ message`), from a 65-byte hex `r ‖ s ‖ v`
/// signature; malleable (high-s) signatures are refused, so one message has one signature per
/// key.
pub fn recover_personal_signer(message: &[u8], signature_hex: &str) -> Result<EvmAddress, BadSignature> {
    let signature = parse_signature(signature_hex).map_err(|r| BadSignature(r.message))?;
    if signature.normalize_s().is_some() {
        return Err(BadSignature("the signature's s value is in the upper half".into()));
    }
    recover_address(&signature, &eip191_hash_message(message))
        .map(EvmAddress)
        .ok_or_else(|| BadSignature("no signer can be recovered from the signature".into()))
}

impl FromStr for Wallet {
    type Err = String;

    /// A private key, `0x` and 64 hex digits (or without the `0x`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        PrivateKeySigner::from_str(text.trim())
            .map(Wallet)
            .map_err(|_| "not a private key (0x and 64 hex digits)".into())
    }
}

impl fmt::Debug for Wallet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wallet").field("address", &self.address()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_read_in_any_case_and_show_checksummed() {
        let lower: EvmAddress = "0x5fbdb2315678afecb367f032d93f642f64180aa3".parse().unwrap();
        let upper: EvmAddress = "0X5FBDB2315678AFECB367F032D93F642F64180AA3".parse().unwrap();
        assert_eq!(lower, upper);
        assert_eq!(lower.to_string(), "0x5FbDB2315678afecb367f032d93F642f64180aa3");
        assert_eq!(lower.to_lowercase(), "0x5fbdb2315678afecb367f032d93f642f64180aa3");
        for bad in [
            "",
            "0x",
            "5fbdb2315678afecb367f032d93f642f64180aa3",
            "0x5fbdb2315678afecb367f032d93f642f64180aa",
            "0xzz",
        ] {
            assert!(bad.parse::<EvmAddress>().is_err(), "{bad:?} was taken");
        }
        let json = serde_json::to_string(&lower).unwrap();
        assert_eq!(serde_json::from_str::<EvmAddress>(&json).unwrap(), lower);
    }

    #[test]
    fn personal_messages_recover_their_signer_and_nothing_else() {
        let wallet = Wallet::random();
        let signature = wallet.sign_personal_message(b"vendbox-auth-v1\nGET\n/x");
        assert_eq!(recover_personal_signer(b"vendbox-auth-v1\nGET\n/x", &signature), Ok(wallet.address()));
        let other = recover_personal_signer(b"vendbox-auth-v1\nGET\n/y", &signature).unwrap();
        assert_ne!(other, wallet.address(), "another message recovers another address");
        assert!(recover_personal_signer(b"m", "0x1234").is_err());
        assert!(recover_personal_signer(b"m", "zz").is_err());
        // The same key and message, with s flipped to the upper half: refused.
        let bytes = alloy::hex::decode(&signature[2..]).unwrap();
        let sig = alloy::primitives::Signature::try_from(bytes.as_slice()).unwrap();
        let n = alloy::primitives::U256::from_str_radix(
            "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141",
            16,
        )
        .unwrap();
        let high = alloy::primitives::Signature::new(sig.r(), n - sig.s(), !sig.v());
        let high_hex = format!("0x{}", alloy::hex::encode(high.as_bytes()));
        assert!(recover_personal_signer(b"vendbox-auth-v1\nGET\n/x", &high_hex).is_err());
    }

    #[test]
    fn a_wallet_round_trips_its_key_and_never_shows_it() {
        let wallet = Wallet::random();
        let again: Wallet = wallet.secret_hex().parse().unwrap();
        assert_eq!(again.address(), wallet.address());
        let shown = format!("{wallet:?}");
        assert!(!shown.contains(&wallet.secret_hex()[2..]), "{shown}");
        assert!("0x1234".parse::<Wallet>().is_err());
    }
}
