//! `Worker`: background jobs (expiry, settlement, reconcile, purges) run by one loop that backs
//! off on error instead of dying, and stops on shutdown.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::metrics::{Metrics, WorkerLabels};

/// What a worker wants after a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// There may be more to do: run again at once.
    Busy,
    /// Nothing left: wait this long (or until shutdown).
    Idle(Duration),
}

/// A background job.
#[async_trait]
pub trait Worker: Send + Sync + 'static {
    /// Name for logs and metrics.
    fn name(&self) -> &'static str;

    /// Does one round of work.
    async fn work(&self) -> WorkResult;
}

/// A round's result. Errors are logged and retried, not handled, so any error will do.
pub type WorkResult = Result<Next, Box<dyn std::error::Error + Send + Sync>>;

/// First wait after a failed round; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait after failed rounds.
pub const MAX_BACKOFF: Duration = Duration::from_mins(1);

/// Runs `worker` until `shutdown` turns true.
pub async fn run(worker: Arc<dyn Worker>, metrics: Arc<Metrics>, mut shutdown: watch::Receiver<bool>) {
    let name = worker.name();
    let mut backoff = MIN_BACKOFF;
    tracing::debug!(worker = name, "worker started");
    while !*shutdown.borrow() {
        let wait = match worker.work().await {
            Ok(next) => {
                metrics
                    .worker_rounds
                    .get_or_create(&WorkerLabels { worker: name.to_owned(), outcome: "ok" })
                    .inc();
                backoff = MIN_BACKOFF;
                match next {
                    Next::Busy => continue,
                    Next::Idle(d) => d,
                }
            }
            Err(error) => {
                metrics
                    .worker_rounds
                    .get_or_create(&WorkerLabels { worker: name.to_owned(), outcome: "error" })
                    .inc();
                tracing::warn!(worker = name, %error, retry_in_ms = backoff.as_millis(), "worker round failed");
                let wait = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                wait
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }
    tracing::debug!(worker = name, "worker stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Fails twice, then succeeds and idles.
    struct Flaky {
        rounds: AtomicU32,
    }

    #[async_trait]
    impl Worker for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        async fn work(&self) -> WorkResult {
            let n = self.rounds.fetch_add(1, Ordering::SeqCst);
            if n < 2 { Err(format!("failure {n}").into()) } else { Ok(Next::Idle(Duration::from_hours(1))) }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn backs_off_after_errors_and_stops_on_shutdown() {
        let worker = Arc::new(Flaky { rounds: AtomicU32::new(0) });
        let metrics = Arc::new(Metrics::new());
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(run(worker.clone(), metrics.clone(), shutdown));

        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(worker.rounds.load(Ordering::SeqCst), 1, "waits 500 ms after the first failure");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(worker.rounds.load(Ordering::SeqCst), 2, "then 1 s after the second");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(worker.rounds.load(Ordering::SeqCst), 3);

        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(1), task).await.expect("stops promptly").unwrap();
        let text = metrics.render();
        assert!(text.contains(r#"vendbox_worker_rounds_total{worker="flaky",outcome="error"} 2"#), "{text}");
        assert!(text.contains(r#"vendbox_worker_rounds_total{worker="flaky",outcome="ok"} 1"#), "{text}");
    }
}
