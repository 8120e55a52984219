//! `vendbox fetch URL`: an HTTP client that pays x402. It reads the 402, shows the price, pays
//! from `VENDBOX_WALLET_KEY` only up to `--max-price`, and prints the response (stdout) and the
//! receipt (stderr).

use std::str::FromStr;

use anyhow::{Context, bail};
use vendbox_core::Usdc;
use vendbox_pay::Wallet;
use vendbox_pay::client::Challenge;
use vendbox_pay::wire::{self, SettlementResponse};

#[derive(Debug, clap::Args)]
pub(crate) struct FetchArgs {
    /// The URL.
    url: String,
    /// HTTP method.
    #[arg(long, short = 'X', default_value = "GET")]
    method: String,
    /// JSON request body.
    #[arg(long, short = 'd', value_name = "JSON")]
    data: Option<String>,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(long = "header", short = 'H', value_name = "HEADER")]
    headers: Vec<String>,
    /// Pay at most this much USDC for the request.
    #[arg(long, default_value = "0.10", value_name = "USDC")]
    max_price: Usdc,
    /// The payer's private key.
    #[arg(long, env = "VENDBOX_WALLET_KEY", hide_env_values = true, value_name = "HEX")]
    wallet_key: Option<String>,
}

pub(crate) async fn run(args: FetchArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let method = reqwest::Method::from_str(&args.method.to_ascii_uppercase()).context("--method")?;
    let request = |payment: Option<(&str, &str)>| {
        let mut r = http.request(method.clone(), &args.url);
        for h in &args.headers {
            if let Some((name, value)) = h.split_once(':') {
                r = r.header(name.trim(), value.trim());
            }
        }
        if let Some(body) = &args.data {
            r = r.header("content-type", "application/json").body(body.clone());
        }
        if let Some((name, value)) = payment {
            r = r.header(name, value);
        }
        r
    };
    let first = request(None).send().await.with_context(|| format!("requesting {}", args.url))?;
    if first.status() != reqwest::StatusCode::PAYMENT_REQUIRED {
        return print_response(first).await;
    }
    let required =
        first.headers().get(wire::PAYMENT_REQUIRED).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = first.bytes().await?;
    let challenge = Challenge::read(required.as_deref(), &body).map_err(anyhow::Error::msg)?;
    let (atomic, network) =
        challenge.price().context("the 402 offers no exact payment vendbox fetch can make")?;
    let price = Usdc(atomic);
    eprintln!("vendbox fetch: {} asks {price} on {network}", args.url);
    if price > args.max_price {
        bail!("the price {price} is above --max-price {}; nothing was paid", args.max_price);
    }
    let key = args.wallet_key.as_deref().context("set VENDBOX_WALLET_KEY (or --wallet-key) to pay")?;
    let signer = Wallet::from_str(key.trim())
        .map_err(anyhow::Error::msg)
        .context("VENDBOX_WALLET_KEY is not a private key")?;
    let (name, value) = challenge.pay(&signer, vendbox_pay::exact::unix_now()).map_err(anyhow::Error::msg)?;
    let paid = request(Some((name, &value))).send().await.context("sending the payment")?;
    let receipt = [wire::PAYMENT_RESPONSE, wire::X_PAYMENT_RESPONSE]
        .into_iter()
        .find_map(|h| paid.headers().get(h).and_then(|v| v.to_str().ok()))
        .and_then(|h| wire::decode_header::<SettlementResponse>(h).ok());
    let payment_id =
        paid.headers().get("vendbox-payment-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let status = paid.status();
    print_response(paid).await?;
    match receipt {
        Some(r) => eprintln!(
            "vendbox fetch: paid {price} from {}: transaction {} on {}{}",
            signer.address(),
            r.transaction,
            r.network,
            payment_id.map(|id| format!(", payment {id}")).unwrap_or_default()
        ),
        None => eprintln!(
            "vendbox fetch: no receipt came back ({status}); nothing was charged unless a receipt says so"
        ),
    }
    Ok(())
}

async fn print_response(response: reqwest::Response) -> anyhow::Result<()> {
    let status = response.status();
    eprintln!("vendbox fetch: HTTP {status}");
    let text = response.text().await?;
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(json) => println!("{}", serde_json::to_string_pretty(&json)?),
        Err(_) => println!("{text}"),
    }
    if status.is_success() { Ok(()) } else { bail!("the server answered {status}") }
}
