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
//!    and never a grant already released: stale operations changed nothing.
//!
//! Operations whose answer was lost (a crash, a timeout) are `Unknown`: they may or may not have
//! happened, and the checker only draws conclusions that hold either way.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

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
    /// Someone else holds it.
    Held { fencing: u64 },
    /// The grant lasts until `expires_at` now.
    Renewed { fencing: u64, renewed_at: i64, expires_at: i64 },
    /// The grant ended at `released_at` (`already`: an earlier release of the same token did it).
    Released { fencing: u64, released_at: i64, already: bool },
    /// Refused with this error code; nothing changed.
    Refused { code: String },
    /// A read: the unexpired grant, as `(fencing, expires_at)`, if any.
    Read { held: Option<(u64, i64)> },
    /// No answer came back.
    Unknown,
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

/// What a history contained.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub events: usize,
    pub grants: usize,
    pub held: usize,
    pub renewals: usize,
    pub releases: usize,
    /// Renewals and releases refused because their grant had lapsed or passed on.
    pub stale_refused: usize,
    pub reads: usize,
    pub unknown: usize,
    /// Grants followed by another on the same key whose start was compared with their end.
    pub handovers_checked: usize,
}

/// One grant as the history knows it.
#[derive(Debug, Default)]
struct Grant {
    acquired_at: i64,
    invoked: Duration,
    completed: Duration,
    /// Expiry after the acquisition and each successful renewal, in the store's order.
    expiries: Vec<i64>,
    /// Successful renewals: (renewed_at, expires_at).
    renewals: Vec<(i64, i64)>,
    released_at: Option<i64>,
    /// When the client learned of its release, on its clock.
    release_completed: Option<Duration>,
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
}

/// Checks `history`; every violation found, or what it contained.
pub fn check(history: &[Event]) -> Result<Summary, Vec<String>> {
    let mut errors = Vec::new();
    let mut summary = Summary { events: history.len(), ..Summary::default() };
    let mut keys: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in history {
        keys.entry(&e.key).or_default().push(e);
        match (&e.op, &e.outcome) {
            (_, Outcome::Unknown) => summary.unknown += 1,
            (Op::Acquire, Outcome::Granted { .. }) => summary.grants += 1,
            (Op::Acquire, Outcome::Held { .. }) => summary.held += 1,
            (Op::Renew, Outcome::Renewed { .. }) => summary.renewals += 1,
            (Op::Release, Outcome::Released { .. }) => summary.releases += 1,
            (Op::Renew | Op::Release, Outcome::Refused { code }) if code != "lock_released" => {
                summary.stale_refused += 1;
            }
            (Op::Read, _) => summary.reads += 1,
            _ => {}
        }
    }
    for (key, events) in keys {
        check_key(key, &events, &mut errors, &mut summary);
    }
    if errors.is_empty() { Ok(summary) } else { Err(errors) }
}

fn check_key(key: &str, events: &[&Event], errors: &mut Vec<String>, summary: &mut Summary) {
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
                grant.renewals.push((*renewed_at, *expires_at));
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
            }
            (Op::Renew, Outcome::Unknown) => grant.unknown_renewal = true,
            (Op::Release, Outcome::Unknown) => grant.unknown_release = true,
            (_, Outcome::Refused { .. }) => {}
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
        for &(renewed_at, expires_at) in &grant.renewals {
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
}

/// Renders a short account of a history for failure messages.
pub fn describe(summary: &Summary) -> String {
    format!(
        "{} events: {} grants, {} refused as held, {} renewals, {} releases, {} stale operations refused, {} reads, {} without answer; {} handovers checked",
        summary.events,
        summary.grants,
        summary.held,
        summary.renewals,
        summary.releases,
        summary.stale_refused,
        summary.reads,
        summary.unknown,
        summary.handovers_checked
    )
}
