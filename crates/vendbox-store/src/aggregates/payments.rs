//! Payments: verified payment proofs held by their replay key until they are settled or voided,
//! and the settlement worker's batches.

/// Writes the payment methods of `$store`, whose `pool` is a pool of database `$db`.
macro_rules! impl_payments {
    ($store:ty, $db:ty) => {
        impl $store {
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
                    purchase: r.try_get("purchase")?,
                    created_at: from_ms(r.try_get("created_at")?)?,
                    updated_at: from_ms(r.try_get("updated_at")?)?,
                })
            }

            async fn reserve_payment(&self, p: &vendbox_core::Payment) -> $crate::StoreResult<()> {
                // Group-committed with the other writes that wait (see `aggregates::locks`).
                let payment = Box::new(p.clone());
                self.locks
                    .run(&p.replay_key.payer, |reply| $crate::aggregates::locks::Op::Reserve { payment, reply })
                    .await
            }

            /// [`Store::reserve_payment`] on `conn` (within a transaction or not).
            async fn reserve_payment_in(
                conn: &mut <$db as sqlx::Database>::Connection,
                p: &vendbox_core::Payment,
            ) -> $crate::StoreResult<()> {
                if p.state != vendbox_core::PaymentState::Verified {
                    return Err($crate::StoreError::Conflict("a payment is reserved in the verified state".into()));
                }
                Self::record_payment_in(conn, p).await
            }

            /// [`Store::get_payment`] on `conn`.
            async fn payment_in(
                conn: &mut <$db as sqlx::Database>::Connection,
                id: vendbox_core::PaymentId,
            ) -> $crate::StoreResult<Option<vendbox_core::Payment>> {
                let row = sqlx::query("SELECT * FROM payments WHERE id = $1")
                    .bind(id.to_string())
                    .fetch_optional(&mut *conn)
                    .await?;
                row.as_ref().map(Self::payment_from_row).transpose()
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
                .fetch_optional(&self.reads)
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
                // Group-committed with the other writes that wait (see `aggregates::locks`).
                let outcome = outcome.clone();
                self.locks
                    .run(&id.to_string(), |reply| $crate::aggregates::locks::Op::Finish { id, outcome, now, reply })
                    .await
            }

            /// [`Store::finish_payment`] on `conn` (within a transaction or not).
            /// Records `p` as it stands (a payment made and finished in one transaction, such
            /// as a lock acquisition paid with credits), its replay key unique as a reservation's.
            async fn record_payment_in(
                conn: &mut <$db as sqlx::Database>::Connection,
                p: &vendbox_core::Payment,
            ) -> $crate::StoreResult<()> {
                use $crate::shared::{atomic_to_sql, ms};
                let result = sqlx::query(
                    "INSERT INTO payments (id, quote_id, method, chain, asset, payer, nonce, amount_atomic, state, \
                     settlement_ref, void_reason, proof, created_at, updated_at, purchase) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
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
                .bind(p.settlement_ref.as_deref())
                .bind(p.void_reason.as_deref())
                .bind(p.proof.as_deref())
                .bind(ms(p.created_at))
                .bind(ms(p.updated_at))
                .bind(p.purchase.as_deref())
                .execute(&mut *conn)
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

            async fn finish_payment_in(
                conn: &mut <$db as sqlx::Database>::Connection,
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
                .fetch_optional(&mut *conn)
                .await?;
                match row {
                    Some(r) => Self::payment_from_row(&r),
                    None => match Self::payment_in(&mut *conn, id).await? {
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

            async fn payments_by_payer(
                &self,
                payer: &str,
                before: Option<(chrono::DateTime<chrono::Utc>, vendbox_core::PaymentId)>,
                limit: u32,
            ) -> $crate::StoreResult<Vec<vendbox_core::Payment>> {
                let (at, id) = match before {
                    Some((at, id)) => ($crate::shared::ms(at), id.to_string()),
                    None => (i64::MAX, String::new()),
                };
                let rows = sqlx::query(
                    "SELECT * FROM payments WHERE payer = $1 AND (created_at < $2 OR (created_at = $2 AND id < $3)) \
                     ORDER BY created_at DESC, id DESC LIMIT $4",
                )
                .bind(payer.to_ascii_lowercase())
                .bind(at)
                .bind(id)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::payment_from_row).collect()
            }

            async fn payment_totals(&self, payer: &str) -> $crate::StoreResult<Vec<$crate::PaymentTotal>> {
                use sqlx::Row;
                let rows = sqlx::query(
                    "SELECT state, CAST(COUNT(*) AS BIGINT) AS n, CAST(COALESCE(SUM(amount_atomic), 0) AS BIGINT) AS amount \
                     FROM payments WHERE payer = $1 GROUP BY state ORDER BY state",
                )
                .bind(payer.to_ascii_lowercase())
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok($crate::PaymentTotal {
                            state: $crate::shared::parse_name(
                                r.try_get("state")?,
                                "payments.state",
                                vendbox_core::PaymentState::from_name,
                            )?,
                            count: $crate::shared::sql_to_u64(r.try_get("n")?, "count")?,
                            amount: vendbox_core::Usdc($crate::shared::sql_to_u64(r.try_get("amount")?, "amount")?),
                        })
                    })
                    .collect()
            }
        }
    };
}

pub(crate) use impl_payments;
