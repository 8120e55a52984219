//! vendbox-pay: x402 and MPP payments. The wire formats of x402 protocol versions 1 and 2, the
//! `exact` scheme on EVM chains (EIP-3009), MPP's "Payment" HTTP authentication scheme with its
//! `evm` charge ([`mpp`]), and the facilitators that verify and settle payments.
//!
//! The server asks this crate three questions: what it accepts for a charge (`challenge`), whether
//! a proof is good (`exact::check`, then `Facilitator::verify`), and to take or let go of the money
//! (`Facilitator::settle`; a payment that is never settled costs the payer nothing).

pub mod chain;
pub mod client;
pub mod devchain;
pub mod eip3009;
pub mod exact;
pub mod facilitator;
pub mod fake;
pub mod keys;
pub mod method;
pub mod mpp;
pub mod network;
pub mod reason;
pub mod wire;
pub mod x402;

pub use keys::{BadSignature, EvmAddress, Wallet, recover_personal_signer};
pub use method::{
    Admission, AdmitError, Challenge, Charge, ChargeKind, PaymentMethod, Proof, Receipt, Recovered,
    SettleFailure,
};
pub use network::Network;
pub use reason::{Reason, Rejection};
