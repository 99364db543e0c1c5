//! Typed configuration, read from TOML and validated once at start-up.
//!
//! Unknown keys are errors (a typo must never be silently ignored), and
//! [`Config::validate`] names the field and the fix for every problem it finds, so
//! `causeway check` can print them all at once.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use crate::routing::{self, RouteConfig};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub gateway: GatewayConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    /// Backend clusters by name.
    pub clusters: BTreeMap<String, ClusterConfig>,
    /// Where topics, consumer groups and transactional ids live; first match wins.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// WebAssembly plugins, in the order they run.
    #[serde(default)]
    pub plugins: Vec<crate::plugins::PluginConfig>,
    /// Authorization at the gateway: on when this or any `[[acls]]` is present.
    #[serde(default)]
    pub authorization: Option<crate::authz::AuthorizationConfig>,
    /// ACL rules, in Kafka's terms; deny wins.
    #[serde(default)]
    pub acls: Vec<crate::authz::AclConfig>,
    /// The hybrid bridge: this gateway's side of a QUIC tunnel.
    #[serde(default)]
    pub tunnel: Option<crate::tunnel::TunnelConfig>,
}

/// The Kafka listener clients connect to, and the broker Causeway presents.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address to listen on, `HOST:PORT`.
    pub listen: String,
    /// Address clients are told to connect to; defaults to `listen`.
    #[serde(default)]
    pub advertised: Option<String>,
    /// The node id Causeway presents as its broker.
    #[serde(default)]
    pub node_id: i32,
    /// Cluster id shown to clients; defaults to the backend's.
    #[serde(default)]
    pub cluster_id: Option<String>,
    /// Largest request frame accepted from a client, in bytes.
    #[serde(default = "default_max_frame")]
    pub max_frame_bytes: usize,
    /// Requests one client connection may have in flight before Causeway stops reading.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Ask a broker for a consumer's next fetch while its current answer is
    /// still on its way to the client (see the README, "Fetch read-ahead").
    #[serde(default = "default_true")]
    pub fetch_read_ahead: bool,
    /// Bytes of fetch answers held asked for ahead, across all connections.
    #[serde(default = "default_read_ahead_max_bytes")]
    pub fetch_read_ahead_max_bytes: u64,
    /// Bytes set aside, across all connections, so that each request still
    /// arriving is read into one buffer of its declared size; past this,
    /// buffers grow with the bytes received.
    #[serde(default = "default_request_buffer_max_bytes")]
    pub request_buffer_max_bytes: u64,
    /// Client connections held at once; more are closed when accepted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Client connections held at once from one address; no limit when absent.
    #[serde(default)]
    pub max_connections_per_ip: Option<usize>,
    /// A connection with nothing in flight that sends nothing for this long is
    /// closed, in ms (Kafka's connections.max.idle.ms).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
    /// TLS for client connections; plain TCP when absent.
    #[serde(default)]
    pub tls: Option<crate::tls::TlsConfig>,
    /// SASL authentication of clients; none when absent.
    #[serde(default)]
    pub sasl: Option<crate::sasl::SaslConfig>,
    /// Threads serving connections; when absent, one per CPU the process may
    /// run on. Fewer suit a host whose CPUs other busy processes share.
    #[serde(default)]
    pub worker_threads: Option<usize>,
}

/// The admin HTTP endpoint: metrics, health, routes and plugins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address for `/metrics`, `/healthz` and `/readyz`; off when absent.
    #[serde(default)]
    pub listen: Option<String>,
    /// An environment variable holding the bearer token the route and plugin
    /// endpoints require.
    #[serde(default)]
    pub token_env: Option<String>,
    /// A file holding that token (its first line), instead.
    #[serde(default)]
    pub token_file: Option<String>,
    /// Whether `/metrics`, `/healthz` and `/readyz` answer without the token.
    #[serde(default = "default_true")]
    pub open_metrics: bool,
    /// HTTPS for the admin endpoint (and, with `client_ca`, client
    /// certificates), as for the Kafka listener.
    #[serde(default)]
    pub tls: Option<crate::tls::TlsConfig>,
}

fn default_true() -> bool {
    true
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { listen: None, token_env: None, token_file: None, open_metrics: true, tls: None }
    }
}

impl AdminConfig {
    /// The bearer token, if one is configured: `Err` says why it cannot be read.
    pub fn token(&self) -> Result<Option<String>, Problem> {
        let problem = |field: &str, message: String| Problem { field: format!("admin.{field}"), message };
        match (&self.token_env, &self.token_file) {
            (Some(_), Some(_)) => Err(problem("token_env", "give token_env or token_file, not both".into())),
            (Some(var), None) => match std::env::var(var) {
                Ok(t) if t.trim().len() >= 16 => Ok(Some(t.trim().to_string())),
                Ok(_) => Err(problem("token_env", format!("${var} holds fewer than 16 characters; use a long random token"))),
                Err(_) => Err(problem("token_env", format!("${var} is not set"))),
            },
            (None, Some(path)) => match std::fs::read_to_string(path) {
                Ok(text) => match text.lines().next().map(str::trim) {
                    Some(t) if t.len() >= 16 => Ok(Some(t.to_string())),
                    _ => Err(problem("token_file", format!("'{path}' holds no token of 16 characters or more"))),
                },
                Err(e) => Err(problem("token_file", format!("cannot read '{path}': {e}"))),
            },
            (None, None) => Ok(None),
        }
    }
}

/// One backend Kafka cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Bootstrap brokers, `HOST:PORT` each.
    pub bootstrap: Vec<String>,
    /// Longest time Causeway trusts its copy of the backend's metadata, in ms.
    #[serde(default = "default_metadata_max_age")]
    pub metadata_max_age_ms: u64,
    /// Time allowed for a TCP connection to a backend broker, in ms.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// Largest response frame accepted from a backend broker, in bytes.
    #[serde(default = "default_backend_max_frame")]
    pub max_frame_bytes: usize,
    /// How often Causeway checks the cluster answers, in ms.
    #[serde(default = "default_health_interval")]
    pub health_interval_ms: u64,
    /// TLS towards the cluster's brokers.
    #[serde(default)]
    pub tls: Option<crate::backend::secure::BackendTls>,
    /// Causeway's SASL login to the cluster.
    #[serde(default)]
    pub sasl: Option<crate::backend::secure::BackendSasl>,
    /// Reach this cluster through the tunnel (the cloud side of the bridge):
    /// `bootstrap` then names brokers as the on-prem Causeway reaches them.
    #[serde(default)]
    pub tunnel: bool,
}

fn default_max_frame() -> usize {
    100 * 1024 * 1024
}
fn default_max_connections() -> usize {
    10_000
}
fn default_idle_timeout() -> u64 {
    600_000
}
fn default_read_ahead_max_bytes() -> u64 {
    1 << 30
}
fn default_request_buffer_max_bytes() -> u64 {
    256 << 20
}
/// Most threads `gateway.worker_threads` may ask for.
const MAX_WORKER_THREADS: usize = 1024;

fn default_max_in_flight() -> usize {
    256
}
fn default_metadata_max_age() -> u64 {
    30_000
}
fn default_connect_timeout() -> u64 {
    5_000
}
fn default_health_interval() -> u64 {
    2_000
}
fn default_backend_max_frame() -> usize {
    256 * 1024 * 1024
}

/// One thing wrong with a configuration: where, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {} problem(s):\n{}", .problems.len(), .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { path: String, problems: Vec<Problem> },
}

impl Config {
    /// Reads, parses and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse_in(&text, &shown, path.parent())
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        Self::parse_in(text, origin, None)
    }

    /// Like [`Config::parse`]; relative plugin paths are taken from `dir`.
    fn parse_in(text: &str, origin: &str, dir: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        if let Some(dir) = dir {
            if let Some(tls) = &mut config.gateway.tls {
                crate::tls::resolve_paths(tls, dir);
            }
            if let Some(sasl) = &mut config.gateway.sasl {
                crate::sasl::resolve_paths(sasl, dir);
            }
            if let Some(tls) = &mut config.admin.tls {
                crate::tls::resolve_paths(tls, dir);
            }
            if let Some(tunnel) = &mut config.tunnel {
                tunnel.resolve_paths(dir);
            }
            if let Some(path) = &mut config.admin.token_file {
                if Path::new(path.as_str()).is_relative() {
                    *path = dir.join(&*path).display().to_string();
                }
            }
            for cluster in config.clusters.values_mut() {
                if let Some(tls) = &mut cluster.tls {
                    let system = tls.ca == "system";
                    for path in [(!system).then_some(&mut tls.ca), tls.cert.as_mut(), tls.key.as_mut()].into_iter().flatten() {
                        if Path::new(path.as_str()).is_relative() {
                            *path = dir.join(&*path).display().to_string();
                        }
                    }
                }
            }
            for p in &mut config.plugins {
                if Path::new(&p.path).is_relative() {
                    p.path = dir.join(&p.path).display().to_string();
                }
            }
        }
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: origin.to_string(),
                problems,
            })
        }
    }

    /// A config for one backend, as given on the command line.
    pub fn single(listen: String, backend: Vec<String>, admin: Option<String>) -> Self {
        let mut clusters = BTreeMap::new();
        clusters.insert(
            "main".to_string(),
            ClusterConfig {
                bootstrap: backend,
                metadata_max_age_ms: default_metadata_max_age(),
                connect_timeout_ms: default_connect_timeout(),
                max_frame_bytes: default_backend_max_frame(),
                health_interval_ms: default_health_interval(),
                tls: None,
                sasl: None,
                tunnel: false,
            },
        );
        Config {
            gateway: GatewayConfig {
                listen,
                advertised: None,
                node_id: 0,
                cluster_id: None,
                max_frame_bytes: default_max_frame(),
                max_in_flight: default_max_in_flight(),
                fetch_read_ahead: true,
                fetch_read_ahead_max_bytes: default_read_ahead_max_bytes(),
                request_buffer_max_bytes: default_request_buffer_max_bytes(),
                max_connections: default_max_connections(),
                max_connections_per_ip: None,
                idle_timeout_ms: default_idle_timeout(),
                tls: None,
                sasl: None,
                worker_threads: None,
            },
            admin: AdminConfig { listen: admin, ..AdminConfig::default() },
            clusters,
            routes: Vec::new(),
            plugins: Vec::new(),
            authorization: None,
            acls: Vec::new(),
            tunnel: None,
        }
    }

    /// Every problem in the config, each naming its field and the fix.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut problem = |field: &str, message: String| {
            out.push(Problem {
                field: field.to_string(),
                message,
            })
        };

        let listen = self.gateway.listen.parse::<SocketAddr>();
        if listen.is_err() {
            problem(
                "gateway.listen",
                format!(
                    "'{}' is not an IP socket address; use IP:PORT such as 127.0.0.1:9092",
                    self.gateway.listen
                ),
            );
        }
        match &self.gateway.advertised {
            Some(adv) => {
                if let Err(why) = check_host_port(adv) {
                    problem(
                        "gateway.advertised",
                        format!("'{adv}' {why}; use HOST:PORT such as gateway.example.com:9092"),
                    );
                }
            }
            None => {
                if let Ok(addr) = listen {
                    if addr.ip().is_unspecified() {
                        problem(
                            "gateway.advertised",
                            format!(
                                "required when gateway.listen binds every interface ({addr}); set the HOST:PORT clients should dial"
                            ),
                        );
                    }
                }
            }
        }
        if self.gateway.node_id < 0 {
            problem(
                "gateway.node_id",
                format!("{} is negative; use 0 or a positive id", self.gateway.node_id),
            );
        }
        if let Some(id) = &self.gateway.cluster_id {
            if id.is_empty() {
                problem(
                    "gateway.cluster_id",
                    "is empty; remove it to show the backend's id, or set a name".to_string(),
                );
            }
        }
        if self.gateway.max_frame_bytes < 1024 || self.gateway.max_frame_bytes > i32::MAX as usize {
            problem(
                "gateway.max_frame_bytes",
                format!(
                    "{} is outside 1024..={}; the default is {}",
                    self.gateway.max_frame_bytes,
                    i32::MAX,
                    default_max_frame()
                ),
            );
        }
        if let Some(tls) = &self.gateway.tls {
            for p in crate::tls::validate(tls, "gateway.tls") {
                problem(&p.field, p.message);
            }
        }
        if let Some(sasl) = &self.gateway.sasl {
            for p in crate::sasl::validate(sasl) {
                problem(&p.field, p.message);
            }
        }
        let mapped_roles = self.plugins.iter().any(|p| p.kind == "acl-mapper");
        if let Err(p) = self.admin.token() {
            problem(&p.field, p.message);
        }
        if let Some(tls) = &self.admin.tls {
            for p in crate::tls::validate(tls, "admin.tls") {
                problem(&p.field, p.message);
            }
        }
        for p in crate::authz::validate(self.authorization.as_ref(), &self.acls, mapped_roles) {
            problem(&p.field, p.message);
        }
        if self.gateway.max_in_flight == 0 || self.gateway.max_in_flight > 65_536 {
            problem(
                "gateway.max_in_flight",
                format!(
                    "{} is outside 1..=65536; the default is {}",
                    self.gateway.max_in_flight,
                    default_max_in_flight()
                ),
            );
        }
        if self.gateway.max_connections == 0 {
            problem("gateway.max_connections", "is 0: no client could connect".into());
        }
        if self.gateway.max_connections_per_ip == Some(0) {
            problem("gateway.max_connections_per_ip", "is 0: no client could connect; remove it for no limit".into());
        }
        if let Some(n) = self.gateway.worker_threads {
            if n == 0 || n > MAX_WORKER_THREADS {
                problem(
                    "gateway.worker_threads",
                    format!("{n} is outside 1..={MAX_WORKER_THREADS}; leave it out for one per CPU"),
                );
            }
        }
        if self.gateway.idle_timeout_ms < 1000 {
            problem(
                "gateway.idle_timeout_ms",
                format!("{} is under 1000; clients between requests would be cut off", self.gateway.idle_timeout_ms),
            );
        }
        if let Some(admin) = &self.admin.listen {
            match admin.parse::<SocketAddr>() {
                Err(_) => problem(
                    "admin.listen",
                    format!("'{admin}' is not an IP socket address; use IP:PORT such as 127.0.0.1:9644"),
                ),
                Ok(a) => {
                    if listen.as_ref().is_ok_and(|l| *l == a && a.port() != 0) {
                        problem(
                            "admin.listen",
                            format!("{a} is also gateway.listen; give the admin endpoint its own port"),
                        );
                    }
                }
            }
        }

        if self.clusters.is_empty() {
            problem(
                "clusters",
                "no backend cluster; add [clusters.NAME] with bootstrap = [\"HOST:PORT\"]".to_string(),
            );
        }
        for p in crate::tunnel::validate(self) {
            problem(&p.field, p.message);
        }
        for (name, cluster) in &self.clusters {
            let base = format!("clusters.{name}");
            for p in crate::backend::secure::validate(cluster.tls.as_ref(), cluster.sasl.as_ref(), &base) {
                problem(&p.field, p.message);
            }
            if !valid_name(name) {
                problem(
                    &base,
                    format!("'{name}' is not a valid cluster name; use letters, digits, '-' and '_'"),
                );
            }
            if cluster.bootstrap.is_empty() {
                problem(
                    &format!("{base}.bootstrap"),
                    "is empty; list at least one broker as \"HOST:PORT\"".to_string(),
                );
            }
            for (i, b) in cluster.bootstrap.iter().enumerate() {
                if let Err(why) = check_host_port(b) {
                    problem(
                        &format!("{base}.bootstrap[{i}]"),
                        format!("'{b}' {why}; use HOST:PORT such as 127.0.0.1:19092"),
                    );
                }
            }
            if cluster.metadata_max_age_ms < 100 {
                problem(
                    &format!("{base}.metadata_max_age_ms"),
                    format!(
                        "{} is below 100 ms; the default is {}",
                        cluster.metadata_max_age_ms,
                        default_metadata_max_age()
                    ),
                );
            }
            if cluster.health_interval_ms < 100 {
                problem(
                    &format!("{base}.health_interval_ms"),
                    format!(
                        "{} is below 100 ms; the default is {}",
                        cluster.health_interval_ms,
                        default_health_interval()
                    ),
                );
            }
            if cluster.connect_timeout_ms == 0 {
                problem(
                    &format!("{base}.connect_timeout_ms"),
                    format!("must be above 0; the default is {}", default_connect_timeout()),
                );
            }
            if cluster.max_frame_bytes < 1024 || cluster.max_frame_bytes > i32::MAX as usize {
                problem(
                    &format!("{base}.max_frame_bytes"),
                    format!(
                        "{} is outside 1024..={}; the default is {}",
                        cluster.max_frame_bytes,
                        i32::MAX,
                        default_backend_max_frame()
                    ),
                );
            }
        }
        out.extend(routing::validate(&self.routes, &self.cluster_names()));
        out.extend(crate::plugins::validate(&self.plugins, &self.cluster_names()));
        out
    }

    /// Cluster names in the order backends are numbered.
    pub fn cluster_names(&self) -> Vec<String> {
        self.clusters.keys().cloned().collect()
    }

    /// The address clients are told to use, as host and port.
    pub fn advertised(&self) -> (String, i32) {
        let text = self
            .gateway
            .advertised
            .clone()
            .unwrap_or_else(|| self.gateway.listen.clone());
        split_host_port(&text).unwrap_or((text, 0))
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Splits `HOST:PORT` (IPv6 hosts in brackets) into its parts.
pub fn split_host_port(text: &str) -> Option<(String, i32)> {
    let (host, port) = text.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), i32::from(port)))
}

fn check_host_port(text: &str) -> Result<(), &'static str> {
    let Some((host, port)) = split_host_port(text) else {
        return Err("is not HOST:PORT");
    };
    if port == 0 {
        return Err("has port 0");
    }
    if host.chars().any(char::is_whitespace) {
        return Err("has white space in its host");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_config_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("config dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
                seen += 1;
            }
        }
        assert!(seen > 0, "no example configs in {}", dir.display());
    }

    #[test]
    fn every_invalid_config_names_its_field() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/invalid");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("invalid dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            seen += 1;
            let text = std::fs::read_to_string(&path).expect("read");
            // Each file says, in its first line, the text the error must contain.
            let expect = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# expect: "))
                .unwrap_or_else(|| panic!("{} lacks '# expect: '", path.display()));
            let err = Config::parse(&text, "x").expect_err("must be rejected");
            assert!(
                err.to_string().contains(expect),
                "{}: error {err} lacks {expect:?}",
                path.display()
            );
        }
        assert!(seen >= 5, "only {seen} invalid configs");
    }

    #[test]
    fn host_port_parsing() {
        assert_eq!(split_host_port("a:1"), Some(("a".into(), 1)));
        assert_eq!(split_host_port("[::1]:9092"), Some(("::1".into(), 9092)));
        assert_eq!(split_host_port("nope"), None);
        assert_eq!(split_host_port(":9"), None);
        assert_eq!(split_host_port("a:70000"), None);
    }
}
