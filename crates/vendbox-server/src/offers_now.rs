//! The catalog follows the image store while vendbox runs: an image built, imported (by the
//! operator or by SecretVM's registry pull) or removed changes, within moments and without a
//! restart, whether the offers naming it are for sale, everywhere offers are listed and bought.
//!
//! The store's directory is watched with inotify ([`ImageChanges`]); on a change the configured
//! catalog is fitted again ([`CatalogFit`]) and swapped in whole ([`LiveCatalog::replace`]), so no
//! request looks at the file system to know what is for sale. A slow round also fits it again,
//! in case the watch lost an event (a full inotify queue, the directory replaced).

use std::time::Duration;

use tokio::sync::watch;
use vendbox_box::image::{ImageChanges, ImageStore};
use vendbox_core::Catalog;
use vendbox_service::LiveCatalog;

/// How often the catalog is fitted again without being told of a change.
const BACKSTOP: Duration = Duration::from_mins(1);

/// How the configured catalog is fitted to what this host can make.
#[derive(Debug, Clone)]
pub struct CatalogFit {
    /// The catalog as configured, before any fitting (fitting takes images away).
    configured: Catalog,
    /// The host's images, when it runs boxes.
    images: Option<ImageStore>,
    /// Why boxes get no egress here, when the operator wants it but the host cannot give it.
    no_egress: Option<String>,
}

impl CatalogFit {
    /// Fits `configured` to `images` (none: the host runs no boxes, nothing is fitted) and to
    /// the egress the host can give.
    pub fn new(configured: Catalog, images: Option<ImageStore>, no_egress: Option<String>) -> CatalogFit {
        CatalogFit { configured, images, no_egress }
    }

    /// The catalog as this host can sell it now, and what fitting changed (for the log): an
    /// offer naming an image this host has not built is refused before any payment and listed
    /// as unavailable, with the reason (`vendbox image build …`), and likewise an offer whose
    /// boxes include egress when this host cannot give it.
    pub fn fitted(&self) -> (Catalog, Vec<String>) {
        let mut catalog = self.configured.clone();
        let mut changes = Vec::new();
        if let Some(images) = &self.images {
            changes.extend(catalog.fit_to_images(|image| images.check(image)));
            if let Some(reason) = &self.no_egress {
                changes.extend(catalog.fit_to_egress(reason));
            }
        }
        changes.sort();
        (catalog, changes)
    }
}

/// Keeps `live` fitted by `fit` as `changes` tell of the image store, until `stop` turns true.
pub async fn follow(
    live: LiveCatalog,
    fit: CatalogFit,
    mut changes: ImageChanges,
    mut stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        tokio::select! {
            () = changes.changed() => {}
            () = tokio::time::sleep(BACKSTOP) => {}
            _ = stop.changed() => continue,
        }
        let worker = fit.clone();
        // A few `stat`s per image offered, off the runtime's threads.
        let Ok((catalog, _)) = tokio::task::spawn_blocking(move || worker.fitted()).await else { continue };
        let before = live.now();
        if live.replace(catalog) {
            for change in differences(&before, &live.now()) {
                tracing::info!(target: "vendbox::offers", "{change}");
            }
        }
    }
}

/// What a fitting changed between `before` and `after`, one sentence per offer.
fn differences(before: &Catalog, after: &Catalog) -> Vec<String> {
    let mut changes = Vec::new();
    for offer in &after.offers {
        let Ok(was) = before.offer(offer.id.as_str()) else { continue };
        match (was.available, offer.available) {
            (false, true) => changes.push(format!("offer {} is for sale again", offer.id)),
            (true, false) => changes.push(format!(
                "offer {} is unavailable: {}",
                offer.id,
                offer.unavailable_reason.as_deref().unwrap_or("")
            )),
            _ if was.images != offer.images => {
                changes.push(format!("offer {} now sells images {:?}", offer.id, offer.images));
            }
            _ => {}
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        let offer = toml::from_str(
            "id = \"b\"\nkind = \"sandbox\"\ntitle = \"A box\"\nduration = { rule = \"fixed\", minutes = 5 }\n\
             images = [\"host\", \"tiny\"]\ndefault_image = \"tiny\"\nprice = {}",
        )
        .unwrap();
        Catalog { offers: vec![offer], ..Catalog::default() }
    }

    #[tokio::test]
    async fn an_image_placed_or_removed_changes_the_offer_within_moments() {
        let dir = tempfile::tempdir().unwrap();
        let images = ImageStore::of_data_dir(dir.path());
        let changes = images.watch().unwrap();
        let fit = CatalogFit::new(catalog(), Some(images.clone()), None);
        let (fitted, log) = fit.fitted();
        assert!(!fitted.offers[0].available, "{log:?}");
        let live = LiveCatalog::new(fitted);
        let (stop_tx, stop) = watch::channel(false);
        let following = tokio::spawn(follow(live.clone(), fit, changes, stop));
        let until = |available: bool| {
            let live = live.clone();
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                while live.now().offers[0].available != available {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "the offer never became available: {available}"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        // An image appears as the store places one: whole, by one rename.
        let partial = dir.path().join("images/.partial-tiny");
        std::fs::create_dir_all(partial.join("rootfs")).unwrap();
        std::fs::write(partial.join("image.json"), "{}").unwrap();
        std::fs::rename(&partial, dir.path().join("images/tiny")).unwrap();
        until(true).await;
        assert_eq!(live.now().offers[0].images, ["host", "tiny"]);
        std::fs::rename(dir.path().join("images/tiny"), &partial).unwrap();
        until(false).await;
        stop_tx.send(true).unwrap();
        following.await.unwrap();
    }
}
