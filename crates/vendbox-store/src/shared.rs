//! The SQL both stores share. The two schemas differ only in DDL; every query here is valid
//! on SQLite and PostgreSQL alike (`$n` placeholders, `RETURNING`, `ON CONFLICT`), so the
//! implementation of [`crate::Store`] is written once and stamped out per database by
//! [`store_impl!`], which keeps each backend a concrete, separately compiled type. The one
//! dialect difference, the SQL that reads the database's clock in Unix milliseconds (at the
//! transaction's start, and when read), is a parameter of the macro.

use chrono::{DateTime, Utc};
use vendbox_core::LeaseState;

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

/// `'a', 'b'` for an `IN (...)` list of lease states (fixed names, never user input).
pub(crate) fn lease_state_list(states: &[LeaseState]) -> String {
    states.iter().map(|s| format!("'{}'", s.as_str())).collect::<Vec<_>>().join(", ")
}

/// An amount or counter as read back (stored as signed BIGINT).
pub(crate) fn sql_to_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v} is negative")))
}

/// A lock TTL in milliseconds, as the SQL adds it to the clock.
pub(crate) fn ttl_ms(ttl: std::time::Duration) -> Result<i64, StoreError> {
    i64::try_from(ttl.as_millis()).map_err(|_| StoreError::Corrupt("lock TTL too long".into()))
}

/// An account's balance: the sum of its ledger.
pub(crate) const BALANCE_SQL: &str =
    "SELECT CAST(COALESCE(SUM(delta_atomic), 0) AS BIGINT) AS balance FROM ledger_entries WHERE account = $1";

/// Implements [`crate::Store`] for `$store`, whose `pool` field is a pool of database `$db`.
macro_rules! store_impl {
    ($store:ty, $db:ty, $backend:literal, now_ms = $now:literal, clock_ms = $clock:literal) => {
        impl $store {
            fn lock_from_row(r: &<$db as sqlx::Database>::Row) -> $crate::StoreResult<vendbox_core::Lock> {
                use sqlx::Row;
                use $crate::shared::from_ms;
                let required = |col: &str| -> $crate::StoreResult<i64> {
                    r.try_get::<Option<i64>, _>(col)?
                        .ok_or_else(|| $crate::StoreError::Corrupt(format!("locks.{col} is empty on a held lock")))
                };
                let metadata: Option<String> = r.try_get("metadata")?;
                Ok(vendbox_core::Lock {
                    key: vendbox_core::LockKey::parse(r.try_get("key")?)
                        .map_err(|e| $crate::StoreError::Corrupt(e.to_string()))?,
                    owner: r.try_get("owner")?,
                    fencing_token: vendbox_core::FencingToken($crate::shared::sql_to_u64(
                        r.try_get("fencing_token")?,
                        "locks.fencing_token",
                    )?),
                    acquired_at: from_ms(required("acquired_at")?)?,
                    expires_at: from_ms(required("expires_at")?)?,
                    ttl_ms: $crate::shared::sql_to_u64(required("ttl_ms")?, "locks.ttl_ms")?,
                    released_at: r.try_get::<Option<i64>, _>("released_at")?.map(from_ms).transpose()?,
                    metadata: metadata
                        .map(|m| serde_json::from_str(&m))
                        .transpose()
                        .map_err(|e| $crate::StoreError::Corrupt(format!("locks.metadata: {e}")))?,
                })
            }

            /// The grant on `key` made with `release`, as the store has it now (released,
            /// lapsed or held); `None` when there is none (never, or the key was granted since).
            async fn grant_of(
                &self,
                key: &vendbox_core::LockKey,
                release: &vendbox_core::TokenHash,
            ) -> $crate::StoreResult<Option<vendbox_core::Lock>> {
                let row = sqlx::query("SELECT * FROM locks WHERE key = $1 AND release_token_hash = $2")
                    .bind(key.as_str())
                    .bind(release.to_hex())
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(Self::lock_from_row).transpose()
            }

            fn quote_from_row(r: &<$db as sqlx::Database>::Row) -> $crate::StoreResult<vendbox_core::Quote> {
                use sqlx::Row;
                use $crate::shared::{from_ms, parse_text, sql_to_u32};
                let opt_u32 = |col: &str| -> $crate::StoreResult<Option<u32>> {
                    r.try_get::<Option<i64>, _>(col)?.map(|v| sql_to_u32(v, col)).transpose()
                };
                Ok(vendbox_core::Quote {
                    id: parse_text(r.try_get::<&str, _>("id")?, "quotes.id")?,
                    offer_id: parse_text(r.try_get::<&str, _>("offer_id")?, "quotes.offer_id")?,
                    terms: vendbox_core::QuoteTerms {
                        minutes: opt_u32("minutes")?,
                        actions: opt_u32("actions")?,
                        region: r.try_get("region")?,
                        image: r.try_get("image")?,
                        price: vendbox_core::Usdc($crate::shared::sql_to_u64(
                            r.try_get("price_atomic")?,
                            "quotes.price_atomic",
                        )?),
                    },
                    created_at: from_ms(r.try_get("created_at")?)?,
                    expires_at: from_ms(r.try_get("expires_at")?)?,
                })
            }

            fn payment_from_row(r: &<$db as sqlx::Database>::Row) -> $crate::StoreResult<vendbox_core::Payment> {
                use sqlx::Row;
                use $crate::shared::{from_ms, parse_name, parse_text};
                let quote_id: Option<&str> = r.try_get("quote_id")?;
                Ok(vendbox_core::Payment {
                    id: parse_text(r.try_get::<&str, _>("id")?, "payments.id")?,
                    quote_id: quote_id.map(|q| parse_text(q, "payments.quote_id")).transpose()?,
                    method: parse_name(r.try_get("method")?, "payments.method", vendbox_core::PaymentMethod::from_name)?,
                    replay_key: vendbox_core::ReplayKey {
                        chain: r.try_get("chain")?,
                        asset: r.try_get("asset")?,
                        payer: r.try_get("payer")?,
                        nonce: r.try_get("nonce")?,
                    },
                    amount: vendbox_core::Usdc($crate::shared::sql_to_u64(
                        r.try_get("amount_atomic")?,
                        "payments.amount_atomic",
                    )?),
                    state: parse_name(r.try_get("state")?, "payments.state", vendbox_core::PaymentState::from_name)?,
                    settlement_ref: r.try_get("settlement_ref")?,
                    void_reason: r.try_get("void_reason")?,
                    proof: r.try_get("proof")?,
                    created_at: from_ms(r.try_get("created_at")?)?,
                    updated_at: from_ms(r.try_get("updated_at")?)?,
                })
            }

            fn lease_from_row(r: &<$db as sqlx::Database>::Row) -> $crate::StoreResult<vendbox_core::Lease> {
                use sqlx::Row;
                use $crate::shared::{from_ms, parse_name, parse_text, sql_to_u32};
                let quote_id: Option<&str> = r.try_get("quote_id")?;
                let payment_id: Option<&str> = r.try_get("payment_id")?;
                let expires_at: Option<i64> = r.try_get("expires_at")?;
                let actions: Option<i64> = r.try_get("actions_remaining")?;
                Ok(vendbox_core::Lease {
                    id: parse_text(r.try_get::<&str, _>("id")?, "leases.id")?,
                    offer_id: parse_text(r.try_get::<&str, _>("offer_id")?, "leases.offer_id")?,
                    quote_id: quote_id.map(|q| parse_text(q, "leases.quote_id")).transpose()?,
                    payment_id: payment_id.map(|p| parse_text(p, "leases.payment_id")).transpose()?,
                    state: parse_name(r.try_get("state")?, "leases.state", vendbox_core::LeaseState::from_name)?,
                    region: r.try_get("region")?,
                    image: r.try_get("image")?,
                    box_id: r.try_get("box_id")?,
                    created_at: from_ms(r.try_get("created_at")?)?,
                    expires_at: expires_at.map(from_ms).transpose()?,
                    actions_remaining: actions.map(|a| sql_to_u32(a, "leases.actions_remaining")).transpose()?,
                    failure_reason: r.try_get("failure_reason")?,
                })
            }

            fn ledger_from_row(r: &<$db as sqlx::Database>::Row) -> $crate::StoreResult<vendbox_core::LedgerEntry> {
                use sqlx::Row;
                use $crate::shared::{from_ms, parse_name};
                Ok(vendbox_core::LedgerEntry {
                    id: r.try_get("id")?,
                    account: vendbox_core::AccountAddress::parse(r.try_get("account")?, "ledger_entries.account")
                        .map_err(|e| $crate::StoreError::Corrupt(e.to_string()))?,
                    kind: parse_name(r.try_get("kind")?, "ledger_entries.kind", vendbox_core::LedgerKind::from_name)?,
                    delta_atomic: r.try_get("delta_atomic")?,
                    reference: r.try_get("reference")?,
                    created_at: from_ms(r.try_get("created_at")?)?,
                })
            }
        }

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
                use $crate::shared::{atomic_to_sql, ms};
                sqlx::query(
                    "INSERT INTO quotes (id, offer_id, minutes, actions, region, image, price_atomic, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(q.id.to_string())
                .bind(q.offer_id.as_str())
                .bind(q.terms.minutes.map(i64::from))
                .bind(q.terms.actions.map(i64::from))
                .bind(q.terms.region.as_deref())
                .bind(q.terms.image.as_deref())
                .bind(atomic_to_sql(q.terms.price.atomic())?)
                .bind(ms(q.created_at))
                .bind(ms(q.expires_at))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn get_quote(&self, id: vendbox_core::QuoteId) -> $crate::StoreResult<Option<vendbox_core::Quote>> {
                let row = sqlx::query("SELECT * FROM quotes WHERE id = $1")
                    .bind(id.to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(Self::quote_from_row).transpose()
            }

            async fn delete_expired_quotes(&self, now: chrono::DateTime<chrono::Utc>) -> $crate::StoreResult<u64> {
                let done = sqlx::query(
                    "DELETE FROM quotes WHERE expires_at < $1 \
                     AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.quote_id = quotes.id) \
                     AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.quote_id = quotes.id)",
                )
                .bind($crate::shared::ms(now))
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected())
            }

            async fn reserve_payment(&self, p: &vendbox_core::Payment) -> $crate::StoreResult<()> {
                use $crate::shared::{atomic_to_sql, ms};
                if p.state != vendbox_core::PaymentState::Verified {
                    return Err($crate::StoreError::Conflict("a payment is reserved in the verified state".into()));
                }
                let result = sqlx::query(
                    "INSERT INTO payments (id, quote_id, method, chain, asset, payer, nonce, amount_atomic, state, \
                     settlement_ref, void_reason, proof, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, NULL, $10, $11, $12)",
                )
                .bind(p.id.to_string())
                .bind(p.quote_id.map(|q| q.to_string()))
                .bind(p.method.as_str())
                .bind(&p.replay_key.chain)
                .bind(&p.replay_key.asset)
                .bind(&p.replay_key.payer)
                .bind(&p.replay_key.nonce)
                .bind(atomic_to_sql(p.amount.atomic())?)
                .bind(p.state.as_str())
                .bind(p.proof.as_deref())
                .bind(ms(p.created_at))
                .bind(ms(p.updated_at))
                .execute(&self.pool)
                .await;
                match result {
                    Ok(_) => Ok(()),
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                        if e.message().contains("payments.id") || e.message().contains("payments_pkey") {
                            Err($crate::StoreError::Conflict(format!("payment {} exists", p.id)))
                        } else {
                            Err($crate::StoreError::ReplayKeyTaken)
                        }
                    }
                    Err(e) => Err(e.into()),
                }
            }

            async fn get_payment(&self, id: vendbox_core::PaymentId) -> $crate::StoreResult<Option<vendbox_core::Payment>> {
                let row = sqlx::query("SELECT * FROM payments WHERE id = $1")
                    .bind(id.to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(Self::payment_from_row).transpose()
            }

            async fn payment_by_replay_key(
                &self,
                key: &vendbox_core::ReplayKey,
            ) -> $crate::StoreResult<Option<vendbox_core::PaymentId>> {
                let row = sqlx::query(
                    "SELECT id FROM payments WHERE chain = $1 AND asset = $2 AND payer = $3 AND nonce = $4",
                )
                .bind(&key.chain)
                .bind(&key.asset)
                .bind(&key.payer)
                .bind(&key.nonce)
                .fetch_optional(&self.pool)
                .await?;
                match row {
                    None => Ok(None),
                    Some(r) => {
                        let id: String = sqlx::Row::try_get(&r, "id")?;
                        id.parse().map(Some).map_err(|_| {
                            $crate::StoreError::Corrupt(format!("payment id {id:?} is not a payment id"))
                        })
                    }
                }
            }

            async fn finish_payment(
                &self,
                id: vendbox_core::PaymentId,
                outcome: &$crate::PaymentOutcome,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<vendbox_core::Payment> {
                let (state, settlement_ref, void_reason) = match outcome {
                    $crate::PaymentOutcome::Settled { settlement_ref } => {
                        (vendbox_core::PaymentState::Settled, Some(settlement_ref.as_str()), None)
                    }
                    $crate::PaymentOutcome::Voided { reason } => {
                        (vendbox_core::PaymentState::Voided, None, Some(reason.as_str()))
                    }
                };
                let row = sqlx::query(
                    "UPDATE payments SET state = $1, settlement_ref = $2, void_reason = $3, updated_at = $4 \
                     WHERE id = $5 AND state = $6 RETURNING *",
                )
                .bind(state.as_str())
                .bind(settlement_ref)
                .bind(void_reason)
                .bind($crate::shared::ms(now))
                .bind(id.to_string())
                .bind(vendbox_core::PaymentState::Verified.as_str())
                .fetch_optional(&self.pool)
                .await?;
                match row {
                    Some(r) => Self::payment_from_row(&r),
                    None => match self.get_payment(id).await? {
                        None => Err($crate::StoreError::NotFound(format!("payment {id}"))),
                        Some(p) => Err(match p.state.checked_move(state) {
                            Err(rule) => $crate::StoreError::Rule(rule),
                            Ok(_) => $crate::StoreError::Conflict(format!("payment {id} changed concurrently")),
                        }),
                    },
                }
            }

            async fn payments_in_state(
                &self,
                state: vendbox_core::PaymentState,
                before: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> $crate::StoreResult<Vec<vendbox_core::Payment>> {
                let rows = sqlx::query(
                    "SELECT * FROM payments WHERE state = $1 AND updated_at < $2 ORDER BY updated_at, id LIMIT $3",
                )
                .bind(state.as_str())
                .bind($crate::shared::ms(before))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::payment_from_row).collect()
            }

            async fn payments_of_asset_in_state(
                &self,
                asset: &str,
                state: vendbox_core::PaymentState,
                before: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> $crate::StoreResult<Vec<vendbox_core::Payment>> {
                let rows = sqlx::query(
                    "SELECT * FROM payments WHERE state = $1 AND updated_at < $2 AND asset = $3 \
                     ORDER BY updated_at, id LIMIT $4",
                )
                .bind(state.as_str())
                .bind($crate::shared::ms(before))
                .bind(asset)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::payment_from_row).collect()
            }

            async fn insert_lease(
                &self,
                l: &vendbox_core::Lease,
                tokens: &[(vendbox_core::Capability, vendbox_core::TokenHash)],
            ) -> $crate::StoreResult<()> {
                use $crate::shared::ms;
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO leases (id, offer_id, quote_id, payment_id, state, region, image, box_id, \
                     created_at, updated_at, expires_at, actions_remaining, failure_reason) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                )
                .bind(l.id.to_string())
                .bind(l.offer_id.as_str())
                .bind(l.quote_id.map(|q| q.to_string()))
                .bind(l.payment_id.map(|p| p.to_string()))
                .bind(l.state.as_str())
                .bind(l.region.as_deref())
                .bind(l.image.as_deref())
                .bind(l.box_id.as_deref())
                .bind(ms(l.created_at))
                .bind(ms(l.created_at))
                .bind(l.expires_at.map(ms))
                .bind(l.actions_remaining.map(i64::from))
                .bind(l.failure_reason.as_deref())
                .execute(&mut *tx)
                .await?;
                for (capability, hash) in tokens {
                    sqlx::query("INSERT INTO lease_tokens (lease_id, capability, token_hash) VALUES ($1, $2, $3)")
                        .bind(l.id.to_string())
                        .bind(capability.as_str())
                        .bind(hash.to_hex())
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn get_lease(&self, id: vendbox_core::LeaseId) -> $crate::StoreResult<Option<vendbox_core::Lease>> {
                let row = sqlx::query("SELECT * FROM leases WHERE id = $1")
                    .bind(id.to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(Self::lease_from_row).transpose()
            }

            async fn lease_tokens(
                &self,
                id: vendbox_core::LeaseId,
            ) -> $crate::StoreResult<Vec<(vendbox_core::Capability, vendbox_core::TokenHash)>> {
                use sqlx::Row;
                let rows = sqlx::query("SELECT capability, token_hash FROM lease_tokens WHERE lease_id = $1")
                    .bind(id.to_string())
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| {
                        let capability = $crate::shared::parse_name(
                            r.try_get("capability")?,
                            "lease_tokens.capability",
                            vendbox_core::Capability::from_name,
                        )?;
                        let hash = $crate::shared::parse_name(
                            r.try_get("token_hash")?,
                            "lease_tokens.token_hash",
                            vendbox_core::TokenHash::from_hex,
                        )?;
                        Ok((capability, hash))
                    })
                    .collect()
            }

            async fn update_lease(
                &self,
                l: &vendbox_core::Lease,
                expected: vendbox_core::LeaseState,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<()> {
                use $crate::shared::ms;
                if expected != l.state {
                    expected.checked_move(l.state)?;
                }
                let done = sqlx::query(
                    "UPDATE leases SET state = $1, box_id = $2, expires_at = $3, actions_remaining = $4, \
                     failure_reason = $5, updated_at = $6 WHERE id = $7 AND state = $8",
                )
                .bind(l.state.as_str())
                .bind(l.box_id.as_deref())
                .bind(l.expires_at.map(ms))
                .bind(l.actions_remaining.map(i64::from))
                .bind(l.failure_reason.as_deref())
                .bind(ms(now))
                .bind(l.id.to_string())
                .bind(expected.as_str())
                .execute(&self.pool)
                .await?;
                if done.rows_affected() == 1 {
                    return Ok(());
                }
                match self.get_lease(l.id).await? {
                    None => Err($crate::StoreError::NotFound(format!("lease {}", l.id))),
                    Some(now_stored) => Err($crate::StoreError::Conflict(format!(
                        "lease {} is {}, not {}",
                        l.id,
                        now_stored.state.as_str(),
                        expected.as_str()
                    ))),
                }
            }

            async fn lease_for_token(
                &self,
                hash: &vendbox_core::TokenHash,
            ) -> $crate::StoreResult<Option<(vendbox_core::LeaseId, vendbox_core::Capability)>> {
                use sqlx::Row;
                let row = sqlx::query("SELECT lease_id, capability FROM lease_tokens WHERE token_hash = $1")
                    .bind(hash.to_hex())
                    .fetch_optional(&self.pool)
                    .await?;
                let Some(row) = row else { return Ok(None) };
                let id: String = row.try_get("lease_id")?;
                let id = id.parse().map_err(|_| $crate::StoreError::Corrupt(format!("lease_tokens.lease_id {id}")))?;
                let capability = $crate::shared::parse_name(
                    row.try_get("capability")?,
                    "lease_tokens.capability",
                    vendbox_core::Capability::from_name,
                )?;
                Ok(Some((id, capability)))
            }

            async fn lease_by_id_prefix(&self, prefix: &str) -> $crate::StoreResult<Option<vendbox_core::Lease>> {
                if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
                    return Ok(None);
                }
                let rows = sqlx::query("SELECT * FROM leases WHERE id LIKE $1 ORDER BY id LIMIT 2")
                    .bind(format!("{prefix}%"))
                    .fetch_all(&self.pool)
                    .await?;
                if rows.len() == 1 { rows.first().map(Self::lease_from_row).transpose() } else { Ok(None) }
            }

            async fn extend_lease(
                &self,
                id: vendbox_core::LeaseId,
                expected: chrono::DateTime<chrono::Utc>,
                until: chrono::DateTime<chrono::Utc>,
                payment: Option<vendbox_core::PaymentId>,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<u32> {
                use sqlx::Row;
                let row = sqlx::query(
                    "UPDATE leases SET expires_at = $3, renewal_count = renewal_count + 1, \
                     last_renewal_payment_id = COALESCE($4, last_renewal_payment_id), updated_at = $5 \
                     WHERE id = $1 AND state = 'active' AND expires_at = $2 RETURNING renewal_count",
                )
                .bind(id.to_string())
                .bind($crate::shared::ms(expected))
                .bind($crate::shared::ms(until))
                .bind(payment.map(|p| p.to_string()))
                .bind($crate::shared::ms(now))
                .fetch_optional(&self.pool)
                .await?;
                match row {
                    Some(r) => $crate::shared::sql_to_u32(r.try_get("renewal_count")?, "leases.renewal_count"),
                    None => Err($crate::StoreError::Conflict(format!("lease {id} is not active at that expiry"))),
                }
            }

            async fn lease_renewals(
                &self,
                id: vendbox_core::LeaseId,
            ) -> $crate::StoreResult<(u32, Option<vendbox_core::PaymentId>)> {
                use sqlx::Row;
                let row = sqlx::query("SELECT renewal_count, last_renewal_payment_id FROM leases WHERE id = $1")
                    .bind(id.to_string())
                    .fetch_optional(&self.pool)
                    .await?
                    .ok_or_else(|| $crate::StoreError::NotFound(format!("lease {id}")))?;
                let count = $crate::shared::sql_to_u32(row.try_get("renewal_count")?, "leases.renewal_count")?;
                let payment: Option<String> = row.try_get("last_renewal_payment_id")?;
                Ok((count, payment.and_then(|p| p.parse().ok())))
            }

            async fn claim_request(
                &self,
                request_id: &str,
                body_hash: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<Option<(String, Option<String>)>> {
                use sqlx::Row;
                // A claim whose request never recorded an answer (its vendbox stopped mid-way) is
                // taken over once it is older than a request can run.
                let inserted = sqlx::query(
                    "INSERT INTO lease_requests (request_id, body_hash, created_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (request_id) DO UPDATE SET body_hash = excluded.body_hash, \
                     created_at = excluded.created_at \
                     WHERE lease_requests.response IS NULL AND lease_requests.created_at < $4",
                )
                .bind(request_id)
                .bind(body_hash)
                .bind($crate::shared::ms(now))
                .bind($crate::shared::ms(now - $crate::STALE_REQUEST_CLAIM))
                .execute(&self.pool)
                .await?;
                if inserted.rows_affected() == 1 {
                    return Ok(None);
                }
                let row = sqlx::query("SELECT body_hash, response FROM lease_requests WHERE request_id = $1")
                    .bind(request_id)
                    .fetch_one(&self.pool)
                    .await?;
                Ok(Some((row.try_get("body_hash")?, row.try_get("response")?)))
            }

            async fn finish_request(
                &self,
                request_id: &str,
                lease: Option<vendbox_core::LeaseId>,
                response: &str,
            ) -> $crate::StoreResult<()> {
                sqlx::query("UPDATE lease_requests SET lease_id = $2, response = $3 WHERE request_id = $1")
                    .bind(request_id)
                    .bind(lease.map(|l| l.to_string()))
                    .bind(response)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn release_request(&self, request_id: &str) -> $crate::StoreResult<()> {
                sqlx::query("DELETE FROM lease_requests WHERE request_id = $1 AND response IS NULL")
                    .bind(request_id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn add_lease_ssh_key(
                &self,
                id: vendbox_core::LeaseId,
                fingerprint: &str,
                public_key: &str,
            ) -> $crate::StoreResult<()> {
                sqlx::query(
                    "INSERT INTO lease_ssh_keys (lease_id, fingerprint, public_key) VALUES ($1, $2, $3) \
                     ON CONFLICT (lease_id, fingerprint) DO NOTHING",
                )
                .bind(id.to_string())
                .bind(fingerprint)
                .bind(public_key)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn leases_for_ssh_key(&self, fingerprint: &str) -> $crate::StoreResult<Vec<vendbox_core::Lease>> {
                let rows = sqlx::query(
                    "SELECT l.* FROM leases l JOIN lease_ssh_keys k ON k.lease_id = l.id \
                     WHERE k.fingerprint = $1 ORDER BY l.created_at DESC, l.id",
                )
                .bind(fingerprint)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::lease_from_row).collect()
            }

            async fn refund_lease_action(
                &self,
                id: vendbox_core::LeaseId,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<()> {
                sqlx::query(
                    "UPDATE leases SET actions_remaining = actions_remaining + 1, updated_at = $2 \
                     WHERE id = $1 AND state = 'active' AND actions_remaining IS NOT NULL",
                )
                .bind(id.to_string())
                .bind($crate::shared::ms(now))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn spend_lease_action(
                &self,
                id: vendbox_core::LeaseId,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<Option<u32>> {
                use sqlx::Row;
                let row = sqlx::query(
                    "UPDATE leases SET actions_remaining = actions_remaining - 1, updated_at = $2 \
                     WHERE id = $1 AND state = 'active' AND actions_remaining > 0 \
                     AND (expires_at IS NULL OR expires_at > $2) RETURNING actions_remaining",
                )
                .bind(id.to_string())
                .bind($crate::shared::ms(now))
                .fetch_optional(&self.pool)
                .await?;
                if let Some(r) = row {
                    let left: i64 = r.try_get("actions_remaining")?;
                    return Ok(Some($crate::shared::sql_to_u32(left, "leases.actions_remaining")?));
                }
                match self.get_lease(id).await? {
                    None => Err($crate::StoreError::NotFound(format!("lease {id}"))),
                    Some(l) if l.state != vendbox_core::LeaseState::Active => {
                        Err($crate::StoreError::Conflict(format!("lease {id} is {}", l.state.as_str())))
                    }
                    Some(l) if l.expires_at.is_some_and(|at| at <= now) => {
                        Err($crate::StoreError::Conflict(format!("lease {id} has run out of time")))
                    }
                    Some(l) if l.actions_remaining.is_none() => Ok(None),
                    Some(_) => Err($crate::StoreError::ActionsExhausted),
                }
            }

            async fn leases_in_states(
                &self,
                states: &[vendbox_core::LeaseState],
            ) -> $crate::StoreResult<Vec<vendbox_core::Lease>> {
                if states.is_empty() {
                    return Ok(Vec::new());
                }
                let sql = format!(
                    "SELECT * FROM leases WHERE state IN ({}) ORDER BY created_at, id",
                    $crate::shared::lease_state_list(states)
                );
                let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
                rows.iter().map(Self::lease_from_row).collect()
            }

            async fn append_ledger(
                &self,
                account: &vendbox_core::AccountAddress,
                kind: vendbox_core::LedgerKind,
                amount: vendbox_core::Usdc,
                reference: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<vendbox_core::LedgerEntry> {
                use sqlx::Row;
                use $crate::shared::{atomic_to_sql, ms};
                let magnitude = atomic_to_sql(amount.atomic())?;
                let delta = if kind.is_credit() { magnitude } else { -magnitude };
                let mut tx = self.pool.begin().await?;
                // Writing the account row first takes its lock (a row lock on PostgreSQL, the write
                // lock on SQLite), so concurrent bookings on one account are serialized.
                sqlx::query(
                    "INSERT INTO accounts (address, created_at, updated_at) VALUES ($1, $2, $2) \
                     ON CONFLICT (address) DO UPDATE SET updated_at = excluded.updated_at",
                )
                .bind(account.as_str())
                .bind(ms(now))
                .execute(&mut *tx)
                .await?;
                let existing = sqlx::query(
                    "SELECT * FROM ledger_entries WHERE account = $1 AND kind = $2 AND reference = $3",
                )
                .bind(account.as_str())
                .bind(kind.as_str())
                .bind(reference)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(r) = existing {
                    tx.rollback().await?;
                    return Self::ledger_from_row(&r);
                }
                let balance: i64 = sqlx::query($crate::shared::BALANCE_SQL)
                .bind(account.as_str())
                .fetch_one(&mut *tx)
                .await?
                .try_get("balance")?;
                let after = balance.checked_add(delta).ok_or_else(|| {
                    $crate::StoreError::Corrupt(format!("balance of {account} overflows"))
                })?;
                if after < 0 {
                    tx.rollback().await?;
                    return Err($crate::StoreError::InsufficientBalance {
                        balance: vendbox_core::Usdc(u64::try_from(balance).unwrap_or(0)),
                        needed: amount,
                    });
                }
                let row = sqlx::query(
                    "INSERT INTO ledger_entries (account, kind, delta_atomic, reference, created_at) \
                     VALUES ($1, $2, $3, $4, $5) RETURNING *",
                )
                .bind(account.as_str())
                .bind(kind.as_str())
                .bind(delta)
                .bind(reference)
                .bind(ms(now))
                .fetch_one(&mut *tx)
                .await?;
                let entry = Self::ledger_from_row(&row)?;
                tx.commit().await?;
                Ok(entry)
            }

            async fn balance(&self, account: &vendbox_core::AccountAddress) -> $crate::StoreResult<vendbox_core::Usdc> {
                use sqlx::Row;
                let balance: i64 = sqlx::query($crate::shared::BALANCE_SQL)
                .bind(account.as_str())
                .fetch_one(&self.pool)
                .await?
                .try_get("balance")?;
                $crate::shared::sql_to_u64(balance, "balance").map(vendbox_core::Usdc)
            }

            async fn ledger(
                &self,
                account: &vendbox_core::AccountAddress,
                limit: u32,
            ) -> $crate::StoreResult<Vec<vendbox_core::LedgerEntry>> {
                let rows = sqlx::query("SELECT * FROM ledger_entries WHERE account = $1 ORDER BY id DESC LIMIT $2")
                    .bind(account.as_str())
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(Self::ledger_from_row).collect()
            }

            async fn acquire_lock(
                &self,
                key: &vendbox_core::LockKey,
                owner: Option<&str>,
                metadata: Option<&serde_json::Value>,
                ttl: std::time::Duration,
                release: &vendbox_core::TokenHash,
            ) -> $crate::StoreResult<$crate::LockAcquisition> {
                let ttl_ms = $crate::shared::ttl_ms(ttl)?;
                let metadata = metadata.map(serde_json::Value::to_string);
                // A held key answers no row; a free, released or lapsed one is granted with the
                // next token. The update reads the clock after it holds the row, so the grant
                // starts no earlier than the release or expiry before it. Between a refused grant
                // and reading the holder, the holder may lapse: try again.
                for _ in 0..8 {
                    let granted = sqlx::query(concat!(
                        "INSERT INTO locks (key, fencing_token, owner, release_token_hash, acquired_at, expires_at, \
                         ttl_ms, released_at, metadata) \
                         VALUES ($1, 1, $2, $3, ", $clock, ", ", $clock, " + $4, $4, NULL, $5) \
                         ON CONFLICT (key) DO UPDATE SET fencing_token = locks.fencing_token + 1, \
                         owner = excluded.owner, release_token_hash = excluded.release_token_hash, \
                         acquired_at = ", $clock, ", expires_at = ", $clock, " + excluded.ttl_ms, \
                         ttl_ms = excluded.ttl_ms, released_at = NULL, metadata = excluded.metadata \
                         WHERE locks.release_token_hash IS NULL OR locks.released_at IS NOT NULL \
                         OR locks.expires_at <= ", $clock, " \
                         RETURNING *"
                    ))
                    .bind(key.as_str())
                    .bind(owner)
                    .bind(release.to_hex())
                    .bind(ttl_ms)
                    .bind(metadata.as_deref())
                    .fetch_optional(&self.pool)
                    .await?;
                    if let Some(row) = granted {
                        return Ok($crate::LockAcquisition::Acquired(Self::lock_from_row(&row)?));
                    }
                    if let Some(holder) = self.get_lock(key).await? {
                        return Ok($crate::LockAcquisition::Held(holder));
                    }
                }
                Err($crate::StoreError::Conflict(format!("lock `{}` is changing hands too fast", key.as_str())))
            }

            async fn renew_lock(
                &self,
                key: &vendbox_core::LockKey,
                release: &vendbox_core::TokenHash,
                ttl: Option<std::time::Duration>,
            ) -> $crate::StoreResult<$crate::LockRenewal> {
                let ttl_ms = ttl.map($crate::shared::ttl_ms).transpose()?;
                let row = sqlx::query(concat!(
                    "UPDATE locks SET ttl_ms = COALESCE($3, ttl_ms), \
                     expires_at = ", $clock, " + COALESCE($3, ttl_ms) \
                     WHERE key = $1 AND release_token_hash = $2 AND released_at IS NULL AND expires_at > ", $clock,
                    " RETURNING *"
                ))
                .bind(key.as_str())
                .bind(release.to_hex())
                .bind(ttl_ms)
                .fetch_optional(&self.pool)
                .await?;
                if let Some(row) = row {
                    return Ok($crate::LockRenewal::Renewed(Self::lock_from_row(&row)?));
                }
                let grant = self.grant_of(key, release).await?;
                Ok($crate::LockRenewal::Refused($crate::LockRefusal::of(grant.as_ref())))
            }

            async fn lock_held_by(
                &self,
                key: &vendbox_core::LockKey,
                release: &vendbox_core::TokenHash,
            ) -> $crate::StoreResult<Result<vendbox_core::Lock, $crate::LockRefusal>> {
                let row = sqlx::query(concat!(
                    "SELECT * FROM locks WHERE key = $1 AND release_token_hash = $2 \
                     AND released_at IS NULL AND expires_at > ", $clock
                ))
                .bind(key.as_str())
                .bind(release.to_hex())
                .fetch_optional(&self.pool)
                .await?;
                if let Some(row) = row {
                    return Ok(Ok(Self::lock_from_row(&row)?));
                }
                let grant = self.grant_of(key, release).await?;
                Ok(Err($crate::LockRefusal::of(grant.as_ref())))
            }

            async fn release_lock(
                &self,
                key: &vendbox_core::LockKey,
                release: &vendbox_core::TokenHash,
            ) -> $crate::StoreResult<$crate::LockRelease> {
                let row = sqlx::query(concat!(
                    "UPDATE locks SET released_at = ", $clock, " \
                     WHERE key = $1 AND release_token_hash = $2 AND released_at IS NULL AND expires_at > ", $clock,
                    " RETURNING *"
                ))
                .bind(key.as_str())
                .bind(release.to_hex())
                .fetch_optional(&self.pool)
                .await?;
                if let Some(row) = row {
                    return Ok($crate::LockRelease::Released(Self::lock_from_row(&row)?));
                }
                // Released before with this token: answer as the first time.
                Ok(match self.grant_of(key, release).await? {
                    Some(grant) if grant.released_at.is_some() => $crate::LockRelease::AlreadyReleased(grant),
                    grant => $crate::LockRelease::Refused($crate::LockRefusal::of(grant.as_ref())),
                })
            }

            async fn get_lock(&self, key: &vendbox_core::LockKey) -> $crate::StoreResult<Option<vendbox_core::Lock>> {
                let row = sqlx::query(concat!(
                    "SELECT * FROM locks WHERE key = $1 AND release_token_hash IS NOT NULL \
                     AND released_at IS NULL AND expires_at > ",
                    $clock
                ))
                .bind(key.as_str())
                .fetch_optional(&self.pool)
                .await?;
                row.as_ref().map(Self::lock_from_row).transpose()
            }
        }
    };
}

pub(crate) use store_impl;
