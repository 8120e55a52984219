//! Locks: one row per key, granted, renewed and released by compare-and-set statements that
//! judge expiry by the database's clock (`$clock`), so hosts with skewed clocks cannot disagree.
//!
//! **Group commit.** Grants, renewals and releases do not each take a transaction of their own:
//! they queue for the store's writers (one per host, on a thread of their own; on PostgreSQL
//! `VENDBOX_LOCK_WRITERS` can make several, a key always going to the same one), and a writer applies
//! every operation waiting at that moment, each key's in arrival order, in one transaction, and
//! answers each caller only once that transaction has committed (one fsync for the batch).
//! Nothing is acknowledged before it is durable, and a batch cut off by a crash is rolled back
//! whole, so no caller was told of it. Within a batch each statement sees the ones before it, so
//! two grants of one key in one batch are one grant and one refusal, as they would be one after
//! the other. A batch takes its rows in one order, accounts, then lock keys, then payments, each
//! by name, so batches of several writers or hosts take row locks in one order and cannot
//! deadlock. If a batch fails, each of its operations is applied again alone, so one bad
//! operation cannot fail its neighbours.
//!
//! **Shared statements.** A batch's lock operations are cut into rounds, the first operation of each row, then the
//! second of each row that has two, and so on; the acquisitions of one round (distinct keys) are
//! one `INSERT … SELECT … ON CONFLICT DO UPDATE … RETURNING` over rows read from a JSON array
//! (`rows`), and its releases one `UPDATE … RETURNING`, so a batch costs a few statements rather
//! than one or two per operation (on SQLite each statement is a round trip to the connection's
//! thread, on PostgreSQL to the server). What a shared statement leaves unanswered (a refusal the
//! release must tell apart, a holder that lapsed between two statements) and every other
//! operation goes alone, as before. On PostgreSQL, a batch with shared statements first takes
//! one transaction-scoped advisory lock (`serialize_batch`): a statement over many rows takes
//! their row locks in no set order, so two such batches (of two writers or two hosts) could each
//! hold a row the other waits for; with the advisory lock they run one after the other. (It
//! replaced a `SELECT … ORDER BY key FOR UPDATE` of the batch's keys, which cost as much as the
//! batch's other statements together.) A writer's own connection has sequential scans turned off
//! (`LOCK_WRITER_SETUP`), so that its statements find keys by index whatever the table's
//! statistics say. Its releases are announced in one notice per 6,000 bytes
//! of keys, a JSON array, rather than one per key.
//!
//! **Credits share the writer.** A credit hold (with the reservation of the payment it is for)
//! and the charge of a hold are applied by the same writers, in the same batches, keyed by
//! their account, so that paying for a lock with credits costs fsyncs shared with everyone
//! else's rather than two of its own. A batch takes an account's row lock once: its later holds,
//! charges and paid acquisitions in the batch find it taken.
//!
//! **Paid acquisitions.** A lock acquisition paid from credits (`Store::acquire_lock_paid`) is
//! one operation rather than a hold, a grant and a charge: with the accounts, under the
//! account's lock, its credits (balance less unexpired holds, less what the batch's earlier paid
//! acquisitions will charge, read once per account and batch: [`Spending`]) and its key's caps
//! must cover the price, or it is refused with nothing written; then it is granted with the other
//! acquisitions of its key's round (in a shared statement with them), and once the grants are
//! known its charge is booked and its payment recorded settled (or voided, for a key found held)
//! in new rows only: the batch's charges in one `INSERT … SELECT … RETURNING` and their payments
//! in one more, from JSON arrays (`charge_rows`, `payment_rows`). So a credit-paid lock costs the writer two operations, acquire and release,
//! as a free one does, and no payment is ever left `verified` by it: a crash before the commit
//! leaves nothing, after it everything.
//!
//! **Payments share the writer.** Reserving a payment and recording how it ended (settled or
//! voided) are applied by the same writers, keyed by payer and by payment, so that a paid request
//! costs no fsync of its own: on SQLite, with one connection, two fsyncs a payment had capped paid
//! requests at the disk's fsync rate. A replay key already taken fails its batch, which is then
//! applied one by one, so the replay is refused alone. A batch takes payment rows last.
//!
//! **Refusals share the batch.** An acquisition of a held key goes to the writer like any other:
//! its statement changes nothing, so a batch of refusals alone commits without writing, and one
//! among grants shares their fsync. (Answering it from a read before queueing was tried: on
//! PostgreSQL the read sees the state before another host's open batch, a release already
//! stamped but not committed, and on SQLite it waits for the one connection behind the batch;
//! the lock benchmark ran 40% slower with it.)

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::{broadcast, mpsc, oneshot};
use vendbox_core::{AccountAddress, LedgerEntry, LockKey, Payment, PaymentId, TokenHash};

use crate::{
    CreditHold, CreditSpend, HoldRefusal, LockAcquisition, LockRelease, LockRenewal, PaidAcquisition,
    PaymentOutcome, SpendCaps, StoreError, StoreResult,
};

/// A lock TTL in milliseconds, as the SQL adds it to the clock.
pub(crate) fn ttl_ms(ttl: std::time::Duration) -> Result<i64, StoreError> {
    i64::try_from(ttl.as_millis()).map_err(|_| StoreError::Corrupt("lock TTL too long".into()))
}

/// The most operations one transaction applies.
pub(crate) const BATCH: usize = 256;

/// Operations that may wait for the writer before callers wait to enqueue.
const QUEUE: usize = 4096;

/// One lock operation for the writer, with where its answer goes.
#[derive(Debug)]
pub(crate) enum Op {
    /// Grant `key`.
    Acquire {
        key: LockKey,
        owner: Option<String>,
        metadata: Option<String>,
        ttl_ms: i64,
        release: TokenHash,
        reply: oneshot::Sender<StoreResult<LockAcquisition>>,
    },
    /// Grant `key` paid from credits, in the same transaction (`Store::acquire_lock_paid`).
    AcquirePaid {
        key: LockKey,
        owner: Option<String>,
        metadata: Option<String>,
        ttl_ms: i64,
        release: TokenHash,
        spend: Box<CreditSpend>,
        reply: oneshot::Sender<StoreResult<PaidAcquisition>>,
    },
    /// Renew the grant of `release` on `key`.
    Renew {
        key: LockKey,
        release: TokenHash,
        ttl_ms: Option<i64>,
        reply: oneshot::Sender<StoreResult<LockRenewal>>,
    },
    /// Release the grant of `release` on `key`.
    Release { key: LockKey, release: TokenHash, reply: oneshot::Sender<StoreResult<LockRelease>> },
    /// Hold credits, and reserve the payment they are for (`Store::place_hold`).
    Hold {
        hold: CreditHold,
        caps: SpendCaps,
        reserve: Option<Box<Payment>>,
        now: DateTime<Utc>,
        reply: oneshot::Sender<StoreResult<Result<(), HoldRefusal>>>,
    },
    /// Charge the hold of `payment` (`Store::settle_hold`); the inner error is the charge's
    /// own refusal, which does not fail the batch.
    Charge {
        account: AccountAddress,
        payment: PaymentId,
        now: DateTime<Utc>,
        reply: oneshot::Sender<StoreResult<StoreResult<Option<LedgerEntry>>>>,
    },
    /// Reserve `payment` (`Store::reserve_payment`).
    Reserve { payment: Box<Payment>, reply: oneshot::Sender<StoreResult<()>> },
    /// Record how payment `id` ended (`Store::finish_payment`).
    Finish {
        id: PaymentId,
        outcome: PaymentOutcome,
        now: DateTime<Utc>,
        reply: oneshot::Sender<StoreResult<Payment>>,
    },
}

/// The row an operation is about, ordered as a batch takes rows: accounts, then lock keys, then
/// new payments (by payer and nonce), then payments by id, each by name. (A paid acquisition is
/// about its lock key, and takes its account's row with the accounts.)
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Row<'a> {
    Account(&'a str),
    Lock(&'a str),
    Reservation(&'a str, &'a str),
    Payment(PaymentId),
}

impl Row<'_> {
    /// The row's key as text.
    fn name(&self) -> String {
        match self {
            Row::Lock(key) | Row::Account(key) => (*key).to_owned(),
            Row::Reservation(payer, nonce) => format!("{payer}{nonce}"),
            Row::Payment(id) => id.to_string(),
        }
    }
}

/// What one operation came to, inside a batch not yet committed.
#[derive(Debug)]
pub(crate) enum Answer {
    Acquired(LockAcquisition),
    PaidAcquired(PaidAcquisition),
    Renewed(LockRenewal),
    Released(LockRelease),
    Held(Result<(), HoldRefusal>),
    Charged(StoreResult<Option<LedgerEntry>>),
    Reserved,
    Finished(Box<Payment>),
}

impl Op {
    /// The row it is about, as its place in the order a batch takes rows in (see [`Row`]).
    pub(crate) fn order(&self) -> Row<'_> {
        match self {
            Op::Acquire { key, .. }
            | Op::AcquirePaid { key, .. }
            | Op::Renew { key, .. }
            | Op::Release { key, .. } => Row::Lock(key.as_str()),
            Op::Hold { hold, .. } => Row::Account(hold.account.as_str()),
            Op::Charge { account, .. } => Row::Account(account.as_str()),
            Op::Reserve { payment, .. } => {
                Row::Reservation(&payment.replay_key.payer, &payment.replay_key.nonce)
            }
            Op::Finish { id, .. } => Row::Payment(*id),
        }
    }

    /// The lock key it is about, if it is a lock operation.
    pub(crate) fn lock_key(&self) -> Option<&LockKey> {
        match self {
            Op::Acquire { key, .. }
            | Op::AcquirePaid { key, .. }
            | Op::Renew { key, .. }
            | Op::Release { key, .. } => Some(key),
            _ => None,
        }
    }

    /// Sends `answer` to the caller (who may have hung up: then nobody hears it).
    pub(crate) fn answer(self, answer: StoreResult<Answer>) {
        match self {
            Op::Acquire { reply, .. } => deliver(reply, answer, |a| match a {
                Answer::Acquired(a) => Some(a),
                _ => None,
            }),
            Op::AcquirePaid { reply, .. } => deliver(reply, answer, |a| match a {
                Answer::PaidAcquired(a) => Some(a),
                _ => None,
            }),
            Op::Renew { reply, .. } => deliver(reply, answer, |a| match a {
                Answer::Renewed(a) => Some(a),
                _ => None,
            }),
            Op::Release { reply, .. } => deliver(reply, answer, |a| match a {
                Answer::Released(a) => Some(a),
                _ => None,
            }),
            Op::Hold { reply, .. } => deliver(reply, answer, |a| match a {
                Answer::Held(a) => Some(a),
                _ => None,
            }),
            Op::Charge { reply, .. } => deliver(reply, answer, |a| match a {
                Answer::Charged(a) => Some(a),
                _ => None,
            }),
            Op::Reserve { reply, .. } => deliver(reply, answer, |a| match a {
                Answer::Reserved => Some(()),
                _ => None,
            }),
            Op::Finish { reply, .. } => deliver(reply, answer, |a| match a {
                Answer::Finished(p) => Some(*p),
                _ => None,
            }),
        }
    }
}

/// Sends the part of `answer` that `pick` finds to `reply`; an answer of another kind is a
/// fault of the writer, reported as corruption rather than dropped.
fn deliver<T>(
    reply: oneshot::Sender<StoreResult<T>>,
    answer: StoreResult<Answer>,
    pick: impl FnOnce(Answer) -> Option<T>,
) {
    let answer = answer.and_then(|a| {
        pick(a).ok_or_else(|| StoreError::Corrupt("a lock operation got another operation's answer".into()))
    });
    let _ = reply.send(answer);
}

/// The operations of a batch that may share statements: the `n`th operation of each row of the
/// batch (which is in row order), so that no row appears twice in one round and a row's later
/// operations see its earlier ones by coming in a later round.
#[derive(Debug, Default)]
pub(crate) struct Round {
    /// Every operation of the round, by its place in the batch.
    pub(crate) members: Vec<usize>,
    /// Its acquisitions.
    pub(crate) acquires: Vec<usize>,
    /// Its releases.
    pub(crate) releases: Vec<usize>,
}

impl Round {
    /// The rounds of the operations `within` of `ops`, sorted by [`Op::order`].
    pub(crate) fn of(ops: &[Op], within: std::ops::Range<usize>) -> Vec<Round> {
        let mut rounds: Vec<Round> = Vec::new();
        let mut nth = 0;
        let first = within.start;
        for i in within {
            let op = &ops[i];
            nth = if i > first && ops[i - 1].order() == op.order() { nth + 1 } else { 0 };
            if rounds.len() <= nth {
                rounds.push(Round::default());
            }
            let round = &mut rounds[nth];
            round.members.push(i);
            match op {
                Op::Acquire { .. } | Op::AcquirePaid { .. } => round.acquires.push(i),
                Op::Release { .. } => round.releases.push(i),
                _ => {}
            }
        }
        rounds
    }

    /// Whether some of its operations go in one statement together.
    pub(crate) fn has_shared_statements(&self) -> bool {
        self.acquires.len() > 1 || self.releases.len() > 1
    }
}

/// Where the operations on rows of one kind (`kind` says which) lie in `ops`, which is sorted by
/// [`Op::order`]; an empty range where there are none.
pub(crate) fn rows_of(ops: &[Op], kind: impl Fn(&Row<'_>) -> bool) -> std::ops::Range<usize> {
    let start = ops.iter().position(|op| kind(&op.order())).unwrap_or(ops.len());
    let end = start + ops[start..].iter().take_while(|op| kind(&op.order())).count();
    start..end
}

/// What a batch knows of the credits its paid acquisitions spend, read under each account's
/// lock: each account's balance and what is held from it, and each capped key's spending, as
/// read once per batch, plus what the batch's paid acquisitions before will charge (counted as
/// held until the grants are known and the charges booked). So paid acquisitions of one
/// account in one batch cover each other as holds would, without a write each.
#[derive(Debug, Default)]
pub(crate) struct Spending {
    /// Per account: its balance, and what is held from it or spent by this batch.
    funds: std::collections::HashMap<String, (u64, u64)>,
    /// Per capped key: spent (and held) since its day started, and in all.
    keys: std::collections::HashMap<String, (u64, u64)>,
}

impl Spending {
    /// Whether `account`'s funds were read in this batch.
    pub(crate) fn knows_account(&self, account: &str) -> bool {
        self.funds.contains_key(account)
    }

    /// Notes `account`'s balance and holds, as read under its lock.
    pub(crate) fn note_account(&mut self, account: &str, balance: u64, held: u64) {
        self.funds.insert(account.to_owned(), (balance, held));
    }

    /// The key whose caps `spend` must fit, if it has caps.
    pub(crate) fn capped_key(spend: &CreditSpend) -> Option<&str> {
        spend.key_id.as_deref().filter(|_| spend.caps.daily.is_some() || spend.caps.total.is_some())
    }

    /// Whether `key`'s spending was read in this batch.
    pub(crate) fn knows_key(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    /// Notes what `key` spent (and holds) since its day started and in all.
    pub(crate) fn note_key(&mut self, key: &str, today: u64, total: u64) {
        self.keys.insert(key.to_owned(), (today, total));
    }

    /// Counts `spend` if the account's available credit and the key's caps cover it (as
    /// `Store::place_hold` judges a hold); why not otherwise, counting nothing. Its account (and
    /// key, if capped) must have been noted.
    pub(crate) fn spend(&mut self, spend: &CreditSpend) -> StoreResult<Result<(), HoldRefusal>> {
        use vendbox_core::Usdc;
        let unknown = || StoreError::Corrupt("a paid acquisition's funds were not read".into());
        let amount = spend.payment.amount.atomic();
        let &(balance, held) = self.funds.get(spend.account.as_str()).ok_or_else(unknown)?;
        if balance.saturating_sub(held) < amount {
            return Ok(Err(HoldRefusal::Short {
                balance: Usdc(balance),
                held: Usdc(held),
                needed: Usdc(amount),
            }));
        }
        let key = Spending::capped_key(spend);
        if let Some(key) = key {
            let &(today, total) = self.keys.get(key).ok_or_else(unknown)?;
            let refusal = match (spend.caps.daily, spend.caps.total) {
                (Some(cap), _) if today.saturating_add(amount) > cap.atomic() => {
                    Some(HoldRefusal::DailyCap { cap, spent: Usdc(today) })
                }
                (_, Some(cap)) if total.saturating_add(amount) > cap.atomic() => {
                    Some(HoldRefusal::TotalCap { cap, spent: Usdc(total) })
                }
                _ => None,
            };
            if let Some(refusal) = refusal {
                return Ok(Err(refusal));
            }
        }
        if let Some(funds) = self.funds.get_mut(spend.account.as_str()) {
            funds.1 = held.saturating_add(amount);
        }
        if let Some(spent) = key.and_then(|k| self.keys.get_mut(k)) {
            *spent = (spent.0.saturating_add(amount), spent.1.saturating_add(amount));
        }
        Ok(Ok(()))
    }
}

/// The operations `members` of `ops` as the JSON array of objects a shared statement reads its
/// rows from (the store's `rows` SQL): `k` the row's key, and for an acquisition `o` its owner,
/// `t` its TTL in milliseconds and `m` its metadata, and `h` the release token's hash.
pub(crate) fn rows_json(ops: &[Op], members: impl Iterator<Item = usize>) -> String {
    use serde_json::{Value, json};
    let rows: Vec<Value> = members
        .map(|i| match &ops[i] {
            Op::Acquire { key, owner, metadata, ttl_ms, release, .. }
            | Op::AcquirePaid { key, owner, metadata, ttl_ms, release, .. } => json!({
                "k": key.as_str(), "o": owner, "h": release.to_hex(), "t": ttl_ms, "m": metadata,
            }),
            Op::Release { key, release, .. } | Op::Renew { key, release, .. } => {
                json!({ "k": key.as_str(), "h": release.to_hex() })
            }
            op => json!({ "k": op.order().name() }),
        })
        .collect();
    Value::from(rows).to_string()
}

/// The longest a writer waits for the callers of its last batch to come back before it starts
/// a smaller one: by default not at all (`VENDBOX_LOCK_GATHER_US` sets it, in microseconds, for
/// a disk whose fsync costs more than a caller's turnaround). It was 2 ms while a PostgreSQL
/// batch read the whole `locks` table (then fewer, fuller batches paid); once batches found
/// their keys by index, any wait cost more than it saved. Measured on one 2-core host
/// (2026-12-01), locks benchmark, 0 against 2 ms: price 0 on PostgreSQL 7,985 against 7,228
/// cycles/s, on SQLite the same within noise (8,006 against 8,057; 300 µs, 1 ms and 4 ms did no
/// better), 64 clients waiting on 8 keys 3,466 against 1,793 handovers/s on PostgreSQL and 3,525
/// against 2,656 on SQLite.
const GATHER: std::time::Duration = std::time::Duration::ZERO;

/// How a writer fills its next batch. Callers answered by a batch come back (their next
/// operation) a turnaround later, while the writer has already started a batch with the few
/// that arrived meanwhile: they then wait for that batch's commit before theirs starts, and
/// batches alternate between many and few operations, each paying a whole commit (an fsync).
/// So when fewer operations wait than the last batch had, the writer can wait for the rest a
/// little: at most half the last batch's time (what a second commit would cost them), and at
/// most [`GATHER`] (by default nothing: where a commit is cheap, waiting costs more). At rest
/// (one caller, or none back yet) this waits at most once per drop in load; nothing is answered
/// earlier or later than its commit either way.
#[derive(Debug)]
pub(crate) struct Gathering {
    /// Operations in the last batch.
    last: usize,
    /// When the batch being applied started.
    started: std::time::Instant,
    /// How long the last batch took, from its start to its commit.
    took: std::time::Duration,
    /// The most it waits.
    limit: std::time::Duration,
}

impl Default for Gathering {
    fn default() -> Self {
        let limit = std::env::var("VENDBOX_LOCK_GATHER_US")
            .ok()
            .and_then(|us| us.parse().ok())
            .map_or(GATHER, std::time::Duration::from_micros);
        Gathering { last: 0, started: std::time::Instant::now(), took: std::time::Duration::ZERO, limit }
    }
}

impl Gathering {
    /// Adds to `batch` what arrives on `ops` while the wait lasts; notes the batch's start.
    pub(crate) async fn gather(&mut self, ops: &mut mpsc::Receiver<Op>, batch: &mut Vec<Op>) {
        let wait = self.limit.min(self.took / 2);
        if batch.len() < self.last && !wait.is_zero() {
            let deadline = tokio::time::Instant::now() + wait;
            while batch.len() < self.last.min(BATCH) {
                let room = BATCH - batch.len();
                match tokio::time::timeout_at(deadline, ops.recv_many(batch, room)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        self.last = batch.len();
        self.started = std::time::Instant::now();
    }

    /// Notes that the batch committed (or failed).
    pub(crate) fn committed(&mut self) {
        self.took = self.started.elapsed();
    }
}

/// The PostgreSQL notification channel a committed release is announced on, to every host.
pub(crate) const RELEASED_CHANNEL: &str = "vendbox_lock_released";

/// Released keys remembered for slow waiters (one that misses some tries again on its timer).
const RELEASES: usize = 1024;

/// The way to a store's lock writers, and the announcements of released keys. A key always
/// goes to the same writer, so its operations are applied in the order they arrived.
#[derive(Debug, Clone)]
pub(crate) struct Queue {
    ops: Arc<[mpsc::Sender<Op>]>,
    released: broadcast::Sender<LockKey>,
}

/// How many writers a store with `default` writers runs: `VENDBOX_LOCK_WRITERS` overrides it
/// where the store can have `several` (PostgreSQL), for measuring; elsewhere one.
pub(crate) fn writers(default: usize, several: bool) -> usize {
    if !several {
        return 1;
    }
    std::env::var("VENDBOX_LOCK_WRITERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(default)
}

impl Queue {
    /// A queue to `writers` writers, and each writer's end of it.
    pub(crate) fn new(writers: usize) -> (Queue, Vec<mpsc::Receiver<Op>>) {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..writers.max(1)).map(|_| mpsc::channel(QUEUE)).unzip();
        let (released, _) = broadcast::channel(RELEASES);
        (Queue { ops: senders.into(), released }, receivers)
    }

    /// Queues the operation on row `key` (a lock key, or an account) that `make` builds around
    /// its reply, and waits for the answer.
    pub(crate) async fn run<T>(
        &self,
        key: &str,
        make: impl FnOnce(oneshot::Sender<StoreResult<T>>) -> Op,
    ) -> StoreResult<T> {
        let (reply, answer) = oneshot::channel();
        let gone = || StoreError::Database(sqlx::Error::PoolClosed);
        let writer = match self.ops.len() {
            1 => 0,
            writers => {
                use std::hash::{Hash as _, Hasher as _};
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                key.hash(&mut hasher);
                usize::try_from(hasher.finish() % writers as u64).unwrap_or(0)
            }
        };
        self.ops[writer].send(make(reply)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Keys released from now on.
    pub(crate) fn releases(&self) -> broadcast::Receiver<LockKey> {
        self.released.subscribe()
    }

    /// Announces that `key` was released (nobody may be listening).
    pub(crate) fn announce(&self, key: LockKey) {
        let _ = self.released.send(key);
    }

    /// A handle that announces without keeping the store's queue alive.
    pub(crate) fn weak(&self) -> WeakQueue {
        WeakQueue {
            ops: self.ops.iter().map(mpsc::Sender::downgrade).collect(),
            released: self.released.clone(),
        }
    }
}

/// A [`Queue`] that does not keep its writer alive.
#[derive(Debug)]
pub(crate) struct WeakQueue {
    ops: Vec<mpsc::WeakSender<Op>>,
    released: broadcast::Sender<LockKey>,
}

impl WeakQueue {
    /// The queue, while some store still holds it.
    pub(crate) fn upgrade(&self) -> Option<Queue> {
        let ops: Option<Vec<_>> = self.ops.iter().map(mpsc::WeakSender::upgrade).collect();
        Some(Queue { ops: ops?.into(), released: self.released.clone() })
    }
}

/// Writes the lock methods of `$store`, whose `pool` is a pool of database `$db` and whose
/// `locks` is its [`Queue`]; `$clock` is the SQL that reads the database's clock in Unix
/// milliseconds when it is evaluated; `$rows` a `FROM` item `r (k, o, h, t, m)` of the rows of
/// the JSON array bound as `$1` (see [`rows_json`]); `$serialize_batch` the statement a batch
/// with shared statements runs first so that no two such batches, of any writer or host, run at
/// once (empty where one writer at a time needs none); `$notify` what a release's `RETURNING`
/// adds to announce the released key to every host once the transaction commits, and
/// `$notify_open` / `$notify_close` what wraps a shared release statement to announce all its
/// keys in as few notices as fit (empty where the writer announces its own releases);
/// `$keys_of_rows` a condition that lets the database find the rows' keys by their index (`true`
/// where it does so unaided).
macro_rules! impl_locks {
    (
        $store:ty,
        $db:ty,
        clock_ms = $clock:literal,
        rows = $rows:literal,
        serialize_batch = $serialize_batch:literal,
        notify_released = $notify:literal,
        notify_batch = ($notify_open:literal, $notify_close:literal),
        keys_of_rows = $keys_of_rows:literal,
        charge_rows = $charge_rows:literal,
        payment_rows = $payment_rows:literal
    ) => {
        impl $store {
            fn lock_from_row(r: &<$db as sqlx::Database>::Row) -> $crate::StoreResult<vendbox_core::Lock> {
                use sqlx::Row;
                use $crate::shared::from_ms;
                let required = |col: &str| -> $crate::StoreResult<i64> {
                    r.try_get::<Option<i64>, _>(col)?
                        .ok_or_else(|| $crate::StoreError::Corrupt(format!("locks.{col} is empty on a held lock")))
                };
                let metadata: Option<String> = r.try_get("metadata")?;
                Ok(vendbox_core::Lock {
                    key: vendbox_core::LockKey::parse(r.try_get("key")?)
                        .map_err(|e| $crate::StoreError::Corrupt(e.to_string()))?,
                    owner: r.try_get("owner")?,
                    fencing_token: vendbox_core::FencingToken($crate::shared::sql_to_u64(
                        r.try_get("fencing_token")?,
                        "locks.fencing_token",
                    )?),
                    acquired_at: from_ms(required("acquired_at")?)?,
                    expires_at: from_ms(required("expires_at")?)?,
                    ttl_ms: $crate::shared::sql_to_u64(required("ttl_ms")?, "locks.ttl_ms")?,
                    released_at: r.try_get::<Option<i64>, _>("released_at")?.map(from_ms).transpose()?,
                    metadata: metadata
                        .map(|m| serde_json::from_str(&m))
                        .transpose()
                        .map_err(|e| $crate::StoreError::Corrupt(format!("locks.metadata: {e}")))?,
                })
            }

            /// Starts the lock writers over `pool` (see the module's documentation): the queue to
            /// them. They run on a thread of their own, on a runtime of their own, so that each
            /// statement's answer reaches its writer at once rather than after every request
            /// task queued on the server's runtime (a batch of many statements waited out that
            /// queue once per statement). They stop when the last clone of the queue is dropped,
            /// and the thread with them.
            fn spawn_lock_writer(pool: sqlx::Pool<$db>) -> $crate::StoreResult<$crate::aggregates::locks::Queue> {
                let (queue, receivers) =
                    $crate::aggregates::locks::Queue::new($crate::aggregates::locks::writers(Self::LOCK_WRITERS, Self::LOCK_WRITER_OWNS_CONNECTION));
                let mut writers = Vec::with_capacity(receivers.len());
                for mut ops in receivers {
                    // The writer announces releases through a weak handle: the writer stops once
                    // every store that queues to it is gone.
                    let released = queue.weak();
                    let pool = pool.clone();
                    writers.push(async move {
                        let mut batch = Vec::with_capacity($crate::aggregates::locks::BATCH);
                        let mut gathering = $crate::aggregates::locks::Gathering::default();
                        let mut own = None;
                        while ops.recv_many(&mut batch, $crate::aggregates::locks::BATCH).await > 0 {
                            gathering.gather(&mut ops, &mut batch).await;
                            // In key order (each key's operations keeping their order), so that
                            // batches of several writers or hosts take row locks in one order and
                            // cannot deadlock.
                            batch.sort_by(|a, b| a.order().cmp(&b.order()));
                            let keys = Self::apply_lock_batch(&pool, &mut own, std::mem::take(&mut batch)).await;
                            gathering.committed();
                            // On PostgreSQL the database announces them, to every host.
                            if Self::RELEASES_ANNOUNCED_BY_DATABASE {
                                continue;
                            }
                            if let Some(queue) = released.upgrade() {
                                for key in keys {
                                    queue.announce(key);
                                }
                            }
                        }
                    });
                }
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                std::thread::Builder::new().name("vendbox-lock-writer".into()).spawn(move || {
                    runtime.block_on(async move {
                        let writers: Vec<_> = writers.into_iter().map(tokio::spawn).collect();
                        for writer in writers {
                            let _ = writer.await;
                        }
                    });
                })?;
                Ok(queue)
            }

            /// Applies `ops` in one transaction and answers each once it committed; if the batch
            /// fails, applies each alone. The keys it released.
            async fn apply_lock_batch(
                pool: &sqlx::Pool<$db>,
                own: &mut Option<<$db as sqlx::Database>::Connection>,
                ops: Vec<$crate::aggregates::locks::Op>,
            ) -> Vec<vendbox_core::LockKey> {
                use $crate::aggregates::locks::Answer;
                let mut released = Vec::new();
                let mut note = |answer: &$crate::StoreResult<Answer>| {
                    if let Ok(Answer::Released($crate::LockRelease::Released(lock))) = answer {
                        released.push(lock.key.clone());
                    }
                };
                match Self::try_lock_batch(pool, own, &ops).await {
                    Ok(answers) => {
                        for (op, answer) in ops.into_iter().zip(answers) {
                            let answer = Ok(answer);
                            note(&answer);
                            op.answer(answer);
                        }
                    }
                    Err(e) if ops.len() == 1 => {
                        if let Some(op) = ops.into_iter().next() {
                            op.answer(Err(e));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, operations = ops.len(), "a batch of lock operations failed; applying each alone");
                        for op in ops {
                            let answer = Self::try_lock_batch(pool, own, std::slice::from_ref(&op)).await;
                            let answer = answer.and_then(|mut a| {
                                a.pop().ok_or_else(|| $crate::StoreError::Corrupt("a lock operation got no answer".into()))
                            });
                            note(&answer);
                            op.answer(answer);
                        }
                    }
                }
                released
            }

            /// Applies `ops` in one transaction on the writer's connection: its own (`own`,
            /// opened when missing and dropped after a failure of the connection itself) where
            /// the store says so, the pool's otherwise.
            async fn try_lock_batch(
                pool: &sqlx::Pool<$db>,
                own: &mut Option<<$db as sqlx::Database>::Connection>,
                ops: &[$crate::aggregates::locks::Op],
            ) -> $crate::StoreResult<Vec<$crate::aggregates::locks::Answer>> {
                if !Self::LOCK_WRITER_OWNS_CONNECTION {
                    let mut conn = pool.acquire().await?;
                    return Self::lock_batch_on(&mut conn, ops).await;
                }
                if own.is_none() {
                    let mut conn: <$db as sqlx::Database>::Connection =
                        sqlx::ConnectOptions::connect(&*pool.connect_options()).await?;
                    if !Self::LOCK_WRITER_SETUP.is_empty() {
                        sqlx::query(Self::LOCK_WRITER_SETUP).execute(&mut conn).await?;
                    }
                    *own = Some(conn);
                }
                let Some(conn) = own.as_mut() else {
                    return Err($crate::StoreError::Corrupt("the lock writer has no connection".into()));
                };
                let result = Self::lock_batch_on(conn, ops).await;
                // A refusal of the database leaves the connection usable (the transaction is
                // rolled back on its next use); anything else (I/O, protocol) may not.
                if let Err($crate::StoreError::Database(e)) = &result
                    && !matches!(e, sqlx::Error::Database(_))
                {
                    *own = None;
                }
                result
            }

            async fn lock_batch_on(
                conn: &mut <$db as sqlx::Database>::Connection,
                ops: &[$crate::aggregates::locks::Op],
            ) -> $crate::StoreResult<Vec<$crate::aggregates::locks::Answer>> {
                use $crate::aggregates::locks::{Answer, Op, Round, Row, rows_of};
                let mut tx = sqlx::Connection::begin(conn).await?;
                let mut answers: Vec<Option<Answer>> = ops.iter().map(|_| None).collect();
                // Accounts whose row lock this transaction took: their later operations in the
                // batch need not take it again.
                let mut locked = std::collections::HashSet::new();
                // The batch is in row order (accounts, lock keys, payments), and takes its rows
                // in that order: all its accounts (with those of its paid acquisitions), then its
                // lock keys, then its payments.
                let accounts = rows_of(ops, |row| matches!(row, Row::Account(_)));
                let keys = rows_of(ops, |row| matches!(row, Row::Lock(_)));
                let rest = rows_of(ops, |row| !matches!(row, Row::Account(_) | Row::Lock(_)));
                let paid: Vec<usize> = keys.clone().filter(|&i| matches!(ops[i], Op::AcquirePaid { .. })).collect();
                Self::apply_accounts_in(&mut tx, ops, accounts.clone(), &paid, &mut answers, &mut locked).await?;
                let rounds = Round::of(ops, keys);
                // On PostgreSQL a batch with shared statements first takes the advisory lock that
                // keeps such batches one at a time: one statement locks its rows in no set order.
                if !$serialize_batch.is_empty() && rounds.iter().any(Round::has_shared_statements) {
                    sqlx::query($serialize_batch).execute(&mut *tx).await?;
                }
                for round in &rounds {
                    // A paid acquisition its credits refused is answered already.
                    let acquires: Vec<usize> = round.acquires.iter().copied().filter(|&i| answers[i].is_none()).collect();
                    if acquires.len() > 1 {
                        Self::acquire_locks_in(&mut tx, ops, &acquires, &mut answers).await?;
                    }
                    if round.releases.len() > 1 {
                        Self::release_locks_in(&mut tx, ops, &round.releases, &mut answers).await?;
                    }
                    for &i in &round.members {
                        if answers[i].is_some() {
                            continue;
                        }
                        answers[i] = Some(Self::apply_lock_op_in(&mut tx, &ops[i], &mut locked).await?);
                    }
                }
                // The paid acquisitions' charges, now that their grants are known: new rows only
                // (their accounts' rows are this transaction's already).
                let mut done = Vec::with_capacity(paid.len());
                for &i in &paid {
                    let Op::AcquirePaid { spend, .. } = &ops[i] else { continue };
                    if let Some(Answer::Acquired(acquisition)) = answers[i].take_if(|a| matches!(a, Answer::Acquired(_))) {
                        done.push((i, spend.as_ref(), acquisition));
                    }
                }
                if done.len() == 1 {
                    for (i, spend, acquisition) in done {
                        answers[i] = Some(Answer::PaidAcquired(Self::charge_paid_in(&mut tx, spend, acquisition).await?));
                    }
                } else if !done.is_empty() {
                    Self::charge_paid_together_in(&mut tx, done, &mut answers).await?;
                }
                for i in rest {
                    answers[i] = Some(Self::apply_lock_op_in(&mut tx, &ops[i], &mut locked).await?);
                }
                tx.commit().await?;
                answers
                    .into_iter()
                    .map(|a| a.ok_or_else(|| $crate::StoreError::Corrupt("a lock operation got no answer".into())))
                    .collect()
            }

            /// Applies the operations `accounts` of `ops` (on account rows, in account order),
            /// and checks the credits of the paid acquisitions `paid`, taking each account's row
            /// lock once, in account order: an account's own operations first, then its paid
            /// acquisitions, which see what those held or charged. A paid acquisition the
            /// credits or the key's caps do not cover is answered here, with nothing written;
            /// the others are counted against their account (and key) for the rest of the batch.
            async fn apply_accounts_in<'o>(
                conn: &mut <$db as sqlx::Database>::Connection,
                ops: &'o [$crate::aggregates::locks::Op],
                accounts: std::ops::Range<usize>,
                paid: &[usize],
                answers: &mut [Option<$crate::aggregates::locks::Answer>],
                locked: &mut std::collections::HashSet<&'o str>,
            ) -> $crate::StoreResult<()> {
                use sqlx::Row as _;
                use $crate::aggregates::locks::{Answer, Op, Spending};
                use $crate::shared::{ms, sql_to_u64};
                let mut by_account: std::collections::BTreeMap<&str, (Vec<usize>, Vec<&$crate::CreditSpend>, Vec<usize>)> =
                    std::collections::BTreeMap::new();
                for i in accounts {
                    if let $crate::aggregates::locks::Row::Account(account) = ops[i].order() {
                        by_account.entry(account).or_default().0.push(i);
                    }
                }
                for &i in paid {
                    if let Op::AcquirePaid { spend, .. } = &ops[i] {
                        let entry = by_account.entry(spend.account.as_str()).or_default();
                        entry.1.push(spend);
                        entry.2.push(i);
                    }
                }
                let mut spending = Spending::default();
                for (account, (own, spends, paid)) in by_account {
                    for i in own {
                        answers[i] = Some(Self::apply_lock_op_in(&mut *conn, &ops[i], locked).await?);
                    }
                    for (spend, i) in spends.into_iter().zip(paid) {
                        if locked.insert(account) {
                            Self::lock_account(&mut *conn, &spend.account, spend.now).await?;
                        }
                        if !spending.knows_account(account) {
                            let funds = sqlx::query($crate::aggregates::ledger::FUNDS_SQL)
                                .bind(account)
                                .bind(ms(spend.now))
                                .fetch_one(&mut *conn)
                                .await?;
                            spending.note_account(
                                account,
                                sql_to_u64(funds.try_get("balance")?, "balance")?,
                                sql_to_u64(funds.try_get("held")?, "held")?,
                            );
                        }
                        if let Some(key) = Spending::capped_key(spend).filter(|k| !spending.knows_key(k)) {
                            let spent = sqlx::query($crate::aggregates::ledger::KEY_SPENT_SQL)
                                .bind(key)
                                .bind(ms(spend.caps.since))
                                .bind(ms(spend.now))
                                .fetch_one(&mut *conn)
                                .await?;
                            let held = sql_to_u64(spent.try_get("held")?, "held")?;
                            let today = sql_to_u64(spent.try_get("charged_since")?, "charged")?;
                            let total = sql_to_u64(spent.try_get("charged")?, "charged")?;
                            spending.note_key(key, today.saturating_add(held), total.saturating_add(held));
                        }
                        if let Err(refusal) = spending.spend(spend)? {
                            answers[i] = Some(Answer::PaidAcquired($crate::PaidAcquisition::Refused(refusal)));
                        }
                    }
                }
                Ok(())
            }

            /// As [`Self::charge_paid_in`] for several paid acquisitions (`done`: each one's place
            /// in the batch, its spend and what it came to), in two statements: one books every
            /// charge, one records every payment, from JSON arrays (`charge_rows`,
            /// `payment_rows`). Their credits were counted under their accounts' locks.
            async fn charge_paid_together_in(
                conn: &mut <$db as sqlx::Database>::Connection,
                done: Vec<(usize, &$crate::CreditSpend, $crate::LockAcquisition)>,
                answers: &mut [Option<$crate::aggregates::locks::Answer>],
            ) -> $crate::StoreResult<()> {
                use serde_json::{Value, json};
                use $crate::shared::{atomic_to_sql, ms};
                let charged = |spend: &$crate::CreditSpend, acquisition: &$crate::LockAcquisition| {
                    matches!(acquisition, $crate::LockAcquisition::Acquired(_)) || spend.charge_when_held
                };
                let mut charges = Vec::new();
                for (_, spend, acquisition) in &done {
                    if charged(spend, acquisition) {
                        charges.push(json!({
                            "a": spend.account.as_str(),
                            "p": spend.payment.id.to_string(),
                            "k": spend.key_id,
                            "n": atomic_to_sql(spend.payment.amount.atomic())?,
                            "c": ms(spend.now),
                        }));
                    }
                }
                let mut entries = std::collections::HashMap::with_capacity(charges.len());
                if !charges.is_empty() {
                    let rows = sqlx::query(concat!(
                        "INSERT INTO ledger_entries (account, kind, delta_atomic, reference, created_at, key_id) \
                         SELECT r.a, $2, -r.n, r.p, r.c, r.k FROM ", $charge_rows, " WHERE true RETURNING *"
                    ))
                    .bind(Value::from(charges).to_string())
                    .bind(vendbox_core::LedgerKind::Charge.as_str())
                    .fetch_all(&mut *conn)
                    .await?;
                    for row in &rows {
                        let entry = Self::ledger_from_row(row)?;
                        entries.insert(entry.reference.clone(), entry);
                    }
                }
                let mut payments = Vec::with_capacity(done.len());
                let mut outcomes = Vec::with_capacity(done.len());
                for (i, spend, acquisition) in done {
                    let p = &spend.payment;
                    let charge = if charged(spend, &acquisition) {
                        let entry = entries.remove(&p.id.to_string()).ok_or_else(|| {
                            $crate::StoreError::Corrupt(format!("the charge of payment {} was not booked", p.id))
                        })?;
                        Some(entry)
                    } else {
                        None
                    };
                    let (state, settlement_ref, void_reason) = match &charge {
                        Some(entry) => (vendbox_core::PaymentState::Settled, Some(entry.id.to_string()), None),
                        None => (vendbox_core::PaymentState::Voided, None, Some(spend.void_reason.as_str())),
                    };
                    payments.push(json!({
                        "id": p.id.to_string(),
                        "q": p.quote_id.map(|q| q.to_string()),
                        "me": p.method.as_str(),
                        "ch": p.replay_key.chain,
                        "asset": p.replay_key.asset,
                        "payer": p.replay_key.payer,
                        "nonce": p.replay_key.nonce,
                        "n": atomic_to_sql(p.amount.atomic())?,
                        "st": state.as_str(),
                        "sr": settlement_ref,
                        "vr": void_reason,
                        "pr": p.proof,
                        "c": ms(p.created_at),
                        "u": ms(spend.now),
                        "pu": p.purchase,
                    }));
                    outcomes.push((i, acquisition, charge));
                }
                let recorded = sqlx::query(concat!(
                    "INSERT INTO payments (id, quote_id, method, chain, asset, payer, nonce, amount_atomic, state, \
                     settlement_ref, void_reason, proof, created_at, updated_at, purchase) \
                     SELECT r.id, r.q, r.me, r.ch, r.asset, r.payer, r.nonce, r.n, r.st, r.sr, r.vr, r.pr, r.c, r.u, r.pu \
                     FROM ", $payment_rows, " WHERE true"
                ))
                .bind(Value::from(payments).to_string())
                .execute(&mut *conn)
                .await;
                match recorded {
                    Ok(_) => {}
                    // A payment id or replay key taken: the batch is applied again one by one,
                    // which tells which.
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                        return Err($crate::StoreError::Conflict("a paid acquisition's payment exists".into()));
                    }
                    Err(e) => return Err(e.into()),
                }
                for (i, acquisition, charge) in outcomes {
                    answers[i] = Some($crate::aggregates::locks::Answer::PaidAcquired(match (acquisition, charge) {
                        ($crate::LockAcquisition::Acquired(lock), Some(charge)) => {
                            $crate::PaidAcquisition::Acquired { lock, charge }
                        }
                        ($crate::LockAcquisition::Acquired(_), None) => {
                            return Err($crate::StoreError::Corrupt("a paid grant was not charged".into()));
                        }
                        ($crate::LockAcquisition::Held(holder), charge) => $crate::PaidAcquisition::Held { holder, charge },
                    }));
                }
                Ok(())
            }

            /// Books the charge of the paid acquisition `spend` that came to `acquisition`
            /// (its credits were counted under its account's lock) and records its payment
            /// settled; or, when it found the key held and that is not charged, records the
            /// payment voided.
            async fn charge_paid_in(
                conn: &mut <$db as sqlx::Database>::Connection,
                spend: &$crate::CreditSpend,
                acquisition: $crate::LockAcquisition,
            ) -> $crate::StoreResult<$crate::PaidAcquisition> {
                use $crate::shared::{atomic_to_sql, ms};
                let mut payment = spend.payment.clone();
                payment.updated_at = spend.now;
                let charged = matches!(acquisition, $crate::LockAcquisition::Acquired(_)) || spend.charge_when_held;
                let charge = if charged {
                    let amount = atomic_to_sql(payment.amount.atomic())?;
                    // The balance was checked under the account's lock; the condition only
                    // makes sure no way of getting here overdraws it.
                    let row = sqlx::query(
                        "INSERT INTO ledger_entries (account, kind, delta_atomic, reference, created_at, key_id) \
                         SELECT $1, $2, $3, $4, $5, $6 \
                         WHERE COALESCE((SELECT balance_atomic FROM accounts WHERE address = $1), 0) >= $7 RETURNING *",
                    )
                    .bind(spend.account.as_str())
                    .bind(vendbox_core::LedgerKind::Charge.as_str())
                    .bind(-amount)
                    .bind(payment.id.to_string())
                    .bind(ms(spend.now))
                    .bind(spend.key_id.as_deref())
                    .bind(amount)
                    .fetch_optional(&mut *conn)
                    .await?;
                    let Some(row) = row else {
                        return Err($crate::StoreError::Corrupt(format!(
                            "the credits of {} no longer cover a charge counted under its lock",
                            spend.account
                        )));
                    };
                    let entry = Self::ledger_from_row(&row)?;
                    payment.state = vendbox_core::PaymentState::Settled;
                    payment.settlement_ref = Some(entry.id.to_string());
                    Some(entry)
                } else {
                    payment.state = vendbox_core::PaymentState::Voided;
                    payment.void_reason = Some(spend.void_reason.clone());
                    None
                };
                Self::record_payment_in(&mut *conn, &payment).await?;
                Ok(match (acquisition, charge) {
                    ($crate::LockAcquisition::Acquired(lock), Some(charge)) => $crate::PaidAcquisition::Acquired { lock, charge },
                    ($crate::LockAcquisition::Acquired(_), None) => {
                        return Err($crate::StoreError::Corrupt("a paid grant was not charged".into()));
                    }
                    ($crate::LockAcquisition::Held(holder), charge) => $crate::PaidAcquisition::Held { holder, charge },
                })
            }

            /// Applies one operation of a batch alone; `locked` holds the accounts whose row
            /// lock the batch's transaction took already, and gains the one it takes.
            async fn apply_lock_op_in<'o>(
                conn: &mut <$db as sqlx::Database>::Connection,
                op: &'o $crate::aggregates::locks::Op,
                locked: &mut std::collections::HashSet<&'o str>,
            ) -> $crate::StoreResult<$crate::aggregates::locks::Answer> {
                use $crate::aggregates::locks::{Answer, Op};
                Ok(match op {
                    // A paid one's credits were counted with its account's; the charge follows
                    // the grants.
                    Op::Acquire { key, owner, metadata, ttl_ms, release, .. }
                    | Op::AcquirePaid { key, owner, metadata, ttl_ms, release, .. } => Answer::Acquired(
                        Self::acquire_lock_in(&mut *conn, key, owner.as_deref(), metadata.as_deref(), *ttl_ms, release)
                            .await?,
                    ),
                    Op::Renew { key, release, ttl_ms, .. } => {
                        Answer::Renewed(Self::renew_lock_in(&mut *conn, key, release, *ttl_ms).await?)
                    }
                    Op::Release { key, release, .. } => {
                        Answer::Released(Self::release_lock_in(&mut *conn, key, release).await?)
                    }
                    Op::Hold { hold, caps, reserve, now, .. } => {
                        let was = !locked.insert(hold.account.as_str());
                        Answer::Held(Self::place_hold_in(&mut *conn, hold, caps, reserve.as_deref(), *now, was).await?)
                    }
                    Op::Charge { account, payment, now, .. } => {
                        let was = !locked.insert(account.as_str());
                        Answer::Charged(Self::settle_hold_in(&mut *conn, account, *payment, *now, was).await?)
                    }
                    Op::Reserve { payment, .. } => {
                        Self::reserve_payment_in(&mut *conn, payment).await?;
                        Answer::Reserved
                    }
                    Op::Finish { id, outcome, now, .. } => {
                        Answer::Finished(Box::new(Self::finish_payment_in(&mut *conn, *id, outcome, *now).await?))
                    }
                })
            }

            /// Grants the keys of the acquisitions `members` of `ops` (distinct keys) in one
            /// statement, reads the holders of those it could not grant in one more, and
            /// leaves any whose holder lapsed in between for the one-at-a-time path.
            async fn acquire_locks_in(
                conn: &mut <$db as sqlx::Database>::Connection,
                ops: &[$crate::aggregates::locks::Op],
                members: &[usize],
                answers: &mut [Option<$crate::aggregates::locks::Answer>],
            ) -> $crate::StoreResult<()> {
                use $crate::aggregates::locks::Answer;
                let rows = $crate::aggregates::locks::rows_json(ops, members.iter().copied());
                let granted = sqlx::query(concat!(
                    "INSERT INTO locks (key, fencing_token, owner, release_token_hash, acquired_at, expires_at, \
                     ttl_ms, released_at, metadata) \
                     SELECT r.k, 1, r.o, r.h, ", $clock, ", ", $clock, " + r.t, r.t, CAST(NULL AS BIGINT), r.m FROM ", $rows, " WHERE true \
                     ON CONFLICT (key) DO UPDATE SET fencing_token = locks.fencing_token + 1, \
                     owner = excluded.owner, release_token_hash = excluded.release_token_hash, \
                     acquired_at = ", $clock, ", expires_at = ", $clock, " + excluded.ttl_ms, \
                     ttl_ms = excluded.ttl_ms, released_at = NULL, metadata = excluded.metadata \
                     WHERE locks.release_token_hash IS NULL OR locks.released_at IS NOT NULL \
                     OR locks.expires_at <= ", $clock, " \
                     RETURNING *"
                ))
                .bind(&rows)
                .fetch_all(&mut *conn)
                .await?;
                let mut found = std::collections::HashMap::with_capacity(members.len());
                for row in &granted {
                    let lock = Self::lock_from_row(row)?;
                    found.insert(lock.key.as_str().to_owned(), $crate::LockAcquisition::Acquired(lock));
                }
                if found.len() < members.len() {
                    let held = sqlx::query(concat!(
                        "SELECT * FROM locks WHERE key IN (SELECT r.k FROM ", $rows, ") \
                         AND release_token_hash IS NOT NULL AND released_at IS NULL AND expires_at > ", $clock
                    ))
                    .bind(&rows)
                    .fetch_all(&mut *conn)
                    .await?;
                    for row in &held {
                        let lock = Self::lock_from_row(row)?;
                        found.entry(lock.key.as_str().to_owned()).or_insert($crate::LockAcquisition::Held(lock));
                    }
                }
                for &i in members {
                    if let Some(answer) = ops[i].lock_key().and_then(|k| found.remove(k.as_str())) {
                        answers[i] = Some(Answer::Acquired(answer));
                    }
                }
                Ok(())
            }

            /// Releases the grants of the releases `members` of `ops` (distinct keys) in one
            /// statement; those it did not release (refused, or released before) are left for
            /// the one-at-a-time path, which tells them apart.
            async fn release_locks_in(
                conn: &mut <$db as sqlx::Database>::Connection,
                ops: &[$crate::aggregates::locks::Op],
                members: &[usize],
                answers: &mut [Option<$crate::aggregates::locks::Answer>],
            ) -> $crate::StoreResult<()> {
                use $crate::aggregates::locks::Answer;
                let rows = $crate::aggregates::locks::rows_json(ops, members.iter().copied());
                let released = sqlx::query(concat!(
                    $notify_open,
                    "UPDATE locks SET released_at = ", $clock, " \
                     WHERE ", $keys_of_rows, " AND (key, release_token_hash) IN (SELECT r.k, r.h FROM ", $rows, ") \
                     AND released_at IS NULL AND expires_at > ", $clock, " RETURNING *",
                    $notify_close
                ))
                .bind(&rows)
                .fetch_all(&mut *conn)
                .await?;
                let mut found = std::collections::HashMap::with_capacity(members.len());
                for row in &released {
                    let lock = Self::lock_from_row(row)?;
                    found.insert(lock.key.as_str().to_owned(), lock);
                }
                for &i in members {
                    if let Some(lock) = ops[i].lock_key().and_then(|k| found.remove(k.as_str())) {
                        answers[i] = Some(Answer::Released($crate::LockRelease::Released(lock)));
                    }
                }
                Ok(())
            }

            /// The grant on `key` made with `release`, as the store has it now (released,
            /// lapsed or held); `None` when there is none (never, or the key was granted since).
            async fn grant_of_in(
                conn: &mut <$db as sqlx::Database>::Connection,
                key: &vendbox_core::LockKey,
                release: &vendbox_core::TokenHash,
            ) -> $crate::StoreResult<Option<vendbox_core::Lock>> {
                let row = sqlx::query("SELECT * FROM locks WHERE key = $1 AND release_token_hash = $2")
                    .bind(key.as_str())
                    .bind(release.to_hex())
                    .fetch_optional(&mut *conn)
                    .await?;
                row.as_ref().map(Self::lock_from_row).transpose()
            }

            async fn get_lock_in(
                conn: &mut <$db as sqlx::Database>::Connection,
                key: &vendbox_core::LockKey,
            ) -> $crate::StoreResult<Option<vendbox_core::Lock>> {
                let row = sqlx::query(concat!(
                    "SELECT * FROM locks WHERE key = $1 AND release_token_hash IS NOT NULL \
                     AND released_at IS NULL AND expires_at > ",
                    $clock
                ))
                .bind(key.as_str())
                .fetch_optional(&mut *conn)
                .await?;
                row.as_ref().map(Self::lock_from_row).transpose()
            }

            async fn acquire_lock_in(
                conn: &mut <$db as sqlx::Database>::Connection,
                key: &vendbox_core::LockKey,
                owner: Option<&str>,
                metadata: Option<&str>,
                ttl_ms: i64,
                release: &vendbox_core::TokenHash,
            ) -> $crate::StoreResult<$crate::LockAcquisition> {
                // A held key answers no row; a free, released or lapsed one is granted with the
                // next token. The update reads the clock after it holds the row, so the grant
                // starts no earlier than the release or expiry before it. Between a refused grant
                // and reading the holder, the holder may lapse: try again.
                for _ in 0..8 {
                    let granted = sqlx::query(concat!(
                        "INSERT INTO locks (key, fencing_token, owner, release_token_hash, acquired_at, expires_at, \
                         ttl_ms, released_at, metadata) \
                         VALUES ($1, 1, $2, $3, ", $clock, ", ", $clock, " + $4, $4, NULL, $5) \
                         ON CONFLICT (key) DO UPDATE SET fencing_token = locks.fencing_token + 1, \
                         owner = excluded.owner, release_token_hash = excluded.release_token_hash, \
                         acquired_at = ", $clock, ", expires_at = ", $clock, " + excluded.ttl_ms, \
                         ttl_ms = excluded.ttl_ms, released_at = NULL, metadata = excluded.metadata \
                         WHERE locks.release_token_hash IS NULL OR locks.released_at IS NOT NULL \
                         OR locks.expires_at <= ", $clock, " \
                         RETURNING *"
                    ))
                    .bind(key.as_str())
                    .bind(owner)
                    .bind(release.to_hex())
                    .bind(ttl_ms)
                    .bind(metadata)
                    .fetch_optional(&mut *conn)
                    .await?;
                    if let Some(row) = granted {
                        return Ok($crate::LockAcquisition::Acquired(Self::lock_from_row(&row)?));
                    }
                    if let Some(holder) = Self::get_lock_in(&mut *conn, key).await? {
                        return Ok($crate::LockAcquisition::Held(holder));
                    }
                }
                Err($crate::StoreError::Conflict(format!("lock `{}` is changing hands too fast", key.as_str())))
            }

            async fn renew_lock_in(
                conn: &mut <$db as sqlx::Database>::Connection,
                key: &vendbox_core::LockKey,
                release: &vendbox_core::TokenHash,
                ttl_ms: Option<i64>,
            ) -> $crate::StoreResult<$crate::LockRenewal> {
                let row = sqlx::query(concat!(
                    "UPDATE locks SET ttl_ms = COALESCE($3, ttl_ms), \
                     expires_at = ", $clock, " + COALESCE($3, ttl_ms) \
                     WHERE key = $1 AND release_token_hash = $2 AND released_at IS NULL AND expires_at > ", $clock,
                    " RETURNING *"
                ))
                .bind(key.as_str())
                .bind(release.to_hex())
                .bind(ttl_ms)
                .fetch_optional(&mut *conn)
                .await?;
                if let Some(row) = row {
                    return Ok($crate::LockRenewal::Renewed(Self::lock_from_row(&row)?));
                }
                let grant = Self::grant_of_in(&mut *conn, key, release).await?;
                Ok($crate::LockRenewal::Refused($crate::LockRefusal::of(grant.as_ref())))
            }

            async fn release_lock_in(
                conn: &mut <$db as sqlx::Database>::Connection,
                key: &vendbox_core::LockKey,
                release: &vendbox_core::TokenHash,
            ) -> $crate::StoreResult<$crate::LockRelease> {
                let row = sqlx::query(concat!(
                    "UPDATE locks SET released_at = ", $clock, " \
                     WHERE key = $1 AND release_token_hash = $2 AND released_at IS NULL AND expires_at > ", $clock,
                    " RETURNING *", $notify
                ))
                .bind(key.as_str())
                .bind(release.to_hex())
                .fetch_optional(&mut *conn)
                .await?;
                if let Some(row) = row {
                    return Ok($crate::LockRelease::Released(Self::lock_from_row(&row)?));
                }
                // Released before with this token: answer as the first time.
                Ok(match Self::grant_of_in(&mut *conn, key, release).await? {
                    Some(grant) if grant.released_at.is_some() => $crate::LockRelease::AlreadyReleased(grant),
                    grant => $crate::LockRelease::Refused($crate::LockRefusal::of(grant.as_ref())),
                })
            }

            async fn acquire_lock(
                &self,
                key: &vendbox_core::LockKey,
                owner: Option<&str>,
                metadata: Option<&serde_json::Value>,
                ttl: std::time::Duration,
                release: &vendbox_core::TokenHash,
            ) -> $crate::StoreResult<$crate::LockAcquisition> {
                let ttl_ms = $crate::aggregates::locks::ttl_ms(ttl)?;
                let (key, owner, release) = (key.clone(), owner.map(str::to_owned), *release);
                let metadata = metadata.map(serde_json::Value::to_string);
                self.locks
                    .run(&key.as_str().to_owned(), |reply| $crate::aggregates::locks::Op::Acquire { key, owner, metadata, ttl_ms, release, reply })
                    .await
            }

            async fn acquire_lock_paid(
                &self,
                key: &vendbox_core::LockKey,
                owner: Option<&str>,
                metadata: Option<&serde_json::Value>,
                ttl: std::time::Duration,
                release: &vendbox_core::TokenHash,
                spend: &$crate::CreditSpend,
            ) -> $crate::StoreResult<$crate::PaidAcquisition> {
                let ttl_ms = $crate::aggregates::locks::ttl_ms(ttl)?;
                let (key, owner, release) = (key.clone(), owner.map(str::to_owned), *release);
                let metadata = metadata.map(serde_json::Value::to_string);
                let spend = Box::new(spend.clone());
                self.locks
                    .run(&key.as_str().to_owned(), |reply| $crate::aggregates::locks::Op::AcquirePaid {
                        key,
                        owner,
                        metadata,
                        ttl_ms,
                        release,
                        spend,
                        reply,
                    })
                    .await
            }

            async fn renew_lock(
                &self,
                key: &vendbox_core::LockKey,
                release: &vendbox_core::TokenHash,
                ttl: Option<std::time::Duration>,
            ) -> $crate::StoreResult<$crate::LockRenewal> {
                let ttl_ms = ttl.map($crate::aggregates::locks::ttl_ms).transpose()?;
                let (key, release) = (key.clone(), *release);
                self.locks.run(&key.as_str().to_owned(), |reply| $crate::aggregates::locks::Op::Renew { key, release, ttl_ms, reply }).await
            }

            async fn release_lock(
                &self,
                key: &vendbox_core::LockKey,
                release: &vendbox_core::TokenHash,
            ) -> $crate::StoreResult<$crate::LockRelease> {
                let (key, release) = (key.clone(), *release);
                self.locks.run(&key.as_str().to_owned(), |reply| $crate::aggregates::locks::Op::Release { key, release, reply }).await
            }

            async fn lock_held_by(
                &self,
                key: &vendbox_core::LockKey,
                release: &vendbox_core::TokenHash,
            ) -> $crate::StoreResult<Result<vendbox_core::Lock, $crate::LockRefusal>> {
                let mut conn = self.reads.acquire().await?;
                let row = sqlx::query(concat!(
                    "SELECT * FROM locks WHERE key = $1 AND release_token_hash = $2 \
                     AND released_at IS NULL AND expires_at > ", $clock
                ))
                .bind(key.as_str())
                .bind(release.to_hex())
                .fetch_optional(&mut *conn)
                .await?;
                if let Some(row) = row {
                    return Ok(Ok(Self::lock_from_row(&row)?));
                }
                let grant = Self::grant_of_in(&mut conn, key, release).await?;
                Ok(Err($crate::LockRefusal::of(grant.as_ref())))
            }

            fn lock_releases(&self) -> tokio::sync::broadcast::Receiver<vendbox_core::LockKey> {
                self.locks.releases()
            }

            async fn get_lock(&self, key: &vendbox_core::LockKey) -> $crate::StoreResult<Option<vendbox_core::Lock>> {
                let mut conn = self.reads.acquire().await?;
                Self::get_lock_in(&mut conn, key).await
            }
        }
    };
}

pub(crate) use impl_locks;
