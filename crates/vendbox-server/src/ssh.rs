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
        // `ssh <lease id>@host` picks that lease; any other user (`root`) the key's newest live
        // lease, or its newest one, whose refusal then says why it cannot be used.
        let chosen = leases
            .iter()
            .find(|l| l.id.to_string() == user)
            .or_else(|| leases.iter().find(|l| Boxes::check_usable(l).is_ok()))
            .or_else(|| leases.first())?;
        Some(chosen.id.to_string())
    }

    async fn by_password(&self, _user: &str, password: &str) -> Option<String> {
        // A VpsAgent rental's `root_password` is its root token.
        self.boxes.lease_for_password(password).await.ok().flatten().map(|id| id.to_string())
    }

    async fn begin(&self, lease: &str) -> Result<BoxdClient, String> {
        let lease = self.lease(lease).await.ok_or_else(|| "this lease does not exist".to_owned())?;
        self.boxes.begin_use(&lease).await.map_err(|e| e.message)
    }

    async fn refusal(&self, lease: &str) -> Option<String> {
        match self.lease(lease).await {
            None => Some("this lease does not exist".into()),
            Some(lease) => Boxes::check_usable(&lease).err().map(|e| e.message),
        }
    }
}
