//! The `router` world: maps a client-visible topic to a backend cluster and
//! topic name, or leaves the decision to the gateway's own routes.
//!
//! Implement [`Router`] and name the type in [`router!`](crate::router!).
//! The gateway caches an answer for its `ttl_ms`.
//!
//! A router answers both ways: [`Router::route`] takes a topic as a client
//! names it to its cluster and backend name, and [`Router::client_name`] takes
//! a backend topic to the name a client sees, for answers that list topics
//! the client did not name (Metadata for every topic). The gateway shows a
//! topic only if the name `client_name` gives routes back to it, so the two
//! cannot disagree: a router that hides nothing still never shows a client a
//! topic it could not reach.

use std::cell::RefCell;
use std::thread::LocalKey;

/// What wit-bindgen generates for the world; plugins use the re-exports below.
#[doc(hidden)]
#[allow(unsafe_code, missing_docs, unreachable_pub, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "causeway:plugin/router@0.1.0",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "causeway_plugin_sdk::router::bindings",
        additional_derives: [PartialEq, Eq],
    });
}

pub use bindings::{Destination, ShownAs};

/// A topic router. One value lives in each plugin instance.
pub trait Router: Sized + 'static {
    /// Builds the router from the plugin's config string. An error stops the
    /// plugin from loading.
    fn init(config: &str) -> Result<Self, String>;

    /// Where does `topic` go for this principal and client? `None` leaves it
    /// to the gateway's own routes.
    fn route(&mut self, topic: &str, principal: &str, client_id: &str) -> Option<Destination>;

    /// How `topic`, the backend name of a topic on `cluster`, shows to this
    /// principal and client. The default, [`ShownAs::Routes`], leaves it to
    /// the gateway's own routes; either way the gateway hides a name that
    /// [`route`](Router::route) does not take back to this topic.
    fn client_name(&mut self, cluster: &str, topic: &str, principal: &str, client_id: &str) -> ShownAs {
        let _ = (cluster, topic, principal, client_id);
        ShownAs::Routes
    }

    /// How long the gateway may reuse [`client_name`](Router::client_name)
    /// answers, in milliseconds.
    fn listing_ttl_ms(&self) -> u32 {
        60_000
    }
}

/// The glue that [`router!`](crate::router!) expands to calls these; not for
/// direct use.
#[doc(hidden)]
pub mod __glue {
    use super::*;

    pub type State<R> = LocalKey<RefCell<Option<R>>>;

    pub fn init<R: Router>(state: &'static State<R>, config: String) -> Result<(), String> {
        crate::host::install_panic_hook();
        let router = R::init(&config);
        state.with(|slot| {
            let mut slot = slot.borrow_mut();
            match router {
                Ok(router) => {
                    *slot = Some(router);
                    Ok(())
                }
                Err(e) => {
                    *slot = None;
                    Err(e)
                }
            }
        })
    }

    pub fn route<R: Router>(
        state: &'static State<R>,
        topic: String,
        principal: String,
        client_id: String,
    ) -> Option<Destination> {
        state.with(|slot| match slot.borrow_mut().as_mut() {
            Some(router) => router.route(&topic, &principal, &client_id),
            None => None,
        })
    }

    pub fn client_names<R: Router>(
        state: &'static State<R>,
        cluster: String,
        topics: Vec<String>,
        principal: String,
        client_id: String,
    ) -> bindings::Listing {
        state.with(|slot| match slot.borrow_mut().as_mut() {
            Some(router) => bindings::Listing {
                topics: topics
                    .iter()
                    .map(|t| router.client_name(&cluster, t, &principal, &client_id))
                    .collect(),
                ttl_ms: router.listing_ttl_ms(),
            },
            // Not initialised: hide everything, remember nothing.
            None => bindings::Listing {
                topics: topics.iter().map(|_| ShownAs::Hidden).collect(),
                ttl_ms: 0,
            },
        })
    }
}

/// Exports a [`Router`] as the plugin's `router` world.
///
/// ```
/// use causeway_plugin_sdk::{Destination, Router};
///
/// struct EverythingToDr;
///
/// impl Router for EverythingToDr {
///     fn init(_config: &str) -> Result<Self, String> {
///         Ok(EverythingToDr)
///     }
///     fn route(&mut self, topic: &str, _principal: &str, _client_id: &str) -> Option<Destination> {
///         Some(Destination { cluster: "dr".into(), topic: topic.into(), ttl_ms: 60_000 })
///     }
/// }
///
/// causeway_plugin_sdk::router!(EverythingToDr);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! router {
    ($router:ty) => {
        #[allow(dead_code)]
        const _: () = {
            ::std::thread_local! {
                static STATE: ::core::cell::RefCell<::core::option::Option<$router>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            struct CausewayRouter;

            impl $crate::router::bindings::Guest for CausewayRouter {
                fn init(
                    config: ::std::string::String,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::router::__glue::init::<$router>(&STATE, config)
                }

                fn route(
                    topic: ::std::string::String,
                    principal: ::std::string::String,
                    client_id: ::std::string::String,
                ) -> ::core::option::Option<$crate::router::Destination> {
                    $crate::router::__glue::route::<$router>(&STATE, topic, principal, client_id)
                }

                fn client_names(
                    cluster: ::std::string::String,
                    topics: ::std::vec::Vec<::std::string::String>,
                    principal: ::std::string::String,
                    client_id: ::std::string::String,
                ) -> $crate::router::bindings::Listing {
                    $crate::router::__glue::client_names::<$router>(
                        &STATE, cluster, topics, principal, client_id,
                    )
                }
            }

            #[cfg(target_arch = "wasm32")]
            $crate::router::bindings::export!(
                CausewayRouter with_types_in $crate::router::bindings
            );
        };
    };
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::testing::{run_route, RouterHarness};

    struct Fixed;

    impl Router for Fixed {
        fn init(config: &str) -> Result<Self, String> {
            if config.is_empty() {
                Err("empty".into())
            } else {
                Ok(Fixed)
            }
        }

        fn route(&mut self, topic: &str, principal: &str, _client_id: &str) -> Option<Destination> {
            crate::log::trace(principal);
            (topic != "local").then(|| Destination {
                cluster: "c".into(),
                topic: topic.into(),
                ttl_ms: 1,
            })
        }
    }

    thread_local! {
        static STATE: RefCell<Option<Fixed>> = const { RefCell::new(None) };
    }

    #[test]
    fn glue_and_harness() {
        assert_eq!(
            __glue::route(&STATE, "t".into(), "p".into(), "c".into()),
            None,
            "before init"
        );
        assert_eq!(__glue::init(&STATE, "x".into()), Ok(()));
        assert!(__glue::route(&STATE, "t".into(), "p".into(), "c".into()).is_some());
        let listing = __glue::client_names(&STATE, "c".into(), vec!["a".into(), "b".into()], "p".into(), "c".into());
        assert_eq!(listing.topics, vec![ShownAs::Routes, ShownAs::Routes]);
        assert_eq!(listing.ttl_ms, 60_000);
        assert_eq!(run_route::<Fixed>("", "t", "p", "c"), Err("empty".into()));
        let mut harness = RouterHarness::<Fixed>::new("x").expect("init");
        assert_eq!(harness.route("local", "alice", ""), None);
        assert!(harness.captured().logged("alice"));
    }
}
