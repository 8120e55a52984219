//! Credits through the payment gate, on a real SQLite store: a principal pays from its balance,
//! held at verification and charged only once the work succeeded; failed or unsold work is not
//! charged and its hold is let go; many purchases at once never overspend; a short balance says
//! what is missing; key scopes and caps refuse with their codes; and recovery finishes a payment
//! a crash left `verified`. A lock acquisition paid with credits takes the other way through the
//! gate: checked, granted and charged in one write of the store, a held key charging nothing and
//! holding nothing, a hundred at once spending the balance exactly. No chain, no HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use vendbox_core::{AccountAddress, KeyGrant, KeyScope, LedgerKind, PaymentState, Principal, Usdc};
use vendbox_core::{Catalog, LockKey, LockRequest};
use vendbox_pay::{Charge, ChargeKind, PaymentMethod as _, Proof};
use vendbox_service::locks::Acquired;
use vendbox_service::{
    Clock as _, Coded, Credits, Delivery, Locks, ManualClock, Paid, PayError, Payments, Spent, SystemClock,
};
use vendbox_store::{SqliteStore, Store};

#[derive(Debug, PartialEq)]
struct Failed(&'static str);

impl Coded for Failed {
    fn code(&self) -> &str {
        self.0
    }
}

struct Gate {
    payments: Payments,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

async fn gate() -> Gate {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open_file(&dir.path().join("vendbox.db")).await.unwrap());
    let credits = Arc::new(Credits::new(store.clone(), Arc::new(SystemClock), "http://vendbox.test"));
    let payments = Payments::new(vec![credits], store.clone(), "http://vendbox.test".into());
    Gate { payments, store, _dir: dir }
}

fn wallet(n: u8) -> AccountAddress {
    AccountAddress::parse(&format!("0x{n:040x}"), "wallet").unwrap()
}

fn signed(account: &AccountAddress) -> Proof {
    Proof::none().with_principal(Principal::wallet(account.clone()))
}

fn keyed(account: &AccountAddress, scope: KeyScope, daily_cap: Option<Usdc>) -> Proof {
    let key = KeyGrant { id: "key-1".into(), scope, daily_cap, total_cap: None };
    Proof::none().with_principal(Principal { account: account.clone(), key: Some(key) })
}

fn charge(payments: &Payments, kind: ChargeKind, atomic: u64) -> Option<Charge> {
    payments.charge_for(kind, Usdc(atomic), "/thing", "a thing").unwrap()
}

async fn top_up(store: &dyn Store, account: &AccountAddress, atomic: u64) {
    store.append_ledger(account, LedgerKind::TopUp, Usdc(atomic), "top-up", Utc::now()).await.unwrap();
}

#[tokio::test]
async fn a_purchase_is_charged_once_the_work_succeeded_and_names_its_ledger_entry() {
    let g = gate().await;
    let a = wallet(1);
    top_up(g.store.as_ref(), &a, 1_000).await;
    let paid = g
        .payments
        .pay(&signed(&a), charge(&g.payments, ChargeKind::Lock, 100), |_| async {
            Ok::<_, Failed>(Delivery::delivered("done"))
        })
        .await
        .unwrap();
    let receipt = paid.receipt.unwrap();
    let ledger = g.store.ledger(&a, 10).await.unwrap();
    assert_eq!(ledger[0].kind, LedgerKind::Charge);
    assert_eq!(receipt.reference, ledger[0].id.to_string());
    assert_eq!(ledger[0].reference, paid.payment.unwrap().to_string());
    assert!(receipt.headers[0].1.contains("\"credits\""), "{:?}", receipt.headers);
    let payment = g.store.get_payment(paid.payment.unwrap()).await.unwrap().unwrap();
    assert_eq!(payment.state, PaymentState::Settled);
    assert_eq!(payment.purchase.as_deref(), Some("a thing (http://vendbox.test/thing)"));
    let funds = g.store.funds(&a, Utc::now()).await.unwrap();
    assert_eq!((funds.balance, funds.held), (Usdc(900), Usdc(0)));
}

#[tokio::test]
async fn failed_and_unsold_work_is_not_charged_and_lets_its_hold_go() {
    let g = gate().await;
    let a = wallet(2);
    top_up(g.store.as_ref(), &a, 100).await;
    let failed = g
        .payments
        .pay(&signed(&a), charge(&g.payments, ChargeKind::Box, 100), |_| async {
            Err::<Delivery<(), Failed>, _>(Failed("box_failed"))
        })
        .await;
    assert!(matches!(failed, Err(PayError::Work { .. })), "{failed:?}");
    let unsold = g
        .payments
        .pay(&signed(&a), charge(&g.payments, ChargeKind::Lock, 100), |_| async {
            Ok::<_, Failed>(Delivery::not_delivered(()))
        })
        .await
        .unwrap();
    assert!(unsold.receipt.is_none());
    let funds = g.store.funds(&a, Utc::now()).await.unwrap();
    assert_eq!((funds.balance, funds.held), (Usdc(100), Usdc(0)), "nothing charged, nothing held");
}

#[tokio::test]
async fn a_short_balance_is_refused_with_what_is_missing_and_where_to_top_up() {
    let g = gate().await;
    let a = wallet(3);
    top_up(g.store.as_ref(), &a, 40).await;
    let result = g
        .payments
        .pay(&signed(&a), charge(&g.payments, ChargeKind::Lock, 100), |_| async {
            Ok::<_, Failed>(Delivery::delivered(()))
        })
        .await;
    let Err(PayError::Required { code, message, challenges, .. }) = result else { panic!("{result:?}") };
    assert_eq!(code, "insufficient_credits");
    assert!(message.contains("0.00006 USDC short"), "{message}");
    assert!(message.contains("http://vendbox.test/v1/account/topup"), "{message}");
    assert_eq!(challenges[0].headers[0].0, "vendbox-credits");
}

#[tokio::test]
async fn many_purchases_at_once_never_overspend() {
    let g = gate().await;
    let a = wallet(4);
    top_up(g.store.as_ref(), &a, 5_000).await;
    let payments = Arc::new(g.payments);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (payments, proof) = (payments.clone(), signed(&a));
        tasks.push(tokio::spawn(async move {
            let charge = charge(&payments, ChargeKind::Lock, 100);
            payments.pay(&proof, charge, |_| async { Ok::<_, Failed>(Delivery::delivered(())) }).await.is_ok()
        }));
    }
    let mut paid = 0;
    for t in tasks {
        paid += usize::from(t.await.unwrap());
    }
    assert_eq!(paid, 50);
    assert_eq!(g.store.balance(&a).await.unwrap(), Usdc(0));
}

#[tokio::test]
async fn key_scopes_and_daily_caps_refuse_with_their_codes() {
    let g = gate().await;
    let a = wallet(5);
    top_up(g.store.as_ref(), &a, 1_000_000).await;
    let work = |_| async { Ok::<_, Failed>(Delivery::delivered(())) };
    let locks_only = keyed(&a, KeyScope::LocksOnly, None);
    let refused = g.payments.pay(&locks_only, charge(&g.payments, ChargeKind::Box, 100), work).await;
    assert!(matches!(refused, Err(PayError::Required { code: "key_scope", .. })), "{refused:?}");
    g.payments.pay(&locks_only, charge(&g.payments, ChargeKind::Lock, 100), work).await.unwrap();

    let capped = keyed(&a, KeyScope::All, Some(Usdc(10_000)));
    for _ in 0..2 {
        g.payments.pay(&capped, charge(&g.payments, ChargeKind::Box, 4_000), work).await.unwrap();
    }
    let over = g.payments.pay(&capped, charge(&g.payments, ChargeKind::Box, 4_000), work).await;
    let Err(PayError::Required { code, message, .. }) = over else { panic!("{over:?}") };
    assert_eq!(code, "key_daily_cap", "{message}");
    // The wallet itself has no cap.
    g.payments.pay(&signed(&a), charge(&g.payments, ChargeKind::Box, 4_000), work).await.unwrap();
}

#[tokio::test]
async fn recovery_finds_the_charge_or_drops_the_hold() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open_file(&dir.path().join("vendbox.db")).await.unwrap());
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let credits = Arc::new(Credits::new(store.clone(), clock.clone(), "http://vendbox.test"));
    let payments = Payments::new(vec![credits.clone()], store.clone(), "http://vendbox.test".into())
        .with_clock(clock.clone());
    let a = wallet(6);
    top_up(store.as_ref(), &a, 1_000).await;
    // Two payments a crash left `verified`: one whose charge was booked, one whose was not.
    let mut left = Vec::new();
    for _ in 0..2 {
        let charge = charge(&payments, ChargeKind::Lock, 100).unwrap();
        let admission = credits
            .check(&signed(&a), &charge, vendbox_core::PaymentId::new_random(), clock.now_ms())
            .unwrap();
        // Verification holds the credits and reserves the payment, in one write.
        credits.verify(&admission, &charge).await.unwrap();
        left.push((admission, charge));
    }
    let booked = store.settle_hold(&a, left[0].0.payment.id, clock.now()).await.unwrap().unwrap();
    assert_eq!(store.funds(&a, clock.now()).await.unwrap().held, Usdc(100));
    clock.advance(chrono::Duration::minutes(5));
    payments.finish_interrupted(Duration::from_mins(1), 10).await.unwrap();
    let first = store.get_payment(left[0].0.payment.id).await.unwrap().unwrap();
    assert_eq!((first.state, first.settlement_ref), (PaymentState::Settled, Some(booked.id.to_string())));
    let second = store.get_payment(left[1].0.payment.id).await.unwrap().unwrap();
    assert_eq!(second.state, PaymentState::Voided);
    let funds = store.funds(&a, clock.now()).await.unwrap();
    assert_eq!((funds.balance, funds.held), (Usdc(900), Usdc(0)));
}

/// Locks sold at 0.0001 USDC (100 atomic units) an acquisition, the acquire offer labelled
/// `charge_when_held = when_held` when given.
fn locks(store: &Arc<dyn Store>, when_held: Option<&str>) -> Locks {
    let mut acquire = serde_json::json!({
        "id": "lock-acquire", "kind": "lock", "title": "Acquire", "duration": { "rule": "none" },
        "price": { "base": "0.0001" }, "labels": { "operation": "acquire" },
    });
    if let Some(value) = when_held {
        acquire["labels"]["charge_when_held"] = value.into();
    }
    let catalog = Catalog { offers: vec![serde_json::from_value(acquire).unwrap()], ..Catalog::default() };
    Locks::new(store.clone(), Arc::new(catalog))
}

/// Acquires `key` through the gate as the lock routes do, paying with `proof`: from credits in
/// the grant's own write (the gate's other work must not run).
async fn acquire(
    payments: &Payments,
    locks: &Locks,
    proof: &Proof,
    key: &str,
) -> Result<Paid<Acquired>, PayError<Failed>> {
    let request = LockRequest::new(key, Some("agent".into()), Some(60), None).unwrap();
    let charge = charge(payments, ChargeKind::Lock, 100);
    let work = |_| async { Err::<Delivery<Acquired, Failed>, _>(Failed("paid_in_two_writes")) };
    let spend =
        |spend| async move { locks.acquire_paid(&request, spend).await.map_err(|_| Failed("lock_failed")) };
    payments.pay_spending(proof, charge, work, spend).await
}

#[tokio::test]
async fn a_credit_paid_lock_is_granted_and_charged_in_one_write_with_its_receipt() {
    let g = gate().await;
    let locks = locks(&g.store, None);
    let a = wallet(7);
    top_up(g.store.as_ref(), &a, 1_000).await;
    let paid = acquire(&g.payments, &locks, &signed(&a), "job:1").await.unwrap();
    assert!(matches!(paid.value, Acquired::Granted { .. }), "{paid:?}");
    let receipt = paid.receipt.unwrap();
    let ledger = g.store.ledger(&a, 10).await.unwrap();
    assert_eq!((ledger[0].kind, ledger[0].delta_atomic), (LedgerKind::Charge, -100));
    assert_eq!(receipt.reference, ledger[0].id.to_string(), "the receipt names the ledger entry");
    let header: serde_json::Value = serde_json::from_str(&receipt.headers[0].1).unwrap();
    assert_eq!(header["reference"], ledger[0].id.to_string());
    let payment = g.store.get_payment(paid.payment.unwrap()).await.unwrap().unwrap();
    assert_eq!(
        (payment.state, payment.settlement_ref),
        (PaymentState::Settled, Some(ledger[0].id.to_string()))
    );
    assert_eq!(payment.purchase.as_deref(), Some("a thing (http://vendbox.test/thing)"));
    let funds = g.store.funds(&a, Utc::now()).await.unwrap();
    assert_eq!((funds.balance, funds.held), (Usdc(900), Usdc(0)));
}

#[tokio::test]
async fn a_credit_paid_acquisition_of_a_held_key_charges_nothing_and_leaves_no_hold() {
    let g = gate().await;
    let a = wallet(8);
    top_up(g.store.as_ref(), &a, 1_000).await;
    let void = locks(&g.store, None);
    let first = acquire(&g.payments, &void, &signed(&a), "job:held").await.unwrap();
    let Acquired::Granted { lock, .. } = first.value else { panic!("not granted") };

    // A payer without credits is asked for them first, as at any price.
    let b = wallet(9);
    let unfunded = acquire(&g.payments, &void, &signed(&b), "job:held").await;
    assert!(matches!(unfunded, Err(PayError::Required { code: "insufficient_credits", .. })), "{unfunded:?}");
    top_up(g.store.as_ref(), &b, 1_000).await;
    let held = acquire(&g.payments, &void, &signed(&b), "job:held").await.unwrap();
    let Acquired::Held(holder) = held.value else { panic!("a held key was granted twice") };
    assert_eq!(holder.fencing_token, lock.fencing_token);
    assert!(held.receipt.is_none(), "no receipt: nothing was charged");
    let payment = g.store.get_payment(held.payment.unwrap()).await.unwrap().unwrap();
    assert_eq!(payment.state, PaymentState::Voided);
    assert_eq!(
        payment.void_reason.as_deref(),
        Some("nothing was sold for this request; nothing was charged")
    );
    let funds = g.store.funds(&b, Utc::now()).await.unwrap();
    assert_eq!((funds.balance, funds.held), (Usdc(1_000), Usdc(0)), "nothing charged, nothing held");
    assert!(g.store.ledger(&b, 10).await.unwrap().iter().all(|e| e.kind == LedgerKind::TopUp));

    // Where the operator charges for finding a key held, it is charged, with its receipt.
    let charging = locks(&g.store, Some("true"));
    let charged = acquire(&g.payments, &charging, &signed(&b), "job:held").await.unwrap();
    assert!(matches!(charged.value, Acquired::Held(_)));
    assert_eq!(charged.receipt.unwrap().reference, g.store.ledger(&b, 1).await.unwrap()[0].id.to_string());
    assert_eq!(g.store.balance(&b).await.unwrap(), Usdc(900));
}

#[tokio::test]
async fn credit_paid_acquisitions_are_refused_in_the_credits_words() {
    let g = gate().await;
    let locks = locks(&g.store, None);
    let a = wallet(10);
    top_up(g.store.as_ref(), &a, 40).await;
    let short = acquire(&g.payments, &locks, &signed(&a), "job:short").await;
    let Err(PayError::Required { code, message, challenges, payment, .. }) = short else {
        panic!("{short:?}")
    };
    assert_eq!(code, "insufficient_credits");
    assert!(message.contains("0.00006 USDC short"), "{message}");
    assert!(message.contains("http://vendbox.test/v1/account/topup"), "{message}");
    assert_eq!(challenges[0].headers[0].0, "vendbox-credits");
    assert_eq!(payment, None, "a refusal records no payment");
    assert!(
        locks.holder(&LockKey::parse("job:short").unwrap()).await.unwrap().is_none(),
        "nor grants the key"
    );

    g.store.append_ledger(&a, LedgerKind::TopUp, Usdc(1_000), "second top-up", Utc::now()).await.unwrap();
    let capped = keyed(&a, KeyScope::LocksOnly, Some(Usdc(150)));
    acquire(&g.payments, &locks, &capped, "job:capped-1").await.unwrap();
    let over = acquire(&g.payments, &locks, &capped, "job:capped-2").await;
    assert!(matches!(over, Err(PayError::Required { code: "key_daily_cap", .. })), "{over:?}");
    let scoped = keyed(&a, KeyScope::BoxesUpTo { max_price: Usdc(1) }, None);
    acquire(&g.payments, &locks, &scoped, "job:scoped").await.unwrap();
    assert_eq!(g.store.balance(&a).await.unwrap(), Usdc(840));
}

#[tokio::test]
async fn a_hundred_credit_paid_acquisitions_at_once_spend_the_balance_exactly() {
    let g = gate().await;
    let a = wallet(11);
    top_up(g.store.as_ref(), &a, 5_000).await;
    let (payments, locks) = (Arc::new(g.payments), Arc::new(locks(&g.store, None)));
    let mut tasks = Vec::new();
    for n in 0..100 {
        let (payments, locks, proof) = (payments.clone(), locks.clone(), signed(&a));
        tasks.push(tokio::spawn(async move {
            let key = format!("job:many-{n}");
            match acquire(&payments, &locks, &proof, &key).await {
                Ok(Paid { value: Acquired::Granted { .. }, receipt: Some(receipt), .. }) => {
                    (receipt.reference, key)
                }
                Err(PayError::Required { code: "insufficient_credits", .. }) => (String::new(), key),
                other => panic!("{other:?}"),
            }
        }));
    }
    let mut references = std::collections::HashSet::new();
    let mut refused = Vec::new();
    for t in tasks {
        let (reference, key) = t.await.unwrap();
        if reference.is_empty() {
            refused.push(key);
        } else {
            assert!(references.insert(reference), "one ledger entry each");
        }
    }
    assert_eq!((references.len(), refused.len()), (50, 50));
    let funds = g.store.funds(&a, Utc::now()).await.unwrap();
    assert_eq!((funds.balance, funds.held), (Usdc(0), Usdc(0)));
    for key in refused {
        assert!(locks.holder(&LockKey::parse(&key).unwrap()).await.unwrap().is_none(), "{key} held unpaid");
    }
}

#[tokio::test]
async fn without_credits_paying_the_gate_goes_its_usual_way() {
    // No proof at all: the 402, as from `pay`.
    let g = gate().await;
    let locks = locks(&g.store, None);
    let none = acquire(&g.payments, &locks, &Proof::none(), "job:unpaid").await;
    assert!(matches!(none, Err(PayError::Required { code: "payment_required", .. })), "{none:?}");
    // Free: the work runs, no spend.
    let free = g
        .payments
        .pay_spending(
            &Proof::none(),
            None,
            |_| async { Ok::<_, Failed>(Delivery::delivered("worked")) },
            |_| async { Ok::<Spent<&str>, Failed>(Spent::NotCharged("spent")) },
        )
        .await
        .unwrap();
    assert_eq!((free.value, free.payment), ("worked", None));
}
