//! [`MppEvmCharge`]: MPP's `evm` method with the `charge` intent, as a [`PaymentMethod`]. The
//! credential is an EIP-3009 authorization (`type: "authorization"`) whose nonce is the
//! challenge's hash, verified and settled through the same [`Facilitator`] as x402 (the
//! authorization is the one x402's `exact` scheme carries). The draft and mppx hash
//! `keccak256(id ‖ realm)`; pympp hashes the JSON array `["<id>","<realm>"]`: both are taken,
//! and either way the challenge's replay key is the draft's hash, so one challenge is paid at
//! most once by one payer.

use std::sync::Arc;

use alloy::primitives::{B256, keccak256};
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use vendbox_core::{Payment, PaymentId, PaymentState, ReplayKey};

use super::{AUTHORIZATION, BindingSecret, ChallengeFields, Credential, PAYMENT_RECEIPT, WWW_AUTHENTICATE};
use crate::chain::{Chain, VerifyError};
use crate::exact::{self, Acceptance, CheckedPayment, Requirements, SentPayment};
use crate::facilitator::Facilitator;
use crate::method::{
    Admission, AdmitError, Challenge, Charge, PaymentMethod, Proof, Receipt, Recovered, SettleFailure,
};
use crate::reason::{Reason, Rejection};
use crate::wire::{AuthorizationWire, ExactEvmPayload, PaymentPayloadV2};

/// The method's name on the wire.
pub const METHOD: &str = "evm";
/// The intent's name on the wire.
pub const INTENT: &str = "charge";
/// The credential type vendbox takes: an EIP-3009 authorization.
pub const CREDENTIAL_TYPE: &str = "authorization";
/// Decimals of the token (USDC).
const DECIMALS: u8 = 6;

/// MPP `evm` charges to one payee, in one EIP-3009 token on one chain.
#[derive(Debug)]
pub struct MppEvmCharge {
    /// What vendbox accepts (x402's terms: chain, token and its EIP-712 domain, payee, and how
    /// long a challenge stays valid, `max_timeout_seconds`).
    acceptance: Acceptance,
    /// Verifies and settles (x402's).
    facilitator: Arc<dyn Facilitator>,
    /// The token's chain, asked after a crash.
    chain: Option<Chain>,
    /// Binds challenge ids to their fields.
    secret: BindingSecret,
    /// The protection space: vendbox's public host.
    realm: String,
}

/// What [`MppEvmCharge::check`] hands on to verification and settlement.
#[derive(Debug)]
struct Ticket {
    checked: CheckedPayment,
    requirements: Requirements,
}

/// The `payload` of an `authorization` credential.
#[derive(Debug, Deserialize)]
struct AuthorizationPayload {
    #[serde(rename = "type")]
    kind: String,
    #[serde(flatten)]
    authorization: AuthorizationWire,
    signature: String,
}

impl MppEvmCharge {
    /// Charges as `acceptance` says, verified and settled by `facilitator`, with challenges of
    /// `realm` bound by `secret`.
    pub fn new(
        acceptance: Acceptance,
        facilitator: Arc<dyn Facilitator>,
        secret: BindingSecret,
        realm: &str,
    ) -> MppEvmCharge {
        MppEvmCharge { acceptance, facilitator, chain: None, secret, realm: realm.to_owned() }
    }

    /// The same method, asking `chain` what became of payments a crash left half-done.
    #[must_use]
    pub fn recovering_from(mut self, chain: Chain) -> MppEvmCharge {
        self.chain = Some(chain);
        self
    }

    /// The `request` of a challenge for `charge`.
    fn request(&self, charge: &Charge) -> Value {
        json!({
            "amount": charge.amount.atomic().to_string(),
            "currency": self.acceptance.asset.to_checksum(None),
            "recipient": self.acceptance.pay_to.to_checksum(None),
            "methodDetails": {
                "chainId": self.acceptance.network.chain_id,
                "credentialTypes": [CREDENTIAL_TYPE],
                "decimals": DECIMALS,
            },
        })
    }

    /// The fields of the challenge for `charge` of the request that came with `request`,
    /// unbound and without `expires`; `opaque` names the resource and, so that every challenge
    /// is new (one payer may buy the same thing twice in a second), a random nonce.
    fn fields(&self, charge: &Charge, request: &Proof) -> ChallengeFields {
        let description = Some(charge.description.clone()).filter(|d| d.is_ascii() && !d.is_empty());
        ChallengeFields {
            id: String::new(),
            realm: self.realm.clone(),
            method: METHOD.into(),
            intent: INTENT.into(),
            request: super::encode_json(&self.request(charge)),
            expires: None,
            digest: request.body_sha256().map(super::content_digest),
            opaque: Some(super::encode_json(&json!({
                "resource": charge.resource,
                "nonce": crate::client::random_nonce().to_string(),
            }))),
            description,
        }
    }

    fn ticket(admission: &Admission) -> Result<&Ticket, String> {
        admission.ticket.downcast_ref::<Ticket>().ok_or_else(|| "not an MPP admission".to_owned())
    }

    /// Checks the echoed challenge: issued by vendbox, for this charge and request, unexpired.
    fn check_challenge(
        &self,
        echo: &ChallengeFields,
        charge: &Charge,
        request: &Proof,
        now: DateTime<Utc>,
    ) -> Result<(), Rejection> {
        let invalid = |why: &str| Rejection::new(Reason::ChallengeInvalid, why.to_owned());
        if echo.method != METHOD || echo.intent != INTENT {
            return Err(Rejection::new(
                Reason::MethodUnsupported,
                format!(
                    "vendbox takes the {METHOD} method's {INTENT} intent, not {}/{}; pay the {METHOD} challenge \
                     of a 402",
                    echo.method, echo.intent
                ),
            ));
        }
        if !self.secret.verifies(&echo.id, echo) {
            return Err(invalid(
                "the challenge was not issued by vendbox (its id is not bound to its fields)",
            ));
        }
        let expected = self.fields(charge, request);
        if echo.realm != expected.realm {
            return Err(invalid("the challenge belongs to another realm"));
        }
        let expires = echo
            .expires
            .as_deref()
            .and_then(|e| DateTime::parse_from_rfc3339(e).ok())
            .ok_or_else(|| invalid("the challenge has no expiry"))?;
        if expires <= now {
            return Err(Rejection::new(
                Reason::ChallengeExpired,
                format!("the challenge expired at {expires}; pay the fresh one in this answer"),
            ));
        }
        if echo.request != expected.request {
            return Err(invalid("the challenge was issued for another price, token or payee"));
        }
        let opaque = echo.opaque.as_deref().and_then(super::decode_json);
        if opaque.as_ref().and_then(|o| o["resource"].as_str()) != Some(charge.resource.as_str()) {
            return Err(invalid("the challenge was issued for another resource"));
        }
        if echo.digest != expected.digest {
            return Err(Rejection::new(
                Reason::BodyDigest,
                "the request's body is not the one the challenge was issued for (digest)",
            ));
        }
        Ok(())
    }
}

/// The draft's (and mppx's) challenge hash: `keccak256(id ‖ realm)`.
pub fn challenge_hash(id: &str, realm: &str) -> B256 {
    keccak256([id.as_bytes(), realm.as_bytes()].concat())
}

/// pympp's challenge hash: the keccak of the JSON array `["<id>","<realm>"]`.
pub fn challenge_hash_json(id: &str, realm: &str) -> B256 {
    keccak256(serde_json::to_string(&[id, realm]).unwrap_or_default())
}

#[async_trait]
impl PaymentMethod for MppEvmCharge {
    fn name(&self) -> &'static str {
        "mpp"
    }

    fn proof_headers(&self) -> &'static [&'static str] {
        &[AUTHORIZATION]
    }

    fn recognizes(&self, proof: &Proof) -> bool {
        proof.header(AUTHORIZATION).flatten().is_some_and(|v| super::strip_scheme(v).is_some())
    }

    fn made(&self, payment: &Payment) -> bool {
        payment.method == vendbox_core::PaymentMethod::MppEvmCharge
            && payment.replay_key.asset == self.asset()
    }

    fn asset(&self) -> String {
        self.acceptance.asset.to_string().to_ascii_lowercase()
    }

    fn challenge(&self, charge: &Charge, code: &str, message: &str) -> Challenge {
        self.challenge_for(charge, &Proof::none(), code, message)
    }

    fn challenge_for(&self, charge: &Charge, request: &Proof, code: &str, message: &str) -> Challenge {
        let expires =
            Utc::now() + chrono::Duration::seconds(self.acceptance.max_timeout_seconds.cast_signed());
        let mut fields = self.fields(charge, request);
        fields.expires = Some(expires.to_rfc3339_opts(SecondsFormat::Secs, true));
        let fields = fields.bound(&self.secret);
        Challenge {
            headers: vec![(WWW_AUTHENTICATE, fields.to_header())],
            body: Some(super::problem(code, message, None)),
        }
    }

    fn check(
        &self,
        proof: &Proof,
        charge: &Charge,
        id: PaymentId,
        now: DateTime<Utc>,
    ) -> Result<Admission, Rejection> {
        let header = proof.header(AUTHORIZATION).flatten().ok_or_else(|| {
            Rejection::new(Reason::CredentialMalformed, "the Authorization header is not ASCII text")
        })?;
        let credential = Credential::from_authorization(header)?;
        let echo = &credential.challenge;
        self.check_challenge(echo, charge, proof, now)?;
        let payload: AuthorizationPayload =
            serde_json::from_value(credential.payload.clone()).map_err(|e| {
                Rejection::new(
                    Reason::CredentialMalformed,
                    format!("the payload is not an EIP-3009 authorization: {e}"),
                )
            })?;
        if payload.kind != CREDENTIAL_TYPE {
            return Err(Rejection::new(
                Reason::CredentialMalformed,
                format!(
                    "credential type {:?} is not accepted; vendbox takes \"authorization\"",
                    payload.kind
                ),
            ));
        }
        let hash = challenge_hash(&echo.id, &echo.realm);
        let nonce: B256 = payload.authorization.nonce.trim().parse().map_err(|_| {
            Rejection::new(Reason::CredentialMalformed, "payload.nonce must be 32 bytes of hex (0x…)")
        })?;
        if nonce != hash && nonce != challenge_hash_json(&echo.id, &echo.realm) {
            return Err(Rejection::new(
                Reason::ChallengeNonce,
                "the authorization's nonce is not the echoed challenge's hash: it was signed for another challenge",
            ));
        }
        let requirements = Requirements::new(self.acceptance.clone(), charge.clone());
        let sent = SentPayment::V2(PaymentPayloadV2 {
            x402_version: 2,
            resource: Some(requirements.resource()),
            accepted: requirements.v2(),
            payload: ExactEvmPayload { signature: payload.signature, authorization: payload.authorization },
            extensions: None,
        });
        let unix_now = u64::try_from(now.timestamp()).unwrap_or(0);
        let checked = exact::check(sent, &requirements, unix_now)?;
        let payer = checked.payer().to_checksum(None);
        let record = json!({
            "challenge": echo,
            "payload": credential.payload,
            "source": credential.source,
            "resource": charge.resource,
        });
        let acceptance = &self.acceptance;
        let payment = Payment {
            id,
            quote_id: None,
            method: vendbox_core::PaymentMethod::MppEvmCharge,
            replay_key: ReplayKey::new(
                &acceptance.network.caip2(),
                &acceptance.asset.to_string(),
                &payer,
                &hash.to_string(),
            ),
            amount: charge.amount,
            state: PaymentState::Verified,
            settlement_ref: None,
            void_reason: None,
            proof: Some(record.to_string()),
            purchase: None,
            created_at: now,
            updated_at: now,
        };
        Ok(Admission { payment, payer, ticket: Box::new(Ticket { checked, requirements }) })
    }

    async fn verify(&self, admission: &Admission, _charge: &Charge) -> Result<(), AdmitError> {
        let ticket = Self::ticket(admission).map_err(AdmitError::Unavailable)?;
        match self.facilitator.verify(&ticket.checked, &ticket.requirements).await {
            Ok(()) => Ok(()),
            Err(VerifyError::Rejected(r)) => Err(AdmitError::Rejected(r)),
            Err(VerifyError::Unavailable(m)) => Err(AdmitError::Unavailable(m)),
        }
    }

    async fn settle(&self, admission: &Admission, _charge: &Charge) -> Result<Receipt, SettleFailure> {
        let ticket = Self::ticket(admission).map_err(SettleFailure::Failed)?;
        let result = self.facilitator.settle(&ticket.checked, &ticket.requirements).await;
        crate::facilitator::settlement(result, |tx| self.receipt(ticket, tx))
    }

    async fn recover(&self, payment: &Payment) -> Result<Recovered, String> {
        let chain = self.chain.as_ref().ok_or("no chain is configured to recover payments from")?;
        let record: Value = serde_json::from_str(payment.proof.as_deref().unwrap_or_default())
            .map_err(|e| format!("the payment's record is not JSON: {e}"))?;
        let field = |name: &str| record["payload"][name].as_str().map(str::to_owned);
        let (Some(from), Some(nonce)) = (field("from"), field("nonce")) else {
            return Err("the payment's record names no authorization".into());
        };
        Ok(chain.recover(&from, &nonce).await.map_err(|e| e.to_string())?.into())
    }
}

impl MppEvmCharge {
    /// The receipt for a settled charge: `Payment-Receipt`.
    fn receipt(&self, ticket: &Ticket, tx: &str) -> Receipt {
        let payer = ticket.checked.payer().to_checksum(None);
        let network = self.acceptance.network.caip2();
        let timestamp = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
        let extra = json!({ "chainId": self.acceptance.network.chain_id, "payer": payer });
        let header = super::receipt_header(METHOD, tx, &timestamp, &extra);
        Receipt { reference: tx.to_owned(), payer, network, headers: vec![(PAYMENT_RECEIPT, header)] }
    }
}
