//! The `record-filter` world: a plugin that sees every record batch on the
//! produce and/or fetch path and answers one [`Verdict`] per record.
//!
//! Implement [`RecordFilter`] and name the type in [`record_filter!`](crate::record_filter!).
//! Answer [`Verdict::Pass`] for records you leave alone: their bytes then never
//! cross back out of the sandbox.

use std::cell::RefCell;
use std::thread::LocalKey;

/// What wit-bindgen generates for the world; plugins use the re-exports below.
#[doc(hidden)]
#[allow(unsafe_code, missing_docs, unreachable_pub, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "causeway:plugin/record-filter@0.1.0",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "causeway_plugin_sdk::record_filter::bindings",
        additional_derives: [PartialEq, Eq],
    });
}

pub use bindings::causeway::plugin::records::{
    BatchContext, Direction, Header, KafkaRecord, RecordBatch, Verdict,
};

use crate::wire::HeaderBytes;

/// A record as a filter reads it: borrowed from the batch the gateway handed
/// into the sandbox, so reading a record copies nothing. To change its value,
/// answer [`Verdict::ReplaceValue`] (nothing else crosses back); to change
/// more, [`Verdict::Replace`] with a [`KafkaRecord`], for example from
/// [`with_value`](Record::with_value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The record's offset: the broker's on a fetch; on a produce, its
    /// position in the request (the broker has not assigned one yet).
    pub offset: i64,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    /// The key, if any.
    pub key: Option<&'a [u8]>,
    /// The value; `None` for a tombstone.
    pub value: Option<&'a [u8]>,
    pub(crate) headers: HeaderBytes<'a>,
}

impl<'a> Record<'a> {
    /// The value as UTF-8 text, if there is a value and it is valid UTF-8.
    pub fn value_str(&self) -> Option<&'a str> {
        self.value.and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The headers in order, as (key, value); a key may repeat.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> {
        self.headers.iter()
    }

    /// The value of the first header named `key` (`Some(None)`: the header is
    /// there with no value).
    pub fn header(&self, key: &str) -> Option<Option<&'a [u8]>> {
        self.headers().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The record as a [`KafkaRecord`] of its own.
    pub fn owned(&self) -> KafkaRecord {
        KafkaRecord {
            key: self.key.map(<[u8]>::to_vec),
            value: self.value.map(<[u8]>::to_vec),
            headers: self
                .headers()
                .map(|(key, value)| Header {
                    key: key.to_string(),
                    value: value.map(<[u8]>::to_vec),
                })
                .collect(),
            timestamp: self.timestamp,
        }
    }

    /// The same record with another value: what [`Verdict::Replace`] usually needs.
    pub fn with_value(&self, value: impl Into<Vec<u8>>) -> KafkaRecord {
        KafkaRecord {
            value: Some(value.into()),
            ..self.owned()
        }
    }
}

/// A record filter. One value lives in each plugin instance: the gateway calls
/// [`init`](RecordFilter::init) once with the plugin's config string, then
/// [`filter`](RecordFilter::filter) once per batch.
pub trait RecordFilter: Sized + 'static {
    /// Builds the filter from the `config` string of the gateway's config
    /// file. An error stops the plugin from loading; say which key is wrong.
    fn init(config: &str) -> Result<Self, String>;

    /// Returns exactly one verdict per record, in order. An error rejects the
    /// whole batch: a produce gets POLICY_VIOLATION with this message.
    /// The records borrow from the batch: keep what you need beyond the call
    /// as [`Record::owned`].
    fn filter(&mut self, ctx: &BatchContext, records: &[Record]) -> Result<Vec<Verdict>, String>;
}

/// Checks a filter's answer the way the gateway will, so a wrong answer shows
/// up in `cargo test` with a clear message rather than as a rejected batch.
pub(crate) fn checked_filter<F: RecordFilter>(
    filter: &mut F,
    ctx: &BatchContext,
    records: &[Record<'_>],
) -> Result<Vec<Verdict>, String> {
    let verdicts = filter.filter(ctx, records)?;
    if verdicts.len() != records.len() {
        return Err(format!(
            "plugin bug: {} verdicts for {} records (one per record, in order)",
            verdicts.len(),
            records.len()
        ));
    }
    if ctx.direction == Direction::Fetch {
        if let Some(i) = verdicts
            .iter()
            .position(|v| matches!(v, Verdict::FanOut(_)))
        {
            return Err(format!(
                "plugin bug: fan-out for record {i} of a fetch (fetch allows pass, drop and replace)"
            ));
        }
    }
    Ok(verdicts)
}

impl KafkaRecord {
    /// A record with this value, no key, no headers, timestamp 0.
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        KafkaRecord {
            key: None,
            value: Some(value.into()),
            headers: Vec::new(),
            timestamp: 0,
        }
    }

    /// A record with no value (a tombstone on a compacted topic).
    pub fn tombstone(key: impl Into<Vec<u8>>) -> Self {
        KafkaRecord {
            key: Some(key.into()),
            value: None,
            headers: Vec::new(),
            timestamp: 0,
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push(Header {
            key: key.into(),
            value: Some(value.into()),
        });
        self
    }

    /// Sets the timestamp (milliseconds since the epoch).
    pub fn with_timestamp(mut self, timestamp: i64) -> Self {
        self.timestamp = timestamp;
        self
    }

    /// The same record with another value.
    pub fn with_value(&self, value: impl Into<Vec<u8>>) -> Self {
        KafkaRecord {
            value: Some(value.into()),
            ..self.clone()
        }
    }

    /// The value as UTF-8 text, if there is a value and it is valid UTF-8.
    pub fn value_str(&self) -> Option<&str> {
        self.value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The first header named `key`.
    pub fn header(&self, key: &str) -> Option<&Header> {
        self.headers.iter().find(|h| h.key == key)
    }
}

impl BatchContext {
    /// A produce to `topic`, partition 0, from an anonymous client.
    pub fn produce(topic: impl Into<String>) -> Self {
        Self::new(Direction::Produce, topic.into())
    }

    /// A fetch answer for `topic`, partition 0, to an anonymous client.
    pub fn fetch(topic: impl Into<String>) -> Self {
        Self::new(Direction::Fetch, topic.into())
    }

    fn new(direction: Direction, topic: String) -> Self {
        BatchContext {
            direction,
            topic,
            cluster: String::new(),
            partition: 0,
            principal: "User:ANONYMOUS".to_string(),
            client_id: String::new(),
        }
    }

    /// Sets the backend cluster.
    pub fn with_cluster(mut self, cluster: impl Into<String>) -> Self {
        self.cluster = cluster.into();
        self
    }

    /// Sets the partition.
    pub fn with_partition(mut self, partition: i32) -> Self {
        self.partition = partition;
        self
    }

    /// Sets the authenticated principal.
    pub fn with_principal(mut self, principal: impl Into<String>) -> Self {
        self.principal = principal.into();
        self
    }

    /// Sets the client id.
    pub fn with_client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self
    }
}

/// The glue that [`record_filter!`](crate::record_filter!) expands to calls
/// these; not for direct use.
#[doc(hidden)]
pub mod __glue {
    use super::*;

    pub type State<F> = LocalKey<RefCell<Option<F>>>;

    pub fn init<F: RecordFilter>(state: &'static State<F>, config: String) -> Result<(), String> {
        crate::host::install_panic_hook();
        let filter = F::init(&config);
        state.with(|slot| {
            let mut slot = slot.borrow_mut();
            match filter {
                Ok(filter) => {
                    *slot = Some(filter);
                    Ok(())
                }
                Err(e) => {
                    *slot = None;
                    Err(e)
                }
            }
        })
    }

    /// `None` when every record passes: nothing needs to cross back.
    pub fn filter<F: RecordFilter>(
        state: &'static State<F>,
        ctx: BatchContext,
        batches: Vec<RecordBatch>,
    ) -> Result<Option<Vec<Verdict>>, String> {
        let records = crate::wire::read(&batches)?;
        let verdicts = state.with(|slot| match slot.borrow_mut().as_mut() {
            Some(filter) => checked_filter(filter, &ctx, &records),
            None => Err(crate::NOT_INITIALISED.to_string()),
        })?;
        Ok((!verdicts.iter().all(|v| matches!(v, Verdict::Pass))).then_some(verdicts))
    }
}

/// Exports a [`RecordFilter`] as the plugin's `record-filter` world.
///
/// ```
/// use causeway_plugin_sdk::{BatchContext, Record, RecordFilter, Verdict};
///
/// struct DropTombstones;
///
/// impl RecordFilter for DropTombstones {
///     fn init(_config: &str) -> Result<Self, String> {
///         Ok(DropTombstones)
///     }
///     fn filter(&mut self, _ctx: &BatchContext, records: &[Record]) -> Result<Vec<Verdict>, String> {
///         Ok(records.iter().map(|r| if r.value.is_some() { Verdict::Pass } else { Verdict::Drop }).collect())
///     }
/// }
///
/// causeway_plugin_sdk::record_filter!(DropTombstones);
/// # fn main() {}
/// ```
///
/// The macro keeps the filter in a thread-local of the instance. On wasm32 it
/// exports `init` and `filter`; natively it only type-checks, so the same crate
/// builds for `cargo test` (see [`testing`](crate::testing)).
#[macro_export]
macro_rules! record_filter {
    ($filter:ty) => {
        #[allow(dead_code)]
        const _: () = {
            ::std::thread_local! {
                static STATE: ::core::cell::RefCell<::core::option::Option<$filter>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            struct CausewayRecordFilter;

            impl $crate::record_filter::bindings::Guest for CausewayRecordFilter {
                fn init(
                    config: ::std::string::String,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::record_filter::__glue::init::<$filter>(&STATE, config)
                }

                fn filter(
                    context: $crate::record_filter::BatchContext,
                    batches: ::std::vec::Vec<$crate::record_filter::RecordBatch>,
                ) -> ::core::result::Result<
                    ::core::option::Option<::std::vec::Vec<$crate::record_filter::Verdict>>,
                    ::std::string::String,
                > {
                    $crate::record_filter::__glue::filter::<$filter>(&STATE, context, batches)
                }
            }

            #[cfg(target_arch = "wasm32")]
            $crate::record_filter::bindings::export!(
                CausewayRecordFilter with_types_in $crate::record_filter::bindings
            );
        };
    };
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::testing::{capture, run_filter, FilterHarness};

    /// Answers whatever the config names, to test the checks around it.
    struct Scripted(String);

    impl RecordFilter for Scripted {
        fn init(config: &str) -> Result<Self, String> {
            match config {
                "bad" => Err("bad config".into()),
                other => Ok(Scripted(other.to_string())),
            }
        }

        fn filter(
            &mut self,
            _ctx: &BatchContext,
            records: &[Record],
        ) -> Result<Vec<Verdict>, String> {
            crate::count("batches", 1);
            crate::log::debug(format!("{} records", records.len()));
            Ok(match self.0.as_str() {
                "short" => vec![],
                "fan-out" => records
                    .iter()
                    .map(|r| Verdict::FanOut(vec![r.owned(), r.owned()]))
                    .collect(),
                "fail" => return Err("no".into()),
                _ => vec![Verdict::Pass; records.len()],
            })
        }
    }

    thread_local! {
        static STATE: RefCell<Option<Scripted>> = const { RefCell::new(None) };
    }

    #[test]
    fn glue_keeps_the_filter_between_calls() {
        let records = vec![crate::wire::write(&[KafkaRecord::new("a")], 0)];
        let ctx = BatchContext::produce("t");
        assert_eq!(
            __glue::filter(&STATE, ctx.clone(), records.clone()),
            Err(crate::NOT_INITIALISED.to_string())
        );
        assert_eq!(__glue::init(&STATE, "pass".into()), Ok(()));
        let (verdicts, captured) = capture(|| __glue::filter(&STATE, ctx.clone(), records.clone()));
        assert_eq!(verdicts, Ok(None), "all pass: nothing crosses back");
        assert_eq!(captured.counter("batches"), 1);
        assert_eq!(__glue::init(&STATE, "fan-out".into()), Ok(()));
        let (verdicts, _) = capture(|| __glue::filter(&STATE, ctx.clone(), records.clone()));
        assert!(
            matches!(&verdicts, Ok(Some(v)) if matches!(v.as_slice(), [Verdict::FanOut(r)] if r.len() == 2)),
            "{verdicts:?}"
        );
        // A failed init leaves no filter behind.
        assert_eq!(__glue::init(&STATE, "bad".into()), Err("bad config".into()));
        assert!(__glue::filter(&STATE, ctx, records).is_err());
    }

    #[test]
    fn answers_are_checked_like_the_gateway_does() {
        let records = [KafkaRecord::new("a"), KafkaRecord::new("b")];
        let produce = BatchContext::produce("t");
        let err = run_filter::<Scripted>("short", &produce, &records).expect_err("short");
        assert_eq!(
            err,
            "plugin bug: 0 verdicts for 2 records (one per record, in order)"
        );
        assert!(run_filter::<Scripted>("fan-out", &produce, &records).is_ok());
        let err = run_filter::<Scripted>("fan-out", &BatchContext::fetch("t"), &records)
            .expect_err("fetch");
        assert!(err.contains("fan-out for record 0 of a fetch"), "{err}");
        assert_eq!(
            run_filter::<Scripted>("fail", &produce, &records),
            Err("no".into())
        );
        assert_eq!(
            run_filter::<Scripted>("bad", &produce, &records),
            Err("bad config".into())
        );
    }

    #[test]
    fn harness_forwards_and_captures() {
        let mut harness = FilterHarness::<Scripted>::new("fan-out").expect("init");
        let records = [KafkaRecord::new("a").with_key("k")];
        let forwarded = harness
            .forward(&BatchContext::produce("t"), &records)
            .expect("forward");
        assert_eq!(forwarded, vec![records[0].clone(), records[0].clone()]);
        harness
            .filter(&BatchContext::produce("t"), &records)
            .expect("again");
        assert_eq!(harness.captured().counter("batches"), 2);
        assert_eq!(harness.captured().at(crate::log::Level::Debug).count(), 2);
        assert_eq!(harness.take_captured().logs.len(), 2);
        assert!(harness.captured().logs.is_empty());
        assert_eq!(harness.plugin().0, "fan-out");
    }

    #[test]
    fn record_helpers() {
        let r = KafkaRecord::new("v")
            .with_key("k")
            .with_header("h", "x")
            .with_timestamp(9);
        assert_eq!(r.value_str(), Some("v"));
        assert_eq!(
            r.header("h").and_then(|h| h.value.as_deref()),
            Some(&b"x"[..])
        );
        assert!(r.header("nope").is_none());
        let replaced = r.with_value("w");
        assert_eq!(
            (
                replaced.value_str(),
                replaced.key.as_deref(),
                replaced.timestamp
            ),
            (Some("w"), Some(&b"k"[..]), 9)
        );
        assert_eq!(KafkaRecord::tombstone("k").value_str(), None);
        assert_eq!(KafkaRecord::new(vec![0xff]).value_str(), None);
        // The same, read the way a filter sees it.
        let batch = crate::wire::write(std::slice::from_ref(&r), 5);
        let read = crate::wire::read(std::slice::from_ref(&batch)).expect("read");
        let view = read[0];
        assert_eq!(
            (view.offset, view.timestamp, view.key, view.value_str()),
            (5, 9, Some(&b"k"[..]), Some("v"))
        );
        assert_eq!(view.header("h"), Some(Some(&b"x"[..])));
        assert_eq!(view.header("nope"), None);
        assert_eq!(view.with_value("w"), replaced);
        assert_eq!(view.owned(), r);
        let ctx = BatchContext::fetch("t")
            .with_cluster("east")
            .with_partition(3)
            .with_principal("alice")
            .with_client_id("c");
        assert_eq!(
            (
                ctx.direction,
                ctx.cluster.as_str(),
                ctx.partition,
                ctx.principal.as_str(),
                ctx.client_id.as_str()
            ),
            (Direction::Fetch, "east", 3, "alice", "c")
        );
    }
}
