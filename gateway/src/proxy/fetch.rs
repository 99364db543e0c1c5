//! Fetches that span several backend brokers (or clusters) without waiting for
//! the slowest, and fetches asked for ahead of the consumer.
//!
//! Causeway leads every partition, so a consumer sends one fetch for partitions
//! that live on several backend brokers. Each part long-polls its broker for up to
//! the client's `max_wait_ms`. Waiting for every part would hold data that one
//! broker has behind another broker's idle wait: with one cluster busy and one
//! idle, every fetch would take the full `max_wait_ms`.
//!
//! So as soon as a part brings records, the answer goes out. The parts still
//! waiting are *parked*: their partitions are answered as a broker with no new
//! data answers (no records, the last high watermark this session saw), and the
//! backend request stays in flight. The client's next fetch for the same
//! partitions at the same offsets takes the parked part instead of sending a new
//! one: its data if it arrived meanwhile, or it keeps waiting on it. Nothing is
//! lost: records are only ever delivered for the offsets the client asked.
//!
//! A part is only parked when every one of its partitions has a known high
//! watermark, so the first fetch of a session waits for every part.
//!
//! The same slot holds a *read-ahead* ([`read_ahead`]): once a part's answer
//! shows its broker has more, the fetch the client will send next is sent
//! already, so the broker's next answer travels while the client still reads
//! this one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::budget::Held;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::stream::{FuturesUnordered, StreamExt};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse};
use uuid::Uuid;

use super::handlers::{await_reply, code};
use super::partitioned::{moved, plan, shift_of, Names, Place, Positions, Split, TopicKey};
use super::session::Answer;
use super::{Gateway, ProxyError};
use crate::backend::{BrokerConn, BrokerRef, Lane, Reply, SessionConns};
use crate::codec::{encode_response, Request};
use crate::telemetry;
use super::routes::ClientRoutes;

/// A part's answer, in the client's names, shared between fetches.
type PartResult = Result<Part, Arc<String>>;
type PartFuture = Shared<BoxFuture<'static, PartResult>>;

/// A broker's answer to a part of a fetch.
#[derive(Clone)]
struct Part {
    /// In the client's names.
    resp: FetchResponse,
    /// The broker's bytes (after the correlation id), when nothing in them
    /// changed: a fetch answered by this part alone forwards them as they came.
    raw: Option<Bytes>,
}

/// What identifies a partition in a fetch: the topic as the client names it.
type Key = (TopicKey, i32);

/// High watermark, last stable offset and log start offset of a partition.
#[derive(Debug, Clone, Copy)]
struct Marks {
    high_watermark: i64,
    last_stable_offset: i64,
    log_start_offset: i64,
}

/// A backend fetch still in flight after its client fetch was answered.
struct Parked {
    /// The fetch offset it asked for, per partition.
    asked: HashMap<Key, i64>,
    answer: PartFuture,
    /// Asked for ahead of the client (see [`read_ahead`]), not left waiting:
    /// its share of the gateway's read-ahead budget, given back when dropped.
    ahead: Option<Held>,
}

/// The fetch state of one client session.
#[derive(Default)]
pub struct Lanes {
    inner: Mutex<LanesInner>,
}

#[derive(Default)]
struct LanesInner {
    parked: HashMap<BrokerRef, Parked>,
    marks: HashMap<Key, Marks>,
}

impl Lanes {
    fn lock(&self) -> std::sync::MutexGuard<'_, LanesInner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

fn response_key(t: &FetchableTopicResponse) -> TopicKey {
    if t.topic_id.is_nil() {
        TopicKey::Name(t.topic.0.to_string())
    } else {
        TopicKey::Id(t.topic_id)
    }
}

fn has_records(resp: &FetchResponse) -> bool {
    resp.responses
        .iter()
        .any(|t| t.partitions.iter().any(|p| p.records.as_ref().is_some_and(|r| !r.is_empty())))
}

/// One part of a client fetch: which positions, and where its answer comes from.
struct Source {
    broker: BrokerRef,
    keep: Positions,
    asked: HashMap<Key, i64>,
    /// Each partition's backend topic name, to ask the broker for its end offset.
    backend: Vec<(String, i32, Key)>,
    answer: PartFuture,
    /// How to ask this broker for the client's next fetch ahead.
    ahead: Option<Ahead>,
}

/// What turns a broker's answer to a part into the client's.
struct PartJob {
    gw: Arc<Gateway>,
    broker: BrokerRef,
    header: i16,
    version: i16,
    isolation_level: i8,
    routes: ClientRoutes,
    /// Backend topic names back to the client's.
    back: Names,
    mirrored: bool,
}

/// The client's answer to a part, once `reply` brings the broker's.
fn part_answer(job: Arc<PartJob>, reply: Reply) -> PartFuture {
    async move {
        let resp = await_reply(reply).await.map_err(|e| Arc::new(e.to_string()))?;
        let mut out: FetchResponse = resp
            .decode(job.header, job.version, FetchRequest::RESP_WHAT)
            .map_err(|e| Arc::new(e.to_string()))?;
        let gw = &job.gw;
        if FetchRequest::leaders_moved(&out) {
            if let Some(c) = gw.backends.cluster(job.broker.cluster) {
                c.mark_stale();
            }
        }
        let mut changed = job.mirrored && FetchRequest::mirror_answer(&mut out, &shift_of(gw, job.broker.cluster));
        if !job.back.topics.is_empty() {
            FetchRequest::rename_back(&mut out, &job.back);
            changed = true;
        }
        changed |= FetchRequest::default()
            .with_isolation_level(job.isolation_level)
            .rewrite(&mut out, gw);
        if !gw.filters.is_empty() {
            changed |= super::partitioned::filter_fetch(&mut out, gw, &job.routes);
        }
        let raw = (!changed).then(|| resp.after_correlation_id());
        Ok(Part { resp: out, raw })
    }
    .boxed()
    .shared()
}

/// What a part needs to ask its broker for the client's next fetch.
struct Ahead {
    conn: BrokerConn,
    /// The client's fetch, whose header the next one reuses.
    request: Request,
    /// The part of it sent to this broker, in the client's names.
    part: FetchRequest,
    names: Names,
    job: Arc<PartJob>,
}

pub async fn route(
    gw: &Arc<Gateway>,
    conns: &mut SessionConns,
    lanes: &Arc<Lanes>,
    router: &ClientRoutes,
    req: Request,
) -> Result<Option<Answer>, ProxyError> {
    let mut body: FetchRequest = req.decode(FetchRequest::WHAT)?;
    body.prepare(req.version());
    let keys = body.keys();
    let plan = plan(
        gw,
        router,
        &keys,
        Place::Leader,
        FetchRequest::NO_ROUTE,
        FetchRequest::UNREACHABLE,
        FetchRequest::OPERATION,
        FetchRequest::WHAT,
    )
    .await;
    let (version, header) = (req.version(), req.response_header_version());
    let offset_of = |ti: usize, pi: usize| -> Option<(Key, i64)> {
        let t = body.topics.get(ti)?;
        let p = t.partitions.get(pi)?;
        let key = keys.get(ti)?.0.clone();
        Some(((key, p.partition), p.fetch_offset))
    };

    let mut sources = Vec::with_capacity(plan.brokers.len());
    let mut local = plan.local.clone();
    for (broker, keep) in &plan.brokers {
        let asked: HashMap<Key, i64> = keep.iter().filter_map(|&(ti, pi)| offset_of(ti, pi)).collect();
        // A parked part for exactly these partitions and offsets answers instead.
        let reuse = {
            let mut inner = lanes.lock();
            match inner.parked.remove(broker) {
                // A read-ahead whose broker failed is not worth waiting for: ask again.
                Some(p) if p.asked == asked && !(p.ahead.is_some() && p.answer.peek().is_some_and(Result::is_err)) => {
                    if p.ahead.is_some() {
                        telemetry::fetch_read_ahead("used");
                    }
                    Some(p.answer)
                }
                Some(p) => {
                    if p.ahead.is_some() {
                        telemetry::fetch_read_ahead("unused");
                    }
                    tracing::debug!(asked = ?asked, parked = ?p.asked, "parked fetch does not match");
                    None
                }
                None => None,
            }
        };
        let names = plan.names(*broker, gw.node_id);
        let client_part = body.subset(keep);
        let mirrored = plan.mirrored.contains(&broker.cluster);
        let mut part = client_part.clone();
        let renamed = part.rename(&names);
        let job = Arc::new(PartJob {
            gw: gw.clone(),
            broker: *broker,
            header,
            version,
            isolation_level: body.isolation_level,
            routes: router.clone(),
            back: if renamed { names.reversed() } else { Names::default() },
            mirrored,
        });
        let answer = match reuse {
            Some(answer) => answer,
            None => {
                if mirrored {
                    part.mirror_request(&shift_of(gw, broker.cluster));
                }
                let frame = req.reencode(&part, FetchRequest::WHAT)?;
                match conns.send_safe(*broker, Lane::Fetch, frame).await {
                    Ok(reply) => part_answer(job.clone(), reply),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot send fetch; answering its partitions with a retriable error");
                        if let Some(c) = gw.backends.cluster(broker.cluster) {
                            c.mark_stale();
                        }
                        local.push((FetchRequest::UNREACHABLE, String::new(), keep.clone()));
                        continue;
                    }
                }
            }
        };
        let backend = asked
            .keys()
            .filter_map(|key| {
                let name = match &key.0 {
                    TopicKey::Name(n) => router.topic(n)?.backend.into_owned(),
                    TopicKey::Id(id) => gw.backends.cluster(broker.cluster)?.topic_name(id)?,
                    TopicKey::Default => return None,
                };
                Some((name, key.1, key.clone()))
            })
            .collect();
        // Mirror topics move offsets between the clusters: not read ahead.
        let ahead = if gw.fetch_read_ahead && !mirrored {
            conns.conn(*broker, Lane::Fetch).map(|conn| Ahead {
                conn,
                request: req.clone(),
                part: client_part,
                names,
                job,
            })
        } else {
            None
        };
        sources.push(Source { broker: *broker, keep: keep.clone(), asked, backend, answer, ahead });
    }
    if sources.is_empty() && local.is_empty() {
        // No partitions at all: a broker of the default cluster answers the empty request.
        let ci = router.default_cluster();
        let cluster = gw.cluster(ci)?;
        let broker = BrokerRef { cluster: ci, node: cluster.any_broker() };
        let reply = conns.send(broker, req.reencode(&body, FetchRequest::WHAT)?).await?;
        return Ok(Some(Box::pin(async move {
            Ok(await_reply(reply).await?.after_correlation_id())
        })));
    }
    // What an empty answer for a partition needs: the client's topic naming.
    let topics: Vec<(kafka_protocol::messages::TopicName, Uuid)> =
        body.topics.iter().map(|t| (t.topic.clone(), t.topic_id)).collect();
    let partitions: Vec<Vec<i32>> = keys.iter().map(|(_, ps)| ps.clone()).collect();
    drop(req);
    let lanes = lanes.clone();
    let gw = gw.clone();
    let isolation_level = body.isolation_level;

    Ok(Some(Box::pin(async move {
        let mut done: Vec<Option<PartResult>> = vec![None; sources.len()];
        let mut pending: FuturesUnordered<_> = sources
            .iter()
            .enumerate()
            .map(|(i, s)| s.answer.clone().map(move |r| (i, r)))
            .collect();
        let started = std::time::Instant::now();
        while let Some((i, result)) = pending.next().await {
            let early = result.as_ref().is_ok_and(|part| has_records(&part.resp));
            tracing::debug!(part = i, cluster = sources[i].broker.cluster, records = early, after = ?started.elapsed(), partitions = sources[i].asked.len(), "fetch part done");
            done[i] = Some(result);
            if early && !pending.is_empty() {
                // Take whatever else is ready without waiting, then decide.
                while let Some(Some((j, r))) = pending.next().now_or_never() {
                    done[j] = Some(r);
                }
                // Parts whose partitions have no known end yet: ask their brokers
                // (a ListOffsets answers at once), so even a session's first fetch
                // need not wait for an idle broker.
                let unknown: Vec<usize> = {
                    let inner = lanes.lock();
                    (0..sources.len())
                        .filter(|&j| done[j].is_none())
                        .filter(|&j| !sources[j].asked.keys().all(|k| inner.marks.contains_key(k)))
                        .collect()
                };
                for j in unknown {
                    if let Some(found) = end_offsets(&gw, &sources[j], isolation_level).await {
                        lanes.lock().marks.extend(found);
                    }
                }
                let marks_known = {
                    let inner = lanes.lock();
                    sources
                        .iter()
                        .zip(&done)
                        .filter(|(_, d)| d.is_none())
                        .all(|(s, _)| s.asked.keys().all(|k| inner.marks.contains_key(k)))
                };
                tracing::debug!(marks_known, waiting = pending.len(), "a fetch part brought records");
                if marks_known {
                    break;
                }
            }
        }
        drop(pending);
        let mut ahead = Vec::new();
        for (source, result) in sources.iter().zip(&done) {
            if let Some(Ok(got)) = result {
                if let Some(parked) = read_ahead(source, &got.resp, isolation_level).await {
                    ahead.push((source.broker, parked));
                }
            }
        }

        let alone = sources.len() == 1 && local.is_empty();
        let mut untouched = None;
        let mut acc = FetchResponse::default();
        let mut inner = lanes.lock();
        for (source, result) in sources.into_iter().zip(done) {
            match result {
                Some(Ok(Part { resp: part, raw })) => {
                    if alone {
                        untouched = raw;
                    }
                    for t in &part.responses {
                        let key = response_key(t);
                        for p in &t.partitions {
                            if p.error_code == 0 && p.high_watermark >= 0 {
                                inner.marks.insert(
                                    (key.clone(), p.partition_index),
                                    Marks {
                                        high_watermark: p.high_watermark,
                                        last_stable_offset: p.last_stable_offset,
                                        log_start_offset: p.log_start_offset,
                                    },
                                );
                            }
                        }
                    }
                    FetchRequest::merge(&mut acc, part);
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, partitions = source.keep.len(), "backend fetch failed; answering its partitions with a retriable error");
                    if let Some(c) = gw.backends.cluster(source.broker.cluster) {
                        c.mark_stale();
                    }
                    FetchRequest::merge(&mut acc, failed(&topics, &partitions, &source.keep, code::NOT_LEADER_OR_FOLLOWER));
                }
                None => {
                    // Still waiting: answer as a broker with no new data, and park.
                    FetchRequest::merge(&mut acc, empty(&topics, &partitions, &source, &inner.marks));
                    inner.parked.insert(
                        source.broker,
                        Parked {
                            asked: source.asked,
                            answer: source.answer,
                            ahead: None,
                        },
                    );
                }
            }
        }
        inner.parked.extend(ahead);
        drop(inner);
        if let Some(raw) = untouched {
            return Ok(raw);
        }
        for (code, _, keep) in local {
            FetchRequest::merge(&mut acc, failed(&topics, &partitions, &keep, code));
        }
        acc.session_id = 0;
        Ok(encode_response(&acc, version, header, FetchRequest::RESP_WHAT)?)
    })))
}

/// Asks `source`'s broker now for the fetch its client will send next, once the
/// client has `got`: the same partitions, each that brought records from the
/// offset after its last whole batch, where a consumer goes on reading.
///
/// A consumer has one fetch in flight per broker, so without this the broker's
/// next answer would only start on its way once the client has received this
/// one whole; with it, the two overlap. When the client's next fetch asks for
/// exactly these offsets it takes this answer (see [`route`]); when it asks for
/// others (a seek, a paused partition) this one is dropped.
///
/// Only when every partition answered without error and the broker holds more
/// than it gave for at least one: the broker then answers at once, and the
/// read-ahead never sits in a long poll in front of the client's own fetch.
async fn read_ahead(source: &Source, got: &FetchResponse, isolation_level: i8) -> Option<Parked> {
    let ahead = source.ahead.as_ref()?;
    let next = next_offsets(got, isolation_level)?;
    let mut asked = source.asked.clone();
    let mut request = ahead.part.clone();
    let keys = request.keys();
    for (topic, (key, _)) in request.topics.iter_mut().zip(keys) {
        for p in &mut topic.partitions {
            let at = (key.clone(), p.partition);
            if let Some(&offset) = next.get(&at) {
                p.fetch_offset = offset;
                asked.insert(at, offset);
            }
        }
    }
    // The most the answer may carry, held from the budget until it is taken.
    let most = request
        .topics
        .iter()
        .flat_map(|t| &t.partitions)
        .map(|p| i64::from(p.partition_max_bytes.max(0)))
        .sum::<i64>()
        .min(i64::from(request.max_bytes.max(0)));
    let Some(held) = ahead.job.gw.read_ahead_budget.take(usize::try_from(most).unwrap_or(usize::MAX)) else {
        telemetry::fetch_read_ahead("over_budget");
        return None;
    };
    request.rename(&ahead.names);
    let frame = ahead.request.reencode(&request, FetchRequest::WHAT).ok()?;
    let reply = ahead.conn.send(frame).await.ok()?;
    ahead.conn.flush().await.ok()?;
    telemetry::fetch_read_ahead("sent");
    Some(Parked {
        asked,
        answer: part_answer(ahead.job.clone(), reply),
        ahead: Some(held),
    })
}

/// Where a consumer goes on reading each partition of `got` that brought
/// records: the offset after its last whole batch (a partial batch at the end
/// is read again). `None` unless every partition answered without error, those
/// with records hold whole v2 batches, and at least one has more on its broker
/// (below the high watermark, or the last stable offset for read_committed).
fn next_offsets(got: &FetchResponse, isolation_level: i8) -> Option<HashMap<Key, i64>> {
    let mut next = HashMap::new();
    let mut more = false;
    for t in &got.responses {
        let key = response_key(t);
        for p in &t.partitions {
            if p.error_code != 0 {
                return None;
            }
            let Some(records) = p.records.as_ref().filter(|r| !r.is_empty()) else {
                continue;
            };
            let last = crate::codec::batches::headers(records).last()?;
            let offset = last.base_offset.checked_add(i64::from(last.last_offset_delta))?.checked_add(1)?;
            let end = if isolation_level == 1 { p.last_stable_offset } else { p.high_watermark };
            more |= end > offset;
            next.insert((key.clone(), p.partition_index), offset);
        }
    }
    // `more` is only set beside an offset, so `next` is not empty.
    more.then_some(next)
}

/// The end offsets (high watermark, or last stable offset for read_committed) of
/// a part's partitions, from their broker; `None` if it does not answer quickly.
async fn end_offsets(gw: &Gateway, source: &Source, isolation_level: i8) -> Option<Vec<(Key, Marks)>> {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::{ApiKey, BrokerId, ListOffsetsRequest, ListOffsetsResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;

    let cluster = gw.backends.cluster(source.broker.cluster)?;
    let version = cluster.own_version(ApiKey::ListOffsets, 7).ok()?.max(2);
    let mut by_topic: HashMap<&str, Vec<i32>> = HashMap::new();
    for (name, p, _) in &source.backend {
        by_topic.entry(name.as_str()).or_default().push(*p);
    }
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_isolation_level(isolation_level)
        .with_topics(
            by_topic
                .into_iter()
                .map(|(name, ps)| {
                    ListOffsetsTopic::default()
                        .with_name(TopicName(StrBytes::from_string(name.to_string())))
                        .with_partitions(
                            ps.into_iter()
                                .map(|p| ListOffsetsPartition::default().with_partition_index(p).with_timestamp(-1))
                                .collect(),
                        )
                })
                .collect(),
        );
    let frame = crate::codec::encode_request(ApiKey::ListOffsets, version, crate::backend::cluster::CLIENT_ID, &request).ok()?;
    let call = cluster.call(source.broker.node, frame);
    let resp = tokio::time::timeout(std::time::Duration::from_millis(250), call).await.ok()?.ok()?;
    let header = ApiKey::ListOffsets.response_header_version(version);
    let body: ListOffsetsResponse = resp.decode(header, version, "ListOffsets response").ok()?;
    let mut out = Vec::new();
    for t in &body.topics {
        for p in t.partitions.iter().filter(|p| p.error_code == 0 && p.offset >= 0) {
            let shift = gw.mirrors.get(source.broker.cluster, t.name.0.as_str()).map_or(0, |v| v.shift(p.partition_index));
            let key = source
                .backend
                .iter()
                .find(|(name, part, _)| name.as_str() == t.name.0.as_str() && *part == p.partition_index)
                .map(|(_, _, k)| k.clone())?;
            out.push((
                key,
                Marks {
                    high_watermark: moved(p.offset, shift),
                    last_stable_offset: moved(p.offset, shift),
                    log_start_offset: -1,
                },
            ));
        }
    }
    Some(out)
}

/// Partitions at `keep` answered with `code`.
fn failed(
    topics: &[(kafka_protocol::messages::TopicName, Uuid)],
    partitions: &[Vec<i32>],
    keep: &Positions,
    code: i16,
) -> FetchResponse {
    answer(topics, partitions, keep, |_, p| {
        PartitionData::default()
            .with_partition_index(p)
            .with_error_code(code)
            .with_high_watermark(-1)
    })
}

/// A parked part's partitions, answered as a broker with no new data answers.
fn empty(
    topics: &[(kafka_protocol::messages::TopicName, Uuid)],
    partitions: &[Vec<i32>],
    source: &Source,
    marks: &HashMap<Key, Marks>,
) -> FetchResponse {
    let key_of = |ti: usize| -> TopicKey {
        match topics.get(ti) {
            Some((_, id)) if !id.is_nil() => TopicKey::Id(*id),
            Some((name, _)) => TopicKey::Name(name.0.to_string()),
            None => TopicKey::Default,
        }
    };
    answer(topics, partitions, &source.keep, |ti, p| {
        let m = marks.get(&(key_of(ti), p)).copied().unwrap_or(Marks {
            high_watermark: -1,
            last_stable_offset: -1,
            log_start_offset: -1,
        });
        PartitionData::default()
            .with_partition_index(p)
            .with_high_watermark(m.high_watermark)
            .with_last_stable_offset(m.last_stable_offset)
            .with_log_start_offset(m.log_start_offset)
            .with_aborted_transactions(None)
    })
}

fn answer(
    topics: &[(kafka_protocol::messages::TopicName, Uuid)],
    partitions: &[Vec<i32>],
    keep: &Positions,
    make: impl Fn(usize, i32) -> PartitionData,
) -> FetchResponse {
    let mut by_topic: std::collections::BTreeMap<usize, Vec<PartitionData>> = Default::default();
    for &(ti, pi) in keep {
        if let Some(&p) = partitions.get(ti).and_then(|ps| ps.get(pi)) {
            by_topic.entry(ti).or_default().push(make(ti, p));
        }
    }
    FetchResponse::default().with_responses(
        by_topic
            .into_iter()
            .filter_map(|(ti, parts)| {
                let (name, id) = topics.get(ti)?;
                Some(
                    FetchableTopicResponse::default()
                        .with_topic(name.clone())
                        .with_topic_id(*id)
                        .with_partitions(parts),
                )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions};

    use super::*;

    /// One v2 batch of `count` records from offset `base`.
    fn batch(base: i64, count: i64) -> Vec<u8> {
        let records: Vec<Record> = (base..base + count)
            .map(|offset| Record {
                // As a batch without a producer id reads back (base sequence
                // -1), so that the encoder keeps the records in one batch.
                sequence: i32::try_from(offset - base).unwrap_or(0) - 1,
                ..crate::plugins::batches::record(offset, "k", "v")
            })
            .collect();
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions { version: 2, compression: Compression::None };
        assert!(RecordBatchEncoder::encode(&mut buf, records.iter(), &options).is_ok());
        assert_eq!(crate::codec::batches::headers(&buf).count(), 1);
        buf.to_vec()
    }

    /// A fetch answer for topic "t": (partition, error, high watermark, records).
    fn answer(parts: Vec<(i32, i16, i64, Vec<u8>)>) -> FetchResponse {
        let partitions = parts
            .into_iter()
            .map(|(p, error, hw, records)| {
                PartitionData::default()
                    .with_partition_index(p)
                    .with_error_code(error)
                    .with_high_watermark(hw)
                    .with_last_stable_offset(hw - 5)
                    .with_records(Some(Bytes::from(records)))
            })
            .collect();
        FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
            .with_topic(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(partitions)])
    }

    fn key(p: i32) -> Key {
        (TopicKey::Name("t".into()), p)
    }

    #[test]
    fn the_next_fetch_starts_after_the_last_whole_batch() {
        let mut records = batch(10, 3);
        records.extend(batch(13, 2));
        // A batch cut short by the broker's size limit is read again.
        let cut = batch(15, 4);
        records.extend_from_slice(&cut[..cut.len() - 3]);
        let got = answer(vec![(0, 0, 40, records), (1, 0, 7, Vec::new())]);
        let next = next_offsets(&got, 0).unwrap_or_default();
        // Partition 1 brought nothing: the client asks for it where it was.
        assert_eq!(next, HashMap::from([(key(0), 15)]));
    }

    #[test]
    fn nothing_is_read_ahead_without_more_on_the_broker() {
        // All that there is: the broker would hold the read-ahead in a long poll.
        assert_eq!(next_offsets(&answer(vec![(0, 0, 13, batch(10, 3))]), 0), None);
        // read_committed goes up to the last stable offset (here hw - 5).
        assert_eq!(next_offsets(&answer(vec![(0, 0, 17, batch(10, 3))]), 1), None);
        assert_eq!(next_offsets(&answer(vec![(0, 0, 17, batch(10, 3))]), 0), Some(HashMap::from([(key(0), 13)])));
        // No records at all.
        assert_eq!(next_offsets(&answer(vec![(0, 0, 17, Vec::new())]), 0), None);
    }

    #[test]
    fn nothing_is_read_ahead_after_an_error_or_unreadable_records() {
        let errored = answer(vec![(0, 0, 40, batch(10, 3)), (1, code::NOT_LEADER_OR_FOLLOWER, -1, Vec::new())]);
        assert_eq!(next_offsets(&errored, 0), None);
        // Only part of one batch: where the client goes on is not known.
        let cut = batch(10, 3);
        assert_eq!(next_offsets(&answer(vec![(0, 0, 40, cut[..cut.len() - 1].to_vec())]), 0), None);
        // An old message format (magic 1) is not read.
        let mut old = batch(10, 3);
        old[16] = 1;
        assert_eq!(next_offsets(&answer(vec![(0, 0, 40, old)]), 0), None);
    }
}
