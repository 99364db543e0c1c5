//! Kafka's record format (v2, KIP-98), as the `record-batch` of the WIT carries
//! it: read in the sandbox without copying, and written by the test harness.

use crate::record_filter::{Record, RecordBatch};
#[cfg(not(target_arch = "wasm32"))]
use crate::record_filter::{Header, KafkaRecord};

/// Reads every record of `batches`, in order, borrowing from them. A record
/// that does not parse, or a batch whose records do not fill it exactly,
/// is an error naming the batch and the record.
pub(crate) fn read(batches: &[RecordBatch]) -> Result<Vec<Record<'_>>, String> {
    // A count is only a claim: reserve no more than the bytes could hold
    // (the smallest record takes seven).
    let total = batches.iter().map(|b| (b.count as usize).min(b.records.len() / 7)).sum::<usize>();
    let mut out = Vec::with_capacity(total);
    for batch in batches {
        let mut rest = &batch.records[..];
        for i in 0..batch.count {
            let record = read_record(&mut rest, batch).map_err(|why| {
                format!(
                    "malformed record {i} of the batch at offset {}: {why}",
                    batch.base_offset
                )
            })?;
            out.push(record);
        }
        if !rest.is_empty() {
            return Err(format!(
                "the batch at offset {} has {} bytes after its {} records",
                batch.base_offset,
                rest.len(),
                batch.count
            ));
        }
    }
    Ok(out)
}

#[inline]
fn read_record<'a>(buf: &mut &'a [u8], batch: &RecordBatch) -> Result<Record<'a>, &'static str> {
    let length = varint(buf)?;
    let length = usize::try_from(length).map_err(|_| "negative length")?;
    let mut body = take(buf, length)?;
    let _attributes = take(&mut body, 1)?;
    let timestamp_delta = varint(&mut body)?;
    let offset_delta = varint(&mut body)?;
    let key = bytes(&mut body)?;
    let value = bytes(&mut body)?;
    let header_count = varint(&mut body)?;
    let header_count = usize::try_from(header_count).map_err(|_| "negative header count")?;
    let headers = body;
    // Check the headers now, so reading them later cannot fail.
    if header_count > 0 {
        let mut probe = headers;
        for _ in 0..header_count {
            header(&mut probe)?;
        }
        if !probe.is_empty() {
            return Err("bytes left after the headers");
        }
    } else if !headers.is_empty() {
        return Err("bytes left after the value");
    }
    Ok(Record {
        offset: batch.base_offset.wrapping_add(offset_delta),
        timestamp: batch.base_timestamp.wrapping_add(timestamp_delta),
        key,
        value,
        headers: HeaderBytes {
            bytes: headers,
            count: header_count,
        },
    })
}

/// A record's headers, as they came: read on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct HeaderBytes<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) count: usize,
}

impl<'a> HeaderBytes<'a> {
    pub(crate) fn iter(self) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> {
        let mut rest = self.bytes;
        (0..self.count).map_while(move |_| header(&mut rest).ok())
    }
}

fn header<'a>(buf: &mut &'a [u8]) -> Result<(&'a str, Option<&'a [u8]>), &'static str> {
    let key = bytes(buf)?.ok_or("a header without a key")?;
    let key = std::str::from_utf8(key).map_err(|_| "a header key that is not UTF-8")?;
    Ok((key, bytes(buf)?))
}

#[inline(always)]
fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], &'static str> {
    if buf.len() < n {
        return Err("shorter than its lengths say");
    }
    let (head, tail) = buf.split_at(n);
    *buf = tail;
    Ok(head)
}

/// A length-prefixed byte string; length -1 is none.
#[inline(always)]
fn bytes<'a>(buf: &mut &'a [u8]) -> Result<Option<&'a [u8]>, &'static str> {
    match varint(buf)? {
        -1 => Ok(None),
        n => Ok(Some(take(buf, usize::try_from(n).map_err(|_| "a negative length")?)?)),
    }
}

/// A zigzag varint of up to 64 bits.
#[inline(always)]
fn varint(buf: &mut &[u8]) -> Result<i64, &'static str> {
    // Most lengths and deltas fit one or two bytes.
    let raw = match buf {
        [b0, ref rest @ ..] if *b0 < 0x80 => {
            *buf = rest;
            u64::from(*b0)
        }
        [b0, b1, ref rest @ ..] if *b1 < 0x80 => {
            *buf = rest;
            u64::from(*b0 & 0x7f) | u64::from(*b1) << 7
        }
        _ => return long_varint(buf),
    };
    Ok((raw >> 1) as i64 ^ -((raw & 1) as i64))
}

#[cold]
fn long_varint(buf: &mut &[u8]) -> Result<i64, &'static str> {
    let mut raw = 0u64;
    for i in 0..10 {
        let (&byte, rest) = buf.split_first().ok_or("ends inside a number")?;
        *buf = rest;
        raw |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
        }
    }
    Err("a number longer than ten bytes")
}

// Writing batches is for the native test harness only; a plugin never does.
#[cfg(not(target_arch = "wasm32"))]
fn put_varint(out: &mut Vec<u8>, value: i64) {
    let mut raw = ((value << 1) ^ (value >> 63)) as u64;
    while raw >= 0x80 {
        out.push((raw as u8) | 0x80);
        raw >>= 7;
    }
    out.push(raw as u8);
}

#[cfg(not(target_arch = "wasm32"))]
fn put_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

/// `records` as one batch at `base_offset`, the way the gateway hands them in.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn write(records: &[KafkaRecord], base_offset: i64) -> RecordBatch {
    let base_timestamp = records.first().map_or(0, |r| r.timestamp);
    let mut out = Vec::new();
    let mut body = Vec::new();
    for (i, r) in records.iter().enumerate() {
        body.clear();
        body.push(0); // attributes
        put_varint(&mut body, r.timestamp.wrapping_sub(base_timestamp));
        put_varint(&mut body, i as i64);
        put_bytes(&mut body, r.key.as_deref());
        put_bytes(&mut body, r.value.as_deref());
        put_varint(&mut body, r.headers.len() as i64);
        for Header { key, value } in &r.headers {
            put_bytes(&mut body, Some(key.as_bytes()));
            put_bytes(&mut body, value.as_deref());
        }
        put_varint(&mut out, body.len() as i64);
        out.extend_from_slice(&body);
    }
    RecordBatch {
        base_offset,
        base_timestamp,
        count: records.len() as u32,
        records: out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_the_edges() {
        for v in [0, 1, -1, 63, -64, 64, 300, -300, i32::MAX as i64, i64::MIN, i64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut buf = &out[..];
            assert_eq!(varint(&mut buf), Ok(v), "{v}");
            assert!(buf.is_empty());
        }
        // Kafka's own encoding of a few values (zigzag: 1 -> 2, -1 -> 1).
        let mut out = Vec::new();
        put_varint(&mut out, -1);
        put_varint(&mut out, 1);
        put_varint(&mut out, 64);
        assert_eq!(out, [0x01, 0x02, 0x80, 0x01]);
    }

    #[test]
    fn records_round_trip_with_offsets_and_timestamps() {
        let records = vec![
            KafkaRecord::new("v1").with_key("k").with_timestamp(1000),
            KafkaRecord::tombstone("k2").with_timestamp(990),
            KafkaRecord::new(vec![0u8; 300])
                .with_header("a", "x")
                .with_header("a", "y")
                .with_timestamp(1005),
        ];
        let batch = write(&records, 42);
        let read = read(std::slice::from_ref(&batch)).expect("read");
        assert_eq!(read.len(), 3);
        assert_eq!(
            read.iter().map(|r| (r.offset, r.timestamp)).collect::<Vec<_>>(),
            [(42, 1000), (43, 990), (44, 1005)]
        );
        for (r, original) in read.iter().zip(&records) {
            assert_eq!(&r.owned(), original);
        }
        assert_eq!(
            read[2].headers().collect::<Vec<_>>(),
            [("a", Some(&b"x"[..])), ("a", Some(&b"y"[..]))]
        );
    }

    #[test]
    fn malformed_records_are_errors_naming_the_record() {
        let mut batch = write(&[KafkaRecord::new("abc"), KafkaRecord::new("def")], 7);
        // Claims one more record than it holds.
        batch.count = 3;
        let err = read(std::slice::from_ref(&batch)).expect_err("short");
        assert!(err.contains("record 2 of the batch at offset 7"), "{err}");
        // Trailing bytes.
        batch.count = 1;
        let err = read(std::slice::from_ref(&batch)).expect_err("trailing");
        assert!(err.contains("bytes after its 1 records"), "{err}");
        // A hostile length.
        let hostile = RecordBatch {
            base_offset: 0,
            base_timestamp: 0,
            count: 1,
            records: vec![0xfe, 0xff, 0xff, 0xff, 0x0f, 0],
        };
        assert!(read(&[hostile]).is_err());
    }

    #[test]
    fn any_bytes_are_an_answer_never_a_panic() {
        // A cheap exhaustive-ish sweep; the gateway's fuzzers cover the host.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..64 {
            for _ in 0..64 {
                let records: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed as u8
                    })
                    .collect();
                let batch = RecordBatch {
                    base_offset: 0,
                    base_timestamp: 0,
                    count: (seed % 4) as u32,
                    records,
                };
                if let Ok(read) = read(std::slice::from_ref(&batch)) {
                    for r in read {
                        let _ = r.headers().count();
                    }
                }
            }
        }
    }
}
