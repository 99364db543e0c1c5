//! Record filters: the `record-filter` world, its instances, and the chain the
//! produce and fetch paths run.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};

use super::batches::{self, Applied};
use super::{PluginConfig, TICK};
use crate::routing::Glob;
use crate::telemetry;

/// The `record-filter` world of `wit/plugin.wit`, as Rust types and bindings.
pub mod wit {
    wasmtime::component::bindgen!({
        world: "record-filter",
        path: "../wit/plugin.wit",
        // Batches go in borrowed: their bytes are copied once, straight from
        // the request or answer into the sandbox.
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

use wit::causeway::plugin as api;
pub use api::records::{BatchContext, Direction, Header, KafkaRecord, RecordBatch, Verdict};
use wit::{RecordFilter, RecordFilterPre};

/// Failures in a row after which a plugin is backed off.
const FAILURES_BEFORE_BACKOFF: u32 = 3;
/// How long a failing plugin is not called.
const BACKOFF: Duration = Duration::from_secs(10);
/// Ready instances kept per plugin.
const SPARE_INSTANCES: usize = 8;

/// What a plugin's instance owns.
pub struct HostState {
    plugin: Arc<str>,
    limits: StoreLimits,
}

impl api::host::Host for HostState {
    fn log(&mut self, level: api::host::Level, message: String) {
        use api::host::Level;
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
        telemetry::plugin_counter(&self.plugin, &name, delta);
    }
}

impl api::records::Host for HostState {}

/// A ready instance.
struct Instance {
    store: Store<HostState>,
    bindings: RecordFilter,
}

/// One compiled version of a plugin's component and its ready instances.
struct Generation {
    pre: RecordFilterPre<HostState>,
    spare: Mutex<Vec<Instance>>,
    /// The file's modification time when it was compiled.
    modified: Option<SystemTime>,
}

/// One loaded record filter.
pub struct Filter {
    pub name: Arc<str>,
    pub path: String,
    scope: Glob,
    /// Empty: every cluster.
    clusters: Vec<String>,
    /// Empty: every principal.
    principals: Vec<Glob>,
    produce: bool,
    fetch: bool,
    /// Whether a failed call passes the batch on (`true`) or rejects it.
    pass_on_error: bool,
    config: String,
    memory: usize,
    timeout_ticks: u64,
    engine: Engine,
    /// Swapped whole by a reload; calls under way finish on the one they took.
    current: RwLock<Arc<Generation>>,
    failures: AtomicU32,
    backed_off_until: Mutex<Option<Instant>>,
}

/// What a filter chain did to one batch.
#[derive(Debug)]
pub enum Outcome {
    /// Every record passed: the original bytes go on.
    Unchanged,
    /// Some records changed: these bytes go on instead.
    Changed(Bytes),
    /// A plugin rejected the batch, or failed with `on_error = "reject"`.
    Rejected(String),
}

impl Filter {
    /// Compiles the component, links the host, and makes sure one instance
    /// initialises with the configured string.
    pub fn load(engine: &Engine, config: &PluginConfig) -> anyhow::Result<Self> {
        let name: Arc<str> = Arc::from(config.name.as_str());
        let hits_before = super::cache_counts().map_or(0, |(hits, _)| hits);
        let generation = compile(engine, &name, &config.path)?;
        let filter = Self {
            name,
            path: config.path.clone(),
            scope: Glob::new(&config.topics),
            clusters: config.clusters.clone(),
            principals: config.principals.iter().map(|p| Glob::new(p)).collect(),
            produce: config.on.iter().any(|d| d == "produce"),
            fetch: config.on.iter().any(|d| d == "fetch"),
            pass_on_error: config.on_error == "pass",
            config: config.config.clone(),
            memory: (config.memory_mb as usize) << 20,
            timeout_ticks: (config.timeout_ms / TICK.as_millis().max(1) as u64).max(1),
            engine: engine.clone(),
            current: RwLock::new(Arc::new(generation)),
            failures: AtomicU32::new(0),
            backed_off_until: Mutex::new(None),
        };
        let generation = filter.generation();
        let first = filter
            .instantiate(&generation)
            .map_err(|e| anyhow::anyhow!("plugin '{}': {e}", config.name))?;
        put_back(&generation, first);
        let hits = super::cache_counts().map_or(0, |(hits, _)| hits);
        tracing::info!(
            plugin = %filter.name,
            path = %config.path,
            compiled = if hits > hits_before { "from cache" } else { "now" },
            "plugin loaded"
        );
        Ok(filter)
    }

    /// Compiles the component file again and, once a fresh instance of it has
    /// initialised, swaps it in: the next batch runs the new code, batches under
    /// way finish on the old. On any error the old code stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let generation = compile(&self.engine, &self.name, &self.path)?;
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

    fn generation(&self) -> Arc<Generation> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn instantiate(&self, generation: &Generation) -> anyhow::Result<Instance> {
        let limits = StoreLimitsBuilder::new().memory_size(self.memory).instances(16).build();
        let mut store = Store::new(
            &self.engine,
            HostState {
                plugin: self.name.clone(),
                limits,
            },
        );
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(self.timeout_ticks);
        let bindings = generation.pre.instantiate(&mut store)?;
        match bindings.call_init(&mut store, &self.config)? {
            Ok(()) => Ok(Instance { store, bindings }),
            Err(message) => Err(anyhow::anyhow!("init refused its config: {message}")),
        }
    }

    fn take(&self, generation: &Generation) -> anyhow::Result<Instance> {
        let spare = match generation.spare.lock() {
            Ok(mut s) => s.pop(),
            Err(p) => p.into_inner().pop(),
        };
        match spare {
            Some(i) => Ok(i),
            None => self.instantiate(generation),
        }
    }

    /// Whether this filter may see batches of `topic` going `direction`
    /// (before the cluster and principal are known).
    pub fn applies(&self, direction: Direction, topic: &str) -> bool {
        let on = match direction {
            Direction::Produce => self.produce,
            Direction::Fetch => self.fetch,
        };
        on && self.scope.matches(topic)
    }

    /// Whether this filter sees the batch `context` describes: its direction,
    /// topic, cluster and principal are all in scope.
    pub fn in_scope(&self, context: &BatchContext) -> bool {
        self.applies(context.direction, context.topic)
            && (self.clusters.is_empty() || self.clusters.iter().any(|c| c == context.cluster))
            && (self.principals.is_empty() || self.principals.iter().any(|g| g.matches(context.principal)))
    }

    fn backed_off(&self) -> bool {
        let until = match self.backed_off_until.lock() {
            Ok(u) => *u,
            Err(p) => *p.into_inner(),
        };
        until.is_some_and(|t| Instant::now() < t)
    }

    /// Runs the plugin on `batches`: one verdict per record, or the batch's
    /// rejection. A failure (trap, deadline, memory, init) is `Err`. No failure
    /// policy or backoff applies here; the chain's [`FilterChain::run`] adds them.
    /// `Ok(Ok(None))`: every record passes.
    #[allow(clippy::type_complexity)]
    pub fn call(&self, context: &BatchContext, batches: &[RecordBatch]) -> Result<Result<Option<Vec<Verdict>>, String>, String> {
        let generation = self.generation();
        let mut instance = self.take(&generation).map_err(|e| e.to_string())?;
        instance.store.set_epoch_deadline(self.timeout_ticks);
        let started = Instant::now();
        let outcome = instance.bindings.call_filter(&mut instance.store, context.clone(), batches);
        telemetry::plugin_call(&self.name, started.elapsed());
        match outcome {
            Ok(answer) => {
                put_back(&generation, instance);
                Ok(answer)
            }
            // The instance is dropped: its state may be broken.
            Err(trap) => {
                tracing::debug!(plugin = %self.name, "trap: {trap:?}");
                Err(match trap.downcast_ref::<wasmtime::Trap>() {
                    Some(wasmtime::Trap::Interrupt) => format!("ran past its {} ms deadline", self.timeout_ticks * TICK.as_millis() as u64),
                    Some(t) => t.to_string(),
                    None => trap.root_cause().to_string(),
                })
            }
        }
    }

    /// Runs the filter on one partition's batches (`records` records in all) as
    /// its policy says, counting failures.
    fn run(&self, context: &BatchContext, batches: &[RecordBatch], records: usize) -> Step {
        if self.backed_off() {
            return self.on_failure(format!("plugin '{}' is backed off after repeated failures", self.name));
        }
        match self.call(context, batches) {
            Ok(Ok(None)) => {
                self.failures.store(0, Ordering::Relaxed);
                Step::Pass
            }
            Ok(Ok(Some(verdicts))) => {
                self.failures.store(0, Ordering::Relaxed);
                if verdicts.len() != records {
                    return self.on_failure(format!(
                        "plugin '{}' answered {} verdicts for {records} records",
                        self.name,
                        verdicts.len(),
                    ));
                }
                Step::Verdicts(verdicts)
            }
            Ok(Err(message)) => {
                self.failures.store(0, Ordering::Relaxed);
                telemetry::plugin_rejected(&self.name);
                Step::Reject(message)
            }
            Err(why) => {
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
                self.on_failure(format!("plugin '{}' failed: {why}", self.name))
            }
        }
    }

    fn on_failure(&self, why: String) -> Step {
        if self.pass_on_error {
            Step::Pass
        } else {
            Step::Reject(why)
        }
    }
}

/// Compiles a component file for the record-filter world.
fn compile(engine: &Engine, name: &str, path: &str) -> anyhow::Result<Generation> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let component = Component::from_file(engine, path)
        .map_err(|e| anyhow::anyhow!("plugin '{name}': cannot load {path}: {e}"))?;
    let mut linker: Linker<HostState> = Linker::new(engine);
    RecordFilter::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
    let pre = RecordFilterPre::new(linker.instantiate_pre(&component).map_err(|e| {
        anyhow::anyhow!("plugin '{name}': {path} is not a record-filter component of causeway:plugin@0.1.0: {e}")
    })?)?;
    Ok(Generation {
        pre,
        spare: Mutex::new(Vec::new()),
        modified,
    })
}

fn put_back(generation: &Generation, instance: Instance) {
    let mut spare = match generation.spare.lock() {
        Ok(s) => s,
        Err(p) => p.into_inner(),
    };
    if spare.len() < SPARE_INSTANCES {
        spare.push(instance);
    }
}

/// One filter's decision on a batch.
enum Step {
    Verdicts(Vec<Verdict>),
    Pass,
    Reject(String),
}

/// The filters in config order.
#[derive(Default)]
pub struct FilterChain {
    filters: Vec<Filter>,
}

impl std::fmt::Debug for FilterChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.filters.iter().map(|x| &x.name)).finish()
    }
}

impl FilterChain {
    pub fn push(&mut self, filter: Filter) {
        self.filters.push(filter);
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    pub fn filters(&self) -> &[Filter] {
        &self.filters
    }

    /// Reloads the named filter (every filter with `None`); each name with the
    /// outcome.
    pub fn reload(&self, name: Option<&str>) -> Vec<(String, Result<(), String>)> {
        self.filters
            .iter()
            .filter(|f| name.is_none_or(|n| *f.name == *n))
            .map(|f| (f.name.to_string(), f.reload().map_err(|e| format!("{e:#}"))))
            .collect()
    }

    /// Reloads every filter whose component file changed, every `every`, for
    /// as long as the chain lives.
    pub fn watch(chain: &Arc<Self>, every: Duration) {
        if chain.filters.is_empty() {
            return;
        }
        let weak = Arc::downgrade(chain);
        let spawned = std::thread::Builder::new().name("plugin-watch".into()).spawn(move || loop {
            std::thread::sleep(every);
            let Some(chain) = weak.upgrade() else { return };
            for f in &chain.filters {
                if let Some(Err(e)) = f.reload_if_changed() {
                    tracing::error!(plugin = %f.name, error = %format!("{e:#}"), "changed plugin file not loaded; the old code stays");
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot watch plugin files");
        }
    }

    /// Whether any filter sees `topic` going `direction`.
    pub fn applies(&self, direction: Direction, topic: &str) -> bool {
        self.filters.iter().any(|f| f.applies(direction, topic))
    }

    /// Runs every filter that applies on the record batches in `records`, in
    /// order, each seeing what the previous one left.
    pub fn run(&self, context: &BatchContext, records: &Bytes) -> Outcome {
        let applying: Vec<&Filter> = self
            .filters
            .iter()
            .filter(|f| f.in_scope(context))
            .collect();
        if applying.is_empty() {
            return Outcome::Unchanged;
        }
        // The records must fit in every plugin's memory with room to spare.
        let limit = applying
            .iter()
            .map(|f| f.memory / 4)
            .min()
            .unwrap_or(batches::MAX_RECORD_BYTES)
            .min(batches::MAX_RECORD_BYTES);
        let mut sections = match batches::sections(records, context.direction, limit) {
            Ok(s) => s,
            Err(e) => return Outcome::Rejected(format!("cannot read the record batches: {e}")),
        };
        // Decoded only once a verdict changes something.
        let mut decoded: Option<batches::Decoded> = None;
        let mut changed = false;
        for filter in applying {
            let count = sections.iter().map(|s| s.count as usize).sum();
            if count == 0 {
                break;
            }
            let verdicts = match filter.run(context, &batches::as_wit(&sections), count) {
                Step::Pass => continue,
                Step::Reject(message) => return Outcome::Rejected(message),
                Step::Verdicts(v) if v.iter().all(|v| matches!(v, Verdict::Pass)) => continue,
                Step::Verdicts(v) => v,
            };
            let d = match &mut decoded {
                Some(d) => d,
                None => match batches::decode(records) {
                    Ok(d) => decoded.insert(d),
                    Err(e) => return Outcome::Rejected(format!("cannot read the record batches: {e}")),
                },
            };
            match d.apply(verdicts, context.direction) {
                Applied::Same => {}
                Applied::Changed => {
                    changed = true;
                    sections = match d.sections() {
                        Ok(s) => s,
                        Err(e) => return Outcome::Rejected(format!("cannot write the filtered records: {e}")),
                    };
                }
                Applied::Refused(why) => return Outcome::Rejected(format!("plugin '{}': {why}", filter.name)),
            }
        }
        let Some(decoded) = decoded.filter(|_| changed) else {
            return Outcome::Unchanged;
        };
        match decoded.encode(context.direction) {
            Ok(bytes) => {
                telemetry::plugin_changed(context.direction == Direction::Produce);
                Outcome::Changed(bytes)
            }
            Err(e) => Outcome::Rejected(format!("cannot write the filtered records: {e}")),
        }
    }
}
