//! The hybrid bridge: an on-prem Causeway dials out over QUIC (TLS 1.3,
//! mutual TLS) to a Causeway in the cloud, which then reaches the on-prem
//! clusters back through those connections. No inbound connection to the
//! on-prem network is ever made.
//!
//! ```text
//!   cloud clients ──► cloud Causeway ══ QUIC (dialled from on-prem) ══ on-prem Causeway ──► on-prem brokers
//!                      [clusters.onprem] tunnel = true                  [tunnel] expose = ["onprem"]
//! ```
//!
//! Each Kafka connection the cloud side makes to an on-prem broker is one
//! QUIC stream ([`frame`] has the few messages around it), so to the rest of
//! the cloud gateway the on-prem cluster is a backend like any other:
//! routing, plugins, backend TLS/SASL and cluster links work through it
//! unchanged. The on-prem side ([`onprem`]) keeps `connections` connections
//! to every `connect` address, reconnecting forever; the cloud side
//! ([`cloud`]) checks each peer's certificate identity against
//! `[[tunnel.peers]]` before taking any cluster from it.

pub mod cloud;
mod endpoint;
pub mod frame;
pub mod onprem;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::config::Problem;

/// `[tunnel]`: one side of the bridge. `connect` makes this the on-prem side,
/// `listen` the cloud side.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelConfig {
    /// On-prem: the cloud Causeways to dial, `HOST:PORT` (UDP) each.
    #[serde(default)]
    pub connect: Vec<String>,
    /// On-prem: connections kept to each `connect` address.
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// On-prem: the clusters (names from `[clusters]`) the cloud may reach.
    #[serde(default)]
    pub expose: Vec<String>,
    /// On-prem: CA certificates (PEM) that sign the cloud side's certificate.
    #[serde(default)]
    pub ca: Option<String>,
    /// On-prem: the name the cloud side's certificate must carry, instead of
    /// the host of each `connect` address.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Cloud: the UDP address to accept on-prem peers on, `IP:PORT`.
    #[serde(default)]
    pub listen: Option<String>,
    /// Cloud: CA certificates (PEM) that sign the on-prem peers' certificates.
    #[serde(default)]
    pub client_ca: Option<String>,
    /// Cloud: which peer identities may expose which cluster names.
    #[serde(default)]
    pub peers: Vec<PeerRule>,
    /// This side's certificate chain (PEM, leaf first) and private key.
    pub cert: String,
    pub key: String,
    /// Keep-alive interval, in ms: below the UDP timeout of any NAT or
    /// firewall on the way (often 30 s).
    #[serde(default = "default_keep_alive")]
    pub keep_alive_ms: u64,
    /// A connection that hears nothing for this long is dead, in ms.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
    /// Flow-control window of one stream (one Kafka connection), in bytes.
    #[serde(default = "default_stream_window")]
    pub stream_window_bytes: u64,
    /// Flow-control window of a whole connection, in bytes: at least the
    /// bandwidth-delay product of the WAN (1 Gbit/s x 100 ms = 12.5 MB).
    #[serde(default = "default_connection_window")]
    pub connection_window_bytes: u64,
    /// UDP socket send and receive buffers asked for, in bytes.
    #[serde(default = "default_socket_buffer")]
    pub socket_buffer_bytes: usize,
    /// Longest wait between reconnection attempts, in ms.
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u64,
    /// Time a peer has to finish the QUIC handshake and say hello, in ms.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_ms: u64,
    /// On shutdown, how long streams in use may go on before the
    /// connections close, in ms.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout_ms: u64,
}

/// `[[tunnel.peers]]`: an on-prem identity and the clusters it may expose.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerRule {
    /// The subject of the peer's certificate, RFC 2253 (`CN=onprem-a,O=Acme`).
    pub identity: String,
    /// Cluster names (as in the cloud side's `[clusters]`) it may expose.
    pub clusters: Vec<String>,
}

fn default_connections() -> usize {
    2
}
fn default_keep_alive() -> u64 {
    5_000
}
fn default_idle_timeout() -> u64 {
    30_000
}
fn default_stream_window() -> u64 {
    16 * 1024 * 1024
}
fn default_connection_window() -> u64 {
    64 * 1024 * 1024
}
fn default_socket_buffer() -> usize {
    8 * 1024 * 1024
}
fn default_backoff_max() -> u64 {
    30_000
}
fn default_handshake_timeout() -> u64 {
    10_000
}
fn default_drain_timeout() -> u64 {
    10_000
}

impl TunnelConfig {
    pub fn is_cloud(&self) -> bool {
        self.listen.is_some()
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// Relative file paths are taken from `dir` (the config file's).
    pub fn resolve_paths(&mut self, dir: &std::path::Path) {
        for path in [Some(&mut self.cert), Some(&mut self.key), self.ca.as_mut(), self.client_ca.as_mut()]
            .into_iter()
            .flatten()
        {
            if std::path::Path::new(path.as_str()).is_relative() {
                *path = dir.join(&*path).display().to_string();
            }
        }
    }
}

/// Every problem with `[tunnel]` and the clusters that use it.
pub fn validate(config: &crate::config::Config) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut problem = |field: &str, message: String| out.push(Problem { field: field.to_string(), message });
    let tunnelled: Vec<&String> = config.clusters.iter().filter(|(_, c)| c.tunnel).map(|(n, _)| n).collect();
    let Some(t) = &config.tunnel else {
        for name in tunnelled {
            problem(
                &format!("clusters.{name}.tunnel"),
                "needs a [tunnel] section with listen, cert, key, client_ca and [[tunnel.peers]]".into(),
            );
        }
        return out;
    };
    let range = |v: u64, lo: u64, hi: u64| (lo..=hi).contains(&v);
    if !range(t.keep_alive_ms, 100, 60_000) {
        problem("tunnel.keep_alive_ms", format!("{} is outside 100..=60000", t.keep_alive_ms));
    }
    if !range(t.idle_timeout_ms, 1_000, 600_000) {
        problem("tunnel.idle_timeout_ms", format!("{} is outside 1000..=600000", t.idle_timeout_ms));
    } else if t.keep_alive_ms >= t.idle_timeout_ms {
        problem(
            "tunnel.keep_alive_ms",
            format!("{} is not below idle_timeout_ms ({}): idle connections would die", t.keep_alive_ms, t.idle_timeout_ms),
        );
    }
    const GIB: u64 = 1024 * 1024 * 1024;
    if !range(t.stream_window_bytes, 65_536, GIB) {
        problem("tunnel.stream_window_bytes", format!("{} is outside 65536..={GIB}", t.stream_window_bytes));
    }
    if !range(t.connection_window_bytes, t.stream_window_bytes.max(65_536), 4 * GIB) {
        problem(
            "tunnel.connection_window_bytes",
            format!("{} is outside stream_window_bytes..={}", t.connection_window_bytes, 4 * GIB),
        );
    }
    if !(65_536..=(256 << 20)).contains(&t.socket_buffer_bytes) {
        problem("tunnel.socket_buffer_bytes", format!("{} is outside 65536..=268435456", t.socket_buffer_bytes));
    }
    if !range(t.backoff_max_ms, 100, 600_000) {
        problem("tunnel.backoff_max_ms", format!("{} is outside 100..=600000", t.backoff_max_ms));
    }
    if !range(t.handshake_timeout_ms, 100, 600_000) {
        problem("tunnel.handshake_timeout_ms", format!("{} is outside 100..=600000", t.handshake_timeout_ms));
    }
    if t.drain_timeout_ms > 600_000 {
        problem("tunnel.drain_timeout_ms", format!("{} is over 600000", t.drain_timeout_ms));
    }
    match (&t.listen, t.connect.is_empty()) {
        (Some(_), false) => problem(
            "tunnel.connect",
            "a gateway is either the on-prem side (connect) or the cloud side (listen), not both; remove one".into(),
        ),
        (None, true) => problem(
            "tunnel",
            "say which side this is: connect = [\"CLOUD-HOST:PORT\"] on-prem, or listen = \"IP:PORT\" in the cloud".into(),
        ),
        (Some(listen), true) => {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                problem("tunnel.listen", format!("'{listen}' is not an IP socket address; use IP:PORT such as 0.0.0.0:4433"));
            }
            for (field, set) in [("ca", t.ca.is_some()), ("server_name", t.server_name.is_some()), ("expose", !t.expose.is_empty())] {
                if set {
                    problem(&format!("tunnel.{field}"), "is for the on-prem side (connect); remove it here".into());
                }
            }
            match &t.client_ca {
                None => problem(
                    "tunnel.client_ca",
                    "required on the cloud side: the CA (PEM) that signs the on-prem peers' certificates".into(),
                ),
                Some(_) => {
                    let tls = crate::tls::TlsConfig {
                        cert: t.cert.clone(),
                        key: t.key.clone(),
                        client_ca: t.client_ca.clone(),
                        client_auth: "required".into(),
                        handshake_timeout_ms: t.handshake_timeout_ms,
                    };
                    if let Err((field, message)) = crate::tls::server_config(&tls) {
                        problem(&format!("tunnel.{field}"), message);
                    }
                }
            }
            if t.peers.is_empty() {
                problem(
                    "tunnel.peers",
                    "no peer may connect; add [[tunnel.peers]] with identity = \"CN=...\" and clusters = [...]".into(),
                );
            }
            for (i, peer) in t.peers.iter().enumerate() {
                if peer.identity.trim().is_empty() {
                    problem(&format!("tunnel.peers[{i}].identity"), "is empty; give the certificate subject, such as CN=onprem-a".into());
                }
                if peer.identity.starts_with("User:") {
                    problem(&format!("tunnel.peers[{i}].identity"), "give the subject without the User: prefix".into());
                }
                if peer.clusters.is_empty() {
                    problem(&format!("tunnel.peers[{i}].clusters"), "is empty: this peer could expose nothing".into());
                }
                for name in &peer.clusters {
                    match config.clusters.get(name) {
                        None => problem(
                            &format!("tunnel.peers[{i}].clusters"),
                            format!("'{name}' is not a cluster here; add [clusters.{name}] with tunnel = true"),
                        ),
                        Some(c) if !c.tunnel => problem(
                            &format!("tunnel.peers[{i}].clusters"),
                            format!("'{name}' is reached directly; set tunnel = true in [clusters.{name}] to reach it through the tunnel"),
                        ),
                        Some(_) => {}
                    }
                }
            }
            for name in tunnelled {
                if !t.peers.iter().any(|p| p.clusters.contains(name)) {
                    problem(
                        &format!("clusters.{name}.tunnel"),
                        format!("no [[tunnel.peers]] may expose '{name}'; add it to a peer's clusters"),
                    );
                }
            }
        }
        (None, false) => {
            for (i, addr) in t.connect.iter().enumerate() {
                if crate::config::split_host_port(addr).is_none() {
                    problem(&format!("tunnel.connect[{i}]"), format!("'{addr}' is not HOST:PORT"));
                }
            }
            if !(1..=16).contains(&t.connections) {
                problem("tunnel.connections", format!("{} is outside 1..=16", t.connections));
            }
            for (field, set) in [("client_ca", t.client_ca.is_some()), ("peers", !t.peers.is_empty())] {
                if set {
                    problem(&format!("tunnel.{field}"), "is for the cloud side (listen); remove it here".into());
                }
            }
            if t.expose.is_empty() {
                problem("tunnel.expose", "exposes nothing; name the clusters the cloud may reach, such as [\"onprem\"]".into());
            }
            for name in &t.expose {
                match config.clusters.get(name) {
                    None => problem("tunnel.expose", format!("'{name}' is not a cluster here; add [clusters.{name}]")),
                    Some(c) if c.tunnel => {
                        problem("tunnel.expose", format!("'{name}' is itself reached through a tunnel; expose only local clusters"))
                    }
                    Some(_) => {}
                }
            }
            for name in tunnelled {
                problem(&format!("clusters.{name}.tunnel"), "only the cloud side (tunnel.listen) reaches clusters through the tunnel".into());
            }
            match &t.ca {
                None => problem("tunnel.ca", "required on the on-prem side: the CA (PEM) that signs the cloud side's certificate".into()),
                Some(_) => {
                    if let Err((field, message)) = endpoint::client_tls(t) {
                        problem(&format!("tunnel.{field}"), message);
                    }
                }
            }
        }
    }
    if let Err(e) = endpoint::check_transport(t) {
        problem("tunnel", e);
    }
    out
}

/// The running side of the bridge, for status and shutdown.
#[derive(Clone)]
pub enum Tunnel {
    Cloud(Arc<cloud::Registry>),
    OnPrem(Arc<onprem::Dialer>),
}

impl Tunnel {
    /// What `GET /tunnel` answers.
    pub fn status(&self) -> serde_json::Value {
        match self {
            Tunnel::Cloud(r) => serde_json::json!({"role": "cloud", "listen": r.listen_addr().to_string(), "connections": r.status()}),
            Tunnel::OnPrem(d) => serde_json::json!({"role": "on-prem", "connections": d.status()}),
        }
    }

    /// Stops taking new streams, lets those in use finish for up to the
    /// drain timeout, then closes every connection.
    pub async fn drain(&self) {
        match self {
            Tunnel::Cloud(r) => r.drain().await,
            Tunnel::OnPrem(d) => d.drain().await,
        }
    }
}

/// The state of one connection (or connection slot) for status output.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ConnStatus {
    pub peer: String,
    pub slot: String,
    pub remote: String,
    pub state: &'static str,
    pub clusters: Vec<String>,
    pub connected_for_ms: Option<u64>,
    pub open_streams: u64,
    pub reconnects: u64,
    pub last_error: Option<String>,
    pub rtt_ms: Option<f64>,
    pub cwnd_bytes: Option<u64>,
    pub lost_packets: Option<u64>,
    pub sent_bytes: Option<u64>,
    pub received_bytes: Option<u64>,
}

impl ConnStatus {
    fn with_stats(mut self, conn: &quinn::Connection) -> Self {
        let stats = conn.stats();
        self.rtt_ms = Some(stats.path.rtt.as_secs_f64() * 1000.0);
        self.cwnd_bytes = Some(stats.path.cwnd);
        self.lost_packets = Some(stats.path.lost_packets);
        self.sent_bytes = Some(stats.udp_tx.bytes);
        self.received_bytes = Some(stats.udp_rx.bytes);
        self
    }
}

/// Copies a connection's QUIC statistics into the metrics every few seconds
/// until it closes.
pub(crate) fn watch_stats(conn: quinn::Connection, peer: String, slot: String) {
    tokio::spawn(async move {
        let mut last = quinn::ConnectionStats::default();
        loop {
            let closed = tokio::select! {
                _ = conn.closed() => true,
                _ = tokio::time::sleep(Duration::from_secs(2)) => false,
            };
            let stats = conn.stats();
            crate::telemetry::tunnel_stats(&peer, &slot, &stats, &last);
            last = stats;
            if closed {
                crate::telemetry::tunnel_closed(&peer, &slot);
                return;
            }
        }
    });
}

/// Starts the side of the bridge the config asks for. The cloud side's
/// registry must exist before the backends (its clusters dial through it),
/// so it is made by [`listen`] first and served here.
pub fn start_onprem(config: &TunnelConfig, backends: crate::backend::Backends) -> anyhow::Result<Arc<onprem::Dialer>> {
    let (endpoint, client) = endpoint::client(config)?;
    let dialer = onprem::Dialer::new(config.clone(), endpoint, client, backends);
    dialer.clone().spawn();
    Ok(dialer)
}

/// Binds the cloud side's UDP endpoint and returns its registry; serving
/// starts with [`cloud::Registry::serve`].
pub fn listen(config: &TunnelConfig) -> anyhow::Result<Arc<cloud::Registry>> {
    let Some(listen) = &config.listen else { anyhow::bail!("tunnel.listen is not set") };
    let bind: std::net::SocketAddr = listen
        .parse()
        .map_err(|_| anyhow::anyhow!("tunnel.listen: '{listen}' is not IP:PORT"))?;
    let endpoint = endpoint::server(config, bind)?;
    Ok(cloud::Registry::new(config.clone(), endpoint))
}
