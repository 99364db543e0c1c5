//! The backend side: clusters, their brokers, and the connections that reach them.
//!
//! [`Backends`] is the set of clusters behind the gateway; a [`BrokerRef`] names one
//! broker of one of them. A client session holds its own connections
//! ([`SessionConns`]), one per backend broker it talks to, so a slow request of one
//! client never delays another's and Kafka's per-connection ordering (which
//! idempotent producers rely on) carries through the gateway unchanged.

pub mod cluster;
pub mod conn;
pub mod secure;
pub mod transport;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

pub use cluster::Cluster;
pub use conn::{BrokerConn, Reply};

use crate::codec::CodecError;
use crate::config::Config;

/// What went wrong talking to a backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connection to {addr} lost")]
    Disconnected { addr: String },
    #[error("{addr} could not be reached a moment ago; not dialling again yet")]
    RecentlyUnreachable { addr: String },
    #[error("{addr} did not answer in time")]
    Timeout { addr: String },
    #[error("broker {0} is not known")]
    UnknownBroker(i32),
    #[error("no broker reachable")]
    NoBroker,
    #[error("no coordinator for '{key}' (error code {code})")]
    Coordinator { key: String, code: i16 },
    #[error("backend protocol error: {0}")]
    Protocol(String),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("internal: {0}")]
    Internal(&'static str),
}

/// One broker of one backend cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BrokerRef {
    pub cluster: usize,
    pub node: i32,
}

/// Every backend cluster.
#[derive(Debug, Clone)]
pub struct Backends {
    pub clusters: Vec<Arc<Cluster>>,
}

impl Backends {
    /// The clusters of the config; those with `tunnel = true` are reached
    /// through `tunnel` (the cloud side of the bridge).
    pub fn from_config(config: &Config, tunnel: Option<&Arc<crate::tunnel::cloud::Registry>>) -> anyhow::Result<Self> {
        let mut clusters = Vec::new();
        for (name, c) in &config.clusters {
            let timeout = Duration::from_millis(c.connect_timeout_ms);
            let tcp: Arc<dyn transport::Connector> = match (c.tunnel, tunnel) {
                (false, _) => Arc::new(transport::TcpConnector { timeout }),
                (true, Some(registry)) => registry.connector(name.clone(), timeout),
                (true, None) => anyhow::bail!("clusters.{name}.tunnel: needs [tunnel] listen = \"IP:PORT\""),
            };
            let secure = secure::SecureConnector::new(tcp.clone(), c.tls.as_ref(), c.sasl.as_ref())
                .map_err(|e| anyhow::anyhow!("clusters.{name}.{e}"))?;
            let identities = match &secure {
                Some(s) => s.per_principal(c.sasl.as_ref()).map_err(|e| anyhow::anyhow!("clusters.{name}.{e}"))?,
                None => Vec::new(),
            };
            let connector = match secure {
                Some(secure) => Arc::new(secure) as Arc<dyn transport::Connector>,
                None => tcp,
            };
            let mut cluster = Cluster::new(name.clone(), c.clone(), connector);
            cluster.identities = identities;
            clusters.push(Arc::new(cluster));
        }
        Ok(Self { clusters })
    }

    pub fn cluster(&self, index: usize) -> Option<&Arc<Cluster>> {
        self.clusters.get(index)
    }

    /// Keeps trying to bootstrap each cluster until it answers, then probes it
    /// every `health_interval_ms` so `/readyz` and the metrics follow its health.
    pub fn spawn_bootstrap(&self) {
        for cluster in &self.clusters {
            let cluster = cluster.clone();
            tokio::spawn(async move {
                let mut delay = Duration::from_millis(100);
                loop {
                    match cluster.bootstrap().await {
                        Ok(()) => {
                            tracing::info!(cluster = %cluster.name, brokers = ?cluster.broker_ids(), "backend cluster ready");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(cluster = %cluster.name, error = %e, retry_in = ?delay, "backend cluster not reachable");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(5));
                        }
                    }
                }
                let interval = cluster.health_interval();
                loop {
                    tokio::time::sleep(interval).await;
                    let _ = cluster.probe(interval.max(Duration::from_secs(1))).await;
                }
            });
        }
    }
}

/// Which of a session's connections to a broker a request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Everything in client order.
    General,
    /// Fetches that may be left waiting on a broker while the client moves on;
    /// kept apart so they never hold up the general lane.
    Fetch,
}

/// The backend connections of one client session.
pub struct SessionConns {
    backends: Backends,
    /// Each with the identity it logged in as (see [`Cluster::identity_of`]).
    conns: HashMap<(BrokerRef, Lane), (usize, BrokerConn)>,
    /// Connections written to since the last flush.
    dirty: Vec<(BrokerRef, Lane)>,
    /// The client principal, for clusters where principals log in as
    /// themselves.
    principal: Option<std::sync::Arc<str>>,
}

impl SessionConns {
    pub fn new(backends: Backends) -> Self {
        Self {
            backends,
            conns: HashMap::new(),
            dirty: Vec::new(),
            principal: None,
        }
    }

    /// The client principal the following requests are for. Connections
    /// made for another principal are flushed and given back.
    pub async fn use_principal(&mut self, principal: &std::sync::Arc<str>) {
        if self.principal.as_ref().is_some_and(|p| std::sync::Arc::ptr_eq(p, principal) || **p == **principal) {
            return;
        }
        self.principal = Some(principal.clone());
        if self.conns.is_empty() {
            return;
        }
        self.flush().await;
        self.give_back();
    }

    async fn get(&mut self, broker: BrokerRef, lane: Lane) -> Result<&BrokerConn, BackendError> {
        let usable = self.conns.get(&(broker, lane)).is_some_and(|(_, c)| c.is_usable());
        if !usable {
            // A retired connection goes back (its answers still arrive) and
            // a fresh one takes its place.
            if let Some((identity, old)) = self.conns.remove(&(broker, lane)) {
                // What this session wrote to it must still leave.
                let _ = old.flush().await;
                if let Some(cluster) = self.backends.cluster(broker.cluster) {
                    cluster.checkin_as(broker.node, identity, old);
                }
            }
            let cluster = self
                .backends
                .cluster(broker.cluster)
                .ok_or(BackendError::Internal("cluster index out of range"))?;
            let identity = cluster.identity_of(self.principal.as_deref());
            let conn = cluster.checkout_as(broker.node, identity).await?;
            self.conns.insert((broker, lane), (identity, conn));
        }
        self.conns
            .get(&(broker, lane))
            .map(|(_, c)| c)
            .ok_or(BackendError::Internal("connection vanished"))
    }

    fn give_back(&mut self) {
        for ((broker, _), (identity, conn)) in self.conns.drain() {
            if let Some(cluster) = self.backends.cluster(broker.cluster) {
                cluster.checkin_as(broker.node, identity, conn);
            }
        }
        self.dirty.clear();
    }

    /// Writes `frame` to `broker`; the returned reply resolves to its response.
    /// The bytes leave at the next [`SessionConns::flush`].
    pub async fn send(&mut self, broker: BrokerRef, frame: Bytes) -> Result<Reply, BackendError> {
        self.send_on(broker, Lane::General, frame).await
    }

    /// Like [`SessionConns::send`], on the given lane.
    pub async fn send_on(&mut self, broker: BrokerRef, lane: Lane, frame: Bytes) -> Result<Reply, BackendError> {
        let conn = self.get(broker, lane).await?.clone();
        let reply = conn.send(frame).await?;
        self.mark_dirty((broker, lane));
        Ok(reply)
    }

    /// Like [`SessionConns::send_on`], for a request that is safe to send twice
    /// (a read by offset; writes are not resent: a resent batch could land
    /// behind a later batch of the same producer sent meanwhile on the
    /// session's new connection). On a cluster that
    /// [resends lost requests](Cluster::resends_lost_requests), a request whose
    /// connection is lost before the answer goes out once more on a new
    /// connection, and the caller sees only that second answer (or its failure).
    pub async fn send_safe(&mut self, broker: BrokerRef, lane: Lane, frame: Bytes) -> Result<Reply, BackendError> {
        let cluster = match self.backends.cluster(broker.cluster) {
            Some(c) if c.resends_lost_requests() => c.clone(),
            _ => return self.send_on(broker, lane, frame).await,
        };
        let sent = match self.send_on(broker, lane, frame.clone()).await {
            // The connection died under the write: a new one takes the request.
            Err(BackendError::Disconnected { .. }) => self.send_on(broker, lane, frame.clone()).await?,
            other => other?,
        };
        let identity = self.conns.get(&(broker, lane)).map_or(0, |(identity, _)| *identity);
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let lost = match sent.await {
                Ok(Err(BackendError::Disconnected { addr })) => addr,
                Err(_) => String::new(),
                Ok(answer) => {
                    let _ = tx.send(answer);
                    return;
                }
            };
            // Nobody waits for the answer any more (the client left): nothing to send.
            if tx.is_closed() {
                return;
            }
            tracing::info!(cluster = %cluster.name, broker = %lost, "connection lost with a request in flight; sending it again on a new one");
            let again = cluster.resend(broker.node, identity, frame).await;
            crate::telemetry::backend_resent(&cluster.name, if again.is_ok() { "answered" } else { "failed" });
            let _ = tx.send(again);
        });
        Ok(rx)
    }

    /// The connection this session holds to `broker` on `lane`, once a request
    /// went there: for a request sent later from an answer's own future.
    pub fn conn(&self, broker: BrokerRef, lane: Lane) -> Option<BrokerConn> {
        self.conns.get(&(broker, lane)).map(|(_, c)| c.clone())
    }

    /// Writes a request that gets no response.
    pub async fn send_oneway(&mut self, broker: BrokerRef, frame: Bytes) -> Result<(), BackendError> {
        let conn = self.get(broker, Lane::General).await?.clone();
        conn.send_oneway(frame).await?;
        self.mark_dirty((broker, Lane::General));
        Ok(())
    }

    fn mark_dirty(&mut self, key: (BrokerRef, Lane)) {
        if !self.dirty.contains(&key) {
            self.dirty.push(key);
        }
    }

    /// Sends what was written to every connection since the last flush. A failed
    /// connection fails its waiting requests through its reader; nothing to do here.
    pub async fn flush(&mut self) {
        for key in std::mem::take(&mut self.dirty) {
            if let Some((_, conn)) = self.conns.get(&key) {
                let _ = conn.flush().await;
            }
        }
    }
}

impl Drop for SessionConns {
    fn drop(&mut self) {
        self.give_back();
    }
}
