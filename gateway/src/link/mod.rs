//! Cluster linking: mirror topics that keep their source's partitions and offsets.
//!
//! A *link* joins two clusters the gateway knows, a source and a destination. A
//! *mirror* copies one source topic to a topic of the destination (named with the
//! link's prefix), partition for partition, offset for offset
//! ([`records`] says how, on a destination that numbers records itself). Each
//! partition is one task ([`mirror`]); links and mirrors persist on the
//! destination ([`store`]); the admin API and `causeway link` / `causeway mirror`
//! drive them.
//!
//! Clients read a mirror through Causeway: the proxy asks [`Views`] whether a
//! backend topic is a mirror, moves offsets by its partition's shift, shows
//! filler as markers, and refuses writes until the mirror is promoted or failed
//! over.

pub mod configs;
pub mod groups;
pub mod mirror;
pub mod records;
pub mod store;
pub mod wire;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::backend::{Backends, Cluster};
use crate::telemetry;

/// A link between two clusters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    pub name: String,
    pub source: String,
    pub destination: String,
    #[serde(default)]
    pub options: LinkOptions,
}

/// A link's options, set with `--config key=value` (Cluster Linking's names are
/// accepted too).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LinkOptions {
    /// Put before a source topic's name to name its mirror (`cluster.link.prefix`).
    #[serde(default)]
    pub prefix: String,
    /// Where a new mirror begins (`mirror.start.offset.spec`).
    #[serde(default)]
    pub start: Start,
    /// Copy committed offsets of source groups (`consumer.offset.sync.enable`).
    #[serde(default)]
    pub offset_sync: bool,
    /// How often, in milliseconds, 1000 at least (`consumer.offset.sync.ms`).
    #[serde(default = "default_offset_sync_ms")]
    pub offset_sync_ms: u64,
    /// Which groups: globs, `!glob` excludes, the last match wins
    /// (`consumer.offset.group.filters`).
    #[serde(default = "default_groups")]
    pub offset_sync_groups: String,
    /// How often mirror topic configs follow their source's, in milliseconds,
    /// 1000 at least (`topic.config.sync.ms`).
    #[serde(default = "default_config_sync_ms")]
    pub config_sync_ms: u64,
    /// Configs synced beyond [`configs::ALWAYS`] (`topic.config.sync.include`).
    #[serde(default)]
    pub config_sync_include: String,
    /// Mirror every source topic the filters match, as it appears
    /// (`auto.create.mirror.topics.enable`, `auto.create.mirror.topics.filters`:
    /// globs, `!glob` excludes, the last match wins).
    #[serde(default)]
    pub auto_create: bool,
    #[serde(default)]
    pub auto_create_filters: String,
}

fn default_config_sync_ms() -> u64 {
    5000
}

fn default_offset_sync_ms() -> u64 {
    5000
}

fn default_groups() -> String {
    "*".into()
}

impl Default for LinkOptions {
    fn default() -> Self {
        LinkOptions {
            prefix: String::new(),
            start: Start::Earliest,
            offset_sync: false,
            offset_sync_ms: default_offset_sync_ms(),
            offset_sync_groups: default_groups(),
            config_sync_ms: default_config_sync_ms(),
            config_sync_include: String::new(),
            auto_create: false,
            auto_create_filters: String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// Everything the source still holds.
    #[default]
    Earliest,
    /// Only what the source receives from now on.
    Latest,
}

impl LinkOptions {
    /// Sets one option from the command line's `key=value`.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "prefix" | "cluster.link.prefix" => {
                if !value.chars().all(topic_char) {
                    return Err(format!("{key}: '{value}' has characters a topic name cannot hold (letters, digits, '.', '_', '-')"));
                }
                self.prefix = value.to_string();
            }
            "start" | "mirror.start.offset.spec" => {
                self.start = match value {
                    "earliest" => Start::Earliest,
                    "latest" => Start::Latest,
                    other => return Err(format!("{key}: '{other}' is not earliest or latest")),
                }
            }
            "consumer.offset.sync.enable" => {
                self.offset_sync = match value {
                    "true" => true,
                    "false" => false,
                    other => return Err(format!("{key}: '{other}' is not true or false")),
                }
            }
            "consumer.offset.sync.ms" => {
                self.offset_sync_ms = match value.parse::<u64>() {
                    Ok(ms) if ms >= 1000 => ms,
                    _ => return Err(format!("{key}: '{value}' is not a whole number of milliseconds, 1000 or more")),
                }
            }
            "topic.config.sync.ms" => {
                self.config_sync_ms = match value.parse::<u64>() {
                    Ok(ms) if ms >= 1000 => ms,
                    _ => return Err(format!("{key}: '{value}' is not a whole number of milliseconds, 1000 or more")),
                }
            }
            "auto.create.mirror.topics.enable" => {
                self.auto_create = match value {
                    "true" => true,
                    "false" => false,
                    other => return Err(format!("{key}: '{other}' is not true or false")),
                }
            }
            "auto.create.mirror.topics.filters" => {
                groups::GroupFilter::parse(value).map_err(|e| format!("{key}: {e}"))?;
                self.auto_create_filters = value.to_string();
            }
            "topic.config.sync.include" => {
                configs::parse_include(value).map_err(|e| format!("{key}: {e}"))?;
                self.config_sync_include = value.to_string();
            }
            "consumer.offset.group.filters" => {
                groups::GroupFilter::parse(value).map_err(|e| format!("{key}: {e}"))?;
                self.offset_sync_groups = value.to_string();
            }
            other => {
                return Err(format!(
                    "unknown link option '{other}' (known: cluster.link.prefix, mirror.start.offset.spec, consumer.offset.sync.enable, consumer.offset.sync.ms, consumer.offset.group.filters, topic.config.sync.ms, topic.config.sync.include, auto.create.mirror.topics.enable, auto.create.mirror.topics.filters)"
                ))
            }
        }
        Ok(())
    }
}

fn topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// A mirror's lasting state.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    /// Copying from the source.
    Active,
    /// Not copying; resumes where it stopped.
    Paused,
    /// Promoted or failed over: a normal topic clients may write.
    Stopped,
    /// Stopped by an error it cannot go past (the reason says which).
    Failed,
}

const STATES: [&str; 5] = ["ACTIVE", "PAUSED", "STOPPED", "FAILED", "SOURCE_UNAVAILABLE"];

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Active => "ACTIVE",
            State::Paused => "PAUSED",
            State::Stopped => "STOPPED",
            State::Failed => "FAILED",
        }
    }
}

/// A mirror topic, as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MirrorSpec {
    /// The mirror topic on the destination.
    pub name: String,
    pub link: String,
    pub source_topic: String,
    pub state: State,
    /// Why it failed, or how it stopped (promoted, failed over).
    #[serde(default)]
    pub reason: Option<String>,
    /// Per partition: source offset minus destination offset.
    pub shifts: BTreeMap<i32, i64>,
    /// The client-visible topic switched to this mirror when it was promoted or
    /// failed over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
}

/// What the proxy knows of a mirror topic.
#[derive(Debug)]
pub struct View {
    pub mirror: String,
    pub link: String,
    pub shifts: BTreeMap<i32, i64>,
    /// Promoted or failed over: clients may write.
    pub writable: bool,
}

impl View {
    pub fn shift(&self, partition: i32) -> i64 {
        self.shifts.get(&partition).copied().unwrap_or(0)
    }
}

/// Mirror topics by (cluster, backend topic name), for the proxy.
#[derive(Debug, Default)]
pub struct Views {
    any: AtomicBool,
    map: DashMap<(usize, String), Arc<View>>,
}

impl Views {
    pub fn get(&self, cluster: usize, topic: &str) -> Option<Arc<View>> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        self.map.get(&(cluster, topic.to_string())).map(|v| v.clone())
    }

    pub fn is_empty(&self) -> bool {
        !self.any.load(Ordering::Acquire)
    }

    fn set(&self, cluster: usize, spec: &MirrorSpec) {
        let view = View {
            mirror: spec.name.clone(),
            link: spec.link.clone(),
            shifts: spec.shifts.clone(),
            writable: spec.state == State::Stopped,
        };
        self.map.insert((cluster, spec.name.clone()), Arc::new(view));
        self.any.store(true, Ordering::Release);
    }
}

/// Why a link operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
}

impl LinkError {
    /// The HTTP status the admin API answers with.
    pub fn status(&self) -> u16 {
        match self {
            LinkError::Invalid(_) => 400,
            LinkError::NotFound(_) => 404,
            LinkError::Conflict(_) => 409,
            LinkError::Unavailable(_) => 503,
        }
    }
}

fn unavailable(e: anyhow::Error) -> LinkError {
    LinkError::Unavailable(format!("{e:#}"))
}

/// A mirror and its running tasks.
struct Running {
    spec: MirrorSpec,
    stop: Option<watch::Sender<bool>>,
    tasks: Vec<JoinHandle<()>>,
    statuses: Vec<Arc<Mutex<mirror::Status>>>,
}

#[derive(Default)]
struct Inner {
    links: BTreeMap<String, LinkSpec>,
    mirrors: BTreeMap<String, Running>,
    /// Clusters whose store has been read.
    loaded: HashSet<usize>,
    /// Each link's offset sync task, stopped by dropping its sender.
    syncs: BTreeMap<String, watch::Sender<bool>>,
}

/// What a link's topic config sync has done.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigSyncStatus {
    pub rounds: u64,
    /// Configs written to mirrors so far.
    pub configs_set: u64,
    pub last_at_ms: Option<i64>,
    pub last_error: Option<String>,
}

/// What a link's offset sync last did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncStatus {
    pub rounds: u64,
    pub last: Option<groups::Round>,
    /// Unix milliseconds of the last round that finished.
    pub last_at_ms: Option<i64>,
    pub last_error: Option<String>,
}

/// Every link and mirror of this gateway.
pub struct Links {
    backends: Backends,
    names: Vec<String>,
    pub views: Arc<Views>,
    inner: tokio::sync::Mutex<Inner>,
    failed: mpsc::UnboundedSender<(String, String)>,
    me: std::sync::Weak<Links>,
    sync_status: Mutex<BTreeMap<String, SyncStatus>>,
    config_status: Mutex<BTreeMap<String, ConfigSyncStatus>>,
    routes: Arc<crate::routing::RouteControl>,
}

/// The mirror operations of the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Pause,
    Resume,
    Promote,
    Failover,
}

impl Op {
    pub fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "pause" => Op::Pause,
            "resume" => Op::Resume,
            "promote" => Op::Promote,
            "failover" => Op::Failover,
            _ => return None,
        })
    }
}

impl Links {
    /// Starts reading stored links from each cluster as it comes up.
    pub fn start(backends: Backends, names: Vec<String>, routes: Arc<crate::routing::RouteControl>) -> Arc<Links> {
        let (failed, mut failures) = mpsc::unbounded_channel();
        let links = Arc::new_cyclic(|me| Links {
            backends,
            names,
            views: Arc::new(Views::default()),
            inner: tokio::sync::Mutex::new(Inner::default()),
            failed,
            me: me.clone(),
            sync_status: Mutex::new(BTreeMap::new()),
            config_status: Mutex::new(BTreeMap::new()),
            routes,
        });
        let weak = Arc::downgrade(&links);
        tokio::spawn(async move {
            while let Some((mirror, reason)) = failures.recv().await {
                let Some(links) = weak.upgrade() else { return };
                links.fail(&mirror, reason).await;
            }
        });
        let weak = Arc::downgrade(&links);
        tokio::spawn(async move {
            loop {
                let Some(links) = weak.upgrade() else { return };
                if links.load_ready().await {
                    return;
                }
                drop(links);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        links
    }

    fn cluster(&self, name: &str) -> Result<(usize, Arc<Cluster>), LinkError> {
        let i = self
            .names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| LinkError::Invalid(format!("no cluster named '{name}' (known: {})", self.names.join(", "))))?;
        let c = self.backends.cluster(i).cloned().ok_or_else(|| LinkError::Invalid(format!("no cluster '{name}'")))?;
        Ok((i, c))
    }

    /// Reads the store of every cluster that is up and not read yet; true once all are.
    async fn load_ready(&self) -> bool {
        let mut inner = self.inner.lock().await;
        self.load_into(&mut inner).await
    }

    async fn load_into(&self, inner: &mut Inner) -> bool {
        for (ci, cluster) in self.backends.clusters.iter().enumerate() {
            if inner.loaded.contains(&ci) || !cluster.is_ready() {
                continue;
            }
            match store::load(cluster).await {
                Ok(entries) => {
                    let mut links = BTreeMap::new();
                    let mut mirrors = BTreeMap::new();
                    for (key, value) in entries {
                        if let Some(name) = key.strip_prefix("link/") {
                            match value.map(|v| serde_json::from_slice::<LinkSpec>(&v)) {
                                Some(Ok(spec)) => drop(links.insert(name.to_string(), spec)),
                                Some(Err(e)) => tracing::warn!(cluster = %cluster.name, key, error = %e, "unreadable link record skipped"),
                                None => drop(links.remove(name)),
                            }
                        } else if let Some(name) = key.strip_prefix("mirror/") {
                            match value.map(|v| serde_json::from_slice::<MirrorSpec>(&v)) {
                                Some(Ok(spec)) => drop(mirrors.insert(name.to_string(), spec)),
                                Some(Err(e)) => tracing::warn!(cluster = %cluster.name, key, error = %e, "unreadable mirror record skipped"),
                                None => drop(mirrors.remove(name)),
                            }
                        }
                    }
                    tracing::info!(cluster = %cluster.name, links = links.len(), mirrors = mirrors.len(), "links loaded");
                    inner.loaded.insert(ci);
                    for (name, spec) in links {
                        if self.names.contains(&spec.source) && spec.destination == cluster.name {
                            self.start_sync(inner, &spec);
                            inner.links.insert(name, spec);
                        } else {
                            tracing::warn!(link = %name, "stored link names clusters this gateway does not have; ignored");
                        }
                    }
                    for (name, spec) in mirrors {
                        self.views.set(ci, &spec);
                        if let (Some(topic), State::Stopped) = (&spec.route, spec.state) {
                            if let Err(e) = self.routes.switch_topic(topic, &cluster.name, &spec.name) {
                                tracing::warn!(mirror = %name, topic, error = ?e, "switched route not restored");
                            }
                        }
                        inner.mirrors.insert(
                            name.clone(),
                            Running { spec, stop: None, tasks: Vec::new(), statuses: Vec::new() },
                        );
                        if inner.mirrors.get(&name).is_some_and(|m| m.spec.state == State::Active) {
                            if let Err(e) = self.run(inner, &name) {
                                tracing::warn!(mirror = %name, error = %e, "mirror not started");
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(cluster = %cluster.name, error = %format!("{e:#}"), "cannot read links yet"),
            }
        }
        inner.loaded.len() == self.backends.clusters.len()
    }

    /// Refuses an operation on `cluster` until its stored links are read (read
    /// now if the cluster is up).
    async fn loaded(&self, inner: &mut Inner, ci: usize, name: &str) -> Result<(), LinkError> {
        if !inner.loaded.contains(&ci) {
            self.load_into(inner).await;
        }
        if inner.loaded.contains(&ci) {
            Ok(())
        } else {
            Err(LinkError::Unavailable(format!("cluster '{name}' is not reachable yet; its links are not loaded")))
        }
    }

    pub async fn create_link(&self, spec: LinkSpec) -> Result<serde_json::Value, LinkError> {
        if spec.name.is_empty() || spec.name.len() > 100 || !spec.name.chars().all(topic_char) {
            return Err(LinkError::Invalid(format!(
                "link name '{}' must be 1-100 letters, digits, '.', '_' or '-'",
                spec.name
            )));
        }
        let (_, _) = self.cluster(&spec.source)?;
        let (di, dest) = self.cluster(&spec.destination)?;
        if spec.source == spec.destination {
            return Err(LinkError::Invalid("a link's source and destination must be different clusters".into()));
        }
        let mut inner = self.inner.lock().await;
        self.loaded(&mut inner, di, &spec.destination).await?;
        if inner.links.contains_key(&spec.name) {
            return Err(LinkError::Conflict(format!("link '{}' exists", spec.name)));
        }
        let value = serde_json::to_vec(&spec).map_err(|e| LinkError::Invalid(e.to_string()))?;
        store::save(&dest, &format!("link/{}", spec.name), Some(Bytes::from(value)))
            .await
            .map_err(unavailable)?;
        tracing::info!(link = %spec.name, source = %spec.source, destination = %spec.destination, "link created");
        let out = link_json(&spec, 0);
        self.start_sync(&mut inner, &spec);
        inner.links.insert(spec.name.clone(), spec);
        Ok(out)
    }

    pub async fn delete_link(&self, name: &str) -> Result<serde_json::Value, LinkError> {
        let mut inner = self.inner.lock().await;
        let spec = inner.links.get(name).cloned().ok_or_else(|| LinkError::NotFound(format!("no link named '{name}'")))?;
        let busy: Vec<&str> = inner
            .mirrors
            .values()
            .filter(|m| m.spec.link == name && matches!(m.spec.state, State::Active | State::Paused))
            .map(|m| m.spec.name.as_str())
            .collect();
        if !busy.is_empty() {
            return Err(LinkError::Conflict(format!(
                "link '{name}' still mirrors {}; promote or fail them over first",
                busy.join(", ")
            )));
        }
        let (_, dest) = self.cluster(&spec.destination)?;
        store::save(&dest, &format!("link/{name}"), None).await.map_err(unavailable)?;
        inner.links.remove(name);
        inner.syncs.remove(name);
        if let Ok(mut s) = self.sync_status.lock() {
            s.remove(name);
        }
        if let Ok(mut s) = self.config_status.lock() {
            s.remove(name);
        }
        tracing::info!(link = %name, "link deleted");
        Ok(serde_json::json!({"deleted": name}))
    }

    pub async fn list_links(&self) -> serde_json::Value {
        let inner = self.inner.lock().await;
        let list: Vec<_> = inner
            .links
            .values()
            .map(|l| link_json(l, inner.mirrors.values().filter(|m| m.spec.link == l.name).count()))
            .collect();
        serde_json::json!({ "links": list })
    }

    pub async fn describe_link(&self, name: &str) -> Result<serde_json::Value, LinkError> {
        let inner = self.inner.lock().await;
        let l = inner.links.get(name).ok_or_else(|| LinkError::NotFound(format!("no link named '{name}'")))?;
        let mirrors: Vec<_> = inner.mirrors.values().filter(|m| m.spec.link == name).map(mirror_summary).collect();
        let mut out = link_json(l, mirrors.len());
        out["mirrors"] = serde_json::Value::Array(mirrors);
        if l.options.offset_sync {
            let status = self.sync_status.lock().ok().and_then(|s| s.get(name).cloned()).unwrap_or_default();
            out["offset_sync"] = serde_json::to_value(status).unwrap_or_default();
        }
        let status = self.config_status.lock().ok().and_then(|s| s.get(name).cloned()).unwrap_or_default();
        out["config_sync"] = serde_json::to_value(status).unwrap_or_default();
        Ok(out)
    }

    /// Starts the offset sync of `link` if it asks for one.
    fn start_sync(&self, inner: &mut Inner, link: &LinkSpec) {
        let (Ok((_, source)), Ok((_, dest))) = (self.cluster(&link.source), self.cluster(&link.destination)) else {
            return;
        };
        let (stop, stopped) = watch::channel(false);
        inner.syncs.insert(link.name.clone(), stop);
        self.start_config_sync(link, source.clone(), dest.clone(), stopped.clone());
        if !link.options.offset_sync {
            return;
        }
        let mut stopped = stopped;
        let Ok(filter) = groups::GroupFilter::parse(&link.options.offset_sync_groups) else { return };
        let me = self.me.clone();
        let name = link.name.clone();
        let every = Duration::from_millis(link.options.offset_sync_ms.max(1000));
        tokio::spawn(async move {
            let mut written = groups::Written::new();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped.changed() => return,
                }
                let Some(links) = me.upgrade() else { return };
                // Mirrors still copying: promoted ones belong to their consumers now.
                let pairs: std::collections::HashMap<String, (String, Vec<i32>)> = {
                    let inner = links.inner.lock().await;
                    inner
                        .mirrors
                        .values()
                        .filter(|m| m.spec.link == name && matches!(m.spec.state, State::Active | State::Paused))
                        .map(|m| (m.spec.source_topic.clone(), (m.spec.name.clone(), m.spec.shifts.keys().copied().collect())))
                        .collect()
                };
                let outcome = groups::sync(&source, &dest, &pairs, &filter, &mut written).await;
                if let Ok(mut all) = links.sync_status.lock() {
                    let s = all.entry(name.clone()).or_default();
                    s.rounds += 1;
                    match outcome {
                        Ok(round) => {
                            if round.offsets > 0 {
                                tracing::debug!(link = %name, groups = round.groups, offsets = round.offsets, "consumer offsets synced");
                            }
                            s.last = Some(round);
                            s.last_at_ms = Some(mirror::now_ms());
                            s.last_error = None;
                        }
                        Err(e) => {
                            tracing::warn!(link = %name, error = %format!("{e:#}"), "consumer offset sync failed");
                            s.last_error = Some(format!("{e:#}"));
                        }
                    }
                };
            }
        });
    }

    /// Keeps the configs of the link's copying mirrors in step with their sources.
    fn start_config_sync(&self, link: &LinkSpec, source: Arc<Cluster>, dest: Arc<Cluster>, mut stopped: watch::Receiver<bool>) {
        let include = configs::parse_include(&link.options.config_sync_include).unwrap_or_default();
        let auto_create = link
            .options
            .auto_create
            .then(|| groups::GroupFilter::parse(&link.options.auto_create_filters).ok())
            .flatten();
        let me = self.me.clone();
        let name = link.name.clone();
        let every = Duration::from_millis(link.options.config_sync_ms.max(1000));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped.changed() => return,
                }
                let Some(links) = me.upgrade() else { return };
                if let Some(filter) = &auto_create {
                    links.auto_create(&name, &source, filter).await;
                }
                let pairs: Vec<(String, String)> = {
                    let inner = links.inner.lock().await;
                    inner
                        .mirrors
                        .values()
                        .filter(|m| m.spec.link == name && matches!(m.spec.state, State::Active | State::Paused))
                        .map(|m| (m.spec.source_topic.clone(), m.spec.name.clone()))
                        .collect()
                };
                let mut changed = 0usize;
                let mut error = None;
                for (topic, mirror) in pairs {
                    let outcome = async {
                        let want = wire::topic_configs(&source, &topic).await?;
                        let have = wire::topic_configs(&dest, &mirror).await?;
                        let set = configs::changes(&want, &have, &include);
                        if !set.is_empty() {
                            wire::set_topic_configs(&dest, &mirror, &set).await?;
                            tracing::info!(mirror = %mirror, configs = ?set, "topic configs synced");
                        }
                        Ok::<_, anyhow::Error>(set.len())
                    };
                    match outcome.await {
                        Ok(n) => changed += n,
                        Err(e) => error = Some(format!("{mirror}: {e:#}")),
                    }
                }
                if let Ok(mut all) = links.config_status.lock() {
                    let s = all.entry(name.clone()).or_default();
                    s.rounds += 1;
                    s.configs_set += changed as u64;
                    s.last_at_ms = Some(mirror::now_ms());
                    if let Some(e) = &error {
                        tracing::warn!(link = %name, error = %e, "topic config sync failed");
                    }
                    s.last_error = error;
                };
            }
        });
    }

    /// Mirrors each source topic `filter` matches that link `name` does not mirror yet.
    async fn auto_create(&self, name: &str, source: &Cluster, filter: &groups::GroupFilter) {
        if let Err(e) = source.refresh(None).await {
            tracing::debug!(link = name, error = %e, "source topics not listed");
            return;
        }
        let mirrored: HashSet<String> = {
            let inner = self.inner.lock().await;
            inner.mirrors.values().filter(|m| m.spec.link == name).map(|m| m.spec.source_topic.clone()).collect()
        };
        let mut topics: Vec<String> = source
            .snapshot()
            .topics
            .keys()
            .filter(|t| !t.starts_with("__") && filter.matches(t) && !mirrored.contains(*t))
            .cloned()
            .collect();
        topics.sort();
        for topic in topics {
            match self.create_mirror(&topic, name, None).await {
                Ok(_) => tracing::info!(link = name, topic, "mirror created for a new source topic"),
                Err(e) => tracing::warn!(link = name, topic, error = %e, "no mirror created for a source topic"),
            }
        }
    }

    /// Creates the mirror of source `topic` over `link` and starts it.
    pub async fn create_mirror(&self, topic: &str, link: &str, name: Option<&str>) -> Result<serde_json::Value, LinkError> {
        let mut inner = self.inner.lock().await;
        let spec = inner.links.get(link).cloned().ok_or_else(|| LinkError::NotFound(format!("no link named '{link}'")))?;
        let (_, source) = self.cluster(&spec.source)?;
        let (di, dest) = self.cluster(&spec.destination)?;
        self.loaded(&mut inner, di, &spec.destination).await?;
        let name = name.map_or_else(|| format!("{}{topic}", spec.options.prefix), str::to_string);
        if name.is_empty() || name.len() > 249 || !name.chars().all(topic_char) || name == store::TOPIC {
            return Err(LinkError::Invalid(format!("'{name}' cannot name a mirror topic")));
        }
        if inner.mirrors.contains_key(&name) {
            return Err(LinkError::Conflict(format!("mirror '{name}' exists")));
        }
        let partitions = wire::partitions(&source, topic)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| LinkError::NotFound(format!("cluster '{}' has no topic '{topic}'", spec.source)))?;
        let all: Vec<i32> = (0..partitions).collect();
        // The mirror starts with its source's synced configs (a compacted source
        // makes a compacted mirror from its first record).
        let include = configs::parse_include(&spec.options.config_sync_include).unwrap_or_default();
        let initial = match wire::topic_configs(&source, topic).await {
            Ok(c) => configs::synced(&c, &include),
            Err(e) => {
                tracing::warn!(topic, error = %format!("{e:#}"), "source topic configs not read; the mirror starts with the destination's defaults");
                Vec::new()
            }
        };
        // A destination topic may only be taken over while empty (a create that
        // stopped half way); anything else is someone's data.
        let created = wire::create_topic(&dest, &name, partitions, &initial).await.map_err(unavailable)?;
        let mut dest_end = std::collections::HashMap::new();
        for attempt in 0..200 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            match wire::partitions(&dest, &name).await {
                Ok(Some(n)) if n == partitions && all.iter().all(|&p| dest.leader(&name, p).is_some_and(|l| l >= 0)) => {
                    let mut ends = std::collections::HashMap::new();
                    let mut failed = None;
                    for &p in &all {
                        match wire::log_end(&dest, &name, p).await {
                            Ok((end, _)) => drop(ends.insert(p, end)),
                            Err(e) => failed = Some(e),
                        }
                    }
                    match failed {
                        None => {
                            dest_end = ends;
                            break;
                        }
                        Some(e) if attempt == 199 => return Err(unavailable(e)),
                        Some(_) => {}
                    }
                }
                Ok(Some(n)) if !created && n != partitions => {
                    return Err(LinkError::Conflict(format!(
                        "cluster '{}' already has a topic '{name}' with {n} partitions (the source has {partitions})",
                        spec.destination
                    )))
                }
                Err(e) if attempt == 199 => return Err(unavailable(e)),
                _ => {}
            }
        }
        if !created && dest_end.values().any(|&e| e > 0) {
            return Err(LinkError::Conflict(format!(
                "cluster '{}' already has a topic '{name}' holding records; a mirror starts on an empty topic",
                spec.destination
            )));
        }
        let start = match spec.options.start {
            Start::Earliest => wire::EARLIEST,
            Start::Latest => wire::LATEST,
        };
        let from = match start {
            wire::LATEST => {
                let mut ends = std::collections::HashMap::new();
                for &p in &all {
                    ends.insert(p, wire::log_end(&source, topic, p).await.map_err(unavailable)?.1);
                }
                ends
            }
            _ => wire::list_offsets(&source, topic, &all, start, true).await.map_err(unavailable)?,
        };
        let shifts: BTreeMap<i32, i64> = all
            .iter()
            .map(|p| (*p, from.get(p).copied().unwrap_or(0) - dest_end.get(p).copied().unwrap_or(0)))
            .collect();
        let mirror = MirrorSpec {
            name: name.clone(),
            link: link.to_string(),
            source_topic: topic.to_string(),
            state: State::Active,
            reason: None,
            shifts,
            route: None,
        };
        self.save(&dest, &mirror).await?;
        self.views.set(di, &mirror);
        inner.mirrors.insert(name.clone(), Running { spec: mirror, stop: None, tasks: Vec::new(), statuses: Vec::new() });
        self.run(&mut inner, &name)?;
        tracing::info!(mirror = %name, link, source_topic = topic, partitions, "mirror created");
        Ok(inner.mirrors.get(&name).map(mirror_summary).unwrap_or_default())
    }

    async fn save(&self, dest: &Cluster, spec: &MirrorSpec) -> Result<(), LinkError> {
        let value = serde_json::to_vec(spec).map_err(|e| LinkError::Invalid(e.to_string()))?;
        store::save(dest, &format!("mirror/{}", spec.name), Some(Bytes::from(value)))
            .await
            .map_err(unavailable)
    }

    /// Starts a task per partition of mirror `name`.
    fn run(&self, inner: &mut Inner, name: &str) -> Result<(), LinkError> {
        let running = inner.mirrors.get(name).ok_or_else(|| LinkError::NotFound(format!("no mirror named '{name}'")))?;
        let link = inner
            .links
            .get(&running.spec.link)
            .cloned()
            .ok_or_else(|| LinkError::NotFound(format!("mirror '{name}' names link '{}', which is gone", running.spec.link)))?;
        let (_, source) = self.cluster(&link.source)?;
        let (_, dest) = self.cluster(&link.destination)?;
        let running = inner.mirrors.get_mut(name).ok_or_else(|| LinkError::NotFound(name.to_string()))?;
        let (stop, stopped) = watch::channel(false);
        running.statuses.clear();
        for (&partition, &shift) in &running.spec.shifts {
            let status = Arc::new(Mutex::new(mirror::Status { partition, state: "starting", ..Default::default() }));
            running.statuses.push(status.clone());
            let job = mirror::Job {
                mirror: name.to_string(),
                source: source.clone(),
                destination: dest.clone(),
                source_topic: running.spec.source_topic.clone(),
                destination_topic: running.spec.name.clone(),
                partition,
                shift,
                status,
                stop: stopped.clone(),
                failed: self.failed.clone(),
            };
            running.tasks.push(tokio::spawn(mirror::run(job)));
        }
        running.stop = Some(stop);
        telemetry::mirror_state(name, "ACTIVE", &STATES);
        Ok(())
    }

    /// Stops the tasks of a mirror and waits for them (their produces settle).
    async fn halt(running: &mut Running) {
        if let Some(stop) = running.stop.take() {
            let _ = stop.send(true);
        }
        for task in running.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(35), task).await;
        }
    }

    async fn fail(&self, name: &str, reason: String) {
        let mut inner = self.inner.lock().await;
        let Some(link) = inner.mirrors.get(name).and_then(|m| inner.links.get(&m.spec.link)).cloned() else { return };
        let Some(running) = inner.mirrors.get_mut(name) else { return };
        if running.spec.state != State::Active {
            return;
        }
        Self::halt(running).await;
        running.spec.state = State::Failed;
        running.spec.reason = Some(reason);
        let spec = running.spec.clone();
        telemetry::mirror_state(name, "FAILED", &STATES);
        if let Ok((_, dest)) = self.cluster(&link.destination) {
            if let Err(e) = self.save(&dest, &spec).await {
                tracing::warn!(mirror = %name, error = %e, "FAILED state not stored");
            }
        }
    }

    /// Pause, resume, promote or fail over mirror `name`; a promote or failover
    /// with `switch_route` also routes the source topic's client name to the
    /// mirror, so clients go on through Causeway with no change.
    pub async fn operate(&self, name: &str, op: Op, switch_route: bool) -> Result<serde_json::Value, LinkError> {
        let mut inner = self.inner.lock().await;
        let running = inner.mirrors.get(name).ok_or_else(|| LinkError::NotFound(format!("no mirror named '{name}'")))?;
        let link = inner
            .links
            .get(&running.spec.link)
            .cloned()
            .ok_or_else(|| LinkError::Conflict(format!("mirror '{name}' names link '{}', which is gone", running.spec.link)))?;
        let (di, dest) = self.cluster(&link.destination)?;
        let (_, source) = self.cluster(&link.source)?;
        let state = running.spec.state;
        let refuse = |what: &str| {
            Err(LinkError::Conflict(format!("mirror '{name}' is {}; {what}", state.name())))
        };
        let next = match (op, state) {
            (Op::Pause, State::Active) => State::Paused,
            (Op::Pause, State::Paused) | (Op::Resume, State::Active) => {
                return Ok(inner.mirrors.get(name).map(mirror_summary).unwrap_or_default())
            }
            (Op::Resume, State::Paused | State::Failed) => State::Active,
            (Op::Promote | Op::Failover, State::Active | State::Paused) => State::Stopped,
            (Op::Failover, State::Failed) => State::Stopped,
            (_, State::Stopped) => return refuse("it is a normal topic now"),
            (Op::Promote, State::Failed) => return refuse("fail it over instead (promote needs a healthy mirror with no lag)"),
            (Op::Pause, State::Failed) => return refuse("there is nothing to pause"),
        };
        if switch_route && !matches!(op, Op::Promote | Op::Failover) {
            return Err(LinkError::Invalid("switch_route goes with promote or failover".into()));
        }
        let Some(running) = inner.mirrors.get_mut(name) else {
            return Err(LinkError::NotFound(name.to_string()));
        };
        // The source topic's name as clients know it: that is what switches.
        let client_topic = switch_route.then(|| {
            let (si, _) = self.cluster(&link.source).unwrap_or((0, source.clone()));
            self.routes
                .router()
                .client_name(si, &running.spec.source_topic)
                .map_or_else(|| running.spec.source_topic.clone(), |c| c.into_owned())
        });
        if let Some(topic) = &client_topic {
            if let Err(crate::routing::RouteChangeError::Invalid(problems)) =
                self.routes.check_switch(topic, &link.destination, &running.spec.name)
            {
                let list: Vec<String> = problems.iter().map(|p| format!("{}: {}", p.field, p.message)).collect();
                return Err(LinkError::Conflict(format!("cannot switch '{topic}' to the mirror: {}", list.join("; "))));
            }
        }
        Self::halt(running).await;
        if op == Op::Promote {
            // Only with nothing left to copy: every partition's committed end on the
            // source is where the mirror stands.
            let parts: Vec<i32> = running.spec.shifts.keys().copied().collect();
            let checked = async {
                let mut lagging = Vec::new();
                for &p in &parts {
                    let (_, source_end) = wire::log_end(&source, &running.spec.source_topic, p).await?;
                    let (dest_end, _) = wire::log_end(&dest, &running.spec.name, p).await?;
                    let lag = source_end - (dest_end + running.spec.shifts.get(&p).copied().unwrap_or(0));
                    if lag != 0 {
                        lagging.push((p, lag));
                    }
                }
                Ok::<_, anyhow::Error>(lagging)
            };
            let lagging = match checked.await {
                Ok(l) => l,
                Err(e) => {
                    if state == State::Active {
                        self.run(&mut inner, name)?;
                    }
                    return Err(unavailable(e));
                }
            };
            if !lagging.is_empty() {
                if state == State::Active {
                    self.run(&mut inner, name)?;
                }
                let list: Vec<String> = lagging.iter().map(|(p, l)| format!("partition {p}: {l}")).collect();
                return Err(LinkError::Conflict(format!(
                    "mirror '{name}' still lags its source ({}); promote needs zero lag (stop writing to the source, wait, or use failover)",
                    list.join(", ")
                )));
            }
        }
        let Some(running) = inner.mirrors.get_mut(name) else {
            return Err(LinkError::NotFound(name.to_string()));
        };
        let mut spec = running.spec.clone();
        spec.state = next;
        spec.reason = match op {
            Op::Promote => Some("promoted".into()),
            Op::Failover => Some("failed over".into()),
            _ => None,
        };
        if client_topic.is_some() {
            spec.route = client_topic.clone();
        }
        if let Err(e) = self.save(&dest, &spec).await {
            if state == State::Active {
                self.run(&mut inner, name)?;
            }
            return Err(e);
        }
        running.spec = spec.clone();
        self.views.set(di, &spec);
        if let Some(topic) = &client_topic {
            if let Err(e) = self.routes.switch_topic(topic, &link.destination, &spec.name) {
                tracing::error!(mirror = %name, topic, error = ?e, "route not switched");
                return Err(LinkError::Conflict(format!("mirror '{name}' is {}, but '{topic}' could not be switched to it", next.name())));
            }
        }
        telemetry::mirror_state(name, next.name(), &STATES);
        if next == State::Active {
            self.run(&mut inner, name)?;
        }
        tracing::info!(mirror = %name, op = ?op, state = next.name(), "mirror changed");
        Ok(inner.mirrors.get(name).map(mirror_summary).unwrap_or_default())
    }

    pub async fn list_mirrors(&self, link: Option<&str>) -> serde_json::Value {
        let inner = self.inner.lock().await;
        let list: Vec<_> = inner
            .mirrors
            .values()
            .filter(|m| link.is_none_or(|l| m.spec.link == l))
            .map(mirror_summary)
            .collect();
        serde_json::json!({ "mirrors": list })
    }

    pub async fn describe_mirror(&self, name: &str) -> Result<serde_json::Value, LinkError> {
        let inner = self.inner.lock().await;
        let m = inner.mirrors.get(name).ok_or_else(|| LinkError::NotFound(format!("no mirror named '{name}'")))?;
        let mut out = mirror_summary(m);
        let partitions: Vec<_> = m
            .statuses
            .iter()
            .filter_map(|s| s.lock().ok().map(|s| s.clone()))
            .map(|s| serde_json::to_value(s).unwrap_or_default())
            .collect();
        out["partitions"] = serde_json::Value::Array(partitions);
        out["shifts"] = serde_json::to_value(&m.spec.shifts).unwrap_or_default();
        Ok(out)
    }
}

fn link_json(l: &LinkSpec, mirrors: usize) -> serde_json::Value {
    serde_json::json!({
        "name": l.name,
        "source": l.source,
        "destination": l.destination,
        "config": {
            "cluster.link.prefix": l.options.prefix,
            "mirror.start.offset.spec": match l.options.start { Start::Earliest => "earliest", Start::Latest => "latest" },
            "consumer.offset.sync.enable": l.options.offset_sync.to_string(),
            "consumer.offset.sync.ms": l.options.offset_sync_ms.to_string(),
            "consumer.offset.group.filters": l.options.offset_sync_groups,
            "topic.config.sync.ms": l.options.config_sync_ms.to_string(),
            "topic.config.sync.include": l.options.config_sync_include,
            "auto.create.mirror.topics.enable": l.options.auto_create.to_string(),
            "auto.create.mirror.topics.filters": l.options.auto_create_filters,
        },
        "mirror_count": mirrors,
    })
}

/// A mirror's state as shown: the stored state, or SOURCE_UNAVAILABLE while an
/// active mirror cannot reach its source.
fn mirror_summary(m: &Running) -> serde_json::Value {
    let statuses: Vec<mirror::Status> = m.statuses.iter().filter_map(|s| s.lock().ok().map(|s| s.clone())).collect();
    let state = match m.spec.state {
        State::Active if statuses.iter().any(|s| s.state == "source_unavailable") => "SOURCE_UNAVAILABLE",
        State::Active if statuses.iter().any(|s| s.state == "starting") => "PENDING",
        s => s.name(),
    };
    let lag: i64 = statuses.iter().map(|s| s.lag).sum();
    let lag_ms = statuses.iter().map(|s| s.lag_ms).max().unwrap_or(0);
    let last_error = m.spec.reason.clone().filter(|_| m.spec.state == State::Failed).or_else(|| {
        statuses.iter().find_map(|s| s.last_error.clone())
    });
    serde_json::json!({
        "name": m.spec.name,
        "link": m.spec.link,
        "source_topic": m.spec.source_topic,
        "state": state,
        "reason": m.spec.reason,
        "partitions_count": m.spec.shifts.len(),
        "lag": lag,
        "lag_ms": lag_ms,
        "records": statuses.iter().map(|s| s.records).sum::<u64>(),
        "last_error": last_error,
        "route": m.spec.route,
    })
}
