//! Stores for tests: a SQLite file in a temporary directory, or a private schema in the local
//! PostgreSQL server (`VENDBOX_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`)
//! that is dropped afterwards, so that runs never collide.

use std::str::FromStr;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

use crate::{PostgresStore, StoreError};

/// Where the tests' PostgreSQL server is.
pub fn postgres_test_url() -> String {
    std::env::var("VENDBOX_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Whether PostgreSQL tests must run rather than be skipped when no server answers: always,
/// unless `VENDBOX_TEST_SKIP` is set outside CI (and no URL was set by hand).
pub fn postgres_required() -> bool {
    std::env::var_os("CI").is_some()
        || std::env::var_os("VENDBOX_TEST_DATABASE_URL").is_some()
        || std::env::var_os("VENDBOX_TEST_SKIP").is_none()
}

/// A schema of its own in the test database, dropped by [`PostgresSchema::drop_schema`].
#[derive(Debug)]
pub struct PostgresSchema {
    /// Server connection options without a schema.
    base: PgConnectOptions,
    /// The schema's name.
    pub name: String,
}

impl PostgresSchema {
    /// Creates a fresh schema, or `None` if no server answers and PostgreSQL is not required.
    pub async fn create() -> Option<PostgresSchema> {
        let base =
            PgConnectOptions::from_str(&postgres_test_url()).expect("VENDBOX_TEST_DATABASE_URL is a URL");
        let mut conn = match PgConnection::connect_with(&base).await {
            Ok(c) => c,
            Err(e) if !postgres_required() => {
                eprintln!("skipped (VENDBOX_TEST_SKIP): no PostgreSQL at {} ({e})", postgres_test_url());
                return None;
            }
            Err(e) => panic!(
                "PostgreSQL at {} is required ({e}): scripts/setup.sh starts it (VENDBOX_TEST_SKIP=1 skips such tests outside CI)",
                postgres_test_url()
            ),
        };
        let name = format!("vbt_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE SCHEMA {name}")).execute(&mut conn).await.expect("create schema");
        Some(PostgresSchema { base, name })
    }

    /// Connection options whose `search_path` is this schema.
    pub fn options(&self) -> PgConnectOptions {
        self.base.clone().options([("search_path", self.name.as_str())])
    }

    /// A URL for processes (a vendbox under test) that selects this schema.
    pub fn url(&self) -> String {
        let base = postgres_test_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}options=-c%20search_path%3D{}", self.name)
    }

    /// A migrated store in this schema.
    pub async fn store(&self) -> Result<PostgresStore, StoreError> {
        PostgresStore::connect_with(self.options()).await
    }

    /// Drops the schema and everything in it.
    pub async fn drop_schema(self) {
        if let Ok(mut conn) = PgConnection::connect_with(&self.base).await {
            let _ =
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name)).execute(&mut conn).await;
        }
    }
}
