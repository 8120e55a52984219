//! `Boxes`: the lifecycle of leases that have a box behind them, over a [`Backend`].
//!
//! A lease is made `provisioning`, its box is created, and it becomes `active` (with its window
//! starting then) only once the box's boxd answers; the payment settles after that. Commands
//! spend the lease's actions atomically in the store before they run. A lease ends `expired` at
//! its `expires_at` or when its last action has run, `terminated` on its owner's request, or
//! `failed` with a reason its owner can read; its box is destroyed in each case. At start-up
//! [`Boxes::reconcile`] makes the host and the store agree again.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use vendbox_box::wire::{ProcessSpec, RunRequest, StartRequest};
use vendbox_box::{Backend, BoxError, BoxId, BoxSpec, BoxStatus, BoxdClient, Limits, Usage};
use vendbox_core::{
    Capability, Lease, LeaseId, LeaseState, Offer, OfferKind, PaymentId, PaymentState, QuoteTerms,
    SecretToken,
};
use vendbox_store::{Store, StoreError};

use crate::error::ApiError;
use crate::worker::{Next, WorkResult, Worker};

/// How many live leases start-up reconciliation checks at once.
const RECONCILE_PARALLELISM: usize = 32;

/// What start-up reconciliation does with one live lease.
#[derive(Debug)]
enum Verdict {
    /// Its box answers: it goes on.
    Keep,
    /// Its time or actions ran out while vendbox was down: it was ended.
    Ended,
    /// It cannot go on, for this reason.
    Fail(String),
}

/// How often the expiry worker looks for leases whose time or actions ran out.
pub const EXPIRY_INTERVAL: Duration = Duration::from_millis(500);

/// Output kept per stream of a command run through the API; the rest is dropped and flagged.
pub const MAX_OUTPUT_BYTES: u64 = 1024 * 1024;

/// The biggest file `GET …/files` serves (it is streamed, never held whole).
pub const MAX_DOWNLOAD_BYTES: u64 = 1 << 30;

/// A command's time limit when the request sets none.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_mins(1);

/// The most a request may ask for.
pub const MAX_EXEC_TIMEOUT: Duration = Duration::from_mins(30);

/// Boxes for sale: a backend and the leases in the store.
#[derive(Debug)]
pub struct Boxes {
    backend: Arc<dyn Backend>,
    store: Arc<dyn Store>,
    /// What this host sells boxes from in all.
    capacity: Usage,
    /// What boxes being made right now will hold (not yet counted by the backend).
    making: Arc<std::sync::Mutex<Usage>>,
}

/// A box being made holds its share of the capacity until the backend counts it.
#[derive(Debug)]
struct Making {
    making: Arc<std::sync::Mutex<Usage>>,
    usage: Usage,
}

impl Drop for Making {
    fn drop(&mut self) {
        let mut making = self.making.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *making = making.minus(self.usage);
    }
}

/// An SSH public key that opens a lease's box, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshKey {
    /// `SHA256:…`.
    pub fingerprint: String,
    /// The OpenSSH line.
    pub public_key: String,
}

impl SshKey {
    /// Checks an OpenSSH public key line; 400 `bad_ssh_key` naming `field` otherwise.
    pub fn parse(line: &str, field: &str) -> Result<SshKey, ApiError> {
        let fingerprint = vendbox_ssh::fingerprint(line).map_err(|why| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_ssh_key",
                format!("`{field}` is not an OpenSSH public key (`ssh-ed25519 AAAA…`): {why}"),
            )
            .with_field(field)
        })?;
        Ok(SshKey { fingerprint, public_key: line.trim().to_owned() })
    }
}

/// A lease just made, with the token that opens it (shown once).
#[derive(Debug)]
pub struct Provisioned {
    /// The lease, active.
    pub lease: Lease,
    /// Its bearer tokens, one per capability asked for.
    pub tokens: Vec<(Capability, SecretToken)>,
}

impl Provisioned {
    /// The token of `capability`, as text (empty if it was not made).
    pub fn token(&self, capability: Capability) -> String {
        self.tokens
            .iter()
            .find(|(c, _)| *c == capability)
            .map(|(_, t)| t.expose().to_owned())
            .unwrap_or_default()
    }
}

/// What one command did.
#[derive(Debug)]
pub struct Ran {
    /// boxd's report.
    pub result: vendbox_box::wire::RunResult,
    /// Actions left after it (`None`: no budget).
    pub actions_remaining: Option<u32>,
}

impl Boxes {
    /// Boxes made by `backend`, with leases in `store`, sold up to the backend's capacity.
    pub fn new(backend: Arc<dyn Backend>, store: Arc<dyn Store>) -> Boxes {
        let capacity = backend.capacity();
        Boxes { backend, store, capacity, making: Arc::default() }
    }

    /// The same boxes sold up to `capacity` instead.
    #[must_use]
    pub fn with_capacity(self, capacity: Usage) -> Boxes {
        Boxes { capacity, ..self }
    }

    /// What this host sells boxes from in all.
    pub fn capacity(&self) -> Usage {
        self.capacity
    }

    /// Refuses, with 503 `sold_out`, a box of `offer` that the host cannot hold now. Asked
    /// before any payment is: nobody pays for a box that cannot be made.
    pub async fn admit(&self, offer: &Offer) -> Result<(), ApiError> {
        self.hold(limits_of(offer)).await.map(drop)
    }

    /// Holds a box's share of the capacity while it is made (checked again: time passed since
    /// [`Self::admit`], and other purchases may have come first).
    async fn hold(&self, limits: Limits) -> Result<Making, ApiError> {
        let wanted = Usage::of(limits);
        let used = self.backend.usage().await.map_err(|e| box_error(&e))?;
        let mut making = self.making.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(resource) = used.plus(*making).plus(wanted).exceeds(self.capacity) {
            return Err(sold_out(resource));
        }
        *making = making.plus(wanted);
        Ok(Making { making: self.making.clone(), usage: wanted })
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Makes a box for `offer` on `terms` and returns its active lease. On failure the lease is
    /// left `failed` with the reason, and the error says nothing was charged.
    pub async fn provision(
        &self,
        offer: &Offer,
        terms: &QuoteTerms,
        payment_id: Option<PaymentId>,
        ssh_keys: &[SshKey],
        capabilities: &[Capability],
    ) -> Result<Provisioned, ApiError> {
        if !matches!(offer.kind, OfferKind::Sandbox | OfferKind::Machine) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "not_a_box",
                format!("offer `{}` does not sell a box", offer.id),
            ));
        }
        if let Some(gpu) = &offer.resources.gpu {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "boxes_unavailable",
                format!(
                    "this vendbox's {} backend has no {}; nothing was charged",
                    self.backend.name(),
                    gpu.model
                ),
            ));
        }
        let now = now();
        let id = LeaseId::new_random();
        let box_id = BoxId::new(&id.to_string()).map_err(|e| ApiError::internal(&e))?;
        let tokens: Vec<(Capability, SecretToken)> =
            capabilities.iter().map(|c| (*c, SecretToken::generate())).collect();
        let mut lease = Lease {
            id,
            offer_id: offer.id.clone(),
            quote_id: None,
            payment_id,
            state: LeaseState::Provisioning,
            region: terms.region.clone(),
            image: terms.image.clone(),
            box_id: Some(box_id.to_string()),
            created_at: now,
            expires_at: None,
            actions_remaining: terms.actions,
            failure_reason: None,
        };
        let hashes: Vec<_> = tokens.iter().map(|(c, t)| (*c, t.hash())).collect();
        self.store.insert_lease(&lease, &hashes).await?;
        for key in ssh_keys {
            self.store.add_lease_ssh_key(lease.id, &key.fingerprint, &key.public_key).await?;
        }
        let spec = BoxSpec {
            id: box_id,
            image: terms.image.clone().unwrap_or_else(|| "host".into()),
            limits: limits_of(offer),
            egress: false,
        };
        let held = match self.hold(spec.limits).await {
            Ok(held) => held,
            Err(e) => {
                let reason = format!("{}; nothing was charged", e.message);
                self.fail(&mut lease, LeaseState::Provisioning, &reason).await;
                return Err(e.with_message(reason));
            }
        };
        let created = self.backend.create(&spec).await;
        drop(held);
        if let Err(e) = created {
            tracing::warn!(lease = %lease.id, error = %e, "a box could not be made");
            let reason = format!("the box could not be made: {e}");
            self.fail(&mut lease, LeaseState::Provisioning, &reason).await;
            return Err(box_error(&e).with_message(format!("{reason}; nothing was charged")));
        }
        let activated = now_ms_rounded();
        lease.expires_at = terms.minutes.map(|m| activated + chrono::Duration::minutes(i64::from(m)));
        lease.transition(LeaseState::Active)?;
        if let Err(e) = self.store.update_lease(&lease, LeaseState::Provisioning, activated).await {
            let _ = self.backend.destroy(&spec.id).await;
            return Err(e.into());
        }
        tracing::info!(lease = %lease.id, offer = %lease.offer_id, "box active");
        Ok(Provisioned { lease, tokens })
    }

    /// The lease `id` if `token` carries `wanted` on it; 404 and 401 otherwise (the same 404 for
    /// a lease that does not exist and one that is not a box). Reading a lease's state takes
    /// `Read`; running commands or touching its files takes `Root`; ending it, `Terminate`.
    pub async fn open(
        &self,
        id: &str,
        token: Option<&SecretToken>,
        wanted: Capability,
    ) -> Result<Lease, ApiError> {
        let missing = || ApiError::not_found("box_not_found", format!("there is no box `{id}`"));
        let lease_id: LeaseId = id.parse().map_err(|_| missing())?;
        let lease =
            self.store.get_lease(lease_id).await?.filter(|l| l.box_id.is_some()).ok_or_else(missing)?;
        self.authorize(lease, token, wanted).await
    }

    /// The capability `token` carries on `lease`, if it is one of the lease's tokens.
    pub async fn capability_of(
        &self,
        lease: &Lease,
        token: &SecretToken,
    ) -> Result<Option<Capability>, ApiError> {
        let tokens = self.store.lease_tokens(lease.id).await?;
        Ok(tokens.into_iter().find(|(_, hash)| hash.verify(token)).map(|(capability, _)| capability))
    }

    /// `lease` if `token` carries `wanted` (or root) on it; 401 otherwise.
    pub async fn authorize(
        &self,
        lease: Lease,
        token: Option<&SecretToken>,
        wanted: Capability,
    ) -> Result<Lease, ApiError> {
        let token = token.ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_token",
                "send the box's token as `Authorization: Bearer …`",
            )
        })?;
        if self.capability_of(&lease, token).await?.is_some_and(|c| c.allows(wanted)) {
            Ok(lease)
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_token",
                format!("this token does not give `{}` on this box", wanted.as_str()),
            ))
        }
    }

    /// Refuses with a clear code unless the lease's box can take commands now.
    pub fn check_usable(lease: &Lease) -> Result<(), ApiError> {
        if lease.actions_remaining == Some(0) {
            return Err(exhausted());
        }
        match lease.state {
            LeaseState::Active if lease.expires_at.is_some_and(|at| at <= now()) => Err(ended(lease)),
            LeaseState::Active => Ok(()),
            LeaseState::Pending | LeaseState::Provisioning => Err(ApiError::new(
                StatusCode::CONFLICT,
                "box_not_ready",
                "the box is still being made; try again in a moment",
            )),
            _ => Err(ended(lease)),
        }
    }

    /// A client for the lease's box, once it is usable.
    pub fn boxd(&self, lease: &Lease) -> Result<BoxdClient, ApiError> {
        Self::check_usable(lease)?;
        let box_id = lease.box_id.as_deref().and_then(|b| BoxId::new(b).ok()).ok_or_else(|| ended(lease))?;
        Ok(self.backend.boxd(&box_id))
    }

    /// Begins one use of the lease's box outside the HTTP API (an SSH shell, command, file
    /// session or forwarded connection): checks the lease, spends an action where it has a
    /// budget, and returns its boxd.
    pub async fn begin_use(&self, lease: &Lease) -> Result<BoxdClient, ApiError> {
        let client = self.boxd(lease)?;
        self.spend(lease).await?;
        Ok(client)
    }

    /// The lease a root token (a VpsAgent `root_password`) opens over SSH.
    pub async fn lease_for_password(&self, password: &str) -> Result<Option<LeaseId>, ApiError> {
        let token = SecretToken::presented(password);
        Ok(self
            .store
            .lease_for_token(&token.hash())
            .await?
            .filter(|(_, c)| *c == Capability::Root)
            .map(|(id, _)| id))
    }

    /// The lease whose id starts with `prefix` (a Storefront `machine_…` id's hex).
    pub async fn lease_by_prefix(&self, prefix: &str) -> Result<Option<Lease>, ApiError> {
        Ok(self.store.lease_by_id_prefix(prefix).await?.filter(|l| l.box_id.is_some()))
    }

    /// How often the lease was renewed, and the payment of its latest renewal.
    pub async fn renewals(&self, id: LeaseId) -> Result<(u32, Option<PaymentId>), ApiError> {
        Ok(self.store.lease_renewals(id).await?)
    }

    /// Who paid for the lease (the payer of its payment), when that is known.
    pub async fn buyer_of(&self, lease: &Lease) -> Option<String> {
        let payment = self.store.get_payment(lease.payment_id?).await.ok()??;
        Some(payment.replay_key.payer.to_lowercase())
    }

    /// A payment's settlement reference (transaction hash), once it settled.
    pub async fn settlement_of(&self, payment: Option<PaymentId>) -> Option<String> {
        let payment = self.store.get_payment(payment?).await.ok()??;
        if payment.state == PaymentState::Settled { payment.settlement_ref } else { None }
    }

    /// Checks that an active lease can be extended by `minutes`, and what its expiry would be.
    pub fn extension(&self, lease: &Lease, minutes: u32) -> Result<Extension, ApiError> {
        match (lease.state, lease.expires_at) {
            (LeaseState::Active, Some(from)) if from > now() => Ok(Extension {
                id: lease.id,
                from,
                until: from + chrono::Duration::minutes(i64::from(minutes)),
            }),
            _ => Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_active",
                format!("this machine is {}; only an active one can be extended", lease.state.as_str()),
            )),
        }
    }

    /// Moves the lease's expiry as `extension` says, recording `payment` (run once it settled).
    pub fn apply(
        &self,
        extension: Extension,
        payment: Option<PaymentId>,
    ) -> impl Future<Output = Result<(), ApiError>> + Send + 'static {
        let store = self.store.clone();
        async move {
            let Extension { id, from, until } = extension;
            match store.extend_lease(id, from, until, payment, now()).await {
                Ok(_) => Ok(()),
                Err(StoreError::Conflict(_)) => Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "not_active",
                    "the machine ended or was extended meanwhile; the payment is named in this answer",
                )),
                Err(e) => Err(e.into()),
            }
        }
    }

    /// Claims a client's idempotency key (see [`vendbox_store::Store::claim_request`]).
    pub async fn claim_request(
        &self,
        key: &str,
        body_hash: &str,
    ) -> Result<Option<(String, Option<String>)>, ApiError> {
        Ok(self.store.claim_request(key, body_hash, now()).await?)
    }

    /// Keeps the answer of a claimed request for the next sender of the same key.
    pub async fn finish_request(
        &self,
        key: &str,
        lease: Option<LeaseId>,
        answer: &str,
    ) -> Result<(), ApiError> {
        Ok(self.store.finish_request(key, lease, answer).await?)
    }

    /// Lets a key whose request made nothing be sent again.
    pub async fn release_request(&self, key: &str) {
        if let Err(e) = self.store.release_request(key).await {
            tracing::warn!(error = %e, "could not release a request id");
        }
    }

    /// The lease `id`, if there is one.
    pub async fn lease(&self, id: LeaseId) -> Result<Option<Lease>, ApiError> {
        Ok(self.store.get_lease(id).await?)
    }

    /// The leases an SSH key opens, newest first.
    pub async fn leases_for_ssh_key(&self, fingerprint: &str) -> Result<Vec<Lease>, ApiError> {
        Ok(self.store.leases_for_ssh_key(fingerprint).await?)
    }

    /// Spends one action of the lease, then runs `command` in its box for as long as its time
    /// limit allows. The action is given back only when boxd shows the command never started.
    pub async fn exec(&self, lease: &Lease, command: ProcessSpec) -> Result<Ran, ApiError> {
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
    ) -> Result<(vendbox_box::ExecStream, Option<u32>), ApiError> {
        let client = self.boxd(lease)?;
        let actions_remaining = self.spend(lease).await?;
        let request = StartRequest { process: command, stdin: false, pty: None };
        match client.start(&request).await {
            Ok(stream) => Ok((stream, actions_remaining)),
            Err(e) => Err(self.action_failed(lease.id, actions_remaining, &e).await),
        }
    }

    /// Spends one action of an active lease in the store.
    async fn spend(&self, lease: &Lease) -> Result<Option<u32>, ApiError> {
        match self.store.spend_lease_action(lease.id, now()).await {
            Ok(left) => Ok(left),
            Err(StoreError::ActionsExhausted) => Err(exhausted()),
            Err(StoreError::Conflict(_)) => {
                let fresh = self.store.get_lease(lease.id).await?.unwrap_or_else(|| lease.clone());
                Err(Self::check_usable(&fresh).err().unwrap_or_else(|| ended(&fresh)))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Settles the action of a command whose call failed: given back when boxd never got the
    /// command, kept (and the lease ended if it was the last) when it may have run.
    async fn action_failed(&self, id: LeaseId, actions_remaining: Option<u32>, error: &BoxError) -> ApiError {
        if error.request_not_acted_on() {
            self.refund(id).await;
        } else {
            self.after_action(id, actions_remaining);
        }
        box_error(error)
    }

    /// Gives back an action whose command could not run.
    async fn refund(&self, id: LeaseId) {
        if let Err(e) = self.store.refund_lease_action(id, now()).await {
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
        tokio::spawn(async move {
            if let Err(e) = end_lease(&*store, &*backend, id, LeaseState::Expired, None).await {
                tracing::warn!(lease = %id, error = %e, "could not end a box whose actions ran out");
            }
        });
    }

    /// Ends the lease at its owner's request and destroys its box.
    pub async fn terminate(&self, lease: &Lease) -> Result<Lease, ApiError> {
        if lease.state.is_terminal() {
            return Ok(lease.clone());
        }
        end_lease(&*self.store, &*self.backend, lease.id, LeaseState::Terminated, None).await
    }

    /// Marks a lease failed and destroys whatever box it has.
    async fn fail(&self, lease: &mut Lease, expected: LeaseState, reason: &str) {
        if let Some(box_id) = lease.box_id.as_deref().and_then(|b| BoxId::new(b).ok()) {
            let _ = self.backend.destroy(&box_id).await;
        }
        lease.failure_reason = Some(reason.to_owned());
        if lease.transition(LeaseState::Failed).is_ok()
            && let Err(e) = self.store.update_lease(lease, expected, now()).await
        {
            tracing::warn!(lease = %lease.id, error = %e, "could not record a failed lease");
        }
    }

    /// Ends a lease whose payment did not settle after its box was made.
    pub async fn unpaid(&self, id: LeaseId) {
        let reason = "its payment did not settle; nothing was charged";
        if let Err(e) = end_lease(&*self.store, &*self.backend, id, LeaseState::Failed, Some(reason)).await {
            tracing::warn!(lease = %id, error = %e, "could not end an unpaid box");
        }
    }

    /// Makes the host and the store agree after a start: a box no live lease owns is destroyed;
    /// a live lease whose box is gone, or that a restart caught half made, or whose payment was
    /// voided, is failed with the reason.
    pub async fn reconcile(&self) -> Result<Reconciled, ApiError> {
        let mut report = Reconciled::default();
        // Boxes first: a box listed here had its lease written before it was made, so the
        // leases read next know it.
        let boxes = self.backend.list().await.map_err(|e| box_error(&e))?;
        let live = self.store.leases_in_states(&[LeaseState::Provisioning, LeaseState::Active]).await?;
        report.orphans_destroyed = self.destroy_orphans(&boxes, &live).await?;
        // Boxes answer (or not) in parallel, so many stalled boxes cost one bounded wait.
        let checked: Vec<(Lease, Result<Verdict, ApiError>)> =
            futures_util::stream::iter(live.into_iter().map(|lease| async {
                let verdict = self.verdict(&lease, &boxes).await;
                (lease, verdict)
            }))
            .buffer_unordered(RECONCILE_PARALLELISM)
            .collect()
            .await;
        for (mut lease, verdict) in checked {
            match verdict? {
                Verdict::Ended => report.leases_ended += 1,
                Verdict::Fail(reason) => {
                    let expected = lease.state;
                    tracing::info!(lease = %lease.id, reason, "failing a lease at start-up");
                    self.fail(&mut lease, expected, &reason).await;
                    report.leases_failed += 1;
                }
                Verdict::Keep => report.boxes_kept += 1,
            }
        }
        Ok(report)
    }

    /// Destroys the boxes among `boxes` that no lease in `live` owns; how many.
    async fn destroy_orphans(&self, boxes: &[BoxId], live: &[Lease]) -> Result<usize, ApiError> {
        let mut destroyed = 0;
        for box_id in boxes {
            if !live.iter().any(|l| l.box_id.as_deref() == Some(box_id.as_str())) {
                tracing::info!(box_id = %box_id, "destroying a box no live lease owns");
                self.backend.destroy(box_id).await.map_err(|e| box_error(&e))?;
                destroyed += 1;
            }
        }
        Ok(destroyed)
    }

    /// Destroys boxes whose lease has ended but whose destruction failed (or was cut short by a
    /// stop): no box runs unpaid for long. How many.
    pub async fn sweep(&self) -> Result<usize, ApiError> {
        let boxes = self.backend.list().await.map_err(|e| box_error(&e))?;
        if boxes.is_empty() {
            return Ok(0);
        }
        let live = self.store.leases_in_states(&[LeaseState::Provisioning, LeaseState::Active]).await?;
        self.destroy_orphans(&boxes, &live).await
    }

    /// What reconciliation does with a live lease (ending it at once when its time or actions
    /// ran out).
    async fn verdict(&self, lease: &Lease, boxes: &[BoxId]) -> Result<Verdict, ApiError> {
        if lease.state == LeaseState::Provisioning {
            return Ok(Verdict::Fail(
                "vendbox stopped while the box was being made; nothing was charged".into(),
            ));
        }
        if lease.is_used_up_at(now()) {
            end_lease(&*self.store, &*self.backend, lease.id, LeaseState::Expired, None).await?;
            return Ok(Verdict::Ended);
        }
        if self.paid_with(lease).await? == Some(PaymentState::Voided) {
            return Ok(Verdict::Fail("its payment did not settle; nothing was charged".into()));
        }
        let box_id = lease.box_id.as_deref().and_then(|b| BoxId::new(b).ok());
        let status = match &box_id {
            Some(id) if boxes.contains(id) => self.backend.status(id).await.map_err(|e| box_error(&e))?,
            _ => BoxStatus::Gone,
        };
        Ok(if status == BoxStatus::Running {
            Verdict::Keep
        } else {
            Verdict::Fail(format!("its box was lost while vendbox was down ({status:?})"))
        })
    }

    async fn paid_with(&self, lease: &Lease) -> Result<Option<PaymentState>, ApiError> {
        let Some(id) = lease.payment_id else { return Ok(None) };
        Ok(self.store.get_payment(id).await?.map(|p| p.state))
    }

    /// One expiry round: ends every active lease whose window has passed. (A lease whose
    /// actions ran out ends when its last command finishes: [`Self::after_action`].)
    pub async fn expire_due(&self) -> Result<usize, ApiError> {
        let now = now();
        let due: Vec<Lease> = self
            .store
            .leases_in_states(&[LeaseState::Active])
            .await?
            .into_iter()
            .filter(|l| l.box_id.is_some() && l.expires_at.is_some_and(|at| at <= now))
            .collect();
        for lease in &due {
            end_lease(&*self.store, &*self.backend, lease.id, LeaseState::Expired, None).await?;
        }
        Ok(due.len())
    }
}

/// A checked extension of an active lease, applied once it is paid for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extension {
    id: LeaseId,
    /// The expiry it moves from (the store refuses if it moved meanwhile).
    from: DateTime<Utc>,
    /// The expiry it moves to.
    pub until: DateTime<Utc>,
}

/// What start-up reconciliation did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    /// Boxes on the host that no live lease owned.
    pub orphans_destroyed: usize,
    /// Live leases that could not go on.
    pub leases_failed: usize,
    /// Live leases whose time or actions ran out while vendbox was down.
    pub leases_ended: usize,
    /// Live leases whose boxes answer again.
    pub boxes_kept: usize,
}

/// Moves lease `id` from a live state to `state` (with `reason`), then destroys its box. The
/// store's compare-and-set decides a race with another ender; the loser just reads the result.
async fn end_lease(
    store: &dyn Store,
    backend: &dyn Backend,
    id: LeaseId,
    state: LeaseState,
    reason: Option<&str>,
) -> Result<Lease, ApiError> {
    let mut lease =
        store.get_lease(id).await?.ok_or_else(|| ApiError::not_found("box_not_found", "no such box"))?;
    if !lease.state.is_terminal() {
        let expected = lease.state;
        lease.transition(state)?;
        lease.failure_reason = reason.map(str::to_owned);
        match store.update_lease(&lease, expected, now()).await {
            Ok(()) => tracing::info!(lease = %id, state = state.as_str(), "lease ended"),
            Err(StoreError::Conflict(_)) => {
                lease = store.get_lease(id).await?.unwrap_or(lease);
            }
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(box_id) = lease.box_id.as_deref().and_then(|b| BoxId::new(b).ok()) {
        backend.destroy(&box_id).await.map_err(|e| box_error(&e))?;
    }
    Ok(lease)
}

/// The limits a box of `offer` runs under.
fn limits_of(offer: &Offer) -> Limits {
    let memory_mb = offer.resources.memory_mb.max(64);
    Limits {
        vcpu: offer.resources.vcpu.max(1),
        memory_mb,
        disk_mb: offer.resources.disk_gb.max(1).saturating_mul(1024),
        pids: Limits::pids_for(memory_mb),
    }
}

/// 503 `sold_out`: the host has no room for another box of this size now.
fn sold_out(resource: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "sold_out",
        format!(
            "this vendbox has no {resource} left for another box of this size; try again later or a smaller offer"
        ),
    )
}

/// The error a caller sees once a lease's actions are used up: the one mapping of
/// `actions_exhausted`, whichever check finds it.
fn exhausted() -> ApiError {
    vendbox_core::CoreError::ActionsExhausted.into()
}

/// The error a caller sees for a lease that has ended, saying how.
fn ended(lease: &Lease) -> ApiError {
    match lease.state {
        LeaseState::Terminated => ApiError::new(
            StatusCode::GONE,
            "box_terminated",
            "this box was terminated at its owner's request",
        ),
        LeaseState::Failed => ApiError::new(
            StatusCode::GONE,
            "box_failed",
            format!("this box failed: {}", lease.failure_reason.as_deref().unwrap_or("no reason recorded")),
        ),
        _ => ApiError::new(StatusCode::GONE, "box_expired", "this box's time has run out; buy a new one"),
    }
}

/// A backend or boxd failure as an API error.
fn box_error(error: &BoxError) -> ApiError {
    match error {
        BoxError::Boxd { status, code, message } if *status < 500 => {
            ApiError::new(StatusCode::BAD_REQUEST, "command_refused", format!("{code}: {message}"))
        }
        BoxError::Unsupported(m) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "boxes_unavailable", m.clone())
        }
        other => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "box_unavailable", other.to_string()),
    }
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

/// Now, to the millisecond (what the store keeps).
fn now_ms_rounded() -> DateTime<Utc> {
    use chrono::SubsecRound;
    Utc::now().trunc_subsecs(3)
}

/// How often the expiry worker also sweeps boxes whose lease ended but that are still there.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// The expiry worker: ends leases whose time or actions ran out, and every [`SWEEP_INTERVAL`]
/// destroys boxes left behind by a failed destruction.
#[derive(Debug)]
pub struct BoxExpiry {
    /// The boxes.
    pub boxes: Arc<Boxes>,
    /// When it last swept.
    pub swept: std::sync::Mutex<Option<std::time::Instant>>,
}

impl BoxExpiry {
    /// The worker for `boxes`.
    pub fn new(boxes: Arc<Boxes>) -> BoxExpiry {
        BoxExpiry { boxes, swept: std::sync::Mutex::new(None) }
    }

    fn sweep_due(&self) -> bool {
        let mut swept = self.swept.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = swept.is_none_or(|at| at.elapsed() >= SWEEP_INTERVAL);
        if due {
            *swept = Some(std::time::Instant::now());
        }
        due
    }
}

#[async_trait]
impl Worker for BoxExpiry {
    fn name(&self) -> &'static str {
        "box-expiry"
    }

    async fn work(&self) -> WorkResult {
        let ended = self.boxes.expire_due().await.map_err(|e| e.to_string())?;
        if self.sweep_due() {
            let swept = self.boxes.sweep().await.map_err(|e| e.to_string())?;
            if swept > 0 {
                tracing::warn!(swept, "destroyed boxes whose lease had ended");
            }
        }
        Ok(if ended > 0 { Next::Busy } else { Next::Idle(EXPIRY_INTERVAL) })
    }
}
