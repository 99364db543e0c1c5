//! An ACL mapper with roles: a SASL user or the CN of a TLS client
//! certificate becomes a principal with the roles the config gives it, and a
//! role allows operations on resources whose names start with a prefix.
//!
//! Config (JSON):
//!
//! ```json
//! {
//!   "principals": {"alice": ["admin"], "orders-svc": ["orders-writer"]},
//!   "default_roles": [],
//!   "allow_anonymous": false,
//!   "rules": [
//!     {"role": "orders-writer", "operations": ["write"], "resource": "topic", "prefix": "orders."},
//!     {"role": "admin", "operations": ["*"], "resource": "*"}
//!   ],
//!   "ttl_ms": 60000
//! }
//! ```
//!
//! - `principals`: name -> roles. The name is the SASL user if the client
//!   authenticated with SASL, else the CN of its certificate's subject
//!   (`CN=orders-svc,O=Example` or `/O=Example/CN=orders-svc`).
//! - `default_roles`: roles of an authenticated name not in `principals`.
//! - `allow_anonymous`: a client with neither SASL nor a certificate becomes
//!   `ANONYMOUS` with `default_roles`; refused if false (the default).
//! - `rules`: each allows `role` the `operations` (`read`, `write`, `create`,
//!   `delete`, `alter`, `describe`, `describe-configs`, `alter-configs`, or
//!   `*`) on resources of kind `resource` (`topic`, `group`,
//!   `transactional-id`, `cluster`, or `*`; `topic` if absent) whose name
//!   starts with `prefix` (every name if absent). As in Kafka, read, write,
//!   delete and alter imply describe, and alter-configs implies
//!   describe-configs.
//! - `ttl_ms`: how long the gateway may cache principals and decisions;
//!   60000 if absent.
//!
//! Anything no rule allows is denied. A rule naming a role no principal has is
//! an error (a typo would silently allow nothing), as are unknown keys.

use std::collections::{BTreeMap, BTreeSet};

use causeway_plugin_sdk::{AclMapper, Decision, Identity, Operation, Principal, ResourceKind};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    principals: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    default_roles: Vec<String>,
    #[serde(default)]
    allow_anonymous: bool,
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default = "default_ttl_ms")]
    ttl_ms: u32,
}

fn default_ttl_ms() -> u32 {
    60_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    role: String,
    operations: Vec<Op>,
    #[serde(default)]
    resource: Kind,
    #[serde(default)]
    prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Op {
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    DescribeConfigs,
    AlterConfigs,
    #[serde(rename = "*")]
    All,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Kind {
    #[default]
    Topic,
    Group,
    TransactionalId,
    Cluster,
    #[serde(rename = "*")]
    All,
}

/// Maps identities to roles and roles to permissions.
#[derive(Debug)]
pub struct RoleAcl {
    config: Config,
}

impl AclMapper for RoleAcl {
    fn init(config: &str) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config).map_err(|e| {
            format!(
                r#"acl-mapper config: {e} (expected {{"principals": {{...}}, "rules": [...]}})"#
            )
        })?;
        let given: BTreeSet<&str> = config
            .principals
            .values()
            .chain(std::iter::once(&config.default_roles))
            .flatten()
            .map(String::as_str)
            .collect();
        for (i, rule) in config.rules.iter().enumerate() {
            if !given.contains(rule.role.as_str()) {
                return Err(format!(
                    "acl-mapper config: rules[{i}]: role {:?} is given to no principal (nor in default_roles)",
                    rule.role
                ));
            }
            if rule.operations.is_empty() {
                return Err(format!(
                    "acl-mapper config: rules[{i}]: `operations` is empty"
                ));
            }
        }
        Ok(RoleAcl { config })
    }

    fn map_principal(&mut self, who: &Identity) -> Result<Principal, String> {
        let name = match (&who.sasl_user, &who.tls_subject) {
            (Some(user), _) if !user.is_empty() => user.clone(),
            (_, Some(subject)) => common_name(subject)
                .ok_or_else(|| format!("the TLS subject {subject:?} has no CN"))?
                .to_string(),
            _ if self.config.allow_anonymous => "ANONYMOUS".to_string(),
            _ => {
                return Err(
                    "neither SASL nor a TLS client certificate: anonymous clients are refused"
                        .into(),
                )
            }
        };
        let roles = self
            .config
            .principals
            .get(&name)
            .unwrap_or(&self.config.default_roles)
            .clone();
        Ok(Principal {
            name,
            roles,
            ttl_ms: self.config.ttl_ms,
        })
    }

    fn authorize(
        &mut self,
        who: &Principal,
        op: Operation,
        kind: ResourceKind,
        name: &str,
    ) -> Decision {
        let allow = self.config.rules.iter().any(|rule| {
            who.roles.contains(&rule.role)
                && rule.operations.iter().any(|&granted| grants(granted, op))
                && matches_kind(rule.resource, kind)
                && name.starts_with(rule.prefix.as_str())
        });
        Decision {
            allow,
            ttl_ms: self.config.ttl_ms,
        }
    }
}

/// Whether granting `granted` allows `op`, with Kafka's implications.
fn grants(granted: Op, op: Operation) -> bool {
    use Operation as O;
    matches!(
        (granted, op),
        (Op::All, _)
            | (Op::Read | Op::Write | Op::Delete | Op::Alter, O::Describe)
            | (Op::AlterConfigs, O::DescribeConfigs)
            | (Op::Read, O::Read)
            | (Op::Write, O::Write)
            | (Op::Create, O::Create)
            | (Op::Delete, O::Delete)
            | (Op::Alter, O::Alter)
            | (Op::Describe, O::Describe)
            | (Op::DescribeConfigs, O::DescribeConfigs)
            | (Op::AlterConfigs, O::AlterConfigs)
    )
}

fn matches_kind(rule: Kind, kind: ResourceKind) -> bool {
    matches!(
        (rule, kind),
        (Kind::All, _)
            | (Kind::Topic, ResourceKind::Topic)
            | (Kind::Group, ResourceKind::Group)
            | (Kind::TransactionalId, ResourceKind::TransactionalId)
            | (Kind::Cluster, ResourceKind::Cluster)
    )
}

/// The first CN of a subject in RFC 4514 form (`CN=a,O=b`, `\,` escapes a
/// comma) or OpenSSL's one-line form (`/O=b/CN=a`).
fn common_name(subject: &str) -> Option<&str> {
    let subject = subject.trim();
    let slash_form = subject.starts_with('/');
    let mut start = usize::from(slash_form);
    let bytes = subject.as_bytes();
    let mut i = start;
    while i <= bytes.len() {
        let at_end = i == bytes.len();
        let separator = !at_end
            && if slash_form {
                bytes[i] == b'/'
            } else {
                matches!(bytes[i], b',' | b'+' | b';')
            };
        if at_end || separator {
            let part = subject[start..i].trim();
            if let Some((attr, value)) = part.split_once('=') {
                if attr.trim().eq_ignore_ascii_case("CN") && !value.trim().is_empty() {
                    return Some(value.trim());
                }
            }
            start = i + 1;
        } else if bytes[i] == b'\\' {
            // Skip the escaped character.
            i += 1;
        }
        i += 1;
    }
    None
}

causeway_plugin_sdk::acl_mapper!(RoleAcl);

#[cfg(test)]
mod tests {
    use causeway_plugin_sdk::testing::AclHarness;

    use super::*;

    const CONFIG: &str = r#"{
        "principals": {"alice": ["admin"], "orders-svc": ["orders-writer", "orders-reader"], "bob": []},
        "default_roles": ["visitor"],
        "rules": [
            {"role": "orders-writer", "operations": ["write"], "prefix": "orders."},
            {"role": "orders-reader", "operations": ["read"], "prefix": "orders."},
            {"role": "orders-reader", "operations": ["read"], "resource": "group", "prefix": "orders-"},
            {"role": "visitor", "operations": ["describe"], "resource": "topic", "prefix": "public."},
            {"role": "admin", "operations": ["*"], "resource": "*"}
        ],
        "ttl_ms": 1000
    }"#;

    fn acl() -> AclHarness<RoleAcl> {
        AclHarness::new(CONFIG).expect("init")
    }

    #[test]
    fn sasl_user_or_certificate_cn_becomes_the_principal() {
        let mut acl = acl();
        let p = acl
            .map_principal(&Identity::sasl("orders-svc"))
            .expect("sasl");
        assert_eq!(
            p,
            Principal {
                name: "orders-svc".into(),
                roles: vec!["orders-writer".into(), "orders-reader".into()],
                ttl_ms: 1000
            }
        );
        let p = acl
            .map_principal(&Identity::tls("CN=alice,OU=ops,O=Example"))
            .expect("tls");
        assert_eq!(
            (p.name.as_str(), p.roles.as_slice()),
            ("alice", &["admin".to_string()][..])
        );
        let p = acl
            .map_principal(&Identity::tls("/C=DE/O=Example/CN=orders-svc"))
            .expect("openssl form");
        assert_eq!(p.name, "orders-svc");
        // SASL wins over the certificate; unknown names get the default roles.
        let mut both = Identity::sasl("carol");
        both.tls_subject = Some("CN=alice".into());
        let p = acl.map_principal(&both).expect("both");
        assert_eq!(
            (p.name.as_str(), p.roles.as_slice()),
            ("carol", &["visitor".to_string()][..])
        );
    }

    #[test]
    fn identities_that_name_nobody_are_refused() {
        let mut acl = acl();
        assert!(acl
            .map_principal(&Identity::anonymous())
            .expect_err("anon")
            .contains("anonymous"));
        assert!(acl
            .map_principal(&Identity::tls("O=Example,OU=x"))
            .expect_err("no cn")
            .contains("no CN"));
        let mut open =
            AclHarness::<RoleAcl>::new(r#"{"allow_anonymous":true,"default_roles":["r"]}"#)
                .expect("init");
        let p = open
            .map_principal(&Identity::anonymous())
            .expect("anon allowed");
        assert_eq!((p.name.as_str(), p.roles.len()), ("ANONYMOUS", 1));
    }

    #[test]
    fn rules_allow_by_role_operation_kind_and_prefix() {
        let mut acl = acl();
        let svc = Identity::sasl("orders-svc");
        let t = ResourceKind::Topic;
        assert_eq!(acl.allows(&svc, Operation::Write, t, "orders.eu"), Ok(true));
        assert_eq!(acl.allows(&svc, Operation::Read, t, "orders.eu"), Ok(true));
        // Write and read imply describe (Metadata works).
        assert_eq!(
            acl.allows(&svc, Operation::Describe, t, "orders.eu"),
            Ok(true)
        );
        assert_eq!(acl.allows(&svc, Operation::Write, t, "payments"), Ok(false));
        assert_eq!(
            acl.allows(&svc, Operation::Delete, t, "orders.eu"),
            Ok(false)
        );
        assert_eq!(
            acl.allows(&svc, Operation::Read, ResourceKind::Group, "orders-app"),
            Ok(true)
        );
        assert_eq!(
            acl.allows(&svc, Operation::Read, ResourceKind::Group, "billing"),
            Ok(false)
        );
        assert_eq!(
            acl.allows(
                &svc,
                Operation::Create,
                ResourceKind::Cluster,
                "kafka-cluster"
            ),
            Ok(false)
        );

        let bob = Identity::sasl("bob");
        assert_eq!(
            acl.allows(&bob, Operation::Describe, t, "public.news"),
            Ok(false),
            "no roles at all"
        );
        let visitor = Identity::sasl("someone");
        assert_eq!(
            acl.allows(&visitor, Operation::Describe, t, "public.news"),
            Ok(true)
        );
        assert_eq!(
            acl.allows(&visitor, Operation::Read, t, "public.news"),
            Ok(false)
        );

        let alice = Identity::tls("CN=alice");
        for op in [
            Operation::AlterConfigs,
            Operation::Create,
            Operation::Delete,
        ] {
            assert_eq!(
                acl.allows(&alice, op, ResourceKind::Cluster, "kafka-cluster"),
                Ok(true)
            );
        }
        let principal = acl.map_principal(&alice).expect("alice");
        let d = acl.authorize(&principal, Operation::Read, t, "x");
        assert_eq!(
            d,
            Decision {
                allow: true,
                ttl_ms: 1000
            }
        );
    }

    #[test]
    fn common_names() {
        assert_eq!(common_name("CN=a"), Some("a"));
        assert_eq!(common_name("cn = spaced name , O=x"), Some("spaced name"));
        assert_eq!(common_name(r"O=Acme\, Inc.,CN=svc"), Some("svc"));
        assert_eq!(common_name("/O=x/CN=svc/emailAddress=a@b"), Some("svc"));
        assert_eq!(common_name("CN=,O=x"), None);
        assert_eq!(common_name(""), None);
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        for (config, needle) in [
            ("", "acl-mapper config"),
            (
                r#"{"rules":[{"role":"admn","operations":["*"]}]}"#,
                "rules[0]: role \"admn\" is given to no principal",
            ),
            (
                r#"{"principals":{"a":["r"]},"rules":[{"role":"r","operations":[]}]}"#,
                "`operations` is empty",
            ),
            (
                r#"{"principals":{"a":["r"]},"rules":[{"role":"r","operations":["wrte"]}]}"#,
                "unknown variant `wrte`",
            ),
            (
                r#"{"principals":{"a":["r"]},"rules":[{"role":"r","operations":["read"],"resource":"topics"}]}"#,
                "unknown variant `topics`",
            ),
            (r#"{"principal":{}}"#, "unknown field `principal`"),
        ] {
            let err = AclHarness::<RoleAcl>::new(config).err().unwrap_or_default();
            assert!(err.contains(needle), "config {config:?}: {err:?}");
        }
    }
}
