//! [`PaymentMethod`]: one way of paying, behind one trait, so that the gate that runs paid work
//! (`vendbox-service`'s `Payments`) never knows which. A method says what to ask for a charge
//! (its [`Challenge`]), reads and checks a proof ([`PaymentMethod::check`], no I/O), verifies it
//! where the money is ([`PaymentMethod::verify`]), takes the money ([`PaymentMethod::settle`]),
//! and, after a crash, finds out whether a payment left half-done moved money
//! ([`PaymentMethod::recover`]). x402's `exact` scheme ([`crate::x402::X402Exact`]) is the first,
//! MPP's `evm` charge ([`crate::mpp::MppEvmCharge`]) the second; credits fit the same trait.
//!
//! Nothing here is HTTP: a [`Proof`] is the request's headers as the HTTP layer read them, and
//! challenges and receipts are header pairs and a JSON body for it to render.

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use vendbox_core::{Payment, PaymentId, Principal, Usdc};

use crate::reason::Rejection;

/// One thing to pay for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The price.
    pub amount: Usdc,
    /// The URL being paid for.
    pub resource: String,
    /// What is being paid for, for people.
    pub description: String,
    /// Media type of the paid response.
    pub mime_type: String,
    /// What kind of thing is bought, for methods whose payers limit what may be bought (an
    /// API key's scope, for credits).
    pub kind: ChargeKind,
}

/// What kind of thing a [`Charge`] buys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeKind {
    /// A lock (acquisition or renewal).
    Lock,
    /// A box or machine (purchase, renewal or extension).
    Box,
    /// Credits (a top-up): never paid with credits.
    TopUp,
    /// Anything else (a paid catalog).
    Other,
}

/// The payment headers of one request, as the HTTP layer read them (names in lowercase). A
/// value that is not text is kept as "unreadable", so that a method can refuse it by name.
/// It also carries the request's authenticated [`Principal`], when the HTTP layer's
/// authentication (a wallet signature or an API key) found one: no header can set it; and the
/// SHA-256 of the request's body, when the HTTP layer read one, for methods that bind a
/// challenge to the body it was issued for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proof {
    fields: Vec<(String, Option<String>)>,
    principal: Option<Principal>,
    body_sha256: Option<[u8; 32]>,
}

impl Proof {
    /// No proof at all.
    pub fn none() -> Proof {
        Proof::default()
    }

    /// Adds header `name` with raw `value`.
    #[must_use]
    pub fn with(mut self, name: &str, value: &[u8]) -> Proof {
        let text = std::str::from_utf8(value).ok().filter(|v| v.is_ascii()).map(str::to_owned);
        self.fields.push((name.to_ascii_lowercase(), text));
        self
    }

    /// Header `name`: `None` when absent, `Some(None)` when present but not ASCII text.
    pub fn header(&self, name: &str) -> Option<Option<&str>> {
        self.fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_deref())
    }

    /// Whether no header was read.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The proof, speaking for `principal` (set only by the HTTP layer's authentication).
    #[must_use]
    pub fn with_principal(mut self, principal: Principal) -> Proof {
        self.principal = Some(principal);
        self
    }

    /// Who the request was authenticated as, if anyone.
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    /// The proof, of a request whose body has SHA-256 `digest` (set only by the HTTP layer,
    /// which read the body).
    #[must_use]
    pub fn with_body_sha256(mut self, digest: [u8; 32]) -> Proof {
        self.body_sha256 = Some(digest);
        self
    }

    /// The SHA-256 of the request's body, when it had one and it was read.
    pub fn body_sha256(&self) -> Option<&[u8; 32]> {
        self.body_sha256.as_ref()
    }
}

/// What a method asks of a client that must pay: headers to send with the 402 and, for the
/// method that owns it, the 402's JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Challenge {
    /// `(name, value)` pairs, names in lowercase.
    pub headers: Vec<(&'static str, String)>,
    /// The body, if this method's clients read one.
    pub body: Option<Value>,
}

/// Proof that the money moved, for the paid answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Where the money moved: a transaction hash, a ledger entry; empty when not yet known.
    pub reference: String,
    /// Who paid.
    pub payer: String,
    /// The network in the payer's protocol's own words (for x402 v1 a chain's name, for v2 its
    /// CAIP-2 id).
    pub network: String,
    /// `(name, value)` pairs to send with the paid answer, names in lowercase.
    pub headers: Vec<(&'static str, String)>,
}

/// A proof that passed every check that needs no I/O, made into the payment to reserve.
pub struct Admission {
    /// The payment to reserve (state `verified`, with its replay key, amount and proof).
    pub payment: Payment,
    /// Who pays, for logs.
    pub payer: String,
    /// What the method needs again to verify and settle it.
    pub ticket: Box<dyn std::any::Any + Send + Sync>,
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("payment", &self.payment.id)
            .field("payer", &self.payer)
            .finish_non_exhaustive()
    }
}

/// Why a proof was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    /// The proof is bad, or the money is not there: the client must pay again.
    #[error("{0}")]
    Rejected(Rejection),
    /// Where the money is could not be asked right now; the client may retry the same proof.
    #[error("the payment could not be verified right now: {0}")]
    Unavailable(String),
}

/// Why a settlement did not take the money cleanly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettleFailure {
    /// Refused (the authorization was used meanwhile, the balance went): nothing was charged.
    #[error("the settlement was refused: {0}")]
    Refused(Rejection),
    /// Failed before the money could have moved: nothing was charged.
    #[error("{0}")]
    Failed(String),
    /// Sent, but not confirmed: the money may move. The work is delivered, and recovery after
    /// a restart finds out from where the money is.
    #[error("the settlement was sent but not confirmed: {message}")]
    Unconfirmed {
        /// The receipt as far as it is known.
        receipt: Receipt,
        /// What went wrong.
        message: String,
    },
}

/// What recovery found out about a payment a crash left `verified`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// The money moved.
    Settled {
        /// Where.
        reference: String,
    },
    /// The money did not move and never will through vendbox.
    Voided {
        /// Why, for the payment's record.
        reason: String,
    },
}

/// One way of paying.
#[async_trait]
pub trait PaymentMethod: Send + Sync + fmt::Debug {
    /// A short name, for logs.
    fn name(&self) -> &'static str;

    /// The request headers this method reads its proof from (lowercase).
    fn proof_headers(&self) -> &'static [&'static str];

    /// Whether `proof` holds a proof of this method (even a bad one).
    fn recognizes(&self, proof: &Proof) -> bool {
        self.proof_headers().iter().any(|name| proof.header(name).is_some())
    }

    /// Whether this method made `payment` (and so recovers it).
    fn made(&self, payment: &Payment) -> bool;

    /// The asset whose half-done payments this method recovers, as stored in replay keys.
    fn asset(&self) -> String;

    /// What to ask for `charge`, saying why in `code` (and `message`, for people).
    fn challenge(&self, charge: &Charge, code: &str, message: &str) -> Challenge;

    /// What to ask for `charge` of the request that came with `request` (for a method that
    /// binds its challenge to the request, such as its body's digest). By default, the same
    /// as [`PaymentMethod::challenge`].
    fn challenge_for(&self, charge: &Charge, request: &Proof, code: &str, message: &str) -> Challenge {
        let _ = request;
        self.challenge(charge, code, message)
    }

    /// Reads and checks `proof` against `charge` at `now`, with no I/O: the payment to reserve
    /// under `id`, or why not.
    fn check(
        &self,
        proof: &Proof,
        charge: &Charge,
        id: PaymentId,
        now: DateTime<Utc>,
    ) -> Result<Admission, Rejection>;

    /// Whether this method keeps the payment's record itself, where its money is: `verify`
    /// reserves the admitted payment (its replay key fresh for each admission, so the gate
    /// neither looks it up nor reserves it) and a successful `settle` records it settled, each in
    /// the write that sets the money aside or takes it. False by default: the gate reserves and
    /// records.
    fn keeps_records(&self) -> bool {
        false
    }

    /// Asks where the money is whether the admitted payment can be taken.
    async fn verify(&self, admission: &Admission, charge: &Charge) -> Result<(), AdmitError>;

    /// Takes the money.
    async fn settle(&self, admission: &Admission, charge: &Charge) -> Result<Receipt, SettleFailure>;

    /// Lets go of what [`PaymentMethod::verify`] set aside for an admitted payment that the gate
    /// then voids (its reservation failed, the work failed or sold nothing, the settlement was
    /// refused). Nothing by default: x402 sets nothing aside.
    async fn release(&self, _admission: &Admission) {}

    /// Finds out whether `payment`, left `verified` by a crash, moved money.
    async fn recover(&self, payment: &Payment) -> Result<Recovered, String>;

    /// The method itself, for a gate that offers a method it knows a path of its own (prepaid
    /// credits, whose money is in the gate's own store: paid work that can take the money in
    /// its own write). `None` by default: the gate runs the steps above.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_reads_its_headers_by_any_case_and_keeps_unreadable_ones() {
        let proof = Proof::none().with("X-Payment", b"abc").with("payment-signature", "é".as_bytes());
        assert_eq!(proof.header("x-payment"), Some(Some("abc")));
        assert_eq!(proof.header("PAYMENT-SIGNATURE"), Some(None), "not ASCII: present but unreadable");
        assert_eq!(proof.header("authorization"), None);
        assert!(!proof.is_empty());
        assert!(Proof::none().is_empty());
    }
}
