//! `Config`: `vendbox.toml` merged over the embedded defaults, then `VENDBOX_<SECTION>__<KEY>`
//! environment overrides, checked as a whole. A bad file fails start-up naming the file, the key
//! and what is wrong.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::{Table, Value};
use vendbox_core::{Catalog, CreditsPolicy, Image, Offer, Region};
use vendbox_pay::exact::Acceptance;
use vendbox_pay::{EvmAddress, Network};

/// The catalog vendbox sells when the operator says nothing else.
pub const DEFAULT_CATALOG: &str = include_str!("default-catalog.toml");

/// Prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "VENDBOX_";

/// Everything `vendbox serve` needs to start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTP listener and limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// Where state is kept.
    #[serde(default)]
    pub store: StoreConfig,
    /// Whether the embedded default offers are part of the catalog.
    #[serde(default)]
    pub catalog: CatalogSettings,
    /// Offers for sale (defaults merged with the file's, by id).
    #[serde(default)]
    pub offers: Vec<Offer>,
    /// Regions offers refer to.
    #[serde(default)]
    pub regions: Vec<Region>,
    /// Images offers refer to.
    #[serde(default)]
    pub images: Vec<Image>,
    /// Rules for buying from prepaid credits.
    #[serde(default)]
    pub credits: CreditsPolicy,
    /// How vendbox takes x402 payments.
    #[serde(default)]
    pub payments: PaymentsConfig,
    /// Where and how boxes run.
    #[serde(default)]
    pub boxes: BoxesConfig,
    /// The SSH gateway.
    #[serde(default)]
    pub ssh: SshConfig,
    /// Boxes' network egress and its policy.
    #[serde(default)]
    pub egress: vendbox_box::local::EgressConfig,
    /// SecretVM's agent API: VMs' minimum balance, billing period and image registry.
    #[serde(default)]
    pub secretvm: SecretVmConfig,
}

/// `[secretvm]`: SecretVM's agent API (`/api/agent/…`, `/api/vm/create`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretVmConfig {
    /// The least balance, in minor units (USDC atomic units), that may create a VM
    /// (SecretVM's `AGENT_MIN_BALANCE`).
    pub min_balance: u64,
    /// A VM is charged by periods of this many seconds, one period ahead, at its type's
    /// per-minute price prorated; it stops when its balance cannot pay the next one.
    pub billing_period_secs: u64,
    /// `host[:port]` of the OCI registry images missing from the image store are pulled from
    /// (`nginx:alpine` is `REGISTRY/library/nginx:alpine`); without one, VMs run only images
    /// already in the store.
    pub registry: Option<String>,
    /// Speak to the registry over plain HTTP or without verifying its certificate (a registry
    /// on loopback).
    pub registry_insecure: bool,
}

impl Default for SecretVmConfig {
    fn default() -> Self {
        Self { min_balance: 100, billing_period_secs: 60, registry: None, registry_insecure: false }
    }
}

/// `[ssh]`: the gateway that lets `ssh root@host` reach a lease's box.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshConfig {
    /// Serve SSH (when boxes are available).
    pub enabled: bool,
    /// Address the gateway listens on.
    pub listen: SocketAddr,
    /// The host name clients are told to `ssh` to; the listen address's IP when absent.
    pub public_host: Option<String>,
    /// Seconds a connection has to log in before it is dropped.
    pub preauth_timeout_secs: u64,
    /// Connections not yet logged in, in all.
    pub max_unauthenticated: usize,
    /// Connections not yet logged in, from one client address.
    pub max_unauthenticated_per_peer: usize,
    /// Logged-in connections to one lease.
    pub max_connections_per_lease: usize,
    /// Open sessions and forwardings of one connection.
    pub max_channels_per_connection: usize,
}

impl Default for SshConfig {
    fn default() -> Self {
        let limits = vendbox_ssh::Limits::default();
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 2222)),
            public_host: None,
            preauth_timeout_secs: limits.preauth_timeout.as_secs(),
            max_unauthenticated: limits.max_unauthenticated,
            max_unauthenticated_per_peer: limits.max_unauthenticated_per_peer,
            max_connections_per_lease: limits.max_connections_per_lease,
            max_channels_per_connection: limits.max_channels_per_connection,
        }
    }
}

impl SshConfig {
    /// The gateway's limits.
    pub fn limits(&self) -> vendbox_ssh::Limits {
        vendbox_ssh::Limits {
            preauth_timeout: std::time::Duration::from_secs(self.preauth_timeout_secs.max(1)),
            max_unauthenticated: self.max_unauthenticated.max(1),
            max_unauthenticated_per_peer: self.max_unauthenticated_per_peer.max(1),
            max_connections_per_lease: self.max_connections_per_lease.max(1),
            max_channels_per_connection: self.max_channels_per_connection.max(1),
        }
    }
}

/// Which backend runs boxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// bubblewrap sandboxes on this host (needs root and the `bubblewrap` package).
    Local,
    /// No boxes: box and session routes answer 503 `boxes_unavailable`.
    None,
}

/// `[boxes]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BoxesConfig {
    /// The backend.
    pub backend: BackendKind,
    /// Host directory for boxes' writable layers and uid claims (local backend).
    pub run_dir: PathBuf,
    /// Largest file a `PUT /v1/boxes/{id}/files` may send, in bytes.
    pub max_file_bytes: usize,
    /// The program (and its first arguments) that runs as PID 1 of each box; empty means this
    /// vendbox program itself, as `vendbox boxd`.
    pub boxd_command: Vec<String>,
    /// Most boxes at once; 0: as many as the backend can make.
    pub max_boxes: usize,
    /// Memory (in MiB) that boxes' limits may add up to; 0: the host's memory less a reserve.
    pub memory_mb: u64,
    /// How far boxes' memory limits may add up past that memory (1.0: never; idle boxes use
    /// far less than their limits, so an operator may sell more).
    pub memory_overcommit: f64,
    /// How long a box's disk is kept after its lease ends, in seconds (0: deleted at once).
    pub disk_grace_secs: u64,
    /// How many box starts of each kind (with and without egress) the local backend keeps made
    /// ahead of a purchase, once such a box was bought (0: every box starts cold).
    pub warm: usize,
}

impl BoxesConfig {
    /// The capacity boxes are sold from, given what the backend detected.
    pub fn capacity(&self, detected: vendbox_box::Usage) -> vendbox_box::Usage {
        let memory_mb = if self.memory_mb == 0 { detected.memory_mb } else { self.memory_mb };
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let memory_mb = (memory_mb as f64 * self.memory_overcommit.max(0.0)).min(u64::MAX as f64) as u64;
        vendbox_box::Usage {
            boxes: if self.max_boxes == 0 { detected.boxes } else { self.max_boxes.min(detected.boxes) },
            memory_mb,
            pids: detected.pids,
        }
    }
}

impl Default for BoxesConfig {
    fn default() -> Self {
        Self {
            backend: BackendKind::Local,
            run_dir: PathBuf::from("/run/vendbox"),
            max_file_bytes: 64 * 1024 * 1024,
            boxd_command: Vec::new(),
            max_boxes: 0,
            memory_mb: 0,
            memory_overcommit: 1.0,
            disk_grace_secs: 0,
            warm: vendbox_box::local::DEFAULT_WARM,
        }
    }
}

/// Which facilitator verifies and settles payments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FacilitatorKind {
    /// vendbox settles on chain itself with the key in `VENDBOX_SIGNER_KEY`.
    Builtin,
    /// An x402 facilitator service at `facilitator_url`.
    Remote,
}

/// `[payments]`: one token on one chain, paid to the operator's address. Secrets never live
/// here: the built-in facilitator's key comes from `VENDBOX_SIGNER_KEY` (or the file named by
/// `VENDBOX_SIGNER_KEY_FILE`), a remote facilitator's auth header from `VENDBOX_FACILITATOR_AUTH`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PaymentsConfig {
    /// The chain: a CAIP-2 id (`eip155:8453`) or an x402 v1 name (`base-sepolia`).
    pub network: String,
    /// The token contract (EIP-3009).
    pub asset: String,
    /// The token's EIP-712 domain name.
    pub asset_name: String,
    /// The token's EIP-712 domain version.
    pub asset_version: String,
    /// The operator's payout address. Without one, paid routes answer 503 `payments_unconfigured`.
    pub pay_to: Option<String>,
    /// How long a client has to get its payment settled; clients set `validBefore` from it.
    pub max_timeout_seconds: u64,
    /// JSON-RPC endpoint of the chain, for on-chain checks and recovery.
    pub rpc_url: String,
    /// `builtin` or `remote`.
    pub facilitator: FacilitatorKind,
    /// Base URL of the remote facilitator.
    pub facilitator_url: String,
    /// A payment left `verified` this long (a crash between reserve and settle) is finished by
    /// the settlement worker: settled if its transfer is on chain, voided otherwise.
    pub settle_grace_secs: u64,
    /// The built-in facilitator settles up to this many authorizations in one transaction
    /// through Multicall3's `aggregate3` at `multicall` (those that wait while a transaction is
    /// being sent go together; one whose transfer fails there fails alone). 1, the default, sends
    /// a transaction per payment.
    pub settle_batch: usize,
    /// Multicall3's address: public chains have it at its canonical address, the default, and
    /// `vendbox dev` puts one there on its local chain.
    pub multicall: String,
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        Self {
            network: "base-sepolia".into(),
            asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e".into(),
            asset_name: "USDC".into(),
            asset_version: "2".into(),
            pay_to: None,
            max_timeout_seconds: 300,
            rpc_url: "https://sepolia.base.org".into(),
            facilitator: FacilitatorKind::Remote,
            facilitator_url: "https://x402.org/facilitator".into(),
            settle_grace_secs: 300,
            settle_batch: 1,
            multicall: MULTICALL3.into(),
        }
    }
}

/// Multicall3's canonical address, the same on every public EVM chain that has it.
pub const MULTICALL3: &str = "0xcA11bde05977b3631167028862bE2a173976CA11";

/// The most authorizations one settlement transaction may carry.
const MOST_BATCHED: usize = 200;

impl PaymentsConfig {
    /// What vendbox accepts, or `None` while no payee is set. Errors name the key.
    pub fn acceptance(&self) -> Result<Option<Acceptance>, (String, String)> {
        let Some(pay_to) = &self.pay_to else { return Ok(None) };
        let key = |k: &str| format!("payments.{k}");
        let network = Network::parse(&self.network).ok_or_else(|| {
            (key("network"), format!("{:?} is not an EVM network (`eip155:8453` or `base`)", self.network))
        })?;
        let address = |k: &str, text: &str| text.parse::<EvmAddress>().map_err(|e| (key(k), e));
        if self.max_timeout_seconds < 30 {
            return Err((key("max_timeout_seconds"), "must be at least 30 seconds".into()));
        }
        Ok(Some(Acceptance::new(
            network,
            address("asset", &self.asset)?,
            &self.asset_name,
            &self.asset_version,
            address("pay_to", pay_to)?,
            self.max_timeout_seconds,
        )))
    }

    /// How the built-in facilitator batches settlements: `None` for one transaction per
    /// payment, or Multicall3's address and the most a transaction carries. Errors name the key.
    pub fn batching(&self) -> Result<Option<(EvmAddress, usize)>, (String, String)> {
        match self.settle_batch {
            0 => Err(("payments.settle_batch".into(), "must be at least 1".into())),
            1 => Ok(None),
            n if n > MOST_BATCHED => {
                Err(("payments.settle_batch".into(), format!("must be at most {MOST_BATCHED}")))
            }
            n => {
                let multicall =
                    self.multicall.parse::<EvmAddress>().map_err(|e| ("payments.multicall".into(), e))?;
                Ok(Some((multicall, n)))
            }
        }
    }

    /// The settlement grace period.
    pub fn settle_grace(&self) -> Duration {
        Duration::from_secs(self.settle_grace_secs)
    }
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// The URL clients reach this vendbox at, used in payment requirements and links. Defaults
    /// to `http://<listen>`.
    pub public_url: Option<String>,
    /// A request that takes longer is answered 503 `request_timeout`.
    pub request_timeout_secs: u64,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// How long in-flight requests get to finish after SIGTERM/SIGINT.
    pub shutdown_grace_secs: u64,
    /// Requests one client address may have in flight; more get 429 `too_many_requests`.
    pub max_requests_per_peer: usize,
    /// A domain whose wildcard names point at this vendbox (`boxes.example.com`): then
    /// `{port}-{box id}.boxes.example.com` reaches port `port` of that box, as
    /// `/v1/boxes/{id}/ports/{port}/` does.
    pub ports_domain: Option<String>,
    /// How far a signed request's `X-Auth-Timestamp` may be from this host's clock, either
    /// way; its nonce is kept that long after it.
    pub auth_window_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8402)),
            public_url: None,
            request_timeout_secs: 30,
            max_body_bytes: 1024 * 1024,
            shutdown_grace_secs: 30,
            max_requests_per_peer: 256,
            ports_domain: None,
            auth_window_secs: 300,
        }
    }
}

impl ServerConfig {
    /// The request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Directory for the SQLite database and other local state.
    pub data_dir: PathBuf,
    /// `postgres://…` for a shared store, `sqlite:…` for another file; empty for the default
    /// `<data_dir>/vendbox.db`.
    pub database_url: Option<String>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { data_dir: PathBuf::from("vendbox-data"), database_url: None }
    }
}

/// `[catalog]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogSettings {
    /// Start from the embedded default offers (true), or sell only the file's offers (false).
    pub include_defaults: bool,
}

impl Default for CatalogSettings {
    fn default() -> Self {
        Self { include_defaults: true }
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("{file}: not valid TOML: {message}")]
    Syntax {
        /// The file.
        file: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A key has a value vendbox cannot use.
    #[error("{origin}: key `{key}`: {problem}")]
    Key {
        /// The file, or the environment variable that set the key.
        origin: String,
        /// Dotted path of the key.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

impl Config {
    /// The catalog of this configuration.
    pub fn catalog(&self) -> Catalog {
        Catalog {
            // `[egress] enabled = false` sells every box without network.
            offers: self
                .offers
                .iter()
                .cloned()
                .map(|mut offer| {
                    if !self.egress.enabled {
                        offer.egress = Some(false);
                    }
                    offer
                })
                .collect(),
            regions: self.regions.clone(),
            images: self.images.clone(),
            credits: self.credits,
        }
    }

    /// The public URL, defaulting to `http://<listen>`.
    pub fn public_url(&self) -> String {
        self.server
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.server.listen))
            .trim_end_matches('/')
            .to_owned()
    }

    /// Loads the embedded defaults, then `file` (if any), then `env` overrides
    /// (`VENDBOX_SERVER__LISTEN=0.0.0.0:8402`), and checks the result.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let file_name = file.map_or_else(|| "built-in defaults".to_owned(), |p| p.display().to_string());
        let user = match file {
            None => Table::new(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { file: file_name.clone(), source })?;
                parse_table(&text, &file_name)?
            }
        };
        let include_defaults = user
            .get("catalog")
            .and_then(|c| c.get("include_defaults"))
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let mut merged = if include_defaults {
            parse_table(DEFAULT_CATALOG, "embedded default catalog")?
        } else {
            Table::new()
        };
        merge_config(&mut merged, user);

        let mut env_keys = BTreeMap::new();
        for (name, value) in env {
            if let Some(path) = env_key_path(&name) {
                set_path(&mut merged, &path, parse_env_value(&value));
                env_keys.insert(path.join("."), name);
            }
        }

        labels_as_text(&mut merged);
        let offer_ids = ids_of(&merged, "offers");
        let config: Config = serde_path_to_error::deserialize(Value::Table(merged)).map_err(|e| {
            let key = readable_path(&e.path().to_string(), &offer_ids);
            let origin = env_keys
                .iter()
                .find(|(k, _)| key == **k || key.starts_with(&format!("{k}.")))
                .map_or_else(|| file_name.clone(), |(_, var)| format!("environment variable {var}"));
            let problem = e.into_inner().to_string();
            let problem = problem.lines().next().unwrap_or_default().trim_end_matches(',').to_owned();
            ConfigError::Key { origin, key, problem }
        })?;
        config.catalog().check().map_err(|e| ConfigError::Key {
            origin: file_name.clone(),
            key: e.key,
            problem: e.problem,
        })?;
        check_lock_labels(&config.offers).map_err(|(key, problem)| ConfigError::Key {
            origin: file_name.clone(),
            key,
            problem,
        })?;
        let payments_key = |(key, problem): (String, String)| {
            let origin = env_keys
                .get(&key)
                .map_or_else(|| file_name.clone(), |var| format!("environment variable {var}"));
            ConfigError::Key { origin, key, problem }
        };
        config.payments.acceptance().map_err(payments_key)?;
        config.payments.batching().map_err(payments_key)?;
        Ok(config)
    }
}

fn parse_table(text: &str, file: &str) -> Result<Table, ConfigError> {
    text.parse::<Table>()
        .map_err(|e| ConfigError::Syntax { file: file.to_owned(), message: e.to_string().trim().to_owned() })
}

/// Merges `user` over `base`: tables merge key by key, the `offers`/`regions`/`images` arrays
/// merge entry by entry on `id`, anything else is replaced.
fn merge_config(base: &mut Table, user: Table) {
    for (key, value) in user {
        match (base.get_mut(&key), value) {
            (Some(Value::Array(existing)), Value::Array(new))
                if ["offers", "regions", "images"].contains(&key.as_str()) =>
            {
                merge_by_id(existing, new);
            }
            (Some(Value::Table(existing)), Value::Table(new)) => merge_tables(existing, new),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn merge_tables(base: &mut Table, over: Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(existing)), Value::Table(new)) => merge_tables(existing, new),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn merge_by_id(base: &mut Vec<Value>, entries: Vec<Value>) {
    for entry in entries {
        let id = entry.get("id").and_then(Value::as_str).map(str::to_owned);
        let existing = id
            .as_deref()
            .and_then(|id| base.iter_mut().find(|e| e.get("id").and_then(Value::as_str) == Some(id)));
        match (existing, entry) {
            (Some(Value::Table(old)), Value::Table(new)) => merge_tables(old, new),
            (_, entry) => base.push(entry),
        }
    }
}

/// `VENDBOX_SERVER__LISTEN` → `["server", "listen"]`; variables without `__` are not
/// configuration keys (they are flags' fallbacks and secrets).
fn env_key_path(name: &str) -> Option<Vec<String>> {
    let rest = name.strip_prefix(ENV_PREFIX)?;
    if !rest.contains("__") {
        return None;
    }
    Some(rest.split("__").map(str::to_ascii_lowercase).collect())
}

/// An environment value as TOML (`8402`, `true`, `"x"`), falling back to a plain string.
fn parse_env_value(text: &str) -> Value {
    format!("v = {text}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(text.to_owned()))
}

fn set_path(table: &mut Table, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut current = table;
    for key in parents {
        let entry = current.entry(key.clone()).or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        let Value::Table(next) = entry else { return };
        current = next;
    }
    current.insert(last.clone(), value);
}

/// Offers' `labels` are text; a TOML boolean or number there (`charge_when_held = true`) is
/// taken as its text.
fn labels_as_text(table: &mut Table) {
    let Some(Value::Array(offers)) = table.get_mut("offers") else { return };
    for offer in offers {
        let Some(Value::Table(labels)) = offer.get_mut("labels") else { continue };
        for (_, value) in labels.iter_mut() {
            if matches!(value, Value::Boolean(_) | Value::Integer(_) | Value::Float(_)) {
                *value = Value::String(value.to_string());
            }
        }
    }
}

/// `charge_when_held` only on a lock offer that prices acquisitions, and only `true` or `false`:
/// the key at fault and the problem otherwise.
fn check_lock_labels(offers: &[Offer]) -> Result<(), (String, String)> {
    use vendbox_service::locks::{ACQUIRE, CHARGE_WHEN_HELD, WhenHeld};
    for offer in offers.iter().filter(|o| o.labels.contains_key(CHARGE_WHEN_HELD)) {
        let key = format!("offers[{}].labels.{CHARGE_WHEN_HELD}", offer.id.as_str());
        let acquires = offer.kind == vendbox_core::OfferKind::Lock
            && offer.labels.get("operation").map(String::as_str) == Some(ACQUIRE);
        if !acquires {
            return Err((key, format!("only a lock offer with `labels.operation = \"{ACQUIRE}\"` takes it")));
        }
        WhenHeld::of(offer).map_err(|problem| (key, problem))?;
    }
    Ok(())
}

fn ids_of(table: &Table, array: &str) -> Vec<Option<String>> {
    table
        .get(array)
        .and_then(Value::as_array)
        .map(|entries| {
            entries.iter().map(|e| e.get("id").and_then(Value::as_str).map(str::to_owned)).collect()
        })
        .unwrap_or_default()
}

/// `offers[3].price.base` → `offers[h3retik-micro].price.base`.
fn readable_path(path: &str, offer_ids: &[Option<String>]) -> String {
    let Some(rest) = path.strip_prefix("offers[") else { return path.to_owned() };
    let Some((index, tail)) = rest.split_once(']') else { return path.to_owned() };
    match index.parse::<usize>().ok().and_then(|i| offer_ids.get(i).cloned().flatten()) {
        Some(id) => format!("offers[{id}]{tail}"),
        None => path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
        Config::load(Some(file.path()), env).map_err(|e| {
            // Make the file name predictable in assertions.
            match e {
                ConfigError::Key { origin, key, problem } => ConfigError::Key {
                    origin: origin.replace(&file.path().display().to_string(), "vendbox.toml"),
                    key,
                    problem,
                },
                other => other,
            }
        })
    }

    #[test]
    fn defaults_alone_are_a_valid_configuration() {
        let config = Config::load(None, []).unwrap();
        assert_eq!(config.server.listen.port(), 8402);
        assert!(config.offers.len() >= 27);
        assert_eq!(config.catalog().offer("h3retik-micro").unwrap().price.base, "0.19".parse().unwrap());
        assert_eq!(config.credits.min_balance, vendbox_core::Usdc(100), "SecretVM's AGENT_MIN_BALANCE");
    }

    #[test]
    fn a_file_overrides_an_offer_by_id_and_adds_its_own() {
        let config = load_text(
            r#"
            [server]
            listen = "0.0.0.0:9000"

            [[offers]]
            id = "h3retik-micro"
            price = { base = "0.25" }

            [[offers]]
            id = "my-box"
            kind = "sandbox"
            title = "Mine"
            duration = { rule = "fixed", minutes = 10 }
            price = { base = "1" }
            "#,
            &[],
        )
        .unwrap();
        assert_eq!(config.server.listen.port(), 9000);
        let catalog = config.catalog();
        let micro = catalog.offer("h3retik-micro").unwrap();
        assert_eq!(micro.price.base, "0.25".parse().unwrap());
        assert_eq!(micro.title, "Micro disposable VPS session", "untouched keys keep their defaults");
        assert!(catalog.offer("my-box").is_ok());
    }

    #[test]
    fn defaults_can_be_left_out() {
        let config = load_text("[catalog]\ninclude_defaults = false\n", &[]).unwrap();
        assert!(config.offers.is_empty());
    }

    #[test]
    fn environment_overrides_keys() {
        let config =
            load_text("", &[("VENDBOX_SERVER__LISTEN", "127.0.0.1:7000"), ("VENDBOX_WALLET_KEY", "secret")])
                .unwrap();
        assert_eq!(config.server.listen.port(), 7000);
        let err = load_text("", &[("VENDBOX_SERVER__REQUEST_TIMEOUT_SECS", "soon")]).unwrap_err().to_string();
        assert!(err.contains("VENDBOX_SERVER__REQUEST_TIMEOUT_SECS"), "{err}");
        assert!(err.contains("server.request_timeout_secs"), "{err}");
    }

    #[test]
    fn settlement_batches_are_bounded_and_name_their_multicall() {
        let defaults = Config::load(None, []).unwrap();
        assert_eq!(defaults.payments.batching(), Ok(None), "a transaction per payment by default");
        let config = load_text("[payments]\nsettle_batch = 50\n", &[]).unwrap();
        let (multicall, most) = config.payments.batching().unwrap().unwrap();
        assert_eq!((multicall.to_string().to_lowercase(), most), (MULTICALL3.to_lowercase(), 50));
        for (text, key, problem) in [
            ("[payments]\nsettle_batch = 0\n", "payments.settle_batch", "at least 1"),
            ("[payments]\nsettle_batch = 201\n", "payments.settle_batch", "at most 200"),
            ("[payments]\nsettle_batch = 2\nmulticall = \"0x12\"\n", "payments.multicall", ""),
        ] {
            let err = load_text(text, &[]).unwrap_err();
            let ConfigError::Key { key: got_key, problem: got, .. } = &err else { panic!("{err}") };
            assert_eq!(got_key, key, "{err}");
            assert!(got.contains(problem), "{err}");
        }
    }

    #[test]
    fn a_lock_acquire_offer_says_whether_a_held_key_is_charged() {
        use vendbox_service::locks::WhenHeld;
        let defaults = Config::load(None, []).unwrap().catalog();
        let lock = defaults.offer("h3retik-lock").unwrap();
        assert_eq!(WhenHeld::of(lock), Ok(WhenHeld::Void), "vendbox's default: nothing is charged");
        let config =
            load_text("[[offers]]\nid = \"h3retik-lock\"\nlabels = { charge_when_held = true }\n", &[])
                .unwrap();
        let lock = config.catalog().offer("h3retik-lock").unwrap().clone();
        assert_eq!(WhenHeld::of(&lock), Ok(WhenHeld::Charge));
        assert_eq!(lock.labels["operation"], "acquire", "labels merge key by key");
        for (text, problem) in [
            ("[[offers]]\nid = \"h3retik-lock\"\nlabels = { charge_when_held = \"yes\" }\n", "true or false"),
            ("[[offers]]\nid = \"h3retik-lock-renew\"\nlabels = { charge_when_held = true }\n", "operation"),
            ("[[offers]]\nid = \"h3retik-micro\"\nlabels = { charge_when_held = false }\n", "lock offer"),
        ] {
            let err = load_text(text, &[]).unwrap_err();
            let ConfigError::Key { key, problem: got, .. } = &err else { panic!("{err}") };
            assert!(key.ends_with("labels.charge_when_held"), "{err}");
            assert!(got.contains(problem), "{err}");
        }
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_problem() {
        let cases = [
            ("[server]\nlisten = \"nowhere\"\n", "server.listen", "invalid socket address"),
            ("[server]\nlisten_port = 1\n", "server.listen_port", "unknown field `listen_port`"),
            (
                "[[offers]]\nid = \"h3retik-micro\"\nprice = { base = \"0.1234567\" }\n",
                "offers[h3retik-micro].price.base",
                "more than 6 decimal places",
            ),
            (
                "[[offers]]\nid = \"h3retik-custom\"\nduration = { rule = \"range\", min_minutes = 10, max_minutes = 5 }\n",
                "offers[h3retik-custom].duration",
                "min_minutes",
            ),
            (
                "[[offers]]\nid = \"h3retik-micro\"\nregions = [\"mars\"]\ndefault_region = \"mars\"\n",
                "offers[h3retik-micro].regions",
                "mars",
            ),
            ("[[offers]]\nid = \"new\"\n", "offers[new]", "missing field"),
        ];
        for (text, key, problem) in cases {
            let err = load_text(text, &[]).unwrap_err();
            let ConfigError::Key { origin, key: got_key, problem: got_problem } = &err else {
                panic!("{err}")
            };
            assert_eq!(origin, "vendbox.toml", "{err}");
            assert_eq!(got_key, key, "{err}");
            assert!(got_problem.contains(problem), "{err}");
        }
        let err = load_text("[server\n", &[]).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
        assert!(err.to_string().contains("line 1"), "{err}");
        let err = Config::load(Some(Path::new("/nonexistent/vendbox.toml")), []).unwrap_err();
        assert!(err.to_string().starts_with("/nonexistent/vendbox.toml: cannot read"), "{err}");
    }
}
