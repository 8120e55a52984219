//! The `exact` scheme on EVM: what vendbox asks for a charge (the requirements of both protocol
//! versions, built from one set of terms), reading a payment from the request headers, and every
//! check that needs no chain: version, scheme, network, requirements, payee, amount, time window
//! and signer.

use alloy::primitives::{Address, Signature, U256};
use serde_json::{Value, json};

use crate::eip3009::{Authorization, TokenDomain, parse_signature};
use crate::keys::EvmAddress;
use crate::network::Network;
use crate::reason::{Reason, Rejection};
use crate::wire::{
    self, PaymentPayloadV1, PaymentPayloadV2, PaymentRequiredV1, PaymentRequiredV2, RequirementsV1,
    RequirementsV2, Resource,
};

/// The only scheme vendbox takes.
pub const SCHEME: &str = "exact";

/// A payment must stay valid at least this long after it arrives, to leave time to settle.
pub const SETTLE_MARGIN_SECS: u64 = 6;

/// Now, in Unix seconds: the clock `validAfter` and `validBefore` are read against.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// How vendbox takes money: one token on one chain, paid to one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acceptance {
    /// The chain.
    pub(crate) network: Network,
    /// The token contract.
    pub(crate) asset: Address,
    /// The token's EIP-712 name.
    pub(crate) asset_name: String,
    /// The token's EIP-712 version.
    pub(crate) asset_version: String,
    /// The operator's payout address.
    pub(crate) pay_to: Address,
    /// How long a client has to get its payment settled.
    pub(crate) max_timeout_seconds: u64,
}

impl Acceptance {
    /// Payments of `asset` (its EIP-712 name and version) on `network`, to `pay_to`, which a
    /// client has `max_timeout_seconds` to get settled.
    pub fn new(
        network: Network,
        asset: EvmAddress,
        asset_name: &str,
        asset_version: &str,
        pay_to: EvmAddress,
        max_timeout_seconds: u64,
    ) -> Acceptance {
        Acceptance {
            network,
            asset: asset.get(),
            asset_name: asset_name.to_owned(),
            asset_version: asset_version.to_owned(),
            pay_to: pay_to.get(),
            max_timeout_seconds,
        }
    }

    /// The chain.
    pub fn network(&self) -> Network {
        self.network
    }

    /// The token contract.
    pub fn asset(&self) -> EvmAddress {
        self.asset.into()
    }

    /// The operator's payout address.
    pub fn pay_to(&self) -> EvmAddress {
        self.pay_to.into()
    }

    /// The token's EIP-712 domain.
    pub fn domain(&self) -> TokenDomain {
        TokenDomain {
            name: self.asset_name.clone(),
            version: self.asset_version.clone(),
            chain_id: self.network.chain_id,
            verifying_contract: self.asset,
        }
    }

    fn extra(&self) -> Value {
        json!({ "name": self.asset_name, "version": self.asset_version })
    }
}

pub use crate::method::Charge;

/// The requirements for one charge, in both protocol versions.
#[derive(Debug, Clone, PartialEq)]
pub struct Requirements {
    /// How vendbox takes money.
    pub acceptance: Acceptance,
    /// What this payment is for.
    pub charge: Charge,
}

impl Requirements {
    /// Requirements for `charge`.
    pub fn new(acceptance: Acceptance, charge: Charge) -> Self {
        Self { acceptance, charge }
    }

    /// The price in atomic units.
    pub fn amount(&self) -> U256 {
        U256::from(self.charge.amount.atomic())
    }

    /// Version 1 form.
    pub fn v1(&self) -> RequirementsV1 {
        RequirementsV1 {
            scheme: SCHEME.into(),
            network: self.acceptance.network.v1_label(),
            max_amount_required: self.charge.amount.atomic().to_string(),
            amount: Some(self.charge.amount.atomic().to_string()),
            resource: self.charge.resource.clone(),
            description: self.charge.description.clone(),
            mime_type: self.charge.mime_type.clone(),
            pay_to: self.acceptance.pay_to.to_checksum(None),
            max_timeout_seconds: self.acceptance.max_timeout_seconds,
            asset: self.acceptance.asset.to_checksum(None),
            output_schema: None,
            extra: Some(self.acceptance.extra()),
        }
    }

    /// Version 2 form.
    pub fn v2(&self) -> RequirementsV2 {
        RequirementsV2 {
            scheme: SCHEME.into(),
            network: self.acceptance.network.caip2(),
            amount: self.charge.amount.atomic().to_string(),
            asset: self.acceptance.asset.to_checksum(None),
            pay_to: self.acceptance.pay_to.to_checksum(None),
            max_timeout_seconds: self.acceptance.max_timeout_seconds,
            extra: Some(self.acceptance.extra()),
        }
    }

    /// The resource, as v2 describes it.
    pub fn resource(&self) -> Resource {
        Resource {
            url: self.charge.resource.clone(),
            description: Some(self.charge.description.clone()),
            mime_type: Some(self.charge.mime_type.clone()),
        }
    }

    /// The 402: the v1 body and the v2 `PAYMENT-REQUIRED` header, for the same charge.
    pub fn challenge(&self, error: &str) -> (PaymentRequiredV1, PaymentRequiredV2) {
        let v1 = PaymentRequiredV1 { x402_version: 1, error: error.to_owned(), accepts: vec![self.v1()] };
        let v2 = PaymentRequiredV2 {
            x402_version: 2,
            error: Some(error.to_owned()),
            resource: self.resource(),
            accepts: vec![self.v2()],
            extensions: None,
        };
        (v1, v2)
    }

    fn accepted_matches(&self, accepted: &RequirementsV2) -> Result<(), Rejection> {
        let ours = self.v2();
        let same_address = |a: &str, b: &str| a.trim().eq_ignore_ascii_case(b);
        let differs = if accepted.scheme != ours.scheme {
            Some("scheme")
        } else if accepted.network != ours.network {
            Some("network")
        } else if accepted.amount.trim() != ours.amount {
            Some("amount")
        } else if !same_address(&accepted.asset, &ours.asset) {
            Some("asset")
        } else if !same_address(&accepted.pay_to, &ours.pay_to) {
            Some("payTo")
        } else if accepted.max_timeout_seconds != ours.max_timeout_seconds {
            Some("maxTimeoutSeconds")
        } else if accepted.extra.is_some() && accepted.extra != ours.extra {
            Some("extra")
        } else {
            None
        };
        match differs {
            Some(field) => Err(Rejection::new(
                Reason::Requirements,
                format!("accepted.{field} is not what vendbox offered; pay one of the 402's accepts as sent"),
            )),
            None => Ok(()),
        }
    }
}

/// Which protocol version a payment came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `X-PAYMENT`.
    V1,
    /// `PAYMENT-SIGNATURE`.
    V2,
}

impl Version {
    /// 1 or 2.
    pub fn number(self) -> u8 {
        match self {
            Version::V1 => 1,
            Version::V2 => 2,
        }
    }
}

/// A payment as sent, decoded but not yet checked.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant, reason = "one per request, never stored in bulk")]
pub enum SentPayment {
    /// Version 1.
    V1(PaymentPayloadV1),
    /// Version 2.
    V2(PaymentPayloadV2),
}

impl SentPayment {
    /// Reads the payment from the request's headers: `PAYMENT-SIGNATURE` (v2) first, then
    /// `X-PAYMENT` (v1). `None` when the request carries neither.
    pub fn from_headers(v2: Option<&str>, v1: Option<&str>) -> Option<Result<SentPayment, Rejection>> {
        let (header, expected) = match (v2, v1) {
            (Some(h), _) => (h, 2),
            (None, Some(h)) => (h, 1),
            (None, None) => return None,
        };
        Some(Self::decode(header, expected))
    }

    fn decode(header: &str, expected: u64) -> Result<SentPayment, Rejection> {
        let version = wire::header_version(header)?;
        if version != expected {
            return Err(Rejection::new(
                Reason::Version,
                format!("x402Version {version} arrived in the version {expected} header"),
            ));
        }
        match version {
            1 => wire::decode_header(header).map(SentPayment::V1),
            2 => wire::decode_header(header).map(SentPayment::V2),
            _ => unreachable!("checked above"),
        }
    }

    /// Its protocol version.
    pub fn version(&self) -> Version {
        match self {
            SentPayment::V1(_) => Version::V1,
            SentPayment::V2(_) => Version::V2,
        }
    }

    /// The JSON as sent, for a remote facilitator and the record.
    pub fn to_json(&self) -> Value {
        match self {
            SentPayment::V1(p) => serde_json::to_value(p),
            SentPayment::V2(p) => serde_json::to_value(p),
        }
        .unwrap_or(Value::Null)
    }

    fn payload(&self) -> &wire::ExactEvmPayload {
        match self {
            SentPayment::V1(p) => &p.payload,
            SentPayment::V2(p) => &p.payload,
        }
    }
}

/// A payment whose every off-chain check passed.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedPayment {
    /// The payment as sent.
    pub sent: SentPayment,
    /// Its authorization.
    pub authorization: Authorization,
    /// Its signature, made by `authorization.from`.
    pub signature: Signature,
}

impl CheckedPayment {
    /// Who pays.
    pub fn payer(&self) -> Address {
        self.authorization.from
    }
}

/// Every check that needs no chain, in the order a client can fix them. `now` is Unix seconds.
pub fn check(sent: SentPayment, requirements: &Requirements, now: u64) -> Result<CheckedPayment, Rejection> {
    let acceptance = &requirements.acceptance;
    match &sent {
        SentPayment::V1(p) => {
            if p.scheme != SCHEME {
                return Err(unsupported_scheme(&p.scheme));
            }
            if Network::parse(&p.network) != Some(acceptance.network) {
                return Err(wrong_network(&p.network, acceptance.network));
            }
        }
        SentPayment::V2(p) => {
            if p.accepted.scheme != SCHEME {
                return Err(unsupported_scheme(&p.accepted.scheme));
            }
            if Network::parse(&p.accepted.network) != Some(acceptance.network) {
                return Err(wrong_network(&p.accepted.network, acceptance.network));
            }
            requirements.accepted_matches(&p.accepted)?;
        }
    }
    let payload = sent.payload();
    let authorization = Authorization::from_wire(&payload.authorization)?;
    if authorization.to != acceptance.pay_to {
        return Err(Rejection::new(
            Reason::RecipientMismatch,
            format!("the authorization pays {}; vendbox's payee is {}", authorization.to, acceptance.pay_to),
        ));
    }
    let amount = requirements.amount();
    if authorization.value != amount {
        return Err(Rejection::new(
            Reason::Value,
            format!(
                "the authorization is for {} atomic units; the price is exactly {amount}",
                authorization.value
            ),
        ));
    }
    if authorization.valid_after > U256::from(now) {
        return Err(Rejection::new(
            Reason::ValidAfter,
            format!("the authorization is valid only after {}; it is now {now}", authorization.valid_after),
        ));
    }
    if authorization.valid_before <= U256::from(now.saturating_add(SETTLE_MARGIN_SECS)) {
        return Err(Rejection::new(
            Reason::ValidBefore,
            format!(
                "the authorization expires at {}; it must stay valid at least {SETTLE_MARGIN_SECS} s after {now}",
                authorization.valid_before
            ),
        ));
    }
    let signature = parse_signature(&payload.signature)?;
    let signer = authorization.recover_signer(&signature, &acceptance.domain())?;
    if signer != authorization.from {
        return Err(Rejection::new(
            Reason::Signature,
            format!(
                "the signature is not {}'s over these terms on {} (token {})",
                authorization.from, acceptance.network, acceptance.asset
            ),
        ));
    }
    Ok(CheckedPayment { sent, authorization, signature })
}

fn unsupported_scheme(scheme: &str) -> Rejection {
    Rejection::new(Reason::Scheme, format!("scheme {scheme:?} is not offered; vendbox takes \"exact\""))
}

fn wrong_network(sent: &str, ours: Network) -> Rejection {
    Rejection::new(
        Reason::Network,
        format!("network {sent:?} is not offered; vendbox takes {} ({})", ours.caip2(), ours.v1_label()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client;
    use crate::keys::Wallet;
    use vendbox_core::Usdc;

    const NOW: u64 = 1_800_000_000;

    fn requirements() -> Requirements {
        Requirements::new(
            Acceptance {
                network: Network::new(84532),
                asset: Address::repeat_byte(0xaa),
                asset_name: "USDC".into(),
                asset_version: "2".into(),
                pay_to: Address::repeat_byte(0xbb),
                max_timeout_seconds: 300,
            },
            Charge {
                amount: Usdc(10_000),
                resource: "http://127.0.0.1:8402/catalog".into(),
                description: "VpsAgent catalog".into(),
                mime_type: "application/json".into(),
                kind: crate::method::ChargeKind::Other,
            },
        )
    }

    fn v2_paid_by(signer: &Wallet, r: &Requirements) -> PaymentPayloadV2 {
        let header = client::pay_v2(signer, &r.v2(), &r.resource(), NOW).unwrap();
        wire::decode_header(&header).unwrap()
    }

    fn v1_paid_by(signer: &Wallet, r: &Requirements) -> PaymentPayloadV1 {
        wire::decode_header(&client::pay_v1(signer, &r.v1(), NOW).unwrap()).unwrap()
    }

    fn reason(sent: SentPayment) -> Reason {
        check(sent, &requirements(), NOW).unwrap_err().reason
    }

    #[test]
    fn honest_payments_pass_in_both_versions() {
        let signer = Wallet::random();
        let r = requirements();
        let v2 = check(SentPayment::V2(v2_paid_by(&signer, &r)), &r, NOW).unwrap();
        assert_eq!(EvmAddress::from(v2.payer()), signer.address());
        let v1 = check(SentPayment::V1(v1_paid_by(&signer, &r)), &r, NOW).unwrap();
        assert_eq!(EvmAddress::from(v1.payer()), signer.address());
    }

    #[test]
    fn the_402_offers_one_charge_in_both_versions() {
        let (v1, v2) = requirements().challenge("payment required");
        assert_eq!(v1.accepts[0].network, "base-sepolia");
        assert_eq!(v2.accepts[0].network, "eip155:84532");
        assert_eq!(v1.accepts[0].max_amount_required, v2.accepts[0].amount);
        assert_eq!(v1.accepts[0].amount.as_ref(), Some(&v2.accepts[0].amount), "CDP reads both");
        assert_eq!(v1.accepts[0].asset, v2.accepts[0].asset);
        assert_eq!(v1.accepts[0].pay_to, v2.accepts[0].pay_to);
        assert_eq!(v2.accepts[0].extra, Some(json!({"name": "USDC", "version": "2"})));
        assert_eq!(v2.resource.url, v1.accepts[0].resource);
    }

    #[test]
    fn each_wrong_term_has_its_reason() {
        let signer = Wallet::random();
        let honest = requirements();

        let mut other = honest.clone();
        other.acceptance.pay_to = Address::repeat_byte(0xcc);
        let mut p = v1_paid_by(&signer, &other);
        p.network = "base-sepolia".into();
        assert_eq!(reason(SentPayment::V1(p)), Reason::RecipientMismatch);

        for atomic in [9_999, 10_001] {
            let mut other = honest.clone();
            other.charge.amount = Usdc(atomic);
            assert_eq!(reason(SentPayment::V1(v1_paid_by(&signer, &other))), Reason::Value, "{atomic}");
        }

        let mut other = honest.clone();
        other.acceptance.asset = Address::repeat_byte(0xdd);
        assert_eq!(reason(SentPayment::V1(v1_paid_by(&signer, &other))), Reason::Signature);
        assert_eq!(reason(SentPayment::V2(v2_paid_by(&signer, &other))), Reason::Requirements);

        let mut other = honest.clone();
        other.acceptance.network = Network::new(8453);
        assert_eq!(reason(SentPayment::V1(v1_paid_by(&signer, &other))), Reason::Network);
        let mut p = v1_paid_by(&signer, &other);
        p.network = "base-sepolia".into();
        assert_eq!(reason(SentPayment::V1(p)), Reason::Signature, "signed for another chain id");

        let mut p = v2_paid_by(&signer, &honest);
        p.accepted.max_timeout_seconds = 1;
        assert_eq!(reason(SentPayment::V2(p)), Reason::Requirements);
        let mut p = v2_paid_by(&signer, &honest);
        p.accepted.scheme = "upto".into();
        assert_eq!(reason(SentPayment::V2(p)), Reason::Scheme);
    }

    #[test]
    fn time_window_and_signer_are_checked() {
        let signer = Wallet::random();
        let r = requirements();
        let early = check(SentPayment::V2(v2_paid_by(&signer, &r)), &r, NOW - 700).unwrap_err();
        assert_eq!(early.reason, Reason::ValidAfter);
        let late = check(SentPayment::V2(v2_paid_by(&signer, &r)), &r, NOW + 300).unwrap_err();
        assert_eq!(late.reason, Reason::ValidBefore);

        let mut p = v2_paid_by(&signer, &r);
        p.payload.authorization.from = Wallet::random().address().to_string();
        assert_eq!(reason(SentPayment::V2(p)), Reason::Signature, "signed by another key");
        let mut p = v2_paid_by(&signer, &r);
        p.payload.signature = format!("0x{}1b", "00".repeat(64));
        assert_eq!(reason(SentPayment::V2(p)), Reason::Signature);
    }

    #[test]
    fn headers_pick_their_version() {
        let signer = Wallet::random();
        let r = requirements();
        let v2 = client::pay_v2(&signer, &r.v2(), &r.resource(), NOW).unwrap();
        let v1 = client::pay_v1(&signer, &r.v1(), NOW).unwrap();
        assert!(SentPayment::from_headers(None, None).is_none());
        assert_eq!(SentPayment::from_headers(Some(&v2), Some(&v1)).unwrap().unwrap().version(), Version::V2);
        assert_eq!(SentPayment::from_headers(None, Some(&v1)).unwrap().unwrap().version(), Version::V1);
        let crossed = SentPayment::from_headers(None, Some(&v2)).unwrap().unwrap_err();
        assert_eq!(crossed.reason, Reason::Version);
    }
}
