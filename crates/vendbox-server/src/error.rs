//! `ApiError`: the one error type of the HTTP API. It renders
//! `{"error":{"code":"…","message":"…","field":"…"}}` with the right status; internals never
//! reach the client.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use vendbox_core::CoreError;
use vendbox_store::StoreError;

/// An error a client sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code (`out_of_range`, `unknown_offer`).
    pub code: &'static str,
    /// A sentence saying what is wrong and what to do.
    pub message: String,
    /// The request field at fault, when there is one.
    pub field: Option<String>,
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code.
    #[schema(example = "out_of_range")]
    pub code: String,
    /// What is wrong and what to do, for people.
    pub message: String,
    /// The request field at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    /// An error with no field.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), field: None }
    }

    /// The same error, blaming `field`.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// The same error with another message.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    /// 404 for a path or id that does not exist.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 500 that says nothing about internals; the cause goes to the log.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "vendbox hit an internal error; try again later",
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        let code = e.code();
        match e {
            CoreError::Field(f) => Self::new(StatusCode::BAD_REQUEST, code, f.message).with_field(f.field),
            CoreError::UnknownOffer(_) | CoreError::OfferUnavailable(_) => {
                Self::new(StatusCode::BAD_REQUEST, code, e.to_string()).with_field("offer_id")
            }
            CoreError::ActionsExhausted | CoreError::IllegalTransition { .. } => {
                Self::new(StatusCode::CONFLICT, code, e.to_string())
            }
            CoreError::PriceOverflow => Self::new(StatusCode::BAD_REQUEST, code, e.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Rule(core) => core.into(),
            StoreError::ActionsExhausted => CoreError::ActionsExhausted.into(),
            StoreError::ReplayKeyTaken => Self::new(
                StatusCode::CONFLICT,
                "payment_replayed",
                "this payment authorization was already used; sign a new one",
            ),
            StoreError::Conflict(m) => Self::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::NotFound(m) => Self::not_found("not_found", m),
            StoreError::InsufficientBalance { balance, needed } => Self::new(
                StatusCode::PAYMENT_REQUIRED,
                "insufficient_balance",
                format!("the balance is {balance}; this needs {needed}"),
            ),
            other => Self::internal(&other),
        }
    }
}

impl From<vendbox_service::LeaseError> for ApiError {
    /// The one place a lease service's refusal gets its HTTP status.
    fn from(e: vendbox_service::LeaseError) -> Self {
        use vendbox_service::LeaseError as E;
        let status = match e.root() {
            E::NotFound(_) => StatusCode::NOT_FOUND,
            E::MissingToken | E::BadToken(_) => StatusCode::UNAUTHORIZED,
            E::NotABox(_) | E::BadSshKey { .. } | E::CommandRefused { .. } => StatusCode::BAD_REQUEST,
            E::Unavailable(_) | E::SoldOut(_) | E::BoxUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            E::NotReady | E::Exhausted | E::NotActive(_) => StatusCode::CONFLICT,
            E::Ended { .. } => StatusCode::GONE,
            E::Rule(_) | E::Store(_) | E::Internal(_) | E::NotCharged(_) => {
                return match e.into_root() {
                    E::Rule(core) => core.into(),
                    E::Store(store) => store.into(),
                    other => Self::internal(&other),
                };
            }
        };
        let error = Self::new(status, e.code(), e.to_string());
        match e.field() {
            Some(field) => error.with_field(field.to_owned()),
            None => error,
        }
    }
}

impl From<vendbox_service::LockError> for ApiError {
    /// The one place a lock service's refusal gets its HTTP status.
    fn from(e: vendbox_service::LockError) -> Self {
        use vendbox_service::LockError as E;
        let status = match &e {
            E::NotOffered(_) => StatusCode::SERVICE_UNAVAILABLE,
            E::Refused { .. } => StatusCode::CONFLICT,
            E::Rule(_) | E::Store(_) => {
                return match e {
                    E::Rule(core) => core.into(),
                    E::Store(store) => store.into(),
                    other => Self::internal(&other),
                };
            }
        };
        Self::new(status, e.code(), e.to_string())
    }
}

impl From<vendbox_service::RecordError> for ApiError {
    /// The one place a record's refusal gets its HTTP status.
    fn from(e: vendbox_service::RecordError) -> Self {
        use vendbox_service::RecordError as E;
        match e {
            E::UnknownQuote(_) | E::UnknownPayment(_) => Self::not_found(e.code(), e.to_string()),
            E::Rule(core) => core.into(),
            E::Store(store) => store.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail { code: self.code.to_owned(), message: self.message, field: self.field },
        };
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_exhausted_is_one_conflict_whichever_check_finds_it() {
        let from_rule = ApiError::from(CoreError::ActionsExhausted);
        let from_store = ApiError::from(StoreError::ActionsExhausted);
        assert_eq!((from_rule.status, from_rule.code), (StatusCode::CONFLICT, "actions_exhausted"));
        assert_eq!(from_store, from_rule);
    }
}
