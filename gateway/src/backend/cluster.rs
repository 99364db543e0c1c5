//! One backend cluster as Causeway knows it: brokers, partition leaders,
//! coordinators, the API versions its brokers speak, and pooled connections.
//!
//! The metadata copy is refreshed when it is older than `metadata_max_age_ms`, when
//! a request names a topic it does not know, and when a response reports a stale
//! leader. Client Metadata responses feed it too, so it rarely costs a round trip.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::conn::BrokerConn;
use super::transport::Connector;
use super::BackendError;
use crate::codec::{self, Response};
use crate::config::ClusterConfig;
use crate::telemetry;

/// Client id Causeway uses for its own requests to backends.
pub const CLIENT_ID: &str = "causeway";
/// Idle connections kept per broker for reuse by later client sessions.
const POOL_PER_BROKER: usize = 32;
/// How long a broker that could not be reached is not dialled for client sessions.
const CONNECT_BACKOFF: Duration = Duration::from_millis(1000);

/// What Causeway knows of one topic.
#[derive(Debug, Clone)]
pub struct TopicInfo {
    pub id: Uuid,
    /// Leader broker id per partition index; -1 where there is none.
    pub leaders: Vec<i32>,
}

/// A consistent copy of the cluster's metadata.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Broker id to `HOST:PORT`.
    pub brokers: BTreeMap<i32, String>,
    pub controller: i32,
    pub cluster_id: Option<String>,
    pub topics: HashMap<String, TopicInfo>,
    pub ids: HashMap<Uuid, String>,
}

/// A backend cluster.
pub struct Cluster {
    pub name: String,
    config: ClusterConfig,
    connector: Arc<dyn Connector>,
    /// Client principals that log in as themselves, with their connectors;
    /// identity `i + 1` is entry `i`, identity 0 is Causeway's own login.
    pub identities: Vec<(String, Arc<dyn Connector>)>,
    meta: RwLock<Arc<Snapshot>>,
    refreshed: Mutex<Option<Instant>>,
    stale: AtomicBool,
    ready: AtomicBool,
    refreshing: AtomicBool,
    /// The broker versions, intersected across brokers: key -> (min, max).
    versions: RwLock<HashMap<i16, (i16, i16)>>,
    /// (key type, key) -> coordinator broker id.
    coordinators: DashMap<(i8, String), i32>,
    /// Causeway's own connections, one per broker, for metadata and lookups.
    control: tokio::sync::Mutex<HashMap<i32, BrokerConn>>,
    /// Idle connections per (broker, identity).
    pool: Mutex<HashMap<(i32, usize), Vec<BrokerConn>>>,
    /// Brokers that could not be reached, until when they are not dialled.
    unreachable: DashMap<i32, Instant>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("name", &self.name).finish()
    }
}

impl Cluster {
    pub fn new(name: String, config: ClusterConfig, connector: Arc<dyn Connector>) -> Self {
        // Until the first Metadata answer, bootstrap addresses stand in as brokers
        // with negative ids, as Kafka clients do.
        let brokers = config
            .bootstrap
            .iter()
            .enumerate()
            .map(|(i, addr)| (-1 - i as i32, addr.clone()))
            .collect();
        Self {
            name,
            config,
            connector,
            identities: Vec::new(),
            meta: RwLock::new(Arc::new(Snapshot {
                brokers,
                controller: -1,
                ..Snapshot::default()
            })),
            refreshed: Mutex::new(None),
            stale: AtomicBool::new(true),
            ready: AtomicBool::new(false),
            refreshing: AtomicBool::new(false),
            versions: RwLock::new(HashMap::new()),
            coordinators: DashMap::new(),
            control: tokio::sync::Mutex::new(HashMap::new()),
            pool: Mutex::new(HashMap::new()),
            unreachable: DashMap::new(),
        }
    }

    /// Whether the cluster answered its bootstrap and its latest health probe.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Asks any broker for the broker list (a Metadata request naming no topics)
    /// within `timeout`; records the outcome as the cluster's readiness.
    pub async fn probe(&self, timeout: Duration) -> Result<(), BackendError> {
        // A Metadata request naming no topics: brokers and controller only.
        let outcome = match tokio::time::timeout(timeout, self.refresh(Some(Vec::new()))).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::Timeout {
                addr: self.broker_addr(self.any_broker()).unwrap_or_default(),
            }),
        };
        let was = self.ready.swap(outcome.is_ok(), Ordering::AcqRel);
        match (&outcome, was) {
            (Ok(()), false) => tracing::info!(cluster = %self.name, "backend cluster reachable again"),
            (Err(e), true) => {
                telemetry::backend_error(&self.name, "health");
                tracing::warn!(cluster = %self.name, error = %e, "backend cluster unreachable")
            }
            _ => {}
        }
        outcome
    }

    /// How often the cluster is probed once it is up.
    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.config.health_interval_ms)
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.meta.read() {
            Ok(m) => m.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Versions the backend brokers speak, key -> (min, max).
    pub fn versions(&self) -> HashMap<i16, (i16, i16)> {
        match self.versions.read() {
            Ok(v) => v.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Learns versions and brokers; retried by the caller until it succeeds.
    pub async fn bootstrap(&self) -> Result<(), BackendError> {
        let snapshot = self.snapshot();
        let mut last = None;
        for &id in snapshot.brokers.keys() {
            match self.learn_versions(id).await {
                Ok(()) => {
                    self.refresh(None).await?;
                    self.ready.store(true, Ordering::Release);
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(BackendError::NoBroker))
    }

    async fn learn_versions(&self, broker: i32) -> Result<(), BackendError> {
        let frame = codec::encode_request(ApiKey::ApiVersions, 0, CLIENT_ID, &ApiVersionsRequest::default())?;
        let resp = self.control_request(broker, frame).await?;
        let body: ApiVersionsResponse = resp.decode(0, 0, "ApiVersions response")?;
        if body.error_code != 0 {
            return Err(BackendError::Protocol(format!(
                "broker answered ApiVersions with error {}",
                body.error_code
            )));
        }
        let mut map = HashMap::new();
        for k in body.api_keys {
            map.insert(k.api_key, (k.min_version, k.max_version));
        }
        let mut versions = match self.versions.write() {
            Ok(v) => v,
            Err(p) => p.into_inner(),
        };
        if versions.is_empty() {
            *versions = map;
        } else {
            // Several brokers: keep only what all of them speak.
            versions.retain(|k, _| map.contains_key(k));
            for (k, (min, max)) in versions.iter_mut() {
                if let Some((bmin, bmax)) = map.get(k) {
                    *min = (*min).max(*bmin);
                    *max = (*max).min(*bmax);
                }
            }
        }
        Ok(())
    }

    /// The version Causeway uses for its own request of `key`, at most `ours`.
    pub fn own_version(&self, key: ApiKey, ours: i16) -> Result<i16, BackendError> {
        match self.versions().get(&(key as i16)) {
            Some(&(min, max)) if min <= ours => Ok(max.min(ours)),
            Some(_) | None => Err(BackendError::Protocol(format!(
                "backend does not speak {key:?} at a version Causeway knows"
            ))),
        }
    }

    /// Whether the metadata copy should be refreshed before it is trusted.
    pub fn needs_refresh(&self) -> bool {
        if self.stale.load(Ordering::Acquire) {
            return true;
        }
        let max_age = Duration::from_millis(self.config.metadata_max_age_ms);
        match self.refreshed.lock() {
            Ok(r) => r.is_none_or(|t| t.elapsed() > max_age),
            Err(_) => true,
        }
    }

    /// Claims the one background refresh allowed at a time; false if one runs.
    pub fn begin_background_refresh(&self) -> bool {
        !self.refreshing.swap(true, Ordering::AcqRel)
    }

    pub fn end_background_refresh(&self) {
        self.refreshing.store(false, Ordering::Release);
    }

    /// Marks the metadata copy stale: a response reported a moved leader.
    pub fn mark_stale(&self) {
        self.stale.store(true, Ordering::Release);
    }

    /// Fetches metadata for `topics` (all topics when `None`) and merges it in.
    pub async fn refresh(&self, topics: Option<Vec<String>>) -> Result<(), BackendError> {
        let version = self.own_version(ApiKey::Metadata, 12)?;
        let request = MetadataRequest::default()
            .with_topics(topics.as_ref().map(|names| {
                names
                    .iter()
                    .map(|n| {
                        MetadataRequestTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string(n.clone()))))
                    })
                    .collect()
            }))
            .with_allow_auto_topic_creation(false);
        let frame = codec::encode_request(ApiKey::Metadata, version, CLIENT_ID, &request)?;
        let resp = self.control_request_any(frame).await?;
        let header = ApiKey::Metadata.response_header_version(version);
        let body: MetadataResponse = resp.decode(header, version, "Metadata response")?;
        self.absorb_metadata(&body, topics.is_none());
        telemetry::metadata_refreshed(&self.name);
        Ok(())
    }

    /// Merges a Metadata response (Causeway's own or a client's) into the copy.
    /// `complete` says it lists every topic, so absent topics are gone.
    pub fn absorb_metadata(&self, body: &MetadataResponse, complete: bool) {
        let mut meta = match self.meta.write() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let mut next = (**meta).clone();
        if !body.brokers.is_empty() {
            next.brokers = body
                .brokers
                .iter()
                .map(|b| (b.node_id.0, format!("{}:{}", host_for_dial(&b.host), b.port)))
                .collect();
        }
        if body.controller_id.0 >= 0 {
            next.controller = body.controller_id.0;
        }
        if let Some(id) = &body.cluster_id {
            next.cluster_id = Some(id.to_string());
        }
        if complete {
            next.topics.clear();
            next.ids.clear();
        }
        for t in &body.topics {
            let Some(name) = &t.name else { continue };
            let name = name.0.to_string();
            if t.error_code != 0 {
                if let Some(old) = next.topics.remove(&name) {
                    next.ids.remove(&old.id);
                }
                continue;
            }
            let len = t
                .partitions
                .iter()
                .map(|p| p.partition_index.max(0) as usize + 1)
                .max()
                .unwrap_or(0);
            let mut leaders = vec![-1; len];
            for p in &t.partitions {
                if let Some(slot) = leaders.get_mut(p.partition_index.max(0) as usize) {
                    *slot = p.leader_id.0;
                }
            }
            if !t.topic_id.is_nil() {
                next.ids.insert(t.topic_id, name.clone());
            }
            next.topics.insert(
                name,
                TopicInfo {
                    id: t.topic_id,
                    leaders,
                },
            );
        }
        *meta = Arc::new(next);
        drop(meta);
        // Only an answer listing every topic makes the whole copy fresh; a health
        // probe or a lookup of a few topics must not hide a stale leader elsewhere.
        if complete {
            if let Ok(mut r) = self.refreshed.lock() {
                *r = Some(Instant::now());
            }
            self.stale.store(false, Ordering::Release);
        }
    }

    /// Any live broker: the lowest id known.
    pub fn any_broker(&self) -> i32 {
        let meta = self.snapshot();
        meta.brokers.keys().next().copied().unwrap_or(-1)
    }

    /// The controller if known, otherwise any broker.
    pub fn controller(&self) -> i32 {
        let meta = self.snapshot();
        if meta.brokers.contains_key(&meta.controller) {
            meta.controller
        } else {
            meta.brokers.keys().next().copied().unwrap_or(-1)
        }
    }

    /// How many brokers are known, without copying their ids.
    pub fn broker_count(&self) -> usize {
        self.snapshot().brokers.len()
    }

    /// Every broker id known.
    pub fn broker_ids(&self) -> Vec<i32> {
        self.snapshot().brokers.keys().copied().collect()
    }

    pub fn cluster_id(&self) -> Option<String> {
        self.snapshot().cluster_id.clone()
    }

    /// Finds the coordinator of a group (`key_type` 0) or transactional id (1).
    pub async fn coordinator(&self, key_type: i8, key: &str) -> Result<i32, BackendError> {
        if let Some(id) = self.coordinators.get(&(key_type, key.to_string())) {
            return Ok(*id);
        }
        let version = self.own_version(ApiKey::FindCoordinator, 3)?;
        let request = FindCoordinatorRequest::default()
            .with_key(StrBytes::from_string(key.to_string()))
            .with_key_type(key_type);
        let frame = codec::encode_request(ApiKey::FindCoordinator, version, CLIENT_ID, &request)?;
        let resp = self.control_request(self.any_broker(), frame).await?;
        let header = ApiKey::FindCoordinator.response_header_version(version);
        let body: FindCoordinatorResponse = resp.decode(header, version, "FindCoordinator response")?;
        if body.error_code != 0 {
            return Err(BackendError::Coordinator {
                key: key.to_string(),
                code: body.error_code,
            });
        }
        self.learn_coordinator(key_type, key, body.node_id.0, &body.host, body.port);
        Ok(body.node_id.0)
    }

    /// Remembers a coordinator seen in a FindCoordinator response.
    pub fn learn_coordinator(&self, key_type: i8, key: &str, node: i32, host: &str, port: i32) {
        self.coordinators.insert((key_type, key.to_string()), node);
        let known = self.snapshot().brokers.contains_key(&node);
        if !known {
            let mut meta = match self.meta.write() {
                Ok(m) => m,
                Err(p) => p.into_inner(),
            };
            let mut next = (**meta).clone();
            next.brokers.insert(node, format!("{}:{port}", host_for_dial(host)));
            *meta = Arc::new(next);
        }
    }

    /// Forgets a coordinator that answered NOT_COORDINATOR or is unavailable.
    pub fn forget_coordinator(&self, key_type: i8, key: &str) {
        self.coordinators.remove(&(key_type, key.to_string()));
    }

    /// The leader of a partition, if known.
    pub fn leader(&self, topic: &str, partition: i32) -> Option<i32> {
        let meta = self.snapshot();
        let t = meta.topics.get(topic)?;
        let leader = *t.leaders.get(usize::try_from(partition).ok()?)?;
        (leader >= 0 && meta.brokers.contains_key(&leader)).then_some(leader)
    }

    /// The name of a topic by id, if known.
    pub fn topic_name(&self, id: &Uuid) -> Option<String> {
        self.snapshot().ids.get(id).cloned()
    }

    /// Whether `addr` is one of the cluster's bootstrap addresses or a
    /// broker its metadata names.
    pub fn knows_address(&self, addr: &str) -> bool {
        self.config.bootstrap.iter().any(|b| b == addr) || self.snapshot().brokers.values().any(|b| b == addr)
    }

    pub fn broker_addr(&self, id: i32) -> Option<String> {
        self.snapshot().brokers.get(&id).cloned()
    }

    /// The identity a client principal's connections log in as: its own
    /// login if the config gives it one, else Causeway's (0).
    pub fn identity_of(&self, principal: Option<&str>) -> usize {
        match principal {
            Some(p) if !self.identities.is_empty() => {
                self.identities.iter().position(|(name, _)| name == p).map_or(0, |i| i + 1)
            }
            _ => 0,
        }
    }

    /// A connection with Causeway's own login: an idle pooled one or a new one.
    pub async fn checkout(&self, broker: i32) -> Result<BrokerConn, BackendError> {
        self.checkout_as(broker, 0).await
    }

    /// A connection logged in as `identity` (see [`Cluster::identity_of`]).
    pub async fn checkout_as(&self, broker: i32, identity: usize) -> Result<BrokerConn, BackendError> {
        let addr = self.broker_addr(broker).ok_or(BackendError::UnknownBroker(broker))?;
        if let Ok(mut pool) = self.pool.lock() {
            if let Some(list) = pool.get_mut(&(broker, identity)) {
                while let Some(conn) = list.pop() {
                    if conn.is_usable() && conn.addr() == addr {
                        return Ok(conn);
                    }
                }
            }
        }
        self.dial(broker, identity, addr).await
    }

    /// A new connection to `broker` at `addr`, logged in as `identity`.
    async fn dial(&self, broker: i32, identity: usize, addr: String) -> Result<BrokerConn, BackendError> {
        // A broker that just refused or timed out is not dialled again for a while:
        // clients get their retriable error at once instead of after another
        // connect timeout each.
        if let Some(until) = self.unreachable.get(&broker).map(|u| *u) {
            if Instant::now() < until {
                return Err(BackendError::RecentlyUnreachable { addr });
            }
        }
        let connector = match identity.checked_sub(1).and_then(|i| self.identities.get(i)) {
            Some((_, c)) => c,
            None => &self.connector,
        };
        match BrokerConn::connect(&**connector, &addr, &self.name, self.config.max_frame_bytes).await {
            Ok(conn) => {
                self.unreachable.remove(&broker);
                Ok(conn)
            }
            Err(e @ BackendError::Connect { .. })
                if identity > 0
                    && matches!(&e, BackendError::Connect { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied) =>
            {
                // One principal's login failing says nothing of the broker.
                telemetry::backend_error(&self.name, "login");
                tracing::warn!(cluster = %self.name, error = %e, "a client principal's own login was refused");
                Err(e)
            }
            Err(e) => {
                telemetry::backend_error(&self.name, "connect");
                self.unreachable.insert(broker, Instant::now() + CONNECT_BACKOFF);
                Err(e)
            }
        }
    }

    /// Returns a session's connection with Causeway's own login.
    pub fn checkin(&self, broker: i32, conn: BrokerConn) {
        self.checkin_as(broker, 0, conn);
    }

    /// Returns a session's connection; kept only if it is alive and idle.
    pub fn checkin_as(&self, broker: i32, identity: usize, conn: BrokerConn) {
        if !conn.is_usable() || conn.in_flight() > 0 {
            return;
        }
        if let Ok(mut pool) = self.pool.lock() {
            let list = pool.entry((broker, identity)).or_default();
            if list.len() < POOL_PER_BROKER {
                list.push(conn);
            }
        }
    }

    /// Whether a request that is safe to send twice goes out again on a new
    /// connection when its own is lost before the answer arrives. Behind the
    /// tunnel one QUIC connection of several can drop while the others carry
    /// on, so the request is answered instead of failing back to the client.
    pub fn resends_lost_requests(&self) -> bool {
        self.config.tunnel
    }

    /// Sends `frame` again on a new connection logged in as `identity`, after
    /// the one it was on was lost; the connection then joins the pool.
    pub async fn resend(&self, broker: i32, identity: usize, frame: bytes::Bytes) -> Result<Response, BackendError> {
        let addr = self.broker_addr(broker).ok_or(BackendError::UnknownBroker(broker))?;
        let conn = self.dial(broker, identity, addr).await?;
        let reply = conn.send(frame).await?;
        conn.flush().await?;
        let outcome = match reply.await {
            Ok(r) => r,
            Err(_) => Err(BackendError::Disconnected { addr: conn.addr().to_string() }),
        };
        self.checkin_as(broker, identity, conn);
        outcome
    }

    /// Sends a request on a connection of its own (pooled), apart from any client
    /// session: for requests Causeway issues after a first answer arrived.
    pub async fn call(&self, broker: i32, frame: bytes::Bytes) -> Result<Response, BackendError> {
        let conn = self.checkout(broker).await?;
        let reply = conn.send(frame).await?;
        conn.flush().await?;
        let timeout = Duration::from_millis(self.config.connect_timeout_ms.max(1000) * 6);
        let outcome = match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(BackendError::Disconnected {
                addr: conn.addr().to_string(),
            }),
            Err(_) => Err(BackendError::Timeout {
                addr: conn.addr().to_string(),
            }),
        };
        self.checkin(broker, conn);
        outcome
    }

    /// Sends one of Causeway's own requests to the first broker that answers,
    /// starting with [`Cluster::any_broker`].
    pub async fn control_request_any(&self, frame: bytes::Bytes) -> Result<Response, BackendError> {
        let first = self.any_broker();
        let mut order = vec![first];
        order.extend(self.broker_ids().into_iter().filter(|&id| id != first));
        let mut last = BackendError::NoBroker;
        for id in order {
            match self.control_request(id, frame.clone()).await {
                Ok(resp) => return Ok(resp),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Sends one of Causeway's own requests over the control connection to `broker`.
    pub async fn control_request(
        &self,
        broker: i32,
        frame: bytes::Bytes,
    ) -> Result<Response, BackendError> {
        let conn = {
            let mut control = self.control.lock().await;
            match control.get(&broker) {
                Some(c) if c.is_usable() => c.clone(),
                _ => {
                    let addr = self.broker_addr(broker).ok_or(BackendError::UnknownBroker(broker))?;
                    let conn = BrokerConn::connect(
                        &*self.connector,
                        &addr,
                        &self.name,
                        self.config.max_frame_bytes,
                    )
                    .await
                    .inspect_err(|_| telemetry::backend_error(&self.name, "connect"))?;
                    control.insert(broker, conn.clone());
                    conn
                }
            }
        };
        let reply = conn.send(frame).await?;
        conn.flush().await?;
        let timeout = Duration::from_millis(self.config.connect_timeout_ms.max(1000) * 6);
        match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(BackendError::Disconnected {
                addr: conn.addr().to_string(),
            }),
            Err(_) => Err(BackendError::Timeout {
                addr: conn.addr().to_string(),
            }),
        }
    }
}

/// Brokers may advertise names; keep them as given, but bracket bare IPv6.
fn host_for_dial(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::metadata_response::MetadataResponseBroker;
    use kafka_protocol::messages::BrokerId;

    fn cluster() -> Cluster {
        let config: crate::config::Config = toml::from_str(
            "[gateway]\nlisten = \"127.0.0.1:0\"\n[clusters.c]\nbootstrap = [\"127.0.0.1:1\"]\n",
        )
        .expect("config");
        let c = config.clusters["c"].clone();
        Cluster::new(
            "c".into(),
            c,
            Arc::new(super::super::transport::TcpConnector { timeout: Duration::from_secs(1) }),
        )
    }

    #[test]
    fn only_a_complete_answer_makes_the_copy_fresh() {
        let c = cluster();
        let brokers_only = MetadataResponse::default().with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(BrokerId(1))
            .with_host("h".into())
            .with_port(1)]);
        c.absorb_metadata(&brokers_only, false);
        assert_eq!(c.broker_ids(), vec![1], "brokers are learned from any answer");
        assert!(c.needs_refresh(), "a probe does not refresh topic leaders");
        c.absorb_metadata(&brokers_only, true);
        assert!(!c.needs_refresh());
        c.mark_stale();
        c.absorb_metadata(&brokers_only, false);
        assert!(c.needs_refresh(), "a probe does not clear a stale mark");
    }
}
