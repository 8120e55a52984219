//! The payment gate every paid route goes through. No proof: a 402 offering the same charge in
//! x402 v1 (JSON body, also in `X-Payment-Required`) and v2 (`PAYMENT-REQUIRED`), and nothing
//! else changes. A proof: check it,
//! verify it on chain, reserve its replay key, do the work, then settle, or void when the work
//! failed. Money moves only after the work succeeded, and the response (with the receipt) goes
//! out only after the money moved.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::json;
use vendbox_core::{Payment, PaymentId, PaymentMethod, PaymentState, ReplayKey, Usdc};
use vendbox_pay::chain::VerifyError;
use vendbox_pay::exact::{self, Acceptance, Charge, CheckedPayment, Requirements, SentPayment, Version};
use vendbox_pay::facilitator::{Facilitator, SettleError};
use vendbox_pay::wire::{self, SettlementResponse};
use vendbox_pay::{Reason, Rejection};
use vendbox_store::{PaymentOutcome, Store, StoreError};

use crate::error::ApiError;
use crate::faults::Faults;

/// Response header naming the payment a paid response was paid with (`GET /v1/payments/{id}`).
pub const PAYMENT_ID: HeaderName = HeaderName::from_static("vendbox-payment-id");

/// What paid work produced: an answer, whether it is worth the price, and how to take it back
/// when the money then does not move.
pub struct Delivery<T> {
    value: T,
    delivered: bool,
    undo: Option<Step<()>>,
    settled: Option<Step<Result<(), ApiError>>>,
}

/// A boxed step of paid work that runs around the settlement.
type Step<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<T> Delivery<T> {
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
    /// answer (the payment stays settled and is named in the answer).
    #[must_use]
    pub fn after_settlement(
        mut self,
        then: impl Future<Output = Result<(), ApiError>> + Send + 'static,
    ) -> Self {
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

impl<T: std::fmt::Debug> std::fmt::Debug for Delivery<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("value", &self.value)
            .field("delivered", &self.delivered)
            .field("undo", &self.undo.is_some())
            .field("after_settlement", &self.settled.is_some())
            .finish()
    }
}

/// The gate: what vendbox accepts, who settles, and where payments are recorded.
#[derive(Debug, Clone)]
pub struct PaymentGate {
    /// What vendbox accepts; `None` while the operator has set no payee.
    acceptance: Option<Acceptance>,
    /// Verifies and settles.
    facilitator: Option<Arc<dyn Facilitator>>,
    /// Where payments are reserved and finished.
    store: Arc<dyn Store>,
    /// Base of the resource URLs named in requirements.
    public_url: String,
    /// Failures injected by crash tests.
    faults: Faults,
    /// Payment headers the facilitator refused lately, so that a replayed bad header costs a
    /// lookup, not another call to a chain.
    refused: Arc<std::sync::Mutex<RefusedHeaders>>,
}

/// How long a refused header is answered from memory.
const REFUSED_TTL: std::time::Duration = std::time::Duration::from_mins(1);

/// How many refused headers are remembered (the oldest are forgotten first).
const REFUSED_MAX: usize = 10_000;

/// Headers (by SHA-256) the facilitator refused, with the refusal and when it is forgotten.
#[derive(Debug, Default)]
struct RefusedHeaders {
    by_hash: std::collections::HashMap<[u8; 32], (Rejection, std::time::Instant)>,
    order: std::collections::VecDeque<[u8; 32]>,
}

impl RefusedHeaders {
    fn get(&mut self, hash: &[u8; 32]) -> Option<Rejection> {
        match self.by_hash.get(hash) {
            Some((rejection, until)) if *until > std::time::Instant::now() => Some(rejection.clone()),
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
        if self.by_hash.insert(hash, (rejection, std::time::Instant::now() + REFUSED_TTL)).is_none() {
            self.order.push_back(hash);
        }
    }
}

impl PaymentGate {
    /// A gate taking payments as `acceptance` says, through `facilitator`.
    pub fn new(
        acceptance: Option<Acceptance>,
        facilitator: Option<Arc<dyn Facilitator>>,
        store: Arc<dyn Store>,
        public_url: String,
        faults: Faults,
    ) -> Self {
        Self { acceptance, facilitator, store, public_url, faults, refused: Arc::default() }
    }

    /// A gate that takes no payments: paid routes answer 503 `payments_unconfigured`.
    pub fn unconfigured(store: Arc<dyn Store>, public_url: String) -> Self {
        Self::new(None, None, store, public_url, Faults::default())
    }

    /// What vendbox accepts, when it takes payments.
    pub fn acceptance(&self) -> Option<&Acceptance> {
        self.acceptance.as_ref()
    }

    /// The requirements for `amount` at `path`; `None` when the amount is zero (free).
    pub fn charge(
        &self,
        amount: Usdc,
        path: &str,
        description: &str,
    ) -> Result<Option<Requirements>, ApiError> {
        if amount == Usdc::ZERO {
            return Ok(None);
        }
        let acceptance = self.acceptance.clone().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "payments_unconfigured",
                "this vendbox takes no payments yet: its operator must set payments.pay_to",
            )
        })?;
        let charge = Charge {
            amount,
            resource: format!("{}{path}", self.public_url),
            description: description.to_owned(),
            mime_type: "application/json".into(),
        };
        Ok(Some(Requirements::new(acceptance, charge)))
    }

    /// Runs `work` for a paid request: 402 without proof, and pay-on-success with one.
    /// `requirements` of `None` means free: the work runs with no payment.
    pub async fn pay_on_success<T, W>(
        &self,
        headers: &HeaderMap,
        requirements: Option<Requirements>,
        work: W,
    ) -> Response
    where
        T: IntoResponse,
        W: Future<Output = Result<T, ApiError>>,
    {
        self.pay_for(headers, requirements, |_| async move { work.await.map(Delivery::delivered) }).await
    }

    /// As [`Self::pay_on_success`], for work that may serve the request without selling
    /// anything ([`Delivery::not_delivered`]: voided, not charged) or that must be taken back if
    /// the settlement fails ([`Delivery::undo_with`]). `work` is given the id of the payment
    /// that pays for it (`None` when free), to record next to what it makes.
    pub async fn pay_for<T, F, W>(
        &self,
        headers: &HeaderMap,
        requirements: Option<Requirements>,
        work: F,
    ) -> Response
    where
        T: IntoResponse,
        F: FnOnce(Option<PaymentId>) -> W,
        W: Future<Output = Result<Delivery<T>, ApiError>>,
    {
        let Some(requirements) = requirements else {
            return match work(None).await {
                Ok(Delivery { value, settled: Some(then), .. }) => match then.await {
                    Ok(()) => value.into_response(),
                    Err(error) => error.into_response(),
                },
                Ok(delivery) => delivery.value.into_response(),
                Err(error) => error.into_response(),
            };
        };
        let admitted = match self.admit(headers, &requirements).await {
            Ok(admitted) => admitted,
            Err(refusal) => return refusal,
        };
        let outcome = if self.faults.fail_work {
            Err(ApiError::internal(&"injected fault: fail-work"))
        } else {
            work(Some(admitted.payment.id)).await
        };
        match outcome {
            Err(error) => {
                let reason = format!("the paid work failed ({}); nothing was charged", error.code);
                self.void(admitted.payment.id, &reason).await;
                with_payment_id(error.into_response(), admitted.payment.id)
            }
            Ok(Delivery { value, delivered: false, .. }) => {
                let id = admitted.payment.id;
                self.void(id, "nothing was sold for this request; nothing was charged").await;
                with_payment_id(value.into_response(), id)
            }
            Ok(Delivery { value, delivered: true, undo, settled }) => match self.settle(admitted).await {
                Ok(receipt) => match settled {
                    None => (receipt, value).into_response(),
                    Some(then) => match then.await {
                        Ok(()) => (receipt, value).into_response(),
                        Err(error) => {
                            tracing::error!(
                                code = error.code,
                                "paid work could not be completed after settlement"
                            );
                            (receipt, error).into_response()
                        }
                    },
                },
                Err(refusal) => {
                    if let Some(undo) = undo {
                        undo.await;
                    }
                    refusal
                }
            },
        }
    }

    /// Reads, checks, verifies and reserves the payment in `headers`.
    async fn admit(&self, headers: &HeaderMap, requirements: &Requirements) -> Result<Admitted, Response> {
        let header = |name: &str| headers.get(name).map(|v| v.to_str().map_err(|_| ()));
        let (v2, v1) = (header(wire::PAYMENT_SIGNATURE), header(wire::X_PAYMENT));
        if matches!(v2, Some(Err(()))) || matches!(v1, Some(Err(()))) {
            return Err(refuse(
                requirements,
                &Rejection::new(Reason::HeaderEncoding, "the payment header is not ASCII"),
            ));
        }
        let sent = match SentPayment::from_headers(v2.and_then(Result::ok), v1.and_then(Result::ok)) {
            None => return Err(challenge(requirements, "payment_required", "pay this request with x402")),
            Some(sent) => sent.map_err(|r| refuse(requirements, &r))?,
        };
        let checked =
            exact::check(sent, requirements, exact::unix_now()).map_err(|r| refuse(requirements, &r))?;
        // Cheap checks before any call to a chain: a header refused lately, and a replay key
        // already taken here (the reservation below still decides a race).
        let hash: [u8; 32] = {
            use sha2::Digest as _;
            let mut digest = sha2::Sha256::new();
            for value in [v2, v1].into_iter().flatten().flatten() {
                digest.update(value.as_bytes());
                digest.update([0]);
            }
            digest.finalize().into()
        };
        let known = self.refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&hash);
        if let Some(rejection) = known {
            return Err(refuse(requirements, &rejection));
        }
        let payment = reservation(&checked, requirements);
        if self
            .store
            .payment_by_replay_key(&payment.replay_key)
            .await
            .map_err(|e| ApiError::from(e).into_response())?
            .is_some()
        {
            return Err(refuse(requirements, &replayed()));
        }
        let facilitator =
            self.facilitator.as_ref().ok_or_else(|| unavailable("no facilitator is configured"))?;
        match facilitator.verify(&checked, requirements).await {
            Ok(()) => {}
            Err(VerifyError::Rejected(r)) => {
                self.refused
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(hash, r.clone());
                return Err(refuse(requirements, &r));
            }
            Err(VerifyError::Unavailable(m)) => {
                tracing::warn!(error = %m, "payment verification unavailable");
                return Err(unavailable("the payment could not be verified right now; try again"));
            }
        }
        match self.store.reserve_payment(&payment).await {
            Ok(()) => {}
            Err(StoreError::ReplayKeyTaken) => return Err(refuse(requirements, &replayed())),
            Err(e) => return Err(ApiError::from(e).into_response()),
        }
        tracing::info!(payment = %payment.id, payer = %checked.payer(), amount = %payment.amount, "payment reserved");
        Ok(Admitted { payment, checked, requirements: requirements.clone() })
    }

    /// Takes the money; the receipt headers, or the refusal when the money did not move.
    async fn settle(&self, admitted: Admitted) -> Result<HeaderMap, Response> {
        let facilitator =
            self.facilitator.clone().ok_or_else(|| unavailable("no facilitator is configured"))?;
        let (store, faults) = (self.store.clone(), self.faults.clone());
        let Admitted { payment, checked, requirements } = admitted;
        let id = payment.id;
        // A task of its own: a client that hangs up, or the request timeout, must not cut a
        // settlement off between sending it and recording it.
        let task = tokio::spawn(async move {
            if let Some(pause) = faults.pause_before_settle {
                tracing::warn!(payment = %id, "fault: pausing before settlement");
                tokio::time::sleep(pause).await;
            }
            let result = facilitator.settle(&checked, &requirements).await;
            if let (Ok(_), Some(pause)) = (&result, faults.pause_after_settle) {
                tracing::warn!(payment = %id, "fault: pausing after settlement, before recording it");
                tokio::time::sleep(pause).await;
            }
            let outcome = match &result {
                Ok(tx) => Some(PaymentOutcome::Settled { settlement_ref: tx.to_string() }),
                Err(SettleError::Unconfirmed { .. }) => None,
                Err(e) => Some(PaymentOutcome::Voided { reason: format!("settlement failed: {e}") }),
            };
            if let Some(outcome) = outcome
                && let Err(e) = store.finish_payment(id, &outcome, Utc::now()).await
            {
                tracing::error!(payment = %id, error = %e, "could not record the settlement; the settlement worker will");
            }
            (result, checked, requirements)
        });
        let (result, checked, requirements) =
            task.await.map_err(|e| ApiError::internal(&e).into_response())?;
        match result {
            Ok(tx) => {
                tracing::info!(payment = %id, transaction = %tx, "payment settled");
                Ok(receipt(&checked, &requirements, id, &tx.to_string()))
            }
            Err(SettleError::Unconfirmed { transaction, message }) => {
                // Sent (or maybe sent): the work is delivered, and the chain decides the rest.
                tracing::warn!(payment = %id, error = %message, "settlement unconfirmed; delivering");
                let tx = transaction.map(|t| t.to_string()).unwrap_or_default();
                Ok(receipt(&checked, &requirements, id, &tx))
            }
            Err(SettleError::Refused(r)) => Err(with_payment_id(refuse(&requirements, &r), id)),
            Err(e) => {
                tracing::warn!(payment = %id, error = %e, "settlement failed; nothing was charged");
                let refusal =
                    challenge(&requirements, "settlement_failed", &format!("{e}; nothing was charged"));
                Err(with_payment_id(refusal, id))
            }
        }
    }

    /// Lets the payment go: the buyer is not charged.
    async fn void(&self, id: PaymentId, reason: &str) {
        match self
            .store
            .finish_payment(id, &PaymentOutcome::Voided { reason: reason.to_owned() }, Utc::now())
            .await
        {
            Ok(_) => tracing::info!(payment = %id, reason, "payment voided"),
            Err(e) => {
                tracing::error!(payment = %id, error = %e, "could not void; the settlement worker will");
            }
        }
    }
}

/// The refusal of an authorization this vendbox has seen before.
fn replayed() -> Rejection {
    Rejection::new(Reason::Replayed, "this authorization was already used here; sign a new one")
}

/// A payment that passed every check and holds its replay key.
#[derive(Debug)]
struct Admitted {
    payment: Payment,
    checked: CheckedPayment,
    requirements: Requirements,
}

fn reservation(checked: &CheckedPayment, requirements: &Requirements) -> Payment {
    let acceptance = &requirements.acceptance;
    let auth = &checked.authorization;
    let now = Utc::now();
    let method = match checked.sent.version() {
        Version::V1 => PaymentMethod::X402ExactV1,
        Version::V2 => PaymentMethod::X402ExactV2,
    };
    let proof = json!({
        "payment": checked.sent.to_json(),
        "requirements": requirements.v2(),
        "resource": requirements.charge.resource,
    });
    Payment {
        id: PaymentId::new_random(),
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
        created_at: now,
        updated_at: now,
    }
}

/// The receipt headers for a settled payment, in the payment's own protocol version.
fn receipt(checked: &CheckedPayment, requirements: &Requirements, id: PaymentId, tx: &str) -> HeaderMap {
    let network = requirements.acceptance.network;
    let (name, network) = match checked.sent.version() {
        Version::V1 => (wire::X_PAYMENT_RESPONSE, network.v1_label()),
        Version::V2 => (wire::PAYMENT_RESPONSE, network.caip2()),
    };
    let body = SettlementResponse {
        success: true,
        transaction: tx.to_owned(),
        network,
        payer: Some(checked.payer().to_checksum(None)),
        error_reason: None,
    };
    let mut headers = HeaderMap::new();
    insert(&mut headers, HeaderName::from_static(name), &wire::encode_header(&body));
    insert(&mut headers, PAYMENT_ID, &id.to_string());
    insert(
        &mut headers,
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        "payment-response, x-payment-response, vendbox-payment-id",
    );
    headers
}

/// A 402 offering `requirements`, saying why in `code` (and `message` for people): the v1 body,
/// the same body as base64 JSON in `X-Payment-Required` (VpsAgent documents that header), and
/// the v2 `PAYMENT-REQUIRED` header.
pub fn challenge(requirements: &Requirements, code: &str, message: &str) -> Response {
    let (v1, v2) = requirements.challenge(code);
    let mut body = serde_json::to_value(&v1).unwrap_or_default();
    body["message"] = json!(message);
    let v1_header = wire::encode_header(&body);
    let mut response = (StatusCode::PAYMENT_REQUIRED, axum::Json(body)).into_response();
    insert(
        response.headers_mut(),
        HeaderName::from_static(wire::PAYMENT_REQUIRED),
        &wire::encode_header(&v2),
    );
    insert(response.headers_mut(), HeaderName::from_static(wire::X_PAYMENT_REQUIRED), &v1_header);
    insert(
        response.headers_mut(),
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        "payment-required, x-payment-required",
    );
    insert(response.headers_mut(), header::CACHE_CONTROL, "no-store");
    response
}

/// The answer to a refused payment: 400 when the header could not be read, 402 otherwise.
fn refuse(requirements: &Requirements, rejection: &Rejection) -> Response {
    tracing::info!(reason = rejection.reason.code(), message = %rejection.message, "payment refused");
    if rejection.reason.is_malformed_request() {
        return ApiError::new(StatusCode::BAD_REQUEST, rejection.reason.code(), rejection.message.clone())
            .with_field("payment header")
            .into_response();
    }
    challenge(requirements, rejection.reason.code(), &rejection.message)
}

fn unavailable(message: &str) -> Response {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "payment_verification_unavailable", message)
        .into_response()
}

fn with_payment_id(mut response: Response, id: PaymentId) -> Response {
    insert(response.headers_mut(), PAYMENT_ID, &id.to_string());
    response
}

fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}
