//! `Locks`: TTL locks with fencing tokens, the rules every lock surface shares (H3RETIK's paths
//! and the native mirror). Every decision about time is the store's clock's; a key's fencing
//! token only rises. What an acquisition or a renewal costs comes from the catalog: the offer
//! labelled `operation = "acquire"` (or `"renew"`), and, for an acquisition that finds the key
//! held, its `charge_when_held` label.

use std::sync::Arc;
use std::time::Duration;

use vendbox_core::{Catalog, CoreError, Lock, LockKey, LockRequest, Offer, OfferKind, SecretToken};
use vendbox_store::{LockAcquisition, LockRefusal, LockRelease, LockRenewal, Store, StoreError};

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
}

impl Locks {
    /// Locks kept in `store`, sold at `catalog`'s prices.
    pub fn new(store: Arc<dyn Store>, catalog: Arc<Catalog>) -> Locks {
        Locks { store, catalog }
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
