//! Orders: a client's idempotency key claimed once, its answer kept for the next sender.

use vendbox_core::LeaseId;

use crate::error::LeaseError;
use crate::leases::Boxes;

impl Boxes {
    /// Claims a client's idempotency key (see [`vendbox_store::Store::claim_request`]).
    pub async fn claim_request(
        &self,
        key: &str,
        body_hash: &str,
    ) -> Result<Option<(String, Option<String>)>, LeaseError> {
        Ok(self.store.claim_request(key, body_hash, self.clock.now()).await?)
    }

    /// Keeps the answer of a claimed request for the next sender of the same key.
    pub async fn finish_request(
        &self,
        key: &str,
        lease: Option<LeaseId>,
        answer: &str,
    ) -> Result<(), LeaseError> {
        Ok(self.store.finish_request(key, lease, answer).await?)
    }

    /// What the request claimed as `key` left, without claiming it (see
    /// [`vendbox_store::Store::request_claim`]).
    pub async fn request_claim(&self, key: &str) -> Result<Option<(String, Option<String>)>, LeaseError> {
        Ok(self.store.request_claim(key).await?)
    }

    /// Lets a key whose request made nothing be sent again.
    pub async fn release_request(&self, key: &str) {
        if let Err(e) = self.store.release_request(key).await {
            tracing::warn!(error = %e, "could not release a request id");
        }
    }
}
