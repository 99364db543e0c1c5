//! Record batches as filters see them. A filter reads the records in Kafka's
//! own format ([`sections`]: decompressed, with bounds, and lent to the
//! sandbox); the gateway decodes them only when a verdict changes something,
//! applies the verdicts, and encodes the batch again with its original
//! compression. When every record passes, the original bytes go on.
//!
//! For a producer with an id (idempotent or transactional), the broker checks
//! sequence numbers against the record count of each batch, so dropping or
//! adding records would make its next batch look out of order: such batches
//! may have records replaced, never dropped or added, and a filter that tries is
//! refused with a message saying so.

use bytes::{Bytes, BytesMut};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
};

use super::filter::{Direction, KafkaRecord, RecordBatch, Verdict};
use crate::codec::batches as headers;

/// One batch's records as a filter reads them: uncompressed, in Kafka's record
/// format. The bytes are a slice of the request or answer when the batch was
/// not compressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub base_offset: i64,
    pub base_timestamp: i64,
    pub count: u32,
    pub records: Bytes,
}

/// `sections` as the plugin interface carries them (borrowed: the bytes are
/// copied once, into the sandbox).
pub fn as_wit(sections: &[Section]) -> Vec<RecordBatch<'_>> {
    sections
        .iter()
        .map(|s| RecordBatch {
            base_offset: s.base_offset,
            base_timestamp: s.base_timestamp,
            count: s.count,
            records: &s.records,
        })
        .collect()
}

/// Records one batch may declare before Causeway refuses to decode it.
const MAX_RECORDS: i32 = 1_000_000;

/// Whether applying verdicts changed anything.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Same,
    Changed,
    Refused(String),
}

/// The records of a produce request's or fetch answer's partition.
#[derive(Debug)]
pub struct Decoded {
    records: Vec<Record>,
    compression: Compression,
    /// The offset of the last record as decoded.
    last_offset: Option<i64>,
}

/// The data batches of `bytes` as the record-filter world carries them, their
/// records decompressed. Control batches (transaction
/// markers) are left out. A fetch answer may end in a partial batch (cut at
/// its size limit): it is left out, as clients do. A produce must be whole v2
/// batches, so that no record reaches the broker unseen.
pub fn sections(bytes: &Bytes, direction: Direction, limit: usize) -> anyhow::Result<Vec<Section>> {
    let whole: usize = headers::headers(bytes).map(|h| h.size).sum();
    if direction == Direction::Produce && whole != bytes.len() {
        anyhow::bail!(
            "{} of {} bytes are not whole record batches of format v2 (the only format filters read)",
            bytes.len() - whole,
            bytes.len()
        );
    }
    if let Some(rest) = bytes.get(whole..).filter(|r| !r.is_empty()) {
        // A fetch answer may end in a v2 batch cut short; anything else (an
        // older message format, garbage) would reach the client unfiltered.
        if !headers::cut_short(rest) {
            anyhow::bail!("{} bytes after the last whole batch are not record batches of format v2", rest.len());
        }
    }
    let mut out = Vec::new();
    let mut at = 0usize;
    let mut total = 0usize;
    for h in headers::headers(bytes) {
        // The CRC is not checked here: filters only read, a changed batch is
        // decoded (and checked) before it is written, and the broker checks
        // the ones that pass.
        let base_offset = h.base_offset;
        at += h.size;
        if h.control_batch {
            // Brokers write transaction markers uncompressed; clients never
            // send them.
            if direction == Direction::Produce || h.compression != 0 {
                anyhow::bail!("the batch at offset {base_offset} is a control batch a {} does not carry", match direction {
                    Direction::Produce => "produce request",
                    Direction::Fetch => "broker (compressed)",
                });
            }
            continue;
        }
        if !(0..=MAX_RECORDS).contains(&h.record_count) {
            anyhow::bail!("a batch declares {} records; at most {MAX_RECORDS} are accepted", h.record_count);
        }
        let body = bytes.slice((at - h.size + headers::RECORDS_AT).min(at)..at);
        let room = limit.saturating_sub(total);
        let records = match h.compression {
            0 if body.len() <= room => body,
            codec => Bytes::from(
                decompress(codec, &body, room).map_err(|e| anyhow::anyhow!("the batch at offset {base_offset}: {e}"))?,
            ),
        };
        total += records.len();
        // The smallest record takes 7 bytes: a count beyond that is a lie that
        // would make a reader reserve memory for nothing.
        if (h.record_count as usize).saturating_mul(MIN_RECORD) > records.len() {
            anyhow::bail!(
                "the batch at offset {base_offset} declares {} records in {} bytes",
                h.record_count,
                records.len()
            );
        }
        out.push(Section {
            base_offset,
            base_timestamp: h.first_timestamp,
            count: h.record_count as u32,
            records,
        });
    }
    Ok(out)
}

/// Uncompressed record bytes one partition's batches may hold before Causeway
/// refuses to filter them: a small compressed batch can claim gigabytes. The
/// chain lowers it to a quarter of its smallest plugin memory limit, so the
/// records always fit in the sandbox.
pub const MAX_RECORD_BYTES: usize = 64 << 20;

/// The bytes of the smallest v2 record: length, attributes, two deltas, key
/// and value lengths, header count, one byte each.
const MIN_RECORD: usize = 7;

/// A batch's records, decompressed with `codec` (the low bits of its
/// attributes), refused once they pass `limit` bytes.
fn decompress(codec: u8, body: &[u8], limit: usize) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let too_big = || anyhow::anyhow!("its records decompress to more than {} MiB", MAX_RECORD_BYTES >> 20);
    let bounded = |mut reader: Box<dyn Read + '_>| -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        reader.by_ref().take(limit as u64 + 1).read_to_end(&mut out)?;
        if out.len() > limit {
            return Err(too_big());
        }
        Ok(out)
    };
    match codec {
        0 if body.len() > limit => Err(too_big()),
        0 => Ok(body.to_vec()),
        1 => bounded(Box::new(flate2::read::GzDecoder::new(body))).map_err(|e| anyhow::anyhow!("gzip: {e}")),
        2 => snappy(body, limit).map_err(|e| anyhow::anyhow!("snappy: {e}")),
        3 => bounded(Box::new(lz4::Decoder::new(body)?)).map_err(|e| anyhow::anyhow!("lz4: {e}")),
        4 => bounded(Box::new(zstd::stream::read::Decoder::new(body)?)).map_err(|e| anyhow::anyhow!("zstd: {e}")),
        other => anyhow::bail!("unknown compression {other}"),
    }
}

/// Kafka's snappy: xerial framing (a magic header, then length-prefixed
/// blocks) as the Java client writes it, or one raw block. Each block's
/// declared length is checked against the room left before allocating.
fn snappy(body: &[u8], limit: usize) -> anyhow::Result<Vec<u8>> {
    const MAGIC: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
    let mut out = Vec::new();
    let block = |compressed: &[u8], out: &mut Vec<u8>| -> anyhow::Result<()> {
        let n = snap::raw::decompress_len(compressed)?;
        if n > limit.saturating_sub(out.len()) {
            anyhow::bail!("its records decompress to more than {} MiB", MAX_RECORD_BYTES >> 20);
        }
        let start = out.len();
        out.resize(start + n, 0);
        snap::raw::Decoder::new().decompress(compressed, &mut out[start..])?;
        Ok(())
    };
    let Some(mut rest) = body.strip_prefix(&MAGIC[..]) else {
        block(body, &mut out)?;
        return Ok(out);
    };
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(|| anyhow::anyhow!("a block length is cut off"))?;
        let len = u32::from_be_bytes(*len) as usize;
        let compressed = tail.get(..len).ok_or_else(|| anyhow::anyhow!("a block is shorter than its length"))?;
        block(compressed, &mut out)?;
        rest = &tail[len..];
    }
    Ok(out)
}

/// Decodes every whole v2 batch in `bytes`.
pub fn decode(bytes: &Bytes) -> anyhow::Result<Decoded> {
    // Whole batches only: a fetch answer may end in a partial one.
    let whole: usize = headers::headers(bytes).map(|h| h.size).sum();
    let bytes = &bytes.slice(..whole);
    let mut probe = bytes.clone();
    for info in RecordBatchDecoder::decode_batch_info(&mut probe)? {
        if info.record_count > MAX_RECORDS {
            anyhow::bail!("a batch declares {} records; at most {MAX_RECORDS} are accepted", info.record_count);
        }
    }
    let mut buf = bytes.clone();
    let mut records = Vec::new();
    let mut compression = Compression::None;
    for (i, set) in RecordBatchDecoder::decode_all(&mut buf)?.into_iter().enumerate() {
        if i == 0 {
            compression = set.compression;
        }
        records.extend(set.records);
    }
    let last_offset = records.iter().map(|r| r.offset).max();
    Ok(Decoded {
        records,
        compression,
        last_offset,
    })
}

#[cfg(test)]
fn to_wit(r: &Record) -> KafkaRecord {
    KafkaRecord {
        key: r.key.as_ref().map(|k| k.to_vec()),
        value: r.value.as_ref().map(|v| v.to_vec()),
        headers: r
            .headers
            .iter()
            .map(|(k, v)| super::filter::Header {
                key: k.to_string(),
                value: v.as_ref().map(|v| v.to_vec()),
            })
            .collect(),
        timestamp: r.timestamp,
    }
}

fn from_wit(template: &Record, r: KafkaRecord) -> Record {
    let headers = r
        .headers
        .into_iter()
        .map(|h| (StrBytes::from_string(h.key), h.value.map(Bytes::from)))
        .collect();
    Record {
        key: r.key.map(Bytes::from),
        value: r.value.map(Bytes::from),
        headers,
        timestamp: r.timestamp,
        ..template.clone()
    }
}

impl Decoded {
    /// The records, as decoded and as verdicts left them.
    #[cfg(test)]
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// The records as the plugin interface carries them.
    #[cfg(test)]
    pub fn view(&self) -> Vec<KafkaRecord> {
        self.records.iter().filter(|r| !r.control).map(to_wit).collect()
    }

    /// The (non-control) records as the record-filter world carries them, for
    /// the next filter of a chain after one changed them, refused past `limit`
    /// bytes as the chain's first reading is.
    pub fn sections(&self, limit: usize) -> anyhow::Result<Vec<Section>> {
        let mut buf = BytesMut::new();
        let data: Vec<&Record> = self.records.iter().filter(|r| !r.control).collect();
        if data.is_empty() {
            return Ok(Vec::new());
        }
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut buf, data, &options)?;
        sections(&buf.freeze(), Direction::Produce, limit)
    }

    /// Applies one verdict per (non-control) record.
    pub fn apply(&mut self, verdicts: Vec<Verdict>, direction: Direction) -> Applied {
        let producer = self.records.first().is_some_and(|r| r.producer_id >= 0);
        let base = self.records.first().map(|r| (r.offset, r.sequence));
        let mut out = Vec::with_capacity(self.records.len());
        let mut changed = false;
        let mut verdicts = verdicts.into_iter();
        for record in std::mem::take(&mut self.records) {
            if record.control {
                out.push(record);
                continue;
            }
            match verdicts.next() {
                None | Some(Verdict::Pass) => out.push(record),
                Some(Verdict::Replace(r)) => {
                    out.push(from_wit(&record, r));
                    changed = true;
                }
                Some(Verdict::ReplaceValue(value)) => {
                    out.push(Record {
                        value: value.map(Bytes::from),
                        ..record
                    });
                    changed = true;
                }
                Some(Verdict::Drop) => {
                    if direction == Direction::Produce && producer {
                        return Applied::Refused(
                            "dropped a record of an idempotent or transactional producer's batch; its sequence numbers would break (reject the batch or replace the record instead)".into(),
                        );
                    }
                    changed = true;
                }
                Some(Verdict::FanOut(list)) => {
                    if direction == Direction::Fetch {
                        return Applied::Refused("fan-out applies to produce only; a fetch answer keeps the broker's offsets".into());
                    }
                    if producer && list.len() != 1 {
                        return Applied::Refused(
                            "fanned out a record of an idempotent or transactional producer's batch; its sequence numbers would break".into(),
                        );
                    }
                    for r in list {
                        out.push(from_wit(&record, r));
                    }
                    changed = true;
                }
            }
        }
        if direction == Direction::Produce {
            // Offsets and sequences of a produce batch are relative: renumber.
            if let Some((base_offset, base_sequence)) = base {
                // Sequences follow offsets even without a producer id (base
                // -1): the encoder keeps such records in one batch, and a
                // produce partition must be exactly one batch.
                for (i, r) in out.iter_mut().enumerate() {
                    r.offset = base_offset + i as i64;
                    r.sequence = base_sequence.wrapping_add(i as i32);
                }
            }
        }
        self.records = out;
        if changed {
            Applied::Changed
        } else {
            Applied::Same
        }
    }

    /// Encodes the records again, with the compression they came with. For a
    /// fetch answer whose last records were dropped, an empty batch ends at the
    /// last offset read, so the consumer moves past them (as after compaction).
    pub fn encode(&self, direction: Direction) -> anyhow::Result<Bytes> {
        let mut buf = BytesMut::new();
        if !self.records.is_empty() {
            let options = RecordEncodeOptions {
                version: 2,
                compression: self.compression,
            };
            RecordBatchEncoder::encode(&mut buf, self.records.iter(), &options)?;
        }
        let kept = self.records.iter().map(|r| r.offset).max();
        if let (Direction::Fetch, Some(last)) = (direction, self.last_offset) {
            if kept.is_none_or(|k| k < last) {
                empty_batch(&mut buf, last);
            }
        }
        Ok(buf.freeze())
    }
}

/// A v2 batch with no records at `offset`: what compaction leaves of a batch
/// whose records all went.
fn empty_batch(buf: &mut BytesMut, offset: i64) {
    use bytes::BufMut;
    let mut body = BytesMut::with_capacity(49);
    body.put_i16(0); // attributes
    body.put_i32(0); // last offset delta
    body.put_i64(-1); // first timestamp
    body.put_i64(-1); // max timestamp
    body.put_i64(-1); // producer id
    body.put_i16(-1); // producer epoch
    body.put_i32(-1); // base sequence
    body.put_i32(0); // records
    buf.put_i64(offset);
    buf.put_i32((4 + 1 + 4 + body.len()) as i32); // leader epoch, magic, crc, rest
    buf.put_i32(-1); // partition leader epoch
    buf.put_i8(2);
    buf.put_u32(crc32c::crc32c(&body));
    buf.put_slice(&body);
}

/// A record for tests.
#[cfg(test)]
pub fn record(offset: i64, key: &str, value: &str) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: kafka_protocol::records::TimestampType::Creation,
        offset,
        sequence: -1,
        timestamp: 1_700_000_000_000 + offset,
        key: Some(Bytes::from(key.to_string())),
        value: Some(Bytes::from(value.to_string())),
        headers: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(records: &[Record], compression: Compression) -> Bytes {
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(&mut buf, records.iter(), &RecordEncodeOptions { version: 2, compression })
            .expect("encode");
        buf.freeze()
    }

    #[test]
    fn verdicts_drop_replace_and_fan_out_keep_compression() {
        let bytes = batch(&[record(0, "a", "1"), record(1, "b", "2"), record(2, "c", "3")], Compression::Zstd);
        let mut d = decode(&bytes).expect("decode");
        assert_eq!(d.view().len(), 3);
        let replaced = KafkaRecord {
            key: Some(b"b".to_vec()),
            value: Some(b"masked".to_vec()),
            headers: vec![super::super::filter::Header { key: "h".into(), value: Some(b"v".to_vec()) }],
            timestamp: 5,
        };
        let applied = d.apply(
            vec![Verdict::Drop, Verdict::Replace(replaced.clone()), Verdict::FanOut(vec![replaced.clone(), replaced])],
            Direction::Produce,
        );
        assert_eq!(applied, Applied::Changed);
        let out = d.encode(Direction::Produce).expect("encode");
        let again = decode(&out).expect("decode again");
        assert_eq!(again.compression, Compression::Zstd);
        let values: Vec<_> = again.records.iter().map(|r| r.value.clone().unwrap_or_default()).collect();
        assert_eq!(values, vec![Bytes::from("masked"); 3]);
        let offsets: Vec<_> = again.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![0, 1, 2], "produce offsets renumbered from the base");
    }

    #[test]
    fn all_pass_is_the_same() {
        let bytes = batch(&[record(0, "a", "1")], Compression::None);
        let mut d = decode(&bytes).expect("decode");
        assert_eq!(d.apply(vec![Verdict::Pass], Direction::Produce), Applied::Same);
    }

    #[test]
    fn idempotent_batches_may_not_lose_records() {
        let mut r = record(0, "a", "1");
        r.producer_id = 7;
        r.producer_epoch = 0;
        r.sequence = 0;
        let bytes = batch(&[r], Compression::None);
        let mut d = decode(&bytes).expect("decode");
        assert!(matches!(d.apply(vec![Verdict::Drop], Direction::Produce), Applied::Refused(_)));
    }

    #[test]
    fn a_fetch_whose_last_records_went_still_ends_at_their_offset() {
        let bytes = batch(&[record(10, "a", "1"), record(11, "b", "2"), record(12, "c", "3")], Compression::Lz4);
        let mut d = decode(&bytes).expect("decode");
        assert_eq!(d.apply(vec![Verdict::Pass, Verdict::Drop, Verdict::Drop], Direction::Fetch), Applied::Changed);
        let out = d.encode(Direction::Fetch).expect("encode");
        let headers: Vec<_> = crate::codec::batches::headers(&out).collect();
        assert_eq!(headers.len(), 2);
        assert_eq!(headers[0].base_offset, 10);
        assert_eq!(headers[1].base_offset + i64::from(headers[1].last_offset_delta), 12, "the consumer moves on to 13");
        let again = decode(&out).expect("an empty batch decodes");
        assert_eq!(again.records.len(), 1);
        assert_eq!(again.records[0].offset, 10, "offsets are the broker's");
        let mut all = decode(&bytes).expect("decode");
        all.apply(vec![Verdict::Drop; 3], Direction::Fetch);
        let out = all.encode(Direction::Fetch).expect("encode");
        assert_eq!(crate::codec::batches::headers(&out).count(), 1);
    }

    #[test]
    fn garbage_is_an_error_on_produce_and_a_cut_batch_ends_a_fetch() {
        let garbage = Bytes::from_static(&[0, 1, 2]);
        let err = sections(&garbage, Direction::Produce, MAX_RECORD_BYTES).expect_err("garbage");
        assert!(err.to_string().contains("3 of 3 bytes are not whole record batches"), "{err}");
        let whole = batch(&[record(0, "a", "1"), record(1, "b", "2")], Compression::None);
        let mut cut = BytesMut::from(&whole[..]);
        cut.extend_from_slice(&whole[..whole.len() - 5]);
        let cut = cut.freeze();
        assert!(sections(&cut, Direction::Produce, MAX_RECORD_BYTES).is_err(), "a produce must be whole");
        // The encoder writes one batch per record here: two whole, then the
        // first of the copy whole and the second cut.
        let read = sections(&cut, Direction::Fetch, MAX_RECORD_BYTES).expect("fetch");
        assert_eq!(read.iter().map(|b| b.count).sum::<u32>(), 3);
        assert_eq!(decode(&cut).expect("decode").records.len(), 3);
    }

    #[test]
    fn repeated_header_keys_survive_a_changed_batch() {
        let mut r = record(0, "k", "v");
        r.headers = vec![
            ("trace".into(), Some(Bytes::from_static(b"1"))),
            ("trace".into(), Some(Bytes::from_static(b"2"))),
            ("none".into(), None),
        ];
        let bytes = batch(std::slice::from_ref(&r), Compression::Lz4);
        let mut d = decode(&bytes).expect("decode");
        assert_eq!(d.apply(vec![Verdict::ReplaceValue(Some(b"w".to_vec()))], Direction::Produce), Applied::Changed);
        let again = decode(&d.encode(Direction::Produce).expect("encode")).expect("decode again");
        assert_eq!(again.records[0].headers, r.headers);
        assert_eq!(again.records[0].value.as_deref(), Some(&b"w"[..]));
        assert_eq!(again.compression, Compression::Lz4);
    }

    /// A transaction marker batch, compressed as `compression`.
    fn marker(offset: i64, compression: Compression) -> Bytes {
        let marker = Record {
            control: true,
            transactional: true,
            producer_id: 4,
            producer_epoch: 0,
            key: Some(Bytes::from_static(&[0, 0, 0, 1])),
            value: Some(Bytes::from_static(&[0, 0, 0, 0, 0, 0])),
            ..record(offset, "", "")
        };
        batch(&[marker], compression)
    }

    #[test]
    fn what_filters_cannot_read_is_refused_not_passed() {
        let data = batch(&[record(0, "a", "1")], Compression::None);
        let with = |tail: &[u8]| {
            let mut b = BytesMut::from(&data[..]);
            b.extend_from_slice(tail);
            b.freeze()
        };
        // Clients never send transaction markers.
        let err = sections(&with(&marker(1, Compression::None)), Direction::Produce, MAX_RECORD_BYTES).expect_err("marker");
        assert!(err.to_string().contains("control batch"), "{err}");
        // Brokers never compress them: one that is could hide a bomb from the bound.
        assert!(sections(&with(&marker(1, Compression::Zstd)), Direction::Fetch, MAX_RECORD_BYTES).is_err());
        assert!(sections(&with(&marker(1, Compression::None)), Direction::Fetch, MAX_RECORD_BYTES).is_ok());
        // After the whole batches of a fetch answer: a cut v2 batch, or nothing.
        let mut old_format = data[..].to_vec();
        old_format[16] = 1; // magic 1: a message set no filter reads
        let err = sections(&with(&old_format), Direction::Fetch, MAX_RECORD_BYTES).expect_err("v1 tail");
        assert!(err.to_string().contains("not record batches of format v2"), "{err}");
        assert!(sections(&with(&data[..data.len() - 1]), Direction::Fetch, MAX_RECORD_BYTES).is_ok());
        assert!(sections(&with(&data[..10]), Direction::Fetch, MAX_RECORD_BYTES).is_ok());
        // A record count the bytes cannot hold.
        let mut liar = data[..].to_vec();
        liar[57..61].copy_from_slice(&1_000_000i32.to_be_bytes());
        let err = sections(&Bytes::from(liar), Direction::Produce, MAX_RECORD_BYTES).expect_err("count");
        assert!(err.to_string().contains("declares 1000000 records"), "{err}");
        // The bound the chain sets from its plugins' memory.
        assert!(sections(&data, Direction::Produce, 4).is_err());
    }

    #[test]
    fn a_produce_stays_one_batch_after_a_drop() {
        let records: Vec<Record> = (0..3)
            .map(|i| Record { sequence: i as i32 - 1, ..record(i, "k", "v") })
            .collect();
        let bytes = batch(&records, Compression::None);
        assert_eq!(crate::codec::batches::headers(&bytes).count(), 1);
        let mut d = decode(&bytes).expect("decode");
        d.apply(vec![Verdict::Pass, Verdict::Drop, Verdict::Pass], Direction::Produce);
        let out = d.encode(Direction::Produce).expect("encode");
        let batches: Vec<_> = crate::codec::batches::headers(&out).collect();
        assert_eq!(batches.len(), 1, "Kafka takes exactly one batch per partition in a produce");
        assert_eq!(batches[0].record_count, 2);
    }

    #[test]
    fn hostile_compressed_sizes_are_refused_before_allocating() {
        // A raw snappy block that claims 4 GiB in five bytes.
        let err = decompress(2, &[0xff, 0xff, 0xff, 0xff, 0x0f], MAX_RECORD_BYTES).expect_err("claim");
        assert!(err.to_string().contains("more than 64 MiB"), "{err}");
        // The same inside xerial framing.
        let mut framed = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01".to_vec();
        framed.extend_from_slice(&5u32.to_be_bytes());
        framed.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(decompress(2, &framed, MAX_RECORD_BYTES).is_err());
        // A zstd bomb: 80 MiB of zeros in a few KiB.
        let bomb = zstd::encode_all(&vec![0u8; 80 << 20][..], 3).expect("zstd");
        assert!(bomb.len() < 64 << 10);
        let err = decompress(4, &bomb, MAX_RECORD_BYTES).expect_err("bomb");
        assert!(err.to_string().contains("more than 64 MiB"), "{err}");
        // Garbage is an error, not a panic, for every codec.
        for codec in 0..=5 {
            let _ = decompress(codec, &[1, 2, 3, 4, 5, 6, 7, 8], MAX_RECORD_BYTES);
        }
    }

    #[test]
    fn sections_carry_decompressed_records_and_skip_markers() {
        let records = [record(5, "a", "1"), record(6, "b", "2")];
        let plain = sections(&batch(&records, Compression::None), Direction::Fetch, MAX_RECORD_BYTES).expect("plain");
        for compression in [Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            let packed = sections(&batch(&records, compression), Direction::Fetch, MAX_RECORD_BYTES).expect("packed");
            assert_eq!(packed, plain, "{compression:?}");
        }
        assert_eq!((plain[0].base_offset, plain.iter().map(|b| b.count).sum::<u32>()), (5, 2));
        assert_eq!(plain[0].base_timestamp, records[0].timestamp);
        // A transaction marker after the records is not shown to filters.
        let mut log = BytesMut::from(&batch(&records, Compression::None)[..]);
        log.extend_from_slice(&marker(7, Compression::None));
        let read = sections(&log.freeze(), Direction::Fetch, MAX_RECORD_BYTES).expect("with marker");
        assert_eq!(read.iter().map(|b| b.count).sum::<u32>(), 2);
    }
}
