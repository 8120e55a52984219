//! What both stores share. The two schemas differ only in DDL; every query is valid on SQLite and
//! PostgreSQL alike (`$n` placeholders, `RETURNING`, `ON CONFLICT`), so the implementation of
//! [`crate::Store`] is written once, one file per aggregate under [`crate::aggregates`], and
//! stamped out per database by [`store_impl!`], which keeps each backend a concrete, separately
//! compiled type. The dialect differences are parameters of the macro: the SQL that reads the
//! database's clock in Unix milliseconds (at the transaction's start, and when read), and the
//! clause that locks picked rows while skipping those another transaction holds.

use chrono::{DateTime, Utc};

use crate::StoreError;

/// Unix milliseconds, as stored.
pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// A stored Unix-millisecond time.
pub(crate) fn from_ms(v: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(v).ok_or_else(|| StoreError::Corrupt(format!("time {v} out of range")))
}

/// An amount as stored (SQL has no unsigned 64-bit integer).
pub(crate) fn atomic_to_sql(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("amount {v} does not fit in BIGINT")))
}

/// A count as read back.
pub(crate) fn sql_to_u32(v: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v} out of range")))
}

/// Parses a stored enum-like text with `parse`, naming the column when it fails.
pub(crate) fn parse_name<T>(text: &str, column: &str, parse: fn(&str) -> Option<T>) -> Result<T, StoreError> {
    parse(text).ok_or_else(|| StoreError::Corrupt(format!("{column} `{text}`")))
}

/// Parses a stored id or other `FromStr` value, naming the column when it fails.
pub(crate) fn parse_text<T: std::str::FromStr>(text: &str, column: &str) -> Result<T, StoreError> {
    text.parse().map_err(|_| StoreError::Corrupt(format!("{column} `{text}`")))
}

/// An amount or counter as read back (stored as signed BIGINT).
pub(crate) fn sql_to_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v} is negative")))
}

/// Implements [`crate::Store`] for `$store`, whose `pool` field is a pool of database `$db`: each
/// aggregate's macro writes its methods as inherent methods of `$store`, and the trait's methods
/// call them. (`async_trait` rewrites only the `async fn`s written in its own block, not those a
/// macro expands there, so the bodies cannot live in the trait's block.)
macro_rules! store_impl {
    (
        $store:ty,
        $db:ty,
        $backend:literal,
        clock_ms = $clock:literal,
        skip_locked = $skip_locked:literal,
        rows = $rows:literal,
        serialize_batch = $serialize_batch:literal,
        notify_released = $notify:literal,
        notify_batch = ($notify_open:literal, $notify_close:literal),
        keys_of_rows = $keys_of_rows:literal,
        charge_rows = $charge_rows:literal,
        payment_rows = $payment_rows:literal
    ) => {
        $crate::aggregates::quotes::impl_quotes!($store, $db);
        $crate::aggregates::payments::impl_payments!($store, $db);
        $crate::aggregates::leases::impl_leases!($store, $db, skip_locked = $skip_locked);
        $crate::aggregates::requests::impl_requests!($store);
        $crate::aggregates::ledger::impl_ledger!($store, $db);
        $crate::aggregates::keys::impl_keys!($store, $db);
        $crate::aggregates::e2b::impl_e2b!($store, $db);
        $crate::aggregates::vms::impl_vms!($store, $db);
        $crate::aggregates::locks::impl_locks!(
            $store,
            $db,
            clock_ms = $clock,
            rows = $rows,
            serialize_batch = $serialize_batch,
            notify_released = $notify,
            notify_batch = ($notify_open, $notify_close),
            keys_of_rows = $keys_of_rows,
            charge_rows = $charge_rows,
            payment_rows = $payment_rows
        );

        // Each method calls the inherent method of the same name, which method resolution picks
        // before the trait's (the inherent methods are private to the backend's module, so
        // callers outside it only ever see the trait's).
        #[async_trait::async_trait]
        impl $crate::Store for $store {
            fn backend(&self) -> &'static str {
                $backend
            }

            async fn ping(&self) -> $crate::StoreResult<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn insert_quote(&self, q: &vendbox_core::Quote) -> $crate::StoreResult<()> {
                self.insert_quote(q).await
            }

            async fn get_quote(
                &self,
                id: vendbox_core::QuoteId,
            ) -> $crate::StoreResult<Option<vendbox_core::Quote>> {
                self.get_quote(id).await
            }

            async fn delete_expired_quotes(
                &self,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<u64> {
                self.delete_expired_quotes(now).await
            }

            async fn reserve_payment(&self, p: &vendbox_core::Payment) -> $crate::StoreResult<()> {
                self.reserve_payment(p).await
            }

            async fn get_payment(
                &self,
                id: vendbox_core::PaymentId,
            ) -> $crate::StoreResult<Option<vendbox_core::Payment>> {
                self.get_payment(id).await
            }

            async fn payment_by_replay_key(
                &self,
                key: &vendbox_core::ReplayKey,
            ) -> $crate::StoreResult<Option<vendbox_core::PaymentId>> {
                self.payment_by_replay_key(key).await
            }

            async fn finish_payment(
                &self,
                id: vendbox_core::PaymentId,
                outcome: &$crate::PaymentOutcome,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<vendbox_core::Payment> {
                self.finish_payment(id, outcome, now).await
            }

            async fn payments_in_state(
                &self,
                state: vendbox_core::PaymentState,
                before: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> $crate::StoreResult<Vec<vendbox_core::Payment>> {
                self.payments_in_state(state, before, limit).await
            }

            async fn payments_of_asset_in_state(
                &self,
                asset: &str,
                state: vendbox_core::PaymentState,
                before: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> $crate::StoreResult<Vec<vendbox_core::Payment>> {
                self.payments_of_asset_in_state(asset, state, before, limit).await
            }

            async fn insert_lease(
                &self,
                l: &vendbox_core::Lease,
                tokens: &[(vendbox_core::Capability, vendbox_core::TokenHash)],
            ) -> $crate::StoreResult<()> {
                self.insert_lease(l, tokens).await
            }

            async fn get_lease(
                &self,
                id: vendbox_core::LeaseId,
            ) -> $crate::StoreResult<Option<vendbox_core::Lease>> {
                self.get_lease(id).await
            }

            async fn lease_tokens(
                &self,
                id: vendbox_core::LeaseId,
            ) -> $crate::StoreResult<Vec<(vendbox_core::Capability, vendbox_core::TokenHash)>> {
                self.lease_tokens(id).await
            }

            async fn update_lease(
                &self,
                l: &vendbox_core::Lease,
                expected: vendbox_core::LeaseState,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<()> {
                self.update_lease(l, expected, now).await
            }

            async fn end_lease_refunding(
                &self,
                l: &vendbox_core::Lease,
                expected: vendbox_core::LeaseState,
                now: chrono::DateTime<chrono::Utc>,
                refund: Option<&$crate::LeaseRefund>,
            ) -> $crate::StoreResult<Option<vendbox_core::LedgerEntry>> {
                self.end_lease_refunding(l, expected, now, refund).await
            }

            async fn spend_lease_action(
                &self,
                id: vendbox_core::LeaseId,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<Option<u32>> {
                self.spend_lease_action(id, now).await
            }

            async fn refund_lease_action(
                &self,
                id: vendbox_core::LeaseId,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<()> {
                self.refund_lease_action(id, now).await
            }

            async fn add_lease_ssh_key(
                &self,
                id: vendbox_core::LeaseId,
                fingerprint: &str,
                public_key: &str,
            ) -> $crate::StoreResult<()> {
                self.add_lease_ssh_key(id, fingerprint, public_key).await
            }

            async fn leases_for_ssh_key(
                &self,
                fingerprint: &str,
            ) -> $crate::StoreResult<Vec<vendbox_core::Lease>> {
                self.leases_for_ssh_key(fingerprint).await
            }

            async fn lease_for_token(
                &self,
                hash: &vendbox_core::TokenHash,
            ) -> $crate::StoreResult<Option<(vendbox_core::LeaseId, vendbox_core::Capability)>> {
                self.lease_for_token(hash).await
            }

            async fn lease_by_id_prefix(
                &self,
                prefix: &str,
            ) -> $crate::StoreResult<Option<vendbox_core::Lease>> {
                self.lease_by_id_prefix(prefix).await
            }

            async fn extend_lease(
                &self,
                id: vendbox_core::LeaseId,
                expected: chrono::DateTime<chrono::Utc>,
                until: chrono::DateTime<chrono::Utc>,
                payment: Option<vendbox_core::PaymentId>,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<u32> {
                self.extend_lease(id, expected, until, payment, now).await
            }

            async fn lease_renewal_paid(
                &self,
                id: vendbox_core::LeaseId,
            ) -> $crate::StoreResult<vendbox_core::Usdc> {
                self.lease_renewal_paid(id).await
            }

            async fn lease_renewals(
                &self,
                id: vendbox_core::LeaseId,
            ) -> $crate::StoreResult<(u32, Option<vendbox_core::PaymentId>)> {
                self.lease_renewals(id).await
            }

            async fn claim_request(
                &self,
                request_id: &str,
                body_hash: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<Option<(String, Option<String>)>> {
                self.claim_request(request_id, body_hash, now).await
            }

            async fn finish_request(
                &self,
                request_id: &str,
                lease: Option<vendbox_core::LeaseId>,
                response: &str,
            ) -> $crate::StoreResult<()> {
                self.finish_request(request_id, lease, response).await
            }

            async fn release_request(&self, request_id: &str) -> $crate::StoreResult<()> {
                self.release_request(request_id).await
            }

            async fn request_claim(
                &self,
                request_id: &str,
            ) -> $crate::StoreResult<Option<(String, Option<String>)>> {
                self.request_claim(request_id).await
            }

            async fn leases_in_states(
                &self,
                states: &[vendbox_core::LeaseState],
            ) -> $crate::StoreResult<Vec<vendbox_core::Lease>> {
                self.leases_in_states(states).await
            }

            async fn end_due_leases(
                &self,
                now: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> $crate::StoreResult<Vec<vendbox_core::Lease>> {
                self.end_due_leases(now, limit).await
            }

            async fn pend_top_up(
                &self,
                top_up: &$crate::PendingTopUp,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<()> {
                self.pend_top_up(top_up, now).await
            }

            async fn book_top_up(
                &self,
                top_up: &$crate::PendingTopUp,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<vendbox_core::LedgerEntry> {
                self.book_top_up(top_up, now).await
            }

            async fn unfinished_top_ups(
                &self,
                limit: u32,
            ) -> $crate::StoreResult<Vec<($crate::PendingTopUp, vendbox_core::PaymentState)>> {
                self.unfinished_top_ups(limit).await
            }

            async fn drop_pending_top_up(&self, payment: vendbox_core::PaymentId) -> $crate::StoreResult<()> {
                self.drop_pending_top_up(payment).await
            }

            async fn append_ledger(
                &self,
                account: &vendbox_core::AccountAddress,
                kind: vendbox_core::LedgerKind,
                amount: vendbox_core::Usdc,
                reference: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<vendbox_core::LedgerEntry> {
                self.append_ledger(account, kind, amount, reference, now).await
            }

            async fn balance(
                &self,
                account: &vendbox_core::AccountAddress,
            ) -> $crate::StoreResult<vendbox_core::Usdc> {
                self.balance(account).await
            }

            async fn ledger(
                &self,
                account: &vendbox_core::AccountAddress,
                limit: u32,
            ) -> $crate::StoreResult<Vec<vendbox_core::LedgerEntry>> {
                self.ledger(account, limit).await
            }

            async fn ledger_page(
                &self,
                account: &vendbox_core::AccountAddress,
                before: Option<i64>,
                limit: u32,
            ) -> $crate::StoreResult<Vec<vendbox_core::LedgerEntry>> {
                self.ledger_page(account, before, limit).await
            }

            async fn funds(
                &self,
                account: &vendbox_core::AccountAddress,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<$crate::Funds> {
                self.funds(account, now).await
            }

            async fn place_hold(
                &self,
                hold: &$crate::CreditHold,
                caps: &$crate::SpendCaps,
                reserve: Option<&vendbox_core::Payment>,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<Result<(), $crate::HoldRefusal>> {
                self.place_hold(hold, caps, reserve, now).await
            }

            async fn settle_hold(
                &self,
                account: &vendbox_core::AccountAddress,
                payment: vendbox_core::PaymentId,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<Option<vendbox_core::LedgerEntry>> {
                self.settle_hold(account, payment, now).await
            }

            async fn release_hold(&self, payment: vendbox_core::PaymentId) -> $crate::StoreResult<bool> {
                self.release_hold(payment).await
            }

            async fn recover_hold(
                &self,
                account: &vendbox_core::AccountAddress,
                payment: vendbox_core::PaymentId,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<Option<vendbox_core::LedgerEntry>> {
                self.recover_hold(account, payment, now).await
            }

            async fn payments_by_payer(
                &self,
                payer: &str,
                before: Option<(chrono::DateTime<chrono::Utc>, vendbox_core::PaymentId)>,
                limit: u32,
            ) -> $crate::StoreResult<Vec<vendbox_core::Payment>> {
                self.payments_by_payer(payer, before, limit).await
            }

            async fn payment_totals(&self, payer: &str) -> $crate::StoreResult<Vec<$crate::PaymentTotal>> {
                self.payment_totals(payer).await
            }

            async fn claim_auth_nonce(
                &self,
                account: &vendbox_core::AccountAddress,
                nonce: &str,
                expires_at: chrono::DateTime<chrono::Utc>,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<bool> {
                self.claim_auth_nonce(account, nonce, expires_at, now).await
            }

            async fn release_auth_nonce(
                &self,
                account: &vendbox_core::AccountAddress,
                nonce: &str,
            ) -> $crate::StoreResult<bool> {
                self.release_auth_nonce(account, nonce).await
            }

            async fn purge_auth_nonces(
                &self,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<u64> {
                self.purge_auth_nonces(now).await
            }

            async fn insert_api_key(
                &self,
                key: &$crate::ApiKey,
                hash: &vendbox_core::TokenHash,
            ) -> $crate::StoreResult<()> {
                self.insert_api_key(key, hash).await
            }

            async fn api_key_by_hash(
                &self,
                hash: &vendbox_core::TokenHash,
            ) -> $crate::StoreResult<Option<$crate::ApiKey>> {
                self.api_key_by_hash(hash).await
            }

            async fn api_keys_of(
                &self,
                account: &vendbox_core::AccountAddress,
            ) -> $crate::StoreResult<Vec<$crate::ApiKey>> {
                self.api_keys_of(account).await
            }

            async fn revoke_api_key(
                &self,
                account: &vendbox_core::AccountAddress,
                id: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<Option<$crate::ApiKey>> {
                self.revoke_api_key(account, id, now).await
            }

            async fn insert_secret_vm(&self, vm: &$crate::SecretVm) -> $crate::StoreResult<()> {
                self.insert_secret_vm(vm).await
            }

            async fn secret_vm(&self, id: &str) -> $crate::StoreResult<Option<$crate::SecretVm>> {
                self.secret_vm(id).await
            }

            async fn update_secret_vm(
                &self,
                vm: &$crate::SecretVm,
                expected_status: &str,
            ) -> $crate::StoreResult<bool> {
                self.update_secret_vm(vm, expected_status).await
            }

            async fn secret_vms_billable(
                &self,
                status: &str,
                now: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> $crate::StoreResult<Vec<$crate::SecretVm>> {
                self.secret_vms_billable(status, now, limit).await
            }

            async fn secret_vms_stale(
                &self,
                status: &str,
                updated_before: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> $crate::StoreResult<Vec<$crate::SecretVm>> {
                self.secret_vms_stale(status, updated_before, limit).await
            }

            async fn add_secret_vm_box(
                &self,
                vm_id: &str,
                position: u32,
                service: &str,
                lease: vendbox_core::LeaseId,
            ) -> $crate::StoreResult<()> {
                self.add_secret_vm_box(vm_id, position, service, lease).await
            }

            async fn secret_vm_boxes(
                &self,
                vm_id: &str,
            ) -> $crate::StoreResult<Vec<(String, vendbox_core::LeaseId)>> {
                self.secret_vm_boxes(vm_id).await
            }

            async fn insert_compute_instance(
                &self,
                instance: &$crate::ComputeInstance,
            ) -> $crate::StoreResult<()> {
                self.insert_compute_instance(instance).await
            }

            async fn compute_instance(
                &self,
                lease: vendbox_core::LeaseId,
            ) -> $crate::StoreResult<Option<$crate::ComputeInstance>> {
                self.compute_instance(lease).await
            }

            async fn compute_instances_of(
                &self,
                owner: &vendbox_core::AccountAddress,
            ) -> $crate::StoreResult<Vec<$crate::ComputeInstance>> {
                self.compute_instances_of(owner).await
            }

            async fn issue_instance_password(
                &self,
                lease: vendbox_core::LeaseId,
                root: &vendbox_core::TokenHash,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<bool> {
                self.issue_instance_password(lease, root, now).await
            }

            async fn insert_e2b_sandbox(&self, sandbox: &$crate::E2bSandbox) -> $crate::StoreResult<()> {
                self.insert_e2b_sandbox(sandbox).await
            }

            async fn e2b_sandbox(
                &self,
                lease: vendbox_core::LeaseId,
            ) -> $crate::StoreResult<Option<$crate::E2bSandbox>> {
                self.e2b_sandbox(lease).await
            }

            async fn e2b_sandboxes_of(
                &self,
                owner: &vendbox_core::AccountAddress,
            ) -> $crate::StoreResult<Vec<$crate::E2bSandbox>> {
                self.e2b_sandboxes_of(owner).await
            }

            async fn add_e2b_access_token(
                &self,
                lease: vendbox_core::LeaseId,
                token: &vendbox_core::TokenHash,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<bool> {
                self.add_e2b_access_token(lease, token, now).await
            }

            async fn is_e2b_access_token(
                &self,
                lease: vendbox_core::LeaseId,
                token: &vendbox_core::TokenHash,
            ) -> $crate::StoreResult<bool> {
                self.is_e2b_access_token(lease, token).await
            }

            async fn acquire_lock(
                &self,
                key: &vendbox_core::LockKey,
                owner: Option<&str>,
                metadata: Option<&serde_json::Value>,
                ttl: std::time::Duration,
                release: &vendbox_core::TokenHash,
            ) -> $crate::StoreResult<$crate::LockAcquisition> {
                self.acquire_lock(key, owner, metadata, ttl, release).await
            }

            async fn acquire_lock_paid(
                &self,
                key: &vendbox_core::LockKey,
                owner: Option<&str>,
                metadata: Option<&serde_json::Value>,
                ttl: std::time::Duration,
                release: &vendbox_core::TokenHash,
                spend: &$crate::CreditSpend,
            ) -> $crate::StoreResult<$crate::PaidAcquisition> {
                self.acquire_lock_paid(key, owner, metadata, ttl, release, spend).await
            }

            async fn renew_lock(
                &self,
                key: &vendbox_core::LockKey,
                release: &vendbox_core::TokenHash,
                ttl: Option<std::time::Duration>,
            ) -> $crate::StoreResult<$crate::LockRenewal> {
                self.renew_lock(key, release, ttl).await
            }

            async fn lock_held_by(
                &self,
                key: &vendbox_core::LockKey,
                release: &vendbox_core::TokenHash,
            ) -> $crate::StoreResult<Result<vendbox_core::Lock, $crate::LockRefusal>> {
                self.lock_held_by(key, release).await
            }

            async fn release_lock(
                &self,
                key: &vendbox_core::LockKey,
                release: &vendbox_core::TokenHash,
            ) -> $crate::StoreResult<$crate::LockRelease> {
                self.release_lock(key, release).await
            }

            async fn get_lock(
                &self,
                key: &vendbox_core::LockKey,
            ) -> $crate::StoreResult<Option<vendbox_core::Lock>> {
                self.get_lock(key).await
            }

            fn lock_releases(&self) -> tokio::sync::broadcast::Receiver<vendbox_core::LockKey> {
                self.lock_releases()
            }
        }
    };
}

pub(crate) use store_impl;
