//! The tags' bitmaps as this process serves them: the last committed
//! version, reloaded whole when the store's version counter moves (after a
//! commit of this process or of another on the same store).

use crate::audience::bitmaps::TagBitmaps;
use crate::audience::expr::Expr;
use crate::store::{AudienceStore, Store, StoreError};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

/// A tag's last committed run, as the change feed keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastRun {
    /// The run's task.
    pub task_id: String,
    /// When it committed (UTC).
    pub committed_at: String,
    /// The task's `as_of` (none: the task is gone, or it took today's date).
    pub as_of: Option<String>,
}

/// Per tag, its last run, at one version.
type LastRuns = (u64, Arc<BTreeMap<u32, LastRun>>);

/// The snapshot served, shared by every request.
#[derive(Debug, Default)]
pub struct Live {
    current: RwLock<Option<Arc<TagBitmaps>>>,
    /// Held while a reload reads the store: one reload at a time.
    reloading: Mutex<()>,
    /// The tags' last runs, read once per version.
    last_runs: Mutex<Option<LastRuns>>,
    /// Counts of expressions (by their canonical text) at one version.
    counts: Mutex<(u64, HashMap<String, u64>)>,
}

/// Counts remembered per version at most (then the memory starts again).
const COUNTS_KEPT: usize = 4096;

impl Live {
    /// Nothing loaded yet: the first [`Live::fresh`] loads.
    pub fn new() -> Live {
        Live::default()
    }

    fn held(&self) -> Option<Arc<TagBitmaps>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The snapshot of the store's last committed version: the one held if
    /// the version counter has not moved (one small read), else reloaded.
    /// Blocking: call it off the async threads.
    pub fn fresh(&self, store: &dyn AudienceStore) -> Result<Arc<TagBitmaps>, StoreError> {
        let version = store.audience_version()?;
        if let Some(held) = self.held().filter(|h| h.version() >= version) {
            return Ok(held);
        }
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        // Another request may have reloaded while this one waited.
        if let Some(held) = self.held().filter(|h| h.version() >= version) {
            return Ok(held);
        }
        let (version, bitmaps) = store.tag_bitmaps()?;
        let snapshot = Arc::new(TagBitmaps::new(version, bitmaps));
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&snapshot));
        Ok(snapshot)
    }

    /// Per tag, its last run as of `version` (read from the store once per
    /// version: a question does not pay for it).
    pub fn last_runs(
        &self,
        store: &dyn Store,
        version: u64,
    ) -> Result<Arc<BTreeMap<u32, LastRun>>, StoreError> {
        let mut held = self.last_runs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((v, runs)) = held.as_ref().filter(|(v, _)| *v == version) {
            debug_assert_eq!(*v, version);
            return Ok(Arc::clone(runs));
        }
        let mut runs = BTreeMap::new();
        for (tag, task_id, committed_at) in store.last_runs()? {
            let as_of = store.get_task(&task_id)?.and_then(|t| t.spec.as_of);
            let run = LastRun {
                task_id,
                committed_at,
                as_of,
            };
            runs.insert(tag, run);
        }
        let runs = Arc::new(runs);
        *held = Some((version, Arc::clone(&runs)));
        Ok(runs)
    }

    /// How many users `expr` selects in `snapshot`, remembered for the
    /// snapshot's version (a count cannot change until a run commits).
    pub fn count(&self, snapshot: &TagBitmaps, expr: &Expr) -> u64 {
        let key = expr.to_string();
        {
            let held = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            if held.0 == snapshot.version() {
                if let Some(&n) = held.1.get(&key) {
                    return n;
                }
            }
        }
        let n = expr.count(snapshot);
        self.remember(snapshot.version(), key, n);
        n
    }

    /// Keeps `count` of the expression `key` at `version`.
    pub fn remember(&self, version: u64, key: String, count: u64) {
        let mut held = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if held.0 != version || held.1.len() >= COUNTS_KEPT {
            *held = (version, HashMap::new());
        }
        held.1.insert(key, count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audience::expr::parse_ids;
    use roaring::RoaringBitmap;

    #[test]
    fn counts_are_remembered_per_version_only() {
        let expr = parse_ids("1 AND NOT 2").unwrap();
        let bits = |ids: &[u32]| ids.iter().copied().collect::<RoaringBitmap>();
        let v1 = TagBitmaps::new(1, [(1, bits(&[1, 2, 3])), (2, bits(&[3]))]);
        let live = Live::new();
        assert_eq!(live.count(&v1, &expr), 2);
        // A wrong count remembered for version 1 is what version 1 answers
        // (so the answer came from memory) ...
        live.remember(1, expr.to_string(), 99);
        assert_eq!(live.count(&v1, &expr), 99);
        // ... and version 2 computes again.
        let v2 = TagBitmaps::new(2, [(1, bits(&[1, 2, 3, 4])), (2, bits(&[3]))]);
        assert_eq!(live.count(&v2, &expr), 3);
    }
}
