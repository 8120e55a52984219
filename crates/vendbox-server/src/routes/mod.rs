//! The native API's handlers, one module per resource.

pub mod boxes;
pub mod health;
pub mod locks;
pub mod offers;
pub mod payments;
pub mod ports;
pub mod quotes;
pub mod rentals;
pub mod sessions;
pub mod storefront;
pub mod vpsagent;
