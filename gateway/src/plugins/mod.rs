//! WebAssembly plugins: components built against `wit/plugin.wit`.
//!
//! One wasmtime [`Engine`] runs every plugin, with the pooling allocator, a memory
//! limit per instance and a CPU deadline per call (epoch interruption, ticked every
//! [`TICK`]). Each plugin keeps a few ready instances; a call takes one, and an
//! instance that traps (a panic, a deadline, a memory bomb) is dropped and a fresh
//! one made for the next call. A plugin that keeps failing is backed off: for a
//! while its failure policy applies without calling it. The gateway never stops
//! for a plugin.

pub mod acl;
pub mod batches;
pub mod cache;
pub mod filter;
pub mod rewrite;
pub mod router;
pub mod sandbox;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Deserialize;
pub use wasmtime::Engine;
use wasmtime::{Cache, CacheConfig, Config, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::config::Problem;

pub use acl::AclMapperPlugin;
pub use filter::{FilterChain, Outcome};
pub use router::RouterPlugin;

/// How often the CPU deadline clock ticks.
pub const TICK: Duration = Duration::from_millis(5);

/// One `[[plugins]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// A name for logs and metrics.
    pub name: String,
    /// `record-filter`, `router` or `acl-mapper`.
    pub kind: String,
    /// The component file (`.wasm`).
    pub path: String,
    /// Handed to the plugin's `init`.
    #[serde(default)]
    pub config: String,
    /// Where a filter runs: `produce` (the default), `fetch`, or both.
    /// Filters only.
    #[serde(default)]
    pub on: Option<Vec<String>>,
    /// Topics (client-visible names) the plugin sees: a name, prefix or glob.
    #[serde(default = "default_topics")]
    pub topics: String,
    /// Backend clusters whose topics the plugin sees; empty: every cluster.
    /// Filters only.
    #[serde(default)]
    pub clusters: Vec<String>,
    /// Principals the plugin sees (names, prefixes or globs); empty: everyone.
    #[serde(default)]
    pub principals: Vec<String>,
    /// What a failed call (trap, deadline, error) does: a filter's batch is
    /// rejected or passes on; a router's topic is unroutable or left to the
    /// gateway's own routes. `reject` or `pass`.
    #[serde(default = "default_on_error")]
    pub on_error: String,
    /// Memory limit per instance, in MiB.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u32,
    /// CPU deadline per call, in ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

impl PluginConfig {
    /// Where a filter runs.
    pub fn directions(&self) -> Vec<String> {
        self.on.clone().unwrap_or_else(|| vec!["produce".into()])
    }
}

/// The plugin kinds Causeway runs.
const KINDS: [&str; 3] = ["record-filter", "router", "acl-mapper"];
fn default_topics() -> String {
    "*".into()
}
fn default_on_error() -> String {
    "reject".into()
}
fn default_memory_mb() -> u32 {
    64
}
fn default_timeout_ms() -> u64 {
    100
}

/// Every problem with the `[[plugins]]` entries; `clusters` are the names
/// the config declares.
pub fn validate(plugins: &[PluginConfig], clusters: &[String]) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut problem = |field: String, message: String| out.push(Problem { field, message });
    for (i, p) in plugins.iter().enumerate() {
        let base = format!("plugins[{i}]");
        if p.name.is_empty() {
            problem(format!("{base}.name"), "is empty; give the plugin a name for logs and metrics".into());
        }
        if plugins.iter().take(i).any(|q| q.name == p.name) {
            problem(format!("{base}.name"), format!("'{}' is used twice; names must be unique", p.name));
        }
        if !KINDS.contains(&p.kind.as_str()) {
            problem(
                format!("{base}.kind"),
                format!(
                    "'{}' is not a plugin kind Causeway runs; use \"record-filter\", \"router\" or \"acl-mapper\"",
                    p.kind
                ),
            );
        }
        if p.kind == "router" {
            if plugins.iter().take(i).any(|q| q.kind == "router") {
                problem(format!("{base}.kind"), "a second router; Causeway runs one router plugin".into());
            }
            if p.on.is_some() {
                problem(format!("{base}.on"), "is for record filters; a router is asked wherever a topic is named".into());
            }
            if !p.clusters.is_empty() {
                problem(format!("{base}.clusters"), "is for record filters; a router chooses the cluster".into());
            }
        }
        if p.kind == "acl-mapper" {
            if plugins.iter().take(i).any(|q| q.kind == "acl-mapper") {
                problem(format!("{base}.kind"), "a second acl-mapper; Causeway runs one".into());
            }
            if p.on.is_some() || !p.clusters.is_empty() || p.topics != "*" || !p.principals.is_empty() {
                problem(
                    base.clone(),
                    "on, clusters, topics and principals are for filters and routers; an acl-mapper sees every request".into(),
                );
            }
            if p.on_error != "reject" {
                problem(format!("{base}.on_error"), "an acl-mapper always fails closed; remove on_error".into());
            }
        }
        if !std::path::Path::new(&p.path).is_file() {
            problem(
                format!("{base}.path"),
                format!("'{}' is not a file; build the plugin (scripts/build-plugins.sh) or fix the path", p.path),
            );
        }
        for c in p.clusters.iter().filter(|c| !clusters.contains(c)) {
            problem(
                format!("{base}.clusters"),
                format!("'{c}' is not a cluster of this config (known: {})", clusters.join(", ")),
            );
        }
        if p.principals.iter().any(|g| g.is_empty()) {
            problem(format!("{base}.principals"), "has an empty pattern".into());
        }
        if p.on.as_ref().is_some_and(|on| on.is_empty() || on.iter().any(|d| d != "produce" && d != "fetch")) {
            problem(format!("{base}.on"), "list \"produce\", \"fetch\" or both".into());
        }
        if p.on_error != "reject" && p.on_error != "pass" {
            problem(format!("{base}.on_error"), format!("'{}' is neither \"reject\" nor \"pass\"", p.on_error));
        }
        if p.memory_mb == 0 || p.memory_mb > 4096 {
            problem(format!("{base}.memory_mb"), format!("{} is outside 1..=4096", p.memory_mb));
        }
        if p.timeout_ms == 0 || p.timeout_ms > 60_000 {
            problem(format!("{base}.timeout_ms"), format!("{} is outside 1..=60000", p.timeout_ms));
        }
    }
    out
}

/// The engine all plugins share, with the epoch clock that enforces deadlines.
pub fn engine(max_memory_mb: u32) -> anyhow::Result<Engine> {
    build_engine(max_memory_mb, true)
}

/// The same engine with no CPU deadline: compiled code without the deadline's
/// checks, to measure what they cost (`benches/plugin-cost`). The gateway
/// never runs plugins this way: a plugin that loops would never return.
pub fn engine_without_deadline(max_memory_mb: u32) -> anyhow::Result<Engine> {
    build_engine(max_memory_mb, false)
}

fn build_engine(max_memory_mb: u32, deadline: bool) -> anyhow::Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(256)
        .total_core_instances(512)
        .total_memories(256)
        .total_tables(512)
        .max_memory_size((max_memory_mb as usize).max(1) << 20);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(deadline)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    // For plugin authors: `perf` then names each plugin function (see the
    // plugin guide, "Profiling").
    if std::env::var_os("CAUSEWAY_PLUGIN_PERFMAP").is_some_and(|v| v == "1") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    if let Some(dir) = cache_dir() {
        let mut cache = CacheConfig::new();
        cache.with_directory(&dir);
        match Cache::new(cache) {
            Ok(cache) => {
                tracing::debug!(dir = %dir.display(), "compiled plugin code is cached");
                let _ = CACHE.set(cache.clone());
                config.cache(Some(cache));
            }
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot cache compiled plugin code; compiling at every start"),
        }
    }
    let engine = Engine::new(&config)?;
    if !deadline {
        return Ok(engine);
    }
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("plugin-clock".into())
        .spawn(move || loop {
            std::thread::sleep(TICK);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
        })?;
    Ok(engine)
}

/// The compiled-code cache of the engine, to report hits.
static CACHE: OnceLock<Cache> = OnceLock::new();

/// Where compiled plugin code is kept between runs, so that a restart loads a
/// plugin without compiling it again: `CAUSEWAY_PLUGIN_CACHE` (a directory, or
/// `off`), else `$XDG_CACHE_HOME/causeway/plugins`, else
/// `$HOME/.cache/causeway/plugins`. Entries are keyed by the component's bytes
/// and the engine's settings, so a changed plugin or gateway never loads stale
/// code.
fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("CAUSEWAY_PLUGIN_CACHE") {
        Some(v) if v == "off" => None,
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|base| base.join("causeway").join("plugins")),
    }
}

/// Compiled components found in the cache so far, and compiled afresh.
pub fn cache_counts() -> Option<(usize, usize)> {
    CACHE.get().map(|c| (c.cache_hits(), c.cache_misses()))
}

/// The loaded plugins.
#[derive(Clone, Default)]
pub struct Plugins {
    /// Record filters, in config order.
    pub filters: Arc<FilterChain>,
    pub router: Option<Arc<RouterPlugin>>,
    pub acl: Option<Arc<AclMapperPlugin>>,
}

impl Plugins {
    /// Every plugin: name, kind, component path.
    pub fn list(&self) -> Vec<(&str, &'static str, &str)> {
        let filters = self.filters.filters().iter().map(|f| (&*f.sandbox.name, "record-filter", f.sandbox.path.as_str()));
        let router = self.router.iter().map(|r| (&*r.sandbox.name, "router", r.sandbox.path.as_str()));
        let acl = self.acl.iter().map(|a| (&*a.sandbox.name, "acl-mapper", a.sandbox.path.as_str()));
        filters.chain(router).chain(acl).collect()
    }

    /// Reloads the named plugin (every plugin with `None`); each name with
    /// the outcome.
    pub fn reload(&self, name: Option<&str>) -> Vec<(String, Result<(), String>)> {
        let mut out = self.filters.reload(name);
        if let Some(r) = self.router.as_ref().filter(|r| name.is_none_or(|n| *r.sandbox.name == *n)) {
            out.push((r.sandbox.name.to_string(), r.reload().map_err(|e| format!("{e:#}"))));
        }
        if let Some(a) = self.acl.as_ref().filter(|a| name.is_none_or(|n| *a.sandbox.name == *n)) {
            out.push((a.sandbox.name.to_string(), a.reload().map_err(|e| format!("{e:#}"))));
        }
        out
    }

    /// Reloads every plugin whose component file changed, every `every`, for
    /// as long as the plugins live.
    fn watch(&self, every: Duration) {
        if self.filters.is_empty() && self.router.is_none() && self.acl.is_none() {
            return;
        }
        let filters = Arc::downgrade(&self.filters);
        let router = self.router.as_ref().map(Arc::downgrade);
        let acl = self.acl.as_ref().map(Arc::downgrade);
        let spawned = std::thread::Builder::new().name("plugin-watch".into()).spawn(move || loop {
            std::thread::sleep(every);
            let Some(filters) = filters.upgrade() else { return };
            let outcomes = filters.filters().iter().map(|f| (f.sandbox.name.clone(), f.sandbox.reload_if_changed()));
            let router = router.as_ref().and_then(|r| r.upgrade());
            let routed = router.iter().map(|r| (r.sandbox.name.clone(), r.reload_if_changed()));
            let acl = acl.as_ref().and_then(|a| a.upgrade());
            let mapped = acl.iter().map(|a| (a.sandbox.name.clone(), a.reload_if_changed()));
            for (plugin, outcome) in outcomes.chain(routed).chain(mapped) {
                if let Some(Err(e)) = outcome {
                    tracing::error!(plugin = %plugin, error = %format!("{e:#}"), "changed plugin file not loaded; the old code stays");
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot watch plugin files");
        }
    }
}

/// Loads every configured plugin; `clusters` are the config's cluster names.
pub fn load(plugins: &[PluginConfig], clusters: &[String]) -> anyhow::Result<Plugins> {
    if plugins.is_empty() {
        return Ok(Plugins::default());
    }
    let max = plugins.iter().map(|p| p.memory_mb).max().unwrap_or(64);
    let engine = engine(max)?;
    let mut chain = FilterChain::default();
    let mut router = None;
    let mut acl = None;
    for p in plugins {
        match p.kind.as_str() {
            "router" => router = Some(Arc::new(RouterPlugin::load(&engine, p, clusters)?)),
            "acl-mapper" => acl = Some(Arc::new(AclMapperPlugin::load(&engine, p)?)),
            _ => chain.push(filter::Filter::load(&engine, p)?),
        }
    }
    let loaded = Plugins {
        filters: Arc::new(chain),
        router,
        acl,
    };
    loaded.watch(Duration::from_secs(2));
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(name: &str, kind: &str) -> PluginConfig {
        PluginConfig {
            name: name.into(),
            kind: kind.into(),
            path: "Cargo.toml".into(),
            config: String::new(),
            on: None,
            topics: default_topics(),
            clusters: Vec::new(),
            principals: Vec::new(),
            on_error: default_on_error(),
            memory_mb: default_memory_mb(),
            timeout_ms: default_timeout_ms(),
        }
    }

    fn fields(plugins: &[PluginConfig]) -> Vec<String> {
        validate(plugins, &["main".into()]).into_iter().map(|p| p.field).collect()
    }

    #[test]
    fn a_filter_and_a_router_together_are_fine() {
        let mut filter = plugin("f", "record-filter");
        filter.on = Some(vec!["produce".into(), "fetch".into()]);
        filter.clusters = vec!["main".into()];
        assert_eq!(fields(&[filter, plugin("r", "router")]), Vec::<String>::new());
        assert_eq!(plugin("f", "record-filter").directions(), vec!["produce".to_string()]);
    }

    #[test]
    fn router_mistakes_name_their_field() {
        let mut r = plugin("r", "router");
        r.on = Some(vec!["fetch".into()]);
        r.clusters = vec!["main".into()];
        assert_eq!(fields(&[r]), vec!["plugins[0].on", "plugins[0].clusters"]);
        assert_eq!(fields(&[plugin("a", "router"), plugin("b", "router")]), vec!["plugins[1].kind"]);
        assert_eq!(fields(&[plugin("a", "acl")]), vec!["plugins[0].kind"]);
        let mut a = plugin("a", "acl-mapper");
        a.on_error = "pass".into();
        a.topics = "orders.*".into();
        assert_eq!(fields(&[a, plugin("b", "acl-mapper")]), vec!["plugins[0]", "plugins[0].on_error", "plugins[1].kind"]);
        let mut f = plugin("f", "record-filter");
        f.on = Some(Vec::new());
        assert_eq!(fields(&[f]), vec!["plugins[0].on"]);
    }
}
