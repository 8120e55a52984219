//! `vendbox dev`: the whole paid flow on one machine, offline. Starts anvil (installing it from
//! npm when missing) or uses `--rpc-url`, deploys vendbox's test USDC, mints to a freshly
//! generated agent wallet, and serves with the built-in facilitator settling on that chain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Context;
use vendbox_box::local::{LocalBackend, LocalConfig};
use vendbox_pay::devchain::{self, ANVIL_KEY_0, Anvil};
use vendbox_pay::{EvmAddress, Wallet};
use vendbox_server::config::FacilitatorKind;
use vendbox_server::{Config, Secrets, shutdown_signal};

/// Test USDC minted to the agent wallet, in whole USDC.
const AGENT_FUNDS_USDC: u64 = 100;

#[derive(Debug, clap::Args)]
pub(crate) struct DevArgs {
    /// Use this chain instead of starting anvil (its first anvil key must be funded).
    #[arg(long, value_name = "URL")]
    rpc_url: Option<String>,
    /// Chain id of the anvil started (84532 lets x402 v1 clients pay on "base-sepolia").
    #[arg(long, default_value_t = 31337)]
    chain_id: u64,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8402", value_name = "ADDR")]
    listen: SocketAddr,
    /// Directory for state [default: a fresh temporary directory, removed on exit].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Configuration file with offers and settings; its [payments] section is replaced.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print what an agent needs as one JSON line instead of the banner.
    #[arg(long)]
    json: bool,
}

/// Waits for the chain, deploys the test token and puts Multicall3 where public chains have it
/// (batched settlement, `payments.settle_batch`, uses it): the chain id, the token, Multicall3.
async fn prepare_chain(rpc_url: &str, operator: &Wallet) -> anyhow::Result<(u64, EvmAddress, EvmAddress)> {
    let chain = vendbox_pay::chain::Chain::connect(rpc_url, EvmAddress::ZERO)?;
    let chain_id =
        chain.wait_ready(std::time::Duration::from_secs(10)).await.context("the chain does not answer")?;
    let asset =
        devchain::deploy_token(rpc_url, operator, "USDC", "2").await.context("deploying test USDC")?;
    // A chain that is not anvil keeps whatever it has at the canonical address.
    let multicall = devchain::place_multicall(rpc_url).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "could not place Multicall3 on the chain; batched settlement needs one");
        devchain::MULTICALL3.into()
    });
    Ok((chain_id, asset, multicall))
}

pub(crate) async fn run(args: DevArgs) -> anyhow::Result<()> {
    let _anvil;
    let rpc_url = if let Some(url) = &args.rpc_url {
        url.clone()
    } else {
        let anvil = start_anvil(args.chain_id).await?;
        let url = anvil.rpc_url.clone();
        _anvil = anvil;
        url
    };
    let operator = Wallet::from_str(ANVIL_KEY_0).map_err(|e| anyhow::anyhow!("the development key: {e}"))?;
    let (chain_id, asset, multicall) = prepare_chain(&rpc_url, &operator).await?;
    let agent = Wallet::random();
    let payee = Wallet::random().address();
    let funds = AGENT_FUNDS_USDC * 1_000_000;
    devchain::mint(&rpc_url, &operator, asset, agent.address(), funds).await.context("minting test USDC")?;

    let file = crate::config_file(args.config.clone());
    let mut config = Config::load(file.as_deref(), std::env::vars())?;
    config.server.listen = args.listen;
    if args.listen.port() == 0 {
        // An HTTP port picked by the system (tests, scripts): the SSH port too.
        config.ssh.listen.set_port(0);
    }
    let mut temp = None;
    config.store.data_dir = if let Some(dir) = args.data_dir {
        dir
    } else {
        let dir = tempfile::Builder::new().prefix("vendbox-dev-").tempdir()?;
        let path = dir.path().to_owned();
        temp = Some(dir);
        path
    };
    config.store.database_url = None;
    let p = &mut config.payments;
    p.network = format!("eip155:{chain_id}");
    p.asset = asset.to_string();
    "USDC".clone_into(&mut p.asset_name);
    "2".clone_into(&mut p.asset_version);
    p.pay_to = Some(payee.to_string());
    p.rpc_url.clone_from(&rpc_url);
    p.facilitator = FacilitatorKind::Builtin;
    p.multicall = multicall.to_string();
    let secrets = Secrets { signer: Some(operator), facilitator_auth: None };
    let server = crate::start(&config, secrets, "vendbox dev").await?;
    let url = format!("http://{}", server.local_addr()?);
    let agent_key = agent.secret_hex();
    let network = vendbox_pay::Network::new(chain_id);
    if args.json {
        let line = serde_json::json!({
            "url": url,
            "rpc_url": rpc_url,
            "chain_id": chain_id,
            "network": network.caip2(),
            "network_v1": network.v1_label(),
            "asset": asset.to_string(),
            "pay_to": payee.to_string(),
            "agent_address": agent.address().to_string(),
            "agent_key": agent_key,
        });
        println!("{line}");
    } else {
        let exe = std::env::current_exe().map_or_else(|_| "vendbox".into(), |p| p.display().to_string());
        println!(
            "\nvendbox dev: a local chain, test USDC and a funded agent wallet\n\n  \
             URL            {url}\n  \
             network        {} (x402 v1: {}), RPC {rpc_url}\n  \
             asset          {} (test USDC: EIP-712 \"USDC\" version \"2\", 6 decimals)\n  \
             pay to         {}\n  \
             agent address  {} (holds {AGENT_FUNDS_USDC} USDC)\n  \
             agent key      {agent_key}\n\n\
             Pay for the catalog (0.01 USDC) as an agent would:\n  \
             VENDBOX_WALLET_KEY={agent_key} {exe} fetch {url}/catalog\n\n\
             Take a lock (0.0001 USDC; not charged if someone holds it):\n  \
             VENDBOX_WALLET_KEY={agent_key} {exe} fetch -X POST -d '{{\"key\":\"job:42\"}}' {url}/x402/locks/acquire\n\n\
             Buy a micro session (0.19 USDC: a box for 5 minutes and 3 commands), then run a command in it:\n  \
             VENDBOX_WALLET_KEY={agent_key} {exe} fetch --max-price 0.19 -X POST {url}/x402/sessions/micro\n  \
             curl -s -H 'authorization: Bearer <session_token>' -H 'content-type: application/json' \\\n    \
             -d '{{\"command\":\"uname -a\"}}' {url}/x402/sessions/<session_id>/exec\n",
            network.caip2(),
            network.v1_label(),
            asset,
            payee,
            agent.address(),
        );
    }
    server.run(shutdown_signal()).await.context("serving")?;
    if temp.is_some() {
        // The state was temporary, so its boxes could never be found again: end them now.
        let boxes = LocalConfig {
            data_dir: config.store.data_dir.clone(),
            boxd: vec![std::env::current_exe()?.to_string_lossy().into_owned(), "boxd".into()],
            run_root: config.boxes.run_dir.clone(),
        };
        if let Ok(backend) = LocalBackend::new(boxes) {
            backend.remove_all().await.context("ending the boxes of this dev run")?;
        }
    }
    Ok(())
}

async fn start_anvil(chain_id: u64) -> anyhow::Result<Anvil> {
    let tools = std::env::var_os("HOME")
        .map_or_else(|| PathBuf::from(".vendbox"), |h| PathBuf::from(h).join(".vendbox"));
    let binary = if let Some(binary) = devchain::find_anvil(std::slice::from_ref(&tools)) {
        binary
    } else {
        eprintln!(
            "vendbox dev: anvil is not installed; installing {} into {}",
            devchain::ANVIL_PACKAGE,
            tools.display()
        );
        devchain::install_anvil(&tools).await?
    };
    let anvil = Anvil::start(&binary, chain_id).await?;
    tracing::info!(rpc = %anvil.rpc_url, chain_id, binary = %binary.display(), "anvil started");
    Ok(anvil)
}
