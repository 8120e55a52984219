//! The MCP tools' arguments: their JSON schemas (with these doc comments as descriptions) are
//! what a model reads before calling a tool.

use std::collections::BTreeMap;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::Deserialize;
use vendbox_core::Usdc;

use super::tools::Failure;

/// An amount of USDC, as a decimal string (`"0.25"`) or a number.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub(crate) enum Amount {
    /// `"0.25"`.
    Text(String),
    /// `0.25`.
    Number(f64),
}

impl Amount {
    pub(crate) fn usdc(&self, field: &str) -> Result<Usdc, Failure> {
        let text = match self {
            Amount::Text(t) => t.trim().to_owned(),
            Amount::Number(n) => format!("{n}"),
        };
        Usdc::from_str(&text).map_err(|_| {
            Failure(format!(
                "`{field}` must be an amount of USDC such as \"0.25\" (at most 6 decimals), not {text:?}"
            ))
        })
    }
}

/// Filters for `list_offers`.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct ListOffers {
    /// Only offers of this kind: `sandbox` (a box to run commands in), `machine` (a box with
    /// SSH, sold by time), `lock` (a TTL lock), `call` (a paid API call). All when absent.
    pub kind: Option<String>,
}

/// A purchase to price.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct QuoteArgs {
    /// The offer's id, from `list_offers`.
    pub offer_id: String,
    /// Minutes, for offers sold by time within bounds (see the offer's `duration`).
    pub minutes: Option<u32>,
    /// Commands, for offers with a chosen budget (see the offer's `actions`).
    pub actions: Option<u32>,
    /// Image (root file system); the offer's `default_image` when absent.
    pub image: Option<String>,
    /// Region; the offer's default when absent.
    pub region: Option<String>,
}

/// A box or machine to buy.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct BuyBox {
    /// The offer's id, from `list_offers` (a `sandbox` or `machine` offer).
    pub offer_id: String,
    /// The most you accept to pay, in USDC (`"0.50"`). Nothing is bought when the price is
    /// higher; `quote` tells the price first.
    pub max_price_usdc: Amount,
    /// Minutes, for offers sold by time within bounds.
    pub minutes: Option<u32>,
    /// Commands, for offers with a chosen budget.
    pub actions: Option<u32>,
    /// Image (root file system); the offer's `default_image` when absent.
    pub image: Option<String>,
    /// Region; the offer's default when absent.
    pub region: Option<String>,
    /// An OpenSSH public key (`ssh-ed25519 AAAA…`) that opens the box over SSH; give one to
    /// use `ssh_details`.
    pub ssh_public_key: Option<String>,
}

/// A box, and the token that opens it.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct BoxRef {
    /// The box's id (`box_id` from `buy_box`).
    pub box_id: String,
    /// The box's token from `buy_box`; remembered for your account when left out.
    pub token: Option<String>,
}

/// A command to run.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct Exec {
    /// The box's id.
    pub box_id: String,
    /// A shell command line, run with `/bin/sh -c` as root in `/root` (pipes, `&&` and
    /// redirections work), e.g. `python3 -c 'print(6*7)'`.
    pub command: String,
    /// Time limit in seconds, 1 to 1800 (60 when absent); the command is killed after it.
    pub timeout_seconds: Option<u64>,
    /// Working directory (`/root` when absent).
    pub cwd: Option<String>,
    /// Extra environment variables.
    pub env: Option<BTreeMap<String, String>>,
    /// The box's token; remembered for your account when left out.
    pub token: Option<String>,
}

/// A file to read.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct ReadFile {
    /// The box's id.
    pub box_id: String,
    /// The file: absolute, or relative to `/root`.
    pub path: String,
    /// The box's token; remembered for your account when left out.
    pub token: Option<String>,
}

/// A file to write.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct WriteFile {
    /// The box's id.
    pub box_id: String,
    /// The file: absolute, or relative to `/root`. Missing parent directories are made; an
    /// existing file is replaced.
    pub path: String,
    /// The content: text, or base64 when `encoding` is `base64`.
    pub content: String,
    /// `utf8` (the default) or `base64` (for binary content).
    pub encoding: Option<String>,
    /// Permission bits in octal (`"755"` for a script); `"644"` when absent.
    pub mode: Option<String>,
    /// The box's token; remembered for your account when left out.
    pub token: Option<String>,
}

/// A directory to list.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct ListFiles {
    /// The box's id.
    pub box_id: String,
    /// The directory: absolute, or relative to `/root` (`/root` when absent).
    pub path: Option<String>,
    /// Levels to descend, 1 to 4 (1 when absent).
    pub depth: Option<u32>,
    /// The box's token; remembered for your account when left out.
    pub token: Option<String>,
}

/// More time for a box.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct ExtendBox {
    /// The box's id.
    pub box_id: String,
    /// Minutes to add (offers sold by time only).
    pub minutes: u32,
    /// The most you accept to pay, in USDC.
    pub max_price_usdc: Amount,
    /// The box's token; remembered for your account when left out.
    pub token: Option<String>,
}

/// A lock to take.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct AcquireLock {
    /// The key: 3 to 256 characters (letters, digits, `:`, `/`, `-`, `_`, `.`), e.g.
    /// `deploy:prod`.
    pub key: String,
    /// The most you accept to pay for the grant, in USDC.
    pub max_price_usdc: Amount,
    /// Seconds before the lock lapses unless renewed, 5 to 86400 (900 when absent).
    pub ttl_seconds: Option<u32>,
    /// Who holds it (your agent's name), shown to others who find it held.
    pub owner: Option<String>,
    /// Wait up to this many seconds (1 to 60) for a held key instead of answering at once.
    pub wait_seconds: Option<u32>,
}

/// A lock to renew.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct RenewLock {
    /// The key.
    pub key: String,
    /// The most you accept to pay for the renewal, in USDC.
    pub max_price_usdc: Amount,
    /// New TTL from now, 5 to 86400 seconds; the last TTL when absent.
    pub ttl_seconds: Option<u32>,
    /// The release token from `acquire_lock`; remembered for your account when left out.
    pub release_token: Option<String>,
}

/// A lock to release.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct ReleaseLock {
    /// The key.
    pub key: String,
    /// The release token from `acquire_lock`; remembered for your account when left out.
    pub release_token: Option<String>,
}

/// Credits to buy.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct TopUp {
    /// How much credit to buy, in USDC (`"1.00"`), within the limits `balance` shows.
    pub amount_usdc: Amount,
}
