//! `LeaseError`: what the lease services refuse, each with a stable code. The HTTP layer maps
//! each variant to its status in one place (`vendbox-server`'s `error.rs`); nothing here knows
//! HTTP.

use vendbox_box::BoxError;
use vendbox_core::{Capability, CoreError, LeaseState};
use vendbox_store::StoreError;

/// Why a lease service refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// No lease with a box has this id.
    #[error("there is no box `{0}`")]
    NotFound(String),
    /// The request presented no token.
    #[error("send the box's token as `Authorization: Bearer …`")]
    MissingToken,
    /// The token presented does not carry `wanted` on this lease.
    #[error("this token does not give `{}` on this box", .0.as_str())]
    BadToken(Capability),
    /// The offer sells no box.
    #[error("offer `{0}` does not sell a box")]
    NotABox(String),
    /// This vendbox cannot make such boxes at all.
    #[error("{0}")]
    Unavailable(String),
    /// The host has no room for another box of this size now.
    #[error("this vendbox has no {0} left for another box of this size; try again later or a smaller offer")]
    SoldOut(&'static str),
    /// A field holding an SSH public key does not hold one.
    #[error("`{field}` is not an OpenSSH public key (`ssh-ed25519 AAAA…`): {why}")]
    BadSshKey {
        /// The request field.
        field: String,
        /// What the parser said.
        why: String,
    },
    /// The box is still being made.
    #[error("the box is still being made; try again in a moment")]
    NotReady,
    /// Every action the lease was bought with has been used.
    #[error("every action this lease was bought with has been used; buy a new one")]
    Exhausted,
    /// The lease has ended (expired, terminated or failed, with its reason).
    #[error("{}", ended_message(*.state, .reason.as_deref()))]
    Ended {
        /// How it ended.
        state: LeaseState,
        /// Why it failed, when it did.
        reason: Option<String>,
    },
    /// The lease cannot be extended: it is not active, or it changed meanwhile.
    #[error("{0}")]
    NotActive(String),
    /// boxd refused the command (a bad request, not a fault of the box).
    #[error("{code}: {message}")]
    CommandRefused {
        /// boxd's code.
        code: String,
        /// boxd's message.
        message: String,
    },
    /// The box (or the backend) did not answer as it should.
    #[error("{0}")]
    BoxUnavailable(String),
    /// A purchase that made nothing: the inner error, and nothing was charged.
    #[error("{0}; nothing was charged")]
    NotCharged(Box<LeaseError>),
    /// A rule of the domain model.
    #[error(transparent)]
    Rule(#[from] CoreError),
    /// The store failed or refused.
    #[error(transparent)]
    Store(StoreError),
    /// Something that should not happen.
    #[error("{0}")]
    Internal(String),
}

impl LeaseError {
    /// The stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            LeaseError::NotFound(_) => "box_not_found",
            LeaseError::MissingToken => "missing_token",
            LeaseError::BadToken(_) => "bad_token",
            LeaseError::NotABox(_) => "not_a_box",
            LeaseError::Unavailable(_) => "boxes_unavailable",
            LeaseError::SoldOut(_) => "sold_out",
            LeaseError::BadSshKey { .. } => "bad_ssh_key",
            LeaseError::NotReady => "box_not_ready",
            LeaseError::Exhausted => "actions_exhausted",
            LeaseError::Ended { state: LeaseState::Terminated, .. } => "box_terminated",
            LeaseError::Ended { state: LeaseState::Failed, .. } => "box_failed",
            LeaseError::Ended { .. } => "box_expired",
            LeaseError::NotActive(_) => "not_active",
            LeaseError::CommandRefused { .. } => "command_refused",
            LeaseError::BoxUnavailable(_) => "box_unavailable",
            LeaseError::NotCharged(inner) => inner.code(),
            LeaseError::Rule(e) => e.code(),
            LeaseError::Store(_) | LeaseError::Internal(_) => "internal",
        }
    }

    /// The error under any `NotCharged` wrapping.
    pub fn root(&self) -> &LeaseError {
        match self {
            LeaseError::NotCharged(inner) => inner.root(),
            other => other,
        }
    }

    /// The error under any `NotCharged` wrapping, by value.
    pub fn into_root(self) -> LeaseError {
        match self {
            LeaseError::NotCharged(inner) => inner.into_root(),
            other => other,
        }
    }

    /// The request field at fault, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self.root() {
            LeaseError::BadSshKey { field, .. } => Some(field),
            _ => None,
        }
    }

    /// The error a caller sees for a lease that has ended, saying how.
    pub fn ended(state: LeaseState, reason: Option<&str>) -> LeaseError {
        LeaseError::Ended { state, reason: reason.map(str::to_owned) }
    }

    /// A backend or boxd failure.
    pub fn from_box(error: &BoxError) -> LeaseError {
        match error {
            BoxError::Boxd { status, code, message } if *status < 500 => {
                LeaseError::CommandRefused { code: code.clone(), message: message.clone() }
            }
            BoxError::Unsupported(m) => LeaseError::Unavailable(m.clone()),
            other => LeaseError::BoxUnavailable(other.to_string()),
        }
    }
}

impl From<StoreError> for LeaseError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::ActionsExhausted => LeaseError::Exhausted,
            StoreError::Rule(core) => LeaseError::Rule(core),
            other => LeaseError::Store(other),
        }
    }
}

fn ended_message(state: LeaseState, reason: Option<&str>) -> String {
    match state {
        LeaseState::Terminated => "this box was terminated at its owner's request".to_owned(),
        LeaseState::Failed => format!("this box failed: {}", reason.unwrap_or("no reason recorded")),
        _ => "this box's time has run out; buy a new one".to_owned(),
    }
}
