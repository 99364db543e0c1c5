//! TLS and SASL towards a backend cluster: `[clusters.NAME.tls]` and
//! `[clusters.NAME.sasl]`. A [`SecureConnector`] wraps the TCP connector: it
//! connects, completes the TLS handshake, logs in with SASL (PLAIN or SCRAM,
//! as Causeway's own identity towards that cluster), and only then hands the
//! stream to the connection layer, which never knows the difference.

use std::io;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use kafka_protocol::messages::{
    RequestHeader, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::transport::{Connected, Connector, Stream};
use crate::config::Problem;
use crate::sasl::{Mechanism, ScramClient};

/// `[clusters.NAME.tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendTls {
    /// CA certificates (PEM) that sign the brokers' certificates, or
    /// `"system"` for the operating system's CA bundle (managed Kafka
    /// services with public certificates).
    pub ca: String,
    /// Causeway's client certificate (PEM), when the brokers ask for one.
    #[serde(default)]
    pub cert: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    /// The name to verify the brokers' certificates against, instead of the
    /// host of each broker's address.
    #[serde(default)]
    pub server_name: Option<String>,
}

/// `[clusters.NAME.sasl]`: Causeway's own login to the cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSasl {
    /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    pub mechanism: String,
    pub username: String,
    /// The environment variable holding the password.
    pub password_env: String,
    /// Client principals (`User:alice`) that log in to this cluster as
    /// themselves, each with its own user and password, so the backend's own
    /// ACLs and quotas see them; everyone else uses the login above.
    #[serde(default)]
    pub principals: std::collections::BTreeMap<String, PrincipalLogin>,
}

/// `[clusters.NAME.sasl.principals."User:NAME"]`: one client principal's
/// own login to the cluster, with the cluster's mechanism.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalLogin {
    pub username: String,
    pub password_env: String,
}

/// Where operating systems keep their CA bundle; `SSL_CERT_FILE` first, as
/// OpenSSL reads it.
const SYSTEM_BUNDLES: [&str; 5] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
    "/usr/local/etc/openssl/cert.pem",
];

/// The CA file `ca` names: itself, or the system bundle for `"system"`.
fn ca_file(ca: &str) -> Result<String, String> {
    if ca != "system" {
        return Ok(ca.to_string());
    }
    let from_env = std::env::var("SSL_CERT_FILE").ok().filter(|f| !f.is_empty());
    from_env
        .into_iter()
        .chain(SYSTEM_BUNDLES.iter().map(|s| s.to_string()))
        .find(|f| std::path::Path::new(f).is_file())
        .ok_or_else(|| format!("no system CA bundle found (looked at $SSL_CERT_FILE and {})", SYSTEM_BUNDLES.join(", ")))
}

pub fn client_config(tls: &BackendTls) -> Result<Arc<ClientConfig>, (&'static str, String)> {
    let mut roots = RootCertStore::empty();
    let ca = ca_file(&tls.ca).map_err(|e| ("ca", e))?;
    let certs = CertificateDer::pem_file_iter(&ca)
        .map_err(|e| ("ca", format!("cannot read '{ca}': {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ("ca", format!("'{ca}' is not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(("ca", format!("'{ca}' holds no certificate")));
    }
    // A system bundle may hold a certificate rustls cannot use; skip those
    // there, refuse them in a file of one's own.
    let system = tls.ca == "system";
    for cert in certs {
        if let Err(e) = roots.add(cert) {
            if !system {
                return Err(("ca", format!("'{ca}': {e}")));
            }
        }
    }
    if roots.is_empty() {
        return Err(("ca", format!("'{ca}' holds no usable CA certificate")));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("ca", e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&tls.cert, &tls.key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| ("cert", format!("cannot read '{cert}': {e}")))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ("cert", format!("'{cert}' is not PEM certificates: {e}")))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| ("key", format!("cannot read a PEM private key from '{key}': {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ("key", format!("does not fit the certificate in '{cert}': {e}")))?
        }
        _ => return Err(("cert", "give both cert and key, or neither".into())),
    };
    Ok(Arc::new(config))
}

fn password(sasl: &BackendSasl) -> Result<String, String> {
    password_from(&sasl.password_env)
}

fn password_from(var: &str) -> Result<String, String> {
    match std::env::var(var) {
        Ok(p) if !p.is_empty() => Ok(p),
        _ => Err(format!("${var} is not set or empty")),
    }
}

/// Every problem with a cluster's `tls` and `sasl`, under `base`.
pub fn validate(tls: Option<&BackendTls>, sasl: Option<&BackendSasl>, base: &str) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Some(tls) = tls {
        if let Err((field, message)) = client_config(tls) {
            out.push(Problem { field: format!("{base}.tls.{field}"), message });
        }
        if let Some(name) = &tls.server_name {
            if ServerName::try_from(name.clone()).is_err() {
                out.push(Problem { field: format!("{base}.tls.server_name"), message: format!("'{name}' is not a DNS name or IP address") });
            }
        }
    }
    if let Some(sasl) = sasl {
        if Mechanism::parse(&sasl.mechanism).is_none() {
            out.push(Problem {
                field: format!("{base}.sasl.mechanism"),
                message: format!("'{}' is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512", sasl.mechanism),
            });
        }
        if sasl.username.is_empty() {
            out.push(Problem { field: format!("{base}.sasl.username"), message: "is empty".into() });
        }
        if let Err(e) = password(sasl) {
            out.push(Problem { field: format!("{base}.sasl.password_env"), message: e });
        }
        for (principal, login) in &sasl.principals {
            let at = format!("{base}.sasl.principals.\"{principal}\"");
            if !principal.contains(':') {
                out.push(Problem { field: at.clone(), message: format!("'{principal}' is not a principal; write User:NAME") });
            }
            if login.username.is_empty() {
                out.push(Problem { field: format!("{at}.username"), message: "is empty".into() });
            }
            if let Err(e) = password_from(&login.password_env) {
                out.push(Problem { field: format!("{at}.password_env"), message: e });
            }
        }
    }
    out
}

/// The login Causeway performs on every new connection.
#[derive(Clone)]
struct Login {
    mechanism: Mechanism,
    username: String,
    password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login").field("mechanism", &self.mechanism).field("username", &self.username).finish_non_exhaustive()
    }
}

/// Connects with TCP, then TLS and SASL as the cluster's config asks.
pub struct SecureConnector {
    inner: Arc<dyn Connector>,
    tls: Option<(tokio_rustls::TlsConnector, Option<ServerName<'static>>)>,
    login: Option<Login>,
}

impl SecureConnector {
    /// `None` when the cluster asks for neither TLS nor SASL.
    pub fn new(inner: Arc<dyn Connector>, tls: Option<&BackendTls>, sasl: Option<&BackendSasl>) -> anyhow::Result<Option<Self>> {
        if tls.is_none() && sasl.is_none() {
            return Ok(None);
        }
        let tls = match tls {
            None => None,
            Some(t) => {
                let config = client_config(t).map_err(|(f, m)| anyhow::anyhow!("tls.{f}: {m}"))?;
                let name = match &t.server_name {
                    Some(n) => Some(ServerName::try_from(n.clone()).map_err(|e| anyhow::anyhow!("tls.server_name: {e}"))?),
                    None => None,
                };
                Some((tokio_rustls::TlsConnector::from(config), name))
            }
        };
        let login = match sasl {
            None => None,
            Some(s) => Some(Login {
                mechanism: Mechanism::parse(&s.mechanism).ok_or_else(|| anyhow::anyhow!("sasl.mechanism: '{}'", s.mechanism))?,
                username: s.username.clone(),
                password: password(s).map_err(|e| anyhow::anyhow!("sasl.password_env: {e}"))?,
            }),
        };
        Ok(Some(Self { inner, tls, login }))
    }

    /// A connector for each client principal with its own login: the same
    /// TLS, another user.
    pub fn per_principal(&self, sasl: Option<&BackendSasl>) -> anyhow::Result<Vec<(String, Arc<dyn Connector>)>> {
        let (Some(sasl), Some(login)) = (sasl, &self.login) else { return Ok(Vec::new()) };
        let mut out: Vec<(String, Arc<dyn Connector>)> = Vec::new();
        for (principal, p) in &sasl.principals {
            let password = password_from(&p.password_env)
                .map_err(|e| anyhow::anyhow!("sasl.principals.\"{principal}\".password_env: {e}"))?;
            let login = Login { mechanism: login.mechanism, username: p.username.clone(), password };
            let connector = Self { inner: self.inner.clone(), tls: self.tls.clone(), login: Some(login) };
            out.push((principal.clone(), Arc::new(connector)));
        }
        Ok(out)
    }
}

fn io_error(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, message)
}

impl Connector for SecureConnector {
    fn connect(&self, addr: String) -> BoxFuture<'static, io::Result<Box<dyn Stream>>> {
        let connecting = self.connect_for(addr);
        Box::pin(async move { Ok(connecting.await?.0) })
    }

    fn connect_for(&self, addr: String) -> BoxFuture<'static, io::Result<Connected>> {
        let tcp = self.inner.connect(addr.clone());
        let tls = self.tls.clone();
        let login = self.login.clone();
        Box::pin(async move {
            let mut stream = tcp.await?;
            if let Some((connector, name)) = tls {
                let name = match name {
                    Some(n) => n,
                    None => {
                        let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
                        let host = host.trim_start_matches('[').trim_end_matches(']');
                        ServerName::try_from(host.to_string())
                            .map_err(|e| io_error(format!("'{host}' cannot be checked against a certificate: {e}")))?
                    }
                };
                stream = Box::new(
                    connector
                        .connect(name, stream)
                        .await
                        .map_err(|e| io::Error::new(e.kind(), format!("TLS to {addr}: {e}")))?,
                );
            }
            let mut lifetime = None;
            if let Some(login) = login {
                lifetime = sasl_login(&mut stream, &login)
                    .await
                    .map_err(|e| io_error(format!("SASL {} login to {addr} as {}: {e}", login.mechanism.name(), login.username)))?;
            }
            Ok((stream, lifetime))
        })
    }
}

/// Largest SASL answer read from a broker.
const MAX_SASL_FRAME: usize = 64 * 1024;

/// One request on the raw stream, and its answer's body.
async fn exchange<Req: Encodable, Resp: Decodable>(
    stream: &mut Box<dyn Stream>,
    api_key: i16,
    version: i16,
    correlation_id: i32,
    body: &Req,
) -> Result<Resp, String> {
    let header = RequestHeader::default()
        .with_request_api_key(api_key)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("causeway")));
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    header.encode(&mut buf, 1).map_err(|e| e.to_string())?;
    body.encode(&mut buf, version).map_err(|e| e.to_string())?;
    let len = i32::try_from(buf.len() - 4).map_err(|_| "request too large".to_string())?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    stream.write_all(&buf).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let len = stream.read_i32().await.map_err(|e| format!("the broker closed the connection ({e})"))?;
    let len = usize::try_from(len).ok().filter(|&l| (4..=MAX_SASL_FRAME).contains(&l)).ok_or_else(|| format!("answer length {len}"))?;
    let mut frame = vec![0u8; len];
    stream.read_exact(&mut frame).await.map_err(|e| e.to_string())?;
    let mut frame = Bytes::from(frame);
    if frame.get_i32() != correlation_id {
        return Err("an answer to another request".into());
    }
    Resp::decode(&mut frame, version).map_err(|e| format!("cannot read the answer: {e}"))
}

const HANDSHAKE: i16 = 17;
const AUTHENTICATE: i16 = 36;

/// One SaslAuthenticate: the broker's token, and the session lifetime it
/// gives (KIP-368; 0: none).
async fn authenticate(stream: &mut Box<dyn Stream>, id: i32, token: Vec<u8>) -> Result<(Vec<u8>, i64), String> {
    let req = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(token));
    let resp: SaslAuthenticateResponse = exchange(stream, AUTHENTICATE, 1, id, &req).await?;
    if resp.error_code != 0 {
        let why = resp.error_message.map(|m| m.to_string()).unwrap_or_default();
        return Err(format!("refused (error {}): {why}", resp.error_code));
    }
    Ok((resp.auth_bytes.to_vec(), resp.session_lifetime_ms))
}

/// SaslHandshake v1, then SaslAuthenticate until logged in: how long the
/// login lasts, if the broker limits it.
async fn sasl_login(stream: &mut Box<dyn Stream>, login: &Login) -> Result<Option<std::time::Duration>, String> {
    let req = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(login.mechanism.name()));
    let resp: SaslHandshakeResponse = exchange(stream, HANDSHAKE, 1, 1, &req).await?;
    if resp.error_code != 0 {
        let offered: Vec<String> = resp.mechanisms.iter().map(|m| m.to_string()).collect();
        return Err(format!("mechanism not offered (error {}); the broker offers {offered:?}", resp.error_code));
    }
    let lifetime_ms = match login.mechanism {
        Mechanism::Plain => {
            let token = format!("\0{}\0{}", login.username, login.password).into_bytes();
            authenticate(stream, 2, token).await?.1
        }
        scram => {
            let (client, first) = ScramClient::start(scram, &login.username, &login.password)?;
            let (server_first, _) = authenticate(stream, 2, first).await?;
            let (last, expected) = client.proof(&server_first)?;
            let (server_final, lifetime_ms) = authenticate(stream, 3, last).await?;
            if server_final != expected {
                return Err("the broker's SCRAM signature is wrong: it does not know our password".into());
            }
            lifetime_ms
        }
    };
    Ok(u64::try_from(lifetime_ms).ok().filter(|&ms| ms > 0).map(std::time::Duration::from_millis))
}
