//! Consumer groups across clusters.
//!
//! A group has a home cluster (chosen by the `groups` routes): its membership lives
//! there, so JoinGroup, SyncGroup, Heartbeat, LeaveGroup and DescribeGroups go to
//! the home cluster's coordinator. Its committed offsets live next to the data, in
//! the cluster of each topic, under the same group id and the backend's topic name,
//! so backend tools see the lag of each topic where it is.
//!
//! A member's commit is checked by the home cluster: the part for home topics goes
//! there with the member's generation; the other clusters only take their parts once
//! the home cluster accepted (or, with no home topics, once a Heartbeat with the same
//! generation did), as simple commits (generation -1), since the group has no members
//! there. A fenced member therefore commits nowhere.
//!
//! When a request's topics all live on the home cluster under their own names it is
//! forwarded as it is.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    LeaveGroupRequest, ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse,
    OffsetDeleteRequest, OffsetDeleteResponse, OffsetFetchRequest, OffsetFetchResponse,
    SyncGroupRequest, TopicName, TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};
use kafka_protocol::messages::{
    offset_commit_response, offset_delete_response, offset_fetch_response,
    txn_offset_commit_response,
};
use kafka_protocol::protocol::StrBytes;

use super::handlers::{await_reply, code, to_coordinator, GROUP};
use super::partitioned::Names;
use super::session::Answer;
use super::{Gateway, ProxyError};
use crate::backend::cluster::CLIENT_ID;
use crate::backend::{BackendError, BrokerRef, Cluster, Reply, SessionConns};
use crate::codec::{self, encode_response, Request, Response};
use super::routes::ClientRoutes;
use crate::authz::{Operation, Resource};

/// Errors that say a commit's member or generation is not (or no longer) valid,
/// or the coordinator cannot judge: the other clusters must not take the commit.
fn group_level(code: i16) -> bool {
    matches!(
        code,
        code::COORDINATOR_LOAD_IN_PROGRESS
            | code::COORDINATOR_NOT_AVAILABLE
            | code::NOT_COORDINATOR
            | code::ILLEGAL_GENERATION
            | code::INVALID_GROUP_ID
            | code::UNKNOWN_MEMBER_ID
            | code::REBALANCE_IN_PROGRESS
            | code::GROUP_AUTHORIZATION_FAILED
            | code::FENCED_INSTANCE_ID
            | code::STALE_MEMBER_EPOCH
    )
}

/// Single-group requests.
pub async fn dispatch(
    gw: &Arc<Gateway>,
    conns: &mut SessionConns,
    router: &ClientRoutes,
    req: Request,
) -> Result<Answer, ProxyError> {
    match req.api_key {
        ApiKey::OffsetCommit => offset_commit(gw, conns, router, req).await,
        ApiKey::TxnOffsetCommit => txn_offset_commit(gw, conns, router, req).await,
        ApiKey::OffsetDelete => offset_delete(gw, conns, router, req).await,
        _ => {
            let group = membership_group(&req)?;
            if !router.may(Operation::Read, Resource::Group, &group, super::session::api_key_name(req.api_key)) {
                return membership_refused(&req, code::GROUP_AUTHORIZATION_FAILED);
            }
            let home = router.group(&group);
            to_coordinator(gw, conns, home, GROUP, group, req).await
        }
    }
}

/// The answer to a membership request refused with `code`, for the group.
fn membership_refused(req: &Request, code: i16) -> Result<Answer, ProxyError> {
    use kafka_protocol::messages::{JoinGroupResponse, LeaveGroupResponse, SyncGroupResponse};
    let (version, header) = (req.version(), req.response_header_version());
    let bytes = match req.api_key {
        ApiKey::JoinGroup => {
            // The protocol name is nullable from v7 only.
            let name = (version < 7).then(StrBytes::default);
            let out = JoinGroupResponse::default().with_error_code(code).with_generation_id(-1).with_protocol_name(name);
            encode_response(&out, version, header, "JoinGroup response")?
        }
        ApiKey::SyncGroup => {
            encode_response(&SyncGroupResponse::default().with_error_code(code), version, header, "SyncGroup response")?
        }
        ApiKey::Heartbeat => {
            encode_response(&HeartbeatResponse::default().with_error_code(code), version, header, "Heartbeat response")?
        }
        _ => encode_response(&LeaveGroupResponse::default().with_error_code(code), version, header, "LeaveGroup response")?,
    };
    Ok(Box::pin(async move { Ok(bytes) }))
}

/// An answer ready now.
fn ready(bytes: Bytes) -> Answer {
    Box::pin(async move { Ok(bytes) })
}

/// The group of a membership request.
fn membership_group(req: &Request) -> Result<String, ProxyError> {
    let id = match req.api_key {
        ApiKey::JoinGroup => req.decode::<JoinGroupRequest>("JoinGroup request")?.group_id,
        ApiKey::SyncGroup => req.decode::<SyncGroupRequest>("SyncGroup request")?.group_id,
        ApiKey::Heartbeat => req.decode::<HeartbeatRequest>("Heartbeat request")?.group_id,
        ApiKey::LeaveGroup => req.decode::<LeaveGroupRequest>("LeaveGroup request")?.group_id,
        _ => return Err(BackendError::Internal("no group in this request").into()),
    };
    Ok(id.0.to_string())
}

/// Topics of a request sorted by the cluster they live on.
#[derive(Debug, Default)]
struct ByCluster {
    /// Topic indexes per cluster.
    clusters: BTreeMap<usize, Vec<usize>>,
    /// Topic indexes no route leads to.
    unrouted: Vec<usize>,
    /// Topic indexes the client may not use.
    denied: Vec<usize>,
    /// Renamed topics per cluster, client name to backend name.
    renames: HashMap<usize, HashMap<String, String>>,
}

impl ByCluster {
    /// Sorts `names`, each of which the client must be allowed `op` on.
    fn new<'a>(router: &ClientRoutes, names: impl Iterator<Item = &'a str>, op: Operation, api: &str) -> Self {
        let mut out = Self::default();
        for (i, name) in names.enumerate() {
            if !router.may(op, Resource::Topic, name, api) {
                out.denied.push(i);
                continue;
            }
            match router.topic(name) {
                Some(t) => {
                    if t.renamed() {
                        out.renames
                            .entry(t.cluster)
                            .or_default()
                            .insert(name.to_string(), t.backend.to_string());
                    }
                    out.clusters.entry(t.cluster).or_default().push(i);
                }
                None => out.unrouted.push(i),
            }
        }
        out
    }

    /// Whether everything lives on `home` under its own name.
    fn plain_on(&self, home: usize) -> bool {
        self.unrouted.is_empty()
            && self.denied.is_empty()
            && self.renames.is_empty()
            && self.clusters.keys().all(|&c| c == home)
    }

    fn names(&self, cluster: usize) -> Names {
        Names {
            topics: self.renames.get(&cluster).cloned().unwrap_or_default(),
            node: None,
        }
    }
}

fn pick<T: Clone>(items: &[T], keep: &[usize]) -> Vec<T> {
    keep.iter().filter_map(|&i| items.get(i).cloned()).collect()
}

/// The coordinator of `group` in cluster `ci`, if the cluster is up and knows one.
async fn coordinator_in(gw: &Gateway, ci: usize, group: &str) -> Option<(Arc<Cluster>, BrokerRef)> {
    let cluster = gw.backends.cluster(ci)?.clone();
    if !cluster.is_ready() {
        return None;
    }
    let node = match cluster.coordinator(GROUP, group).await {
        Ok(n) => n,
        Err(e) => {
            tracing::debug!(cluster = %cluster.name, group, error = %e, "no coordinator");
            return None;
        }
    };
    Some((cluster, BrokerRef { cluster: ci, node }))
}

/// A part of a group request: where it goes and what its answer needs.
struct Part {
    cluster: Arc<Cluster>,
    broker: BrokerRef,
    names: Names,
    /// Topic indexes of the client's request it carries.
    topics: Vec<usize>,
}

/// How the parts of a commit outside the home cluster are sent.
enum Later {
    /// Sent with the home part: nothing to check first.
    Sent(Vec<(Part, Reply)>),
    /// Sent once the home cluster accepted the member.
    AfterCheck(Vec<(Part, Bytes)>),
}

/// What decides whether a member's commit may go to the other clusters.
enum Check {
    /// The home part's own answer.
    HomePart,
    /// A Heartbeat with the member's generation, to this coordinator.
    Heartbeat(Arc<Cluster>, i32, i16, Bytes),
    /// Nothing to check.
    None,
}

async fn offset_commit(
    gw: &Arc<Gateway>,
    conns: &mut SessionConns,
    router: &ClientRoutes,
    req: Request,
) -> Result<Answer, ProxyError> {
    let body: OffsetCommitRequest = req.decode("OffsetCommit request")?;
    let group = body.group_id.0.to_string();
    let (version, header) = (req.version(), req.response_header_version());
    if !router.may(Operation::Read, Resource::Group, &group, "OffsetCommit") {
        let out = commit_failed(&body, 0..body.topics.len(), code::GROUP_AUTHORIZATION_FAILED);
        return Ok(ready(encode_response(&out, version, header, "OffsetCommit response")?));
    }
    let home = router.group(&group);
    let split = ByCluster::new(router, body.topics.iter().map(|t| t.name.0.as_str()), Operation::Read, "OffsetCommit");
    if split.plain_on(home) {
        return to_coordinator(gw, conns, home, GROUP, group, req).await;
    }
    let member = body.generation_id_or_member_epoch >= 0 || !body.member_id.is_empty();
    let mut failed: Vec<(usize, i16)> = split.unrouted.iter().map(|&i| (i, code::UNKNOWN_TOPIC_OR_PARTITION)).collect();
    failed.extend(split.denied.iter().map(|&i| (i, code::TOPIC_AUTHORIZATION_FAILED)));

    let mut home_part = None;
    let mut others = Vec::new();
    for (&ci, topics) in &split.clusters {
        let Some((cluster, broker)) = coordinator_in(gw, ci, &group).await else {
            failed.extend(topics.iter().map(|&i| (i, code::COORDINATOR_NOT_AVAILABLE)));
            continue;
        };
        let names = split.names(ci);
        let mut sub = body.clone();
        sub.topics = pick(&body.topics, topics);
        for t in &mut sub.topics {
            names.topic(&mut t.name.0);
        }
        if ci != home {
            sub.generation_id_or_member_epoch = -1;
            sub.member_id = StrBytes::default();
            sub.group_instance_id = None;
        }
        let frame = req.reencode(&sub, "OffsetCommit request")?;
        let part = Part { cluster, broker, names: names.reversed(), topics: topics.clone() };
        if ci == home {
            home_part = Some((part, frame));
        } else {
            others.push((part, frame));
        }
    }

    let check = if !member || others.is_empty() {
        Check::None
    } else if home_part.is_some() {
        Check::HomePart
    } else {
        match coordinator_in(gw, home, &group).await {
            Some((cluster, broker)) => {
                let version = cluster.own_version(ApiKey::Heartbeat, 4).unwrap_or(0);
                let hb = HeartbeatRequest::default()
                    .with_group_id(body.group_id.clone())
                    .with_generation_id(body.generation_id_or_member_epoch)
                    .with_member_id(body.member_id.clone())
                    .with_group_instance_id(body.group_instance_id.clone());
                let frame = codec::encode_request(ApiKey::Heartbeat, version, CLIENT_ID, &hb)?;
                Check::Heartbeat(cluster, broker.node, version, frame)
            }
            None => {
                for (part, _) in others.drain(..) {
                    failed.extend(part.topics.iter().map(|&i| (i, code::COORDINATOR_NOT_AVAILABLE)));
                }
                Check::None
            }
        }
    };

    let home_sent = match home_part {
        Some((part, frame)) => match conns.send(part.broker, frame).await {
            Ok(reply) => Some((part, reply)),
            Err(e) => {
                tracing::warn!(cluster = %part.cluster.name, error = %e, "cannot send commit");
                failed.extend(part.topics.iter().map(|&i| (i, code::COORDINATOR_NOT_AVAILABLE)));
                None
            }
        },
        None => None,
    };
    let later = if matches!(check, Check::None) {
        let mut sent = Vec::new();
        for (part, frame) in others {
            match conns.send(part.broker, frame).await {
                Ok(reply) => sent.push((part, reply)),
                Err(_) => failed.extend(part.topics.iter().map(|&i| (i, code::COORDINATOR_NOT_AVAILABLE))),
            }
        }
        Later::Sent(sent)
    } else {
        Later::AfterCheck(others)
    };

    let (version, header) = (req.version(), req.response_header_version());
    Ok(Box::pin(async move {
        let what = "OffsetCommit response";
        let mut acc = OffsetCommitResponse::default();
        let decode = |resp: &Response, names: &Names| -> Result<OffsetCommitResponse, ProxyError> {
            let mut out: OffsetCommitResponse = resp.decode(header, version, what)?;
            for t in &mut out.topics {
                names.topic(&mut t.name.0);
            }
            Ok(out)
        };
        // The verdict on the member, from the home cluster.
        let mut verdict = 0;
        if let Some((part, reply)) = home_sent {
            match await_reply(reply).await {
                Ok(resp) => {
                    let out = decode(&resp, &part.names)?;
                    forget_if_moved(&part.cluster, &group, out.topics.iter().flat_map(|t| t.partitions.iter().map(|p| p.error_code)));
                    verdict = out
                        .topics
                        .iter()
                        .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
                        .find(|&c| group_level(c))
                        .unwrap_or(0);
                    merge_commit(&mut acc, out);
                }
                Err(e) => {
                    tracing::warn!(cluster = %part.cluster.name, error = %e, "commit failed");
                    verdict = code::COORDINATOR_NOT_AVAILABLE;
                    failed.extend(part.topics.iter().map(|&i| (i, verdict)));
                }
            }
        }
        if let Check::Heartbeat(cluster, node, hb_version, frame) = &check {
            verdict = match cluster.call(*node, frame.clone()).await {
                Ok(resp) => {
                    let hb_version = *hb_version;
                    let header = ApiKey::Heartbeat.response_header_version(hb_version);
                    match resp.decode::<HeartbeatResponse>(header, hb_version, "Heartbeat response") {
                        // A rebalance under way does not stop commits of the generation.
                        Ok(hb) if hb.error_code == code::REBALANCE_IN_PROGRESS => 0,
                        Ok(hb) => hb.error_code,
                        Err(_) => code::COORDINATOR_NOT_AVAILABLE,
                    }
                }
                Err(_) => code::COORDINATOR_NOT_AVAILABLE,
            };
            if code::coordinator_moved(verdict) {
                cluster.forget_coordinator(GROUP, &group);
            }
        }
        let sent = match later {
            Later::Sent(sent) => sent.into_iter().map(|(p, r)| (p, Ok(r))).collect::<Vec<_>>(),
            Later::AfterCheck(parts) => {
                let mut out = Vec::new();
                for (part, frame) in parts {
                    if verdict != 0 {
                        failed.extend(part.topics.iter().map(|&i| (i, verdict)));
                        continue;
                    }
                    let cluster = part.cluster.clone();
                    let node = part.broker.node;
                    out.push((part, Err(tokio::spawn(async move { cluster.call(node, frame).await }))));
                }
                out
            }
        };
        for (part, pending) in sent {
            let outcome = match pending {
                Ok(reply) => await_reply(reply).await,
                Err(task) => match task.await {
                    Ok(r) => r.map_err(ProxyError::from),
                    Err(_) => Err(BackendError::Internal("commit task failed").into()),
                },
            };
            match outcome {
                Ok(resp) => {
                    let out = decode(&resp, &part.names)?;
                    forget_if_moved(&part.cluster, &group, out.topics.iter().flat_map(|t| t.partitions.iter().map(|p| p.error_code)));
                    merge_commit(&mut acc, out);
                }
                Err(e) => {
                    tracing::warn!(cluster = %part.cluster.name, error = %e, "commit failed");
                    failed.extend(part.topics.iter().map(|&i| (i, code::COORDINATOR_NOT_AVAILABLE)));
                }
            }
        }
        for (i, code) in failed {
            merge_commit(&mut acc, commit_failed(&body, [i], code));
        }
        Ok(encode_response(&acc, version, header, what)?)
    }))
}

/// An OffsetCommit answer giving every partition of the topics at `topics` the code `code`.
fn commit_failed(body: &OffsetCommitRequest, topics: impl IntoIterator<Item = usize>, code: i16) -> OffsetCommitResponse {
    let topics = topics.into_iter().filter_map(|i| body.topics.get(i)).map(|t| {
        offset_commit_response::OffsetCommitResponseTopic::default().with_name(t.name.clone()).with_partitions(
            t.partitions
                .iter()
                .map(|p| {
                    offset_commit_response::OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect(),
        )
    });
    OffsetCommitResponse::default().with_topics(topics.collect())
}

fn merge_commit(acc: &mut OffsetCommitResponse, part: OffsetCommitResponse) {
    acc.throttle_time_ms = acc.throttle_time_ms.max(part.throttle_time_ms);
    acc.topics.extend(part.topics);
}

fn forget_if_moved(cluster: &Cluster, group: &str, mut codes: impl Iterator<Item = i16>) {
    if codes.any(code::coordinator_moved) {
        cluster.forget_coordinator(GROUP, group);
    }
}

/// Offsets committed within a transaction go with the transaction, to its cluster;
/// a transaction may only touch that cluster's topics.
async fn txn_offset_commit(
    gw: &Arc<Gateway>,
    conns: &mut SessionConns,
    router: &ClientRoutes,
    req: Request,
) -> Result<Answer, ProxyError> {
    let mut body: TxnOffsetCommitRequest = req.decode("TxnOffsetCommit request")?;
    let group = body.group_id.0.to_string();
    let (version, header) = (req.version(), req.response_header_version());
    let what = "TxnOffsetCommit response";
    let refused = if !router.may(Operation::Write, Resource::TransactionalId, &body.transactional_id.0, "TxnOffsetCommit") {
        Some(code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
    } else if !router.may(Operation::Read, Resource::Group, &group, "TxnOffsetCommit") {
        Some(code::GROUP_AUTHORIZATION_FAILED)
    } else {
        None
    };
    if let Some(code) = refused {
        return Ok(ready(encode_response(&txn_commit_failed(&body, |_| code), version, header, what)?));
    }
    let pinned = router.transactional_id(&body.transactional_id.0);
    let home = router.group(&group);
    let split = ByCluster::new(router, body.topics.iter().map(|t| t.name.0.as_str()), Operation::Read, "TxnOffsetCommit");
    if split.plain_on(pinned) && home == pinned {
        return to_coordinator(gw, conns, pinned, GROUP, group, req).await;
    }
    if !split.denied.is_empty() {
        // The commit is one: refused whole, naming the topics at fault.
        let answer = txn_commit_failed(&body, |i| {
            if split.denied.contains(&i) {
                code::TOPIC_AUTHORIZATION_FAILED
            } else {
                code::OPERATION_NOT_ATTEMPTED
            }
        });
        return Ok(ready(encode_response(&answer, version, header, what)?));
    }
    let elsewhere: Vec<usize> = split
        .clusters
        .iter()
        .filter(|(&c, _)| c != pinned)
        .flat_map(|(_, t)| t.iter().copied())
        .collect();
    if !split.unrouted.is_empty() || !elsewhere.is_empty() {
        // Never half-commit: refuse the whole request.
        let cluster = gw.cluster(pinned).map_or("?", |c| c.name.as_str());
        tracing::warn!(
            transactional_id = %body.transactional_id.0,
            cluster,
            "transaction commits offsets of topics outside the cluster it is pinned to; refused"
        );
        let answer = txn_commit_failed(&body, |i| {
            if split.unrouted.contains(&i) {
                code::UNKNOWN_TOPIC_OR_PARTITION
            } else {
                code::INVALID_TXN_STATE
            }
        });
        let bytes = encode_response(&answer, version, header, what)?;
        return Ok(Box::pin(async move { Ok(bytes) }));
    }
    let Some((cluster, broker)) = coordinator_in(gw, pinned, &group).await else {
        let answer = txn_commit_failed(&body, |_| code::COORDINATOR_NOT_AVAILABLE);
        let bytes = encode_response(&answer, version, header, what)?;
        return Ok(Box::pin(async move { Ok(bytes) }));
    };
    let names = split.names(pinned);
    for t in &mut body.topics {
        names.topic(&mut t.name.0);
    }
    if home != pinned {
        // The group's members live on its home cluster; here it has none, and the
        // transaction's producer epoch fences zombies.
        body.generation_id = -1;
        body.member_id = StrBytes::default();
        body.group_instance_id = None;
    }
    let frame = req.reencode(&body, "TxnOffsetCommit request")?;
    let reply = conns.send(broker, frame).await?;
    let back = names.reversed();
    Ok(Box::pin(async move {
        let resp = await_reply(reply).await?;
        let mut out: TxnOffsetCommitResponse = resp.decode(header, version, what)?;
        forget_if_moved(&cluster, &group, out.topics.iter().flat_map(|t| t.partitions.iter().map(|p| p.error_code)));
        for t in &mut out.topics {
            back.topic(&mut t.name.0);
        }
        Ok(encode_response(&out, version, header, what)?)
    }))
}

/// A TxnOffsetCommit answer giving every partition of topic `i` the code `code_of(i)`.
fn txn_commit_failed(body: &TxnOffsetCommitRequest, code_of: impl Fn(usize) -> i16) -> TxnOffsetCommitResponse {
    TxnOffsetCommitResponse::default().with_topics(
        body.topics
            .iter()
            .enumerate()
            .map(|(i, t)| {
                txn_offset_commit_response::TxnOffsetCommitResponseTopic::default()
                    .with_name(t.name.clone())
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|p| {
                                txn_offset_commit_response::TxnOffsetCommitResponsePartition::default()
                                    .with_partition_index(p.partition_index)
                                    .with_error_code(code_of(i))
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

/// OffsetDelete: each cluster deletes the offsets of its own topics.
async fn offset_delete(
    gw: &Arc<Gateway>,
    conns: &mut SessionConns,
    router: &ClientRoutes,
    req: Request,
) -> Result<Answer, ProxyError> {
    let body: OffsetDeleteRequest = req.decode("OffsetDelete request")?;
    let group = body.group_id.0.to_string();
    if !router.may(Operation::Delete, Resource::Group, &group, "OffsetDelete") {
        let out = OffsetDeleteResponse::default().with_error_code(code::GROUP_AUTHORIZATION_FAILED);
        return Ok(ready(encode_response(&out, req.version(), req.response_header_version(), "OffsetDelete response")?));
    }
    let home = router.group(&group);
    let split = ByCluster::new(router, body.topics.iter().map(|t| t.name.0.as_str()), Operation::Read, "OffsetDelete");
    if split.plain_on(home) {
        return to_coordinator(gw, conns, home, GROUP, group, req).await;
    }
    let mut failed: Vec<(usize, i16)> = split.unrouted.iter().map(|&i| (i, code::UNKNOWN_TOPIC_OR_PARTITION)).collect();
    failed.extend(split.denied.iter().map(|&i| (i, code::TOPIC_AUTHORIZATION_FAILED)));
    let mut sent = Vec::new();
    for (&ci, topics) in &split.clusters {
        let Some((cluster, broker)) = coordinator_in(gw, ci, &group).await else {
            failed.extend(topics.iter().map(|&i| (i, code::COORDINATOR_NOT_AVAILABLE)));
            continue;
        };
        let names = split.names(ci);
        let mut sub = body.clone();
        sub.topics = pick(&body.topics, topics);
        for t in &mut sub.topics {
            names.topic(&mut t.name.0);
        }
        let frame = req.reencode(&sub, "OffsetDelete request")?;
        match conns.send(broker, frame).await {
            Ok(reply) => sent.push((Part { cluster, broker, names: names.reversed(), topics: topics.clone() }, reply)),
            Err(_) => failed.extend(topics.iter().map(|&i| (i, code::COORDINATOR_NOT_AVAILABLE))),
        }
    }
    let (version, header) = (req.version(), req.response_header_version());
    Ok(Box::pin(async move {
        let what = "OffsetDelete response";
        let mut acc = OffsetDeleteResponse::default();
        for (part, reply) in sent {
            match await_reply(reply).await {
                Ok(resp) => {
                    let mut out: OffsetDeleteResponse = resp.decode(header, version, what)?;
                    if code::coordinator_moved(out.error_code) {
                        part.cluster.forget_coordinator(GROUP, &group);
                    }
                    if acc.error_code == 0 {
                        acc.error_code = out.error_code;
                    }
                    acc.throttle_time_ms = acc.throttle_time_ms.max(out.throttle_time_ms);
                    for t in &mut out.topics {
                        part.names.topic(&mut t.name.0);
                    }
                    acc.topics.extend(out.topics);
                }
                Err(_) => failed.extend(part.topics.iter().map(|&i| (i, code::COORDINATOR_NOT_AVAILABLE))),
            }
        }
        for (i, code) in failed {
            let Some(t) = body.topics.get(i) else { continue };
            acc.topics.push(
                offset_delete_response::OffsetDeleteResponseTopic::default()
                    .with_name(t.name.clone())
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|p| {
                                offset_delete_response::OffsetDeleteResponsePartition::default()
                                    .with_partition_index(p.partition_index)
                                    .with_error_code(code)
                            })
                            .collect(),
                    ),
            );
        }
        Ok(encode_response(&acc, version, header, what)?)
    }))
}

/// Which clusters a request about groups goes to.
enum Clusters {
    /// The group's home cluster.
    Home,
    /// Every cluster where the group has a coordinator (its home, and
    /// wherever it holds offsets).
    Every,
}

/// The groups a request names, by index, as they are sent.
struct ByCoordinator {
    /// The groups each coordinator answers.
    by_broker: BTreeMap<BrokerRef, Vec<usize>>,
    /// Those whose home coordinator could not be found.
    failed: Vec<usize>,
    /// Those the client may not act on.
    refused: Vec<usize>,
}

/// Sorts the groups `names` by their coordinators in `clusters`, checking
/// that the client may do `op` on each.
async fn by_coordinator<'a>(
    gw: &Gateway,
    router: &ClientRoutes,
    names: impl Iterator<Item = &'a str>,
    op: Operation,
    api: &str,
    clusters: Clusters,
) -> ByCoordinator {
    let mut out = ByCoordinator { by_broker: BTreeMap::new(), failed: Vec::new(), refused: Vec::new() };
    for (i, name) in names.enumerate() {
        if !router.may(op, Resource::Group, name, api) {
            out.refused.push(i);
            continue;
        }
        let home = router.group(name);
        let asked = match clusters {
            Clusters::Home => home..home + 1,
            Clusters::Every => 0..gw.backends.clusters.len(),
        };
        for ci in asked {
            match coordinator_in(gw, ci, name).await {
                Some((_, broker)) => out.by_broker.entry(broker).or_default().push(i),
                None if ci == home => out.failed.push(i),
                None => {}
            }
        }
    }
    out
}

/// Requests about several groups: DescribeGroups (home clusters), DeleteGroups
/// (every cluster) and OffsetFetch (the clusters of the topics asked for).
pub async fn dispatch_many(
    gw: &Arc<Gateway>,
    conns: &mut SessionConns,
    router: &ClientRoutes,
    req: Request,
) -> Result<Answer, ProxyError> {
    match req.api_key {
        ApiKey::OffsetFetch => offset_fetch(gw, conns, router, req).await,
        ApiKey::DescribeGroups => describe_groups(gw, conns, router, req).await,
        _ => delete_groups(gw, conns, router, req).await,
    }
}

async fn describe_groups(
    gw: &Arc<Gateway>,
    conns: &mut SessionConns,
    router: &ClientRoutes,
    req: Request,
) -> Result<Answer, ProxyError> {
    let body: DescribeGroupsRequest = req.decode("DescribeGroups request")?;
    let names = body.groups.iter().map(|g| g.0.as_str());
    let ByCoordinator { by_broker, mut failed, refused } =
        by_coordinator(gw, router, names, Operation::Describe, "DescribeGroups", Clusters::Home).await;
    let mut sent = Vec::new();
    for (broker, keep) in &by_broker {
        let frame = if by_broker.len() == 1 && failed.is_empty() && refused.is_empty() {
            req.frame.clone()
        } else {
            let mut sub = body.clone();
            sub.groups = pick(&body.groups, keep);
            req.reencode(&sub, "DescribeGroups request")?
        };
        match conns.send(*broker, frame).await {
            Ok(reply) => sent.push((*broker, keep.clone(), reply)),
            Err(_) => failed.extend(keep),
        }
    }
    let (version, header) = (req.version(), req.response_header_version());
    let gw = gw.clone();
    let router = router.clone();
    let asked_ops = version >= 3 && body.include_authorized_operations;
    Ok(Box::pin(async move {
        let what = "DescribeGroups response";
        let only = sent.len() == 1 && failed.is_empty() && refused.is_empty();
        let mut acc = DescribeGroupsResponse::default();
        for (broker, keep, reply) in sent {
            match await_reply(reply).await {
                Ok(resp) => {
                    let mut out: DescribeGroupsResponse = resp.decode(header, version, what)?;
                    if let Some(c) = gw.backends.cluster(broker.cluster) {
                        for g in out.groups.iter().filter(|g| code::coordinator_moved(g.error_code)) {
                            c.forget_coordinator(GROUP, &g.group_id.0);
                        }
                    }
                    if router.authorizes() {
                        for g in out.groups.iter_mut().filter(|g| asked_ops && g.error_code == 0) {
                            g.authorized_operations =
                                router.authorized_operations(Resource::Group, &g.group_id.0).unwrap_or(i32::MIN);
                        }
                    }
                    if only && !router.authorizes() {
                        return Ok(resp.after_correlation_id());
                    }
                    acc.throttle_time_ms = acc.throttle_time_ms.max(out.throttle_time_ms);
                    acc.groups.extend(out.groups);
                }
                Err(_) => failed.extend(keep),
            }
        }
        let failed = failed.into_iter().map(|i| (i, code::COORDINATOR_NOT_AVAILABLE));
        let refused = refused.into_iter().map(|i| (i, code::GROUP_AUTHORIZATION_FAILED));
        for (i, code) in failed.chain(refused) {
            let Some(g) = body.groups.get(i) else { continue };
            let mut d = kafka_protocol::messages::describe_groups_response::DescribedGroup::default()
                .with_group_id(g.clone())
                .with_error_code(code);
            d.authorized_operations = i32::MIN;
            acc.groups.push(d);
        }
        Ok(encode_response(&acc, version, header, what)?)
    }))
}

/// DeleteGroups: the group goes from every cluster, its home and wherever it
/// holds offsets. The answer is the home cluster's unless only others had it.
async fn delete_groups(
    gw: &Arc<Gateway>,
    conns: &mut SessionConns,
    router: &ClientRoutes,
    req: Request,
) -> Result<Answer, ProxyError> {
    let body: DeleteGroupsRequest = req.decode("DeleteGroups request")?;
    let names = body.groups_names.iter().map(|g| g.0.as_str());
    let ByCoordinator { by_broker, failed, refused } =
        by_coordinator(gw, router, names, Operation::Delete, "DeleteGroups", Clusters::Every).await;
    let mut sent = Vec::new();
    for (broker, keep) in &by_broker {
        let mut sub = body.clone();
        sub.groups_names = pick(&body.groups_names, keep);
        let frame = req.reencode(&sub, "DeleteGroups request")?;
        if let Ok(reply) = conns.send(*broker, frame).await {
            sent.push((*broker, reply));
        }
    }
    let homes: HashMap<String, usize> = body.groups_names.iter().map(|g| (g.0.to_string(), router.group(&g.0))).collect();
    let (version, header) = (req.version(), req.response_header_version());
    Ok(Box::pin(async move {
        let what = "DeleteGroups response";
        // Per group: the home cluster's code, and whether another cluster deleted it.
        let mut home_code: HashMap<String, i16> = HashMap::new();
        let mut other_ok: HashMap<String, bool> = HashMap::new();
        let mut throttle = 0;
        for (broker, reply) in sent {
            let Ok(resp) = await_reply(reply).await else { continue };
            let out: DeleteGroupsResponse = resp.decode(header, version, what)?;
            throttle = throttle.max(out.throttle_time_ms);
            for r in out.results {
                let name = r.group_id.0.to_string();
                if homes.get(&name) == Some(&broker.cluster) {
                    home_code.insert(name, r.error_code);
                } else if r.error_code == 0 {
                    other_ok.insert(name, true);
                }
            }
        }
        let mut acc = DeleteGroupsResponse::default().with_throttle_time_ms(throttle);
        for (i, g) in body.groups_names.iter().enumerate() {
            let name = g.0.to_string();
            let mut code = home_code.get(&name).copied().unwrap_or(code::COORDINATOR_NOT_AVAILABLE);
            if refused.contains(&i) {
                code = code::GROUP_AUTHORIZATION_FAILED;
            } else if failed.contains(&i) {
                code = code::COORDINATOR_NOT_AVAILABLE;
            } else if code == code::GROUP_ID_NOT_FOUND && other_ok.contains_key(&name) {
                code = 0;
            }
            acc.results.push(
                kafka_protocol::messages::delete_groups_response::DeletableGroupResult::default()
                    .with_group_id(g.clone())
                    .with_error_code(code),
            );
        }
        Ok(encode_response(&acc, version, header, what)?)
    }))
}

/// ListGroups: every broker of every reachable cluster; a group listed by several
/// clusters (its home, and where it holds offsets) appears once, as its home shows it.
///
/// With authorization, a client that may describe the cluster sees every
/// group; any other only the groups it may describe, as in Kafka.
pub async fn list_groups(
    gw: &Arc<Gateway>,
    conns: &mut SessionConns,
    router: &ClientRoutes,
    req: Request,
) -> Result<Answer, ProxyError> {
    let every = !router.authorizes() || router.may_cluster(Operation::Describe, "ListGroups");
    let mut parts = Vec::new();
    for (ci, cluster) in gw.backends.clusters.iter().enumerate() {
        if !cluster.is_ready() && gw.backends.clusters.len() > 1 {
            continue;
        }
        for node in cluster.broker_ids() {
            let broker = BrokerRef { cluster: ci, node };
            match conns.send(broker, req.frame.clone()).await {
                Ok(reply) => parts.push((ci, reply)),
                Err(e) if gw.backends.clusters.len() == 1 => return Err(e.into()),
                Err(_) => {}
            }
        }
    }
    let homes = gw.router();
    let router = router.clone();
    Ok(Box::pin(async move {
        let (version, header) = (req.version(), req.response_header_version());
        let mut acc = ListGroupsResponse::default();
        let mut seen: HashMap<String, (usize, bool)> = HashMap::new();
        for (ci, reply) in parts {
            let Ok(resp) = await_reply(reply).await else { continue };
            let part: ListGroupsResponse = resp.decode(header, version, "ListGroups response")?;
            if acc.error_code == 0 {
                acc.error_code = part.error_code;
            }
            acc.throttle_time_ms = acc.throttle_time_ms.max(part.throttle_time_ms);
            for g in part.groups {
                if !every && !router.may_quietly(Operation::Describe, Resource::Group, &g.group_id.0) {
                    continue;
                }
                let name = g.group_id.0.to_string();
                let at_home = homes.group(&name) == ci;
                match seen.get(&name) {
                    Some(&(_, true)) => continue,
                    Some(&(i, false)) if at_home => {
                        if let Some(slot) = acc.groups.get_mut(i) {
                            *slot = g;
                        }
                        seen.insert(name, (i, true));
                    }
                    Some(_) => continue,
                    None => {
                        seen.insert(name, (acc.groups.len(), at_home));
                        acc.groups.push(g);
                    }
                }
            }
        }
        Ok(encode_response(&acc, version, header, "ListGroups response")?)
    }))
}

/// A group of an OffsetFetch and the topic indexes asked of one cluster
/// (`None`: every topic).
type Wanted = (usize, Option<Vec<usize>>);

/// OffsetFetch, v1-7 (one group) and v8+ (several): each cluster answers for its
/// own topics; "all topics" asks every cluster and keeps what clients may see.
async fn offset_fetch(
    gw: &Arc<Gateway>,
    conns: &mut SessionConns,
    router: &ClientRoutes,
    req: Request,
) -> Result<Answer, ProxyError> {
    let body: OffsetFetchRequest = req.decode("OffsetFetch request")?;
    let v8 = req.version() >= 8;
    // Per group: (name, Option<topic names>).
    let asked: Vec<(GroupId, Option<Vec<TopicName>>)> = if v8 {
        body.groups
            .iter()
            .map(|g| (g.group_id.clone(), g.topics.as_ref().map(|ts| ts.iter().map(|t| t.name.clone()).collect())))
            .collect()
    } else {
        vec![(
            body.group_id.clone(),
            body.topics.as_ref().map(|ts| ts.iter().map(|t| t.name.clone()).collect()),
        )]
    };
    // Groups the client may not describe, and (group, topic name) pairs
    // asked for that it may not describe.
    let refused: Vec<usize> = (0..asked.len())
        .filter(|&gi| !router.may(Operation::Describe, Resource::Group, &asked[gi].0 .0, "OffsetFetch"))
        .collect();
    let mut denied: Vec<(usize, TopicName)> = Vec::new();
    if !v8 && !refused.is_empty() {
        let out = OffsetFetchResponse::default().with_error_code(code::GROUP_AUTHORIZATION_FAILED);
        return Ok(ready(encode_response(&out, req.version(), req.response_header_version(), "OffsetFetch response")?));
    }
    let single = gw.backends.clusters.len() == 1 && !router.renames() && !router.authorizes();
    if single && !v8 {
        let group = body.group_id.0.to_string();
        return to_coordinator(gw, conns, 0, GROUP, group, req).await;
    }

    // Which (group index, Option<topic indexes>) each broker answers.
    let mut by_broker: BTreeMap<BrokerRef, Vec<Wanted>> = BTreeMap::new();
    let mut unavailable: Vec<usize> = Vec::new();
    for (gi, (group, topics)) in asked.iter().enumerate() {
        if refused.contains(&gi) {
            continue;
        }
        let wanted: Vec<Wanted> = match topics {
            None => (0..gw.backends.clusters.len()).map(|c| (c, None)).collect(),
            Some(ts) => {
                let split = ByCluster::new(router, ts.iter().map(|t| t.0.as_str()), Operation::Describe, "OffsetFetch");
                denied.extend(split.denied.iter().filter_map(|&ti| Some((gi, ts.get(ti)?.clone()))));
                split.clusters.into_iter().map(|(c, t)| (c, Some(t))).collect()
            }
        };
        for (ci, topics) in wanted {
            match coordinator_in(gw, ci, &group.0).await {
                Some((_, broker)) => by_broker.entry(broker).or_default().push((gi, topics)),
                None if topics.is_some() || ci == router.group(&group.0) => unavailable.push(gi),
                None => {}
            }
        }
    }
    let mut sent = Vec::new();
    for (broker, wants) in &by_broker {
        let rename = |name: &TopicName| -> TopicName {
            match router.topic(&name.0) {
                Some(t) if t.renamed() => TopicName(StrBytes::from_string(t.backend.into_owned())),
                _ => name.clone(),
            }
        };
        let mut sub = body.clone();
        if v8 {
            sub.groups = wants
                .iter()
                .filter_map(|(gi, topics)| {
                    let mut g = body.groups.get(*gi)?.clone();
                    if let (Some(keep), Some(all)) = (topics, &g.topics) {
                        let mut chosen = pick(all, keep);
                        for t in &mut chosen {
                            t.name = rename(&t.name);
                        }
                        g.topics = Some(chosen);
                    }
                    Some(g)
                })
                .collect();
        } else if let Some((_, Some(keep))) = wants.first() {
            if let Some(all) = &body.topics {
                let mut chosen = pick(all, keep);
                for t in &mut chosen {
                    t.name = rename(&t.name);
                }
                sub.topics = Some(chosen);
            }
        }
        let frame = req.reencode(&sub, "OffsetFetch request")?;
        match conns.send(*broker, frame).await {
            Ok(reply) => sent.push((*broker, reply)),
            Err(_) => unavailable.extend(wants.iter().map(|(gi, _)| *gi)),
        }
    }
    let (version, header) = (req.version(), req.response_header_version());
    let router = router.clone();
    let gw = gw.clone();
    Ok(Box::pin(async move {
        let what = "OffsetFetch response";
        let mut acc = OffsetFetchResponse::default();
        let mut groups: Vec<offset_fetch_response::OffsetFetchResponseGroup> = asked
            .iter()
            .map(|(g, _)| offset_fetch_response::OffsetFetchResponseGroup::default().with_group_id(g.clone()))
            .collect();
        let client_name = |ci: usize, name: &mut TopicName| -> bool {
            match router.client_name(ci, &name.0) {
                Some(c) => {
                    if c != name.0.as_str() {
                        *name = TopicName(StrBytes::from_string(c.into_owned()));
                    }
                    true
                }
                None => false,
            }
        };
        for (broker, reply) in sent {
            let cluster = gw.backends.cluster(broker.cluster).cloned();
            let Ok(resp) = await_reply(reply).await else {
                // Which groups it carried is in by_broker; mark them all unavailable.
                for (gi, _) in by_broker.get(&broker).into_iter().flatten() {
                    if let Some(g) = groups.get_mut(*gi) {
                        g.error_code = code::COORDINATOR_NOT_AVAILABLE;
                    }
                }
                continue;
            };
            let out: OffsetFetchResponse = resp.decode(header, version, what)?;
            acc.throttle_time_ms = acc.throttle_time_ms.max(out.throttle_time_ms);
            if v8 {
                for g in out.groups {
                    let Some(slot) = groups.iter_mut().find(|s| s.group_id == g.group_id) else { continue };
                    if code::coordinator_moved(g.error_code) {
                        if let Some(c) = &cluster {
                            c.forget_coordinator(GROUP, &g.group_id.0);
                        }
                    }
                    if slot.error_code == 0 {
                        slot.error_code = g.error_code;
                    }
                    for mut t in g.topics {
                        if client_name(broker.cluster, &mut t.name) {
                            slot.topics.push(t);
                        }
                    }
                }
            } else {
                if code::coordinator_moved(out.error_code) {
                    if let Some(c) = &cluster {
                        c.forget_coordinator(GROUP, &asked[0].0 .0);
                    }
                }
                if acc.error_code == 0 {
                    acc.error_code = out.error_code;
                }
                for mut t in out.topics {
                    if client_name(broker.cluster, &mut t.name) {
                        acc.topics.push(t);
                    }
                }
            }
        }
        for &gi in &refused {
            if let Some(g) = groups.get_mut(gi) {
                g.error_code = code::GROUP_AUTHORIZATION_FAILED;
            }
        }
        // Topics asked for that the client may not describe.
        for (gi, name) in denied {
            let partitions = |want: Option<&Vec<i32>>| -> Vec<i32> { want.cloned().unwrap_or_default() };
            if v8 {
                let asked_parts = body
                    .groups
                    .get(gi)
                    .and_then(|g| g.topics.as_ref())
                    .and_then(|ts| ts.iter().find(|t| t.name == name))
                    .map(|t| &t.partition_indexes);
                if let Some(g) = groups.get_mut(gi) {
                    g.topics.push(
                        offset_fetch_response::OffsetFetchResponseTopics::default().with_name(name).with_partitions(
                            partitions(asked_parts)
                                .into_iter()
                                .map(|p| {
                                    offset_fetch_response::OffsetFetchResponsePartitions::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(-1)
                                        .with_error_code(code::TOPIC_AUTHORIZATION_FAILED)
                                })
                                .collect(),
                        ),
                    );
                }
            } else {
                let asked_parts =
                    body.topics.as_ref().and_then(|ts| ts.iter().find(|t| t.name == name)).map(|t| &t.partition_indexes);
                acc.topics.push(
                    offset_fetch_response::OffsetFetchResponseTopic::default().with_name(name).with_partitions(
                        partitions(asked_parts)
                            .into_iter()
                            .map(|p| {
                                offset_fetch_response::OffsetFetchResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(-1)
                                    .with_error_code(code::TOPIC_AUTHORIZATION_FAILED)
                            })
                            .collect(),
                    ),
                );
            }
        }
        for gi in unavailable {
            if v8 {
                if let Some(g) = groups.get_mut(gi) {
                    g.error_code = code::COORDINATOR_NOT_AVAILABLE;
                }
            } else {
                acc.error_code = code::COORDINATOR_NOT_AVAILABLE;
            }
        }
        if v8 {
            acc.groups = groups;
        } else if version >= 2 && acc.error_code != 0 {
            // From v2 the group error is top-level; partitions carry it below v2 only.
            acc.topics.clear();
        }
        // Topics asked for that no cluster answered (unrouted): UNKNOWN_TOPIC_OR_PARTITION.
        if !v8 {
            if let Some(ts) = body.topics.as_ref() {
                for t in ts {
                    if router.sees(&t.name.0) && router.topic(&t.name.0).is_none() {
                        acc.topics.push(
                            offset_fetch_response::OffsetFetchResponseTopic::default()
                                .with_name(t.name.clone())
                                .with_partitions(
                                    t.partition_indexes
                                        .iter()
                                        .map(|&p| {
                                            offset_fetch_response::OffsetFetchResponsePartition::default()
                                                .with_partition_index(p)
                                                .with_committed_offset(-1)
                                                .with_error_code(code::UNKNOWN_TOPIC_OR_PARTITION)
                                        })
                                        .collect(),
                                ),
                        );
                    }
                }
            }
        }
        Ok(encode_response(&acc, version, header, what)?)
    }))
}

