//! `SqliteStore`: the embedded default, one database file in WAL mode.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::StoreResult;
use crate::shared::store_impl;

/// State in a SQLite file: nothing else to install, one host.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Connections to the one file; SQLite serializes writers, WAL lets readers run alongside.
    pool: SqlitePool,
    /// Connections for the reads on a request's path (an API key, a replay key, a lock's
    /// holder): in WAL mode they read the last commit without waiting for the one connection
    /// that the lock writer holds through each batch and its fsync. The same pool as `pool` for
    /// an in-memory database, which a second connection would not see.
    reads: SqlitePool,
    /// The lock writer's queue (group commit).
    locks: crate::aggregates::locks::Queue,
}

/// Connections of the read pool.
const READERS: u32 = 4;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl SqliteStore {
    /// One writer: SQLite commits one transaction at a time, over the one connection.
    const LOCK_WRITERS: usize = 1;

    /// One host: the lock writer announces its own releases.
    /// The writer takes the pool's one connection for each batch: a connection of its own would
    /// be a second writer to the file, waiting in SQLite's busy handler.
    const LOCK_WRITER_OWNS_CONNECTION: bool = false;

    const RELEASES_ANNOUNCED_BY_DATABASE: bool = false;

    /// The writer has no connection of its own to set up.
    const LOCK_WRITER_SETUP: &'static str = "";

    /// Opens (creating if needed) the database file at `path`, and its directory.
    pub async fn open_file(path: &Path) -> StoreResult<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        Self::open_with(SqliteConnectOptions::new().filename(path), true).await
    }

    /// Opens a `sqlite:` URL (`sqlite:///var/lib/vendbox/vendbox.db`, `sqlite::memory:`).
    pub async fn open_url(url: &str) -> StoreResult<Self> {
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        Self::open_with(SqliteConnectOptions::from_str(url)?, !in_memory).await
    }

    /// Opens the database of `options`; with a pool of its own for reads when `separate_reads`.
    async fn open_with(options: SqliteConnectOptions, separate_reads: bool) -> StoreResult<Self> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before we acknowledge it, also across power loss.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // One connection. SQLite lets one writer commit at a time anyway, and with several
        // connections the others wait in its busy handler's sleeps (1, 2, 5, 10… ms); queued in
        // the pool instead, the lock benchmark's throughput is the same and its p99 less than
        // half. No deferred transaction can meet another in a busy upgrade, and `:memory:` is one
        // database (each connection to it would be its own).
        // Not pinged before each use: the connection is this process's own, and a ping is one
        // more round trip to its thread before every batch of the lock writer.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&pool).await?;
        // Readers never take the write lock: in WAL mode each read sees the last commit, so a
        // read that starts after an acknowledged write sees it.
        let reads = if separate_reads {
            SqlitePoolOptions::new()
                .max_connections(READERS)
                .test_before_acquire(false)
                .connect_with(options)
                .await?
        } else {
            pool.clone()
        };
        let locks = Self::spawn_lock_writer(pool.clone())?;
        Ok(Self { pool, reads, locks })
    }
}

// The rows of a shared lock statement (and the charges and payments of a batch's paid
// acquisitions) come from `json_each` over its JSON array, and need no
// locking clause: the one writer holds the database's write lock for the whole batch.
// The database clock: Unix milliseconds, stable within one statement. Writers take turns, so a
// statement's clock is also read after every earlier write, and a statement that picks rows and
// changes them holds them alone without a locking clause (SQLite has none).
store_impl!(
    SqliteStore,
    sqlx::Sqlite,
    "sqlite",
    clock_ms = "CAST(unixepoch('subsec') * 1000 AS INTEGER)",
    skip_locked = "",
    rows = "(SELECT value ->> 'k' AS k, value ->> 'o' AS o, value ->> 'h' AS h, value ->> 't' AS t, \
            value ->> 'm' AS m FROM json_each($1)) AS r",
    serialize_batch = "",
    notify_released = "",
    notify_batch = ("", ""),
    keys_of_rows = "true",
    charge_rows = "(SELECT value ->> 'a' AS a, value ->> 'p' AS p, value ->> 'k' AS k, value ->> 'n' AS n, \
                   value ->> 'c' AS c FROM json_each($1)) AS r",
    payment_rows = "(SELECT value ->> 'id' AS id, value ->> 'q' AS q, value ->> 'me' AS me, value ->> 'ch' AS ch, \
                    value ->> 'asset' AS asset, value ->> 'payer' AS payer, value ->> 'nonce' AS nonce, \
                    value ->> 'n' AS n, value ->> 'st' AS st, value ->> 'sr' AS sr, value ->> 'vr' AS vr, \
                    value ->> 'pr' AS pr, value ->> 'c' AS c, value ->> 'u' AS u, value ->> 'pu' AS pu \
                    FROM json_each($1)) AS r"
);
