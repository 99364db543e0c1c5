//! Address rewriting: every broker, leader, coordinator and controller a client
//! sees is Causeway's own node, so no backend address ever reaches a client.

use kafka_protocol::messages::{
    BrokerId, DescribeClusterResponse, FindCoordinatorResponse, MetadataResponse,
};
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_response::MetadataResponseBroker;
use kafka_protocol::protocol::StrBytes;

use super::Gateway;


impl Gateway {
    fn host_bytes(&self) -> StrBytes {
        StrBytes::from_string(self.host.clone())
    }

    fn shown_cluster_id(&self, backend: Option<String>) -> Option<StrBytes> {
        self.cluster_id
            .clone()
            .or(backend)
            .map(StrBytes::from_string)
    }
}

/// Metadata: Causeway is the only broker, the controller, and every leader.
pub fn metadata(body: &mut MetadataResponse, gw: &Gateway, backend_cluster_id: Option<String>) {
    let me = BrokerId(gw.node_id);
    body.brokers = vec![MetadataResponseBroker::default()
        .with_node_id(me)
        .with_host(gw.host_bytes())
        .with_port(gw.port)];
    body.controller_id = me;
    if body.cluster_id.is_some() || gw.cluster_id.is_some() {
        body.cluster_id = gw.shown_cluster_id(
            body.cluster_id
                .as_ref()
                .map(|c| c.to_string())
                .or(backend_cluster_id),
        );
    }
    for topic in &mut body.topics {
        for p in &mut topic.partitions {
            if p.leader_id.0 >= 0 {
                p.leader_id = me;
            }
            p.replica_nodes = vec![me];
            p.isr_nodes = if p.leader_id.0 >= 0 { vec![me] } else { Vec::new() };
            p.offline_replicas = Vec::new();
        }
    }
}

/// FindCoordinator: the coordinator is Causeway; errors pass through unchanged.
/// Below v4 the answer is the top-level fields, from v4 the `coordinators` list.
pub fn find_coordinator(body: &mut FindCoordinatorResponse, gw: &Gateway, version: i16) {
    if version < 4 && body.error_code == 0 && body.node_id.0 >= 0 {
        body.node_id = BrokerId(gw.node_id);
        body.host = gw.host_bytes();
        body.port = gw.port;
    }
    for c in &mut body.coordinators {
        if c.error_code == 0 && c.node_id.0 >= 0 {
            c.node_id = BrokerId(gw.node_id);
            c.host = gw.host_bytes();
            c.port = gw.port;
        }
    }
}

/// DescribeCluster: one broker, Causeway, which is also the controller.
pub fn describe_cluster(
    body: &mut DescribeClusterResponse,
    gw: &Gateway,
    backend_cluster_id: Option<String>,
) {
    let me = BrokerId(gw.node_id);
    body.brokers = vec![DescribeClusterBroker::default()
        .with_broker_id(me)
        .with_host(gw.host_bytes())
        .with_port(gw.port)];
    body.controller_id = me;
    if let Some(id) = gw.shown_cluster_id(Some(body.cluster_id.to_string()).or(backend_cluster_id)) {
        body.cluster_id = id;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::metadata_response::{MetadataResponsePartition, MetadataResponseTopic};
    use kafka_protocol::messages::TopicName;

    fn gateway() -> Gateway {
        Gateway::for_tests()
    }

    #[test]
    fn metadata_shows_only_the_gateway() {
        let mut body = MetadataResponse::default()
            .with_brokers(vec![
                MetadataResponseBroker::default().with_node_id(BrokerId(1)).with_host("10.0.0.1".into()).with_port(19092),
                MetadataResponseBroker::default().with_node_id(BrokerId(2)).with_host("10.0.0.2".into()).with_port(19092),
            ])
            .with_controller_id(BrokerId(2))
            .with_cluster_id(Some("backend".into()))
            .with_topics(vec![MetadataResponseTopic::default()
                .with_name(Some(TopicName("t".into())))
                .with_partitions(vec![
                    MetadataResponsePartition::default()
                        .with_partition_index(0)
                        .with_leader_id(BrokerId(2))
                        .with_leader_epoch(5)
                        .with_replica_nodes(vec![BrokerId(1), BrokerId(2)])
                        .with_isr_nodes(vec![BrokerId(2)])
                        .with_offline_replicas(vec![BrokerId(1)]),
                    MetadataResponsePartition::default()
                        .with_partition_index(1)
                        .with_error_code(5)
                        .with_leader_id(BrokerId(-1)),
                ])]);
        let gw = gateway();
        metadata(&mut body, &gw, None);
        assert_eq!(body.brokers.len(), 1);
        assert_eq!(body.brokers[0].node_id.0, 7);
        assert_eq!(body.brokers[0].host.as_str(), "gw.example");
        assert_eq!(body.brokers[0].port, 9092);
        assert_eq!(body.controller_id.0, 7);
        assert_eq!(body.cluster_id.as_deref(), Some("backend"));
        let p = &body.topics[0].partitions;
        assert_eq!(p[0].leader_id.0, 7);
        assert_eq!(p[0].leader_epoch, 5, "leader epochs pass through for fencing");
        assert_eq!(p[0].replica_nodes, vec![BrokerId(7)]);
        assert!(p[0].offline_replicas.is_empty());
        assert_eq!(p[1].leader_id.0, -1, "no leader stays no leader");
        assert!(p[1].isr_nodes.is_empty());
    }

    #[test]
    fn find_coordinator_points_at_the_gateway_but_keeps_errors() {
        let gw = gateway();
        let mut ok = FindCoordinatorResponse::default().with_node_id(BrokerId(3)).with_host("10.0.0.3".into()).with_port(1);
        find_coordinator(&mut ok, &gw, 3);
        assert_eq!((ok.node_id.0, ok.host.as_str(), ok.port), (7, "gw.example", 9092));
        let mut err = FindCoordinatorResponse::default().with_error_code(15).with_node_id(BrokerId(-1));
        find_coordinator(&mut err, &gw, 3);
        assert_eq!(err.node_id.0, -1);
        // v4+: only the list is rewritten; the top-level fields stay at their
        // defaults, which v4 cannot carry otherwise.
        let mut batched = FindCoordinatorResponse::default().with_coordinators(vec![
            kafka_protocol::messages::find_coordinator_response::Coordinator::default()
                .with_node_id(BrokerId(3))
                .with_host("10.0.0.3".into()),
        ]);
        find_coordinator(&mut batched, &gw, 4);
        assert_eq!(batched.host.as_str(), "");
        assert_eq!(batched.coordinators[0].host.as_str(), "gw.example");
        assert!(crate::codec::encode_response(&batched, 4, 1, "x").is_ok());
    }
}
