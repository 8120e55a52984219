//! [`Credits`]: prepaid credits as a [`PaymentMethod`], for any paid route. A request that
//! carries an authenticated [`Principal`] (a wallet's signature or one of its API keys, read by
//! the HTTP layer) and no x402 payment pays from its account's credits; with both, x402 pays (it
//! is listed first) and the principal only says who asks.
//!
//! Pay-on-success as with every method: `verify` holds the price if the account's available
//! credit (balance less holds) covers it and the key's scope and caps allow it, atomically per
//! account, and reserves the payment in the same write (`Store::place_hold`); `settle` books the
//! `charge` entry (its reference: the payment id), drops the hold and records the payment
//! settled in one transaction (`Store::settle_hold`), and the receipt names the ledger entry; a
//! void drops the hold (`release`); and recovery of a payment a crash left `verified` finds the
//! charge (settled) or drops the hold (voided). No chain is asked anything. Both writes are
//! group-committed with the store's lock operations, so a purchase paid with credits costs no
//! fsync of its own.
//!
//! Work whose own write can carry the charge (a lock grant) takes another way through the gate
//! (`Payments::pay_spending`): [`Credits::spend`] makes the admitted payment into a
//! `CreditSpend`, the work's write checks the credits and caps under the account's lock, grants,
//! books the charge and records the payment in one transaction, and [`Credits::charged`] and
//! [`Credits::refused`] word its receipt or refusal as the steps above would. Nothing is held, and nothing is left `verified`
//! for recovery.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::json;
use vendbox_core::{
    AccountAddress, KeyGrant, KeyScope, LedgerEntry, Payment, PaymentId, PaymentState, Principal, ReplayKey,
    Usdc,
};
use vendbox_pay::{
    Admission, AdmitError, Challenge, Charge, ChargeKind, PaymentMethod, Proof, Reason, Receipt, Recovered,
    Rejection, SettleFailure,
};
use vendbox_store::{CreditHold, CreditSpend, HoldRefusal, SpendCaps, Store, StoreError};

use crate::clock::Clock;

/// The replay key's chain of a credits payment (its nonce is the payment id).
pub const CREDITS_CHAIN: &str = "credits";

/// The replay key's asset of a credits payment.
pub const CREDITS_ASSET: &str = "usdc";

/// The header of a 402 that describes credits: `{"method":"credits","amount","topup","auth"}`.
pub const CREDITS_CHALLENGE: &str = "vendbox-credits";

/// The header of an answer paid with credits:
/// `{"method":"credits","reference":"<ledger entry id>","account","amount"}`.
pub const CREDITS_RECEIPT: &str = "vendbox-receipt";

/// The path where credits are bought.
pub const TOPUP_PATH: &str = "/v1/account/topup";

/// Prepaid credits, held at verification and charged at settlement.
#[derive(Debug)]
pub struct Credits {
    /// Where balances, holds and charges are.
    store: Arc<dyn Store>,
    /// The time holds are placed and charges booked at.
    clock: Arc<dyn Clock>,
    /// The absolute URL of the top-up route, for 402s.
    topup_url: String,
    /// How long a hold counts when nothing ends it (its payment was lost before it was reserved).
    hold_ttl: chrono::Duration,
}

impl Credits {
    /// Credits kept in `store`; `public_url` is the base of the top-up URL named in 402s.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, public_url: &str) -> Credits {
        Credits {
            store,
            clock,
            topup_url: format!("{}{TOPUP_PATH}", public_url.trim_end_matches('/')),
            hold_ttl: chrono::Duration::hours(1),
        }
    }

    /// The principal an admission was made for.
    fn principal(admission: &Admission) -> Option<&Principal> {
        admission.ticket.downcast_ref::<Principal>()
    }

    /// Refuses a purchase the key's scope does not cover.
    fn check_scope(key: &KeyGrant, charge: &Charge) -> Result<(), Rejection> {
        let refuse = |what: String| {
            Err(Rejection::new(
                Reason::KeyScope,
                format!(
                    "API key {} may buy {what}; pay this with the wallet's signature or a key whose scope covers it",
                    key.id
                ),
            ))
        };
        match (key.scope, charge.kind) {
            (_, ChargeKind::TopUp)
            | (KeyScope::All, _)
            | (KeyScope::LocksOnly | KeyScope::BoxesUpTo { .. }, ChargeKind::Lock) => Ok(()),
            (KeyScope::BoxesUpTo { max_price }, ChargeKind::Box) if charge.amount <= max_price => Ok(()),
            (KeyScope::LocksOnly, _) => refuse("locks only".into()),
            (KeyScope::BoxesUpTo { max_price }, _) => {
                refuse(format!("locks, and boxes of at most {max_price}"))
            }
        }
    }

    /// The caps of `key` (none for a wallet's own signature), their day starting at `now`'s.
    fn caps(key: Option<&KeyGrant>, now: DateTime<Utc>) -> SpendCaps {
        SpendCaps {
            daily: key.and_then(|k| k.daily_cap),
            since: day_start(now),
            total: key.and_then(|k| k.total_cap),
        }
    }

    /// Why `principal` may not spend `amount`, as the store refused it, in words that say what
    /// to do.
    fn refusal(&self, principal: &Principal, amount: Usdc, refusal: HoldRefusal) -> Rejection {
        let key_id = principal.key_id().unwrap_or_default();
        match refusal {
            HoldRefusal::Short { balance, held, needed } => {
                self.short(&principal.account, balance, held, needed)
            }
            HoldRefusal::DailyCap { cap, spent } => Rejection::new(
                Reason::KeyDailyCap,
                format!(
                    "API key {key_id} has a daily cap of {cap} and spent {spent} today (UTC); this costs {amount}"
                ),
            ),
            HoldRefusal::TotalCap { cap, spent } => Rejection::new(
                Reason::KeyTotalCap,
                format!("API key {key_id} has a total cap of {cap} and spent {spent}; this costs {amount}"),
            ),
        }
    }

    /// The receipt of a payment settled by the ledger entry `reference` (empty while unknown).
    fn receipt(admission: &Admission, reference: String) -> Receipt {
        Receipt {
            headers: vec![(
                CREDITS_RECEIPT,
                json!({
                    "method": "credits",
                    "reference": reference,
                    "account": admission.payer,
                    "amount": admission.payment.amount.to_string(),
                })
                .to_string(),
            )],
            reference,
            payer: admission.payer.clone(),
            network: CREDITS_CHAIN.into(),
        }
    }

    /// The admitted payment as credits to spend in the same write as the work it pays for
    /// (`Store::acquire_lock_paid`), rather than held at verification and charged at settlement:
    /// the same account, key, caps and price; `void_reason` is recorded if nothing is charged.
    pub fn spend(&self, admission: &Admission, void_reason: &str) -> Result<CreditSpend, AdmitError> {
        let principal = Credits::principal(admission)
            .ok_or_else(|| AdmitError::Unavailable("a credits admission without its account".into()))?;
        let now = self.clock.now();
        Ok(CreditSpend {
            payment: admission.payment.clone(),
            account: principal.account.clone(),
            key_id: principal.key_id().map(str::to_owned),
            caps: Credits::caps(principal.key.as_ref(), now),
            charge_when_held: false,
            void_reason: void_reason.to_owned(),
            now,
        })
    }

    /// The receipt of a spend the store charged with the ledger entry `charge`.
    pub fn charged(admission: &Admission, charge: &LedgerEntry) -> Receipt {
        Credits::receipt(admission, charge.id.to_string())
    }

    /// The refusal of a spend the store refused, in the words [`PaymentMethod::verify`] uses.
    pub fn refused(&self, admission: &Admission, refusal: HoldRefusal) -> Rejection {
        match Credits::principal(admission) {
            Some(principal) => self.refusal(principal, admission.payment.amount, refusal),
            None => Rejection::new(Reason::CreditsShort, "the credits of this account do not cover this"),
        }
    }

    fn short(&self, account: &AccountAddress, balance: Usdc, held: Usdc, needed: Usdc) -> Rejection {
        let available = balance.atomic().saturating_sub(held.atomic());
        let missing = Usdc(needed.atomic().saturating_sub(available));
        Rejection::new(
            Reason::CreditsShort,
            format!(
                "the credits of {account} are {missing} short: this costs {needed}, the balance \
                 is {balance} of which {held} is held for purchases in progress; top up with \
                 POST {} (missing: {missing})",
                self.topup_url
            ),
        )
    }
}

/// Midnight (UTC) of `now`'s day: where a key's daily cap starts again.
fn day_start(now: DateTime<Utc>) -> DateTime<Utc> {
    now.date_naive().and_hms_opt(0, 0, 0).map_or(now, |t| t.and_utc())
}

#[async_trait]
impl PaymentMethod for Credits {
    fn name(&self) -> &'static str {
        "credits"
    }

    fn proof_headers(&self) -> &'static [&'static str] {
        &[]
    }

    fn recognizes(&self, proof: &Proof) -> bool {
        proof.principal().is_some()
    }

    fn made(&self, payment: &Payment) -> bool {
        payment.replay_key.chain == CREDITS_CHAIN && payment.replay_key.asset == CREDITS_ASSET
    }

    fn keeps_records(&self) -> bool {
        true
    }

    fn asset(&self) -> String {
        CREDITS_ASSET.to_owned()
    }

    fn challenge(&self, charge: &Charge, code: &str, message: &str) -> Challenge {
        if charge.kind == ChargeKind::TopUp {
            return Challenge { headers: Vec::new(), body: None };
        }
        let body = json!({
            "method": "credits",
            "amount": charge.amount.to_string(),
            "topup": self.topup_url,
            "auth": "X-API-Key or Authorization: Bearer vbk_..., or an X-Auth-* wallet signature",
            "error": code,
            "message": message,
        });
        Challenge { headers: vec![(CREDITS_CHALLENGE, body.to_string())], body: None }
    }

    fn check(
        &self,
        proof: &Proof,
        charge: &Charge,
        id: PaymentId,
        now: DateTime<Utc>,
    ) -> Result<Admission, Rejection> {
        let principal = proof
            .principal()
            .ok_or_else(|| Rejection::new(Reason::Payload, "credits need an authenticated account"))?;
        if charge.kind == ChargeKind::TopUp {
            return Err(Rejection::new(
                Reason::Scheme,
                "credits cannot buy credits: pay a top-up with x402 (X-PAYMENT or PAYMENT-SIGNATURE)",
            ));
        }
        if let Some(key) = &principal.key {
            Credits::check_scope(key, charge)?;
        }
        let account = principal.account.as_str();
        let payment = Payment {
            id,
            quote_id: None,
            method: vendbox_core::PaymentMethod::Credits,
            replay_key: ReplayKey::new(CREDITS_CHAIN, CREDITS_ASSET, account, &id.to_string()),
            amount: charge.amount,
            state: PaymentState::Verified,
            settlement_ref: None,
            void_reason: None,
            proof: Some(json!({ "account": account, "key": principal.key_id() }).to_string()),
            purchase: None,
            created_at: now,
            updated_at: now,
        };
        Ok(Admission { payment, payer: account.to_owned(), ticket: Box::new(principal.clone()) })
    }

    async fn verify(&self, admission: &Admission, charge: &Charge) -> Result<(), AdmitError> {
        let principal = Credits::principal(admission)
            .ok_or_else(|| AdmitError::Unavailable("a credits admission without its account".into()))?;
        let now = self.clock.now();
        let caps = Credits::caps(principal.key.as_ref(), now);
        let hold = CreditHold {
            payment: admission.payment.id,
            account: principal.account.clone(),
            key_id: principal.key_id().map(str::to_owned),
            amount: charge.amount,
            expires_at: now + self.hold_ttl,
        };
        match self.store.place_hold(&hold, &caps, Some(&admission.payment), now).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(refusal)) => Err(AdmitError::Rejected(self.refusal(principal, charge.amount, refusal))),
            Err(StoreError::ReplayKeyTaken) => Err(AdmitError::Rejected(Rejection::new(
                Reason::Replayed,
                "this payment was reserved before; send the request again",
            ))),
            Err(e) => Err(AdmitError::Unavailable(format!("the credits could not be held: {e}"))),
        }
    }

    async fn settle(&self, admission: &Admission, _charge: &Charge) -> Result<Receipt, SettleFailure> {
        let id = admission.payment.id;
        let account = admission.payer.clone();
        let receipt = |reference: String| Credits::receipt(admission, reference);
        let principal = Credits::principal(admission)
            .ok_or_else(|| SettleFailure::Failed("a credits admission without its account".into()))?;
        match self.store.settle_hold(&principal.account, id, self.clock.now()).await {
            Ok(Some(entry)) => Ok(receipt(entry.id.to_string())),
            Ok(None) => Err(SettleFailure::Failed(
                "the credits held for this payment were let go before it could settle".into(),
            )),
            Err(StoreError::InsufficientBalance { balance, needed }) => {
                self.store.release_hold(id).await.ok();
                Err(SettleFailure::Refused(Rejection::new(
                    Reason::CreditsShort,
                    format!(
                        "the balance of {account} ({balance}) no longer covers {needed}; top up with \
                         POST {}",
                        self.topup_url
                    ),
                )))
            }
            // The charge may or may not have committed: delivered, and recovery reads the ledger.
            Err(e) => {
                Err(SettleFailure::Unconfirmed { receipt: receipt(String::new()), message: e.to_string() })
            }
        }
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    async fn release(&self, admission: &Admission) {
        if let Err(e) = self.store.release_hold(admission.payment.id).await {
            tracing::warn!(payment = %admission.payment.id, error = %e, "could not drop a credit hold; it lapses");
        }
    }

    async fn recover(&self, payment: &Payment) -> Result<Recovered, String> {
        let account = AccountAddress::parse(&payment.replay_key.payer, "payer").map_err(|e| e.to_string())?;
        match self.store.recover_hold(&account, payment.id, self.clock.now()).await {
            Ok(Some(entry)) => Ok(Recovered::Settled { reference: entry.id.to_string() }),
            Ok(None) => Ok(Recovered::Voided {
                reason: "the credits were never charged; the hold was dropped".into(),
            }),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(kind: ChargeKind, atomic: u64) -> Charge {
        Charge {
            amount: Usdc(atomic),
            resource: "http://x/y".into(),
            description: "d".into(),
            mime_type: "application/json".into(),
            kind,
        }
    }

    fn key(scope: KeyScope) -> KeyGrant {
        KeyGrant { id: "k1".into(), scope, daily_cap: None, total_cap: None }
    }

    #[test]
    fn scopes_limit_what_a_key_buys() {
        let locks = key(KeyScope::LocksOnly);
        assert!(Credits::check_scope(&locks, &charge(ChargeKind::Lock, 100)).is_ok());
        let refused = Credits::check_scope(&locks, &charge(ChargeKind::Box, 100)).unwrap_err();
        assert_eq!(refused.reason.code(), "key_scope");
        assert!(Credits::check_scope(&locks, &charge(ChargeKind::Other, 100)).is_err());
        let boxes = key(KeyScope::BoxesUpTo { max_price: Usdc(500) });
        assert!(Credits::check_scope(&boxes, &charge(ChargeKind::Box, 500)).is_ok());
        assert!(Credits::check_scope(&boxes, &charge(ChargeKind::Box, 501)).is_err());
        assert!(Credits::check_scope(&boxes, &charge(ChargeKind::Lock, 5_000)).is_ok());
        assert!(Credits::check_scope(&key(KeyScope::All), &charge(ChargeKind::Box, 9_999_999)).is_ok());
    }

    #[test]
    fn a_day_starts_at_utc_midnight() {
        let at = DateTime::parse_from_rfc3339("2026-11-21T17:45:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(day_start(at).to_rfc3339(), "2026-11-21T00:00:00+00:00");
    }
}
