//! The APIs Causeway speaks, the versions it has audited, and how each is routed.
//!
//! A client only ever sees versions in this table, intersected with what the backend
//! brokers advertise. A version is listed once every field that carries a broker
//! address, a node id or a partition leader at that version is handled by the
//! rewrite code; anything newer stays hidden until it is audited, so a protocol
//! change in a new Kafka release cannot leak an address or break routing.

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestKind};

use super::{CodecError, Request};

/// Where a request goes and what happens to its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Answered by the gateway itself.
    ApiVersions,
    /// SASL authentication, answered by the connection itself; offered only
    /// when the gateway authenticates clients.
    Sasl,
    /// Forwarded to any broker; brokers, leaders and controller rewritten to the gateway.
    Metadata,
    /// Forwarded to any broker; the coordinator is remembered and replaced by the gateway.
    FindCoordinator,
    /// Forwarded to any broker; brokers and controller rewritten.
    DescribeCluster,
    /// Split by partition leader, responses merged.
    Partitioned,
    /// Sent to the coordinator of the request's consumer group.
    Group,
    /// Several groups in one request: split by coordinator, merged.
    Groups,
    /// Sent to the coordinator of the request's transactional id.
    Transaction,
    /// With a transactional id to its coordinator, without one to any broker.
    InitProducerId,
    /// Sent to every broker, answers merged.
    AllBrokers,
    /// Sent to the controller (the backend's own forwarding covers KRaft).
    Controller,
    /// Config requests: broker resources are renamed between gateway and backend ids.
    Configs,
    /// Any broker will do; the response passes through untouched.
    AnyBroker,
}

/// One audited API: the versions Causeway can route and rewrite, and how.
#[derive(Debug, Clone, Copy)]
pub struct Audited {
    pub key: ApiKey,
    pub min: i16,
    pub max: i16,
    pub route: Route,
}

const fn a(key: ApiKey, min: i16, max: i16, route: Route) -> Audited {
    Audited {
        key,
        min,
        max,
        route,
    }
}

/// Every API a client may use through Causeway. SASL appears once the gateway
/// terminates it; replication, KRaft and share-group APIs are not offered.
pub const AUDITED: &[Audited] = &[
    a(ApiKey::Produce, 3, 11, Route::Partitioned),
    a(ApiKey::Fetch, 4, 17, Route::Partitioned),
    a(ApiKey::ListOffsets, 1, 9, Route::Partitioned),
    a(ApiKey::Metadata, 0, 12, Route::Metadata),
    a(ApiKey::OffsetCommit, 2, 9, Route::Group),
    a(ApiKey::OffsetFetch, 1, 9, Route::Groups),
    a(ApiKey::FindCoordinator, 0, 6, Route::FindCoordinator),
    a(ApiKey::JoinGroup, 0, 9, Route::Group),
    a(ApiKey::Heartbeat, 0, 4, Route::Group),
    a(ApiKey::LeaveGroup, 0, 5, Route::Group),
    a(ApiKey::SyncGroup, 0, 5, Route::Group),
    a(ApiKey::DescribeGroups, 0, 5, Route::Groups),
    a(ApiKey::ListGroups, 0, 5, Route::AllBrokers),
    a(ApiKey::ApiVersions, 0, 4, Route::ApiVersions),
    // v0 (raw SASL tokens after the handshake) is listed because librdkafka
    // before 2.x sees no SASL support without it; a v0 handshake is refused.
    a(ApiKey::SaslHandshake, 0, 1, Route::Sasl),
    a(ApiKey::SaslAuthenticate, 0, 2, Route::Sasl),
    a(ApiKey::CreateTopics, 2, 7, Route::Controller),
    a(ApiKey::DeleteTopics, 1, 6, Route::Controller),
    a(ApiKey::DeleteRecords, 0, 2, Route::Partitioned),
    a(ApiKey::InitProducerId, 0, 5, Route::InitProducerId),
    a(ApiKey::OffsetForLeaderEpoch, 2, 4, Route::Partitioned),
    a(ApiKey::AddPartitionsToTxn, 0, 3, Route::Transaction),
    a(ApiKey::AddOffsetsToTxn, 0, 4, Route::Transaction),
    a(ApiKey::EndTxn, 0, 4, Route::Transaction),
    a(ApiKey::TxnOffsetCommit, 0, 4, Route::Group),
    a(ApiKey::DescribeAcls, 1, 3, Route::AnyBroker),
    a(ApiKey::CreateAcls, 1, 3, Route::AnyBroker),
    a(ApiKey::DeleteAcls, 1, 3, Route::AnyBroker),
    a(ApiKey::DescribeConfigs, 1, 4, Route::Configs),
    a(ApiKey::AlterConfigs, 0, 2, Route::Configs),
    a(ApiKey::CreatePartitions, 0, 3, Route::Controller),
    a(ApiKey::DeleteGroups, 0, 2, Route::Groups),
    a(ApiKey::ElectLeaders, 0, 2, Route::Controller),
    a(ApiKey::IncrementalAlterConfigs, 0, 1, Route::Configs),
    a(ApiKey::OffsetDelete, 0, 0, Route::Group),
    a(ApiKey::DescribeClientQuotas, 0, 1, Route::AnyBroker),
    a(ApiKey::AlterClientQuotas, 0, 1, Route::AnyBroker),
    a(ApiKey::DescribeUserScramCredentials, 0, 0, Route::AnyBroker),
    a(ApiKey::AlterUserScramCredentials, 0, 0, Route::AnyBroker),
    a(ApiKey::DescribeCluster, 0, 1, Route::DescribeCluster),
];

/// The audited entry for `key`, if Causeway offers it.
pub fn audited(key: ApiKey) -> Option<&'static Audited> {
    AUDITED.iter().find(|e| e.key == key)
}

/// Decodes any request body, whatever its API: used by tests and fuzzing to show the
/// codec never panics on hostile input.
pub fn decode_any_request(req: &Request) -> Result<RequestKind, CodecError> {
    let mut body: Bytes = req.frame.slice(req.body_offset..);
    RequestKind::decode(req.api_key, &mut body, req.version()).map_err(|source| {
        CodecError::Malformed {
            what: "request body",
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audited_versions_are_within_what_the_codec_knows() {
        for e in AUDITED {
            let known = e.key.valid_versions();
            assert!(e.min <= e.max, "{:?}", e.key);
            assert!(
                e.min >= known.min && e.max <= known.max,
                "{:?}: {}..{} outside codec range {}..{}",
                e.key,
                e.min,
                e.max,
                known.min,
                known.max
            );
        }
    }

    #[test]
    fn every_api_is_listed_once() {
        for (i, e) in AUDITED.iter().enumerate() {
            assert!(
                AUDITED[i + 1..].iter().all(|o| o.key != e.key),
                "{:?} twice",
                e.key
            );
        }
    }
}
