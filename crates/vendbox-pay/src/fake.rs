//! `FakeMethod`: an in-process [`PaymentMethod`] for fast tests of the code above payments (the
//! gate, the surfaces), needing no chain. A proof is the header `x-fake-payment: PAYER NONCE
//! AMOUNT` (amount in atomic units); the method can be told how verification, settlement and
//! recovery go, and counts what it was asked to do.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::json;
use vendbox_core::{Payment, PaymentId, PaymentState, ReplayKey};

use crate::method::{
    Admission, AdmitError, Challenge, Charge, PaymentMethod, Proof, Receipt, Recovered, SettleFailure,
};
use crate::reason::{Reason, Rejection};

/// The header a fake proof travels in.
pub const FAKE_PAYMENT: &str = "x-fake-payment";

/// The header a fake challenge travels in.
pub const FAKE_PAYMENT_REQUIRED: &str = "x-fake-payment-required";

/// The asset of fake payments, as stored in replay keys.
pub const FAKE_ASSET: &str = "fake-usd";

/// A payment method that settles in memory.
#[derive(Debug, Default)]
pub struct FakeMethod {
    state: Mutex<FakeState>,
}

#[derive(Debug, Default)]
struct FakeState {
    next_verify: Option<AdmitError>,
    next_settle: Option<SettleFailure>,
    recoveries: HashMap<String, Recovered>,
    verified: usize,
    settled: Vec<PaymentId>,
}

impl FakeMethod {
    /// A method that takes every well-formed proof.
    pub fn new() -> FakeMethod {
        FakeMethod::default()
    }

    /// The proof of `payer`'s payment `nonce` of `atomic` units, as a request would carry it.
    pub fn proof(payer: &str, nonce: &str, atomic: u64) -> Proof {
        Proof::none().with(FAKE_PAYMENT, format!("{payer} {nonce} {atomic}").as_bytes())
    }

    /// The next verification fails with `error`.
    pub fn fail_next_verify(&self, error: AdmitError) {
        self.lock().next_verify = Some(error);
    }

    /// The next settlement fails with `failure`.
    pub fn fail_next_settle(&self, failure: SettleFailure) {
        self.lock().next_settle = Some(failure);
    }

    /// Recovery of the payment with `nonce` finds `outcome` (otherwise: never settled).
    pub fn recovers(&self, nonce: &str, outcome: Recovered) {
        self.lock().recoveries.insert(nonce.to_ascii_lowercase(), outcome);
    }

    /// How many proofs were verified.
    pub fn verified(&self) -> usize {
        self.lock().verified
    }

    /// The payments settled, in order.
    pub fn settled(&self) -> Vec<PaymentId> {
        self.lock().settled.clone()
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl PaymentMethod for FakeMethod {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn proof_headers(&self) -> &'static [&'static str] {
        &[FAKE_PAYMENT]
    }

    fn made(&self, payment: &Payment) -> bool {
        payment.replay_key.asset == FAKE_ASSET
    }

    fn asset(&self) -> String {
        FAKE_ASSET.to_owned()
    }

    fn challenge(&self, charge: &Charge, code: &str, message: &str) -> Challenge {
        let body = json!({ "error": code, "message": message, "amount": charge.amount.atomic().to_string() });
        Challenge { headers: vec![(FAKE_PAYMENT_REQUIRED, body.to_string())], body: Some(body) }
    }

    fn check(
        &self,
        proof: &Proof,
        charge: &Charge,
        id: PaymentId,
        now: DateTime<Utc>,
    ) -> Result<Admission, Rejection> {
        let text = proof
            .header(FAKE_PAYMENT)
            .flatten()
            .ok_or_else(|| Rejection::new(Reason::HeaderEncoding, "the fake payment is not text"))?;
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [payer, nonce, amount] = parts[..] else {
            return Err(Rejection::new(Reason::HeaderJson, "a fake payment is `PAYER NONCE AMOUNT`"));
        };
        if amount.parse::<u64>().ok() != Some(charge.amount.atomic()) {
            return Err(Rejection::new(Reason::Value, format!("pay exactly {}", charge.amount.atomic())));
        }
        let payment = Payment {
            id,
            quote_id: None,
            method: vendbox_core::PaymentMethod::Credits,
            replay_key: ReplayKey::new("fake", FAKE_ASSET, payer, nonce),
            amount: charge.amount,
            state: PaymentState::Verified,
            settlement_ref: None,
            void_reason: None,
            proof: Some(text.to_owned()),
            purchase: None,
            created_at: now,
            updated_at: now,
        };
        Ok(Admission { payment, payer: payer.to_owned(), ticket: Box::new(()) })
    }

    async fn verify(&self, _admission: &Admission, _charge: &Charge) -> Result<(), AdmitError> {
        let mut state = self.lock();
        state.verified += 1;
        state.next_verify.take().map_or(Ok(()), Err)
    }

    async fn settle(&self, admission: &Admission, _charge: &Charge) -> Result<Receipt, SettleFailure> {
        let mut state = self.lock();
        if let Some(failure) = state.next_settle.take() {
            return Err(failure);
        }
        state.settled.push(admission.payment.id);
        Ok(Receipt {
            reference: format!("fake:{}", admission.payment.id),
            payer: admission.payer.clone(),
            network: "fake".into(),
            headers: vec![("x-fake-payment-response", format!("settled {}", admission.payment.id))],
        })
    }

    async fn recover(&self, payment: &Payment) -> Result<Recovered, String> {
        let found = self.lock().recoveries.get(&payment.replay_key.nonce).cloned();
        Ok(found.unwrap_or_else(|| Recovered::Voided { reason: "the fake payment was never settled".into() }))
    }
}

/// A facilitator that cannot be reached: verification is unavailable and nothing is ever sent.
/// For tests of what happens before a payment is verified (x402's challenges and refusals).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoFacilitator;

#[async_trait]
impl crate::facilitator::Facilitator for NoFacilitator {
    fn kind(&self) -> &'static str {
        "none"
    }

    async fn verify(
        &self,
        _payment: &crate::exact::CheckedPayment,
        _requirements: &crate::exact::Requirements,
    ) -> Result<(), crate::chain::VerifyError> {
        Err(crate::chain::VerifyError::Unavailable("no facilitator is configured".into()))
    }

    async fn settle(
        &self,
        _payment: &crate::exact::CheckedPayment,
        _requirements: &crate::exact::Requirements,
    ) -> Result<alloy::primitives::B256, crate::facilitator::SettleError> {
        Err(crate::facilitator::SettleError::NotSent("no facilitator is configured".into()))
    }
}

/// A facilitator that verifies and settles every payment without a chain: each settlement is
/// "sent" in a transaction whose hash is 32 bytes of `0x11`. For tests of what happens around a
/// payment that goes through (limits, receipts), needing no chain.
#[derive(Debug, Default, Clone, Copy)]
pub struct AcceptingFacilitator;

#[async_trait]
impl crate::facilitator::Facilitator for AcceptingFacilitator {
    fn kind(&self) -> &'static str {
        "accepting"
    }

    async fn verify(
        &self,
        _payment: &crate::exact::CheckedPayment,
        _requirements: &crate::exact::Requirements,
    ) -> Result<(), crate::chain::VerifyError> {
        Ok(())
    }

    async fn settle(
        &self,
        _payment: &crate::exact::CheckedPayment,
        _requirements: &crate::exact::Requirements,
    ) -> Result<alloy::primitives::B256, crate::facilitator::SettleError> {
        Ok(alloy::primitives::B256::repeat_byte(0x11))
    }
}
