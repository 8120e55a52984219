//! The store test suite: every case runs against SQLite and against PostgreSQL.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod common;

use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use vendbox_core::{
    AccountAddress, Capability, FencingToken, Lease, LeaseId, LeaseState, LedgerKind, LockKey, Offer,
    Payment, PaymentId, PaymentMethod, PaymentState, Quote, QuoteParams, ReplayKey, SecretToken, Usdc,
};
use vendbox_store::{
    LockAcquisition, LockRefusal, LockRelease, LockRenewal, PaymentOutcome, SqliteStore, Store, StoreError,
};

fn t0() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap()
}

fn offer() -> Offer {
    toml::from_str(
        r#"
        id = "h3retik-custom"
        kind = "sandbox"
        title = "Custom"
        duration = { rule = "range", min_minutes = 1, max_minutes = 360 }
        actions = { rule = "range", min = 1, max = 300 }
        regions = ["auto", "us"]
        price = { per_minute = "0.04", per_action = "0.01" }
        "#,
    )
    .unwrap()
}

fn quote(at: chrono::DateTime<Utc>) -> Quote {
    let params = QuoteParams { minutes: Some(20), actions: Some(12), region: Some("us".into()), image: None };
    let terms = offer().quote(&params).unwrap();
    Quote::new(offer().id, terms, at)
}

fn payment(quote: Option<&Quote>, nonce: &str) -> Payment {
    Payment {
        id: PaymentId::new_random(),
        quote_id: quote.map(|q| q.id),
        method: PaymentMethod::X402ExactV2,
        replay_key: ReplayKey::new("eip155:31337", "0xToken", "0xPayer", nonce),
        amount: Usdc(920_000),
        state: PaymentState::Verified,
        settlement_ref: None,
        void_reason: None,
        proof: Some("{\"signature\":\"0x01\"}".into()),
        purchase: None,
        created_at: t0(),
        updated_at: t0(),
    }
}

fn lease(actions: Option<u32>) -> Lease {
    Lease {
        id: LeaseId::new_random(),
        offer_id: offer().id,
        quote_id: None,
        payment_id: None,
        state: LeaseState::Pending,
        region: Some("us".into()),
        image: None,
        box_id: None,
        created_at: t0(),
        expires_at: Some(t0() + Duration::minutes(20)),
        actions_remaining: actions,
        failure_reason: None,
    }
}

fn account(n: u8) -> AccountAddress {
    AccountAddress::parse(&format!("0x{}", format!("{n:02x}").repeat(20)), "account").unwrap()
}

async fn quotes_round_trip_and_expire(store: Arc<dyn Store>) {
    let q = quote(t0());
    store.insert_quote(&q).await.unwrap();
    assert_eq!(store.get_quote(q.id).await.unwrap(), Some(q.clone()));
    assert_eq!(store.get_quote(vendbox_core::QuoteId::new_random()).await.unwrap(), None);

    // An expired quote that a payment refers to is kept; an unreferenced one goes.
    let paid = quote(t0());
    store.insert_quote(&paid).await.unwrap();
    store.reserve_payment(&payment(Some(&paid), "0x01")).await.unwrap();
    let later = t0() + Duration::hours(1);
    assert_eq!(store.delete_expired_quotes(t0()).await.unwrap(), 0);
    assert_eq!(store.delete_expired_quotes(later).await.unwrap(), 1);
    assert_eq!(store.get_quote(q.id).await.unwrap(), None);
    assert!(store.get_quote(paid.id).await.unwrap().is_some());
}

async fn replay_keys_pay_once(store: Arc<dyn Store>) {
    let first = payment(None, "0xABC");
    store.reserve_payment(&first).await.unwrap();
    // Same key in another case, another payment id: refused.
    let again = payment(None, "0xabc");
    assert!(matches!(store.reserve_payment(&again).await, Err(StoreError::ReplayKeyTaken)));
    // Still refused after the first one is voided: an authorization is good once, ever.
    store
        .finish_payment(first.id, &PaymentOutcome::Voided { reason: "work failed".into() }, t0())
        .await
        .unwrap();
    assert!(matches!(store.reserve_payment(&again).await, Err(StoreError::ReplayKeyTaken)));
    // Another nonce is another key.
    store.reserve_payment(&payment(None, "0xabd")).await.unwrap();
}

async fn concurrent_reservations_of_one_key_admit_one(store: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move { store.reserve_payment(&payment(None, "0xfeed")).await }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(StoreError::ReplayKeyTaken) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(ok, 1);
}

async fn payments_settle_or_void_once(store: Arc<dyn Store>) {
    let p = payment(None, "0x02");
    store.reserve_payment(&p).await.unwrap();
    assert_eq!(store.get_payment(p.id).await.unwrap(), Some(p.clone()));
    let pending =
        store.payments_in_state(PaymentState::Verified, t0() + Duration::seconds(1), 10).await.unwrap();
    assert_eq!(pending.iter().map(|x| x.id).collect::<Vec<_>>(), vec![p.id]);

    let settled = store
        .finish_payment(
            p.id,
            &PaymentOutcome::Settled { settlement_ref: "0xtx".into() },
            t0() + Duration::seconds(5),
        )
        .await
        .unwrap();
    assert_eq!(settled.state, PaymentState::Settled);
    assert_eq!(settled.settlement_ref.as_deref(), Some("0xtx"));
    assert_eq!(settled.updated_at, t0() + Duration::seconds(5));

    // A second finish, either way, is refused and changes nothing.
    let again = store.finish_payment(p.id, &PaymentOutcome::Voided { reason: "late".into() }, t0()).await;
    assert!(matches!(again, Err(StoreError::Rule(_))), "{again:?}");
    assert_eq!(store.get_payment(p.id).await.unwrap().unwrap().state, PaymentState::Settled);
    let missing = store
        .finish_payment(PaymentId::new_random(), &PaymentOutcome::Voided { reason: "x".into() }, t0())
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound(_))));
    assert!(
        store
            .payments_in_state(PaymentState::Verified, t0() + Duration::hours(1), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn leases_move_by_compare_and_set(store: Arc<dyn Store>) {
    let mut l = lease(Some(3));
    let root = SecretToken::generate();
    let read = SecretToken::generate();
    store
        .insert_lease(&l, &[(Capability::Root, root.hash()), (Capability::Read, read.hash())])
        .await
        .unwrap();
    assert_eq!(store.get_lease(l.id).await.unwrap(), Some(l.clone()));

    let tokens = store.lease_tokens(l.id).await.unwrap();
    let matching: Vec<_> = tokens.iter().filter(|(_, h)| h.verify(&read)).map(|(c, _)| *c).collect();
    assert_eq!(matching, vec![Capability::Read]);
    assert!(!tokens.iter().any(|(_, h)| h.verify(&SecretToken::generate())));

    let stale = l.clone();
    l.transition(LeaseState::Provisioning).unwrap();
    store.update_lease(&l, LeaseState::Pending, t0()).await.unwrap();
    l.transition(LeaseState::Active).unwrap();
    l.box_id = Some("box-1".into());
    store.update_lease(&l, LeaseState::Provisioning, t0()).await.unwrap();
    assert_eq!(store.get_lease(l.id).await.unwrap(), Some(l.clone()));

    // A writer holding an old view loses the compare-and-set.
    let mut from_stale = stale.clone();
    from_stale.transition(LeaseState::Failed).unwrap();
    assert!(matches!(
        store.update_lease(&from_stale, LeaseState::Pending, t0()).await,
        Err(StoreError::Conflict(_))
    ));
    // An illegal move is refused before touching the database.
    let mut backwards = l.clone();
    backwards.state = LeaseState::Pending;
    assert!(matches!(
        store.update_lease(&backwards, LeaseState::Active, t0()).await,
        Err(StoreError::Rule(_))
    ));
    assert_eq!(store.get_lease(l.id).await.unwrap().unwrap().state, LeaseState::Active);

    let active = store.leases_in_states(&[LeaseState::Active, LeaseState::Provisioning]).await.unwrap();
    assert_eq!(active.iter().map(|x| x.id).collect::<Vec<_>>(), vec![l.id]);
    assert!(store.leases_in_states(&[LeaseState::Expired]).await.unwrap().is_empty());
}

async fn ssh_keys_find_their_leases_newest_first(store: Arc<dyn Store>) {
    let older = lease(None);
    let mut newer = lease(None);
    newer.created_at = older.created_at + Duration::minutes(1);
    let other = lease(None);
    for l in [&older, &newer, &other] {
        store.insert_lease(l, &[]).await.unwrap();
    }
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample agent@box";
    store.add_lease_ssh_key(older.id, "SHA256:one", key).await.unwrap();
    store.add_lease_ssh_key(newer.id, "SHA256:one", key).await.unwrap();
    store.add_lease_ssh_key(newer.id, "SHA256:one", key).await.unwrap();
    store.add_lease_ssh_key(other.id, "SHA256:two", key).await.unwrap();
    let found: Vec<_> = store.leases_for_ssh_key("SHA256:one").await.unwrap().iter().map(|l| l.id).collect();
    assert_eq!(found, vec![newer.id, older.id]);
    assert!(store.leases_for_ssh_key("SHA256:none").await.unwrap().is_empty());
}

async fn machine_leases_are_found_by_token_and_id_prefix_and_extend_by_compare_and_set(
    store: Arc<dyn Store>,
) {
    let mut l = lease(None);
    let read = SecretToken::generate();
    store.insert_lease(&l, &[(Capability::Read, read.hash())]).await.unwrap();
    assert_eq!(store.lease_for_token(&read.hash()).await.unwrap(), Some((l.id, Capability::Read)));
    assert_eq!(store.lease_for_token(&SecretToken::generate().hash()).await.unwrap(), None);
    let text = l.id.to_string();
    assert_eq!(store.lease_by_id_prefix(&text[..18]).await.unwrap().map(|x| x.id), Some(l.id));
    assert_eq!(store.lease_by_id_prefix("zz'--").await.unwrap(), None);
    assert_eq!(store.lease_by_id_prefix("").await.unwrap(), None);

    let expires = l.expires_at.unwrap();
    // Only an active lease at the expected expiry moves.
    assert!(matches!(
        store.extend_lease(l.id, expires, expires + Duration::minutes(30), None, t0()).await,
        Err(StoreError::Conflict(_))
    ));
    for (next, from) in
        [(LeaseState::Provisioning, LeaseState::Pending), (LeaseState::Active, LeaseState::Provisioning)]
    {
        l.transition(next).unwrap();
        store.update_lease(&l, from, t0()).await.unwrap();
    }
    let later = expires + Duration::minutes(30);
    let paid = PaymentId::new_random();
    assert_eq!(store.extend_lease(l.id, expires, later, Some(paid), t0()).await.unwrap(), 1);
    assert!(matches!(
        store.extend_lease(l.id, expires, later, None, t0()).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.get_lease(l.id).await.unwrap().unwrap().expires_at, Some(later));
    assert_eq!(store.lease_renewals(l.id).await.unwrap(), (1, Some(paid)));

    // A request id is claimed once; its answer is kept for the next sender.
    assert_eq!(store.claim_request("req-1", "h1", t0()).await.unwrap(), None);
    assert_eq!(store.claim_request("req-1", "h1", t0()).await.unwrap(), Some(("h1".into(), None)));
    store.finish_request("req-1", Some(l.id), "{\"ok\":true}").await.unwrap();
    assert_eq!(
        store.claim_request("req-1", "h2", t0()).await.unwrap(),
        Some(("h1".into(), Some("{\"ok\":true}".into())))
    );
    assert_eq!(store.claim_request("req-2", "h1", t0()).await.unwrap(), None);
    // Read without claiming: what a request left, and nothing for one never sent.
    assert_eq!(store.request_claim("req-2").await.unwrap(), Some(("h1".into(), None)));
    assert_eq!(store.request_claim("req-1").await.unwrap().unwrap().1.as_deref(), Some("{\"ok\":true}"));
    assert_eq!(store.request_claim("req-9").await.unwrap(), None);
    store.release_request("req-2").await.unwrap();
    assert_eq!(store.claim_request("req-2", "h1", t0()).await.unwrap(), None);
    // A claim left without an answer (a stop mid-request) is taken over once it is stale; an
    // answered one never is.
    let later = t0() + Duration::minutes(11);
    assert_eq!(
        store.claim_request("req-2", "h1", t0() + Duration::minutes(5)).await.unwrap(),
        Some(("h1".into(), None))
    );
    assert_eq!(store.claim_request("req-2", "h3", later).await.unwrap(), None);
    assert!(store.claim_request("req-1", "h1", later).await.unwrap().unwrap().1.is_some());
}

async fn actions_are_spent_atomically(store: Arc<dyn Store>) {
    let mut l = lease(Some(5));
    store.insert_lease(&l, &[]).await.unwrap();
    // Not active yet: nothing to spend.
    assert!(matches!(store.spend_lease_action(l.id, t0()).await, Err(StoreError::Conflict(_))));
    for (next, from) in
        [(LeaseState::Provisioning, LeaseState::Pending), (LeaseState::Active, LeaseState::Provisioning)]
    {
        l.transition(next).unwrap();
        store.update_lease(&l, from, t0()).await.unwrap();
    }
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move { store.spend_lease_action(l.id, t0()).await }));
    }
    let (mut spent, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(Some(_)) => spent += 1,
            Err(StoreError::ActionsExhausted) => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((spent, refused), (5, 7));
    assert_eq!(store.get_lease(l.id).await.unwrap().unwrap().actions_remaining, Some(0));
    // An action spent on a command that could not run is given back, once per refund.
    store.refund_lease_action(l.id, t0()).await.unwrap();
    assert_eq!(store.get_lease(l.id).await.unwrap().unwrap().actions_remaining, Some(1));
    assert_eq!(store.spend_lease_action(l.id, t0()).await.unwrap(), Some(0));

    let mut unlimited = lease(None);
    store.insert_lease(&unlimited, &[]).await.unwrap();
    for (next, from) in
        [(LeaseState::Provisioning, LeaseState::Pending), (LeaseState::Active, LeaseState::Provisioning)]
    {
        unlimited.transition(next).unwrap();
        store.update_lease(&unlimited, from, t0()).await.unwrap();
    }
    assert_eq!(store.spend_lease_action(unlimited.id, t0()).await.unwrap(), None);
    store.refund_lease_action(unlimited.id, t0()).await.unwrap();
    assert_eq!(store.get_lease(unlimited.id).await.unwrap().unwrap().actions_remaining, None);
    // Past its window a lease has nothing to spend, budget or not.
    let late = t0() + Duration::minutes(21);
    assert!(matches!(store.spend_lease_action(unlimited.id, late).await, Err(StoreError::Conflict(_))));
    assert!(matches!(
        store.spend_lease_action(LeaseId::new_random(), t0()).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn ledger_balances_never_go_negative(store: Arc<dyn Store>) {
    let a = account(1);
    assert_eq!(store.balance(&a).await.unwrap(), Usdc::ZERO);
    store.append_ledger(&a, LedgerKind::TopUp, Usdc(1_000), "pay-1", t0()).await.unwrap();
    let charge = store.append_ledger(&a, LedgerKind::Charge, Usdc(300), "lease-1", t0()).await.unwrap();
    assert_eq!(charge.delta_atomic, -300);
    // Booking the same reference again is a no-op that returns the first entry.
    let again = store.append_ledger(&a, LedgerKind::Charge, Usdc(300), "lease-1", t0()).await.unwrap();
    assert_eq!(again, charge);
    assert_eq!(store.balance(&a).await.unwrap(), Usdc(700));
    let too_much = store.append_ledger(&a, LedgerKind::Charge, Usdc(701), "lease-2", t0()).await;
    assert!(matches!(
        too_much,
        Err(StoreError::InsufficientBalance { balance: Usdc(700), needed: Usdc(701) })
    ));
    assert_eq!(store.balance(&a).await.unwrap(), Usdc(700));
    assert_eq!(store.balance(&account(2)).await.unwrap(), Usdc::ZERO);
    let entries = store.ledger(&a, 10).await.unwrap();
    assert_eq!(entries.iter().map(|e| e.delta_atomic).collect::<Vec<_>>(), vec![-300, 1_000]);
}

async fn concurrent_charges_cannot_overdraw(store: Arc<dyn Store>) {
    let a = account(3);
    store.append_ledger(&a, LedgerKind::TopUp, Usdc(1_000), "pay", t0()).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let (store, a) = (store.clone(), a.clone());
        tasks.push(tokio::spawn(async move {
            store.append_ledger(&a, LedgerKind::Charge, Usdc(300), &format!("c{i}"), t0()).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StoreError::InsufficientBalance { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(ok, 3);
    assert_eq!(store.balance(&a).await.unwrap(), Usdc(100));
}

fn key(text: &str) -> LockKey {
    LockKey::parse(text).unwrap()
}

const LONG: std::time::Duration = std::time::Duration::from_mins(1);

async fn locks_grant_one_holder_and_fence_each_grant(store: Arc<dyn Store>) {
    let k = key("bounty:create:abc");
    let (alice, bob) = (SecretToken::generate(), SecretToken::generate());
    let meta = serde_json::json!({"case": 7});
    let LockAcquisition::Acquired(first) =
        store.acquire_lock(&k, Some("alice"), Some(&meta), LONG, &alice.hash()).await.unwrap()
    else {
        panic!("a free key is granted")
    };
    assert_eq!(first.fencing_token, FencingToken(1));
    assert_eq!(first.metadata, Some(meta));
    assert!(first.expires_at > first.acquired_at);

    // Held: Bob learns who holds it and until when, and gets nothing.
    let held = store.acquire_lock(&k, Some("bob"), None, LONG, &bob.hash()).await.unwrap();
    assert_eq!(held, LockAcquisition::Held(first.clone()));
    assert_eq!(store.get_lock(&k).await.unwrap(), Some(first.clone()));

    // Only Alice's token renews or releases.
    let not_holder = LockRenewal::Refused(LockRefusal::NotHolder);
    assert_eq!(store.renew_lock(&k, &bob.hash(), Some(LONG)).await.unwrap(), not_holder);
    assert_eq!(
        store.release_lock(&k, &bob.hash()).await.unwrap(),
        LockRelease::Refused(LockRefusal::NotHolder)
    );
    assert_eq!(store.get_lock(&k).await.unwrap(), Some(first.clone()), "refusals change nothing");
    let LockRenewal::Renewed(renewed) = store.renew_lock(&k, &alice.hash(), Some(LONG * 2)).await.unwrap()
    else {
        panic!("the holder renews")
    };
    assert!(renewed.expires_at > first.expires_at);
    assert_eq!(renewed.ttl_ms, 120_000);
    assert!(renewed.renewed_at() >= first.acquired_at);
    assert_eq!(renewed.fencing_token, first.fencing_token, "renewing keeps the grant");
    // With no TTL, a renewal lasts as long as the last one did.
    let LockRenewal::Renewed(again) = store.renew_lock(&k, &alice.hash(), None).await.unwrap() else {
        panic!("the holder renews")
    };
    assert_eq!(again.ttl_ms, 120_000);
    let LockRelease::Released(released) = store.release_lock(&k, &alice.hash()).await.unwrap() else {
        panic!("the holder releases")
    };
    let released_at = released.released_at.expect("a release is timed");
    assert!(released_at >= first.acquired_at && released_at < again.expires_at);
    assert_eq!(
        store.release_lock(&k, &alice.hash()).await.unwrap(),
        LockRelease::AlreadyReleased(released.clone()),
        "release is idempotent"
    );
    assert_eq!(
        store.renew_lock(&k, &alice.hash(), None).await.unwrap(),
        LockRenewal::Refused(LockRefusal::Released),
        "a released grant cannot be renewed back"
    );
    assert_eq!(store.get_lock(&k).await.unwrap(), None);

    let LockAcquisition::Acquired(second) =
        store.acquire_lock(&k, Some("bob"), None, LONG, &bob.hash()).await.unwrap()
    else {
        panic!("a released key is granted")
    };
    assert_eq!(second.fencing_token, FencingToken(2));
    assert_eq!(second.metadata, None);
    assert!(second.acquired_at >= released_at, "a grant starts no earlier than the release before it");
    // Alice's old token is now stale: it touches nothing of Bob's.
    assert_eq!(
        store.release_lock(&k, &alice.hash()).await.unwrap(),
        LockRelease::Refused(LockRefusal::NotHolder)
    );
    assert_eq!(store.get_lock(&k).await.unwrap(), Some(second.clone()));
    // Other keys have their own sequence.
    let other = store.acquire_lock(&key("other-key"), None, None, LONG, &alice.hash()).await.unwrap();
    assert!(matches!(other, LockAcquisition::Acquired(l) if l.fencing_token == FencingToken(1)));
}

async fn lapsed_locks_pass_on_and_stale_holders_touch_nothing(store: Arc<dyn Store>) {
    let k = key("x-mention:42");
    let (old, new) = (SecretToken::generate(), SecretToken::generate());
    let short = std::time::Duration::from_secs(1);
    let asked = std::time::Instant::now();
    let LockAcquisition::Acquired(first) =
        store.acquire_lock(&k, Some("old"), None, short, &old.hash()).await.unwrap()
    else {
        panic!("a free key is granted")
    };
    // Held at first: the store's clock moved no further than ours since we asked, so unless a full
    // TTL passed here the grant must still be shown.
    let shown = store.get_lock(&k).await.unwrap();
    assert!(
        shown.as_ref() == Some(&first) || asked.elapsed() >= short,
        "a grant is shown as held within its TTL: {shown:?}"
    );
    // The lapse is judged by the store's clock: ask it until it stops showing the grant.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while let Some(held) = store.get_lock(&k).await.unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "the store still shows a grant of {short:?} as held 10 s later: {held:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The lapsed holder cannot renew or release its way back.
    let lapsed = LockRenewal::Refused(LockRefusal::Lapsed);
    assert_eq!(store.renew_lock(&k, &old.hash(), Some(LONG)).await.unwrap(), lapsed);
    assert_eq!(store.release_lock(&k, &old.hash()).await.unwrap(), LockRelease::Refused(LockRefusal::Lapsed));
    let LockAcquisition::Acquired(next) =
        store.acquire_lock(&k, Some("new"), None, LONG, &new.hash()).await.unwrap()
    else {
        panic!("a lapsed key is granted")
    };
    assert_eq!(next.fencing_token, FencingToken(2));
    // The stale holder's release and renew change nothing.
    assert_eq!(
        store.release_lock(&k, &old.hash()).await.unwrap(),
        LockRelease::Refused(LockRefusal::NotHolder)
    );
    assert_eq!(
        store.renew_lock(&k, &old.hash(), Some(LONG)).await.unwrap(),
        LockRenewal::Refused(LockRefusal::NotHolder)
    );
    assert_eq!(store.get_lock(&k).await.unwrap(), Some(next));
}

async fn concurrent_acquisitions_grant_exactly_one(store: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let token = SecretToken::generate();
            store.acquire_lock(&key("one-key"), Some(&format!("agent-{i}")), None, LONG, &token.hash()).await
        }));
    }
    let mut granted = Vec::new();
    for t in tasks {
        match t.await.unwrap().unwrap() {
            LockAcquisition::Acquired(lock) => granted.push(lock),
            LockAcquisition::Held(lock) => assert_eq!(lock.fencing_token, FencingToken(1)),
        }
    }
    assert_eq!(granted.len(), 1);
    assert_eq!(granted[0].fencing_token, FencingToken(1));
}

/// Operations that arrive together share a batch, and in it shared statements (one for the
/// acquisitions of distinct keys, one for the releases): each is answered as it would be alone,
/// and a key's second operation in a batch sees its first.
async fn batched_operations_are_answered_as_one_at_a_time(store: Arc<dyn Store>) {
    let (alice, bob) = (SecretToken::generate(), SecretToken::generate());
    let LockAcquisition::Acquired(held) =
        store.acquire_lock(&key("batch-held"), Some("alice"), None, LONG, &alice.hash()).await.unwrap()
    else {
        panic!("a fresh key is free")
    };
    let fresh: Vec<_> = (0..16).map(|i| (key(&format!("batch-{i}")), SecretToken::generate())).collect();
    let mut grants = Vec::new();
    for (k, token) in &fresh {
        let (store, k, hash) = (store.clone(), k.clone(), token.hash());
        grants
            .push(tokio::spawn(async move { store.acquire_lock(&k, Some("many"), None, LONG, &hash).await }));
    }
    let refused = {
        let (store, hash) = (store.clone(), bob.hash());
        tokio::spawn(
            async move { store.acquire_lock(&key("batch-held"), Some("bob"), None, LONG, &hash).await },
        )
    };
    let stranger = {
        let (store, hash) = (store.clone(), bob.hash());
        tokio::spawn(async move { store.release_lock(&key("batch-held"), &hash).await })
    };
    let twins: Vec<_> = (0..2)
        .map(|_| {
            let store = store.clone();
            let token = SecretToken::generate();
            tokio::spawn(async move {
                store.acquire_lock(&key("batch-twin"), None, None, LONG, &token.hash()).await
            })
        })
        .collect();
    for (grant, (k, _)) in grants.into_iter().zip(&fresh) {
        let LockAcquisition::Acquired(lock) = grant.await.unwrap().unwrap() else { panic!("{k:?} is free") };
        assert_eq!(
            (&lock.key, lock.fencing_token, lock.owner.as_deref()),
            (k, FencingToken(1), Some("many"))
        );
    }
    assert_eq!(refused.await.unwrap().unwrap(), LockAcquisition::Held(held.clone()));
    assert_eq!(stranger.await.unwrap().unwrap(), LockRelease::Refused(LockRefusal::NotHolder));
    let mut twins_granted = 0;
    for twin in twins {
        match twin.await.unwrap().unwrap() {
            LockAcquisition::Acquired(lock) => {
                twins_granted += 1;
                assert_eq!(lock.fencing_token, FencingToken(1));
            }
            LockAcquisition::Held(lock) => assert_eq!(lock.fencing_token, FencingToken(1)),
        }
    }
    assert_eq!(twins_granted, 1, "one of two acquisitions of one key in a batch is granted");
    // Every release twice at once: the first releases, the second is answered as the first.
    let mut releases = Vec::new();
    for (k, token) in fresh.iter().chain(fresh.iter()) {
        let (store, k, hash) = (store.clone(), k.clone(), token.hash());
        releases.push(tokio::spawn(async move { store.release_lock(&k, &hash).await }));
    }
    let (mut first, mut again) = (0, 0);
    for release in releases {
        match release.await.unwrap().unwrap() {
            LockRelease::Released(lock) => {
                first += 1;
                assert!(lock.released_at.is_some());
            }
            LockRelease::AlreadyReleased(_) => again += 1,
            LockRelease::Refused(why) => panic!("a release by the holder was refused: {why:?}"),
        }
    }
    assert_eq!((first, again), (fresh.len(), fresh.len()));
    for (k, _) in &fresh {
        assert_eq!(store.get_lock(k).await.unwrap(), None);
    }
    assert_eq!(store.get_lock(&key("batch-held")).await.unwrap(), Some(held));
}

/// A store that answers its ping and names its own backend, not the other one.
async fn ping_answers_as(store: Arc<dyn Store>, backend: &str) {
    store.ping().await.unwrap();
    assert_eq!(store.backend(), backend);
}

#[tokio::test]
async fn sqlite_answers_its_ping_as_sqlite() {
    common::on_sqlite(|store| ping_answers_as(store, "sqlite")).await;
}

#[tokio::test]
async fn postgres_answers_its_ping_as_postgres() {
    common::on_postgres(|store| async move { ping_answers_as(store, "postgres").await }).await;
}

common::suite!(
    quotes_round_trip_and_expire,
    replay_keys_pay_once,
    concurrent_reservations_of_one_key_admit_one,
    payments_settle_or_void_once,
    leases_move_by_compare_and_set,
    actions_are_spent_atomically,
    ssh_keys_find_their_leases_newest_first,
    machine_leases_are_found_by_token_and_id_prefix_and_extend_by_compare_and_set,
    ledger_balances_never_go_negative,
    concurrent_charges_cannot_overdraw,
    locks_grant_one_holder_and_fence_each_grant,
    lapsed_locks_pass_on_and_stale_holders_touch_nothing,
    concurrent_acquisitions_grant_exactly_one,
    batched_operations_are_answered_as_one_at_a_time,
);

#[tokio::test]
async fn fencing_tokens_keep_rising_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vendbox.db");
    let k = key("restart-key");
    for expected in 1..=3 {
        let store = SqliteStore::open_file(&path).await.unwrap();
        let token = SecretToken::generate();
        let LockAcquisition::Acquired(lock) =
            store.acquire_lock(&k, None, None, LONG, &token.hash()).await.unwrap()
        else {
            panic!("free after release")
        };
        assert_eq!(lock.fencing_token, FencingToken(expected));
        assert!(matches!(store.release_lock(&k, &token.hash()).await.unwrap(), LockRelease::Released(_)));
    }
}

#[tokio::test]
async fn sqlite_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vendbox.db");
    let q = quote(t0());
    {
        let store = SqliteStore::open_file(&path).await.unwrap();
        store.insert_quote(&q).await.unwrap();
    }
    let store = SqliteStore::open_file(&path).await.unwrap();
    assert_eq!(store.get_quote(q.id).await.unwrap(), Some(q));
}

#[tokio::test]
async fn open_rejects_unknown_urls() {
    let dir = tempfile::tempdir().unwrap();
    let err = vendbox_store::open(Some("mysql://user:secret@host/db"), dir.path()).await.unwrap_err();
    assert!(matches!(err, StoreError::BadUrl(_)));
    assert!(!err.to_string().contains("secret"), "{err}");
    let store = vendbox_store::open(None, &dir.path().join("d")).await.unwrap();
    assert_eq!(store.backend(), "sqlite");
    assert!(dir.path().join("d/vendbox.db").exists());
}
