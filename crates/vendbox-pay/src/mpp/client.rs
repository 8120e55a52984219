//! Paying an MPP `evm` charge, as a client: reads `WWW-Authenticate: Payment` challenges and
//! signs the EIP-3009 authorization a challenge asks for (`vendbox fetch`, and tests that
//! tamper with what an honest client sends).

use alloy::primitives::{Address, B256, U256};
use serde_json::{Value, json};

use super::evm::{CREDENTIAL_TYPE, INTENT, METHOD, challenge_hash, challenge_hash_json};
use super::{ChallengeFields, Credential, SCHEME};
use crate::eip3009::{Authorization, TokenDomain, signature_hex};
use crate::keys::Wallet;

/// How a client derives the EIP-3009 nonce from a challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceDerivation {
    /// `keccak256(id ‖ realm)`: the draft's and mppx's.
    Concatenated,
    /// The keccak of the JSON array `["<id>","<realm>"]`: pympp's.
    JsonArray,
}

/// Every Payment challenge in a `WWW-Authenticate` value (one or several, comma-separated;
/// challenges of other schemes are skipped).
pub fn parse_challenges(value: &str) -> Result<Vec<ChallengeFields>, String> {
    let mut challenges: Vec<(bool, ChallengeFields)> = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_ascii_whitespace());
        if rest.is_empty() {
            break;
        }
        let end = rest.find(|c: char| c == '=' || c == ',' || c.is_ascii_whitespace()).unwrap_or(rest.len());
        let (token, after) = rest.split_at(end);
        if let Some(after_eq) = after.trim_start().strip_prefix('=') {
            let (value, after_value) = read_value(after_eq.trim_start())?;
            rest = after_value;
            let Some((true, fields)) = challenges.last_mut() else { continue };
            match token.to_ascii_lowercase().as_str() {
                "id" => fields.id = value,
                "realm" => fields.realm = value,
                "method" => fields.method = value,
                "intent" => fields.intent = value,
                "request" => fields.request = value,
                "expires" => fields.expires = Some(value),
                "digest" => fields.digest = Some(value),
                "opaque" => fields.opaque = Some(value),
                "description" => fields.description = Some(value),
                _ => {}
            }
        } else {
            challenges.push((token.eq_ignore_ascii_case(SCHEME), ChallengeFields::default()));
            rest = after;
        }
    }
    Ok(challenges.into_iter().filter(|(payment, _)| *payment).map(|(_, fields)| fields).collect())
}

/// A token or a quoted-string, and what follows it.
fn read_value(text: &str) -> Result<(String, &str), String> {
    let Some(quoted) = text.strip_prefix('"') else {
        let end = text.find(',').unwrap_or(text.len());
        return Ok((text[..end].trim().to_owned(), &text[end..]));
    };
    let mut value = String::new();
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => value.push(chars.next().map(|(_, c)| c).ok_or("a quoted value ends in a backslash")?),
            '"' => return Ok((value, &quoted[i + 1..])),
            c => value.push(c),
        }
    }
    Err("a quoted value is not closed".into())
}

/// The `Authorization` value paying `challenge` (an `evm` charge) with `signer`, for the token
/// whose EIP-712 domain is `name` and `version`, its nonce derived as `derivation` says.
pub fn pay(
    signer: &Wallet,
    challenge: &ChallengeFields,
    name: &str,
    version: &str,
    derivation: NonceDerivation,
) -> Result<String, String> {
    Ok(credential(signer, challenge, name, version, derivation)?.to_authorization())
}

/// The credential [`pay`] sends, to look at or tamper with.
pub fn credential(
    signer: &Wallet,
    challenge: &ChallengeFields,
    name: &str,
    version: &str,
    derivation: NonceDerivation,
) -> Result<Credential, String> {
    if challenge.method != METHOD || challenge.intent != INTENT {
        return Err(format!("vendbox pays evm charges, not {}/{}", challenge.method, challenge.intent));
    }
    let request = challenge.request_json().ok_or("the challenge's request is not base64url JSON")?;
    let details = &request["methodDetails"];
    let types = details["credentialTypes"].as_array().cloned().unwrap_or_default();
    if !types.iter().any(|t| t == CREDENTIAL_TYPE) {
        return Err("the challenge does not take EIP-3009 authorizations".into());
    }
    let text = |name: &str| request[name].as_str().ok_or_else(|| format!("the request has no {name}"));
    let address = |name: &str| -> Result<Address, String> {
        text(name)?.parse().map_err(|_| format!("the request's {name} is not an address"))
    };
    let chain_id = details["chainId"].as_u64().ok_or("the request has no methodDetails.chainId")?;
    let amount = U256::from_str_radix(text("amount")?, 10).map_err(|_| "the amount is not a number")?;
    let valid_before = challenge
        .expires
        .as_deref()
        .and_then(|e| chrono::DateTime::parse_from_rfc3339(e).ok())
        .map_or_else(|| crate::exact::unix_now() + 300, |e| u64::try_from(e.timestamp()).unwrap_or(0));
    let nonce: B256 = match derivation {
        NonceDerivation::Concatenated => challenge_hash(&challenge.id, &challenge.realm),
        NonceDerivation::JsonArray => challenge_hash_json(&challenge.id, &challenge.realm),
    };
    let authorization = Authorization {
        from: signer.address().get(),
        to: address("recipient")?,
        value: amount,
        valid_after: U256::ZERO,
        valid_before: U256::from(valid_before),
        nonce,
    };
    let domain = TokenDomain {
        name: name.to_owned(),
        version: version.to_owned(),
        chain_id,
        verifying_contract: address("currency")?,
    };
    let signature = authorization.sign(signer.signer(), &domain).map_err(|e| e.message)?;
    let wire = authorization.to_wire();
    let payload: Value = json!({
        "type": CREDENTIAL_TYPE,
        "from": wire.from,
        "to": wire.to,
        "value": wire.value,
        "validAfter": wire.valid_after,
        "validBefore": wire.valid_before,
        "nonce": wire.nonce,
        "signature": signature_hex(&signature),
    });
    Ok(Credential {
        challenge: challenge.clone(),
        payload,
        source: Some(format!("did:pkh:eip155:{chain_id}:{}", wire.from)),
    })
}
