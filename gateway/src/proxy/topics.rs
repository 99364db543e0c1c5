//! Topic administration and configs: CreateTopics, DeleteTopics, CreatePartitions,
//! ElectLeaders, DescribeConfigs, AlterConfigs and IncrementalAlterConfigs.
//!
//! Each topic goes to the cluster its route names, under the backend's name, and
//! the answers are merged back under the client's names; a topic no route leads to
//! is refused with a message saying so. Broker config resources name Causeway's node
//! and are renamed to a broker of the default cluster and back, so
//! `kafka-configs --entity-type brokers --entity-name 0` works.

use std::sync::Arc;

use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, ApiKey, CreatePartitionsRequest,
    CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, DescribeConfigsRequest, DescribeConfigsResponse, ElectLeadersRequest,
    ElectLeadersResponse, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::messages::{
    alter_configs_response, create_partitions_response, create_topics_response,
    delete_topics_response, describe_configs_response, elect_leaders_response,
    incremental_alter_configs_response,
};
use kafka_protocol::protocol::StrBytes;

use super::handlers::code;
use super::partitioned::{route, Names, Place, Positions, Split, TopicKey};
use super::session::Answer;
use super::{Gateway, ProxyError};
use crate::backend::SessionConns;
use crate::codec::Request;
use super::routes::ClientRoutes;
use crate::authz::Operation;

/// Config resource types.
const TOPIC: i8 = 2;
const BROKER: i8 = 4;
const BROKER_LOGGER: i8 = 8;

pub async fn dispatch(
    gw: &Arc<Gateway>,
    conns: &mut SessionConns,
    router: &ClientRoutes,
    req: Request,
) -> Result<Option<Answer>, ProxyError> {
    match req.api_key {
        ApiKey::CreateTopics => route::<CreateTopicsRequest>(gw, conns, router, req).await,
        ApiKey::DeleteTopics => route::<DeleteTopicsRequest>(gw, conns, router, req).await,
        ApiKey::CreatePartitions => route::<CreatePartitionsRequest>(gw, conns, router, req).await,
        ApiKey::ElectLeaders => route::<ElectLeadersRequest>(gw, conns, router, req).await,
        ApiKey::DescribeConfigs => route::<DescribeConfigsRequest>(gw, conns, router, req).await,
        ApiKey::AlterConfigs => route::<AlterConfigsRequest>(gw, conns, router, req).await,
        _ => route::<IncrementalAlterConfigsRequest>(gw, conns, router, req).await,
    }
}

/// The topic indexes in `keep` (each topic is one position).
fn indexes(keep: &Positions) -> Vec<usize> {
    keep.iter().map(|&(ti, _)| ti).collect()
}

fn pick<T: Clone>(items: &[T], keep: &Positions) -> Vec<T> {
    indexes(keep).into_iter().filter_map(|i| items.get(i).cloned()).collect()
}

fn message(text: &str) -> Option<StrBytes> {
    (!text.is_empty()).then(|| StrBytes::from_string(text.to_string()))
}

fn moved(code: i16) -> bool {
    code == code::NOT_CONTROLLER
}

impl Split for CreateTopicsRequest {
    type Resp = CreateTopicsResponse;
    const WHAT: &'static str = "CreateTopics request";
    const RESP_WHAT: &'static str = "CreateTopics response";
    const OPERATION: Option<Operation> = Some(Operation::Create);
    const PLACE: Place = Place::Controller;
    const NO_ROUTE: i16 = code::INVALID_TOPIC_EXCEPTION;
    const UNREACHABLE: i16 = code::NOT_CONTROLLER;

    fn keys(&self) -> Vec<(TopicKey, Vec<i32>)> {
        self.topics.iter().map(|t| (TopicKey::Name(t.name.0.to_string()), vec![0])).collect()
    }
    fn subset(&self, keep: &Positions) -> Self {
        let mut out = self.clone();
        out.topics = pick(&self.topics, keep);
        out
    }
    fn merge(acc: &mut Self::Resp, part: Self::Resp) {
        acc.throttle_time_ms = acc.throttle_time_ms.max(part.throttle_time_ms);
        acc.topics.extend(part.topics);
    }
    fn failed(&self, keep: &Positions, code: i16) -> Self::Resp {
        self.failed_with(keep, code, "")
    }
    fn failed_with(&self, keep: &Positions, code: i16, text: &str) -> Self::Resp {
        CreateTopicsResponse::default().with_topics(
            pick(&self.topics, keep)
                .into_iter()
                .map(|t| {
                    create_topics_response::CreatableTopicResult::default()
                        .with_name(t.name)
                        .with_error_code(code)
                        .with_error_message(message(text))
                        .with_num_partitions(-1)
                        .with_replication_factor(-1)
                })
                .collect(),
        )
    }
    /// KIP-525: the configs of a created topic are shown only to a client that
    /// may describe them; the backend judged Causeway's login, not the client's.
    fn authorize_answer(resp: &mut Self::Resp, routes: &super::routes::ClientRoutes) -> bool {
        let mut changed = false;
        for t in &mut resp.topics {
            if !routes.may_quietly(Operation::DescribeConfigs, crate::authz::Resource::Topic, &t.name.0) {
                t.configs = None;
                t.topic_config_error_code = code::TOPIC_AUTHORIZATION_FAILED;
                changed = true;
            }
        }
        changed
    }
    fn leaders_moved(resp: &Self::Resp) -> bool {
        resp.topics.iter().any(|t| moved(t.error_code))
    }
    fn rename(&mut self, names: &Names) -> bool {
        let mut changed = false;
        for t in &mut self.topics {
            changed |= names.topic(&mut t.name.0);
        }
        changed
    }
    fn rename_back(resp: &mut Self::Resp, names: &Names) {
        for t in &mut resp.topics {
            names.topic(&mut t.name.0);
        }
    }
}

impl Split for DeleteTopicsRequest {
    type Resp = DeleteTopicsResponse;
    const WHAT: &'static str = "DeleteTopics request";
    const RESP_WHAT: &'static str = "DeleteTopics response";
    const OPERATION: Option<Operation> = Some(Operation::Delete);
    const PLACE: Place = Place::Controller;
    const UNREACHABLE: i16 = code::NOT_CONTROLLER;

    fn keys(&self) -> Vec<(TopicKey, Vec<i32>)> {
        if self.topics.is_empty() {
            return self.topic_names.iter().map(|n| (TopicKey::Name(n.0.to_string()), vec![0])).collect();
        }
        self.topics
            .iter()
            .map(|t| match &t.name {
                Some(n) if !n.0.is_empty() => (TopicKey::Name(n.0.to_string()), vec![0]),
                _ => (TopicKey::Id(t.topic_id), vec![0]),
            })
            .collect()
    }
    fn subset(&self, keep: &Positions) -> Self {
        let mut out = self.clone();
        out.topics = pick(&self.topics, keep);
        out.topic_names = pick(&self.topic_names, keep);
        out
    }
    fn merge(acc: &mut Self::Resp, part: Self::Resp) {
        acc.throttle_time_ms = acc.throttle_time_ms.max(part.throttle_time_ms);
        acc.responses.extend(part.responses);
    }
    fn failed(&self, keep: &Positions, code: i16) -> Self::Resp {
        self.failed_with(keep, code, "")
    }
    fn failed_with(&self, keep: &Positions, code: i16, text: &str) -> Self::Resp {
        let entries: Vec<_> = if self.topics.is_empty() {
            pick(&self.topic_names, keep).into_iter().map(|n| (Some(n), uuid::Uuid::nil())).collect()
        } else {
            pick(&self.topics, keep).into_iter().map(|t| (t.name, t.topic_id)).collect()
        };
        DeleteTopicsResponse::default().with_responses(
            entries
                .into_iter()
                .map(|(name, id)| {
                    delete_topics_response::DeletableTopicResult::default()
                        .with_name(name)
                        .with_topic_id(id)
                        .with_error_code(code)
                        .with_error_message(message(text))
                })
                .collect(),
        )
    }
    fn leaders_moved(resp: &Self::Resp) -> bool {
        resp.responses.iter().any(|t| moved(t.error_code))
    }
    fn fit_version(resp: &mut Self::Resp, version: i16) {
        if version < 5 {
            for t in &mut resp.responses {
                t.error_message = None;
            }
        }
    }
    fn rename(&mut self, names: &Names) -> bool {
        let mut changed = false;
        for n in &mut self.topic_names {
            changed |= names.topic(&mut n.0);
        }
        for t in &mut self.topics {
            if let Some(n) = &mut t.name {
                changed |= names.topic(&mut n.0);
            }
        }
        changed
    }
    fn rename_back(resp: &mut Self::Resp, names: &Names) {
        for t in &mut resp.responses {
            if let Some(n) = &mut t.name {
                names.topic(&mut n.0);
            }
        }
    }
}

impl Split for CreatePartitionsRequest {
    type Resp = CreatePartitionsResponse;
    const WHAT: &'static str = "CreatePartitions request";
    const RESP_WHAT: &'static str = "CreatePartitions response";
    const OPERATION: Option<Operation> = Some(Operation::Alter);
    const PLACE: Place = Place::Controller;
    const UNREACHABLE: i16 = code::NOT_CONTROLLER;

    fn keys(&self) -> Vec<(TopicKey, Vec<i32>)> {
        self.topics.iter().map(|t| (TopicKey::Name(t.name.0.to_string()), vec![0])).collect()
    }
    fn subset(&self, keep: &Positions) -> Self {
        let mut out = self.clone();
        out.topics = pick(&self.topics, keep);
        out
    }
    fn merge(acc: &mut Self::Resp, part: Self::Resp) {
        acc.throttle_time_ms = acc.throttle_time_ms.max(part.throttle_time_ms);
        acc.results.extend(part.results);
    }
    fn failed(&self, keep: &Positions, code: i16) -> Self::Resp {
        self.failed_with(keep, code, "")
    }
    fn failed_with(&self, keep: &Positions, code: i16, text: &str) -> Self::Resp {
        CreatePartitionsResponse::default().with_results(
            pick(&self.topics, keep)
                .into_iter()
                .map(|t| {
                    create_partitions_response::CreatePartitionsTopicResult::default()
                        .with_name(t.name)
                        .with_error_code(code)
                        .with_error_message(message(text))
                })
                .collect(),
        )
    }
    fn leaders_moved(resp: &Self::Resp) -> bool {
        resp.results.iter().any(|t| moved(t.error_code))
    }
    fn rename(&mut self, names: &Names) -> bool {
        let mut changed = false;
        for t in &mut self.topics {
            changed |= names.topic(&mut t.name.0);
        }
        changed
    }
    fn rename_back(resp: &mut Self::Resp, names: &Names) {
        for t in &mut resp.results {
            names.topic(&mut t.name.0);
        }
    }
}

impl Split for ElectLeadersRequest {
    type Resp = ElectLeadersResponse;
    const WHAT: &'static str = "ElectLeaders request";
    const RESP_WHAT: &'static str = "ElectLeaders response";
    const OPERATION: Option<Operation> = None;
    const CLUSTER_OPERATION: Option<Operation> = Some(Operation::Alter);
    const PLACE: Place = Place::Controller;
    const UNREACHABLE: i16 = code::NOT_CONTROLLER;

    fn keys(&self) -> Vec<(TopicKey, Vec<i32>)> {
        self.topic_partitions
            .iter()
            .flatten()
            .map(|t| (TopicKey::Name(t.topic.0.to_string()), t.partitions.clone()))
            .collect()
    }
    fn subset(&self, keep: &Positions) -> Self {
        let mut out = self.clone();
        if let Some(all) = &self.topic_partitions {
            let mut chosen: std::collections::BTreeMap<usize, Vec<i32>> = Default::default();
            for &(ti, pi) in keep {
                if let Some(p) = all.get(ti).and_then(|t| t.partitions.get(pi)) {
                    chosen.entry(ti).or_default().push(*p);
                }
            }
            out.topic_partitions = Some(
                chosen
                    .into_iter()
                    .filter_map(|(ti, ps)| {
                        let mut t = all.get(ti)?.clone();
                        t.partitions = ps;
                        Some(t)
                    })
                    .collect(),
            );
        }
        out
    }
    fn merge(acc: &mut Self::Resp, part: Self::Resp) {
        acc.throttle_time_ms = acc.throttle_time_ms.max(part.throttle_time_ms);
        if acc.error_code == 0 {
            acc.error_code = part.error_code;
        }
        acc.replica_election_results.extend(part.replica_election_results);
    }
    fn failed(&self, keep: &Positions, code: i16) -> Self::Resp {
        let sub = self.subset(keep);
        ElectLeadersResponse::default().with_replica_election_results(
            sub.topic_partitions
                .into_iter()
                .flatten()
                .map(|t| {
                    elect_leaders_response::ReplicaElectionResult::default()
                        .with_topic(t.topic)
                        .with_partition_result(
                            t.partitions
                                .into_iter()
                                .map(|p| {
                                    elect_leaders_response::PartitionResult::default()
                                        .with_partition_id(p)
                                        .with_error_code(code)
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
    }
    fn leaders_moved(resp: &Self::Resp) -> bool {
        moved(resp.error_code)
    }
    fn refused(&self, code: i16) -> Self::Resp {
        let all: Positions =
            self.keys().iter().enumerate().flat_map(|(ti, (_, ps))| (0..ps.len()).map(move |pi| (ti, pi))).collect();
        self.failed(&all, code).with_error_code(code)
    }
    fn rename(&mut self, names: &Names) -> bool {
        let mut changed = false;
        for t in self.topic_partitions.iter_mut().flatten() {
            changed |= names.topic(&mut t.topic.0);
        }
        changed
    }
    fn rename_back(resp: &mut Self::Resp, names: &Names) {
        for t in &mut resp.replica_election_results {
            names.topic(&mut t.topic.0);
        }
    }
}

/// A config resource's key: topics by route, everything else to the default cluster.
fn resource_key(kind: i8, name: &StrBytes) -> (TopicKey, Vec<i32>) {
    if kind == TOPIC {
        (TopicKey::Name(name.to_string()), vec![0])
    } else {
        (TopicKey::Default, vec![0])
    }
}

/// Renames a config resource: topics by route, brokers between node ids.
fn rename_resource(kind: i8, name: &mut StrBytes, names: &Names) -> bool {
    match kind {
        TOPIC => names.topic(name),
        BROKER | BROKER_LOGGER => names.broker(name),
        _ => false,
    }
}

/// `Split` for the three config APIs, which differ only in type and field names.
macro_rules! config_split {
    (
        $req:ty => $resp:ty, $what:literal, $resp_what:literal,
        answers: $answers:ident, answer: $answer:ty, operation: $op:expr
    ) => {
        impl Split for $req {
            type Resp = $resp;
            const WHAT: &'static str = $what;
            const RESP_WHAT: &'static str = $resp_what;
            const OPERATION: Option<Operation> = Some($op);
            const PLACE: Place = Place::Any;
            const UNREACHABLE: i16 = code::REQUEST_TIMED_OUT;

            fn keys(&self) -> Vec<(TopicKey, Vec<i32>)> {
                self.resources.iter().map(|r| resource_key(r.resource_type, &r.resource_name)).collect()
            }
            fn subset(&self, keep: &Positions) -> Self {
                let mut out = self.clone();
                out.resources = pick(&self.resources, keep);
                out
            }
            fn merge(acc: &mut Self::Resp, part: Self::Resp) {
                acc.throttle_time_ms = acc.throttle_time_ms.max(part.throttle_time_ms);
                acc.$answers.extend(part.$answers);
            }
            fn failed(&self, keep: &Positions, code: i16) -> Self::Resp {
                self.failed_with(keep, code, "")
            }
            fn failed_with(&self, keep: &Positions, code: i16, text: &str) -> Self::Resp {
                let mut out = <$resp>::default();
                for r in pick(&self.resources, keep) {
                    let mut a = <$answer>::default();
                    a.resource_type = r.resource_type;
                    a.resource_name = r.resource_name;
                    a.error_code = code;
                    a.error_message = message(text);
                    out.$answers.push(a);
                }
                out
            }
            fn leaders_moved(_resp: &Self::Resp) -> bool {
                false
            }
            fn renames_brokers(&self) -> bool {
                self.resources
                    .iter()
                    .any(|r| r.resource_type == BROKER || r.resource_type == BROKER_LOGGER)
            }
            fn rename(&mut self, names: &Names) -> bool {
                let mut changed = false;
                for r in &mut self.resources {
                    changed |= rename_resource(r.resource_type, &mut r.resource_name, names);
                }
                changed
            }
            fn rename_back(resp: &mut Self::Resp, names: &Names) {
                for r in &mut resp.$answers {
                    rename_resource(r.resource_type, &mut r.resource_name, names);
                }
            }
        }
    };
}

config_split!(
    DescribeConfigsRequest => DescribeConfigsResponse, "DescribeConfigs request", "DescribeConfigs response",
    answers: results, answer: describe_configs_response::DescribeConfigsResult,
    operation: Operation::DescribeConfigs
);
config_split!(
    AlterConfigsRequest => AlterConfigsResponse, "AlterConfigs request", "AlterConfigs response",
    answers: responses, answer: alter_configs_response::AlterConfigsResourceResponse,
    operation: Operation::AlterConfigs
);
config_split!(
    IncrementalAlterConfigsRequest => IncrementalAlterConfigsResponse,
    "IncrementalAlterConfigs request", "IncrementalAlterConfigs response",
    answers: responses, answer: incremental_alter_configs_response::AlterConfigsResourceResponse,
    operation: Operation::AlterConfigs
);
