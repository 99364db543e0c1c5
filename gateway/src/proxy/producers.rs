//! Idempotent producer ids across clusters.
//!
//! An idempotent producer gets its id from one cluster, but behind Causeway it may
//! write to topics of several. Producer ids are only unique within the cluster that
//! handed them out (every cluster counts from the same start), so the same id sent
//! to another cluster could collide with a producer of that cluster, and a broker
//! that never issued it may refuse it. Causeway therefore asks each other cluster
//! for an id of its own the first time a producer writes there, and rewrites the
//! producer id and epoch of the batches it sends there. Sequence numbers stay as the
//! client made them: they count per partition, and a partition lives on one cluster.

use std::time::{Duration, Instant};

use dashmap::DashMap;
use kafka_protocol::messages::{ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use crate::backend::cluster::CLIENT_ID;
use crate::backend::{BackendError, Cluster};
use crate::codec;

/// Entries kept before idle ones are dropped.
const CAPACITY: usize = 100_000;
/// Brokers forget idle producer ids after a day (`producer.id.expiration.ms`).
const IDLE: Duration = Duration::from_secs(24 * 3600);

/// A producer id and epoch.
type Producer = (i64, i16);

/// Where each client-visible producer id came from, and its stand-ins elsewhere.
#[derive(Debug, Default)]
pub struct ProducerIds {
    /// Client-visible producer id -> the cluster that issued it.
    origin: DashMap<i64, (usize, Instant)>,
    /// (cluster, client id, client epoch) -> that cluster's id and epoch.
    mapped: DashMap<(usize, i64, i16), (Producer, Instant)>,
}

impl ProducerIds {
    /// Notes that `cluster` issued `producer_id` to a client.
    pub fn issued(&self, producer_id: i64, cluster: usize) {
        if producer_id < 0 {
            return;
        }
        if self.origin.len() >= CAPACITY {
            self.origin.retain(|_, (_, at)| at.elapsed() < IDLE);
        }
        self.origin.insert(producer_id, (cluster, Instant::now()));
    }

    /// The cluster that issued `producer_id`, if Causeway saw it.
    pub fn origin(&self, producer_id: i64) -> Option<usize> {
        self.origin.get(&producer_id).map(|e| e.0)
    }

    /// The id and epoch that stand for the client's on `cluster`, asked for once.
    pub async fn on_cluster(
        &self,
        ci: usize,
        cluster: &Cluster,
        producer_id: i64,
        epoch: i16,
    ) -> Result<(i64, i16), BackendError> {
        if let Some(mut e) = self.mapped.get_mut(&(ci, producer_id, epoch)) {
            e.1 = Instant::now();
            return Ok(e.0);
        }
        let version = cluster.own_version(ApiKey::InitProducerId, 4)?;
        let request = InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let frame = codec::encode_request(ApiKey::InitProducerId, version, CLIENT_ID, &request)?;
        let resp = cluster.control_request_any(frame).await?;
        let header = ApiKey::InitProducerId.response_header_version(version);
        let body: InitProducerIdResponse = resp.decode(header, version, "InitProducerId response")?;
        if body.error_code != 0 || body.producer_id.0 < 0 {
            return Err(BackendError::Protocol(format!(
                "cluster '{}' gave no producer id (error {})",
                cluster.name, body.error_code
            )));
        }
        let ours = (body.producer_id.0, body.producer_epoch);
        if self.mapped.len() >= CAPACITY {
            self.mapped.retain(|_, (_, at)| at.elapsed() < IDLE);
        }
        // Two sessions may race here; the first id stored wins for both.
        let entry = self
            .mapped
            .entry((ci, producer_id, epoch))
            .or_insert((ours, Instant::now()));
        tracing::debug!(cluster = %cluster.name, client = producer_id, stands_in = entry.0 .0, "producer id mapped");
        Ok(entry.0)
    }
}
