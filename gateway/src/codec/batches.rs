//! Record batch headers (format v2), read without decompressing or copying.
//!
//! Only the fixed-size header of each batch is read, plus the four-byte key of a
//! control record. A fetch response may end in a partial batch; the walk stops
//! there, as clients do.

/// The parts of a batch header routing and transaction handling need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Bytes of the whole batch, the 12-byte offset and length prefix included.
    pub size: usize,
    pub last_offset_delta: i32,
    pub producer_id: i64,
    pub transactional: bool,
    /// For a control batch: the control type of its first record (0 abort, 1 commit).
    pub control: Option<i16>,
    /// Whether the attributes mark a control batch (whether or not its
    /// first record's key could be read).
    pub control_batch: bool,
    /// The low three bits of the attributes: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
    pub compression: u8,
    pub first_timestamp: i64,
    pub record_count: i32,
}

/// Bytes of a v2 batch header, from the base offset to the record count.
pub const HEADER: usize = 61;
/// Where the batch length is: the bytes after the base offset and itself.
pub const LENGTH_AT: usize = 8;
/// Bytes before those the batch length counts (base offset and length).
pub const LOG_OVERHEAD: usize = 12;
const MAGIC_AT: usize = 16;
pub const LEADER_EPOCH_AT: usize = 12;
pub const ATTRIBUTES_AT: usize = 21;
pub const LAST_OFFSET_DELTA_AT: usize = 23;
pub const CRC_AT: usize = 17;
pub const PRODUCER_ID_AT: usize = 43;
pub const PRODUCER_EPOCH_AT: usize = 51;
pub const BASE_SEQUENCE_AT: usize = 53;
pub const FIRST_TIMESTAMP_AT: usize = 27;
pub const MAX_TIMESTAMP_AT: usize = 35;
pub const RECORD_COUNT_AT: usize = 57;
/// Where a batch's records begin.
pub const RECORDS_AT: usize = HEADER;

/// Control record types.
pub const ABORT: i16 = 0;

fn i16_at(b: &[u8], at: usize) -> Option<i16> {
    Some(i16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn i64_at(b: &[u8], at: usize) -> Option<i64> {
    Some(i64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Reads an unsigned varint; returns the value and the bytes it took.
pub fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Decodes a zigzag-encoded signed value, as record fields carry them.
pub fn zigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// The control type in the key of the first record of a control batch.
fn control_type(records: &[u8]) -> Option<i16> {
    let (_, mut at) = varint(records)?; // record length
    at += 1; // record attributes
    for _ in 0..2 {
        let (_, n) = varint(records.get(at..)?)?; // timestamp delta, offset delta
        at += n;
    }
    let (_, n) = varint(records.get(at..)?)?; // key length
    at += n;
    i16_at(records, at + 2) // key: version i16, type i16
}

/// Whether `rest` (what follows the whole batches of `records`) is a v2 batch
/// cut short, or too short to say: what a fetch answer cut at its size limit
/// ends with. Anything else there is not format v2.
pub fn cut_short(rest: &[u8]) -> bool {
    if rest.len() <= MAGIC_AT {
        return true;
    }
    rest.get(MAGIC_AT) == Some(&2)
        && i32_at(rest, LENGTH_AT).is_some_and(|length| i64::from(length).saturating_add(LOG_OVERHEAD as i64) > rest.len() as i64)
}

/// Iterates over the whole v2 batches at the front of `records`.
pub fn headers(records: &[u8]) -> impl Iterator<Item = BatchHeader> + '_ {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let rest = records.get(at..)?;
        if rest.len() < HEADER || rest.get(MAGIC_AT).copied() != Some(2) {
            return None;
        }
        let length = usize::try_from(i32_at(rest, LENGTH_AT)?).ok()?;
        let size = length.checked_add(LOG_OVERHEAD)?;
        let batch = rest.get(..size)?;
        if size < HEADER {
            return None;
        }
        let attributes = i16_at(batch, ATTRIBUTES_AT)?;
        let header = BatchHeader {
            base_offset: i64_at(batch, 0)?,
            size,
            last_offset_delta: i32_at(batch, LAST_OFFSET_DELTA_AT)?,
            producer_id: i64_at(batch, PRODUCER_ID_AT)?,
            transactional: attributes & 0x10 != 0,
            control: if attributes & 0x20 != 0 {
                // Brokers never compress control batches.
                control_type(batch.get(HEADER..)?)
            } else {
                None
            },
            control_batch: attributes & 0x20 != 0,
            compression: (attributes & 0x7) as u8,
            first_timestamp: i64_at(batch, FIRST_TIMESTAMP_AT)?,
            record_count: i32_at(batch, RECORD_COUNT_AT)?,
        };
        at += size;
        Some(header)
    })
}

/// The producer id and epoch of the first batch in `records`.
pub fn producer(records: &[u8]) -> Option<(i64, i16)> {
    let first = headers(records).next()?;
    let epoch = i16_at(records, PRODUCER_EPOCH_AT)?;
    Some((first.producer_id, epoch))
}

/// A copy of `records` with every batch's producer id and epoch replaced and its
/// CRC computed again (the CRC covers the attributes onward, which include both).
/// `None` if `records` is not a run of whole v2 batches.
pub fn with_producer(records: &[u8], producer_id: i64, epoch: i16) -> Option<Vec<u8>> {
    let mut out = records.to_vec();
    let mut at = 0usize;
    let mut seen = 0usize;
    for h in headers(records) {
        let batch = out.get_mut(at..at + h.size)?;
        batch.get_mut(PRODUCER_ID_AT..PRODUCER_ID_AT + 8)?.copy_from_slice(&producer_id.to_be_bytes());
        batch
            .get_mut(PRODUCER_EPOCH_AT..PRODUCER_EPOCH_AT + 2)?
            .copy_from_slice(&epoch.to_be_bytes());
        let crc = crc32c::crc32c(batch.get(ATTRIBUTES_AT..)?);
        batch.get_mut(CRC_AT..CRC_AT + 4)?.copy_from_slice(&crc.to_be_bytes());
        at += h.size;
        seen += 1;
    }
    (seen > 0 && at == records.len()).then_some(out)
}

/// The transactions aborted within `records`, as (producer id, first offset): each
/// transactional run of a producer that ends in an ABORT marker inside `records`.
/// This is what a Kafka broker lists in a read_committed fetch response.
pub fn aborted_transactions(records: &[u8]) -> Vec<(i64, i64)> {
    let mut open: Vec<(i64, i64)> = Vec::new();
    let mut aborted = Vec::new();
    for b in headers(records).filter(|b| b.transactional) {
        let slot = open.iter().position(|(pid, _)| *pid == b.producer_id);
        match (b.control, slot) {
            (Some(kind), Some(i)) => {
                let (pid, first) = open.swap_remove(i);
                if kind == ABORT {
                    aborted.push((pid, first));
                }
            }
            (Some(_), None) => {}
            (None, Some(_)) => {}
            (None, None) => open.push((b.producer_id, b.base_offset)),
        }
    }
    aborted
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v2 batch header with `records` after it.
    fn batch(base: i64, pid: i64, attributes: i16, records: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&base.to_be_bytes());
        b.extend_from_slice(&((HEADER - LOG_OVERHEAD + records.len()) as i32).to_be_bytes());
        b.extend_from_slice(&0i32.to_be_bytes()); // leader epoch
        b.push(2); // magic
        b.extend_from_slice(&0u32.to_be_bytes()); // crc (not checked here)
        b.extend_from_slice(&attributes.to_be_bytes());
        b.extend_from_slice(&0i32.to_be_bytes()); // last offset delta
        b.extend_from_slice(&0i64.to_be_bytes());
        b.extend_from_slice(&0i64.to_be_bytes());
        b.extend_from_slice(&pid.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&0i32.to_be_bytes());
        b.extend_from_slice(&1i32.to_be_bytes()); // record count
        b.extend_from_slice(records);
        b
    }

    fn marker(kind: i16) -> Vec<u8> {
        // length, attributes, timestamp delta, offset delta, key length 4, key
        let mut r = vec![20, 0, 0, 0, 8];
        r.extend_from_slice(&0i16.to_be_bytes());
        r.extend_from_slice(&kind.to_be_bytes());
        r.extend_from_slice(&[12, 0, 0, 0, 0, 0, 0, 0]);
        r
    }

    #[test]
    fn finds_the_aborted_run_and_skips_the_committed_one() {
        let mut log = Vec::new();
        log.extend(batch(0, 7, 0x10, &[1, 2, 3]));
        log.extend(batch(3, 7, 0x30, &marker(1))); // commit
        log.extend(batch(4, 7, 0x10, &[4]));
        log.extend(batch(6, 9, 0x10, &[5]));
        log.extend(batch(7, 7, 0x30, &marker(0))); // abort producer 7's second run
        log.extend(batch(8, 0, 0, &[6])); // plain batch
        assert_eq!(aborted_transactions(&log), vec![(7, 4)]);
        assert_eq!(headers(&log).count(), 6);
    }

    #[test]
    fn a_partial_trailing_batch_ends_the_walk() {
        let mut log = batch(0, 1, 0x10, &[1]);
        let second = batch(1, 1, 0x30, &marker(0));
        log.extend_from_slice(&second[..second.len() - 3]);
        assert_eq!(headers(&log).count(), 1);
        assert!(aborted_transactions(&log).is_empty());
    }

    #[test]
    fn producer_rewrite_keeps_the_batch_valid() {
        let mut log = batch(0, 7, 0, &[1, 2, 3]);
        log.extend(batch(1, 7, 0, &[4]));
        assert_eq!(producer(&log), Some((7, 0)));
        let out = with_producer(&log, 4242, 3).expect("whole batches");
        assert_eq!(producer(&out), Some((4242, 3)));
        let mut at = 0;
        for h in headers(&out) {
            assert_eq!(h.producer_id, 4242);
            let b = &out[at..at + h.size];
            let stored = u32::from_be_bytes(b[CRC_AT..CRC_AT + 4].try_into().expect("4 bytes"));
            assert_eq!(stored, crc32c::crc32c(&b[ATTRIBUTES_AT..]));
            at += h.size;
        }
        assert_eq!(at, out.len());
        assert_eq!(&out[HEADER..HEADER + 3], &[1, 2, 3], "records untouched");
        assert!(with_producer(&log[..log.len() - 1], 1, 1).is_none(), "a partial batch is refused");
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = aborted_transactions(&data);
            for h in headers(&data) {
                proptest::prop_assert!(h.size >= HEADER && h.size <= data.len());
            }
        }
    }
}
