//! vendbox's persistence: the [`Store`] trait and its two implementations, SQLite (the embedded
//! default, one file under the data directory, WAL) and PostgreSQL (several API hosts).
//!
//! Every method is durable when it returns `Ok`: SQLite runs with `synchronous=FULL`, PostgreSQL
//! commits before answering. Uniqueness that matters for money (payment replay keys, ledger
//! references) is a database constraint, never process memory.

mod aggregates;
mod error;
mod postgres;
mod shared;
mod sqlite;
pub mod testkit;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use vendbox_core::{
    AccountAddress, Capability, Lease, LeaseId, LeaseState, LedgerEntry, LedgerKind, Lock, LockKey, Payment,
    PaymentId, PaymentState, Quote, QuoteId, TokenHash, Usdc,
};

pub use error::StoreError;

/// How many envd access tokens an E2B sandbox keeps besides its root token (one per connect,
/// the newest): beyond this many connects, the oldest handle's token stops working.
pub const E2B_ACCESS_TOKENS_KEPT: usize = 64;

/// How long a request id claimed without an answer stays claimed (a request that ran longer was
/// cut off by a stop).
pub const STALE_REQUEST_CLAIM: chrono::Duration = chrono::Duration::minutes(10);
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// How a payment leaves the `verified` state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentOutcome {
    /// The money moved; the reference is the transaction hash or ledger entry.
    Settled {
        /// Where the money moved.
        settlement_ref: String,
    },
    /// The buyer is not charged.
    Voided {
        /// Why, for the buyer and the operator.
        reason: String,
    },
}

/// The answer to a lock acquisition.
#[derive(Debug, Clone, PartialEq)]
pub enum LockAcquisition {
    /// The caller holds the key now, under this grant (with a new fencing token).
    Acquired(Lock),
    /// Someone else holds it; this is their grant, without its release token.
    Held(Lock),
}

/// The answer to a release.
#[derive(Debug, Clone, PartialEq)]
pub enum LockRelease {
    /// The grant ended now; `released_at` says when, in the store's clock.
    Released(Lock),
    /// This token had already released its grant, and the key has not been granted since;
    /// nothing changed (releasing is idempotent).
    AlreadyReleased(Lock),
    /// Refused; nothing changed.
    Refused(LockRefusal),
}

/// The answer to a renewal.
#[derive(Debug, Clone, PartialEq)]
pub enum LockRenewal {
    /// The grant lasts until the new `expires_at`.
    Renewed(Lock),
    /// Refused; nothing changed.
    Refused(LockRefusal),
}

/// Why a release token could not renew or release: in each case the key and its holder, if
/// any, are untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockRefusal {
    /// The token's grant ran out of time before this request.
    Lapsed,
    /// The token's grant was released.
    Released,
    /// The token names no grant on this key: never issued for it, or the key has since been
    /// granted to someone else.
    NotHolder,
}

impl LockRefusal {
    /// Why the token whose grant is `grant` (as [`Store`] has it now) could not act on it.
    fn of(grant: Option<&Lock>) -> Self {
        match grant {
            None => Self::NotHolder,
            Some(g) if g.released_at.is_some() => Self::Released,
            Some(_) => Self::Lapsed,
        }
    }
}

/// An account's credits as they stand: its balance (the sum of its ledger) and what unexpired
/// holds keep aside from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Funds {
    /// The sum of the ledger.
    pub balance: Usdc,
    /// Held for purchases being made.
    pub held: Usdc,
}

impl Funds {
    /// What a new purchase may spend.
    pub fn available(self) -> Usdc {
        Usdc(self.balance.atomic().saturating_sub(self.held.atomic()))
    }
}

/// A top-up written down before its payment settles, so that a top-up whose money moved is
/// booked even when the process dies (or the store fails) before booking it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingTopUp {
    /// The x402 payment that buys it (the `top_up` entry's reference).
    pub payment: PaymentId,
    /// Whose credits it adds to.
    pub account: AccountAddress,
    /// How much.
    pub amount: Usdc,
}

/// Unused time given back as credits when a lease ends early, booked with the lease's end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRefund {
    /// The lease's payer.
    pub account: AccountAddress,
    /// How much.
    pub amount: Usdc,
}

/// Credits set aside for one payment between its verification and its settlement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditHold {
    /// The payment the credits are held for (the charge's reference once settled).
    pub payment: PaymentId,
    /// Whose credits.
    pub account: AccountAddress,
    /// The API key spending them, if one did (its caps count holds and charges).
    pub key_id: Option<String>,
    /// How much.
    pub amount: Usdc,
    /// When the hold stops counting (a hold whose payment a crash lost before reserving it).
    pub expires_at: DateTime<Utc>,
}

/// The caps of the API key a hold is placed for (none for a wallet's own signature).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpendCaps {
    /// Most the key may spend since `since`.
    pub daily: Option<Usdc>,
    /// The start of the key's current day.
    pub since: DateTime<Utc>,
    /// Most the key may spend in all.
    pub total: Option<Usdc>,
}

impl SpendCaps {
    /// No caps.
    pub fn none(now: DateTime<Utc>) -> SpendCaps {
        SpendCaps { daily: None, since: now, total: None }
    }
}

/// Why credits could not be held; nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldRefusal {
    /// The balance less what is held is below the amount.
    Short {
        /// The account's balance.
        balance: Usdc,
        /// Held for other purchases.
        held: Usdc,
        /// The amount asked.
        needed: Usdc,
    },
    /// The key's spending today plus this amount passes its daily cap.
    DailyCap {
        /// The cap.
        cap: Usdc,
        /// Spent (and held) today.
        spent: Usdc,
    },
    /// The key's spending plus this amount passes its total cap.
    TotalCap {
        /// The cap.
        cap: Usdc,
        /// Spent (and held) in all.
        spent: Usdc,
    },
}

/// A credits payment taken in the same transaction as the lock grant it pays for
/// ([`Store::acquire_lock_paid`]): nothing is held, reserved or left `verified` in between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditSpend {
    /// The payment as admitted (`verified`, its amount the price): recorded `settled` with the
    /// charge's ledger entry as its reference, or `voided` with `void_reason` when nothing is
    /// charged, in the grant's transaction; not recorded at all when refused.
    pub payment: Payment,
    /// Whose credits.
    pub account: AccountAddress,
    /// The API key spending them, if one did (its caps count the charge).
    pub key_id: Option<String>,
    /// The key's caps.
    pub caps: SpendCaps,
    /// Whether an acquisition that finds the key held is charged too (the acquire offer's
    /// `charge_when_held`).
    pub charge_when_held: bool,
    /// Why the payment is voided when the key is held and nothing is charged.
    pub void_reason: String,
    /// When it is spent: the time of the charge and of the payment's record, and at which
    /// unexpired holds are judged.
    pub now: DateTime<Utc>,
}

/// The answer to a lock acquisition paid with credits in its own transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum PaidAcquisition {
    /// The caller holds the key now; the payment is settled by this `charge` entry.
    Acquired {
        /// The grant.
        lock: Lock,
        /// The charge booked for it.
        charge: LedgerEntry,
    },
    /// Someone else holds the key: their grant; the charge when finding it held is charged
    /// ([`CreditSpend::charge_when_held`]), else `None` and the payment is voided.
    Held {
        /// The holder's grant, without its release token.
        holder: Lock,
        /// The charge, when finding the key held is charged.
        charge: Option<LedgerEntry>,
    },
    /// The credits (balance less unexpired holds) or the key's caps do not cover the price:
    /// nothing was granted, charged or recorded.
    Refused(HoldRefusal),
}

/// The payments of one payer in one state: how many, and their sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaymentTotal {
    /// The state.
    pub state: PaymentState,
    /// How many.
    pub count: u64,
    /// Their amounts' sum.
    pub amount: Usdc,
}

/// An API key as stored: its grant (id, scope, caps), whose wallet made it, and how it is
/// listed. The key itself is never stored, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The wallet whose credits and instances the key reaches.
    pub account: AccountAddress,
    /// Its id, scope and caps.
    pub grant: vendbox_core::KeyGrant,
    /// A name its owner gave it.
    pub label: Option<String>,
    /// The key's last four characters, to tell keys apart in a list.
    pub last4: String,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it was revoked; a revoked key opens nothing.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// An E2B sandbox: a lease with a box, owned by the account whose API key made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct E2bSandbox {
    /// The lease (its id is the sandbox's id).
    pub lease: LeaseId,
    /// The account that made it, the only one that sees it.
    pub owner: AccountAddress,
    /// The template asked for.
    pub template: String,
    /// The owner's metadata.
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Environment variables every process in it starts with.
    pub env_vars: std::collections::BTreeMap<String, String>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
}

/// An x402Compute instance: a lease with a box, owned by the wallet that paid for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComputeInstance {
    /// The lease (its id is the instance's id).
    pub lease: LeaseId,
    /// The wallet that paid for it, the only one that may manage it.
    pub owner: AccountAddress,
    /// The plan it was bought as.
    pub plan: String,
    /// The region asked for.
    pub region: Option<String>,
    /// The OS image id asked for.
    pub os_id: Option<i64>,
    /// Its owner's label.
    pub label: Option<String>,
    /// Whether an SSH key was given at provision (then no password is ever issued).
    pub ssh_key_given: bool,
    /// When its one-time root password was issued, if it was.
    pub password_issued_at: Option<DateTime<Utc>>,
    /// When it was provisioned.
    pub created_at: DateTime<Utc>,
}

/// A SecretVM VM (the `secretvm` surface): a wallet's docker-compose workload, run in the box
/// of its lease once launched, and charged from the wallet's credits per billing period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretVm {
    /// Its id (a UUID).
    pub id: String,
    /// The wallet that made it, the only one that sees it.
    pub owner: AccountAddress,
    /// Its owner's name for it.
    pub name: String,
    /// The VM type asked for (an offer of the catalog).
    pub vm_type: String,
    /// `creating`, `running`, `stopped`, `failed` or `created` (made with `skip_launch`).
    pub status: String,
    /// Why it stopped or failed.
    pub status_reason: Option<String>,
    /// The lease of its box, once launched.
    pub lease: Option<LeaseId>,
    /// The port its domain serves (the first published port).
    pub port: u16,
    /// What it runs: the compose project and the options, as the service wrote them (JSON).
    pub spec: String,
    /// The end of the last billing period charged; `None` before the first.
    pub billed_until: Option<DateTime<Utc>>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// Everything vendbox keeps. One implementation per database; both pass the same test suite
/// (`tests/suite.rs`).
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Checks that the database answers.
    async fn ping(&self) -> StoreResult<()>;

    /// Stores a new quote.
    async fn insert_quote(&self, quote: &Quote) -> StoreResult<()>;

    /// The quote with this id.
    async fn get_quote(&self, id: QuoteId) -> StoreResult<Option<Quote>>;

    /// Deletes quotes that expired before `now` and that no payment or lease refers to.
    async fn delete_expired_quotes(&self, now: DateTime<Utc>) -> StoreResult<u64>;

    /// Records a verified payment. Fails with [`StoreError::ReplayKeyTaken`] if its replay key was
    /// ever used before, by any payment in any state.
    async fn reserve_payment(&self, payment: &Payment) -> StoreResult<()>;

    /// The payment with this id.
    async fn get_payment(&self, id: PaymentId) -> StoreResult<Option<Payment>>;

    /// The payment that holds `key`, if any (a read: the cheap check before asking a chain).
    async fn payment_by_replay_key(&self, key: &vendbox_core::ReplayKey) -> StoreResult<Option<PaymentId>>;

    /// Moves a `verified` payment to `settled` or `voided`. Fails with
    /// [`StoreError::Conflict`] if it is no longer `verified` (someone else finished it).
    async fn finish_payment(
        &self,
        id: PaymentId,
        outcome: &PaymentOutcome,
        now: DateTime<Utc>,
    ) -> StoreResult<Payment>;

    /// Payments in `state` last changed before `before`, oldest first (for the settlement worker).
    async fn payments_in_state(
        &self,
        state: PaymentState,
        before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Payment>>;

    /// Payments of token contract `asset` (lower-case hex) in `state`, last changed before
    /// `before`, oldest first: the settlement worker's batch, filtered in the query so that
    /// payments of another asset never fill a batch it cannot work on.
    async fn payments_of_asset_in_state(
        &self,
        asset: &str,
        state: PaymentState,
        before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Payment>>;

    /// Stores a new lease with the hashes of its capability tokens.
    async fn insert_lease(&self, lease: &Lease, tokens: &[(Capability, TokenHash)]) -> StoreResult<()>;

    /// The lease with this id.
    async fn get_lease(&self, id: LeaseId) -> StoreResult<Option<Lease>>;

    /// The capability token hashes of a lease, for constant-time comparison by the caller.
    async fn lease_tokens(&self, id: LeaseId) -> StoreResult<Vec<(Capability, TokenHash)>>;

    /// Writes `lease` if its stored state is still `expected` (compare-and-set). The move
    /// `expected → lease.state` must be legal. Fails with [`StoreError::Conflict`] when the stored
    /// state changed in the meantime.
    async fn update_lease(&self, lease: &Lease, expected: LeaseState, now: DateTime<Utc>) -> StoreResult<()>;

    /// As [`Store::update_lease`], and in the same transaction books `refund` (a `refund` entry
    /// whose reference is the lease, once): both happen or neither. The entry booked, if any.
    async fn end_lease_refunding(
        &self,
        lease: &Lease,
        expected: LeaseState,
        now: DateTime<Utc>,
        refund: Option<&LeaseRefund>,
    ) -> StoreResult<Option<LedgerEntry>>;

    /// Spends one action of an active lease atomically; returns what is left (`None` for a lease
    /// without a budget). Fails with [`StoreError::ActionsExhausted`] at zero and
    /// [`StoreError::Conflict`] when the lease is not active or its window ended before `now`.
    async fn spend_lease_action(&self, id: LeaseId, now: DateTime<Utc>) -> StoreResult<Option<u32>>;

    /// Gives back one action spent on a command that then could not run (the box did not
    /// answer). Changes nothing for a lease without a budget or no longer active.
    async fn refund_lease_action(&self, id: LeaseId, now: DateTime<Utc>) -> StoreResult<()>;

    /// Lets the SSH public key with `fingerprint` (`SHA256:…`) open lease `id`'s box.
    async fn add_lease_ssh_key(&self, id: LeaseId, fingerprint: &str, public_key: &str) -> StoreResult<()>;

    /// The leases the SSH key with `fingerprint` opens, newest first.
    async fn leases_for_ssh_key(&self, fingerprint: &str) -> StoreResult<Vec<Lease>>;

    /// The lease and capability a token (by its hash) opens, if any.
    async fn lease_for_token(&self, hash: &TokenHash) -> StoreResult<Option<(LeaseId, Capability)>>;

    /// The lease whose id (its text form) starts with `prefix`, when exactly one does.
    async fn lease_by_id_prefix(&self, prefix: &str) -> StoreResult<Option<Lease>>;

    /// Moves an active lease's `expires_at` from `expected` to `until`, counting a renewal paid
    /// by `payment`; [`StoreError::Conflict`] when the lease is no longer active or its expiry
    /// moved meanwhile. Returns the renewal count.
    async fn extend_lease(
        &self,
        id: LeaseId,
        expected: DateTime<Utc>,
        until: DateTime<Utc>,
        payment: Option<PaymentId>,
        now: DateTime<Utc>,
    ) -> StoreResult<u32>;

    /// What the lease's extensions were paid in all (the amounts of the payments
    /// [`Store::extend_lease`] recorded).
    async fn lease_renewal_paid(&self, id: LeaseId) -> StoreResult<Usdc>;

    /// How often the lease was renewed, and the payment of its latest renewal.
    async fn lease_renewals(&self, id: LeaseId) -> StoreResult<(u32, Option<PaymentId>)>;

    /// Claims `request_id` for a request whose body hashes to `body_hash`: `None` when it is
    /// new (the caller goes on and later records its answer), or what the first request with it
    /// left: its body hash and its answer (`None` while that request is still running). A claim
    /// without an answer older than [`STALE_REQUEST_CLAIM`] is taken over.
    async fn claim_request(
        &self,
        request_id: &str,
        body_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<(String, Option<String>)>>;

    /// Records the answer (and lease) of a claimed request.
    async fn finish_request(
        &self,
        request_id: &str,
        lease: Option<LeaseId>,
        response: &str,
    ) -> StoreResult<()>;

    /// Gives up a claim whose request made nothing, so that it can be sent again.
    async fn release_request(&self, request_id: &str) -> StoreResult<()>;

    /// What the request claimed as `request_id` left, without claiming it: its body hash and
    /// its answer (`None` while it runs); `None` when no request claimed it.
    async fn request_claim(&self, request_id: &str) -> StoreResult<Option<(String, Option<String>)>>;

    /// Leases in any of `states`, oldest first.
    async fn leases_in_states(&self, states: &[LeaseState]) -> StoreResult<Vec<Lease>>;

    /// Ends up to `limit` due leases, most overdue first, and returns them as they are now
    /// (`expired`), ordered by `expires_at`, then id. A lease is due when it is `active`, has a box
    /// and its `expires_at` is at or before `now` (the clock that set it). Each moves
    /// `active → expired` by compare-and-set, as [`Store::update_lease`] moves it, without a
    /// failure reason; all in one transaction. On PostgreSQL the rows are picked `FOR UPDATE SKIP
    /// LOCKED`, so hosts sharing the database divide the due leases instead of waiting for each
    /// other: each lease is returned by exactly one call, ever. Destroying the boxes is the
    /// caller's work.
    async fn end_due_leases(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<Vec<Lease>>;

    /// Writes down a top-up before its payment settles (once per payment).
    async fn pend_top_up(&self, top_up: &PendingTopUp, now: DateTime<Utc>) -> StoreResult<()>;

    /// Books the `top_up` entry of `top_up` (once, however often it is asked) and, in the same
    /// transaction, forgets it as pending.
    async fn book_top_up(&self, top_up: &PendingTopUp, now: DateTime<Utc>) -> StoreResult<LedgerEntry>;

    /// Up to `limit` pending top-ups whose payment is finished (settled: owed; voided: to drop),
    /// oldest first, with their payment's state.
    async fn unfinished_top_ups(&self, limit: u32) -> StoreResult<Vec<(PendingTopUp, PaymentState)>>;

    /// Forgets a pending top-up (its payment was voided).
    async fn drop_pending_top_up(&self, payment: PaymentId) -> StoreResult<()>;

    /// Books an entry in an account's ledger, creating the account on first use. A charge that
    /// would take the balance below zero fails with [`StoreError::InsufficientBalance`]. The same
    /// `(account, kind, reference)` booked twice returns the first entry and changes nothing.
    async fn append_ledger(
        &self,
        account: &AccountAddress,
        kind: LedgerKind,
        amount: Usdc,
        reference: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<LedgerEntry>;

    /// The account's balance in atomic units: the sum of its ledger.
    async fn balance(&self, account: &AccountAddress) -> StoreResult<Usdc>;

    /// The account's most recent ledger entries, newest first.
    async fn ledger(&self, account: &AccountAddress, limit: u32) -> StoreResult<Vec<LedgerEntry>>;

    /// The account's entries older than entry `before` (all when `None`), newest first.
    async fn ledger_page(
        &self,
        account: &AccountAddress,
        before: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<LedgerEntry>>;

    /// The account's balance and its unexpired holds at `now`.
    async fn funds(&self, account: &AccountAddress, now: DateTime<Utc>) -> StoreResult<Funds>;

    /// Holds `hold.amount` of the account's credits for `hold.payment` if its available credit
    /// covers it and the spending key's `caps` allow it, atomically per account (the account row
    /// is written first, as a booking does), and reserves `reserve` (the payment the hold is
    /// for, as [`Store::reserve_payment`] does) in the same transaction. A refusal changes
    /// nothing else than the account row's `updated_at`; [`StoreError::ReplayKeyTaken`] leaves no
    /// hold. Group-committed with the lock operations (see `aggregates/locks.rs`).
    async fn place_hold(
        &self,
        hold: &CreditHold,
        caps: &SpendCaps,
        reserve: Option<&Payment>,
        now: DateTime<Utc>,
    ) -> StoreResult<Result<(), HoldRefusal>>;

    /// Books the `charge` of `account`'s hold for `payment` (its reference: the payment id; the
    /// key's id kept with it), drops the hold, and records the payment `settled` with the entry's
    /// id as its reference if it is `verified`, in one transaction (group-committed with the lock
    /// operations). `None` when there is no hold (it was released, recovered or settled before);
    /// [`StoreError::InsufficientBalance`] (and the hold kept) should the balance no longer cover
    /// it.
    async fn settle_hold(
        &self,
        account: &AccountAddress,
        payment: PaymentId,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<LedgerEntry>>;

    /// Drops the hold for `payment`, if any; says whether there was one.
    async fn release_hold(&self, payment: PaymentId) -> StoreResult<bool>;

    /// For a payment a crash left `verified`: the charge booked for it, if any, and in any case
    /// drops its hold, in one transaction under the account's lock.
    async fn recover_hold(
        &self,
        account: &AccountAddress,
        payment: PaymentId,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<LedgerEntry>>;

    /// The payments whose payer (a wallet, for x402 and credits alike) is `payer`, newest first,
    /// older than `before` (created at, id) when given.
    async fn payments_by_payer(
        &self,
        payer: &str,
        before: Option<(DateTime<Utc>, PaymentId)>,
        limit: u32,
    ) -> StoreResult<Vec<Payment>>;

    /// How many payments `payer` made in each state, and their sums.
    async fn payment_totals(&self, payer: &str) -> StoreResult<Vec<PaymentTotal>>;

    /// Claims `nonce` for signed requests of `account`, kept until `expires_at` (the end of
    /// its timestamp's window); `false` when it was claimed before. The first claim creates the
    /// account.
    async fn claim_auth_nonce(
        &self,
        account: &AccountAddress,
        nonce: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Gives back a nonce [`Store::claim_auth_nonce`] claimed, so that the same signed request
    /// may be sent again (after an answer that did nothing, a 402); `false` when it was not
    /// claimed. The account stays.
    async fn release_auth_nonce(&self, account: &AccountAddress, nonce: &str) -> StoreResult<bool>;

    /// Deletes nonces whose window ended before `now`.
    async fn purge_auth_nonces(&self, now: DateTime<Utc>) -> StoreResult<u64>;

    /// Stores a new API key by its hash (creating the account).
    async fn insert_api_key(&self, key: &ApiKey, hash: &TokenHash) -> StoreResult<()>;

    /// The API key whose hash is `hash`, revoked or not.
    async fn api_key_by_hash(&self, hash: &TokenHash) -> StoreResult<Option<ApiKey>>;

    /// The API keys of `account`, oldest first, revoked ones included.
    async fn api_keys_of(&self, account: &AccountAddress) -> StoreResult<Vec<ApiKey>>;

    /// Revokes `account`'s key `id` (a second revocation keeps the first time); the key as it
    /// is now, or `None` when `account` has no such key.
    async fn revoke_api_key(
        &self,
        account: &AccountAddress,
        id: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<ApiKey>>;

    /// Records a SecretVM VM.
    async fn insert_secret_vm(&self, vm: &SecretVm) -> StoreResult<()>;

    /// The SecretVM VM `id`, whoever owns it.
    async fn secret_vm(&self, id: &str) -> StoreResult<Option<SecretVm>>;

    /// Writes `vm`'s status, reason, lease and billing over the row if its status is still
    /// `expected_status` (compare-and-set); `false` when it changed meanwhile.
    async fn update_secret_vm(&self, vm: &SecretVm, expected_status: &str) -> StoreResult<bool>;

    /// Up to `limit` VMs in `status` whose billing period ended by `now`, oldest period first.
    async fn secret_vms_billable(
        &self,
        status: &str,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<SecretVm>>;

    /// Up to `limit` VMs in `status` that have not changed since `updated_before`, oldest first.
    async fn secret_vms_stale(
        &self,
        status: &str,
        updated_before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<SecretVm>>;

    /// Records that VM `vm_id`'s service `service`, the `position`th in start order, runs in the
    /// box of `lease` (once; writing the same position again changes nothing).
    async fn add_secret_vm_box(
        &self,
        vm_id: &str,
        position: u32,
        service: &str,
        lease: LeaseId,
    ) -> StoreResult<()>;

    /// The boxes of VM `vm_id`: (service, lease) in start order.
    async fn secret_vm_boxes(&self, vm_id: &str) -> StoreResult<Vec<(String, LeaseId)>>;

    /// Records an x402Compute instance.
    async fn insert_compute_instance(&self, instance: &ComputeInstance) -> StoreResult<()>;

    /// The x402Compute instance of lease `lease`.
    async fn compute_instance(&self, lease: LeaseId) -> StoreResult<Option<ComputeInstance>>;

    /// The x402Compute instances `owner` paid for, newest first.
    async fn compute_instances_of(&self, owner: &AccountAddress) -> StoreResult<Vec<ComputeInstance>>;

    /// Issues the instance's one-time root password once (compare-and-set): makes `root` its
    /// lease's root token and returns `true`, or `false` when it was issued before or the
    /// instance was given an SSH key.
    async fn issue_instance_password(
        &self,
        lease: LeaseId,
        root: &TokenHash,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Records an E2B sandbox.
    async fn insert_e2b_sandbox(&self, sandbox: &E2bSandbox) -> StoreResult<()>;

    /// The E2B sandbox of `lease`, whoever owns it.
    async fn e2b_sandbox(&self, lease: LeaseId) -> StoreResult<Option<E2bSandbox>>;

    /// Adds `token` to the envd access tokens of E2B sandbox `lease` (besides its lease's root
    /// token), keeping its newest [`E2B_ACCESS_TOKENS_KEPT`]; `false` when `lease` is no E2B
    /// sandbox.
    async fn add_e2b_access_token(
        &self,
        lease: LeaseId,
        token: &TokenHash,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Whether `token` is one of the envd access tokens [`Store::add_e2b_access_token`] added to
    /// E2B sandbox `lease`.
    async fn is_e2b_access_token(&self, lease: LeaseId, token: &TokenHash) -> StoreResult<bool>;

    /// `owner`'s E2B sandboxes, newest first (ended ones too).
    async fn e2b_sandboxes_of(&self, owner: &AccountAddress) -> StoreResult<Vec<E2bSandbox>>;

    /// Grants `key` for `ttl` to the holder of the release token whose hash is `release`, unless
    /// an unexpired grant exists. Each grant gets a fencing token one higher than the key's last,
    /// ever. Expiry is judged by the database's clock, so several hosts cannot disagree.
    async fn acquire_lock(
        &self,
        key: &LockKey,
        owner: Option<&str>,
        metadata: Option<&serde_json::Value>,
        ttl: std::time::Duration,
        release: &TokenHash,
    ) -> StoreResult<LockAcquisition>;

    /// As [`Store::acquire_lock`], paid from credits in the same transaction: under the
    /// account's lock, the available credit (balance less unexpired holds) and the spending key's
    /// caps must cover `spend.payment.amount`, or nothing is written
    /// ([`PaidAcquisition::Refused`]); then the key is granted if free, and the charge booked
    /// and the payment recorded settled if it was (or if it was held and
    /// `spend.charge_when_held`), else the payment recorded voided. One operation of the
    /// group-committed lock writer (see `aggregates/locks.rs`), answered once it committed.
    async fn acquire_lock_paid(
        &self,
        key: &LockKey,
        owner: Option<&str>,
        metadata: Option<&serde_json::Value>,
        ttl: std::time::Duration,
        release: &TokenHash,
        spend: &CreditSpend,
    ) -> StoreResult<PaidAcquisition>;

    /// Moves the expiry of the unexpired grant held with `release` to `ttl` from now (the
    /// grant's own TTL when `None`). A lapsed, released or superseded grant is refused, and then
    /// nothing changes.
    async fn renew_lock(
        &self,
        key: &LockKey,
        release: &TokenHash,
        ttl: Option<std::time::Duration>,
    ) -> StoreResult<LockRenewal>;

    /// The unexpired grant on `key` if `release` holds it now (by the database's clock), or why
    /// it does not. Changes nothing: a paid operation asks it before asking for payment.
    async fn lock_held_by(
        &self,
        key: &LockKey,
        release: &TokenHash,
    ) -> StoreResult<Result<Lock, LockRefusal>>;

    /// Ends the unexpired grant held with `release`. Again with the same token: the same answer,
    /// as `AlreadyReleased`. A lapsed or superseded grant is refused, and its key's newer holder
    /// is not touched.
    async fn release_lock(&self, key: &LockKey, release: &TokenHash) -> StoreResult<LockRelease>;

    /// The unexpired grant on `key`, if any.
    async fn get_lock(&self, key: &LockKey) -> StoreResult<Option<Lock>>;

    /// Keys released from now on, once each release has committed: by this host, and on
    /// PostgreSQL by every host sharing the database. For waiters, who try the key again; a
    /// receiver that falls behind misses some (and its waiters try again on their timers).
    fn lock_releases(&self) -> tokio::sync::broadcast::Receiver<LockKey>;
}

/// Opens the store named by `database_url`, or the SQLite file `vendbox.db` under `data_dir`
/// when there is none, and brings its schema up to date.
pub async fn open(database_url: Option<&str>, data_dir: &Path) -> StoreResult<Arc<dyn Store>> {
    match database_url.map(str::trim).filter(|u| !u.is_empty()) {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(Arc::new(PostgresStore::connect(url).await?))
        }
        Some(url) if url.starts_with("sqlite:") => Ok(Arc::new(SqliteStore::open_url(url).await?)),
        Some(url) => Err(StoreError::BadUrl(format!(
            "`{}` is neither postgres://… nor sqlite:…",
            url.split('@').next_back().unwrap_or(url)
        ))),
        None => Ok(Arc::new(SqliteStore::open_file(&data_dir.join("vendbox.db")).await?)),
    }
}
