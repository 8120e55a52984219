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
