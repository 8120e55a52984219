//! One SSH connection: authentication by key or one-time password, and its channels — shells
//! and commands (`boxd` processes, with a PTY when asked), SFTP, and `-L` forwarding — each
//! begun only while the lease may be used, and all ended when the lease ends.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use russh::keys::HashAlg;
use russh::server::{Auth, ChannelOpenHandle, Config, Handle, Handler, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, Disconnect};
use tokio::net::TcpStream;
use tokio::sync::watch;
use vendbox_box::wire::{Event, ProcessSpec, PtySize, StartRequest};
use vendbox_box::{BoxdClient, ExecStream};

use crate::admission::{Admission, LoggedIn, Waiting};
use crate::{LEASE_CHECK_INTERVAL, Leases, Limits};

/// The shell an interactive session runs (the host image has bash).
const SHELL: &str = "/bin/bash";

/// A channel of the connection.
#[derive(Debug, Default)]
struct ChannelState {
    /// The channel itself, until a subsystem or forwarding takes it over.
    channel: Option<Channel<Msg>>,
    /// Variables from `env` requests (`ssh -o SendEnv`, `SetEnv`).
    env: BTreeMap<String, String>,
    /// Terminal type and size from a `pty-req`.
    pty: Option<(String, PtySize)>,
    /// The boxd process behind the channel, once it runs.
    process: Option<(BoxdClient, u32)>,
}

/// The state of one client connection.
#[derive(Debug)]
pub(crate) struct Connection {
    leases: Arc<dyn Leases>,
    peer: SocketAddr,
    /// The lease the client logged in to.
    lease: Option<String>,
    channels: HashMap<ChannelId, ChannelState>,
    /// Forwarded connections open now (their tasks count themselves out).
    tunnels: Arc<AtomicUsize>,
    /// Whether the task that ends the connection with its lease runs.
    watching: bool,
    admission: Arc<Admission>,
    /// The connection's place among those waiting to log in, until it logs in.
    waiting: Option<Waiting>,
    /// Its place among the lease's connections, once logged in.
    logged_in: Option<LoggedIn>,
    /// True once logged in. Dropped with the connection, which tells the tasks that watch it.
    alive: watch::Sender<bool>,
}

impl Connection {
    pub(crate) fn new(
        leases: Arc<dyn Leases>,
        peer: SocketAddr,
        admission: Arc<Admission>,
        waiting: Waiting,
    ) -> Connection {
        Connection {
            leases,
            peer,
            lease: None,
            channels: HashMap::new(),
            tunnels: Arc::new(AtomicUsize::new(0)),
            watching: false,
            admission,
            waiting: Some(waiting),
            logged_in: None,
            alive: watch::channel(false).0,
        }
    }

    /// Logs the connection in to `lease`, if the lease has room for another connection.
    fn log_in(&mut self, lease: String) -> Auth {
        let Some(place) = self.admission.log_in(&lease) else {
            tracing::info!(lease, peer = %self.peer, "ssh login refused: the lease has too many connections");
            return Auth::reject();
        };
        self.logged_in = Some(place);
        self.waiting = None;
        self.lease = Some(lease);
        self.alive.send_replace(true);
        Auth::Accept
    }

    /// Whether another channel may open, under the connection's limit.
    fn has_room_for_a_channel(&self) -> bool {
        self.channels.len() + self.tunnels.load(Ordering::Relaxed)
            < self.admission.limits().max_channels_per_connection
    }

    /// Ends the connection, with the reason, once its lease may no longer be used.
    fn watch_lease(&mut self, handle: Handle) {
        let Some(lease) = self.lease.clone() else { return };
        if std::mem::replace(&mut self.watching, true) {
            return;
        }
        let leases = self.leases.clone();
        let mut alive = self.alive.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(LEASE_CHECK_INTERVAL) => {}
                    // The connection is gone: nothing left to watch.
                    changed = alive.changed() => if changed.is_err() { return } else { continue },
                }
                if let Some(reason) = leases.refusal(&lease).await {
                    tracing::info!(lease, reason, "ssh connection ended with its lease");
                    let _ = handle
                        .disconnect(Disconnect::ByApplication, format!("vendbox: {reason}"), "en".into())
                        .await;
                    return;
                }
            }
        });
    }

    /// The lease's boxd for a new use, or `None` after telling the client why not on `channel`.
    async fn begin(&mut self, channel: ChannelId, session: &mut Session) -> Option<BoxdClient> {
        let lease = self.lease.clone()?;
        match self.leases.begin(&lease).await {
            Ok(boxd) => Some(boxd),
            Err(reason) => {
                tracing::info!(lease, reason, "ssh session refused");
                let _ = session.channel_success(channel);
                refuse(session.handle(), channel, reason);
                None
            }
        }
    }

    /// Starts `spec` in the box for `channel` and streams its output to the client.
    async fn run(
        &mut self,
        channel: ChannelId,
        mut spec: ProcessSpec,
        kind: &str,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let Some(boxd) = self.begin(channel, session).await else { return Ok(()) };
        let state = self.channels.entry(channel).or_default();
        spec.envs.extend(state.env.clone());
        let pty = state.pty.as_ref().map(|(term, size)| {
            spec.envs.entry("TERM".into()).or_insert_with(|| term.clone());
            *size
        });
        let started = match boxd.start(&StartRequest { process: spec, stdin: true, pty }).await {
            Ok(stream) => first_pid(stream).await,
            Err(e) => Err(e.to_string()),
        };
        match started {
            Ok((pid, stream)) => {
                tracing::info!(lease = self.lease.as_deref(), peer = %self.peer, kind, "ssh session started");
                state.process = Some((boxd, pid));
                session.channel_success(channel)?;
                tokio::spawn(pump(stream, session.handle(), channel));
            }
            Err(reason) => {
                session.channel_success(channel)?;
                refuse(session.handle(), channel, format!("the box could not start it: {reason}"));
            }
        }
        Ok(())
    }
}

/// Reads the `start` event of a process stream.
async fn first_pid(mut stream: ExecStream) -> Result<(u32, ExecStream), String> {
    match stream.next().await {
        Ok(Some(Event::Start { pid })) => Ok((pid, stream)),
        Ok(other) => Err(format!("boxd began with {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Copies a process's output to the channel, then its exit status, then closes the channel.
async fn pump(mut stream: ExecStream, handle: Handle, channel: ChannelId) {
    let decode = |data: &str| base64::engine::general_purpose::STANDARD.decode(data).unwrap_or_default();
    let mut status = 255;
    while let Ok(Some(event)) = stream.next().await {
        match event {
            Event::Start { .. } => {}
            Event::Stdout(data) | Event::Pty(data) => {
                if handle.data(channel, decode(&data)).await.is_err() {
                    break;
                }
            }
            Event::Stderr(data) => {
                if handle.extended_data(channel, 1, decode(&data)).await.is_err() {
                    break;
                }
            }
            Event::End(exit) => {
                status = exit.exit_code.unwrap_or_else(|| 128 + exit.signal.unwrap_or(0));
                break;
            }
        }
    }
    let _ = handle.exit_status_request(channel, u32::try_from(status).unwrap_or(255)).await;
    let _ = handle.eof(channel).await;
    let _ = handle.close(channel).await;
}

/// Tells the client why `channel` cannot be used, and closes it with status 1.
fn refuse(handle: Handle, channel: ChannelId, reason: String) {
    tokio::spawn(async move {
        let _ = handle.extended_data(channel, 1, format!("vendbox: {reason}\r\n").into_bytes()).await;
        let _ = handle.exit_status_request(channel, 1).await;
        let _ = handle.eof(channel).await;
        let _ = handle.close(channel).await;
    });
}

impl Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey(&mut self, user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        let fingerprint = key.public_key.fingerprint(HashAlg::Sha256).to_string();
        let Some(lease) = self.leases.by_key(user, &fingerprint).await else {
            tracing::info!(user, fingerprint, peer = %self.peer, "ssh key refused");
            return Ok(Auth::reject());
        };
        tracing::info!(lease, user, fingerprint, peer = %self.peer, "ssh login");
        Ok(self.log_in(lease))
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        match self.leases.by_password(user, password).await {
            Some(lease) => {
                tracing::info!(lease, user, peer = %self.peer, "ssh login with a one-time password");
                Ok(self.log_in(lease))
            }
            None => Ok(Auth::reject()),
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.watch_lease(session.handle());
        if !self.has_room_for_a_channel() {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        self.channels
            .insert(channel.id(), ChannelState { channel: Some(channel), ..ChannelState::default() });
        reply.accept().await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.watch_lease(session.handle());
        let Some(lease) = self.lease.clone() else {
            reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
            return Ok(());
        };
        if !self.has_room_for_a_channel() {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        let loopback = matches!(host, "localhost" | "127.0.0.1" | "::1" | "[::1]");
        let port = u16::try_from(port).ok().filter(|p| *p > 0);
        let (true, Some(port)) = (loopback, port) else {
            // A box has no network but its own loopback; nothing else can be reached from it.
            reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
            return Ok(());
        };
        let tunnel = match self.leases.begin(&lease).await {
            Ok(boxd) => boxd.connect_tcp(port).await.map_err(|e| e.to_string()),
            Err(reason) => Err(reason),
        };
        match tunnel {
            Ok(mut tunnel) => {
                tracing::info!(lease, port, peer = %self.peer, "ssh forwarding into the box");
                reply.accept().await;
                let tunnels = self.tunnels.clone();
                tunnels.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut stream = channel.into_stream();
                    let _ = tokio::io::copy_bidirectional(&mut stream, &mut tunnel).await;
                    tunnels.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(reason) => {
                tracing::info!(lease, port, reason, "ssh forwarding refused");
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
            }
        }
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        cols: u32,
        rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let size = PtySize { rows: clamp(rows, 24), cols: clamp(cols, 80) };
        self.channels.entry(channel).or_default().pty = Some((term.to_owned(), size));
        session.channel_success(channel)?;
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.entry(channel).or_default().env.insert(name.to_owned(), value.to_owned());
        session.channel_success(channel)?;
        Ok(())
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        let spec = ProcessSpec { cmd: SHELL.into(), args: vec!["-l".into()], ..ProcessSpec::default() };
        self.run(channel, spec, "shell", session).await
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let line = String::from_utf8_lossy(data).into_owned();
        let spec = ProcessSpec { cmd: line, shell: true, ..ProcessSpec::default() };
        self.run(channel, spec, "exec", session).await
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name != "sftp" {
            session.channel_failure(channel)?;
            return Ok(());
        }
        let Some(boxd) = self.begin(channel, session).await else { return Ok(()) };
        let Some(stream) = self.channels.get_mut(&channel).and_then(|s| s.channel.take()) else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        tracing::info!(lease = self.lease.as_deref(), peer = %self.peer, kind = "sftp", "ssh session started");
        session.channel_success(channel)?;
        let handle = session.handle();
        tokio::spawn(async move {
            let stream = crate::sftp::serve(stream.into_stream(), boxd).await;
            // scp and sftp judge the session by its exit status, as with sshd's sftp-server. The
            // stream is dropped only after the close: dropping it sends a close of its own that
            // could overtake the exit status (OpenSSH then reports `Exit status -1`).
            let _ = handle.exit_status_request(channel, 0).await;
            let _ = handle.eof(channel).await;
            let _ = handle.close(channel).await;
            drop(stream);
        });
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some((boxd, pid)) = self.channels.get(&channel).and_then(|s| s.process.as_ref()) {
            let _ = boxd.input(*pid, data).await;
        }
        Ok(())
    }

    async fn channel_eof(&mut self, channel: ChannelId, _session: &mut Session) -> Result<(), Self::Error> {
        if let Some((boxd, pid)) = self.channels.get(&channel).and_then(|s| s.process.as_ref()) {
            let _ = boxd.close_input(*pid).await;
        }
        Ok(())
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        cols: u32,
        rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some((boxd, pid)) = self.channels.get(&channel).and_then(|s| s.process.as_ref()) {
            let _ = boxd.resize(*pid, clamp(rows, 24), clamp(cols, 80)).await;
        }
        Ok(())
    }

    async fn channel_close(&mut self, channel: ChannelId, _session: &mut Session) -> Result<(), Self::Error> {
        if let Some(ChannelState { process: Some((boxd, pid)), .. }) = self.channels.remove(&channel) {
            // The client went away: a process still running with it is hung up on, as sshd does.
            let _ = boxd.signal(pid, "SIGHUP").await;
        }
        Ok(())
    }
}

/// A terminal dimension as boxd takes it; 0 (unknown) becomes `default`.
fn clamp(value: u32, default: u16) -> u16 {
    match u16::try_from(value) {
        Ok(0) => default,
        Ok(v) => v,
        Err(_) => u16::MAX,
    }
}

/// Runs one connection until it ends or the gateway stops.
pub(crate) async fn serve(
    config: Arc<Config>,
    socket: TcpStream,
    handler: Connection,
    stop: watch::Receiver<bool>,
    limits: Limits,
) {
    let peer = handler.peer;
    let mut logged_in = handler.alive.subscribe();
    // russh runs the session in a task of its own that outlives its handle; a second handle on
    // the socket lets the gateway cut a connection that did not log in.
    let (socket, cutter) = match with_cutter(socket) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "ssh connection dropped: its socket could not be shared");
            return;
        }
    };
    // A client must log in within the limit, counted from its first byte: one that never sends
    // its version, or never finishes the key exchange or authentication, is dropped.
    let started = tokio::time::Instant::now();
    let deadline = started + limits.preauth_timeout;
    let session =
        match tokio::time::timeout_at(deadline, russh::server::run_stream(config, socket, handler)).await {
            Ok(Ok(session)) => session,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "ssh connection setup failed");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "ssh connection dropped: it did not log in in time");
                return;
            }
        };
    let handle = session.handle();
    let login_deadline = async move {
        let in_time = async move { logged_in.wait_for(|in_| *in_).await.is_ok() };
        if let Ok(true) = tokio::time::timeout_at(deadline, in_time).await {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = crate::stopped(stop) => {
            let _ = handle.disconnect(Disconnect::ByApplication, "vendbox is stopping".into(), "en".into()).await;
        }
        () = login_deadline => {
            // A client that did not log in is owed no goodbye (and one that stopped reading
            // would block it): the socket is shut, which ends russh's task.
            tracing::info!(%peer, "ssh connection dropped: it did not log in in time");
            let _ = cutter.shutdown(std::net::Shutdown::Both);
        }
        result = session => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "ssh connection ended with an error");
            }
        }
    }
    tracing::info!(%peer, "ssh connection closed");
}

/// `socket`, and a second handle on it that can shut it down from outside the session.
fn with_cutter(socket: TcpStream) -> std::io::Result<(TcpStream, std::net::TcpStream)> {
    let socket = socket.into_std()?;
    let cutter = socket.try_clone()?;
    socket.set_nonblocking(true)?;
    Ok((TcpStream::from_std(socket)?, cutter))
}
