//! Quotes: the priced terms a buyer may pay for until they expire, and their purge.

/// Writes the quote methods of `$store`, whose `pool` is a pool of database `$db`.
macro_rules! impl_quotes {
    ($store:ty, $db:ty) => {
        impl $store {
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
        }
    };
}

pub(crate) use impl_quotes;
