//! Credits through the payment gate, on a real SQLite store: a principal pays from its balance,
//! held at verification and charged only once the work succeeded; failed or unsold work is not
//! charged and its hold is let go; many purchases at once never overspend; a short balance says
//! what is missing; key scopes and caps refuse with their codes; and recovery finishes a payment
//! a crash left `verified`. No chain, no HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use vendbox_core::{AccountAddress, KeyGrant, KeyScope, LedgerKind, PaymentState, Principal, Usdc};
use vendbox_pay::{Charge, ChargeKind, PaymentMethod as _, Proof};
use vendbox_service::{Clock as _, Coded, Credits, Delivery, ManualClock, PayError, Payments, SystemClock};
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
