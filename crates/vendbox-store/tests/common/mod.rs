//! What the store's test files share: running one case on a fresh store of each backend.

use std::sync::Arc;

use vendbox_store::testkit::PostgresSchema;
use vendbox_store::{SqliteStore, Store};

/// Runs `case` on a fresh SQLite file.
pub(crate) async fn on_sqlite<F, Fut>(case: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_file(&dir.path().join("data/vendbox.db")).await.unwrap();
    case(Arc::new(store)).await;
}

/// Runs `case` in a fresh PostgreSQL schema, dropped afterwards even when the case panics.
pub(crate) async fn on_postgres<F, Fut>(case: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let Some(schema) = PostgresSchema::create().await else { return };
    let store: Arc<dyn Store> = Arc::new(schema.store().await.unwrap());
    let outcome = tokio::spawn(case(store)).await;
    schema.drop_schema().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Each case once on SQLite (module `sqlite`) and once on PostgreSQL (module `postgres`).
macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    crate::common::on_sqlite(super::$case).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    crate::common::on_postgres(super::$case).await;
                }
            )*
        }
    };
}

pub(crate) use suite;
