//! The checker can see what it looks for: hand-built histories that break each rule, and ones
//! it must accept, with the store's clock 1000 ms ahead of the clients' throughout.

use std::time::Duration;

use super::{Bounds, Event, Op, Outcome, check};

/// The store's time when a client's clock reads `at` ms.
fn store(at: u64) -> i64 {
    1000 + i64::try_from(at).unwrap()
}

/// Client `client` asks for `op` at `at` ms and is answered 5 ms later.
fn event(client: usize, op: Op, grant: Option<u64>, at: u64, outcome: Outcome) -> Event {
    Event {
        client,
        key: "k".into(),
        op,
        grant,
        invoked: Duration::from_millis(at),
        completed: Duration::from_millis(at + 5),
        outcome,
    }
}

/// Client `client` is granted `fencing` at `at`, for `ttl` ms.
fn grant(client: usize, fencing: u64, at: u64, ttl: i64) -> Event {
    let outcome = Outcome::Granted { fencing, acquired_at: store(at + 2), expires_at: store(at + 2) + ttl };
    event(client, Op::Acquire, None, at, outcome)
}

fn renewed(client: usize, fencing: u64, at: u64, ttl: i64) -> Event {
    let outcome = Outcome::Renewed { fencing, renewed_at: store(at + 2), expires_at: store(at + 2) + ttl };
    event(client, Op::Renew, Some(fencing), at, outcome)
}

fn released(client: usize, fencing: u64, at: u64) -> Event {
    let outcome = Outcome::Released { fencing, released_at: store(at + 2), already: false };
    event(client, Op::Release, Some(fencing), at, outcome)
}

fn held(client: usize, at: u64, fencing: u64, life: (i64, i64)) -> Event {
    let outcome = Outcome::Held { fencing, acquired_at: life.0, expires_at: life.1 };
    event(client, Op::Acquire, None, at, outcome)
}

fn refused(client: usize, op: Op, fencing: u64, at: u64, code: &str) -> Event {
    event(client, op, Some(fencing), at, Outcome::Refused { code: code.into() })
}

fn read(client: usize, at: u64, held: Option<(u64, i64)>) -> Event {
    event(client, Op::Read, None, at, Outcome::Read { held })
}

/// Grant 1 (TTL 5 s) is renewed, seen held, read and released; grant 2 follows, and grant 1's
/// token is then refused.
fn clean() -> Vec<Event> {
    vec![
        grant(0, 1, 0, 5000),          // 1002..6002
        renewed(0, 1, 100, 5000),      // until 6102
        held(1, 200, 1, (1002, 6102)), // 3
        read(2, 250, Some((1, 6102))), // 3
        released(0, 1, 300),           // at 1302
        grant(1, 2, 400, 5000),        // 1402..6402
        refused(0, Op::Release, 1, 500, "lock_not_held"),
        refused(0, Op::Renew, 1, 600, "lock_not_held"),
    ]
}

/// The violations `history` is found to have, joined; panics when it passes.
fn violations(history: &[Event], bounds: &Bounds, what: &str) -> String {
    match check(history, bounds) {
        Ok(summary) => panic!("{what}: the checker accepted it: {summary:?}"),
        Err(found) => found.join("\n"),
    }
}

fn assert_found(history: &[Event], what: &str, expected: &str) {
    let found = violations(history, &Bounds::NONE, what);
    assert!(found.contains(expected), "{what}: expected `{expected}` among:\n{found}");
}

#[test]
fn a_clean_history_passes_and_says_what_it_checked() {
    let summary = check(&clean(), &Bounds::NONE).unwrap();
    assert_eq!((summary.grants, summary.renewals, summary.releases, summary.held), (2, 1, 1, 1));
    assert_eq!(summary.refusals_checked, 3, "{summary:?}");
    assert_eq!(summary.handovers_checked, 1);
    assert_eq!(summary.clock_uncertainty_ms, Some(5), "every answer took 5 ms");
}

#[test]
fn overlapping_grants_are_found() {
    // The second grant starts before the first was released.
    let mut overlap = clean();
    overlap[5] = grant(1, 2, 250, 5000);
    assert_found(&overlap, "overlap", "grants overlap");
    // A grant that was renewed is followed before the renewed expiry.
    let mut early = clean()[..4].to_vec();
    early.push(grant(1, 2, 5050, 5000));
    assert_found(&early, "early", "grants overlap: 1 held the key until 6102");
}

#[test]
fn fencing_tokens_that_go_back_or_repeat_are_found() {
    let mut backwards = clean();
    backwards[5] = grant(1, 0, 400, 5000);
    assert_found(&backwards, "backwards", "yet has the higher token");
    let mut twice = clean();
    twice[5] = grant(1, 1, 400, 5000);
    assert_found(&twice, "repeat", "fencing token 1 was granted twice");
}

#[test]
fn stale_tokens_that_change_something_are_found() {
    // A release with grant 1's token after grant 2 was made, which succeeded.
    let mut stale = clean();
    stale[6] = released(0, 1, 500);
    assert_found(&stale, "stale release", "stale token of grant 1");
    // A renewal after the grant lapsed.
    let mut late = clean()[..1].to_vec();
    late.push(renewed(0, 1, 5500, 5000));
    assert_found(&late, "late renewal", "outside its life");
    // A read showing an expiry no one set: a refused renewal that changed something.
    let mut changed = clean();
    changed[3] = read(2, 250, Some((1, 9999)));
    assert_found(&changed, "changed", "no acquisition or renewal of it set");
    // A read showing a released grant as held.
    let mut ghost = clean();
    ghost.push(read(2, 350, Some((1, 6102))));
    assert_found(&ghost, "ghost", "held after its release");
}

#[test]
fn acquisitions_refused_as_held_without_reason_are_found() {
    // Held by grant 1 after its release was answered.
    let mut after_release = clean();
    after_release.push(held(2, 350, 1, (1002, 6102)));
    assert_found(&after_release, "after release", "released at 1302, before it was asked");
    // Held by a grant no one was given, with no unanswered acquisition to explain it.
    let mut nobody = clean();
    nobody.push(held(2, 350, 7, (1300, 6300)));
    assert_found(&nobody, "nobody", "held by grant 7 (1300..6300), which no one was granted");
    // Held by a grant whose expiry had passed by the store's clock.
    let mut lapsed = clean()[..4].to_vec();
    lapsed.push(held(2, 5200, 1, (1002, 6102)));
    assert_found(&lapsed, "lapsed", "which was not live by the store's clock");
    // Held by a grant shown with a start it never had.
    let mut moved = clean();
    moved[2] = held(1, 200, 1, (900, 6102));
    assert_found(&moved, "moved", "which was granted at 1002");
    // Held by grant 1 once grant 2 had replaced it (a lost renewal may have moved grant 1's
    // expiry, so only the replacement tells).
    let replaced = vec![
        grant(0, 1, 0, 5000),
        event(0, Op::Renew, Some(1), 100, Outcome::Unknown),
        grant(1, 2, 5100, 5000),
        held(2, 5200, 1, (1002, 9000)),
    ];
    assert_found(&replaced, "replaced", "which grant 2 had replaced before it was asked");
    // An acquisition whose answer was lost may hold the key unseen: a refusal naming it passes.
    let mut unseen = clean();
    unseen.push(released(1, 2, 700));
    unseen.push(event(3, Op::Acquire, None, 710, Outcome::Unknown));
    unseen.push(held(2, 800, 3, (1713, 6713)));
    check(&unseen, &Bounds::NONE).unwrap();
}

#[test]
fn renewals_and_releases_refused_without_reason_are_found() {
    let base = clean()[..3].to_vec();
    let with = |extra: Event| {
        let mut history = base.clone();
        history.push(extra);
        history
    };
    // Refused while the grant was live and nobody else held the key.
    assert_found(&with(refused(0, Op::Renew, 1, 250, "lock_expired")), "expired", "ran until 6102");
    assert_found(
        &with(refused(0, Op::Renew, 1, 250, "lock_not_held")),
        "not held",
        "no grant after 1 may have been made",
    );
    assert_found(
        &with(refused(0, Op::Renew, 1, 250, "lock_released")),
        "released",
        "was not released before",
    );
    assert_found(&with(refused(0, Op::Release, 1, 250, "teapot")), "teapot", "with `teapot`");
    // `lock_expired` for a grant released before: the reason is wrong.
    let mut wrong = base.clone();
    wrong.push(released(0, 1, 300));
    wrong.push(refused(0, Op::Renew, 1, 6500, "lock_expired"));
    assert_found(&wrong, "wrong reason", "had been released at 1302");
    // And with their reasons: a renewal after expiry, after release, or once the key passed on;
    // a release whose answer was lost may have happened.
    let mut right = base.clone();
    right.push(refused(0, Op::Renew, 1, 6200, "lock_expired"));
    check(&right, &Bounds::NONE).unwrap();
    let mut right = base.clone();
    right.push(event(0, Op::Release, Some(1), 300, Outcome::Unknown));
    right.push(refused(0, Op::Renew, 1, 400, "lock_released"));
    check(&right, &Bounds::NONE).unwrap();
}

#[test]
fn answers_no_store_gives_are_failures_not_unknowns() {
    let mut broken = clean();
    broken.push(event(2, Op::Read, None, 700, Outcome::Failed { answer: "500: {}".into() }));
    let found = violations(&broken, &Bounds::NONE, "a 5xx");
    assert!(found.contains("as no store should: 500"), "{found}");
}

#[test]
fn too_many_unknown_outcomes_fail_the_run() {
    let mut lossy = clean();
    for at in [700, 710, 720] {
        lossy.push(event(2, Op::Read, None, at, Outcome::Unknown));
    }
    // A refused connection did nothing: it is neither unknown nor counted as sent.
    lossy.push(event(2, Op::Read, None, 730, Outcome::NotSent));
    let bounds = Bounds { unknown_per_mille: 250, min_renewals: 0 };
    let found = violations(&lossy, &bounds, "lossy");
    assert!(found.contains("3 of 11 operations sent got no answer, more than 250‰"), "{found}");
    let summary = check(&lossy, &Bounds { unknown_per_mille: 300, min_renewals: 0 }).unwrap();
    assert_eq!((summary.unknown, summary.not_sent), (3, 1));
}

#[test]
fn a_store_that_never_renews_fails_the_run() {
    // Every renewal refused, each with a reason the history bears out (it came too late).
    let history = vec![
        grant(0, 1, 0, 5000),
        refused(0, Op::Renew, 1, 5200, "lock_expired"),
        grant(1, 2, 5300, 5000),
        refused(1, Op::Renew, 2, 10_400, "lock_expired"),
    ];
    let bounds = Bounds { unknown_per_mille: 0, min_renewals: 1 };
    let found = violations(&history, &bounds, "never renews");
    assert_eq!(found, "only 0 renewals succeeded (2 refused); at least 1 were expected");
}

#[test]
fn a_store_clock_that_disagrees_with_real_time_is_found() {
    let mut skewed = clean();
    // Granted at store time 4400, though asked at client time 400 (store time 1400).
    skewed[5] = event(
        1,
        Op::Acquire,
        None,
        400,
        Outcome::Granted { fencing: 2, acquired_at: 4400, expires_at: 9400 },
    );
    assert_found(&skewed, "skew", "the store's clock disagrees with real time");
}
