//! `StoreError`: what can go wrong when reading or writing vendbox's state.

use vendbox_core::Usdc;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// This payment authorization was used before (its replay key is taken).
    #[error("this payment authorization was already used")]
    ReplayKeyTaken,
    /// The row changed under us (a compare-and-set lost); re-read and decide again.
    #[error("conflict: {0}")]
    Conflict(String),
    /// No such row.
    #[error("not found: {0}")]
    NotFound(String),
    /// The lease has no actions left.
    #[error("no actions left on this lease")]
    ActionsExhausted,
    /// A charge larger than the account's balance.
    #[error("balance {balance} is less than {needed}")]
    InsufficientBalance {
        /// What the account has.
        balance: Usdc,
        /// What the charge needs.
        needed: Usdc,
    },
    /// A move the state machine does not have.
    #[error(transparent)]
    Rule(#[from] vendbox_core::CoreError),
    /// A stored value that vendbox cannot read back (a bug or a hand edit).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The database URL is not one vendbox can use.
    #[error("bad database URL: {0}")]
    BadUrl(String),
    /// The data directory cannot be used.
    #[error("data directory: {0}")]
    Io(#[from] std::io::Error),
    /// Bringing the schema up to date failed.
    #[error("schema migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database refused or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}
