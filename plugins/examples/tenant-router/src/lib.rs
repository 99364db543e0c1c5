//! A router that gives each tenant its own topic namespace on a shared
//! cluster: a client whose principal or client id reads `tenant-acme...` and
//! asks for topic `orders` gets `acme.orders` on the configured cluster.
//!
//! Config (JSON):
//!
//! ```json
//! {"cluster": "shared", "match": "either", "id_prefix": "tenant-",
//!  "topic_prefix": "{tenant}.", "clusters": {"bigco": "dedicated"}, "ttl_ms": 60000}
//! ```
//!
//! - `cluster` (required): where tenant topics live.
//! - `match`: which identity names the tenant: `principal`, `client-id`, or
//!   `either` (the default: the principal, else the client id). A principal's
//!   `User:` prefix is ignored.
//! - `id_prefix`: what precedes the tenant's name in that identity;
//!   `"tenant-"` if absent. The name is the run of letters, digits and `_`
//!   that follows: `tenant-acme-orders-7` is tenant `acme`.
//! - `topic_prefix`: the backend topic is this, with `{tenant}` replaced,
//!   followed by the client's topic; `"{tenant}."` if absent. Always applied,
//!   so one tenant cannot reach another's topics by naming them.
//! - `clusters`: per-tenant exceptions to `cluster`.
//! - `ttl_ms`: how long the gateway may cache an answer; 60000 if absent.
//!
//! A client with no tenant in its identity, and internal topics (`__...`), get
//! no answer: the gateway's own routes decide. Unknown keys are an error.
//!
//! Listings work the other way: a tenant asking for every topic sees its own
//! topics, prefix removed, and nothing of other tenants.

use std::collections::BTreeMap;

use causeway_plugin_sdk::{Destination, Router, ShownAs};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    cluster: String,
    #[serde(default, rename = "match")]
    match_on: MatchOn,
    #[serde(default = "default_id_prefix")]
    id_prefix: String,
    #[serde(default = "default_topic_prefix")]
    topic_prefix: String,
    #[serde(default)]
    clusters: BTreeMap<String, String>,
    #[serde(default = "default_ttl_ms")]
    ttl_ms: u32,
}

fn default_id_prefix() -> String {
    "tenant-".to_string()
}

fn default_topic_prefix() -> String {
    "{tenant}.".to_string()
}

fn default_ttl_ms() -> u32 {
    60_000
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum MatchOn {
    Principal,
    ClientId,
    #[default]
    Either,
}

/// Routes tenants to their own topic prefix.
#[derive(Debug)]
pub struct TenantRouter {
    config: Config,
}

impl Router for TenantRouter {
    fn init(config: &str) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config).map_err(|e| {
            format!(r#"tenant-router config: {e} (expected {{"cluster": "name", "match": "either", ...}})"#)
        })?;
        if config.cluster.is_empty() {
            return Err("tenant-router config: `cluster` is empty".into());
        }
        if config.id_prefix.is_empty() {
            return Err(
                "tenant-router config: `id_prefix` is empty: every client would be a tenant".into(),
            );
        }
        if !config.topic_prefix.contains("{tenant}") {
            return Err(format!(
                "tenant-router config: `topic_prefix` {:?} lacks {{tenant}}: tenants would share topics",
                config.topic_prefix
            ));
        }
        if let Some((tenant, _)) = config
            .clusters
            .iter()
            .find(|(t, c)| !is_tenant_name(t) || c.is_empty())
        {
            return Err(format!(
                "tenant-router config: bad entry {tenant:?} in `clusters`"
            ));
        }
        Ok(TenantRouter { config })
    }

    fn route(&mut self, topic: &str, principal: &str, client_id: &str) -> Option<Destination> {
        if topic.starts_with("__") {
            return None;
        }
        let tenant = self.tenant_of(principal, client_id)?;
        Some(Destination {
            cluster: self.cluster_of(tenant).to_string(),
            topic: format!("{}{topic}", self.prefix_of(tenant)),
            ttl_ms: self.config.ttl_ms,
        })
    }

    fn client_name(&mut self, cluster: &str, topic: &str, principal: &str, client_id: &str) -> ShownAs {
        if topic.starts_with("__") {
            return ShownAs::Routes;
        }
        let Some(tenant) = self.tenant_of(principal, client_id) else {
            return ShownAs::Routes;
        };
        if cluster != self.cluster_of(tenant) {
            return ShownAs::Hidden;
        }
        match topic.strip_prefix(self.prefix_of(tenant).as_str()) {
            Some(own) if !own.is_empty() => ShownAs::Name(own.to_string()),
            _ => ShownAs::Hidden,
        }
    }

    fn listing_ttl_ms(&self) -> u32 {
        self.config.ttl_ms
    }
}

impl TenantRouter {
    /// The tenant this principal or client id names, as configured.
    fn tenant_of<'a>(&self, principal: &'a str, client_id: &'a str) -> Option<&'a str> {
        let principal = principal.strip_prefix("User:").unwrap_or(principal);
        match self.config.match_on {
            MatchOn::Principal => self.tenant_in(principal),
            MatchOn::ClientId => self.tenant_in(client_id),
            MatchOn::Either => self
                .tenant_in(principal)
                .or_else(|| self.tenant_in(client_id)),
        }
    }

    fn cluster_of(&self, tenant: &str) -> &str {
        self.config
            .clusters
            .get(tenant)
            .unwrap_or(&self.config.cluster)
    }

    fn prefix_of(&self, tenant: &str) -> String {
        self.config.topic_prefix.replace("{tenant}", tenant)
    }

    /// The tenant named in `id` after the configured prefix, if any.
    fn tenant_in<'a>(&self, id: &'a str) -> Option<&'a str> {
        let rest = id.strip_prefix(self.config.id_prefix.as_str())?;
        let end = rest
            .find(|c: char| !is_tenant_char(c))
            .unwrap_or(rest.len());
        (end > 0).then(|| &rest[..end])
    }
}

fn is_tenant_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn is_tenant_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(is_tenant_char)
}

causeway_plugin_sdk::router!(TenantRouter);

#[cfg(test)]
mod tests {
    use causeway_plugin_sdk::testing::{run_route, RouterHarness};

    use super::*;

    fn dest(cluster: &str, topic: &str) -> Option<Destination> {
        Some(Destination {
            cluster: cluster.into(),
            topic: topic.into(),
            ttl_ms: 60_000,
        })
    }

    #[test]
    fn tenant_from_principal_or_client_id() {
        let mut router =
            RouterHarness::<TenantRouter>::new(r#"{"cluster":"shared"}"#).expect("init");
        assert_eq!(
            router.route("orders", "User:tenant-acme", ""),
            dest("shared", "acme.orders")
        );
        assert_eq!(
            router.route("orders", "tenant-acme", "x"),
            dest("shared", "acme.orders")
        );
        assert_eq!(
            router.route("orders", "ANONYMOUS", "tenant-globex-producer-7"),
            dest("shared", "globex.orders")
        );
        // The principal wins over the client id.
        assert_eq!(
            router.route("orders", "tenant-acme", "tenant-globex"),
            dest("shared", "acme.orders")
        );
        // A tenant cannot step into another's namespace.
        assert_eq!(
            router.route("globex.orders", "tenant-acme", ""),
            dest("shared", "acme.globex.orders")
        );
    }

    #[test]
    fn tenants_list_only_their_own_topics() {
        let mut router = RouterHarness::<TenantRouter>::new(
            r#"{"cluster":"shared","clusters":{"bigco":"dedicated"}}"#,
        )
        .expect("init");
        let acme = |r: &mut RouterHarness<TenantRouter>, cluster: &str, topic: &str| {
            r.client_name(cluster, topic, "User:tenant-acme", "app")
        };
        assert_eq!(
            acme(&mut router, "shared", "acme.orders"),
            ShownAs::Name("orders".into())
        );
        assert_eq!(
            acme(&mut router, "shared", "acme.a.b"),
            ShownAs::Name("a.b".into())
        );
        assert_eq!(acme(&mut router, "shared", "globex.orders"), ShownAs::Hidden);
        assert_eq!(acme(&mut router, "shared", "orders"), ShownAs::Hidden);
        assert_eq!(acme(&mut router, "shared", "acme."), ShownAs::Hidden);
        assert_eq!(
            acme(&mut router, "dedicated", "acme.orders"),
            ShownAs::Hidden,
            "acme's topics live on shared"
        );
        assert_eq!(
            acme(&mut router, "shared", "__consumer_offsets"),
            ShownAs::Routes
        );
        assert_eq!(
            router.client_name("dedicated", "bigco.x", "", "tenant-bigco"),
            ShownAs::Name("x".into())
        );
        assert_eq!(
            router.client_name("shared", "acme.orders", "ANONYMOUS", "rdkafka"),
            ShownAs::Routes,
            "no tenant: the gateway's routes decide"
        );
        // What a listing shows routes back to the same topic.
        let shown = acme(&mut router, "shared", "acme.orders");
        let ShownAs::Name(name) = shown else {
            panic!("{shown:?}")
        };
        assert_eq!(
            router.route(&name, "User:tenant-acme", "app"),
            dest("shared", "acme.orders")
        );
    }

    #[test]
    fn no_tenant_no_answer() {
        let mut router =
            RouterHarness::<TenantRouter>::new(r#"{"cluster":"shared"}"#).expect("init");
        assert_eq!(router.route("orders", "ANONYMOUS", "rdkafka"), None);
        assert_eq!(router.route("orders", "alice", "tenant-"), None);
        assert_eq!(router.route("orders", "tenants-acme", ""), None);
        assert_eq!(router.route("__consumer_offsets", "tenant-acme", ""), None);
    }

    #[test]
    fn config_chooses_the_mapping() {
        let config = r#"{"cluster":"shared","match":"client-id","id_prefix":"t_","topic_prefix":"tenants.{tenant}-",
                         "clusters":{"bigco":"dedicated"},"ttl_ms":5}"#;
        let mut router = RouterHarness::<TenantRouter>::new(config).expect("init");
        assert_eq!(
            router.route("orders", "t_acme", "app"),
            None,
            "principal is not looked at"
        );
        let got = router.route("orders", "", "t_bigco.app");
        assert_eq!(
            got,
            Some(Destination {
                cluster: "dedicated".into(),
                topic: "tenants.bigco-orders".into(),
                ttl_ms: 5
            })
        );
        let got = run_route::<TenantRouter>(config, "events", "", "t_small");
        assert_eq!(
            got,
            Ok(Some(Destination {
                cluster: "shared".into(),
                topic: "tenants.small-events".into(),
                ttl_ms: 5
            }))
        );
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        for (config, needle) in [
            ("{}", "missing field `cluster`"),
            (r#"{"cluster":""}"#, "`cluster` is empty"),
            (r#"{"cluster":"c","id_prefix":""}"#, "`id_prefix` is empty"),
            (r#"{"cluster":"c","topic_prefix":"x."}"#, "lacks {tenant}"),
            (
                r#"{"cluster":"c","match":"user"}"#,
                "unknown variant `user`",
            ),
            (r#"{"cluster":"c","clusters":{"a-b":"x"}}"#, "bad entry"),
            (r#"{"cluster":"c","ttl":1}"#, "unknown field `ttl`"),
        ] {
            let err = RouterHarness::<TenantRouter>::new(config)
                .err()
                .unwrap_or_default();
            assert!(err.contains(needle), "config {config:?}: {err:?}");
        }
    }
}
