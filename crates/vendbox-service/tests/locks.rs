//! The lock services over a SQLite store in a temporary directory, without HTTP or payments:
//! grants, the holder seen by others, refusals by exact code, idempotent release, and what the
//! catalog says locks cost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use vendbox_core::{Catalog, LockKey, LockRequest, SecretToken};
use vendbox_service::locks::{Acquired, WhenHeld};
use vendbox_service::{LockError, Locks};
use vendbox_store::{SqliteStore, Store};

/// A catalog with the two lock offers, the acquire one labelled `charge_when_held = when_held`
/// when given.
fn catalog(when_held: Option<&str>) -> Catalog {
    let mut acquire = serde_json::json!({
        "id": "lock-acquire", "kind": "lock", "title": "Acquire", "duration": { "rule": "none" },
        "price": { "base": "0.0001" }, "labels": { "operation": "acquire" },
    });
    if let Some(value) = when_held {
        acquire["labels"]["charge_when_held"] = value.into();
    }
    let renew = serde_json::json!({
        "id": "lock-renew", "kind": "lock", "title": "Renew", "duration": { "rule": "none" },
        "price": { "base": "0.0001" }, "labels": { "operation": "renew" },
    });
    Catalog {
        offers: vec![serde_json::from_value(acquire).unwrap(), serde_json::from_value(renew).unwrap()],
        ..Catalog::default()
    }
}

async fn open(catalog: Catalog) -> (Locks, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open_file(&dir.path().join("vendbox.db")).await.unwrap());
    (Locks::new(store, Arc::new(catalog)), dir)
}

fn request(key: &str) -> LockRequest {
    LockRequest::new(key, Some("agent".into()), Some(60), None).unwrap()
}

#[tokio::test]
async fn a_key_is_granted_once_and_others_see_its_holder() {
    let (locks, _dir) = open(catalog(None)).await;
    let Acquired::Granted { lock, release_token } = locks.acquire(&request("queue:item-1")).await.unwrap()
    else {
        panic!("a free key was not granted")
    };
    let Acquired::Held(holder) = locks.acquire(&request("queue:item-1")).await.unwrap() else {
        panic!("a held key was granted twice")
    };
    assert_eq!(holder.fencing_token, lock.fencing_token);
    let key = LockKey::parse("queue:item-1").unwrap();
    assert_eq!(locks.holder(&key).await.unwrap().unwrap().fencing_token, lock.fencing_token);
    locks.check_holder(&key, &release_token).await.unwrap();

    let stranger = SecretToken::generate();
    let refused = locks.check_holder(&key, &stranger).await.unwrap_err();
    assert_eq!(refused.code(), "lock_not_held");
    assert_eq!(locks.renew(&key, &stranger, Some(30)).await.unwrap_err().code(), "lock_not_held");

    let renewed = locks.renew(&key, &release_token, Some(120)).await.unwrap();
    assert_eq!((renewed.fencing_token, renewed.ttl_ms), (lock.fencing_token, 120_000));
    let released = locks.release(&key, &release_token).await.unwrap();
    assert!(!released.already_released);
    let again = locks.release(&key, &release_token).await.unwrap();
    assert!(again.already_released, "releasing is idempotent");
    assert_eq!(locks.renew(&key, &release_token, None).await.unwrap_err().code(), "lock_released");
    assert!(locks.holder(&key).await.unwrap().is_none());

    // The next grant of the key has a higher fencing token.
    let Acquired::Granted { lock: next, .. } = locks.acquire(&request("queue:item-1")).await.unwrap() else {
        panic!("a released key was not granted again")
    };
    assert!(next.fencing_token > lock.fencing_token);
}

#[tokio::test]
async fn an_unpaid_grant_is_given_back_at_once() {
    let (locks, _dir) = open(catalog(None)).await;
    let Acquired::Granted { lock, release_token } = locks.acquire(&request("wallet:pay-1")).await.unwrap()
    else {
        panic!("not granted")
    };
    locks.give_back(lock.key.clone(), &release_token).await;
    assert!(locks.holder(&lock.key).await.unwrap().is_none());
    assert!(matches!(locks.acquire(&request("wallet:pay-1")).await.unwrap(), Acquired::Granted { .. }));
}

#[tokio::test]
async fn the_catalog_says_what_locks_cost_and_whether_a_held_key_is_charged() {
    let (locks, _dir) = open(catalog(None)).await;
    assert_eq!(locks.offer("acquire").unwrap().id.as_str(), "lock-acquire");
    assert_eq!(locks.when_held(), WhenHeld::Void, "vendbox's default: nothing is charged");
    let (charging, _dir2) = open(catalog(Some("true"))).await;
    assert_eq!(charging.when_held(), WhenHeld::Charge);
    let (none, _dir3) = open(Catalog::default()).await;
    let refused = none.offer("renew").unwrap_err();
    assert!(matches!(refused, LockError::NotOffered("renew")));
    assert_eq!(refused.code(), "not_offered");
}

/// Lock services over `store` that price nothing, with waiters of their own (one host).
fn free_locks(store: Arc<dyn Store>) -> Locks {
    Locks::new(store, Arc::new(Catalog::default()))
}

fn granted(acquired: Acquired) -> (vendbox_core::Lock, SecretToken) {
    match acquired {
        Acquired::Granted { lock, release_token } => (lock, release_token),
        Acquired::Held(holder) => panic!("expected a grant, the key is held: {holder:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_served_first_come_first_served_as_the_key_is_released() {
    let (locks, _dir) = open(catalog(None)).await;
    let key = LockKey::parse("queue:fifo").unwrap();
    let (_, mut token) = granted(locks.acquire(&request("queue:fifo")).await.unwrap());
    // Five waiters, arriving in order.
    let (order_tx, mut order) = tokio::sync::mpsc::unbounded_channel();
    let mut waiting = Vec::new();
    for n in 0..5 {
        let (locks, tx) = (locks.clone(), order_tx.clone());
        waiting.push(tokio::spawn(async move {
            let got = locks.acquire_waiting(&request("queue:fifo"), std::time::Duration::from_secs(30)).await;
            let (lock, token) = granted(got.unwrap());
            tx.send((n, lock.fencing_token.0, token)).unwrap();
        }));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Each release hands the key to the next waiter, in the order they came.
    for expected in 0..5 {
        locks.release(&key, &token).await.unwrap();
        let (n, fencing, next) =
            tokio::time::timeout(std::time::Duration::from_secs(5), order.recv()).await.unwrap().unwrap();
        assert_eq!(n, expected, "waiter {n} was served before waiter {expected}");
        assert_eq!(fencing, expected + 2, "each handover is a new grant");
        token = next;
    }
    for w in waiting {
        w.await.unwrap();
    }
}

#[tokio::test]
async fn a_waiter_gets_a_lapsed_key_and_one_that_runs_out_of_time_gets_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open_file(&dir.path().join("vendbox.db")).await.unwrap());
    let locks = free_locks(store.clone());
    // A grant of one second (shorter than the API allows), straight from the store.
    let key = LockKey::parse("queue:lapse").unwrap();
    let hash = SecretToken::generate().hash();
    store.acquire_lock(&key, None, None, std::time::Duration::from_secs(1), &hash).await.unwrap();
    let started = std::time::Instant::now();
    let Acquired::Held(holder) =
        locks.acquire_waiting(&request("queue:lapse"), std::time::Duration::from_millis(300)).await.unwrap()
    else {
        panic!("the key was granted while its holder still held it")
    };
    assert_eq!(holder.fencing_token.0, 1);
    assert!(started.elapsed() >= std::time::Duration::from_millis(300), "it waited as long as asked");
    // Without a release, the waiter gets the key once the 1 s grant lapses.
    let (lock, _) = granted(
        locks.acquire_waiting(&request("queue:lapse"), std::time::Duration::from_secs(5)).await.unwrap(),
    );
    assert_eq!(lock.fencing_token.0, 2);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "served at the lapse, not at the wait's end"
    );
}

#[tokio::test]
async fn a_waiter_that_hangs_up_leaves_the_queue() {
    let (locks, _dir) = open(catalog(None)).await;
    let key = LockKey::parse("queue:hangup").unwrap();
    let (_, token) = granted(locks.acquire(&request("queue:hangup")).await.unwrap());
    let first = {
        let locks = locks.clone();
        tokio::spawn(async move {
            locks.acquire_waiting(&request("queue:hangup"), std::time::Duration::from_secs(30)).await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let second = {
        let locks = locks.clone();
        tokio::spawn(async move {
            locks.acquire_waiting(&request("queue:hangup"), std::time::Duration::from_secs(30)).await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    first.abort(); // the first waiter's client hangs up
    let _ = first.await;
    locks.release(&key, &token).await.unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), second).await;
    let (lock, _) =
        granted(got.expect("the second waiter was not served after the first left").unwrap().unwrap());
    assert_eq!(lock.fencing_token.0, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_on_one_host_gets_the_key_released_on_another_within_50_ms() {
    let Some(schema) = vendbox_store::testkit::PostgresSchema::create().await else { return };
    let host_a: Arc<dyn Store> = Arc::new(schema.store().await.unwrap());
    let host_b: Arc<dyn Store> = Arc::new(schema.store().await.unwrap());
    let (a, b) = (free_locks(host_a), free_locks(host_b));
    let key = LockKey::parse("queue:two-hosts").unwrap();
    let mut delays = Vec::new();
    for round in 0..5u64 {
        let (_, token) = granted(a.acquire(&request("queue:two-hosts")).await.unwrap());
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move {
                let got =
                    b.acquire_waiting(&request("queue:two-hosts"), std::time::Duration::from_secs(20)).await;
                (std::time::Instant::now(), got)
            })
        };
        // Long enough that the waiter waits on a release, not on its first try.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!waiter.is_finished(), "the waiter got a held key");
        let released_at = std::time::Instant::now();
        a.release(&key, &token).await.unwrap();
        let (served_at, got) = waiter.await.unwrap();
        let (lock, token) = granted(got.unwrap());
        assert_eq!(lock.fencing_token.0, 2 * round + 2);
        delays.push(served_at.saturating_duration_since(released_at));
        b.release(&key, &token).await.unwrap();
    }
    delays.sort();
    let median = delays[delays.len() / 2];
    schema.drop_schema().await;
    // Woken by the database's notification, not by the one-second recheck.
    assert!(median < std::time::Duration::from_millis(50), "release to grant on the other host: {delays:?}");
}
