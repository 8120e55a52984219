//! `serve`: binds the listener, starts the workers, answers until SIGTERM/SIGINT, then lets
//! in-flight requests finish (up to the grace period) and stops the workers.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use vendbox_store::Store;

use crate::app::{AppState, Limits, router};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::purge::QuotePurge;
use crate::worker::{self, Worker};

/// A bound, not yet serving, vendbox.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    state: AppState,
    limits: Limits,
    grace: std::time::Duration,
}

impl Server {
    /// Opens the store and binds the listener of `config`.
    pub async fn bind(config: &Config, store: Arc<dyn Store>) -> std::io::Result<Server> {
        let listener = TcpListener::bind(config.server.listen).await?;
        let state =
            AppState { catalog: Arc::new(config.catalog()), store, metrics: Arc::new(Metrics::new()) };
        let limits = Limits {
            request_timeout: config.server.request_timeout(),
            max_body_bytes: config.server.max_body_bytes,
        };
        let grace = std::time::Duration::from_secs(config.server.shutdown_grace_secs);
        Ok(Server { listener, state, limits, grace })
    }

    /// The address it listens on (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let (stop_workers, workers_stop) = watch::channel(false);
        let workers: Vec<Arc<dyn Worker>> = vec![Arc::new(QuotePurge { store: self.state.store.clone() })];
        let handles: Vec<_> = workers
            .into_iter()
            .map(|w| tokio::spawn(worker::run(w, self.state.metrics.clone(), workers_stop.clone())))
            .collect();

        let (draining_tx, mut draining) = watch::channel(false);
        let app = router(self.state, self.limits);
        let serving = axum::serve(self.listener, app).with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: finishing in-flight requests");
            let _ = draining_tx.send(true);
        });
        let grace = self.grace;
        let result = tokio::select! {
            r = serving => r,
            () = async {
                let _ = draining.wait_for(|d| *d).await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests did not finish in time");
                Ok(())
            }
        };
        let _ = stop_workers.send(true);
        for h in handles {
            let _ = h.await;
        }
        result
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
