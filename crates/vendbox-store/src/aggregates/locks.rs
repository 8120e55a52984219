//! Locks: one row per key, granted, renewed and released by compare-and-set statements that
//! judge expiry by the database's clock (`$clock`), so hosts with skewed clocks cannot disagree.

use crate::StoreError;

/// A lock TTL in milliseconds, as the SQL adds it to the clock.
pub(crate) fn ttl_ms(ttl: std::time::Duration) -> Result<i64, StoreError> {
    i64::try_from(ttl.as_millis()).map_err(|_| StoreError::Corrupt("lock TTL too long".into()))
}

/// Writes the lock methods of `$store`, whose `pool` is a pool of database `$db`; `$clock` is the
/// SQL that reads the database's clock in Unix milliseconds when it is evaluated.
macro_rules! impl_locks {
    ($store:ty, $db:ty, clock_ms = $clock:literal) => {
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

            async fn acquire_lock(
                &self,
                key: &vendbox_core::LockKey,
                owner: Option<&str>,
                metadata: Option<&serde_json::Value>,
                ttl: std::time::Duration,
                release: &vendbox_core::TokenHash,
            ) -> $crate::StoreResult<$crate::LockAcquisition> {
                let ttl_ms = $crate::aggregates::locks::ttl_ms(ttl)?;
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
                let ttl_ms = ttl.map($crate::aggregates::locks::ttl_ms).transpose()?;
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

pub(crate) use impl_locks;
