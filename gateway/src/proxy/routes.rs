//! The routes as one client sees them: the gateway's own routes, with the
//! router plugin (if any) asked first for this client's principal and client
//! id. Every request takes one [`ClientRoutes`] when it arrives and uses it for
//! every name it maps, both ways.

use std::borrow::Cow;
use std::sync::Arc;

use crate::plugins::router::{Route, Shown};
use crate::plugins::RouterPlugin;
use crate::routing::{Router, Target};

/// The principal of a client that has not authenticated.
pub const ANONYMOUS: &str = "ANONYMOUS";

/// Routes for one client's request. Cheap to clone.
#[derive(Clone)]
pub struct ClientRoutes {
    router: Arc<Router>,
    plugin: Option<Arc<RouterPlugin>>,
    principal: Arc<str>,
    client_id: Arc<str>,
}

impl std::fmt::Debug for ClientRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRoutes")
            .field("router", &self.router)
            .field("plugin", &self.plugin)
            .field("principal", &self.principal)
            .field("client_id", &self.client_id)
            .finish()
    }
}

impl ClientRoutes {
    pub fn new(router: Arc<Router>, plugin: Option<Arc<RouterPlugin>>, principal: &str, client_id: &str) -> Self {
        Self {
            router,
            plugin,
            principal: Arc::from(principal),
            client_id: Arc::from(client_id),
        }
    }

    /// The gateway's routes alone, for work no client asked for.
    pub fn plain(router: Arc<Router>) -> Self {
        Self::new(router, None, "", "")
    }

    /// Who asked: the authenticated principal, or [`ANONYMOUS`].
    pub fn principal(&self) -> &str {
        &self.principal
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
    pub fn topic<'a>(&self, name: &'a str) -> Option<Target<'a>> {
        let Some(plugin) = &self.plugin else {
            return self.router.topic(name);
        };
        match plugin.route(name, &self.principal, &self.client_id) {
            Route::To(cluster, backend) => Some(Target {
                cluster,
                backend: if backend == name { Cow::Borrowed(name) } else { Cow::Owned(backend) },
            }),
            Route::Routes => self.router.topic(name),
            Route::Unroutable => None,
        }
    }

    /// The client-visible name of a backend topic of `cluster`; `None`: this
    /// client does not see it.
    pub fn client_name<'a>(&self, cluster: usize, backend: &'a str) -> Option<Cow<'a, str>> {
        self.client_names(cluster, &[backend]).pop().flatten()
    }

    /// [`client_name`](Self::client_name) of each of `backends`, asking the
    /// router plugin once for them all.
    pub fn client_names<'a>(&self, cluster: usize, backends: &[&'a str]) -> Vec<Option<Cow<'a, str>>> {
        let Some(plugin) = &self.plugin else {
            return backends.iter().map(|b| self.router.client_name(cluster, b)).collect();
        };
        let shown = plugin.client_names(cluster, backends, &self.principal, &self.client_id);
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
                self.topic(&name)
                    .is_some_and(|t| t.cluster == cluster && t.backend == backend)
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
