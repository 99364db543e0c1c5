//! Where the host imports go: the WIT `causeway:plugin/host` interface in a
//! component, a capture buffer or stderr natively.

use crate::log::Level;

pub(crate) fn log(level: Level, message: &str) {
    imp::log(level, message);
}

pub(crate) fn count(name: &str, delta: u64) {
    imp::count(name, delta);
}

/// Sends a panic's message to the gateway's log before the instance traps, so
/// the operator sees why the plugin was restarted. Called from every world's
/// `init`; natively a no-op (the test harness reports panics itself).
pub(crate) fn install_panic_hook() {
    #[cfg(target_arch = "wasm32")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                imp::log(Level::Error, &format!("plugin panicked: {info}"));
            }));
        });
    }
}

// Every world imports the same `causeway:plugin/host@0.1.0`, so the bindings of
// any enabled world reach the same two core imports.
#[cfg(all(
    target_arch = "wasm32",
    any(feature = "record-filter", feature = "acl-mapper", feature = "router")
))]
mod imp {
    use crate::log::Level;

    #[cfg(all(
        not(feature = "record-filter"),
        not(feature = "router"),
        feature = "acl-mapper"
    ))]
    use crate::acl_mapper::bindings::causeway::plugin::host as wit;
    #[cfg(feature = "record-filter")]
    use crate::record_filter::bindings::causeway::plugin::host as wit;
    #[cfg(all(not(feature = "record-filter"), feature = "router"))]
    use crate::router::bindings::causeway::plugin::host as wit;

    pub(super) fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => wit::Level::Trace,
            Level::Debug => wit::Level::Debug,
            Level::Info => wit::Level::Info,
            Level::Warn => wit::Level::Warn,
            Level::Error => wit::Level::Error,
        };
        wit::log(level, message);
    }

    pub(super) fn count(name: &str, delta: u64) {
        wit::count(name, delta);
    }
}

// A wasm build with no world enabled has no host to talk to.
#[cfg(all(
    target_arch = "wasm32",
    not(any(feature = "record-filter", feature = "acl-mapper", feature = "router"))
))]
mod imp {
    use crate::log::Level;

    pub(super) fn log(_level: Level, _message: &str) {}

    pub(super) fn count(_name: &str, _delta: u64) {}
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use crate::log::Level;

    pub(super) fn log(level: Level, message: &str) {
        if !crate::testing::sink::log(level, message) {
            eprintln!("[plugin {level}] {message}");
        }
    }

    pub(super) fn count(name: &str, delta: u64) {
        // Outside a capture (a native benchmark, say) counters go nowhere.
        crate::testing::sink::count(name, delta);
    }
}
