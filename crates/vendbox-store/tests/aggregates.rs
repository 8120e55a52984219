//! Store cases that work across an aggregate's rows as the background workers do: due leases
//! ended by the database's clock, and the settlement batch of one asset. Each runs against SQLite
//! and against PostgreSQL.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use vendbox_core::{
    Lease, LeaseId, LeaseState, Payment, PaymentId, PaymentMethod, PaymentState, ReplayKey, Usdc,
};
use vendbox_store::testkit::PostgresSchema;
use vendbox_store::{SqliteStore, Store};

/// Now, to the millisecond (what the store keeps), by this process's clock: the tests' leases are
/// due or not by hours, so the database's clock agrees with it.
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap()
}

/// A lease in `state` with box `box_id` that ends at `expires_at`.
fn lease(state: LeaseState, box_id: Option<&str>, expires_at: Option<DateTime<Utc>>) -> Lease {
    Lease {
        id: LeaseId::new_random(),
        offer_id: "h3retik-custom".parse().unwrap(),
        quote_id: None,
        payment_id: None,
        state,
        region: Some("us".into()),
        image: None,
        box_id: box_id.map(str::to_owned),
        created_at: now() - Duration::hours(3),
        expires_at,
        actions_remaining: Some(5),
        failure_reason: None,
    }
}

/// Stores `lease` as it is.
async fn insert(store: &dyn Store, lease: &Lease) {
    store.insert_lease(lease, &[]).await.unwrap();
}

/// A verified payment of token contract `asset`, last changed at `at`.
fn payment(asset: &str, nonce: u32, at: DateTime<Utc>) -> Payment {
    Payment {
        id: PaymentId::new_random(),
        quote_id: None,
        method: PaymentMethod::X402ExactV2,
        replay_key: ReplayKey::new("eip155:31337", asset, "0xpayer", &format!("0x{nonce:x}")),
        amount: Usdc(10_000),
        state: PaymentState::Verified,
        settlement_ref: None,
        void_reason: None,
        proof: None,
        purchase: None,
        created_at: at,
        updated_at: at,
    }
}

async fn end_due_leases_ends_exactly_the_due_ones(store: Arc<dyn Store>) {
    let now = now();
    let older = lease(LeaseState::Active, Some("box-1"), Some(now - Duration::hours(2)));
    let old = lease(LeaseState::Active, Some("box-2"), Some(now - Duration::hours(1)));
    let kept = [
        // Due later.
        lease(LeaseState::Active, Some("box-3"), Some(now + Duration::hours(1))),
        // Without a box (nothing to destroy: not the expiry worker's).
        lease(LeaseState::Active, None, Some(now - Duration::hours(1))),
        // Without an end.
        lease(LeaseState::Active, Some("box-4"), None),
        // Already over, or not started.
        lease(LeaseState::Terminated, Some("box-5"), Some(now - Duration::hours(1))),
        lease(LeaseState::Failed, Some("box-6"), Some(now - Duration::hours(1))),
        lease(LeaseState::Provisioning, Some("box-7"), Some(now - Duration::hours(1))),
    ];
    // Inserted newest first, so that the answer's order is the store's doing.
    for l in kept.iter().chain([&old, &older]) {
        insert(&*store, l).await;
    }

    // Most overdue first, `limit` at a time.
    let first = store.end_due_leases(chrono::Utc::now(), 1).await.unwrap();
    assert_eq!(first.iter().map(|l| l.id).collect::<Vec<_>>(), vec![older.id]);
    let second = store.end_due_leases(chrono::Utc::now(), 50).await.unwrap();
    assert_eq!(second.iter().map(|l| l.id).collect::<Vec<_>>(), vec![old.id]);

    // Each is returned as it is stored now: expired, with no failure reason, nothing else touched.
    for (before, ended) in [(&older, &first[0]), (&old, &second[0])] {
        let mut expected = before.clone();
        expected.state = LeaseState::Expired;
        assert_eq!(ended, &expected);
        assert_eq!(store.get_lease(before.id).await.unwrap().as_ref(), Some(&expected));
    }
    for l in &kept {
        assert_eq!(store.get_lease(l.id).await.unwrap().as_ref(), Some(l), "{:?} is not due", l.state);
    }

    // Ended once: a second sweep finds nothing.
    assert_eq!(store.end_due_leases(chrono::Utc::now(), 50).await.unwrap(), Vec::new());
}

async fn concurrent_sweeps_end_each_due_lease_once(one: Arc<dyn Store>, other: Arc<dyn Store>) {
    let due: Vec<Lease> = (0..40)
        .map(|i| lease(LeaseState::Active, Some(&format!("box-{i}")), Some(now() - Duration::minutes(i + 1))))
        .collect();
    for l in &due {
        insert(&*one, l).await;
    }

    // Two hosts sweep at once, a few leases at a time, until neither finds any.
    let start = Arc::new(tokio::sync::Barrier::new(2));
    let sweep = |store: Arc<dyn Store>| {
        let start = start.clone();
        tokio::spawn(async move {
            start.wait().await;
            let mut ended = Vec::new();
            loop {
                let batch = store.end_due_leases(chrono::Utc::now(), 3).await.unwrap();
                if batch.is_empty() {
                    return ended;
                }
                ended.extend(batch);
            }
        })
    };
    let (a, b) = (sweep(one.clone()), sweep(other.clone()));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());

    let ended: Vec<LeaseId> = a.iter().chain(&b).map(|l| l.id).collect();
    let unique: HashSet<LeaseId> = ended.iter().copied().collect();
    assert_eq!(
        ended.len(),
        40,
        "each due lease is ended exactly once ({} by one, {} by the other)",
        a.len(),
        b.len()
    );
    assert_eq!(unique, due.iter().map(|l| l.id).collect::<HashSet<_>>());
    assert!(a.iter().chain(&b).all(|l| l.state == LeaseState::Expired));
    for l in &due {
        assert_eq!(other.get_lease(l.id).await.unwrap().unwrap().state, LeaseState::Expired);
    }
}

async fn payments_of_asset_in_state_are_not_crowded_out_by_another_asset(store: Arc<dyn Store>) {
    let t0 = Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap();
    let (ours, theirs) =
        ("0x00000000000000000000000000000000000000aa", "0x00000000000000000000000000000000000000bb");
    // Sixty stale payments of another token, all older than the one of ours.
    for n in 0..60 {
        store.reserve_payment(&payment(theirs, n, t0 + Duration::seconds(n.into()))).await.unwrap();
    }
    let mine = payment(ours, 1000, t0 + Duration::minutes(5));
    store.reserve_payment(&mine).await.unwrap();
    let before = t0 + Duration::hours(1);

    let batch = store.payments_of_asset_in_state(ours, PaymentState::Verified, before, 50).await.unwrap();
    assert_eq!(batch, vec![mine.clone()]);

    // The other asset's batch is its own, oldest first, and holds none of ours.
    let other = store.payments_of_asset_in_state(theirs, PaymentState::Verified, before, 50).await.unwrap();
    assert_eq!(other.len(), 50);
    assert!(other.iter().all(|p| p.replay_key.asset == theirs));
    assert!(other.windows(2).all(|w| w[0].updated_at <= w[1].updated_at));

    // What the asset filter in the query is for: a batch of every asset, filtered afterwards, is
    // all the other asset's and never reaches ours.
    let unfiltered = store.payments_in_state(PaymentState::Verified, before, 50).await.unwrap();
    assert!(unfiltered.iter().all(|p| p.replay_key.asset != ours));

    // Another state, or a bound before it changed, finds nothing.
    assert!(
        store.payments_of_asset_in_state(ours, PaymentState::Settled, before, 50).await.unwrap().is_empty()
    );
    assert!(
        store
            .payments_of_asset_in_state(ours, PaymentState::Verified, mine.updated_at, 50)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Runs `case` on two stores opened on one fresh SQLite file (two hosts' worth of pools).
async fn on_sqlite<F, Fut>(case: F)
where
    F: FnOnce(Arc<dyn Store>, Arc<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/vendbox.db");
    let one = SqliteStore::open_file(&path).await.unwrap();
    let other = SqliteStore::open_file(&path).await.unwrap();
    case(Arc::new(one), Arc::new(other)).await;
}

/// Runs `case` on two stores (two pools, as two hosts have) in one fresh PostgreSQL schema,
/// dropped afterwards even when the case panics.
async fn on_postgres<F, Fut>(case: F)
where
    F: FnOnce(Arc<dyn Store>, Arc<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let Some(schema) = PostgresSchema::create().await else { return };
    let one: Arc<dyn Store> = Arc::new(schema.store().await.unwrap());
    let other: Arc<dyn Store> = Arc::new(schema.store().await.unwrap());
    let outcome = tokio::spawn(case(one, other)).await;
    schema.drop_schema().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Each case once per backend; `one:` cases use the first store only.
macro_rules! cases {
    (one: [$($one:ident),* $(,)?], two: [$($two:ident),* $(,)?] $(,)?) => {
        cases!(@backend sqlite, on_sqlite, [$($one),*], [$($two),*]);
        cases!(@backend postgres, on_postgres, [$($one),*], [$($two),*]);
    };
    (@backend $module:ident, $runner:ident, [$($one:ident),*], [$($two:ident),*]) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $one() {
                    super::$runner(|store, _| super::$one(store)).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $two() {
                    super::$runner(super::$two).await;
                }
            )*
        }
    };
}

cases!(
    one: [end_due_leases_ends_exactly_the_due_ones, payments_of_asset_in_state_are_not_crowded_out_by_another_asset],
    two: [concurrent_sweeps_end_each_due_lease_once],
);

/// On PostgreSQL, the releases of one batch (one shared statement) are announced to another
/// host in notices of at most 8,000 bytes each: every key is heard, long ones that need several
/// notices, one that reads as JSON and one with a newline included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_releases_is_heard_key_by_key_on_another_host() {
    use vendbox_core::{LockKey, SecretToken};
    use vendbox_store::LockAcquisition;
    on_postgres(|one, other| async move {
        let mut heard = other.lock_releases();
        let mut keys: Vec<LockKey> =
            (0..60).map(|i| LockKey::parse(&format!("{i:03}-{}", "k".repeat(240))).unwrap()).collect();
        keys.push(LockKey::parse(r#"["not","a","list"]"#).unwrap());
        keys.push(LockKey::parse("two\nlines").unwrap());
        let ttl = std::time::Duration::from_mins(1);
        let mut tokens = Vec::new();
        for key in &keys {
            let token = SecretToken::generate();
            let acquired = one.acquire_lock(key, None, None, ttl, &token.hash()).await.unwrap();
            assert!(matches!(acquired, LockAcquisition::Acquired(_)), "{key:?} is free");
            tokens.push(token);
        }
        // Released all at once, so that the writer takes them in one batch (or a few).
        let mut releases = tokio::task::JoinSet::new();
        for (key, token) in keys.iter().zip(&tokens) {
            let (store, key, hash) = (one.clone(), key.clone(), token.hash());
            releases.spawn(async move { store.release_lock(&key, &hash).await.unwrap() });
        }
        while let Some(released) = releases.join_next().await {
            assert!(matches!(released.unwrap(), vendbox_store::LockRelease::Released(_)));
        }
        let mut missing: HashSet<LockKey> = keys.into_iter().collect();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !missing.is_empty() {
            match tokio::time::timeout_at(deadline, heard.recv()).await {
                Ok(Ok(key)) => {
                    missing.remove(&key);
                }
                Ok(Err(e)) => panic!("the release notices broke off: {e}"),
                Err(elapsed) => {
                    panic!(
                        "{} releases were never heard on the other host ({elapsed}): {missing:?}",
                        missing.len()
                    )
                }
            }
        }
    })
    .await;
}

/// On PostgreSQL, the lock writer finds keys through the primary key whatever the table's
/// statistics say: on a table PostgreSQL has not analyzed yet (every new vendbox's), the planner
/// chose a sequential scan of `locks` for a batch's shared release, and its plan stayed cached,
/// so that every batch read the whole table. Waves of grants, refusals and releases, on a fresh
/// schema, in batches of many operations and (on a busy host) of one; then no row of `locks` may
/// have been read by a sequential scan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_batches_read_locks_by_key_even_before_the_table_is_analyzed() {
    use sqlx::Connection as _;
    use vendbox_core::{LockKey, SecretToken};
    use vendbox_store::{LockAcquisition, LockRelease};
    let Some(schema) = PostgresSchema::create().await else { return };
    let store: Arc<dyn Store> = Arc::new(schema.store().await.unwrap());
    let outcome = tokio::spawn(async move {
        let ttl = std::time::Duration::from_mins(1);
        let keys: Vec<LockKey> = (0..400).map(|i| LockKey::parse(&format!("scan:{i:04}")).unwrap()).collect();
        // Each wave at once, so that the writer takes it in a few batches of shared statements.
        let mut grants = tokio::task::JoinSet::new();
        for key in &keys {
            let (store, key, token) = (store.clone(), key.clone(), SecretToken::generate());
            grants.spawn(async move {
                let acquired = store.acquire_lock(&key, None, None, ttl, &token.hash()).await.unwrap();
                assert!(matches!(acquired, LockAcquisition::Acquired(_)), "{key:?} is free");
                (key, token)
            });
        }
        let held: Vec<(LockKey, SecretToken)> = grants.join_all().await;
        let mut refusals = tokio::task::JoinSet::new();
        for (key, _) in &held {
            let (store, key, token) = (store.clone(), key.clone(), SecretToken::generate());
            refusals.spawn(async move {
                let acquired = store.acquire_lock(&key, None, None, ttl, &token.hash()).await.unwrap();
                assert!(matches!(acquired, LockAcquisition::Held(_)), "{key:?} is held");
            });
        }
        refusals.join_all().await;
        let mut releases = tokio::task::JoinSet::new();
        for (key, token) in held {
            let store = store.clone();
            releases.spawn(async move {
                let outcome = store.release_lock(&key, &token.hash()).await.unwrap();
                assert!(matches!(outcome, LockRelease::Released(_)), "{key:?} is released");
            });
        }
        releases.join_all().await;
    })
    .await;
    // A backend reports its table counters once idle, at most a second after its last report:
    // wait until the releases' updates are counted, then read the scans counted with them.
    let mut conn = sqlx::PgConnection::connect_with(&schema.options()).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    // Rows read by sequential scans: the migrations' scans of the table, empty then, read none.
    let (seq_read, updated) = loop {
        let (seq_read, updated): (i64, i64) = sqlx::query_as(
            "SELECT seq_tup_read, n_tup_upd FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = 'locks'",
        )
        .bind(&schema.name)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if updated >= 400 || std::time::Instant::now() > deadline {
            break (seq_read, updated);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    drop(conn);
    schema.drop_schema().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
    assert!(updated >= 400, "the releases' updates were never counted ({updated})");
    assert_eq!(seq_read, 0, "lock batches read {seq_read} rows of locks by sequential scans");
}
