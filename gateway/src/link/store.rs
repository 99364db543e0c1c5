//! Links and mirrors persist in the clusters themselves: a compacted topic,
//! [`TOPIC`], on each link's destination, one record per link or mirror (its
//! name as the key, JSON as the value, no value once deleted). A gateway that
//! starts reads it back; mirror progress needs no record at all (it is the
//! destination's end offset).

use std::time::Duration;

use anyhow::{anyhow, bail};
use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

use super::wire;
use crate::backend::Cluster;

/// The topic holding links and mirrors on a destination cluster.
pub const TOPIC: &str = "__causeway_links";

/// Writes `key` = `value` (`None`: deleted) to `cluster`'s store.
pub async fn save(cluster: &Cluster, key: &str, value: Option<Bytes>) -> anyhow::Result<()> {
    if wire::partitions(cluster, TOPIC).await?.is_none() {
        let configs = [("cleanup.policy".to_string(), "compact".to_string())];
        wire::create_topic(cluster, TOPIC, 1, &configs).await?;
        for _ in 0..50 {
            if wire::partitions(cluster, TOPIC).await?.is_some() && cluster.leader(TOPIC, 0).is_some_and(|l| l >= 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        key: Some(Bytes::from(key.to_string())),
        value,
        headers: Vec::new(),
    };
    let mut batch = BytesMut::new();
    RecordBatchEncoder::encode(&mut batch, [record].iter(), &RecordEncodeOptions { version: 2, compression: Compression::None })?;
    let version = wire::produce_version(cluster)?;
    let frame = wire::produce_frame(version, TOPIC, 0, batch.freeze())?;
    let leader = wire::leader(cluster, TOPIC, 0).await?;
    let resp = cluster.call(leader, frame).await?;
    let (error, _, message) = wire::produced(&resp, version)?;
    if error != 0 {
        cluster.mark_stale();
        bail!(
            "cluster '{}' refused to store '{key}' in {TOPIC} (error {error}{})",
            cluster.name,
            message.map(|m| format!(": {m}")).unwrap_or_default()
        );
    }
    Ok(())
}

/// Every record of `cluster`'s store, in order: (key, value or `None` if deleted).
pub async fn load(cluster: &Cluster) -> anyhow::Result<Vec<(String, Option<Bytes>)>> {
    if wire::partitions(cluster, TOPIC).await?.is_none() {
        return Ok(Vec::new());
    }
    let (end, _) = wire::log_end(cluster, TOPIC, 0).await?;
    let mut next = wire::list_offsets(cluster, TOPIC, &[0], wire::EARLIEST, false).await?.get(&0).copied().unwrap_or(0);
    let version = wire::fetch_version(cluster)?;
    let mut out = Vec::new();
    while next < end {
        let frame = wire::fetch_frame(version, TOPIC, 0, next, 100, 4 << 20)?;
        let leader = wire::leader(cluster, TOPIC, 0).await?;
        let resp = cluster.call(leader, frame).await?;
        let fetched = wire::fetched(&resp, version)?;
        if fetched.error_code != 0 {
            cluster.mark_stale();
            bail!("cluster '{}' answered a fetch of {TOPIC} with error {}", cluster.name, fetched.error_code);
        }
        let whole: usize = crate::codec::batches::headers(&fetched.records).map(|h| h.size).sum();
        let mut buf = fetched.records.slice(..whole);
        let before = next;
        for set in RecordBatchDecoder::decode_all(&mut buf)? {
            for r in set.records {
                next = next.max(r.offset + 1);
                if r.control || r.offset < before {
                    continue;
                }
                let key = r.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
                out.push((key, r.value));
            }
        }
        for h in crate::codec::batches::headers(&fetched.records) {
            next = next.max(h.base_offset + i64::from(h.last_offset_delta) + 1);
        }
        if next == before {
            return Err(anyhow!("cluster '{}' returned nothing from {TOPIC} at offset {next} (of {end})", cluster.name));
        }
    }
    Ok(out)
}
