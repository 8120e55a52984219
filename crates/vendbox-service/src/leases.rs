//! `Boxes`: the lifecycle of leases that have a box behind them, over a [`Backend`].
//!
//! A lease is made `provisioning`, its box is created, and it becomes `active` (with its window
//! starting then) only once the box's boxd answers; the payment settles after that. A lease
//! ends `expired` at its `expires_at` or when its last action has run, `terminated` on its
//! owner's request, or `failed` with a reason its owner can read; its box is destroyed in each
//! case. At start-up [`Boxes::reconcile`] makes the host and the store agree again. Commands
//! are in `exec.rs`, tokens and keys in `access.rs`, extensions in `purchase.rs`, idempotency
//! claims in `orders.rs`.

use std::sync::Arc;

use futures_util::StreamExt as _;
use std::collections::{HashMap, HashSet};
use vendbox_box::{Backend, BoxId, BoxSpec, BoxStatus, Limits, Pod, Usage, Volume};

use vendbox_core::{
    AccountAddress, Capability, Lease, LeaseId, LeaseState, LedgerEntry, Offer, OfferId, OfferKind,
    PaymentId, PaymentState, PriceRule, QuoteTerms, SecretToken, Usdc,
};
use vendbox_store::{LeaseRefund, Store, StoreError};

use crate::access::SshKey;
use crate::clock::{Clock, SystemClock};
use crate::error::LeaseError;

const RECONCILE_PARALLELISM: usize = 32;

/// Leases one expiry round ends at most (the worker goes again at once when it ended a batch).
pub const EXPIRY_BATCH: u32 = 64;

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

/// Boxes for sale: a backend and the leases in the store.
#[derive(Debug)]
pub struct Boxes {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) store: Arc<dyn Store>,
    /// What this host sells boxes from in all.
    capacity: Usage,
    /// What boxes being made right now will hold (not yet counted by the backend).
    making: Arc<std::sync::Mutex<Usage>>,
    /// The boxes of purchases under way: their leases are being written down or moved, which
    /// the sweep and reconciliation leave to the purchase.
    underway: Underway,
    /// The time of day.
    pub(crate) clock: Arc<dyn Clock>,
    /// The catalog's prices by offer, when an owner's early termination refunds unused time
    /// (`[credits] refund_unused`); `None` when it does not.
    refunds: Option<Arc<HashMap<OfferId, PriceRule>>>,
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

/// The boxes of the purchases under way on this host.
#[derive(Debug, Default, Clone)]
struct Underway(Arc<std::sync::Mutex<HashSet<BoxId>>>);

impl Underway {
    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<BoxId>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks `id` as a purchase's until the mark is dropped.
    fn mark(&self, id: BoxId) -> UnderwayMark {
        self.set().insert(id.clone());
        UnderwayMark { underway: self.clone(), id }
    }

    /// The boxes of purchases under way now.
    fn now(&self) -> HashSet<BoxId> {
        self.set().clone()
    }
}

/// A purchase's box, marked under way until the purchase returns (or is dropped).
#[derive(Debug)]
struct UnderwayMark {
    underway: Underway,
    id: BoxId,
}

impl Drop for UnderwayMark {
    fn drop(&mut self) {
        self.underway.set().remove(&self.id);
    }
}

/// Where a box being made stands in a pod (see [`vendbox_box::Pod`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPlace {
    /// The box of the pod's first lease; `None`: the box being made is the first.
    pub first: Option<BoxId>,
    /// The pod's named volumes this box mounts.
    pub volumes: Vec<Volume>,
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

impl Boxes {
    /// Boxes made by `backend`, with leases in `store`, sold up to the backend's capacity.
    pub fn new(backend: Arc<dyn Backend>, store: Arc<dyn Store>) -> Boxes {
        let capacity = backend.capacity();
        Boxes {
            backend,
            store,
            capacity,
            making: Arc::default(),
            underway: Underway::default(),
            clock: Arc::new(SystemClock),
            refunds: None,
        }
    }

    /// The same boxes sold up to `capacity` instead.
    #[must_use]
    pub fn with_capacity(self, capacity: Usage) -> Boxes {
        Boxes { capacity, ..self }
    }

    /// The same boxes telling the time by `clock`.
    #[must_use]
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Boxes {
        Boxes { clock, ..self }
    }

    /// The same boxes, refunding unused whole minutes of a box its owner ends early at the
    /// prices of `offers` (the catalog's), as credits of the payer's account.
    #[must_use]
    pub fn with_refunds(self, offers: &[Offer]) -> Boxes {
        let prices = offers.iter().map(|o| (o.id.clone(), o.price)).collect();
        Boxes { refunds: Some(Arc::new(prices)), ..self }
    }

    /// What this host sells boxes from in all.
    pub fn capacity(&self) -> Usage {
        self.capacity
    }

    /// Refuses, with 503 `sold_out`, a box of `offer` that the host cannot hold now. Asked
    /// before any payment is: nobody pays for a box that cannot be made.
    pub async fn admit(&self, offer: &Offer) -> Result<(), LeaseError> {
        self.hold(limits_of(offer)).await.map(drop)
    }

    /// Holds a box's share of the capacity while it is made (checked again: time passed since
    /// [`Self::admit`], and other purchases may have come first).
    async fn hold(&self, limits: Limits) -> Result<Making, LeaseError> {
        let wanted = Usage::of(limits);
        let used = self.backend.usage().await.map_err(|e| LeaseError::from_box(&e))?;
        let mut making = self.making.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(resource) = used.plus(*making).plus(wanted).exceeds(self.capacity) {
            return Err(LeaseError::SoldOut(resource));
        }
        *making = making.plus(wanted);
        Ok(Making { making: self.making.clone(), usage: wanted })
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Stops what the backend runs beside the boxes (see [`vendbox_box::Backend::close`]), when
    /// vendbox stops; the boxes stay.
    pub async fn close(&self) {
        self.backend.close().await;
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
    ) -> Result<Provisioned, LeaseError> {
        self.provision_in(offer, terms, payment_id, ssh_keys, capabilities, None).await
    }

    /// [`Boxes::provision`], the box taking `pod`'s place in a pod (sharing the first box's
    /// network and its volumes) when one is given; refused where the backend makes no pods.
    /// The caller keeps a pod to one owner's boxes.
    pub async fn provision_in(
        &self,
        offer: &Offer,
        terms: &QuoteTerms,
        payment_id: Option<PaymentId>,
        ssh_keys: &[SshKey],
        capabilities: &[Capability],
        pod: Option<PodPlace>,
    ) -> Result<Provisioned, LeaseError> {
        if pod.is_some() && !self.backend.pods() {
            return Err(LeaseError::NotCharged(Box::new(LeaseError::Unavailable(format!(
                "this vendbox's {} backend makes no pods (boxes sharing a network)",
                self.backend.name()
            )))));
        }
        if !matches!(offer.kind, OfferKind::Sandbox | OfferKind::Machine) {
            return Err(LeaseError::NotABox(offer.id.to_string()));
        }
        if let Some(gpu) = &offer.resources.gpu {
            return Err(LeaseError::NotCharged(Box::new(LeaseError::Unavailable(format!(
                "this vendbox's {} backend has no {}",
                self.backend.name(),
                gpu.model
            )))));
        }
        let now = self.clock.now();
        let id = LeaseId::new_random();
        let box_id = BoxId::new(&id.to_string()).map_err(|e| LeaseError::Internal(e.to_string()))?;
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
        let spec = BoxSpec {
            id: box_id.clone(),
            image: terms.image.clone().unwrap_or_else(|| "host".into()),
            limits: limits_of(offer),
            egress: offer.includes_egress(),
            pod: pod.map(|p| Pod { first: p.first.unwrap_or_else(|| box_id.clone()), volumes: p.volumes }),
        };
        // From here on, a purchase dropped before it finished (a client that hung up, a request
        // timeout) fails its lease and destroys whatever was made of its box.
        let mut unfinished = Unfinished::new(self, lease.id, box_id.clone());
        // Until this purchase returns, the sweep and reconciliation leave its box and lease to it.
        let _underway = self.underway.mark(box_id.clone());
        // The lease is written down while its box is made: neither needs the other, and each
        // waits for the disk. Nothing is acknowledged or charged before both are done; a crash
        // between them leaves a box without a lease, which a restart's reconciliation destroys
        // as it destroys the box of a lease left `provisioning`.
        let begun = std::time::Instant::now();
        let record = async {
            self.store.insert_lease(&lease, &hashes).await?;
            for key in ssh_keys {
                self.store.add_lease_ssh_key(lease.id, &key.fingerprint, &key.public_key).await?;
            }
            Ok::<_, LeaseError>(begun.elapsed())
        };
        let making = async {
            let held = self.hold(spec.limits).await?;
            let created = self.backend.create(&spec).await;
            drop(held);
            Ok::<_, LeaseError>((created, begun.elapsed()))
        };
        let (recorded, made) = tokio::join!(record, making);
        // Without its lease written down, the purchase ends here; `unfinished` destroys the box.
        let written = recorded?;
        let (created, made_in) = match made {
            Ok(made) => made,
            Err(e) => {
                unfinished.disarm();
                let e = LeaseError::NotCharged(Box::new(e));
                self.fail(&mut lease, LeaseState::Provisioning, &e.to_string()).await;
                return Err(e);
            }
        };
        if let Err(e) = created {
            unfinished.disarm();
            tracing::warn!(lease = %lease.id, error = %e, "a box could not be made");
            let reason = format!("the box could not be made: {e}");
            self.fail(&mut lease, LeaseState::Provisioning, &reason).await;
            let failed = match LeaseError::from_box(&e) {
                LeaseError::Unavailable(_) => LeaseError::Unavailable(reason),
                _ => LeaseError::BoxUnavailable(reason),
            };
            return Err(LeaseError::NotCharged(Box::new(failed)));
        }
        let activated = self.clock.now_ms();
        lease.expires_at = terms.minutes.map(|m| activated + chrono::Duration::minutes(i64::from(m)));
        lease.transition(LeaseState::Active)?;
        if let Err(e) = self.store.update_lease(&lease, LeaseState::Provisioning, activated).await {
            let _ = self.backend.destroy(&spec.id).await;
            return Err(e.into());
        }
        unfinished.disarm();
        tracing::debug!(
            lease = %lease.id,
            written_ms = written.as_secs_f64() * 1e3,
            made_ms = made_in.as_secs_f64() * 1e3,
            active_ms = begun.elapsed().as_secs_f64() * 1e3,
            "box purchase"
        );
        tracing::info!(lease = %lease.id, offer = %lease.offer_id, "box active");
        Ok(Provisioned { lease, tokens })
    }

    /// Ends the lease at its owner's request and destroys its box. Unused time due back (see
    /// [`Boxes::refund_due`]) is booked in the same transaction as the lease's end, so a crash
    /// cannot end the one without the other.
    pub async fn terminate(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        if lease.state.is_terminal() {
            return Ok(lease.clone());
        }
        let current = self
            .store
            .get_lease(lease.id)
            .await?
            .ok_or_else(|| LeaseError::NotFound(lease.id.to_string()))?;
        let refund = if current.state.is_terminal() {
            None
        } else {
            // What is due is read before the end is written; a refund that cannot be worked out
            // does not keep the owner from ending the lease.
            self.refund_due(&current).await.unwrap_or_else(|e| {
                tracing::warn!(lease = %current.id, error = %e, "the unused time of a terminated box cannot be refunded");
                None
            })
        };
        let (ended, entry) = end_read_lease(
            &*self.store,
            &*self.backend,
            &*self.clock,
            current,
            LeaseState::Terminated,
            None,
            refund.as_ref(),
        )
        .await?;
        if let (Some(entry), Some(refund)) = (entry, &refund) {
            tracing::info!(lease = %ended.id, amount = %refund.amount, entry = entry.id, "unused time refunded as credits");
        }
        Ok(ended)
    }

    /// The refund of `lease`'s unused whole minutes to its payer's credits if it ended now, when
    /// refunds are on and its offer is priced by time: the time part of its price for those
    /// minutes, never more than the lease's payments came to (its purchase and its extensions).
    /// `None` when nothing is due. Booked with the lease's end, its reference the lease, so a
    /// lease is refunded once.
    pub async fn refund_due(&self, lease: &Lease) -> Result<Option<LeaseRefund>, LeaseError> {
        let Some(rule) = self.refunds.as_ref().and_then(|prices| prices.get(&lease.offer_id)) else {
            return Ok(None);
        };
        let (Some(expires_at), Some(payment)) = (lease.expires_at, lease.payment_id) else {
            return Ok(None);
        };
        let now = self.clock.now();
        let minutes = u64::try_from((expires_at - now).num_minutes()).unwrap_or(0);
        if minutes == 0 || (rule.per_minute == Usdc::ZERO && rule.per_month == Usdc::ZERO) {
            return Ok(None);
        }
        let Some(payment) = self.store.get_payment(payment).await? else { return Ok(None) };
        if payment.state != PaymentState::Settled {
            return Ok(None);
        }
        let account = AccountAddress::parse(&payment.replay_key.payer, "payer")
            .map_err(|e| LeaseError::Internal(format!("a lease's payer: {e}")))?;
        let paid =
            payment.amount.atomic().saturating_add(self.store.lease_renewal_paid(lease.id).await?.atomic());
        let per_minute = u128::from(rule.per_minute.atomic());
        let per_month = u128::from(rule.per_month.atomic());
        let unused = per_minute * u128::from(minutes)
            + per_month * u128::from(minutes) / u128::from(vendbox_core::offer::MINUTES_PER_MONTH);
        let amount = Usdc(u64::try_from(unused).unwrap_or(u64::MAX).min(paid));
        Ok((amount != Usdc::ZERO).then_some(LeaseRefund { account, amount }))
    }

    /// Marks a lease failed and destroys whatever box it has.
    async fn fail(&self, lease: &mut Lease, expected: LeaseState, reason: &str) {
        lease.failure_reason = Some(reason.to_owned());
        if lease.transition(LeaseState::Failed).is_ok() {
            match self.store.update_lease(lease, expected, self.clock.now()).await {
                Ok(()) => {}
                // It moved on meanwhile (its purchase finished): its box is its own.
                Err(StoreError::Conflict(why)) => {
                    tracing::info!(lease = %lease.id, why, "a lease moved on before it could be failed");
                    return;
                }
                Err(e) => tracing::warn!(lease = %lease.id, error = %e, "could not record a failed lease"),
            }
        }
        if let Some(box_id) = box_of(lease) {
            let _ = self.backend.destroy(&box_id).await;
        }
    }

    /// Ends a lease whose payment did not settle after its box was made.
    pub async fn unpaid(&self, id: LeaseId) {
        let reason = "its payment did not settle; nothing was charged";
        if let Err(e) =
            end_lease(&*self.store, &*self.backend, &*self.clock, id, LeaseState::Failed, Some(reason)).await
        {
            tracing::warn!(lease = %id, error = %e, "could not end an unpaid box");
        }
    }

    /// Makes the host and the store agree after a start: a box no live lease owns is destroyed;
    /// a live lease whose box is gone, or that a restart caught half made, or whose payment was
    /// voided, is failed with the reason.
    pub async fn reconcile(&self) -> Result<Reconciled, LeaseError> {
        let mut report = Reconciled::default();
        // vendbox serves while it reconciles: a purchase under way is left to itself.
        let (boxes, live) = self.at_rest().await?;
        report.orphans_destroyed = self.destroy_orphans(&boxes, &live).await?;
        // Boxes answer (or not) in parallel, so many stalled boxes cost one bounded wait.
        let checked: Vec<(Lease, Result<Verdict, LeaseError>)> =
            futures_util::stream::iter(live.into_iter().map(|lease| async {
                let verdict = self.verdict(&lease).await;
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
    async fn destroy_orphans(&self, boxes: &[BoxId], live: &[Lease]) -> Result<usize, LeaseError> {
        let mut destroyed = 0;
        for box_id in boxes {
            if !live.iter().any(|l| l.box_id.as_deref() == Some(box_id.as_str())) {
                tracing::info!(box_id = %box_id, "destroying a box no live lease owns");
                self.backend.destroy(box_id).await.map_err(|e| LeaseError::from_box(&e))?;
                destroyed += 1;
            }
        }
        Ok(destroyed)
    }

    /// Destroys boxes whose lease has ended but whose destruction failed (or was cut short by a
    /// stop): no box runs unpaid for long. How many.
    pub async fn sweep(&self) -> Result<usize, LeaseError> {
        let (boxes, live) = self.at_rest().await?;
        self.destroy_orphans(&boxes, &live).await
    }

    /// The boxes on this host and the live leases in the store, less those of purchases under
    /// way (which end their own box if they fail).
    async fn at_rest(&self) -> Result<(Vec<BoxId>, Vec<Lease>), LeaseError> {
        let mut boxes = self.backend.list().await.map_err(|e| LeaseError::from_box(&e))?;
        // A box listed was made by a purchase begun before the list. If that purchase is no
        // longer under way at this look, its lease was written before it, and the leases read
        // next know the box.
        let mut underway = self.underway.now();
        let mut live = self.store.leases_in_states(&[LeaseState::Provisioning, LeaseState::Active]).await?;
        // A lease read may be a purchase's begun since the first look.
        underway.extend(self.underway.now());
        boxes.retain(|b| !underway.contains(b));
        live.retain(|l| box_of(l).is_none_or(|b| !underway.contains(&b)));
        Ok((boxes, live))
    }

    /// What reconciliation does with a live lease (ending it at once when its time or actions
    /// ran out).
    async fn verdict(&self, lease: &Lease) -> Result<Verdict, LeaseError> {
        if lease.state == LeaseState::Provisioning {
            return Ok(Verdict::Fail(
                "vendbox stopped while the box was being made; nothing was charged".into(),
            ));
        }
        if lease.is_used_up_at(self.clock.now()) {
            end_lease(&*self.store, &*self.backend, &*self.clock, lease.id, LeaseState::Expired, None)
                .await?;
            return Ok(Verdict::Ended);
        }
        if self.paid_with(lease).await? == Some(PaymentState::Voided) {
            return Ok(Verdict::Fail("its payment did not settle; nothing was charged".into()));
        }
        let box_id = box_of(lease);
        // A box not listed may have been made since the list, by a purchase that has ended:
        // the backend is asked about it too.
        let status = match &box_id {
            Some(id) => self.backend.status(id).await.map_err(|e| LeaseError::from_box(&e))?,
            None => BoxStatus::Gone,
        };
        Ok(if status == BoxStatus::Running {
            Verdict::Keep
        } else {
            Verdict::Fail(format!("its box was lost while vendbox was down ({status:?})"))
        })
    }

    async fn paid_with(&self, lease: &Lease) -> Result<Option<PaymentState>, LeaseError> {
        let Some(id) = lease.payment_id else { return Ok(None) };
        Ok(self.store.get_payment(id).await?.map(|p| p.state))
    }

    /// One expiry round: ends up to [`EXPIRY_BATCH`] active leases whose window has passed
    /// (picked by the store with its index; on PostgreSQL, hosts sharing it divide them), then
    /// destroys their boxes. A box whose destruction fails is left to the sweep. (A lease whose
    /// actions ran out ends when its last command finishes: `Boxes::after_action`.)
    pub async fn expire_due(&self) -> Result<usize, LeaseError> {
        let due = self.store.end_due_leases(self.clock.now(), EXPIRY_BATCH).await?;
        for lease in &due {
            tracing::info!(lease = %lease.id, "lease expired");
            if let Some(box_id) = box_of(lease)
                && let Err(e) = self.backend.destroy(&box_id).await
            {
                tracing::warn!(lease = %lease.id, error = %e, "could not destroy an expired box; the sweep retries");
            }
        }
        Ok(due.len())
    }
}

/// A purchase under way: dropped before [`Unfinished::disarm`], it fails its lease and destroys
/// its box in a task of its own, so that a request cut off while its box was made leaves no
/// lease `provisioning` and no half-made box behind.
struct Unfinished {
    store: Arc<dyn Store>,
    backend: Arc<dyn Backend>,
    clock: Arc<dyn Clock>,
    id: LeaseId,
    box_id: BoxId,
    armed: bool,
}

impl Unfinished {
    fn new(boxes: &Boxes, id: LeaseId, box_id: BoxId) -> Unfinished {
        Unfinished {
            store: boxes.store.clone(),
            backend: boxes.backend.clone(),
            clock: boxes.clock.clone(),
            id,
            box_id,
            armed: true,
        }
    }

    /// The purchase ended one way or the other; nothing is left to clean up.
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (store, backend, clock, id, box_id) =
            (self.store.clone(), self.backend.clone(), self.clock.clone(), self.id, self.box_id.clone());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(lease = %id, "a purchase was cut off with no runtime to clean up; reconciliation will");
            return;
        };
        runtime.spawn(async move {
            let reason = "the purchase was cut off before the box was ready; nothing was charged";
            tracing::warn!(lease = %id, "{reason}");
            let cleaned =
                match end_lease(&*store, &*backend, &*clock, id, LeaseState::Failed, Some(reason)).await {
                    // The lease was never written down (its box was made at the same time).
                    Err(LeaseError::NotFound(_)) => {
                        backend.destroy(&box_id).await.map_err(|e| LeaseError::from_box(&e))
                    }
                    ended => ended.map(drop),
                };
            if let Err(e) = cleaned {
                tracing::warn!(lease = %id, error = %e, "could not clean up a purchase that was cut off");
            }
        });
    }
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
pub(crate) async fn end_lease(
    store: &dyn Store,
    backend: &dyn Backend,
    clock: &dyn Clock,
    id: LeaseId,
    state: LeaseState,
    reason: Option<&str>,
) -> Result<Lease, LeaseError> {
    let lease = store.get_lease(id).await?.ok_or_else(|| LeaseError::NotFound(id.to_string()))?;
    Ok(end_read_lease(store, backend, clock, lease, state, reason, None).await?.0)
}

/// As [`end_lease`], for a lease as just read, booking `refund` with its end (in one
/// transaction); the lease as it ended (by this or another), and the refund entry if booked.
async fn end_read_lease(
    store: &dyn Store,
    backend: &dyn Backend,
    clock: &dyn Clock,
    mut lease: Lease,
    state: LeaseState,
    reason: Option<&str>,
    refund: Option<&LeaseRefund>,
) -> Result<(Lease, Option<LedgerEntry>), LeaseError> {
    let id = lease.id;
    let mut entry = None;
    if !lease.state.is_terminal() {
        let expected = lease.state;
        lease.transition(state)?;
        lease.failure_reason = reason.map(str::to_owned);
        match store.end_lease_refunding(&lease, expected, clock.now(), refund).await {
            Ok(booked) => {
                entry = booked;
                tracing::info!(lease = %id, state = state.as_str(), "lease ended");
            }
            Err(StoreError::Conflict(_)) => {
                lease = store.get_lease(id).await?.unwrap_or(lease);
            }
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(box_id) = box_of(&lease) {
        backend.destroy(&box_id).await.map_err(|e| LeaseError::from_box(&e))?;
    }
    Ok((lease, entry))
}

/// The box a lease has, as the backend names it (the store keeps its id as text).
pub(crate) fn box_of(lease: &Lease) -> Option<BoxId> {
    lease.box_id.as_deref().and_then(|b| BoxId::new(b).ok())
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
