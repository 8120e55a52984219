//! Who may hold a connection to the gateway: tickets for connections that have not logged in
//! yet (bounded in all and per client address) and for logged-in connections to a lease
//! (bounded per lease). A ticket gives its place back when dropped, however its connection ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use crate::Limits;

/// The gateway's counts of connections, under its [`Limits`].
#[derive(Debug)]
pub(crate) struct Admission {
    limits: Limits,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    waiting: usize,
    waiting_by_peer: HashMap<IpAddr, usize>,
    by_lease: HashMap<String, usize>,
}

/// A place among the connections waiting to log in.
#[derive(Debug)]
pub(crate) struct Waiting {
    admission: Arc<Admission>,
    peer: IpAddr,
}

/// A place among a lease's logged-in connections.
#[derive(Debug)]
pub(crate) struct LoggedIn {
    admission: Arc<Admission>,
    lease: String,
}

impl Admission {
    pub(crate) fn new(limits: Limits) -> Admission {
        Admission { limits, counts: Mutex::new(Counts::default()) }
    }

    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a new connection from `peer`, if the limits leave one.
    pub(crate) fn arrive(self: &Arc<Self>, peer: IpAddr) -> Option<Waiting> {
        let mut counts = self.counts();
        let from_peer = counts.waiting_by_peer.get(&peer).copied().unwrap_or(0);
        if counts.waiting >= self.limits.max_unauthenticated
            || from_peer >= self.limits.max_unauthenticated_per_peer
        {
            return None;
        }
        counts.waiting += 1;
        counts.waiting_by_peer.insert(peer, from_peer + 1);
        Some(Waiting { admission: self.clone(), peer })
    }

    /// A place among `lease`'s connections, if it has one left.
    pub(crate) fn log_in(self: &Arc<Self>, lease: &str) -> Option<LoggedIn> {
        let mut counts = self.counts();
        let open = counts.by_lease.entry(lease.to_owned()).or_insert(0);
        if *open >= self.limits.max_connections_per_lease {
            return None;
        }
        *open += 1;
        Some(LoggedIn { admission: self.clone(), lease: lease.to_owned() })
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut counts = self.admission.counts();
        counts.waiting = counts.waiting.saturating_sub(1);
        if let Some(n) = counts.waiting_by_peer.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.waiting_by_peer.remove(&self.peer);
            }
        }
    }
}

impl Drop for LoggedIn {
    fn drop(&mut self) {
        let mut counts = self.admission.counts();
        if let Some(n) = counts.by_lease.get_mut(&self.lease) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.by_lease.remove(&self.lease);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_unauthenticated: 3,
            max_unauthenticated_per_peer: 2,
            max_connections_per_lease: 1,
            ..Limits::default()
        }
    }

    #[test]
    fn places_are_bounded_and_given_back_on_drop() {
        let admission = Arc::new(Admission::new(limits()));
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let first = admission.arrive(a).unwrap();
        let _second = admission.arrive(a).unwrap();
        assert!(admission.arrive(a).is_none(), "a third from one peer");
        let _third = admission.arrive(b).unwrap();
        assert!(admission.arrive(b).is_none(), "a fourth in all");
        drop(first);
        assert!(admission.arrive(a).is_some());

        let lease = admission.log_in("lease").unwrap();
        assert!(admission.log_in("lease").is_none());
        assert!(admission.log_in("other").is_some());
        drop(lease);
        assert!(admission.log_in("lease").is_some());
    }
}
