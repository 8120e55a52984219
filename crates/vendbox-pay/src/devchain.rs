//! A local chain for development and tests: start anvil, deploy vendbox's EIP-3009 token
//! (`contracts/VendboxUSDC.sol`, compiled artifact committed beside it) and mint test USDC.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{Bytes, U256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::sol_types::SolValue;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::chain::{ChainError, Eip3009Token};
use crate::keys::{EvmAddress, Wallet};

/// The token's compiled artifact: `{"abi": …, "bytecode": "0x…"}`.
pub const TOKEN_ARTIFACT: &str = include_str!("../../../contracts/VendboxUSDC.json");

/// The multicall's compiled artifact, with the runtime code put at Multicall3's address.
pub const MULTICALL_ARTIFACT: &str = include_str!("../../../contracts/VendboxMulticall.json");

/// Multicall3's canonical address (the same on every public chain that has it).
pub const MULTICALL3: alloy::primitives::Address =
    alloy::primitives::address!("cA11bde05977b3631167028862bE2a173976CA11");

/// The first of anvil's well-known development keys (public; funded with test ether on every
/// anvil chain, worthless anywhere else).
pub const ANVIL_KEY_0: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
/// The second development key.
pub const ANVIL_KEY_1: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";

/// The npm package that carries anvil.
pub const ANVIL_PACKAGE: &str = "@foundry-rs/anvil-linux-amd64@1.7.1";

/// Where anvil's binary sits inside an npm prefix.
const ANVIL_IN_PREFIX: &str = "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil";

/// Something went wrong with the local chain.
#[derive(Debug, thiserror::Error)]
pub enum DevChainError {
    /// anvil is not installed where vendbox looks.
    #[error(
        "anvil was not found: set VENDBOX_ANVIL, put anvil on PATH, or run `npm install {ANVIL_PACKAGE}`"
    )]
    AnvilMissing,
    /// anvil did not start.
    #[error("anvil did not start: {0}")]
    AnvilStart(String),
    /// A call to the chain failed.
    #[error(transparent)]
    Chain(#[from] ChainError),
}

/// Finds anvil: `$VENDBOX_ANVIL`, then `PATH`, then the npm prefixes vendbox installs into
/// (`extra_prefixes`, then the working directory and its `tests/clients`).
pub fn find_anvil(extra_prefixes: &[PathBuf]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("VENDBOX_ANVIL").map(PathBuf::from) {
        return path.is_file().then_some(path);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("anvil"));
    let cwd = std::env::current_dir().unwrap_or_default();
    let in_prefixes = extra_prefixes
        .iter()
        .cloned()
        .chain([cwd.clone(), cwd.join("tests/clients")])
        .chain(cwd.ancestors().skip(1).map(|a| a.join("tests/clients")))
        .map(|prefix| prefix.join(ANVIL_IN_PREFIX));
    on_path.chain(in_prefixes).find(|p| p.is_file())
}

/// Installs anvil from npm into `prefix`; returns the binary's path.
pub async fn install_anvil(prefix: &Path) -> Result<PathBuf, DevChainError> {
    std::fs::create_dir_all(prefix).map_err(|e| DevChainError::AnvilStart(e.to_string()))?;
    let status = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
        .arg(prefix)
        .arg(ANVIL_PACKAGE)
        .status()
        .await
        .map_err(|e| {
            DevChainError::AnvilStart(format!("npm could not run ({e}); install Node.js and npm"))
        })?;
    let binary = prefix.join(ANVIL_IN_PREFIX);
    if status.success() && binary.is_file() { Ok(binary) } else { Err(DevChainError::AnvilMissing) }
}

/// The blocks whose state a dev chain keeps (see [`Anvil::start`]).
pub const STATES_KEPT: u32 = 64;

/// A running anvil, stopped (by its pid) when dropped.
#[derive(Debug)]
pub struct Anvil {
    child: Child,
    /// Its JSON-RPC endpoint.
    pub rpc_url: String,
    /// Its chain id.
    pub chain_id: u64,
}

impl Anvil {
    /// Starts `binary` on a free loopback port with `chain_id`, and waits until it answers.
    ///
    /// It keeps the state of its last [`STATES_KEPT`] blocks in memory and none on disk
    /// (`--prune-history`): vendbox reads state only at the head (every block's transactions and
    /// receipts are kept), and anvil's default, which writes older states to disk as JSON, made
    /// each block slower as the chain grew (paid requests 1.6 to 2.3 times slower after 2,000
    /// payments than before, in `benches/payments.rs`).
    pub async fn start(binary: &Path, chain_id: u64) -> Result<Anvil, DevChainError> {
        let mut child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", "0", "--chain-id", &chain_id.to_string()])
            .args(["--prune-history", &STATES_KEPT.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| DevChainError::AnvilStart(format!("{}: {e}", binary.display())))?;
        let stdout = child.stdout.take().ok_or_else(|| DevChainError::AnvilStart("no stdout".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        let address = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(address) = line.trim().strip_prefix("Listening on ") {
                    return Some(address.to_owned());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .ok_or_else(|| DevChainError::AnvilStart("it never said where it listens".into()))?;
        // Keep reading its output so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Anvil { child, rpc_url: format!("http://{address}"), chain_id })
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops it and waits for it to exit.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Deploys vendbox's token with EIP-712 `name` and `version`, sent by `deployer`.
pub async fn deploy_token(
    rpc_url: &str,
    deployer: &Wallet,
    name: &str,
    version: &str,
) -> Result<EvmAddress, DevChainError> {
    let artifact: serde_json::Value =
        serde_json::from_str(TOKEN_ARTIFACT).map_err(|e| ChainError(format!("token artifact: {e}")))?;
    let bytecode = artifact["bytecode"]
        .as_str()
        .and_then(|b| hex::decode(b.trim_start_matches("0x")).ok())
        .ok_or_else(|| ChainError("token artifact has no bytecode".into()))?;
    let mut code = bytecode;
    code.extend_from_slice(&(name.to_owned(), version.to_owned()).abi_encode_params());
    let provider = signing_provider(rpc_url, deployer)?;
    let request = TransactionRequest::default().with_deploy_code(Bytes::from(code));
    let receipt = provider
        .send_transaction(request)
        .await
        .map_err(|e| ChainError(e.to_string()))?
        .get_receipt()
        .await
        .map_err(|e| ChainError(e.to_string()))?;
    receipt
        .contract_address
        .map(EvmAddress::from)
        .ok_or_else(|| ChainError("the deployment created no contract".into()).into())
}

/// Puts vendbox's `aggregate3` contract (`contracts/VendboxMulticall.sol`, Multicall3's ABI) at
/// Multicall3's canonical address on an anvil chain, where public chains have Multicall3, so
/// that batched settlement works here as it does there.
pub async fn place_multicall(rpc_url: &str) -> Result<EvmAddress, DevChainError> {
    let artifact: serde_json::Value = serde_json::from_str(MULTICALL_ARTIFACT)
        .map_err(|e| ChainError(format!("multicall artifact: {e}")))?;
    let code = artifact["deployedBytecode"]
        .as_str()
        .ok_or_else(|| ChainError("multicall artifact has no runtime code".into()))?;
    let url = rpc_url.parse().map_err(|e| ChainError(format!("RPC URL {rpc_url:?}: {e}")))?;
    let provider = ProviderBuilder::new().connect_http(url);
    let () = provider
        .raw_request::<_, ()>("anvil_setCode".into(), (MULTICALL3, code))
        .await
        .map_err(|e| ChainError(format!("anvil_setCode: {e}")))?;
    Ok(MULTICALL3.into())
}

/// Mints `amount` atomic units of the token at `asset` to `to` (the test token lets anyone mint).
pub async fn mint(
    rpc_url: &str,
    sender: &Wallet,
    asset: EvmAddress,
    to: EvmAddress,
    amount: u64,
) -> Result<(), DevChainError> {
    let provider = signing_provider(rpc_url, sender)?;
    let receipt = Eip3009Token::new(asset.get(), &provider)
        .mint(to.get(), U256::from(amount))
        .send()
        .await
        .map_err(|e| ChainError(e.to_string()))?
        .get_receipt()
        .await
        .map_err(|e| ChainError(e.to_string()))?;
    if receipt.status() { Ok(()) } else { Err(ChainError("mint reverted".into()).into()) }
}

alloy::sol! {
    /// EIP-3009's cancellation, exactly as the token hashes it.
    struct CancelAuthorization {
        address authorizer;
        bytes32 nonce;
    }
}

/// Cancels `payer`'s unused authorization with `nonce` (`0x` and 64 hex digits, as payments
/// carry it) on the token of `domain`, as a payer who changed its mind would; `sender` pays the
/// gas.
pub async fn cancel_authorization(
    rpc_url: &str,
    sender: &Wallet,
    domain: &crate::eip3009::TokenDomain,
    payer: &Wallet,
    nonce: &str,
) -> Result<(), DevChainError> {
    let provider = signing_provider(rpc_url, sender)?;
    let receipt = provider
        .send_transaction(cancellation(domain, payer, nonce)?)
        .await
        .map_err(|e| ChainError(e.to_string()))?
        .get_receipt()
        .await
        .map_err(|e| ChainError(e.to_string()))?;
    if receipt.status() { Ok(()) } else { Err(ChainError("the cancellation reverted".into()).into()) }
}

/// The transaction (to the token of `domain`, signed by `payer`, sent by anyone) that cancels
/// `payer`'s authorization with `nonce`; gas and fees left to the sender.
pub fn cancellation(
    domain: &crate::eip3009::TokenDomain,
    payer: &Wallet,
    nonce: &str,
) -> Result<TransactionRequest, ChainError> {
    use alloy::signers::SignerSync as _;
    use alloy::sol_types::{SolCall as _, SolStruct as _};
    let nonce: alloy::primitives::B256 =
        nonce.parse().map_err(|e| ChainError(format!("nonce `{nonce}`: {e}")))?;
    let payer = payer.signer();
    let cancel = CancelAuthorization { authorizer: payer.address(), nonce };
    let hash = cancel.eip712_signing_hash(&domain.eip712());
    let signature = payer.sign_hash_sync(&hash).map_err(|e| ChainError(e.to_string()))?;
    let call = Eip3009Token::cancelAuthorizationCall {
        authorizer: payer.address(),
        nonce,
        v: if signature.v() { 28 } else { 27 },
        r: signature.r().into(),
        s: signature.s().into(),
    };
    Ok(TransactionRequest::default().to(domain.verifying_contract).input(call.abi_encode().into()))
}

/// Sends `wei` of the chain's native coin from `sender` to `to` (gas money for a new signer).
pub async fn fund(rpc_url: &str, sender: &Wallet, to: EvmAddress, wei: u128) -> Result<(), DevChainError> {
    let provider = signing_provider(rpc_url, sender)?;
    provider
        .send_transaction(TransactionRequest::default().to(to.get()).value(U256::from(wei)))
        .await
        .map_err(|e| ChainError(e.to_string()))?
        .get_receipt()
        .await
        .map_err(|e| ChainError(e.to_string()))?;
    Ok(())
}

fn signing_provider(rpc_url: &str, signer: &Wallet) -> Result<impl Provider, ChainError> {
    let url = rpc_url.parse().map_err(|e| ChainError(format!("RPC URL {rpc_url:?}: {e}")))?;
    Ok(ProviderBuilder::new().wallet(EthereumWallet::from(signer.signer().clone())).connect_http(url))
}
