//! TLS on the client listener (rustls): a certificate chain and key from PEM
//! files, optional mutual TLS with the client's principal taken from its
//! certificate, and the files read again when they change, so a renewed
//! certificate needs no restart.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use crate::config::Problem;

/// `[gateway.tls]`: TLS for every client connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain clients see, PEM, leaf first.
    pub cert: String,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// CA certificates (PEM) that sign client certificates: mutual TLS.
    #[serde(default)]
    pub client_ca: Option<String>,
    /// With `client_ca`: `required` (the default) refuses clients without a
    /// certificate; `optional` lets them in as ANONYMOUS.
    #[serde(default = "default_client_auth")]
    pub client_auth: String,
    /// Time a client has to finish the handshake, in ms.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_ms: u64,
}

fn default_client_auth() -> String {
    "required".into()
}

fn default_handshake_timeout() -> u64 {
    10_000
}

/// A problem with one field of the TLS config.
type FieldError = (&'static str, String);

fn read_certs(path: &str, field: &'static str) -> Result<Vec<CertificateDer<'static>>, FieldError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| (field, format!("cannot read '{path}': {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| (field, format!("'{path}' is not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err((field, format!("'{path}' holds no certificate (expected -----BEGIN CERTIFICATE-----)")));
    }
    Ok(certs)
}

/// Builds the rustls server config the files describe.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, FieldError> {
    let certs = read_certs(&tls.cert, "cert")?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| ("key", format!("cannot read a PEM private key from '{}': {e}", tls.key)))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("cert", e.to_string()))?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca, "client_ca")? {
                roots
                    .add(cert)
                    .map_err(|e| ("client_ca", format!("'{ca}' holds a certificate rustls cannot use: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if tls.client_auth == "optional" {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| ("client_ca", e.to_string()))?)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| ("key", format!("does not fit the certificate in '{}': {e}", tls.cert)))?;
    Ok(Arc::new(config))
}

/// Every problem with `[gateway.tls]`, each under `base` (its field path).
pub fn validate(tls: &TlsConfig, base: &str) -> Vec<Problem> {
    let mut out = Vec::new();
    if tls.client_auth != "required" && tls.client_auth != "optional" {
        out.push(Problem {
            field: format!("{base}.client_auth"),
            message: format!("'{}' is neither \"required\" nor \"optional\"", tls.client_auth),
        });
    }
    if tls.client_ca.is_none() && tls.client_auth == "optional" {
        out.push(Problem {
            field: format!("{base}.client_auth"),
            message: "means nothing without client_ca; set client_ca to ask clients for certificates".into(),
        });
    }
    if tls.handshake_timeout_ms == 0 || tls.handshake_timeout_ms > 600_000 {
        out.push(Problem {
            field: format!("{base}.handshake_timeout_ms"),
            message: format!("{} is outside 1..=600000", tls.handshake_timeout_ms),
        });
    }
    if let Err((field, message)) = server_config(tls) {
        out.push(Problem { field: format!("{base}.{field}"), message });
    }
    out
}

/// The files' modification times, to notice a change.
fn stamps(tls: &TlsConfig) -> Vec<Option<SystemTime>> {
    [Some(&tls.cert), Some(&tls.key), tls.client_ca.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// The TLS side of the client listener: the server config in force, swapped
/// when the files change.
pub struct Listener {
    config: TlsConfig,
    current: RwLock<(Arc<ServerConfig>, Vec<Option<SystemTime>>)>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("tls::Listener").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Listener {
    pub fn new(config: &TlsConfig) -> anyhow::Result<Arc<Self>> {
        let stamps = stamps(config);
        let server = server_config(config).map_err(|(field, message)| anyhow::anyhow!("gateway.tls.{field}: {message}"))?;
        Ok(Arc::new(Self {
            config: config.clone(),
            current: RwLock::new((server, stamps)),
        }))
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.config.handshake_timeout_ms)
    }

    /// The acceptor for the next connection.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = match self.current.read() {
            Ok(c) => c.0.clone(),
            Err(p) => p.into_inner().0.clone(),
        };
        tokio_rustls::TlsAcceptor::from(config)
    }

    /// Reads the files again if they changed; on an error the old config stays.
    pub fn reload_if_changed(&self) -> Option<Result<(), String>> {
        let now = stamps(&self.config);
        let was = match self.current.read() {
            Ok(c) => c.1.clone(),
            Err(p) => p.into_inner().1.clone(),
        };
        if now == was {
            return None;
        }
        Some(match server_config(&self.config) {
            Ok(server) => {
                match self.current.write() {
                    Ok(mut c) => *c = (server, now),
                    Err(p) => *p.into_inner() = (server, now),
                }
                Ok(())
            }
            Err((field, message)) => {
                // Remember the stamps, so a broken file is reported once.
                match self.current.write() {
                    Ok(mut c) => c.1 = now,
                    Err(p) => p.into_inner().1 = now,
                }
                Err(format!("gateway.tls.{field}: {message}"))
            }
        })
    }

    /// Checks the files every `every` for as long as the listener lives.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("tls-watch".into()).spawn(move || loop {
            std::thread::sleep(every);
            let Some(listener) = weak.upgrade() else { return };
            match listener.reload_if_changed() {
                Some(Ok(())) => tracing::info!(cert = %listener.config.cert, "TLS certificate reloaded"),
                Some(Err(e)) => tracing::error!(error = %e, "changed TLS files not loaded; the old certificate stays"),
                None => {}
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot watch the TLS files");
        }
    }
}

/// Relative TLS file paths are taken from `dir` (the config file's).
pub fn resolve_paths(tls: &mut TlsConfig, dir: &Path) {
    for path in [Some(&mut tls.cert), Some(&mut tls.key), tls.client_ca.as_mut()].into_iter().flatten() {
        if Path::new(path.as_str()).is_relative() {
            *path = dir.join(&*path).display().to_string();
        }
    }
}

/// The principal of a client certificate, as Kafka names it: `User:` and the
/// subject's distinguished name in RFC 2253 form (most specific first, such
/// as `User:CN=alice,OU=payments,O=Acme`).
pub fn principal_of(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::oid_registry as oids;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let mut rdns = Vec::new();
    for rdn in parsed.subject().iter_rdn() {
        let mut parts = Vec::new();
        for atv in rdn.iter() {
            let oid = atv.attr_type();
            let name = [
                (&oids::OID_X509_COMMON_NAME, "CN"),
                (&oids::OID_X509_ORGANIZATIONAL_UNIT, "OU"),
                (&oids::OID_X509_ORGANIZATION_NAME, "O"),
                (&oids::OID_X509_LOCALITY_NAME, "L"),
                (&oids::OID_X509_STATE_OR_PROVINCE_NAME, "ST"),
                (&oids::OID_X509_COUNTRY_NAME, "C"),
                (&oids::OID_X509_STREET_ADDRESS, "STREET"),
                (&oids::OID_DOMAIN_COMPONENT, "DC"),
            ]
            .iter()
            .find(|(o, _)| *o == oid)
            .map_or_else(|| oid.to_id_string(), |(_, n)| n.to_string());
            parts.push(format!("{name}={}", dn_value(atv.attr_value())));
        }
        rdns.push(parts.join("+"));
    }
    rdns.reverse();
    (!rdns.is_empty()).then(|| format!("User:{}", rdns.join(",")))
}

/// A DN attribute value as RFC 2253 writes it: strings decoded (UTF-8,
/// Latin-1 for Teletex, UTF-16 for BMP, UTF-32 for Universal) and escaped;
/// anything else as `#` and the hex of its DER encoding.
fn dn_value(value: &x509_parser::der_parser::asn1_rs::Any<'_>) -> String {
    use x509_parser::der_parser::asn1_rs::{Tag, ToDer};
    let data = value.data;
    let text = match value.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::NumericString | Tag::VisibleString => {
            std::str::from_utf8(data).ok().map(str::to_owned)
        }
        Tag::T61String => Some(data.iter().map(|&b| char::from(b)).collect()),
        Tag::BmpString if data.len() % 2 == 0 => {
            let units: Vec<u16> = data.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
            String::from_utf16(&units).ok()
        }
        Tag::UniversalString if data.len() % 4 == 0 => data
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        _ => None,
    };
    match text {
        Some(text) => escape_dn_value(&text),
        None => {
            let der = value.to_der_vec().unwrap_or_else(|_| data.to_vec());
            let hex: String = der.iter().map(|b| format!("{b:02X}")).collect();
            format!("#{hex}")
        }
    }
}

/// A DN attribute value escaped as RFC 2253 asks.
fn escape_dn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dn_values_are_escaped() {
        assert_eq!(escape_dn_value("alice"), "alice");
        assert_eq!(escape_dn_value("Acme, Inc."), "Acme\\, Inc.");
        assert_eq!(escape_dn_value(" a+b "), "\\ a\\+b\\ ");
        assert_eq!(escape_dn_value("#1"), "\\#1");
    }

    #[test]
    fn every_string_type_of_a_dn_is_decoded() {
        use x509_parser::der_parser::asn1_rs::{Any, Tag};
        let value = |tag, data: &'static [u8]| dn_value(&Any::from_tag_and_data(tag, data));
        assert_eq!(value(Tag::Utf8String, "Zoë, Ltd".as_bytes()), "Zoë\\, Ltd");
        assert_eq!(value(Tag::BmpString, &[0, b'b', 0, b'o', 0, b'b']), "bob");
        assert_eq!(value(Tag::UniversalString, &[0, 0, 0, b'e', 0, 0, 0, b'v', 0, 0, 0, b'e']), "eve");
        assert_eq!(value(Tag::T61String, &[b'Z', 0xE9]), "Zé");
        // Not a string: the DER encoding in hex, never a silent loss.
        assert_eq!(value(Tag::OctetString, &[1, 2]), "#04020102");
        assert_eq!(value(Tag::BmpString, &[0]), "#1E0100");
    }

    #[test]
    fn garbage_is_no_principal() {
        assert_eq!(principal_of(&CertificateDer::from(vec![0x30, 0x03, 0x01, 0x01])), None);
        assert_eq!(principal_of(&CertificateDer::from(Vec::new())), None);
    }

    #[test]
    fn missing_files_name_their_field() {
        let tls = TlsConfig {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
            client_ca: None,
            client_auth: "sometimes".into(),
            handshake_timeout_ms: 0,
        };
        let fields: Vec<String> = validate(&tls, "gateway.tls").into_iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            vec!["gateway.tls.client_auth", "gateway.tls.handshake_timeout_ms", "gateway.tls.cert"]
        );
    }
}
