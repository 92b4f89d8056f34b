//! Helpers for a plugin's own unit tests: run a [`Tag`] exactly as the host
//! would (through the FFI adapter, with the panic guard) on an [`OwnedBatch`].

use crate::abi::PluginError;
use crate::date::Date;
use crate::owned::OwnedBatch;
use crate::tag::{evaluate_via_ffi, Tag};

/// Evaluates `tag`'s default rule; one `bool` per row.
///
/// `as_of` is `YYYY-MM-DD`; panics on a malformed literal.
pub fn evaluate_default<T: Tag>(
    tag: T,
    batch: &OwnedBatch,
    as_of: &str,
) -> Result<Vec<bool>, PluginError> {
    let rule = tag.info().default_rule;
    evaluate_rule(tag, batch, &rule, as_of)
}

/// Evaluates `tag` under `rule` (rule-language JSON); one `bool` per row.
pub fn evaluate_rule<T: Tag>(
    tag: T,
    batch: &OwnedBatch,
    rule: &str,
    as_of: &str,
) -> Result<Vec<bool>, PluginError> {
    let as_of = Date::parse(as_of).unwrap_or_else(|| panic!("bad as_of literal {as_of:?}"));
    batch
        .with_ffi(|ffi| evaluate_via_ffi(Box::new(tag), ffi, rule, as_of))
        .map(|m| m.to_bools())
}
