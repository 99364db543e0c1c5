//! Consumer offset sync: committed offsets of source groups copied to the
//! destination, for the link's mirror topics.
//!
//! A mirror keeps its source's offsets, so an offset committed on the source
//! means the same record on the mirror: it is copied as it is, no translation.
//! A group is left alone on the destination while it has members there (it is
//! consuming the mirror itself, after a failover say), and mirrors that are
//! promoted or failed over are no longer synced: their consumers own them now.

use std::collections::HashMap;

use anyhow::{anyhow, bail};
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::{
    ApiKey, DescribeGroupsRequest, DescribeGroupsResponse, GroupId, ListGroupsRequest, ListGroupsResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::backend::cluster::CLIENT_ID;
use crate::backend::Cluster;
use crate::codec;
use crate::routing::Glob;

/// Which groups a link syncs: globs, each `!glob` excluding; the last match wins.
#[derive(Debug, Clone)]
pub struct GroupFilter(Vec<(bool, Glob)>);

impl GroupFilter {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut rules = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (include, glob) = match part.strip_prefix('!') {
                Some(rest) => (false, rest),
                None => (true, part),
            };
            if glob.is_empty() {
                return Err(format!("'{part}' names no group"));
            }
            rules.push((include, Glob::new(glob)));
        }
        if rules.is_empty() {
            return Err("no group patterns (use * for every group)".into());
        }
        Ok(GroupFilter(rules))
    }

    pub fn matches(&self, group: &str) -> bool {
        self.0.iter().rev().find(|(_, g)| g.matches(group)).is_some_and(|(include, _)| *include)
    }
}

/// What one sync round did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Round {
    /// Groups whose offsets were written to the destination.
    pub groups: usize,
    /// Partition offsets written.
    pub offsets: usize,
    /// Groups left alone because they have members on the destination.
    pub active_on_destination: usize,
}

/// (group, mirror topic, partition) -> the offset last written.
pub type Written = HashMap<(String, String, i32), i64>;

/// One round: every matching source group's committed offsets for the mirrored
/// topics (`pairs`: source topic -> (mirror topic, partitions)), written to the
/// destination where they changed since `written`.
pub async fn sync(
    source: &Cluster,
    dest: &Cluster,
    pairs: &HashMap<String, (String, Vec<i32>)>,
    filter: &GroupFilter,
    written: &mut Written,
) -> anyhow::Result<Round> {
    let mut round = Round::default();
    if pairs.is_empty() {
        return Ok(round);
    }
    for group in list_groups(source).await? {
        if !filter.matches(&group) {
            continue;
        }
        let committed = offsets(source, &group, pairs).await?;
        let mut changes: HashMap<String, Vec<(i32, i64)>> = HashMap::new();
        for ((topic, partition), offset) in committed {
            let Some((mirror, _)) = pairs.get(&topic) else { continue };
            if written.get(&(group.clone(), mirror.clone(), partition)) != Some(&offset) {
                changes.entry(mirror.clone()).or_default().push((partition, offset));
            }
        }
        if changes.is_empty() {
            continue;
        }
        if has_members(dest, &group).await? {
            round.active_on_destination += 1;
            continue;
        }
        commit(dest, &group, &changes).await?;
        round.groups += 1;
        for (mirror, parts) in changes {
            for (p, offset) in parts {
                round.offsets += 1;
                written.insert((group.clone(), mirror.clone(), p), offset);
            }
        }
    }
    Ok(round)
}

async fn list_groups(cluster: &Cluster) -> anyhow::Result<Vec<String>> {
    let version = cluster.own_version(ApiKey::ListGroups, 4)?;
    let frame = codec::encode_request(ApiKey::ListGroups, version, CLIENT_ID, &ListGroupsRequest::default())?;
    let mut out = Vec::new();
    // Each broker lists the groups it coordinates.
    for broker in cluster.broker_ids() {
        let resp = cluster.control_request(broker, frame.clone()).await?;
        let body: ListGroupsResponse =
            resp.decode(ApiKey::ListGroups.response_header_version(version), version, "ListGroups response")?;
        if body.error_code != 0 {
            bail!("cluster '{}' answered ListGroups with error {}", cluster.name, body.error_code);
        }
        for g in body.groups {
            // Only consumer groups commit offsets a mirror can use.
            if g.protocol_type.is_empty() || g.protocol_type.as_str() == "consumer" {
                out.push(g.group_id.0.to_string());
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The committed offsets of `group` for the mirrored topics: (topic, partition) -> offset.
async fn offsets(
    cluster: &Cluster,
    group: &str,
    topics: &HashMap<String, (String, Vec<i32>)>,
) -> anyhow::Result<HashMap<(String, i32), i64>> {
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    let version = cluster.own_version(ApiKey::OffsetFetch, 7)?.max(1);
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_topics(Some(
            topics
                .iter()
                .map(|(t, (_, ps))| {
                    OffsetFetchRequestTopic::default()
                        .with_name(TopicName(StrBytes::from_string(t.clone())))
                        .with_partition_indexes(ps.clone())
                })
                .collect(),
        ));
    let frame = codec::encode_request(ApiKey::OffsetFetch, version, CLIENT_ID, &request)?;
    let coordinator = cluster.coordinator(0, group).await?;
    let resp = cluster.control_request(coordinator, frame).await?;
    let body: OffsetFetchResponse =
        resp.decode(ApiKey::OffsetFetch.response_header_version(version), version, "OffsetFetch response")?;
    if body.error_code != 0 {
        cluster.forget_coordinator(0, group);
        bail!("cluster '{}' answered OffsetFetch for group '{group}' with error {}", cluster.name, body.error_code);
    }
    let mut out = HashMap::new();
    for t in body.topics {
        for p in t.partitions {
            if p.error_code == 0 && p.committed_offset >= 0 {
                out.insert((t.name.0.to_string(), p.partition_index), p.committed_offset);
            }
        }
    }
    Ok(out)
}

/// Whether `group` has members on `cluster`.
async fn has_members(cluster: &Cluster, group: &str) -> anyhow::Result<bool> {
    let version = cluster.own_version(ApiKey::DescribeGroups, 5)?;
    let request = DescribeGroupsRequest::default().with_groups(vec![GroupId(StrBytes::from_string(group.to_string()))]);
    let frame = codec::encode_request(ApiKey::DescribeGroups, version, CLIENT_ID, &request)?;
    let coordinator = cluster.coordinator(0, group).await?;
    let resp = cluster.control_request(coordinator, frame).await?;
    let body: DescribeGroupsResponse =
        resp.decode(ApiKey::DescribeGroups.response_header_version(version), version, "DescribeGroups response")?;
    let g = body.groups.first().ok_or_else(|| anyhow!("DescribeGroups answered no group"))?;
    if g.error_code != 0 {
        cluster.forget_coordinator(0, group);
        bail!("cluster '{}' answered DescribeGroups for '{group}' with error {}", cluster.name, g.error_code);
    }
    Ok(!g.members.is_empty())
}

/// Commits offsets for `group` on `cluster` as a standalone commit (no member,
/// generation -1), as admin tools do.
async fn commit(cluster: &Cluster, group: &str, changes: &HashMap<String, Vec<(i32, i64)>>) -> anyhow::Result<()> {
    let version = cluster.own_version(ApiKey::OffsetCommit, 7)?.max(2);
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(StrBytes::from_static_str(""))
        .with_retention_time_ms(-1)
        .with_topics(
            changes
                .iter()
                .map(|(topic, parts)| {
                    OffsetCommitRequestTopic::default()
                        .with_name(TopicName(StrBytes::from_string(topic.clone())))
                        .with_partitions(
                            parts
                                .iter()
                                .map(|&(p, offset)| {
                                    OffsetCommitRequestPartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(offset)
                                        .with_committed_leader_epoch(-1)
                                        .with_committed_metadata(Some(StrBytes::from_static_str("")))
                                })
                                .collect(),
                        )
                })
                .collect(),
        );
    let frame = codec::encode_request(ApiKey::OffsetCommit, version, CLIENT_ID, &request)?;
    let coordinator = cluster.coordinator(0, group).await?;
    let resp = cluster.control_request(coordinator, frame).await?;
    let body: OffsetCommitResponse =
        resp.decode(ApiKey::OffsetCommit.response_header_version(version), version, "OffsetCommit response")?;
    for t in &body.topics {
        for p in &t.partitions {
            if p.error_code != 0 {
                cluster.forget_coordinator(0, group);
                bail!(
                    "cluster '{}' refused group '{group}' offset for {}-{} (error {})",
                    cluster.name,
                    t.name.0,
                    p.partition_index,
                    p.error_code
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_take_the_last_matching_rule() {
        let f = GroupFilter::parse("*, !test-*, test-keep").expect("parses");
        assert!(f.matches("orders"));
        assert!(!f.matches("test-x"));
        assert!(f.matches("test-keep"));
        assert!(!GroupFilter::parse("orders-*").expect("parses").matches("billing"));
        assert!(GroupFilter::parse(" , ").is_err());
        assert!(GroupFilter::parse("!").is_err());
    }
}
