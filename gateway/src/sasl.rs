//! SASL terminated at the gateway: PLAIN and SCRAM-SHA-256/512 (RFC 5802,
//! RFC 7677) over Kafka's SaslHandshake v1 and SaslAuthenticate, with
//! re-authentication (KIP-368).
//!
//! Credentials are salted SCRAM keys from a file (`causeway sasl hash` writes
//! them), or derived at start from a password in an environment variable;
//! the gateway never holds or logs a password beyond the one login that
//! carries it. PLAIN is checked against the same SCRAM keys.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::{digest, hmac, pbkdf2, rand::SecureRandom};
use serde::Deserialize;

use crate::config::Problem;

/// The SCRAM mechanisms, and PLAIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [Mechanism::Plain, Mechanism::ScramSha256, Mechanism::ScramSha512]
            .into_iter()
            .find(|m| m.name() == name)
    }

    /// The hash of a SCRAM mechanism.
    fn scram(self) -> Option<Hash> {
        match self {
            Mechanism::Plain => None,
            Mechanism::ScramSha256 => Some(Hash::Sha256),
            Mechanism::ScramSha512 => Some(Hash::Sha512),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hash {
    Sha256,
    Sha512,
}

impl Hash {
    fn digest(self) -> &'static digest::Algorithm {
        match self {
            Hash::Sha256 => &digest::SHA256,
            Hash::Sha512 => &digest::SHA512,
        }
    }
    fn hmac(self) -> hmac::Algorithm {
        match self {
            Hash::Sha256 => hmac::HMAC_SHA256,
            Hash::Sha512 => hmac::HMAC_SHA512,
        }
    }
    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            Hash::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            Hash::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }
    fn len(self) -> usize {
        self.digest().output_len()
    }
}

/// Fewest PBKDF2 iterations accepted (Kafka's minimum).
pub const MIN_ITERATIONS: u32 = 4096;
/// Most accepted: more would let a credential file make logins a CPU sink.
pub const MAX_ITERATIONS: u32 = 1_000_000;

/// One user's SCRAM keys for one hash.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredential {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

/// Keys stay out of logs and panics.
impl std::fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramCredential").field("iterations", &self.iterations).finish_non_exhaustive()
    }
}

/// The iterations an unknown user is shown when no credential says otherwise:
/// what `causeway sasl-user` writes.
pub const DEFAULT_ITERATIONS: u32 = 8192;

/// SCRAM's SaltedPassword: PBKDF2 of the password.
fn salted_password(hash: Hash, password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut salted = vec![0u8; hash.len()];
    let rounds = std::num::NonZeroU32::new(iterations.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    pbkdf2::derive(hash.pbkdf2(), rounds, salt, password.as_bytes(), &mut salted);
    salted
}

fn hmac_sign(hash: Hash, key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hash.hmac(), key), data).as_ref().to_vec()
}

impl ScramCredential {
    /// The keys for `password` with this salt and iteration count.
    pub fn derive(hash: Hash, password: &str, salt: &[u8], iterations: u32) -> Self {
        let salted = salted_password(hash, password, salt, iterations);
        let client_key = hmac_sign(hash, &salted, b"Client Key");
        let stored_key = digest::digest(hash.digest(), &client_key).as_ref().to_vec();
        let server_key = hmac_sign(hash, &salted, b"Server Key");
        Self { salt: salt.to_vec(), iterations, stored_key, server_key }
    }

    /// New keys for `password` with a random salt.
    pub fn new(hash: Hash, password: &str, iterations: u32) -> Result<Self, String> {
        let mut salt = vec![0u8; 24];
        ring::rand::SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| "no randomness for a salt".to_string())?;
        Ok(Self::derive(hash, password, &salt, iterations))
    }

    /// Whether `password` is the one these keys were made from (constant time).
    fn accepts(&self, hash: Hash, password: &str) -> bool {
        let other = Self::derive(hash, password, &self.salt, self.iterations);
        ring_eq(&other.stored_key, &self.stored_key)
    }

    /// The text form of a credential file: `iterations=..,salt=..,stored_key=..,server_key=..`.
    pub fn to_text(&self) -> String {
        format!(
            "iterations={},salt={},stored_key={},server_key={}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(&self.stored_key),
            B64.encode(&self.server_key)
        )
    }

    fn parse(hash: Hash, text: &str) -> Result<Self, String> {
        let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
        for part in text.split(',') {
            let (k, v) = part.split_once('=').ok_or_else(|| format!("'{part}' is not key=value"))?;
            fields.insert(k.trim(), v.trim());
        }
        let get = |k: &str| fields.get(k).copied().ok_or_else(|| format!("lacks {k}="));
        let b64 = |k: &str| -> Result<Vec<u8>, String> {
            B64.decode(get(k)?).map_err(|e| format!("{k} is not base64: {e}"))
        };
        let iterations: u32 = get("iterations")?.parse().map_err(|_| "iterations is not a number".to_string())?;
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(format!("iterations {iterations} is outside {MIN_ITERATIONS}..={MAX_ITERATIONS}"));
        }
        let cred = Self { salt: b64("salt")?, iterations, stored_key: b64("stored_key")?, server_key: b64("server_key")? };
        if cred.salt.is_empty() || cred.stored_key.len() != hash.len() || cred.server_key.len() != hash.len() {
            return Err(format!("keys of {} bytes expected and a salt", hash.len()));
        }
        Ok(cred)
    }
}

fn ring_eq(a: &[u8], b: &[u8]) -> bool {
    // HMAC verification is ring's constant-time comparison.
    let key = hmac::Key::new(hmac::HMAC_SHA256, b"causeway-compare");
    let tag = hmac::sign(&key, a);
    a.len() == b.len() && hmac::verify(&key, b, tag.as_ref()).is_ok()
}

/// `[gateway.sasl]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaslConfig {
    /// Offered mechanisms, in the order clients see them.
    #[serde(default = "default_mechanisms")]
    pub mechanisms: Vec<String>,
    /// The credentials file (TOML, `[users.NAME]` tables).
    pub credentials: String,
    /// KIP-368: a connection must authenticate again within this many ms,
    /// or it is closed at its next request; 0: never.
    #[serde(default)]
    pub session_lifetime_ms: u64,
    /// A connection that has not logged in this long after it opened is
    /// closed, whatever it sends meanwhile.
    #[serde(default = "default_login_timeout")]
    pub login_timeout_ms: u64,
}

fn default_login_timeout() -> u64 {
    30_000
}

fn default_mechanisms() -> Vec<String> {
    vec!["SCRAM-SHA-512".into(), "SCRAM-SHA-256".into()]
}

/// One `[users.NAME]` table of the credentials file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    #[serde(default, rename = "scram-sha-256")]
    scram_sha_256: Option<String>,
    #[serde(default, rename = "scram-sha-512")]
    scram_sha_512: Option<String>,
    /// An environment variable holding the password; keys are derived at start.
    #[serde(default)]
    password_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    #[serde(default)]
    users: BTreeMap<String, UserEntry>,
}

/// Who may log in, and how.
pub struct Authenticator {
    mechanisms: Vec<Mechanism>,
    users: BTreeMap<String, BTreeMap<Hash, ScramCredential>>,
    lifetime: Option<Duration>,
    login_timeout: Duration,
    /// Makes the salts unknown users are shown: the same for a name every
    /// time, but not computable from outside, so they do not give the name
    /// away as unknown.
    decoy: hmac::Key,
    /// Per hash, the iteration count most users have, which unknown users
    /// are shown too.
    decoy_iterations: BTreeMap<Hash, u32>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("mechanisms", &self.mechanisms)
            .field("users", &self.users.len())
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// A random key for decoy salts.
fn decoy_key() -> Result<hmac::Key, String> {
    hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new()).map_err(|_| "no randomness for a key".into())
}

/// The iteration count most of `users`' credentials for each hash have.
fn usual_iterations(users: &BTreeMap<String, BTreeMap<Hash, ScramCredential>>) -> BTreeMap<Hash, u32> {
    let mut counts: BTreeMap<(Hash, u32), usize> = BTreeMap::new();
    for (&hash, c) in users.values().flatten() {
        *counts.entry((hash, c.iterations)).or_default() += 1;
    }
    let mut out: BTreeMap<Hash, (u32, usize)> = BTreeMap::new();
    for ((hash, iterations), n) in counts {
        let best = out.entry(hash).or_insert((iterations, n));
        if n > best.1 {
            *best = (iterations, n);
        }
    }
    out.into_iter().map(|(h, (i, _))| (h, i)).collect()
}

impl Authenticator {
    /// Reads the credentials; every problem with its field.
    pub fn load(config: &SaslConfig) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut problem = |field: String, message: String| problems.push(Problem { field, message });
        let mut mechanisms = Vec::new();
        for (i, m) in config.mechanisms.iter().enumerate() {
            match Mechanism::parse(m) {
                Some(m) if !mechanisms.contains(&m) => mechanisms.push(m),
                Some(_) => problem(format!("gateway.sasl.mechanisms[{i}]"), format!("'{m}' is listed twice")),
                None => problem(
                    format!("gateway.sasl.mechanisms[{i}]"),
                    format!("'{m}' is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
                ),
            }
        }
        if config.mechanisms.is_empty() {
            problem("gateway.sasl.mechanisms".into(), "is empty; offer at least one mechanism".into());
        }
        if config.login_timeout_ms == 0 {
            problem("gateway.sasl.login_timeout_ms".into(), "is 0; give clients time to log in (default 30000)".into());
        }
        let text = match std::fs::read_to_string(&config.credentials) {
            Ok(t) => t,
            Err(e) => {
                problem("gateway.sasl.credentials".into(), format!("cannot read '{}': {e}", config.credentials));
                return Err(problems);
            }
        };
        let file: CredentialsFile = match toml::from_str(&text) {
            Ok(f) => f,
            Err(e) => {
                problem("gateway.sasl.credentials".into(), format!("'{}': {}", config.credentials, e.to_string().trim_end()));
                return Err(problems);
            }
        };
        let mut users = BTreeMap::new();
        for (name, entry) in file.users {
            let at = format!("{}: users.{name}", config.credentials);
            let mut creds = BTreeMap::new();
            for (hash, text) in [(Hash::Sha256, &entry.scram_sha_256), (Hash::Sha512, &entry.scram_sha_512)] {
                if let Some(text) = text {
                    match ScramCredential::parse(hash, text) {
                        Ok(c) => {
                            creds.insert(hash, c);
                        }
                        Err(e) => problem(at.clone(), format!("{hash:?} credential: {e}")),
                    }
                }
            }
            if let Some(var) = &entry.password_env {
                match std::env::var(var) {
                    Ok(password) if !password.is_empty() => {
                        for hash in [Hash::Sha256, Hash::Sha512] {
                            if let std::collections::btree_map::Entry::Vacant(slot) = creds.entry(hash) {
                                match ScramCredential::new(hash, &password, MIN_ITERATIONS) {
                                    Ok(c) => {
                                        slot.insert(c);
                                    }
                                    Err(e) => problem(at.clone(), e),
                                }
                            }
                        }
                    }
                    _ => problem(at.clone(), format!("password_env: ${var} is not set or empty")),
                }
            }
            if creds.is_empty() {
                problem(at.clone(), "has no credential: give scram-sha-256, scram-sha-512 or password_env".into());
            }
            users.insert(name, creds);
        }
        let decoy = decoy_key().map_err(|e| problem("gateway.sasl".into(), e));
        if !problems.is_empty() {
            return Err(problems);
        }
        let Ok(decoy) = decoy else { return Err(problems) };
        Ok(Self {
            mechanisms,
            decoy_iterations: usual_iterations(&users),
            users,
            lifetime: (config.session_lifetime_ms > 0).then(|| Duration::from_millis(config.session_lifetime_ms)),
            login_timeout: Duration::from_millis(config.login_timeout_ms),
            decoy,
        })
    }

    /// One user with `password`, every mechanism offered: for fuzzing and
    /// tests.
    pub fn with_user(user: &str, password: &str) -> Self {
        let creds = [Hash::Sha256, Hash::Sha512]
            .into_iter()
            .map(|h| (h, ScramCredential::derive(h, password, b"fixed-salt-for-tests", MIN_ITERATIONS)))
            .collect();
        let users = BTreeMap::from([(user.to_string(), creds)]);
        Self {
            mechanisms: vec![Mechanism::ScramSha512, Mechanism::ScramSha256, Mechanism::Plain],
            decoy_iterations: usual_iterations(&users),
            users,
            lifetime: None,
            login_timeout: Duration::from_secs(30),
            decoy: hmac::Key::new(hmac::HMAC_SHA256, b"decoy-key-for-tests"),
        }
    }

    /// The salt and iterations an unknown user is shown for `hash`.
    fn decoy(&self, user: &str, hash: Hash) -> (Vec<u8>, u32) {
        let tag = hmac::sign(&self.decoy, format!("{hash:?}\0{user}").as_bytes());
        let iterations = self.decoy_iterations.get(&hash).copied().unwrap_or(DEFAULT_ITERATIONS);
        (tag.as_ref()[..24].to_vec(), iterations)
    }

    pub fn mechanisms(&self) -> &[Mechanism] {
        &self.mechanisms
    }

    pub fn names(&self) -> Vec<String> {
        self.mechanisms.iter().map(|m| m.name().to_string()).collect()
    }

    /// How long an authentication lasts (KIP-368); `None`: for ever.
    pub fn lifetime(&self) -> Option<Duration> {
        self.lifetime
    }

    /// How long a new connection has to log in.
    pub fn login_timeout(&self) -> Duration {
        self.login_timeout
    }

    fn credential(&self, user: &str, hash: Hash) -> Option<&ScramCredential> {
        self.users.get(user)?.get(&hash)
    }

    /// PLAIN: `authzid NUL authcid NUL password`; the user on success.
    fn plain(&self, token: &[u8]) -> Result<String, String> {
        let text = std::str::from_utf8(token).map_err(|_| "PLAIN token is not UTF-8".to_string())?;
        let mut parts = text.split('\0');
        let (Some(authzid), Some(user), Some(password), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("PLAIN token is not authzid NUL user NUL password".into());
        };
        if !authzid.is_empty() && authzid != user {
            return Err("PLAIN: acting as another user is not allowed".into());
        }
        let ok = match [Hash::Sha512, Hash::Sha256].into_iter().find_map(|h| Some((h, self.credential(user, h)?))) {
            Some((h, c)) => c.accepts(h, password),
            None => {
                // As long as a known user's check takes, so the time does not
                // tell an unknown user from a wrong password.
                let (salt, iterations) = self.decoy(user, Hash::Sha512);
                let _ = salted_password(Hash::Sha512, password, &salt, iterations);
                false
            }
        };
        if ok {
            Ok(user.to_string())
        } else {
            Err(INVALID.into())
        }
    }
}

/// What a failed login tells the client: the same whatever was wrong.
const INVALID: &str = "Authentication failed: invalid credentials";

/// A SCRAM exchange after the client's first message.
#[derive(Debug)]
struct ScramServer {
    hash: Hash,
    user: String,
    /// `None`: an unknown user, failed at the end like a wrong password.
    credential: Option<ScramCredential>,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

/// `=2C` and `=3D` back to `,` and `=`.
fn unescape_saslname(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

impl ScramServer {
    /// Reads the client-first message; `server_nonce` is fresh randomness.
    fn start(auth: &Authenticator, hash: Hash, message: &[u8], server_nonce: &str) -> Result<(Self, Vec<u8>), String> {
        let text = std::str::from_utf8(message).map_err(|_| "SCRAM message is not UTF-8".to_string())?;
        let bad = || "malformed SCRAM client-first message".to_string();
        let mut gs2 = text.splitn(3, ',');
        let (Some(cb), Some(authzid), Some(bare)) = (gs2.next(), gs2.next(), gs2.next()) else {
            return Err(bad());
        };
        if cb != "n" && cb != "y" {
            return Err("SCRAM channel binding is not supported".into());
        }
        let gs2_header = format!("{cb},{authzid},");
        let mut user = None;
        let mut client_nonce = None;
        for attr in bare.split(',') {
            match attr.split_once('=') {
                Some(("n", v)) => user = unescape_saslname(v),
                Some(("r", v)) => client_nonce = Some(v),
                Some(("m", _)) => return Err("SCRAM extensions are not supported".into()),
                _ => {}
            }
        }
        let (Some(user), Some(client_nonce)) = (user, client_nonce) else {
            return Err(bad());
        };
        if client_nonce.is_empty() || user.is_empty() {
            return Err(bad());
        }
        if let Some(a) = authzid.strip_prefix("a=") {
            if unescape_saslname(a).as_deref() != Some(user.as_str()) {
                return Err("SCRAM: acting as another user is not allowed".into());
            }
        }
        let credential = auth.credential(&user, hash).cloned();
        // An unknown user gets a made-up salt and fails at the proof, as a
        // wrong password does.
        let (salt, iterations) = match &credential {
            Some(c) => (c.salt.clone(), c.iterations),
            None => auth.decoy(&user, hash),
        };
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!("r={nonce},s={},i={iterations}", B64.encode(salt));
        let reply = server_first.clone().into_bytes();
        Ok((
            Self { hash, user, credential, gs2_header, client_first_bare: bare.to_string(), server_first, nonce },
            reply,
        ))
    }

    /// Reads the client-final message: the user and the server-final message
    /// on success.
    fn finish(self, message: &[u8]) -> Result<(String, Vec<u8>), String> {
        let text = std::str::from_utf8(message).map_err(|_| "SCRAM message is not UTF-8".to_string())?;
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or_else(|| "SCRAM client-final lacks p=".to_string())?;
        let mut binding = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            match attr.split_once('=') {
                Some(("c", v)) => binding = Some(v),
                Some(("r", v)) => nonce = Some(v),
                _ => {}
            }
        }
        if binding != Some(B64.encode(&self.gs2_header).as_str()) {
            return Err("SCRAM channel binding does not match".into());
        }
        // RFC 5802 wants the nonce back exactly; librdkafka before 2.1 sends
        // its client nonce once more in front of it. Kafka's broker accepts a
        // nonce that ends with the one it sent, and so does Causeway: the
        // server's fresh part is still required, and the proof covers the
        // message as the client wrote it.
        if !nonce.is_some_and(|n| n.ends_with(self.nonce.as_str())) {
            return Err("SCRAM nonce does not match".into());
        }
        let proof = B64.decode(proof).map_err(|_| "SCRAM proof is not base64".to_string())?;
        let Some(credential) = &self.credential else {
            return Err(INVALID.into());
        };
        let auth_message = format!("{},{},{}", self.client_first_bare, self.server_first, without_proof);
        let client_signature = hmac_sign(self.hash, &credential.stored_key, auth_message.as_bytes());
        if proof.len() != client_signature.len() {
            return Err(INVALID.into());
        }
        let client_key: Vec<u8> = proof.iter().zip(&client_signature).map(|(a, b)| a ^ b).collect();
        let stored = digest::digest(self.hash.digest(), &client_key);
        if !ring_eq(stored.as_ref(), &credential.stored_key) {
            return Err(INVALID.into());
        }
        let server_signature = hmac_sign(self.hash, &credential.server_key, auth_message.as_bytes());
        Ok((self.user, format!("v={}", B64.encode(server_signature)).into_bytes()))
    }
}

/// Where one connection is in authenticating.
#[derive(Debug, Default)]
pub struct Login {
    /// The mechanism chosen by the last SaslHandshake.
    chosen: Option<Mechanism>,
    scram: Option<ScramServer>,
    /// The authenticated user, once a login succeeded.
    user: Option<String>,
    /// When the authentication runs out (KIP-368).
    expires: Option<Instant>,
}

/// What a SaslAuthenticate step answers.
#[derive(Debug)]
pub enum Step {
    /// Send these bytes; the exchange goes on.
    Continue(Vec<u8>),
    /// Logged in (or in again); send these bytes. Lifetime in ms, 0: none.
    Done(Vec<u8>, i64),
    /// Refused with this message: answer it, then close the connection.
    Failed(String),
}

impl Login {
    /// Whether the connection may send other requests now.
    pub fn authenticated(&self, now: Instant) -> bool {
        self.user.is_some() && self.expires.is_none_or(|t| now < t)
    }

    /// The user name of the last login.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Whether the connection logged in at least once.
    pub fn logged_in(&self) -> bool {
        self.user.is_some()
    }

    /// Whether an authentication ran out (the connection must close).
    pub fn expired(&self, now: Instant) -> bool {
        self.user.is_some() && self.expires.is_some_and(|t| now >= t)
    }

    /// `User:NAME` once logged in.
    pub fn principal(&self) -> Option<String> {
        self.user.as_ref().map(|u| format!("User:{u}"))
    }

    /// SaslHandshake: `Ok` if `mechanism` is offered.
    pub fn handshake(&mut self, auth: &Authenticator, mechanism: &str) -> bool {
        self.scram = None;
        self.chosen = Mechanism::parse(mechanism).filter(|m| auth.mechanisms().contains(m));
        self.chosen.is_some()
    }

    /// One SaslAuthenticate token.
    pub fn authenticate(&mut self, auth: &Authenticator, token: &[u8]) -> Step {
        let Some(mechanism) = self.chosen else {
            return Step::Failed("SaslAuthenticate before a successful SaslHandshake".into());
        };
        let outcome = match (mechanism.scram(), self.scram.take()) {
            (None, _) => auth.plain(token).map(|user| (user, Vec::new())),
            (Some(hash), None) => {
                let mut nonce = [0u8; 18];
                if ring::rand::SystemRandom::new().fill(&mut nonce).is_err() {
                    return Step::Failed("no randomness for a SCRAM nonce".into());
                }
                match ScramServer::start(auth, hash, token, &B64.encode(nonce)) {
                    Ok((server, reply)) => {
                        self.scram = Some(server);
                        return Step::Continue(reply);
                    }
                    Err(e) => Err(e),
                }
            }
            (Some(_), Some(server)) => server.finish(token),
        };
        match outcome {
            Ok((user, reply)) => {
                self.chosen = None;
                if self.user.as_ref().is_some_and(|was| *was != user) {
                    return Step::Failed("re-authentication may not change the principal".into());
                }
                self.user = Some(user);
                let lifetime = auth.lifetime();
                self.expires = lifetime.map(|l| Instant::now() + l);
                Step::Done(reply, lifetime.map_or(0, |l| l.as_millis().min(i64::MAX as u128) as i64))
            }
            Err(e) => Step::Failed(e),
        }
    }
}

/// The client side of SCRAM, for logging in to a backend broker.
pub struct ScramClient {
    hash: Hash,
    password: String,
    client_first_bare: String,
    nonce: String,
}

/// The password stays out of logs and panics.
impl std::fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramClient").field("hash", &self.hash).finish_non_exhaustive()
    }
}

/// `,` and `=` in a SASL name, escaped.
fn escape_saslname(s: &str) -> String {
    s.replace('=', "=3D").replace(',', "=2C")
}

impl ScramClient {
    /// The client-first message for `user`.
    pub fn start(mechanism: Mechanism, user: &str, password: &str) -> Result<(Self, Vec<u8>), String> {
        let hash = mechanism.scram().ok_or_else(|| format!("{} is not SCRAM", mechanism.name()))?;
        let mut raw = [0u8; 18];
        ring::rand::SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| "no randomness for a SCRAM nonce".to_string())?;
        Ok(Self::start_with_nonce(hash, user, password, &B64.encode(raw)))
    }

    fn start_with_nonce(hash: Hash, user: &str, password: &str, nonce: &str) -> (Self, Vec<u8>) {
        let client_first_bare = format!("n={},r={nonce}", escape_saslname(user));
        let message = format!("n,,{client_first_bare}").into_bytes();
        (Self { hash, password: password.to_string(), client_first_bare, nonce: nonce.to_string() }, message)
    }

    /// Reads the server-first message: the client-final message, and what the
    /// server's final message must say.
    pub fn proof(&self, server_first: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
        let text = std::str::from_utf8(server_first).map_err(|_| "SCRAM server-first is not UTF-8".to_string())?;
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for attr in text.split(',') {
            match attr.split_once('=') {
                Some(("r", v)) => nonce = Some(v),
                Some(("s", v)) => salt = B64.decode(v).ok(),
                Some(("i", v)) => iterations = v.parse::<u32>().ok(),
                Some(("e", v)) => return Err(format!("the broker refused the login: {v}")),
                _ => {}
            }
        }
        let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
            return Err("malformed SCRAM server-first message".into());
        };
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err("the broker's SCRAM nonce does not extend ours".into());
        }
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(format!("the broker asks for {iterations} SCRAM iterations"));
        }
        let salted = salted_password(self.hash, &self.password, &salt, iterations);
        let client_key = hmac_sign(self.hash, &salted, b"Client Key");
        let stored_key = digest::digest(self.hash.digest(), &client_key);
        let server_key = hmac_sign(self.hash, &salted, b"Server Key");
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let signature = hmac_sign(self.hash, stored_key.as_ref(), auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
        let expected = format!("v={}", B64.encode(hmac_sign(self.hash, &server_key, auth_message.as_bytes())));
        Ok((format!("{without_proof},p={}", B64.encode(proof)).into_bytes(), expected.into_bytes()))
    }
}

/// Relative credential file paths are taken from `dir`.
pub fn resolve_paths(sasl: &mut SaslConfig, dir: &Path) {
    if Path::new(&sasl.credentials).is_relative() {
        sasl.credentials = dir.join(&sasl.credentials).display().to_string();
    }
}

/// Every problem with `[gateway.sasl]`.
pub fn validate(sasl: &SaslConfig) -> Vec<Problem> {
    match Authenticator::load(sasl) {
        Ok(_) => Vec::new(),
        Err(p) => p,
    }
}

/// Loads the authenticator for the gateway.
pub fn load(sasl: &SaslConfig) -> anyhow::Result<Arc<Authenticator>> {
    Authenticator::load(sasl).map(Arc::new).map_err(|problems| {
        anyhow::anyhow!(
            "{}",
            problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth_with(user: &str, password: &str) -> Authenticator {
        let mut creds = BTreeMap::new();
        for hash in [Hash::Sha256, Hash::Sha512] {
            creds.insert(hash, ScramCredential::derive(hash, password, b"24-bytes-of-salt-4-tests", 4096));
        }
        let users = BTreeMap::from([(user.to_string(), creds)]);
        Authenticator {
            mechanisms: vec![Mechanism::ScramSha256, Mechanism::ScramSha512, Mechanism::Plain],
            decoy_iterations: usual_iterations(&users),
            users,
            lifetime: None,
            login_timeout: Duration::from_secs(30),
            decoy: decoy_key().expect("a key"),
        }
    }

    /// RFC 7677, section 3: the SCRAM-SHA-256 example, byte for byte.
    #[test]
    fn rfc7677_example() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt");
        let mut creds = BTreeMap::new();
        creds.insert(Hash::Sha256, ScramCredential::derive(Hash::Sha256, "pencil", &salt, 4096));
        let auth = Authenticator {
            mechanisms: vec![Mechanism::ScramSha256],
            users: BTreeMap::from([("user".to_string(), creds)]),
            lifetime: None,
            login_timeout: Duration::from_secs(30),
            decoy: decoy_key().expect("a key"),
            decoy_iterations: BTreeMap::new(),
        };
        let (server, first) =
            ScramServer::start(&auth, Hash::Sha256, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO", "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
                .expect("first");
        assert_eq!(
            first,
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".to_vec()
        );
        let (user, last) = server
            .finish(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .expect("final");
        assert_eq!(user, "user");
        assert_eq!(last, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec());
    }

    #[test]
    fn a_wrong_proof_or_unknown_user_fails_alike() {
        let auth = auth_with("user", "pencil");
        let (server, _) =
            ScramServer::start(&auth, Hash::Sha256, b"n,,n=user,r=abc", "xyz").expect("first");
        let bad = format!("c=biws,r=abcxyz,p={}", B64.encode([0u8; 32]));
        assert_eq!(server.finish(bad.as_bytes()).err().as_deref(), Some(INVALID));
        let (server, first) = ScramServer::start(&auth, Hash::Sha256, b"n,,n=nobody,r=abc", "xyz").expect("first");
        assert!(first.starts_with(b"r=abcxyz,s="), "an unknown user gets a salt too");
        assert_eq!(server.finish(bad.as_bytes()).err().as_deref(), Some(INVALID));
    }

    #[test]
    fn an_unknown_user_looks_like_a_known_one() {
        let auth = auth_with("user", "pencil");
        let first = |user: &str| {
            let msg = format!("n,,n={user},r=abc");
            let (_, first) = ScramServer::start(&auth, Hash::Sha256, msg.as_bytes(), "xyz").expect("first");
            String::from_utf8(first).expect("utf-8")
        };
        let salt_and_iterations = |reply: String| reply.split_once(",s=").map(|(_, rest)| rest.to_string()).expect("s=");
        let known = salt_and_iterations(first("user"));
        let unknown = salt_and_iterations(first("nobody"));
        // The same iterations as real users, a salt as long as theirs, and
        // the same salt each time (a changing one would give it away).
        assert_eq!(known.split_once(",i=").map(|x| x.1), unknown.split_once(",i=").map(|x| x.1));
        assert_eq!(known.len(), unknown.len());
        assert_eq!(unknown, salt_and_iterations(first("nobody")));
        assert_ne!(unknown, salt_and_iterations(first("nobody2")));
        // Not a digest of the name anyone could compute.
        let digest = B64.encode(&digest::digest(&digest::SHA256, b"nobody").as_ref()[..24]);
        assert!(!unknown.starts_with(&digest));
    }

    #[test]
    fn malformed_scram_messages_are_errors() {
        let auth = auth_with("user", "pencil");
        for msg in [&b""[..], b"n", b"p=tls-unique,,n=user,r=a", b"n,,n=user", b"n,,r=abc", b"n,a=other,n=user,r=a", b"\xff\xfe", b"n,,n=us=ZZer,r=a"] {
            assert!(ScramServer::start(&auth, Hash::Sha256, msg, "s").is_err(), "{msg:?}");
        }
        let (server, _) = ScramServer::start(&auth, Hash::Sha256, b"n,,n=user,r=abc", "xyz").expect("first");
        assert_eq!(server.finish(b"c=biws,r=WRONG,p=AAAA").err().as_deref(), Some("SCRAM nonce does not match"));
        let (server, _) = ScramServer::start(&auth, Hash::Sha256, b"n,,n=user,r=abc", "xyz").expect("first");
        assert_eq!(server.finish(b"c=biws,r=abcxy,p=AAAA").err().as_deref(), Some("SCRAM nonce does not match"));
    }

    #[test]
    fn plain_checks_the_password_against_the_scram_keys() {
        let auth = auth_with("alice", "s3cret");
        assert_eq!(auth.plain(b"\0alice\0s3cret"), Ok("alice".into()));
        assert_eq!(auth.plain(b"alice\0alice\0s3cret"), Ok("alice".into()));
        assert!(auth.plain(b"\0alice\0wrong").is_err());
        assert!(auth.plain(b"\0bob\0s3cret").is_err());
        assert!(auth.plain(b"bob\0alice\0s3cret").is_err(), "no acting as another user");
        assert!(auth.plain(b"alice").is_err());
        assert!(auth.plain(b"\0alice\0s3cret\0extra").is_err());
    }

    #[test]
    fn a_login_goes_handshake_then_authenticate_and_keeps_its_principal() {
        let auth = auth_with("alice", "s3cret");
        let mut login = Login::default();
        assert!(matches!(login.authenticate(&auth, b"\0alice\0s3cret"), Step::Failed(_)), "no handshake yet");
        assert!(!login.handshake(&auth, "GSSAPI"));
        assert!(login.handshake(&auth, "PLAIN"));
        assert!(matches!(login.authenticate(&auth, b"\0alice\0s3cret"), Step::Done(_, 0)));
        assert!(login.authenticated(Instant::now()));
        assert_eq!(login.principal().as_deref(), Some("User:alice"));
        // Re-authentication as the same user is fine; as another, refused.
        assert!(login.handshake(&auth, "PLAIN"));
        assert!(matches!(login.authenticate(&auth, b"\0alice\0s3cret"), Step::Done(..)));
    }

    #[test]
    fn an_authentication_runs_out_after_its_lifetime() {
        let mut auth = auth_with("alice", "s3cret");
        auth.lifetime = Some(Duration::from_millis(1));
        let mut login = Login::default();
        assert!(login.handshake(&auth, "PLAIN"));
        assert!(matches!(login.authenticate(&auth, b"\0alice\0s3cret"), Step::Done(_, 1)));
        std::thread::sleep(Duration::from_millis(5));
        let now = Instant::now();
        assert!(login.expired(now) && !login.authenticated(now));
        // Logging in again restores it.
        auth.lifetime = Some(Duration::from_secs(60));
        assert!(login.handshake(&auth, "PLAIN"));
        assert!(matches!(login.authenticate(&auth, b"\0alice\0s3cret"), Step::Done(_, 60_000)));
        assert!(login.authenticated(Instant::now()));
    }

    /// RFC 7677's exchange from the client's side.
    #[test]
    fn the_client_side_computes_rfc7677s_proof() {
        let (client, first) = ScramClient::start_with_nonce(Hash::Sha256, "user", "pencil", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(first, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO".to_vec());
        let (last, expected) = client
            .proof(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
            .expect("proof");
        assert_eq!(
            last,
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=".to_vec()
        );
        assert_eq!(expected, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec());
        assert!(client.proof(b"r=someone-else,s=AAAA,i=4096").is_err(), "a nonce not extending ours");
        assert!(client.proof(b"r=rOprNGfwEbeRWgbNEkqOx,s=AAAA,i=1").is_err(), "too few iterations");
        assert!(client.proof(b"e=invalid-proof").is_err());
    }

    #[test]
    fn our_client_logs_in_to_our_server() {
        let auth = auth_with("svc,a=b", "pw");
        for mechanism in [Mechanism::ScramSha256, Mechanism::ScramSha512] {
            let mut login = Login::default();
            assert!(login.handshake(&auth, mechanism.name()));
            let (client, first) = ScramClient::start(mechanism, "svc,a=b", "pw").expect("start");
            let Step::Continue(server_first) = login.authenticate(&auth, &first) else { panic!("first") };
            let (last, expected) = client.proof(&server_first).expect("proof");
            let Step::Done(server_final, _) = login.authenticate(&auth, &last) else { panic!("final") };
            assert_eq!(server_final, expected);
            assert_eq!(login.principal().as_deref(), Some("User:svc,a=b"));
        }
    }

    #[test]
    fn credentials_round_trip_through_their_text_form() {
        let c = ScramCredential::new(Hash::Sha512, "pw", 8192).expect("new");
        assert_eq!(ScramCredential::parse(Hash::Sha512, &c.to_text()), Ok(c.clone()));
        assert!(c.accepts(Hash::Sha512, "pw") && !c.accepts(Hash::Sha512, "pW"));
        assert!(ScramCredential::parse(Hash::Sha256, &c.to_text()).is_err(), "a 512 key is no 256 key");
        let weak = c.to_text().replace("iterations=8192", "iterations=1");
        assert!(ScramCredential::parse(Hash::Sha512, &weak).is_err());
    }
}
