//! What a lease's owner buys after the lease: extensions of an active lease, applied once paid,
//! and renewals on record.

use chrono::{DateTime, Utc};
use vendbox_core::{Lease, LeaseId, LeaseState, PaymentId, PaymentState};
use vendbox_store::StoreError;

use crate::error::LeaseError;
use crate::leases::Boxes;

/// A checked extension of an active lease, applied once it is paid for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extension {
    id: LeaseId,
    /// The expiry it moves from (the store refuses if it moved meanwhile).
    from: DateTime<Utc>,
    /// The expiry it moves to.
    pub until: DateTime<Utc>,
}

impl Boxes {
    /// How often the lease was renewed, and the payment of its latest renewal.
    pub async fn renewals(&self, id: LeaseId) -> Result<(u32, Option<PaymentId>), LeaseError> {
        Ok(self.store.lease_renewals(id).await?)
    }

    /// A payment's settlement reference (transaction hash), once it settled.
    pub async fn settlement_of(&self, payment: Option<PaymentId>) -> Option<String> {
        let payment = self.store.get_payment(payment?).await.ok()??;
        if payment.state == PaymentState::Settled { payment.settlement_ref } else { None }
    }

    /// Checks that an active lease can be extended by `minutes`, and what its expiry would be.
    pub fn extension(&self, lease: &Lease, minutes: u32) -> Result<Extension, LeaseError> {
        match (lease.state, lease.expires_at) {
            (LeaseState::Active, Some(from)) if from > self.clock.now() => Ok(Extension {
                id: lease.id,
                from,
                until: from + chrono::Duration::minutes(i64::from(minutes)),
            }),
            _ => Err(LeaseError::NotActive(format!(
                "this machine is {}; only an active one can be extended",
                lease.state.as_str()
            ))),
        }
    }

    /// Moves the lease's expiry as `extension` says, recording `payment` (run once it settled).
    pub fn apply(
        &self,
        extension: Extension,
        payment: Option<PaymentId>,
    ) -> impl Future<Output = Result<(), LeaseError>> + Send + 'static {
        let store = self.store.clone();
        let clock = self.clock.clone();
        async move {
            let Extension { id, from, until } = extension;
            match store.extend_lease(id, from, until, payment, clock.now()).await {
                Ok(_) => Ok(()),
                Err(StoreError::Conflict(_)) => Err(LeaseError::NotActive(
                    "the machine ended or was extended meanwhile; the payment is named in this answer".into(),
                )),
                Err(e) => Err(e.into()),
            }
        }
    }
}
