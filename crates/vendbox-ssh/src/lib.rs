//! The SSH gateway: OpenSSH clients log in with the public key (or one-time password) given at
//! rental; the key selects the lease, and every session runs in the lease's box through boxd:
//! interactive shells with a PTY and window resizes, `ssh host cmd` with its exit status,
//! environment passing, SFTP (which `scp` uses), and `-L` forwarding to ports inside the box.
//!
//! The gateway knows nothing of the store or of payments: it asks a [`Leases`] (implemented by
//! the server) which lease a key opens and whether that lease may be used now. Sessions of a lease
//! that ends are closed with a message saying why.

mod admission;
mod hostkey;
mod session;
mod sftp;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use russh::server::Config;
use tokio::net::TcpListener;
use tokio::sync::watch;
use vendbox_box::BoxdClient;

pub use hostkey::{HostKeyError, load_or_create};

/// How often an open session checks that its lease may still be used.
pub const LEASE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// What the gateway asks about leases.
#[async_trait]
pub trait Leases: Send + Sync + fmt::Debug + 'static {
    /// The lease the public key with `fingerprint` (`SHA256:…`) opens when logging in as `user`
    /// (`root` for the key's newest lease, or a lease id), or `None` for a key that opens none.
    async fn by_key(&self, user: &str, fingerprint: &str) -> Option<String>;

    /// The lease a one-time password opens, if any.
    async fn by_password(&self, user: &str, password: &str) -> Option<String>;

    /// Starts one use of the lease's box (a shell, a command, a file session, a forwarded
    /// connection): its boxd, or why the lease may not be used (expired, terminated…).
    async fn begin(&self, lease: &str) -> Result<BoxdClient, String>;

    /// Why the lease may no longer be used, once it may not.
    async fn refusal(&self, lease: &str) -> Option<String>;
}

/// The `SHA256:…` fingerprint of an OpenSSH public key line (`ssh-ed25519 AAAA… comment`), or
/// why the line is not one.
pub fn fingerprint(public_key: &str) -> Result<String, String> {
    let key = russh::keys::PublicKey::from_openssh(public_key.trim()).map_err(|e| e.to_string())?;
    Ok(key.fingerprint(russh::keys::HashAlg::Sha256).to_string())
}

/// What one client may hold of the gateway. Connections that have not authenticated are
/// bounded in number (in all and per client address) and in time; authenticated ones per lease;
/// channels per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a connection may take from its first byte to a successful login.
    pub preauth_timeout: Duration,
    /// Connections not yet logged in, in all.
    pub max_unauthenticated: usize,
    /// Connections not yet logged in, from one client address.
    pub max_unauthenticated_per_peer: usize,
    /// Logged-in connections to one lease.
    pub max_connections_per_lease: usize,
    /// Open channels (sessions and forwardings) of one connection.
    pub max_channels_per_connection: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            preauth_timeout: Duration::from_secs(20),
            max_unauthenticated: 512,
            max_unauthenticated_per_peer: 32,
            max_connections_per_lease: 32,
            max_channels_per_connection: 32,
        }
    }
}

/// The running gateway's address and its stop switch.
#[derive(Debug)]
pub struct Gateway {
    listener: TcpListener,
    config: Arc<Config>,
    leases: Arc<dyn Leases>,
    admission: Arc<admission::Admission>,
}

impl Gateway {
    /// Binds `listen` with the host key kept in `host_key_path` (made on first start).
    pub async fn bind(
        listen: SocketAddr,
        host_key_path: &Path,
        leases: Arc<dyn Leases>,
        limits: Limits,
    ) -> std::io::Result<Gateway> {
        let key = load_or_create(host_key_path).map_err(std::io::Error::other)?;
        let config = Config {
            server_id: russh::SshId::Standard(
                format!("SSH-2.0-vendbox_{}", env!("CARGO_PKG_VERSION")).into(),
            ),
            keys: vec![key],
            auth_rejection_time: Duration::from_millis(300),
            auth_rejection_time_initial: Some(Duration::ZERO),
            inactivity_timeout: Some(Duration::from_hours(1)),
            keepalive_interval: Some(Duration::from_secs(30)),
            nodelay: true,
            methods: russh::MethodSet::from(&[russh::MethodKind::PublicKey, russh::MethodKind::Password][..]),
            ..Config::default()
        };
        let listener = TcpListener::bind(listen).await?;
        let admission = Arc::new(admission::Admission::new(limits));
        Ok(Gateway { listener, config: Arc::new(config), leases, admission })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` turns true; open sessions are disconnected then.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(5);
        loop {
            tokio::select! {
                () = stopped(stop.clone()) => return,
                accepted = self.listener.accept() => {
                    let (socket, peer) = match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            // Out of descriptors or memory: wait rather than spin.
                            tracing::warn!(error = %e, "the ssh gateway could not accept; backing off");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(1));
                            continue;
                        }
                    };
                    backoff = Duration::from_millis(5);
                    let Some(ticket) = self.admission.arrive(peer.ip()) else {
                        tracing::debug!(%peer, "ssh connection refused: too many waiting to log in");
                        continue;
                    };
                    let handler =
                        session::Connection::new(self.leases.clone(), peer, self.admission.clone(), ticket);
                    let config = self.config.clone();
                    let stop = stop.clone();
                    tokio::spawn(session::serve(config, socket, handler, stop, self.admission.limits()));
                }
            }
        }
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
pub(crate) async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}
