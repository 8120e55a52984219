//! The payment gate's rules, with a fake payment method and a real SQLite store: no proof asks
//! for one, money moves only after the work succeeded, failed work and unsold requests void,
//! a failed settlement takes back what was made, a proof pays once, and recovery finishes what a
//! crash left half-done. No chain, no HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use vendbox_core::{PaymentId, PaymentState, Usdc};
use vendbox_pay::fake::{FAKE_PAYMENT_REQUIRED, FakeMethod};
use vendbox_pay::{
    AdmitError, Charge, PaymentMethod as _, Proof, Reason, Recovered, Rejection, SettleFailure,
};
use vendbox_service::{Clock as _, Coded, Delivery, ManualClock, PayError, Payments};
use vendbox_store::{SqliteStore, Store};

/// A work error, by its code.
#[derive(Debug, PartialEq)]
struct Failed(&'static str);

impl Coded for Failed {
    fn code(&self) -> &str {
        self.0
    }
}

struct Gate {
    payments: Payments,
    method: Arc<FakeMethod>,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

async fn gate() -> Gate {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open_file(&dir.path().join("vendbox.db")).await.unwrap());
    let method = Arc::new(FakeMethod::new());
    let payments = Payments::new(vec![method.clone()], store.clone(), "http://vendbox.test".into());
    Gate { payments, method, store, _dir: dir }
}

const PRICE: u64 = 10_000;

fn charge(payments: &Payments) -> Option<Charge> {
    payments.charge(Usdc(PRICE), "/thing", "a thing").unwrap()
}

async fn state_of(store: &dyn Store, id: PaymentId) -> PaymentState {
    store.get_payment(id).await.unwrap().unwrap().state
}

#[tokio::test]
async fn without_a_proof_the_work_does_not_run_and_every_method_challenges() {
    let g = gate().await;
    let ran = AtomicBool::new(false);
    let result = g
        .payments
        .pay(&Proof::none(), charge(&g.payments), |_| async {
            ran.store(true, Ordering::SeqCst);
            Ok::<_, Failed>(Delivery::delivered(()))
        })
        .await;
    let Err(PayError::Required { code, challenges, malformed, payment, .. }) = result else {
        panic!("expected a demand for payment, got {result:?}");
    };
    assert_eq!(code, "payment_required");
    assert!(!malformed);
    assert_eq!(payment, None);
    assert_eq!(challenges.len(), 1);
    assert_eq!(challenges[0].headers[0].0, FAKE_PAYMENT_REQUIRED);
    assert!(!ran.load(Ordering::SeqCst), "unpaid work must not run");
}

#[tokio::test]
async fn a_free_request_runs_without_a_payment() {
    let g = gate().await;
    assert!(g.payments.charge(Usdc::ZERO, "/x", "free").unwrap().is_none());
    let paid = g
        .payments
        .pay(&Proof::none(), None, |id| async move {
            assert_eq!(id, None);
            Ok::<_, Failed>(Delivery::delivered(7))
        })
        .await
        .unwrap();
    assert_eq!((paid.value, paid.payment, paid.receipt), (7, None, None));
}

#[tokio::test]
async fn a_gate_without_methods_refuses_to_price() {
    let g = gate().await;
    let bare = Payments::unconfigured(g.store.clone(), "http://vendbox.test".into());
    let refused = bare.charge(Usdc(1), "/x", "x").unwrap_err();
    assert_eq!(refused.code(), "payments_unconfigured");
    assert!(bare.charge(Usdc::ZERO, "/x", "x").unwrap().is_none(), "free needs no payment method");
}

#[tokio::test]
async fn successful_work_settles_once_and_is_answered_with_the_receipt() {
    let g = gate().await;
    let proof = FakeMethod::proof("alice", "n1", PRICE);
    let paid = g
        .payments
        .pay(&proof, charge(&g.payments), |id| async move {
            assert!(id.is_some(), "paid work is told its payment");
            Ok::<_, Failed>(Delivery::delivered("made"))
        })
        .await
        .unwrap();
    let id = paid.payment.unwrap();
    assert_eq!(paid.value, "made");
    assert_eq!(paid.receipt.unwrap().reference, format!("fake:{id}"));
    assert_eq!(g.method.settled(), vec![id]);
    let stored = g.store.get_payment(id).await.unwrap().unwrap();
    assert_eq!(stored.state, PaymentState::Settled);
    assert_eq!(stored.settlement_ref.as_deref(), Some(format!("fake:{id}").as_str()));
}

#[tokio::test]
async fn failed_work_is_voided_and_nothing_is_settled() {
    let g = gate().await;
    let proof = FakeMethod::proof("alice", "n1", PRICE);
    let result = g
        .payments
        .pay(&proof, charge(&g.payments), |_| async { Err::<Delivery<(), _>, _>(Failed("box_failed")) })
        .await;
    let Err(PayError::Work { error, payment: Some(id) }) = result else {
        panic!("expected the work's error, got {result:?}");
    };
    assert_eq!(error, Failed("box_failed"));
    assert!(g.method.settled().is_empty(), "no money moves for failed work");
    let stored = g.store.get_payment(id).await.unwrap().unwrap();
    assert_eq!(stored.state, PaymentState::Voided);
    assert!(stored.void_reason.unwrap().contains("box_failed"));
}

#[tokio::test]
async fn a_request_that_sold_nothing_is_answered_and_voided() {
    let g = gate().await;
    let proof = FakeMethod::proof("alice", "n1", PRICE);
    let paid = g
        .payments
        .pay(&proof, charge(&g.payments), |_| async { Ok::<_, Failed>(Delivery::not_delivered("held")) })
        .await
        .unwrap();
    assert_eq!(paid.value, "held");
    assert!(paid.receipt.is_none());
    assert_eq!(state_of(g.store.as_ref(), paid.payment.unwrap()).await, PaymentState::Voided);
    assert!(g.method.settled().is_empty());
}

#[tokio::test]
async fn a_refused_settlement_takes_back_what_was_made() {
    let g = gate().await;
    g.method.fail_next_settle(SettleFailure::Refused(Rejection::new(Reason::NonceUsed, "used meanwhile")));
    let undone = Arc::new(AtomicBool::new(false));
    let flag = undone.clone();
    let result = g
        .payments
        .pay(&FakeMethod::proof("alice", "n1", PRICE), charge(&g.payments), |_| async move {
            Ok::<_, Failed>(
                Delivery::delivered(()).undo_with(async move { flag.store(true, Ordering::SeqCst) }),
            )
        })
        .await;
    let Err(PayError::Required { code, payment: Some(id), .. }) = result else {
        panic!("expected a new demand for payment, got {result:?}");
    };
    assert_eq!(code, Reason::NonceUsed.code());
    assert!(undone.load(Ordering::SeqCst), "what was made is taken back");
    assert_eq!(state_of(g.store.as_ref(), id).await, PaymentState::Voided);
}

#[tokio::test]
async fn a_failed_settlement_says_so_and_voids() {
    let g = gate().await;
    g.method.fail_next_settle(SettleFailure::Failed("no gas".into()));
    let result = g
        .payments
        .pay(&FakeMethod::proof("alice", "n1", PRICE), charge(&g.payments), |_| async {
            Ok::<_, Failed>(Delivery::delivered(()))
        })
        .await;
    let Err(PayError::Required { code, payment: Some(id), .. }) = result else {
        panic!("expected settlement_failed, got {result:?}");
    };
    assert_eq!(code, "settlement_failed");
    assert_eq!(state_of(g.store.as_ref(), id).await, PaymentState::Voided);
}

#[tokio::test]
async fn what_follows_the_settlement_runs_only_once_the_money_moved() {
    let g = gate().await;
    g.method.fail_next_settle(SettleFailure::Failed("down".into()));
    let followed = Arc::new(AtomicBool::new(false));
    let flag = followed.clone();
    let _ = g
        .payments
        .pay(&FakeMethod::proof("alice", "n1", PRICE), charge(&g.payments), |_| async move {
            Ok::<_, Failed>(Delivery::delivered(()).after_settlement(async move {
                flag.store(true, Ordering::SeqCst);
                Ok(())
            }))
        })
        .await;
    assert!(!followed.load(Ordering::SeqCst), "unpaid: the follow-up must not run");

    let result = g
        .payments
        .pay(&FakeMethod::proof("alice", "n2", PRICE), charge(&g.payments), |_| async move {
            Ok::<_, Failed>(
                Delivery::delivered(()).after_settlement(async move { Err(Failed("lease_changed")) }),
            )
        })
        .await;
    let Err(PayError::AfterSettlement { error, payment, receipt }) = result else {
        panic!("expected the follow-up's error, got {result:?}");
    };
    assert_eq!(error, Failed("lease_changed"));
    assert_eq!(receipt.reference, format!("fake:{payment}"));
    assert_eq!(state_of(g.store.as_ref(), payment).await, PaymentState::Settled, "the money stays moved");
}

#[tokio::test]
async fn a_proof_pays_once() {
    let g = gate().await;
    let proof = FakeMethod::proof("alice", "same", PRICE);
    let work = |_| async { Ok::<_, Failed>(Delivery::delivered(())) };
    g.payments.pay(&proof, charge(&g.payments), work).await.unwrap();
    let again = g.payments.pay(&proof, charge(&g.payments), work).await;
    let Err(PayError::Required { code, .. }) = again else { panic!("a replay must be refused: {again:?}") };
    assert_eq!(code, Reason::Replayed.code());
    assert_eq!(g.method.verified(), 1, "a known replay is refused before asking where the money is");
    assert_eq!(g.method.settled().len(), 1);
}

#[tokio::test]
async fn concurrent_requests_with_one_proof_settle_at_most_once() {
    let g = gate().await;
    let proof = FakeMethod::proof("alice", "race", PRICE);
    let runs = (0..8).map(|_| {
        g.payments.pay(&proof, charge(&g.payments), |_| async { Ok::<_, Failed>(Delivery::delivered(())) })
    });
    let results = futures_util::future::join_all(runs).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    assert_eq!(g.method.settled().len(), 1);
}

#[tokio::test]
async fn a_bad_proof_is_refused_before_the_work_and_an_unreadable_one_is_a_bad_request() {
    let g = gate().await;
    let wrong_amount = FakeMethod::proof("alice", "n1", PRICE + 1);
    let result = g
        .payments
        .pay(&wrong_amount, charge(&g.payments), |_| async { Ok::<_, Failed>(Delivery::delivered(())) })
        .await;
    let Err(PayError::Required { code, malformed: false, payment: None, .. }) = result else {
        panic!("expected a refusal, got {result:?}");
    };
    assert_eq!(code, Reason::Value.code());

    let garbled = Proof::none().with(vendbox_pay::fake::FAKE_PAYMENT, b"just-one-word");
    let result = g
        .payments
        .pay(&garbled, charge(&g.payments), |_| async { Ok::<_, Failed>(Delivery::delivered(())) })
        .await;
    assert!(matches!(result, Err(PayError::Required { malformed: true, .. })), "{result:?}");
}

#[tokio::test]
async fn verification_that_cannot_be_done_now_keeps_the_proof_usable() {
    let g = gate().await;
    g.method.fail_next_verify(AdmitError::Unavailable("node down".into()));
    let proof = FakeMethod::proof("alice", "n1", PRICE);
    let work = |_| async { Ok::<_, Failed>(Delivery::delivered(())) };
    let result = g.payments.pay(&proof, charge(&g.payments), work).await;
    assert!(matches!(result, Err(PayError::Unavailable(_))), "{result:?}");
    g.payments
        .pay(&proof, charge(&g.payments), work)
        .await
        .expect("the same proof pays once the node is back");

    g.method.fail_next_verify(AdmitError::Rejected(Rejection::new(Reason::InsufficientFunds, "poor")));
    let result = g.payments.pay(&FakeMethod::proof("bob", "n1", PRICE), charge(&g.payments), work).await;
    let Err(PayError::Required { code, .. }) = result else { panic!("{result:?}") };
    assert_eq!(code, Reason::InsufficientFunds.code());
}

#[tokio::test]
async fn recovery_finishes_what_a_crash_left_reserved_by_asking_the_method() {
    let g = gate().await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let payments = g.payments.clone().with_clock(clock.clone());
    // Two payments reserved and never finished, as a crash between reserve and settle leaves them.
    let mut ids = Vec::new();
    for nonce in ["moved", "stayed"] {
        let proof = FakeMethod::proof("alice", nonce, PRICE);
        let admission = g
            .method
            .check(&proof, &charge(&payments).unwrap(), PaymentId::new_random(), clock.now())
            .unwrap();
        g.store.reserve_payment(&admission.payment).await.unwrap();
        ids.push(admission.payment.id);
    }
    g.method.recovers("moved", Recovered::Settled { reference: "0xabc".into() });

    let grace = Duration::from_secs(30);
    payments.finish_interrupted(grace, 50).await.unwrap();
    assert_eq!(
        state_of(g.store.as_ref(), ids[0]).await,
        PaymentState::Verified,
        "too young: maybe still live"
    );

    clock.advance(chrono::Duration::seconds(31));
    payments.finish_interrupted(grace, 50).await.unwrap();
    let moved = g.store.get_payment(ids[0]).await.unwrap().unwrap();
    assert_eq!((moved.state, moved.settlement_ref.as_deref()), (PaymentState::Settled, Some("0xabc")));
    assert_eq!(state_of(g.store.as_ref(), ids[1]).await, PaymentState::Voided);
    assert!(g.method.settled().is_empty(), "recovery never sends a payment");
}

#[test]
fn injected_faults_are_read_from_their_list() {
    use vendbox_service::Faults;
    let f = Faults::parse("pause-before-settle=2.5, fail-work,bogus");
    assert_eq!(f.pause_before_settle, Some(Duration::from_millis(2500)));
    assert!(f.fail_work);
    assert_eq!(f.pause_after_settle, None);
    assert_eq!(Faults::parse(""), Faults::default());
}
