//! Authorization at the gateway: who may do what to which resource.
//!
//! Rules come from the config's `[[acls]]`, in Kafka's terms: a principal
//! (`User:alice`, `User:*`, or a role as `Role:payments`), a resource type
//! and name (literal, `*`, or a prefix), operations, and allow or deny. Deny
//! wins; read, write, delete and alter imply describe, and alter-configs
//! implies describe-configs, as in Kafka. Super users may do everything. A
//! decision is taken on the names the client uses, before routing, so rules
//! read the same whatever cluster a topic lives on.
//!
//! Every decision can be written as an audit line (target `causeway::audit`)
//! and is counted in `causeway_authorization_decisions_total`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use serde::Deserialize;

use crate::config::Problem;
use crate::plugins::AclMapperPlugin;

/// `[authorization]`: what applies to every rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationConfig {
    /// Principals that may do everything (`User:admin`).
    #[serde(default)]
    pub super_users: Vec<String>,
    /// Allow an operation on a resource no rule names at all (Kafka's
    /// `allow.everyone.if.no.acl.found`). Off: what no rule allows is denied.
    #[serde(default)]
    pub allow_if_no_acls: bool,
    /// Which decisions are written as audit lines: `denied` (default), `all`
    /// or `none`.
    #[serde(default = "default_audit")]
    pub audit: String,
    /// Role name to the principals holding it.
    #[serde(default)]
    pub roles: BTreeMap<String, Vec<String>>,
}

fn default_audit() -> String {
    "denied".into()
}

impl Default for AuthorizationConfig {
    fn default() -> Self {
        Self { super_users: Vec::new(), allow_if_no_acls: false, audit: default_audit(), roles: BTreeMap::new() }
    }
}

/// One `[[acls]]` rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclConfig {
    /// `User:NAME`, `User:*` (every user, authenticated or not) or `Role:NAME`.
    pub principal: String,
    /// `topic`, `group`, `transactional_id` or `cluster`.
    pub resource: String,
    /// The resource name, or `*` for every one; ignored for `cluster`.
    #[serde(default = "default_name")]
    pub name: String,
    /// `literal` (default): the name as written; `prefixed`: every name starting with it.
    #[serde(default = "default_pattern")]
    pub pattern: String,
    /// Kafka operations: read, write, create, delete, alter, describe,
    /// describe_configs, alter_configs, idempotent_write, all.
    pub operations: Vec<String>,
    /// `allow` (default) or `deny`.
    #[serde(default = "default_permission")]
    pub permission: String,
    /// The client address the rule is for; `*` (default) is every address.
    #[serde(default = "default_host")]
    pub host: String,
}

fn default_name() -> String {
    "*".into()
}
fn default_pattern() -> String {
    "literal".into()
}
fn default_permission() -> String {
    "allow".into()
}
fn default_host() -> String {
    "*".into()
}

/// The kinds of resource a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    Topic,
    Group,
    TransactionalId,
    Cluster,
}

impl Resource {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "topic" => Self::Topic,
            "group" => Self::Group,
            "transactional_id" => Self::TransactionalId,
            "cluster" => Self::Cluster,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Topic => "topic",
            Self::Group => "group",
            Self::TransactionalId => "transactional_id",
            Self::Cluster => "cluster",
        }
    }
}

/// Kafka's operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    DescribeConfigs,
    AlterConfigs,
    IdempotentWrite,
}

impl Operation {
    fn bit(self) -> u16 {
        1 << (self as u16)
    }

    fn parse(s: &str) -> Option<u16> {
        Some(match s {
            "read" => Self::Read.bit(),
            "write" => Self::Write.bit(),
            "create" => Self::Create.bit(),
            "delete" => Self::Delete.bit(),
            "alter" => Self::Alter.bit(),
            "describe" => Self::Describe.bit(),
            "describe_configs" => Self::DescribeConfigs.bit(),
            "alter_configs" => Self::AlterConfigs.bit(),
            "idempotent_write" => Self::IdempotentWrite.bit(),
            "all" => u16::MAX,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Create => "create",
            Self::Delete => "delete",
            Self::Alter => "alter",
            Self::Describe => "describe",
            Self::DescribeConfigs => "describe_configs",
            Self::AlterConfigs => "alter_configs",
            Self::IdempotentWrite => "idempotent_write",
        }
    }

    /// The operations whose allowance allows this one too.
    fn allowed_by(self) -> u16 {
        match self {
            Self::Describe => {
                self.bit() | Self::Read.bit() | Self::Write.bit() | Self::Delete.bit() | Self::Alter.bit()
            }
            Self::DescribeConfigs => self.bit() | Self::AlterConfigs.bit(),
            _ => self.bit(),
        }
    }
}

/// Who asks: the connection's principal, its roles and its address.
#[derive(Debug, Clone)]
pub struct Who {
    pub principal: Arc<str>,
    /// `Role:NAME` for each role.
    pub roles: Arc<[Arc<str>]>,
    pub host: IpAddr,
}

impl Who {
    /// `host` as its canonical form: an IPv4 client on a dual-stack listener
    /// (`::ffff:10.0.0.5`) is 10.0.0.5 to host rules.
    pub fn new(principal: &str, host: IpAddr) -> Self {
        Self { principal: Arc::from(principal), roles: Arc::from(Vec::new()), host: host.to_canonical() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Principal {
    /// `User:*`.
    AnyUser,
    /// A principal or a role, as written.
    Exactly(String),
}

#[derive(Debug, Clone)]
struct Rule {
    principal: Principal,
    host: Option<IpAddr>,
    resource: Resource,
    /// `None`: every name (`*`, or any cluster).
    name: Option<String>,
    prefixed: bool,
    operations: u16,
    allow: bool,
}

impl Rule {
    fn names(&self, name: &str) -> bool {
        match &self.name {
            None => true,
            Some(n) if self.prefixed => name.starts_with(n.as_str()),
            Some(n) => n == name,
        }
    }

    fn applies_to(&self, who: &Who) -> bool {
        let principal = match &self.principal {
            Principal::AnyUser => who.principal.starts_with("User:"),
            Principal::Exactly(p) => *p == *who.principal || who.roles.iter().any(|r| **r == *p),
        };
        principal && self.host.is_none_or(|h| h == who.host.to_canonical())
    }
}

/// Which decisions become audit lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Audit {
    None,
    Denied,
    All,
}

/// The rules in force.
#[derive(Debug)]
pub struct Authorizer {
    rules: Vec<Rule>,
    super_users: HashSet<String>,
    allow_if_no_acls: bool,
    audit: Audit,
    /// Principal to its `Role:NAME`s.
    roles: HashMap<String, Vec<Arc<str>>>,
    /// The ACL-mapper plugin: asked what no rule allows (and no rule denies).
    mapper: Option<Arc<AclMapperPlugin>>,
}

/// Every problem in `[authorization]` and `[[acls]]`; `mapped_roles`: an
/// ACL-mapper plugin gives roles too, so a role the config does not define
/// may be the plugin's.
pub fn validate(config: Option<&AuthorizationConfig>, acls: &[AclConfig], mapped_roles: bool) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut problem = |field: String, message: String| out.push(Problem { field, message });
    let roles: HashSet<&str> = config.map(|c| c.roles.keys().map(String::as_str).collect()).unwrap_or_default();
    if let Some(c) = config {
        if !["none", "denied", "all"].contains(&c.audit.as_str()) {
            problem("authorization.audit".into(), format!("'{}' is not one of none, denied, all", c.audit));
        }
        for (i, p) in c.super_users.iter().enumerate() {
            if !p.starts_with("User:") || p.len() == 5 {
                problem(format!("authorization.super_users[{i}]"), format!("'{p}' is not a principal; write User:NAME"));
            }
        }
        for (role, members) in &c.roles {
            for (i, p) in members.iter().enumerate() {
                if !p.starts_with("User:") || p.len() == 5 {
                    problem(
                        format!("authorization.roles.{role}[{i}]"),
                        format!("'{p}' is not a principal; write User:NAME"),
                    );
                }
            }
        }
    }
    for (i, acl) in acls.iter().enumerate() {
        let field = |f: &str| format!("acls[{i}].{f}");
        match acl.principal.split_once(':') {
            Some(("User", name)) if !name.is_empty() => {}
            Some(("Role", name)) if !name.is_empty() && (mapped_roles || roles.contains(name)) => {}
            Some(("Role", name)) => problem(
                field("principal"),
                format!("role '{name}' is not defined; add it to [authorization.roles]"),
            ),
            _ => problem(
                field("principal"),
                format!("'{}' is not a principal; write User:NAME, User:* or Role:NAME", acl.principal),
            ),
        }
        if Resource::parse(&acl.resource).is_none() {
            problem(
                field("resource"),
                format!("'{}' is not one of topic, group, transactional_id, cluster", acl.resource),
            );
        }
        if acl.name.is_empty() {
            problem(field("name"), "is empty; write a name, a prefix or *".into());
        }
        match acl.pattern.as_str() {
            "literal" => {}
            "prefixed" if acl.name == "*" => {
                problem(field("pattern"), "a prefix of '*' names nothing; use pattern = \"literal\" with name = \"*\"".into())
            }
            "prefixed" => {}
            other => problem(field("pattern"), format!("'{other}' is not one of literal, prefixed")),
        }
        if acl.operations.is_empty() {
            problem(field("operations"), "is empty; name at least one operation".into());
        }
        for (j, op) in acl.operations.iter().enumerate() {
            if Operation::parse(op).is_none() {
                problem(
                    field(&format!("operations[{j}]")),
                    format!(
                        "'{op}' is not one of read, write, create, delete, alter, describe, \
                         describe_configs, alter_configs, idempotent_write, all"
                    ),
                );
            }
        }
        if !["allow", "deny"].contains(&acl.permission.as_str()) {
            problem(field("permission"), format!("'{}' is not one of allow, deny", acl.permission));
        }
        if acl.host != "*" && acl.host.parse::<IpAddr>().is_err() {
            problem(field("host"), format!("'{}' is not an IP address or *", acl.host));
        }
    }
    out
}

impl Authorizer {
    /// The authorizer for a validated config; `None` when the config asks
    /// for no authorization (no `[authorization]`, no `[[acls]]` and no
    /// ACL-mapper plugin).
    pub fn from_config(
        config: Option<&AuthorizationConfig>,
        acls: &[AclConfig],
        mapper: Option<Arc<AclMapperPlugin>>,
    ) -> Option<Self> {
        if config.is_none() && acls.is_empty() && mapper.is_none() {
            return None;
        }
        let default = AuthorizationConfig::default();
        let config = config.unwrap_or(&default);
        let rules = acls
            .iter()
            .filter_map(|acl| {
                let resource = Resource::parse(&acl.resource)?;
                let operations = acl.operations.iter().filter_map(|o| Operation::parse(o)).fold(0, |a, b| a | b);
                Some(Rule {
                    principal: if acl.principal == "User:*" {
                        Principal::AnyUser
                    } else {
                        Principal::Exactly(acl.principal.clone())
                    },
                    host: acl.host.parse::<IpAddr>().ok().map(|h| h.to_canonical()),
                    resource,
                    name: (acl.name != "*" && resource != Resource::Cluster).then(|| acl.name.clone()),
                    prefixed: acl.pattern == "prefixed",
                    operations,
                    allow: acl.permission != "deny",
                })
            })
            .collect();
        let mut roles: HashMap<String, Vec<Arc<str>>> = HashMap::new();
        for (role, members) in &config.roles {
            let role: Arc<str> = Arc::from(format!("Role:{role}"));
            for m in members {
                roles.entry(m.clone()).or_default().push(role.clone());
            }
        }
        Some(Self {
            rules,
            super_users: config.super_users.iter().cloned().collect(),
            allow_if_no_acls: config.allow_if_no_acls,
            audit: match config.audit.as_str() {
                "none" => Audit::None,
                "all" => Audit::All,
                _ => Audit::Denied,
            },
            roles,
            mapper,
        })
    }

    /// The ACL-mapper plugin, if one maps principals.
    pub fn mapper(&self) -> Option<&Arc<AclMapperPlugin>> {
        self.mapper.as_ref()
    }

    /// The roles the config gives `principal`.
    pub fn roles_of(&self, principal: &str) -> Vec<Arc<str>> {
        self.roles.get(principal).cloned().unwrap_or_default()
    }

    /// Whether `who` may do `op` to the resource, without a trace: for
    /// listings, where what is not allowed is left out.
    /// Creating a topic is also allowed by create on the cluster.
    pub fn allows(&self, who: &Who, resource: Resource, name: &str, op: Operation) -> bool {
        if self.super_users.contains(&*who.principal) {
            return true;
        }
        if resource == Resource::Topic && op == Operation::Create && self.allows(who, Resource::Cluster, "", op) {
            return true;
        }
        let mut named = false;
        let mut allowed = false;
        for rule in self.rules.iter().filter(|r| r.resource == resource && r.names(name)) {
            named = true;
            if !rule.applies_to(who) {
                continue;
            }
            if rule.allow {
                allowed |= rule.operations & op.allowed_by() != 0;
            } else if rule.operations & op.bit() != 0 {
                return false;
            }
        }
        if allowed {
            return true;
        }
        match &self.mapper {
            Some(m) => m.authorize(&who.principal, &who.roles, op, resource, name),
            None => !named && self.allow_if_no_acls,
        }
    }

    /// Whether any config rule lets `who` do `op` to some resource of this type
    /// (Kafka lets a producer that may write to any topic be idempotent). An
    /// ACL-mapper plugin cannot be asked that; it is asked about the cluster's
    /// idempotent_write instead.
    pub fn allows_any(&self, who: &Who, resource: Resource, op: Operation) -> bool {
        self.super_users.contains(&*who.principal)
            || self
                .rules
                .iter()
                .any(|r| r.allow && r.resource == resource && r.operations & op.bit() != 0 && r.applies_to(who))
    }

    /// Whether a deny rule forbids `who` to do `op` to the resource `name`.
    pub fn denies(&self, who: &Who, resource: Resource, name: &str, op: Operation) -> bool {
        !self.super_users.contains(&*who.principal)
            && self
                .rules
                .iter()
                .any(|r| !r.allow && r.resource == resource && r.names(name) && r.operations & op.bit() != 0 && r.applies_to(who))
    }

    /// [`Authorizer::allows`], written to the audit log and counted.
    pub fn decide(&self, who: &Who, resource: Resource, name: &str, op: Operation, api: &str) -> bool {
        let allowed = self.allows(who, resource, name, op);
        self.record(who, resource, name, op, api, allowed);
        allowed
    }

    /// Counts and audits a decision taken elsewhere.
    pub fn record(&self, who: &Who, resource: Resource, name: &str, op: Operation, api: &str, allowed: bool) {
        crate::telemetry::authorization(resource.as_str(), allowed);
        if self.audit == Audit::All || (self.audit == Audit::Denied && !allowed) {
            tracing::info!(
                target: "causeway::audit",
                principal = %who.principal,
                host = %who.host,
                api,
                operation = op.as_str(),
                resource = resource.as_str(),
                name,
                decision = if allowed { "allow" } else { "deny" },
                "authorization"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(principal: &str, resource: &str, name: &str, pattern: &str, ops: &[&str], permission: &str) -> AclConfig {
        AclConfig {
            principal: principal.into(),
            resource: resource.into(),
            name: name.into(),
            pattern: pattern.into(),
            operations: ops.iter().map(|s| s.to_string()).collect(),
            permission: permission.into(),
            host: "*".into(),
        }
    }

    fn who(p: &str) -> Who {
        Who::new(p, "10.0.0.1".parse().expect("an address"))
    }

    fn authorizer(config: AuthorizationConfig, acls: &[AclConfig]) -> Authorizer {
        assert_eq!(validate(Some(&config), acls, false), vec![]);
        Authorizer::from_config(Some(&config), acls, None).expect("an authorizer")
    }

    #[test]
    fn deny_wins_over_allow() {
        let a = authorizer(
            AuthorizationConfig::default(),
            &[
                acl("User:*", "topic", "orders.", "prefixed", &["all"], "allow"),
                acl("User:mallory", "topic", "orders.secret", "literal", &["read"], "deny"),
            ],
        );
        assert!(a.allows(&who("User:alice"), Resource::Topic, "orders.secret", Operation::Read));
        assert!(!a.allows(&who("User:mallory"), Resource::Topic, "orders.secret", Operation::Read));
        // A deny on read leaves describe (implied by the allow) alone, as in Kafka.
        assert!(a.allows(&who("User:mallory"), Resource::Topic, "orders.secret", Operation::Describe));
        assert!(a.allows(&who("User:mallory"), Resource::Topic, "orders.public", Operation::Read));
    }

    #[test]
    fn what_no_rule_allows_is_denied() {
        let a = authorizer(AuthorizationConfig::default(), &[acl("User:alice", "topic", "orders", "literal", &["write"], "allow")]);
        assert!(a.allows(&who("User:alice"), Resource::Topic, "orders", Operation::Write));
        assert!(a.allows(&who("User:alice"), Resource::Topic, "orders", Operation::Describe), "write implies describe");
        assert!(!a.allows(&who("User:alice"), Resource::Topic, "orders", Operation::Read));
        assert!(!a.allows(&who("User:alice"), Resource::Topic, "orders2", Operation::Write), "literal is exact");
        assert!(!a.allows(&who("User:bob"), Resource::Topic, "orders", Operation::Write));
        assert!(!a.allows(&who("User:alice"), Resource::Group, "orders", Operation::Read));
        // User:* is users only, and the anonymous principal is a user.
        let b = authorizer(AuthorizationConfig::default(), &[acl("User:*", "group", "*", "literal", &["read"], "allow")]);
        assert!(b.allows(&who("User:ANONYMOUS"), Resource::Group, "g", Operation::Read));
        assert!(!b.allows(&who("Role:x"), Resource::Group, "g", Operation::Read));
    }

    #[test]
    fn allow_if_no_acls_only_covers_resources_no_rule_names() {
        let config = AuthorizationConfig { allow_if_no_acls: true, ..Default::default() };
        let a = authorizer(config, &[acl("User:alice", "topic", "payroll", "literal", &["read"], "allow")]);
        assert!(a.allows(&who("User:bob"), Resource::Topic, "orders", Operation::Read));
        assert!(!a.allows(&who("User:bob"), Resource::Topic, "payroll", Operation::Read));
    }

    #[test]
    fn roles_super_users_and_hosts() {
        let config = AuthorizationConfig {
            super_users: vec!["User:root".into()],
            roles: [("payments".to_string(), vec!["User:alice".to_string()])].into(),
            ..Default::default()
        };
        let mut only_from = acl("User:bob", "topic", "t", "literal", &["read"], "allow");
        only_from.host = "10.0.0.2".into();
        let a = authorizer(config, &[acl("Role:payments", "group", "pay-", "prefixed", &["read"], "allow"), only_from]);
        let mut alice = who("User:alice");
        alice.roles = Arc::from(a.roles_of("User:alice"));
        assert!(a.allows(&alice, Resource::Group, "pay-batch", Operation::Read));
        assert!(a.allows(&alice, Resource::Group, "pay-batch", Operation::Describe));
        assert!(!a.allows(&alice, Resource::Group, "hr-batch", Operation::Read));
        assert!(a.allows(&who("User:root"), Resource::Cluster, "", Operation::Alter));
        assert!(!a.allows(&who("User:bob"), Resource::Topic, "t", Operation::Read));
        let mut bob = who("User:bob");
        bob.host = "10.0.0.2".parse().expect("an address");
        assert!(a.allows(&bob, Resource::Topic, "t", Operation::Read));
        assert!(a.allows_any(&bob, Resource::Topic, Operation::Read));
        assert!(!a.allows_any(&bob, Resource::Topic, Operation::Write));
        // The same client on a dual-stack listener, as an IPv4-mapped address.
        let mapped = Who::new("User:bob", "::ffff:10.0.0.2".parse().expect("an address"));
        assert!(a.allows(&mapped, Resource::Topic, "t", Operation::Read));
    }

    #[test]
    fn mistakes_name_their_field() {
        let config = AuthorizationConfig { audit: "loud".into(), super_users: vec!["alice".into()], ..Default::default() };
        let mut bad_host = acl("User:a", "topic", "t", "literal", &["read"], "allow");
        bad_host.host = "somewhere".into();
        let acls = [
            acl("Role:ghosts", "topics", "t", "glob", &["read", "peek"], "maybe"),
            acl("alice", "cluster", "*", "prefixed", &[], "allow"),
            bad_host,
        ];
        let fields: Vec<String> = validate(Some(&config), &acls, false).into_iter().map(|p| p.field).collect();
        // Roles an ACL mapper gives need no definition.
        assert!(!validate(None, &acls[..1], true).iter().any(|p| p.field == "acls[0].principal"));
        assert_eq!(
            fields,
            [
                "authorization.audit",
                "authorization.super_users[0]",
                "acls[0].principal",
                "acls[0].resource",
                "acls[0].pattern",
                "acls[0].operations[1]",
                "acls[0].permission",
                "acls[1].principal",
                "acls[1].pattern",
                "acls[1].operations",
                "acls[2].host",
            ]
        );
    }
}
