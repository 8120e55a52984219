//! [`Payments`]: the gate every paid request goes through, whatever the surface and whatever the
//! payment method. No proof: [`PayError::Required`] with every method's challenge, and nothing
//! else changes. A proof: the method that recognizes it checks it, the store is asked whether
//! its replay key was used, the method verifies it where the money is, the store reserves the
//! key, the work runs, and then the money is taken, or let go when the work failed. Money moves
//! only after the work succeeded, and the answer (with the receipt) goes out only after the money
//! moved.
//!
//! `pay(proof, charge, work) -> Result<Paid<T>, PayError<E>>` knows no HTTP: the HTTP layer
//! reads the [`Proof`] from headers and renders challenges and receipts.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use vendbox_core::{LedgerEntry, PaymentId, PaymentState, Usdc};
use vendbox_pay::{
    AdmitError, Challenge, Charge, ChargeKind, PaymentMethod, Proof, Reason, Receipt, Recovered, Rejection,
    SettleFailure,
};
use vendbox_store::{CreditSpend, HoldRefusal, PaymentOutcome, Store, StoreError};

use crate::clock::{Clock, SystemClock};
use crate::credits::Credits;

/// A boxed step of paid work that runs around the settlement.
type Step<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// An error of paid work, by its stable code (for the payment's void reason).
pub trait Coded {
    /// The stable code.
    fn code(&self) -> &str;
}

/// What paid work produced: an answer, whether it is worth the price, and how to take it back
/// when the money then does not move.
pub struct Delivery<T, E> {
    value: T,
    delivered: bool,
    undo: Option<Step<()>>,
    settled: Option<Step<Result<(), E>>>,
}

impl<T, E> Delivery<T, E> {
    /// The buyer got what they paid for: settle, then answer `value`.
    pub fn delivered(value: T) -> Self {
        Self { value, delivered: true, undo: None, settled: None }
    }

    /// The request was served but nothing was sold (a lock already held): void the payment and
    /// answer `value`, charging nothing.
    pub fn not_delivered(value: T) -> Self {
        Self { value, delivered: false, undo: None, settled: None }
    }

    /// Runs `then` once the payment has settled, before answering: for changes that must not
    /// happen unless the money moved (a renewal's new expiry). If it fails, the error is the
    /// answer ([`PayError::AfterSettlement`]: the payment stays settled and is named).
    #[must_use]
    pub fn after_settlement(mut self, then: impl Future<Output = Result<(), E>> + Send + 'static) -> Self {
        self.settled = Some(Box::pin(then));
        self
    }

    /// Runs `undo` if the settlement then fails, so that nobody keeps what was not paid for.
    #[must_use]
    pub fn undo_with(mut self, undo: impl Future<Output = ()> + Send + 'static) -> Self {
        self.undo = Some(Box::pin(undo));
        self
    }
}

impl<T: fmt::Debug, E> fmt::Debug for Delivery<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("value", &self.value)
            .field("delivered", &self.delivered)
            .field("undo", &self.undo.is_some())
            .field("after_settlement", &self.settled.is_some())
            .finish()
    }
}

/// The answer to a paid request whose payment went through (or that was free).
#[derive(Debug)]
pub struct Paid<T> {
    /// What the work produced.
    pub value: T,
    /// The payment: settled when `receipt` is there, voided when not (nothing was sold).
    /// `None` when the request was free.
    pub payment: Option<PaymentId>,
    /// Proof that the money moved.
    pub receipt: Option<Receipt>,
}

/// What paid work that takes its payment from credits in its own write came to (see
/// [`Payments::pay_spending`]).
#[derive(Debug)]
pub enum Spent<T> {
    /// Delivered and charged, by this ledger entry; the payment is settled.
    Charged {
        /// What the work produced.
        value: T,
        /// The charge.
        charge: LedgerEntry,
    },
    /// Served, and nothing charged (a lock already held); the payment is voided.
    NotCharged(T),
    /// The credits or the key's caps did not cover the price; nothing was done or recorded.
    Refused(HoldRefusal),
}

impl<T> Spent<T> {
    /// The same outcome with its value made into another.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Spent<U> {
        match self {
            Spent::Charged { value, charge } => Spent::Charged { value: f(value), charge },
            Spent::NotCharged(value) => Spent::NotCharged(f(value)),
            Spent::Refused(refusal) => Spent::Refused(refusal),
        }
    }
}

/// Why a paid request was not answered with its work's value.
#[derive(Debug)]
pub enum PayError<E> {
    /// The client must pay (again): no proof, a bad one, or one whose settlement failed.
    Required {
        /// Why, as a stable code (`payment_required`, a [`Reason`] code, `settlement_failed`).
        code: &'static str,
        /// Why, for people.
        message: String,
        /// The proof could not even be read: a bad request, not a payment problem.
        malformed: bool,
        /// Every method's challenge for the charge.
        challenges: Vec<Challenge>,
        /// The payment, when one was reserved (and voided).
        payment: Option<PaymentId>,
    },
    /// The proof could not be verified right now; the same proof may be sent again.
    Unavailable(String),
    /// The store failed.
    Store(StoreError),
    /// The work failed; the payment (if any) was voided.
    Work {
        /// The work's error.
        error: E,
        /// The voided payment.
        payment: Option<PaymentId>,
    },
    /// The money moved, and what had to follow it failed.
    AfterSettlement {
        /// What failed.
        error: E,
        /// The settled payment.
        payment: PaymentId,
        /// Its receipt.
        receipt: Receipt,
    },
    /// vendbox failed (an injected fault, a task that died); the payment (if any) was voided.
    Internal {
        /// What happened.
        message: String,
        /// The voided payment.
        payment: Option<PaymentId>,
    },
}

impl<E> PayError<E> {
    /// The payment this answer is about, if any.
    pub fn payment(&self) -> Option<PaymentId> {
        match self {
            PayError::Required { payment, .. }
            | PayError::Work { payment, .. }
            | PayError::Internal { payment, .. } => *payment,
            PayError::AfterSettlement { payment, .. } => Some(*payment),
            PayError::Unavailable(_) | PayError::Store(_) => None,
        }
    }
}

/// A price asked of a vendbox that takes no payments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this vendbox takes no payments yet: its operator must set payments.pay_to")]
pub struct Unconfigured;

impl Unconfigured {
    /// The stable code.
    pub fn code(self) -> &'static str {
        "payments_unconfigured"
    }
}

/// Why finishing interrupted payments stopped.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A method could not find out what became of a payment.
    #[error("{method}: {message}")]
    Method {
        /// The method's name.
        method: &'static str,
        /// What it said.
        message: String,
    },
}

/// Failures injected by crash tests: `VENDBOX_FAULTS=pause-before-settle=5,fail-work`. Empty in
/// production; every fault is logged loudly at start-up when set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Sleep this long after the work is done and before the settlement is sent.
    pub pause_before_settle: Option<Duration>,
    /// Sleep this long after the settlement is confirmed and before it is recorded.
    pub pause_after_settle: Option<Duration>,
    /// Paid work fails after the payment is verified and reserved.
    pub fail_work: bool,
}

impl Faults {
    /// Reads `VENDBOX_FAULTS`.
    pub fn from_env() -> Faults {
        std::env::var("VENDBOX_FAULTS").map(|v| Faults::parse(&v)).unwrap_or_default()
    }

    /// Reads a comma-separated list; unknown entries are logged and ignored.
    pub fn parse(text: &str) -> Faults {
        let mut faults = Faults::default();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, value) = entry.split_once('=').unwrap_or((entry, ""));
            let secs = || value.parse::<f64>().ok().map(Duration::from_secs_f64);
            match name {
                "pause-before-settle" => faults.pause_before_settle = secs(),
                "pause-after-settle" => faults.pause_after_settle = secs(),
                "fail-work" => faults.fail_work = true,
                _ => tracing::warn!(fault = entry, "unknown fault ignored"),
            }
        }
        if faults != Faults::default() {
            tracing::warn!(?faults, "FAULT INJECTION IS ON: this vendbox misbehaves on purpose");
        }
        faults
    }
}

/// The gate: the payment methods vendbox accepts, and where payments are recorded.
#[derive(Debug, Clone)]
pub struct Payments {
    /// Accepted methods; empty while the operator has set none.
    methods: Vec<Arc<dyn PaymentMethod>>,
    /// Where payments are reserved and finished.
    store: Arc<dyn Store>,
    /// The time payments are checked against and recorded at.
    clock: Arc<dyn Clock>,
    /// Base of the resource URLs named in charges.
    public_url: String,
    /// Failures injected by crash tests.
    faults: Faults,
}

impl Payments {
    /// A gate taking `methods`, recording in `store`.
    pub fn new(methods: Vec<Arc<dyn PaymentMethod>>, store: Arc<dyn Store>, public_url: String) -> Payments {
        Payments { methods, store, clock: Arc::new(SystemClock), public_url, faults: Faults::default() }
    }

    /// A gate that takes no payments: every charge is refused with [`Unconfigured`].
    pub fn unconfigured(store: Arc<dyn Store>, public_url: String) -> Payments {
        Payments::new(Vec::new(), store, public_url)
    }

    /// The same gate, telling time by `clock`.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Payments {
        self.clock = clock;
        self
    }

    /// The same gate, misbehaving as `faults` say.
    #[must_use]
    pub fn with_faults(mut self, faults: Faults) -> Payments {
        self.faults = faults;
        self
    }

    /// The accepted methods.
    pub fn methods(&self) -> &[Arc<dyn PaymentMethod>] {
        &self.methods
    }

    /// Whether any method is accepted.
    pub fn configured(&self) -> bool {
        !self.methods.is_empty()
    }

    /// The request headers any method reads its proof from.
    pub fn proof_headers(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.methods.iter().flat_map(|m| m.proof_headers().iter().copied())
    }

    /// The absolute URL of `path` on this vendbox, as charges name their resource.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.public_url)
    }

    /// The charge of `amount` for `path`; `None` when the amount is zero (free).
    pub fn charge(
        &self,
        amount: Usdc,
        path: &str,
        description: &str,
    ) -> Result<Option<Charge>, Unconfigured> {
        if amount == Usdc::ZERO {
            return Ok(None);
        }
        if self.methods.is_empty() {
            return Err(Unconfigured);
        }
        Ok(Some(Charge {
            amount,
            resource: format!("{}{path}", self.public_url),
            description: description.to_owned(),
            mime_type: "application/json".into(),
            kind: ChargeKind::Other,
        }))
    }

    /// As [`Payments::charge`], for a charge of `kind` (what an API key's scope is judged by).
    pub fn charge_for(
        &self,
        kind: ChargeKind,
        amount: Usdc,
        path: &str,
        description: &str,
    ) -> Result<Option<Charge>, Unconfigured> {
        Ok(self.charge(amount, path, description)?.map(|charge| Charge { kind, ..charge }))
    }

    /// Every method's challenge for `charge`, for the request that came with `proof`: the
    /// method that recognized the proof first (its body is the 402's), then the others in order.
    pub fn challenges(&self, charge: &Charge, proof: &Proof, code: &str, message: &str) -> Vec<Challenge> {
        let (first, rest): (Vec<_>, Vec<_>) = self.methods.iter().partition(|m| m.recognizes(proof));
        first.into_iter().chain(rest).map(|m| m.challenge_for(charge, proof, code, message)).collect()
    }

    /// Runs `work` for a paid request: [`PayError::Required`] without proof, pay-on-success with
    /// one. A `charge` of `None` means free: the work runs with no payment. `work` is given the id
    /// of the payment that pays for it (`None` when free), to record next to what it makes.
    pub async fn pay<T, E, F, W>(
        &self,
        proof: &Proof,
        charge: Option<Charge>,
        work: F,
    ) -> Result<Paid<T>, PayError<E>>
    where
        E: Coded + Send + 'static,
        F: FnOnce(Option<PaymentId>) -> W,
        W: Future<Output = Result<Delivery<T, E>, E>>,
    {
        let Some(charge) = charge else {
            return match work(None).await {
                Ok(Delivery { value, settled, .. }) => {
                    if let Some(then) = settled {
                        then.await.map_err(|error| PayError::Work { error, payment: None })?;
                    }
                    Ok(Paid { value, payment: None, receipt: None })
                }
                Err(error) => Err(PayError::Work { error, payment: None }),
            };
        };
        let (method, admission) = self.admit(proof, &charge).await?;
        let id = admission.payment.id;
        let outcome = if self.faults.fail_work { Err(None) } else { work(Some(id)).await.map_err(Some) };
        match outcome {
            Err(error) => {
                let code = error.as_ref().map_or("internal", Coded::code);
                method.release(&admission).await;
                self.void(id, &format!("the paid work failed ({code}); nothing was charged")).await;
                Err(match error {
                    Some(error) => PayError::Work { error, payment: Some(id) },
                    None => {
                        PayError::Internal { message: "injected fault: fail-work".into(), payment: Some(id) }
                    }
                })
            }
            Ok(Delivery { value, delivered: false, .. }) => {
                method.release(&admission).await;
                self.void(id, UNSOLD).await;
                Ok(Paid { value, payment: Some(id), receipt: None })
            }
            Ok(Delivery { value, delivered: true, undo, settled }) => {
                match self.settle(method, admission, charge, proof).await {
                    Ok(receipt) => match settled {
                        None => Ok(Paid { value, payment: Some(id), receipt: Some(receipt) }),
                        Some(then) => match then.await {
                            Ok(()) => Ok(Paid { value, payment: Some(id), receipt: Some(receipt) }),
                            Err(error) => {
                                tracing::error!(
                                    payment = %id,
                                    code = error.code(),
                                    "paid work could not be completed after settlement"
                                );
                                Err(PayError::AfterSettlement { error, payment: id, receipt })
                            }
                        },
                    },
                    Err(refusal) => {
                        if let Some(undo) = undo {
                            undo.await;
                        }
                        Err(refusal)
                    }
                }
            }
        }
    }

    /// As [`Payments::pay`], for work that can also take its payment from credits in its own
    /// write: when `proof` pays with credits, `spend` runs instead of `work`, given the admitted
    /// payment as a [`CreditSpend`] (account, key, caps, price), and the credits are checked,
    /// the work done and the charge booked (the payment recorded settled, or voided when nothing
    /// is charged) in one transaction of the store: no hold, no settlement step, nothing left
    /// `verified`. Its outcome is answered as `pay` would answer the same: the receipt names the
    /// ledger entry, a refusal is the credits' 402. With any other method, or without proof,
    /// this is `pay(proof, charge, work)`.
    pub async fn pay_spending<T, E, F, W, S, SW>(
        &self,
        proof: &Proof,
        charge: Option<Charge>,
        work: F,
        spend: S,
    ) -> Result<Paid<T>, PayError<E>>
    where
        E: Coded + Send + 'static,
        F: FnOnce(Option<PaymentId>) -> W,
        W: Future<Output = Result<Delivery<T, E>, E>>,
        S: FnOnce(CreditSpend) -> SW,
        SW: Future<Output = Result<Spent<T>, E>>,
    {
        let credits = self
            .methods
            .iter()
            .find(|m| m.recognizes(proof))
            .and_then(|m| m.as_any())
            .and_then(|m| m.downcast_ref::<Credits>());
        let (Some(charge), Some(credits)) = (&charge, credits) else {
            return self.pay(proof, charge, work).await;
        };
        let admission = self.checked(credits, proof, charge)?;
        let id = admission.payment.id;
        if self.faults.fail_work {
            return Err(PayError::Internal { message: "injected fault: fail-work".into(), payment: None });
        }
        let credit_spend = match credits.spend(&admission, UNSOLD) {
            Ok(spend) => spend,
            Err(AdmitError::Rejected(r)) => return Err(self.refused(charge, proof, &r, None)),
            Err(AdmitError::Unavailable(m)) => return Err(PayError::Unavailable(m)),
        };
        // Nothing is recorded unless the work's write commits: a failed one leaves no payment.
        let outcome = spend(credit_spend).await.map_err(|error| PayError::Work { error, payment: None })?;
        match outcome {
            Spent::Charged { value, charge: entry } => {
                tracing::info!(
                    payment = %id,
                    payer = %admission.payer,
                    amount = %admission.payment.amount,
                    entry = entry.id,
                    "paid from credits in the work's own write"
                );
                Ok(Paid { value, payment: Some(id), receipt: Some(Credits::charged(&admission, &entry)) })
            }
            Spent::NotCharged(value) => {
                tracing::info!(payment = %id, reason = UNSOLD, "payment voided");
                Ok(Paid { value, payment: Some(id), receipt: None })
            }
            Spent::Refused(refusal) => {
                Err(self.refused(charge, proof, &credits.refused(&admission, refusal), None))
            }
        }
    }

    /// `method`'s check of `proof` for `charge`, the payment named after what it buys.
    fn checked<E>(
        &self,
        method: &dyn PaymentMethod,
        proof: &Proof,
        charge: &Charge,
    ) -> Result<vendbox_pay::Admission, PayError<E>> {
        let mut admission = method
            .check(proof, charge, PaymentId::new_random(), self.clock.now())
            .map_err(|r| self.refused(charge, proof, &r, None))?;
        admission
            .payment
            .purchase
            .get_or_insert_with(|| format!("{} ({})", charge.description, charge.resource));
        Ok(admission)
    }

    /// Reads, checks, verifies and reserves the payment in `proof`.
    async fn admit<E>(
        &self,
        proof: &Proof,
        charge: &Charge,
    ) -> Result<(Arc<dyn PaymentMethod>, vendbox_pay::Admission), PayError<E>> {
        let Some(method) = self.methods.iter().find(|m| m.recognizes(proof)).cloned() else {
            let names: Vec<&str> = self.methods.iter().map(|m| m.name()).collect();
            let message = format!("pay this request with {}", names.join(" or "));
            return Err(self.required(charge, proof, "payment_required", &message, false, None));
        };
        let admission = self.checked(method.as_ref(), proof, charge)?;
        // A replay key already taken here is refused before any call to where the money is
        // (the reservation below still decides a race).
        if !method.keeps_records()
            && self
                .store
                .payment_by_replay_key(&admission.payment.replay_key)
                .await
                .map_err(PayError::Store)?
                .is_some()
        {
            return Err(self.refused(charge, proof, &replayed(), None));
        }
        match method.verify(&admission, charge).await {
            Ok(()) => {}
            Err(AdmitError::Rejected(r)) => return Err(self.refused(charge, proof, &r, None)),
            Err(AdmitError::Unavailable(m)) => {
                tracing::warn!(method = method.name(), error = %m, "payment verification unavailable");
                return Err(PayError::Unavailable(
                    "the payment could not be verified right now; try again".into(),
                ));
            }
        }
        let reserved = if method.keeps_records() {
            Ok(())
        } else {
            self.store.reserve_payment(&admission.payment).await
        };
        match reserved {
            Ok(()) => {}
            Err(e) => {
                method.release(&admission).await;
                return Err(match e {
                    StoreError::ReplayKeyTaken => self.refused(charge, proof, &replayed(), None),
                    e => PayError::Store(e),
                });
            }
        }
        tracing::info!(
            payment = %admission.payment.id,
            method = method.name(),
            payer = %admission.payer,
            amount = %admission.payment.amount,
            "payment reserved"
        );
        Ok((method, admission))
    }

    /// Takes the money: the receipt, or why the money did not move.
    async fn settle<E>(
        &self,
        method: Arc<dyn PaymentMethod>,
        admission: vendbox_pay::Admission,
        charge: Charge,
        proof: &Proof,
    ) -> Result<Receipt, PayError<E>> {
        let (store, clock, faults) = (self.store.clone(), self.clock.clone(), self.faults.clone());
        let id = admission.payment.id;
        let task_charge = charge.clone();
        // A task of its own: a client that hangs up, or the request timeout, must not cut a
        // settlement off between sending it and recording it.
        let task = tokio::spawn(async move {
            if let Some(pause) = faults.pause_before_settle {
                tracing::warn!(payment = %id, "fault: pausing before settlement");
                tokio::time::sleep(pause).await;
            }
            let result = method.settle(&admission, &task_charge).await;
            if let (Ok(_), Some(pause)) = (&result, faults.pause_after_settle) {
                tracing::warn!(payment = %id, "fault: pausing after settlement, before recording it");
                tokio::time::sleep(pause).await;
            }
            let outcome = match &result {
                // Recorded with the settlement itself.
                Ok(_) if method.keeps_records() => None,
                Ok(receipt) => Some(PaymentOutcome::Settled { settlement_ref: receipt.reference.clone() }),
                Err(SettleFailure::Unconfirmed { .. }) => None,
                Err(e) => Some(PaymentOutcome::Voided { reason: format!("settlement failed: {e}") }),
            };
            if let Some(PaymentOutcome::Voided { .. }) = outcome {
                method.release(&admission).await;
            }
            if let Some(outcome) = outcome
                && let Err(e) = store.finish_payment(id, &outcome, clock.now()).await
            {
                tracing::error!(payment = %id, error = %e, "could not record the settlement; the settlement worker will");
            }
            result
        });
        let result = task.await.map_err(|e| PayError::Internal {
            message: format!("the settlement task died: {e}"),
            payment: Some(id),
        })?;
        match result {
            Ok(receipt) => {
                tracing::info!(payment = %id, reference = %receipt.reference, "payment settled");
                Ok(receipt)
            }
            Err(SettleFailure::Unconfirmed { receipt, message }) => {
                // Sent (or maybe sent): the work is delivered, and recovery decides the rest.
                tracing::warn!(payment = %id, error = %message, "settlement unconfirmed; delivering");
                Ok(receipt)
            }
            Err(SettleFailure::Refused(r)) => Err(self.refused(&charge, proof, &r, Some(id))),
            Err(SettleFailure::Failed(e)) => {
                tracing::warn!(payment = %id, error = %e, "settlement failed; nothing was charged");
                let message = format!("{e}; nothing was charged");
                Err(self.required(&charge, proof, "settlement_failed", &message, false, Some(id)))
            }
        }
    }

    /// Finishes payments a crash left `verified` (reserved, neither settled nor voided) and older
    /// than `grace` (a younger one may still be in a live request): each method asks where the
    /// money is. A payment whose money moved is recorded settled, one whose money did not is
    /// voided, and vendbox never settles it afterwards; either way the payer is charged at most
    /// once. Looks at up to `limit` payments per method; says whether any method had more.
    pub async fn finish_interrupted(&self, grace: Duration, limit: u32) -> Result<bool, RecoverError> {
        let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
        let before = self.clock.now() - grace;
        let mut more = false;
        for method in &self.methods {
            // Only this method's asset: payments of another (an earlier configuration) are never
            // picked, so they cannot fill every batch and keep the worker busy for nothing.
            let stale = self
                .store
                .payments_of_asset_in_state(&method.asset(), PaymentState::Verified, before, limit)
                .await?;
            more |= stale.len() == limit as usize;
            for payment in stale.iter().filter(|p| method.made(p)) {
                let outcome = match method.recover(payment).await {
                    Ok(Recovered::Settled { reference }) => {
                        PaymentOutcome::Settled { settlement_ref: reference }
                    }
                    Ok(Recovered::Voided { reason }) => PaymentOutcome::Voided { reason },
                    Err(message) => return Err(RecoverError::Method { method: method.name(), message }),
                };
                match self.store.finish_payment(payment.id, &outcome, self.clock.now()).await {
                    Ok(_) => {
                        tracing::info!(payment = %payment.id, ?outcome, "finished a payment left in between");
                    }
                    Err(StoreError::Conflict(_)) => {} // someone else finished it first
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(more)
    }

    /// Lets the payment go: the buyer is not charged.
    async fn void(&self, id: PaymentId, reason: &str) {
        let outcome = PaymentOutcome::Voided { reason: reason.to_owned() };
        match self.store.finish_payment(id, &outcome, self.clock.now()).await {
            Ok(_) => tracing::info!(payment = %id, reason, "payment voided"),
            Err(e) => {
                tracing::error!(payment = %id, error = %e, "could not void; the settlement worker will");
            }
        }
    }

    fn required<E>(
        &self,
        charge: &Charge,
        proof: &Proof,
        code: &'static str,
        message: &str,
        malformed: bool,
        payment: Option<PaymentId>,
    ) -> PayError<E> {
        PayError::Required {
            code,
            message: message.to_owned(),
            malformed,
            challenges: self.challenges(charge, proof, code, message),
            payment,
        }
    }

    fn refused<E>(
        &self,
        charge: &Charge,
        proof: &Proof,
        rejection: &Rejection,
        payment: Option<PaymentId>,
    ) -> PayError<E> {
        tracing::info!(reason = rejection.reason.code(), message = %rejection.message, "payment refused");
        self.required(
            charge,
            proof,
            rejection.reason.code(),
            &rejection.message,
            rejection.reason.is_malformed_request(),
            payment,
        )
    }
}

/// Why a payment for a request that sold nothing (a lock already held) is voided.
const UNSOLD: &str = "nothing was sold for this request; nothing was charged";

/// The refusal of a proof this vendbox has taken before.
fn replayed() -> Rejection {
    Rejection::new(Reason::Replayed, "this authorization was already used here; sign a new one")
}

impl Coded for crate::LeaseError {
    fn code(&self) -> &str {
        crate::LeaseError::code(self)
    }
}

impl Coded for crate::LockError {
    fn code(&self) -> &str {
        crate::LockError::code(self)
    }
}

impl Coded for crate::RecordError {
    fn code(&self) -> &str {
        crate::RecordError::code(self)
    }
}
