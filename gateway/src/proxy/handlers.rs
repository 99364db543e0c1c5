//! Request routing, one handler per route class of [`crate::codec::versions::Route`].
//!
//! Every handler queues its backend request(s) before it returns, so requests reach
//! each backend connection in the order the client sent them, and returns an
//! [`Answer`] that the session's writer awaits in order.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, ApiKey, ApiVersionsResponse,
    DeleteGroupsRequest, DeleteGroupsResponse, DescribeClusterResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, EndTxnRequest, FindCoordinatorRequest, FindCoordinatorResponse,
    HeartbeatRequest, InitProducerIdRequest, JoinGroupRequest, LeaveGroupRequest,
    ListGroupsResponse, MetadataRequest, MetadataResponse, OffsetCommitRequest,
    OffsetDeleteRequest, OffsetFetchRequest, OffsetFetchResponse, ResponseKind,
    SyncGroupRequest, TxnOffsetCommitRequest,
};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::protocol::{Decodable, Encodable};

use super::session::Answer;
use super::{partitioned, rewrite, Gateway, ProxyError};
use crate::backend::{BackendError, BrokerRef, Cluster, Reply, SessionConns};
use crate::codec::versions::{self, Route};
use crate::codec::{encode_response, Request, Response};
use crate::telemetry;

/// Kafka error codes Causeway produces or reacts to.
pub mod code {
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const NOT_CONTROLLER: i16 = 41;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const FENCED_LEADER_EPOCH: i16 = 74;
    pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
    pub const UNKNOWN_TOPIC_ID: i16 = 100;
    pub const INCONSISTENT_TOPIC_ID: i16 = 103;

    /// Errors that mean Causeway's idea of partition leaders is out of date.
    pub fn leader_moved(code: i16) -> bool {
        matches!(
            code,
            UNKNOWN_TOPIC_OR_PARTITION
                | LEADER_NOT_AVAILABLE
                | NOT_LEADER_OR_FOLLOWER
                | KAFKA_STORAGE_ERROR
                | FENCED_LEADER_EPOCH
                | UNKNOWN_LEADER_EPOCH
                | UNKNOWN_TOPIC_ID
                | INCONSISTENT_TOPIC_ID
        )
    }

    /// Errors that mean a coordinator moved.
    pub fn coordinator_moved(code: i16) -> bool {
        matches!(code, NOT_COORDINATOR | COORDINATOR_NOT_AVAILABLE)
    }
}

/// Coordinator key types of FindCoordinator.
const GROUP: i8 = 0;
const TRANSACTION: i8 = 1;

/// Routes one request. `Ok(None)`: the request gets no response (acks=0 produce).
pub async fn dispatch(
    gw: &Arc<Gateway>,
    conns: &mut SessionConns,
    req: Request,
) -> Result<Option<Answer>, ProxyError> {
    let version = req.version();
    let Some(audit) = versions::audited(req.api_key) else {
        telemetry::protocol_error("unoffered_api");
        return Err(ProxyError::Unsupported {
            api: "unoffered API",
            version,
        });
    };
    if audit.route == Route::ApiVersions {
        return Ok(Some(api_versions(gw, &req)));
    }
    if version < audit.min || version > audit.max {
        telemetry::protocol_error("unsupported_version");
        return Err(ProxyError::Unsupported {
            api: super::session::api_key_name(req.api_key),
            version,
        });
    }
    let (ci, cluster) = gw.backends.primary();
    let cluster = cluster.clone();
    let any = BrokerRef {
        cluster: ci,
        node: cluster.any_broker(),
    };
    let answer = match audit.route {
        Route::ApiVersions => api_versions(gw, &req),
        Route::Metadata => metadata(gw, conns, any, cluster, req).await?,
        Route::FindCoordinator => find_coordinator(gw, conns, any, cluster, req).await?,
        Route::DescribeCluster => describe_cluster(gw, conns, any, cluster, req).await?,
        Route::Partitioned => return partitioned::dispatch(gw, conns, ci, cluster, req).await,
        Route::Group => {
            let key = group_key(&req)?;
            to_coordinator(conns, ci, cluster, GROUP, key, req).await?
        }
        Route::Transaction => {
            let key = transaction_key(&req)?;
            to_coordinator(conns, ci, cluster, TRANSACTION, key, req).await?
        }
        Route::InitProducerId => {
            let body: InitProducerIdRequest = req.decode("InitProducerId request")?;
            match body.transactional_id.filter(|t| !t.0.is_empty()) {
                Some(id) => {
                    to_coordinator(conns, ci, cluster, TRANSACTION, id.0.to_string(), req).await?
                }
                None => passthrough(conns.send(any, req.frame).await?),
            }
        }
        Route::Groups => groups(conns, ci, cluster, req).await?,
        Route::AllBrokers => list_groups(conns, ci, cluster, req).await?,
        Route::Controller => {
            let controller = BrokerRef {
                cluster: ci,
                node: cluster.controller(),
            };
            let (api, version) = (req.api_key, req.version());
            let reply = conns.send(controller, req.frame).await?;
            Box::pin(async move {
                let resp = await_reply(reply).await?;
                if controller_moved(api, version, &resp) {
                    cluster.mark_stale();
                }
                Ok(resp.after_correlation_id())
            })
        }
        Route::Configs => rewrite::configs(gw, conns, any, req).await?,
        Route::AnyBroker => passthrough(conns.send(any, req.frame).await?),
    };
    Ok(Some(answer))
}

/// Waits for a backend reply.
pub async fn await_reply(reply: Reply) -> Result<Response, ProxyError> {
    match reply.await {
        Ok(r) => Ok(r?),
        Err(_) => Err(BackendError::Internal("backend connection dropped the request").into()),
    }
}

/// The backend's answer goes back to the client as it is.
pub fn passthrough(reply: Reply) -> Answer {
    Box::pin(async move { Ok(await_reply(reply).await?.after_correlation_id()) })
}

/// ApiVersions, answered by Causeway: its audited versions intersected with the
/// backend's. A version Causeway does not know gets UNSUPPORTED_VERSION in the v0
/// layout, as Kafka brokers do, so the client can retry with one it does.
fn api_versions(gw: &Gateway, req: &Request) -> Answer {
    let audit = versions::audited(ApiKey::ApiVersions);
    let max = audit.map_or(0, |a| a.max);
    let (_, cluster) = gw.backends.primary();
    let backend = cluster.versions();
    let mut keys = Vec::new();
    for e in versions::AUDITED {
        let (mut min, mut max) = (e.min, e.max);
        if e.key != ApiKey::ApiVersions && !backend.is_empty() {
            let Some(&(bmin, bmax)) = backend.get(&(e.key as i16)) else {
                continue;
            };
            min = min.max(bmin);
            max = max.min(bmax);
        }
        if min <= max {
            keys.push(
                ApiVersion::default()
                    .with_api_key(e.key as i16)
                    .with_min_version(min)
                    .with_max_version(max),
            );
        }
    }
    let (version, error_code) = if req.version() > max {
        (0, code::UNSUPPORTED_VERSION)
    } else {
        (req.version(), 0)
    };
    let body = ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(keys);
    // ApiVersions responses always use header v0.
    let encoded = encode_response(&body, version, 0, "ApiVersions response");
    Box::pin(async move { Ok(encoded?) })
}

/// Forwards the client's frame to `broker` and hands the decoded answer to `edit`
/// before encoding it back at the client's version.
async fn forward_rewritten<T, F>(
    conns: &mut SessionConns,
    broker: BrokerRef,
    req: &Request,
    what: &'static str,
    edit: F,
) -> Result<Answer, ProxyError>
where
    T: Decodable + Encodable + Send + 'static,
    F: FnOnce(&mut T, i16) + Send + 'static,
{
    let reply = conns.send(broker, req.frame.clone()).await?;
    let (version, header) = (req.version(), req.response_header_version());
    Ok(Box::pin(async move {
        let resp = await_reply(reply).await?;
        let mut body: T = resp.decode(header, version, what)?;
        edit(&mut body, version);
        Ok(encode_response(&body, version, header, what)?)
    }))
}

async fn metadata(
    gw: &Arc<Gateway>,
    conns: &mut SessionConns,
    broker: BrokerRef,
    cluster: Arc<Cluster>,
    req: Request,
) -> Result<Answer, ProxyError> {
    let body: MetadataRequest = req.decode("Metadata request")?;
    let all_topics = match &body.topics {
        None => true,
        Some(t) => t.is_empty() && req.version() == 0,
    };
    let gw = gw.clone();
    forward_rewritten(conns, broker, &req, "Metadata response", move |out: &mut MetadataResponse, _| {
        cluster.absorb_metadata(out, all_topics);
        rewrite::metadata(out, &gw, cluster.cluster_id());
    })
    .await
}

async fn find_coordinator(
    gw: &Arc<Gateway>,
    conns: &mut SessionConns,
    broker: BrokerRef,
    cluster: Arc<Cluster>,
    req: Request,
) -> Result<Answer, ProxyError> {
    let body: FindCoordinatorRequest = req.decode("FindCoordinator request")?;
    let gw = gw.clone();
    let edit = move |out: &mut FindCoordinatorResponse, version: i16| {
        if version < 4 {
            if out.error_code == 0 {
                cluster.learn_coordinator(body.key_type, &body.key, out.node_id.0, &out.host, out.port);
            }
        } else {
            for c in out.coordinators.iter().filter(|c| c.error_code == 0) {
                cluster.learn_coordinator(body.key_type, &c.key, c.node_id.0, &c.host, c.port);
            }
        }
        rewrite::find_coordinator(out, &gw);
    };
    forward_rewritten(conns, broker, &req, "FindCoordinator response", edit).await
}

async fn describe_cluster(
    gw: &Arc<Gateway>,
    conns: &mut SessionConns,
    broker: BrokerRef,
    cluster: Arc<Cluster>,
    req: Request,
) -> Result<Answer, ProxyError> {
    let gw = gw.clone();
    let edit = move |out: &mut DescribeClusterResponse, _| {
        rewrite::describe_cluster(out, &gw, cluster.cluster_id());
    };
    forward_rewritten(conns, broker, &req, "DescribeCluster response", edit).await
}

/// The consumer group a single-group request is about.
fn group_key(req: &Request) -> Result<String, ProxyError> {
    let id = match req.api_key {
        ApiKey::JoinGroup => req.decode::<JoinGroupRequest>("JoinGroup request")?.group_id,
        ApiKey::SyncGroup => req.decode::<SyncGroupRequest>("SyncGroup request")?.group_id,
        ApiKey::Heartbeat => req.decode::<HeartbeatRequest>("Heartbeat request")?.group_id,
        ApiKey::LeaveGroup => req.decode::<LeaveGroupRequest>("LeaveGroup request")?.group_id,
        ApiKey::OffsetCommit => req.decode::<OffsetCommitRequest>("OffsetCommit request")?.group_id,
        ApiKey::OffsetDelete => req.decode::<OffsetDeleteRequest>("OffsetDelete request")?.group_id,
        ApiKey::TxnOffsetCommit => {
            req.decode::<TxnOffsetCommitRequest>("TxnOffsetCommit request")?
                .group_id
        }
        ApiKey::OffsetFetch => req.decode::<OffsetFetchRequest>("OffsetFetch request")?.group_id,
        _ => return Err(BackendError::Internal("no group in this request").into()),
    };
    Ok(id.0.to_string())
}

/// The transactional id a transaction request is about.
fn transaction_key(req: &Request) -> Result<String, ProxyError> {
    let id = match req.api_key {
        ApiKey::AddPartitionsToTxn => {
            req.decode::<AddPartitionsToTxnRequest>("AddPartitionsToTxn request")?
                .v3_and_below_transactional_id
        }
        ApiKey::AddOffsetsToTxn => {
            req.decode::<AddOffsetsToTxnRequest>("AddOffsetsToTxn request")?
                .transactional_id
        }
        ApiKey::EndTxn => req.decode::<EndTxnRequest>("EndTxn request")?.transactional_id,
        _ => return Err(BackendError::Internal("no transactional id in this request").into()),
    };
    Ok(id.0.to_string())
}

/// Sends a request to the coordinator of `key`. If the coordinator cannot be found,
/// any broker gets it and answers with the coordinator error the client expects.
async fn to_coordinator(
    conns: &mut SessionConns,
    ci: usize,
    cluster: Arc<Cluster>,
    key_type: i8,
    key: String,
    req: Request,
) -> Result<Answer, ProxyError> {
    let node = match cluster.coordinator(key_type, &key).await {
        Ok(node) => node,
        Err(e) => {
            tracing::debug!(%key, error = %e, "coordinator lookup failed; letting a broker answer");
            cluster.any_broker()
        }
    };
    let reply = conns.send(BrokerRef { cluster: ci, node }, req.frame.clone()).await?;
    Ok(Box::pin(async move {
        let resp = await_reply(reply).await?;
        if coordinator_moved(req.api_key, req.version(), &resp) {
            cluster.forget_coordinator(key_type, &key);
        }
        Ok(resp.after_correlation_id())
    }))
}

fn decode_kind(api: ApiKey, version: i16, resp: &Response) -> Option<ResponseKind> {
    let mut body = resp.body(api.response_header_version(version)).ok()?;
    ResponseKind::decode(api, &mut body, version).ok()
}

/// Whether a coordinator-routed response says the coordinator moved.
fn coordinator_moved(api: ApiKey, version: i16, resp: &Response) -> bool {
    let moved = code::coordinator_moved;
    match decode_kind(api, version, resp) {
        Some(ResponseKind::JoinGroup(r)) => moved(r.error_code),
        Some(ResponseKind::SyncGroup(r)) => moved(r.error_code),
        Some(ResponseKind::Heartbeat(r)) => moved(r.error_code),
        Some(ResponseKind::LeaveGroup(r)) => moved(r.error_code),
        Some(ResponseKind::OffsetDelete(r)) => moved(r.error_code),
        Some(ResponseKind::EndTxn(r)) => moved(r.error_code),
        Some(ResponseKind::AddOffsetsToTxn(r)) => moved(r.error_code),
        Some(ResponseKind::InitProducerId(r)) => moved(r.error_code),
        Some(ResponseKind::OffsetFetch(r)) => {
            moved(r.error_code) || r.groups.iter().any(|g| moved(g.error_code))
        }
        Some(ResponseKind::OffsetCommit(r)) => r
            .topics
            .iter()
            .any(|t| t.partitions.iter().any(|p| moved(p.error_code))),
        Some(ResponseKind::TxnOffsetCommit(r)) => r
            .topics
            .iter()
            .any(|t| t.partitions.iter().any(|p| moved(p.error_code))),
        Some(ResponseKind::AddPartitionsToTxn(r)) => {
            moved(r.error_code)
                || r.results_by_topic_v3_and_below.iter().any(|t| {
                    t.results_by_partition
                        .iter()
                        .any(|p| moved(p.partition_error_code))
                })
        }
        _ => false,
    }
}

/// Whether a controller-routed response says the controller moved.
fn controller_moved(api: ApiKey, version: i16, resp: &Response) -> bool {
    let moved = |c: i16| c == code::NOT_CONTROLLER;
    match decode_kind(api, version, resp) {
        Some(ResponseKind::CreateTopics(r)) => r.topics.iter().any(|t| moved(t.error_code)),
        Some(ResponseKind::DeleteTopics(r)) => r.responses.iter().any(|t| moved(t.error_code)),
        Some(ResponseKind::CreatePartitions(r)) => r.results.iter().any(|t| moved(t.error_code)),
        Some(ResponseKind::ElectLeaders(r)) => moved(r.error_code),
        _ => false,
    }
}

/// Requests about several groups (DescribeGroups, DeleteGroups, OffsetFetch v8+):
/// one request per coordinator, answers merged.
async fn groups(
    conns: &mut SessionConns,
    ci: usize,
    cluster: Arc<Cluster>,
    req: Request,
) -> Result<Answer, ProxyError> {
    if req.api_key == ApiKey::OffsetFetch && req.version() < 8 {
        let key = group_key(&req)?;
        return to_coordinator(conns, ci, cluster, GROUP, key, req).await;
    }
    let names: Vec<String> = match req.api_key {
        ApiKey::DescribeGroups => req
            .decode::<DescribeGroupsRequest>("DescribeGroups request")?
            .groups
            .iter()
            .map(|g| g.0.to_string())
            .collect(),
        ApiKey::DeleteGroups => req
            .decode::<DeleteGroupsRequest>("DeleteGroups request")?
            .groups_names
            .iter()
            .map(|g| g.0.to_string())
            .collect(),
        ApiKey::OffsetFetch => req
            .decode::<OffsetFetchRequest>("OffsetFetch request")?
            .groups
            .iter()
            .map(|g| g.group_id.0.to_string())
            .collect(),
        _ => return Err(BackendError::Internal("not a multi-group request").into()),
    };
    let mut by_node: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let node = match cluster.coordinator(GROUP, name).await {
            Ok(n) => n,
            Err(_) => cluster.any_broker(),
        };
        by_node.entry(node).or_default().push(i);
    }
    let mut parts = Vec::new();
    if by_node.len() <= 1 {
        let node = by_node.keys().next().copied().unwrap_or_else(|| cluster.any_broker());
        let reply = conns.send(BrokerRef { cluster: ci, node }, req.frame.clone()).await?;
        parts.push(reply);
    } else {
        for (&node, keep) in &by_node {
            let frame = match req.api_key {
                ApiKey::DescribeGroups => {
                    let mut body: DescribeGroupsRequest = req.decode("DescribeGroups request")?;
                    body.groups = keep.iter().filter_map(|&i| body.groups.get(i).cloned()).collect();
                    req.reencode(&body, "DescribeGroups request")?
                }
                ApiKey::DeleteGroups => {
                    let mut body: DeleteGroupsRequest = req.decode("DeleteGroups request")?;
                    body.groups_names = keep
                        .iter()
                        .filter_map(|&i| body.groups_names.get(i).cloned())
                        .collect();
                    req.reencode(&body, "DeleteGroups request")?
                }
                _ => {
                    let mut body: OffsetFetchRequest = req.decode("OffsetFetch request")?;
                    body.groups = keep.iter().filter_map(|&i| body.groups.get(i).cloned()).collect();
                    req.reencode(&body, "OffsetFetch request")?
                }
            };
            parts.push(conns.send(BrokerRef { cluster: ci, node }, frame).await?);
        }
    }
    Ok(Box::pin(async move {
        let (api, version, header) = (req.api_key, req.version(), req.response_header_version());
        let mut responses = Vec::with_capacity(parts.len());
        for reply in parts {
            responses.push(await_reply(reply).await?);
        }
        if let [only] = responses.as_slice() {
            forget_moved_groups(&cluster, api, version, only);
            return Ok(only.after_correlation_id());
        }
        let merged: Bytes = match api {
            ApiKey::DescribeGroups => {
                let mut acc = DescribeGroupsResponse::default();
                for r in &responses {
                    let part: DescribeGroupsResponse = r.decode(header, version, "DescribeGroups response")?;
                    acc.throttle_time_ms = acc.throttle_time_ms.max(part.throttle_time_ms);
                    acc.groups.extend(part.groups);
                }
                encode_response(&acc, version, header, "DescribeGroups response")?
            }
            ApiKey::DeleteGroups => {
                let mut acc = DeleteGroupsResponse::default();
                for r in &responses {
                    let part: DeleteGroupsResponse = r.decode(header, version, "DeleteGroups response")?;
                    acc.throttle_time_ms = acc.throttle_time_ms.max(part.throttle_time_ms);
                    acc.results.extend(part.results);
                }
                encode_response(&acc, version, header, "DeleteGroups response")?
            }
            _ => {
                let mut acc = OffsetFetchResponse::default();
                for r in &responses {
                    let part: OffsetFetchResponse = r.decode(header, version, "OffsetFetch response")?;
                    acc.throttle_time_ms = acc.throttle_time_ms.max(part.throttle_time_ms);
                    acc.groups.extend(part.groups);
                }
                encode_response(&acc, version, header, "OffsetFetch response")?
            }
        };
        for r in &responses {
            forget_moved_groups(&cluster, api, version, r);
        }
        Ok(merged)
    }))
}

fn forget_moved_groups(cluster: &Cluster, api: ApiKey, version: i16, resp: &Response) {
    let moved = code::coordinator_moved;
    match decode_kind(api, version, resp) {
        Some(ResponseKind::DescribeGroups(r)) => {
            for g in r.groups.iter().filter(|g| moved(g.error_code)) {
                cluster.forget_coordinator(GROUP, &g.group_id.0);
            }
        }
        Some(ResponseKind::DeleteGroups(r)) => {
            for g in r.results.iter().filter(|g| moved(g.error_code)) {
                cluster.forget_coordinator(GROUP, &g.group_id.0);
            }
        }
        Some(ResponseKind::OffsetFetch(r)) => {
            for g in r.groups.iter().filter(|g| moved(g.error_code)) {
                cluster.forget_coordinator(GROUP, &g.group_id.0);
            }
        }
        _ => {}
    }
}

/// ListGroups goes to every broker; the answers are merged.
async fn list_groups(
    conns: &mut SessionConns,
    ci: usize,
    cluster: Arc<Cluster>,
    req: Request,
) -> Result<Answer, ProxyError> {
    let mut parts = Vec::new();
    for node in cluster.broker_ids() {
        parts.push(conns.send(BrokerRef { cluster: ci, node }, req.frame.clone()).await?);
    }
    Ok(Box::pin(async move {
        let (version, header) = (req.version(), req.response_header_version());
        let mut acc = ListGroupsResponse::default();
        for reply in parts {
            let resp = await_reply(reply).await?;
            let part: ListGroupsResponse = resp.decode(header, version, "ListGroups response")?;
            if acc.error_code == 0 {
                acc.error_code = part.error_code;
            }
            acc.throttle_time_ms = acc.throttle_time_ms.max(part.throttle_time_ms);
            acc.groups.extend(part.groups);
        }
        Ok(encode_response(&acc, version, header, "ListGroups response")?)
    }))
}
