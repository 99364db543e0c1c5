//! The `router` world: maps a client-visible topic to a backend cluster and
//! topic name, or leaves the decision to the gateway's own routes.
//!
//! Implement [`Router`] and name the type in [`router!`](crate::router!).
//! The gateway caches an answer for its `ttl_ms`.

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

pub use bindings::Destination;

/// A topic router. One value lives in each plugin instance.
pub trait Router: Sized + 'static {
    /// Builds the router from the plugin's config string. An error stops the
    /// plugin from loading.
    fn init(config: &str) -> Result<Self, String>;

    /// Where does `topic` go for this principal and client? `None` leaves it
    /// to the gateway's own routes.
    fn route(&mut self, topic: &str, principal: &str, client_id: &str) -> Option<Destination>;
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
        assert_eq!(run_route::<Fixed>("", "t", "p", "c"), Err("empty".into()));
        let mut harness = RouterHarness::<Fixed>::new("x").expect("init");
        assert_eq!(harness.route("local", "alice", ""), None);
        assert!(harness.captured().logged("alice"));
    }
}
