//! vendbox's service layer: the business rules every surface shares (the native API, the seed
//! APIs, the SSH gateway, and those to come), with no HTTP in it. Each service returns a typed
//! error with a stable `code()`; the HTTP layer maps codes to statuses in one place. Time comes
//! from one injected [`Clock`].
//!
//! - `leases.rs`: [`Boxes`], the lifecycle of leases with a box (provision, end, expiry, sweep,
//!   reconcile) and the capacity they are sold from;
//! - `exec.rs`: commands, each spending one action;
//! - `access.rs`: capability tokens and SSH keys;
//! - `auth.rs`: [`Auth`], who a request speaks for (a wallet's signature or its API key), and
//!   API keys with scopes and caps;
//! - `purchase.rs`: extensions and renewals;
//! - `orders.rs`: idempotency claims;
//! - `catalog.rs`: [`LiveCatalog`], the catalog as this host sells it now;
//! - `records.rs`: [`Records`], quotes, payments and the store's health;
//! - `locks.rs`: [`Locks`], TTL locks with fencing tokens, priced by the catalog;
//! - `payments.rs`: [`Payments`], the gate of paid work: any `vendbox_pay::PaymentMethod`,
//!   pay-on-success, and recovery of payments a crash left half-done;
//! - `credits.rs`: [`Credits`], prepaid credits as a payment method (holds, charges, key caps);
//! - `accounts.rs`: [`Accounts`], top-ups, balances, ledgers and a wallet's payments;
//! - `e2b.rs`: [`Sandboxes`], E2B's sandboxes (templates, owners, timeouts, envd access);
//! - `vms/`: [`Vms`], SecretVM's agents (`x-agent` signatures) and VMs (docker-compose
//!   workloads in a box, charged from credits by the period).

mod access;
pub mod accounts;
pub mod auth;
mod catalog;
pub mod clock;
pub mod compute;
pub mod credits;
pub mod e2b;
mod error;
mod exec;
mod leases;
pub mod locks;
mod orders;
pub mod payments;
mod purchase;
mod records;
pub mod vms;

pub use access::SshKey;
pub use accounts::{AccountError, AccountSummary, Accounts, PaymentsPage};
pub use auth::{Auth, AuthError, NewKey, SignedRequest};
pub use catalog::LiveCatalog;
pub use clock::{Clock, ManualClock, SystemClock};
pub use compute::{Compute, ComputeError, ComputeInstance, ComputeOrder};
pub use credits::Credits;
pub use e2b::{E2bError, E2bOrder, E2bSandbox, Sandboxes};
pub use error::LeaseError;
pub use exec::{DEFAULT_EXEC_TIMEOUT, MAX_DOWNLOAD_BYTES, MAX_EXEC_TIMEOUT, MAX_OUTPUT_BYTES, Ran};
pub use leases::{Boxes, EXPIRY_BATCH, PodPlace, Provisioned, Reconciled};
pub use locks::{LockError, LockWaiters, Locks};
pub use payments::{Coded, Delivery, Faults, Paid, PayError, Payments, RecoverError, Spent, Unconfigured};
pub use purchase::Extension;
pub use records::{RecordError, Records};
/// An API key as `Auth` lists it.
pub use vendbox_store::ApiKey;
/// What credit-paid work is given to spend (see [`Payments::pay_spending`]).
pub use vendbox_store::CreditSpend;
pub use vms::{Agent, AgentRequest, NewVm, VmError, VmSettings, VmView, Vms};
