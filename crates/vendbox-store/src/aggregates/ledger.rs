//! Accounts and their ledgers: a balance is the sum of an account's entries (kept on the
//! account's row, which every entry updates in the statement that books it), and a booking
//! writes the account row first, which serializes bookings per account. Credits spent on a
//! purchase are held first (`credit_holds`): an account's available credit is its balance less
//! its unexpired holds, a hold is placed only when that covers it (and the spending key's caps
//! allow it), and settling books the charge and drops the hold in one transaction.

/// An account's balance: the sum of its ledger, kept on its row by the trigger
/// `ledger_entries_add_to_balance` (migration 0009), so reading it does not grow with the ledger.
pub(crate) const BALANCE_SQL: &str =
    "SELECT CAST(COALESCE((SELECT balance_atomic FROM accounts WHERE address = $1), 0) AS BIGINT) AS balance";

/// An account's balance and its unexpired holds (`$2`: now, in Unix milliseconds).
pub(crate) const FUNDS_SQL: &str = "SELECT \
     CAST(COALESCE((SELECT balance_atomic FROM accounts WHERE address = $1), 0) AS BIGINT) AS balance, \
     CAST((SELECT COALESCE(SUM(amount_atomic), 0) FROM credit_holds WHERE account = $1 AND expires_at > $2) \
     AS BIGINT) AS held";

/// What an API key spent since `$2` and in all (its charges, and its unexpired holds; `$3`: now).
pub(crate) const KEY_SPENT_SQL: &str = "SELECT \
     CAST((SELECT COALESCE(SUM(-delta_atomic), 0) FROM ledger_entries \
           WHERE key_id = $1 AND kind = 'charge' AND created_at >= $2) AS BIGINT) AS charged_since, \
     CAST((SELECT COALESCE(SUM(-delta_atomic), 0) FROM ledger_entries \
           WHERE key_id = $1 AND kind = 'charge') AS BIGINT) AS charged, \
     CAST((SELECT COALESCE(SUM(amount_atomic), 0) FROM credit_holds \
           WHERE key_id = $1 AND expires_at > $3) AS BIGINT) AS held";

/// Writes the ledger methods of `$store`, whose `pool` is a pool of database `$db`.
macro_rules! impl_ledger {
    ($store:ty, $db:ty) => {
        impl $store {
            fn ledger_from_row(
                r: &<$db as sqlx::Database>::Row,
            ) -> $crate::StoreResult<vendbox_core::LedgerEntry> {
                use sqlx::Row;
                use $crate::shared::{from_ms, parse_name};
                Ok(vendbox_core::LedgerEntry {
                    id: r.try_get("id")?,
                    account: vendbox_core::AccountAddress::parse(
                        r.try_get("account")?,
                        "ledger_entries.account",
                    )
                    .map_err(|e| $crate::StoreError::Corrupt(e.to_string()))?,
                    kind: parse_name(
                        r.try_get("kind")?,
                        "ledger_entries.kind",
                        vendbox_core::LedgerKind::from_name,
                    )?,
                    delta_atomic: r.try_get("delta_atomic")?,
                    reference: r.try_get("reference")?,
                    created_at: from_ms(r.try_get("created_at")?)?,
                })
            }

            async fn append_ledger(
                &self,
                account: &vendbox_core::AccountAddress,
                kind: vendbox_core::LedgerKind,
                amount: vendbox_core::Usdc,
                reference: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<vendbox_core::LedgerEntry> {
                let mut tx = self.pool.begin().await?;
                let entry = Self::append_ledger_in(&mut tx, account, kind, amount, reference, now).await?;
                tx.commit().await?;
                Ok(entry)
            }

            /// Books an entry inside the transaction `tx` (see `Store::append_ledger`): the one
            /// already booked for `(account, kind, reference)` when there is one.
            async fn append_ledger_in(
                tx: &mut <$db as sqlx::Database>::Connection,
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
                // Writing the account row first takes its lock (a row lock on PostgreSQL, the write
                // lock on SQLite), so concurrent bookings on one account are serialized.
                Self::lock_account(&mut *tx, account, now).await?;
                let existing = sqlx::query(
                    "SELECT * FROM ledger_entries WHERE account = $1 AND kind = $2 AND reference = $3",
                )
                .bind(account.as_str())
                .bind(kind.as_str())
                .bind(reference)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(r) = existing {
                    return Self::ledger_from_row(&r);
                }
                let balance: i64 = sqlx::query($crate::aggregates::ledger::BALANCE_SQL)
                    .bind(account.as_str())
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("balance")?;
                let after = balance
                    .checked_add(delta)
                    .ok_or_else(|| $crate::StoreError::Corrupt(format!("balance of {account} overflows")))?;
                if after < 0 {
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
                Self::ledger_from_row(&row)
            }

            async fn pend_top_up(
                &self,
                top_up: &$crate::PendingTopUp,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<()> {
                sqlx::query(
                    "INSERT INTO pending_top_ups (payment_id, account, amount_atomic, created_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (payment_id) DO NOTHING",
                )
                .bind(top_up.payment.to_string())
                .bind(top_up.account.as_str())
                .bind($crate::shared::atomic_to_sql(top_up.amount.atomic())?)
                .bind($crate::shared::ms(now))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn book_top_up(
                &self,
                top_up: &$crate::PendingTopUp,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<vendbox_core::LedgerEntry> {
                let mut tx = self.pool.begin().await?;
                let entry = Self::append_ledger_in(
                    &mut tx,
                    &top_up.account,
                    vendbox_core::LedgerKind::TopUp,
                    top_up.amount,
                    &top_up.payment.to_string(),
                    now,
                )
                .await?;
                sqlx::query("DELETE FROM pending_top_ups WHERE payment_id = $1")
                    .bind(top_up.payment.to_string())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(entry)
            }

            async fn unfinished_top_ups(
                &self,
                limit: u32,
            ) -> $crate::StoreResult<Vec<($crate::PendingTopUp, vendbox_core::PaymentState)>> {
                use sqlx::Row;
                let rows = sqlx::query(
                    "SELECT t.payment_id, t.account, t.amount_atomic, p.state FROM pending_top_ups t \
                     JOIN payments p ON p.id = t.payment_id WHERE p.state <> $1 ORDER BY t.created_at LIMIT $2",
                )
                .bind(vendbox_core::PaymentState::Verified.as_str())
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        let corrupt = |e: String| $crate::StoreError::Corrupt(e);
                        let id: String = r.try_get("payment_id")?;
                        let top_up = $crate::PendingTopUp {
                            payment: id.parse().map_err(|_| corrupt(format!("pending_top_ups.payment_id {id:?}")))?,
                            account: vendbox_core::AccountAddress::parse(r.try_get("account")?, "pending_top_ups.account")
                                .map_err(|e| corrupt(e.to_string()))?,
                            amount: vendbox_core::Usdc($crate::shared::sql_to_u64(
                                r.try_get("amount_atomic")?,
                                "pending_top_ups.amount_atomic",
                            )?),
                        };
                        let state = $crate::shared::parse_name(
                            r.try_get("state")?,
                            "payments.state",
                            vendbox_core::PaymentState::from_name,
                        )?;
                        Ok((top_up, state))
                    })
                    .collect()
            }

            async fn drop_pending_top_up(&self, payment: vendbox_core::PaymentId) -> $crate::StoreResult<()> {
                sqlx::query("DELETE FROM pending_top_ups WHERE payment_id = $1")
                    .bind(payment.to_string())
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn balance(
                &self,
                account: &vendbox_core::AccountAddress,
            ) -> $crate::StoreResult<vendbox_core::Usdc> {
                use sqlx::Row;
                let balance: i64 = sqlx::query($crate::aggregates::ledger::BALANCE_SQL)
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
                let rows =
                    sqlx::query("SELECT * FROM ledger_entries WHERE account = $1 ORDER BY id DESC LIMIT $2")
                        .bind(account.as_str())
                        .bind(i64::from(limit))
                        .fetch_all(&self.pool)
                        .await?;
                rows.iter().map(Self::ledger_from_row).collect()
            }

            async fn ledger_page(
                &self,
                account: &vendbox_core::AccountAddress,
                before: Option<i64>,
                limit: u32,
            ) -> $crate::StoreResult<Vec<vendbox_core::LedgerEntry>> {
                let rows = sqlx::query(
                    "SELECT * FROM ledger_entries WHERE account = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
                )
                .bind(account.as_str())
                .bind(before.unwrap_or(i64::MAX))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::ledger_from_row).collect()
            }

            /// Writes the account row (creating it), which takes its lock for the transaction.
            async fn lock_account(
                tx: &mut <$db as sqlx::Database>::Connection,
                account: &vendbox_core::AccountAddress,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<()> {
                sqlx::query(
                    "INSERT INTO accounts (address, created_at, updated_at) VALUES ($1, $2, $2) \
                     ON CONFLICT (address) DO UPDATE SET updated_at = excluded.updated_at",
                )
                .bind(account.as_str())
                .bind($crate::shared::ms(now))
                .execute(&mut *tx)
                .await?;
                Ok(())
            }

            async fn funds(
                &self,
                account: &vendbox_core::AccountAddress,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<$crate::Funds> {
                use sqlx::Row;
                let row = sqlx::query($crate::aggregates::ledger::FUNDS_SQL)
                    .bind(account.as_str())
                    .bind($crate::shared::ms(now))
                    .fetch_one(&self.pool)
                    .await?;
                Ok($crate::Funds {
                    balance: vendbox_core::Usdc($crate::shared::sql_to_u64(row.try_get("balance")?, "balance")?),
                    held: vendbox_core::Usdc($crate::shared::sql_to_u64(row.try_get("held")?, "held")?),
                })
            }

            async fn place_hold(
                &self,
                hold: &$crate::CreditHold,
                caps: &$crate::SpendCaps,
                reserve: Option<&vendbox_core::Payment>,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<Result<(), $crate::HoldRefusal>> {
                let (hold, caps, reserve) = (hold.clone(), *caps, reserve.cloned().map(Box::new));
                self.locks
                    .run(&hold.account.as_str().to_owned(), |reply| $crate::aggregates::locks::Op::Hold {
                        hold,
                        caps,
                        reserve,
                        now,
                        reply,
                    })
                    .await
            }

            /// [`Store::place_hold`] within `tx`: a refusal writes nothing but the account row
            /// (which it takes the lock of first, unless `tx` already holds it: `locked`); an
            /// error (a replay key taken) leaves `tx` to be rolled back.
            async fn place_hold_in(
                tx: &mut <$db as sqlx::Database>::Connection,
                hold: &$crate::CreditHold,
                caps: &$crate::SpendCaps,
                reserve: Option<&vendbox_core::Payment>,
                now: chrono::DateTime<chrono::Utc>,
                locked: bool,
            ) -> $crate::StoreResult<Result<(), $crate::HoldRefusal>> {
                use sqlx::Row;
                use $crate::shared::{atomic_to_sql, ms, sql_to_u64};
                let usdc = |v: i64, what: &str| sql_to_u64(v, what).map(vendbox_core::Usdc);
                // Both ways of placing the hold bind its six values in this order.
                let payment_id = hold.payment.to_string();
                let insert = |sql: &'static str| -> $crate::StoreResult<_> {
                    Ok(sqlx::query(sql)
                        .bind(payment_id.as_str())
                        .bind(hold.account.as_str())
                        .bind(hold.key_id.as_deref())
                        .bind(atomic_to_sql(hold.amount.atomic())?)
                        .bind(ms(now))
                        .bind(ms(hold.expires_at)))
                };
                if !locked {
                    Self::lock_account(&mut *tx, &hold.account, now).await?;
                }
                if hold.key_id.is_none() || (caps.daily.is_none() && caps.total.is_none()) {
                    // Without caps to sum, one statement places the hold where the balance less
                    // the unexpired holds covers it; a refusal reads the funds to say why.
                    let placed = insert(
                        "INSERT INTO credit_holds (payment_id, account, key_id, amount_atomic, created_at, expires_at) \
                         SELECT $1, $2, $3, $4, $5, $6 WHERE \
                         COALESCE((SELECT balance_atomic FROM accounts WHERE address = $2), 0) \
                         - (SELECT COALESCE(SUM(amount_atomic), 0) FROM credit_holds WHERE account = $2 AND expires_at > $5) \
                         >= $4",
                    )?
                    .execute(&mut *tx)
                    .await?;
                    if placed.rows_affected() == 1 {
                        if let Some(payment) = reserve {
                            Self::reserve_payment_in(&mut *tx, payment).await?;
                        }
                        return Ok(Ok(()));
                    }
                }
                let funds = sqlx::query($crate::aggregates::ledger::FUNDS_SQL)
                    .bind(hold.account.as_str())
                    .bind(ms(now))
                    .fetch_one(&mut *tx)
                    .await?;
                let balance = usdc(funds.try_get("balance")?, "balance")?;
                let held = usdc(funds.try_get("held")?, "held")?;
                if balance.atomic().saturating_sub(held.atomic()) < hold.amount.atomic() {
                    return Ok(Err($crate::HoldRefusal::Short { balance, held, needed: hold.amount }));
                }
                if let Some(key) = hold.key_id.as_deref().filter(|_| caps.daily.is_some() || caps.total.is_some()) {
                    let spent = sqlx::query($crate::aggregates::ledger::KEY_SPENT_SQL)
                        .bind(key)
                        .bind(ms(caps.since))
                        .bind(ms(now))
                        .fetch_one(&mut *tx)
                        .await?;
                    let key_held = usdc(spent.try_get("held")?, "held")?;
                    let today = usdc(spent.try_get("charged_since")?, "charged")?.atomic() + key_held.atomic();
                    let total = usdc(spent.try_get("charged")?, "charged")?.atomic() + key_held.atomic();
                    let refusal = match (caps.daily, caps.total) {
                        (Some(cap), _) if today + hold.amount.atomic() > cap.atomic() => {
                            Some($crate::HoldRefusal::DailyCap { cap, spent: vendbox_core::Usdc(today) })
                        }
                        (_, Some(cap)) if total + hold.amount.atomic() > cap.atomic() => {
                            Some($crate::HoldRefusal::TotalCap { cap, spent: vendbox_core::Usdc(total) })
                        }
                        _ => None,
                    };
                    if let Some(refusal) = refusal {
                        return Ok(Err(refusal));
                    }
                }
                if let Some(payment) = reserve {
                    Self::reserve_payment_in(&mut *tx, payment).await?;
                }
                insert(
                    "INSERT INTO credit_holds (payment_id, account, key_id, amount_atomic, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )?
                .execute(&mut *tx)
                .await?;
                Ok(Ok(()))
            }

            async fn settle_hold(
                &self,
                account: &vendbox_core::AccountAddress,
                payment: vendbox_core::PaymentId,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<Option<vendbox_core::LedgerEntry>> {
                let account = account.clone();
                self.locks
                    .run(&account.as_str().to_owned(), |reply| $crate::aggregates::locks::Op::Charge {
                        account,
                        payment,
                        now,
                        reply,
                    })
                    .await?
            }

            /// [`Store::settle_hold`] within `tx` (`locked`: it already holds the account's
            /// lock). The outer error fails the transaction; the inner one is the charge's
            /// refusal (the balance no longer covers it), which writes nothing but the account row.
            async fn settle_hold_in(
                tx: &mut <$db as sqlx::Database>::Connection,
                account: &vendbox_core::AccountAddress,
                payment: vendbox_core::PaymentId,
                now: chrono::DateTime<chrono::Utc>,
                locked: bool,
            ) -> $crate::StoreResult<$crate::StoreResult<Option<vendbox_core::LedgerEntry>>> {
                use sqlx::Row;
                // The account's lock first, as every booking takes it.
                if !locked {
                    Self::lock_account(&mut *tx, account, now).await?;
                }
                // Deleting the hold claims it, where the balance covers it: a release or a
                // recovery of the same payment finds nothing to drop, and this finds nothing to
                // book after them. One statement where the charge goes through.
                let claimed = sqlx::query(
                    "DELETE FROM credit_holds WHERE payment_id = $1 AND account = $2 \
                     AND amount_atomic <= COALESCE((SELECT balance_atomic FROM accounts WHERE address = $2), 0) \
                     RETURNING key_id, amount_atomic",
                )
                .bind(payment.to_string())
                .bind(account.as_str())
                .fetch_optional(&mut *tx)
                .await?;
                let Some(hold) = claimed else {
                    // No hold (released, recovered or charged before), or a balance short of it.
                    let hold: Option<i64> =
                        sqlx::query("SELECT amount_atomic FROM credit_holds WHERE payment_id = $1 AND account = $2")
                            .bind(payment.to_string())
                            .bind(account.as_str())
                            .fetch_optional(&mut *tx)
                            .await?
                            .map(|row| row.try_get("amount_atomic"))
                            .transpose()?;
                    let Some(amount) = hold else {
                        return Ok(Ok(None));
                    };
                    let balance: i64 = sqlx::query($crate::aggregates::ledger::BALANCE_SQL)
                        .bind(account.as_str())
                        .fetch_one(&mut *tx)
                        .await?
                        .try_get("balance")?;
                    if balance >= amount {
                        // Claimed by another connection since (it holds the account's lock
                        // to book, so this is for robustness): nothing to book.
                        return Ok(Ok(None));
                    }
                    return Ok(Err($crate::StoreError::InsufficientBalance {
                        balance: vendbox_core::Usdc(u64::try_from(balance).unwrap_or(0)),
                        needed: vendbox_core::Usdc($crate::shared::sql_to_u64(amount, "amount")?),
                    }));
                };
                let key_id: Option<String> = hold.try_get("key_id")?;
                let amount: i64 = hold.try_get("amount_atomic")?;
                let row = sqlx::query(
                    "INSERT INTO ledger_entries (account, kind, delta_atomic, reference, created_at, key_id) \
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
                )
                .bind(account.as_str())
                .bind(vendbox_core::LedgerKind::Charge.as_str())
                .bind(-amount)
                .bind(payment.to_string())
                .bind($crate::shared::ms(now))
                .bind(key_id)
                .fetch_one(&mut *tx)
                .await?;
                let entry = Self::ledger_from_row(&row)?;
                // The payment is settled by the charge, in the same transaction.
                sqlx::query(
                    "UPDATE payments SET state = $1, settlement_ref = $2, updated_at = $3 \
                     WHERE id = $4 AND state = $5",
                )
                .bind(vendbox_core::PaymentState::Settled.as_str())
                .bind(entry.id.to_string())
                .bind($crate::shared::ms(now))
                .bind(payment.to_string())
                .bind(vendbox_core::PaymentState::Verified.as_str())
                .execute(&mut *tx)
                .await?;
                Ok(Ok(Some(entry)))
            }

            async fn release_hold(&self, payment: vendbox_core::PaymentId) -> $crate::StoreResult<bool> {
                let done = sqlx::query("DELETE FROM credit_holds WHERE payment_id = $1")
                    .bind(payment.to_string())
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn recover_hold(
                &self,
                account: &vendbox_core::AccountAddress,
                payment: vendbox_core::PaymentId,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<Option<vendbox_core::LedgerEntry>> {
                let mut tx = self.pool.begin().await?;
                Self::lock_account(&mut tx, account, now).await?;
                let charge = sqlx::query(
                    "SELECT * FROM ledger_entries WHERE account = $1 AND kind = $2 AND reference = $3",
                )
                .bind(account.as_str())
                .bind(vendbox_core::LedgerKind::Charge.as_str())
                .bind(payment.to_string())
                .fetch_optional(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM credit_holds WHERE payment_id = $1")
                    .bind(payment.to_string())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                charge.as_ref().map(Self::ledger_from_row).transpose()
            }
        }
    };
}

pub(crate) use impl_ledger;
