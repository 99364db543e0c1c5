//! WebAssembly plugins: components built against `wit/plugin.wit`.
//!
//! One wasmtime [`Engine`] runs every plugin, with the pooling allocator, a memory
//! limit per instance and a CPU deadline per call (epoch interruption, ticked every
//! [`TICK`]). Each plugin keeps a few ready instances; a call takes one, and an
//! instance that traps (a panic, a deadline, a memory bomb) is dropped and a fresh
//! one made for the next call. A plugin that keeps failing is backed off: for a
//! while its failure policy applies without calling it. The gateway never stops
//! for a plugin.

pub mod batches;
pub mod filter;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Deserialize;
use wasmtime::{Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::config::Problem;

pub use filter::{FilterChain, Outcome};

/// How often the CPU deadline clock ticks.
pub const TICK: Duration = Duration::from_millis(5);

/// One `[[plugins]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// A name for logs and metrics.
    pub name: String,
    /// `record-filter` (the only kind the gateway runs yet).
    pub kind: String,
    /// The component file (`.wasm`).
    pub path: String,
    /// Handed to the plugin's `init`.
    #[serde(default)]
    pub config: String,
    /// Where a filter runs: `produce`, `fetch`, or both.
    #[serde(default = "default_on")]
    pub on: Vec<String>,
    /// Topics (client-visible names) the plugin sees: a name, prefix or glob.
    #[serde(default = "default_topics")]
    pub topics: String,
    /// Backend clusters whose topics the plugin sees; empty: every cluster.
    #[serde(default)]
    pub clusters: Vec<String>,
    /// Principals the plugin sees (names, prefixes or globs); empty: everyone.
    #[serde(default)]
    pub principals: Vec<String>,
    /// What a failed call (trap, deadline, error) does to a batch: `reject` or `pass`.
    #[serde(default = "default_on_error")]
    pub on_error: String,
    /// Memory limit per instance, in MiB.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u32,
    /// CPU deadline per call, in ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_on() -> Vec<String> {
    vec!["produce".into()]
}
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
        if p.kind != "record-filter" {
            problem(
                format!("{base}.kind"),
                format!("'{}' is not a plugin kind Causeway runs; use \"record-filter\"", p.kind),
            );
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
        if p.on.is_empty() || p.on.iter().any(|d| d != "produce" && d != "fetch") {
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
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(256)
        .total_core_instances(512)
        .total_memories(256)
        .total_tables(512)
        .max_memory_size((max_memory_mb as usize).max(1) << 20);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
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

/// Loads every configured record filter.
pub fn load(plugins: &[PluginConfig]) -> anyhow::Result<Arc<FilterChain>> {
    if plugins.is_empty() {
        return Ok(Arc::new(FilterChain::default()));
    }
    let max = plugins.iter().map(|p| p.memory_mb).max().unwrap_or(64);
    let engine = engine(max)?;
    let mut chain = FilterChain::default();
    for p in plugins {
        chain.push(filter::Filter::load(&engine, p)?);
    }
    let chain = Arc::new(chain);
    FilterChain::watch(&chain, Duration::from_secs(2));
    Ok(chain)
}
