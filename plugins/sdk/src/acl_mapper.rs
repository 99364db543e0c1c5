//! The `acl-mapper` world: maps an authenticated identity (SASL user, TLS
//! subject) to a principal with roles, and decides whether a principal may do
//! an operation on a resource.
//!
//! Implement [`AclMapper`] and name the type in [`acl_mapper!`](crate::acl_mapper!).
//! The gateway caches both answers for their `ttl_ms`, so keep them pure
//! functions of their arguments and the config.

use std::cell::RefCell;
use std::thread::LocalKey;

/// What wit-bindgen generates for the world; plugins use the re-exports below.
#[doc(hidden)]
#[allow(unsafe_code, missing_docs, unreachable_pub, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "causeway:plugin/acl-mapper@0.1.0",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "causeway_plugin_sdk::acl_mapper::bindings",
        additional_derives: [PartialEq, Eq],
    });
}

pub use bindings::{Decision, Identity, Operation, Principal, ResourceKind};

/// An ACL mapper. One value lives in each plugin instance.
pub trait AclMapper: Sized + 'static {
    /// Builds the mapper from the plugin's config string. An error stops the
    /// plugin from loading.
    fn init(config: &str) -> Result<Self, String>;

    /// Who is this? An error refuses the client (it is not authenticated).
    fn map_principal(&mut self, who: &Identity) -> Result<Principal, String>;

    /// May `who` do `op` on the resource `kind`/`name`?
    fn authorize(
        &mut self,
        who: &Principal,
        op: Operation,
        kind: ResourceKind,
        name: &str,
    ) -> Decision;
}

impl Identity {
    /// A client that authenticated with SASL as `user`.
    pub fn sasl(user: impl Into<String>) -> Self {
        Identity {
            sasl_user: Some(user.into()),
            tls_subject: None,
            client_id: String::new(),
            peer_address: String::new(),
        }
    }

    /// A client that presented a TLS certificate with this subject, e.g.
    /// `CN=orders,O=Example`.
    pub fn tls(subject: impl Into<String>) -> Self {
        Identity {
            sasl_user: None,
            tls_subject: Some(subject.into()),
            client_id: String::new(),
            peer_address: String::new(),
        }
    }

    /// A client with neither.
    pub fn anonymous() -> Self {
        Identity {
            sasl_user: None,
            tls_subject: None,
            client_id: String::new(),
            peer_address: String::new(),
        }
    }

    /// Sets the client id.
    pub fn with_client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self
    }

    /// Sets the peer address (`ip:port`).
    pub fn with_peer_address(mut self, peer_address: impl Into<String>) -> Self {
        self.peer_address = peer_address.into();
        self
    }
}

impl Decision {
    /// Allowed, cacheable for `ttl_ms`.
    pub fn allow(ttl_ms: u32) -> Self {
        Decision {
            allow: true,
            ttl_ms,
        }
    }

    /// Denied, cacheable for `ttl_ms`.
    pub fn deny(ttl_ms: u32) -> Self {
        Decision {
            allow: false,
            ttl_ms,
        }
    }
}

/// The glue that [`acl_mapper!`](crate::acl_mapper!) expands to calls these;
/// not for direct use.
#[doc(hidden)]
pub mod __glue {
    use super::*;

    pub type State<A> = LocalKey<RefCell<Option<A>>>;

    pub fn init<A: AclMapper>(state: &'static State<A>, config: String) -> Result<(), String> {
        crate::host::install_panic_hook();
        let mapper = A::init(&config);
        state.with(|slot| {
            let mut slot = slot.borrow_mut();
            match mapper {
                Ok(mapper) => {
                    *slot = Some(mapper);
                    Ok(())
                }
                Err(e) => {
                    *slot = None;
                    Err(e)
                }
            }
        })
    }

    pub fn map_principal<A: AclMapper>(
        state: &'static State<A>,
        who: Identity,
    ) -> Result<Principal, String> {
        state.with(|slot| match slot.borrow_mut().as_mut() {
            Some(mapper) => mapper.map_principal(&who),
            None => Err(crate::NOT_INITIALISED.to_string()),
        })
    }

    pub fn authorize<A: AclMapper>(
        state: &'static State<A>,
        who: Principal,
        op: Operation,
        kind: ResourceKind,
        name: String,
    ) -> Decision {
        state.with(|slot| match slot.borrow_mut().as_mut() {
            Some(mapper) => mapper.authorize(&who, op, kind, &name),
            // Fail closed, and do not let the gateway cache it.
            None => Decision::deny(0),
        })
    }
}

/// Exports an [`AclMapper`] as the plugin's `acl-mapper` world.
///
/// ```
/// use causeway_plugin_sdk::{AclMapper, Decision, Identity, Operation, Principal, ResourceKind};
///
/// struct EveryoneReads;
///
/// impl AclMapper for EveryoneReads {
///     fn init(_config: &str) -> Result<Self, String> {
///         Ok(EveryoneReads)
///     }
///     fn map_principal(&mut self, who: &Identity) -> Result<Principal, String> {
///         let name = who.sasl_user.clone().ok_or("SASL required")?;
///         Ok(Principal { name, roles: vec![], ttl_ms: 60_000 })
///     }
///     fn authorize(&mut self, _who: &Principal, op: Operation, _kind: ResourceKind, _name: &str) -> Decision {
///         Decision { allow: matches!(op, Operation::Read | Operation::Describe), ttl_ms: 60_000 }
///     }
/// }
///
/// causeway_plugin_sdk::acl_mapper!(EveryoneReads);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! acl_mapper {
    ($mapper:ty) => {
        #[allow(dead_code)]
        const _: () = {
            ::std::thread_local! {
                static STATE: ::core::cell::RefCell<::core::option::Option<$mapper>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            struct CausewayAclMapper;

            impl $crate::acl_mapper::bindings::Guest for CausewayAclMapper {
                fn init(
                    config: ::std::string::String,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::acl_mapper::__glue::init::<$mapper>(&STATE, config)
                }

                fn map_principal(
                    who: $crate::acl_mapper::Identity,
                ) -> ::core::result::Result<$crate::acl_mapper::Principal, ::std::string::String>
                {
                    $crate::acl_mapper::__glue::map_principal::<$mapper>(&STATE, who)
                }

                fn authorize(
                    who: $crate::acl_mapper::Principal,
                    op: $crate::acl_mapper::Operation,
                    kind: $crate::acl_mapper::ResourceKind,
                    name: ::std::string::String,
                ) -> $crate::acl_mapper::Decision {
                    $crate::acl_mapper::__glue::authorize::<$mapper>(&STATE, who, op, kind, name)
                }
            }

            #[cfg(target_arch = "wasm32")]
            $crate::acl_mapper::bindings::export!(
                CausewayAclMapper with_types_in $crate::acl_mapper::bindings
            );
        };
    };
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    struct SaslOnly;

    impl AclMapper for SaslOnly {
        fn init(_config: &str) -> Result<Self, String> {
            Ok(SaslOnly)
        }

        fn map_principal(&mut self, who: &Identity) -> Result<Principal, String> {
            let name = who.sasl_user.clone().ok_or("SASL required")?;
            Ok(Principal {
                name,
                roles: vec![],
                ttl_ms: 5,
            })
        }

        fn authorize(
            &mut self,
            who: &Principal,
            _op: Operation,
            _kind: ResourceKind,
            name: &str,
        ) -> Decision {
            if name.starts_with(&who.name) {
                Decision::allow(5)
            } else {
                Decision::deny(5)
            }
        }
    }

    thread_local! {
        static STATE: RefCell<Option<SaslOnly>> = const { RefCell::new(None) };
    }

    #[test]
    fn glue_fails_closed_before_init() {
        let p = Principal {
            name: "a".into(),
            roles: vec![],
            ttl_ms: 0,
        };
        assert_eq!(
            __glue::authorize(
                &STATE,
                p.clone(),
                Operation::Read,
                ResourceKind::Topic,
                "a".into()
            ),
            Decision::deny(0)
        );
        assert!(__glue::map_principal(&STATE, Identity::sasl("a")).is_err());
        assert_eq!(__glue::init(&STATE, String::new()), Ok(()));
        assert_eq!(
            __glue::authorize(
                &STATE,
                p,
                Operation::Read,
                ResourceKind::Topic,
                "a.t".into()
            ),
            Decision::allow(5)
        );
    }

    #[test]
    fn harness_maps_then_authorizes() {
        let mut harness = crate::testing::AclHarness::<SaslOnly>::new("").expect("init");
        let who = Identity::sasl("alice")
            .with_client_id("c")
            .with_peer_address("10.0.0.1:5000");
        assert_eq!(
            harness.allows(&who, Operation::Write, ResourceKind::Topic, "alice.t"),
            Ok(true)
        );
        assert_eq!(
            harness.allows(&who, Operation::Write, ResourceKind::Topic, "bob.t"),
            Ok(false)
        );
        assert_eq!(
            harness.allows(
                &Identity::tls("CN=x"),
                Operation::Read,
                ResourceKind::Topic,
                "x"
            ),
            Err("SASL required".into())
        );
    }
}
