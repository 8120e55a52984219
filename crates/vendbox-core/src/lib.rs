//! vendbox's domain: money, offers and the catalog, quotes, payments, leases, locks, accounts
//! and capability tokens. Pure: no I/O, no async runtime, no HTTP, SQL or chains.

pub mod account;
pub mod catalog;
pub mod error;
pub mod ids;
pub mod lease;
pub mod lock;
pub mod money;
pub mod offer;
pub mod payment;
pub mod principal;
pub mod quote;
pub mod token;

pub use account::{AccountAddress, LedgerEntry, LedgerKind};
pub use catalog::{Catalog, CatalogError, CreditsPolicy, Image, Region};
pub use error::{CoreError, FieldError, FieldErrorCode};
pub use ids::{LeaseId, OfferId, PaymentId, QuoteId};
pub use lease::{Lease, LeaseState};
pub use lock::{FencingToken, Lock, LockKey, LockRequest, check_ttl};
pub use money::Usdc;
pub use offer::{
    ActionRule, DurationRule, Gpu, Offer, OfferKind, PriceRule, QuoteParams, QuoteTerms, Resources,
};
pub use payment::{Payment, PaymentMethod, PaymentState, ReplayKey};
pub use principal::{API_KEY_PREFIX, KeyGrant, KeyScope, Principal, generate_api_key};
pub use quote::Quote;
pub use token::{Capability, SecretToken, TokenHash};
