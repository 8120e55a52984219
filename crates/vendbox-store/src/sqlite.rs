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
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`, and its directory.
    pub async fn open_file(path: &Path) -> StoreResult<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        Self::open_with(SqliteConnectOptions::new().filename(path)).await
    }

    /// Opens a `sqlite:` URL (`sqlite:///var/lib/vendbox/vendbox.db`, `sqlite::memory:`).
    pub async fn open_url(url: &str) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)?;
        if url.contains(":memory:") {
            // Every pooled connection to `:memory:` would be its own empty database.
            return Self::open_pool(options, 1).await;
        }
        Self::open_with(options).await
    }

    async fn open_with(options: SqliteConnectOptions) -> StoreResult<Self> {
        Self::open_pool(options, 8).await
    }

    async fn open_pool(options: SqliteConnectOptions, max_connections: u32) -> StoreResult<Self> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before we acknowledge it, also across power loss.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new().max_connections(max_connections).connect_with(options).await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }
}

// The database clock: Unix milliseconds, stable within one statement.
store_impl!(SqliteStore, sqlx::Sqlite, "sqlite", now_ms = "CAST(unixepoch('subsec') * 1000 AS INTEGER)");
