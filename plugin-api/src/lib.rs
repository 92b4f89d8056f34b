//! # tag-plugin-api
//!
//! The only crate that `tag-server` and its tag plugins both link: the ABI
//! (built on [`abi_stable`], checked when a plugin is loaded) and the SDK a
//! data team uses to write a tag.
//!
//! ## Layout
//! - [`abi`]: the FFI types. Batches arrive as borrowed columnar buffers (no
//!   copy of numeric, boolean or date data), masks go back as bit words.
//! - [`batch`]: checked, typed, null-aware access to a batch's columns.
//! - [`echo`]: client input quoted back in error texts, bounded, and
//!   unknown JSON keys named with the known key nearest to each.
//! - [`rule`]: the rule language (parse, validate, vectorised evaluation with
//!   SQL's three-valued logic).
//! - [`tag`]: the [`Tag`] trait you implement, and the export machinery.
//!   `evaluate` may be called concurrently from several threads, on
//!   different batches, so a tag is `Send + Sync`.
//! - [`owned`] and [`testing`]: build batches from plain values and run a tag
//!   the way the host does, for unit tests.
//! - [`export_plugin!`]: the one macro a plugin library needs.
//!
//! ## A complete plugin
//!
//! `Cargo.toml` (the library is a `cdylib` for the host and an `rlib` for its
//! own tests; `abi_stable` must be a direct dependency because its export
//! attribute refers to it by name):
//!
//! ```toml
//! [package]
//! name = "tag-plugin-example"
//! version = "0.1.0"
//! edition = "2021"
//!
//! [lib]
//! crate-type = ["cdylib", "rlib"]
//!
//! [dependencies]
//! tag-plugin-api = { path = "../../plugin-api" }
//! abi_stable = { version = "=0.11.3", default-features = false }
//! ```
//!
//! `src/lib.rs`:
//!
//! ```
//! use tag_plugin_api::{export_plugin, ColumnType, Tag, TagInfo};
//!
//! /// Users with a large crypto position.
//! pub struct CryptoHolder;
//!
//! impl Tag for CryptoHolder {
//!     fn info(&self) -> TagInfo {
//!         TagInfo::new(101, "CryptoHolderTask", "加密资产持有者", "财富类")
//!             .input("user_asset_summary", "crypto_value", ColumnType::Float64)
//!             .default_rule(r#"{"field": "crypto_value", "operator": ">=", "value": 10000}"#)
//!     }
//! }
//!
//! export_plugin!(CryptoHolder);
//!
//! #[cfg(test)]
//! mod tests {
//!     use super::*;
//!     use tag_plugin_api::{owned::OwnedBatch, testing::evaluate_default};
//!
//!     #[test]
//!     fn threshold_is_inclusive_and_null_is_not_a_holder() {
//!         let batch = OwnedBatch::new().float64("crypto_value", &[Some(10000.0), Some(9999.99), None]);
//!         assert_eq!(evaluate_default(CryptoHolder, &batch, "2024-06-30").unwrap(), [true, false, false]);
//!     }
//! }
//! # fn main() {
//! #     use tag_plugin_api::{owned::OwnedBatch, testing::evaluate_default};
//! #     let batch = OwnedBatch::new().float64("crypto_value", &[Some(10000.0), Some(9999.99), None]);
//! #     assert_eq!(evaluate_default(CryptoHolder, &batch, "2024-06-30").unwrap(), [true, false, false]);
//! # }
//! ```
//!
//! Build it with `cargo build --release`, copy `target/release/lib<name>.so`
//! into the server's plugins directory, and check it with
//! `tag-server plugins check <file>`. `plugins/README.md` walks through it.

#![warn(missing_docs)]
// The crate example shows a plugin's unit tests as a data team writes them.
#![allow(clippy::test_attr_in_doctest)]

pub mod abi;
pub mod batch;
pub mod date;
pub mod echo;
pub mod mask;
pub mod owned;
pub mod rule;
pub mod tag;
pub mod testing;

pub use abi::{ColumnType, API_VERSION};
pub use batch::{Batch, BatchError, Column};
pub use date::Date;
pub use mask::Mask;
pub use rule::{Rule, RuleError, Schema};
pub use tag::{Input, Tag, TagError, TagInfo, CUSTOM_EVALUATE_CHARS};

/// Re-exported so the export macro can name it; plugin crates still need
/// their own `abi_stable` dependency for the export attribute.
pub use abi_stable;

/// Exports a plugin library's tags: `export_plugin!(TagA, TagB);` where each
/// argument is an expression whose type implements [`Tag`]. Generates the
/// abi_stable root module and panic-guarded entry points. Use it once per
/// library.
#[macro_export]
macro_rules! export_plugin {
    ($($tag:expr),+ $(,)?) => {
        /// The plugin's tags, built anew for each caller.
        fn __tag_plugin_make() -> ::std::vec::Vec<::std::boxed::Box<dyn $crate::Tag>> {
            ::std::vec![$(::std::boxed::Box::new($tag) as ::std::boxed::Box<dyn $crate::Tag>),+]
        }

        extern "C" fn __tag_plugin_tasks() -> $crate::abi_stable::std_types::RResult<
            $crate::abi_stable::std_types::RVec<$crate::abi::TagTaskBox>,
            $crate::abi::PluginError,
        > {
            $crate::tag::export_tasks(__tag_plugin_make)
        }

        /// What the tags' own evaluate decides beyond their rule trees:
        /// found by the host by this name (`abi::CUSTOM_EVALUATE_SYMBOL`).
        #[no_mangle]
        pub extern "C" fn tag_plugin_custom_evaluates_v1() -> $crate::abi_stable::std_types::RVec<
            $crate::abi_stable::std_types::Tuple2<u32, $crate::abi_stable::std_types::RString>,
        > {
            // Checks its type against the one the host calls it as.
            const _: $crate::abi::CustomEvaluatesFn = tag_plugin_custom_evaluates_v1;
            $crate::tag::custom_evaluates(__tag_plugin_make)
        }

        /// The plugin's root module, found by the host through abi_stable.
        #[::abi_stable::export_root_module]
        pub fn tag_plugin_root_module() -> $crate::abi::TagPluginRef {
            $crate::tag::root_module(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"), __tag_plugin_tasks)
        }
    };
}
