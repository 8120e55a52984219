//! `Catalog`: every offer for sale plus the regions and images they refer to.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::error::CoreError;
use crate::money::Usdc;
use crate::offer::Offer;

/// A place boxes can run, described for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// Id used in offers and requests (`lax`, `europe`).
    pub id: String,
    /// City, where the region is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// ISO country code, where the region is one country.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// Continent or wider area.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continent: Option<String>,
}

/// A root filesystem a box can boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// Id used in offers and requests (`host`, `ubuntu-24.04`).
    pub id: String,
    /// Name for people (`Ubuntu 24.04 LTS x64`).
    pub name: String,
    /// CPU architecture (`x64`).
    #[serde(default = "x64")]
    pub arch: String,
    /// Distribution family (`ubuntu`).
    #[serde(default)]
    pub family: String,
    /// Numeric id for APIs that use numbers for images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_id: Option<u32>,
}

fn x64() -> String {
    "x64".to_owned()
}

/// Rules for prepaid credit balances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditsPolicy {
    /// Smallest balance an account must hold before it may buy from its credits (SecretVM's
    /// `AGENT_MIN_BALANCE`).
    #[serde(default)]
    pub min_balance: Usdc,
    /// Smallest top-up (`POST /v1/account/topup`).
    #[serde(default = "CreditsPolicy::default_topup_min")]
    #[schema(value_type = String, example = "0.01")]
    pub topup_min: Usdc,
    /// Largest top-up.
    #[serde(default = "CreditsPolicy::default_topup_max")]
    #[schema(value_type = String, example = "1000")]
    pub topup_max: Usdc,
    /// Whether a box or machine its owner ends early gives back its unused whole minutes, as
    /// credits of the wallet that paid, where its offer is priced by time (on by default).
    #[serde(default = "CreditsPolicy::default_refund_unused")]
    pub refund_unused: bool,
}

impl CreditsPolicy {
    fn default_topup_min() -> Usdc {
        Usdc(10_000)
    }

    fn default_topup_max() -> Usdc {
        Usdc(1_000_000_000)
    }

    fn default_refund_unused() -> bool {
        true
    }
}

impl Default for CreditsPolicy {
    fn default() -> Self {
        CreditsPolicy {
            min_balance: Usdc::ZERO,
            topup_min: CreditsPolicy::default_topup_min(),
            topup_max: CreditsPolicy::default_topup_max(),
            refund_unused: CreditsPolicy::default_refund_unused(),
        }
    }
}

/// What a vendbox sells.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Catalog {
    /// Offers, in the order the operator listed them.
    pub offers: Vec<Offer>,
    /// Regions referred to by offers.
    pub regions: Vec<Region>,
    /// Images referred to by offers.
    pub images: Vec<Image>,
    /// Rules for buying from prepaid credits.
    pub credits: CreditsPolicy,
}

/// Why a catalog cannot be served: the key that is wrong and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct CatalogError {
    /// Dotted path of the offending key (`offers[h3retik-micro].duration`).
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

impl Catalog {
    /// Checks the catalog as a whole: unique ids, consistent offers, known regions and images.
    pub fn check(&self) -> Result<(), CatalogError> {
        let err = |key: String, problem: String| Err(CatalogError { key, problem });
        let mut seen = HashSet::new();
        for offer in &self.offers {
            if !seen.insert(offer.id.as_str()) {
                return err(format!("offers[{}]", offer.id), "the id is used twice".into());
            }
            if let Err((key, problem)) = offer.check() {
                return err(format!("offers[{}].{key}", offer.id), problem);
            }
        }
        let regions: HashSet<&str> = self.regions.iter().map(|r| r.id.as_str()).collect();
        let images: HashSet<&str> = self.images.iter().map(|i| i.id.as_str()).collect();
        for offer in &self.offers {
            for (key, used, known) in
                [("regions", &offer.regions, &regions), ("images", &offer.images, &images)]
            {
                if let Some(unknown) = used.iter().find(|u| !known.contains(u.as_str())) {
                    return err(
                        format!("offers[{}].{key}", offer.id),
                        format!("`{unknown}` is not declared in the catalog's [[{key}]]"),
                    );
                }
            }
        }
        Ok(())
    }

    /// Fits the box offers to the images this host can make (`can_make` says why not): an image
    /// it cannot make is taken from an offer's choices (a buyer naming it is refused before
    /// paying, `unsupported_value`); an offer whose default image (or every image) it cannot make
    /// is unavailable, with the reason. What changed, one sentence each, for the operator's log.
    pub fn fit_to_images(&mut self, can_make: impl Fn(&str) -> Result<(), String>) -> Vec<String> {
        let mut changes = Vec::new();
        for offer in &mut self.offers {
            if !matches!(offer.kind, crate::OfferKind::Sandbox | crate::OfferKind::Machine)
                || !offer.available
            {
                continue;
            }
            let default =
                offer.default_image.clone().or_else(|| offer.images.is_empty().then(|| "host".to_owned()));
            let mut missing = Vec::new();
            offer.images.retain(|image| match can_make(image) {
                Ok(()) => true,
                Err(reason) => {
                    missing.push((image.clone(), reason));
                    false
                }
            });
            let default_reason = match &default {
                Some(image) => can_make(image).err(),
                None if offer.images.is_empty() => missing.first().map(|(_, reason)| reason.clone()),
                None => None,
            };
            if let Some(reason) = default_reason {
                changes.push(format!("offer {} is unavailable: {reason}", offer.id));
                offer.available = false;
                offer.unavailable_reason = Some(reason);
            } else {
                for (image, reason) in missing {
                    changes.push(format!("offer {} sells no `{image}`: {reason}", offer.id));
                }
            }
        }
        changes
    }

    /// Makes the offers whose boxes include egress unavailable, saying `reason`, when this host
    /// cannot give boxes egress; the changes, for the log.
    pub fn fit_to_egress(&mut self, reason: &str) -> Vec<String> {
        let mut changes = Vec::new();
        for offer in self.offers.iter_mut().filter(|o| o.available && o.includes_egress()) {
            changes.push(format!("offer {} is unavailable: {reason}", offer.id));
            offer.available = false;
            offer.unavailable_reason = Some(reason.to_owned());
        }
        changes
    }

    /// The offer with this id.
    pub fn offer(&self, id: &str) -> Result<&Offer, CoreError> {
        self.offers.iter().find(|o| o.id.as_str() == id).ok_or_else(|| CoreError::UnknownOffer(id.to_owned()))
    }

    /// The offers whose label `key` is `value`, in catalog order, available or not: the seed
    /// APIs name offers by their own ids (a VpsAgent `sku`, a Storefront `product_id`, an
    /// H3RETIK `package`, a lock `operation`).
    pub fn labelled<'a, 'k>(
        &'a self,
        key: &'k str,
        value: &'k str,
    ) -> impl Iterator<Item = &'a Offer> + use<'a, 'k> {
        self.offers.iter().filter(move |o| o.labels.get(key).is_some_and(|v| v == value))
    }

    /// The region with this id.
    pub fn region(&self, id: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.id == id)
    }

    /// The image with this id.
    pub fn image(&self, id: &str) -> Option<&Image> {
        self.images.iter().find(|i| i.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        let offers: Vec<Offer> = ["[\"debian-12\", \"host\"]", "[\"ubuntu-24.04\", \"debian-12\"]", "[]"]
            .iter()
            .enumerate()
            .map(|(n, images)| {
                let default = match n {
                    0 => "default_image = \"debian-12\"",
                    1 => "default_image = \"ubuntu-24.04\"",
                    _ => "",
                };
                toml::from_str(&format!(
                    "id = \"box-{n}\"\nkind = \"machine\"\ntitle = \"A box\"\nduration = {{ rule = \"fixed\", minutes = 5 }}\nimages = {images}\n{default}\nprice = {{}}"
                ))
                .unwrap()
            })
            .collect();
        Catalog { offers, ..Catalog::default() }
    }

    #[test]
    fn offers_keep_only_the_images_the_host_makes() {
        let only_host =
            |image: &str| if image == "host" { Ok(()) } else { Err(format!("no image `{image}`")) };
        let mut fitted = catalog();
        let changes = fitted.fit_to_images(only_host);
        // Its default image missing, the first is unavailable, saying why.
        assert!(!fitted.offers[0].available);
        assert_eq!(fitted.offers[0].unavailable_reason.as_deref(), Some("no image `debian-12`"));
        assert!(!fitted.offers[1].available);
        // An offer without images runs on `host`.
        assert!(fitted.offers[2].available);
        assert_eq!(changes.len(), 2, "{changes:?}");

        let no_ubuntu =
            |image: &str| if image.starts_with("ubuntu") { Err("no ubuntu".to_owned()) } else { Ok(()) };
        let mut fitted = catalog();
        fitted.fit_to_images(no_ubuntu);
        assert!(fitted.offers[0].available);
        assert_eq!(fitted.offers[0].images, ["debian-12", "host"]);
        assert!(!fitted.offers[1].available);
        // Serialised, the reason shows; configured, it cannot be set.
        let json = serde_json::to_value(&fitted.offers[1]).unwrap();
        assert_eq!(json["unavailable_reason"], "no ubuntu");
    }

    #[test]
    fn offers_with_egress_are_unavailable_on_a_host_without_it() {
        let mut fitted = catalog();
        fitted.offers[1].egress = Some(false);
        let changes = fitted.fit_to_egress("no nftables");
        assert!(!fitted.offers[0].available);
        assert_eq!(fitted.offers[0].unavailable_reason.as_deref(), Some("no nftables"));
        // An offer without egress is sold as before.
        assert!(fitted.offers[1].available);
        assert_eq!(changes.len(), 2, "{changes:?}");
    }
}
