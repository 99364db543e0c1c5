//! Record filters: the `record-filter` world, its instances, and the chain the
//! produce and fetch paths run.

use std::sync::Arc;

use bytes::Bytes;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store};

use super::batches::{self, Applied};
use super::rewrite;
use super::sandbox::{HostState, Sandbox, World};
use super::PluginConfig;
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

impl api::records::Host for HostState {}

/// The record-filter world, for the sandbox.
pub struct FilterWorld;

impl World for FilterWorld {
    const NAME: &'static str = "record-filter";
    type Pre = RecordFilterPre<HostState>;
    type Bindings = RecordFilter;

    fn prepare(linker: &mut Linker<HostState>, component: &Component) -> anyhow::Result<Self::Pre> {
        RecordFilter::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
        RecordFilterPre::new(linker.instantiate_pre(component)?)
    }

    fn instantiate(pre: &Self::Pre, store: &mut Store<HostState>) -> anyhow::Result<Self::Bindings> {
        pre.instantiate(store)
    }

    fn init(bindings: &Self::Bindings, store: &mut Store<HostState>, config: &str) -> anyhow::Result<Result<(), String>> {
        bindings.call_init(store, config)
    }
}

/// One loaded record filter.
pub struct Filter {
    pub sandbox: Sandbox<FilterWorld>,
    scope: Glob,
    /// Empty: every cluster.
    clusters: Vec<String>,
    /// Empty: every principal.
    principals: Vec<Glob>,
    produce: bool,
    fetch: bool,
    /// Whether a failed call passes the batch on (`true`) or rejects it.
    pass_on_error: bool,
    /// Its verdicts, counted per record.
    records: telemetry::PluginRecords,
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
        Ok(Self {
            sandbox: Sandbox::load(engine, config)?,
            scope: Glob::new(&config.topics),
            clusters: config.clusters.clone(),
            principals: config.principals.iter().map(|p| Glob::new(p)).collect(),
            produce: config.directions().iter().any(|d| d == "produce"),
            fetch: config.directions().iter().any(|d| d == "fetch"),
            pass_on_error: config.on_error == "pass",
            records: telemetry::PluginRecords::new(&config.name),
        })
    }

    pub fn name(&self) -> &Arc<str> {
        &self.sandbox.name
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

    /// Runs the plugin on `batches`: one verdict per record, or the batch's
    /// rejection. A failure (trap, deadline, memory, init) is `Err`. No failure
    /// policy or backoff applies here; the chain's [`FilterChain::run`] adds them.
    /// `Ok(Ok(None))`: every record passes.
    #[allow(clippy::type_complexity)]
    pub fn call(&self, context: &BatchContext, batches: &[RecordBatch]) -> Result<Result<Option<Vec<Verdict>>, String>, String> {
        self.sandbox.call(|bindings, store| bindings.call_filter(store, context.clone(), batches))
    }

    /// Runs the filter on one partition's batches (`records` records in all) as
    /// its policy says, counting failures.
    fn run(&self, context: &BatchContext, batches: &[RecordBatch], records: usize) -> Step {
        let name = self.name();
        if self.sandbox.backed_off() {
            return self.on_failure(format!("plugin '{name}' is backed off after repeated failures"));
        }
        match self.call(context, batches) {
            Ok(Ok(None)) => {
                self.sandbox.succeeded();
                self.records.record(telemetry::Verdicts {
                    passed: records as u64,
                    ..Default::default()
                });
                Step::Pass
            }
            Ok(Ok(Some(verdicts))) if verdicts.len() != records => {
                let why = format!("answered {} verdicts for {records} records", verdicts.len());
                self.sandbox.failed(&why);
                self.on_failure(format!("plugin '{name}' {why}"))
            }
            Ok(Ok(Some(verdicts))) => {
                self.sandbox.succeeded();
                self.records.record(tally(&verdicts));
                Step::Verdicts(verdicts)
            }
            Ok(Err(message)) => {
                self.sandbox.succeeded();
                telemetry::plugin_rejected(name);
                Step::Reject(message)
            }
            Err(why) => {
                self.sandbox.failed(&why);
                self.on_failure(format!("plugin '{name}' failed: {why}"))
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

/// How many records got each verdict.
fn tally(verdicts: &[Verdict]) -> telemetry::Verdicts {
    let mut t = telemetry::Verdicts::default();
    for v in verdicts {
        match v {
            Verdict::Pass => t.passed += 1,
            Verdict::Replace(_) | Verdict::ReplaceValue(_) => t.changed += 1,
            Verdict::Drop => t.dropped += 1,
            Verdict::FanOut(_) => t.fanned_out += 1,
        }
    }
    t
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
        f.debug_list().entries(self.filters.iter().map(|x| x.name())).finish()
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
            .filter(|f| name.is_none_or(|n| **f.name() == *n))
            .map(|f| (f.name().to_string(), f.sandbox.reload().map_err(|e| format!("{e:#}"))))
            .collect()
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
            .map(|f| f.sandbox.memory / 4)
            .min()
            .unwrap_or(batches::MAX_RECORD_BYTES)
            .min(batches::MAX_RECORD_BYTES);
        let mut sections = match batches::sections(records, context.direction, limit) {
            Ok(s) => s,
            Err(e) => return Outcome::Rejected(format!("cannot read the record batches: {e}")),
        };
        // The records as the filters so far left them: the bytes as they came,
        // a produce batch rewritten in place (`rewrite::produce`), or, once a
        // verdict needs it, decoded.
        let mut current = records.clone();
        let mut decoded: Option<batches::Decoded> = None;
        let mut changed = false;
        // Whether `sections` no longer show the records: read again only if
        // another filter follows.
        let mut stale = false;
        for filter in applying {
            if stale {
                let fresh = match &decoded {
                    Some(d) => d.sections(limit),
                    None => batches::sections(&current, context.direction, limit),
                };
                sections = match fresh {
                    Ok(s) => s,
                    Err(e) => return Outcome::Rejected(format!("cannot write the filtered records: {e}")),
                };
                stale = false;
            }
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
            if let (None, Direction::Produce, [section]) = (&decoded, context.direction, sections.as_slice()) {
                match rewrite::produce(&current, section, &verdicts) {
                    Some(Ok(bytes)) => {
                        current = bytes;
                        changed = true;
                        stale = true;
                        continue;
                    }
                    Some(Err(e)) => return Outcome::Rejected(format!("cannot write the filtered records: {e}")),
                    None => {}
                }
            }
            let d = match &mut decoded {
                Some(d) => d,
                None => match batches::decode(&current) {
                    Ok(d) => decoded.insert(d),
                    Err(e) => return Outcome::Rejected(format!("cannot read the record batches: {e}")),
                },
            };
            match d.apply(verdicts, context.direction) {
                Applied::Same => {}
                Applied::Changed => {
                    changed = true;
                    stale = true;
                }
                Applied::Refused(why) => {
                    // The plugin's answer, not the records, is what is refused.
                    telemetry::plugin_rejected(filter.name());
                    return Outcome::Rejected(format!("plugin '{}': {why}", filter.name()));
                }
            }
        }
        if !changed {
            return Outcome::Unchanged;
        }
        let bytes = match decoded {
            Some(d) => match d.encode(context.direction) {
                Ok(bytes) => bytes,
                Err(e) => return Outcome::Rejected(format!("cannot write the filtered records: {e}")),
            },
            None => current,
        };
        telemetry::plugin_changed(context.direction == Direction::Produce);
        Outcome::Changed(bytes)
    }
}
