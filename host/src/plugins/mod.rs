//! The host's side of plugin loading: where tag-server keeps the private
//! copies by default, and the `plugins check` sample batch. Finding,
//! verifying and loading libraries is [`tag_plugin_loader`]'s.

pub mod sample;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tag_plugin_loader::{LoadReport, ScanError, TagRegistry};

/// Where private copies of plugin libraries go by default:
/// `$XDG_CACHE_HOME/tag-server/plugins`, `$HOME/.cache/tag-server/plugins`,
/// or `<temp dir>/tag-server-plugins-<uid>`.
pub fn default_copies_dir() -> PathBuf {
    crate::disk::cache_dir("plugins")
}

/// Loads every plugin library in `dir` into a fresh registry, loading
/// private copies from [`default_copies_dir`], with no recorded owners.
pub fn load_dir(dir: &Path) -> Result<(TagRegistry, LoadReport), ScanError> {
    tag_plugin_loader::load_dir_with(dir, &default_copies_dir(), &HashMap::new())
}
