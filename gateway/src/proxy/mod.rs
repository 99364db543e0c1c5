//! The client side: the listener, one session per client connection, and the
//! handlers that route each request and rewrite its response.
//!
//! Data path: [`listener`] accepts -> [`session`] reads frames and keeps responses in
//! request order -> [`handlers`] picks the backend broker(s) per API -> the backend
//! connections of the session -> [`rewrite`] and [`partitioned`] turn backend answers
//! into answers from Causeway's own broker.

pub mod budget;
pub mod fetch;
pub mod cluster_admin;
pub mod groups;
pub mod handlers;
pub mod limits;
pub mod login;
pub mod metadata;
pub mod partitioned;
pub mod producers;
pub mod rewrite;
pub mod routes;
pub mod session;
pub mod topics;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::backend::{BackendError, Backends, Cluster};
use crate::codec::CodecError;
use crate::config::Config;
use crate::routing::{Router, RouterCell};

/// The broker Causeway presents to clients, and what sits behind it.
#[derive(Debug)]
pub struct Gateway {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    pub cluster_id: Option<String>,
    pub max_frame: usize,
    pub max_in_flight: usize,
    /// Whether a consumer's next fetch is asked for ahead (see `fetch.rs`).
    pub fetch_read_ahead: bool,
    /// Bytes of fetch answers that may be held asked for ahead, in all.
    pub read_ahead_budget: Arc<budget::Budget>,
    /// Bytes that may be set aside, in all, for requests still arriving (see
    /// `session.rs`).
    pub request_buffer_budget: Arc<budget::Budget>,
    /// Connections held, in all and per address.
    pub limits: Arc<limits::Limits>,
    /// How long a connection may sit idle.
    pub idle_timeout: std::time::Duration,
    pub backends: Backends,
    /// Where topics, groups and transactional ids live; swapped by route changes.
    pub router: Arc<RouterCell>,
    /// Idempotent producer ids and their stand-ins on other clusters.
    pub producers: producers::ProducerIds,
    /// Record filters, in config order.
    pub filters: Arc<crate::plugins::FilterChain>,
    /// The router plugin, asked before the routes.
    pub router_plugin: Option<Arc<crate::plugins::RouterPlugin>>,
    /// TLS on the client listener; plain TCP when `None`.
    pub tls: Option<Arc<crate::tls::Listener>>,
    /// Who may log in; clients need not when `None`.
    pub sasl: Option<Arc<crate::sasl::Authenticator>>,
    /// ACL rules; every client may do everything when `None`.
    pub authz: Option<Arc<crate::authz::Authorizer>>,
    /// Mirror topics: offsets moved, filler shown as markers, writes refused.
    pub mirrors: Arc<crate::link::Views>,
}

impl Gateway {
    pub fn new(config: &Config, backends: Backends, router: Arc<RouterCell>) -> Self {
        let (host, port) = config.advertised();
        // Several clusters have several ids; clients get one of Causeway's own.
        let cluster_id = config.gateway.cluster_id.clone().or_else(|| {
            (config.clusters.len() > 1).then(|| format!("causeway-{}", config.cluster_names().join("-")))
        });
        Self {
            node_id: config.gateway.node_id,
            host,
            port,
            cluster_id,
            max_frame: config.gateway.max_frame_bytes,
            max_in_flight: config.gateway.max_in_flight,
            fetch_read_ahead: config.gateway.fetch_read_ahead,
            read_ahead_budget: budget::Budget::new(
                usize::try_from(config.gateway.fetch_read_ahead_max_bytes).unwrap_or(usize::MAX),
                crate::telemetry::fetch_read_ahead_held,
            ),
            request_buffer_budget: budget::Budget::new(
                usize::try_from(config.gateway.request_buffer_max_bytes).unwrap_or(usize::MAX),
                crate::telemetry::request_buffers_reserved,
            ),
            limits: limits::Limits::new(config.gateway.max_connections, config.gateway.max_connections_per_ip),
            idle_timeout: std::time::Duration::from_millis(config.gateway.idle_timeout_ms),
            backends,
            router,
            producers: producers::ProducerIds::default(),
            filters: Arc::new(crate::plugins::FilterChain::default()),
            router_plugin: None,
            tls: None,
            sasl: None,
            authz: None,
            mirrors: Default::default(),
        }
    }

    /// The routes in force now.
    pub fn router(&self) -> Arc<Router> {
        self.router.get()
    }

    /// The routes in force now, as this client sees them.
    pub fn routes_for(&self, who: &crate::authz::Who, client_id: &str) -> routes::ClientRoutes {
        routes::ClientRoutes::new(self.router.get(), self.router_plugin.clone(), self.authz.clone(), who, client_id)
    }

    /// With an ACL mapper: the client as the plugin maps it (roles from the
    /// plugin and from the rules), and until when that holds; the plugin's
    /// refusal otherwise. `None` without a mapper.
    pub fn mapped_who(
        &self,
        identity: &crate::plugins::acl::Identity,
        client_id: &str,
    ) -> Option<Result<(crate::authz::Who, std::time::Instant), String>> {
        let authz = self.authz.as_ref()?;
        let mapper = authz.mapper()?;
        Some(mapper.map(identity, client_id).map(|m| {
            let mut who = crate::authz::Who::new(&m.principal, identity.peer);
            let mut roles: Vec<Arc<str>> = m.roles.iter().map(|r| Arc::from(r.as_str())).collect();
            roles.extend(authz.roles_of(&m.principal));
            who.roles = Arc::from(roles);
            (who, std::time::Instant::now() + std::time::Duration::from_millis(u64::from(m.ttl_ms)))
        }))
    }

    /// Whether an ACL mapper names the principals.
    pub fn maps_principals(&self) -> bool {
        self.authz.as_ref().is_some_and(|a| a.mapper().is_some())
    }

    /// The identity of a client connection: its principal, with the roles
    /// the rules give it, and its address.
    pub fn who(&self, principal: &str, host: std::net::IpAddr) -> crate::authz::Who {
        let mut who = crate::authz::Who::new(principal, host);
        if let Some(authz) = &self.authz {
            who.roles = Arc::from(authz.roles_of(principal));
        }
        who
    }

    /// Cluster `index`, which the router only ever names within range.
    pub fn cluster(&self, index: usize) -> Result<&Arc<Cluster>, ProxyError> {
        self.backends
            .cluster(index)
            .ok_or(ProxyError::Backend(BackendError::Internal("route names an unknown cluster")))
    }

    /// A gateway node with no backend behind it: for tests and fuzzing of the
    /// rewrite functions, which only need the node's identity.
    pub fn for_tests() -> Self {
        Self {
            node_id: 7,
            host: "gw.example".into(),
            port: 9092,
            cluster_id: None,
            max_frame: 1 << 20,
            max_in_flight: 8,
            fetch_read_ahead: true,
            read_ahead_budget: budget::Budget::new(1 << 30, |_| {}),
            request_buffer_budget: budget::Budget::new(1 << 30, |_| {}),
            limits: limits::Limits::new(16, None),
            idle_timeout: std::time::Duration::from_secs(600),
            backends: Backends { clusters: Vec::new() },
            router: Arc::new(RouterCell::new(Router::new(&[], &["test".into()]))),
            producers: producers::ProducerIds::default(),
            filters: Arc::new(crate::plugins::FilterChain::default()),
            router_plugin: None,
            tls: None,
            sasl: None,
            authz: None,
            mirrors: Default::default(),
        }
    }

    /// With `listen` port 0, the advertised port is the one actually bound.
    pub fn set_bound_port(&mut self, bound: SocketAddr, advertised_given: bool) {
        if !advertised_given && self.port == 0 {
            self.port = i32::from(bound.port());
        }
    }
}

/// Why a client connection was closed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("{api} v{version} is not offered by Causeway")]
    Unsupported { api: &'static str, version: i16 },
    #[error("client connection failed: {0}")]
    ClientIo(#[from] std::io::Error),
    #[error("{0}")]
    Unauthenticated(String),
}

/// Accepts client connections until the listener fails.
pub async fn serve(gateway: Arc<Gateway>, listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let admitted = match gateway.limits.admit(peer.ip()) {
            Ok(a) => a,
            Err(limit) => {
                crate::telemetry::connection_refused(limit);
                tracing::debug!(%peer, limit, "connection over the limit closed");
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        match gateway.tls.clone() {
            None => {
                tokio::spawn(async move {
                    let _admitted = admitted;
                    let (rd, wr) = stream.into_split();
                    session::run(gateway, rd, wr, peer, Arc::from(routes::ANONYMOUS)).await;
                });
            }
            Some(tls) => {
                tokio::spawn(async move {
                    let _admitted = admitted;
                    let handshake = tls.acceptor().accept(stream);
                    let stream = match tokio::time::timeout(tls.handshake_timeout(), handshake).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            crate::telemetry::tls_handshake_failed("refused");
                            tracing::info!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            crate::telemetry::tls_handshake_failed("timeout");
                            tracing::info!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let principal = match stream.get_ref().1.peer_certificates().and_then(|certs| certs.first()) {
                        None => routes::ANONYMOUS.to_string(),
                        Some(cert) => match crate::tls::principal_of(cert) {
                            Some(principal) => principal,
                            None => {
                                // A certificate the gateway trusts but cannot
                                // name is refused, never taken as anonymous.
                                crate::telemetry::tls_handshake_failed("no_principal");
                                tracing::warn!(%peer, "client certificate has no usable subject; connection closed");
                                return;
                            }
                        },
                    };
                    tracing::debug!(%peer, %principal, "TLS client connected");
                    let (rd, wr) = tokio::io::split(stream);
                    session::run(gateway, rd, wr, peer, Arc::from(principal)).await;
                });
            }
        }
    }
}
