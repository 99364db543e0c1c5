//! One plugin's compiled component and its instances, whatever its world.
//!
//! A [`Sandbox`] compiles the component, keeps a few ready instances, gives
//! each call a memory limit and a CPU deadline, drops an instance that traps,
//! swaps in new code on reload, and backs the plugin off when it keeps failing.
//! What a world adds (its bindings, its calls, its failure policy) lives with
//! the world: [`super::filter`], [`super::router`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};

use super::filter::wit::causeway::plugin::host;
use super::{PluginConfig, TICK};
use crate::telemetry;

/// Failures in a row after which a plugin is backed off.
const FAILURES_BEFORE_BACKOFF: u32 = 3;
/// How long a failing plugin is not called.
const BACKOFF: Duration = Duration::from_secs(10);
/// Ready instances kept per plugin.
const SPARE_INSTANCES: usize = 8;
/// Counter names an instance keeps handles for; further names are still
/// counted, with a registry lookup per call.
const CACHED_COUNTERS: usize = 64;

/// A world of `wit/plugin.wit`, as the sandbox needs to know it.
pub trait World: 'static {
    /// The world's name, for errors.
    const NAME: &'static str;
    /// Linked and ready to instantiate.
    type Pre: Send + Sync;
    /// One instance's exports.
    type Bindings: Send;
    /// Links the host imports and prepares `component`.
    fn prepare(linker: &mut Linker<HostState>, component: &Component) -> anyhow::Result<Self::Pre>;
    fn instantiate(pre: &Self::Pre, store: &mut Store<HostState>) -> anyhow::Result<Self::Bindings>;
    /// Calls the world's `init` export.
    fn init(bindings: &Self::Bindings, store: &mut Store<HostState>, config: &str) -> anyhow::Result<Result<(), String>>;
}

/// What a plugin's instance owns.
pub struct HostState {
    plugin: Arc<str>,
    limits: StoreLimits,
    /// The plugin's own counters by name (see [`CACHED_COUNTERS`]).
    counters: HashMap<String, metrics::Counter>,
}

impl host::Host for HostState {
    fn log(&mut self, level: host::Level, message: String) {
        use host::Level;
        let plugin = &*self.plugin;
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn count(&mut self, name: String, delta: u64) {
        if let Some(counter) = self.counters.get(&name) {
            counter.increment(delta);
            return;
        }
        let counter = telemetry::plugin_counter(&self.plugin, &name);
        counter.increment(delta);
        if self.counters.len() < CACHED_COUNTERS {
            self.counters.insert(name, counter);
        }
    }
}

/// A ready instance.
struct Instance<W: World> {
    store: Store<HostState>,
    bindings: W::Bindings,
}

/// One compiled version of a plugin's component and its ready instances.
struct Generation<W: World> {
    pre: W::Pre,
    spare: Mutex<Vec<Instance<W>>>,
    /// The file's modification time when it was compiled.
    modified: Option<SystemTime>,
}

/// One loaded plugin.
pub struct Sandbox<W: World> {
    pub name: Arc<str>,
    pub path: String,
    config: String,
    /// Memory limit per instance, in bytes.
    pub memory: usize,
    timeout_ticks: u64,
    engine: Engine,
    /// Swapped whole by a reload; calls under way finish on the one they took.
    current: RwLock<Arc<Generation<W>>>,
    failures: AtomicU32,
    backed_off_until: Mutex<Option<Instant>>,
    calls: telemetry::PluginCalls,
}

impl<W: World> Sandbox<W> {
    /// Compiles the component, links the host, and makes sure one instance
    /// initialises with the configured string.
    pub fn load(engine: &Engine, config: &PluginConfig) -> anyhow::Result<Self> {
        let name: Arc<str> = Arc::from(config.name.as_str());
        let hits_before = super::cache_counts().map_or(0, |(hits, _)| hits);
        let generation = compile::<W>(engine, &name, &config.path)?;
        let calls = telemetry::PluginCalls::new(&name);
        let sandbox = Self {
            name,
            path: config.path.clone(),
            config: config.config.clone(),
            memory: (config.memory_mb as usize) << 20,
            timeout_ticks: (config.timeout_ms / TICK.as_millis().max(1) as u64).max(1),
            engine: engine.clone(),
            current: RwLock::new(Arc::new(generation)),
            failures: AtomicU32::new(0),
            backed_off_until: Mutex::new(None),
            calls,
        };
        let generation = sandbox.generation();
        let first = sandbox
            .instantiate(&generation)
            .map_err(|e| anyhow::anyhow!("plugin '{}': {e}", config.name))?;
        put_back(&generation, first);
        let hits = super::cache_counts().map_or(0, |(hits, _)| hits);
        tracing::info!(
            plugin = %sandbox.name,
            kind = W::NAME,
            path = %config.path,
            compiled = if hits > hits_before { "from cache" } else { "now" },
            "plugin loaded"
        );
        Ok(sandbox)
    }

    /// Compiles the component file again and, once a fresh instance of it has
    /// initialised, swaps it in: the next call runs the new code, calls under
    /// way finish on the old. On any error the old code stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let generation = compile::<W>(&self.engine, &self.name, &self.path)?;
        let first = self.instantiate(&generation)?;
        put_back(&generation, first);
        match self.current.write() {
            Ok(mut g) => *g = Arc::new(generation),
            Err(p) => *p.into_inner() = Arc::new(generation),
        }
        self.failures.store(0, Ordering::Relaxed);
        if let Ok(mut until) = self.backed_off_until.lock() {
            *until = None;
        }
        tracing::info!(plugin = %self.name, path = %self.path, "plugin reloaded");
        Ok(())
    }

    /// Reloads if the component file changed since it was compiled.
    pub fn reload_if_changed(&self) -> Option<anyhow::Result<()>> {
        let now = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        let was = self.generation().modified;
        (now.is_some() && now != was).then(|| self.reload())
    }

    fn generation(&self) -> Arc<Generation<W>> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn instantiate(&self, generation: &Generation<W>) -> anyhow::Result<Instance<W>> {
        let limits = StoreLimitsBuilder::new().memory_size(self.memory).instances(16).build();
        let mut store = Store::new(
            &self.engine,
            HostState {
                plugin: self.name.clone(),
                limits,
                counters: HashMap::new(),
            },
        );
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(self.timeout_ticks);
        let bindings = W::instantiate(&generation.pre, &mut store)?;
        match W::init(&bindings, &mut store, &self.config)? {
            Ok(()) => Ok(Instance { store, bindings }),
            Err(message) => Err(anyhow::anyhow!("init refused its config: {message}")),
        }
    }

    fn take(&self, generation: &Generation<W>) -> anyhow::Result<Instance<W>> {
        let spare = match generation.spare.lock() {
            Ok(mut s) => s.pop(),
            Err(p) => p.into_inner().pop(),
        };
        match spare {
            Some(i) => Ok(i),
            None => self.instantiate(generation),
        }
    }

    /// Runs `call` on a ready instance under the CPU deadline. A failure
    /// (trap, deadline, memory, init) is `Err` with what happened, and the
    /// instance is dropped. No failure policy or backoff applies here: see
    /// [`backed_off`](Self::backed_off), [`succeeded`](Self::succeeded) and
    /// [`failed`](Self::failed).
    pub fn call<T>(&self, call: impl FnOnce(&W::Bindings, &mut Store<HostState>) -> wasmtime::Result<T>) -> Result<T, String> {
        let generation = self.generation();
        let mut instance = self.take(&generation).map_err(|e| e.to_string())?;
        instance.store.set_epoch_deadline(self.timeout_ticks);
        let started = Instant::now();
        let outcome = call(&instance.bindings, &mut instance.store);
        self.calls.record(started.elapsed());
        match outcome {
            Ok(answer) => {
                put_back(&generation, instance);
                Ok(answer)
            }
            // The instance is dropped: its state may be broken.
            Err(trap) => {
                tracing::debug!(plugin = %self.name, "trap: {trap:?}");
                Err(match trap.downcast_ref::<wasmtime::Trap>() {
                    Some(wasmtime::Trap::Interrupt) => {
                        format!("ran past its {} ms deadline", self.timeout_ticks * TICK.as_millis() as u64)
                    }
                    Some(t) => t.to_string(),
                    None => trap.root_cause().to_string(),
                })
            }
        }
    }

    /// Whether the plugin is resting after repeated failures: its failure
    /// policy applies without calling it.
    pub fn backed_off(&self) -> bool {
        let until = match self.backed_off_until.lock() {
            Ok(u) => *u,
            Err(p) => *p.into_inner(),
        };
        until.is_some_and(|t| Instant::now() < t)
    }

    /// A call answered: the run of failures is over.
    pub fn succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }

    /// A call failed with `why` (or answered nonsense): counts it, and backs
    /// the plugin off after several in a row.
    pub fn failed(&self, why: &str) {
        telemetry::plugin_trap(&self.name);
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(plugin = %self.name, failures = n, error = %why, "plugin call failed");
        if n >= FAILURES_BEFORE_BACKOFF {
            if let Ok(mut until) = self.backed_off_until.lock() {
                *until = Some(Instant::now() + BACKOFF);
            }
            self.failures.store(0, Ordering::Relaxed);
            tracing::error!(plugin = %self.name, backoff = ?BACKOFF, "plugin keeps failing; backing off");
        }
    }
}

/// Compiles a component file for world `W`.
fn compile<W: World>(engine: &Engine, name: &str, path: &str) -> anyhow::Result<Generation<W>> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let component = Component::from_file(engine, path)
        .map_err(|e| anyhow::anyhow!("plugin '{name}': cannot load {path}: {e}"))?;
    let mut linker: Linker<HostState> = Linker::new(engine);
    let pre = W::prepare(&mut linker, &component).map_err(|e| {
        anyhow::anyhow!("plugin '{name}': {path} is not a {} component of causeway:plugin@0.1.0: {e}", W::NAME)
    })?;
    Ok(Generation {
        pre,
        spare: Mutex::new(Vec::new()),
        modified,
    })
}

fn put_back<W: World>(generation: &Generation<W>, instance: Instance<W>) {
    let mut spare = match generation.spare.lock() {
        Ok(s) => s,
        Err(p) => p.into_inner(),
    };
    if spare.len() < SPARE_INSTANCES {
        spare.push(instance);
    }
}
