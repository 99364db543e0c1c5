//! Causeway: a Kafka-protocol gateway.
//!
//! Clients connect to Causeway as if it were a Kafka broker. Causeway answers as one
//! broker of its own, routes each request to the backend broker that owns the data,
//! and rewrites every address in the answers so clients never see a backend.
//!
//! Rooms, in data-path order: [`codec`] (frames and headers, no I/O) ->
//! [`proxy`] (listener, sessions, routing, rewriting) -> [`backend`] (clusters,
//! metadata, pooled broker connections, transports). Beside them: [`config`],
//! [`admin`] (HTTP metrics and health) and [`telemetry`] (metric names).

pub mod admin;
pub mod authz;
pub mod backend;
pub mod cli;
pub mod codec;
pub mod config;
pub mod link;
mod io;
pub mod plugins;
pub mod proxy;
pub mod routing;
pub mod sasl;
pub mod telemetry;
pub mod tls;
pub mod tunnel;

use std::sync::Arc;

use tokio::net::TcpListener;

/// A running gateway: where it listens, for tests and the binary.
pub struct Running {
    pub kafka_addr: std::net::SocketAddr,
    pub admin_addr: Option<std::net::SocketAddr>,
    /// Route changes: what `/routes`, `/reload` and SIGHUP use.
    pub routes: Arc<routing::RouteControl>,
    /// This gateway's side of the hybrid bridge, if it has one.
    pub tunnel: Option<tunnel::Tunnel>,
}

/// Binds the listeners, starts the backend bootstrap and serves until the process ends.
/// `config_path` is the file `config` came from, re-read on reload.
pub async fn start(
    config: config::Config,
    config_path: Option<std::path::PathBuf>,
) -> anyhow::Result<(Running, tokio::task::JoinHandle<()>)> {
    let metrics = telemetry::install()?;
    // The cloud side of the bridge: its clusters dial through the tunnel, so
    // it exists before the backends.
    let registry = match &config.tunnel {
        Some(t) if t.is_cloud() => Some(tunnel::listen(t)?),
        _ => None,
    };
    let backends = backend::Backends::from_config(&config, registry.as_ref())?;
    backends.spawn_bootstrap();
    let tunnel = match (&config.tunnel, registry) {
        (_, Some(registry)) => {
            registry.serve();
            Some(tunnel::Tunnel::Cloud(registry))
        }
        (Some(t), None) => Some(tunnel::Tunnel::OnPrem(tunnel::start_onprem(t, backends.clone())?)),
        (None, None) => None,
    };

    let listener = TcpListener::bind(&config.gateway.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.gateway.listen))?;
    let kafka_addr = listener.local_addr()?;
    let router = Arc::new(routing::RouterCell::new(routing::Router::new(
        &config.routes,
        &config.cluster_names(),
    )));
    let routes = Arc::new(routing::RouteControl::new(
        router.clone(),
        config.cluster_names(),
        config_path,
    ));
    let mut gateway = proxy::Gateway::new(&config, backends.clone(), router.clone());
    let links = link::Links::start(backends.clone(), config.cluster_names(), routes.clone());
    gateway.mirrors = links.views.clone();
    let plugins = plugins::load(&config.plugins, &config.cluster_names())?;
    gateway.filters = plugins.filters.clone();
    gateway.router_plugin = plugins.router.clone();
    if let Some(tls) = &config.gateway.tls {
        let listener = tls::Listener::new(tls)?;
        listener.watch(std::time::Duration::from_secs(2));
        gateway.tls = Some(listener);
    }
    if let Some(sasl) = &config.gateway.sasl {
        let auth = sasl::load(sasl)?;
        if config.gateway.tls.is_none() && auth.mechanisms().contains(&sasl::Mechanism::Plain) {
            tracing::warn!("SASL PLAIN without [gateway.tls]: passwords cross the network in the clear");
        }
        tracing::info!(mechanisms = ?auth.names(), "clients must authenticate");
        gateway.sasl = Some(auth);
    }
    if let Some(authz) = authz::Authorizer::from_config(config.authorization.as_ref(), &config.acls, plugins.acl.clone()) {
        tracing::info!(rules = config.acls.len(), mapper = plugins.acl.is_some(), "clients are authorized");
        gateway.authz = Some(Arc::new(authz));
    }
    gateway.set_bound_port(kafka_addr, config.gateway.advertised.is_some());

    let admin_addr = match &config.admin.listen {
        Some(addr) => {
            let admin_listener = TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for admin: {e}"))?;
            let bound = admin_listener.local_addr()?;
            let admin = Arc::new(admin::Admin {
                metrics: metrics.clone(),
                backends: backends.clone(),
                routes: routes.clone(),
                plugins: plugins.clone(),
                links: links.clone(),
                tunnel: tunnel.clone(),
                token: config.admin.token().map_err(|p| anyhow::anyhow!("{p}"))?,
                open_metrics: config.admin.open_metrics,
            });
            if admin.token.is_none() && config.admin.tls.as_ref().is_none_or(|t| t.client_ca.is_none()) && !bound.ip().is_loopback() {
                tracing::warn!(%bound, "the admin endpoint takes route and plugin changes from anyone who reaches it; set admin.token_env");
            }
            let tls = match &config.admin.tls {
                Some(tls) => {
                    let listener = tls::Listener::new(tls)?;
                    listener.watch(std::time::Duration::from_secs(2));
                    Some(listener)
                }
                None => None,
            };
            tokio::spawn(admin::serve(admin, admin_listener, tls));
            Some(bound)
        }
        None => None,
    };
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            metrics.run_upkeep();
        }
    });
    tracing::info!(listen = %kafka_addr, advertised = %format!("{}:{}", gateway.host, gateway.port), admin = ?admin_addr, "causeway serving");
    let gateway = Arc::new(gateway);
    let handle = tokio::spawn(async move {
        if let Err(e) = proxy::serve(gateway, listener).await {
            tracing::error!(error = %e, "listener failed");
        }
    });
    Ok((
        Running {
            kafka_addr,
            admin_addr,
            routes,
            tunnel,
        },
        handle,
    ))
}
