//! A local chain with vendbox's token on it and a vendbox selling there: what the paid
//! end-to-end tests share. Each shop runs its own anvil and its own `vendbox serve` with the
//! built-in facilitator, and stops both (by pid) when dropped.

#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::str::FromStr;

use serde_json::Value;
use vendbox_pay::chain::Chain;
use vendbox_pay::client::Challenge;
use vendbox_pay::devchain::{self, ANVIL_KEY_0, ANVIL_KEY_1, Anvil};
use vendbox_pay::wire;
use vendbox_pay::{EvmAddress, Wallet};

/// Unix seconds now.
pub use vendbox_pay::exact::unix_now as now;

use crate::support::Vendbox;

/// The catalog's price in atomic units (0.01 USDC).
pub const PRICE: u64 = 10_000;
/// What each fresh payer is given.
pub const FUNDS: u64 = 1_000_000;

/// A chain with the token, and a vendbox selling on it.
pub struct Shop {
    pub anvil: Anvil,
    pub chain: Chain,
    pub asset: EvmAddress,
    pub pay_to: EvmAddress,
    pub dir: tempfile::TempDir,
    pub vendbox: Vendbox,
}

pub fn anvil_binary() -> Option<PathBuf> {
    let found = devchain::find_anvil(&[]);
    if found.is_none() {
        crate::support::requirement_missing("anvil is not installed (npm install --prefix tests/clients)");
    }
    found
}

impl Shop {
    pub async fn open(chain_id: u64, env: &[(&str, &str)]) -> Option<Shop> {
        let anvil = Anvil::start(&anvil_binary()?, chain_id).await.unwrap();
        let deployer = Wallet::from_str(ANVIL_KEY_1).unwrap();
        let asset = devchain::deploy_token(&anvil.rpc_url, &deployer, "USDC", "2").await.unwrap();
        // Where public chains have Multicall3, for shops that batch settlements.
        devchain::place_multicall(&anvil.rpc_url).await.unwrap();
        let chain = Chain::connect(&anvil.rpc_url, asset).unwrap();
        let pay_to = Wallet::random().address();
        let dir = tempfile::tempdir().unwrap();
        let vendbox = serve(&anvil, asset, pay_to, dir.path(), env);
        Some(Shop { anvil, chain, asset, pay_to, dir, vendbox })
    }

    /// Starts vendbox again on this chain and data directory.
    pub fn serve(&self, extra: &[(&str, &str)]) -> Vendbox {
        serve(&self.anvil, self.asset, self.pay_to, self.dir.path(), extra)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.vendbox.url)
    }

    /// A new wallet holding `FUNDS` atomic units.
    pub async fn payer(&self) -> Wallet {
        let payer = Wallet::random();
        let minter = Wallet::from_str(ANVIL_KEY_1).unwrap();
        devchain::mint(&self.anvil.rpc_url, &minter, self.asset, payer.address(), FUNDS).await.unwrap();
        payer
    }

    pub async fn balance(&self, who: EvmAddress) -> u64 {
        self.chain.balance_of(who).await.unwrap()
    }

    /// The 402 of `GET /catalog`.
    pub async fn challenge(&self) -> Challenge {
        let response = reqwest::get(self.url("/catalog")).await.unwrap();
        assert_eq!(response.status(), 402);
        let header = response.headers().get(wire::PAYMENT_REQUIRED).unwrap().to_str().unwrap().to_owned();
        Challenge::read(Some(&header), &response.bytes().await.unwrap()).unwrap()
    }

    pub async fn get_catalog(&self, header: (&str, &str)) -> (u16, reqwest::header::HeaderMap, Value) {
        let response =
            reqwest::Client::new().get(self.url("/catalog")).header(header.0, header.1).send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, headers, response.json().await.unwrap_or(Value::Null))
    }

    /// Runs a client script from `tests/clients` as the payer, on `GET /catalog`; its one JSON line.
    pub fn run_client(&self, program: &str, script: &str, payer: &Wallet) -> Value {
        self.run_client_on(program, script, payer, "/catalog", &[])
    }

    /// Runs a client script from `tests/clients` as the payer on `path`, with more arguments
    /// (`--method POST --json …`); its one JSON line.
    pub fn run_client_on(
        &self,
        program: &str,
        script: &str,
        payer: &Wallet,
        path: &str,
        args: &[&str],
    ) -> Value {
        self.client_answer(program, script, payer, path, args, true)
    }

    /// As [`Self::run_client_on`], for requests expected to fail: the JSON line whatever the
    /// client's exit status.
    pub fn client_answer(
        &self,
        program: &str,
        script: &str,
        payer: &Wallet,
        path: &str,
        args: &[&str],
        must_succeed: bool,
    ) -> Value {
        let clients = repo_root().join("tests/clients");
        let key = payer.secret_hex();
        let output = std::process::Command::new(program)
            .arg(clients.join(script))
            .arg(self.url(path))
            .args(args)
            .env("VENDBOX_WALLET_KEY", key)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| {
            panic!("{script} printed no JSON: {stdout}\n{}", String::from_utf8_lossy(&output.stderr))
        });
        let result: Value = serde_json::from_str(line).unwrap();
        assert!(
            output.status.success() || !must_succeed,
            "{script} failed: {result}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        result
    }

    /// The requirements behind `challenge`, as vendbox built them: for checking and settling a
    /// payment outside vendbox.
    pub fn requirements_of(&self, challenge: &Challenge) -> vendbox_pay::exact::Requirements {
        let offered = challenge.v2.as_ref().unwrap();
        let terms = &offered.accepts[0];
        vendbox_pay::exact::Requirements::new(
            vendbox_pay::exact::Acceptance::new(
                vendbox_pay::Network::new(self.anvil.chain_id),
                self.asset,
                "USDC",
                "2",
                self.pay_to,
                terms.max_timeout_seconds,
            ),
            vendbox_pay::exact::Charge {
                amount: vendbox_core::Usdc(terms.amount.parse().unwrap()),
                resource: offered.resource.url.clone(),
                description: String::new(),
                mime_type: "application/json".into(),
                kind: vendbox_pay::ChargeKind::Other,
            },
        )
    }

    /// Checks that exactly one price moved from `payer` to the payee since `before`.
    /// Settles the payment in header `value` (sent for `challenge`) with another facilitator,
    /// as someone racing vendbox would, so that vendbox's own settlement of it then fails.
    pub async fn spend_elsewhere(&self, challenge: &Challenge, value: &str) {
        let sent: vendbox_pay::wire::PaymentPayloadV2 = vendbox_pay::wire::decode_header(value).unwrap();
        let requirements = self.requirements_of(challenge);
        let sent = vendbox_pay::exact::SentPayment::V2(sent);
        let checked = vendbox_pay::exact::check(sent, &requirements, now()).unwrap();
        let key = Wallet::from_str(vendbox_pay::devchain::ANVIL_KEY_1).unwrap();
        let other =
            vendbox_pay::facilitator::BuiltinFacilitator::new(&self.anvil.rpc_url, self.asset, &key).unwrap();
        vendbox_pay::facilitator::Facilitator::settle(&other, &checked, &requirements).await.unwrap();
    }

    pub async fn assert_paid_once(&self, payer: EvmAddress, payee_before: u64) {
        assert_eq!(self.balance(payer).await, FUNDS - PRICE, "the payer paid exactly the price");
        assert_eq!(self.balance(self.pay_to).await, payee_before + PRICE, "the payee got exactly the price");
    }
}

/// `vendbox serve` selling on `anvil`'s chain, state in `dir/state`, settling with anvil's first key.
pub fn serve(
    anvil: &Anvil,
    asset: EvmAddress,
    pay_to: EvmAddress,
    dir: &std::path::Path,
    extra: &[(&str, &str)],
) -> Vendbox {
    let network = format!("eip155:{}", anvil.chain_id);
    let (asset, pay_to) = (asset.to_string(), pay_to.to_string());
    let mut env = vec![
        ("VENDBOX_PAYMENTS__NETWORK", network.as_str()),
        ("VENDBOX_PAYMENTS__ASSET", asset.as_str()),
        ("VENDBOX_PAYMENTS__PAY_TO", pay_to.as_str()),
        ("VENDBOX_PAYMENTS__RPC_URL", anvil.rpc_url.as_str()),
        ("VENDBOX_PAYMENTS__FACILITATOR", "builtin"),
        ("VENDBOX_PAYMENTS__MAX_TIMEOUT_SECONDS", "60"),
        ("VENDBOX_SIGNER_KEY", ANVIL_KEY_0),
    ];
    env.extend_from_slice(extra);
    Vendbox::start_with(dir, &["--data-dir", "state"], &env)
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn clients_installed(dir: &str) -> bool {
    let ok = repo_root().join("tests/clients").join(dir).exists();
    if !ok {
        crate::support::requirement_missing("the official x402 clients are not installed");
    }
    ok
}

pub fn python_client_installed() -> bool {
    let ok =
        std::process::Command::new("python3").args(["-c", "import x402"]).status().is_ok_and(|s| s.success());
    if !ok {
        crate::support::requirement_missing("the x402 Python package is not installed");
    }
    ok
}

/// The `X-Auth-*` headers `wallet` signs for `method path body`, made by the wallet library
/// agents use (`tests/clients/sign_auth.py`, `eth_account`).
pub fn sign_auth(wallet: &Wallet, method: &str, path: &str, body: &str) -> Vec<(String, String)> {
    let output = std::process::Command::new("python3")
        .current_dir(repo_root().join("tests/clients"))
        .args(["sign_auth.py", method, path, body])
        .env("VENDBOX_WALLET_KEY", wallet.secret_hex())
        .output()
        .unwrap();
    assert!(output.status.success(), "sign_auth.py: {}", String::from_utf8_lossy(&output.stderr));
    let headers: serde_json::Map<String, Value> = serde_json::from_slice(&output.stdout).unwrap();
    headers.into_iter().map(|(k, v)| (k, v.as_str().unwrap().to_owned())).collect()
}
