//! Verdicts applied straight to a produce batch's bytes, for what filters
//! answer most: records passed, values replaced, records dropped. Each record
//! is copied as it stands, or written again with its new value (or new offset
//! delta, after a drop) and the rest of its bytes copied; the batch header
//! keeps everything but its record count, last offset delta, maximum
//! timestamp, length and CRC. No record is decoded into a struct and no field
//! allocated, which is most of what the general path
//! ([`super::batches::Decoded`]) costs.
//!
//! Every record is read to its end first, as the general path's decoder
//! would (lengths, header keys in UTF-8, nothing left over), and the batch's
//! CRC is checked before a new one is written: a batch damaged on its way is
//! never stamped valid. Anything else returns `None` and goes the general way
//! (which refuses what is broken, with the reason): several batches, a control
//! batch, `replace` or `fan-out` verdicts, a drop in a batch with a producer id,
//! every record dropped, a CRC that does not match, or records that do not
//! parse.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};

use super::batches::Section;
use super::filter::Verdict;
use crate::codec::batches::{self as b, varint, zigzag};

/// The produce partition `batch` (one v2 batch, whose records as filters read
/// them are `section`) with one verdict per record applied, or `None` when the
/// general path must do it.
pub fn produce(batch: &[u8], section: &Section, verdicts: &[Verdict]) -> Option<anyhow::Result<Bytes>> {
    let mut headers = b::headers(batch);
    let h = headers.next()?;
    if headers.next().is_some() || h.size != batch.len() || h.control_batch {
        return None;
    }
    if verdicts.len() != section.count as usize || u32::try_from(h.record_count).ok()? != section.count {
        return None;
    }
    let mut dropped = 0usize;
    for v in verdicts {
        match v {
            Verdict::Pass | Verdict::ReplaceValue(_) => {}
            Verdict::Drop => dropped += 1,
            Verdict::Replace(_) | Verdict::FanOut(_) => return None,
        }
    }
    if (dropped > 0 && h.producer_id >= 0) || dropped == verdicts.len() {
        return None;
    }
    let stored = u32::from_be_bytes(batch.get(b::CRC_AT..b::CRC_AT + 4)?.try_into().ok()?);
    if stored != crc32c::crc32c(batch.get(b::ATTRIBUTES_AT..)?) {
        return None;
    }
    let records = records(&section.records, verdicts)?;
    Some(batch_of(batch, &h, records))
}

/// The records that stay, written again where they changed, and the largest
/// timestamp delta among them.
struct Kept {
    bytes: BytesMut,
    count: i32,
    max_timestamp_delta: i64,
}

fn records(mut rest: &[u8], verdicts: &[Verdict]) -> Option<Kept> {
    let mut out = BytesMut::with_capacity(rest.len() + 64);
    let mut count = 0i32;
    let mut max_timestamp_delta = i64::MIN;
    for verdict in verdicts {
        let (length, n) = varint(rest)?;
        let length = usize::try_from(zigzag(length)).ok()?;
        let whole = rest.get(..n.checked_add(length)?)?;
        let body = &whole[n..];
        rest = &rest[whole.len()..];
        if matches!(verdict, Verdict::Drop) {
            continue;
        }
        // attributes, timestamp delta, offset delta, then key, value, headers.
        let (&attributes, after) = body.split_first()?;
        let (timestamp_delta, tn) = varint(after)?;
        let (offset_delta, on) = varint(after.get(tn..)?)?;
        let fields = after.get(tn + on..)?;
        let parsed = fields_of(fields)?;
        max_timestamp_delta = max_timestamp_delta.max(zigzag(timestamp_delta));
        let timestamp = &after[..tn];
        let offset_delta_now = Varint::of(i64::from(count));
        match verdict {
            Verdict::ReplaceValue(value) => {
                let value_len = Varint::of(value.as_ref().map_or(-1, |v| v.len() as i64));
                let parts = [
                    fields.get(..parsed.key_end)?,
                    value_len.bytes(),
                    value.as_deref().unwrap_or_default(),
                    fields.get(parsed.value_end..)?,
                ];
                put_record(&mut out, attributes, timestamp, &offset_delta_now, &parts);
            }
            // Kept as it is while its offset delta is still right (no record
            // before it was dropped).
            _ if zigzag(offset_delta) == i64::from(count) => out.put_slice(whole),
            _ => put_record(&mut out, attributes, timestamp, &offset_delta_now, &[fields]),
        }
        count += 1;
    }
    // Every record of the batch was read, and nothing is left over.
    if !rest.is_empty() {
        return None;
    }
    Some(Kept { bytes: out, count, max_timestamp_delta })
}

/// The batch `original` with `kept` as its records, compressed as it was.
fn batch_of(original: &[u8], h: &b::BatchHeader, kept: Kept) -> anyhow::Result<Bytes> {
    let head = original
        .get(..b::HEADER)
        .ok_or_else(|| anyhow::anyhow!("a batch shorter than its header"))?;
    let mut out = BytesMut::with_capacity(b::HEADER + kept.bytes.len());
    out.put_slice(head);
    let set_i32 = |out: &mut BytesMut, at: usize, v: i32| out[at..at + 4].copy_from_slice(&v.to_be_bytes());
    set_i32(&mut out, b::LAST_OFFSET_DELTA_AT, kept.count - 1);
    set_i32(&mut out, b::RECORD_COUNT_AT, kept.count);
    // With log-append time the broker sets the timestamps; otherwise the
    // maximum is that of the records kept.
    let log_append_time = i16::from_be_bytes([head[b::ATTRIBUTES_AT], head[b::ATTRIBUTES_AT + 1]]) & 0x08 != 0;
    if !log_append_time {
        let max = h.first_timestamp.saturating_add(kept.max_timestamp_delta);
        out[b::MAX_TIMESTAMP_AT..b::MAX_TIMESTAMP_AT + 8].copy_from_slice(&max.to_be_bytes());
    }
    let records = kept.bytes;
    let copy = |buf: &mut BytesMut| -> anyhow::Result<()> {
        buf.put_slice(&records);
        Ok(())
    };
    match h.compression {
        0 => out.put_slice(&records),
        1 => Gzip::compress(&mut out, copy)?,
        2 => Snappy::compress(&mut out, copy)?,
        3 => Lz4::compress(&mut out, copy)?,
        4 => Zstd::compress(&mut out, copy)?,
        other => anyhow::bail!("unknown compression {other}"),
    }
    let length = i32::try_from(out.len() - b::LOG_OVERHEAD).map_err(|_| anyhow::anyhow!("a batch over 2 GiB"))?;
    set_i32(&mut out, b::LENGTH_AT, length);
    let crc = crc32c::crc32c(&out[b::ATTRIBUTES_AT..]);
    out[b::CRC_AT..b::CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(out.freeze())
}

/// Where a record's key and value end within its fields (key length, key,
/// value length, value, headers).
struct Fields {
    key_end: usize,
    value_end: usize,
}

/// Reads a record's fields to their end: `None` unless every length fits,
/// header keys are UTF-8 and nothing is left over.
fn fields_of(fields: &[u8]) -> Option<Fields> {
    // The end of a length-prefixed key or value starting at `at`.
    let sized = |at: usize| -> Option<usize> {
        let (len, n) = varint(fields.get(at..)?)?;
        let end = at.checked_add(n)?.checked_add(bytes_of(zigzag(len))?)?;
        (end <= fields.len()).then_some(end)
    };
    let key_end = sized(0)?;
    let value_end = sized(key_end)?;
    let (count, n) = varint(fields.get(value_end..)?)?;
    let count = usize::try_from(zigzag(count)).ok()?;
    let mut at = value_end + n;
    for _ in 0..count {
        let (key_len, kn) = varint(fields.get(at..)?)?;
        let key_len = usize::try_from(zigzag(key_len)).ok()?;
        let key_at = at.checked_add(kn)?;
        let key_end = key_at.checked_add(key_len)?;
        std::str::from_utf8(fields.get(key_at..key_end)?).ok()?;
        at = sized(key_end)?;
    }
    (at == fields.len()).then_some(Fields { key_end, value_end })
}

/// The bytes a key or value of declared length `len` takes: -1 is none.
fn bytes_of(len: i64) -> Option<usize> {
    match len {
        -1 => Some(0),
        n => usize::try_from(n).ok(),
    }
}

/// Writes a record: its length (that of what follows), `attributes`, the
/// timestamp delta's bytes as they were, `offset_delta`, then `parts`.
fn put_record(out: &mut BytesMut, attributes: u8, timestamp: &[u8], offset_delta: &Varint, parts: &[&[u8]]) {
    let body = 1 + timestamp.len() + offset_delta.bytes().len() + parts.iter().map(|p| p.len()).sum::<usize>();
    out.put_slice(Varint::of(body as i64).bytes());
    out.put_u8(attributes);
    out.put_slice(timestamp);
    out.put_slice(offset_delta.bytes());
    for part in parts {
        out.put_slice(part);
    }
}

/// A signed value as a record field carries it: zigzag, then 7 bits a byte.
struct Varint {
    buf: [u8; 10],
    len: usize,
}

impl Varint {
    fn of(v: i64) -> Self {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        let mut out = Varint { buf: [0; 10], len: 0 };
        while z >= 0x80 {
            out.buf[out.len] = (z as u8) | 0x80;
            out.len += 1;
            z >>= 7;
        }
        out.buf[out.len] = z as u8;
        out.len += 1;
        out
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::batches::{self, Applied};
    use crate::plugins::filter::Direction;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions};
    use proptest::prelude::*;

    /// A record as generated: key, value, headers, timestamp offset.
    type Part = (Option<Vec<u8>>, Option<Vec<u8>>, Vec<(String, Option<Vec<u8>>)>, i64);
    /// What is compared of a record.
    type Seen = (i64, i32, i64, Option<Bytes>, Option<Bytes>, Vec<(String, Option<Bytes>)>, i64, i16, bool);

    fn batch(records: &[Record], compression: Compression) -> Bytes {
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(&mut buf, records.iter(), &RecordEncodeOptions { version: 2, compression })
            .expect("encode");
        buf.freeze()
    }

    /// What a client sends: offsets and sequences from 0, one producer.
    fn records(parts: &[Part], producer: i64, transactional: bool) -> Vec<Record> {
        parts
            .iter()
            .enumerate()
            .map(|(i, (key, value, headers, ts))| {
                let mut r = batches::record(i as i64, "", "");
                r.key = key.clone().map(Bytes::from);
                r.value = value.clone().map(Bytes::from);
                r.headers = headers.iter().map(|(k, v)| (StrBytes::from_string(k.clone()), v.clone().map(Bytes::from))).collect();
                r.timestamp = 1_700_000_000_000 + ts;
                r.producer_id = producer;
                r.producer_epoch = if producer >= 0 { 3 } else { -1 };
                r.sequence = if producer >= 0 { 40 + i as i32 } else { i as i32 - 1 };
                r.transactional = transactional && producer >= 0;
                r.partition_leader_epoch = 5;
                r
            })
            .collect()
    }

    /// The fields a consumer sees, and those the broker checks.
    fn seen(r: &Record) -> Seen {
        (
            r.offset,
            r.sequence,
            r.timestamp,
            r.key.clone(),
            r.value.clone(),
            r.headers.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            r.producer_id,
            r.producer_epoch,
            r.transactional,
        )
    }

    fn verdict() -> impl Strategy<Value = Verdict> {
        prop_oneof![
            3 => Just(Verdict::Pass),
            1 => Just(Verdict::Drop),
            2 => proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)).prop_map(Verdict::ReplaceValue),
        ]
    }

    fn part() -> impl Strategy<Value = Part> {
        (
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
            proptest::collection::vec(("[a-z]{0,6}", proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8))), 0..3),
            -5000i64..5000,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Whatever it takes on, the rewrite gives the records the general
        /// path gives, with a batch that decodes (CRC included).
        #[test]
        fn the_rewrite_gives_what_the_general_path_gives(
            parts in proptest::collection::vec(part(), 1..12),
            verdicts in proptest::collection::vec(verdict(), 12),
            codec in 0usize..5,
            producer in prop_oneof![Just(-1i64), Just(7i64)],
            transactional in any::<bool>(),
        ) {
            let compression = [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd][codec];
            let input = records(&parts, producer, transactional);
            let bytes = batch(&input, compression);
            let verdicts = &verdicts[..input.len()];
            let sections = batches::sections(&bytes, Direction::Produce, batches::MAX_RECORD_BYTES).expect("sections");
            prop_assert_eq!(sections.len(), 1);
            let rewritten = produce(&bytes, &sections[0], verdicts);
            let mut general = batches::decode(&bytes).expect("decode");
            let applied = general.apply(verdicts.to_vec(), Direction::Produce);
            let Some(rewritten) = rewritten else {
                // Left to the general path: drops in a batch with a producer
                // id (which it refuses), or every record dropped.
                let drops = verdicts.iter().filter(|v| matches!(v, Verdict::Drop)).count();
                prop_assert!((drops > 0 && producer >= 0) || drops == verdicts.len());
                return Ok(());
            };
            let rewritten = rewritten.expect("rewritten");
            prop_assert!(matches!(applied, Applied::Changed | Applied::Same));
            let again = batches::decode(&rewritten).expect("the rewritten batch decodes");
            let got: Vec<_> = again.records().iter().map(seen).collect();
            let want: Vec<_> = general.records().iter().map(seen).collect();
            prop_assert_eq!(&got, &want);
            // One batch, compressed as it came, with a correct CRC.
            let headers: Vec<_> = b::headers(&rewritten).collect();
            prop_assert_eq!(headers.len(), 1);
            prop_assert_eq!(headers[0].size, rewritten.len());
            prop_assert_eq!(headers[0].compression, compression as u8);
            prop_assert_eq!(
                u32::from_be_bytes(rewritten[b::CRC_AT..b::CRC_AT + 4].try_into().expect("4 bytes")),
                crc32c::crc32c(&rewritten[b::ATTRIBUTES_AT..])
            );
            let max = again.records().iter().map(|r| r.timestamp).max().expect("a record");
            prop_assert_eq!(i64::from_be_bytes(rewritten[b::MAX_TIMESTAMP_AT..b::MAX_TIMESTAMP_AT + 8].try_into().expect("8 bytes")), max);
            // What the decoder does not look at but the broker does: the count
            // and last offset delta, and the fields kept from the original
            // (base offset, leader epoch, magic, attributes, producer id,
            // epoch and base sequence).
            let kept = want.len() as i32;
            prop_assert_eq!(headers[0].record_count, kept);
            prop_assert_eq!(headers[0].last_offset_delta, kept - 1);
            for range in [0..8, b::LEADER_EPOCH_AT..b::CRC_AT, b::ATTRIBUTES_AT..b::LAST_OFFSET_DELTA_AT, b::PRODUCER_ID_AT..b::RECORD_COUNT_AT] {
                prop_assert_eq!(&rewritten[range.clone()], &bytes[range]);
            }
            // The records themselves, read strictly to the last byte.
            let written = &batches::sections(&rewritten, Direction::Produce, batches::MAX_RECORD_BYTES).expect("sections")[0];
            let mut rest = &written.records[..];
            for i in 0..kept {
                let (len, n) = varint(rest).expect("length");
                let len = usize::try_from(zigzag(len)).expect("a length");
                let body = &rest[n..n + len];
                let (_, tn) = varint(&body[1..]).expect("timestamp delta");
                let (delta, on) = varint(&body[1 + tn..]).expect("offset delta");
                prop_assert_eq!(zigzag(delta), i64::from(i));
                prop_assert!(fields_of(&body[1 + tn + on..]).is_some());
                rest = &rest[n + len..];
            }
            prop_assert!(rest.is_empty());
        }
    }

    #[test]
    fn what_it_leaves_to_the_general_path() {
        let input = records(&[(None, Some(b"a".to_vec()), Vec::new(), 0), (None, Some(b"b".to_vec()), Vec::new(), 1)], 7, false);
        let bytes = batch(&input, Compression::None);
        let sections = batches::sections(&bytes, Direction::Produce, batches::MAX_RECORD_BYTES).expect("sections");
        let s = &sections[0];
        // A drop with a producer id, every record dropped, a replace, a fan-out,
        // the wrong number of verdicts, two batches.
        assert!(produce(&bytes, s, &[Verdict::Drop, Verdict::Pass]).is_none());
        let anonymous = batch(&records(&[(None, None, Vec::new(), 0)], -1, false), Compression::None);
        let one = batches::sections(&anonymous, Direction::Produce, batches::MAX_RECORD_BYTES).expect("sections");
        assert!(produce(&anonymous, &one[0], &[Verdict::Drop]).is_none());
        assert!(produce(&bytes, s, &[Verdict::FanOut(Vec::new()), Verdict::Pass]).is_none());
        assert!(produce(&bytes, s, &[Verdict::Pass]).is_none());
        let mut two = BytesMut::from(&bytes[..]);
        two.extend_from_slice(&bytes);
        assert!(produce(&two, s, &[Verdict::Pass, Verdict::ReplaceValue(None)]).is_none());
        // Records that do not parse as the header says.
        let cut = Section { records: s.records.slice(..s.records.len() - 1), ..s.clone() };
        assert!(produce(&bytes, &cut, &[Verdict::Pass, Verdict::ReplaceValue(None)]).is_none());
        // A batch damaged on its way (a value's byte changed, the CRC left):
        // never stamped with a new, valid CRC.
        let fine = produce(&bytes, s, &[Verdict::Pass, Verdict::ReplaceValue(None)]);
        assert!(matches!(fine, Some(Ok(_))));
        let mut damaged = BytesMut::from(&bytes[..]);
        // The last record ends with its value "b" and a header count of 0.
        let b_at = damaged.len() - 2;
        assert_eq!(damaged[b_at], b'b');
        damaged[b_at] = b'B';
        let damaged = damaged.freeze();
        let sections = batches::sections(&damaged, Direction::Produce, batches::MAX_RECORD_BYTES).expect("sections");
        assert!(produce(&damaged, &sections[0], &[Verdict::Pass, Verdict::ReplaceValue(None)]).is_none());
    }

    #[test]
    fn varints_read_back_as_written() {
        for v in [0, -1, 1, 63, -64, 64, 300, -301, i64::from(i32::MAX), i64::MAX, i64::MIN] {
            let w = Varint::of(v);
            assert_eq!(varint(w.bytes()).map(|(u, n)| (zigzag(u), n)), Some((v, w.bytes().len())), "{v}");
        }
        assert_eq!(Varint::of(-1).bytes(), [1]);
        assert_eq!(Varint::of(64).bytes(), [0x80, 1]);
    }

    #[test]
    fn records_are_read_to_their_end() {
        // key "k", value "v", one header "h" = "x"
        let good = [2, b'k', 2, b'v', 2, 2, b'h', 2, b'x'];
        let f = fields_of(&good).expect("a whole record");
        assert_eq!((f.key_end, f.value_end), (2, 4));
        // A byte left over, a header key that is not UTF-8, a value longer
        // than the record, a length below -1.
        assert!(fields_of(&[2, b'k', 2, b'v', 0, 0]).is_none());
        assert!(fields_of(&[1, 1, 2, 2, 0xff, 1]).is_none());
        assert!(fields_of(&[1, 40, b'v', 0]).is_none());
        assert!(fields_of(&[3, 1, 0]).is_none());
        // Null key and value, no headers.
        assert!(fields_of(&[1, 1, 0]).is_some());
    }
}
