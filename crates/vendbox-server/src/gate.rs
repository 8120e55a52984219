//! The payment gate's HTTP side. The gate itself is `vendbox_service::Payments` (no HTTP): this
//! reads a request's payment proof from its headers, and renders what the gate answers: a 402
//! carrying every payment method's challenge (for x402 the v1 JSON body, the same body in
//! `X-Payment-Required`, and the v2 `PAYMENT-REQUIRED` header; for MPP a `WWW-Authenticate`
//! header per method), a 400 for a proof that cannot be read, and a paid answer with its receipt
//! headers (on a 2xx answer only, with `Cache-Control: private`) and `Vendbox-Payment-Id`.
//!
//! The 402's body is the body of the first challenge that has one: the gate puts first the
//! method that recognized the request's proof, so a refused MPP credential is answered with
//! MPP's RFC 9457 problem (`application/problem+json`) and anything else with x402's v1 JSON,
//! which x402 v1 clients read; MPP clients read the `WWW-Authenticate` headers either way.

use std::future::Future;

use axum::Json;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use vendbox_core::PaymentId;
use vendbox_pay::{Challenge, Charge, Proof};
use vendbox_service::{Coded, CreditSpend, Delivery, Paid, PayError, Payments, Spent, Unconfigured};

use crate::error::ApiError;

/// Response header naming the payment a paid response was paid with (`GET /v1/payments/{id}`).
pub const PAYMENT_ID: HeaderName = HeaderName::from_static("vendbox-payment-id");

/// The payment proof `headers` carry, for any method `payments` accepts, speaking for the
/// principal the request was authenticated as (`auth::authenticate`), if any, with the digest
/// of the body it was read with (`digest`), if it was read.
pub fn proof(payments: &Payments, headers: &HeaderMap) -> Proof {
    let mut proof = payments
        .proof_headers()
        .filter_map(|name| headers.get(name).map(|value| (name, value.as_bytes())))
        .fold(Proof::none(), |proof, (name, value)| proof.with(name, value));
    if let Some(digest) = crate::digest::current() {
        proof = proof.with_body_sha256(digest);
    }
    match crate::auth::current_principal() {
        Some(principal) => proof.with_principal(principal),
        None => proof,
    }
}

/// Runs `work` for a paid request through `payments` and renders the outcome: 402 without
/// proof, pay-on-success with one. A `charge` of `None` means free. `work` is given the id of
/// the payment that pays for it, and may serve without selling ([`Delivery::not_delivered`])
/// or say how to take back what it made ([`Delivery::undo_with`]).
pub async fn pay<T, F, W>(
    payments: &Payments,
    headers: &HeaderMap,
    charge: Option<Charge>,
    work: F,
) -> Response
where
    T: IntoResponse,
    F: FnOnce(Option<PaymentId>) -> W,
    W: Future<Output = Result<Delivery<T, ApiError>, ApiError>>,
{
    respond(payments.pay(&proof(payments, headers), charge, work).await, |value| value)
}

/// As [`pay`], for work that can also take its payment from credits in its own write
/// (`Payments::pay_spending`): `spend` runs instead of `work` when the request pays with credits.
pub async fn pay_spending<T, F, W, S, SW>(
    payments: &Payments,
    headers: &HeaderMap,
    charge: Option<Charge>,
    work: F,
    spend: S,
) -> Response
where
    T: IntoResponse,
    F: FnOnce(Option<PaymentId>) -> W,
    W: Future<Output = Result<Delivery<T, ApiError>, ApiError>>,
    S: FnOnce(CreditSpend) -> SW,
    SW: Future<Output = Result<Spent<T>, ApiError>>,
{
    respond(payments.pay_spending(&proof(payments, headers), charge, work, spend).await, |value| value)
}

/// As [`pay`], for work that either delivers or fails.
pub async fn pay_on_success<T, W>(
    payments: &Payments,
    headers: &HeaderMap,
    charge: Option<Charge>,
    work: W,
) -> Response
where
    T: IntoResponse,
    W: Future<Output = Result<T, ApiError>>,
{
    pay(payments, headers, charge, |_| async move { work.await.map(Delivery::delivered) }).await
}

/// The response for what the gate answered, the paid value shaped by `answer`.
pub fn respond<T, R: IntoResponse>(
    result: Result<Paid<T>, PayError<ApiError>>,
    answer: impl FnOnce(T) -> R,
) -> Response {
    match result {
        Ok(Paid { value, payment, receipt }) => {
            let mut response = answer(value).into_response();
            if let Some(receipt) = &receipt {
                with_receipt(&mut response, receipt);
            }
            with_payment_id(response, payment)
        }
        Err(error) => refusal(error),
    }
}

/// The response for a paid request that was not served.
pub fn refusal(error: PayError<ApiError>) -> Response {
    let payment = error.payment();
    let response = match error {
        PayError::Required { code, message, malformed: true, challenges, .. } => {
            // A method that answers a bad proof with a 400 body of its own (an RFC 9457 problem)
            // is answered in it; otherwise the API's coded error.
            match challenges.iter().find_map(|c| c.body.clone().filter(is_bad_request_problem)) {
                Some(problem) => {
                    let mut response = (StatusCode::BAD_REQUEST, Json(problem)).into_response();
                    insert(response.headers_mut(), header::CONTENT_TYPE, "application/problem+json");
                    response
                }
                None => ApiError::new(StatusCode::BAD_REQUEST, code, message)
                    .with_field("payment header")
                    .into_response(),
            }
        }
        PayError::Required { message, challenges, .. } => challenge(&challenges, &message),
        PayError::Unavailable(message) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "payment_verification_unavailable", message)
                .into_response()
        }
        PayError::Store(e) => ApiError::from(e).into_response(),
        PayError::Work { error, .. } => error.into_response(),
        PayError::AfterSettlement { error, receipt, .. } => {
            let mut response = error.into_response();
            with_receipt(&mut response, &receipt);
            response
        }
        PayError::Internal { message, .. } => ApiError::internal(&message).into_response(),
    };
    with_payment_id(response, payment)
}

/// An RFC 9457 problem body with status 400.
fn is_bad_request_problem(body: &serde_json::Value) -> bool {
    body.get("type").is_some_and(serde_json::Value::is_string)
        && body.get("status") == Some(&serde_json::json!(400))
}

/// A 402 carrying `challenges`: each method's headers (a header several methods send is sent
/// once per method), and the body of the first method that has one (`{"message"}` otherwise),
/// as `application/problem+json` when it is an RFC 9457 problem (it has `type` and `status`).
pub fn challenge(challenges: &[Challenge], message: &str) -> Response {
    let body = challenges
        .iter()
        .find_map(|c| c.body.clone())
        .unwrap_or_else(|| serde_json::json!({ "message": message }));
    let problem = body.get("type").is_some_and(serde_json::Value::is_string)
        && body.get("status").is_some_and(serde_json::Value::is_u64);
    let mut response = (StatusCode::PAYMENT_REQUIRED, Json(body)).into_response();
    if problem {
        insert(response.headers_mut(), header::CONTENT_TYPE, "application/problem+json");
    }
    let mut exposed: Vec<&str> = Vec::new();
    for c in challenges {
        for (name, value) in &c.headers {
            if let Ok(value) = HeaderValue::from_str(value) {
                response.headers_mut().append(HeaderName::from_static(name), value);
            }
            if !exposed.contains(name) {
                exposed.push(name);
            }
        }
    }
    insert(response.headers_mut(), header::ACCESS_CONTROL_EXPOSE_HEADERS, &exposed.join(", "));
    insert(response.headers_mut(), header::CACHE_CONTROL, "no-store");
    response
}

impl From<Unconfigured> for ApiError {
    fn from(e: Unconfigured) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.code(), e.to_string())
    }
}

impl Coded for ApiError {
    fn code(&self) -> &str {
        self.code
    }
}

/// Adds `receipt`'s headers to a 2xx `response` (receipts go with successful answers only),
/// kept out of shared caches.
fn with_receipt(response: &mut Response, receipt: &vendbox_pay::Receipt) {
    if !response.status().is_success() {
        return;
    }
    insert_all(response.headers_mut(), &receipt.headers);
    insert(response.headers_mut(), header::CACHE_CONTROL, "private");
    insert(
        response.headers_mut(),
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        "payment-response, x-payment-response, payment-receipt, vendbox-receipt, vendbox-payment-id",
    );
}

fn with_payment_id(mut response: Response, id: Option<PaymentId>) -> Response {
    if let Some(id) = id {
        insert(response.headers_mut(), PAYMENT_ID, &id.to_string());
    }
    response
}

fn insert_all(headers: &mut HeaderMap, pairs: &[(&'static str, String)]) {
    for (name, value) in pairs {
        insert(headers, HeaderName::from_static(name), value);
    }
}

fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}
