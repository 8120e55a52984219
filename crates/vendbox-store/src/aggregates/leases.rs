//! Leases: what a buyer got, moved through its states by compare-and-set, with its action budget
//! and expiry changed only by conditional `UPDATE`s; and what opens a lease: its capability
//! tokens (stored as hashes) and the SSH keys allowed into its box.

use vendbox_core::LeaseState;

/// `'a', 'b'` for an `IN (...)` list of lease states (fixed names, never user input).
pub(crate) fn lease_state_list(states: &[LeaseState]) -> String {
    states.iter().map(|s| format!("'{}'", s.as_str())).collect::<Vec<_>>().join(", ")
}

/// Writes the lease methods of `$store`, whose `pool` is a pool of database `$db`;
/// `$skip_locked` is the locking clause with which a statement picks rows that no other transaction
/// holds (empty where one writer at a time is all there is).
macro_rules! impl_leases {
    ($store:ty, $db:ty, skip_locked = $skip_locked:literal) => {
        impl $store {
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

            async fn update_lease(
                &self,
                l: &vendbox_core::Lease,
                expected: vendbox_core::LeaseState,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<()> {
                if expected != l.state {
                    expected.checked_move(l.state)?;
                }
                let mut conn = self.pool.acquire().await?;
                if Self::write_lease(&mut conn, l, expected, now).await? {
                    return Ok(());
                }
                drop(conn);
                Err(self.lease_not_moved(l, expected).await)
            }

            /// Writes `l` over the stored lease if that is still `expected`; whether it was.
            async fn write_lease(
                conn: &mut <$db as sqlx::Database>::Connection,
                l: &vendbox_core::Lease,
                expected: vendbox_core::LeaseState,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<bool> {
                use $crate::shared::ms;
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
                .execute(conn)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            /// Why `l` was not written over a lease in state `expected`: it is gone, or in
            /// another state.
            async fn lease_not_moved(
                &self,
                l: &vendbox_core::Lease,
                expected: vendbox_core::LeaseState,
            ) -> $crate::StoreError {
                match self.get_lease(l.id).await {
                    Err(e) => e,
                    Ok(None) => $crate::StoreError::NotFound(format!("lease {}", l.id)),
                    Ok(Some(stored)) => $crate::StoreError::Conflict(format!(
                        "lease {} is {}, not {}",
                        l.id,
                        stored.state.as_str(),
                        expected.as_str()
                    )),
                }
            }

            async fn end_lease_refunding(
                &self,
                l: &vendbox_core::Lease,
                expected: vendbox_core::LeaseState,
                now: chrono::DateTime<chrono::Utc>,
                refund: Option<&$crate::LeaseRefund>,
            ) -> $crate::StoreResult<Option<vendbox_core::LedgerEntry>> {
                if expected != l.state {
                    expected.checked_move(l.state)?;
                }
                let mut tx = self.pool.begin().await?;
                if !Self::write_lease(&mut tx, l, expected, now).await? {
                    tx.rollback().await?;
                    return Err(self.lease_not_moved(l, expected).await);
                }
                let entry = match refund {
                    Some(refund) => Some(
                        Self::append_ledger_in(
                            &mut tx,
                            &refund.account,
                            vendbox_core::LedgerKind::Refund,
                            refund.amount,
                            &l.id.to_string(),
                            now,
                        )
                        .await?,
                    ),
                    None => None,
                };
                tx.commit().await?;
                Ok(entry)
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
                    $crate::aggregates::leases::lease_state_list(states)
                );
                let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
                rows.iter().map(Self::lease_from_row).collect()
            }

            async fn end_due_leases(
                &self,
                now: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> $crate::StoreResult<Vec<vendbox_core::Lease>> {
                use vendbox_core::LeaseState;
                // The move update_lease would check for `active → expired`.
                LeaseState::Active.checked_move(LeaseState::Expired)?;
                // One statement, so one transaction: the caller's `now` (the clock that set the
                // leases' `expires_at`) decides what is due, a range of the
                // `leases_state (state, expires_at)` index. The picked rows are locked as they are picked, skipping
                // rows another host holds, then changed by compare-and-set on their state as
                // update_lease changes them (no failure reason). The pick is MATERIALIZED so that
                // it runs once: a locking subquery run again for each joined row skips the rows
                // this statement already changed and picks more, past `limit`. PostgreSQL's
                // `RETURNING *` also answers `due_id`; rows are read by column name.
                let rows = sqlx::query(concat!(
                    "WITH due AS MATERIALIZED (SELECT id AS due_id FROM leases \
                     WHERE state = 'active' AND box_id IS NOT NULL AND expires_at <= $2 \
                     ORDER BY expires_at, id LIMIT $1 ", $skip_locked, ") \
                     UPDATE leases SET state = 'expired', failure_reason = NULL, updated_at = $2 \
                     FROM due WHERE leases.id = due.due_id AND leases.state = 'active' \
                     RETURNING *"
                ))
                .bind(i64::from(limit))
                .bind($crate::shared::ms(now))
                .fetch_all(&self.pool)
                .await?;
                let mut ended = rows.iter().map(Self::lease_from_row).collect::<$crate::StoreResult<Vec<_>>>()?;
                // RETURNING keeps no order: most overdue first, as picked.
                ended.sort_by_key(|l| (l.expires_at, l.id));
                Ok(ended)
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
                     last_renewal_payment_id = COALESCE($4, last_renewal_payment_id), updated_at = $5, \
                     renewal_paid_atomic = renewal_paid_atomic + \
                     COALESCE((SELECT amount_atomic FROM payments WHERE id = $4), 0) \
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

            async fn lease_renewal_paid(&self, id: vendbox_core::LeaseId) -> $crate::StoreResult<vendbox_core::Usdc> {
                use sqlx::Row;
                let row = sqlx::query("SELECT renewal_paid_atomic FROM leases WHERE id = $1")
                    .bind(id.to_string())
                    .fetch_optional(&self.pool)
                    .await?
                    .ok_or_else(|| $crate::StoreError::NotFound(format!("lease {id}")))?;
                let paid = $crate::shared::sql_to_u64(row.try_get("renewal_paid_atomic")?, "leases.renewal_paid_atomic")?;
                Ok(vendbox_core::Usdc(paid))
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
        }
    };
}

pub(crate) use impl_leases;
