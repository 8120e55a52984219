//! The SSH gateway's view of leases: which lease a key opens, and whether it may be used now.
//! The gateway itself (`vendbox-ssh`) knows nothing of the store.

use std::sync::Arc;

use async_trait::async_trait;
use vendbox_box::BoxdClient;
use vendbox_core::{Lease, LeaseId};

use crate::boxes::Boxes;

/// Leases as the gateway sees them, over the box service.
#[derive(Debug)]
pub struct SshLeases {
    /// The boxes and their leases.
    pub boxes: Arc<Boxes>,
}

impl SshLeases {
    async fn lease(&self, id: &str) -> Option<Lease> {
        let id: LeaseId = id.parse().ok()?;
        self.boxes.lease(id).await.ok().flatten()
    }
}

#[async_trait]
impl vendbox_ssh::Leases for SshLeases {
    async fn by_key(&self, user: &str, fingerprint: &str) -> Option<String> {
        let leases = self.boxes.leases_for_ssh_key(fingerprint).await.ok()?;
        // `ssh <lease id>@host` (every purchase's `ssh_command`) opens exactly that lease.
        if let Some(named) = leases.iter().find(|l| l.id.to_string() == user) {
            return Some(named.id.to_string());
        }
        // Any other user (`root`) guesses among the key's leases. Anyone may attach a public
        // key to a box of theirs, so the guess is made only when it cannot land in a stranger's
        // box: when the key opens one live lease, or live leases all paid for by one wallet.
        // Otherwise the login is refused and the client must name its lease.
        let live: Vec<&Lease> = leases.iter().filter(|l| self.boxes.check_usable(l).is_ok()).collect();
        match live.as_slice() {
            [] => leases.first().filter(|_| leases.len() == 1).map(|l| l.id.to_string()),
            [only] => Some(only.id.to_string()),
            [newest, ..] => {
                let mut buyers = Vec::with_capacity(live.len());
                for lease in &live {
                    buyers.push(self.boxes.buyer_of(lease).await);
                }
                let one_buyer = buyers
                    .first()
                    .is_some_and(|first| first.is_some() && buyers.iter().all(|buyer| buyer == first));
                if one_buyer {
                    Some(newest.id.to_string())
                } else {
                    tracing::info!(
                        user,
                        fingerprint,
                        leases = live.len(),
                        "ssh key opens boxes of several buyers; the login must name its lease"
                    );
                    None
                }
            }
        }
    }

    async fn by_password(&self, _user: &str, password: &str) -> Option<String> {
        // A VpsAgent rental's `root_password` is its root token.
        self.boxes.lease_for_password(password).await.ok().flatten().map(|id| id.to_string())
    }

    async fn begin(&self, lease: &str) -> Result<BoxdClient, String> {
        let lease = self.lease(lease).await.ok_or_else(|| "this lease does not exist".to_owned())?;
        self.boxes.begin_use(&lease).await.map_err(|e| e.to_string())
    }

    async fn refusal(&self, lease: &str) -> Option<String> {
        match self.lease(lease).await {
            None => Some("this lease does not exist".into()),
            Some(lease) => self.boxes.check_usable(&lease).err().map(|e| e.to_string()),
        }
    }
}
