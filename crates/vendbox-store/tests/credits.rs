//! Credit holds, on SQLite and on PostgreSQL: a hold is placed only when the available credit
//! (balance less unexpired holds) and the spending key's caps allow it, also when many are asked
//! at once; settling books the charge and drops the hold once; a release or a recovery drops it;
//! and a payer's payments are listed newest first, by pages, with totals per state. A lock
//! acquisition paid from credits charges in its grant's transaction, only a grant, never beyond
//! the credits or a key's cap, also many at once and from two hosts.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, TimeZone, Utc};
use vendbox_core::{
    AccountAddress, LedgerKind, LockKey, Payment, PaymentId, PaymentMethod, PaymentState, ReplayKey,
    SecretToken, Usdc,
};
use vendbox_store::testkit::PostgresSchema;
use vendbox_store::{
    CreditHold, CreditSpend, Funds, HoldRefusal, PaidAcquisition, PaymentOutcome, SpendCaps, Store,
    StoreError,
};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap()
}

fn account(n: u8) -> AccountAddress {
    AccountAddress::parse(&format!("0x{n:040x}"), "account").unwrap()
}

fn hold(account: &AccountAddress, key: Option<&str>, atomic: u64) -> CreditHold {
    CreditHold {
        payment: PaymentId::new_random(),
        account: account.clone(),
        key_id: key.map(str::to_owned),
        amount: Usdc(atomic),
        expires_at: t0() + Duration::hours(1),
    }
}

async fn holds_keep_credit_aside_until_settled_or_released(store: Arc<dyn Store>) {
    let a = account(1);
    let none = SpendCaps::none(t0());
    let short = store.place_hold(&hold(&a, None, 1), &none, None, t0()).await.unwrap();
    assert_eq!(short, Err(HoldRefusal::Short { balance: Usdc(0), held: Usdc(0), needed: Usdc(1) }));
    store.append_ledger(&a, LedgerKind::TopUp, Usdc(1_000), "top-1", t0()).await.unwrap();
    let first = hold(&a, None, 600);
    store.place_hold(&first, &none, None, t0()).await.unwrap().unwrap();
    let funds = store.funds(&a, t0()).await.unwrap();
    assert_eq!((funds.balance, funds.held, funds.available()), (Usdc(1_000), Usdc(600), Usdc(400)));
    let second = store.place_hold(&hold(&a, None, 401), &none, None, t0()).await.unwrap();
    assert_eq!(second, Err(HoldRefusal::Short { balance: Usdc(1_000), held: Usdc(600), needed: Usdc(401) }));
    // An expired hold no longer counts.
    let later = t0() + Duration::hours(2);
    assert_eq!(store.funds(&a, later).await.unwrap().available(), Usdc(1_000));

    let charge = store.settle_hold(&first.account, first.payment, t0()).await.unwrap().unwrap();
    assert_eq!((charge.kind, charge.delta_atomic), (LedgerKind::Charge, -600));
    assert_eq!(charge.reference, first.payment.to_string());
    assert_eq!(store.settle_hold(&first.account, first.payment, t0()).await.unwrap(), None, "settled once");
    let funds = store.funds(&a, t0()).await.unwrap();
    assert_eq!((funds.balance, funds.held), (Usdc(400), Usdc(0)));

    let released = hold(&a, None, 400);
    store.place_hold(&released, &none, None, t0()).await.unwrap().unwrap();
    assert!(store.release_hold(released.payment).await.unwrap());
    assert!(!store.release_hold(released.payment).await.unwrap());
    assert_eq!(
        store.settle_hold(&released.account, released.payment, t0()).await.unwrap(),
        None,
        "a released hold is not charged"
    );
    assert_eq!(store.funds(&a, t0()).await.unwrap().available(), Usdc(400));

    // Recovery: a charge booked is found; no charge drops the hold.
    let crashed = hold(&a, None, 100);
    store.place_hold(&crashed, &none, None, t0()).await.unwrap().unwrap();
    assert_eq!(store.recover_hold(&a, crashed.payment, t0()).await.unwrap(), None);
    assert_eq!(store.funds(&a, t0()).await.unwrap().held, Usdc(0));
    assert_eq!(store.recover_hold(&a, first.payment, t0()).await.unwrap(), Some(charge));
}

async fn concurrent_holds_never_overspend(store: Arc<dyn Store>) {
    let a = account(2);
    store.append_ledger(&a, LedgerKind::TopUp, Usdc(1_000), "top", t0()).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (store, a) = (store.clone(), a.clone());
        tasks.push(tokio::spawn(async move {
            let h = hold(&a, None, 300);
            let placed = store.place_hold(&h, &SpendCaps::none(t0()), None, t0()).await.unwrap();
            if placed.is_ok() {
                store.settle_hold(&h.account, h.payment, t0()).await.unwrap().unwrap();
            }
            placed.is_ok()
        }));
    }
    let mut placed = 0;
    for t in tasks {
        placed += usize::from(t.await.unwrap());
    }
    assert_eq!(placed, 3);
    assert_eq!(store.balance(&a).await.unwrap(), Usdc(100));
}

async fn key_caps_count_charges_and_holds(store: Arc<dyn Store>) {
    let a = account(3);
    store.append_ledger(&a, LedgerKind::TopUp, Usdc(1_000_000), "top", t0()).await.unwrap();
    let caps =
        SpendCaps { daily: Some(Usdc(10_000)), since: t0() - Duration::hours(12), total: Some(Usdc(15_000)) };
    let h = hold(&a, Some("key-1"), 6_000);
    store.place_hold(&h, &caps, None, t0()).await.unwrap().unwrap();
    // Held counts against the cap.
    let over = store.place_hold(&hold(&a, Some("key-1"), 5_000), &caps, None, t0()).await.unwrap();
    assert_eq!(over, Err(HoldRefusal::DailyCap { cap: Usdc(10_000), spent: Usdc(6_000) }));
    // Another key of the same wallet has caps of its own.
    store.place_hold(&hold(&a, Some("key-2"), 5_000), &caps, None, t0()).await.unwrap().unwrap();
    store.settle_hold(&h.account, h.payment, t0()).await.unwrap().unwrap();
    store.place_hold(&hold(&a, Some("key-1"), 4_000), &caps, None, t0()).await.unwrap().unwrap();
    // A new day: the daily cap starts again, the total does not.
    let tomorrow = SpendCaps { since: t0() + Duration::hours(12), ..caps };
    let total = store.place_hold(&hold(&a, Some("key-1"), 5_001), &tomorrow, None, t0()).await.unwrap();
    assert_eq!(total, Err(HoldRefusal::TotalCap { cap: Usdc(15_000), spent: Usdc(10_000) }));
    store.place_hold(&hold(&a, Some("key-1"), 5_000), &tomorrow, None, t0()).await.unwrap().unwrap();
}

async fn a_settlement_never_overdraws(store: Arc<dyn Store>) {
    let a = account(4);
    store.append_ledger(&a, LedgerKind::TopUp, Usdc(500), "top", t0()).await.unwrap();
    let h = hold(&a, None, 500);
    store.place_hold(&h, &SpendCaps::none(t0()), None, t0()).await.unwrap().unwrap();
    // Spent elsewhere meanwhile (a booking that ignores holds).
    store.append_ledger(&a, LedgerKind::Charge, Usdc(100), "elsewhere", t0()).await.unwrap();
    let refused = store.settle_hold(&h.account, h.payment, t0()).await;
    assert!(matches!(refused, Err(StoreError::InsufficientBalance { .. })), "{refused:?}");
    assert_eq!(store.balance(&a).await.unwrap(), Usdc(400));
}

fn payment(payer: &AccountAddress, n: u32, at: DateTime<Utc>) -> Payment {
    Payment {
        id: PaymentId::new_random(),
        quote_id: None,
        method: PaymentMethod::Credits,
        replay_key: ReplayKey::new("credits", "usdc", payer.as_str(), &format!("n{n}")),
        amount: Usdc(u64::from(n) * 10),
        state: PaymentState::Verified,
        settlement_ref: None,
        void_reason: None,
        proof: None,
        purchase: Some(format!("purchase {n}")),
        created_at: at,
        updated_at: at,
    }
}

async fn payments_are_listed_by_payer_in_pages_with_totals(store: Arc<dyn Store>) {
    let a = account(5);
    for n in 1..=5 {
        let p = payment(&a, n, t0() + Duration::seconds(i64::from(n)));
        store.reserve_payment(&p).await.unwrap();
        let outcome = if n % 2 == 0 {
            PaymentOutcome::Voided { reason: "no".into() }
        } else {
            PaymentOutcome::Settled { settlement_ref: format!("{n}") }
        };
        store.finish_payment(p.id, &outcome, t0()).await.unwrap();
    }
    store.reserve_payment(&payment(&account(6), 9, t0())).await.unwrap();
    let first = store.payments_by_payer(a.as_str(), None, 3).await.unwrap();
    assert_eq!(first.iter().map(|p| p.amount.atomic()).collect::<Vec<_>>(), vec![50, 40, 30]);
    assert_eq!(first[0].purchase.as_deref(), Some("purchase 5"));
    let last = first.last().unwrap();
    let rest = store.payments_by_payer(a.as_str(), Some((last.created_at, last.id)), 3).await.unwrap();
    assert_eq!(rest.iter().map(|p| p.amount.atomic()).collect::<Vec<_>>(), vec![20, 10]);
    let totals = store.payment_totals(a.as_str()).await.unwrap();
    let of = |s| totals.iter().find(|t| t.state == s).map(|t| (t.count, t.amount.atomic()));
    assert_eq!(of(PaymentState::Settled), Some((3, 90)));
    assert_eq!(of(PaymentState::Voided), Some((2, 60)));
    assert_eq!(of(PaymentState::Verified), None);
}

/// A hold reserves its payment in the same write, a refused hold reserves nothing, and the
/// charge records the payment settled with the ledger entry as its reference; many at once,
/// group-committed with lock operations on the same writer, keep every account exact.
async fn a_hold_reserves_its_payment_and_its_charge_settles_it(store: Arc<dyn Store>) {
    let a = account(7);
    store.append_ledger(&a, LedgerKind::TopUp, Usdc(1_000), "top", t0()).await.unwrap();
    let none = SpendCaps::none(t0());

    let short = hold(&a, None, 2_000);
    let mut p = payment(&a, 1, t0());
    p.id = short.payment;
    assert!(store.place_hold(&short, &none, Some(&p), t0()).await.unwrap().is_err());
    assert!(store.get_payment(p.id).await.unwrap().is_none(), "a refused hold reserves nothing");

    let h = hold(&a, None, 300);
    let mut p = payment(&a, 2, t0());
    p.id = h.payment;
    store.place_hold(&h, &none, Some(&p), t0()).await.unwrap().unwrap();
    assert_eq!(store.get_payment(p.id).await.unwrap().unwrap().state, PaymentState::Verified);
    // The same replay key again: refused, and no second hold.
    let again = hold(&a, None, 300);
    let mut replay = p.clone();
    replay.id = again.payment;
    let taken = store.place_hold(&again, &none, Some(&replay), t0()).await;
    assert!(matches!(taken, Err(StoreError::ReplayKeyTaken)), "{taken:?}");
    assert_eq!(store.funds(&a, t0()).await.unwrap().held, Usdc(300), "the replay left no hold");

    let entry = store.settle_hold(&a, h.payment, t0()).await.unwrap().unwrap();
    let settled = store.get_payment(p.id).await.unwrap().unwrap();
    assert_eq!((settled.state, settled.settlement_ref), (PaymentState::Settled, Some(entry.id.to_string())));

    // 50 holds, charges and lock grants at once, on two accounts.
    let b = account(8);
    store.append_ledger(&b, LedgerKind::TopUp, Usdc(1_000), "top", t0()).await.unwrap();
    let mut work = tokio::task::JoinSet::new();
    for n in 0..50u32 {
        let store = store.clone();
        let who = if n % 2 == 0 { a.clone() } else { b.clone() };
        work.spawn(async move {
            let h = hold(&who, None, 10);
            let mut p = payment(&who, 100 + n, t0());
            p.id = h.payment;
            store.place_hold(&h, &SpendCaps::none(t0()), Some(&p), t0()).await.unwrap().unwrap();
            let key = vendbox_core::LockKey::parse(&format!("paid-{n}")).unwrap();
            let release = vendbox_core::SecretToken::generate().hash();
            store.acquire_lock(&key, None, None, std::time::Duration::from_mins(1), &release).await.unwrap();
            store.settle_hold(&who, h.payment, t0()).await.unwrap().unwrap();
        });
    }
    while let Some(done) = work.join_next().await {
        done.unwrap();
    }
    assert_eq!(store.balance(&a).await.unwrap(), Usdc(1_000 - 300 - 250));
    assert_eq!(store.balance(&b).await.unwrap(), Usdc(1_000 - 250));
    assert_eq!(store.funds(&a, t0()).await.unwrap().held, Usdc(0));
}

/// What a lock acquisition paid from `account`'s credits at `atomic` spends.
fn spend(account: &AccountAddress, key: Option<&str>, caps: SpendCaps, atomic: u64) -> CreditSpend {
    let id = PaymentId::new_random();
    let mut payment = payment(account, 0, t0());
    payment.id = id;
    payment.replay_key = ReplayKey::new("credits", "usdc", account.as_str(), &id.to_string());
    payment.amount = Usdc(atomic);
    CreditSpend {
        payment,
        account: account.clone(),
        key_id: key.map(str::to_owned),
        caps,
        charge_when_held: false,
        void_reason: "the key was held; nothing was charged".into(),
        now: t0(),
    }
}

/// Acquires `key` for a minute, paid by `spend`.
async fn acquire_paid(store: &dyn Store, key: &str, spend: &CreditSpend) -> PaidAcquisition {
    let key = LockKey::parse(key).unwrap();
    let release = SecretToken::generate().hash();
    store.acquire_lock_paid(&key, Some("me"), None, StdDuration::from_mins(1), &release, spend).await.unwrap()
}

/// A paid acquisition charges only a grant, in its own transaction: the charge and the settled
/// payment name each other; a held key charges nothing (its payment voided) unless finding it
/// held is charged; credits short of the price (balance less holds) or a key's cap refuse with
/// nothing granted, charged or recorded.
async fn a_paid_acquisition_charges_a_grant_and_nothing_else(store: Arc<dyn Store>) {
    let a = account(9);
    store.append_ledger(&a, LedgerKind::TopUp, Usdc(1_000), "top", t0()).await.unwrap();
    let none = SpendCaps::none(t0());

    let first = spend(&a, None, none, 300);
    let PaidAcquisition::Acquired { lock, charge } = acquire_paid(store.as_ref(), "paid:one", &first).await
    else {
        panic!("not granted")
    };
    assert_eq!((lock.fencing_token.0, charge.delta_atomic), (1, -300));
    assert_eq!(
        (charge.kind, charge.reference.as_str()),
        (LedgerKind::Charge, first.payment.id.to_string().as_str())
    );
    let settled = store.get_payment(first.payment.id).await.unwrap().unwrap();
    assert_eq!((settled.state, settled.settlement_ref), (PaymentState::Settled, Some(charge.id.to_string())));
    assert_eq!(store.funds(&a, t0()).await.unwrap(), Funds { balance: Usdc(700), held: Usdc(0) });

    // Held: nothing charged, the payment voided, the holder untouched.
    let again = spend(&a, None, none, 300);
    let held = acquire_paid(store.as_ref(), "paid:one", &again).await;
    assert_eq!(held, PaidAcquisition::Held { holder: lock.clone(), charge: None });
    let voided = store.get_payment(again.payment.id).await.unwrap().unwrap();
    assert_eq!(voided.state, PaymentState::Voided);
    assert_eq!(voided.void_reason.as_deref(), Some("the key was held; nothing was charged"));
    assert_eq!(store.funds(&a, t0()).await.unwrap(), Funds { balance: Usdc(700), held: Usdc(0) });
    // ... unless finding it held is charged.
    let charged = CreditSpend { charge_when_held: true, ..spend(&a, None, none, 300) };
    let PaidAcquisition::Held { charge: Some(entry), .. } =
        acquire_paid(store.as_ref(), "paid:one", &charged).await
    else {
        panic!("finding the key held was not charged")
    };
    assert_eq!(entry.delta_atomic, -300);
    assert_eq!(store.balance(&a).await.unwrap(), Usdc(400));

    // Short, counting what is held for other purchases: nothing granted, charged or recorded.
    let h = hold(&a, None, 300);
    store.place_hold(&h, &none, None, t0()).await.unwrap().unwrap();
    let short = spend(&a, None, none, 200);
    assert_eq!(
        acquire_paid(store.as_ref(), "paid:two", &short).await,
        PaidAcquisition::Refused(HoldRefusal::Short {
            balance: Usdc(400),
            held: Usdc(300),
            needed: Usdc(200)
        })
    );
    assert!(store.get_payment(short.payment.id).await.unwrap().is_none(), "a refusal records no payment");
    assert!(store.get_lock(&LockKey::parse("paid:two").unwrap()).await.unwrap().is_none(), "nor a grant");
    assert!(store.release_hold(h.payment).await.unwrap());

    // A key's cap counts its charges and holds.
    let caps = SpendCaps { daily: Some(Usdc(250)), since: t0() - Duration::hours(1), total: None };
    let PaidAcquisition::Acquired { .. } =
        acquire_paid(store.as_ref(), "paid:three", &spend(&a, Some("key-9"), caps, 200)).await
    else {
        panic!("under the cap")
    };
    assert_eq!(
        acquire_paid(store.as_ref(), "paid:four", &spend(&a, Some("key-9"), caps, 100)).await,
        PaidAcquisition::Refused(HoldRefusal::DailyCap { cap: Usdc(250), spent: Usdc(200) })
    );
    assert!(store.get_lock(&LockKey::parse("paid:four").unwrap()).await.unwrap().is_none());
    assert_eq!(store.balance(&a).await.unwrap(), Usdc(200));
}

/// Many paid acquisitions at once, in the lock writer's batches with holds and charges of the
/// same account and with free locks: exactly what the balance covers is granted and charged,
/// each charge with its settled payment, and a refused one holds no key.
async fn concurrent_paid_acquisitions_never_overspend(store: Arc<dyn Store>) {
    let a = account(10);
    store.append_ledger(&a, LedgerKind::TopUp, Usdc(1_000), "top", t0()).await.unwrap();
    let mut work = tokio::task::JoinSet::new();
    for n in 0..60u32 {
        let (store, a) = (store.clone(), a.clone());
        work.spawn(async move {
            match n % 3 {
                // A purchase held and charged through the gate's two writes.
                0 => {
                    let h = hold(&a, None, 50);
                    let placed = store.place_hold(&h, &SpendCaps::none(t0()), None, t0()).await.unwrap();
                    if placed.is_ok() {
                        store.settle_hold(&a, h.payment, t0()).await.unwrap().unwrap();
                    }
                    (None, u64::from(placed.is_ok()) * 50)
                }
                // A free lock.
                1 => {
                    let key = LockKey::parse(&format!("free:{n}")).unwrap();
                    let release = SecretToken::generate().hash();
                    store.acquire_lock(&key, None, None, StdDuration::from_mins(1), &release).await.unwrap();
                    (None, 0)
                }
                _ => {
                    let s = spend(&a, None, SpendCaps::none(t0()), 100);
                    let key = format!("paid:{n}");
                    match acquire_paid(store.as_ref(), &key, &s).await {
                        PaidAcquisition::Acquired { charge, .. } => {
                            let p = store.get_payment(s.payment.id).await.unwrap().unwrap();
                            assert_eq!(p.settlement_ref, Some(charge.id.to_string()));
                            (None, 100)
                        }
                        PaidAcquisition::Refused(HoldRefusal::Short { .. }) => (Some(key), 0),
                        other => panic!("{other:?}"),
                    }
                }
            }
        });
    }
    let mut spent = 0;
    let mut refused = Vec::new();
    while let Some(done) = work.join_next().await {
        let (key, amount) = done.unwrap();
        spent += amount;
        refused.extend(key);
    }
    assert!(!refused.is_empty(), "the balance covers 10 to 20 of the 40 purchases");
    assert_eq!(spent, 1_000, "every credit spent, none twice");
    assert_eq!(store.funds(&a, t0()).await.unwrap(), Funds { balance: Usdc(0), held: Usdc(0) });
    for key in refused {
        assert!(store.get_lock(&LockKey::parse(&key).unwrap()).await.unwrap().is_none(), "{key} was granted");
    }
}

/// Many paid acquisitions of one key at once: one grant charged, every other answered with the
/// holder, its payment voided and nothing charged.
async fn paid_acquisitions_of_one_key_at_once_charge_one(store: Arc<dyn Store>) {
    let a = account(12);
    store.append_ledger(&a, LedgerKind::TopUp, Usdc(10_000), "top", t0()).await.unwrap();
    let mut work = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (store, a) = (store.clone(), a.clone());
        work.spawn(async move {
            let s = spend(&a, None, SpendCaps::none(t0()), 100);
            let answer = acquire_paid(store.as_ref(), "paid:contested", &s).await;
            (answer, store.get_payment(s.payment.id).await.unwrap().unwrap())
        });
    }
    let (mut granted, mut held) = (0, 0);
    while let Some(done) = work.join_next().await {
        match done.unwrap() {
            (PaidAcquisition::Acquired { charge, .. }, p) => {
                granted += 1;
                assert_eq!((p.state, p.settlement_ref), (PaymentState::Settled, Some(charge.id.to_string())));
            }
            (PaidAcquisition::Held { charge: None, .. }, p) => {
                held += 1;
                assert_eq!(p.state, PaymentState::Voided);
                assert_eq!(p.void_reason.as_deref(), Some("the key was held; nothing was charged"));
            }
            (other, _) => panic!("{other:?}"),
        }
    }
    assert_eq!((granted, held), (1, 19));
    assert_eq!(store.funds(&a, t0()).await.unwrap(), Funds { balance: Usdc(9_900), held: Usdc(0) });
}

/// Two hosts (two stores, each with its own lock writer) on one PostgreSQL database spend one
/// account's credits with paid acquisitions at once: exactly the balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_paying_for_locks_spend_one_balance_exactly() {
    let Some(schema) = PostgresSchema::create().await else { return };
    let hosts: [Arc<dyn Store>; 2] =
        [Arc::new(schema.store().await.unwrap()), Arc::new(schema.store().await.unwrap())];
    let a = account(11);
    hosts[0].append_ledger(&a, LedgerKind::TopUp, Usdc(2_000), "top", t0()).await.unwrap();
    let mut work = tokio::task::JoinSet::new();
    for n in 0..50 {
        let (store, a) = (hosts[n % 2].clone(), a.clone());
        work.spawn(async move {
            let s = spend(&a, None, SpendCaps::none(t0()), 100);
            matches!(
                acquire_paid(store.as_ref(), &format!("two:{n}"), &s).await,
                PaidAcquisition::Acquired { .. }
            )
        });
    }
    let mut granted = 0;
    while let Some(done) = work.join_next().await {
        granted += usize::from(done.unwrap());
    }
    let balance = hosts[1].balance(&a).await.unwrap();
    drop(hosts);
    schema.drop_schema().await;
    assert_eq!((granted, balance), (20, Usdc(0)));
}

common::suite!(
    a_paid_acquisition_charges_a_grant_and_nothing_else,
    concurrent_paid_acquisitions_never_overspend,
    paid_acquisitions_of_one_key_at_once_charge_one,
    a_hold_reserves_its_payment_and_its_charge_settles_it,
    holds_keep_credit_aside_until_settled_or_released,
    concurrent_holds_never_overspend,
    key_caps_count_charges_and_holds,
    a_settlement_never_overdraws,
    payments_are_listed_by_payer_in_pages_with_totals,
);
