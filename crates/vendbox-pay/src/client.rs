//! The payer's side: read a 402, pick what to pay, sign an EIP-3009 authorization and build the
//! payment header. `vendbox fetch` and the tests pay with this.

use alloy::primitives::{B256, U256};
use serde_json::Value;

use crate::eip3009::{Authorization, TokenDomain, signature_hex};
use crate::keys::{EvmAddress, Wallet};
use crate::network::Network;
use crate::wire::{
    self, ExactEvmPayload, PaymentPayloadV1, PaymentPayloadV2, PaymentRequiredV1, PaymentRequiredV2,
    RequirementsV1, RequirementsV2,
};

/// What a 402 offered, in whichever versions it spoke.
#[derive(Debug, Clone, PartialEq)]
pub struct Challenge {
    /// The v2 `PAYMENT-REQUIRED` header, decoded.
    pub v2: Option<PaymentRequiredV2>,
    /// The v1 JSON body.
    pub v1: Option<PaymentRequiredV1>,
}

impl Challenge {
    /// Reads a 402's `PAYMENT-REQUIRED` header and body; an error when neither is x402.
    pub fn read(payment_required: Option<&str>, body: &[u8]) -> Result<Challenge, String> {
        let v2 = payment_required.and_then(|h| wire::decode_header::<PaymentRequiredV2>(h).ok());
        let v1 = serde_json::from_slice::<PaymentRequiredV1>(body).ok().filter(|b| b.x402_version == 1);
        if v2.is_none() && v1.is_none() {
            return Err("the 402 carries no x402 payment requirements".into());
        }
        Ok(Challenge { v2, v1 })
    }

    /// The first `exact` EVM requirement, v2 preferred: the price in atomic units and the
    /// network, for showing before paying.
    pub fn price(&self) -> Option<(u64, String)> {
        if let Some(r) = self.v2.as_ref().and_then(|c| c.accepts.iter().find(|r| r.scheme == "exact")) {
            return r.amount.parse().ok().map(|a| (a, r.network.clone()));
        }
        let r = self.v1.as_ref()?.accepts.iter().find(|r| r.scheme == "exact")?;
        r.max_amount_required.parse().ok().map(|a| (a, r.network.clone()))
    }

    /// Pays the first `exact` requirement, v2 preferred: returns the header name and value to send.
    pub fn pay(&self, signer: &Wallet, now: u64) -> Result<(&'static str, String), String> {
        if let Some(challenge) = &self.v2
            && let Some(r) = challenge.accepts.iter().find(|r| r.scheme == "exact")
        {
            return Ok((wire::PAYMENT_SIGNATURE, pay_v2(signer, r, &challenge.resource, now)?));
        }
        let challenge = self.v1.as_ref().ok_or("the 402 offers no exact payment")?;
        let r = challenge
            .accepts
            .iter()
            .find(|r| r.scheme == "exact")
            .ok_or("the 402 offers no exact payment")?;
        Ok((wire::X_PAYMENT, pay_v1(signer, r, now)?))
    }
}

/// A v1 `X-PAYMENT` header paying `r`.
pub fn pay_v1(signer: &Wallet, r: &RequirementsV1, now: u64) -> Result<String, String> {
    let auth = authorize(signer.address(), &r.pay_to, &r.max_amount_required, now, r.max_timeout_seconds)?;
    let payload = sign(signer, &auth, &r.network, &r.asset, r.extra.as_ref())?;
    let body =
        PaymentPayloadV1 { x402_version: 1, scheme: "exact".into(), network: r.network.clone(), payload };
    Ok(wire::encode_header(&body))
}

/// A v2 `PAYMENT-SIGNATURE` header paying `r` for `resource`.
pub fn pay_v2(
    signer: &Wallet,
    r: &RequirementsV2,
    resource: &wire::Resource,
    now: u64,
) -> Result<String, String> {
    let auth = authorize(signer.address(), &r.pay_to, &r.amount, now, r.max_timeout_seconds)?;
    let payload = sign(signer, &auth, &r.network, &r.asset, r.extra.as_ref())?;
    let body = PaymentPayloadV2 {
        x402_version: 2,
        resource: Some(resource.clone()),
        accepted: r.clone(),
        payload,
        extensions: None,
    };
    Ok(wire::encode_header(&body))
}

/// An authorization from `from` to `pay_to` for `amount`, valid from ten minutes ago for
/// `timeout` seconds, with a fresh random nonce.
pub fn authorize(
    from: EvmAddress,
    pay_to: &str,
    amount: &str,
    now: u64,
    timeout: u64,
) -> Result<Authorization, String> {
    Ok(Authorization {
        from: from.get(),
        to: pay_to.parse().map_err(|_| format!("payTo {pay_to:?} is not an address"))?,
        value: U256::from_str_radix(amount, 10).map_err(|_| format!("amount {amount:?} is not a number"))?,
        valid_after: U256::from(now.saturating_sub(600)),
        // The server picks `timeout`: a hostile one must not overflow the payer.
        valid_before: U256::from(now.saturating_add(timeout.max(60))),
        nonce: random_nonce(),
    })
}

/// Signs `auth` for the token at `asset` on `network`, with the domain named in `extra`.
pub fn sign(
    signer: &Wallet,
    auth: &Authorization,
    network: &str,
    asset: &str,
    extra: Option<&Value>,
) -> Result<ExactEvmPayload, String> {
    let network =
        Network::parse(network).ok_or_else(|| format!("network {network:?} is not an EVM chain"))?;
    let field = |name: &str| {
        extra
            .and_then(|e| e.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("the requirement has no extra.{name} (the token's EIP-712 domain)"))
    };
    let domain = TokenDomain {
        name: field("name")?,
        version: field("version")?,
        chain_id: network.chain_id,
        verifying_contract: asset.parse().map_err(|_| format!("asset {asset:?} is not an address"))?,
    };
    let signature = auth.sign(signer.signer(), &domain).map_err(|e| e.message)?;
    Ok(ExactEvmPayload { signature: signature_hex(&signature), authorization: auth.to_wire() })
}

/// 32 bytes from the operating system's random source.
pub(crate) fn random_nonce() -> B256 {
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    B256::from(bytes)
}
