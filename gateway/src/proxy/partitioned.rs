//! Partition-routed requests: Produce, Fetch, ListOffsets, OffsetForLeaderEpoch and
//! DeleteRecords.
//!
//! Causeway leads every partition as far as clients know, so one client request may
//! name partitions whose backend leaders differ. The request is split by leader, each
//! part goes to its broker over the session's connection to it, and the answers are
//! merged. When every partition has the same leader the client's original frame is
//! forwarded untouched, and when the answer needs no rewriting it goes back
//! untouched too: record batches are never copied or decompressed on that path.
//!
//! A part whose backend connection fails is answered, for its partitions only, with
//! NOT_LEADER_OR_FOLLOWER: the client refreshes metadata and retries, as it would
//! after losing a broker, while the other partitions' answers are kept.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kafka_protocol::messages::{
    ApiKey, BrokerId, DeleteRecordsRequest, DeleteRecordsResponse, FetchRequest, FetchResponse,
    ListOffsetsRequest, ListOffsetsResponse, OffsetForLeaderEpochRequest, ProducerId,
    OffsetForLeaderEpochResponse, ProduceRequest, ProduceResponse,
};
use kafka_protocol::messages::{delete_records_response, fetch_response, list_offsets_response};
use kafka_protocol::messages::{offset_for_leader_epoch_response, produce_response};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use uuid::Uuid;

use super::handlers::{await_reply, code};
use super::session::Answer;
use super::{Gateway, ProxyError};
use crate::backend::{BrokerRef, Cluster, Lane, SessionConns};
use crate::codec::{batches, encode_response, Request};
use super::routes::ClientRoutes;
use crate::authz::{Operation, Resource};

/// How a request names a topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TopicKey {
    Name(String),
    Id(Uuid),
    /// Not about a topic (a broker config, say): the default cluster takes it.
    Default,
}

/// (topic index, partition index) positions within a request.
pub type Positions = Vec<(usize, usize)>;

/// Which broker of its cluster a part of a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The partition's leader.
    Leader,
    /// The controller (topic creation and deletion, partition changes).
    Controller,
    /// Any broker.
    Any,
}

/// Names as one backend knows them, for the part of a request sent there.
#[derive(Debug, Default)]
pub struct Names {
    /// Client-visible topic name to backend name, only where they differ.
    pub topics: HashMap<String, String>,
    /// Causeway's node id and the backend broker's, for broker resources.
    pub node: Option<(String, String)>,
}

impl Names {
    /// The reverse mapping, for the answer.
    pub fn reversed(&self) -> Self {
        Self {
            topics: self.topics.iter().map(|(a, b)| (b.clone(), a.clone())).collect(),
            node: self.node.as_ref().map(|(a, b)| (b.clone(), a.clone())),
        }
    }

    /// Renames a topic in place; whether it changed.
    pub fn topic(&self, name: &mut StrBytes) -> bool {
        match self.topics.get(name.as_str()) {
            Some(to) => {
                *name = StrBytes::from_string(to.clone());
                true
            }
            None => false,
        }
    }

    /// Renames a broker resource in place; whether it changed.
    pub fn broker(&self, name: &mut StrBytes) -> bool {
        match &self.node {
            Some((from, to)) if name.as_str() == from => {
                *name = StrBytes::from_string(to.clone());
                true
            }
            _ => false,
        }
    }
}

/// Positions a record filter settled without the backend: each with the error
/// code of its answer (POLICY_VIOLATION for a rejected batch, 0 for one whose
/// records were all dropped) and the message.
pub type Rejected = Vec<((usize, usize), i16, String)>;

/// What the split-and-merge machinery needs from one partition-routed API.
pub trait Split: Decodable + Encodable + Sized + Send + 'static {
    type Resp: Decodable + Encodable + Default + Send;
    const WHAT: &'static str;
    const RESP_WHAT: &'static str;
    /// Which broker takes each part.
    const PLACE: Place = Place::Leader;
    /// The error for a topic no route leads to.
    const NO_ROUTE: i16 = code::UNKNOWN_TOPIC_OR_PARTITION;
    /// The error for partitions whose backend cannot be reached: retriable.
    const UNREACHABLE: i16 = code::NOT_LEADER_OR_FOLLOWER;
    /// What the client must be allowed to do to each topic (and to the
    /// cluster for a broker's config); `None`: nothing per topic.
    const OPERATION: Option<Operation>;
    /// What the client must be allowed to do to the cluster for the whole
    /// request, if anything.
    const CLUSTER_OPERATION: Option<Operation> = None;

    /// The topics in request order, each with its partition ids in order.
    fn keys(&self) -> Vec<(TopicKey, Vec<i32>)>;
    /// A copy holding only `keep`.
    fn subset(&self, keep: &Positions) -> Self;
    /// Adds `part`'s topics and partitions to `acc`.
    fn merge(acc: &mut Self::Resp, part: Self::Resp);
    /// An answer for `keep` in which every partition carries `code`.
    fn failed(&self, keep: &Positions, code: i16) -> Self::Resp;
    /// The answer when the whole request is refused with `code`.
    fn refused(&self, code: i16) -> Self::Resp {
        let all: Positions =
            self.keys().iter().enumerate().flat_map(|(ti, (_, ps))| (0..ps.len()).map(move |pi| (ti, pi))).collect();
        self.failed(&all, code)
    }
    /// Like [`Split::failed`], with a message where the API carries one.
    fn failed_with(&self, keep: &Positions, code: i16, _message: &str) -> Self::Resp {
        self.failed(keep, code)
    }
    /// Whether the answer reports leaders that moved.
    fn leaders_moved(resp: &Self::Resp) -> bool;
    /// Renames topics (and broker resources) to the backend's names; whether
    /// anything changed.
    fn rename(&mut self, _names: &Names) -> bool {
        false
    }
    /// Renames an answer's topics back to the client's names.
    fn rename_back(_resp: &mut Self::Resp, _names: &Names) {}
    /// Whether [`Split::rename`] may change something even with no topic renamed.
    fn renames_brokers(&self) -> bool {
        false
    }
    /// Replaces leader hints with Causeway's node and completes what the backend
    /// left out; whether anything changed.
    fn rewrite(&self, _resp: &mut Self::Resp, _gw: &Gateway) -> bool {
        false
    }
    /// Whether the client's frame must be re-encoded even when it is not split.
    fn prepare(&mut self, _version: i16) -> bool {
        false
    }
    /// Whether the backend will answer.
    fn expects_response(&self) -> bool {
        true
    }
    /// Drops what refers into the client's frame (record data) once the request
    /// is sent, so the read buffer can be reused while the answer is awaited.
    fn release(&mut self) {}
    /// The transactional id the request writes for, if any.
    fn transactional_id(&self) -> Option<&str> {
        None
    }
    /// Runs the record filters over the batches, but for positions in `skip`
    /// (answered by the gateway): whether records changed, and the positions
    /// whose batches a filter rejected, with its message.
    fn run_filters(&mut self, _gw: &Gateway, _routes: &ClientRoutes, _skip: &Positions) -> (bool, Rejected) {
        (false, Vec::new())
    }
    /// Runs the record filters over an answer's records (fetch); whether
    /// anything changed.
    fn filter_answer(_resp: &mut Self::Resp, _gw: &Gateway, _routes: &ClientRoutes) -> bool {
        false
    }
    /// Removes what the answer's version cannot carry (error messages, say).
    fn fit_version(_resp: &mut Self::Resp, _version: i16) {}
    /// The idempotent (not transactional) producer id and epoch of the batches.
    fn idempotent_producer(&self) -> Option<(i64, i16)> {
        None
    }
    /// Replaces the producer id and epoch of every batch; whether all were whole.
    fn set_producer(&mut self, _id: (i64, i16)) -> bool {
        true
    }
    /// Removes from an answer what the client may not see (with authorization
    /// on); whether anything changed.
    fn authorize_answer(_resp: &mut Self::Resp, _routes: &ClientRoutes) -> bool {
        false
    }
    /// Whether the request may go out again on a new backend connection when
    /// its own is lost before the answer (see [`SessionConns::send_safe`]).
    fn resend(&self) -> bool {
        false
    }
    /// Whether the request writes records or deletes them: refused on a mirror
    /// topic until it is promoted or failed over.
    const WRITES: bool = false;
    /// Moves the offsets of mirror partitions in this request (in backend names)
    /// from the client's numbering (the source's) to the destination's, by each
    /// partition's shift (`None`: not a mirror); whether anything changed.
    fn mirror_request(&mut self, _shift: &dyn Fn(&TopicKey, i32) -> Option<i64>) -> bool {
        false
    }
    /// Moves an answer's offsets back to the client's numbering; whether anything
    /// changed.
    fn mirror_answer(_resp: &mut Self::Resp, _shift: &dyn Fn(&TopicKey, i32) -> Option<i64>) -> bool {
        false
    }
}

/// The shift of a partition of cluster `ci` if its topic (backend name or id) is a
/// mirror.
pub fn shift_of(gw: &Gateway, ci: usize) -> impl Fn(&TopicKey, i32) -> Option<i64> + '_ {
    move |key, partition| {
        let view = match key {
            TopicKey::Name(n) => gw.mirrors.get(ci, n)?,
            TopicKey::Id(id) => gw.mirrors.get(ci, &gw.backends.cluster(ci)?.topic_name(id)?)?,
            TopicKey::Default => return None,
        };
        Some(view.shift(partition))
    }
}

/// `offset` moved by `by` where it is an offset (not -1 for "none").
pub fn moved(offset: i64, by: i64) -> i64 {
    if offset >= 0 {
        offset.saturating_add(by).max(0)
    } else {
        offset
    }
}

/// Routes a partition-routed request.
pub async fn dispatch(
    gw: &Arc<Gateway>,
    conns: &mut SessionConns,
    lanes: &Arc<super::fetch::Lanes>,
    router: &ClientRoutes,
    req: Request,
) -> Result<Option<super::session::Answer>, ProxyError> {
    match req.api_key {
        ApiKey::Produce => route::<ProduceRequest>(gw, conns, router, req).await,
        // Fetches are asked for ahead (see fetch.rs), and parts of a split fetch
        // must not wait for each other. Without either, a fetch to one broker
        // is routed like any partitioned request.
        ApiKey::Fetch if gw.fetch_read_ahead || gw.backends.clusters.len() > 1 || gw.backends.clusters.iter().any(|c| c.broker_count() > 1) => {
            super::fetch::route(gw, conns, lanes, router, req).await
        }
        ApiKey::Fetch => route::<FetchRequest>(gw, conns, router, req).await,
        ApiKey::ListOffsets => route::<ListOffsetsRequest>(gw, conns, router, req).await,
        ApiKey::OffsetForLeaderEpoch => {
            route::<OffsetForLeaderEpochRequest>(gw, conns, router, req).await
        }
        _ => route::<DeleteRecordsRequest>(gw, conns, router, req).await,
    }
}

/// Where each part of a request goes.
#[derive(Debug, Default)]
pub struct Plan {
    /// Positions per backend broker.
    pub brokers: BTreeMap<BrokerRef, Positions>,
    /// Positions answered by Causeway itself, with the error code and a message.
    pub local: Vec<(i16, String, Positions)>,
    /// Renamed topics per cluster.
    pub renames: HashMap<usize, HashMap<String, String>>,
    /// Clusters a mirror topic of this request lives on.
    pub mirrored: std::collections::HashSet<usize>,
    /// Topics (by index) that are mirrors clients may not write yet, with the
    /// mirror's name.
    pub read_only: HashMap<usize, String>,
}

impl Plan {
    pub fn fail(&mut self, code: i16, message: String, at: (usize, usize)) {
        match self.local.iter_mut().find(|(c, m, _)| *c == code && *m == message) {
            Some((_, _, keep)) => keep.push(at),
            None => self.local.push((code, message, vec![at])),
        }
    }

    /// Moves the positions of read-only mirror topics to Causeway's own answers.
    pub fn refuse_mirror_writes(&mut self) {
        if self.read_only.is_empty() {
            return;
        }
        let mut refused: Vec<((usize, usize), String)> = Vec::new();
        for keep in self.brokers.values_mut() {
            keep.retain(|at| match self.read_only.get(&at.0) {
                Some(mirror) => {
                    refused.push((*at, mirror.clone()));
                    false
                }
                None => true,
            });
        }
        self.brokers.retain(|_, keep| !keep.is_empty());
        for (at, mirror) in refused {
            self.fail(
                code::POLICY_VIOLATION,
                format!("topic '{mirror}' is a read-only mirror until it is promoted or failed over"),
                at,
            );
        }
    }

    /// The backend names for the part going to `cluster`.
    pub fn names(&self, broker: BrokerRef, gw_node: i32) -> Names {
        Names {
            topics: self.renames.get(&broker.cluster).cloned().unwrap_or_default(),
            node: Some((gw_node.to_string(), broker.node.to_string())),
        }
    }
}

/// Finds the cluster, backend name and broker of every partition in `keys`.
///
/// Each topic is authorized for `op` first (under its client name), and the
/// partitions of one the client may not use get TOPIC_AUTHORIZATION_FAILED.
#[allow(clippy::too_many_arguments)]
pub async fn plan(
    gw: &Gateway,
    router: &ClientRoutes,
    keys: &[(TopicKey, Vec<i32>)],
    place: Place,
    no_route: i16,
    unreachable: i16,
    op: Option<Operation>,
    api: &str,
) -> Plan {
    let denied = |out: &mut Plan, ti: usize, n: usize| {
        for pi in 0..n {
            out.fail(code::TOPIC_AUTHORIZATION_FAILED, "Topic authorization failed.".into(), (ti, pi));
        }
    };
    let mut refreshed = false;
    loop {
        let mut out = Plan::default();
        // Topics whose partitions are not known yet, per cluster; None: ask for all.
        let mut unknown: BTreeMap<usize, Option<Vec<String>>> = BTreeMap::new();
        for (ti, (topic, partitions)) in keys.iter().enumerate() {
            let (ci, backend) = match topic {
                TopicKey::Name(n) if op.is_some_and(|op| !router.may(op, Resource::Topic, n, api)) => {
                    denied(&mut out, ti, partitions.len());
                    continue;
                }
                TopicKey::Name(n) => match router.topic(n) {
                    Some(t) => {
                        if t.renamed() {
                            out.renames.entry(t.cluster).or_default().insert(n.clone(), t.backend.to_string());
                        }
                        (t.cluster, Some(t.backend.into_owned()))
                    }
                    None => {
                        for pi in 0..partitions.len() {
                            out.fail(no_route, format!("Causeway has no route for topic '{n}'"), (ti, pi));
                        }
                        continue;
                    }
                },
                TopicKey::Id(id) => match find_id(gw, router, id) {
                    Some((_, _, client)) if op.is_some_and(|op| !router.may(op, Resource::Topic, &client, api)) => {
                        denied(&mut out, ti, partitions.len());
                        continue;
                    }
                    Some((ci, name, _)) => (ci, Some(name)),
                    None if refreshed => {
                        for pi in 0..partitions.len() {
                            out.fail(code::UNKNOWN_TOPIC_ID, format!("unknown topic id {id}"), (ti, pi));
                        }
                        continue;
                    }
                    None => {
                        for ci in 0..gw.backends.clusters.len() {
                            unknown.insert(ci, None);
                        }
                        continue;
                    }
                },
                // A broker's config: the cluster's to allow.
                TopicKey::Default if op.is_some_and(|op| !router.may_cluster(op, api)) => {
                    for pi in 0..partitions.len() {
                        out.fail(code::CLUSTER_AUTHORIZATION_FAILED, "Cluster authorization failed.".into(), (ti, pi));
                    }
                    continue;
                }
                TopicKey::Default => (router.default_cluster(), None),
            };
            if let (Some(name), false) = (&backend, gw.mirrors.is_empty()) {
                if let Some(view) = gw.mirrors.get(ci, name) {
                    out.mirrored.insert(ci);
                    if !view.writable {
                        out.read_only.insert(ti, view.mirror.clone());
                    }
                }
            }
            let Some(cluster) = gw.backends.cluster(ci) else { continue };
            if !cluster.is_ready() {
                for pi in 0..partitions.len() {
                    out.fail(unreachable, format!("cluster '{}' is unreachable", cluster.name), (ti, pi));
                }
                continue;
            }
            for (pi, &p) in partitions.iter().enumerate() {
                let node = match (place, &backend) {
                    (Place::Leader, Some(name)) => match cluster.leader(name, p) {
                        Some(leader) => leader,
                        None if refreshed => cluster.any_broker(),
                        None => {
                            match unknown.entry(ci).or_insert_with(|| Some(Vec::new())) {
                                Some(list) if !list.contains(name) => list.push(name.clone()),
                                _ => {}
                            }
                            cluster.any_broker()
                        }
                    },
                    (Place::Controller, _) => cluster.controller(),
                    _ => cluster.any_broker(),
                };
                out.brokers.entry(BrokerRef { cluster: ci, node }).or_default().push((ti, pi));
            }
        }
        if unknown.is_empty() || refreshed {
            for c in &gw.backends.clusters {
                if c.is_ready() && c.needs_refresh() {
                    refresh_in_background(c.clone());
                }
            }
            return out;
        }
        // Partitions Causeway has not seen: learn them now, then route again.
        // Whatever is still unknown goes to any broker, which answers the proper error.
        for (ci, topics) in unknown {
            if let Some(cluster) = gw.backends.cluster(ci) {
                if let Err(e) = cluster.refresh(topics).await {
                    tracing::debug!(cluster = %cluster.name, error = %e, "metadata refresh failed");
                }
            }
        }
        refreshed = true;
    }
}

/// The cluster, backend name and client name of a topic id clients may see.
fn find_id(gw: &Gateway, router: &ClientRoutes, id: &Uuid) -> Option<(usize, String, String)> {
    gw.backends.clusters.iter().enumerate().find_map(|(ci, c)| {
        let name = c.topic_name(id)?;
        let client = router.client_name(ci, &name)?.into_owned();
        Some((ci, name, client))
    })
}

fn refresh_in_background(cluster: Arc<Cluster>) {
    if !cluster.begin_background_refresh() {
        return;
    }
    tokio::spawn(async move {
        if let Err(e) = cluster.refresh(None).await {
            tracing::debug!(cluster = %cluster.name, error = %e, "background metadata refresh failed");
        }
        cluster.end_background_refresh();
    });
}

/// Splits a request by backend broker, sends the parts, and merges the answers.
pub async fn route<T: Split>(
    gw: &Arc<Gateway>,
    conns: &mut SessionConns,
    router: &ClientRoutes,
    req: Request,
) -> Result<Option<Answer>, ProxyError> {
    let mut body: T = req.decode(T::WHAT)?;
    let mut changed = body.prepare(req.version());
    let keys = body.keys();
    let refused = match (body.transactional_id(), T::CLUSTER_OPERATION) {
        (Some(id), _) if !router.may(Operation::Write, Resource::TransactionalId, id, T::WHAT) => {
            Some(code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
        }
        (_, Some(op)) if !router.may_cluster(op, T::WHAT) => Some(code::CLUSTER_AUTHORIZATION_FAILED),
        _ => None,
    };
    if let Some(code) = refused {
        let mut answer = body.refused(code);
        T::fit_version(&mut answer, req.version());
        let bytes = encode_response(&answer, req.version(), req.response_header_version(), T::RESP_WHAT)?;
        return Ok(body.expects_response().then(|| Box::pin(async move { Ok(bytes) }) as Answer));
    }
    let mut plan = plan(gw, router, &keys, T::PLACE, T::NO_ROUTE, T::UNREACHABLE, T::OPERATION, T::WHAT).await;
    if T::WRITES {
        plan.refuse_mirror_writes();
    }
    let rejected = if gw.filters.is_empty() {
        Vec::new()
    } else {
        let skip: Positions = plan.local.iter().flat_map(|(_, _, keep)| keep.iter().copied()).collect();
        let (filtered, rejected) = body.run_filters(gw, router, &skip);
        changed |= filtered;
        rejected
    };
    for (at, code, message) in rejected {
        for keep in plan.brokers.values_mut() {
            keep.retain(|p| *p != at);
        }
        for (_, _, keep) in &mut plan.local {
            keep.retain(|p| *p != at);
        }
        plan.fail(code, message, at);
    }
    plan.brokers.retain(|_, keep| !keep.is_empty());
    plan.local.retain(|(_, _, keep)| !keep.is_empty());
    let expects = body.expects_response();

    // Batches of an idempotent producer bound for a cluster other than the one
    // that issued its id carry that cluster's stand-in id instead.
    let producer = if gw.backends.clusters.len() > 1 { body.idempotent_producer() } else { None };
    let origin = producer.map(|(id, _)| gw.producers.origin(id).unwrap_or(router.default_cluster()));

    let mut sent = Vec::with_capacity(plan.brokers.len());
    let mut local: Vec<(i16, String, Positions)> = plan.local.clone();
    let single = plan.brokers.len() == 1 && local.is_empty();
    if plan.brokers.is_empty() && local.is_empty() {
        // No partitions at all: a broker of the default cluster answers the empty request.
        let ci = router.default_cluster();
        let cluster = gw.cluster(ci)?;
        let broker = BrokerRef { cluster: ci, node: cluster.any_broker() };
        let frame = if changed { req.reencode(&body, T::WHAT)? } else { req.frame.clone() };
        if !expects {
            let _ = conns.send_oneway(broker, frame).await;
            return Ok(None);
        }
        match conns.send(broker, frame).await {
            Ok(reply) => sent.push((broker, Positions::new(), Names::default(), reply, false)),
            Err(e) => return Err(e.into()),
        }
    }
    for (broker, keep) in &plan.brokers {
        let names = plan.names(*broker, gw.node_id);
        let mut renamed = false;
        let stand_in = match (producer, origin) {
            (Some((id, epoch)), Some(from)) if from != broker.cluster => {
                let cluster = gw.cluster(broker.cluster)?;
                match gw.producers.on_cluster(broker.cluster, cluster, id, epoch).await {
                    Ok(x) => Some(x),
                    Err(e) => {
                        tracing::warn!(cluster = %cluster.name, error = %e, "no producer id on this cluster");
                        local.push((T::UNREACHABLE, format!("cluster '{}' gave no producer id", cluster.name), keep.clone()));
                        continue;
                    }
                }
            }
            _ => None,
        };
        let mirrored = plan.mirrored.contains(&broker.cluster);
        let frame = if single && !changed && names.topics.is_empty() && !body.renames_brokers() && stand_in.is_none() && !mirrored {
            req.frame.clone()
        } else {
            let mut part = body.subset(keep);
            renamed = part.rename(&names);
            if mirrored {
                part.mirror_request(&shift_of(gw, broker.cluster));
            }
            if let Some(id) = stand_in {
                if !part.set_producer(id) {
                    local.push((code::CORRUPT_MESSAGE, "record batches are not whole v2 batches".into(), keep.clone()));
                    continue;
                }
            }
            req.reencode(&part, T::WHAT)?
        };
        let names = if renamed { names.reversed() } else { Names::default() };
        let outcome = if expects {
            if body.resend() {
                conns.send_safe(*broker, Lane::General, frame).await.map(Some)
            } else {
                conns.send(*broker, frame).await.map(Some)
            }
        } else {
            conns.send_oneway(*broker, frame).await.map(|()| None)
        };
        match outcome {
            Ok(Some(reply)) => sent.push((*broker, keep.clone(), names, reply, mirrored)),
            Ok(None) => {}
            Err(e) => {
                let cluster = gw.backends.cluster(broker.cluster).map_or("?", |c| c.name.as_str());
                tracing::warn!(cluster, error = %e, "cannot send to backend; answering its partitions with a retriable error");
                if let Some(c) = gw.backends.cluster(broker.cluster) {
                    c.mark_stale();
                }
                local.push((T::UNREACHABLE, format!("cluster '{cluster}' is unreachable"), keep.clone()));
            }
        }
    }
    if !expects {
        return Ok(None);
    }
    body.release();
    let (version, header) = (req.version(), req.response_header_version());
    let routes = router.clone();
    drop(req);

    let gw = gw.clone();
    Ok(Some(Box::pin(async move {
        let only_one = sent.len() == 1 && local.is_empty();
        let mut acc = T::Resp::default();
        for (broker, keep, names, reply, mirrored) in sent {
            let cluster = gw.backends.cluster(broker.cluster).cloned();
            match await_reply(reply).await {
                Ok(resp) => {
                    let mut part: T::Resp = resp.decode(header, version, T::RESP_WHAT)?;
                    if T::leaders_moved(&part) {
                        if let Some(c) = &cluster {
                            c.mark_stale();
                        }
                    }
                    let mut rewritten = mirrored && T::mirror_answer(&mut part, &shift_of(&gw, broker.cluster));
                    let renamed = !names.topics.is_empty() || names.node.is_some();
                    if renamed {
                        T::rename_back(&mut part, &names);
                    }
                    rewritten |= body.rewrite(&mut part, &gw);
                    if routes.authorizes() {
                        rewritten |= T::authorize_answer(&mut part, &routes);
                    }
                    if !gw.filters.is_empty() {
                        rewritten |= T::filter_answer(&mut part, &gw, &routes);
                    }
                    if only_one && !rewritten && !renamed {
                        return Ok(resp.after_correlation_id());
                    }
                    T::merge(&mut acc, part);
                }
                Err(e) => {
                    let name = cluster.as_ref().map_or("?", |c| c.name.as_str());
                    tracing::warn!(cluster = name, error = %e, partitions = keep.len(), "backend failed; answering its partitions with a retriable error");
                    if let Some(c) = &cluster {
                        c.mark_stale();
                    }
                    T::merge(&mut acc, body.failed(&keep, T::UNREACHABLE));
                }
            }
        }
        for (code, message, keep) in local {
            T::merge(&mut acc, body.failed_with(&keep, code, &message));
        }
        T::fit_version(&mut acc, version);
        Ok(encode_response(&acc, version, header, T::RESP_WHAT)?)
    })))
}

/// Builds a copy of `topics` holding only the positions in `keep`, in their order;
/// `parts` names a topic's partition list.
fn pick<T: Clone, P: Clone>(topics: &[T], keep: &Positions, parts: impl Fn(&mut T) -> &mut Vec<P>) -> Vec<T> {
    let mut chosen: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &(ti, pi) in keep {
        chosen.entry(ti).or_default().push(pi);
    }
    chosen
        .into_iter()
        .filter_map(|(ti, pis)| {
            let mut t = topics.get(ti)?.clone();
            let all = std::mem::take(parts(&mut t));
            *parts(&mut t) = pis.into_iter().filter_map(|pi| all.get(pi).cloned()).collect();
            Some(t)
        })
        .collect()
}

/// Appends `part`'s topics to `acc`, joining entries for the same topic.
fn join<T, P>(
    acc: &mut Vec<T>,
    part: Vec<T>,
    same: impl Fn(&T, &T) -> bool,
    parts: impl Fn(&mut T) -> &mut Vec<P>,
) {
    for mut t in part {
        if let Some(existing) = acc.iter_mut().find(|e| same(e, &t)) {
            let moved = std::mem::take(parts(&mut t));
            parts(existing).extend(moved);
        } else {
            acc.push(t);
        }
    }
}

/// The partition ids at `keep` per topic index.
fn chosen_partitions(keys: &[(TopicKey, Vec<i32>)], keep: &Positions) -> BTreeMap<usize, Vec<i32>> {
    let mut out: BTreeMap<usize, Vec<i32>> = BTreeMap::new();
    for &(ti, pi) in keep {
        if let Some(&p) = keys.get(ti).and_then(|(_, ps)| ps.get(pi)) {
            out.entry(ti).or_default().push(p);
        }
    }
    out
}

fn name_key(name: &StrBytes) -> TopicKey {
    TopicKey::Name(name.to_string())
}

fn gateway_endpoint(gw: &Gateway) -> produce_response::NodeEndpoint {
    produce_response::NodeEndpoint::default()
        .with_node_id(BrokerId(gw.node_id))
        .with_host(StrBytes::from_string(gw.host.clone()))
        .with_port(gw.port)
}

impl Split for ProduceRequest {
    type Resp = ProduceResponse;
    const WHAT: &'static str = "Produce request";
    const RESP_WHAT: &'static str = "Produce response";
    const OPERATION: Option<Operation> = Some(Operation::Write);

    /// An empty id is still an id to a broker, and authorized like any other.
    fn transactional_id(&self) -> Option<&str> {
        self.transactional_id.as_ref().map(|t| t.0.as_str())
    }

    fn keys(&self) -> Vec<(TopicKey, Vec<i32>)> {
        self.topic_data
            .iter()
            .map(|t| {
                let key = if t.topic_id.is_nil() { name_key(&t.name.0) } else { TopicKey::Id(t.topic_id) };
                (key, t.partition_data.iter().map(|p| p.index).collect())
            })
            .collect()
    }

    fn subset(&self, keep: &Positions) -> Self {
        let mut out = self.clone();
        out.topic_data = pick(&self.topic_data, keep, |t| &mut t.partition_data);
        out
    }

    fn merge(acc: &mut ProduceResponse, part: ProduceResponse) {
        acc.throttle_time_ms = acc.throttle_time_ms.max(part.throttle_time_ms);
        join(&mut acc.responses, part.responses, |a, b| a.name == b.name && a.topic_id == b.topic_id, |t| &mut t.partition_responses);
        for e in part.node_endpoints {
            if !acc.node_endpoints.iter().any(|x| x.node_id == e.node_id) {
                acc.node_endpoints.push(e);
            }
        }
    }

    fn failed(&self, keep: &Positions, code: i16) -> ProduceResponse {
        self.failed_with(keep, code, "")
    }

    fn failed_with(&self, keep: &Positions, code: i16, message: &str) -> ProduceResponse {
        let message = (!message.is_empty()).then(|| StrBytes::from_string(message.to_string()));
        let chosen = chosen_partitions(&self.keys(), keep);
        let mut out = ProduceResponse::default();
        for (ti, ps) in chosen {
            let Some(t) = self.topic_data.get(ti) else { continue };
            out.responses.push(
                produce_response::TopicProduceResponse::default()
                    .with_name(t.name.clone())
                    .with_topic_id(t.topic_id)
                    .with_partition_responses(
                        ps.into_iter()
                            .map(|p| {
                                produce_response::PartitionProduceResponse::default()
                                    .with_index(p)
                                    .with_error_code(code)
                                    .with_error_message(message.clone())
                                    .with_base_offset(-1)
                            })
                            .collect(),
                    ),
            );
        }
        out
    }

    fn leaders_moved(resp: &ProduceResponse) -> bool {
        resp.responses
            .iter()
            .any(|t| t.partition_responses.iter().any(|p| code::leader_moved(p.error_code)))
    }

    const WRITES: bool = true;

    fn mirror_answer(resp: &mut ProduceResponse, shift: &dyn Fn(&TopicKey, i32) -> Option<i64>) -> bool {
        let mut changed = false;
        for t in &mut resp.responses {
            let key = name_key(&t.name.0);
            for p in &mut t.partition_responses {
                if let Some(s) = shift(&key, p.index) {
                    p.base_offset = moved(p.base_offset, s);
                    p.log_start_offset = moved(p.log_start_offset, s);
                    changed = true;
                }
            }
        }
        changed
    }

    fn rewrite(&self, resp: &mut ProduceResponse, gw: &Gateway) -> bool {
        let mut changed = false;
        for t in &mut resp.responses {
            for p in &mut t.partition_responses {
                if p.current_leader.leader_id.0 >= 0 {
                    p.current_leader.leader_id = BrokerId(gw.node_id);
                    changed = true;
                }
            }
        }
        if !resp.node_endpoints.is_empty() {
            resp.node_endpoints = vec![gateway_endpoint(gw)];
            changed = true;
        }
        changed
    }

    fn rename(&mut self, names: &Names) -> bool {
        let mut changed = false;
        for t in &mut self.topic_data {
            changed |= names.topic(&mut t.name.0);
        }
        changed
    }

    fn rename_back(resp: &mut ProduceResponse, names: &Names) {
        for t in &mut resp.responses {
            names.topic(&mut t.name.0);
        }
    }

    fn expects_response(&self) -> bool {
        self.acks != 0
    }

    fn run_filters(&mut self, gw: &Gateway, router: &ClientRoutes, skip: &Positions) -> (bool, Rejected) {
        use crate::plugins::filter::{BatchContext, Direction};
        use crate::plugins::Outcome;
        let mut changed = false;
        let mut rejected = Vec::new();
        for (ti, t) in self.topic_data.iter_mut().enumerate() {
            if !gw.filters.applies(Direction::Produce, &t.name.0) {
                continue;
            }
            let cluster = cluster_of(gw, router, &t.name.0);
            for (pi, p) in t.partition_data.iter_mut().enumerate() {
                if skip.contains(&(ti, pi)) {
                    continue;
                }
                let Some(records) = &p.records else { continue };
                let context = BatchContext {
                    direction: Direction::Produce,
                    topic: &t.name.0,
                    cluster: &cluster,
                    partition: p.index,
                    principal: router.principal(),
                    client_id: router.client_id(),
                };
                match gw.filters.run(&context, records) {
                    Outcome::Unchanged => {}
                    // Every record dropped: brokers refuse a produce with no
                    // records, so Causeway answers it (accepted, no offset).
                    Outcome::Changed(bytes) if bytes.is_empty() => rejected.push(((ti, pi), code::NONE, String::new())),
                    Outcome::Changed(bytes) => {
                        p.records = Some(bytes);
                        changed = true;
                    }
                    Outcome::Rejected(message) => rejected.push(((ti, pi), code::POLICY_VIOLATION, message)),
                }
            }
        }
        (changed, rejected)
    }

    fn fit_version(resp: &mut ProduceResponse, version: i16) {
        if version < 8 {
            for t in &mut resp.responses {
                for p in &mut t.partition_responses {
                    p.error_message = None;
                }
            }
        }
    }

    fn idempotent_producer(&self) -> Option<(i64, i16)> {
        if self.transactional_id.as_ref().is_some_and(|t| !t.0.is_empty()) {
            return None;
        }
        let records = self
            .topic_data
            .iter()
            .flat_map(|t| t.partition_data.iter())
            .find_map(|p| p.records.as_ref())?;
        batches::producer(records).filter(|(id, _)| *id >= 0)
    }

    fn set_producer(&mut self, (id, epoch): (i64, i16)) -> bool {
        for t in &mut self.topic_data {
            for p in &mut t.partition_data {
                if let Some(records) = &p.records {
                    match batches::with_producer(records, id, epoch) {
                        Some(out) => p.records = Some(bytes::Bytes::from(out)),
                        None => return false,
                    }
                }
            }
        }
        true
    }

    fn release(&mut self) {
        for t in &mut self.topic_data {
            for p in &mut t.partition_data {
                p.records = None;
            }
        }
    }
}

impl Split for FetchRequest {
    type Resp = FetchResponse;

    /// Sessionless reads by offset (see `prepare`): the same either time.
    fn resend(&self) -> bool {
        true
    }

    const WHAT: &'static str = "Fetch request";
    const RESP_WHAT: &'static str = "Fetch response";
    const OPERATION: Option<Operation> = Some(Operation::Read);

    fn keys(&self) -> Vec<(TopicKey, Vec<i32>)> {
        self.topics
            .iter()
            .map(|t| {
                let key = if t.topic_id.is_nil() { name_key(&t.topic.0) } else { TopicKey::Id(t.topic_id) };
                (key, t.partitions.iter().map(|p| p.partition).collect())
            })
            .collect()
    }

    fn subset(&self, keep: &Positions) -> Self {
        let mut out = self.clone();
        out.topics = pick(&self.topics, keep, |t| &mut t.partitions);
        out
    }

    /// Fetch sessions cannot span the backend brokers a split fetch goes to, so
    /// Causeway declines them (KIP-227): every backend fetch is sessionless and the
    /// client is told session 0, which makes it send full fetches.
    ///
    /// A client is never a follower: a replica id (or replica state) would have
    /// the backend, trusting Causeway's login, serve records past the high
    /// watermark and count the client in the ISR. It is reset to a consumer's.
    fn prepare(&mut self, version: i16) -> bool {
        let mut changed = false;
        if self.replica_id.0 != -1 || self.replica_state.replica_id.0 != -1 || self.replica_state.replica_epoch != -1 {
            self.replica_id = BrokerId(-1);
            self.replica_state.replica_id = BrokerId(-1);
            self.replica_state.replica_epoch = -1;
            changed = true;
        }
        if version < 7 {
            return changed;
        }
        self.session_id = 0;
        self.session_epoch = -1;
        self.forgotten_topics_data.clear();
        true
    }

    fn rename(&mut self, names: &Names) -> bool {
        let mut changed = false;
        for t in &mut self.topics {
            changed |= names.topic(&mut t.topic.0);
        }
        changed
    }

    fn filter_answer(resp: &mut FetchResponse, gw: &Gateway, routes: &ClientRoutes) -> bool {
        filter_fetch(resp, gw, routes)
    }

    fn mirror_request(&mut self, shift: &dyn Fn(&TopicKey, i32) -> Option<i64>) -> bool {
        let mut changed = false;
        for t in &mut self.topics {
            let key = if t.topic_id.is_nil() { name_key(&t.topic.0) } else { TopicKey::Id(t.topic_id) };
            for p in &mut t.partitions {
                if let Some(s) = shift(&key, p.partition) {
                    // An offset before the mirror began is out of range there too.
                    p.fetch_offset = if p.fetch_offset >= 0 { p.fetch_offset.saturating_sub(s) } else { p.fetch_offset };
                    changed = true;
                }
            }
        }
        changed
    }

    /// A mirror partition's records at the source's offsets, filler shown as
    /// transaction markers, and its marks moved (see `link::records`).
    fn mirror_answer(resp: &mut FetchResponse, shift: &dyn Fn(&TopicKey, i32) -> Option<i64>) -> bool {
        let mut changed = false;
        for t in &mut resp.responses {
            let key = if t.topic_id.is_nil() { name_key(&t.topic.0) } else { TopicKey::Id(t.topic_id) };
            for p in &mut t.partitions {
                let Some(s) = shift(&key, p.partition_index) else { continue };
                changed = true;
                p.high_watermark = moved(p.high_watermark, s);
                p.last_stable_offset = moved(p.last_stable_offset, s);
                p.log_start_offset = moved(p.log_start_offset, s);
                p.diverging_epoch.end_offset = moved(p.diverging_epoch.end_offset, s);
                for a in p.aborted_transactions.iter_mut().flatten() {
                    a.first_offset = moved(a.first_offset, s);
                }
                if let Some(shown) = p.records.as_ref().and_then(|r| crate::link::records::present(r, s)) {
                    p.records = Some(shown);
                }
            }
        }
        changed
    }

    fn rename_back(resp: &mut FetchResponse, names: &Names) {
        for t in &mut resp.responses {
            names.topic(&mut t.topic.0);
        }
    }

    fn merge(acc: &mut FetchResponse, part: FetchResponse) {
        acc.throttle_time_ms = acc.throttle_time_ms.max(part.throttle_time_ms);
        if acc.error_code == 0 {
            acc.error_code = part.error_code;
        }
        acc.session_id = 0;
        join(&mut acc.responses, part.responses, |a, b| a.topic == b.topic && a.topic_id == b.topic_id, |t| &mut t.partitions);
        for e in part.node_endpoints {
            if !acc.node_endpoints.iter().any(|x| x.node_id == e.node_id) {
                acc.node_endpoints.push(e);
            }
        }
    }

    fn failed(&self, keep: &Positions, code: i16) -> FetchResponse {
        let chosen = chosen_partitions(&self.keys(), keep);
        let mut out = FetchResponse::default();
        for (ti, ps) in chosen {
            let Some(t) = self.topics.get(ti) else { continue };
            out.responses.push(
                fetch_response::FetchableTopicResponse::default()
                    .with_topic(t.topic.clone())
                    .with_topic_id(t.topic_id)
                    .with_partitions(
                        ps.into_iter()
                            .map(|p| {
                                fetch_response::PartitionData::default()
                                    .with_partition_index(p)
                                    .with_error_code(code)
                                    .with_high_watermark(-1)
                                    .with_records(Some(bytes::Bytes::new()))
                            })
                            .collect(),
                    ),
            );
        }
        out
    }

    fn leaders_moved(resp: &FetchResponse) -> bool {
        resp.responses
            .iter()
            .any(|t| t.partitions.iter().any(|p| code::leader_moved(p.error_code)))
    }

    fn rewrite(&self, resp: &mut FetchResponse, gw: &Gateway) -> bool {
        let mut changed = resp.session_id != 0;
        resp.session_id = 0;
        let read_committed = self.isolation_level == 1;
        for t in &mut resp.responses {
            for p in &mut t.partitions {
                // A backend that does not list aborted transactions would hand a
                // read_committed consumer aborted records; list the ones whose abort
                // marker is in this response, as a Kafka broker would.
                if read_committed && p.aborted_transactions.as_ref().is_none_or(Vec::is_empty) {
                    if let Some(records) = &p.records {
                        let aborted = batches::aborted_transactions(records);
                        if !aborted.is_empty() {
                            p.aborted_transactions = Some(
                                aborted
                                    .into_iter()
                                    .map(|(pid, first)| {
                                        fetch_response::AbortedTransaction::default()
                                            .with_producer_id(ProducerId(pid))
                                            .with_first_offset(first)
                                    })
                                    .collect(),
                            );
                            changed = true;
                        }
                    }
                }
                if p.current_leader.leader_id.0 >= 0 {
                    p.current_leader.leader_id = BrokerId(gw.node_id);
                    changed = true;
                }
                // Causeway serves every read itself; no follower fetching past it.
                if p.preferred_read_replica.0 >= 0 {
                    p.preferred_read_replica = BrokerId(-1);
                    changed = true;
                }
            }
        }
        if !resp.node_endpoints.is_empty() {
            let e = gateway_endpoint(gw);
            resp.node_endpoints = vec![fetch_response::NodeEndpoint::default()
                .with_node_id(e.node_id)
                .with_host(e.host)
                .with_port(e.port)];
            changed = true;
        }
        changed
    }
}

/// The name of the cluster the client-visible topic `name` is routed to, or
/// "" if none is.
fn cluster_of(gw: &Gateway, router: &ClientRoutes, name: &str) -> String {
    router
        .topic(name)
        .and_then(|t| gw.backends.cluster(t.cluster))
        .map(|c| c.name.clone())
        .unwrap_or_default()
}

/// Runs the record filters over a fetch answer's records. Topics fetched by id
/// are named from the cluster metadata Causeway holds. A rejected partition
/// carries POLICY_VIOLATION instead of its records.
pub fn filter_fetch(resp: &mut FetchResponse, gw: &Gateway, router: &ClientRoutes) -> bool {
    use crate::plugins::filter::{BatchContext, Direction};
    use crate::plugins::Outcome;
    let mut changed = false;
    for t in &mut resp.responses {
        let name = if t.topic.0.is_empty() {
            gw.backends
                .clusters
                .iter()
                .enumerate()
                .find_map(|(ci, c)| router.client_name(ci, &c.topic_name(&t.topic_id)?).map(|n| n.into_owned()))
        } else {
            Some(t.topic.0.to_string())
        };
        let Some(name) = name else { continue };
        if !gw.filters.applies(Direction::Fetch, &name) {
            continue;
        }
        let cluster = cluster_of(gw, router, &name);
        for p in &mut t.partitions {
            let Some(records) = p.records.as_ref().filter(|r| !r.is_empty()) else { continue };
            let context = BatchContext {
                direction: Direction::Fetch,
                topic: &name,
                cluster: &cluster,
                partition: p.partition_index,
                principal: router.principal(),
                client_id: router.client_id(),
            };
            match gw.filters.run(&context, records) {
                Outcome::Unchanged => {}
                Outcome::Changed(bytes) => {
                    p.records = Some(bytes);
                    changed = true;
                }
                Outcome::Rejected(message) => {
                    tracing::warn!(topic = %name, partition = p.partition_index, %message, "fetch answer rejected by a plugin");
                    p.error_code = code::POLICY_VIOLATION;
                    p.records = Some(bytes::Bytes::new());
                    changed = true;
                }
            }
        }
    }
    changed
}

/// `Split` for a request whose topics and answers are plain name + partitions
/// lists with a per-partition error code: ListOffsets, OffsetForLeaderEpoch and
/// DeleteRecords differ only in type and field names.
macro_rules! simple_split {
    (
        $req:ty => $resp:ty, $what:literal, $resp_what:literal,
        topic: $topic:ident, partition: $partition:ident,
        answer topic: $rt:ty, answer partition: $rp:ty, answer index: $rpi:ident,
        operation: $op:expr,
        failed: $fix:expr,
        request partition: $qp:ty, writes: $writes:expr,
        mirror request: $mreq:expr, mirror answer: $mans:expr,
        prepare: $prep:expr
    ) => {
        impl Split for $req {
            type Resp = $resp;
            const WHAT: &'static str = $what;
            const RESP_WHAT: &'static str = $resp_what;
            const OPERATION: Option<Operation> = Some($op);
            const WRITES: bool = $writes;

            /// Reads by offset: the same either time. Not DeleteRecords: "up to
            /// the high watermark" may mean more records the second time.
            fn resend(&self) -> bool {
                !$writes
            }

            fn prepare(&mut self, _version: i16) -> bool {
                let f: fn(&mut $req) -> bool = $prep;
                f(self)
            }

            fn mirror_request(&mut self, shift: &dyn Fn(&TopicKey, i32) -> Option<i64>) -> bool {
                let f: fn(&mut $qp, i64) = $mreq;
                let mut changed = false;
                for t in &mut self.topics {
                    let key = name_key(&t.$topic.0);
                    for p in &mut t.partitions {
                        if let Some(s) = shift(&key, p.$partition) {
                            f(p, s);
                            changed = true;
                        }
                    }
                }
                changed
            }

            fn mirror_answer(resp: &mut $resp, shift: &dyn Fn(&TopicKey, i32) -> Option<i64>) -> bool {
                let f: fn(&mut $rp, i64) = $mans;
                let mut changed = false;
                for t in &mut resp.topics {
                    let key = name_key(&t.$topic.0);
                    for p in &mut t.partitions {
                        if let Some(s) = shift(&key, p.$rpi) {
                            f(p, s);
                            changed = true;
                        }
                    }
                }
                changed
            }

            fn keys(&self) -> Vec<(TopicKey, Vec<i32>)> {
                self.topics
                    .iter()
                    .map(|t| (name_key(&t.$topic.0), t.partitions.iter().map(|p| p.$partition).collect()))
                    .collect()
            }

            fn subset(&self, keep: &Positions) -> Self {
                let mut out = self.clone();
                out.topics = pick(&self.topics, keep, |t| &mut t.partitions);
                out
            }

            fn rename(&mut self, names: &Names) -> bool {
                let mut changed = false;
                for t in &mut self.topics {
                    changed |= names.topic(&mut t.$topic.0);
                }
                changed
            }

            fn rename_back(resp: &mut $resp, names: &Names) {
                for t in &mut resp.topics {
                    names.topic(&mut t.$topic.0);
                }
            }

            fn merge(acc: &mut $resp, part: $resp) {
                acc.throttle_time_ms = acc.throttle_time_ms.max(part.throttle_time_ms);
                join(&mut acc.topics, part.topics, |a, b| a.$topic == b.$topic, |t| &mut t.partitions);
            }

            fn failed(&self, keep: &Positions, code: i16) -> $resp {
                let fix: fn(&mut $rp) = $fix;
                let mut out = <$resp>::default();
                for (ti, ps) in chosen_partitions(&self.keys(), keep) {
                    let Some(t) = self.topics.get(ti) else { continue };
                    let mut answer = <$rt>::default();
                    answer.$topic = t.$topic.clone();
                    answer.partitions = ps
                        .into_iter()
                        .map(|p| {
                            let mut part = <$rp>::default();
                            part.$rpi = p;
                            part.error_code = code;
                            fix(&mut part);
                            part
                        })
                        .collect();
                    out.topics.push(answer);
                }
                out
            }

            fn leaders_moved(resp: &$resp) -> bool {
                resp.topics
                    .iter()
                    .any(|t| t.partitions.iter().any(|p| code::leader_moved(p.error_code)))
            }
        }
    };
}

simple_split!(
    ListOffsetsRequest => ListOffsetsResponse, "ListOffsets request", "ListOffsets response",
    topic: name, partition: partition_index,
    answer topic: list_offsets_response::ListOffsetsTopicResponse,
    answer partition: list_offsets_response::ListOffsetsPartitionResponse,
    answer index: partition_index,
    operation: Operation::Describe,
    failed: |_| {},
    request partition: kafka_protocol::messages::list_offsets_request::ListOffsetsPartition, writes: false,
    mirror request: |_, _| {},
    mirror answer: |p, s| p.offset = moved(p.offset, s),
    // A client is never a follower (see the Fetch's).
    prepare: |r| std::mem::replace(&mut r.replica_id, BrokerId(-1)).0 != -1
);

simple_split!(
    OffsetForLeaderEpochRequest => OffsetForLeaderEpochResponse,
    "OffsetForLeaderEpoch request", "OffsetForLeaderEpoch response",
    topic: topic, partition: partition,
    answer topic: offset_for_leader_epoch_response::OffsetForLeaderTopicResult,
    answer partition: offset_for_leader_epoch_response::EpochEndOffset,
    answer index: partition,
    operation: Operation::Describe,
    failed: |_| {},
    request partition: kafka_protocol::messages::offset_for_leader_epoch_request::OffsetForLeaderPartition, writes: false,
    mirror request: |_, _| {},
    mirror answer: |p, s| p.end_offset = moved(p.end_offset, s),
    prepare: |r| std::mem::replace(&mut r.replica_id, BrokerId(-1)).0 != -1
);

simple_split!(
    DeleteRecordsRequest => DeleteRecordsResponse, "DeleteRecords request", "DeleteRecords response",
    topic: name, partition: partition_index,
    answer topic: delete_records_response::DeleteRecordsTopicResult,
    answer partition: delete_records_response::DeleteRecordsPartitionResult,
    answer index: partition_index,
    operation: Operation::Delete,
    failed: |p| p.low_watermark = -1,
    request partition: kafka_protocol::messages::delete_records_request::DeleteRecordsPartition, writes: true,
    mirror request: |p, s| p.offset = moved(p.offset, s.saturating_neg()),
    mirror answer: |p, s| p.low_watermark = moved(p.low_watermark, s),
    prepare: |_| false
);

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `route` fuzz target: a shift of i64::MIN negated overflowed.
    #[test]
    fn a_mirror_shift_at_the_end_of_i64_saturates() {
        use kafka_protocol::messages::delete_records_request::{DeleteRecordsPartition, DeleteRecordsTopic};
        let mut req = DeleteRecordsRequest::default().with_topics(vec![DeleteRecordsTopic::default()
            .with_name(kafka_protocol::messages::TopicName(StrBytes::from_static_str("t")))
            .with_partitions(vec![DeleteRecordsPartition::default().with_partition_index(0).with_offset(7)])]);
        assert!(req.mirror_request(&|_, _| Some(i64::MIN)));
        assert_eq!(req.topics[0].partitions[0].offset, i64::MAX);
        assert!(req.mirror_request(&|_, _| Some(i64::MAX)));
        assert_eq!(req.topics[0].partitions[0].offset, 0);
    }

    #[test]
    fn a_client_never_fetches_or_lists_offsets_as_a_follower() {
        let mut fetch = FetchRequest::default().with_replica_id(BrokerId(2));
        assert!(fetch.prepare(4), "a v4 fetch from a replica is re-encoded");
        assert_eq!(fetch.replica_id.0, -1);
        let mut fetch = FetchRequest::default();
        fetch.replica_state.replica_id = BrokerId(2);
        fetch.replica_state.replica_epoch = 7;
        fetch.prepare(15);
        assert_eq!((fetch.replica_state.replica_id.0, fetch.replica_state.replica_epoch), (-1, -1));
        assert!(!FetchRequest::default().with_replica_id(BrokerId(-1)).prepare(6), "a consumer's fetch is left alone");
        let mut list = ListOffsetsRequest::default().with_replica_id(BrokerId(1));
        assert!(list.prepare(7));
        assert_eq!(list.replica_id.0, -1);
        let mut epochs = OffsetForLeaderEpochRequest::default().with_replica_id(BrokerId(1));
        assert!(epochs.prepare(4));
        assert_eq!(epochs.replica_id.0, -1);
        assert!(!ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).prepare(7));
    }
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::TopicName;

    fn produce(topics: &[(&str, &[i32])]) -> ProduceRequest {
        ProduceRequest::default().with_acks(-1).with_topic_data(
            topics
                .iter()
                .map(|(name, ps)| {
                    TopicProduceData::default()
                        .with_name(TopicName(StrBytes::from_string((*name).to_string())))
                        .with_partition_data(
                            ps.iter()
                                .map(|&p| {
                                    PartitionProduceData::default()
                                        .with_index(p)
                                        .with_records(Some(bytes::Bytes::from(vec![p as u8; 3])))
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
    }

    #[test]
    fn subset_keeps_only_chosen_partitions_with_their_records() {
        let req = produce(&[("a", &[0, 1, 2]), ("b", &[0])]);
        let sub = req.subset(&vec![(0, 2), (1, 0)]);
        assert_eq!(sub.topic_data.len(), 2);
        assert_eq!(sub.topic_data[0].name.0.as_str(), "a");
        assert_eq!(sub.topic_data[0].partition_data.len(), 1);
        assert_eq!(sub.topic_data[0].partition_data[0].index, 2);
        assert_eq!(sub.topic_data[0].partition_data[0].records.as_deref(), Some(&[2u8, 2, 2][..]));
        assert_eq!(sub.topic_data[1].partition_data[0].index, 0);
        assert_eq!(sub.acks, -1);
    }

    #[test]
    fn merge_joins_partitions_of_the_same_topic() {
        let req = produce(&[("a", &[0, 1])]);
        let mut acc = ProduceResponse::default();
        ProduceRequest::merge(&mut acc, req.failed(&vec![(0, 0)], 6));
        ProduceRequest::merge(&mut acc, req.failed(&vec![(0, 1)], 7));
        assert_eq!(acc.responses.len(), 1);
        let codes: Vec<_> = acc.responses[0]
            .partition_responses
            .iter()
            .map(|p| (p.index, p.error_code))
            .collect();
        assert_eq!(codes, vec![(0, 6), (1, 7)]);
    }

    #[test]
    fn simple_splits_fail_and_merge_per_partition() {
        use kafka_protocol::messages::delete_records_request::{DeleteRecordsPartition, DeleteRecordsTopic};
        let req = DeleteRecordsRequest::default().with_topics(vec![DeleteRecordsTopic::default()
            .with_name(TopicName("t".into()))
            .with_partitions(vec![
                DeleteRecordsPartition::default().with_partition_index(4),
                DeleteRecordsPartition::default().with_partition_index(9),
            ])]);
        assert_eq!(req.keys(), vec![(TopicKey::Name("t".into()), vec![4, 9])]);
        let sub = req.subset(&vec![(0, 1)]);
        assert_eq!(sub.topics[0].partitions[0].partition_index, 9);
        let mut acc = DeleteRecordsResponse::default();
        DeleteRecordsRequest::merge(&mut acc, req.failed(&vec![(0, 1)], 6));
        DeleteRecordsRequest::merge(&mut acc, req.failed(&vec![(0, 0)], 3));
        let got: Vec<_> = acc.topics[0]
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.error_code, p.low_watermark))
            .collect();
        assert_eq!(got, vec![(9, 6, -1), (4, 3, -1)]);
        assert!(DeleteRecordsRequest::leaders_moved(&acc));
    }

    #[test]
    fn fetch_sessions_are_declined() {
        let mut req = FetchRequest::default().with_session_id(9).with_session_epoch(3);
        assert!(req.prepare(12));
        assert_eq!((req.session_id, req.session_epoch), (0, -1));
        let mut old = FetchRequest::default();
        assert!(!old.prepare(6));
    }
}
