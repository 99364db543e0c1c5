//! A record filter that passes every record unchanged, and does nothing else:
//! the cost of the plugin machinery itself, for benchmarks.
//!
//! Config: ignored.

use causeway_plugin_sdk::{BatchContext, Record, RecordFilter, Verdict};

/// Passes everything.
#[derive(Debug, Default)]
pub struct Passthrough;

impl RecordFilter for Passthrough {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(Passthrough)
    }

    fn filter(&mut self, _ctx: &BatchContext, records: &[Record]) -> Result<Vec<Verdict>, String> {
        Ok(vec![Verdict::Pass; records.len()])
    }
}

causeway_plugin_sdk::record_filter!(Passthrough);

#[cfg(test)]
mod tests {
    use causeway_plugin_sdk::testing::{run_filter, FilterHarness};
    use causeway_plugin_sdk::KafkaRecord;

    use super::*;

    #[test]
    fn every_record_passes() {
        let records = vec![
            KafkaRecord::new("a"),
            KafkaRecord::tombstone("k"),
            KafkaRecord::new(vec![0xff, 0]),
        ];
        let verdicts = run_filter::<Passthrough>("", &BatchContext::produce("t"), &records);
        assert_eq!(verdicts, Ok(vec![Verdict::Pass; 3]));
    }

    #[test]
    fn empty_batch_and_fetch() {
        let mut harness = FilterHarness::<Passthrough>::new("anything").expect("init");
        assert_eq!(harness.filter(&BatchContext::fetch("t"), &[]), Ok(vec![]));
        let records = [KafkaRecord::new("x")];
        assert_eq!(
            harness.forward(&BatchContext::fetch("t"), &records),
            Ok(records.to_vec())
        );
        assert!(harness.captured().logs.is_empty());
    }
}
