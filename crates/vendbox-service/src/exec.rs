//! Commands in a lease's box: each spends one action in the store before it runs, and the
//! action is given back only when boxd shows the command never reached it.

use std::time::Duration;

use vendbox_box::wire::{ProcessSpec, RunRequest, StartRequest};
use vendbox_box::{BoxError, BoxdClient};
use vendbox_core::{Lease, LeaseId, LeaseState};
use vendbox_store::StoreError;

use crate::error::LeaseError;
use crate::leases::{Boxes, box_of, end_lease};

/// Output kept per stream of a command run through the API; the rest is dropped and flagged.
pub const MAX_OUTPUT_BYTES: u64 = 1024 * 1024;

/// The biggest file `GET …/files` serves (it is streamed, never held whole).
pub const MAX_DOWNLOAD_BYTES: u64 = 1 << 30;

/// A command's time limit when the request sets none.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_mins(1);

/// The most a request may ask for.
pub const MAX_EXEC_TIMEOUT: Duration = Duration::from_mins(30);

/// What one command did.
#[derive(Debug)]
pub struct Ran {
    /// boxd's report.
    pub result: vendbox_box::wire::RunResult,
    /// Actions left after it (`None`: no budget).
    pub actions_remaining: Option<u32>,
}

impl Boxes {
    /// Refuses with a clear code unless the lease's box can take commands now.
    pub fn check_usable(&self, lease: &Lease) -> Result<(), LeaseError> {
        if lease.actions_remaining == Some(0) {
            return Err(LeaseError::Exhausted);
        }
        match lease.state {
            LeaseState::Active if lease.expires_at.is_some_and(|at| at <= self.clock.now()) => {
                Err(ended(lease))
            }
            LeaseState::Active => Ok(()),
            LeaseState::Pending | LeaseState::Provisioning => Err(LeaseError::NotReady),
            _ => Err(ended(lease)),
        }
    }

    /// A client for the lease's box, once it is usable.
    pub fn boxd(&self, lease: &Lease) -> Result<BoxdClient, LeaseError> {
        self.check_usable(lease)?;
        let box_id = box_of(lease).ok_or_else(|| ended(lease))?;
        Ok(self.backend.boxd(&box_id))
    }

    /// Begins one use of the lease's box outside the HTTP API (an SSH shell, command, file
    /// session or forwarded connection): checks the lease, spends an action where it has a
    /// budget, and returns its boxd.
    pub async fn begin_use(&self, lease: &Lease) -> Result<BoxdClient, LeaseError> {
        let client = self.boxd(lease)?;
        self.spend(lease).await?;
        Ok(client)
    }

    /// Spends one action of the lease, then runs `command` in its box for as long as its time
    /// limit allows. The action is given back only when boxd shows the command never started.
    pub async fn exec(&self, lease: &Lease, command: ProcessSpec) -> Result<Ran, LeaseError> {
        let client = self.boxd(lease)?;
        let actions_remaining = self.spend(lease).await?;
        let request = RunRequest { process: command, max_output_bytes: MAX_OUTPUT_BYTES };
        match client.run(&request).await {
            Ok(result) => {
                self.after_action(lease.id, actions_remaining);
                Ok(Ran { result, actions_remaining })
            }
            Err(e) => Err(self.action_failed(lease.id, actions_remaining, &e).await),
        }
    }

    /// Spends one action of the lease, then starts `command` in its box and streams its events.
    /// The caller calls [`Self::after_action`] when the stream ends.
    pub async fn exec_stream(
        &self,
        lease: &Lease,
        command: ProcessSpec,
    ) -> Result<(vendbox_box::ExecStream, Option<u32>), LeaseError> {
        let client = self.boxd(lease)?;
        let actions_remaining = self.spend(lease).await?;
        let request = StartRequest { process: command, stdin: false, pty: None };
        match client.start(&request).await {
            Ok(stream) => Ok((stream, actions_remaining)),
            Err(e) => Err(self.action_failed(lease.id, actions_remaining, &e).await),
        }
    }

    /// Spends one action of an active lease in the store.
    async fn spend(&self, lease: &Lease) -> Result<Option<u32>, LeaseError> {
        match self.store.spend_lease_action(lease.id, self.clock.now()).await {
            Ok(left) => Ok(left),
            Err(StoreError::ActionsExhausted) => Err(LeaseError::Exhausted),
            Err(StoreError::Conflict(_)) => {
                let fresh = self.store.get_lease(lease.id).await?.unwrap_or_else(|| lease.clone());
                Err(self.check_usable(&fresh).err().unwrap_or_else(|| ended(&fresh)))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Settles the action of a command whose call failed: given back when boxd never got the
    /// command, kept (and the lease ended if it was the last) when it may have run.
    async fn action_failed(
        &self,
        id: LeaseId,
        actions_remaining: Option<u32>,
        error: &BoxError,
    ) -> LeaseError {
        if error.request_not_acted_on() {
            self.refund(id).await;
        } else {
            self.after_action(id, actions_remaining);
        }
        LeaseError::from_box(error)
    }

    /// Gives back an action whose command could not run.
    async fn refund(&self, id: LeaseId) {
        if let Err(e) = self.store.refund_lease_action(id, self.clock.now()).await {
            tracing::warn!(lease = %id, error = %e, "could not give back an action whose command did not run");
        }
    }

    /// Ends the lease once its last action has run.
    pub fn after_action(&self, id: LeaseId, actions_remaining: Option<u32>) {
        if actions_remaining != Some(0) {
            return;
        }
        let store = self.store.clone();
        let backend = self.backend.clone();
        let clock = self.clock.clone();
        tokio::spawn(async move {
            if let Err(e) = end_lease(&*store, &*backend, &*clock, id, LeaseState::Expired, None).await {
                tracing::warn!(lease = %id, error = %e, "could not end a box whose actions ran out");
            }
        });
    }
}

/// The error a caller sees for a lease that has ended, saying how.
fn ended(lease: &Lease) -> LeaseError {
    LeaseError::ended(lease.state, lease.failure_reason.as_deref())
}
