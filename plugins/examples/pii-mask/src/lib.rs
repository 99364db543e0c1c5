//! A record filter that masks personal data in JSON record values.
//!
//! Config (JSON):
//!
//! ```json
//! {"fields": ["email", "ssn"], "detect": ["email", "card"], "mask": "***"}
//! ```
//!
//! - `fields`: object keys whose values are masked wherever they appear in the
//!   document (at any depth, inside arrays too). `null` values stay `null`.
//! - `detect`: patterns masked inside every string value: `email` (an address
//!   like `a.b@example.com`) and `card` (13 to 19 digits, optionally grouped by
//!   single spaces or dashes, that pass the Luhn check, as every payment card
//!   number does).
//! - `mask`: what replaces them; `"***"` if absent.
//!
//! At least one of `fields` and `detect` must be given; unknown keys are an
//! error. Only values are read: keys and headers pass as they are. A record
//! whose value is not JSON, or has nothing to mask, gets `pass` (its bytes do
//! not come back from the sandbox); a masked one gets `replace-value` with the same
//! bytes but for the masked values (spacing, key order, escapes and numbers
//! kept): the document is read in one pass, with no tree built.
//!
//! Counters: `records_masked`, `values_masked` (per batch, when non-zero).

mod rewrite;

use causeway_plugin_sdk::{count, BatchContext, Record, RecordFilter, Verdict};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    fields: Vec<String>,
    #[serde(default)]
    detect: Vec<Detector>,
    #[serde(default = "default_mask")]
    mask: String,
}

fn default_mask() -> String {
    "***".to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Detector {
    Email,
    Card,
}

/// Masks the configured fields and patterns.
#[derive(Debug)]
pub struct PiiMask {
    fields: Vec<String>,
    /// `"field"` as it appears in JSON text, to skip records that cannot hold one.
    quoted_fields: Vec<memchr::memmem::Finder<'static>>,
    email: bool,
    card: bool,
    /// The mask as it is written inside a JSON string (escaped, unquoted).
    mask_json: Vec<u8>,
}

impl RecordFilter for PiiMask {
    fn init(config: &str) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config).map_err(|e| {
            format!(r#"pii-mask config: {e} (expected {{"fields": [...], "detect": ["email", "card"], "mask": "***"}})"#)
        })?;
        if config.fields.is_empty() && config.detect.is_empty() {
            return Err("pii-mask config: nothing to mask: give `fields` and/or `detect`".into());
        }
        if let Some(f) = config.fields.iter().find(|f| f.is_empty()) {
            return Err(format!(
                "pii-mask config: empty field name in `fields`: {f:?}"
            ));
        }
        let mut mask_json = Vec::with_capacity(config.mask.len());
        rewrite::escape_into(&mut mask_json, config.mask.as_bytes());
        Ok(PiiMask {
            mask_json,
            quoted_fields: config
                .fields
                .iter()
                .map(|f| memchr::memmem::Finder::new(format!("\"{f}\"").as_bytes()).into_owned())
                .collect(),
            fields: config.fields,
            email: config.detect.contains(&Detector::Email),
            card: config.detect.contains(&Detector::Card),
        })
    }

    fn filter(&mut self, _ctx: &BatchContext, records: &[Record]) -> Result<Vec<Verdict>, String> {
        let mut records_masked = 0;
        let mut values_masked = 0;
        let verdicts = records
            .iter()
            .map(|record| match self.mask_record(record) {
                Some((masked, n)) => {
                    records_masked += 1;
                    values_masked += n;
                    Verdict::ReplaceValue(Some(masked))
                }
                None => Verdict::Pass,
            })
            .collect();
        if records_masked > 0 {
            count("records_masked", records_masked);
            count("values_masked", values_masked);
        }
        Ok(verdicts)
    }
}

impl PiiMask {
    /// The masked value and how many values were masked, or `None` to pass it.
    fn mask_record(&self, record: &Record) -> Option<(Vec<u8>, u64)> {
        let value = record.value?;
        let scan = rewrite::scan(value);
        if !self.may_hold_pii(value, scan) {
            return None;
        }
        rewrite::rewrite(value, scan, self)
    }

    /// A cheap look at the raw bytes before parsing: most records hold none of
    /// the fields and nothing a detector could match. Escaped text (`\u0065`)
    /// could hide a field name, so anything with a backslash is parsed.
    fn may_hold_pii(&self, value: &[u8], scan: rewrite::Scan) -> bool {
        scan.backslash
            || self.quoted_fields.iter().any(|f| f.find(value).is_some())
            || (self.email && memchr::memchr(b'@', value).is_some())
            || (self.card && digits(value) >= CARD_MIN_DIGITS)
    }
}

impl rewrite::Masking for PiiMask {
    fn masks_field(&self, key: &[u8]) -> bool {
        self.fields.iter().any(|f| f.as_bytes() == key)
    }

    /// E-mail addresses first; card numbers are looked for in the text
    /// between them (the digits of an address's local part are not a card).
    #[inline(always)]
    fn find_spans(&self, text: &[u8], mut span: impl FnMut(usize, usize)) {
        let mut gap = 0;
        if self.email {
            find_emails(text, |start, end| {
                if self.card {
                    let from = gap;
                    find_cards(&text[from..start], |s, e| span(from + s, from + e));
                }
                span(start, end);
                gap = end;
            });
        }
        if self.card {
            find_cards(&text[gap..], |s, e| span(gap + s, gap + e));
        }
    }

    fn mask_json(&self) -> &[u8] {
        &self.mask_json
    }
}

/// How many ASCII digits `bytes` holds: a loop without branches, which the
/// compiler turns into vector code.
fn digits(bytes: &[u8]) -> usize {
    bytes.iter().map(|c| usize::from(c.is_ascii_digit())).sum()
}

fn is_local_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn is_domain_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')
}

/// Calls `span` with each `local@domain.tld` in `b`, in order (ASCII; a TLD
/// of two letters or more).
fn find_emails(b: &[u8], mut span: impl FnMut(usize, usize)) {
    let mut from = 0;
    while let Some(at) = memchr::memchr(b'@', &b[from..]).map(|i| from + i) {
        let mut start = at;
        while start > from && is_local_char(b[start - 1]) {
            start -= 1;
        }
        let mut end = at + 1;
        while end < b.len() && is_domain_char(b[end]) {
            end += 1;
        }
        // A sentence's full stop or a trailing dash is not part of the domain.
        while end > at + 1 && matches!(b[end - 1], b'.' | b'-') {
            end -= 1;
        }
        let domain = &b[at + 1..end];
        let valid_domain = domain.iter().rposition(|&c| c == b'.').is_some_and(|dot| {
            let (host, tld) = (&domain[..dot], &domain[dot + 1..]);
            host.split(|&c| c == b'.')
                .all(|l| !l.is_empty() && l.first() != Some(&b'-') && l.last() != Some(&b'-'))
                && tld.len() >= 2
                && tld.iter().all(u8::is_ascii_alphabetic)
        });
        if start < at && valid_domain {
            span(start, end);
            from = end;
        } else {
            from = at + 1;
        }
    }
}

const CARD_MIN_DIGITS: usize = 13;
const CARD_MAX_DIGITS: usize = 19;

/// Calls `span` with each run of 13 to 19 digits in `b` (single spaces or
/// dashes allowed between them, not touching other digits) that passes the
/// Luhn check, in order.
fn find_cards(b: &[u8], mut span: impl FnMut(usize, usize)) {
    // Most strings hold too few digits for a card number.
    if b.len() < CARD_MIN_DIGITS || digits(b) < CARD_MIN_DIGITS {
        return;
    }
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // A run of digits with single separators between them, read once:
        // which of its digits the Luhn check doubles depends on the run's
        // length, so both sums are kept: `doubling` doubles the digits at
        // positions of the parity of `count` from the left, `other` the rest.
        let start = i;
        let mut end = i;
        let mut count = 0;
        let (mut doubling, mut other) = (0u32, 0u32);
        let mut j = i;
        while j < b.len() {
            if b[j].is_ascii_digit() {
                let d = b[j] - b'0';
                doubling += u32::from(DOUBLED[usize::from(d)]);
                other += u32::from(d);
                std::mem::swap(&mut doubling, &mut other);
                count += 1;
                j += 1;
                end = j;
            } else if matches!(b[j], b' ' | b'-') && j + 1 < b.len() && b[j + 1].is_ascii_digit() {
                j += 1;
            } else {
                break;
            }
        }
        // Luhn doubles every second digit from the right, starting with the
        // next to last: those at positions of the parity of `count`.
        if (CARD_MIN_DIGITS..=CARD_MAX_DIGITS).contains(&count) && doubling % 10 == 0 {
            span(start, end);
        }
        i = end;
    }
}

/// A digit doubled as the Luhn check does (`2d`, less 9 past 9).
const DOUBLED: [u8; 10] = [0, 2, 4, 6, 8, 1, 3, 5, 7, 9];

/// The Luhn check over the digits of `text` (other bytes are skipped), as
/// written in its definition: the reference for [`find_cards`]'s one pass.
#[cfg(test)]
fn luhn(text: &[u8]) -> bool {
    let sum: u32 = text
        .iter()
        .rev()
        .filter(|b| b.is_ascii_digit())
        .enumerate()
        .map(|(i, &b)| {
            let d = u32::from(b - b'0');
            match (i % 2 == 1, d * 2) {
                (true, d2) if d2 > 9 => d2 - 9,
                (true, d2) => d2,
                (false, _) => d,
            }
        })
        .sum();
    sum % 10 == 0
}

causeway_plugin_sdk::record_filter!(PiiMask);

#[cfg(test)]
mod tests {
    use causeway_plugin_sdk::KafkaRecord;
    use causeway_plugin_sdk::testing::{apply, run_filter, FilterHarness};

    use super::*;

    const CONFIG: &str = r#"{"fields":["email","ssn"],"mask":"***"}"#;

    fn produce() -> BatchContext {
        BatchContext::produce("customers")
    }

    fn value_of(v: &Verdict) -> Option<String> {
        match v {
            Verdict::ReplaceValue(Some(v)) => String::from_utf8(v.clone()).ok(),
            _ => None,
        }
    }

    #[test]
    fn masks_listed_fields_at_any_depth() {
        let records = [KafkaRecord::new(
            r#"{"id":7,"email":"a@b.io","profile":{"ssn":"123-45-6789","tags":[{"email":"c@d.io"}]},"n":1.50}"#,
        )
        .with_key("k")
        .with_header("h", "v")
        .with_timestamp(42)];
        let mut harness = FilterHarness::<PiiMask>::new(CONFIG).expect("init");
        let verdicts = harness.filter(&produce(), &records).expect("filter");
        assert_eq!(
            value_of(&verdicts[0]).as_deref(),
            Some(
                r#"{"id":7,"email":"***","profile":{"ssn":"***","tags":[{"email":"***"}]},"n":1.50}"#
            )
        );
        // Everything but the value is kept.
        let forwarded = apply(&records, &verdicts);
        let r = &forwarded[0];
        assert_eq!(
            (r.key.as_deref(), r.timestamp, r.headers.len()),
            (Some(&b"k"[..]), 42, 1)
        );
        assert_eq!(harness.captured().counter("records_masked"), 1);
        assert_eq!(harness.captured().counter("values_masked"), 3);
    }

    #[test]
    fn untouched_records_pass() {
        let records = [
            KafkaRecord::new(r#"{"id":1,"name":"x"}"#),
            KafkaRecord::new("not json, email: a@b.io"),
            KafkaRecord::new(vec![0xff, 0xfe, 0x00]),
            KafkaRecord::tombstone("k"),
            KafkaRecord::new(r#"{"email":null}"#),
            // Mentions the field name only as a value.
            KafkaRecord::new(r#"{"note":"email"}"#),
        ];
        let verdicts = run_filter::<PiiMask>(CONFIG, &produce(), &records).expect("filter");
        assert_eq!(verdicts, vec![Verdict::Pass; records.len()]);
    }

    #[test]
    fn escaped_keys_are_still_found() {
        let records = [KafkaRecord::new(r#"{"\u0065mail":"a@b.io"}"#)];
        let verdicts = run_filter::<PiiMask>(CONFIG, &produce(), &records).expect("filter");
        assert_eq!(
            value_of(&verdicts[0]).as_deref(),
            Some(r#"{"\u0065mail":"***"}"#)
        );
    }

    #[test]
    fn detectors_mask_inside_strings() {
        let config = r#"{"detect":["email","card"],"mask":"<redacted>"}"#;
        let records = [
            KafkaRecord::new(
                r#"{"msg":"mail jo.doe+x@mail.example.com. or pay 4111 1111 1111 1111 now"}"#,
            ),
            KafkaRecord::new(r#"["card 4111-1111-1111-1111", "order 1234567890123"]"#),
            KafkaRecord::new(r#""plain string with bob@example.org""#),
        ];
        let verdicts = run_filter::<PiiMask>(config, &produce(), &records).expect("filter");
        assert_eq!(
            value_of(&verdicts[0]).as_deref(),
            Some(r#"{"msg":"mail <redacted>. or pay <redacted> now"}"#)
        );
        // 1234567890123 fails the Luhn check: an order number, not a card.
        assert_eq!(
            value_of(&verdicts[1]).as_deref(),
            Some(r#"["card <redacted>", "order 1234567890123"]"#)
        );
        assert_eq!(
            value_of(&verdicts[2]).as_deref(),
            Some(r#""plain string with <redacted>""#)
        );
    }

    fn emails(s: &str) -> Vec<(usize, usize)> {
        let mut spans = Vec::new();
        find_emails(s.as_bytes(), |start, end| spans.push((start, end)));
        spans
    }

    fn cards(s: &str) -> Vec<(usize, usize)> {
        let mut spans = Vec::new();
        find_cards(s.as_bytes(), |start, end| spans.push((start, end)));
        spans
    }

    #[test]
    fn the_mask_is_escaped_where_it_is_written() {
        let config = r#"{"fields":["ssn"],"detect":["email"],"mask":"<\"hidden\">"}"#;
        let records = [KafkaRecord::new(r#"{"ssn":"1","m":"to a@b.io, \u0062@c.io"}"#)];
        let verdicts = run_filter::<PiiMask>(config, &produce(), &records).expect("filter");
        assert_eq!(
            value_of(&verdicts[0]).as_deref(),
            Some(r#"{"ssn":"<\"hidden\">","m":"to <\"hidden\">, <\"hidden\">"}"#)
        );
    }

    #[test]
    fn email_detector_edges() {
        assert_eq!(emails("a@b.io"), vec![(0, 6)]);
        assert_eq!(emails("@b.io x@ y@z q@host"), vec![]);
        assert_eq!(emails("to: x@y.co, z@w.org."), vec![(4, 10), (12, 19)]);
        assert_eq!(emails("a@-b.io a@b..io a@b.c0"), vec![]);
    }

    #[test]
    fn card_detector_edges() {
        assert_eq!(cards("4111111111111111"), vec![(0, 16)]);
        assert_eq!(cards("4111 1111 1111 1111"), vec![(0, 19)]);
        // Too long, double separators, wrong checksum.
        assert_eq!(cards("41111111111111111111111"), vec![]);
        assert_eq!(cards("4111  1111 1111 1111"), vec![]);
        assert_eq!(cards("4111111111111112"), vec![]);
    }

    #[test]
    fn the_one_pass_luhn_check_agrees_with_its_definition() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..5000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = CARD_MIN_DIGITS + (seed % 7) as usize;
            let number: String = (0..len).map(|i| char::from(b'0' + ((seed >> (i * 3)) % 10) as u8)).collect();
            let found = !cards(&number).is_empty();
            assert_eq!(found, luhn(number.as_bytes()), "{number}");
        }
    }

    #[test]
    fn fetch_answers_are_masked_too() {
        let records = [KafkaRecord::new(r#"{"ssn":"1"}"#)];
        let verdicts = run_filter::<PiiMask>(CONFIG, &BatchContext::fetch("customers"), &records)
            .expect("filter");
        assert_eq!(value_of(&verdicts[0]).as_deref(), Some(r#"{"ssn":"***"}"#));
    }

    #[test]
    fn cards_are_looked_for_between_addresses() {
        let p = PiiMask::init(r#"{"detect":["email","card"]}"#).expect("init");
        let text = "4111111111111111 a@b.io 5500-0000-0000-0004 x4111111111111111@c.io 4111111111111111";
        assert_eq!(
            masked_text(&p, text),
            Some(("*** *** *** *** ***".to_string(), 5))
        );
    }

    /// `text` with what `p` finds replaced by the default mask.
    fn masked_text(p: &PiiMask, text: &str) -> Option<(String, u64)> {
        use rewrite::Masking;
        let (mut out, mut at, mut n) = (String::new(), 0, 0);
        p.find_spans(text.as_bytes(), |start, end| {
            out.push_str(&text[at..start]);
            out.push_str("***");
            at = end;
            n += 1;
        });
        (n > 0).then(|| (out + &text[at..], n))
    }

    /// The tree-based masking this plugin used before its one-pass rewrite:
    /// the reference the rewrite must agree with.
    fn reference(p: &PiiMask, v: &mut serde_json::Value) -> u64 {
        use rewrite::Masking;
        use serde_json::Value;
        match v {
            Value::Object(map) => map
                .iter_mut()
                .map(|(k, v)| {
                    if p.masks_field(k.as_bytes()) {
                        if v.is_null() {
                            0
                        } else {
                            *v = Value::String("***".into());
                            1
                        }
                    } else {
                        reference(p, v)
                    }
                })
                .sum(),
            Value::Array(items) => items.iter_mut().map(|v| reference(p, v)).sum(),
            Value::String(s) => match masked_text(p, s) {
                Some((masked, n)) => {
                    *s = masked;
                    n
                }
                None => 0,
            },
            _ => 0,
        }
    }

    #[test]
    fn agrees_with_the_tree_based_masking_on_random_documents() {
        use serde_json::{json, Value};
        let p = PiiMask::init(r#"{"fields":["email","ssn"],"detect":["email","card"]}"#).expect("init");
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let strings = ["a@b.io", "pay 4111 1111 1111 1111", "plain", "é \"q\" \n", "x@y.z 5500-0000-0000-0004", ""];
        let keys = ["email", "ssn", "name", "mail", "tags", "em\"ail"];
        fn build(next: &mut dyn FnMut(u64) -> u64, depth: u32, strings: &[&str], keys: &[&str]) -> Value {
            match if depth > 3 { next(4) } else { next(6) } {
                0 => Value::Null,
                1 => json!(next(1000) as i64 - 500),
                2 => json!(next(2) == 0),
                3 => Value::String(strings[next(strings.len() as u64) as usize].to_string()),
                4 => Value::Array((0..next(4)).map(|_| build(next, depth + 1, strings, keys)).collect()),
                _ => Value::Object(
                    (0..next(4))
                        .map(|_| (keys[next(keys.len() as u64) as usize].to_string(), build(next, depth + 1, strings, keys)))
                        .collect(),
                ),
            }
        }
        for i in 0..2000 {
            let doc = build(&mut next, 0, &strings, &keys);
            let text = if i % 2 == 0 { serde_json::to_string(&doc) } else { serde_json::to_string_pretty(&doc) }
                .expect("serialise");
            let mut expected = doc.clone();
            let n = reference(&p, &mut expected);
            match rewrite::rewrite(text.as_bytes(), rewrite::scan(text.as_bytes()), &p) {
                Some((out, masked)) => {
                    let got: Value = serde_json::from_slice(&out).expect("the rewrite writes JSON");
                    assert_eq!((got, masked), (expected, n), "{text}");
                }
                None => assert_eq!(n, 0, "{text}"),
            }
        }
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        for (config, needle) in [
            ("", "pii-mask config"),
            ("{}", "nothing to mask"),
            (
                r#"{"fields":["email"],"masks":"x"}"#,
                "unknown field `masks`",
            ),
            (r#"{"detect":["phone"]}"#, "unknown variant `phone`"),
            (r#"{"fields":[""]}"#, "empty field name"),
        ] {
            let err = FilterHarness::<PiiMask>::new(config)
                .err()
                .unwrap_or_default();
            assert!(err.contains(needle), "config {config:?}: {err:?}");
        }
    }
}
