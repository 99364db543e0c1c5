//! The routes as one client sees them: the gateway's own routes, with the
//! router plugin (if any) asked first for this client's principal and client
//! id. Every request takes one [`ClientRoutes`] when it arrives and uses it for
//! every name it maps, both ways, and for every authorization decision: the
//! ACL rules speak of the names clients use, so they are checked here, before
//! routing.

use std::borrow::Cow;
use std::sync::Arc;

use crate::authz::{Authorizer, Operation, Resource, Who};
use crate::plugins::router::{Route, Shown};
use crate::plugins::RouterPlugin;
use crate::routing::{Router, Target};

/// The principal of a client that has not authenticated, as Kafka names it.
pub const ANONYMOUS: &str = "User:ANONYMOUS";

/// Routes for one client's request. Cheap to clone.
#[derive(Clone)]
pub struct ClientRoutes {
    router: Arc<Router>,
    plugin: Option<Arc<RouterPlugin>>,
    authz: Option<Arc<Authorizer>>,
    who: Who,
    client_id: Arc<str>,
}

impl std::fmt::Debug for ClientRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRoutes")
            .field("router", &self.router)
            .field("plugin", &self.plugin)
            .field("principal", &self.who.principal)
            .field("client_id", &self.client_id)
            .finish()
    }
}

impl ClientRoutes {
    pub fn new(
        router: Arc<Router>,
        plugin: Option<Arc<RouterPlugin>>,
        authz: Option<Arc<Authorizer>>,
        who: &Who,
        client_id: &str,
    ) -> Self {
        Self { router, plugin, authz, who: who.clone(), client_id: Arc::from(client_id) }
    }

    /// The gateway's routes alone, for work no client asked for.
    pub fn plain(router: Arc<Router>) -> Self {
        let nobody = Who::new("", std::net::IpAddr::from([0, 0, 0, 0]));
        Self::new(router, None, None, &nobody, "")
    }

    /// Who asked: the authenticated principal, or [`ANONYMOUS`].
    pub fn principal(&self) -> &str {
        &self.who.principal
    }

    /// Whether requests are authorized at all.
    pub fn authorizes(&self) -> bool {
        self.authz.is_some()
    }

    /// Whether this client may do `op` to the resource named `name` (as the
    /// client names it); the decision is audited under `api`.
    ///
    /// A topic reachable under two client names (a mirror's own name after its
    /// source topic was switched to it) needs the operation under both, so a
    /// deny on one name is not dodged through the other.
    pub fn may(&self, op: Operation, resource: Resource, name: &str, api: &str) -> bool {
        let Some(a) = &self.authz else { return true };
        if !a.decide(&self.who, resource, name, op, api) {
            return false;
        }
        match (resource, self.alias(name)) {
            (Resource::Topic, Some(other)) => a.decide(&self.who, resource, &other, op, api),
            _ => true,
        }
    }

    /// The name the routes list the backend topic behind `name` under, when it is
    /// not `name` itself.
    fn alias(&self, name: &str) -> Option<String> {
        let t = self.topic(name)?;
        let listed = self.router.client_name(t.cluster, &t.backend)?;
        (listed != name).then(|| listed.into_owned())
    }

    /// Whether this client may do `op` to the cluster.
    pub fn may_cluster(&self, op: Operation, api: &str) -> bool {
        self.may(op, Resource::Cluster, "kafka-cluster", api)
    }

    /// [`may`](Self::may) without an audit line: for listings, where what the
    /// client may not describe is simply left out, as Kafka does.
    pub fn may_quietly(&self, op: Operation, resource: Resource, name: &str) -> bool {
        let Some(a) = &self.authz else { return true };
        a.allows(&self.who, resource, name, op)
            && match (resource, self.alias(name)) {
                (Resource::Topic, Some(other)) => a.allows(&self.who, resource, &other, op),
                _ => true,
            }
    }

    /// Kafka's bit field of the operations this client may do to a resource
    /// (`authorized_operations` in Metadata, DescribeGroups, DescribeCluster),
    /// or `None` without authorization (the backend's answer stands).
    pub fn authorized_operations(&self, resource: Resource, name: &str) -> Option<i32> {
        self.authz.as_ref()?;
        // Kafka's AclOperation codes.
        let ops: &[(Operation, u8)] = match resource {
            Resource::Topic => &[
                (Operation::Read, 3),
                (Operation::Write, 4),
                (Operation::Create, 5),
                (Operation::Delete, 6),
                (Operation::Alter, 7),
                (Operation::Describe, 8),
                (Operation::DescribeConfigs, 10),
                (Operation::AlterConfigs, 11),
            ],
            Resource::Group => &[(Operation::Read, 3), (Operation::Delete, 6), (Operation::Describe, 8)],
            Resource::TransactionalId => &[(Operation::Write, 4), (Operation::Describe, 8)],
            Resource::Cluster => &[
                (Operation::Create, 5),
                (Operation::Alter, 7),
                (Operation::Describe, 8),
                (Operation::DescribeConfigs, 10),
                (Operation::AlterConfigs, 11),
                (Operation::IdempotentWrite, 12),
            ],
        };
        Some(ops.iter().filter(|(op, _)| self.may_quietly(*op, resource, name)).fold(0, |bits, (_, code)| bits | 1 << code))
    }

    /// Whether this client may see topic `name` in a listing.
    pub fn sees(&self, name: &str) -> bool {
        self.may_quietly(Operation::Describe, Resource::Topic, name)
    }

    /// Whether this client may use an idempotent producer: idempotent_write
    /// on the cluster, or write on any topic (as Kafka allows since 3.0).
    pub fn may_be_idempotent(&self, api: &str) -> bool {
        let Some(a) = &self.authz else { return true };
        // A deny of idempotent_write on the cluster wins over any topic's write;
        // an acl-mapper plugin is asked about the cluster like any rule.
        let allowed = a.allows(&self.who, Resource::Cluster, "kafka-cluster", Operation::IdempotentWrite)
            || (!a.denies(&self.who, Resource::Cluster, "kafka-cluster", Operation::IdempotentWrite)
                && a.allows_any(&self.who, Resource::Topic, Operation::Write));
        a.record(&self.who, Resource::Cluster, "kafka-cluster", Operation::IdempotentWrite, api, allowed);
        allowed
    }

    /// The client id of the request.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Whether a topic may have another name on its backend.
    pub fn renames(&self) -> bool {
        self.plugin.is_some() || self.router.renames()
    }

    /// The cluster and backend name of a client-visible topic; `None`: no route.
    ///
    /// The links' own topic (`__causeway_links`) is no client's: it has no route.
    pub fn topic<'a>(&self, name: &'a str) -> Option<Target<'a>> {
        let target = match &self.plugin {
            None => self.router.topic(name),
            Some(plugin) => match plugin.route(name, &self.who.principal, &self.client_id) {
                Route::To(cluster, backend) => Some(Target {
                    cluster,
                    backend: if backend == name { Cow::Borrowed(name) } else { Cow::Owned(backend) },
                }),
                Route::Routes => self.router.topic(name),
                Route::Unroutable => None,
            },
        };
        target.filter(|t| t.backend != crate::link::store::TOPIC)
    }

    /// The client-visible name of a backend topic of `cluster`; `None`: this
    /// client does not see it.
    /// With authorization, only topics the client may describe are seen.
    pub fn client_name<'a>(&self, cluster: usize, backend: &'a str) -> Option<Cow<'a, str>> {
        self.client_names(cluster, &[backend]).pop().flatten()
    }

    /// [`client_name`](Self::client_name) of each of `backends`, asking the
    /// router plugin once for them all.
    pub fn client_names<'a>(&self, cluster: usize, backends: &[&'a str]) -> Vec<Option<Cow<'a, str>>> {
        let Some(plugin) = &self.plugin else {
            return backends
                .iter()
                .map(|b| {
                    self.router
                        .client_name(cluster, b)
                        .filter(|n| self.sees(n) && *b != crate::link::store::TOPIC)
                })
                .collect();
        };
        let shown = plugin.client_names(cluster, backends, &self.who.principal, &self.client_id);
        backends
            .iter()
            .zip(shown)
            .map(|(&backend, shown)| {
                let name: Cow<'a, str> = match shown {
                    Shown::Hidden => return None,
                    Shown::Name(n) if n == backend => Cow::Borrowed(backend),
                    Shown::Name(n) => Cow::Owned(n),
                    Shown::Routes => self.router.client_name(cluster, backend)?,
                };
                // Shown only if the name leads back here for this client.
                (self.topic(&name).is_some_and(|t| t.cluster == cluster && t.backend == backend) && self.sees(&name))
                    .then_some(name)
            })
            .collect()
    }

    /// The home cluster of a consumer group.
    pub fn group(&self, group: &str) -> usize {
        self.router.group(group)
    }

    /// The cluster a transactional id is pinned to.
    pub fn transactional_id(&self, id: &str) -> usize {
        self.router.transactional_id(id)
    }

    /// The cluster for requests that name no topic, group or transaction.
    pub fn default_cluster(&self) -> usize {
        self.router.default_cluster()
    }
}
