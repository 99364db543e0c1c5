//! A record filter that checks JSON record values for required fields.
//!
//! Config (JSON):
//!
//! ```json
//! {"required": ["id", "customer.email"], "mode": "reject", "allow_tombstones": true}
//! ```
//!
//! - `required`: fields every value must have, present and not `null`. A dotted
//!   name is a path through nested objects (`customer.email`).
//! - `mode`: `reject` (the default) fails the whole batch: a producer gets
//!   POLICY_VIOLATION with a message naming the first bad record's index in
//!   the batch and the missing field. `drop` removes the bad records and lets
//!   the rest through.
//! - `allow_tombstones`: records with no value (deletes on a compacted topic)
//!   pass; `true` if absent.
//!
//! A value that is not a JSON object is invalid. Unknown keys are an error.
//!
//! Counters: `batches_rejected`, `records_dropped`.

use causeway_plugin_sdk::{count, log, BatchContext, Record, RecordFilter, Verdict};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    required: Vec<String>,
    #[serde(default)]
    mode: Mode,
    #[serde(default = "yes")]
    allow_tombstones: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    #[default]
    Reject,
    Drop,
}

/// Checks records for required fields.
#[derive(Debug)]
pub struct Validate {
    /// Each required field, as its dotted name and its path.
    required: Vec<(String, Vec<String>)>,
    mode: Mode,
    allow_tombstones: bool,
}

impl RecordFilter for Validate {
    fn init(config: &str) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config).map_err(|e| {
            format!(r#"validate config: {e} (expected {{"required": ["field", ...], "mode": "reject"|"drop"}})"#)
        })?;
        if config.required.is_empty() {
            return Err("validate config: `required` is empty: nothing to check".into());
        }
        let mut required = Vec::new();
        for name in config.required {
            let path: Vec<String> = name.split('.').map(str::to_string).collect();
            if path.iter().any(String::is_empty) {
                return Err(format!(
                    "validate config: bad field name {name:?} in `required`"
                ));
            }
            required.push((name, path));
        }
        Ok(Validate {
            required,
            mode: config.mode,
            allow_tombstones: config.allow_tombstones,
        })
    }

    fn filter(&mut self, ctx: &BatchContext, records: &[Record]) -> Result<Vec<Verdict>, String> {
        let mut verdicts = Vec::with_capacity(records.len());
        let mut first_problem = None;
        let mut bad = 0u64;
        for (i, record) in records.iter().enumerate() {
            match self.problem(record) {
                None => verdicts.push(Verdict::Pass),
                Some(problem) => {
                    bad += 1;
                    first_problem.get_or_insert_with(|| format!("record {i}: {problem}"));
                    verdicts.push(Verdict::Drop);
                }
            }
        }
        let Some(first_problem) = first_problem else {
            return Ok(verdicts);
        };
        let of = records.len();
        let topic = &ctx.topic;
        let partition = ctx.partition;
        match self.mode {
            Mode::Reject => {
                count("batches_rejected", 1);
                Err(format!(
                    "{first_problem} ({bad} of {of} records invalid in the batch for {topic}-{partition})"
                ))
            }
            Mode::Drop => {
                count("records_dropped", bad);
                log::warn(format!(
                    "dropped {bad} of {of} records for {topic}-{partition}; {first_problem}"
                ));
                Ok(verdicts)
            }
        }
    }
}

impl Validate {
    /// Why `record` is invalid, or `None`.
    fn problem(&self, record: &Record) -> Option<String> {
        let Some(value) = record.value else {
            return (!self.allow_tombstones).then(|| "no value (a tombstone)".to_string());
        };
        let doc = match serde_json::from_slice::<Value>(value) {
            Ok(doc @ Value::Object(_)) => doc,
            Ok(_) => return Some("value is not a JSON object".to_string()),
            Err(e) => return Some(format!("value is not JSON ({e})")),
        };
        self.required.iter().find_map(|(name, path)| {
            let mut at = &doc;
            for key in path {
                match at.get(key) {
                    Some(next) => at = next,
                    None => return Some(format!("missing required field {name:?}")),
                }
            }
            at.is_null()
                .then(|| format!("required field {name:?} is null"))
        })
    }
}

causeway_plugin_sdk::record_filter!(Validate);

#[cfg(test)]
mod tests {
    use causeway_plugin_sdk::KafkaRecord;
    use causeway_plugin_sdk::log::Level;
    use causeway_plugin_sdk::testing::{run_filter, FilterHarness};

    use super::*;

    fn batch() -> Vec<KafkaRecord> {
        vec![
            KafkaRecord::new(r#"{"id":1,"customer":{"email":"a@b.io"}}"#),
            KafkaRecord::new(r#"{"id":2,"customer":{}}"#),
            KafkaRecord::new(r#"{"customer":{"email":"c@d.io"}}"#),
            KafkaRecord::tombstone("k"),
        ]
    }

    const REQUIRED: &str = r#""required":["id","customer.email"]"#;

    #[test]
    fn reject_names_the_record_and_the_field() {
        let err = run_filter::<Validate>(
            &format!("{{{REQUIRED}}}"),
            &BatchContext::produce("orders"),
            &batch(),
        )
        .expect_err("rejected");
        assert_eq!(
            err,
            r#"record 1: missing required field "customer.email" (2 of 4 records invalid in the batch for orders-0)"#
        );
    }

    #[test]
    fn valid_batches_pass() {
        let records = [
            KafkaRecord::new(r#"{"id":0,"customer":{"email":"x","more":1}}"#),
            KafkaRecord::tombstone("k"),
        ];
        let verdicts = run_filter::<Validate>(
            &format!("{{{REQUIRED}}}"),
            &BatchContext::produce("orders"),
            &records,
        );
        assert_eq!(verdicts, Ok(vec![Verdict::Pass, Verdict::Pass]));
    }

    #[test]
    fn drop_mode_drops_only_the_bad_records() {
        let config = format!(r#"{{{REQUIRED},"mode":"drop"}}"#);
        let mut harness = FilterHarness::<Validate>::new(&config).expect("init");
        let verdicts = harness
            .filter(&BatchContext::produce("orders"), &batch())
            .expect("filter");
        assert_eq!(
            verdicts,
            vec![Verdict::Pass, Verdict::Drop, Verdict::Drop, Verdict::Pass]
        );
        assert_eq!(harness.captured().counter("records_dropped"), 2);
        let warned: Vec<_> = harness.captured().at(Level::Warn).collect();
        assert_eq!(
            warned,
            [
                r#"dropped 2 of 4 records for orders-0; record 1: missing required field "customer.email""#
            ]
        );
    }

    #[test]
    fn not_json_null_and_tombstones() {
        let config = format!(r#"{{{REQUIRED},"mode":"drop","allow_tombstones":false}}"#);
        let mut harness = FilterHarness::<Validate>::new(&config).expect("init");
        let records = [
            KafkaRecord::new("plain text"),
            KafkaRecord::new("[1,2]"),
            KafkaRecord::new(r#"{"id":null,"customer":{"email":"e"}}"#),
            KafkaRecord::tombstone("k"),
        ];
        assert_eq!(
            harness.filter(&BatchContext::produce("t"), &records),
            Ok(vec![Verdict::Drop; 4])
        );
        let reject = FilterHarness::<Validate>::new(&format!("{{{REQUIRED}}}"))
            .expect("init")
            .filter(&BatchContext::produce("t"), &records[2..3])
            .expect_err("null id");
        assert!(
            reject.starts_with(r#"record 0: required field "id" is null"#),
            "{reject}"
        );
        let reject = FilterHarness::<Validate>::new(&format!("{{{REQUIRED}}}"))
            .expect("init")
            .filter(&BatchContext::produce("t"), &records[..1])
            .expect_err("not json");
        assert!(
            reject.starts_with("record 0: value is not JSON"),
            "{reject}"
        );
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        for (config, needle) in [
            ("{}", "missing field `required`"),
            (r#"{"required":[]}"#, "`required` is empty"),
            (r#"{"required":["a..b"]}"#, "bad field name"),
            (
                r#"{"required":["a"],"mode":"warn"}"#,
                "unknown variant `warn`",
            ),
            (
                r#"{"required":["a"],"modes":"drop"}"#,
                "unknown field `modes`",
            ),
        ] {
            let err = FilterHarness::<Validate>::new(config)
                .err()
                .unwrap_or_default();
            assert!(err.contains(needle), "config {config:?}: {err:?}");
        }
    }
}
