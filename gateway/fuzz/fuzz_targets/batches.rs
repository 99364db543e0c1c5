//! Record batches over arbitrary bytes: the header walk every fetch answer and
//! produce request goes through, and what record filters read (decompressed
//! sections, and the full decode when a verdict changes something), and what a
//! mirror makes of a source's and a destination's records.
#![no_main]

use bytes::Bytes;
use causeway::codec::batches;
use causeway::plugins::batches as filtered;
use causeway::plugins::filter::Direction;
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
        }
    }
});
