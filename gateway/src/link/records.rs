//! How a mirror keeps its source's offsets on a destination that numbers records
//! itself.
//!
//! A Kafka broker gives each produced record the next offset of the partition. The
//! source's log is not that dense: transaction markers, aborted transactions,
//! compaction and a log start above zero all leave offsets without a record a
//! client reads. So the link writes, for every source offset, exactly one
//! destination offset:
//!
//! - data batches whose records sit at consecutive offsets are written as they
//!   are, compressed bytes untouched (only the producer fields and the CRC change);
//! - a batch with holes inside (compaction) is decoded and written as runs of
//!   consecutive records;
//! - every offset without a record to mirror (a hole, a marker, aborted data)
//!   becomes a *filler* record, in batches of their own, uncompressed, each
//!   record keyed [`FILLER_KEY`].
//!
//! Destination offset `d` then holds source offset `d + shift`, where the
//! partition's `shift` is fixed when mirroring starts (the source's first
//! mirrored offset, minus the destination's end offset then). Clients read the
//! mirror through Causeway, which adds the shift to every offset it returns and
//! hands each filler batch over as a transaction marker spanning the same
//! offsets ([`present`]): every client already skips those and moves on.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use crate::codec::batches::{self as b, BatchHeader};

/// The key of every filler record.
pub const FILLER_KEY: &[u8] = b"causeway.filler";
/// Filler records in one batch at most (about 260 KiB).
pub const MAX_FILL: i64 = 10_000;
/// Records a decoded source batch may declare.
const MAX_RECORDS: i32 = 1_000_000;

/// What to write to the destination next, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// `count` offsets with nothing to mirror: filler records.
    Fill { count: i64, timestamp: i64 },
    /// One batch whose records take `count` consecutive offsets.
    Batch { bytes: Bytes, count: i64 },
}

impl Piece {
    /// The destination offsets this piece takes.
    pub fn count(&self) -> i64 {
        match self {
            Piece::Fill { count, .. } | Piece::Batch { count, .. } => *count,
        }
    }
}

/// Why source records cannot be mirrored.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Unmirrorable {
    #[error("the source holds records of an older format (v0/v1) at offset {0}")]
    OldFormat(i64),
    #[error("the source batch at offset {offset} cannot be read: {reason}")]
    Unreadable { offset: i64, reason: String },
}

/// The pieces that carry the source `records` (a fetch answer, read committed,
/// with its aborted transactions) from source offset `next` on, and the source
/// offset after them.
pub fn cut(records: &Bytes, mut next: i64, aborted: &[(i64, i64)]) -> Result<(Vec<Piece>, i64), Unmirrorable> {
    let mut out: Vec<Piece> = Vec::new();
    let mut aborted: Vec<(i64, i64)> = aborted.to_vec();
    aborted.sort_by_key(|&(_, first)| first);
    let mut aborted = aborted.into_iter().peekable();
    let mut aborting: Vec<i64> = Vec::new();
    let mut at = 0usize;
    for h in b::headers(records) {
        let batch = records.slice(at..at + h.size);
        at += h.size;
        let last = h.base_offset.saturating_add(i64::from(h.last_offset_delta));
        // Producers whose aborted transaction has begun by the end of this batch.
        while let Some(&(pid, _)) = aborted.peek().filter(|(_, first)| *first <= last) {
            aborting.push(pid);
            aborted.next();
        }
        if last < next {
            if h.control == Some(b::ABORT) {
                aborting.retain(|&p| p != h.producer_id);
            }
            continue;
        }
        if h.base_offset > next {
            fill(&mut out, h.base_offset - next, h.first_timestamp);
            next = h.base_offset;
        }
        let span = last + 1 - next;
        if h.control_batch {
            if h.control == Some(b::ABORT) {
                aborting.retain(|&p| p != h.producer_id);
            }
            fill(&mut out, span, h.first_timestamp);
        } else if h.transactional && aborting.contains(&h.producer_id) {
            fill(&mut out, span, h.first_timestamp);
        } else if h.base_offset == next && i64::from(h.record_count) == span {
            out.push(Piece::Batch { bytes: batch, count: span });
        } else {
            rebuild(&mut out, batch, &h, next)?;
        }
        next = last + 1;
    }
    if let Some(rest) = records.get(at..).filter(|r| !r.is_empty()) {
        if !b::cut_short(rest) {
            let offset = rest.get(..8).and_then(|o| o.try_into().ok()).map_or(next, i64::from_be_bytes);
            return Err(Unmirrorable::OldFormat(offset));
        }
    }
    Ok((out, next))
}

/// For a source that lists no aborted transactions in read_committed answers:
/// `records` up to the first transaction whose marker is not among them, and the
/// transactions aborted there (each run of a producer that ends in an ABORT
/// marker), which is what a Kafka broker would list.
pub fn settled(records: &Bytes) -> (Bytes, Vec<(i64, i64)>) {
    let mut open: Vec<(i64, usize)> = Vec::new();
    let mut at = 0usize;
    for h in b::headers(records) {
        let slot = open.iter().position(|(pid, _)| *pid == h.producer_id);
        match (h.control_batch, slot) {
            (true, Some(i)) => drop(open.swap_remove(i)),
            (false, None) if h.transactional => open.push((h.producer_id, at)),
            _ => {}
        }
        at += h.size;
    }
    let end = open.iter().map(|(_, start)| *start).min().unwrap_or(records.len());
    let kept = records.slice(..end);
    let aborted = b::aborted_transactions(&kept);
    (kept, aborted)
}

/// Batches smaller than this are joined with their neighbours before they are
/// written: a destination takes one batch per produce request, so a source
/// written one record at a time would otherwise cost a produce per record.
pub const SMALL_BATCH: usize = 16 << 10;
/// The most a joined batch holds.
const JOINED_BYTES: usize = 1 << 20;

/// Joins runs of small consecutive batches of one codec into one batch each
/// (decoded and encoded again); larger batches, filler and batches stamped with
/// the log's append time stay as they are.
pub fn coalesce(pieces: Vec<Piece>) -> Result<Vec<Piece>, Unmirrorable> {
    let small = |p: &Piece| match p {
        Piece::Batch { bytes, .. } => {
            let attributes = bytes
                .get(b::ATTRIBUTES_AT..b::ATTRIBUTES_AT + 2)
                .map_or(0, |a| i16::from_be_bytes([a[0], a[1]]));
            // Bit 3: LogAppendTime, whose one timestamp is the batch's.
            (bytes.len() < SMALL_BATCH && attributes & 0x08 == 0).then_some(attributes & 0x07)
        }
        Piece::Fill { .. } => None,
    };
    let mut out = Vec::with_capacity(pieces.len());
    let mut run: Vec<Piece> = Vec::new();
    let mut run_codec = None;
    let mut run_bytes = 0usize;
    let finish = |run: &mut Vec<Piece>, out: &mut Vec<Piece>| -> Result<(), Unmirrorable> {
        if run.len() < 2 {
            out.append(run);
            return Ok(());
        }
        let mut all = BytesMut::new();
        let mut count = 0;
        for p in run.drain(..) {
            if let Piece::Batch { bytes, count: c } = p {
                all.extend_from_slice(&bytes);
                count += c;
            }
        }
        let mut buf = all.freeze();
        let unreadable = |reason: String| Unmirrorable::Unreadable { offset: -1, reason };
        bounded(&buf).map_err(unreadable)?;
        let sets = RecordBatchDecoder::decode_all(&mut buf).map_err(|e| unreadable(e.to_string()))?;
        let compression = sets.first().map_or(Compression::None, |s| s.compression);
        let mut records: Vec<Record> = sets.into_iter().flat_map(|s| s.records).collect();
        if records.len() as i64 != count {
            return Err(unreadable(format!("{} records where batches declared {count}", records.len())));
        }
        let bytes = encode(&mut records, compression).map_err(|e| unreadable(e.to_string()))?;
        out.push(Piece::Batch { bytes, count });
        Ok(())
    };
    for p in pieces {
        match small(&p) {
            Some(codec) if run_codec.is_none_or(|c| c == codec) && run_bytes + p_len(&p) <= JOINED_BYTES => {
                run_codec = Some(codec);
                run_bytes += p_len(&p);
                run.push(p);
            }
            Some(codec) => {
                finish(&mut run, &mut out)?;
                run_codec = Some(codec);
                run_bytes = p_len(&p);
                run.push(p);
            }
            None => {
                finish(&mut run, &mut out)?;
                run_codec = None;
                run_bytes = 0;
                out.push(p);
            }
        }
    }
    finish(&mut run, &mut out)?;
    Ok(out)
}

fn p_len(p: &Piece) -> usize {
    match p {
        Piece::Batch { bytes, .. } => bytes.len(),
        Piece::Fill { .. } => 0,
    }
}

/// Adds `count` filler offsets, joined to filler just before.
fn fill(out: &mut Vec<Piece>, count: i64, timestamp: i64) {
    if count <= 0 {
        return;
    }
    if let Some(Piece::Fill { count: c, .. }) = out.last_mut() {
        *c += count;
        return;
    }
    out.push(Piece::Fill { count, timestamp });
}

/// A batch with holes, or one that begins before `next`: its records from `next`
/// on, as runs of consecutive offsets with filler between.
fn rebuild(out: &mut Vec<Piece>, batch: Bytes, h: &BatchHeader, mut next: i64) -> Result<(), Unmirrorable> {
    let unreadable = |reason: String| Unmirrorable::Unreadable { offset: h.base_offset, reason };
    if !(0..=MAX_RECORDS).contains(&h.record_count) {
        return Err(unreadable(format!("it declares {} records", h.record_count)));
    }
    bounded(&batch).map_err(unreadable)?;
    let mut buf = batch;
    let set = RecordBatchDecoder::decode(&mut buf).map_err(|e| unreadable(e.to_string()))?;
    let last = h.base_offset.saturating_add(i64::from(h.last_offset_delta));
    let mut run: Vec<Record> = Vec::new();
    let flush = |run: &mut Vec<Record>, out: &mut Vec<Piece>| -> Result<(), Unmirrorable> {
        if run.is_empty() {
            return Ok(());
        }
        let count = run.len() as i64;
        let bytes = encode(run, set.compression).map_err(|e| unreadable(e.to_string()))?;
        out.push(Piece::Batch { bytes, count });
        run.clear();
        Ok(())
    };
    let from = next;
    for mut r in set.records.into_iter().filter(|r| r.offset >= from && r.offset <= last) {
        if r.offset > next {
            flush(&mut run, out)?;
            fill(out, r.offset - next, r.timestamp);
        }
        next = r.offset + 1;
        r.offset = run.len() as i64;
        run.push(r);
    }
    flush(&mut run, out)?;
    fill(out, last + 1 - next, h.first_timestamp);
    Ok(())
}

/// Checks that `batches` decompress to at most the bound record filters have, so
/// a small compressed batch claiming gigabytes is refused before it is decoded.
fn bounded(batches: &Bytes) -> Result<(), String> {
    use crate::plugins::batches::{sections, MAX_RECORD_BYTES};
    sections(batches, crate::plugins::filter::Direction::Fetch, MAX_RECORD_BYTES)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Records as one batch, offsets from zero, with no producer (stamped when sent).
fn encode(records: &mut [Record], compression: Compression) -> anyhow::Result<Bytes> {
    for (i, r) in records.iter_mut().enumerate() {
        r.offset = i as i64;
        // The encoder keeps one batch while offset minus sequence stays the same.
        r.sequence = i as i32;
        r.producer_id = -1;
        r.producer_epoch = -1;
        r.transactional = false;
        r.control = false;
        r.partition_leader_epoch = -1;
    }
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, records.iter(), &RecordEncodeOptions { version: 2, compression })?;
    Ok(buf.freeze())
}

/// `count` filler records in one uncompressed batch.
pub fn filler(count: i64, timestamp: i64) -> Bytes {
    let timestamp = timestamp.max(0);
    let mut records: Vec<Record> = (0..count.max(1))
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i,
            sequence: i as i32,
            timestamp,
            key: Some(Bytes::from_static(FILLER_KEY)),
            value: None,
            headers: Vec::new(),
        })
        .collect();
    // Filler records are plain data; encoding them cannot fail.
    encode(&mut records, Compression::None).unwrap_or_default()
}

/// Sets what the destination checks of a batch about to be produced: no
/// transaction, the link's idempotent producer and sequence, and the CRC again.
pub fn stamp(batch: &mut [u8], producer_id: i64, epoch: i16, base_sequence: i32) -> Option<()> {
    batch.get_mut(..8)?.copy_from_slice(&0i64.to_be_bytes());
    batch.get_mut(b::LEADER_EPOCH_AT..b::LEADER_EPOCH_AT + 4)?.copy_from_slice(&(-1i32).to_be_bytes());
    let attributes = i16::from_be_bytes(batch.get(b::ATTRIBUTES_AT..b::ATTRIBUTES_AT + 2)?.try_into().ok()?);
    batch
        .get_mut(b::ATTRIBUTES_AT..b::ATTRIBUTES_AT + 2)?
        .copy_from_slice(&(attributes & !0x10).to_be_bytes());
    batch.get_mut(b::PRODUCER_ID_AT..b::PRODUCER_ID_AT + 8)?.copy_from_slice(&producer_id.to_be_bytes());
    batch.get_mut(b::PRODUCER_EPOCH_AT..b::PRODUCER_EPOCH_AT + 2)?.copy_from_slice(&epoch.to_be_bytes());
    batch.get_mut(b::BASE_SEQUENCE_AT..b::BASE_SEQUENCE_AT + 4)?.copy_from_slice(&base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(batch.get(b::ATTRIBUTES_AT..)?);
    batch.get_mut(b::CRC_AT..b::CRC_AT + 4)?.copy_from_slice(&crc.to_be_bytes());
    Some(())
}

/// Whether a destination batch is filler: uncompressed, not a marker, and its first
/// record keyed [`FILLER_KEY`].
pub fn is_filler(batch: &[u8], h: &BatchHeader) -> bool {
    if h.control_batch || h.compression != 0 {
        return false;
    }
    first_key(batch.get(b::HEADER..).unwrap_or_default()) == Some(FILLER_KEY)
}

/// The key of the first record in uncompressed `records`.
fn first_key(records: &[u8]) -> Option<&[u8]> {
    let (_, mut at) = b::varint(records)?; // length
    at += 1; // attributes
    for _ in 0..2 {
        let (_, n) = b::varint(records.get(at..)?)?; // timestamp and offset deltas
        at += n;
    }
    let (len, n) = b::varint(records.get(at..)?)?;
    at += n;
    let len = usize::try_from(b::zigzag(len)).ok()?;
    records.get(at..at.checked_add(len)?)
}

/// A destination fetch answer's records as clients of the mirror see them: every
/// base offset moved by `shift`, every filler batch a commit marker spanning the
/// same offsets. `None` when nothing changes.
pub fn present(records: &Bytes, shift: i64) -> Option<Bytes> {
    let mut fillers = false;
    let mut whole = 0usize;
    for h in b::headers(records) {
        fillers |= is_filler(records.get(whole..whole + h.size)?, &h);
        whole += h.size;
    }
    if shift == 0 && !fillers {
        return None;
    }
    let mut out = BytesMut::with_capacity(records.len());
    let mut at = 0usize;
    for h in b::headers(records) {
        let batch = records.get(at..at + h.size)?;
        at += h.size;
        let base = h.base_offset.saturating_add(shift);
        if is_filler(batch, &h) {
            marker(&mut out, base, batch)?;
        } else {
            out.put_i64(base);
            out.put_slice(batch.get(8..)?);
        }
    }
    let rest = records.get(at..)?;
    if rest.len() >= 8 {
        let base = i64::from_be_bytes(rest.get(..8)?.try_into().ok()?).saturating_add(shift);
        out.put_i64(base);
        out.put_slice(rest.get(8..)?);
    } else {
        out.put_slice(rest);
    }
    Some(out.freeze())
}

/// A commit marker at `base` spanning the offsets of the filler batch `filler`.
fn marker(out: &mut BytesMut, base: i64, filler: &[u8]) -> Option<()> {
    // attributes, timestamp delta, offset delta, key (4 bytes), value (6 bytes), no headers
    const RECORD: [u8; 17] = [32, 0, 0, 0, 8, 0, 0, 0, 1, 12, 0, 0, 0, 0, 0, 0, 0];
    let start = out.len();
    out.put_i64(base);
    out.put_i32((b::HEADER - b::LOG_OVERHEAD + RECORD.len()) as i32);
    out.put_slice(filler.get(b::LEADER_EPOCH_AT..b::LEADER_EPOCH_AT + 4)?);
    out.put_u8(2);
    out.put_u32(0); // CRC, below
    out.put_i16(0x30); // transactional control batch
    out.put_slice(filler.get(b::LAST_OFFSET_DELTA_AT..b::PRODUCER_ID_AT + 10)?); // deltas, timestamps, producer
    out.put_i32(-1); // base sequence
    out.put_i32(1);
    out.put_slice(&RECORD);
    let crc = crc32c::crc32c(out.get(start + b::ATTRIBUTES_AT..)?);
    out.get_mut(start + b::CRC_AT..start + b::CRC_AT + 4)?.copy_from_slice(&crc.to_be_bytes());
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: i64, key: &str, value: &str) -> Record {
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: offset as i32,
            timestamp: 1_700_000_000_000 + offset,
            key: Some(Bytes::from(key.to_string())),
            value: Some(Bytes::from(value.to_string())),
            headers: vec![("h".into(), Some(Bytes::from_static(b"v")))],
        }
    }

    /// One source batch holding `records`, at their offsets, with `last` as its
    /// last offset (above the last record's after compaction).
    fn source_batch(records: &[Record], compression: Compression, pid: i64, transactional: bool) -> Vec<u8> {
        let mut rs = records.to_vec();
        for r in &mut rs {
            r.producer_id = pid;
            r.producer_epoch = 0;
            r.transactional = transactional;
            r.sequence = r.offset as i32;
        }
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(&mut buf, rs.iter(), &RecordEncodeOptions { version: 2, compression }).expect("encode");
        assert_eq!(b::headers(&buf).count(), 1, "one batch");
        buf.to_vec()
    }

    fn control(offset: i64, pid: i64, kind: i16) -> Vec<u8> {
        let r = Record {
            transactional: true,
            control: true,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: pid,
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: -1,
            timestamp: 1_700_000_000_000 + offset,
            key: Some(Bytes::from([0u8, 0, 0, kind as u8].to_vec())),
            value: Some(Bytes::from_static(&[0, 0, 0, 0, 0, 0])),
            headers: Vec::new(),
        };
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(&mut buf, [r].iter(), &RecordEncodeOptions { version: 2, compression: Compression::None })
            .expect("encode");
        buf.to_vec()
    }

    /// Sets a batch's last offset delta (what compaction leaves) and fixes the CRC.
    fn with_last_delta(mut batch: Vec<u8>, delta: i32) -> Vec<u8> {
        batch[b::LAST_OFFSET_DELTA_AT..b::LAST_OFFSET_DELTA_AT + 4].copy_from_slice(&delta.to_be_bytes());
        let crc = crc32c::crc32c(&batch[b::ATTRIBUTES_AT..]);
        batch[b::CRC_AT..b::CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        batch
    }

    /// A destination partition: it numbers every produced record itself, as a
    /// broker does, from `start`.
    struct Destination {
        log: BytesMut,
        end: i64,
        sequence: i32,
    }

    impl Destination {
        fn new(start: i64) -> Self {
            Destination { log: BytesMut::new(), end: start, sequence: 0 }
        }

        fn write(&mut self, pieces: &[Piece]) {
            for p in pieces {
                let batches = match p {
                    Piece::Fill { count, timestamp } => {
                        let mut left = *count;
                        let mut out = Vec::new();
                        while left > 0 {
                            let n = left.min(MAX_FILL);
                            out.push(filler(n, *timestamp).to_vec());
                            left -= n;
                        }
                        out
                    }
                    Piece::Batch { bytes, .. } => vec![bytes.to_vec()],
                };
                for mut batch in batches {
                    stamp(&mut batch, 77, 0, self.sequence).expect("stamp");
                    let h = b::headers(&batch).next().expect("a batch");
                    assert_eq!(h.producer_id, 77);
                    assert!(!h.transactional);
                    // The broker assigns offsets: consecutive from its end.
                    let n = i64::from(h.record_count);
                    batch[..8].copy_from_slice(&self.end.to_be_bytes());
                    batch = with_last_delta(batch, (n - 1) as i32);
                    self.end += n;
                    self.sequence += n as i32;
                    self.log.extend_from_slice(&batch);
                }
            }
        }

        /// What a client reading through Causeway gets: (offset, key) of each data record.
        fn read(&self, shift: i64) -> Vec<(i64, Option<Bytes>)> {
            let shown = present(&self.log.clone().freeze(), shift).unwrap_or_else(|| self.log.clone().freeze());
            let mut buf = shown.clone();
            let mut out = Vec::new();
            for set in RecordBatchDecoder::decode_all(&mut buf).expect("decodes") {
                for r in set.records.into_iter().filter(|r| !r.control) {
                    out.push((r.offset, r.key));
                }
            }
            // Every batch's offsets continue the previous one's: nothing skipped twice.
            let mut end = None;
            for h in b::headers(&shown) {
                if let Some(e) = end {
                    assert_eq!(h.base_offset, e, "batches are contiguous");
                }
                end = Some(h.base_offset + i64::from(h.last_offset_delta) + 1);
            }
            out
        }
    }

    fn keys(records: &[Record]) -> Vec<(i64, Option<Bytes>)> {
        records.iter().map(|r| (r.offset, r.key.clone())).collect()
    }

    #[test]
    fn whole_batches_pass_untouched_and_offsets_stay() {
        let a: Vec<Record> = (5..8).map(|o| record(o, &format!("k{o}"), "v")).collect();
        let c: Vec<Record> = (8..10).map(|o| record(o, &format!("k{o}"), "v")).collect();
        let mut log = source_batch(&a, Compression::Zstd, 3, false);
        log.extend(source_batch(&c, Compression::Lz4, 3, false));
        let log = Bytes::from(log);
        let (pieces, next) = cut(&log, 5, &[]).expect("cut");
        assert_eq!(next, 10);
        assert_eq!(pieces.len(), 2);
        match &pieces[0] {
            Piece::Batch { bytes, count } => {
                assert_eq!(*count, 3);
                assert_eq!(bytes[b::HEADER..], log[b::HEADER..bytes.len()], "compressed records untouched");
            }
            other => panic!("{other:?}"),
        }
        let mut dest = Destination::new(0);
        dest.write(&pieces);
        let mut want = keys(&a);
        want.extend(keys(&c));
        assert_eq!(dest.read(5), want);
    }

    #[test]
    fn markers_aborted_data_and_holes_become_filler() {
        let mut log = Vec::new();
        log.extend(source_batch(&[record(0, "a", "1"), record(1, "b", "2")], Compression::None, 7, true));
        log.extend(control(2, 7, 1)); // commit
        log.extend(source_batch(&[record(3, "x", "aborted")], Compression::Gzip, 9, true));
        log.extend(source_batch(&[record(4, "c", "3")], Compression::Snappy, 7, true));
        log.extend(control(5, 9, 0)); // abort producer 9
        log.extend(control(6, 7, 1));
        // 7..=9 compacted away entirely
        log.extend(source_batch(&[record(10, "d", "4")], Compression::None, -1, false));
        let log = Bytes::from(log);
        let (pieces, next) = cut(&log, 0, &[(9, 3)]).expect("cut");
        assert_eq!(next, 11);
        let kinds: Vec<(bool, i64)> = pieces.iter().map(|p| (matches!(p, Piece::Fill { .. }), p.count())).collect();
        assert_eq!(kinds, vec![(false, 2), (true, 2), (false, 1), (true, 5), (false, 1)]);
        let mut dest = Destination::new(0);
        dest.write(&pieces);
        assert_eq!(
            dest.read(0),
            vec![
                (0, Some(Bytes::from("a"))),
                (1, Some(Bytes::from("b"))),
                (4, Some(Bytes::from("c"))),
                (10, Some(Bytes::from("d")))
            ]
        );
    }

    #[test]
    fn compacted_batches_are_split_into_runs() {
        let kept = vec![record(20, "a", "1"), record(21, "b", "2"), record(24, "c", "3"), record(26, "d", "4")];
        let batch = with_last_delta(source_batch(&kept, Compression::Zstd, -1, false), 7); // 20..=27
        let (pieces, next) = cut(&Bytes::from(batch), 20, &[]).expect("cut");
        assert_eq!(next, 28);
        let counts: Vec<i64> = pieces.iter().map(Piece::count).collect();
        assert_eq!(counts, vec![2, 2, 1, 1, 1, 1]);
        let mut dest = Destination::new(0);
        dest.write(&pieces);
        assert_eq!(dest.read(20), keys(&kept));
    }

    #[test]
    fn a_batch_begun_before_the_start_keeps_only_what_follows() {
        let all: Vec<Record> = (0..6).map(|o| record(o, &format!("k{o}"), "v")).collect();
        let (pieces, next) = cut(&Bytes::from(source_batch(&all, Compression::Lz4, -1, false)), 4, &[]).expect("cut");
        assert_eq!(next, 6);
        let mut dest = Destination::new(0);
        dest.write(&pieces);
        assert_eq!(dest.read(4), keys(&all[4..]));
    }

    #[test]
    fn long_gaps_fill_in_bounded_batches() {
        let log = Bytes::from(source_batch(&[record(25_000, "z", "v")], Compression::None, -1, false));
        let (pieces, _) = cut(&log, 0, &[]).expect("cut");
        assert_eq!(pieces[0].count(), 25_000);
        let mut dest = Destination::new(0);
        dest.write(&pieces);
        assert_eq!(dest.end, 25_001);
        assert_eq!(dest.read(0), vec![(25_000, Some(Bytes::from("z")))]);
        assert!(b::headers(&dest.log).all(|h| h.size < 300 << 10), "no batch is huge");
    }

    #[test]
    fn a_destination_with_a_shift_and_a_cut_answer() {
        let all: Vec<Record> = (100..103).map(|o| record(o, &format!("k{o}"), "v")).collect();
        let (pieces, _) = cut(&Bytes::from(source_batch(&all, Compression::None, -1, false)), 98, &[]).expect("cut");
        let mut dest = Destination::new(0);
        dest.write(&pieces);
        // The destination answers with its last batch cut short.
        let last = dest.log.len() - b::headers(&dest.log).last().expect("batches").size;
        let mut answer = dest.log.clone();
        answer.extend_from_slice(&dest.log[last..last + 40]);
        let shown = present(&answer.freeze(), 98).expect("changed");
        let hs: Vec<BatchHeader> = b::headers(&shown).collect();
        assert_eq!(hs[0].base_offset, 98);
        assert!(hs[0].control_batch, "filler shows as a marker");
        assert_eq!(hs[0].last_offset_delta, 1);
        assert_eq!(hs[1].base_offset, 100);
        assert!(b::cut_short(&shown[hs.iter().map(|h| h.size).sum::<usize>()..]));
    }

    #[test]
    fn old_formats_are_refused_by_name() {
        let mut log = source_batch(&[record(0, "a", "1")], Compression::None, -1, false);
        let mut old = vec![0u8; 40];
        old[8..12].copy_from_slice(&28i32.to_be_bytes());
        old[16] = 1; // magic v1
        log.extend(&old);
        assert_eq!(cut(&Bytes::from(log), 0, &[]), Err(Unmirrorable::OldFormat(0)));
    }

    #[test]
    fn an_answer_is_settled_up_to_its_first_open_transaction() {
        let mut log = Vec::new();
        log.extend(source_batch(&[record(0, "a", "1")], Compression::None, 7, true));
        log.extend(control(1, 7, 0)); // abort
        log.extend(source_batch(&[record(2, "b", "2")], Compression::None, -1, false));
        let open_at = log.len();
        log.extend(source_batch(&[record(3, "c", "3")], Compression::None, 8, true));
        log.extend(source_batch(&[record(4, "d", "4")], Compression::None, -1, false));
        let (kept, aborted) = settled(&Bytes::from(log));
        assert_eq!(kept.len(), open_at);
        assert_eq!(aborted, vec![(7, 0)]);
    }

    #[test]
    fn small_batches_are_joined_and_keep_their_records() {
        let mut log = Vec::new();
        let mut want = Vec::new();
        for o in 0..6 {
            let r = record(o, &format!("k{o}"), "v");
            want.push((o, r.key.clone()));
            log.extend(source_batch(&[r], Compression::None, 9, false));
        }
        log.extend(control(6, 9, 1));
        for o in 7..9 {
            let r = record(o, &format!("k{o}"), "v");
            want.push((o, r.key.clone()));
            log.extend(source_batch(&[r], Compression::Zstd, -1, false));
        }
        let (pieces, next) = cut(&Bytes::from(log), 0, &[]).expect("cut");
        assert_eq!(pieces.len(), 6 + 1 + 2);
        let joined = coalesce(pieces).expect("coalesce");
        let counts: Vec<i64> = joined.iter().map(Piece::count).collect();
        assert_eq!(counts, vec![6, 1, 2], "two runs, the marker's filler between");
        let mut dest = Destination::new(0);
        dest.write(&joined);
        assert_eq!(dest.end, next);
        assert_eq!(dest.read(0), want);
    }

    #[test]
    fn nothing_to_change_is_left_alone() {
        let log = Bytes::from(source_batch(&[record(0, "a", "1")], Compression::None, -1, false));
        assert!(present(&log, 0).is_none());
    }

    proptest::proptest! {
        /// Any source log of batches, holes, markers and aborted runs, fetched in
        /// any pieces, reads back at its own offsets.
        #[test]
        fn any_log_reads_back_at_its_offsets(
            layout in proptest::collection::vec((0u8..5, 1i64..6, 0i64..4), 1..25),
            start in 0i64..3,
            step in 1usize..5,
        ) {
            let mut log = Vec::new();
            let mut want = Vec::new();
            let mut aborted = Vec::new();
            let mut at = 0i64;
            for (i, (kind, n, hole)) in layout.into_iter().enumerate() {
                at += hole;
                let recs: Vec<Record> = (at..at + n).map(|o| record(o, &format!("k{o}"), "v")).collect();
                match kind {
                    0 | 1 => {
                        log.push(source_batch(&recs, if kind == 0 { Compression::None } else { Compression::Zstd }, -1, false));
                        want.extend(keys(&recs));
                        at += n;
                    }
                    2 => {
                        // compacted: every other record kept
                        let kept: Vec<Record> = recs.iter().step_by(2).cloned().collect();
                        log.push(with_last_delta(source_batch(&kept, Compression::Lz4, -1, false), (n - 1) as i32));
                        want.extend(keys(&kept));
                        at += n;
                    }
                    3 => {
                        let pid = 1000 + i as i64;
                        log.push(source_batch(&recs, Compression::None, pid, true));
                        aborted.push((pid, at));
                        log.push(control(at + n, pid, 0));
                        at += n + 1;
                    }
                    _ => {
                        let pid = 2000 + i as i64;
                        log.push(source_batch(&recs, Compression::Gzip, pid, true));
                        want.extend(keys(&recs));
                        log.push(control(at + n, pid, 1));
                        at += n + 1;
                    }
                }
            }
            let want: Vec<_> = want.into_iter().filter(|(o, _)| *o >= start).collect();
            let mut dest = Destination::new(0);
            let mut next = start;
            for chunk in log.chunks(step) {
                let bytes = Bytes::from(chunk.concat());
                let (pieces, after) = cut(&bytes, next, &aborted).expect("cut");
                dest.write(&coalesce(pieces).expect("coalesce"));
                next = after;
            }
            proptest::prop_assert_eq!(dest.end + start, next);
            proptest::prop_assert_eq!(dest.read(start), want);
        }

        #[test]
        fn hostile_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600), shift in -5i64..5) {
            let bytes = Bytes::from(data);
            let _ = cut(&bytes, 0, &[(1, 0)]);
            let _ = present(&bytes, shift);
        }
    }
}
