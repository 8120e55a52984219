//! The x402 wire formats, versions 1 and 2: what a 402 carries, what a client sends back, and the
//! receipt. Field names follow the specification exactly; amounts and times are decimal strings.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::reason::{Reason, Rejection};

/// v1 client header with the payment.
pub const X_PAYMENT: &str = "x-payment";
/// v1 receipt header.
pub const X_PAYMENT_RESPONSE: &str = "x-payment-response";
/// v2 header on a 402 with the requirements.
pub const PAYMENT_REQUIRED: &str = "payment-required";
/// v1-era header on a 402 (`X-Payment-Required`, as VpsAgent documents it): the v1 body, as
/// base64 JSON, for clients that read the terms from a header.
pub const X_PAYMENT_REQUIRED: &str = "x-payment-required";
/// v2 client header with the payment.
pub const PAYMENT_SIGNATURE: &str = "payment-signature";
/// v2 receipt header.
pub const PAYMENT_RESPONSE: &str = "payment-response";

/// The largest payment header vendbox reads. An honest `exact` payment is well under 2 KiB.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// What one accepted way of paying asks for, version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequirementsV1 {
    /// Always `exact` here.
    pub scheme: String,
    /// The network's v1 name (`base-sepolia`).
    pub network: String,
    /// Atomic units, as a decimal string.
    pub max_amount_required: String,
    /// The same as `max_amount_required`: Coinbase's facilitator (CDP) reads `amount` in v1
    /// requirements too, so vendbox sends both; absent in bodies from the specification's era.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    /// The URL being paid for.
    pub resource: String,
    /// What is being paid for, for people.
    pub description: String,
    /// Media type of the paid response.
    pub mime_type: String,
    /// Who receives the money.
    pub pay_to: String,
    /// How long the payment may take to settle.
    pub max_timeout_seconds: u64,
    /// The token contract.
    pub asset: String,
    /// Shape of the paid response, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    /// The token's EIP-712 domain: `{"name": "USDC", "version": "2"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Value>,
}

/// A v1 402 body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequiredV1 {
    /// Always 1.
    pub x402_version: u8,
    /// Why the payment is required (or why the one sent was refused).
    pub error: String,
    /// Ways to pay.
    pub accepts: Vec<RequirementsV1>,
}

/// The resource a v2 payment is for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    /// Its URL.
    pub url: String,
    /// What it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
}

/// What one accepted way of paying asks for, version 2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequirementsV2 {
    /// Always `exact` here.
    pub scheme: String,
    /// CAIP-2 network (`eip155:8453`).
    pub network: String,
    /// Atomic units, as a decimal string.
    pub amount: String,
    /// The token contract.
    pub asset: String,
    /// Who receives the money.
    pub pay_to: String,
    /// How long the payment may take to settle.
    pub max_timeout_seconds: u64,
    /// The token's EIP-712 domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Value>,
}

/// The v2 `PAYMENT-REQUIRED` header, decoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequiredV2 {
    /// Always 2.
    pub x402_version: u8,
    /// Why the payment is required (or why the one sent was refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What is being paid for.
    pub resource: Resource,
    /// Ways to pay.
    pub accepts: Vec<RequirementsV2>,
    /// Protocol extensions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Value>,
}

/// An EIP-3009 `TransferWithAuthorization`, as the `exact` scheme carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationWire {
    /// Payer.
    pub from: String,
    /// Payee.
    pub to: String,
    /// Atomic units, decimal string.
    pub value: String,
    /// Unix seconds, decimal string: not valid before.
    pub valid_after: String,
    /// Unix seconds, decimal string: not valid from.
    pub valid_before: String,
    /// 32 bytes, hex.
    pub nonce: String,
}

/// The `exact` EVM payload: the signature and what it signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExactEvmPayload {
    /// 65-byte signature, hex.
    pub signature: String,
    /// The signed authorization.
    pub authorization: AuthorizationWire,
}

/// The v1 `X-PAYMENT` header, decoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayloadV1 {
    /// Always 1.
    pub x402_version: u8,
    /// `exact`.
    pub scheme: String,
    /// v1 network name.
    pub network: String,
    /// The signed authorization.
    pub payload: ExactEvmPayload,
}

/// The v2 `PAYMENT-SIGNATURE` header, decoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayloadV2 {
    /// Always 2.
    pub x402_version: u8,
    /// What the client thinks it pays for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<Resource>,
    /// The requirements the client chose, as it received them.
    pub accepted: RequirementsV2,
    /// The signed authorization.
    pub payload: ExactEvmPayload,
    /// Protocol extensions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Value>,
}

/// The receipt: `X-PAYMENT-RESPONSE` (v1) and `PAYMENT-RESPONSE` (v2), decoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettlementResponse {
    /// Whether the money moved.
    pub success: bool,
    /// Transaction hash, empty when nothing moved.
    pub transaction: String,
    /// The network, as the payment's version names it.
    pub network: String,
    /// Who paid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
}

/// Base64 of the JSON of `value`, as x402 headers carry it.
pub fn encode_header<T: Serialize>(value: &T) -> String {
    // Serialising these plain structs cannot fail.
    STANDARD.encode(serde_json::to_vec(value).unwrap_or_default())
}

/// Reads a base64 JSON header, refusing oversized, non-base64 and malformed ones.
pub fn decode_header<T: DeserializeOwned>(header: &str) -> Result<T, Rejection> {
    if header.len() > MAX_HEADER_BYTES {
        return Err(Rejection::new(
            Reason::HeaderTooLarge,
            format!("the payment header has {} bytes; the limit is {MAX_HEADER_BYTES}", header.len()),
        ));
    }
    let bytes = STANDARD
        .decode(header.trim())
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(header.trim()))
        .map_err(|_| Rejection::new(Reason::HeaderEncoding, "the payment header is not base64"))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Rejection::new(Reason::HeaderJson, format!("the payment header is not a valid x402 payload: {e}"))
    })
}

/// The protocol version a decoded payment header claims, read before its full shape.
pub fn header_version(header: &str) -> Result<u64, Rejection> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Versioned {
        x402_version: Option<Value>,
    }
    let v: Versioned = decode_header(header)?;
    match v.x402_version {
        Some(Value::Number(n)) => {
            n.as_u64().ok_or_else(|| Rejection::new(Reason::Version, "x402Version must be 1 or 2"))
        }
        _ => Err(Rejection::new(Reason::HeaderJson, "the payment header has no numeric x402Version")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The v1 402 body from the x402 specification's example.
    const SPEC_V1_REQUIRED: &str = r#"{
      "x402Version": 1,
      "error": "X-PAYMENT header is required",
      "accepts": [{
        "scheme": "exact",
        "network": "base-sepolia",
        "maxAmountRequired": "10000",
        "resource": "https://api.example.com/premium-data",
        "description": "Access to premium market data",
        "mimeType": "application/json",
        "payTo": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
        "maxTimeoutSeconds": 60,
        "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
        "extra": {"name": "USDC", "version": "2"}
      }]
    }"#;

    /// The v2 payment payload from the x402 specification's example.
    const SPEC_V2_PAYLOAD: &str = r#"{
      "x402Version": 2,
      "resource": {
        "url": "https://api.example.com/premium-data",
        "description": "Access to premium market data",
        "mimeType": "application/json"
      },
      "accepted": {
        "scheme": "exact",
        "network": "eip155:84532",
        "amount": "10000",
        "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
        "payTo": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
        "maxTimeoutSeconds": 60,
        "extra": {"name": "USDC", "version": "2"}
      },
      "payload": {
        "signature": "0x2d6a7588d6acca505cbf0d9a4a227e0c52c6c34008c8e8986a1283259764173608a2ce6496642e377d6da8dbbf5836e9bd15092f9ecab05ded3d6293af148b571c",
        "authorization": {
          "from": "0x857b06519E91e3A54538791bDbb0E22373e36b66",
          "to": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
          "value": "10000",
          "validAfter": "1740672089",
          "validBefore": "1740672154",
          "nonce": "0xf3746613c2d920b5fdabc0856f2aeb2d4f88ee6037b8cc5d04a71a4462f13480"
        }
      }
    }"#;

    #[test]
    fn spec_examples_round_trip() {
        let v1: PaymentRequiredV1 = serde_json::from_str(SPEC_V1_REQUIRED).unwrap();
        assert_eq!(v1.accepts[0].max_amount_required, "10000");
        assert_eq!(v1.accepts[0].extra.as_ref().unwrap()["version"], "2");
        let again: Value = serde_json::to_value(&v1).unwrap();
        assert_eq!(again, serde_json::from_str::<Value>(SPEC_V1_REQUIRED).unwrap());

        let v2: PaymentPayloadV2 = serde_json::from_str(SPEC_V2_PAYLOAD).unwrap();
        assert_eq!(v2.accepted.network, "eip155:84532");
        assert_eq!(v2.payload.authorization.valid_before, "1740672154");
        let again: Value = serde_json::to_value(&v2).unwrap();
        assert_eq!(again, serde_json::from_str::<Value>(SPEC_V2_PAYLOAD).unwrap());
    }

    #[test]
    fn headers_are_base64_json() {
        let v2: PaymentPayloadV2 = serde_json::from_str(SPEC_V2_PAYLOAD).unwrap();
        let header = encode_header(&v2);
        assert_eq!(header_version(&header).unwrap(), 2);
        assert_eq!(decode_header::<PaymentPayloadV2>(&header).unwrap(), v2);
    }

    #[test]
    fn bad_headers_say_why() {
        assert_eq!(decode_header::<Value>("%%%").unwrap_err().reason, Reason::HeaderEncoding);
        assert_eq!(decode_header::<Value>(&STANDARD.encode("{nope")).unwrap_err().reason, Reason::HeaderJson);
        let huge = "A".repeat(MAX_HEADER_BYTES + 4);
        assert_eq!(decode_header::<Value>(&huge).unwrap_err().reason, Reason::HeaderTooLarge);
        assert_eq!(header_version(&STANDARD.encode("{}")).unwrap_err().reason, Reason::HeaderJson);
        let v2: PaymentPayloadV2 = serde_json::from_str(SPEC_V2_PAYLOAD).unwrap();
        let mut json = serde_json::to_value(&v2).unwrap();
        json["payload"]["authorization"].as_object_mut().unwrap().remove("nonce");
        let header = STANDARD.encode(json.to_string());
        assert_eq!(decode_header::<PaymentPayloadV2>(&header).unwrap_err().reason, Reason::HeaderJson);
    }
}
