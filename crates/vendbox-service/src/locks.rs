//! `Locks`: TTL locks with fencing tokens, the rules every lock surface shares (H3RETIK's paths
//! and the native mirror). Every decision about time is the store's clock's; a key's fencing
//! token only rises. What an acquisition or a renewal costs comes from the catalog: the offer
//! labelled `operation = "acquire"` (or `"renew"`), and, for an acquisition that finds the key
//! held, its `charge_when_held` label.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use vendbox_core::{Catalog, CoreError, Lock, LockKey, LockRequest, Offer, OfferKind, SecretToken};
use vendbox_store::{
    CreditSpend, LockAcquisition, LockRefusal, LockRelease, LockRenewal, PaidAcquisition, Store, StoreError,
};

use crate::payments::Spent;

/// The `operation` label of the offer that prices acquisitions.
pub const ACQUIRE: &str = "acquire";
/// The `operation` label of the offer that prices renewals.
pub const RENEW: &str = "renew";
/// The label of the acquire offer that says what an acquisition finding the key held costs.
pub const CHARGE_WHEN_HELD: &str = "charge_when_held";

/// What a paid acquisition that finds the key held costs, as its offer's `charge_when_held`
/// label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenHeld {
    /// Nothing: the payment is voided (vendbox's default; `false` or no label).
    Void,
    /// The price: the payment settles, as H3RETIK's document has it ("payment settled and lock
    /// acquisition attempted"; `true`).
    Charge,
}

impl WhenHeld {
    /// The rule of `offer`, or what is wrong with its label.
    pub fn of(offer: &Offer) -> Result<WhenHeld, String> {
        match offer.labels.get(CHARGE_WHEN_HELD).map(String::as_str) {
            None | Some("false") => Ok(WhenHeld::Void),
            Some("true") => Ok(WhenHeld::Charge),
            Some(other) => Err(format!("must be true or false, not `{other}`")),
        }
    }
}

/// Why a lock service refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The catalog sells no such lock operation.
    #[error("this vendbox does not sell lock {0}s; its catalog has no such offer")]
    NotOffered(&'static str),
    /// The release token cannot act on the key's grant.
    #[error("{}", refusal_message(*.why, .key))]
    Refused {
        /// Why.
        why: LockRefusal,
        /// The key.
        key: String,
    },
    /// A rule of the domain model (a bad key, TTL…).
    #[error(transparent)]
    Rule(#[from] CoreError),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for LockError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Rule(core) => LockError::Rule(core),
            other => LockError::Store(other),
        }
    }
}

impl LockError {
    /// The stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            LockError::NotOffered(_) => "not_offered",
            LockError::Refused { why: LockRefusal::NotHolder, .. } => "lock_not_held",
            LockError::Refused { why: LockRefusal::Lapsed, .. } => "lock_expired",
            LockError::Refused { why: LockRefusal::Released, .. } => "lock_released",
            LockError::Rule(e) => e.code(),
            LockError::Store(_) => "internal",
        }
    }
}

fn refusal_message(why: LockRefusal, key: &str) -> String {
    match why {
        LockRefusal::NotHolder => format!(
            "this release token holds no grant on `{key}`: it was never issued for it, or the key has since been granted to someone else"
        ),
        LockRefusal::Lapsed => {
            format!("the grant of `{key}` held with this token lapsed; acquire the key again")
        }
        LockRefusal::Released => {
            format!("the grant of `{key}` held with this token was released; acquire the key again")
        }
    }
}

/// What an acquisition found.
#[derive(Debug)]
pub enum Acquired {
    /// The key is the caller's: the grant, and its release token (shown once).
    Granted {
        /// The grant.
        lock: Lock,
        /// Its release token.
        release_token: SecretToken,
    },
    /// Another actor holds the key: their grant (never their token).
    Held(Lock),
}

/// A release, or the first release again.
#[derive(Debug)]
pub struct Released {
    /// The grant as released.
    pub lock: Lock,
    /// The token had released it before (releasing is idempotent).
    pub already_released: bool,
}

/// The lock services over a store and the catalog that prices them.
#[derive(Debug, Clone)]
pub struct Locks {
    store: Arc<dyn Store>,
    catalog: Arc<Catalog>,
    waiters: Arc<LockWaiters>,
}

impl Locks {
    /// Locks kept in `store`, sold at `catalog`'s prices, with no waiters yet.
    pub fn new(store: Arc<dyn Store>, catalog: Arc<Catalog>) -> Locks {
        Locks { store, catalog, waiters: Arc::default() }
    }

    /// The same locks, queueing waiters in `waiters` (one per host, shared by every request).
    #[must_use]
    pub fn with_waiters(self, waiters: Arc<LockWaiters>) -> Locks {
        Locks { waiters, ..self }
    }

    /// The available offer that prices lock `operation` ([`ACQUIRE`] or [`RENEW`]).
    pub fn offer(&self, operation: &'static str) -> Result<&Offer, LockError> {
        self.catalog
            .labelled("operation", operation)
            .find(|o| o.kind == OfferKind::Lock && o.available)
            .ok_or(LockError::NotOffered(operation))
    }

    /// What an acquisition that finds the key held costs (the configuration refused a bad label
    /// at start-up, so an unreadable one counts as the default).
    pub fn when_held(&self) -> WhenHeld {
        self.offer(ACQUIRE).ok().and_then(|o| WhenHeld::of(o).ok()).unwrap_or(WhenHeld::Void)
    }

    /// Takes the key for the caller if no unexpired grant holds it.
    pub async fn acquire(&self, request: &LockRequest) -> Result<Acquired, LockError> {
        let token = SecretToken::generate();
        let ttl = Duration::from_secs(u64::from(request.ttl_seconds));
        let answer = self
            .store
            .acquire_lock(
                &request.key,
                request.owner.as_deref(),
                request.metadata.as_ref(),
                ttl,
                &token.hash(),
            )
            .await?;
        Ok(match answer {
            LockAcquisition::Acquired(lock) => {
                tracing::info!(
                    key = lock.key.as_str(),
                    fencing_token = lock.fencing_token.0,
                    "lock acquired"
                );
                Acquired::Granted { lock, release_token: token }
            }
            LockAcquisition::Held(holder) => Acquired::Held(holder),
        })
    }

    /// As [`Locks::acquire`], paid from credits in the grant's own transaction
    /// (`Payments::pay_spending` gives the `spend`): the credits and the key's caps are checked
    /// under the account's lock, and the key is granted and the charge booked together, or,
    /// when the key is held, the payment voided (or charged, as [`Locks::when_held`] says); a
    /// refusal grants, charges and records nothing.
    pub async fn acquire_paid(
        &self,
        request: &LockRequest,
        mut spend: CreditSpend,
    ) -> Result<Spent<Acquired>, LockError> {
        spend.charge_when_held = self.when_held() == WhenHeld::Charge;
        let token = SecretToken::generate();
        let ttl = Duration::from_secs(u64::from(request.ttl_seconds));
        let answer = self
            .store
            .acquire_lock_paid(
                &request.key,
                request.owner.as_deref(),
                request.metadata.as_ref(),
                ttl,
                &token.hash(),
                &spend,
            )
            .await?;
        Ok(match answer {
            PaidAcquisition::Acquired { lock, charge } => {
                tracing::info!(
                    key = lock.key.as_str(),
                    fencing_token = lock.fencing_token.0,
                    "lock acquired, paid from credits"
                );
                Spent::Charged { value: Acquired::Granted { lock, release_token: token }, charge }
            }
            PaidAcquisition::Held { holder, charge: Some(charge) } => {
                Spent::Charged { value: Acquired::Held(holder), charge }
            }
            PaidAcquisition::Held { holder, charge: None } => Spent::NotCharged(Acquired::Held(holder)),
            PaidAcquisition::Refused(refusal) => Spent::Refused(refusal),
        })
    }

    /// Gives back a grant that was not paid for after all, at once rather than at its expiry.
    pub fn give_back(&self, key: LockKey, token: &SecretToken) -> impl Future<Output = ()> + Send + 'static {
        let (store, hash) = (self.store.clone(), token.hash());
        async move {
            if let Err(e) = store.release_lock(&key, &hash).await {
                tracing::warn!(key = key.as_str(), error = %e, "could not release an unpaid lock; it lapses at its expiry");
            }
        }
    }

    /// Refuses a token that holds no unexpired grant on `key` now (asked before a renewal's
    /// payment; the renewal checks again, atomically).
    pub async fn check_holder(&self, key: &LockKey, token: &SecretToken) -> Result<(), LockError> {
        match self.store.lock_held_by(key, &token.hash()).await? {
            Ok(_) => Ok(()),
            Err(why) => Err(LockError::Refused { why, key: key.as_str().to_owned() }),
        }
    }

    /// Extends the token's unexpired grant to `ttl_seconds` from now (its last TTL when
    /// `None`), keeping its fencing token.
    pub async fn renew(
        &self,
        key: &LockKey,
        token: &SecretToken,
        ttl_seconds: Option<u32>,
    ) -> Result<Lock, LockError> {
        let ttl = ttl_seconds.map(|s| Duration::from_secs(u64::from(s)));
        match self.store.renew_lock(key, &token.hash(), ttl).await? {
            LockRenewal::Renewed(lock) => {
                tracing::info!(key = key.as_str(), fencing_token = lock.fencing_token.0, "lock renewed");
                Ok(lock)
            }
            LockRenewal::Refused(why) => Err(LockError::Refused { why, key: key.as_str().to_owned() }),
        }
    }

    /// Ends the token's grant; again with the same token, the same answer.
    pub async fn release(&self, key: &LockKey, token: &SecretToken) -> Result<Released, LockError> {
        let (lock, already_released) = match self.store.release_lock(key, &token.hash()).await? {
            LockRelease::Released(lock) => (lock, false),
            LockRelease::AlreadyReleased(lock) => (lock, true),
            LockRelease::Refused(why) => {
                return Err(LockError::Refused { why, key: key.as_str().to_owned() });
            }
        };
        if !already_released {
            tracing::info!(key = key.as_str(), fencing_token = lock.fencing_token.0, "lock released");
        }
        Ok(Released { lock, already_released })
    }

    /// The unexpired grant on `key`, if any.
    pub async fn holder(&self, key: &LockKey) -> Result<Option<Lock>, LockError> {
        Ok(self.store.get_lock(key).await?)
    }
}

/// The most a caller may wait for a held key.
pub const MAX_WAIT: Duration = Duration::from_mins(1);

/// How long a waiter goes at most without trying the key again, should it miss an announcement
/// (a lost notification connection, a receiver that fell behind).
const RECHECK: Duration = Duration::from_secs(1);

/// This host's waiters, per key, in arrival order: only the first tries the key when it may be
/// free, so that waiters here are served first come, first served.
#[derive(Debug, Default)]
pub struct LockWaiters {
    queues: std::sync::Mutex<HashMap<LockKey, VecDeque<u64>>>,
    next: std::sync::atomic::AtomicU64,
    turn: tokio::sync::Notify,
}

impl LockWaiters {
    fn queues(&self) -> std::sync::MutexGuard<'_, HashMap<LockKey, VecDeque<u64>>> {
        self.queues.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Joins the queue of `key`; leaving it (also by being dropped: a caller that hung up) lets
    /// the next one try.
    fn join(self: &Arc<Self>, key: &LockKey) -> Place {
        let ticket = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.queues().entry(key.clone()).or_default().push_back(ticket);
        Place { waiters: self.clone(), key: key.clone(), ticket }
    }

    fn first(&self, key: &LockKey, ticket: u64) -> bool {
        self.queues().get(key).and_then(|q| q.front().copied()) == Some(ticket)
    }
}

/// A caller's place in a key's queue.
struct Place {
    waiters: Arc<LockWaiters>,
    key: LockKey,
    ticket: u64,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut queues = self.waiters.queues();
        if let Some(queue) = queues.get_mut(&self.key) {
            queue.retain(|t| *t != self.ticket);
            if queue.is_empty() {
                queues.remove(&self.key);
            }
        }
        drop(queues);
        self.waiters.turn.notify_waiters();
    }
}

impl Locks {
    /// As [`Locks::acquire`], but a held key is waited for, up to `wait` (at most
    /// [`MAX_WAIT`]): the caller is served when the holder releases it (on this host, or on any
    /// host sharing the database) or its grant lapses, after this host's earlier waiters. The
    /// holder's grant when the wait runs out.
    pub async fn acquire_waiting(
        &self,
        request: &LockRequest,
        wait: Duration,
    ) -> Result<Acquired, LockError> {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        // Listening before the first try: a release between the try and the wait is heard.
        let mut releases = self.store.lock_releases();
        let place = self.waiters.join(&request.key);
        loop {
            // Only the first waiter here tries; the others wait for their turn.
            while !self.waiters.first(&request.key, place.ticket) {
                let turn = self.waiters.turn.notified();
                if self.waiters.first(&request.key, place.ticket) {
                    break;
                }
                if tokio::time::timeout_at(deadline, turn).await.is_err() {
                    return self.acquire(request).await;
                }
            }
            let holder = match self.acquire(request).await? {
                Acquired::Held(holder) => holder,
                granted @ Acquired::Granted { .. } => return Ok(granted),
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Acquired::Held(holder));
            }
            // Until the key is released, the holder's grant lapses (by this host's clock, give
            // or take the skew the next try corrects), or the recheck is due.
            let lapses = (holder.expires_at - chrono::Utc::now()).to_std().unwrap_or_default();
            let until = deadline.min(now + lapses.min(RECHECK));
            loop {
                use tokio::sync::broadcast::error::RecvError;
                match tokio::time::timeout_at(until, releases.recv()).await {
                    // Time to try: the key's release, the holder's lapse or the recheck, or
                    // announcements missed (this waiter fell behind).
                    Err(_) | Ok(Err(RecvError::Lagged(_))) => break,
                    Ok(Ok(key)) if key == request.key => break,
                    Ok(Ok(_)) => {}
                    Ok(Err(RecvError::Closed)) => {
                        tokio::time::sleep_until(until).await;
                        break;
                    }
                }
            }
        }
    }
}
