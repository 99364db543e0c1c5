//! Request routing: a partition-routed request (Produce, Fetch, ListOffsets,
//! OffsetForLeaderEpoch, DeleteRecords) taken apart by leader, renamed to a
//! backend's names, moved by a mirror's offset shift, answered per part and
//! merged back, as the gateway does with what a client sends. Whatever
//! decodes must go through every step without a panic, and each part and the
//! merged answer must encode.
#![no_main]

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use causeway::codec::versions;
use causeway::proxy::partitioned::{Names, Positions, Split, TopicKey};
use kafka_protocol::messages::{
    ApiKey, DeleteRecordsRequest, FetchRequest, ListOffsetsRequest, OffsetForLeaderEpochRequest, ProduceRequest,
};
use kafka_protocol::protocol::Encodable;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&[api, version, parts, shift], rest)) = data.split_first_chunk::<4>() else { return };
    let (choice, body) = rest.split_at(rest.len().min(16));
    let key = match api % 5 {
        0 => ApiKey::Produce,
        1 => ApiKey::Fetch,
        2 => ApiKey::ListOffsets,
        3 => ApiKey::OffsetForLeaderEpoch,
        _ => ApiKey::DeleteRecords,
    };
    let Some(audit) = versions::audited(key) else { return };
    let span = (audit.max - audit.min + 1).max(1);
    let version = audit.min + i16::from(version) % span;
    let step = Step { version, parts: usize::from(parts % 4) + 1, shift: i64::from(shift as i8) << 56, choice };
    let body = Bytes::copy_from_slice(body);
    match key {
        ApiKey::Produce => step.run::<ProduceRequest>(body),
        ApiKey::Fetch => step.run::<FetchRequest>(body),
        ApiKey::ListOffsets => step.run::<ListOffsetsRequest>(body),
        ApiKey::OffsetForLeaderEpoch => step.run::<OffsetForLeaderEpochRequest>(body),
        _ => step.run::<DeleteRecordsRequest>(body),
    }
});

struct Step<'a> {
    version: i16,
    /// How many brokers the partitions are spread over.
    parts: usize,
    /// A mirror's offset shift, large enough to reach the ends of i64.
    shift: i64,
    /// Which part each partition goes to, in turn.
    choice: &'a [u8],
}

impl Step<'_> {
    fn run<T: Split>(&self, mut body: Bytes) {
        let Ok(mut req) = T::decode(&mut body, self.version) else { return };
        req.prepare(self.version);
        let keys = req.keys();
        let mut parts: Vec<Positions> = vec![Vec::new(); self.parts];
        let mut at = 0usize;
        for (ti, (_, ps)) in keys.iter().enumerate() {
            for pi in 0..ps.len() {
                let pick = self.choice.get(at % self.choice.len().max(1)).copied().unwrap_or(0);
                parts[usize::from(pick) % self.parts].push((ti, pi));
                at += 1;
            }
        }
        // Every other topic has a different name on the backend.
        let topics: HashMap<String, String> = keys
            .iter()
            .step_by(2)
            .filter_map(|(k, _)| match k {
                TopicKey::Name(n) => Some((n.clone(), format!("backend.{n}"))),
                _ => None,
            })
            .collect();
        let names = Names { topics, node: Some(("0".into(), "7".into())) };
        let back = names.reversed();
        let shift = self.shift;
        let mirror = move |_: &TopicKey, p: i32| (p % 2 == 0).then_some(shift);
        let mut acc = T::Resp::default();
        for (i, keep) in parts.iter().enumerate() {
            let mut part = req.subset(keep);
            part.rename(&names);
            part.mirror_request(&mirror);
            let mut out = BytesMut::new();
            let _ = part.encode(&mut out, self.version);
            let mut answer = if i % 2 == 0 { req.failed(keep, 6) } else { req.failed_with(keep, 87, "refused") };
            T::mirror_answer(&mut answer, &mirror);
            T::rename_back(&mut answer, &back);
            let _ = T::leaders_moved(&answer);
            T::merge(&mut acc, answer);
        }
        T::fit_version(&mut acc, self.version);
        let mut out = BytesMut::new();
        let _ = acc.encode(&mut out, self.version);
        let _ = req.refused(29);
    }
}
