//! Topic config sync: a mirror's topic configs follow its source's.
//!
//! Three classes, as Cluster Linking has them:
//! - [`ALWAYS`]: what decides which records a consumer of the mirror sees and how
//!   they are kept (cleanup policy, retention, timestamps, message size), synced
//!   for every mirror;
//! - opt-in: any other key named in the link's `topic.config.sync.include`;
//! - [`NEVER`]: what belongs to the destination cluster's own operation
//!   (replication safety, throttles), refused in `topic.config.sync.include`.
//!
//! A key is written to the destination only where its value differs from the
//! source's; a key the source does not set is left alone on the destination.

use std::collections::HashMap;

/// Configs synced for every mirror.
pub const ALWAYS: &[&str] = &[
    "cleanup.policy",
    "compression.type",
    "delete.retention.ms",
    "max.compaction.lag.ms",
    "max.message.bytes",
    "message.timestamp.after.max.ms",
    "message.timestamp.before.max.ms",
    "message.timestamp.difference.max.ms",
    "message.timestamp.type",
    "min.cleanable.dirty.ratio",
    "min.compaction.lag.ms",
    "retention.bytes",
    "retention.ms",
];

/// Configs never synced: the destination's own business.
pub const NEVER: &[&str] = &[
    "follower.replication.throttled.replicas",
    "leader.replication.throttled.replicas",
    "min.insync.replicas",
    "unclean.leader.election.enable",
];

/// Validates `topic.config.sync.include`: comma-separated config names.
pub fn parse_include(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for key in text.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        if NEVER.contains(&key) {
            return Err(format!("'{key}' is the destination's own and never synced"));
        }
        if !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-') {
            return Err(format!("'{key}' is not a config name"));
        }
        out.push(key.to_string());
    }
    Ok(out)
}

/// The configs of a source topic a mirror takes, of those `source` has.
pub fn synced(source: &HashMap<String, String>, include: &[String]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = source
        .iter()
        .filter(|(k, _)| ALWAYS.contains(&k.as_str()) || include.iter().any(|i| i == *k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.sort();
    out
}

/// What to set on the destination so that it matches the source.
pub fn changes(source: &HashMap<String, String>, dest: &HashMap<String, String>, include: &[String]) -> Vec<(String, String)> {
    synced(source, include).into_iter().filter(|(k, v)| dest.get(k) != Some(v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn only_synced_keys_that_differ_are_set() {
        let source = map(&[("retention.ms", "7200000"), ("cleanup.policy", "compact"), ("segment.bytes", "1024"), ("min.insync.replicas", "2")]);
        let dest = map(&[("retention.ms", "3600000"), ("cleanup.policy", "compact")]);
        assert_eq!(changes(&source, &dest, &[]), vec![("retention.ms".to_string(), "7200000".to_string())]);
        let include = parse_include("segment.bytes").expect("parses");
        assert_eq!(changes(&source, &dest, &include).len(), 2);
        assert!(parse_include("min.insync.replicas").is_err());
        assert!(parse_include("a b").is_err());
    }
}
