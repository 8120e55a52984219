//! `Lease`: what a buyer got, with its state machine, time window and action budget.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::CoreError;
use crate::ids::{LeaseId, OfferId, PaymentId, QuoteId};

/// Where a lease is in its life.
///
/// ```text
/// pending ─▶ provisioning ─▶ active ─▶ expired | terminated | failed
///    │             │
///    └─────────────┴──▶ failed | terminated
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// Paid or being paid; nothing started yet.
    Pending,
    /// The backend is making the box.
    Provisioning,
    /// The box answers; the buyer can use it.
    Active,
    /// Its time or actions ran out.
    Expired,
    /// Ended on request.
    Terminated,
    /// The box could not be made or was lost; `failure_reason` says why.
    Failed,
}

impl LeaseState {
    /// Every state, for iteration and parsing.
    pub const ALL: [LeaseState; 6] = [
        LeaseState::Pending,
        LeaseState::Provisioning,
        LeaseState::Active,
        LeaseState::Expired,
        LeaseState::Terminated,
        LeaseState::Failed,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Pending => "pending",
            LeaseState::Provisioning => "provisioning",
            LeaseState::Active => "active",
            LeaseState::Expired => "expired",
            LeaseState::Terminated => "terminated",
            LeaseState::Failed => "failed",
        }
    }

    /// The state stored under `name`.
    pub fn from_name(name: &str) -> Option<LeaseState> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether the lease is over.
    pub fn is_terminal(self) -> bool {
        matches!(self, LeaseState::Expired | LeaseState::Terminated | LeaseState::Failed)
    }

    /// Whether the state machine has the move `self → next`.
    pub fn can_become(self, next: LeaseState) -> bool {
        use LeaseState::{Active, Expired, Failed, Pending, Provisioning, Terminated};
        matches!(
            (self, next),
            (Pending, Provisioning | Failed | Terminated)
                | (Provisioning, Active | Failed | Terminated)
                | (Active, Expired | Terminated | Failed)
        )
    }

    /// `next` if the move is legal, a [`CoreError::IllegalTransition`] otherwise.
    pub fn checked_move(self, next: LeaseState) -> Result<LeaseState, CoreError> {
        if self.can_become(next) {
            Ok(next)
        } else {
            Err(CoreError::IllegalTransition { entity: "lease", from: self.as_str(), to: next.as_str() })
        }
    }
}

/// A purchase of a box for a time window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Its id.
    pub id: LeaseId,
    /// What was bought.
    pub offer_id: OfferId,
    /// The quote it was bought at.
    pub quote_id: Option<QuoteId>,
    /// The payment that paid for it.
    pub payment_id: Option<PaymentId>,
    /// Where it is in its life.
    pub state: LeaseState,
    /// Region it runs in.
    pub region: Option<String>,
    /// Image it boots.
    pub image: Option<String>,
    /// Backend's handle of the box, once there is one.
    pub box_id: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it ends, if it is time-bound.
    pub expires_at: Option<DateTime<Utc>>,
    /// Commands left, if it has a budget.
    pub actions_remaining: Option<u32>,
    /// Why it failed, for its owner to read.
    pub failure_reason: Option<String>,
}

impl Lease {
    /// Moves to `next`, or refuses an illegal move and changes nothing.
    pub fn transition(&mut self, next: LeaseState) -> Result<(), CoreError> {
        self.state = self.state.checked_move(next)?;
        Ok(())
    }

    /// Spends one action; returns what is left. A lease without a budget never runs out.
    pub fn spend_action(&mut self) -> Result<Option<u32>, CoreError> {
        match self.actions_remaining {
            None => Ok(None),
            Some(0) => Err(CoreError::ActionsExhausted),
            Some(n) => {
                self.actions_remaining = Some(n - 1);
                Ok(self.actions_remaining)
            }
        }
    }

    /// Whether its window or its budget is used up at `now`.
    pub fn is_used_up_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| now >= at) || self.actions_remaining == Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LeaseState::{Active, Expired, Failed, Pending, Provisioning, Terminated};

    fn lease() -> Lease {
        Lease {
            id: LeaseId::new_random(),
            offer_id: "h3retik-micro".parse().unwrap(),
            quote_id: None,
            payment_id: None,
            state: Pending,
            region: None,
            image: None,
            box_id: None,
            created_at: Utc::now(),
            expires_at: None,
            actions_remaining: Some(2),
            failure_reason: None,
        }
    }

    #[test]
    fn the_happy_path_is_legal() {
        let mut l = lease();
        for next in [Provisioning, Active, Expired] {
            l.transition(next).unwrap();
        }
        assert!(l.state.is_terminal());
    }

    #[test]
    fn illegal_moves_are_refused_and_change_nothing() {
        let legal: &[(LeaseState, LeaseState)] = &[
            (Pending, Provisioning),
            (Pending, Failed),
            (Pending, Terminated),
            (Provisioning, Active),
            (Provisioning, Failed),
            (Provisioning, Terminated),
            (Active, Expired),
            (Active, Terminated),
            (Active, Failed),
        ];
        for from in LeaseState::ALL {
            for to in LeaseState::ALL {
                let mut l = lease();
                l.state = from;
                let result = l.transition(to);
                if legal.contains(&(from, to)) {
                    assert!(result.is_ok(), "{from:?} -> {to:?}");
                } else {
                    assert_eq!(result.unwrap_err().code(), "illegal_transition", "{from:?} -> {to:?}");
                    assert_eq!(l.state, from);
                }
            }
        }
    }

    #[test]
    fn actions_run_out() {
        let mut l = lease();
        assert_eq!(l.spend_action().unwrap(), Some(1));
        assert_eq!(l.spend_action().unwrap(), Some(0));
        assert!(l.is_used_up_at(Utc::now()));
        assert_eq!(l.spend_action().unwrap_err(), CoreError::ActionsExhausted);
        l.actions_remaining = None;
        assert_eq!(l.spend_action().unwrap(), None);
    }

    #[test]
    fn names_round_trip() {
        for s in LeaseState::ALL {
            assert_eq!(LeaseState::from_name(s.as_str()), Some(s));
        }
        assert_eq!(LeaseState::from_name("gone"), None);
    }
}
