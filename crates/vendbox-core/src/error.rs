//! `CoreError`: every way a domain rule can refuse something, each with a stable code.

use std::fmt;

/// What is wrong with one field of a request, in words a client can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's name as the client sent it (`minutes`).
    pub field: String,
    /// Stable machine-readable kind of problem.
    pub code: FieldErrorCode,
    /// A sentence saying what is allowed.
    pub message: String,
}

/// Kinds of field problems, rendered as the error `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldErrorCode {
    /// A number outside the offer's bounds.
    OutOfRange,
    /// A value the offer does not have (a region, an image).
    UnsupportedValue,
    /// A value the offer fixes; the client may leave it out or send exactly that value.
    NotAdjustable,
    /// A required field is absent.
    MissingField,
    /// A field the request does not have.
    UnknownField,
    /// A field of the wrong JSON type.
    WrongType,
    /// A value with the right type but the wrong shape (too long, bad characters).
    InvalidValue,
}

impl FieldErrorCode {
    /// The stable code.
    pub fn as_str(self) -> &'static str {
        match self {
            FieldErrorCode::OutOfRange => "out_of_range",
            FieldErrorCode::UnsupportedValue => "unsupported_value",
            FieldErrorCode::NotAdjustable => "not_adjustable",
            FieldErrorCode::MissingField => "missing_field",
            FieldErrorCode::UnknownField => "unknown_field",
            FieldErrorCode::WrongType => "wrong_type",
            FieldErrorCode::InvalidValue => "invalid_value",
        }
    }
}

impl FieldError {
    /// A field error with its sentence.
    pub fn new(field: impl Into<String>, code: FieldErrorCode, message: impl Into<String>) -> Self {
        Self { field: field.into(), code, message: message.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A refusal by a domain rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// One field of the request breaks a rule.
    #[error("{0}")]
    Field(FieldError),
    /// The catalog has no such offer.
    #[error("there is no offer `{0}`; GET /v1/offers lists them")]
    UnknownOffer(String),
    /// The offer exists but the operator has switched it off.
    #[error("offer `{0}` is not available on this vendbox")]
    OfferUnavailable(String),
    /// A state machine was asked for a move it does not have.
    #[error("a {entity} cannot go from `{from}` to `{to}`")]
    IllegalTransition {
        /// `lease` or `payment`.
        entity: &'static str,
        /// The current state.
        from: &'static str,
        /// The requested state.
        to: &'static str,
    },
    /// The lease has no actions left.
    #[error("every action this lease was bought with has been used; buy a new one")]
    ActionsExhausted,
    /// A price does not fit in 64 bits of atomic units.
    #[error("the price overflows; ask for fewer minutes or actions")]
    PriceOverflow,
}

impl CoreError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            CoreError::Field(f) => f.code.as_str(),
            CoreError::UnknownOffer(_) => "unknown_offer",
            CoreError::OfferUnavailable(_) => "offer_unavailable",
            CoreError::IllegalTransition { .. } => "illegal_transition",
            CoreError::ActionsExhausted => "actions_exhausted",
            CoreError::PriceOverflow => "price_overflow",
        }
    }

    /// Shorthand for a [`CoreError::Field`].
    pub fn field(field: impl Into<String>, code: FieldErrorCode, message: impl Into<String>) -> Self {
        CoreError::Field(FieldError::new(field, code, message))
    }
}
