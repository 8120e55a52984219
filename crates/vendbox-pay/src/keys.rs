//! The chain's words that cross `vendbox-pay`'s API, as vendbox's own types: an account's
//! address ([`EvmAddress`]) and a signing key ([`Wallet`]). The Ethereum library underneath stays
//! inside this crate, so that the rest of vendbox neither depends on it nor breaks when it
//! changes.

use std::fmt;
use std::str::FromStr;

use alloy::primitives::Address;
use alloy::signers::local::PrivateKeySigner;

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
    fn a_wallet_round_trips_its_key_and_never_shows_it() {
        let wallet = Wallet::random();
        let again: Wallet = wallet.secret_hex().parse().unwrap();
        assert_eq!(again.address(), wallet.address());
        let shown = format!("{wallet:?}");
        assert!(!shown.contains(&wallet.secret_hex()[2..]), "{shown}");
        assert!("0x1234".parse::<Wallet>().is_err());
    }
}
