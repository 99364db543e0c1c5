//! Record batches over arbitrary bytes: the header walk every fetch answer and
//! produce request goes through, and what record filters read (decompressed
//! sections, and the full decode when a verdict changes something), verdicts
//! applied straight to a produce batch's bytes, and what a mirror makes of a
//! source's and a destination's records.
#![no_main]

use bytes::Bytes;
use causeway::codec::batches;
use causeway::plugins::batches as filtered;
use causeway::plugins::filter::{Direction, Verdict};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // What a mirror does with a source's fetch answer, and with a destination's.
    {
        use causeway::link::records;
        let bytes = Bytes::copy_from_slice(data);
        let (settled, aborted) = records::settled(&bytes);
        if let Ok((pieces, _)) = records::cut(&settled, 0, &aborted) {
            let _ = records::coalesce(pieces);
        }
        let _ = records::present(&bytes, 17);
    }
    let mut end = 0usize;
    for h in batches::headers(data) {
        end += h.size;
        assert!(end <= data.len());
    }
    let _ = batches::aborted_transactions(data);

    let bytes = Bytes::copy_from_slice(data);
    for direction in [Direction::Produce, Direction::Fetch] {
        if let Ok(sections) = filtered::sections(&bytes, direction, filtered::MAX_RECORD_BYTES) {
            let total: usize = sections.iter().map(|s| s.records.len()).sum();
            assert!(total <= filtered::MAX_RECORD_BYTES);
            // What the chain does once a filter changes something.
            if let Ok(decoded) = filtered::decode(&bytes) {
                let _ = decoded.encode(direction);
            }
            // A produce batch rewritten on its bytes, with verdicts the data
            // itself picks: pass, drop, or a new value (none, or a few bytes).
            if let (Direction::Produce, [section]) = (direction, sections.as_slice()) {
                let verdicts: Vec<Verdict> = (0..section.count as usize)
                    .map(|i| match data.get(i).copied().unwrap_or(0) % 4 {
                        0 => Verdict::Pass,
                        1 => Verdict::Drop,
                        2 => Verdict::ReplaceValue(None),
                        _ => Verdict::ReplaceValue(Some(data.iter().take(i % 9).copied().collect())),
                    })
                    .collect();
                // With the CRC made right, so that the records are read: the
                // rewrite refuses a batch whose CRC does not match.
                let mut fixed = data.to_vec();
                if let Some(crc) = fixed.get(batches::ATTRIBUTES_AT..).map(crc32c::crc32c) {
                    fixed[batches::CRC_AT..batches::CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
                }
                for batch in [&bytes[..], &fixed[..]] {
                    if let Some(Ok(out)) = causeway::plugins::rewrite::produce(batch, section, &verdicts) {
                        let h = batches::headers(&out).next().expect("the rewritten batch has a whole header");
                        assert_eq!(h.size, out.len());
                    }
                }
            }
        }
    }
});
