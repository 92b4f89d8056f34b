//! The plugins a server offers: the last scan of its plugins directory and
//! the registry built from it. A reload (`POST /api/v1/plugins/reload`,
//! SIGHUP) scans again and replaces both whole; tasks already running keep
//! the registry they started with, and the libraries they call stay mapped
//! (a library is never unloaded).

use crate::store::Store;
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use tag_plugin_loader::TagRegistry;
use tag_plugin_loader::{self as plugins, LoadReport};

/// The current plugins and how to scan for them again.
pub struct Catalog {
    dir: PathBuf,
    copies: PathBuf,
    registry: Arc<RwLock<TagRegistry>>,
    report: RwLock<Arc<LoadReport>>,
    reloading: Mutex<()>,
}

impl Catalog {
    /// Scans `dir` (private copies in `copies`) and seeds each new tag's
    /// rule in `store`.
    pub fn open(dir: PathBuf, copies: PathBuf, store: &dyn Store) -> anyhow::Result<Catalog> {
        let catalog = Catalog {
            dir,
            copies,
            registry: Arc::default(),
            report: RwLock::default(),
            reloading: Mutex::new(()),
        };
        catalog.reload(store)?;
        Ok(catalog)
    }

    /// Scans again; on success the new registry and report replace the old
    /// ones whole (on failure nothing changes).
    pub fn reload(&self, store: &dyn Store) -> anyhow::Result<Arc<LoadReport>> {
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let owners = store.tag_owners().context("reading tag owners")?;
        let (registry, report) =
            plugins::load_dir_with(&self.dir, &self.copies, &owners).context("loading plugins")?;
        log(&self.dir, &registry, &report);
        store
            .record_tag_owners(&report.unowned(&owners))
            .context("recording tag owners")?;
        for tag in registry.iter() {
            crate::engine::plan::current_rule(store, tag).context("seeding rules")?;
        }
        let report = Arc::new(report);
        *self.registry.write().unwrap_or_else(|p| p.into_inner()) = registry;
        *self.report.write().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&report);
        Ok(report)
    }

    /// The shared registry handle (replaced in place by a reload).
    pub fn registry(&self) -> Arc<RwLock<TagRegistry>> {
        Arc::clone(&self.registry)
    }

    /// The last scan.
    pub fn report(&self) -> Arc<LoadReport> {
        Arc::clone(&self.report.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The plugins directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// How much of a SHA-256 the info lines show (the whole one is logged at
/// debug, listed by `tag-server plugins` and `GET /api/v1/plugins`).
const SHORT_DIGEST: usize = 12;

fn log(dir: &Path, registry: &TagRegistry, report: &LoadReport) {
    let rejected = report.rejected().count();
    tracing::info!(dir = %dir.display(), loaded = report.loaded().count(), rejected, "plugins scanned");
    for (file, plugin) in report.loaded() {
        let name = file.path.file_name().unwrap_or_default().to_string_lossy();
        let short = &file.sha256[..file.sha256.len().min(SHORT_DIGEST)];
        tracing::info!(file = %name, sha256 = %short, plugin = %plugin.name, version = %plugin.version,
            tags = ?plugin.tags.iter().map(|t| t.tag_id).collect::<Vec<_>>(), "plugin loaded");
        tracing::debug!(file = %file.path.display(), sha256 = %file.sha256, "plugin loaded from");
    }
    for (file, reason) in report.rejected() {
        tracing::warn!(file = %file.path.display(), reason = %reason, "plugin rejected");
    }
    if !registry.is_empty() {
        return;
    }
    if rejected == 0 {
        tracing::warn!(dir = %dir.display(), "no plugin libraries found: no tag can be served and every trigger will be refused");
        return;
    }
    let mut reasons: Vec<String> = report.rejected().map(|(_, r)| r.to_string()).collect();
    reasons.sort();
    reasons.dedup();
    tracing::error!(
        "NO TAGS LOADED: all {rejected} plugin files in {} were rejected, so no tag can be served and every trigger is refused. {} Then reload (POST /api/v1/plugins/reload, SIGHUP) or restart; the console's Plugins page (/plugins) and `tag-server plugins` list each file and why",
        dir.display(),
        match reasons.as_slice() {
            [one] => format!("Every file: {one}."),
            many => format!("Reasons: {}.", many.join("; ")),
        }
    );
}
