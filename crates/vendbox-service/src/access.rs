//! Access to a lease: its capability tokens, and the SSH keys that open its box.

use vendbox_core::{Capability, Lease, LeaseId, SecretToken};

use crate::error::LeaseError;
use crate::leases::Boxes;

/// An SSH public key that opens a lease's box, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshKey {
    /// `SHA256:…`.
    pub fingerprint: String,
    /// The OpenSSH line.
    pub public_key: String,
}

impl SshKey {
    /// Checks an OpenSSH public key line; 400 `bad_ssh_key` naming `field` otherwise.
    pub fn parse(line: &str, field: &str) -> Result<SshKey, LeaseError> {
        let key = russh::keys::PublicKey::from_openssh(line.trim())
            .map_err(|why| LeaseError::BadSshKey { field: field.to_owned(), why: why.to_string() })?;
        let fingerprint = key.fingerprint(russh::keys::HashAlg::Sha256).to_string();
        Ok(SshKey { fingerprint, public_key: line.trim().to_owned() })
    }
}

impl Boxes {
    /// The lease `id` if `token` carries `wanted` on it; 404 and 401 otherwise (the same 404 for
    /// a lease that does not exist and one that is not a box). Reading a lease's state takes
    /// `Read`; running commands or touching its files takes `Root`; ending it, `Terminate`.
    pub async fn open(
        &self,
        id: &str,
        token: Option<&SecretToken>,
        wanted: Capability,
    ) -> Result<Lease, LeaseError> {
        let missing = || LeaseError::NotFound(id.to_owned());
        let lease_id: LeaseId = id.parse().map_err(|_| missing())?;
        let lease =
            self.store.get_lease(lease_id).await?.filter(|l| l.box_id.is_some()).ok_or_else(missing)?;
        self.authorize(lease, token, wanted).await
    }

    /// The capability `token` carries on `lease`, if it is one of the lease's tokens.
    pub async fn capability_of(
        &self,
        lease: &Lease,
        token: &SecretToken,
    ) -> Result<Option<Capability>, LeaseError> {
        let tokens = self.store.lease_tokens(lease.id).await?;
        Ok(tokens.into_iter().find(|(_, hash)| hash.verify(token)).map(|(capability, _)| capability))
    }

    /// `lease` if `token` carries `wanted` (or root) on it; 401 otherwise.
    pub async fn authorize(
        &self,
        lease: Lease,
        token: Option<&SecretToken>,
        wanted: Capability,
    ) -> Result<Lease, LeaseError> {
        let token = token.ok_or(LeaseError::MissingToken)?;
        if self.capability_of(&lease, token).await?.is_some_and(|c| c.allows(wanted)) {
            Ok(lease)
        } else {
            Err(LeaseError::BadToken(wanted))
        }
    }

    /// The lease a root token (a VpsAgent `root_password`) opens over SSH.
    pub async fn lease_for_password(&self, password: &str) -> Result<Option<LeaseId>, LeaseError> {
        let token = SecretToken::presented(password);
        Ok(self
            .store
            .lease_for_token(&token.hash())
            .await?
            .filter(|(_, c)| *c == Capability::Root)
            .map(|(id, _)| id))
    }

    /// The lease whose id starts with `prefix` (a Storefront `machine_…` id's hex).
    pub async fn lease_by_prefix(&self, prefix: &str) -> Result<Option<Lease>, LeaseError> {
        Ok(self.store.lease_by_id_prefix(prefix).await?.filter(|l| l.box_id.is_some()))
    }

    /// Who paid for the lease (the payer of its payment), when that is known.
    pub async fn buyer_of(&self, lease: &Lease) -> Option<String> {
        let payment = self.store.get_payment(lease.payment_id?).await.ok()??;
        Some(payment.replay_key.payer.to_lowercase())
    }

    /// The lease `id`, if there is one.
    pub async fn lease(&self, id: LeaseId) -> Result<Option<Lease>, LeaseError> {
        Ok(self.store.get_lease(id).await?)
    }

    /// The leases an SSH key opens, newest first.
    pub async fn leases_for_ssh_key(&self, fingerprint: &str) -> Result<Vec<Lease>, LeaseError> {
        Ok(self.store.leases_for_ssh_key(fingerprint).await?)
    }
}
