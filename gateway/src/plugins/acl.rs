//! ACL mappers: the `acl-mapper` world, and the caches in front of it.
//!
//! An ACL mapper turns who a client proved to be (SASL user, TLS subject,
//! client id, address) into a principal with roles (`map-principal`), and
//! decides operations on resources (`authorize`). Both answers are kept for
//! the TTL the plugin gives. It fails closed, always: a mapping that fails
//! closes the connection, and a decision that fails is a denial.

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store};

use super::cache::{key, Cache};
use super::sandbox::{HostState, Sandbox, World};
use super::PluginConfig;
use crate::authz::{Operation, Resource};

/// The `acl-mapper` world of `wit/plugin.wit`, as Rust types and bindings.
pub mod wit {
    wasmtime::component::bindgen!({
        world: "acl-mapper",
        path: "../wit/plugin.wit",
        with: {
            "causeway:plugin/host": crate::plugins::filter::wit::causeway::plugin::host,
        },
    });
}

use wit::{AclMapper as AclBindings, AclMapperPre};

/// The acl-mapper world, for the sandbox.
pub struct AclWorld;

impl World for AclWorld {
    const NAME: &'static str = "acl-mapper";
    type Pre = AclMapperPre<HostState>;
    type Bindings = AclBindings;

    fn prepare(linker: &mut Linker<HostState>, component: &Component) -> anyhow::Result<Self::Pre> {
        AclBindings::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
        AclMapperPre::new(linker.instantiate_pre(component)?)
    }

    fn instantiate(pre: &Self::Pre, store: &mut Store<HostState>) -> anyhow::Result<Self::Bindings> {
        pre.instantiate(store)
    }

    fn init(bindings: &Self::Bindings, store: &mut Store<HostState>, config: &str) -> anyhow::Result<Result<(), String>> {
        bindings.call_init(store, config)
    }
}

/// What the gateway knows of a client when it asks for its principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub sasl_user: Option<String>,
    /// The client certificate's subject, RFC 2253 (`CN=app,O=Example`).
    pub tls_subject: Option<String>,
    pub peer: std::net::IpAddr,
}

/// A principal as the plugin mapped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// `User:NAME` (a name without a type gets `User:`).
    pub principal: String,
    /// `Role:NAME` for each role.
    pub roles: Vec<String>,
    /// How long the gateway may keep it, in ms.
    pub ttl_ms: u32,
}

/// The loaded ACL mapper.
pub struct AclMapperPlugin {
    pub sandbox: Sandbox<AclWorld>,
    principals: Cache<Result<Mapped, String>>,
    decisions: Cache<bool>,
}

impl std::fmt::Debug for AclMapperPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AclMapperPlugin").field("name", &self.sandbox.name).finish_non_exhaustive()
    }
}

fn operation(op: Operation) -> wit::Operation {
    use wit::Operation as O;
    match op {
        Operation::Read => O::Read,
        // Kafka's idempotent write is a kind of write to the cluster.
        Operation::Write | Operation::IdempotentWrite => O::Write,
        Operation::Create => O::Create,
        Operation::Delete => O::Delete,
        Operation::Alter => O::Alter,
        Operation::Describe => O::Describe,
        Operation::DescribeConfigs => O::DescribeConfigs,
        Operation::AlterConfigs => O::AlterConfigs,
    }
}

fn kind(resource: Resource) -> wit::ResourceKind {
    match resource {
        Resource::Topic => wit::ResourceKind::Topic,
        Resource::Group => wit::ResourceKind::Group,
        Resource::TransactionalId => wit::ResourceKind::TransactionalId,
        Resource::Cluster => wit::ResourceKind::Cluster,
    }
}

/// The principal name a plugin gave, with `User:` unless it has a type.
fn principal_name(name: &str) -> String {
    match name.split_once(':') {
        Some((kind, rest)) if !kind.is_empty() && !rest.is_empty() && kind.chars().all(|c| c.is_ascii_alphabetic()) => {
            name.to_string()
        }
        _ => format!("User:{name}"),
    }
}

/// The name a plugin is asked about: `User:` taken off again.
fn plain_name(principal: &str) -> &str {
    principal.strip_prefix("User:").unwrap_or(principal)
}

impl AclMapperPlugin {
    pub fn load(engine: &Engine, config: &PluginConfig) -> anyhow::Result<Self> {
        Ok(Self { sandbox: Sandbox::load(engine, config)?, principals: Cache::new(), decisions: Cache::new() })
    }

    /// Reloads the component and forgets every cached answer.
    pub fn reload(&self) -> anyhow::Result<()> {
        self.sandbox.reload()?;
        self.forget();
        Ok(())
    }

    /// Reloads if the component file changed; forgets cached answers if so.
    pub fn reload_if_changed(&self) -> Option<anyhow::Result<()>> {
        let outcome = self.sandbox.reload_if_changed()?;
        if outcome.is_ok() {
            self.forget();
        }
        Some(outcome)
    }

    fn forget(&self) {
        self.principals.clear();
        self.decisions.clear();
    }

    /// The principal and roles of `who` using client id `client_id`, or why
    /// the plugin refuses it (or failed: either way the client is refused).
    pub fn map(&self, who: &Identity, client_id: &str) -> Result<Mapped, String> {
        let peer = who.peer.to_string();
        let k = key(
            who.sasl_user.as_deref().unwrap_or("\0"),
            client_id,
            &[who.tls_subject.as_deref().unwrap_or("\0"), &peer],
        );
        if let Some(hit) = self.principals.get(&k) {
            return hit;
        }
        if self.sandbox.backed_off() {
            return Err(format!("plugin '{}' is backed off after failing", self.sandbox.name));
        }
        let generation = self.principals.generation();
        let identity = wit::Identity {
            sasl_user: who.sasl_user.clone(),
            tls_subject: who.tls_subject.clone(),
            client_id: client_id.to_string(),
            peer_address: peer,
        };
        match self.sandbox.call(|b, store| b.call_map_principal(store, &identity)) {
            Ok(answer) => {
                self.sandbox.succeeded();
                let answer = answer.and_then(|p| {
                    if p.name.is_empty() {
                        return Err("mapped to an empty principal".to_string());
                    }
                    Ok(Mapped {
                        principal: principal_name(&p.name),
                        roles: p.roles.iter().map(|r| format!("Role:{r}")).collect(),
                        ttl_ms: p.ttl_ms,
                    })
                });
                // A refusal is the plugin's answer and is kept like any other.
                let ttl = answer.as_ref().map_or(1_000, |m| m.ttl_ms);
                self.principals.put(k, answer.clone(), ttl, generation);
                answer
            }
            Err(why) => {
                self.sandbox.failed(&why);
                Err(why)
            }
        }
    }

    /// Whether the plugin allows `principal` (with `roles`, as `Role:NAME`)
    /// `op` on the resource; a failure is a denial.
    pub fn authorize(&self, principal: &str, roles: &[std::sync::Arc<str>], op: Operation, resource: Resource, name: &str) -> bool {
        let roles_key: Vec<&str> = roles.iter().map(|r| &**r).collect();
        let roles_key = roles_key.join("\0");
        let k = key(principal, op.as_str(), &[resource.as_str(), name, &roles_key]);
        if let Some(hit) = self.decisions.get(&k) {
            return hit;
        }
        if self.sandbox.backed_off() {
            return false;
        }
        let generation = self.decisions.generation();
        let who = wit::Principal {
            name: plain_name(principal).to_string(),
            roles: roles.iter().map(|r| r.strip_prefix("Role:").unwrap_or(r).to_string()).collect(),
            ttl_ms: 0,
        };
        match self.sandbox.call(|b, store| b.call_authorize(store, &who, operation(op), kind(resource), name)) {
            Ok(decision) => {
                self.sandbox.succeeded();
                self.decisions.put(k, decision.allow, decision.ttl_ms, generation);
                decision.allow
            }
            Err(why) => {
                self.sandbox.failed(&why);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_without_a_type_are_users() {
        assert_eq!(principal_name("alice"), "User:alice");
        assert_eq!(principal_name("User:alice"), "User:alice");
        assert_eq!(principal_name("Group:ops"), "Group:ops");
        assert_eq!(principal_name("CN=a:b,O=x"), "User:CN=a:b,O=x");
        assert_eq!(principal_name(":x"), "User::x");
        assert_eq!(plain_name("User:alice"), "alice");
    }
}
