//! `PostgresStore`: state shared by several vendbox hosts in one PostgreSQL database.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::StoreResult;
use crate::shared::store_impl;

/// State in PostgreSQL: several API hosts, constraints and row locks do the coordinating.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    /// Connections to the database.
    pool: PgPool,
    /// The same pool: PostgreSQL's readers never wait for writers.
    reads: PgPool,
    /// The lock writer's queue (group commit).
    locks: crate::aggregates::locks::Queue,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl PostgresStore {
    /// Writers per host, each with its own batches (a key always goes to the same one). One: on
    /// the 2-core host of the lock benchmark, one writer with bigger batches ran 1.1-1.2x the
    /// cycles of 2 or 4 overlapping ones, with a lower p99 (`VENDBOX_LOCK_WRITERS` overrides it,
    /// for measuring on other hosts).
    const LOCK_WRITERS: usize = 1;

    /// Releases are announced by `NOTIFY` in their batch's transaction, so every host hears of
    /// them once they commit (`listen_for_releases`).
    /// Each writer keeps a connection of its own between batches, opened on its thread's runtime:
    /// no pool ping before a batch, and its socket is served by the writers' runtime.
    const LOCK_WRITER_OWNS_CONNECTION: bool = true;

    const RELEASES_ANNOUNCED_BY_DATABASE: bool = true;

    /// A writer's connection never scans a table where an index serves: a batch looks its rows
    /// up by key, some from a JSON array whose size the planner cannot see, and on a table not
    /// analyzed yet (a new vendbox's, or one that grew since) it chose to read the whole table,
    /// a plan it then kept for every later batch on that connection. (The shared release still
    /// needs `keys_of_rows`: without it the planner, told not to scan, walks the whole primary
    /// key index instead.)
    const LOCK_WRITER_SETUP: &'static str = "SET enable_seqscan = off";

    /// Connects to `url` and brings the schema up to date (sqlx holds an advisory lock while
    /// migrating, so several hosts starting at once do not race).
    pub async fn connect(url: &str) -> StoreResult<Self> {
        Self::connect_with(PgConnectOptions::from_str(url)?).await
    }

    /// Connects with explicit options (tests use this to pin a private `search_path`).
    pub async fn connect_with(options: PgConnectOptions) -> StoreResult<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        let locks = Self::spawn_lock_writer(pool.clone())?;
        Self::listen_for_releases(&pool, &locks).await?;
        Ok(Self { reads: pool.clone(), pool, locks })
    }

    /// Hears the releases every host announces (`NOTIFY` in the batch that released) and passes
    /// them to this host's waiters. The listener reconnects by itself after a lost connection;
    /// what it missed meanwhile, waiters find on their timers. It stops once the store is gone.
    async fn listen_for_releases(pool: &PgPool, locks: &crate::aggregates::locks::Queue) -> StoreResult<()> {
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
        listener.listen(crate::aggregates::locks::RELEASED_CHANNEL).await?;
        let announce = locks.weak();
        tokio::spawn(async move {
            loop {
                let notification = listener.recv().await;
                let Some(locks) = announce.upgrade() else { return };
                match notification {
                    Ok(n) => {
                        for key in released_keys(n.payload()) {
                            locks.announce(key);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "lost the lock release notifications; reconnecting");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        Ok(())
    }
}

// The database server's clock, shared by every vendbox host, in Unix milliseconds: `now_ms` at
// the start of the statement's transaction; `clock_ms` when it is read, which lock statements use
// inside the row they changed, after any wait for that row's lock, so that a grant never starts
// before the release or expiry it follows. Rows a worker picks are locked as they are picked, and
// rows another host holds are skipped: several hosts divide a batch instead of racing for it.
// The rows of a shared lock statement come from `jsonb_to_recordset` over its JSON array (its
// keys as an array for the primary key's index: the planner, guessing 100 rows, would otherwise
// scan the table), and a batch with such statements first takes one advisory lock, so that two
// batches never wait for each other's rows. A release notifies `RELEASED_CHANNEL`
// (`aggregates::locks`) in the statement that releases rather than a round trip of its own,
// delivered only if it commits: a JSON array of keys, one per release, or for a shared release
// one per 6,000 bytes of keys (a notice holds less than 8,000).
// The charges and payments of a batch's paid acquisitions are read from JSON arrays the same way.
store_impl!(
    PostgresStore,
    sqlx::Postgres,
    "postgres",
    clock_ms = "CAST(FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS BIGINT)",
    skip_locked = "FOR UPDATE SKIP LOCKED",
    rows = "jsonb_to_recordset($1::jsonb) AS r(k text, o text, h text, t bigint, m text)",
    // One lock per schema (`vblk` and the schema's hash): vendboxes on one database in schemas of
    // their own do not wait for each other.
    serialize_batch = "SELECT pg_advisory_xact_lock(1986161771, hashtext(current_schema()))",
    notify_released = ", pg_notify('vendbox_lock_released', json_build_array(key)::text)::text AS notified",
    // A part's keys add up to less than 6,000 bytes as JSON (with `json_agg`'s ", " between
    // them), plus one key of at most 256 characters (1,538 bytes escaped): under 8,000.
    notify_batch = (
        "WITH released AS (",
        "), parts AS (SELECT key, SUM(OCTET_LENGTH(TO_JSON(key)::text) + 2) OVER (ORDER BY key) / 6000 AS part \
         FROM released), told AS (SELECT COUNT(pg_notify('vendbox_lock_released', keys)) AS notices \
         FROM (SELECT JSON_AGG(key ORDER BY key)::text AS keys FROM parts GROUP BY part) p) \
         SELECT released.* FROM released, told"
    ),
    keys_of_rows = "key = ANY (ARRAY(SELECT r.k FROM jsonb_to_recordset($1::jsonb) AS r(k text)))",
    charge_rows = "jsonb_to_recordset($1::jsonb) AS r(a text, p text, k text, n bigint, c bigint)",
    payment_rows = "jsonb_to_recordset($1::jsonb) AS r(id text, q text, me text, ch text, asset text, \
                    payer text, nonce text, n bigint, st text, sr text, vr text, pr text, c bigint, u bigint, pu text)"
);

/// The keys a release notice names: a JSON array of keys (one notice per release, or per part of
/// a batch's releases); a payload that is not one is a single key (as hosts before the arrays
/// sent it).
fn released_keys(payload: &str) -> Vec<vendbox_core::LockKey> {
    match serde_json::from_str::<Vec<String>>(payload) {
        Ok(keys) => keys.iter().filter_map(|k| vendbox_core::LockKey::parse(k).ok()).collect(),
        Err(_) => vendbox_core::LockKey::parse(payload).into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::released_keys;

    fn names(payload: &str) -> Vec<String> {
        released_keys(payload).iter().map(|k| k.as_str().to_owned()).collect()
    }

    #[test]
    fn a_release_notice_is_a_json_array_of_keys_or_one_plain_key() {
        assert_eq!(names(r#"["alpha","two\nlines","[\"x\"]"]"#), ["alpha", "two\nlines", r#"["x"]"#]);
        // A host before the arrays sent the key itself.
        assert_eq!(names("plain-key"), ["plain-key"]);
        // Keys that are not keys are dropped, the rest kept.
        assert_eq!(names(r#"["ok-key","x"]"#), ["ok-key"]);
        assert!(names("").is_empty());
    }
}
