//! Authentication's records, on SQLite and on PostgreSQL: a signed request's nonce is claimed
//! once (also when many claim it at once) and purged after its window; an API key is found by
//! its hash until revoked and keeps its scope and caps; an instance's one-time password is
//! issued once, never for an instance given an SSH key, and replaces the lease's root token; an
//! E2B sandbox's connect adds an access token, and the newest are kept.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use vendbox_core::{
    AccountAddress, Capability, KeyGrant, KeyScope, Lease, LeaseId, LeaseState, SecretToken, Usdc,
    generate_api_key,
};
use vendbox_store::{ApiKey, ComputeInstance, E2bSandbox, Store};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap()
}

fn account(n: u8) -> AccountAddress {
    AccountAddress::parse(&format!("0x{n:040x}"), "account").unwrap()
}

async fn nonces_are_claimed_once_and_purged_after_their_window(store: Arc<dyn Store>) {
    let (a, b) = (account(1), account(2));
    let until = t0() + Duration::minutes(5);
    assert!(store.claim_auth_nonce(&a, "n-1", until, t0()).await.unwrap());
    assert!(!store.claim_auth_nonce(&a, "n-1", until, t0()).await.unwrap(), "a nonce is single-use");
    assert!(store.claim_auth_nonce(&b, "n-1", until, t0()).await.unwrap(), "nonces are per address");
    // The first signature made the account.
    assert_eq!(store.balance(&a).await.unwrap(), Usdc::ZERO);
    // A nonce given back (its request was answered 402) may be claimed once more, once.
    assert!(store.release_auth_nonce(&b, "n-1").await.unwrap());
    assert!(!store.release_auth_nonce(&b, "n-1").await.unwrap(), "given back once");
    assert!(store.claim_auth_nonce(&b, "n-1", until, t0()).await.unwrap());
    assert!(!store.claim_auth_nonce(&b, "n-1", until, t0()).await.unwrap());
    let racers: Vec<_> = (0..16)
        .map(|_| {
            let (store, a) = (store.clone(), a.clone());
            tokio::spawn(async move { store.claim_auth_nonce(&a, "raced", until, t0()).await.unwrap() })
        })
        .collect();
    let mut won = 0;
    for r in racers {
        won += usize::from(r.await.unwrap());
    }
    assert_eq!(won, 1, "one of 16 concurrent claims wins");
    assert_eq!(store.purge_auth_nonces(until).await.unwrap(), 0, "nothing ends before its window");
    assert_eq!(store.purge_auth_nonces(until + Duration::milliseconds(1)).await.unwrap(), 3);
    assert!(store.claim_auth_nonce(&a, "n-1", until + Duration::minutes(10), t0()).await.unwrap());
}

async fn api_keys_are_found_by_hash_until_revoked(store: Arc<dyn Store>) {
    let owner = account(3);
    let secret = generate_api_key();
    let key = ApiKey {
        account: owner.clone(),
        grant: KeyGrant {
            id: "key-1".into(),
            scope: KeyScope::BoxesUpTo { max_price: Usdc(250_000) },
            daily_cap: Some(Usdc(10_000)),
            total_cap: None,
        },
        label: Some("sub-agent".into()),
        last4: secret.expose()[secret.expose().len() - 4..].to_owned(),
        created_at: t0(),
        revoked_at: None,
    };
    store.insert_api_key(&key, &secret.hash()).await.unwrap();
    assert_eq!(store.api_key_by_hash(&secret.hash()).await.unwrap(), Some(key.clone()));
    assert_eq!(store.api_key_by_hash(&generate_api_key().hash()).await.unwrap(), None);
    assert_eq!(store.api_keys_of(&owner).await.unwrap(), vec![key.clone()]);
    assert_eq!(store.revoke_api_key(&account(4), "key-1", t0()).await.unwrap(), None, "not another's key");
    let revoked = store.revoke_api_key(&owner, "key-1", t0() + Duration::minutes(1)).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(t0() + Duration::minutes(1)));
    let again = store.revoke_api_key(&owner, "key-1", t0() + Duration::minutes(2)).await.unwrap().unwrap();
    assert_eq!(again.revoked_at, revoked.revoked_at, "revoking again keeps the first time");
    let found = store.api_key_by_hash(&secret.hash()).await.unwrap().unwrap();
    assert!(found.revoked_at.is_some());
}

async fn an_instance_password_is_issued_once(store: Arc<dyn Store>) {
    let owner = account(5);
    let mut instances = Vec::new();
    for ssh_key_given in [false, true] {
        let lease = Lease {
            id: LeaseId::new_random(),
            offer_id: "x402compute-vps-1c-1g".parse().unwrap(),
            quote_id: None,
            payment_id: None,
            state: LeaseState::Active,
            region: None,
            image: None,
            box_id: Some("box".into()),
            created_at: t0(),
            expires_at: Some(t0() + Duration::hours(1)),
            actions_remaining: None,
            failure_reason: None,
        };
        let first_root = SecretToken::generate();
        store.insert_lease(&lease, &[(Capability::Root, first_root.hash())]).await.unwrap();
        let instance = ComputeInstance {
            lease: lease.id,
            owner: owner.clone(),
            plan: "vps-1c-1g".into(),
            region: Some("lax".into()),
            os_id: Some(2284),
            label: None,
            ssh_key_given,
            password_issued_at: None,
            created_at: t0() + Duration::seconds(i64::from(u8::from(ssh_key_given))),
        };
        store.insert_compute_instance(&instance).await.unwrap();
        instances.push((instance, first_root));
    }
    let listed = store.compute_instances_of(&owner).await.unwrap();
    assert_eq!(
        listed.iter().map(|i| i.lease).collect::<Vec<_>>(),
        vec![instances[1].0.lease, instances[0].0.lease]
    );
    assert!(store.compute_instances_of(&account(6)).await.unwrap().is_empty());

    let (plain, first_root) = &instances[0];
    let password = SecretToken::generate();
    assert!(store.issue_instance_password(plain.lease, &password.hash(), t0()).await.unwrap());
    assert!(
        !store.issue_instance_password(plain.lease, &SecretToken::generate().hash(), t0()).await.unwrap()
    );
    assert_eq!(store.lease_for_token(&password.hash()).await.unwrap(), Some((plain.lease, Capability::Root)));
    assert_eq!(
        store.lease_for_token(&first_root.hash()).await.unwrap(),
        None,
        "the first root token is gone"
    );
    assert!(store.compute_instance(plain.lease).await.unwrap().unwrap().password_issued_at.is_some());
    let (keyed, _) = &instances[1];
    assert!(
        !store.issue_instance_password(keyed.lease, &SecretToken::generate().hash(), t0()).await.unwrap()
    );
}

async fn an_e2b_connect_adds_an_access_token_and_keeps_the_newest(store: Arc<dyn Store>) {
    let lease = Lease {
        id: LeaseId::new_random(),
        offer_id: "e2b-sandbox".parse().unwrap(),
        quote_id: None,
        payment_id: None,
        state: LeaseState::Active,
        region: None,
        image: None,
        box_id: Some("box".into()),
        created_at: t0(),
        expires_at: Some(t0() + Duration::hours(1)),
        actions_remaining: None,
        failure_reason: None,
    };
    let root = SecretToken::generate();
    store.insert_lease(&lease, &[(Capability::Root, root.hash())]).await.unwrap();
    // No E2B sandbox of the lease yet: no token is added.
    let early = SecretToken::generate();
    assert!(!store.add_e2b_access_token(lease.id, &early.hash(), t0()).await.unwrap());
    assert!(!store.is_e2b_access_token(lease.id, &early.hash()).await.unwrap());
    let sandbox = E2bSandbox {
        lease: lease.id,
        owner: account(7),
        template: "base".into(),
        metadata: BTreeMap::new(),
        env_vars: BTreeMap::new(),
        created_at: t0(),
    };
    store.insert_e2b_sandbox(&sandbox).await.unwrap();

    // Each connect's token is added; the root token and every earlier one stay.
    let tokens: Vec<SecretToken> =
        (0..=vendbox_store::E2B_ACCESS_TOKENS_KEPT).map(|_| SecretToken::generate()).collect();
    for (i, token) in tokens.iter().enumerate() {
        let at = t0() + Duration::seconds(i64::try_from(i).unwrap());
        assert!(store.add_e2b_access_token(lease.id, &token.hash(), at).await.unwrap());
        if i == 1 {
            assert!(store.is_e2b_access_token(lease.id, &tokens[0].hash()).await.unwrap());
            assert!(store.is_e2b_access_token(lease.id, &tokens[1].hash()).await.unwrap());
        }
    }
    assert_eq!(store.lease_for_token(&root.hash()).await.unwrap(), Some((lease.id, Capability::Root)));
    assert!(
        !store.is_e2b_access_token(lease.id, &root.hash()).await.unwrap(),
        "the root token is the lease's"
    );
    // Past the cap, the oldest goes and the newest stay; another lease's sandbox has none.
    assert!(!store.is_e2b_access_token(lease.id, &tokens[0].hash()).await.unwrap());
    for token in &tokens[1..] {
        assert!(store.is_e2b_access_token(lease.id, &token.hash()).await.unwrap());
    }
    assert!(!store.is_e2b_access_token(LeaseId::new_random(), &tokens[1].hash()).await.unwrap());
}

common::suite!(
    nonces_are_claimed_once_and_purged_after_their_window,
    api_keys_are_found_by_hash_until_revoked,
    an_instance_password_is_issued_once,
    an_e2b_connect_adds_an_access_token_and_keeps_the_newest,
);
