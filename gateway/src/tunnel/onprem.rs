//! The on-prem side: dials out to the cloud Causeways, says which clusters it
//! exposes, and connects each stream the cloud side opens to the broker it
//! names, if that broker belongs to an exposed cluster.
//!
//! Every `connect` address gets `connections` slots; each slot reconnects
//! forever, waiting a random time up to an exponentially growing bound (full
//! jitter) between attempts. The bound starts again from the bottom once a
//! connection has stayed up for [`STABLE`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;

use super::frame::{self, Control, Hello, Open, Opened, Welcome};
use super::{ConnStatus, TunnelConfig};
use crate::backend::transport::{Connector, TcpConnector};
use crate::backend::Backends;
use crate::telemetry;

/// A connection up this long resets the backoff.
const STABLE: Duration = Duration::from_secs(10);
/// The first backoff bound.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Time to connect to a local broker.
const BROKER_CONNECT: Duration = Duration::from_secs(5);
/// Buffer of each direction of a stream's copy loop.
const COPY_BUFFER: usize = 256 * 1024;

/// What one slot is doing.
#[derive(Default)]
struct Slot {
    name: String,
    target: String,
    state: &'static str,
    since: Option<Instant>,
    conn: Option<quinn::Connection>,
    /// The first stream, for telling the cloud side we drain.
    control: Option<quinn::SendStream>,
    clusters: Vec<String>,
    /// Streams open on this slot's connections.
    open_streams: Arc<AtomicU64>,
    reconnects: u64,
    last_error: Option<String>,
}

pub struct Dialer {
    config: TunnelConfig,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    backends: Backends,
    slots: Vec<Mutex<Slot>>,
    draining: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A random wait in `0..=min(cap, base * 2^attempt)`.
pub fn full_jitter(attempt: u32, cap: Duration) -> Duration {
    let bound = BACKOFF_BASE.saturating_mul(1u32 << attempt.min(20)).min(cap);
    let ms = rand::rng().random_range(0..=bound.as_millis() as u64);
    Duration::from_millis(ms)
}

impl Dialer {
    pub fn new(config: TunnelConfig, endpoint: quinn::Endpoint, client: quinn::ClientConfig, backends: Backends) -> Arc<Self> {
        let mut slots = Vec::new();
        for target in &config.connect {
            for i in 0..config.connections {
                slots.push(Mutex::new(Slot {
                    name: format!("{target}#{i}"),
                    target: target.clone(),
                    state: "connecting",
                    ..Slot::default()
                }));
            }
        }
        Arc::new(Self {
            config,
            endpoint,
            client,
            backends,
            slots,
            draining: AtomicBool::new(false),
        })
    }

    pub fn spawn(self: Arc<Self>) {
        for index in 0..self.slots.len() {
            let dialer = self.clone();
            tokio::spawn(async move { dialer.run_slot(index).await });
        }
    }

    fn set(&self, index: usize, f: impl FnOnce(&mut Slot)) {
        if let Some(slot) = self.slots.get(index) {
            f(&mut lock(slot));
        }
    }

    async fn run_slot(self: Arc<Self>, index: usize) {
        let (name, target, open_streams) = match self.slots.get(index) {
            Some(s) => {
                let s = lock(s);
                (s.name.clone(), s.target.clone(), s.open_streams.clone())
            }
            None => return,
        };
        let cap = Duration::from_millis(self.config.backoff_max_ms);
        let mut attempt: u32 = 0;
        loop {
            if self.draining.load(Ordering::Acquire) {
                return;
            }
            self.set(index, |s| s.state = "connecting");
            match self.connect(&name, &target).await {
                Ok((conn, control, clusters)) => {
                    let up = Instant::now();
                    tracing::info!(slot = %name, remote = %conn.remote_address(), clusters = ?clusters, "tunnel connected");
                    self.set(index, |s| {
                        s.state = "connected";
                        s.since = Some(up);
                        s.conn = Some(conn.clone());
                        s.clusters = clusters;
                        s.control = Some(control);
                        s.last_error = None;
                    });
                    super::watch_stats(conn.clone(), target.clone(), name.clone());
                    let reason = self.serve(conn, &open_streams).await;
                    if self.draining.load(Ordering::Acquire) {
                        self.set(index, |s| {
                            s.state = "closed";
                            s.conn = None;
                        });
                        return;
                    }
                    tracing::warn!(slot = %name, reason = %reason, up_for = ?up.elapsed(), "tunnel connection lost; reconnecting");
                    telemetry::tunnel_reconnect(&target);
                    self.set(index, |s| {
                        s.reconnects += 1;
                        s.conn = None;
                        s.control = None;
                        s.since = None;
                        s.last_error = Some(reason.to_string());
                    });
                    attempt = if up.elapsed() >= STABLE { 0 } else { attempt.saturating_add(1) };
                }
                Err(e) => {
                    tracing::warn!(slot = %name, error = %e, "tunnel connection failed");
                    self.set(index, |s| s.last_error = Some(e));
                    attempt = attempt.saturating_add(1);
                }
            }
            let wait = full_jitter(attempt, cap);
            self.set(index, |s| s.state = "backoff");
            tokio::time::sleep(wait).await;
        }
    }

    /// Handshake and hello: a connection the cloud side took clusters on.
    async fn connect(&self, name: &str, target: &str) -> Result<(quinn::Connection, quinn::SendStream, Vec<String>), String> {
        let (host, _) = crate::config::split_host_port(target).ok_or_else(|| format!("'{target}' is not HOST:PORT"))?;
        let addr = tokio::net::lookup_host(target)
            .await
            .map_err(|e| format!("cannot resolve {target}: {e}"))?
            .next()
            .ok_or_else(|| format!("{target} resolves to nothing"))?;
        let server_name = self.config.server_name.clone().unwrap_or(host);
        let deadline = self.config.handshake_timeout();
        let connecting = self
            .endpoint
            .connect_with(self.client.clone(), addr, &server_name)
            .map_err(|e| format!("cannot dial {target}: {e}"))?;
        let conn = tokio::time::timeout(deadline, connecting)
            .await
            .map_err(|_| format!("no handshake with {target} within {deadline:?}"))?
            .map_err(|e| format!("handshake with {target}: {e}"))?;
        let hello = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            let hello = Hello { version: frame::VERSION, clusters: self.config.expose.clone(), slot: name.to_string() };
            frame::write(&mut send, &hello).await.map_err(|e| e.to_string())?;
            let welcome: Welcome = frame::read(&mut recv).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((send, welcome))
        };
        let (control, welcome) = match tokio::time::timeout(deadline, hello).await {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => {
                let why = conn.close_reason().map_or(e, |r| r.to_string());
                return Err(format!("{target} refused the hello: {why}"));
            }
            Err(_) => return Err(format!("{target} did not answer the hello within {deadline:?}")),
        };
        for (cluster, why) in &welcome.refused {
            tracing::error!(slot = %name, %cluster, "the cloud side refused to take this cluster: {why}");
        }
        if welcome.accepted.is_empty() {
            return Err(format!("{target} took none of the exposed clusters"));
        }
        Ok((conn, control, welcome.accepted))
    }

    /// Serves the streams the cloud side opens until the connection closes.
    async fn serve(self: &Arc<Self>, conn: quinn::Connection, open_streams: &Arc<AtomicU64>) -> quinn::ConnectionError {
        loop {
            match conn.accept_bi().await {
                Ok((send, recv)) => {
                    let dialer = self.clone();
                    let open_streams = open_streams.clone();
                    tokio::spawn(async move { dialer.stream(send, recv, open_streams).await });
                }
                Err(e) => return e,
            }
        }
    }

    /// One stream: read where to, check it, connect, then copy both ways.
    async fn stream(&self, mut send: quinn::SendStream, mut recv: quinn::RecvStream, open_streams: Arc<AtomicU64>) {
        let open = match tokio::time::timeout(self.config.handshake_timeout(), frame::read::<Open, _>(&mut recv)).await {
            Ok(Ok(open)) => open,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "tunnel stream without a valid open message");
                let _ = send.reset(1u32.into());
                return;
            }
            Err(_) => {
                let _ = send.reset(1u32.into());
                return;
            }
        };
        let broker = match self.check(&open).await {
            Ok(()) => {
                let tcp = TcpConnector { timeout: BROKER_CONNECT };
                tcp.connect(open.addr.clone()).await.map_err(|e| format!("cannot connect to {}: {e}", open.addr))
            }
            Err(e) => Err(e),
        };
        let mut broker = match broker {
            Ok(b) => b,
            Err(why) => {
                tracing::warn!(cluster = %open.cluster, addr = %open.addr, "tunnel stream refused: {why}");
                telemetry::tunnel_stream(&open.cluster, "refused");
                let _ = frame::write(&mut send, &Opened { error: Some(why) }).await;
                let _ = send.finish();
                return;
            }
        };
        if frame::write(&mut send, &Opened { error: None }).await.is_err() {
            return;
        }
        telemetry::tunnel_stream(&open.cluster, "ok");
        let mut stream = super::cloud::Counted::new(tokio::io::join(recv, send), open_streams);
        let _ = tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut broker, COPY_BUFFER, COPY_BUFFER).await;
    }

    /// Whether the stream may go where it asks: an exposed cluster, and an
    /// address that is one of its bootstrap brokers or a broker its metadata
    /// names. Anything else is refused, so the tunnel never becomes a way
    /// into the rest of the on-prem network.
    async fn check(&self, open: &Open) -> Result<(), String> {
        if self.draining.load(Ordering::Acquire) {
            return Err("draining: shutting down".into());
        }
        if !self.config.expose.contains(&open.cluster) {
            return Err(format!("cluster '{}' is not exposed", open.cluster));
        }
        let Some(cluster) = self.backends.clusters.iter().find(|c| c.name == open.cluster) else {
            return Err(format!("cluster '{}' is not configured here", open.cluster));
        };
        if cluster.knows_address(&open.addr) {
            return Ok(());
        }
        // A broker may be newer than this side's copy of the metadata.
        let _ = cluster.probe(BROKER_CONNECT).await;
        if cluster.knows_address(&open.addr) {
            Ok(())
        } else {
            Err(format!("{} is not a broker of cluster '{}'", open.addr, open.cluster))
        }
    }

    /// Each slot's state, for `GET /tunnel`.
    pub fn status(&self) -> Vec<ConnStatus> {
        self.slots
            .iter()
            .map(|slot| {
                let s = lock(slot);
                let status = ConnStatus {
                    peer: s.target.clone(),
                    slot: s.name.clone(),
                    remote: s.conn.as_ref().map(|c| c.remote_address().to_string()).unwrap_or_default(),
                    state: s.state,
                    clusters: s.clusters.clone(),
                    connected_for_ms: s.since.map(|t| t.elapsed().as_millis() as u64),
                    open_streams: s.open_streams.load(Ordering::Relaxed),
                    reconnects: s.reconnects,
                    last_error: s.last_error.clone(),
                    ..ConnStatus::default()
                };
                match &s.conn {
                    Some(c) => status.with_stats(c),
                    None => status,
                }
            })
            .collect()
    }

    /// Tells the cloud side to open no new streams, lets open ones finish
    /// for up to the drain timeout, then closes.
    pub async fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        let controls: Vec<quinn::SendStream> = self.slots.iter().filter_map(|s| lock(s).control.take()).collect();
        let mut told = Vec::with_capacity(controls.len());
        for mut control in controls {
            if frame::write(&mut control, &Control::Drain).await.is_ok() && control.finish().is_ok() {
                told.push(control.stopped());
            }
        }
        // The cloud side must have the message before the connection closes,
        // or it would learn of the drain only from the close.
        let _ = tokio::time::timeout(Duration::from_secs(1), futures::future::join_all(told)).await;
        let deadline = Instant::now() + Duration::from_millis(self.config.drain_timeout_ms);
        let open = || self.slots.iter().map(|s| lock(s).open_streams.load(Ordering::Relaxed)).sum::<u64>();
        while Instant::now() < deadline && open() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.endpoint.close(0u32.into(), b"shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_grows() {
        let cap = Duration::from_secs(30);
        for attempt in 0..64 {
            let bound = BACKOFF_BASE.saturating_mul(1u32 << attempt.min(20)).min(cap);
            for _ in 0..50 {
                assert!(full_jitter(attempt, cap) <= bound);
            }
        }
        // Full jitter: late attempts spread over the whole range up to the cap.
        let waits: Vec<Duration> = (0..200).map(|_| full_jitter(30, cap)).collect();
        assert!(waits.iter().any(|w| *w > Duration::from_secs(15)));
        assert!(waits.iter().any(|w| *w < Duration::from_secs(15)));
    }
}
