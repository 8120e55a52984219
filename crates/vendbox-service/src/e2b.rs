//! E2B's sandboxes: a box lease owned by the account whose API key asked for it, made from a
//! template (an image of the offer that sells them), with the metadata and environment
//! variables E2B keeps with a sandbox. Only the owner sees, extends or kills one (another
//! account's sandbox is not found). Its root token is E2B's `envdAccessToken`: it opens the
//! box's processes and files, as a lease's root token does everywhere else.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use vendbox_core::{AccountAddress, Capability, Lease, LeaseId, Offer, PaymentId, QuoteTerms, SecretToken};
pub use vendbox_store::E2bSandbox;

use crate::error::LeaseError;
use crate::leases::{Boxes, Provisioned};

/// E2B's default template, which vendbox makes from the offer's default image.
pub const DEFAULT_TEMPLATE: &str = "base";

/// The longest an E2B sandbox may live at once (E2B's own limit: 24 hours).
pub const MAX_TIMEOUT_SECS: u64 = 24 * 60 * 60;

/// What a create asks for besides the offer and its terms.
#[derive(Debug, Clone, Default)]
pub struct E2bOrder {
    /// The template as asked for.
    pub template: String,
    /// The owner's metadata.
    pub metadata: BTreeMap<String, String>,
    /// Environment variables every process starts with.
    pub env_vars: BTreeMap<String, String>,
}

/// Why an E2B sandbox operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum E2bError {
    /// No template (image) of that name is sold here.
    #[error("template '{0}' not found")]
    TemplateNotFound(String),
    /// No sandbox with this id belongs to the caller (or none exists).
    #[error("sandbox \"{0}\" doesn't exist or you don't have access to it")]
    NotFound(String),
    /// The lease refused.
    #[error(transparent)]
    Lease(#[from] LeaseError),
}

impl From<vendbox_store::StoreError> for E2bError {
    fn from(e: vendbox_store::StoreError) -> Self {
        E2bError::Lease(e.into())
    }
}

impl E2bError {
    /// Machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            E2bError::TemplateNotFound(_) => "template_not_found",
            E2bError::NotFound(_) => "sandbox_not_found",
            E2bError::Lease(e) => e.code(),
        }
    }
}

/// The image a template names on `offer`: its default image for E2B's default template (or
/// none asked), an image it sells by that id, or [`E2bError::TemplateNotFound`].
pub fn image_of(offer: &Offer, template: &str) -> Result<String, E2bError> {
    let template = template.trim();
    if template.is_empty() || template == DEFAULT_TEMPLATE {
        return offer
            .default_image
            .clone()
            .or_else(|| offer.images.first().cloned())
            .ok_or_else(|| E2bError::TemplateNotFound(template.to_owned()));
    }
    offer
        .images
        .iter()
        .find(|i| i.as_str() == template)
        .cloned()
        .ok_or_else(|| E2bError::TemplateNotFound(template.to_owned()))
}

/// Whole minutes that cover `seconds` (at least one), the unit boxes are sold in.
pub fn minutes_of(seconds: u64) -> u32 {
    u32::try_from(seconds.div_ceil(60).max(1)).unwrap_or(u32::MAX)
}

/// A sandbox's new end when asked to live `seconds` more from `now`, and the whole minutes to
/// buy for it beyond its current end (zero when it ends no later than it does now).
pub fn timeout_change(now: DateTime<Utc>, expires_at: DateTime<Utc>, seconds: u64) -> (DateTime<Utc>, u32) {
    let seconds = seconds.min(MAX_TIMEOUT_SECS);
    let until = now + chrono::Duration::seconds(i64::try_from(seconds).unwrap_or(i64::MAX));
    let beyond = (until - expires_at).num_seconds();
    let minutes = u64::try_from(beyond).map_or(0, |s| if s == 0 { 0 } else { u64::from(minutes_of(s)) });
    (until, u32::try_from(minutes).unwrap_or(u32::MAX))
}

/// E2B's sandboxes over the box service.
#[derive(Debug, Clone)]
pub struct Sandboxes {
    boxes: Arc<Boxes>,
}

impl Sandboxes {
    /// Sandboxes made by `boxes`.
    pub fn new(boxes: Arc<Boxes>) -> Sandboxes {
        Sandboxes { boxes }
    }

    /// The box service underneath.
    pub fn boxes(&self) -> &Arc<Boxes> {
        &self.boxes
    }

    /// Makes the box of `offer` on `terms`, paid by `payment`, and records it as `owner`'s
    /// sandbox (the account whose API key asked for it, whoever paid), with its root token
    /// (E2B's envd access token). When the record cannot be kept the box is taken back.
    pub async fn create(
        &self,
        owner: AccountAddress,
        offer: &Offer,
        terms: &QuoteTerms,
        payment: Option<PaymentId>,
        order: E2bOrder,
    ) -> Result<(Provisioned, E2bSandbox), E2bError> {
        let made = self.boxes.provision(offer, terms, payment, &[], &[Capability::Root]).await?;
        let sandbox = E2bSandbox {
            lease: made.lease.id,
            owner,
            template: order.template,
            metadata: order.metadata,
            env_vars: order.env_vars,
            created_at: made.lease.created_at,
        };
        if let Err(e) = self.boxes.store.insert_e2b_sandbox(&sandbox).await {
            self.boxes.unpaid(made.lease.id).await;
            return Err(e.into());
        }
        Ok((made, sandbox))
    }

    /// `owner`'s sandbox `id` with its lease; [`E2bError::NotFound`] for one that is not theirs
    /// or has ended.
    pub async fn sandbox(&self, owner: &AccountAddress, id: &str) -> Result<(E2bSandbox, Lease), E2bError> {
        let missing = || E2bError::NotFound(id.to_owned());
        let lease_id: LeaseId = id.parse().map_err(|_| missing())?;
        let sandbox = self.boxes.store.e2b_sandbox(lease_id).await?.filter(|s| s.owner == *owner);
        let sandbox = sandbox.ok_or_else(missing)?;
        let lease = self.boxes.lease(lease_id).await?.filter(|l| self.boxes.check_usable(l).is_ok());
        Ok((sandbox, lease.ok_or_else(missing)?))
    }

    /// `owner`'s running sandboxes, newest first.
    pub async fn sandboxes(&self, owner: &AccountAddress) -> Result<Vec<(E2bSandbox, Lease)>, E2bError> {
        let mut all = Vec::new();
        for sandbox in self.boxes.store.e2b_sandboxes_of(owner).await? {
            if let Some(lease) = self.boxes.lease(sandbox.lease).await?
                && self.boxes.check_usable(&lease).is_ok()
            {
                all.push((sandbox, lease));
            }
        }
        Ok(all)
    }

    /// Kills `owner`'s sandbox `id` now.
    pub async fn kill(&self, owner: &AccountAddress, id: &str) -> Result<Lease, E2bError> {
        let (_, lease) = self.sandbox(owner, id).await?;
        Ok(self.boxes.terminate(&lease).await?)
    }

    /// Ends `lease` earlier, at `until` (no refund: E2B's set-timeout only moves the end).
    pub async fn shorten(&self, lease: &Lease, until: DateTime<Utc>) -> Result<(), E2bError> {
        let Some(from) = lease.expires_at else { return Ok(()) };
        let until = until.max(self.boxes.clock.now());
        match self.boxes.store.extend_lease(lease.id, from, until, None, self.boxes.clock.now()).await {
            Ok(_) => Ok(()),
            Err(vendbox_store::StoreError::Conflict(_)) => Err(E2bError::NotFound(lease.id.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    /// The sandbox `id` and its lease, opened by an envd access token (the lease's root token,
    /// or one a connect handed out), for the in-box API; refused like any lease opened by a
    /// token.
    pub async fn open(&self, id: &str, token: Option<&SecretToken>) -> Result<(E2bSandbox, Lease), E2bError> {
        let lease = match self.boxes.open(id, token, Capability::Root).await {
            Ok(lease) => lease,
            Err(LeaseError::BadToken(wanted)) => {
                // Not the root token: one a connect handed out, perhaps.
                let issued = match (id.parse::<LeaseId>(), token) {
                    (Ok(lease), Some(token)) => {
                        self.boxes.store.is_e2b_access_token(lease, &token.hash()).await?.then_some(lease)
                    }
                    _ => None,
                };
                let Some(issued) = issued else { return Err(LeaseError::BadToken(wanted).into()) };
                self.boxes.lease(issued).await?.ok_or(LeaseError::BadToken(wanted))?
            }
            Err(e) => return Err(e.into()),
        };
        let sandbox = self.boxes.store.e2b_sandbox(lease.id).await?;
        Ok((sandbox.ok_or_else(|| E2bError::NotFound(id.to_owned()))?, lease))
    }

    /// A new envd access token for sandbox `lease` (E2B's connect hands one out). It is added to
    /// the sandbox's tokens, so that earlier handles keep working (E2B's connect keeps its
    /// token, and vendbox keeps only tokens' hashes, so it cannot hand the same one out again).
    pub async fn issue_access_token(&self, lease: &Lease) -> Result<SecretToken, E2bError> {
        let token = SecretToken::generate();
        if !self.boxes.store.add_e2b_access_token(lease.id, &token.hash(), self.boxes.clock.now()).await? {
            return Err(E2bError::NotFound(lease.id.to_string()));
        }
        Ok(token)
    }

    /// What time it is, by the service's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.boxes.clock.now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_buy_whole_minutes_beyond_the_current_end() {
        let now = DateTime::from_timestamp(1_000_000, 0).unwrap_or_default();
        let end = now + chrono::Duration::minutes(5);
        assert_eq!(timeout_change(now, end, 300).1, 0);
        assert_eq!(timeout_change(now, end, 301).1, 1);
        assert_eq!(timeout_change(now, end, 600).1, 5);
        assert_eq!(timeout_change(now, end, 60).1, 0);
        assert_eq!(minutes_of(0), 1);
        assert_eq!(minutes_of(61), 2);
    }
}
