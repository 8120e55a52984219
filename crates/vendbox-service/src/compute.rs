//! x402Compute's instances: a box lease owned by the wallet that paid for it. The owner is the
//! payer of the payment that bought it (an x402 payment's `from`, or the account whose credits
//! paid); only the owner sees, destroys or unlocks it, and another wallet's instance is not
//! found. An instance given an SSH key at provision is opened with that key only; one given none
//! gets a one-time root password on request, once, which becomes its lease's root token (the one
//! made at provision is never shown).

use std::sync::Arc;

use vendbox_core::{AccountAddress, Capability, Lease, LeaseId, Offer, PaymentId, QuoteTerms, SecretToken};
pub use vendbox_store::ComputeInstance;

use crate::access::SshKey;
use crate::error::LeaseError;
use crate::leases::{Boxes, Provisioned};

/// What a provision asks for besides the offer and its terms.
#[derive(Debug, Clone, Default)]
pub struct ComputeOrder {
    /// The plan's id as x402Compute names it.
    pub plan: String,
    /// The region asked for.
    pub region: Option<String>,
    /// The OS image id asked for.
    pub os_id: Option<i64>,
    /// The owner's label.
    pub label: Option<String>,
    /// The key that opens it over SSH, if one was given.
    pub ssh_key: Option<SshKey>,
}

/// Why an instance operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    /// No instance with this id belongs to the caller (or none exists).
    #[error("there is no instance `{0}`")]
    NotFound(String),
    /// It was given an SSH key at provision, so it has no password.
    #[error("this instance was given an SSH key at provision and has no password; log in with the key")]
    SshKeyGiven,
    /// Its one-time password was issued already.
    #[error("this instance's one-time root password was issued already; it is not shown again")]
    PasswordIssued,
    /// The paying payment names no wallet (a free purchase).
    #[error("an instance is owned by the wallet that pays for it; this purchase had no payer")]
    NoPayer,
    /// The lease refused.
    #[error(transparent)]
    Lease(#[from] LeaseError),
}

impl From<vendbox_store::StoreError> for ComputeError {
    fn from(e: vendbox_store::StoreError) -> Self {
        ComputeError::Lease(e.into())
    }
}

impl ComputeError {
    /// Machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ComputeError::NotFound(_) => "instance_not_found",
            ComputeError::SshKeyGiven => "ssh_key_instance",
            ComputeError::PasswordIssued => "password_already_issued",
            ComputeError::NoPayer => "payer_required",
            ComputeError::Lease(e) => e.code(),
        }
    }
}

/// x402Compute's instances over the box service.
#[derive(Debug, Clone)]
pub struct Compute {
    boxes: Arc<Boxes>,
}

impl Compute {
    /// Instances made by `boxes`.
    pub fn new(boxes: Arc<Boxes>) -> Compute {
        Compute { boxes }
    }

    /// The wallet that paid `payment`.
    async fn payer(&self, payment: Option<PaymentId>) -> Result<AccountAddress, ComputeError> {
        let payment = self.boxes.store.get_payment(payment.ok_or(ComputeError::NoPayer)?).await?;
        let payer = payment.ok_or(ComputeError::NoPayer)?.replay_key.payer;
        AccountAddress::parse(&payer, "payer").map_err(|_| ComputeError::NoPayer)
    }

    /// Makes the box of `offer` on `terms`, paid by `payment`, and records it as an instance
    /// owned by the payer. When the record cannot be kept the box is taken back.
    pub async fn provision(
        &self,
        offer: &Offer,
        terms: &QuoteTerms,
        payment: Option<PaymentId>,
        order: ComputeOrder,
    ) -> Result<(Provisioned, ComputeInstance), ComputeError> {
        let owner = self.payer(payment).await?;
        let keys: Vec<SshKey> = order.ssh_key.into_iter().collect();
        let made = self.boxes.provision(offer, terms, payment, &keys, &[Capability::Root]).await?;
        let instance = ComputeInstance {
            lease: made.lease.id,
            owner,
            plan: order.plan,
            region: order.region.or_else(|| made.lease.region.clone()),
            os_id: order.os_id,
            label: order.label,
            ssh_key_given: !keys.is_empty(),
            password_issued_at: None,
            created_at: made.lease.created_at,
        };
        if let Err(e) = self.boxes.store.insert_compute_instance(&instance).await {
            self.boxes.unpaid(made.lease.id).await;
            return Err(e.into());
        }
        Ok((made, instance))
    }

    /// `owner`'s instance `id` with its lease; [`ComputeError::NotFound`] for one that is not
    /// theirs.
    pub async fn instance(
        &self,
        owner: &AccountAddress,
        id: &str,
    ) -> Result<(ComputeInstance, Lease), ComputeError> {
        let missing = || ComputeError::NotFound(id.to_owned());
        let lease_id: LeaseId = id.parse().map_err(|_| missing())?;
        let instance = self.boxes.store.compute_instance(lease_id).await?.filter(|i| i.owner == *owner);
        let instance = instance.ok_or_else(missing)?;
        let lease = self.boxes.lease(lease_id).await?.ok_or_else(missing)?;
        Ok((instance, lease))
    }

    /// `owner`'s instances that have not ended, newest first.
    pub async fn instances(
        &self,
        owner: &AccountAddress,
    ) -> Result<Vec<(ComputeInstance, Lease)>, ComputeError> {
        let mut all = Vec::new();
        for instance in self.boxes.store.compute_instances_of(owner).await? {
            if let Some(lease) = self.boxes.lease(instance.lease).await?
                && !lease.state.is_terminal()
            {
                all.push((instance, lease));
            }
        }
        Ok(all)
    }

    /// Issues the one-time root password of `owner`'s instance `id`: only for an instance given
    /// no SSH key, only while it runs, and only once (also under concurrent calls).
    pub async fn issue_password(
        &self,
        owner: &AccountAddress,
        id: &str,
    ) -> Result<(SecretToken, ComputeInstance, Lease), ComputeError> {
        let (instance, lease) = self.instance(owner, id).await?;
        if instance.ssh_key_given {
            return Err(ComputeError::SshKeyGiven);
        }
        if instance.password_issued_at.is_some() {
            return Err(ComputeError::PasswordIssued);
        }
        self.boxes.check_usable(&lease)?;
        let password = SecretToken::generate();
        if !self
            .boxes
            .store
            .issue_instance_password(lease.id, &password.hash(), self.boxes.clock.now())
            .await?
        {
            return Err(ComputeError::PasswordIssued);
        }
        Ok((password, instance, lease))
    }

    /// Destroys `owner`'s instance `id` now.
    pub async fn destroy(
        &self,
        owner: &AccountAddress,
        id: &str,
    ) -> Result<(ComputeInstance, Lease), ComputeError> {
        let (instance, lease) = self.instance(owner, id).await?;
        let ended = self.boxes.terminate(&lease).await?;
        Ok((instance, ended))
    }
}
