//! Request routing, one handler per route class of [`crate::codec::versions::Route`].
//!
//! Every handler queues its backend request(s) before it returns, so requests reach
//! each backend connection in the order the client sent them, and returns an
//! [`Answer`] that the session's writer awaits in order.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, ApiKey,
    AddOffsetsToTxnResponse, ApiVersionsResponse, EndTxnRequest, EndTxnResponse, InitProducerIdRequest,
    InitProducerIdResponse, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Encodable};

use super::partitioned::Names;
use super::session::Answer;
use super::{groups, metadata, partitioned, topics, Gateway, ProxyError};
use crate::authz::{Operation, Resource, Who};
use crate::backend::{BackendError, BrokerRef, Reply, SessionConns};
use super::routes::ClientRoutes;
use crate::codec::versions::{self, Route};
use crate::codec::{encode_response, Request, Response};
use crate::telemetry;

/// Kafka error codes Causeway produces or reacts to.
pub mod code {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
    pub const GROUP_AUTHORIZATION_FAILED: i16 = 30;
    pub const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
    pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const NOT_CONTROLLER: i16 = 41;
    pub const POLICY_VIOLATION: i16 = 44;
    pub const INVALID_TXN_STATE: i16 = 48;
    pub const OPERATION_NOT_ATTEMPTED: i16 = 55;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const FENCED_INSTANCE_ID: i16 = 82;
    pub const STALE_MEMBER_EPOCH: i16 = 113;
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
pub const GROUP: i8 = 0;
pub const TRANSACTION: i8 = 1;

/// Routes one request. `Ok(None)`: the request gets no response (acks=0 produce).
pub async fn dispatch(
    gw: &Arc<Gateway>,
    conns: &mut SessionConns,
    lanes: &Arc<super::fetch::Lanes>,
    who: &Who,
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
    let router = gw.routes_for(who, req.header.client_id.as_deref().unwrap_or(""));
    let answer = match audit.route {
        Route::ApiVersions => api_versions(gw, &req),
        // The session answers these itself.
        Route::Sasl => {
            return Err(ProxyError::Unsupported {
                api: super::session::api_key_name(req.api_key),
                version,
            })
        }
        Route::Metadata => metadata::metadata(gw, conns, &router, req).await?,
        Route::FindCoordinator => metadata::find_coordinator(gw, conns, &router, req).await?,
        Route::DescribeCluster => metadata::describe_cluster(gw, conns, &router, req).await?,
        Route::Partitioned => return partitioned::dispatch(gw, conns, lanes, &router, req).await,
        Route::Group => groups::dispatch(gw, conns, &router, req).await?,
        Route::Groups => groups::dispatch_many(gw, conns, &router, req).await?,
        Route::AllBrokers => groups::list_groups(gw, conns, &router, req).await?,
        Route::Transaction => match req.api_key {
            ApiKey::AddPartitionsToTxn => add_partitions_to_txn(gw, conns, &router, req).await?,
            _ => {
                let key = transaction_key(&req)?;
                if let Some(refused) = transaction_refused(&router, &key, &req)? {
                    return Ok(Some(ready(refused)));
                }
                let ci = router.transactional_id(&key);
                to_coordinator(gw, conns, ci, TRANSACTION, key, req).await?
            }
        },
        Route::InitProducerId => {
            let body: InitProducerIdRequest = req.decode("InitProducerId request")?;
            let allowed = match body.transactional_id.as_ref().filter(|t| !t.0.is_empty()) {
                Some(id) if !router.may(Operation::Write, Resource::TransactionalId, &id.0, "InitProducerId") => {
                    code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED
                }
                None if !router.may_be_idempotent("InitProducerId") => code::CLUSTER_AUTHORIZATION_FAILED,
                _ => 0,
            };
            if allowed != 0 {
                let out = InitProducerIdResponse::default().with_error_code(allowed).with_producer_id((-1).into()).with_producer_epoch(-1);
                let bytes = encode_response(&out, req.version(), req.response_header_version(), "InitProducerId response")?;
                return Ok(Some(ready(bytes)));
            }
            match body.transactional_id.filter(|t| !t.0.is_empty()) {
                Some(id) => {
                    let ci = router.transactional_id(&id.0);
                    to_coordinator(gw, conns, ci, TRANSACTION, id.0.to_string(), req).await?
                }
                // Idempotent producers take their ids from the default cluster;
                // other clusters get stand-ins (see `producers`).
                None if gw.backends.clusters.len() > 1 => {
                    let ci = router.default_cluster();
                    let cluster = gw.cluster(ci)?;
                    let broker = BrokerRef { cluster: ci, node: cluster.any_broker() };
                    let gw = gw.clone();
                    let edit = move |out: &mut InitProducerIdResponse, _| {
                        if out.error_code == 0 {
                            gw.producers.issued(out.producer_id.0, ci);
                        }
                    };
                    forward_rewritten(conns, broker, &req, "InitProducerId response", edit).await?
                }
                None => to_any(gw, conns, router.default_cluster(), req).await?,
            }
        }
        Route::Controller => return topics::dispatch(gw, conns, &router, req).await,
        Route::Configs => return topics::dispatch(gw, conns, &router, req).await,
        Route::AnyBroker => match super::cluster_admin::check(gw, &router, &req)? {
            Some(refused) => ready(refused),
            None => to_any(gw, conns, router.default_cluster(), req).await?,
        },
    };
    Ok(Some(answer))
}

/// An answer ready now.
fn ready(bytes: Bytes) -> Answer {
    Box::pin(async move { Ok(bytes) })
}

/// The refusal of AddOffsetsToTxn or EndTxn, if the client may not write
/// for transactional id `key` (or, adding offsets, read the group).
fn transaction_refused(router: &ClientRoutes, key: &str, req: &Request) -> Result<Option<Bytes>, ProxyError> {
    let api = super::session::api_key_name(req.api_key);
    let mut code = if router.may(Operation::Write, Resource::TransactionalId, key, api) {
        0
    } else {
        code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    };
    let (version, header) = (req.version(), req.response_header_version());
    if req.api_key == ApiKey::AddOffsetsToTxn {
        if code == 0 {
            let body: AddOffsetsToTxnRequest = req.decode("AddOffsetsToTxn request")?;
            if !router.may(Operation::Read, Resource::Group, &body.group_id.0, api) {
                code = code::GROUP_AUTHORIZATION_FAILED;
            }
        }
        if code == 0 {
            return Ok(None);
        }
        let out = AddOffsetsToTxnResponse::default().with_error_code(code);
        return Ok(Some(encode_response(&out, version, header, "AddOffsetsToTxn response")?));
    }
    if code == 0 {
        return Ok(None);
    }
    Ok(Some(encode_response(&EndTxnResponse::default().with_error_code(code), version, header, "EndTxn response")?))
}

/// Sends the client's request as it is to any broker of cluster `ci`.
pub async fn to_any(
    gw: &Gateway,
    conns: &mut SessionConns,
    ci: usize,
    req: Request,
) -> Result<Answer, ProxyError> {
    let cluster = gw.cluster(ci)?;
    let broker = BrokerRef {
        cluster: ci,
        node: cluster.any_broker(),
    };
    Ok(passthrough(conns.send(broker, req.frame).await?))
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
    // Every cluster must speak a version, since any request may reach any of them.
    // Clusters not bootstrapped yet are left out until they are.
    let known: Vec<_> = gw
        .backends
        .clusters
        .iter()
        .map(|c| c.versions())
        .filter(|v| !v.is_empty())
        .collect();
    let mut keys = Vec::new();
    'keys: for e in versions::AUDITED {
        let (mut min, mut max) = (e.min, e.max);
        if e.route == Route::Sasl && gw.sasl.is_none() {
            continue;
        }
        if e.key != ApiKey::ApiVersions && e.route != Route::Sasl {
            for backend in &known {
                let Some(&(bmin, bmax)) = backend.get(&(e.key as i16)) else {
                    continue 'keys;
                };
                min = min.max(bmin);
                max = max.min(bmax);
            }
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
pub async fn forward_rewritten<T, F>(
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

/// AddPartitionsToTxn (v0-3): the partitions must all live on the cluster the
/// transactional id is pinned to; otherwise nothing is added and the transaction
/// cannot commit, so it never half-commits across clusters.
async fn add_partitions_to_txn(
    gw: &Arc<Gateway>,
    conns: &mut SessionConns,
    router: &ClientRoutes,
    req: Request,
) -> Result<Answer, ProxyError> {
    let mut body: AddPartitionsToTxnRequest = req.decode("AddPartitionsToTxn request")?;
    let id = body.v3_and_below_transactional_id.0.to_string();
    let pinned = router.transactional_id(&id);
    let mut names = Names::default();
    let mut refused: Vec<(usize, i16)> = Vec::new();
    let id_allowed = router.may(Operation::Write, Resource::TransactionalId, &id, "AddPartitionsToTxn");
    for (i, t) in body.v3_and_below_topics.iter().enumerate() {
        if !id_allowed {
            refused.push((i, code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED));
            continue;
        }
        if !router.may(Operation::Write, Resource::Topic, &t.name.0, "AddPartitionsToTxn") {
            refused.push((i, code::TOPIC_AUTHORIZATION_FAILED));
            continue;
        }
        match router.topic(&t.name.0) {
            Some(target) if target.cluster == pinned => {
                if target.renamed() {
                    names.topics.insert(t.name.0.to_string(), target.backend.into_owned());
                }
            }
            Some(target) => {
                let (ours, theirs) = (
                    gw.cluster(pinned).map_or("?", |c| c.name.as_str()),
                    gw.cluster(target.cluster).map_or("?", |c| c.name.as_str()),
                );
                tracing::warn!(
                    transactional_id = %id,
                    topic = %t.name.0,
                    "transaction pinned to cluster '{ours}' touches a topic of cluster '{theirs}'; refused"
                );
                refused.push((i, code::INVALID_TXN_STATE));
            }
            None => refused.push((i, code::UNKNOWN_TOPIC_OR_PARTITION)),
        }
    }
    if !refused.is_empty() {
        let answer = AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(
            body.v3_and_below_topics
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let code = refused
                        .iter()
                        .find(|(r, _)| *r == i)
                        .map_or(code::OPERATION_NOT_ATTEMPTED, |(_, c)| *c);
                    AddPartitionsToTxnTopicResult::default()
                        .with_name(t.name.clone())
                        .with_results_by_partition(
                            t.partitions
                                .iter()
                                .map(|&p| {
                                    AddPartitionsToTxnPartitionResult::default()
                                        .with_partition_index(p)
                                        .with_partition_error_code(code)
                                })
                                .collect(),
                        )
                })
                .collect(),
        );
        let bytes = encode_response(&answer, req.version(), req.response_header_version(), "AddPartitionsToTxn response")?;
        return Ok(Box::pin(async move { Ok(bytes) }));
    }
    if names.topics.is_empty() {
        return to_coordinator(gw, conns, pinned, TRANSACTION, id, req).await;
    }
    for t in &mut body.v3_and_below_topics {
        names.topic(&mut t.name.0);
    }
    let frame = req.reencode(&body, "AddPartitionsToTxn request")?;
    let renamed = Request::parse(frame)?;
    let inner = to_coordinator(gw, conns, pinned, TRANSACTION, id, renamed).await?;
    let back = names.reversed();
    let (version, header) = (req.version(), req.response_header_version());
    Ok(Box::pin(async move {
        let what = "AddPartitionsToTxn response";
        let bytes = inner.await?;
        let mut out: AddPartitionsToTxnResponse = Response { frame: prefixed(&bytes) }.decode(header, version, what)?;
        for t in &mut out.results_by_topic_v3_and_below {
            back.topic(&mut t.name.0);
        }
        Ok(encode_response(&out, version, header, what)?)
    }))
}

/// An answer's bytes with a correlation id in front again, to decode them as a
/// backend response.
fn prefixed(after_correlation_id: &Bytes) -> Bytes {
    let mut out = Vec::with_capacity(after_correlation_id.len() + 4);
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(after_correlation_id);
    Bytes::from(out)
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
pub async fn to_coordinator(
    gw: &Gateway,
    conns: &mut SessionConns,
    ci: usize,
    key_type: i8,
    key: String,
    req: Request,
) -> Result<Answer, ProxyError> {
    let cluster = gw.cluster(ci)?.clone();
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

pub fn decode_kind(api: ApiKey, version: i16, resp: &Response) -> Option<ResponseKind> {
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

