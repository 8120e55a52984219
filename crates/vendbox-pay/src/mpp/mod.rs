//! MPP, the "Payment" HTTP authentication scheme (the IETF draft `draft-httpauth-payment`): its
//! wire forms, written here rather than taken from the `mpp` crate, which switches on
//! `serde_json`'s `preserve_order` for every crate of the workspace. A challenge is a
//! `WWW-Authenticate: Payment id=…, realm=…, method=…, intent=…, request=…, expires=…, digest=…,
//! opaque=…` header whose `id` is an HMAC-SHA256 of its other fields ([`BindingSecret`]), so
//! that vendbox verifies an echoed challenge without storing it; a credential is
//! `Authorization: Payment <base64url JSON>` ([`Credential`]); a receipt is `Payment-Receipt`
//! ([`receipt_header`]); a refusal is an RFC 9457 problem ([`problem`]). The `evm` method's
//! `charge` intent is [`MppEvmCharge`]; [`client`] pays such challenges.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::Sha256;

use crate::reason::{Reason, Rejection};

pub mod client;
pub mod evm;

pub use evm::MppEvmCharge;

/// Response header carrying a challenge (one per accepted method and intent).
pub const WWW_AUTHENTICATE: &str = "www-authenticate";
/// Request header carrying a credential.
pub const AUTHORIZATION: &str = "authorization";
/// Response header carrying a receipt (2xx answers only).
pub const PAYMENT_RECEIPT: &str = "payment-receipt";
/// The scheme's name.
pub const SCHEME: &str = "Payment";
/// Base URI of the scheme's problem types.
pub const PROBLEM_BASE: &str = "https://paymentauth.org/problems/";

/// The largest credential read: far above any honest one (the draft asks for 4 KiB).
const MAX_CREDENTIAL_BYTES: usize = 16 * 1024;

/// The secret that binds challenge ids to their fields. Never shown by `Debug`.
#[derive(Clone)]
pub struct BindingSecret(Vec<u8>);

impl std::fmt::Debug for BindingSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BindingSecret(…)")
    }
}

impl BindingSecret {
    /// The fewest bytes a secret may have.
    pub const MIN_BYTES: usize = 32;

    /// A secret of `bytes` (at least [`BindingSecret::MIN_BYTES`] of them).
    pub fn new(bytes: &[u8]) -> Result<BindingSecret, String> {
        if bytes.len() < Self::MIN_BYTES {
            return Err(format!("the MPP challenge secret must have at least {} bytes", Self::MIN_BYTES));
        }
        Ok(BindingSecret(bytes.to_vec()))
    }

    /// A fresh secret from the operating system's random source.
    pub fn random() -> BindingSecret {
        BindingSecret(crate::client::random_nonce().to_vec())
    }

    /// The id bound to `fields` (the draft's seven positional slots joined with `|`).
    pub fn id(&self, fields: &ChallengeFields) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(fields).finalize().into_bytes())
    }

    /// Whether `id` is the id bound to `fields` (compared in constant time).
    pub fn verifies(&self, id: &str, fields: &ChallengeFields) -> bool {
        URL_SAFE_NO_PAD.decode(id).is_ok_and(|tag| self.mac(fields).verify_slice(&tag).is_ok())
    }

    fn mac(&self, fields: &ChallengeFields) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(fields.binding_input().as_bytes());
        mac
    }
}

/// A challenge's fields, as they go on the wire (`request` and `opaque` base64url JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeFields {
    /// The challenge's id (empty before it is bound).
    #[serde(default)]
    pub id: String,
    /// Protection space: vendbox's host.
    #[serde(default)]
    pub realm: String,
    /// Payment method (`evm`).
    #[serde(default)]
    pub method: String,
    /// Intent (`charge`).
    #[serde(default)]
    pub intent: String,
    /// The method's request, JCS JSON in base64url.
    #[serde(default)]
    pub request: String,
    /// When the challenge expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Digest of the request body it was issued for (RFC 9530).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Server correlation data, a JCS JSON string map in base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opaque: Option<String>,
    /// For people; not bound, never relied upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl ChallengeFields {
    /// The HMAC input: `realm|method|intent|request|expires|digest|opaque`, absent optional
    /// fields as empty slots.
    pub fn binding_input(&self) -> String {
        [
            self.realm.as_str(),
            &self.method,
            &self.intent,
            &self.request,
            self.expires.as_deref().unwrap_or_default(),
            self.digest.as_deref().unwrap_or_default(),
            self.opaque.as_deref().unwrap_or_default(),
        ]
        .join("|")
    }

    /// These fields, with `id` bound to them by `secret`.
    #[must_use]
    pub fn bound(mut self, secret: &BindingSecret) -> ChallengeFields {
        self.id = secret.id(&self);
        self
    }

    /// The `WWW-Authenticate` value.
    pub fn to_header(&self) -> String {
        let mut params = vec![
            ("id", self.id.as_str()),
            ("realm", &self.realm),
            ("method", &self.method),
            ("intent", &self.intent),
            ("request", &self.request),
        ];
        for (name, value) in [
            ("expires", &self.expires),
            ("digest", &self.digest),
            ("opaque", &self.opaque),
            ("description", &self.description),
        ] {
            if let Some(value) = value {
                params.push((name, value));
            }
        }
        let params: Vec<String> = params.into_iter().map(|(n, v)| format!("{n}={}", quoted(v))).collect();
        format!("{SCHEME} {}", params.join(", "))
    }

    /// The `request`, decoded.
    pub fn request_json(&self) -> Option<Value> {
        decode_json(&self.request)
    }
}

/// `value` as an RFC 9110 quoted-string.
fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A credential: the echoed challenge, the method's payload and who pays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credential {
    /// The challenge it answers, as the client received it.
    pub challenge: ChallengeFields,
    /// The method's proof of payment.
    pub payload: Value,
    /// Who pays (a DID), if the client says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Credential {
    /// Reads an `Authorization` value (`Payment <base64url JSON>`).
    pub fn from_authorization(value: &str) -> Result<Credential, Rejection> {
        let malformed = |why: &str| Rejection::new(Reason::CredentialMalformed, why.to_owned());
        if value.len() > MAX_CREDENTIAL_BYTES {
            return Err(malformed("the Payment credential is larger than any honest one"));
        }
        let token =
            strip_scheme(value).ok_or_else(|| malformed("send `Authorization: Payment <credential>`"))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(token.trim_end_matches('='))
            .map_err(|_| malformed("the Payment credential is not base64url"))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| malformed(&format!("the Payment credential is not the scheme's JSON: {e}")))
    }

    /// The `Authorization` value.
    pub fn to_authorization(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{SCHEME} {}", URL_SAFE_NO_PAD.encode(json))
    }
}

/// The credential of an `Authorization` value of the Payment scheme; `None` for another scheme.
pub fn strip_scheme(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case(SCHEME).then(|| rest.trim())
}

/// `value` in JCS (RFC 8785) form, for the JSON vendbox itself writes: object keys sorted,
/// no white space. (Numbers are integers and strings ASCII in everything vendbox encodes.)
pub fn canonical_json(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            let members: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical_json(&map[k])))
                .collect();
            format!("{{{}}}", members.join(","))
        }
        Value::Array(items) => {
            format!("[{}]", items.iter().map(canonical_json).collect::<Vec<_>>().join(","))
        }
        other => other.to_string(),
    }
}

/// `value` as JCS JSON in base64url without padding.
pub fn encode_json(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(canonical_json(value))
}

/// Base64url JSON, decoded.
pub fn decode_json(text: &str) -> Option<Value> {
    let bytes = URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The RFC 9530 digest of a body whose SHA-256 is `sha256`: `sha-256=:<base64>:`.
pub fn content_digest(sha256: &[u8; 32]) -> String {
    format!("sha-256=:{}:", STANDARD.encode(sha256))
}

/// The problem type (last path segment) of a refusal with reason `code`, as the draft names
/// them: a challenge that is unknown, not this request's or already used is
/// `invalid-challenge`; one that expired `payment-expired`; an unreadable credential
/// `malformed-credential`; a wrong amount `payment-insufficient`; no credential
/// `payment-required`; a method or intent vendbox does not take `method-unsupported` (a 400);
/// any other proof that does not hold `verification-failed`.
pub fn problem_type(code: &str) -> &'static str {
    match Reason::from_code(code) {
        None if code == "payment_required" => "payment-required",
        None => "verification-failed",
        Some(reason) => match reason {
            Reason::ChallengeInvalid | Reason::BodyDigest | Reason::Replayed | Reason::NonceUsed => {
                "invalid-challenge"
            }
            Reason::ChallengeExpired | Reason::ValidBefore | Reason::ValidAfter => "payment-expired",
            Reason::CredentialMalformed
            | Reason::HeaderEncoding
            | Reason::HeaderJson
            | Reason::HeaderTooLarge
            | Reason::Payload => "malformed-credential",
            Reason::Value => "payment-insufficient",
            Reason::MethodUnsupported => "method-unsupported",
            _ => "verification-failed",
        },
    }
}

/// The RFC 9457 problem details of a refusal with reason `code`: a 402, or a 400 for a method
/// vendbox does not take.
pub fn problem(code: &str, detail: &str, challenge_id: Option<&str>) -> Value {
    let kind = problem_type(code);
    let status = if kind == "method-unsupported" { 400 } else { 402 };
    let title = match kind {
        "payment-required" => "Payment Required",
        "invalid-challenge" => "Invalid Challenge",
        "payment-expired" => "Payment Expired",
        "malformed-credential" => "Malformed Credential",
        "payment-insufficient" => "Payment Insufficient",
        "method-unsupported" => "Method Unsupported",
        _ => "Verification Failed",
    };
    let mut body = Map::new();
    body.insert("type".into(), json!(format!("{PROBLEM_BASE}{kind}")));
    body.insert("title".into(), json!(title));
    body.insert("status".into(), json!(status));
    body.insert("detail".into(), json!(detail));
    body.insert("code".into(), json!(code));
    if let Some(id) = challenge_id {
        body.insert("challengeId".into(), json!(id));
    }
    Value::Object(body)
}

/// A `Payment-Receipt` value: `status`, `method`, `timestamp` (RFC 3339) and `reference`, plus
/// the method's `extra` members.
pub fn receipt_header(method: &str, reference: &str, timestamp: &str, extra: &Value) -> String {
    let mut receipt = json!({
        "status": "success",
        "method": method,
        "timestamp": timestamp,
        "reference": reference,
    });
    if let (Some(receipt), Some(extra)) = (receipt.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            receipt.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    encode_json(&receipt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> ChallengeFields {
        ChallengeFields {
            realm: "vendbox.test".into(),
            method: "evm".into(),
            intent: "charge".into(),
            request: encode_json(&json!({"amount": "1000", "currency": "0xaa"})),
            expires: Some("2030-01-01T00:00:00Z".into()),
            ..ChallengeFields::default()
        }
    }

    #[test]
    fn ids_are_bound_to_every_field_and_to_the_secret() {
        let secret = BindingSecret::new(&[7; 32]).unwrap();
        let bound = fields().bound(&secret);
        assert!(secret.verifies(&bound.id, &bound));
        let other = BindingSecret::new(&[8; 32]).unwrap();
        assert!(!other.verifies(&bound.id, &bound), "another secret");
        for tamper in [
            |f: &mut ChallengeFields| f.realm = "evil.test".into(),
            |f: &mut ChallengeFields| f.request = encode_json(&json!({"amount": "1"})),
            |f: &mut ChallengeFields| f.expires = Some("2099-01-01T00:00:00Z".into()),
            |f: &mut ChallengeFields| f.digest = Some("sha-256=:AAAA:".into()),
            |f: &mut ChallengeFields| f.opaque = Some(encode_json(&json!({"a": "b"}))),
        ] {
            let mut changed = bound.clone();
            tamper(&mut changed);
            assert!(!secret.verifies(&changed.id, &changed), "{changed:?}");
        }
        let mut described = bound.clone();
        described.description = Some("not bound".into());
        assert!(secret.verifies(&described.id, &described), "description is for people only");
        assert!(BindingSecret::new(&[1; 31]).is_err());
    }

    #[test]
    fn the_spec_slots_are_fixed_and_positional() {
        let mut f = fields();
        f.opaque = Some("op".into());
        assert!(f.binding_input().ends_with("|2030-01-01T00:00:00Z||op"), "{}", f.binding_input());
    }

    #[test]
    fn credentials_round_trip_and_junk_is_malformed() {
        let credential =
            Credential { challenge: fields(), payload: json!({"type": "authorization"}), source: None };
        let header = credential.to_authorization();
        assert_eq!(Credential::from_authorization(&header).unwrap(), credential);
        for junk in ["Payment !!!", "Payment eyJ9", "Bearer abc", &format!("Payment {}", "A".repeat(20_000))]
        {
            let r = Credential::from_authorization(junk).unwrap_err();
            assert_eq!(r.reason, Reason::CredentialMalformed, "{junk:.20}");
        }
    }

    #[test]
    fn canonical_json_sorts_keys_without_space() {
        let v = json!({"b": {"z": 1, "a": [true, null]}, "a": "x\"y"});
        assert_eq!(canonical_json(&v), r#"{"a":"x\"y","b":{"a":[true,null],"z":1}}"#);
    }

    #[test]
    fn headers_quote_their_values() {
        let mut f = fields();
        f.description = Some(r#"a "b" \c"#.into());
        let header = f.to_header();
        assert!(header.starts_with("Payment id=\"\", realm=\"vendbox.test\""), "{header}");
        assert!(header.contains(r#"description="a \"b\" \\c""#), "{header}");
        let parsed = client::parse_challenges(&header).unwrap();
        assert_eq!(parsed, vec![f]);
    }

    #[test]
    fn problem_types_follow_the_draft() {
        assert_eq!(problem_type("payment_required"), "payment-required");
        assert_eq!(problem_type(Reason::Replayed.code()), "invalid-challenge");
        assert_eq!(problem_type(Reason::ChallengeExpired.code()), "payment-expired");
        assert_eq!(problem_type(Reason::CredentialMalformed.code()), "malformed-credential");
        assert_eq!(problem_type(Reason::Signature.code()), "verification-failed");
        let p = problem("invalid_challenge", "no", Some("abc"));
        assert_eq!(p["type"], "https://paymentauth.org/problems/invalid-challenge");
        assert_eq!(p["status"], 402);
        let p = problem(Reason::MethodUnsupported.code(), "no", None);
        assert_eq!(p["type"], "https://paymentauth.org/problems/method-unsupported");
        assert_eq!(p["status"], 400);
    }
}
