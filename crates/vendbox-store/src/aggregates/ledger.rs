//! Accounts and their ledgers: a balance is the sum of an account's entries, and a booking
//! writes the account row first, which serializes bookings per account.

/// An account's balance: the sum of its ledger.
pub(crate) const BALANCE_SQL: &str =
    "SELECT CAST(COALESCE(SUM(delta_atomic), 0) AS BIGINT) AS balance FROM ledger_entries WHERE account = $1";

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
                let balance: i64 = sqlx::query($crate::aggregates::ledger::BALANCE_SQL)
                    .bind(account.as_str())
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("balance")?;
                let after = balance
                    .checked_add(delta)
                    .ok_or_else(|| $crate::StoreError::Corrupt(format!("balance of {account} overflows")))?;
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
        }
    };
}

pub(crate) use impl_ledger;
