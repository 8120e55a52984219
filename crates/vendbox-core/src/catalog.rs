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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditsPolicy {
    /// Smallest balance an account must hold before it may buy from its credits (SecretVM's
    /// `AGENT_MIN_BALANCE`).
    #[serde(default)]
    pub min_balance: Usdc,
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
