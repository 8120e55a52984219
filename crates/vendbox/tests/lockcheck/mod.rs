//! A checker for histories of lock operations: what clients asked, when (by their own monotonic
//! clocks), and what they were told (with the store's times). It verifies, per key:
//!
//! 1. fencing tokens are never handed out twice;
//! 2. a grant that completed before another was asked for has the lower fencing token;
//! 3. in the store's time, grants follow their fencing order, and never overlap: a grant ends
//!    (release, or expiry after its last renewal) no later than the next one starts;
//! 4. a renewal or release succeeds only while its grant holds the key, so an operation with a
//!    stale token (its grant lapsed or passed on) never succeeds;
//! 5. a read shows a grant with an expiry some acquisition or renewal of that grant produced,
//!    and never a grant already released: stale operations changed nothing;
//! 6. every refusal has a reason in the history. An acquisition refused as held names a grant
//!    that may have been live, by the store's clock, while the refusal was made. A renewal or
//!    release refused as `lock_released` follows a release of its grant; as `lock_expired`, its
//!    grant's last expiry may have passed, and the grant was neither released nor passed on
//!    before; as `lock_not_held`, a newer grant of the key may have been made.
//!
//! And over the whole history:
//!
//! 7. every answer is one a correct store gives: a 5xx, a body that is not JSON or an answer of
//!    the wrong shape is `Failed`, a violation in itself (never mistaken for a lost answer);
//! 8. the store's clock agrees with real time: every store time an answer carries (a grant's
//!    start, a renewal, a first release) lies between the request's sending and its answer, for
//!    one offset between the two clocks (within [`SLACK_MS`]);
//! 9. at most [`Bounds::unknown_per_mille`] of the operations sent went unanswered, and at least
//!    [`Bounds::min_renewals`] renewals succeeded.
//!
//! Refusals carry no store time. The offset of rule 8, narrowed by every store time in the
//! history, turns a request's real-time interval into the store times at which it may have been
//! served, which rule 6 compares with the grants' lives.
//!
//! Operations whose answer was lost (a crash, a timeout) are `Unknown`: they may or may not have
//! happened, and the checker only draws conclusions that hold either way; so a refusal that an
//! unanswered acquisition, renewal or release could explain is accepted. `Failed` operations are
//! treated the same way by rules 1-6. A request whose connection was refused (`NotSent`) did
//! nothing. The history must hold every operation on its keys since they were first used.

#![allow(dead_code, unreachable_pub)]

#[cfg(test)]
mod selftest;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// How far, in milliseconds, store times may stray from where real time puts them: the two
/// clocks' rounding to milliseconds and their drift over a run.
pub const SLACK_MS: i64 = 20;

/// The codes a refused renewal or release may carry.
pub const REFUSALS: [&str; 3] = ["lock_not_held", "lock_expired", "lock_released"];

/// What a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Acquire,
    Renew,
    Release,
    Read,
}

/// What it was told. Times are the store's, in Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The key is the client's under this fencing token.
    Granted { fencing: u64, acquired_at: i64, expires_at: i64 },
    /// Someone else holds it: their grant, as the store showed it.
    Held { fencing: u64, acquired_at: i64, expires_at: i64 },
    /// The grant lasts until `expires_at` now.
    Renewed { fencing: u64, renewed_at: i64, expires_at: i64 },
    /// The grant ended at `released_at` (`already`: an earlier release of the same token did it).
    Released { fencing: u64, released_at: i64, already: bool },
    /// Refused with this error code; nothing changed.
    Refused { code: String },
    /// A read: the unexpired grant, as `(fencing, expires_at)`, if any.
    Read { held: Option<(u64, i64)> },
    /// The connection was refused: the request never reached a store, and did nothing.
    NotSent,
    /// Sent, and no answer came back (a timeout, a connection lost): it may have happened.
    Unknown,
    /// An answer no correct store gives (a 5xx, a body that is not JSON, a status or shape the
    /// API does not have), as received. A violation; what the operation did is unknown.
    Failed { answer: String },
}

impl Outcome {
    /// Whether the operation may have changed something the client does not know of.
    fn unanswered(&self) -> bool {
        matches!(self, Outcome::Unknown | Outcome::Failed { .. })
    }
}

/// One operation of one client.
#[derive(Debug, Clone)]
pub struct Event {
    pub client: usize,
    pub key: String,
    pub op: Op,
    /// For renewals and releases: the fencing token of the grant whose release token was used.
    pub grant: Option<u64>,
    /// When the client sent it, on the client's monotonic clock from a common start.
    pub invoked: Duration,
    /// When the answer arrived.
    pub completed: Duration,
    pub outcome: Outcome,
}

/// What a run must show besides following the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Most operations without an answer (`Unknown`), in thousandths of the operations sent.
    pub unknown_per_mille: usize,
    /// Fewest renewals that must succeed: a store that refuses every renewal fails the run.
    pub min_renewals: usize,
}

impl Bounds {
    /// Nothing beyond the rules.
    pub const NONE: Bounds = Bounds { unknown_per_mille: 1000, min_renewals: 0 };
}

/// What a history contained.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub events: usize,
    pub grants: usize,
    pub held: usize,
    pub renewals: usize,
    /// Renewals refused, whatever the reason.
    pub renewals_refused: usize,
    pub releases: usize,
    /// Renewals and releases refused because their grant had lapsed or passed on.
    pub stale_refused: usize,
    pub reads: usize,
    /// Requests whose connection was refused.
    pub not_sent: usize,
    pub unknown: usize,
    /// Answers no correct store gives.
    pub failed: usize,
    /// Refusals (held, and of renewals and releases) whose reason was looked for in the history.
    pub refusals_checked: usize,
    /// Grants followed by another on the same key whose start was compared with their end.
    pub handovers_checked: usize,
    /// How closely the store's clock is known against the clients' (ms), when the history has
    /// store times to tell.
    pub clock_uncertainty_ms: Option<i64>,
}

/// One grant as the history knows it.
#[derive(Debug, Default)]
struct Grant {
    acquired_at: i64,
    invoked: Duration,
    completed: Duration,
    /// Expiry after the acquisition and each successful renewal, in the store's order.
    expiries: Vec<i64>,
    /// Successful renewals: (renewed_at, expires_at, when the client learned of it).
    renewals: Vec<(i64, i64, Duration)>,
    released_at: Option<i64>,
    /// When the client learned of its release, on its clock.
    release_completed: Option<Duration>,
    /// Releases that succeeded or may have: when asked, and the store's time when known.
    releases: Vec<(Duration, Option<i64>)>,
    unknown_renewal: bool,
    unknown_release: bool,
}

impl Grant {
    /// The last moment it held the key, when the history can tell.
    fn end(&self) -> Option<i64> {
        if self.unknown_release && self.released_at.is_none() {
            return None;
        }
        let expiry = self.expiries.iter().copied().max().unwrap_or(self.acquired_at);
        Some(self.released_at.map_or(expiry, |r| r.min(expiry)))
    }

    /// Its expiry as the last renewal the client knew of before `at` left it (renewals and
    /// releases of one grant come from one client, one at a time).
    fn expiry_before(&self, at: Duration) -> i64 {
        self.renewals.iter().filter(|r| r.2 <= at).map(|r| r.1).next_back().unwrap_or(self.expiries[0])
    }
}

/// The offset of the store's clock (Unix ms) from the clients' (ms since their start): somewhere
/// in `lo..=hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Clock {
    lo: i64,
    hi: i64,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Clock {
    /// The offset every store time in `history` allows; `None` when there is none, or when no
    /// one offset fits them all (reported in `errors`).
    fn of(history: &[Event], errors: &mut Vec<String>) -> Option<Clock> {
        let mut lo: Option<(i64, &Event)> = None;
        let mut hi: Option<(i64, &Event)> = None;
        for e in history {
            let at = match e.outcome {
                Outcome::Granted { acquired_at, .. } => acquired_at,
                Outcome::Renewed { renewed_at, .. } => renewed_at,
                Outcome::Released { released_at, already: false, .. } => released_at,
                _ => continue,
            };
            let (low, high) = (at - millis(e.completed), at - millis(e.invoked));
            if lo.is_none_or(|(l, _)| low > l) {
                lo = Some((low, e));
            }
            if hi.is_none_or(|(h, _)| high < h) {
                hi = Some((high, e));
            }
        }
        let ((lo, late), (hi, early)) = (lo?, hi?);
        if lo > hi + SLACK_MS {
            errors.push(format!(
                "the store's clock disagrees with real time by {} ms: {:?} of client {} on `{}` ({:?}..{:?}) and {:?} of client {} on `{}` ({:?}..{:?}) fit no one offset",
                lo - hi,
                late.op,
                late.client,
                late.key,
                late.invoked,
                late.completed,
                early.op,
                early.client,
                early.key,
                early.invoked,
                early.completed
            ));
            return None;
        }
        Some(Clock { lo, hi })
    }

    /// The store times at which `e` may have been served.
    fn window(clock: Option<Clock>, e: &Event) -> (i64, i64) {
        clock.map_or((i64::MIN, i64::MAX), |c| {
            (millis(e.invoked) + c.lo - SLACK_MS, millis(e.completed) + c.hi + SLACK_MS)
        })
    }
}

/// Checks `history`; every violation found, or what it contained.
pub fn check(history: &[Event], bounds: &Bounds) -> Result<Summary, Vec<String>> {
    let mut errors = Vec::new();
    let mut summary = Summary { events: history.len(), ..Summary::default() };
    let mut keys: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in history {
        keys.entry(&e.key).or_default().push(e);
        match (&e.op, &e.outcome) {
            (_, Outcome::NotSent) => summary.not_sent += 1,
            (_, Outcome::Unknown) => summary.unknown += 1,
            (op, Outcome::Failed { answer }) => {
                summary.failed += 1;
                errors.push(format!(
                    "key `{}`: client {} was answered {op:?} at {:?} as no store should: {answer}",
                    e.key, e.client, e.invoked
                ));
            }
            (Op::Acquire, Outcome::Granted { .. }) => summary.grants += 1,
            (Op::Acquire, Outcome::Held { .. }) => summary.held += 1,
            (Op::Renew, Outcome::Renewed { .. }) => summary.renewals += 1,
            (Op::Release, Outcome::Released { .. }) => summary.releases += 1,
            (Op::Renew | Op::Release, Outcome::Refused { code }) => {
                if e.op == Op::Renew {
                    summary.renewals_refused += 1;
                }
                if code != "lock_released" {
                    summary.stale_refused += 1;
                }
            }
            (Op::Read, _) => summary.reads += 1,
            _ => {}
        }
    }
    let clock = Clock::of(history, &mut errors);
    summary.clock_uncertainty_ms = clock.map(|c| c.hi - c.lo);
    for (key, events) in keys {
        check_key(key, &events, clock, &mut errors, &mut summary);
    }
    // Rule 9.
    let sent = summary.events - summary.not_sent;
    if summary.unknown * 1000 > bounds.unknown_per_mille * sent {
        errors.push(format!(
            "{} of {sent} operations sent got no answer, more than {}‰: too much is unknown for the rest to prove anything",
            summary.unknown, bounds.unknown_per_mille
        ));
    }
    if summary.renewals < bounds.min_renewals {
        errors.push(format!(
            "only {} renewals succeeded ({} refused); at least {} were expected",
            summary.renewals, summary.renewals_refused, bounds.min_renewals
        ));
    }
    if errors.is_empty() { Ok(summary) } else { Err(errors) }
}

fn check_key(
    key: &str,
    events: &[&Event],
    clock: Option<Clock>,
    errors: &mut Vec<String>,
    summary: &mut Summary,
) {
    let mut fail = |text: String| errors.push(format!("key `{key}`: {text}"));
    // Rule 1: each fencing token is granted once.
    let mut grants: BTreeMap<u64, Grant> = BTreeMap::new();
    for e in events {
        if let Outcome::Granted { fencing, acquired_at, expires_at } = e.outcome {
            if grants.contains_key(&fencing) {
                fail(format!("fencing token {fencing} was granted twice"));
                continue;
            }
            if expires_at <= acquired_at {
                fail(format!("grant {fencing} expires at {expires_at}, not after its start {acquired_at}"));
            }
            grants.insert(
                fencing,
                Grant {
                    acquired_at,
                    invoked: e.invoked,
                    completed: e.completed,
                    expiries: vec![expires_at],
                    ..Grant::default()
                },
            );
        }
    }
    // What each renewal and release did to its grant.
    for e in events.iter().filter(|e| matches!(e.op, Op::Renew | Op::Release)) {
        let Some(fencing) = e.grant else {
            fail(format!("client {} renewed or released without naming its grant", e.client));
            continue;
        };
        let Some(grant) = grants.get_mut(&fencing) else {
            fail(format!("client {} used the token of grant {fencing}, which no one was given", e.client));
            continue;
        };
        match (&e.op, &e.outcome) {
            (Op::Renew, Outcome::Renewed { fencing: f, renewed_at, expires_at }) => {
                if *f != fencing {
                    fail(format!("renewing grant {fencing} answered grant {f}"));
                }
                grant.renewals.push((*renewed_at, *expires_at, e.completed));
                grant.expiries.push(*expires_at);
            }
            (Op::Release, Outcome::Released { fencing: f, released_at, .. }) => {
                if *f != fencing {
                    fail(format!("releasing grant {fencing} answered grant {f}"));
                }
                if grant.released_at.is_some_and(|r| r != *released_at) {
                    fail(format!("grant {fencing} was released twice, at different times"));
                }
                grant.released_at = Some(*released_at);
                grant.release_completed =
                    Some(grant.release_completed.map_or(e.completed, |c| c.min(e.completed)));
                grant.releases.push((e.invoked, Some(*released_at)));
            }
            (Op::Renew, outcome) if outcome.unanswered() => grant.unknown_renewal = true,
            (Op::Release, outcome) if outcome.unanswered() => {
                grant.unknown_release = true;
                grant.releases.push((e.invoked, None));
            }
            (_, Outcome::Refused { .. } | Outcome::NotSent) => {}
            (op, outcome) => fail(format!("{op:?} of grant {fencing} answered {outcome:?}")),
        }
    }
    // Rule 4, within a grant: renewals and the release happen while it holds the key.
    for (fencing, grant) in &mut grants {
        grant.renewals.sort_unstable();
        let mut expiry = grant.expiries[0];
        // A renewal whose answer was lost may have moved the expiry where the history cannot
        // see it; then only the start of the grant bounds what follows.
        let late_ok = grant.unknown_renewal;
        for &(renewed_at, expires_at, _) in &grant.renewals {
            if renewed_at < grant.acquired_at || (renewed_at >= expiry && !late_ok) {
                fail(format!(
                    "grant {fencing} was renewed at {renewed_at}, outside its life {}..{expiry}",
                    grant.acquired_at
                ));
            }
            if grant.released_at.is_some_and(|r| r <= renewed_at) {
                fail(format!("grant {fencing} was renewed at {renewed_at}, after its release"));
            }
            expiry = expires_at;
        }
        if let Some(released_at) = grant.released_at
            && (released_at < grant.acquired_at || (released_at >= expiry && !late_ok))
        {
            fail(format!(
                "grant {fencing} was released at {released_at}, outside its life {}..{expiry}",
                grant.acquired_at
            ));
        }
    }
    // Rules 2 and 3: order in real time and in the store's time; no overlap.
    let ordered: Vec<(u64, &Grant)> = grants.iter().map(|(f, g)| (*f, g)).collect();
    for (i, (fa, a)) in ordered.iter().enumerate() {
        for (fb, b) in &ordered[i + 1..] {
            if b.completed < a.invoked {
                fail(format!(
                    "grant {fb} completed at {:?}, before grant {fa} was asked for at {:?}, yet has the higher token",
                    b.completed, a.invoked
                ));
            }
        }
    }
    for pair in ordered.windows(2) {
        let ((fa, a), (fb, b)) = (pair[0], pair[1]);
        if b.acquired_at < a.acquired_at {
            fail(format!("grant {fb} started at {}, before grant {fa} at {}", b.acquired_at, a.acquired_at));
        }
        if let Some(end) = a.end() {
            summary.handovers_checked += 1;
            if b.acquired_at < end {
                fail(format!(
                    "grants overlap: {fa} held the key until {end}, and {fb} was granted at {}",
                    b.acquired_at
                ));
            }
        }
    }
    // Rule 4, across grants: once a newer grant was given out, an older token succeeds at nothing.
    for e in events.iter().filter(|e| matches!(e.op, Op::Renew | Op::Release)) {
        let Some(fencing) = e.grant else { continue };
        let superseded = grants.iter().any(|(f, g)| *f > fencing && g.completed < e.invoked);
        let succeeded =
            matches!(e.outcome, Outcome::Renewed { .. } | Outcome::Released { already: false, .. });
        if superseded && succeeded {
            fail(format!(
                "client {} used the stale token of grant {fencing} at {:?}, after a newer grant, and it succeeded",
                e.client, e.invoked
            ));
        }
    }
    // Rule 5: reads show only what acquisitions and renewals produced, and nothing released.
    for e in events.iter().filter(|e| e.op == Op::Read) {
        let Outcome::Read { held: Some((fencing, expires_at)) } = e.outcome else { continue };
        let Some(grant) = grants.get(&fencing) else { continue };
        if !grant.unknown_renewal && !grant.expiries.contains(&expires_at) {
            let mut text = String::new();
            let _ = write!(text, "a read at {:?} shows grant {fencing} expiring at {expires_at}", e.invoked);
            let _ = write!(text, ", which no acquisition or renewal of it set ({:?})", grant.expiries);
            fail(text);
        }
        if grant.release_completed.is_some_and(|c| c < e.invoked) {
            fail(format!("a read at {:?} shows grant {fencing} held after its release", e.invoked));
        }
    }
    // Rule 6: refusals have their reasons in the history.
    for e in events {
        let problem = match &e.outcome {
            Outcome::Held { fencing, acquired_at, expires_at } => {
                held_problem(e, *fencing, (*acquired_at, *expires_at), &grants, events, clock)
            }
            Outcome::Refused { code } => match e.grant.and_then(|f| grants.get(&f).map(|g| (f, g))) {
                Some((fencing, grant)) => refusal_problem(e, code, fencing, grant, &grants, events, clock),
                None => continue,
            },
            _ => continue,
        };
        summary.refusals_checked += 1;
        if let Some(problem) = problem {
            fail(format!(
                "client {} was refused {:?} at {:?}..{:?}: {problem}",
                e.client, e.op, e.invoked, e.completed
            ));
        }
    }
}

/// Whether an acquisition may have taken the key unseen before `e` was answered.
fn unseen_grant_before(events: &[&Event], e: &Event) -> bool {
    events.iter().any(|o| o.op == Op::Acquire && o.outcome.unanswered() && o.invoked < e.completed)
}

/// Why an acquisition refused as held by grant `fencing` (with the store's `life` of it) has no
/// reason in the history, if it has none.
fn held_problem(
    e: &Event,
    fencing: u64,
    (acquired_at, expires_at): (i64, i64),
    grants: &BTreeMap<u64, Grant>,
    events: &[&Event],
    clock: Option<Clock>,
) -> Option<String> {
    let (from, to) = Clock::window(clock, e);
    let held = format!("held by grant {fencing} ({acquired_at}..{expires_at})");
    if acquired_at > to || expires_at <= from {
        return Some(format!(
            "{held}, which was not live by the store's clock while it was asked ({from}..{to})"
        ));
    }
    let Some(grant) = grants.get(&fencing) else {
        if unseen_grant_before(events, e) {
            return None;
        }
        return Some(format!("{held}, which no one was granted"));
    };
    if grant.acquired_at != acquired_at {
        return Some(format!("{held}, which was granted at {}", grant.acquired_at));
    }
    if !grant.unknown_renewal && !grant.expiries.contains(&expires_at) {
        return Some(format!("{held}, an expiry no acquisition or renewal set ({:?})", grant.expiries));
    }
    if let Some(released_at) = grant.released_at.filter(|r| *r < from) {
        return Some(format!("{held}, released at {released_at}, before it was asked ({from}..{to})"));
    }
    if grant.release_completed.is_some_and(|c| c < e.invoked) {
        return Some(format!("{held}, whose release was answered before it was asked"));
    }
    if let Some((newer, _)) =
        grants.range(fencing + 1..).find(|(_, g)| g.completed < e.invoked || g.acquired_at < from)
    {
        return Some(format!("{held}, which grant {newer} had replaced before it was asked"));
    }
    None
}

/// Why a renewal or release of grant `fencing` refused with `code` has no reason in the history,
/// if it has none.
fn refusal_problem(
    e: &Event,
    code: &str,
    fencing: u64,
    grant: &Grant,
    grants: &BTreeMap<u64, Grant>,
    events: &[&Event],
    clock: Option<Clock>,
) -> Option<String> {
    let (from, to) = Clock::window(clock, e);
    let replaced_before = || {
        grants
            .range(fencing + 1..)
            .find(|(_, g)| g.completed < e.invoked || g.acquired_at < from)
            .map(|(f, _)| *f)
    };
    match code {
        "lock_released" => {
            let released =
                grant.releases.iter().any(|(asked, at)| *asked < e.completed && at.is_none_or(|r| r <= to));
            (!released).then(|| {
                format!("`lock_released`, yet grant {fencing} was not released before ({from}..{to})")
            })
        }
        "lock_expired" => {
            let expiry = grant.expiry_before(e.invoked);
            if expiry > to {
                Some(format!(
                    "`lock_expired`, yet grant {fencing} ran until {expiry}, after it was asked ({from}..{to})"
                ))
            } else if let Some(released_at) = grant.released_at.filter(|r| *r < from) {
                Some(format!("`lock_expired`, yet grant {fencing} had been released at {released_at}"))
            } else {
                replaced_before()
                    .map(|newer| format!("`lock_expired`, yet grant {newer} had replaced grant {fencing}"))
            }
        }
        "lock_not_held" => {
            let newer =
                grants.range(fencing + 1..).any(|(_, g)| g.invoked < e.completed && g.acquired_at <= to);
            (!newer && !unseen_grant_before(events, e)).then(|| {
                format!(
                    "`lock_not_held`, yet no grant after {fencing} may have been made by then ({from}..{to})"
                )
            })
        }
        other => Some(format!("with `{other}`, none of {REFUSALS:?}")),
    }
}

/// Renders a short account of a history for failure messages.
pub fn describe(summary: &Summary) -> String {
    format!(
        "{} events: {} grants, {} refused as held, {} renewals ({} refused), {} releases, {} stale operations refused, {} refusals checked, {} reads, {} not sent, {} without answer, {} failed; {} handovers checked; store clock known within {:?} ms",
        summary.events,
        summary.grants,
        summary.held,
        summary.renewals,
        summary.renewals_refused,
        summary.releases,
        summary.stale_refused,
        summary.refusals_checked,
        summary.reads,
        summary.not_sent,
        summary.unknown,
        summary.failed,
        summary.handovers_checked,
        summary.clock_uncertainty_ms
    )
}
