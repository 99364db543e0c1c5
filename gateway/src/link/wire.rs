//! The requests a link makes of its clusters, through the same backend layer
//! client requests take (so a cluster behind TLS, SASL or a tunnel is reached the
//! same way).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, CreateTopicsResponse, FetchRequest, FetchResponse, InitProducerIdRequest,
    InitProducerIdResponse, ListOffsetsRequest, ListOffsetsResponse, ProduceRequest, ProduceResponse, ProducerId,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::backend::cluster::CLIENT_ID;
use crate::backend::conn::BrokerConn;
use crate::backend::Cluster;
use crate::codec::{self, Response};

/// ListOffsets timestamps.
pub const LATEST: i64 = -1;
pub const EARLIEST: i64 = -2;

/// Kafka error codes a link acts on.
pub mod code {
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// Sends `frame` on `conn` and waits at most `timeout` for the answer.
pub async fn ask(conn: &BrokerConn, frame: Bytes, timeout: Duration) -> anyhow::Result<Response> {
    let reply = conn.send(frame).await?;
    conn.flush().await?;
    match tokio::time::timeout(timeout, reply).await {
        Ok(Ok(r)) => Ok(r?),
        Ok(Err(_)) => bail!("connection to {} lost", conn.addr()),
        Err(_) => bail!("{} did not answer within {timeout:?}", conn.addr()),
    }
}

/// The partition count of `topic`, or `None` if the cluster has no such topic.
pub async fn partitions(cluster: &Cluster, topic: &str) -> anyhow::Result<Option<i32>> {
    cluster
        .refresh(Some(vec![topic.to_string()]))
        .await
        .with_context(|| format!("cluster '{}' did not answer Metadata", cluster.name))?;
    Ok(cluster.snapshot().topics.get(topic).map(|t| t.leaders.len() as i32))
}

/// The leader of a partition, learning it if needed.
pub async fn leader(cluster: &Cluster, topic: &str, partition: i32) -> anyhow::Result<i32> {
    if let Some(l) = cluster.leader(topic, partition).filter(|&l| l >= 0) {
        return Ok(l);
    }
    partitions(cluster, topic).await?;
    cluster
        .leader(topic, partition)
        .filter(|&l| l >= 0)
        .ok_or_else(|| anyhow!("cluster '{}' has no leader for {topic}-{partition}", cluster.name))
}

/// Creates `topic` with `partitions` partitions and `configs`; Ok(false) if it exists.
pub async fn create_topic(
    cluster: &Cluster,
    topic: &str,
    partitions: i32,
    configs: &[(String, String)],
) -> anyhow::Result<bool> {
    let version = cluster.own_version(ApiKey::CreateTopics, 5)?;
    let request = CreateTopicsRequest::default().with_timeout_ms(30_000).with_topics(vec![CreatableTopic::default()
        .with_name(name(topic))
        .with_num_partitions(partitions)
        .with_replication_factor(-1)
        .with_configs(
            configs
                .iter()
                .map(|(k, v)| {
                    CreatableTopicConfig::default()
                        .with_name(StrBytes::from_string(k.clone()))
                        .with_value(Some(StrBytes::from_string(v.clone())))
                })
                .collect(),
        )]);
    let frame = codec::encode_request(ApiKey::CreateTopics, version, CLIENT_ID, &request)?;
    let resp = cluster.control_request(cluster.controller(), frame).await?;
    let body: CreateTopicsResponse =
        resp.decode(ApiKey::CreateTopics.response_header_version(version), version, "CreateTopics response")?;
    let t = body.topics.first().ok_or_else(|| anyhow!("CreateTopics answered no topic"))?;
    match t.error_code {
        0 => Ok(true),
        code::TOPIC_ALREADY_EXISTS => Ok(false),
        c => bail!(
            "cluster '{}' refused to create '{topic}' (error {c}{})",
            cluster.name,
            t.error_message.as_ref().map(|m| format!(": {m}")).unwrap_or_default()
        ),
    }
}

/// Each partition's offset at `timestamp` ([`LATEST`], [`EARLIEST`] or a time),
/// from its leader.
pub async fn list_offsets(
    cluster: &Cluster,
    topic: &str,
    partitions: &[i32],
    timestamp: i64,
    read_committed: bool,
) -> anyhow::Result<HashMap<i32, i64>> {
    let version = cluster.own_version(ApiKey::ListOffsets, 7)?.max(2);
    let mut by_leader: HashMap<i32, Vec<i32>> = HashMap::new();
    for &p in partitions {
        by_leader.entry(leader(cluster, topic, p).await?).or_default().push(p);
    }
    let mut out = HashMap::new();
    for (broker, ps) in by_leader {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_isolation_level(i8::from(read_committed))
            .with_topics(vec![ListOffsetsTopic::default().with_name(name(topic)).with_partitions(
                ps.iter()
                    .map(|&p| ListOffsetsPartition::default().with_partition_index(p).with_timestamp(timestamp))
                    .collect(),
            )]);
        let frame = codec::encode_request(ApiKey::ListOffsets, version, CLIENT_ID, &request)?;
        let resp = cluster.call(broker, frame).await?;
        let body: ListOffsetsResponse =
            resp.decode(ApiKey::ListOffsets.response_header_version(version), version, "ListOffsets response")?;
        for t in &body.topics {
            for p in &t.partitions {
                if p.error_code != 0 {
                    cluster.mark_stale();
                    bail!("cluster '{}' answered ListOffsets for {topic}-{} with error {}", cluster.name, p.partition_index, p.error_code);
                }
                out.insert(p.partition_index, p.offset);
            }
        }
    }
    Ok(out)
}

/// The high watermark and last stable offset of a partition, from a Fetch
/// answer: what the link trusts for where a log ends (some brokers answer
/// ListOffsets LATEST with the last batch's first offset plus one).
pub async fn log_end(cluster: &Cluster, topic: &str, partition: i32) -> anyhow::Result<(i64, i64)> {
    let latest = list_offsets(cluster, topic, &[partition], LATEST, false).await?.get(&partition).copied().unwrap_or(0);
    let start = list_offsets(cluster, topic, &[partition], EARLIEST, false)
        .await?
        .get(&partition)
        .copied()
        .unwrap_or(0)
        .max(0);
    if latest <= start {
        // No batches: nothing to fetch, and a fetch would wait for its time out.
        return Ok((latest.max(start), latest.max(start)));
    }
    let version = fetch_version(cluster)?;
    // Some brokers answer no partition at all when its first batch does not fit.
    let mut answer = None;
    for max_bytes in [64 << 10, 8 << 20] {
        let frame = fetch_frame(version, topic, partition, start, 50, max_bytes)?;
        let broker = leader(cluster, topic, partition).await?;
        let resp = cluster.call(broker, frame).await?;
        answer = fetched_partition(&resp, version)?;
        if answer.is_some() {
            break;
        }
    }
    let Some(f) = answer else {
        // Nothing to answer with (tansu, on an empty partition): ListOffsets
        // is right for a log without batches.
        let end = list_offsets(cluster, topic, &[partition], LATEST, false).await?.get(&partition).copied().unwrap_or(0);
        return Ok((end, end));
    };
    if f.error_code != 0 || f.high_watermark < 0 {
        cluster.mark_stale();
        bail!("cluster '{}' answered a fetch of {topic}-{partition} with error {}", cluster.name, f.error_code);
    }
    tracing::debug!(cluster = %cluster.name, topic, partition, start, high_watermark = f.high_watermark, last_stable_offset = f.last_stable_offset, "log end");
    Ok((f.high_watermark, f.last_stable_offset))
}

/// A fresh idempotent producer id and epoch on `cluster`.
pub async fn init_producer(cluster: &Cluster) -> anyhow::Result<(i64, i16)> {
    let version = cluster.own_version(ApiKey::InitProducerId, 4)?;
    let request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let frame = codec::encode_request(ApiKey::InitProducerId, version, CLIENT_ID, &request)?;
    let resp = cluster.control_request_any(frame).await?;
    let body: InitProducerIdResponse =
        resp.decode(ApiKey::InitProducerId.response_header_version(version), version, "InitProducerId response")?;
    if body.error_code != 0 || body.producer_id.0 < 0 {
        bail!("cluster '{}' gave no producer id (error {})", cluster.name, body.error_code);
    }
    Ok((body.producer_id.0, body.producer_epoch))
}

/// The Fetch version a link uses with `cluster`: topic names (below 13) and
/// read_committed (4 and up).
pub fn fetch_version(cluster: &Cluster) -> anyhow::Result<i16> {
    let v = cluster.own_version(ApiKey::Fetch, 12)?;
    if v < 4 {
        bail!("cluster '{}' does not speak Fetch v4 or later (read_committed)", cluster.name);
    }
    Ok(v)
}

/// A read_committed fetch of one partition from `offset`.
pub fn fetch_frame(version: i16, topic: &str, partition: i32, offset: i64, max_wait_ms: i32, max_bytes: i32) -> anyhow::Result<Bytes> {
    fetch_frame_min(version, topic, partition, offset, max_wait_ms, 1, max_bytes)
}

/// [`fetch_frame`] that asks the broker to wait for `min_bytes`.
pub fn fetch_frame_min(
    version: i16,
    topic: &str,
    partition: i32,
    offset: i64,
    max_wait_ms: i32,
    min_bytes: i32,
    max_bytes: i32,
) -> anyhow::Result<Bytes> {
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(min_bytes)
        .with_max_bytes(max_bytes)
        .with_isolation_level(1)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default().with_topic(name(topic)).with_partitions(vec![FetchPartition::default()
            .with_partition(partition)
            .with_current_leader_epoch(-1)
            .with_fetch_offset(offset)
            .with_log_start_offset(-1)
            .with_partition_max_bytes(max_bytes)])]);
    Ok(codec::encode_request(ApiKey::Fetch, version, CLIENT_ID, &request)?)
}

/// What a link needs of a one-partition fetch answer.
#[derive(Debug)]
pub struct Fetched {
    pub error_code: i16,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    pub aborted: Vec<(i64, i64)>,
    pub records: Bytes,
}

pub fn fetched(resp: &Response, version: i16) -> anyhow::Result<Fetched> {
    fetched_partition(resp, version)?.ok_or_else(|| anyhow!("Fetch answered no partition"))
}

/// The one partition of a fetch answer, `None` if it lists none.
fn fetched_partition(resp: &Response, version: i16) -> anyhow::Result<Option<Fetched>> {
    let body: FetchResponse = resp.decode(ApiKey::Fetch.response_header_version(version), version, "Fetch response")?;
    if body.error_code != 0 {
        bail!("Fetch failed with error {}", body.error_code);
    }
    let Some(p) = body.responses.into_iter().next().and_then(|t| t.partitions.into_iter().next()) else {
        return Ok(None);
    };
    Ok(Some(Fetched {
        error_code: p.error_code,
        high_watermark: p.high_watermark,
        last_stable_offset: if p.last_stable_offset >= 0 { p.last_stable_offset } else { p.high_watermark },
        log_start_offset: p.log_start_offset,
        aborted: p
            .aborted_transactions
            .unwrap_or_default()
            .iter()
            .map(|a| (a.producer_id.0, a.first_offset))
            .collect(),
        records: p.records.unwrap_or_default(),
    }))
}

/// The Produce version a link uses with `cluster` (v3 and up carry v2 batches).
pub fn produce_version(cluster: &Cluster) -> anyhow::Result<i16> {
    let v = cluster.own_version(ApiKey::Produce, 9)?;
    if v < 3 {
        bail!("cluster '{}' does not speak Produce v3 or later", cluster.name);
    }
    Ok(v)
}

/// A produce of one batch to one partition, acks=all.
pub fn produce_frame(version: i16, topic: &str, partition: i32, batch: Bytes) -> anyhow::Result<Bytes> {
    let request = ProduceRequest::default()
        .with_transactional_id(None)
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default().with_name(name(topic)).with_partition_data(vec![
            PartitionProduceData::default().with_index(partition).with_records(Some(batch)),
        ])]);
    Ok(codec::encode_request(ApiKey::Produce, version, CLIENT_ID, &request)?)
}

/// The error code and base offset of a one-partition produce answer.
pub fn produced(resp: &Response, version: i16) -> anyhow::Result<(i16, i64, Option<String>)> {
    let body: ProduceResponse = resp.decode(ApiKey::Produce.response_header_version(version), version, "Produce response")?;
    let p = body
        .responses
        .into_iter()
        .next()
        .and_then(|t| t.partition_responses.into_iter().next())
        .ok_or_else(|| anyhow!("Produce answered no partition"))?;
    Ok((p.error_code, p.base_offset, p.error_message.map(|m| m.to_string())))
}

/// ConfigResource type of a topic.
const TOPIC_RESOURCE: i8 = 2;

/// A topic's configs that have a value: name -> value.
pub async fn topic_configs(cluster: &Cluster, topic: &str) -> anyhow::Result<HashMap<String, String>> {
    use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
    use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
    let version = cluster.own_version(ApiKey::DescribeConfigs, 4)?;
    let request = DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
        .with_resource_type(TOPIC_RESOURCE)
        .with_resource_name(StrBytes::from_string(topic.to_string()))
        .with_configuration_keys(None)]);
    let frame = codec::encode_request(ApiKey::DescribeConfigs, version, CLIENT_ID, &request)?;
    let resp = cluster.control_request_any(frame).await?;
    let body: DescribeConfigsResponse =
        resp.decode(ApiKey::DescribeConfigs.response_header_version(version), version, "DescribeConfigs response")?;
    let result = body.results.into_iter().next().ok_or_else(|| anyhow!("DescribeConfigs answered no resource"))?;
    if result.error_code != 0 {
        bail!("cluster '{}' answered DescribeConfigs for '{topic}' with error {}", cluster.name, result.error_code);
    }
    Ok(result
        .configs
        .into_iter()
        .filter(|c| !c.is_sensitive)
        .filter_map(|c| Some((c.name.to_string(), c.value?.to_string())))
        .collect())
}

/// Sets `configs` on a topic (IncrementalAlterConfigs SET), leaving the others.
pub async fn set_topic_configs(cluster: &Cluster, topic: &str, configs: &[(String, String)]) -> anyhow::Result<()> {
    use kafka_protocol::messages::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
    use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};
    if configs.is_empty() {
        return Ok(());
    }
    let version = cluster.own_version(ApiKey::IncrementalAlterConfigs, 1)?;
    let request = IncrementalAlterConfigsRequest::default().with_resources(vec![AlterConfigsResource::default()
        .with_resource_type(TOPIC_RESOURCE)
        .with_resource_name(StrBytes::from_string(topic.to_string()))
        .with_configs(
            configs
                .iter()
                .map(|(k, v)| {
                    AlterableConfig::default()
                        .with_name(StrBytes::from_string(k.clone()))
                        .with_config_operation(0) // SET
                        .with_value(Some(StrBytes::from_string(v.clone())))
                })
                .collect(),
        )]);
    let frame = codec::encode_request(ApiKey::IncrementalAlterConfigs, version, CLIENT_ID, &request)?;
    let resp = cluster.control_request_any(frame).await?;
    let body: IncrementalAlterConfigsResponse = resp.decode(
        ApiKey::IncrementalAlterConfigs.response_header_version(version),
        version,
        "IncrementalAlterConfigs response",
    )?;
    for r in &body.responses {
        if r.error_code != 0 {
            bail!(
                "cluster '{}' refused configs for '{topic}' (error {}{})",
                cluster.name,
                r.error_code,
                r.error_message.as_ref().map(|m| format!(": {m}")).unwrap_or_default()
            );
        }
    }
    Ok(())
}
