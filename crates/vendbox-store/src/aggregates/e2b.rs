//! E2B sandboxes: a box lease owned by the account whose API key made it, with the template it
//! was asked for and the metadata and environment variables the E2B API keeps with it.

/// Writes the E2B sandbox methods of `$store`, whose `pool` is a pool of database `$db`.
macro_rules! impl_e2b {
    ($store:ty, $db:ty) => {
        impl $store {
            fn e2b_sandbox_from_row(
                r: &<$db as sqlx::Database>::Row,
            ) -> $crate::StoreResult<$crate::E2bSandbox> {
                use sqlx::Row;
                use $crate::shared::{from_ms, parse_text};
                let map = |column: &str| -> $crate::StoreResult<std::collections::BTreeMap<String, String>> {
                    let text: String = r.try_get(column)?;
                    serde_json::from_str(&text)
                        .map_err(|e| $crate::StoreError::Corrupt(format!("e2b_sandboxes.{column}: {e}")))
                };
                Ok($crate::E2bSandbox {
                    lease: parse_text(r.try_get("lease_id")?, "e2b_sandboxes.lease_id")?,
                    owner: vendbox_core::AccountAddress::parse(r.try_get("owner")?, "e2b_sandboxes.owner")
                        .map_err(|e| $crate::StoreError::Corrupt(e.to_string()))?,
                    template: r.try_get("template")?,
                    metadata: map("metadata")?,
                    env_vars: map("env_vars")?,
                    created_at: from_ms(r.try_get("created_at")?)?,
                })
            }

            async fn insert_e2b_sandbox(&self, sandbox: &$crate::E2bSandbox) -> $crate::StoreResult<()> {
                use $crate::shared::ms;
                let json = |m: &std::collections::BTreeMap<String, String>| {
                    serde_json::to_string(m).unwrap_or_else(|_| "{}".to_owned())
                };
                sqlx::query(
                    "INSERT INTO e2b_sandboxes (lease_id, owner, template, metadata, env_vars, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(sandbox.lease.to_string())
                .bind(sandbox.owner.as_str())
                .bind(&sandbox.template)
                .bind(json(&sandbox.metadata))
                .bind(json(&sandbox.env_vars))
                .bind(ms(sandbox.created_at))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn e2b_sandbox(
                &self,
                lease: vendbox_core::LeaseId,
            ) -> $crate::StoreResult<Option<$crate::E2bSandbox>> {
                let row = sqlx::query("SELECT * FROM e2b_sandboxes WHERE lease_id = $1")
                    .bind(lease.to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(Self::e2b_sandbox_from_row).transpose()
            }

            async fn add_e2b_access_token(
                &self,
                lease: vendbox_core::LeaseId,
                token: &vendbox_core::TokenHash,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::StoreResult<bool> {
                let done = sqlx::query(
                    "INSERT INTO e2b_access_tokens (lease_id, token_hash, created_at) \
                     SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM e2b_sandboxes WHERE lease_id = $1)",
                )
                .bind(lease.to_string())
                .bind(token.to_hex())
                .bind($crate::shared::ms(now))
                .execute(&self.pool)
                .await?;
                // The newest ones are kept, so that a client connecting again and again cannot
                // grow the table without end.
                sqlx::query(
                    "DELETE FROM e2b_access_tokens WHERE lease_id = $1 AND token_hash NOT IN \
                     (SELECT token_hash FROM e2b_access_tokens WHERE lease_id = $1 \
                      ORDER BY created_at DESC, token_hash LIMIT $2)",
                )
                .bind(lease.to_string())
                .bind(i64::try_from($crate::E2B_ACCESS_TOKENS_KEPT).unwrap_or(i64::MAX))
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn is_e2b_access_token(
                &self,
                lease: vendbox_core::LeaseId,
                token: &vendbox_core::TokenHash,
            ) -> $crate::StoreResult<bool> {
                let row = sqlx::query("SELECT 1 FROM e2b_access_tokens WHERE lease_id = $1 AND token_hash = $2")
                    .bind(lease.to_string())
                    .bind(token.to_hex())
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.is_some())
            }

            async fn e2b_sandboxes_of(
                &self,
                owner: &vendbox_core::AccountAddress,
            ) -> $crate::StoreResult<Vec<$crate::E2bSandbox>> {
                let rows = sqlx::query(
                    "SELECT * FROM e2b_sandboxes WHERE owner = $1 ORDER BY created_at DESC, lease_id",
                )
                .bind(owner.as_str())
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::e2b_sandbox_from_row).collect()
            }
        }
    };
}

pub(crate) use impl_e2b;
