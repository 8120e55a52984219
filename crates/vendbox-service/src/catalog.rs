//! [`LiveCatalog`]: the catalog as this host sells it now, replaced whole when what the host can
//! make changes (an image built, imported or removed while vendbox runs).

use std::sync::Arc;

use arc_swap::ArcSwap;
use vendbox_core::Catalog;

/// The catalog now. A reader takes one snapshot ([`LiveCatalog::now`]) and judges a whole
/// request by it; a change swaps in a new catalog without waiting for readers, and readers never
/// wait for it (no lock, no file system on the way).
#[derive(Debug, Clone, Default)]
pub struct LiveCatalog {
    current: Arc<ArcSwap<Catalog>>,
}

impl LiveCatalog {
    /// A catalog that is `catalog` until it is replaced.
    pub fn new(catalog: Catalog) -> LiveCatalog {
        LiveCatalog { current: Arc::new(ArcSwap::from_pointee(catalog)) }
    }

    /// The catalog as it is now.
    pub fn now(&self) -> Arc<Catalog> {
        self.current.load_full()
    }

    /// Makes `catalog` the catalog now, unless it is the same; whether it changed.
    pub fn replace(&self, catalog: Catalog) -> bool {
        if *self.current.load_full() == catalog {
            return false;
        }
        self.current.store(Arc::new(catalog));
        true
    }
}

impl From<Catalog> for LiveCatalog {
    fn from(catalog: Catalog) -> LiveCatalog {
        LiveCatalog::new(catalog)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_stays_as_it_was_when_the_catalog_is_replaced() {
        let live = LiveCatalog::new(Catalog::default());
        let before = live.now();
        let mut changed = Catalog::default();
        changed.credits.refund_unused = !changed.credits.refund_unused;
        assert!(live.replace(changed.clone()));
        assert!(!live.replace(changed.clone()), "the same catalog again is no change");
        assert_eq!(*before, Catalog::default());
        assert_eq!(*live.now(), changed);
        // Clones share it.
        let clone = live.clone();
        assert!(live.replace(Catalog::default()));
        assert_eq!(*clone.now(), Catalog::default());
    }
}
