//! Write Causeway plugins in Rust.
//!
//! A Causeway plugin is a WebAssembly component exporting one world of
//! `causeway:plugin@0.1.0` (see `wit/plugin.wit` at the repository root):
//!
//! | world           | trait              | macro              |
//! |-----------------|--------------------|--------------------|
//! | `record-filter` | [`RecordFilter`]   | [`record_filter!`] |
//! | `acl-mapper`    | [`AclMapper`]      | [`acl_mapper!`]    |
//! | `router`        | [`Router`]         | [`router!`]        |
//!
//! Implement the trait on a type holding your plugin's state, then name the type
//! in the macro. A whole record filter:
//!
//! ```
//! use causeway_plugin_sdk::{BatchContext, Record, RecordFilter, Verdict};
//!
//! struct DropTombstones;
//!
//! impl RecordFilter for DropTombstones {
//!     fn init(_config: &str) -> Result<Self, String> { Ok(DropTombstones) }
//!     fn filter(&mut self, _ctx: &BatchContext, records: &[Record]) -> Result<Vec<Verdict>, String> {
//!         Ok(records.iter().map(|r| if r.value.is_some() { Verdict::Pass } else { Verdict::Drop }).collect())
//!     }
//! }
//! causeway_plugin_sdk::record_filter!(DropTombstones);
//! # fn main() {}
//! ```
//!
//! The same crate builds two ways:
//!
//! - **wasm32** (`scripts/build-plugins.sh`): the macro exports the world's
//!   functions, and [`log`] and [`count`] call the gateway.
//! - **natively** (`cargo test`): the macro only type-checks, and [`testing`]
//!   runs the plugin directly, capturing what it logs and counts.
//!
//! Make the plugin crate `crate-type = ["cdylib", "rlib"]` (the cdylib is the
//! component, the rlib lets tests and native benchmarks use the type) and enable
//! exactly one world feature of this crate: `record-filter`, `acl-mapper` or
//! `router`. A wasm build with several gives the component every enabled world's
//! types, and it no longer fits its own world; natively any mix is fine.
//!
//! Calls are per batch: log and count per batch, not per record, and answer
//! [`Verdict::Pass`] for unchanged records so their bytes never cross back.

mod host;
pub mod log;

// The plugin's heap: the instance's linear memory, grown as needed up to the
// gateway's memory limit (past it an allocation fails and the call traps).
#[cfg(all(feature = "talc", target_family = "wasm", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

#[cfg(feature = "record-filter")]
mod wire;

#[cfg(feature = "acl-mapper")]
pub mod acl_mapper;
#[cfg(feature = "record-filter")]
pub mod record_filter;
#[cfg(feature = "router")]
pub mod router;

#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

#[cfg(feature = "acl-mapper")]
pub use acl_mapper::{AclMapper, Decision, Identity, Operation, Principal, ResourceKind};
#[cfg(feature = "record-filter")]
pub use record_filter::{
    BatchContext, Direction, Header, KafkaRecord, Record, RecordBatch, RecordFilter, Verdict,
};
#[cfg(feature = "router")]
pub use router::{Destination, Router, ShownAs};

/// Adds `delta` to this plugin's counter `name`, exported by the gateway as
/// `causeway_plugin_counter_total{plugin, name}`. Count per batch (a sum),
/// not per record: each call leaves the sandbox.
pub fn count(name: &str, delta: u64) {
    host::count(name, delta);
}

/// What a world's functions answer when the gateway calls them before a
/// successful `init` (a gateway bug).
#[cfg(any(feature = "record-filter", feature = "acl-mapper"))]
const NOT_INITIALISED: &str = "plugin called before a successful init";

// Name the missing feature rather than "cannot find macro".
#[cfg(not(feature = "record-filter"))]
#[macro_export]
#[doc(hidden)]
macro_rules! record_filter {
    ($($t:tt)*) => {
        compile_error!("enable the \"record-filter\" feature of causeway-plugin-sdk");
    };
}

#[cfg(not(feature = "acl-mapper"))]
#[macro_export]
#[doc(hidden)]
macro_rules! acl_mapper {
    ($($t:tt)*) => {
        compile_error!("enable the \"acl-mapper\" feature of causeway-plugin-sdk");
    };
}

#[cfg(not(feature = "router"))]
#[macro_export]
#[doc(hidden)]
macro_rules! router {
    ($($t:tt)*) => {
        compile_error!("enable the \"router\" feature of causeway-plugin-sdk");
    };
}
