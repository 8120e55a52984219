//! `vendbox mcp`: vendbox's MCP tools over standard input and output, for an agent's MCP
//! client to start as a subprocess. The tools call a vendbox's native API at `--url`, as the
//! account of `VENDBOX_API_KEY` (its credits pay), or paying each 402 with x402 from
//! `VENDBOX_WALLET_KEY`, never more in all than `--spend-cap`.

use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use vendbox_core::Usdc;
use vendbox_pay::Wallet;
use vendbox_pay::client::Challenge;
use vendbox_pay::wire;
use vendbox_server::surfaces::mcp::{self, Answer, NativeApi, Spend};

/// The largest request body the tools send (a file written into a box).
const MAX_REQUEST: usize = 64 * 1024 * 1024;

#[derive(Debug, clap::Args)]
pub(crate) struct McpArgs {
    /// The vendbox whose API the tools call.
    #[arg(long, env = "VENDBOX_URL", default_value = "http://127.0.0.1:8402", value_name = "URL")]
    url: String,
    /// An API key (`vbk_…`): purchases are paid from its account's credits.
    #[arg(long, env = "VENDBOX_API_KEY", hide_env_values = true, value_name = "KEY")]
    api_key: Option<String>,
    /// A wallet's private key: purchases (and top-ups) are paid with x402 from it.
    #[arg(long, env = "VENDBOX_WALLET_KEY", hide_env_values = true, value_name = "HEX")]
    wallet_key: Option<String>,
    /// The most the wallet may pay in all while this server runs, in USDC.
    #[arg(long, env = "VENDBOX_SPEND_CAP", default_value = "1.00", value_name = "USDC")]
    spend_cap: Usdc,
}

pub(crate) async fn run(args: McpArgs) -> anyhow::Result<()> {
    if args.api_key.is_none() && args.wallet_key.is_none() {
        bail!("give VENDBOX_API_KEY (credits pay) or VENDBOX_WALLET_KEY (x402 pays, within --spend-cap)");
    }
    let wallet = match &args.wallet_key {
        Some(key) => {
            Some(key.trim().parse::<Wallet>().map_err(anyhow::Error::msg).context("VENDBOX_WALLET_KEY")?)
        }
        None => None,
    };
    let remote = Remote {
        http: reqwest::Client::new(),
        base: args.url.trim_end_matches('/').to_owned(),
        api_key: args.api_key,
        wallet,
        left: Arc::new(Mutex::new(args.spend_cap)),
    };
    mcp::serve_stdio(Arc::new(remote)).await.map_err(anyhow::Error::msg)
}

/// A vendbox reached over HTTP.
#[derive(Debug, Clone)]
struct Remote {
    /// The client.
    http: reqwest::Client,
    /// The vendbox's root URL, without a trailing `/`.
    base: String,
    /// The account's API key.
    api_key: Option<String>,
    /// The wallet that pays 402s.
    wallet: Option<Wallet>,
    /// What the wallet may still spend.
    left: Arc<Mutex<Usdc>>,
}

impl NativeApi for Remote {
    fn send(&self, request: mcp::Request, spend: Spend) -> Answer {
        let remote = self.clone();
        Box::pin(async move { remote.exchange(request, spend).await.map_err(|e| format!("{e:#}")) })
    }
}

impl Remote {
    async fn exchange(&self, request: mcp::Request, spend: Spend) -> anyhow::Result<mcp::Response> {
        let (method, path, headers, body) =
            mcp::request_parts(request, MAX_REQUEST).await.map_err(anyhow::Error::msg)?;
        let method = reqwest::Method::from_bytes(method.as_bytes()).context("method")?;
        let url = format!("{}{path}", self.base);
        let build = |payment: Option<(&str, &str)>| {
            let mut r = self.http.request(method.clone(), &url).body(body.clone());
            for (name, value) in &headers {
                r = r.header(name.as_str(), value.as_slice());
            }
            if spend != Spend::Probe
                && let Some(key) = &self.api_key
            {
                r = r.header("x-api-key", key.as_str());
            }
            if let Some((name, value)) = payment {
                r = r.header(name, value);
            }
            r
        };
        let first = build(None).send().await.with_context(|| format!("requesting {url}"))?;
        let paid = match (spend, &self.wallet) {
            (Spend::UpTo(max), Some(wallet)) if first.status() == reqwest::StatusCode::PAYMENT_REQUIRED => {
                let required = first
                    .headers()
                    .get(wire::PAYMENT_REQUIRED)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let status = first.status().as_u16();
                let head = header_pairs(first.headers());
                let body = first.bytes().await.context("reading the 402")?;
                match self.pay(required.as_deref(), &body, max, wallet) {
                    Ok((name, value)) => {
                        build(Some((name, &value))).send().await.context("sending the payment")?
                    }
                    // Not paid: the 402 as it came, for the tool to explain.
                    Err(_) => return answer_whole(status, &head, body.to_vec()),
                }
            }
            _ => first,
        };
        stream(paid)
    }

    /// Pays a 402 of at most `max` from what the cap leaves: the header to send.
    fn pay(
        &self,
        required: Option<&str>,
        body: &[u8],
        max: Usdc,
        wallet: &Wallet,
    ) -> anyhow::Result<(&'static str, String)> {
        let challenge = Challenge::read(required, body).map_err(anyhow::Error::msg)?;
        let (atomic, _) = challenge.price().context("the 402 names no price")?;
        let price = Usdc(atomic);
        if price > max {
            bail!("the 402 asks {price}, more than {max}");
        }
        {
            let mut left =
                self.left.lock().map_err(|_| anyhow::anyhow!("the spend cap's lock is poisoned"))?;
            if price > *left {
                bail!("the spend cap has {left} left, less than {price}");
            }
            *left = Usdc(left.atomic() - price.atomic());
        }
        challenge.pay(wallet, vendbox_pay::exact::unix_now()).map_err(anyhow::Error::msg)
    }
}

fn header_pairs(headers: &reqwest::header::HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers.iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect()
}

/// A response whose body was read already.
fn answer_whole(status: u16, headers: &[(String, Vec<u8>)], body: Vec<u8>) -> anyhow::Result<mcp::Response> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let _ = tx.try_send(Ok(body));
    mcp::response(status, headers, rx).map_err(anyhow::Error::msg)
}

/// A response whose body streams as it arrives (a command's events).
fn stream(mut response: reqwest::Response) -> anyhow::Result<mcp::Response> {
    let status = response.status().as_u16();
    let headers = header_pairs(response.headers());
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => Ok(chunk.to_vec()),
                Ok(None) => break,
                Err(e) => Err(e.to_string()),
            };
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() || failed {
                break;
            }
        }
    });
    mcp::response(status, &headers, rx).map_err(anyhow::Error::msg)
}
