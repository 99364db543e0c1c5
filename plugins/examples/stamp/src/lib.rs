//! A record filter that stamps each produced record with who produced it: the
//! principal the gateway authenticated and the client id, in headers that a
//! client cannot forge. Consumers and audits downstream can then trust them.
//!
//! Config (JSON):
//!
//! ```json
//! {"principal": "produced-by", "client_id": "produced-by-client"}
//! ```
//!
//! - `principal`: the header that gets the producer's principal (for example
//!   `User:alice`, or `User:ANONYMOUS` without authentication).
//! - `client_id`: the header that gets the producer's client id.
//!
//! At least one must be given. A header the client sent under either name is
//! removed first (every occurrence), so a stamped header is always the
//! gateway's. The record's key, value, timestamp and other headers stay as
//! they were. Unknown keys are an error.
//!
//! Runs on produce (`on = ["produce"]`); on a fetch every record passes.
//!
//! Counters: `records_stamped`, `forged_headers_removed`.

use causeway_plugin_sdk::{count, BatchContext, Direction, Header, Record, RecordFilter, Verdict};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    principal: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
}

/// Stamps records with their producer's identity.
#[derive(Debug)]
pub struct Stamp {
    principal: Option<String>,
    client_id: Option<String>,
}

impl RecordFilter for Stamp {
    fn init(config: &str) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config).map_err(|e| {
            format!(r#"stamp config: {e} (expected {{"principal": "produced-by", "client_id": "produced-by-client"}})"#)
        })?;
        if config.principal.is_none() && config.client_id.is_none() {
            return Err("stamp config: nothing to stamp: give `principal` and/or `client_id` (header names)".into());
        }
        for (key, name) in [
            ("principal", &config.principal),
            ("client_id", &config.client_id),
        ] {
            if name.as_deref() == Some("") {
                return Err(format!("stamp config: `{key}` is an empty header name"));
            }
        }
        if config.principal.is_some() && config.principal == config.client_id {
            return Err("stamp config: `principal` and `client_id` name the same header".into());
        }
        Ok(Stamp {
            principal: config.principal,
            client_id: config.client_id,
        })
    }

    fn filter(&mut self, ctx: &BatchContext, records: &[Record]) -> Result<Vec<Verdict>, String> {
        if ctx.direction == Direction::Fetch {
            return Ok(vec![Verdict::Pass; records.len()]);
        }
        let stamps: Vec<(&str, &str)> = [
            (self.principal.as_deref(), ctx.principal.as_str()),
            (self.client_id.as_deref(), ctx.client_id.as_str()),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name?, value)))
        .collect();
        let mut forged = 0;
        let verdicts: Vec<Verdict> = records
            .iter()
            .map(|record| {
                let mut stamped = record.owned();
                let before = stamped.headers.len();
                stamped
                    .headers
                    .retain(|h| !stamps.iter().any(|(name, _)| h.key == *name));
                forged += (before - stamped.headers.len()) as u64;
                stamped
                    .headers
                    .extend(stamps.iter().map(|(name, value)| Header {
                        key: (*name).to_string(),
                        value: Some(value.as_bytes().to_vec()),
                    }));
                Verdict::Replace(stamped)
            })
            .collect();
        if !verdicts.is_empty() {
            count("records_stamped", verdicts.len() as u64);
        }
        if forged > 0 {
            count("forged_headers_removed", forged);
        }
        Ok(verdicts)
    }
}

causeway_plugin_sdk::record_filter!(Stamp);

#[cfg(test)]
mod tests {
    use causeway_plugin_sdk::testing::{run_filter, FilterHarness};
    use causeway_plugin_sdk::KafkaRecord;

    use super::*;

    const CONFIG: &str = r#"{"principal": "produced-by", "client_id": "produced-by-client"}"#;

    fn headers(r: &KafkaRecord) -> Vec<(&str, Option<&[u8]>)> {
        r.headers
            .iter()
            .map(|h| (h.key.as_str(), h.value.as_deref()))
            .collect()
    }

    #[test]
    fn records_get_the_producers_identity_and_keep_the_rest() {
        let records = [
            KafkaRecord::new("v1")
                .with_key("k1")
                .with_header("trace", "t")
                .with_timestamp(1_700_000_000_001),
            KafkaRecord::tombstone("k2").with_timestamp(1_700_000_000_002),
        ];
        let ctx = BatchContext::produce("orders")
            .with_principal("User:alice")
            .with_client_id("billing");
        let mut h = FilterHarness::<Stamp>::new(CONFIG).expect("init");
        let out = h.forward(&ctx, &records).expect("stamp");
        assert_eq!(out.len(), 2);
        assert_eq!(
            headers(&out[0]),
            [
                ("trace", Some(&b"t"[..])),
                ("produced-by", Some(&b"User:alice"[..])),
                ("produced-by-client", Some(&b"billing"[..])),
            ]
        );
        assert_eq!(out[0].key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(out[0].value.as_deref(), Some(&b"v1"[..]));
        assert_eq!(out[0].timestamp, 1_700_000_000_001);
        assert_eq!(out[1].value, None, "a tombstone stays one");
        assert_eq!(out[1].timestamp, 1_700_000_000_002);
        assert_eq!(h.take_captured().counter("records_stamped"), 2);
    }

    #[test]
    fn forged_headers_are_replaced_not_kept() {
        let records = [KafkaRecord::new("v")
            .with_header("produced-by", "User:admin")
            .with_header("other", "o")
            .with_header("produced-by", "User:root")];
        let ctx = BatchContext::produce("orders").with_client_id("mallory");
        let mut h = FilterHarness::<Stamp>::new(r#"{"principal": "produced-by"}"#).expect("init");
        let out = h.forward(&ctx, &records).expect("stamp");
        assert_eq!(
            headers(&out[0]),
            [
                ("other", Some(&b"o"[..])),
                ("produced-by", Some(&b"User:ANONYMOUS"[..]))
            ]
        );
        assert_eq!(h.take_captured().counter("forged_headers_removed"), 2);
    }

    #[test]
    fn fetch_answers_pass() {
        let verdicts = run_filter::<Stamp>(
            CONFIG,
            &BatchContext::fetch("orders"),
            &[KafkaRecord::new("v")],
        )
        .expect("pass");
        assert!(matches!(verdicts.as_slice(), [Verdict::Pass]));
    }

    #[test]
    fn bad_config_is_refused_with_the_reason() {
        for (config, says) in [
            ("{}", "nothing to stamp"),
            (
                r#"{"principal": ""}"#,
                "`principal` is an empty header name",
            ),
            (
                r#"{"principal": "p", "client_id": "p"}"#,
                "name the same header",
            ),
            (r#"{"user": "u"}"#, "unknown field `user`"),
            ("not json", "stamp config:"),
        ] {
            let err = FilterHarness::<Stamp>::new(config)
                .err()
                .unwrap_or_default();
            assert!(err.contains(says), "{config}: {err}");
        }
    }
}
