//! Storefront requests: a `request_id` is claimed before any work and keeps the first answer, so
//! that a request sent twice makes one machine and is charged once.

/// Writes the request-claim methods of `$store`.
macro_rules! impl_requests {
    ($store:ty) => {
        impl $store {
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

            async fn request_claim(
                &self,
                request_id: &str,
            ) -> $crate::StoreResult<Option<(String, Option<String>)>> {
                use sqlx::Row;
                let row = sqlx::query("SELECT body_hash, response FROM lease_requests WHERE request_id = $1")
                    .bind(request_id)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(match row {
                    Some(row) => Some((row.try_get("body_hash")?, row.try_get("response")?)),
                    None => None,
                })
            }

            async fn release_request(&self, request_id: &str) -> $crate::StoreResult<()> {
                sqlx::query("DELETE FROM lease_requests WHERE request_id = $1 AND response IS NULL")
                    .bind(request_id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }
        }
    };
}

pub(crate) use impl_requests;
