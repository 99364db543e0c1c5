//! Topic routers: the `router` world, and the cache in front of it.
//!
//! A router plugin decides, per principal and client id, where a topic lives
//! (`route`) and how backend topics show in listings (`client-names`). Its
//! answers are kept for the TTL it gives, so a produce or fetch asks the cache,
//! not the sandbox. A failed call is never cached: with `on_error = "reject"`
//! (the default) the topic is unroutable while the plugin fails, so a broken
//! tenant router never lets a tenant reach another's topics; with `"pass"` the
//! gateway's own routes decide.

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store};

use super::cache::{key, Cache, Key};
use super::sandbox::{HostState, Sandbox, World};
use super::PluginConfig;
use crate::routing::Glob;

/// The `router` world of `wit/plugin.wit`, as Rust types and bindings.
pub mod wit {
    wasmtime::component::bindgen!({
        world: "router",
        path: "../wit/plugin.wit",
        with: {
            "causeway:plugin/host": crate::plugins::filter::wit::causeway::plugin::host,
        },
    });
}

use wit::{Router as RouterBindings, RouterPre, ShownAs};


/// The router world, for the sandbox.
pub struct RouterWorld;

impl World for RouterWorld {
    const NAME: &'static str = "router";
    type Pre = RouterPre<HostState>;
    type Bindings = RouterBindings;

    fn prepare(linker: &mut Linker<HostState>, component: &Component) -> anyhow::Result<Self::Pre> {
        RouterBindings::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
        RouterPre::new(linker.instantiate_pre(component)?)
    }

    fn instantiate(pre: &Self::Pre, store: &mut Store<HostState>) -> anyhow::Result<Self::Bindings> {
        pre.instantiate(store)
    }

    fn init(bindings: &Self::Bindings, store: &mut Store<HostState>, config: &str) -> anyhow::Result<Result<(), String>> {
        bindings.call_init(store, config)
    }
}

/// Where a router sends a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// To this cluster (its index) under this backend name.
    To(usize, String),
    /// The gateway's own routes decide.
    Routes,
    /// Nowhere: the plugin failed and its policy is to reject.
    Unroutable,
}

/// How a backend topic shows to a client, as the router answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shown {
    /// As the gateway's own routes show it.
    Routes,
    /// Under this name (still to be checked against `route`).
    Name(String),
    Hidden,
}

/// The loaded router plugin.
pub struct RouterPlugin {
    pub sandbox: Sandbox<RouterWorld>,
    /// The config's cluster names; a cluster's index is its position.
    clusters: Vec<String>,
    /// Topics (client names) the plugin is asked about.
    topics: Glob,
    /// Empty: every principal.
    principals: Vec<Glob>,
    pass_on_error: bool,
    routes: Cache<Route>,
    names: Cache<Shown>,
}

impl std::fmt::Debug for RouterPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterPlugin").field("name", &self.sandbox.name).finish_non_exhaustive()
    }
}

/// Whether Kafka accepts `name` as a topic name.
fn legal_topic(name: &str) -> bool {
    (1..=249).contains(&name.len())
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl RouterPlugin {
    /// Loads the router; `clusters` are the config's cluster names.
    pub fn load(engine: &Engine, config: &PluginConfig, clusters: &[String]) -> anyhow::Result<Self> {
        Ok(Self {
            sandbox: Sandbox::load(engine, config)?,
            clusters: clusters.to_vec(),
            topics: Glob::new(&config.topics),
            principals: config.principals.iter().map(|p| Glob::new(p)).collect(),
            pass_on_error: config.on_error == "pass",
            routes: Cache::new(),
            names: Cache::new(),
        })
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
        self.routes.clear();
        self.names.clear();
    }

    /// Whether the plugin is asked about `topic` for `principal`.
    fn in_scope(&self, topic: &str, principal: &str) -> bool {
        self.topics.matches(topic) && (self.principals.is_empty() || self.principals.iter().any(|g| g.matches(principal)))
    }

    fn on_failure(&self) -> Route {
        if self.pass_on_error {
            Route::Routes
        } else {
            Route::Unroutable
        }
    }

    /// Where `topic`, as this client names it, lives.
    ///
    /// Only the plugin's own faults (a trap, a timeout, an unknown cluster)
    /// count against it. A name the client chose that Kafka would refuse
    /// never reaches the plugin, and a legal name the plugin maps to an
    /// illegal one (a prefix making it too long) is unroutable for that
    /// client alone, whatever `on_error` says: no client can make the router
    /// back off for everyone, or fall back to the routes.
    pub fn route(&self, topic: &str, principal: &str, client_id: &str) -> Route {
        if !self.in_scope(topic, principal) {
            return Route::Routes;
        }
        if !legal_topic(topic) {
            return Route::Unroutable;
        }
        let key = key(principal, client_id, &[topic]);
        if let Some(hit) = self.routes.get(&key) {
            return hit;
        }
        if self.sandbox.backed_off() {
            return self.on_failure();
        }
        let generation = self.routes.generation();
        let answer = self
            .sandbox
            .call(|b, store| b.call_route(store, topic, principal, client_id))
            .and_then(|d| match d {
                None => Ok((Route::Routes, u32::MAX)),
                Some(d) => {
                    let Some(ci) = self.clusters.iter().position(|c| *c == d.cluster) else {
                        return Err(format!("routed '{topic}' to '{}', which is not a cluster of this gateway", d.cluster));
                    };
                    if !legal_topic(&d.topic) {
                        tracing::debug!(plugin = %self.sandbox.name, topic, to = ?d.topic, "routed to an illegal topic name");
                        return Ok((Route::Unroutable, d.ttl_ms));
                    }
                    Ok((Route::To(ci, d.topic), d.ttl_ms))
                }
            });
        match answer {
            Ok((route, ttl)) => {
                self.sandbox.succeeded();
                // "The gateway's routes decide" is kept as long as a
                // destination would be: a minute.
                let ttl = if ttl == u32::MAX { 60_000 } else { ttl };
                self.routes.put(key, route.clone(), ttl, generation);
                route
            }
            Err(why) => {
                self.sandbox.failed(&why);
                self.on_failure()
            }
        }
    }

    /// How each of `topics`, backend names on cluster `ci`, shows to this
    /// client, as the plugin says (one call for every answer not cached).
    pub fn client_names(&self, ci: usize, topics: &[&str], principal: &str, client_id: &str) -> Vec<Shown> {
        let cluster = self.clusters.get(ci).map_or("", String::as_str);
        let keys: Vec<Key> = topics.iter().map(|t| key(principal, client_id, &[cluster, t])).collect();
        let generation = self.names.generation();
        let mut out: Vec<Option<Shown>> = keys.iter().map(|k| self.names.get(k)).collect();
        let missing: Vec<usize> = (0..topics.len()).filter(|&i| out[i].is_none()).collect();
        if !missing.is_empty() {
            let fallback = if self.pass_on_error { Shown::Routes } else { Shown::Hidden };
            let asked: Vec<String> = missing.iter().map(|&i| topics[i].to_string()).collect();
            let answer = if self.sandbox.backed_off() {
                Err(String::new())
            } else {
                self.sandbox
                    .call(|b, store| b.call_client_names(store, cluster, &asked, principal, client_id))
                    .and_then(|listing| {
                        if listing.topics.len() == asked.len() {
                            Ok(listing)
                        } else {
                            Err(format!("answered {} names for {} topics", listing.topics.len(), asked.len()))
                        }
                    })
                    .inspect_err(|why| self.sandbox.failed(why))
            };
            match answer {
                Ok(listing) => {
                    self.sandbox.succeeded();
                    for (&i, shown) in missing.iter().zip(listing.topics) {
                        let shown = match shown {
                            ShownAs::Routes => Shown::Routes,
                            ShownAs::Name(n) => Shown::Name(n),
                            ShownAs::Hidden => Shown::Hidden,
                        };
                        self.names.put(keys[i], shown.clone(), listing.ttl_ms, generation);
                        out[i] = Some(shown);
                    }
                }
                Err(_) => {
                    for &i in &missing {
                        out[i] = Some(fallback.clone());
                    }
                }
            }
        }
        out.into_iter().map(|s| s.unwrap_or(Shown::Hidden)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_kafka_would_refuse_are_caught() {
        for ok in ["a", "acme.orders", "x_y-z.1", &"a".repeat(249)] {
            assert!(legal_topic(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a b", "a/b", "ü", &"a".repeat(250)] {
            assert!(!legal_topic(bad), "{bad}");
        }
    }
}
