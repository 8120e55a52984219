//! `vendbox fetch URL`: an HTTP client that pays x402 or MPP (the "Payment" scheme's `evm`
//! charge, `--pay mpp`). It reads the 402, shows the price, pays from `VENDBOX_WALLET_KEY` only
//! up to `--max-price`, and prints the response (stdout) and the receipt (stderr).

use std::str::FromStr;

use anyhow::{Context, bail};
use vendbox_core::Usdc;
use vendbox_pay::Wallet;
use vendbox_pay::client::Challenge;
use vendbox_pay::mpp::client::{self as mpp, NonceDerivation};
use vendbox_pay::mpp::{ChallengeFields, PAYMENT_RECEIPT, WWW_AUTHENTICATE};
use vendbox_pay::wire::{self, SettlementResponse};

/// How `vendbox fetch` pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Scheme {
    /// x402 when the 402 offers it, MPP otherwise.
    Auto,
    /// x402 (`PAYMENT-SIGNATURE`, or `X-PAYMENT` for v1).
    X402,
    /// MPP: `Authorization: Payment` with an EIP-3009 authorization.
    Mpp,
}

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
    /// Pay with x402 or MPP.
    #[arg(long = "pay", value_enum, default_value = "auto")]
    scheme: Scheme,
    /// The token's EIP-712 name and version, for MPP when the 402 offers no x402 terms that
    /// name them.
    #[arg(long, default_value = "USDC:2", value_name = "NAME:VERSION")]
    token_domain: String,
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
    let offers: Vec<ChallengeFields> = first
        .headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| mpp::parse_challenges(v).unwrap_or_default())
        .filter(|c| c.method == "evm" && c.intent == "charge")
        .collect();
    let body = first.bytes().await?;
    let x402 = Challenge::read(required.as_deref(), &body).ok();
    let scheme = match (args.scheme, &x402) {
        (Scheme::Auto, Some(_)) => Scheme::X402,
        (Scheme::Auto, None) => Scheme::Mpp,
        (scheme, _) => scheme,
    };
    let (atomic, network) = match (scheme, &x402, offers.first()) {
        (Scheme::Mpp, _, Some(offer)) => mpp_price(offer).context("the MPP challenge names no price")?,
        (Scheme::Mpp, _, None) => bail!("the 402 offers no MPP evm charge"),
        (_, Some(x402), _) => {
            x402.price().context("the 402 offers no exact payment vendbox fetch can make")?
        }
        (_, None, _) => bail!("the 402 offers no x402 payment"),
    };
    let price = Usdc(atomic);
    eprintln!("vendbox fetch: {} asks {price} on {network}", args.url);
    if price > args.max_price {
        bail!("the price {price} is above --max-price {}; nothing was paid", args.max_price);
    }
    let key = args.wallet_key.as_deref().context("set VENDBOX_WALLET_KEY (or --wallet-key) to pay")?;
    let signer = Wallet::from_str(key.trim())
        .map_err(anyhow::Error::msg)
        .context("VENDBOX_WALLET_KEY is not a private key")?;
    let (name, value) = match (scheme, &x402, offers.first()) {
        (Scheme::Mpp, _, Some(offer)) => {
            let (token, version) = token_domain(x402.as_ref(), &args.token_domain);
            let value = mpp::pay(&signer, offer, &token, &version, NonceDerivation::Concatenated)
                .map_err(anyhow::Error::msg)?;
            ("authorization", value)
        }
        (_, Some(x402), _) => {
            x402.pay(&signer, vendbox_pay::exact::unix_now()).map_err(anyhow::Error::msg)?
        }
        _ => bail!("nothing to pay with"),
    };
    let paid = request(Some((name, &value))).send().await.context("sending the payment")?;
    let receipt = receipt_of(paid.headers(), &network);
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

/// The receipt in `headers`: x402's (either version), or MPP's `Payment-Receipt` (on `network`).
fn receipt_of(headers: &reqwest::header::HeaderMap, network: &str) -> Option<SettlementResponse> {
    let x402 = [wire::PAYMENT_RESPONSE, wire::X_PAYMENT_RESPONSE]
        .into_iter()
        .find_map(|h| headers.get(h).and_then(|v| v.to_str().ok()))
        .and_then(|h| wire::decode_header::<SettlementResponse>(h).ok());
    x402.or_else(|| {
        let receipt = vendbox_pay::mpp::decode_json(headers.get(PAYMENT_RECEIPT)?.to_str().ok()?)?;
        Some(SettlementResponse {
            success: receipt["status"] == "success",
            transaction: receipt["reference"].as_str()?.to_owned(),
            network: network.to_owned(),
            payer: None,
            error_reason: None,
        })
    })
}

/// The price (atomic units) and chain of an MPP `evm` charge.
fn mpp_price(offer: &ChallengeFields) -> Option<(u64, String)> {
    let request = offer.request_json()?;
    let amount = request["amount"].as_str()?.parse().ok()?;
    Some((amount, format!("eip155:{}", request["methodDetails"]["chainId"].as_u64()?)))
}

/// The token's EIP-712 domain: from the 402's x402 terms when it has them, else `fallback`
/// (`NAME:VERSION`).
fn token_domain(x402: Option<&Challenge>, fallback: &str) -> (String, String) {
    let extra = x402.and_then(|c| {
        c.v2.as_ref()
            .and_then(|v2| v2.accepts.first())
            .and_then(|r| r.extra.clone())
            .or_else(|| c.v1.as_ref().and_then(|v1| v1.accepts.first()).and_then(|r| r.extra.clone()))
    });
    let named = |name: &str| extra.as_ref().and_then(|e| e[name].as_str()).map(str::to_owned);
    let (name, version) = fallback.split_once(':').unwrap_or((fallback, "2"));
    (named("name").unwrap_or_else(|| name.to_owned()), named("version").unwrap_or_else(|| version.to_owned()))
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
