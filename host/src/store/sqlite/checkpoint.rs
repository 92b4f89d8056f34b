//! Checkpoints of the results file's write-ahead log, off the runs' path.
//!
//! A run writes every page it changes into the WAL; a checkpoint copies
//! them into the database file. SQLite does that at the commit of the
//! connection that pushed the WAL past 1000 pages, so a 10M-user first run
//! spent 1.6 s of a 1.6 s commit copying 500 MB while its progress stood
//! still at "committing" and its task waited to complete. Runs' connections
//! therefore do not checkpoint (`wal_autocheckpoint = 0`); a committed run
//! asks this thread, which checkpoints on a connection of its own: PASSIVE
//! first (it never blocks readers or the next run's writer), then TRUNCATE,
//! which empties the WAL file once nothing is left to copy (it waits up to
//! a second for readers, and gives up if a writer holds the file). The
//! store joins the
//! thread when it is dropped, so a one-shot `tag-server run` leaves a
//! checkpointed file.

use super::{connect, db};
use crate::store::StoreError;
use std::path::Path;
use std::sync::mpsc::{channel, Sender};
use std::sync::Mutex;
use std::thread::JoinHandle;

/// The checkpointing thread of one results file.
pub struct Checkpointer {
    /// Closed (dropped) to stop the thread.
    ask: Mutex<Option<Sender<()>>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread for the results file at `path`.
    pub fn start(path: &Path) -> Result<Checkpointer, StoreError> {
        let conn = connect(path, true)?;
        conn.busy_timeout(std::time::Duration::from_secs(1))
            .map_err(db)?;
        let (ask, asked) = channel::<()>();
        let thread = std::thread::Builder::new()
            .name("wal-checkpoint".into())
            .spawn(move || {
                while asked.recv().is_ok() {
                    // Several commits since the last checkpoint: one will do.
                    while asked.try_recv().is_ok() {}
                    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
                        tracing::warn!(error = %e, "checkpointing the results file failed (the next one tries again)");
                        continue;
                    }
                    // Busy (a run writes): the WAL stays until the next time.
                    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
                }
            })
            .map_err(|e| StoreError::Database(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer {
            ask: Mutex::new(Some(ask)),
            thread: Some(thread),
        })
    }

    /// A handle a run's connection asks through once it committed.
    pub fn handle(&self) -> Option<Sender<()>> {
        self.ask.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Turns off a connection's own checkpoints (its commits leave the WAL to
/// the [`Checkpointer`]).
pub fn leave_to_checkpointer(conn: &rusqlite::Connection) -> Result<(), StoreError> {
    conn.execute_batch("PRAGMA wal_autocheckpoint = 0")
        .map_err(db)
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // Runs hold clones of the sender only while they write; with the
        // store dropped none is left, so closing ours ends the thread after
        // any checkpoint asked for.
        self.ask.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{now_timestamp, RunReport};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{GrantInfo, Held, Op, ResultStore, RunStart, UserRows};
    use std::time::{Duration, Instant};

    /// Commits a run that gives tag 1 to `users` new users named after it.
    fn commit_run(store: &SqliteStore, task_id: &str, users: usize) {
        let start = RunStart {
            task_id: task_id.into(),
            now: now_timestamp(),
            tags: vec![GrantInfo {
                tag_id: 1,
                tag_name: "t".into(),
                tag_category: "c".into(),
                rule_version: 1,
            }],
        };
        let mut tx = store.begin_run(&start).unwrap();
        let mut rows = UserRows::default();
        let held = [Held {
            tag_id: 1,
            grant: Held::NEW,
        }];
        for i in 0..users {
            rows.push(Op::Insert, &format!("{task_id}_{i:07}"), &held);
        }
        tx.apply(&rows).unwrap();
        tx.commit(&[], &RunReport::default()).unwrap();
    }

    fn wal_bytes(path: &std::path::Path) -> u64 {
        std::fs::metadata(path.with_extension("db-wal")).map_or(0, |m| m.len())
    }

    #[test]
    fn a_committed_runs_wal_is_checkpointed_and_emptied_off_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tags.db");
        let store = SqliteStore::open(&path).unwrap();
        // Enough rows for well over SQLite's own 1000-page checkpoint point.
        commit_run(&store, "t1", 400_000);
        let deadline = Instant::now() + Duration::from_secs(30);
        while wal_bytes(&path) > 0 {
            assert!(Instant::now() < deadline, "the WAL was never emptied");
            std::thread::sleep(Duration::from_millis(20));
        }
        let row = store.user_tags("t1_0399999").unwrap().expect("a row");
        assert_eq!(row.tag_ids, vec![1]);
        // A second run while the first's pages are in the database file.
        commit_run(&store, "t2", 10);
        assert!(store.run_outcome("t2").unwrap().is_some());
        drop(store);
        // The store joined its thread: the last connection closed cleanly.
        assert_eq!(wal_bytes(&path), 0);
    }
}
