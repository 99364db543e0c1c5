//! Record batch header walking over arbitrary fetched bytes.
#![no_main]

use causeway::codec::batches;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut end = 0usize;
    for h in batches::headers(data) {
        end += h.size;
        assert!(end <= data.len());
    }
    let _ = batches::aborted_transactions(data);
});
