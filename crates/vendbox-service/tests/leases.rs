//! The lease services over an in-process fake backend, a SQLite store in a temporary directory
//! and a clock the tests move: no root, no bubblewrap, no chain. Each test drives one rule of
//! `Boxes` and checks the lease in the store and the boxes on the backend, with exact codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use sqlx::Connection as _;
use vendbox_box::fake::FakeBackend;
use vendbox_box::{Backend as _, BoxId, BoxSpec, Usage};
use vendbox_core::{Capability, Lease, LeaseState, Offer, QuoteParams, QuoteTerms, SecretToken};
use vendbox_service::{Boxes, Clock as _, LeaseError, ManualClock, SshKey};
use vendbox_store::{SqliteStore, Store};

struct World {
    boxes: Boxes,
    backend: Arc<FakeBackend>,
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
    dir: tempfile::TempDir,
}

async fn world_with(capacity: Option<Usage>) -> World {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open_file(&dir.path().join("vendbox.db")).await.unwrap());
    let mut backend = FakeBackend::new(dir.path().join("sockets"));
    if let Some(capacity) = capacity {
        backend = backend.with_capacity(capacity);
    }
    let backend = Arc::new(backend);
    let clock = Arc::new(ManualClock::new(Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, 0).unwrap()));
    let boxes = Boxes::new(backend.clone(), store.clone()).with_clock(clock.clone());
    World { boxes, backend, store, clock, dir }
}

async fn world() -> World {
    world_with(None).await
}

/// A box offer: 512 MiB, minutes and actions of the buyer's choice.
fn offer() -> Offer {
    serde_json::from_value(serde_json::json!({
        "id": "test-box",
        "kind": "sandbox",
        "title": "A test box",
        "resources": { "vcpu": 1, "memory_mb": 512, "disk_gb": 1 },
        "duration": { "rule": "range", "min_minutes": 1, "max_minutes": 60 },
        "actions": { "rule": "range", "min": 1, "max": 10 },
        "price": { "base": "0.01" },
    }))
    .unwrap()
}

fn terms(minutes: u32, actions: u32) -> QuoteTerms {
    offer()
        .quote(&QuoteParams { minutes: Some(minutes), actions: Some(actions), ..QuoteParams::default() })
        .unwrap()
}

async fn buy(w: &World, minutes: u32, actions: u32) -> (Lease, String) {
    let made = w
        .boxes
        .provision(&offer(), &terms(minutes, actions), None, &[], &[Capability::Root, Capability::Read])
        .await
        .unwrap();
    let token = made.token(Capability::Root);
    (made.lease, token)
}

fn box_of(lease: &Lease) -> BoxId {
    BoxId::new(lease.box_id.as_deref().unwrap()).unwrap()
}

#[tokio::test]
async fn a_bought_box_is_active_from_the_clock_that_made_it_and_ends_at_its_expiry() {
    let w = world().await;
    let (lease, _) = buy(&w, 10, 3).await;
    assert_eq!(lease.state, LeaseState::Active);
    assert_eq!(lease.expires_at, Some(w.clock.now_ms() + chrono::Duration::minutes(10)));
    assert_eq!(w.backend.boxes().len(), 1);

    w.clock.advance(chrono::Duration::minutes(9));
    assert_eq!(w.boxes.expire_due().await.unwrap(), 0, "nothing is due a minute early");
    w.clock.advance(chrono::Duration::minutes(1));
    assert_eq!(w.boxes.expire_due().await.unwrap(), 1);
    let stored = w.store.get_lease(lease.id).await.unwrap().unwrap();
    assert_eq!(stored.state, LeaseState::Expired);
    assert_eq!(w.backend.destroyed(), vec![box_of(&lease)]);
    assert!(w.backend.boxes().is_empty());
    assert_eq!(w.boxes.check_usable(&stored).unwrap_err().code(), "box_expired");
}

#[tokio::test]
async fn an_active_lease_past_its_expiry_is_refused_before_the_worker_ends_it() {
    let w = world().await;
    let (lease, _) = buy(&w, 5, 3).await;
    w.clock.advance(chrono::Duration::minutes(5));
    assert_eq!(w.boxes.check_usable(&lease).unwrap_err().code(), "box_expired");
    assert_eq!(w.boxes.boxd(&lease).unwrap_err().code(), "box_expired");
}

#[tokio::test]
async fn tokens_open_what_their_capability_allows_and_nothing_else() {
    let w = world().await;
    let (lease, root) = buy(&w, 10, 3).await;
    let id = lease.id.to_string();
    let root = SecretToken::presented(root);
    assert_eq!(w.boxes.open(&id, Some(&root), Capability::Terminate).await.unwrap().id, lease.id);
    let code = |e: LeaseError| e.code();
    assert_eq!(code(w.boxes.open(&id, None, Capability::Read).await.unwrap_err()), "missing_token");
    let stranger = SecretToken::generate();
    assert_eq!(code(w.boxes.open(&id, Some(&stranger), Capability::Read).await.unwrap_err()), "bad_token");
    assert_eq!(
        code(w.boxes.open("not-a-lease", Some(&root), Capability::Read).await.unwrap_err()),
        "box_not_found"
    );
}

#[tokio::test]
async fn a_command_that_never_reached_boxd_gives_its_action_back() {
    let w = world().await;
    let (lease, _) = buy(&w, 10, 2).await;
    let command =
        vendbox_box::wire::ProcessSpec { cmd: "true".into(), ..vendbox_box::wire::ProcessSpec::default() };
    let refused = w.boxes.exec(&lease, command).await.unwrap_err();
    assert_eq!(refused.code(), "box_unavailable", "{refused}");
    let stored = w.store.get_lease(lease.id).await.unwrap().unwrap();
    assert_eq!(stored.actions_remaining, Some(2), "the fake's boxd is unreachable: the action comes back");
}

#[tokio::test]
async fn a_box_that_cannot_be_made_fails_its_lease_and_charges_nothing() {
    let w = world().await;
    w.backend.fail_next_create("no room on the host");
    let refused =
        w.boxes.provision(&offer(), &terms(5, 1), None, &[], &[Capability::Root]).await.unwrap_err();
    assert_eq!(refused.code(), "box_unavailable");
    assert!(refused.to_string().ends_with("nothing was charged"), "{refused}");
    let failed = w.store.leases_in_states(&[LeaseState::Failed]).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert!(failed[0].failure_reason.as_deref().unwrap().contains("no room on the host"));
}

#[tokio::test]
async fn a_box_past_the_hosts_capacity_is_sold_out_before_and_while_it_is_made() {
    let w = world_with(Some(Usage { boxes: 1, memory_mb: u64::MAX, pids: u64::MAX })).await;
    w.boxes.admit(&offer()).await.unwrap();
    buy(&w, 10, 1).await;
    assert_eq!(w.boxes.admit(&offer()).await.unwrap_err().code(), "sold_out");
    let refused =
        w.boxes.provision(&offer(), &terms(5, 1), None, &[], &[Capability::Root]).await.unwrap_err();
    assert_eq!(refused.code(), "sold_out");
    assert_eq!(w.backend.boxes().len(), 1, "no second box was made");
}

#[tokio::test]
async fn reconcile_destroys_orphans_and_fails_leases_whose_box_was_lost() {
    let w = world().await;
    let (kept, _) = buy(&w, 30, 3).await;
    let (lost, _) = buy(&w, 30, 3).await;
    w.backend.lose(&box_of(&lost));
    let orphan = BoxId::new("orphan-box").unwrap();
    let spec = BoxSpec { id: orphan.clone(), ..w.backend.boxes()[0].1.clone() };
    w.backend.create(&spec).await.unwrap();

    let report = w.boxes.reconcile().await.unwrap();
    assert_eq!((report.orphans_destroyed, report.leases_failed, report.boxes_kept), (1, 1, 1));
    assert!(w.backend.destroyed().contains(&orphan));
    assert_eq!(w.store.get_lease(kept.id).await.unwrap().unwrap().state, LeaseState::Active);
    let failed = w.store.get_lease(lost.id).await.unwrap().unwrap();
    assert_eq!(failed.state, LeaseState::Failed);
    assert!(failed.failure_reason.unwrap().contains("lost"));
}

#[tokio::test]
async fn extensions_move_an_active_lease_once() {
    let w = world().await;
    let (lease, _) = buy(&w, 10, 3).await;
    let extension = w.boxes.extension(&lease, 15).unwrap();
    assert_eq!(Some(extension.until), lease.expires_at.map(|at| at + chrono::Duration::minutes(15)));
    w.boxes.apply(extension, None).await.unwrap();
    assert_eq!(w.store.get_lease(lease.id).await.unwrap().unwrap().expires_at, Some(extension.until));
    // Applied twice, the second finds the expiry moved: refused, nothing changes.
    assert_eq!(w.boxes.apply(extension, None).await.unwrap_err().code(), "not_active");
    let ended = w.boxes.terminate(&lease).await.unwrap();
    assert_eq!(ended.state, LeaseState::Terminated);
    assert_eq!(w.boxes.extension(&ended, 5).unwrap_err().code(), "not_active");
}

#[test]
fn ssh_keys_are_checked_and_fingerprinted() {
    let key = SshKey::parse(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test",
        "ssh_public_key",
    )
    .unwrap();
    assert!(key.fingerprint.starts_with("SHA256:"), "{}", key.fingerprint);
    let refused = SshKey::parse("ssh-ed25519 AAAA", "ssh_public_key").unwrap_err();
    assert_eq!((refused.code(), refused.field()), ("bad_ssh_key", Some("ssh_public_key")));
}

#[tokio::test]
async fn a_purchase_cut_off_while_its_box_is_made_leaves_no_lease_and_no_box() {
    let w = world().await;
    w.backend.create_takes(std::time::Duration::from_secs(30));
    let (offer, terms) = (offer(), terms(5, 1));
    let purchase = w.boxes.provision(&offer, &terms, None, &[], &[Capability::Root]);
    let cut = tokio::time::timeout(std::time::Duration::from_millis(200), purchase).await;
    assert!(cut.is_err(), "the purchase was still making its box");
    // The clean-up runs in a task of its own: wait for it, bounded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let live = w.store.leases_in_states(&[LeaseState::Provisioning, LeaseState::Active]).await.unwrap();
        if live.is_empty() && w.backend.boxes().is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still live: {live:?}, boxes: {:?}", w.backend.boxes());
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let failed = w.store.leases_in_states(&[LeaseState::Failed]).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert!(failed[0].failure_reason.as_deref().unwrap().contains("cut off"), "{failed:?}");
    assert_eq!(w.backend.destroyed().len(), 1);
}

#[tokio::test]
async fn a_purchase_whose_lease_cannot_be_written_down_leaves_no_box() {
    let w = world().await;
    // The lease is written down while its box is made. A second connection to the store's file
    // makes that write fail, as a full or broken disk would.
    let file = w.dir.path().join("vendbox.db");
    let db = sqlx::SqlitePool::connect(&format!("sqlite://{}", file.display())).await.unwrap();
    sqlx::query("CREATE TRIGGER refuse_leases BEFORE INSERT ON leases BEGIN SELECT RAISE(ABORT, 'the disk is full'); END")
        .execute(&db)
        .await
        .unwrap();
    // The write fails while the box is still being made.
    w.backend.create_takes(std::time::Duration::from_millis(300));
    let refused =
        w.boxes.provision(&offer(), &terms(5, 1), None, &[], &[Capability::Root]).await.unwrap_err();
    assert!(refused.to_string().contains("the disk is full"), "{refused}");
    // The box made meanwhile is destroyed (in a task of its own: wait for it, bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !w.backend.boxes().is_empty() {
        assert!(std::time::Instant::now() < deadline, "left behind: {:?}", w.backend.boxes());
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(w.backend.destroyed().len(), 1);
    let states = [LeaseState::Provisioning, LeaseState::Active, LeaseState::Failed];
    assert!(w.store.leases_in_states(&states).await.unwrap().is_empty());
    db.close().await;
}

#[tokio::test]
async fn the_sweep_leaves_a_box_whose_purchase_is_still_writing_its_lease() {
    // On PostgreSQL, where the sweep's read of the leases does not queue behind the purchase's
    // write as it does on SQLite's one connection.
    let Some(schema) = vendbox_store::testkit::PostgresSchema::create().await else { return };
    let store: Arc<dyn Store> = Arc::new(schema.store().await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(FakeBackend::new(dir.path().join("sockets")));
    let boxes = Arc::new(Boxes::new(backend.clone(), store.clone()));
    // Another session holds the leases table against writes (reads go on): the purchase's lease
    // waits to be written down while its box already exists.
    let mut blocker = sqlx::PgConnection::connect_with(&schema.options()).await.unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("LOCK TABLE leases IN EXCLUSIVE MODE").execute(&mut blocker).await.unwrap();
    let buying = tokio::spawn({
        let boxes = boxes.clone();
        async move { boxes.provision(&offer(), &terms(5, 1), None, &[], &[Capability::Root]).await }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while backend.boxes().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the box was never made");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // The box is made and no lease is written down yet: the sweep must not take it for an
    // orphan (nor may reconciliation, which runs while vendbox serves).
    assert!(store.leases_in_states(&[LeaseState::Provisioning]).await.unwrap().is_empty());
    assert_eq!(boxes.sweep().await.unwrap(), 0);
    assert_eq!(boxes.reconcile().await.unwrap().orphans_destroyed, 0);
    assert!(backend.destroyed().is_empty(), "a box being bought was destroyed");
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    let made = buying.await.unwrap().unwrap();
    assert_eq!(made.lease.state, LeaseState::Active);
    // Once bought, the box is its lease's, and the next sweep keeps it too.
    assert_eq!(boxes.sweep().await.unwrap(), 0);
    assert_eq!(backend.boxes().len(), 1);
    assert!(backend.destroyed().is_empty());
    drop(blocker);
    schema.drop_schema().await;
}

#[tokio::test]
async fn reconciliation_while_serving_leaves_a_purchase_under_way_to_itself() {
    let w = Arc::new(world().await);
    w.backend.create_takes(std::time::Duration::from_millis(500));
    let buying = tokio::spawn({
        let w = w.clone();
        async move { w.boxes.provision(&offer(), &terms(5, 1), None, &[], &[Capability::Root]).await }
    });
    // The lease is written down `provisioning` while the box is made.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while w.store.leases_in_states(&[LeaseState::Provisioning]).await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the lease was never written down");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(!w.backend.boxes().is_empty());
    // A vendbox that just started reconciles while it serves: this lease is no leftover of a
    // stop, and its box is no orphan.
    let report = w.boxes.reconcile().await.unwrap();
    assert_eq!((report.leases_failed, report.orphans_destroyed), (0, 0), "{report:?}");
    let made = buying.await.unwrap().unwrap();
    assert_eq!(made.lease.state, LeaseState::Active);
    assert!(w.backend.destroyed().is_empty());
    let active = w.store.leases_in_states(&[LeaseState::Active]).await.unwrap();
    assert_eq!(active.len(), 1);
    // Afterwards it is an ordinary live box, which the next reconciliation keeps.
    let report = w.boxes.reconcile().await.unwrap();
    assert_eq!(report.boxes_kept, 1, "{report:?}");
}

/// A settled x402 payment of `amount` by `payer`, as the gate leaves one.
async fn settled_payment(w: &World, payer: &str, amount: u64) -> vendbox_core::PaymentId {
    use vendbox_core::{Payment, PaymentId, PaymentMethod, PaymentState, ReplayKey, Usdc};
    let now = w.clock.now();
    let payment = Payment {
        id: PaymentId::new_random(),
        quote_id: None,
        method: PaymentMethod::X402ExactV2,
        replay_key: ReplayKey::new("eip155:31337", "0xusdc", payer, &PaymentId::new_random().to_string()),
        amount: Usdc(amount),
        state: PaymentState::Verified,
        settlement_ref: None,
        void_reason: None,
        proof: None,
        purchase: Some("a box".into()),
        created_at: now,
        updated_at: now,
    };
    w.store.reserve_payment(&payment).await.unwrap();
    let settled = vendbox_store::PaymentOutcome::Settled { settlement_ref: "0xtx".into() };
    w.store.finish_payment(payment.id, &settled, now).await.unwrap();
    payment.id
}

/// A box offer sold by the minute: 0.01 USDC plus 0.001 USDC a minute.
fn per_minute_offer() -> Offer {
    let mut offer = offer();
    offer.price =
        serde_json::from_value(serde_json::json!({ "base": "0.01", "per_minute": "0.001" })).unwrap();
    offer
}

#[tokio::test]
async fn an_early_termination_refunds_unused_whole_minutes_once() {
    let mut w = world().await;
    let offer = per_minute_offer();
    w.boxes = std::mem::replace(&mut w.boxes, world().await.boxes).with_refunds(std::slice::from_ref(&offer));
    let payer = vendbox_core::AccountAddress::parse(&format!("0x{:040x}", 7), "payer").unwrap();
    // 10 minutes at 0.001 and the base: 0.02 paid.
    let terms =
        offer.quote(&QuoteParams { minutes: Some(10), actions: Some(1), ..QuoteParams::default() }).unwrap();
    let paid = settled_payment(&w, payer.as_str(), 20_000).await;
    let made = w.boxes.provision(&offer, &terms, Some(paid), &[], &[Capability::Root]).await.unwrap();
    // 3 minutes and 30 seconds used: 6 whole minutes unused, 0.006 back.
    w.clock.advance(chrono::Duration::seconds(210));
    let ended = w.boxes.terminate(&made.lease).await.unwrap();
    assert_eq!(ended.state, LeaseState::Terminated);
    assert_eq!(w.store.balance(&payer).await.unwrap(), vendbox_core::Usdc(6_000));
    let entries = w.store.ledger(&payer, 10).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].kind, vendbox_core::LedgerKind::Refund);
    assert_eq!(entries[0].reference, made.lease.id.to_string(), "the entry names the lease");
    // Twice: nothing more, whether through terminate or the refund itself.
    w.boxes.terminate(&ended).await.unwrap();
    w.boxes.terminate(&made.lease).await.unwrap();
    assert_eq!(w.store.balance(&payer).await.unwrap(), vendbox_core::Usdc(6_000));
}

#[tokio::test]
async fn the_refund_is_booked_with_the_end_of_the_lease_even_when_what_follows_fails() {
    let mut w = world().await;
    let offer = per_minute_offer();
    w.boxes = std::mem::replace(&mut w.boxes, world().await.boxes).with_refunds(std::slice::from_ref(&offer));
    let payer = vendbox_core::AccountAddress::parse(&format!("0x{:040x}", 9), "payer").unwrap();
    let terms =
        offer.quote(&QuoteParams { minutes: Some(10), actions: Some(1), ..QuoteParams::default() }).unwrap();
    let paid = settled_payment(&w, payer.as_str(), 20_000).await;
    let made = w.boxes.provision(&offer, &terms, Some(paid), &[], &[Capability::Root]).await.unwrap();
    // The lease ends and then destroying its box fails (the refund used to be booked after it,
    // and was lost with it, as with a crash there): the refund is there, with the end.
    w.clock.advance(chrono::Duration::seconds(90));
    w.backend.fail_next_destroy("boxd went away");
    assert!(w.boxes.terminate(&made.lease).await.is_err());
    let lease = w.store.get_lease(made.lease.id).await.unwrap().unwrap();
    assert_eq!(lease.state, LeaseState::Terminated);
    let entries = w.store.ledger(&payer, 10).await.unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].kind, vendbox_core::LedgerKind::Refund);
    assert_eq!(entries[0].reference, made.lease.id.to_string());
    assert_eq!(w.store.balance(&payer).await.unwrap(), vendbox_core::Usdc(8_000), "8 whole minutes unused");
    // Terminated again (the box is destroyed this time): no second refund.
    w.boxes.terminate(&lease).await.unwrap();
    w.boxes.terminate(&made.lease).await.unwrap();
    assert_eq!(w.store.ledger(&payer, 10).await.unwrap().len(), 1);
    assert_eq!(w.store.balance(&payer).await.unwrap(), vendbox_core::Usdc(8_000));
}

#[tokio::test]
async fn a_refund_never_passes_what_was_paid_and_is_off_when_the_operator_says_so() {
    let w = world().await;
    let offer = per_minute_offer();
    let terms =
        offer.quote(&QuoteParams { minutes: Some(10), actions: Some(1), ..QuoteParams::default() }).unwrap();
    // Refunds off (no `with_refunds`): nothing.
    let payer = vendbox_core::AccountAddress::parse(&format!("0x{:040x}", 8), "payer").unwrap();
    let paid = settled_payment(&w, payer.as_str(), 20_000).await;
    let made = w.boxes.provision(&offer, &terms, Some(paid), &[], &[Capability::Root]).await.unwrap();
    w.boxes.terminate(&made.lease).await.unwrap();
    assert_eq!(w.store.balance(&payer).await.unwrap(), vendbox_core::Usdc::ZERO);
    assert!(w.store.ledger(&payer, 10).await.unwrap().is_empty());
    // On, for a lease whose payment came to less than its unused time (the price went up since):
    // what was paid, no more.
    let boxes = Boxes::new(w.backend.clone(), w.store.clone())
        .with_clock(w.clock.clone())
        .with_refunds(std::slice::from_ref(&offer));
    let paid = settled_payment(&w, payer.as_str(), 4_000).await;
    let made = boxes.provision(&offer, &terms, Some(paid), &[], &[Capability::Root]).await.unwrap();
    boxes.terminate(&made.lease).await.unwrap();
    assert_eq!(w.store.balance(&payer).await.unwrap(), vendbox_core::Usdc(4_000));
}
