//! Authentication's records: the nonces of signed requests (each claimed once per address while
//! its timestamp is acceptable, which is what refuses a replay on every host sharing the
//! database), API keys (stored as their SHA-256, with a scope and spending caps), and
//! x402Compute's instances (a lease owned by the wallet that paid for it, with its one-time
//! password issued at most once).

/// Writes the authentication methods of `$store`, whose `pool` is a pool of database `$db`.
macro_rules! impl_keys {
    ($store:ty, $db:ty) => {
        impl $store {
            fn api_key_from_row(r: &<$db as sqlx::Database>::Row) -> $crate::StoreResult<$crate::ApiKey> {
                use sqlx::Row;
                use $crate::shared::{from_ms, sql_to_u64};
                let cap = |column: &str| -> $crate::StoreResult<Option<vendbox_core::Usdc>> {
                    let v: Option<i64> = r.try_get(column)?;
                    v.map(|v| sql_to_u64(v, column).map(vendbox_core::Usdc)).transpose()
                };
                let scope: String = r.try_get("scope")?;
                let revoked: Option<i64> = r.try_get("revoked_at")?;
                Ok($crate::ApiKey {
                    account: vendbox_core::AccountAddress::parse(r.try_get("account")?, "api_keys.account")
                        .map_err(|e| $crate::StoreError::Corrupt(e.to_string()))?,
                    grant: vendbox_core::KeyGrant {
                        id: r.try_get("id")?,
                        scope: vendbox_core::KeyScope::from_stored(&scope)
                            .ok_or_else(|| $crate::StoreError::Corrupt(format!("api_keys.scope `{scope}`")))?,
                        daily_cap: cap("daily_cap_atomic")?,
                        total_cap: cap("total_cap_atomic")?,
                    },
                    label: Some(r.try_get::<String, _>("label")?).filter(|l| !l.is_empty()),
                    last4: r.try_get("last4")?,
                    created_at: from_ms(r.try_get("created_at")?)?,
                    revoked_at: revoked.map(from_ms).transpose()?,
                })
            }

            fn instance_from_row(
                r: &<$db as sqlx::Database>::Row,
            ) -> $crate::StoreResult<$crate::ComputeInstance> {
                use sqlx::Row;
                use $crate::shared::{from_ms, parse_text};
                let issued: Option<i64> = r.try_get("password_issued_at")?;
                Ok($crate::ComputeInstance {
                    lease: parse_text(r.try_get("lease_id")?, "compute_instances.lease_id")?,
                    owner: vendbox_core::AccountAddress::parse(r.try_get("owner")?, "compute_instances.owner")
                        .map_err(|e| $crate::StoreError::Corrupt(e.to_string()))?,
                    plan: r.try_get("plan")?,
                    region: r.try_get("region")?,
                    os_id: r.try_get("os_id")?,
                    label: r.try_get("label")?,
                    ssh_key_given: r.try_get("ssh_key_given")?,
                    password_issued_at: issued.map(from_ms).transpose()?,
                    created_at: from_ms(r.try_get("created_at")?)?,
                })
            }

            async fn claim_auth_nonce(
                &self,
                account: &vendbox_core::AccountAddress,
                nonce: &str,
                expires_at: chrono::DateTime<chrono::Utc>,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<bool> {
                use $crate::shared::ms;
                let mut tx = self.pool.begin().await?;
                let claimed = sqlx::query(
                    "INSERT INTO auth_nonces (address, nonce, expires_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (address, nonce) DO NOTHING",
                )
                .bind(account.as_str())
                .bind(nonce)
                .bind(ms(expires_at))
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if claimed {
                    // The wallet's account exists from its first signed request on.
                    sqlx::query(
                        "INSERT INTO accounts (address, created_at, updated_at) VALUES ($1, $2, $2) \
                         ON CONFLICT (address) DO NOTHING",
                    )
                    .bind(account.as_str())
                    .bind(ms(now))
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(claimed)
            }

            async fn release_auth_nonce(
                &self,
                account: &vendbox_core::AccountAddress,
                nonce: &str,
            ) -> $crate::StoreResult<bool> {
                let done = sqlx::query("DELETE FROM auth_nonces WHERE address = $1 AND nonce = $2")
                    .bind(account.as_str())
                    .bind(nonce)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn purge_auth_nonces(&self, now: chrono::DateTime<chrono::Utc>) -> $crate::StoreResult<u64> {
                let done = sqlx::query("DELETE FROM auth_nonces WHERE expires_at < $1")
                    .bind($crate::shared::ms(now))
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected())
            }

            async fn insert_api_key(
                &self,
                key: &$crate::ApiKey,
                hash: &vendbox_core::TokenHash,
            ) -> $crate::StoreResult<()> {
                use $crate::shared::{atomic_to_sql, ms};
                let cap = |c: Option<vendbox_core::Usdc>| c.map(|c| atomic_to_sql(c.atomic())).transpose();
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO accounts (address, created_at, updated_at) VALUES ($1, $2, $2) \
                     ON CONFLICT (address) DO NOTHING",
                )
                .bind(key.account.as_str())
                .bind(ms(key.created_at))
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO api_keys (id, account, key_hash, last4, label, scope, daily_cap_atomic, \
                     total_cap_atomic, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(&key.grant.id)
                .bind(key.account.as_str())
                .bind(hash.to_hex())
                .bind(&key.last4)
                .bind(key.label.as_deref().unwrap_or(""))
                .bind(key.grant.scope.to_stored())
                .bind(cap(key.grant.daily_cap)?)
                .bind(cap(key.grant.total_cap)?)
                .bind(ms(key.created_at))
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn api_key_by_hash(
                &self,
                hash: &vendbox_core::TokenHash,
            ) -> $crate::StoreResult<Option<$crate::ApiKey>> {
                let row = sqlx::query("SELECT * FROM api_keys WHERE key_hash = $1")
                    .bind(hash.to_hex())
                    .fetch_optional(&self.reads)
                    .await?;
                row.as_ref().map(Self::api_key_from_row).transpose()
            }

            async fn api_keys_of(
                &self,
                account: &vendbox_core::AccountAddress,
            ) -> $crate::StoreResult<Vec<$crate::ApiKey>> {
                let rows = sqlx::query("SELECT * FROM api_keys WHERE account = $1 ORDER BY created_at, id")
                    .bind(account.as_str())
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(Self::api_key_from_row).collect()
            }

            async fn revoke_api_key(
                &self,
                account: &vendbox_core::AccountAddress,
                id: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<Option<$crate::ApiKey>> {
                // Revoking twice keeps the first time.
                sqlx::query(
                    "UPDATE api_keys SET revoked_at = $3 WHERE id = $1 AND account = $2 AND revoked_at IS NULL",
                )
                .bind(id)
                .bind(account.as_str())
                .bind($crate::shared::ms(now))
                .execute(&self.pool)
                .await?;
                let row = sqlx::query("SELECT * FROM api_keys WHERE id = $1 AND account = $2")
                    .bind(id)
                    .bind(account.as_str())
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(Self::api_key_from_row).transpose()
            }

            async fn insert_compute_instance(&self, instance: &$crate::ComputeInstance) -> $crate::StoreResult<()> {
                use $crate::shared::ms;
                sqlx::query(
                    "INSERT INTO compute_instances (lease_id, owner, plan, region, os_id, label, ssh_key_given, \
                     created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(instance.lease.to_string())
                .bind(instance.owner.as_str())
                .bind(&instance.plan)
                .bind(instance.region.as_deref())
                .bind(instance.os_id)
                .bind(instance.label.as_deref())
                .bind(instance.ssh_key_given)
                .bind(ms(instance.created_at))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn compute_instance(
                &self,
                lease: vendbox_core::LeaseId,
            ) -> $crate::StoreResult<Option<$crate::ComputeInstance>> {
                let row = sqlx::query("SELECT * FROM compute_instances WHERE lease_id = $1")
                    .bind(lease.to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(Self::instance_from_row).transpose()
            }

            async fn compute_instances_of(
                &self,
                owner: &vendbox_core::AccountAddress,
            ) -> $crate::StoreResult<Vec<$crate::ComputeInstance>> {
                let rows = sqlx::query(
                    "SELECT * FROM compute_instances WHERE owner = $1 ORDER BY created_at DESC, lease_id",
                )
                .bind(owner.as_str())
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::instance_from_row).collect()
            }

            async fn issue_instance_password(
                &self,
                lease: vendbox_core::LeaseId,
                root: &vendbox_core::TokenHash,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<bool> {
                let mut tx = self.pool.begin().await?;
                let issued = sqlx::query(
                    "UPDATE compute_instances SET password_issued_at = $2 \
                     WHERE lease_id = $1 AND password_issued_at IS NULL AND NOT ssh_key_given",
                )
                .bind(lease.to_string())
                .bind($crate::shared::ms(now))
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if !issued {
                    tx.rollback().await?;
                    return Ok(false);
                }
                // The password is the lease's root token from now on: the one made at provision
                // was never shown, so nothing else opens the box as root.
                sqlx::query("UPDATE lease_tokens SET token_hash = $2 WHERE lease_id = $1 AND capability = 'root'")
                    .bind(lease.to_string())
                    .bind(root.to_hex())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(true)
            }
        }
    };
}

pub(crate) use impl_keys;
