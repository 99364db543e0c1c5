//! The view of the virtual cluster: Metadata, FindCoordinator and DescribeCluster.
//!
//! Metadata asks each cluster for the topics routed to it (under their backend
//! names), keeps only topics a route leads to, gives them their client-visible names,
//! and merges the answers into one cluster whose only broker is Causeway. A cluster
//! that cannot be reached answers for its topics with LEADER_NOT_AVAILABLE from the
//! last copy Causeway holds, so clients retry instead of forgetting the topics.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::metadata_response::{MetadataResponsePartition, MetadataResponseTopic};
use kafka_protocol::messages::{
    BrokerId, DescribeClusterResponse, FindCoordinatorRequest, FindCoordinatorResponse,
    MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::protocol::StrBytes;

use super::handlers::{await_reply, code, forward_rewritten, GROUP};
use super::session::Answer;
use super::{rewrite, Gateway, ProxyError};
use crate::backend::{BrokerRef, Cluster, Lane, Reply, SessionConns};
use crate::codec::{encode_response, Request};
use super::routes::ClientRoutes;
use crate::authz::{Operation, Resource};

/// What one cluster is asked in a Metadata request.
struct Ask {
    /// `None`: every topic.
    topics: Option<Vec<MetadataRequestTopic>>,
    /// Backend name to client name, for the topics asked by name.
    names: HashMap<String, String>,
}

pub async fn metadata(
    gw: &Arc<Gateway>,
    conns: &mut SessionConns,
    router: &ClientRoutes,
    req: Request,
) -> Result<Answer, ProxyError> {
    let mut body: MetadataRequest = req.decode("Metadata request")?;
    // Auto-creation is the backend's, under the gateway's identity: with
    // authorization, only a client allowed to create every topic it names
    // may have them created.
    let mut no_auto_create = false;
    if router.authorizes() && body.allow_auto_topic_creation {
        let names = body.topics.iter().flatten().filter_map(|t| t.name.as_ref());
        if !names.into_iter().all(|n| router.may(Operation::Create, Resource::Topic, &n.0, "Metadata")) {
            body.allow_auto_topic_creation = false;
            no_auto_create = true;
        }
    }
    let all = match &body.topics {
        None => true,
        Some(t) => t.is_empty() && req.version() == 0,
    };
    let mut asks: BTreeMap<usize, Ask> = BTreeMap::new();
    // Topics answered by Causeway itself: (name or id, error code).
    let mut local: Vec<MetadataResponseTopic> = Vec::new();
    if all {
        for ci in 0..gw.backends.clusters.len() {
            asks.insert(ci, Ask { topics: None, names: HashMap::new() });
        }
    } else {
        for t in body.topics.iter().flatten() {
            let (ci, backend, client) = match &t.name {
                Some(name) if !router.may(Operation::Describe, Resource::Topic, &name.0, "Metadata") => {
                    local.push(
                        MetadataResponseTopic::default()
                            .with_name(Some(name.clone()))
                            .with_error_code(code::TOPIC_AUTHORIZATION_FAILED),
                    );
                    continue;
                }
                Some(name) => match router.topic(&name.0) {
                    Some(target) => (target.cluster, target.backend.to_string(), name.0.to_string()),
                    None => {
                        local.push(
                            MetadataResponseTopic::default()
                                .with_name(Some(name.clone()))
                                .with_error_code(code::UNKNOWN_TOPIC_OR_PARTITION),
                        );
                        continue;
                    }
                },
                None => {
                    let found = gw.backends.clusters.iter().enumerate().find_map(|(ci, c)| {
                        let name = c.topic_name(&t.topic_id)?;
                        let client = router.client_name(ci, &name)?.into_owned();
                        Some((ci, name, client))
                    });
                    match found {
                        Some(x) => x,
                        None => {
                            local.push(
                                MetadataResponseTopic::default()
                                    .with_topic_id(t.topic_id)
                                    .with_error_code(code::UNKNOWN_TOPIC_ID),
                            );
                            continue;
                        }
                    }
                }
            };
            let ask = asks.entry(ci).or_insert_with(|| Ask {
                topics: Some(Vec::new()),
                names: HashMap::new(),
            });
            if let Some(list) = &mut ask.topics {
                list.push(
                    MetadataRequestTopic::default()
                        .with_topic_id(t.topic_id)
                        .with_name(Some(TopicName(StrBytes::from_string(backend.clone())))),
                );
            }
            ask.names.insert(backend, client);
        }
    }
    let mut sent: Vec<(usize, Ask, Option<Reply>)> = Vec::new();
    let single = asks.len() == 1 && local.is_empty();
    for (ci, ask) in asks {
        let cluster = gw.cluster(ci)?.clone();
        let reply = if cluster.is_ready() || gw.backends.clusters.len() == 1 {
            let broker = BrokerRef { cluster: ci, node: cluster.any_broker() };
            let frame = if single && !no_auto_create && ask.names.iter().all(|(b, c)| b == c) {
                req.frame.clone()
            } else {
                let mut sub = body.clone();
                sub.topics.clone_from(&ask.topics);
                if all && req.version() == 0 {
                    sub.topics = Some(Vec::new());
                }
                req.reencode(&sub, "Metadata request")?
            };
            match conns.send_safe(broker, Lane::General, frame).await {
                Ok(reply) => Some(reply),
                Err(e) if gw.backends.clusters.len() == 1 => return Err(e.into()),
                Err(_) => None,
            }
        } else {
            None
        };
        sent.push((ci, ask, reply));
    }
    let (version, header) = (req.version(), req.response_header_version());
    let gw = gw.clone();
    let router = router.clone();
    let (topic_ops, cluster_ops) = (body.include_topic_authorized_operations, body.include_cluster_authorized_operations);
    Ok(Box::pin(async move {
        let what = "Metadata response";
        let mut acc = MetadataResponse::default();
        let mut first = true;
        for (ci, ask, reply) in sent {
            let Some(cluster) = gw.backends.cluster(ci).cloned() else { continue };
            let part = match reply {
                Some(reply) => match await_reply(reply).await {
                    Ok(resp) => Some(resp.decode::<MetadataResponse>(header, version, what)?),
                    Err(e) if gw.backends.clusters.len() == 1 => return Err(e),
                    Err(e) => {
                        tracing::warn!(cluster = %cluster.name, error = %e, "metadata request failed");
                        None
                    }
                },
                None => None,
            };
            let Some(mut part) = part else {
                acc.topics.extend(unreachable_topics(&cluster, ci, &ask, &router));
                continue;
            };
            cluster.absorb_metadata(&part, ask.topics.is_none());
            if first {
                acc.cluster_id = part.cluster_id.take();
                acc.cluster_authorized_operations = part.cluster_authorized_operations;
                acc.error_code = part.error_code;
                first = false;
            }
            acc.throttle_time_ms = acc.throttle_time_ms.max(part.throttle_time_ms);
            // Every topic: which this client sees, and as what (one question
            // to a router plugin for the lot).
            let listed: Vec<Option<String>> = if ask.topics.is_none() {
                let backends: Vec<&str> = part.topics.iter().filter_map(|t| t.name.as_ref()).map(|n| n.0.as_str()).collect();
                router.client_names(ci, &backends).into_iter().map(|c| c.map(|c| c.into_owned())).collect()
            } else {
                Vec::new()
            };
            let mut listed = listed.into_iter();
            for mut t in part.topics {
                let Some(name) = &t.name else {
                    acc.topics.push(t);
                    continue;
                };
                let client = if ask.topics.is_none() {
                    listed.next().flatten()
                } else {
                    ask.names.get(name.0.as_str()).cloned()
                };
                let Some(client) = client else { continue };
                if client != name.0.as_str() {
                    t.name = Some(TopicName(StrBytes::from_string(client)));
                }
                acc.topics.push(t);
            }
        }
        acc.topics.extend(local);
        // Authorized operations are the gateway's to say, not the backend's
        // (which would describe the gateway's own login).
        if router.authorizes() {
            for t in acc.topics.iter_mut().filter(|_| topic_ops && version >= 8) {
                if t.error_code == 0 {
                    let name = t.name.as_ref().map_or("", |n| n.0.as_str());
                    t.topic_authorized_operations = router.authorized_operations(Resource::Topic, name).unwrap_or(i32::MIN);
                }
            }
            if cluster_ops && (8..=10).contains(&version) {
                acc.cluster_authorized_operations =
                    router.authorized_operations(Resource::Cluster, "kafka-cluster").unwrap_or(i32::MIN);
            }
        }
        let backend_id = (gw.backends.clusters.len() == 1)
            .then(|| gw.backends.clusters.first().and_then(|c| c.cluster_id()))
            .flatten();
        if acc.cluster_id.is_none() && version >= 2 {
            acc.cluster_id = backend_id.clone().map(StrBytes::from_string);
        }
        rewrite::metadata(&mut acc, &gw, backend_id);
        if version < 2 {
            acc.cluster_id = None;
        }
        Ok(encode_response(&acc, version, header, what)?)
    }))
}

/// The topics of a cluster that did not answer, from the last copy, each with a
/// retriable error.
fn unreachable_topics(cluster: &Cluster, ci: usize, ask: &Ask, router: &ClientRoutes) -> Vec<MetadataResponseTopic> {
    let snapshot = cluster.snapshot();
    let entry = |client: String, backend: &str| {
        let info = snapshot.topics.get(backend);
        MetadataResponseTopic::default()
            .with_name(Some(TopicName(StrBytes::from_string(client))))
            .with_topic_id(info.map(|i| i.id).unwrap_or_default())
            .with_error_code(code::LEADER_NOT_AVAILABLE)
            .with_partitions(
                info.map(|i| {
                    (0..i.leaders.len() as i32)
                        .map(|p| {
                            MetadataResponsePartition::default()
                                .with_partition_index(p)
                                .with_error_code(code::LEADER_NOT_AVAILABLE)
                                .with_leader_id(BrokerId(-1))
                        })
                        .collect()
                })
                .unwrap_or_default(),
            )
    };
    match &ask.topics {
        None => {
            let backends: Vec<&str> = snapshot.topics.keys().map(String::as_str).collect();
            let shown = router.client_names(ci, &backends);
            backends
                .iter()
                .zip(shown)
                .filter_map(|(b, c)| Some(entry(c?.into_owned(), b)))
                .collect()
        }
        Some(_) => ask.names.iter().map(|(b, c)| entry(c.clone(), b)).collect(),
    }
}

/// FindCoordinator: a group's coordinator is on its home cluster, a transactional
/// id's on the cluster it is pinned to. Either way the client is told Causeway.
pub async fn find_coordinator(
    gw: &Arc<Gateway>,
    conns: &mut SessionConns,
    router: &ClientRoutes,
    req: Request,
) -> Result<Answer, ProxyError> {
    let body: FindCoordinatorRequest = req.decode("FindCoordinator request")?;
    let home = |key: &str| {
        if body.key_type == GROUP {
            router.group(key)
        } else {
            router.transactional_id(key)
        }
    };
    let (resource, refused) = if body.key_type == GROUP {
        (Resource::Group, code::GROUP_AUTHORIZATION_FAILED)
    } else {
        (Resource::TransactionalId, code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
    };
    let allowed = |key: &str| router.may(Operation::Describe, resource, key, "FindCoordinator");
    if req.version() < 4 {
        if !allowed(&body.key) {
            let out = FindCoordinatorResponse::default().with_error_code(refused).with_node_id(BrokerId(-1));
            let bytes = encode_response(&out, req.version(), req.response_header_version(), "FindCoordinator response")?;
            return Ok(Box::pin(async move { Ok(bytes) }));
        }
        let ci = home(&body.key);
        let cluster = gw.cluster(ci)?.clone();
        if !cluster.is_ready() && gw.backends.clusters.len() > 1 {
            let out = FindCoordinatorResponse::default()
                .with_error_code(code::COORDINATOR_NOT_AVAILABLE)
                .with_error_message(Some(StrBytes::from_string(format!("cluster '{}' is unreachable", cluster.name))))
                .with_node_id(BrokerId(-1));
            let bytes = encode_response(&out, req.version(), req.response_header_version(), "FindCoordinator response")?;
            return Ok(Box::pin(async move { Ok(bytes) }));
        }
        let broker = BrokerRef { cluster: ci, node: cluster.any_broker() };
        let gw = gw.clone();
        let edit = move |out: &mut FindCoordinatorResponse, version| {
            if out.error_code == 0 {
                cluster.learn_coordinator(body.key_type, &body.key, out.node_id.0, &out.host, out.port);
            }
            rewrite::find_coordinator(out, &gw, version);
        };
        return forward_rewritten(conns, broker, &req, "FindCoordinator response", edit).await;
    }
    // v4+: several keys, perhaps on several clusters.
    let mut by_cluster: BTreeMap<usize, Vec<StrBytes>> = BTreeMap::new();
    let mut denied: Vec<StrBytes> = Vec::new();
    for key in &body.coordinator_keys {
        if allowed(key) {
            by_cluster.entry(home(key)).or_default().push(key.clone());
        } else {
            denied.push(key.clone());
        }
    }
    let mut sent = Vec::new();
    let mut down: Vec<(StrBytes, String)> = Vec::new();
    for (ci, keys) in by_cluster {
        let cluster = gw.cluster(ci)?.clone();
        let reply = if cluster.is_ready() || gw.backends.clusters.len() == 1 {
            let mut sub = body.clone();
            sub.coordinator_keys.clone_from(&keys);
            let frame = req.reencode(&sub, "FindCoordinator request")?;
            conns.send(BrokerRef { cluster: ci, node: cluster.any_broker() }, frame).await.ok()
        } else {
            None
        };
        match reply {
            Some(r) => sent.push((cluster, keys, r)),
            None => down.extend(keys.into_iter().map(|k| (k, cluster.name.clone()))),
        }
    }
    let (version, header) = (req.version(), req.response_header_version());
    let key_type = body.key_type;
    let gw = gw.clone();
    Ok(Box::pin(async move {
        let what = "FindCoordinator response";
        let mut acc = FindCoordinatorResponse::default();
        for (cluster, keys, reply) in sent {
            match await_reply(reply).await {
                Ok(resp) => {
                    let out: FindCoordinatorResponse = resp.decode(header, version, what)?;
                    acc.throttle_time_ms = acc.throttle_time_ms.max(out.throttle_time_ms);
                    for c in out.coordinators.iter().filter(|c| c.error_code == 0) {
                        cluster.learn_coordinator(key_type, &c.key, c.node_id.0, &c.host, c.port);
                    }
                    acc.coordinators.extend(out.coordinators);
                }
                Err(_) => down.extend(keys.into_iter().map(|k| (k, cluster.name.clone()))),
            }
        }
        for key in denied {
            acc.coordinators.push(
                Coordinator::default().with_key(key).with_node_id(BrokerId(-1)).with_error_code(refused),
            );
        }
        for (key, cluster) in down {
            acc.coordinators.push(
                Coordinator::default()
                    .with_key(key)
                    .with_node_id(BrokerId(-1))
                    .with_error_code(code::COORDINATOR_NOT_AVAILABLE)
                    .with_error_message(Some(StrBytes::from_string(format!("cluster '{cluster}' is unreachable")))),
            );
        }
        rewrite::find_coordinator(&mut acc, &gw, version);
        Ok(encode_response(&acc, version, header, what)?)
    }))
}

/// DescribeCluster: asked of the default cluster, answered as Causeway.
pub async fn describe_cluster(
    gw: &Arc<Gateway>,
    conns: &mut SessionConns,
    router: &ClientRoutes,
    req: Request,
) -> Result<Answer, ProxyError> {
    let ci = router.default_cluster();
    let cluster = gw.cluster(ci)?.clone();
    let broker = BrokerRef { cluster: ci, node: cluster.any_broker() };
    let gw = gw.clone();
    let single = gw.backends.clusters.len() == 1;
    let ops = router.authorized_operations(Resource::Cluster, "kafka-cluster");
    let asked = req
        .decode::<kafka_protocol::messages::DescribeClusterRequest>("DescribeCluster request")?
        .include_cluster_authorized_operations;
    let edit = move |out: &mut DescribeClusterResponse, _| {
        let backend = single.then(|| cluster.cluster_id()).flatten();
        rewrite::describe_cluster(out, &gw, backend);
        if let Some(ops) = ops.filter(|_| asked) {
            out.cluster_authorized_operations = ops;
        }
    };
    forward_rewritten(conns, broker, &req, "DescribeCluster response", edit).await
}
