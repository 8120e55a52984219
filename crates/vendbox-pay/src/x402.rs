//! [`X402Exact`]: x402's `exact` scheme on an EVM chain (EIP-3009), protocol versions 1 and 2,
//! as a [`PaymentMethod`]. Its 402 is the v1 JSON body (also base64 in `X-Payment-Required`,
//! which VpsAgent documents) and the v2 `PAYMENT-REQUIRED` header; proofs come in
//! `PAYMENT-SIGNATURE` (v2) or `X-PAYMENT` (v1); receipts go out in the proof's own version.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::json;
use sha2::Digest as _;
use vendbox_core::{Payment, PaymentId, PaymentState, ReplayKey};

use crate::chain::{Chain, ChainError, VerifyError};
use crate::exact::{self, Acceptance, CheckedPayment, Requirements, SentPayment, Version};
use crate::facilitator::{BuiltinFacilitator, Facilitator, RemoteFacilitator};
use crate::method::{
    Admission, AdmitError, Challenge, Charge, PaymentMethod, Proof, Receipt, Recovered, SettleFailure,
};
use crate::reason::{Reason, Rejection};
use crate::wire::{self, SettlementResponse};

/// How long a refused proof is answered from memory.
const REFUSED_TTL: Duration = Duration::from_mins(1);

/// How many refused proofs are remembered (the oldest are forgotten first).
const REFUSED_MAX: usize = 10_000;

/// x402 `exact` payments to one payee, in one token on one chain.
#[derive(Debug)]
pub struct X402Exact {
    /// What vendbox accepts.
    acceptance: Acceptance,
    /// Verifies and settles.
    facilitator: Arc<dyn Facilitator>,
    /// The token's chain, asked after a crash (`None`: recovery cannot be done).
    chain: Option<Chain>,
    /// Proofs the facilitator refused lately, so that a replayed bad proof costs a lookup, not
    /// another call to a chain.
    refused: Mutex<RefusedProofs>,
}

/// What [`X402Exact::check`] hands on to verification and settlement.
#[derive(Debug)]
struct Ticket {
    checked: CheckedPayment,
    requirements: Requirements,
    /// SHA-256 of the proof's headers, for the memory of refusals.
    hash: [u8; 32],
}

impl X402Exact {
    /// Payments as `acceptance` says, through `facilitator`.
    pub fn new(acceptance: Acceptance, facilitator: Arc<dyn Facilitator>) -> X402Exact {
        X402Exact { acceptance, facilitator, chain: None, refused: Mutex::default() }
    }

    /// Payments settled by vendbox itself through `facilitator` (which sends with the operator's
    /// key and pays the gas), and recovered from its chain after a crash.
    pub fn builtin(acceptance: Acceptance, facilitator: BuiltinFacilitator) -> X402Exact {
        let chain = facilitator.chain().clone();
        X402Exact::new(acceptance, Arc::new(facilitator)).recovering_from(chain)
    }

    /// Payments verified and settled by the facilitator at `url` (sending `auth` as a header),
    /// and recovered from the chain at `rpc_url` after a crash.
    pub fn remote(
        acceptance: Acceptance,
        url: &str,
        auth: Option<(String, String)>,
        rpc_url: &str,
    ) -> Result<X402Exact, ChainError> {
        let facilitator = RemoteFacilitator::new(url, auth)?;
        let chain = Chain::connect(rpc_url, acceptance.asset())?;
        Ok(X402Exact::new(acceptance, Arc::new(facilitator)).recovering_from(chain))
    }

    /// The same method, asking `chain` what became of payments a crash left half-done.
    #[must_use]
    pub fn recovering_from(mut self, chain: Chain) -> X402Exact {
        self.chain = Some(chain);
        self
    }

    /// What this method accepts.
    pub fn acceptance(&self) -> &Acceptance {
        &self.acceptance
    }

    /// The facilitator that verifies and settles its payments (MPP's `evm` charge shares it).
    pub fn facilitator(&self) -> Arc<dyn Facilitator> {
        self.facilitator.clone()
    }

    /// The chain payments a crash left half-done are recovered from, if any.
    pub fn chain(&self) -> Option<&Chain> {
        self.chain.as_ref()
    }

    fn requirements(&self, charge: &Charge) -> Requirements {
        Requirements::new(self.acceptance.clone(), charge.clone())
    }

    fn ticket(admission: &Admission) -> Result<&Ticket, String> {
        admission.ticket.downcast_ref::<Ticket>().ok_or_else(|| "not an x402 admission".to_owned())
    }

    fn refused(&self) -> std::sync::MutexGuard<'_, RefusedProofs> {
        self.refused.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl PaymentMethod for X402Exact {
    fn name(&self) -> &'static str {
        "x402"
    }

    fn proof_headers(&self) -> &'static [&'static str] {
        &[wire::PAYMENT_SIGNATURE, wire::X_PAYMENT]
    }

    fn made(&self, payment: &Payment) -> bool {
        matches!(
            payment.method,
            vendbox_core::PaymentMethod::X402ExactV1 | vendbox_core::PaymentMethod::X402ExactV2
        ) && payment.replay_key.asset == self.asset()
    }

    fn asset(&self) -> String {
        self.acceptance.asset.to_string().to_ascii_lowercase()
    }

    fn challenge(&self, charge: &Charge, code: &str, message: &str) -> Challenge {
        let (v1, v2) = self.requirements(charge).challenge(code);
        let mut body = serde_json::to_value(&v1).unwrap_or_default();
        body["message"] = json!(message);
        Challenge {
            headers: vec![
                (wire::PAYMENT_REQUIRED, wire::encode_header(&v2)),
                (wire::X_PAYMENT_REQUIRED, wire::encode_header(&body)),
            ],
            body: Some(body),
        }
    }

    fn check(
        &self,
        proof: &Proof,
        charge: &Charge,
        id: PaymentId,
        now: DateTime<Utc>,
    ) -> Result<Admission, Rejection> {
        let (v2, v1) = (proof.header(wire::PAYMENT_SIGNATURE), proof.header(wire::X_PAYMENT));
        if matches!(v2, Some(None)) || matches!(v1, Some(None)) {
            return Err(Rejection::new(Reason::HeaderEncoding, "the payment header is not ASCII"));
        }
        let (v2, v1) = (v2.flatten(), v1.flatten());
        let sent = SentPayment::from_headers(v2, v1)
            .unwrap_or_else(|| Err(Rejection::new(Reason::Payload, "no x402 payment header was sent")))?;
        let requirements = self.requirements(charge);
        let unix_now = u64::try_from(now.timestamp()).unwrap_or(0);
        let checked = exact::check(sent, &requirements, unix_now)?;
        let hash: [u8; 32] = {
            let mut digest = sha2::Sha256::new();
            for value in [v2, v1].into_iter().flatten() {
                digest.update(value.as_bytes());
                digest.update([0]);
            }
            digest.finalize().into()
        };
        if let Some(rejection) = self.refused().get(&hash) {
            return Err(rejection);
        }
        let payment = reservation(id, &checked, &requirements, now);
        let payer = checked.payer().to_checksum(None);
        Ok(Admission { payment, payer, ticket: Box::new(Ticket { checked, requirements, hash }) })
    }

    async fn verify(&self, admission: &Admission, _charge: &Charge) -> Result<(), AdmitError> {
        let ticket = Self::ticket(admission).map_err(AdmitError::Unavailable)?;
        match self.facilitator.verify(&ticket.checked, &ticket.requirements).await {
            Ok(()) => Ok(()),
            Err(VerifyError::Rejected(r)) => {
                self.refused().insert(ticket.hash, r.clone());
                Err(AdmitError::Rejected(r))
            }
            Err(VerifyError::Unavailable(m)) => Err(AdmitError::Unavailable(m)),
        }
    }

    async fn settle(&self, admission: &Admission, _charge: &Charge) -> Result<Receipt, SettleFailure> {
        let ticket = Self::ticket(admission).map_err(SettleFailure::Failed)?;
        let result = self.facilitator.settle(&ticket.checked, &ticket.requirements).await;
        crate::facilitator::settlement(result, |tx| receipt(ticket, tx))
    }

    async fn recover(&self, payment: &Payment) -> Result<Recovered, String> {
        let key = &payment.replay_key;
        let chain = self.chain.as_ref().ok_or("no chain is configured to recover payments from")?;
        Ok(chain.recover(&key.payer, &key.nonce).await.map_err(|e| e.to_string())?.into())
    }
}

/// The payment to reserve for a checked proof.
fn reservation(
    id: PaymentId,
    checked: &CheckedPayment,
    requirements: &Requirements,
    now: DateTime<Utc>,
) -> Payment {
    let acceptance = &requirements.acceptance;
    let auth = &checked.authorization;
    let method = match checked.sent.version() {
        Version::V1 => vendbox_core::PaymentMethod::X402ExactV1,
        Version::V2 => vendbox_core::PaymentMethod::X402ExactV2,
    };
    let proof = json!({
        "payment": checked.sent.to_json(),
        "requirements": requirements.v2(),
        "resource": requirements.charge.resource,
    });
    Payment {
        id,
        quote_id: None,
        method,
        replay_key: ReplayKey::new(
            &acceptance.network.caip2(),
            &acceptance.asset.to_string(),
            &auth.from.to_string(),
            &auth.nonce.to_string(),
        ),
        amount: requirements.charge.amount,
        state: PaymentState::Verified,
        settlement_ref: None,
        void_reason: None,
        proof: Some(proof.to_string()),
        purchase: None,
        created_at: now,
        updated_at: now,
    }
}

/// The receipt for a settled payment, in the payment's own protocol version.
fn receipt(ticket: &Ticket, tx: &str) -> Receipt {
    let network = ticket.requirements.acceptance.network;
    let (name, network) = match ticket.checked.sent.version() {
        Version::V1 => (wire::X_PAYMENT_RESPONSE, network.v1_label()),
        Version::V2 => (wire::PAYMENT_RESPONSE, network.caip2()),
    };
    let payer = ticket.checked.payer().to_checksum(None);
    let body = SettlementResponse {
        success: true,
        transaction: tx.to_owned(),
        network: network.clone(),
        payer: Some(payer.clone()),
        error_reason: None,
    };
    Receipt { reference: tx.to_owned(), payer, network, headers: vec![(name, wire::encode_header(&body))] }
}

/// Proofs (by SHA-256) the facilitator refused, with the refusal and when it is forgotten.
#[derive(Debug, Default)]
struct RefusedProofs {
    by_hash: HashMap<[u8; 32], (Rejection, Instant)>,
    order: VecDeque<[u8; 32]>,
}

impl RefusedProofs {
    fn get(&mut self, hash: &[u8; 32]) -> Option<Rejection> {
        match self.by_hash.get(hash) {
            Some((rejection, until)) if *until > Instant::now() => Some(rejection.clone()),
            Some(_) => {
                self.by_hash.remove(hash);
                None
            }
            None => None,
        }
    }

    fn insert(&mut self, hash: [u8; 32], rejection: Rejection) {
        while self.order.len() >= REFUSED_MAX {
            if let Some(old) = self.order.pop_front() {
                self.by_hash.remove(&old);
            }
        }
        if self.by_hash.insert(hash, (rejection, Instant::now() + REFUSED_TTL)).is_none() {
            self.order.push_back(hash);
        }
    }
}
