//! A record filter that turns a record holding a JSON array into one record
//! per element: producers that batch events into one message, consumers that
//! want one event per record.
//!
//! Config (JSON, every key optional):
//!
//! ```json
//! {"part_header": "split-part", "max_parts": 1000}
//! ```
//!
//! - `part_header`: a header added to each element's record, `"i/n"` (1-based);
//!   none if absent.
//! - `max_parts`: an array with more elements rejects the batch (a producer
//!   gets POLICY_VIOLATION naming the record); 1000 if absent.
//!
//! Each element's record keeps the original's key, headers and timestamp, and
//! its value is the element's JSON text exactly as it was written. An empty
//! array removes the record. A value that is not a JSON array, and every
//! tombstone, passes unchanged. Unknown keys are an error.
//!
//! Runs on produce only (`on = ["produce"]`): a fetch answer keeps the
//! broker's offsets, so there every record passes. An idempotent or
//! transactional producer's batch cannot change its record count (the broker
//! checks its sequence numbers), so the gateway rejects such a batch when an
//! array in it has other than one element.
//!
//! Counters: `records_split`, `parts_written`.

use causeway_plugin_sdk::{
    count, BatchContext, Direction, KafkaRecord, Record, RecordFilter, Verdict,
};
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    part_header: Option<String>,
    #[serde(default = "default_max_parts")]
    max_parts: usize,
}

fn default_max_parts() -> usize {
    1000
}

/// Splits JSON arrays into their elements.
#[derive(Debug)]
pub struct Split {
    part_header: Option<String>,
    max_parts: usize,
}

impl RecordFilter for Split {
    fn init(config: &str) -> Result<Self, String> {
        // No config at all reads as `{}`: every key takes its default.
        let text = if config.trim().is_empty() {
            "{}"
        } else {
            config
        };
        let config: Config = serde_json::from_str(text).map_err(|e| {
            format!(
                r#"split config: {e} (expected {{"part_header": "split-part", "max_parts": 1000}})"#
            )
        })?;
        if config.max_parts == 0 {
            return Err("split config: max_parts must be at least 1".into());
        }
        if config.part_header.as_deref() == Some("") {
            return Err("split config: part_header is empty; leave it out for no header".into());
        }
        Ok(Split {
            part_header: config.part_header,
            max_parts: config.max_parts,
        })
    }

    fn filter(&mut self, ctx: &BatchContext, records: &[Record]) -> Result<Vec<Verdict>, String> {
        if ctx.direction == Direction::Fetch {
            return Ok(vec![Verdict::Pass; records.len()]);
        }
        let (mut split, mut parts) = (0, 0);
        let mut verdicts = Vec::with_capacity(records.len());
        for (i, record) in records.iter().enumerate() {
            let Some(elements) = array(record) else {
                verdicts.push(Verdict::Pass);
                continue;
            };
            if elements.len() > self.max_parts {
                return Err(format!(
                    "record {i}: an array of {} elements, more than max_parts {} (batch for {}-{})",
                    elements.len(),
                    self.max_parts,
                    ctx.topic,
                    ctx.partition
                ));
            }
            split += 1;
            parts += elements.len() as u64;
            verdicts.push(if elements.is_empty() {
                Verdict::Drop
            } else {
                Verdict::FanOut(self.parts(record, &elements))
            });
        }
        if split > 0 {
            count("records_split", split);
            count("parts_written", parts);
        }
        Ok(verdicts)
    }
}

impl Split {
    /// One record per element, each like `record` but for its value.
    fn parts(&self, record: &Record, elements: &[&RawValue]) -> Vec<KafkaRecord> {
        let n = elements.len();
        elements
            .iter()
            .enumerate()
            .map(|(i, element)| {
                let part = record.with_value(element.get());
                match &self.part_header {
                    Some(name) => part.with_header(name.clone(), format!("{}/{n}", i + 1)),
                    None => part,
                }
            })
            .collect()
    }
}

/// The elements of the record's value, if it is a JSON array.
fn array<'a>(record: &Record<'a>) -> Option<Vec<&'a RawValue>> {
    let value = record.value?;
    // Only a value that starts as an array is parsed.
    if value.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'[') {
        return None;
    }
    serde_json::from_slice(value).ok()
}

causeway_plugin_sdk::record_filter!(Split);

#[cfg(test)]
mod tests {
    use causeway_plugin_sdk::testing::{apply, run_filter, FilterHarness};

    use super::*;

    fn record(value: &str) -> KafkaRecord {
        KafkaRecord::new(value)
            .with_key("k")
            .with_header("trace", "t1")
            .with_timestamp(1_700_000_000_123)
    }

    #[test]
    fn each_element_becomes_a_record_with_the_originals_key_headers_and_time() {
        let records = [
            record(r#"[{"a": 1}, [2, 3], "x"]"#),
            record("not an array"),
            record("  []  "),
            KafkaRecord::tombstone("gone"),
        ];
        let verdicts = run_filter::<Split>(
            r#"{"part_header": "part"}"#,
            &BatchContext::produce("events"),
            &records,
        )
        .expect("split");
        let out = apply(&records, &verdicts);
        let values: Vec<Option<&str>> = out.iter().map(|r| r.value_str()).collect();
        assert_eq!(
            values,
            [
                Some(r#"{"a": 1}"#),
                Some("[2, 3]"),
                Some(r#""x""#),
                Some("not an array"),
                None
            ],
            "elements keep their own text; the empty array is gone"
        );
        for (i, r) in out[..3].iter().enumerate() {
            assert_eq!(r.key.as_deref(), Some(&b"k"[..]));
            assert_eq!(r.timestamp, 1_700_000_000_123);
            let headers: Vec<(&str, Option<&[u8]>)> = r
                .headers
                .iter()
                .map(|h| (h.key.as_str(), h.value.as_deref()))
                .collect();
            let part = format!("{}/3", i + 1);
            assert_eq!(
                headers,
                [("trace", Some(&b"t1"[..])), ("part", Some(part.as_bytes()))]
            );
        }
        assert!(matches!(verdicts[1], Verdict::Pass));
        assert!(matches!(verdicts[2], Verdict::Drop));
        assert!(matches!(verdicts[3], Verdict::Pass));
    }

    #[test]
    fn counters_count_split_records_and_parts() {
        let mut h = FilterHarness::<Split>::new("").expect("init");
        h.filter(
            &BatchContext::produce("events"),
            &[record("[1, 2]"), record("[3]"), record("{}")],
        )
        .expect("split");
        let captured = h.take_captured();
        assert_eq!(captured.counter("records_split"), 2);
        assert_eq!(captured.counter("parts_written"), 3);
    }

    #[test]
    fn too_many_elements_reject_the_batch_by_name() {
        let err = run_filter::<Split>(
            r#"{"max_parts": 2}"#,
            &BatchContext::produce("events").with_partition(3),
            &[record("[1]"), record("[1, 2, 3]")],
        )
        .expect_err("rejected");
        assert_eq!(
            err,
            "record 1: an array of 3 elements, more than max_parts 2 (batch for events-3)"
        );
    }

    #[test]
    fn fetch_answers_pass() {
        let verdicts = run_filter::<Split>("", &BatchContext::fetch("events"), &[record("[1, 2]")])
            .expect("pass");
        assert!(matches!(verdicts.as_slice(), [Verdict::Pass]));
    }

    #[test]
    fn bad_json_arrays_pass_and_bad_config_is_refused() {
        let verdicts =
            run_filter::<Split>("", &BatchContext::produce("events"), &[record("[1, 2")])
                .expect("pass");
        assert!(matches!(verdicts.as_slice(), [Verdict::Pass]));
        for (config, says) in [
            (r#"{"max_parts": 0}"#, "max_parts must be at least 1"),
            (r#"{"part_header": ""}"#, "part_header is empty"),
            (r#"{"parts": 3}"#, "unknown field `parts`"),
        ] {
            let err = FilterHarness::<Split>::new(config)
                .err()
                .unwrap_or_default();
            assert!(err.contains(says), "{config}: {err}");
        }
    }
}
