//! A record filter that misbehaves on purpose, for the gateway's containment
//! tests. Config picks how: `loop` (never returns), `oom` (allocates until the
//! memory limit stops it), `panic`, or anything else (passes every record).
//! Never deploy it.

use causeway_plugin_sdk::{BatchContext, Record, RecordFilter, Verdict};

/// How to misbehave.
#[derive(Debug)]
pub enum Misbehave {
    /// Spins forever.
    Loop,
    /// Grows a buffer without bound.
    Oom,
    /// Panics.
    Panic,
    /// Behaves.
    Pass,
}

impl RecordFilter for Misbehave {
    fn init(config: &str) -> Result<Self, String> {
        Ok(match config.trim() {
            "loop" => Misbehave::Loop,
            "oom" => Misbehave::Oom,
            "panic" => Misbehave::Panic,
            _ => Misbehave::Pass,
        })
    }

    fn filter(&mut self, _ctx: &BatchContext, records: &[Record]) -> Result<Vec<Verdict>, String> {
        match self {
            Misbehave::Loop => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Misbehave::Oom => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            Misbehave::Panic => panic!("misbehave: asked to panic"),
            Misbehave::Pass => Ok(vec![Verdict::Pass; records.len()]),
        }
    }
}

causeway_plugin_sdk::record_filter!(Misbehave);

#[cfg(test)]
mod tests {
    use causeway_plugin_sdk::KafkaRecord;
    use causeway_plugin_sdk::testing::run_filter;

    use super::*;

    #[test]
    fn behaves_unless_told_otherwise() {
        let records = vec![KafkaRecord::new("a")];
        assert_eq!(
            run_filter::<Misbehave>("", &BatchContext::produce("t"), &records),
            Ok(vec![Verdict::Pass])
        );
    }
}
