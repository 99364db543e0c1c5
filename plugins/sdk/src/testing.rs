//! Run a plugin natively, with no WebAssembly and no gateway, for plain
//! `cargo test`.
//!
//! The harnesses call your trait implementation directly, check its answers
//! the way the gateway does (one verdict per record, no fan-out on fetch), and
//! capture what it logs and counts:
//!
//! ```
//! use causeway_plugin_sdk::testing::FilterHarness;
//! use causeway_plugin_sdk::{BatchContext, KafkaRecord, Record, RecordFilter, Verdict};
//!
//! struct CountBatches;
//!
//! impl RecordFilter for CountBatches {
//!     fn init(_config: &str) -> Result<Self, String> {
//!         Ok(CountBatches)
//!     }
//!     fn filter(&mut self, _ctx: &BatchContext, records: &[Record]) -> Result<Vec<Verdict>, String> {
//!         causeway_plugin_sdk::count("batches", 1);
//!         causeway_plugin_sdk::log::info(format!("{} records", records.len()));
//!         Ok(vec![Verdict::Pass; records.len()])
//!     }
//! }
//!
//! let mut harness = FilterHarness::<CountBatches>::new("").unwrap();
//! let verdicts = harness.filter(&BatchContext::produce("orders"), &[KafkaRecord::new("a")]).unwrap();
//! assert_eq!(verdicts, vec![Verdict::Pass]);
//! assert_eq!(harness.captured().counter("batches"), 1);
//! assert!(harness.captured().logged("1 records"));
//! ```
//!
//! Only on native targets: a component has the gateway instead.

use std::collections::BTreeMap;

use crate::log::Level;

/// One line a plugin logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Its level.
    pub level: Level,
    /// Its text.
    pub message: String,
}

/// What a plugin logged and counted while the harness ran it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    /// Every line, in order.
    pub logs: Vec<LogLine>,
    /// Every counter's total.
    pub counters: BTreeMap<String, u64>,
}

impl Captured {
    /// The total of counter `name` (0 if never counted).
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    /// Whether some line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.logs.iter().any(|l| l.message.contains(needle))
    }

    /// The lines at `level`.
    pub fn at(&self, level: Level) -> impl Iterator<Item = &str> {
        self.logs
            .iter()
            .filter(move |l| l.level == level)
            .map(|l| l.message.as_str())
    }

    fn append(&mut self, other: Captured) {
        self.logs.extend(other.logs);
        for (name, delta) in other.counters {
            let total = self.counters.entry(name).or_insert(0);
            *total = total.saturating_add(delta);
        }
    }
}

/// Runs `f` with logging and counting captured on this thread, and returns
/// what it captured. Captures nest; each thread (each test) has its own.
pub fn capture<R>(f: impl FnOnce() -> R) -> (R, Captured) {
    struct Restore(Option<Captured>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            sink::CAPTURE.with(|c| *c.borrow_mut() = previous);
        }
    }
    let previous = sink::CAPTURE.with(|c| c.borrow_mut().replace(Captured::default()));
    let restore = Restore(previous);
    let result = f();
    let captured = sink::CAPTURE
        .with(|c| c.borrow_mut().take())
        .unwrap_or_default();
    drop(restore);
    (result, captured)
}

/// The native end of the host imports (see `crate::host`).
pub(crate) mod sink {
    use std::cell::RefCell;

    use super::{Captured, LogLine};
    use crate::log::Level;

    thread_local! {
        pub(super) static CAPTURE: RefCell<Option<Captured>> = const { RefCell::new(None) };
    }

    /// Records the line if a capture is on; says whether it did.
    pub(crate) fn log(level: Level, message: &str) -> bool {
        CAPTURE.with(|c| match c.borrow_mut().as_mut() {
            Some(captured) => {
                captured.logs.push(LogLine {
                    level,
                    message: message.to_string(),
                });
                true
            }
            None => false,
        })
    }

    pub(crate) fn count(name: &str, delta: u64) {
        CAPTURE.with(|c| {
            if let Some(captured) = c.borrow_mut().as_mut() {
                let total = captured.counters.entry(name.to_string()).or_insert(0);
                *total = total.saturating_add(delta);
            }
        });
    }
}

#[cfg(feature = "record-filter")]
pub use self::record_filter::{apply, read_batch, run_filter, write_batch, FilterHarness};

#[cfg(feature = "record-filter")]
mod record_filter {
    use super::{capture, Captured};
    use crate::record_filter::{
        checked_filter, BatchContext, KafkaRecord, Record, RecordBatch, RecordFilter, Verdict,
    };

    /// `records` as the gateway hands them to a filter: one batch in Kafka's
    /// record format, the first record at `base_offset`.
    pub fn write_batch(records: &[KafkaRecord], base_offset: i64) -> RecordBatch {
        crate::wire::write(records, base_offset)
    }

    /// The records of `batch` as a filter reads them, exactly as in a plugin.
    pub fn read_batch(batch: &RecordBatch) -> Result<Vec<Record<'_>>, String> {
        crate::wire::read(std::slice::from_ref(batch))
    }

    /// A record filter running natively, as one plugin instance would.
    pub struct FilterHarness<F> {
        filter: F,
        captured: Captured,
    }

    impl<F: RecordFilter> FilterHarness<F> {
        /// Calls [`RecordFilter::init`] with `config`.
        pub fn new(config: &str) -> Result<Self, String> {
            let (filter, captured) = capture(|| F::init(config));
            Ok(FilterHarness {
                filter: filter?,
                captured,
            })
        }

        /// Calls [`RecordFilter::filter`] on `records` as the gateway hands
        /// them in (one batch in Kafka's record format, read back as
        /// [`Record`](crate::Record)s, offsets from 0), and checks the answer as
        /// the gateway would: one verdict per record, no fan-out on a fetch.
        pub fn filter(
            &mut self,
            ctx: &BatchContext,
            records: &[KafkaRecord],
        ) -> Result<Vec<Verdict>, String> {
            let batch = write_batch(records, 0);
            let read = read_batch(&batch)?;
            let (result, captured) = capture(|| checked_filter(&mut self.filter, ctx, &read));
            self.captured.append(captured);
            result
        }

        /// Filters, then applies the verdicts: the records the gateway would
        /// forward.
        pub fn forward(
            &mut self,
            ctx: &BatchContext,
            records: &[KafkaRecord],
        ) -> Result<Vec<KafkaRecord>, String> {
            let verdicts = self.filter(ctx, records)?;
            Ok(apply(records, &verdicts))
        }

        /// The filter itself, to inspect its state.
        pub fn plugin(&mut self) -> &mut F {
            &mut self.filter
        }

        /// Everything logged and counted since [`new`](Self::new) (or the
        /// last [`take_captured`](Self::take_captured)).
        pub fn captured(&self) -> &Captured {
            &self.captured
        }

        /// Returns and clears what was captured.
        pub fn take_captured(&mut self) -> Captured {
            std::mem::take(&mut self.captured)
        }
    }

    /// Initialises `F` with `config` and filters one batch.
    pub fn run_filter<F: RecordFilter>(
        config: &str,
        ctx: &BatchContext,
        records: &[KafkaRecord],
    ) -> Result<Vec<Verdict>, String> {
        FilterHarness::<F>::new(config)?.filter(ctx, records)
    }

    /// What the gateway forwards for `records` given `verdicts` (which must be
    /// one per record): pass keeps the record, drop removes it, replace swaps
    /// it, replace-value swaps its value, fan-out puts several in its place.
    pub fn apply(records: &[KafkaRecord], verdicts: &[Verdict]) -> Vec<KafkaRecord> {
        assert_eq!(records.len(), verdicts.len(), "one verdict per record");
        let mut out = Vec::with_capacity(records.len());
        for (record, verdict) in records.iter().zip(verdicts) {
            match verdict {
                Verdict::Pass => out.push(record.clone()),
                Verdict::Drop => {}
                Verdict::Replace(new) => out.push(new.clone()),
                Verdict::ReplaceValue(value) => out.push(KafkaRecord {
                    value: value.clone(),
                    ..record.clone()
                }),
                Verdict::FanOut(new) => out.extend(new.iter().cloned()),
            }
        }
        out
    }
}

#[cfg(feature = "acl-mapper")]
pub use self::acl_mapper::AclHarness;

#[cfg(feature = "acl-mapper")]
mod acl_mapper {
    use super::{capture, Captured};
    use crate::acl_mapper::{AclMapper, Decision, Identity, Operation, Principal, ResourceKind};

    /// An ACL mapper running natively, as one plugin instance would.
    pub struct AclHarness<A> {
        mapper: A,
        captured: Captured,
    }

    impl<A: AclMapper> AclHarness<A> {
        /// Calls [`AclMapper::init`] with `config`.
        pub fn new(config: &str) -> Result<Self, String> {
            let (mapper, captured) = capture(|| A::init(config));
            Ok(AclHarness {
                mapper: mapper?,
                captured,
            })
        }

        /// Calls [`AclMapper::map_principal`].
        pub fn map_principal(&mut self, who: &Identity) -> Result<Principal, String> {
            let (result, captured) = capture(|| self.mapper.map_principal(who));
            self.captured.append(captured);
            result
        }

        /// Calls [`AclMapper::authorize`].
        pub fn authorize(
            &mut self,
            who: &Principal,
            op: Operation,
            kind: ResourceKind,
            name: &str,
        ) -> Decision {
            let (result, captured) = capture(|| self.mapper.authorize(who, op, kind, name));
            self.captured.append(captured);
            result
        }

        /// Maps `who`, then authorizes the principal: the gateway's two calls
        /// for one request. `Err` if mapping fails.
        pub fn allows(
            &mut self,
            who: &Identity,
            op: Operation,
            kind: ResourceKind,
            name: &str,
        ) -> Result<bool, String> {
            let principal = self.map_principal(who)?;
            Ok(self.authorize(&principal, op, kind, name).allow)
        }

        /// The mapper itself.
        pub fn plugin(&mut self) -> &mut A {
            &mut self.mapper
        }

        /// Everything logged and counted so far.
        pub fn captured(&self) -> &Captured {
            &self.captured
        }
    }
}

#[cfg(feature = "router")]
pub use self::router::{run_route, RouterHarness};

#[cfg(feature = "router")]
mod router {
    use super::{capture, Captured};
    use crate::router::{Destination, Router, ShownAs};

    /// A router running natively, as one plugin instance would.
    pub struct RouterHarness<R> {
        router: R,
        captured: Captured,
    }

    impl<R: Router> RouterHarness<R> {
        /// Calls [`Router::init`] with `config`.
        pub fn new(config: &str) -> Result<Self, String> {
            let (router, captured) = capture(|| R::init(config));
            Ok(RouterHarness {
                router: router?,
                captured,
            })
        }

        /// Calls [`Router::route`].
        pub fn route(
            &mut self,
            topic: &str,
            principal: &str,
            client_id: &str,
        ) -> Option<Destination> {
            let (result, captured) = capture(|| self.router.route(topic, principal, client_id));
            self.captured.append(captured);
            result
        }

        /// Calls [`Router::client_name`].
        pub fn client_name(
            &mut self,
            cluster: &str,
            topic: &str,
            principal: &str,
            client_id: &str,
        ) -> ShownAs {
            let (result, captured) =
                capture(|| self.router.client_name(cluster, topic, principal, client_id));
            self.captured.append(captured);
            result
        }

        /// The router itself.
        pub fn plugin(&mut self) -> &mut R {
            &mut self.router
        }

        /// Everything logged and counted so far.
        pub fn captured(&self) -> &Captured {
            &self.captured
        }
    }

    /// Initialises `R` with `config` and routes one topic.
    pub fn run_route<R: Router>(
        config: &str,
        topic: &str,
        principal: &str,
        client_id: &str,
    ) -> Result<Option<Destination>, String> {
        Ok(RouterHarness::<R>::new(config)?.route(topic, principal, client_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_nest_and_restore() {
        let ((inner, ()), outer) = capture(|| {
            crate::log::info("outer 1");
            let inner = capture(|| {
                crate::log::warn("inner");
                crate::count("n", 2);
            });
            crate::count("n", 1);
            crate::log::error("outer 2");
            (inner.1, inner.0)
        });
        assert_eq!(
            inner.logs,
            vec![LogLine {
                level: Level::Warn,
                message: "inner".into()
            }]
        );
        assert_eq!(inner.counter("n"), 2);
        assert_eq!(outer.logs.len(), 2);
        assert_eq!(outer.counter("n"), 1);
        assert_eq!(outer.counter("never"), 0);
        assert!(outer.logged("outer 2"));
        // Outside a capture nothing is kept (lines go to stderr).
        assert!(!sink::log(Level::Info, "stray"));
    }

    #[test]
    fn counters_saturate() {
        let ((), captured) = capture(|| {
            crate::count("big", u64::MAX);
            crate::count("big", 1);
        });
        assert_eq!(captured.counter("big"), u64::MAX);
    }
}
