//! The tags' bitmaps as this process serves them: the last committed
//! version, reloaded whole when the store's version counter moves (after a
//! commit of this process or of another on the same store). This
//! process's own commits are seen at once (the store counts them in
//! memory); the counter, for other processes' commits, is read at most
//! once per [`RECHECK`], so a remembered count is answered from memory
//! alone ([`Live::remembered`]), without a store read or a thread switch.

use crate::audience::bitmaps::TagBitmaps;
use crate::audience::expr::Expr;
use crate::store::{AudienceStore, Store, StoreError};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How long a read of the version counter stands for other processes'
/// commits: another process's commit is served within this.
pub const RECHECK: Duration = Duration::from_millis(250);

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

/// A count answered from memory ([`Live::remembered`]).
pub struct Remembered {
    /// The snapshot it counts.
    pub snapshot: Arc<TagBitmaps>,
    /// The expression's count in it.
    pub count: u64,
    /// The tags' last runs at its version.
    pub runs: Arc<BTreeMap<u32, LastRun>>,
}

/// Per tag, its last run, at one version.
type LastRuns = (u64, Arc<BTreeMap<u32, LastRun>>);

/// The snapshot served, shared by every request.
#[derive(Debug, Default)]
pub struct Live {
    current: RwLock<Option<Arc<TagBitmaps>>>,
    /// When the version counter was last read, and this process's commits
    /// then.
    checked: Mutex<Option<(Instant, u64)>>,
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
    /// this process committed nothing since the version counter was read
    /// less than [`RECHECK`] ago, or if the counter has not moved (one
    /// small read); else reloaded. Blocking: call it off the async threads.
    pub fn fresh(&self, store: &dyn AudienceStore) -> Result<Arc<TagBitmaps>, StoreError> {
        let commits = store.local_commits();
        if let Some(held) = self.recent(commits) {
            return Ok(held);
        }
        let at = Instant::now();
        let version = store.audience_version()?;
        let snapshot = self.at_least(store, version)?;
        *self.checked.lock().unwrap_or_else(|p| p.into_inner()) = Some((at, commits));
        Ok(snapshot)
    }

    /// The snapshot held, if it stands without reading the store (this
    /// process has made `commits` commits, as when the counter was last
    /// read, and that read is recent). No I/O: fine on an async thread.
    pub fn recent(&self, commits: u64) -> Option<Arc<TagBitmaps>> {
        let checked = *self.checked.lock().unwrap_or_else(|p| p.into_inner());
        match checked {
            Some((at, seen)) if seen == commits && at.elapsed() < RECHECK => self.held(),
            _ => None,
        }
    }

    /// The snapshot held if it is at `version` or later, else reloaded.
    fn at_least(
        &self,
        store: &dyn AudienceStore,
        version: u64,
    ) -> Result<Arc<TagBitmaps>, StoreError> {
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

    /// The snapshot served now, `expr`'s count and the tags' last runs, if
    /// all three are held for it ([`Live::recent`] with this process's
    /// `commits`): memory alone, no I/O and no counting, so an async thread
    /// may answer with it. None: ask the blocking way ([`Live::fresh`]).
    pub fn remembered(&self, commits: u64, expr: &Expr) -> Option<Remembered> {
        let snapshot = self.recent(commits)?;
        let version = snapshot.version();
        let count = {
            let held = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            (held.0 == version).then(|| held.1.get(&expr.to_string()).copied())??
        };
        let runs = {
            let held = self.last_runs.lock().unwrap_or_else(|p| p.into_inner());
            let (v, runs) = held.as_ref()?;
            (*v == version).then(|| Arc::clone(runs))?
        };
        Some(Remembered {
            snapshot,
            count,
            runs,
        })
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
    fn another_process_commit_is_served_within_recheck() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tags.db");
        let store = crate::store::sqlite::SqliteStore::open(&path).unwrap();
        let live = Live::new();
        let started = Instant::now();
        assert_eq!(live.fresh(&store).unwrap().version(), 0);
        // Another process commits: the counter moves in the file.
        let other = rusqlite::Connection::open(&path).unwrap();
        other
            .execute("UPDATE audience_meta SET version = 7", [])
            .unwrap();
        let held = live.fresh(&store).unwrap().version();
        // Within RECHECK of the read the snapshot held stands: no read.
        if started.elapsed() < RECHECK {
            assert_eq!(held, 0);
        }
        std::thread::sleep(RECHECK);
        assert_eq!(live.fresh(&store).unwrap().version(), 7);
    }

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
