//! SecretVM's VMs, on SQLite and on PostgreSQL: a VM is found by its id; its status changes only
//! over the status it had (compare-and-set); the billing round finds the running VMs whose
//! period ended, oldest first, and the launches left unfinished; and a period's charge, booked
//! under the VM and the period's start, is booked once and never takes the balance below zero.
//! A VM's boxes (one lease per compose service) are read back in start order, each recorded once.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use vendbox_core::{AccountAddress, LeaseId, LedgerKind, Usdc};
use vendbox_store::{SecretVm, Store, StoreError};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap()
}

fn account(n: u8) -> AccountAddress {
    AccountAddress::parse(&format!("0x{n:040x}"), "account").unwrap()
}

fn vm(id: &str, owner: &AccountAddress, billed_until: Option<DateTime<Utc>>) -> SecretVm {
    SecretVm {
        id: id.to_owned(),
        owner: owner.clone(),
        name: "web".into(),
        vm_type: "secretvm-small".into(),
        status: "running".into(),
        status_reason: None,
        lease: None,
        port: 80,
        spec: "{}".into(),
        billed_until,
        created_at: t0(),
        updated_at: t0(),
    }
}

async fn vms_change_status_over_the_one_they_had(store: Arc<dyn Store>) {
    let owner = account(1);
    let mut a = vm("a", &owner, Some(t0() + Duration::seconds(60)));
    store.insert_secret_vm(&a).await.unwrap();
    store.insert_secret_vm(&vm("b", &owner, Some(t0()))).await.unwrap();
    store.insert_secret_vm(&vm("c", &owner, None)).await.unwrap();
    assert_eq!(store.secret_vm("a").await.unwrap(), Some(a.clone()));
    assert_eq!(store.secret_vm("missing").await.unwrap(), None);

    // Due: periods that ended by now, oldest first; a VM never charged is not.
    let due = store.secret_vms_billable("running", t0() + Duration::seconds(60), 10).await.unwrap();
    assert_eq!(due.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(), ["b", "a"]);
    assert_eq!(store.secret_vms_billable("running", t0(), 10).await.unwrap().len(), 1);

    "stopped".clone_into(&mut a.status);
    a.status_reason = Some("the balance ran out".into());
    assert!(store.update_secret_vm(&a, "running").await.unwrap());
    assert!(!store.update_secret_vm(&a, "running").await.unwrap(), "it is no longer running");
    let read = store.secret_vm("a").await.unwrap().unwrap();
    assert_eq!(
        (read.status.as_str(), read.status_reason.as_deref()),
        ("stopped", Some("the balance ran out"))
    );

    // A launch cut off: `creating` and unchanged since before the limit.
    let mut d = vm("d", &owner, None);
    "creating".clone_into(&mut d.status);
    store.insert_secret_vm(&d).await.unwrap();
    let stale = store.secret_vms_stale("creating", t0() + Duration::minutes(30), 10).await.unwrap();
    assert_eq!(stale.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(), ["d"]);
    assert!(store.secret_vms_stale("creating", t0(), 10).await.unwrap().is_empty());

    // A period is charged once, and never below zero.
    store.append_ledger(&owner, LedgerKind::TopUp, Usdc(150), "p-1", t0()).await.unwrap();
    let charge = |reference: &'static str, amount: u64| {
        let (store, owner) = (store.clone(), owner.clone());
        async move { store.append_ledger(&owner, LedgerKind::Charge, Usdc(amount), reference, t0()).await }
    };
    let first = charge("secretvm:a:0", 100).await.unwrap();
    assert_eq!(charge("secretvm:a:0", 100).await.unwrap().id, first.id, "booked once");
    assert!(matches!(charge("secretvm:a:60000", 100).await, Err(StoreError::InsufficientBalance { .. })));
    charge("secretvm:a:60000", 50).await.unwrap();
    assert_eq!(store.balance(&owner).await.unwrap(), Usdc::ZERO);
}

async fn a_vms_boxes_come_back_in_start_order(store: Arc<dyn Store>) {
    let owner = account(2);
    store.insert_secret_vm(&vm("pod", &owner, None)).await.unwrap();
    store.insert_secret_vm(&vm("other", &owner, None)).await.unwrap();
    let (api, web, theirs) = (LeaseId::new_random(), LeaseId::new_random(), LeaseId::new_random());
    assert!(store.secret_vm_boxes("pod").await.unwrap().is_empty());
    store.add_secret_vm_box("pod", 1, "web", web).await.unwrap();
    store.add_secret_vm_box("pod", 0, "api", api).await.unwrap();
    store.add_secret_vm_box("other", 0, "app", theirs).await.unwrap();
    // Written again (a retried step): the first record stands.
    store.add_secret_vm_box("pod", 0, "api", LeaseId::new_random()).await.unwrap();
    assert_eq!(
        store.secret_vm_boxes("pod").await.unwrap(),
        [("api".to_owned(), api), ("web".to_owned(), web)]
    );
    assert_eq!(store.secret_vm_boxes("other").await.unwrap(), [("app".to_owned(), theirs)]);
}

common::suite!(vms_change_status_over_the_one_they_had, a_vms_boxes_come_back_in_start_order);
