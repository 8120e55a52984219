//! The store's SQL, one file per aggregate. Each file holds one macro that writes its
//! aggregate's methods as inherent methods of a store type, given the store's database (and,
//! where its statements read it, the SQL of the database's clock); [`crate::shared::store_impl!`]
//! stamps them all out for each backend and implements [`crate::Store`] by calling them.

pub(crate) mod e2b;
pub(crate) mod keys;
pub(crate) mod leases;
pub(crate) mod ledger;
pub(crate) mod locks;
pub(crate) mod payments;
pub(crate) mod quotes;
pub(crate) mod requests;
pub(crate) mod vms;
