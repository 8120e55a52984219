//! `serve`: binds the listener, starts the workers, answers until SIGTERM/SIGINT, then lets
//! in-flight requests finish (up to the grace period) and stops the workers.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use vendbox_box::local::{LocalBackend, LocalConfig};
use vendbox_ssh::Gateway;
use vendbox_store::Store;

use std::str::FromStr;

use vendbox_pay::facilitator::BuiltinFacilitator;
use vendbox_pay::mpp::{BindingSecret, MppEvmCharge};
use vendbox_pay::x402::X402Exact;
use vendbox_pay::{EvmAddress, Wallet};
use vendbox_service::{Faults, Payments};

use crate::app::{AppParts, AppState, Limits, SshEndpoint, router};
use crate::boxes::{BoxExpiry, Boxes};
use crate::config::{BackendKind, Config, FacilitatorKind};
use crate::metrics::Metrics;
use crate::purge::{NoncePurge, QuotePurge};
use crate::settlement::{SettlementWorker, TopUpWorker};
use crate::ssh::SshLeases;
use crate::worker::{self, Worker};

/// A bound, not yet serving, vendbox.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    state: AppState,
    limits: Limits,
    grace: std::time::Duration,
    settlement: Option<SettlementWorker>,
    gateway: Option<Gateway>,
    /// `[server] ports_domain`: box host names served as their ports.
    ports_domain: Option<String>,
    /// How the catalog is fitted to the image store, and the store's changes, when it follows
    /// them.
    following: Option<(crate::offers_now::CatalogFit, vendbox_box::image::ImageChanges)>,
}

impl Server {
    /// Binds the listener of `config`, with the store and the secrets (from the environment:
    /// [`Secrets::from_env`]).
    pub async fn bind(config: &Config, store: Arc<dyn Store>, secrets: Secrets) -> std::io::Result<Server> {
        let listener = TcpListener::bind(config.server.listen).await?;
        let public_url = match &config.server.public_url {
            Some(_) => config.public_url(),
            None => format!("http://{}", listener.local_addr()?),
        };
        let (payments, settlement) =
            payments(config, store.clone(), public_url, secrets).await.map_err(std::io::Error::other)?;
        let (boxes, no_egress) = boxes(config, store.clone()).await.map_err(std::io::Error::other)?;
        let gateway = match &boxes {
            Ok(boxes) if config.ssh.enabled => {
                let leases = Arc::new(SshLeases { boxes: boxes.clone() });
                let host_key = config.store.data_dir.join("ssh_host_ed25519_key");
                let gateway = Gateway::bind(config.ssh.listen, &host_key, leases, config.ssh.limits())
                    .await
                    .map_err(|e| {
                        std::io::Error::other(format!(
                            "the SSH gateway cannot listen on {}: {e}",
                            config.ssh.listen
                        ))
                    })?;
                Some(gateway)
            }
            _ => None,
        };
        let ssh = match &gateway {
            Some(gateway) => Some(SshEndpoint {
                host: config.ssh.public_host.clone().unwrap_or_else(|| config.ssh.listen.ip().to_string()),
                port: gateway.local_addr()?.port(),
            }),
            None => None,
        };
        // The catalog follows the image store while vendbox runs: watched first, then fitted, so
        // that an image placed in between is not missed.
        let images =
            boxes.is_ok().then(|| vendbox_box::image::ImageStore::of_data_dir(&config.store.data_dir));
        let image_changes = match images.as_ref().map(vendbox_box::image::ImageStore::watch) {
            Some(Ok(changes)) => Some(changes),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "offers follow the image store only at start-up");
                None
            }
            None => None,
        };
        let fit = crate::offers_now::CatalogFit::new(config.catalog(), images, no_egress);
        let (catalog, changes) = fit.fitted();
        for change in changes {
            tracing::warn!("{change}");
        }
        let catalog = vendbox_service::LiveCatalog::new(catalog);
        let following = image_changes.map(|changes| (fit, changes));
        let vms = vendbox_service::Vms::new(
            store.clone(),
            boxes.clone(),
            catalog.clone(),
            vendbox_service::VmSettings {
                min_balance: vendbox_core::Usdc(config.secretvm.min_balance),
                billing_period: std::time::Duration::from_secs(config.secretvm.billing_period_secs.max(1)),
                window: std::time::Duration::from_secs(config.server.auth_window_secs),
                domain: config.server.ports_domain.clone(),
                public_url: config.public_url(),
                registry: vendbox_service::vms::Registry {
                    host: config.secretvm.registry.clone(),
                    insecure: config.secretvm.registry_insecure,
                },
                data_dir: config.store.data_dir.clone(),
            },
        );
        let state = AppState::from(AppParts {
            catalog,
            store,
            metrics: Arc::new(Metrics::new()),
            payments,
            lock_waiters: Arc::default(),
            boxes,
            ssh,
            vms,
        });
        let limits = Limits {
            request_timeout: config.server.request_timeout(),
            max_body_bytes: config.server.max_body_bytes,
            max_file_bytes: config.boxes.max_file_bytes,
            max_requests_per_peer: config.server.max_requests_per_peer,
            auth_window: std::time::Duration::from_secs(config.server.auth_window_secs),
        };
        let grace = std::time::Duration::from_secs(config.server.shutdown_grace_secs);
        let ports_domain = config.server.ports_domain.clone();
        Ok(Server { listener, state, limits, grace, settlement, gateway, ports_domain, following })
    }

    /// The address it listens on (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// The SSH gateway's address, when it runs.
    pub fn ssh_addr(&self) -> Option<std::net::SocketAddr> {
        self.gateway.as_ref().and_then(|g| g.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let (stop_workers, workers_stop) = watch::channel(false);
        let mut workers: Vec<Arc<dyn Worker>> = vec![
            Arc::new(QuotePurge { records: self.state.records() }),
            Arc::new(NoncePurge {
                auth: vendbox_service::Auth::new(self.state.store.clone(), self.limits.auth_window),
            }),
        ];
        if let Some(settlement) = self.settlement {
            workers.push(Arc::new(settlement));
            workers.push(Arc::new(TopUpWorker { accounts: self.state.accounts() }));
        }
        let mut reconciling = None;
        if let Ok(boxes) = &self.state.boxes {
            workers.push(Arc::new(BoxExpiry::new(boxes.clone())));
            workers.push(Arc::new(crate::boxes::VmBilling { vms: self.state.vms.clone() }));
            reconciling = Some(tokio::spawn(reconcile(boxes.clone(), workers_stop.clone())));
        }
        let gateway = self.gateway.map(|gateway| tokio::spawn(gateway.run(workers_stop.clone())));
        let following = self.following.map(|(fit, changes)| {
            tokio::spawn(crate::offers_now::follow(
                self.state.catalog.clone(),
                fit,
                changes,
                workers_stop.clone(),
            ))
        });
        let handles: Vec<_> = workers
            .into_iter()
            .map(|w| tokio::spawn(worker::run(w, self.state.metrics.clone(), workers_stop.clone())))
            .collect();

        let (draining_tx, mut draining) = watch::channel(false);
        let app = crate::surfaces::native::ports::by_host_name(
            router(self.state.clone(), self.limits),
            self.ports_domain.clone(),
        );
        let app = crate::surfaces::e2b::front::in_front(app, self.ports_domain);
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        // Answers leave at once, not after the client's acknowledgement of the last one (Nagle).
        let listener = axum::serve::ListenerExt::tap_io(self.listener, |tcp: &mut tokio::net::TcpStream| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY not set");
            }
        });
        let serving = axum::serve(listener, app).with_graceful_shutdown(async move {
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
        for h in handles.into_iter().chain(gateway).chain(reconciling).chain(following) {
            let _ = h.await;
        }
        if let Ok(boxes) = &self.state.boxes {
            boxes.close().await;
        }
        result
    }
}

/// The box service of `config`, reconciled with the host, or why there is none; and why its
/// boxes get no egress, when the operator wants it but the host cannot give it. A host that
/// cannot run boxes (not root, no bubblewrap) still serves everything else.
async fn boxes(config: &Config, store: Arc<dyn Store>) -> Result<(BoxService, Option<String>), String> {
    if config.boxes.backend == BackendKind::None {
        return Ok((Err("its operator turned boxes off ([boxes] backend = \"none\")".into()), None));
    }
    let boxd = if config.boxes.boxd_command.is_empty() {
        let exe = std::env::current_exe().map_err(|e| format!("finding vendbox's own program: {e}"))?;
        vec![exe.to_string_lossy().into_owned(), "boxd".into()]
    } else {
        config.boxes.boxd_command.clone()
    };
    let local =
        LocalConfig { data_dir: config.store.data_dir.clone(), boxd, run_root: config.boxes.run_dir.clone() };
    let backend = match LocalBackend::new(local) {
        Ok(backend) => backend
            .with_disk_grace(std::time::Duration::from_secs(config.boxes.disk_grace_secs))
            .with_warm(config.boxes.warm),
        Err(e) => {
            tracing::warn!(error = %e, "boxes are not for sale on this host");
            return Ok((Err(e.to_string().into()), None));
        }
    };
    let mut backend = backend;
    let mut no_egress = None;
    if config.egress.enabled
        && let Err(e) = backend.enable_egress(config.egress.clone()).await
    {
        tracing::warn!(error = %e, "boxes get no network egress on this host");
        let why = match e {
            vendbox_box::BoxError::Unsupported(why) => why,
            other => other.to_string(),
        };
        no_egress = Some(format!(
            "this host gives boxes no network egress: {why}; or set [egress] enabled = false to sell boxes without it"
        ));
    }
    backend.remove_stale_slots().await;
    let mut boxes = Boxes::new(Arc::new(backend), store);
    let catalog = config.catalog();
    if catalog.credits.refund_unused {
        boxes = boxes.with_refunds(&catalog.offers);
    }
    let capacity = config.boxes.capacity(boxes.capacity());
    tracing::info!(
        boxes = capacity.boxes,
        memory_mb = capacity.memory_mb,
        pids = capacity.pids,
        "box capacity"
    );
    Ok((Ok(Arc::new(boxes.with_capacity(capacity))), no_egress))
}

/// The box service, or why this vendbox runs none.
type BoxService = Result<Arc<Boxes>, Arc<str>>;

/// Makes the host and the store agree after a start, while vendbox serves: a box that stalls
/// costs the reconciliation its own bounded wait, never the service. Retried on failure.
async fn reconcile(boxes: Arc<Boxes>, mut stop: watch::Receiver<bool>) {
    let mut pause = std::time::Duration::from_secs(1);
    loop {
        match boxes.reconcile().await {
            Ok(report) => {
                tracing::info!(
                    kept = report.boxes_kept,
                    orphans_destroyed = report.orphans_destroyed,
                    failed = report.leases_failed,
                    ended = report.leases_ended,
                    "boxes reconciled"
                );
                return;
            }
            Err(e) => tracing::warn!(error = %e, "reconciling boxes failed; trying again"),
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return,
        }
        pause = (pause * 2).min(std::time::Duration::from_mins(1));
    }
}

/// Refuses to start when the chain answers and has no contract at the batching address (a
/// chain that does not answer now is not a reason to stay down: settlements wait for it).
async fn check_multicall(facilitator: &BuiltinFacilitator, multicall: EvmAddress) -> Result<(), String> {
    match tokio::time::timeout(std::time::Duration::from_secs(5), facilitator.check_batching()).await {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(format!(
            "payments.multicall: the chain has no contract at {multicall}; deploy Multicall3 there, \
             name where it is, or set payments.settle_batch = 1"
        )),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not check payments.multicall on the chain");
            Ok(())
        }
        Err(_) => {
            tracing::warn!("the chain did not answer whether payments.multicall holds a contract");
            Ok(())
        }
    }
}

/// The payment gate and settlement worker of `config`; an error names what is missing.
async fn payments(
    config: &Config,
    store: Arc<dyn Store>,
    public_url: String,
    secrets: Secrets,
) -> Result<(Arc<Payments>, Option<SettlementWorker>), String> {
    let p = &config.payments;
    let Some(acceptance) = p.acceptance().map_err(|(key, problem)| format!("{key}: {problem}"))? else {
        tracing::warn!("payments.pay_to is not set: paid routes answer 503 until it is");
        return Ok((Arc::new(Payments::unconfigured(store, public_url)), None));
    };
    let chain_error = |e: vendbox_pay::chain::ChainError| e.to_string();
    let (network, asset, pay_to) = (acceptance.network(), acceptance.asset(), acceptance.pay_to());
    let x402 = match p.facilitator {
        FacilitatorKind::Builtin => {
            let signer = secrets.signer.ok_or(
                "payments.facilitator = \"builtin\" needs the settlement key in VENDBOX_SIGNER_KEY or VENDBOX_SIGNER_KEY_FILE",
            )?;
            tracing::info!(sender = %signer.address(), rpc = %p.rpc_url, "built-in facilitator settles on chain");
            let mut facilitator =
                BuiltinFacilitator::new(&p.rpc_url, acceptance.asset(), &signer).map_err(chain_error)?;
            if let Some((multicall, most)) =
                p.batching().map_err(|(key, problem)| format!("{key}: {problem}"))?
            {
                facilitator = facilitator.batching(multicall, most);
                check_multicall(&facilitator, multicall).await?;
                tracing::info!(%multicall, most, "settlements are batched through Multicall3");
            }
            X402Exact::builtin(acceptance, facilitator)
        }
        FacilitatorKind::Remote if p.settle_batch > 1 => {
            return Err("payments.settle_batch: batches are made by the built-in facilitator only \
                        (payments.facilitator = \"builtin\")"
                .into());
        }
        FacilitatorKind::Remote => {
            tracing::info!(url = %p.facilitator_url, "remote facilitator settles");
            X402Exact::remote(acceptance, &p.facilitator_url, secrets.facilitator_auth, &p.rpc_url)
                .map_err(chain_error)?
        }
    };
    tracing::info!(network = %network, asset = %asset, pay_to = %pay_to, "taking x402 payments");
    let realm = realm_of(&public_url);
    let mut mpp = MppEvmCharge::new(x402.acceptance().clone(), x402.facilitator(), mpp_secret()?, &realm);
    if let Some(chain) = x402.chain() {
        mpp = mpp.recovering_from(chain.clone());
    }
    tracing::info!(realm = %realm, "taking MPP payments (evm charge)");
    // x402 first: a request carrying an x402 payment pays with it, even when it also names an
    // account; one naming only an account pays from its credits. An MPP credential is an
    // `Authorization: Payment` header, which no other method reads.
    let credits =
        vendbox_service::Credits::new(store.clone(), Arc::new(vendbox_service::SystemClock), &public_url);
    let methods: Vec<Arc<dyn vendbox_pay::PaymentMethod>> =
        vec![Arc::new(x402), Arc::new(mpp), Arc::new(credits)];
    let payments = Arc::new(Payments::new(methods, store, public_url).with_faults(Faults::from_env()));
    let worker = SettlementWorker { payments: payments.clone(), grace: p.settle_grace() };
    Ok((payments, Some(worker)))
}

/// The MPP challenge-binding secret: `VENDBOX_MPP_SECRET` (at least 32 bytes), or the file named
/// by `VENDBOX_MPP_SECRET_FILE`. Without either, a random one: challenges are then refused after
/// a restart and by other hosts, so several hosts behind one address must share one.
fn mpp_secret() -> Result<BindingSecret, String> {
    let text = match (std::env::var("VENDBOX_MPP_SECRET"), std::env::var("VENDBOX_MPP_SECRET_FILE")) {
        (Ok(secret), _) => secret,
        (Err(_), Ok(file)) => {
            std::fs::read_to_string(&file).map_err(|e| format!("VENDBOX_MPP_SECRET_FILE {file}: {e}"))?
        }
        _ => {
            tracing::warn!(
                "VENDBOX_MPP_SECRET is not set: MPP challenges are bound with a random secret, which a restart forgets"
            );
            return Ok(BindingSecret::random());
        }
    };
    BindingSecret::new(text.trim().as_bytes()).map_err(|e| format!("VENDBOX_MPP_SECRET: {e}"))
}

/// The MPP realm of a vendbox at `public_url`: its host (and port).
fn realm_of(public_url: &str) -> String {
    let authority = public_url.split_once("://").map_or(public_url, |(_, rest)| rest);
    authority.split('/').next().unwrap_or(authority).to_owned()
}

/// What vendbox needs that never goes in a file it might share: keys and auth headers.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    /// The built-in facilitator's settlement key.
    pub signer: Option<Wallet>,
    /// `(name, value)` of the header sent to a remote facilitator.
    pub facilitator_auth: Option<(String, String)>,
}

impl Secrets {
    /// `VENDBOX_SIGNER_KEY` (or the file named by `VENDBOX_SIGNER_KEY_FILE`) and
    /// `VENDBOX_FACILITATOR_AUTH` (`Name: value`).
    pub fn from_env() -> Result<Secrets, String> {
        let key = match (std::env::var("VENDBOX_SIGNER_KEY"), std::env::var("VENDBOX_SIGNER_KEY_FILE")) {
            (Ok(key), _) => Some(key),
            (Err(_), Ok(file)) => Some(
                std::fs::read_to_string(&file).map_err(|e| format!("VENDBOX_SIGNER_KEY_FILE {file}: {e}"))?,
            ),
            _ => None,
        };
        let signer = key
            .map(|k| Wallet::from_str(k.trim()))
            .transpose()
            .map_err(|_| "VENDBOX_SIGNER_KEY is not a 32-byte hex private key".to_owned())?;
        let facilitator_auth = std::env::var("VENDBOX_FACILITATOR_AUTH").ok().and_then(|h| {
            h.split_once(':').map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        });
        Ok(Secrets { signer, facilitator_auth })
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
