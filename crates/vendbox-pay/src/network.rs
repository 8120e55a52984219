//! EVM networks as x402 names them: CAIP-2 ids (`eip155:8453`) for protocol version 2, and the
//! older names (`base`, `base-sepolia`) that version 1 clients know.

use std::fmt;

/// The v1 names and their chain ids. Version 1 clients pay only on networks they can name.
const V1_NAMES: &[(&str, u64)] = &[
    ("base", 8453),
    ("base-sepolia", 84532),
    ("avalanche", 43114),
    ("avalanche-fuji", 43113),
    ("polygon", 137),
    ("polygon-amoy", 80002),
    ("sei", 1329),
    ("sei-testnet", 1328),
    ("iotex", 4689),
    ("peaq", 3338),
];

/// An EVM chain, by chain id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Network {
    /// The EIP-155 chain id.
    pub chain_id: u64,
}

impl Network {
    /// The network with this chain id.
    pub const fn new(chain_id: u64) -> Self {
        Self { chain_id }
    }

    /// CAIP-2 id, as protocol version 2 writes it: `eip155:8453`.
    pub fn caip2(self) -> String {
        format!("eip155:{}", self.chain_id)
    }

    /// The protocol version 1 name, when the chain has one.
    pub fn v1_name(self) -> Option<&'static str> {
        V1_NAMES.iter().find(|(_, id)| *id == self.chain_id).map(|(name, _)| *name)
    }

    /// How version 1 names this network: its name, or the CAIP-2 id when it has none.
    pub fn v1_label(self) -> String {
        self.v1_name().map_or_else(|| self.caip2(), str::to_owned)
    }

    /// Reads a CAIP-2 id (`eip155:84532`) or a v1 name (`base-sepolia`).
    pub fn parse(text: &str) -> Option<Network> {
        let text = text.trim();
        if let Some(id) = text.strip_prefix("eip155:") {
            return id.parse().ok().filter(|id| *id > 0).map(Network::new);
        }
        V1_NAMES.iter().find(|(name, _)| name.eq_ignore_ascii_case(text)).map(|(_, id)| Network::new(*id))
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.caip2())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_name_the_same_chain() {
        assert_eq!(Network::parse("base-sepolia"), Some(Network::new(84532)));
        assert_eq!(Network::parse("eip155:84532"), Some(Network::new(84532)));
        assert_eq!(Network::new(8453).caip2(), "eip155:8453");
        assert_eq!(Network::new(8453).v1_name(), Some("base"));
        assert_eq!(Network::new(31337).v1_name(), None);
        assert_eq!(Network::new(31337).v1_label(), "eip155:31337");
    }

    #[test]
    fn nonsense_is_no_network() {
        for bad in ["", "eip155:", "eip155:0", "eip155:x", "solana", "base-mainnet"] {
            assert_eq!(Network::parse(bad), None, "{bad}");
        }
    }
}
