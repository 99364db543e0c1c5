//! The cloud side: accepts on-prem peers, checks who they are and what they
//! may expose, and opens streams through them to on-prem brokers for the
//! backend connection layer ([`TunnelConnector`]).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rustls_pki_types::CertificateDer;

use super::frame::{self, Control, Hello, Open, Opened, Welcome};
use super::{ConnStatus, TunnelConfig};
use crate::backend::transport::{Connector, Stream};
use crate::telemetry;

/// Above this many handshakes at once, new peers must first prove their
/// address with a stateless retry (a handshake flood then costs one packet
/// each, no state).
const RETRY_ABOVE: usize = 16;

/// QUIC close codes the cloud side uses.
const CLOSE_NOT_ALLOWED: u32 = 1;
const CLOSE_PROTOCOL: u32 = 2;
const CLOSE_SHUTDOWN: u32 = 0;

/// One connection from an on-prem peer that said hello.
struct Peer {
    identity: String,
    slot: String,
    remote: SocketAddr,
    clusters: Vec<String>,
    conn: quinn::Connection,
    since: Instant,
    open_streams: Arc<AtomicU64>,
    draining: AtomicBool,
}

impl Peer {
    fn usable(&self) -> bool {
        self.conn.close_reason().is_none() && !self.draining.load(Ordering::Acquire)
    }
}

/// The peers connected now, by connection.
pub struct Registry {
    config: TunnelConfig,
    endpoint: quinn::Endpoint,
    peers: Mutex<Vec<Arc<Peer>>>,
    next: AtomicUsize,
    handshaking: AtomicUsize,
}

impl Registry {
    pub fn new(config: TunnelConfig, endpoint: quinn::Endpoint) -> Arc<Self> {
        Arc::new(Self {
            config,
            endpoint,
            peers: Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
            handshaking: AtomicUsize::new(0),
        })
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.endpoint.local_addr().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into())
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Peer>>> {
        match self.peers.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The usable connections that carry `cluster`, starting with the next
    /// in turn, so streams spread over connections.
    fn candidates(&self, cluster: &str) -> Vec<Arc<Peer>> {
        let peers = self.peers();
        let mut usable: Vec<Arc<Peer>> =
            peers.iter().filter(|p| p.usable() && p.clusters.iter().any(|c| c == cluster)).cloned().collect();
        if !usable.is_empty() {
            let start = self.next.fetch_add(1, Ordering::Relaxed) % usable.len();
            usable.rotate_left(start);
        }
        usable
    }

    /// Accepts peers until the endpoint closes.
    pub fn serve(self: &Arc<Self>) {
        let registry = self.clone();
        tokio::spawn(async move {
            tracing::info!(listen = %registry.listen_addr(), "tunnel listening (QUIC)");
            while let Some(incoming) = registry.endpoint.accept().await {
                if registry.handshaking.load(Ordering::Acquire) >= RETRY_ABOVE && !incoming.remote_address_validated() {
                    telemetry::tunnel_handshake_failed("retry");
                    let _ = incoming.retry();
                    continue;
                }
                let registry = registry.clone();
                tokio::spawn(async move {
                    registry.handshaking.fetch_add(1, Ordering::AcqRel);
                    let remote = incoming.remote_address();
                    let outcome = registry.admit(incoming).await;
                    registry.handshaking.fetch_sub(1, Ordering::AcqRel);
                    match outcome {
                        Ok(peer) => registry.hold(peer).await,
                        Err((reason, e)) => {
                            telemetry::tunnel_handshake_failed(reason);
                            tracing::warn!(%remote, reason, error = %e, "tunnel peer refused");
                        }
                    }
                });
            }
        });
    }

    /// Handshake, identity check and hello: a peer ready for streams.
    async fn admit(&self, incoming: quinn::Incoming) -> Result<(Arc<Peer>, quinn::SendStream, quinn::RecvStream), (&'static str, String)> {
        let remote = incoming.remote_address();
        let connecting = incoming.accept().map_err(|e| ("handshake", e.to_string()))?;
        let deadline = self.config.handshake_timeout();
        let conn = match tokio::time::timeout(deadline, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(("handshake", e.to_string())),
            Err(_) => return Err(("timeout", format!("no handshake within {deadline:?}"))),
        };
        let Some(identity) = identity_of(&conn) else {
            conn.close(CLOSE_NOT_ALLOWED.into(), b"no usable client certificate");
            return Err(("identity", "no usable client certificate".into()));
        };
        let Some(rule) = self.config.peers.iter().find(|p| p.identity == identity) else {
            conn.close(CLOSE_NOT_ALLOWED.into(), b"identity not allowed");
            return Err(("identity", format!("'{identity}' is not in [[tunnel.peers]]")));
        };
        let hello = async {
            let (send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
            let hello: Hello = frame::read(&mut recv).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((send, recv, hello))
        };
        let (mut send, recv, hello) = match tokio::time::timeout(deadline, hello).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                conn.close(CLOSE_PROTOCOL.into(), b"bad hello");
                return Err(("hello", format!("{identity}: {e}")));
            }
            Err(_) => {
                conn.close(CLOSE_PROTOCOL.into(), b"no hello");
                return Err(("timeout", format!("{identity} said no hello within {deadline:?}")));
            }
        };
        if hello.version != frame::VERSION {
            conn.close(CLOSE_PROTOCOL.into(), b"unsupported version");
            return Err(("hello", format!("{identity} speaks tunnel version {}, this side {}", hello.version, frame::VERSION)));
        }
        let mut accepted = Vec::new();
        let mut refused = Vec::new();
        for cluster in hello.clusters {
            if rule.clusters.contains(&cluster) {
                accepted.push(cluster);
            } else {
                refused.push((cluster, format!("'{identity}' may not expose it")));
            }
        }
        for (cluster, why) in &refused {
            tracing::warn!(peer = %identity, %cluster, "tunnel peer may not expose this cluster: {why}");
        }
        let _ = frame::write(&mut send, &Welcome { accepted: accepted.clone(), refused }).await;
        if accepted.is_empty() {
            // Let the peer read why before the connection goes.
            if send.finish().is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
            }
            conn.close(CLOSE_NOT_ALLOWED.into(), b"no cluster allowed");
            return Err(("clusters", format!("{identity} exposes no cluster it may")));
        }
        let peer = Arc::new(Peer {
            identity,
            slot: hello.slot,
            remote,
            clusters: accepted,
            conn,
            since: Instant::now(),
            open_streams: Arc::new(AtomicU64::new(0)),
            draining: AtomicBool::new(false),
        });
        Ok((peer, send, recv))
    }

    /// Keeps a peer registered until its connection closes; follows its
    /// control messages meanwhile.
    async fn hold(&self, (peer, _send, mut recv): (Arc<Peer>, quinn::SendStream, quinn::RecvStream)) {
        tracing::info!(peer = %peer.identity, slot = %peer.slot, remote = %peer.remote, clusters = ?peer.clusters, "tunnel peer connected");
        self.peers().push(peer.clone());
        super::watch_stats(peer.conn.clone(), peer.identity.clone(), peer.slot.clone());
        let control = async {
            loop {
                match frame::read::<Control, _>(&mut recv).await {
                    Ok(Control::Drain) => {
                        tracing::info!(peer = %peer.identity, slot = %peer.slot, "tunnel peer draining: no new streams on this connection");
                        peer.draining.store(true, Ordering::Release);
                    }
                    // The peer closed its side: wait for the connection.
                    Err(_) => return,
                }
            }
        };
        let reason = tokio::select! {
            reason = peer.conn.closed() => reason,
            () = control => peer.conn.closed().await,
        };
        self.peers().retain(|p| !Arc::ptr_eq(p, &peer));
        tracing::warn!(peer = %peer.identity, slot = %peer.slot, reason = %reason, "tunnel peer disconnected");
    }

    /// Opens a stream to `addr` of `cluster` through any connection that
    /// carries it; a connection that fails is passed over for the next.
    async fn open(self: Arc<Self>, cluster: String, addr: String, timeout: Duration) -> io::Result<Box<dyn Stream>> {
        let candidates = self.candidates(&cluster);
        if candidates.is_empty() {
            telemetry::tunnel_stream(&cluster, "no_peer");
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("no on-prem peer exposing '{cluster}' is connected to the tunnel"),
            ));
        }
        let mut last = None;
        for peer in candidates {
            match tokio::time::timeout(timeout, open_on(&peer, &cluster, &addr)).await {
                Ok(Ok(stream)) => {
                    telemetry::tunnel_stream(&cluster, "ok");
                    return Ok(stream);
                }
                // The on-prem side answered: another connection to the same
                // side would answer the same.
                Ok(Err(Failure::Refused(why))) => {
                    telemetry::tunnel_stream(&cluster, "refused");
                    return Err(io::Error::new(io::ErrorKind::ConnectionRefused, format!("on-prem side: {why}")));
                }
                Ok(Err(Failure::Connection(e))) => last = Some(e),
                Err(_) => last = Some(format!("no answer from {} within {timeout:?}", peer.identity)),
            }
        }
        telemetry::tunnel_stream(&cluster, "failed");
        Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("tunnel to '{cluster}': {}", last.unwrap_or_default()),
        ))
    }

    /// Each connection's state, for `GET /tunnel`.
    pub fn status(&self) -> Vec<ConnStatus> {
        self.peers()
            .iter()
            .map(|p| {
                ConnStatus {
                    peer: p.identity.clone(),
                    slot: p.slot.clone(),
                    remote: p.remote.to_string(),
                    state: if p.draining.load(Ordering::Acquire) { "draining" } else { "connected" },
                    clusters: p.clusters.clone(),
                    connected_for_ms: Some(p.since.elapsed().as_millis() as u64),
                    open_streams: p.open_streams.load(Ordering::Relaxed),
                    ..ConnStatus::default()
                }
                .with_stats(&p.conn)
            })
            .collect()
    }

    /// Stops accepting peers and closes every connection once its streams
    /// are done or the drain timeout passes.
    pub async fn drain(&self) {
        self.endpoint.set_server_config(None);
        let deadline = Instant::now() + Duration::from_millis(self.config.drain_timeout_ms);
        while Instant::now() < deadline && self.peers().iter().any(|p| p.open_streams.load(Ordering::Relaxed) > 0) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.endpoint.close(CLOSE_SHUTDOWN.into(), b"shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }

    /// The backend connector for a tunnelled cluster.
    pub fn connector(self: &Arc<Self>, cluster: String, timeout: Duration) -> Arc<dyn Connector> {
        Arc::new(TunnelConnector { registry: self.clone(), cluster, timeout })
    }
}

enum Failure {
    /// The on-prem side refused (unknown broker, broker down).
    Refused(String),
    /// The connection failed; another may do.
    Connection(String),
}

async fn open_on(peer: &Arc<Peer>, cluster: &str, addr: &str) -> Result<Box<dyn Stream>, Failure> {
    let (mut send, mut recv) = peer.conn.open_bi().await.map_err(|e| Failure::Connection(e.to_string()))?;
    frame::write(&mut send, &Open { cluster: cluster.to_string(), addr: addr.to_string() })
        .await
        .map_err(|e| Failure::Connection(e.to_string()))?;
    let opened: Opened = frame::read(&mut recv).await.map_err(|e| Failure::Connection(e.to_string()))?;
    if let Some(why) = opened.error {
        return Err(Failure::Refused(why));
    }
    Ok(Box::new(Counted::new(tokio::io::join(recv, send), peer.open_streams.clone())))
}

/// Counts a stream as open while it lives.
struct Guard(Arc<AtomicU64>);

impl Guard {
    fn new(count: Arc<AtomicU64>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A tunnel stream that counts itself among its connection's open streams.
pub(crate) struct Counted<S> {
    inner: S,
    _open: Guard,
}

impl<S> Counted<S> {
    pub(crate) fn new(inner: S, count: Arc<AtomicU64>) -> Self {
        Self { inner, _open: Guard::new(count) }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The subject (RFC 2253) of the peer's certificate.
fn identity_of(conn: &quinn::Connection) -> Option<String> {
    let certs = conn.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let leaf = certs.first()?;
    crate::tls::principal_of(leaf).map(|p| p.trim_start_matches("User:").to_string())
}

/// Reaches the brokers of one tunnelled cluster through the registry.
struct TunnelConnector {
    registry: Arc<Registry>,
    cluster: String,
    timeout: Duration,
}

impl Connector for TunnelConnector {
    fn connect(&self, addr: String) -> BoxFuture<'static, io::Result<Box<dyn Stream>>> {
        Box::pin(self.registry.clone().open(self.cluster.clone(), addr, self.timeout))
    }
}
