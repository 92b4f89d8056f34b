//! The commit stage: one store transaction per run, in two steps so the
//! report is built between them. [`write`] reads the current tags of the
//! users in scope, diffs, and sends the changes in batches; [`finish`]
//! commits them with the tag states and the run's report.

use super::bitset::Bitset;
use super::diff::{diff, Current, DiffTag};
use super::index::{sorted_rows, RowFinder};
use super::{stopped, DiffCounts, Evaluated, Plan, RunError, TagRun, Universe};
use crate::model::now_timestamp;
use crate::model::RunReport;
use crate::store::{GrantInfo, RunStart, RunTx, Store, StoreError, TagState, UserRows};
use crate::tasks::control::{panic_message, TaskControl};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

/// Changes per batch sent to the store.
const BATCH: usize = 4096;
/// Batches in flight to the writer thread.
const IN_FLIGHT: usize = 4;
/// A batch is sent at least every this many users diffed, however few of
/// them changed, so the writing stage's progress keeps moving.
const PROGRESS_USERS: usize = 65_536;

/// A run's transaction with every change applied but not committed: the
/// report is built from `counts` and committed with it by [`finish`].
pub struct Written<'s> {
    /// The open transaction.
    tx: Box<dyn RunTx + 's>,
    /// What the diff found.
    pub counts: DiffCounts,
    /// The tag states to commit with the results.
    states: Vec<TagState>,
}

/// Opens a run's transaction, reads the current tags of the users in scope,
/// and applies the diff against them; nothing is committed yet.
pub fn write<'s>(
    store: &'s dyn Store,
    task_id: &str,
    run: &Evaluated<'_>,
    control: &TaskControl,
) -> Result<Written<'s>, RunError> {
    let universe = run.universe;
    let scoped = scoped_users(run);
    // Comparing: the current tags of the users in scope, counted as read.
    let read = Arc::new(AtomicUsize::new(0));
    let in_scope = scoped.as_ref().map_or(universe.rows(), Vec::len) as u64;
    control.set_progress(|p| p.enter_counted("comparing", in_scope, Arc::clone(&read)));
    let tags: Vec<&TagRun> = run.tags.iter().map(|t| t.run).collect();
    let mut tx = begin(store, task_id, &tags)?;
    let mut stored = UserRows::counted(read);
    tx.current(scoped.as_deref(), &mut stored).map_err(failed)?;
    let (tx, counts) = write_part(tx, run, &stored, control)?;
    Ok(Written {
        tx,
        counts,
        states: states(run.plan, &tags, &universe.newest),
    })
}

/// Opens the transaction of a run of `tags`.
pub fn begin<'s>(
    store: &'s dyn Store,
    task_id: &str,
    tags: &[&TagRun],
) -> Result<Box<dyn RunTx + 's>, RunError> {
    store.begin_run(&run_start(task_id, tags)).map_err(failed)
}

/// Diffs the users of `run` (a run's or a partition's) against their
/// `stored` tags and applies the changes to `tx`, uncommitted.
pub fn write_part<'s>(
    tx: Box<dyn RunTx + 's>,
    run: &Evaluated<'_>,
    stored: &UserRows,
    control: &TaskControl,
) -> Result<(Box<dyn RunTx + 's>, DiffCounts), RunError> {
    let universe = run.universe;
    control.set_progress(|p| p.enter("writing", universe.rows() as u64));
    let mut finder = RowFinder::new(&universe.ids, &universe.index);
    let current = Current::place(universe.rows(), stored, |user| finder.find(user));
    let tags: Vec<DiffTag<'_>> = run
        .tags
        .iter()
        .map(|t| DiffTag {
            tag_id: t.run.id(),
            matched: &t.matched,
            scope: t.scope.as_ref(),
        })
        .collect();
    let (tx, counts) = write_changes(tx, universe, &tags, &current, control)?;
    control.checkpoint().map_err(stopped)?;
    Ok((tx, counts))
}

/// A transaction with every part written, ready for [`finish`].
pub fn written<'s>(
    tx: Box<dyn RunTx + 's>,
    counts: DiffCounts,
    states: Vec<TagState>,
) -> Written<'s> {
    Written { tx, counts, states }
}

/// Commits the written results with the tag states and `report`; the
/// milliseconds the store's commit took (PostgreSQL merges its staged rows
/// here), which the committed report cannot hold.
pub fn finish(
    written: Written<'_>,
    report: &RunReport,
    control: &TaskControl,
) -> Result<u64, RunError> {
    control.set_progress(|p| p.enter("committing", 1));
    let started = std::time::Instant::now();
    written.tx.commit(&written.states, report).map_err(failed)?;
    let commit_ms = started.elapsed().as_millis() as u64;
    control.set_progress(|p| p.finish());
    Ok(commit_ms)
}

fn failed(e: StoreError) -> RunError {
    RunError::Failed(format!("writing results failed, nothing was written: {e}"))
}

/// What the transaction records about the run's tags.
fn run_start(task_id: &str, tags: &[&TagRun]) -> RunStart {
    RunStart {
        task_id: task_id.to_string(),
        now: now_timestamp(),
        tags: tags
            .iter()
            .map(|t| GrantInfo {
                tag_id: t.id(),
                tag_name: t.tag.info.description.clone(),
                tag_category: t.tag.info.category.clone(),
                rule_version: t.rule_version,
            })
            .collect(),
    }
}

/// The diff's side of the channel to the results writer: changes are
/// sent in batches of [`BATCH`], and at least every [`PROGRESS_USERS`]
/// users diffed, each batch with the number of users diffed before it.
struct Outbox<'a> {
    send: std::sync::mpsc::SyncSender<(UserRows, usize)>,
    control: &'a TaskControl,
    batch: RefCell<UserRows>,
    /// Users diffed so far.
    diffed: Cell<usize>,
    /// `diffed` when the last batch was sent.
    sent: Cell<usize>,
    /// Set at a checkpoint that says stop.
    stop: Cell<Option<crate::tasks::control::Stop>>,
}

impl Outbox<'_> {
    /// Called as the diff takes the next user; false once it should stop.
    fn next_user(&self) -> bool {
        if self.diffed.get() - self.sent.get() >= PROGRESS_USERS {
            self.flush();
        }
        self.diffed.set(self.diffed.get() + 1);
        self.stop.get().is_none()
    }

    /// A user whose row changes.
    fn push(&self, op: crate::store::Op, user: &str, held: &[crate::store::Held]) {
        let full = {
            let mut batch = self.batch.borrow_mut();
            batch.push(op, user, held);
            batch.len() >= BATCH
        };
        if full {
            self.flush();
        }
    }

    fn flush(&self) {
        if let Err(stop) = self.control.checkpoint() {
            self.stop.set(Some(stop));
        }
        self.sent.set(self.diffed.get());
        let batch = std::mem::take(&mut *self.batch.borrow_mut());
        // A closed channel means the writer failed: its error is reported below.
        let _ = self.send.send((batch, self.diffed.get()));
    }
}

/// Diffs in user-id order on this thread while the store applies the
/// batches on a thread of its own; hands the transaction back uncommitted.
/// The writing stage's progress is the users whose changes were applied.
fn write_changes<'s>(
    mut tx: Box<dyn RunTx + 's>,
    universe: &Universe,
    tags: &[DiffTag<'_>],
    current: &Current<'_>,
    control: &TaskControl,
) -> Result<(Box<dyn RunTx + 's>, DiffCounts), RunError> {
    let order = sorted_rows(&universe.ids);
    std::thread::scope(|scope| {
        let (send, receive) = std::sync::mpsc::sync_channel::<(UserRows, usize)>(IN_FLIGHT);
        let writer = std::thread::Builder::new()
            .name("results-writer".into())
            .spawn_scoped(scope, move || {
                for (batch, upto) in receive {
                    tx.apply(&batch)?;
                    control.set_progress(|p| p.set_done("writing", upto as u64));
                }
                Ok::<_, StoreError>(tx)
            })
            .map_err(|e| RunError::Failed(format!("cannot start the results writer: {e}")))?;
        let outbox = Outbox {
            send,
            control,
            batch: RefCell::default(),
            diffed: Cell::new(0),
            sent: Cell::new(0),
            stop: Cell::new(None),
        };
        let counts = diff(
            order
                .iter()
                .take_while(|_| outbox.next_user())
                .map(|&r| r as usize),
            tags,
            current,
            |op, row, held| {
                outbox.push(op, universe.ids.get(row), held);
                Ok::<(), RunError>(())
            },
        );
        let stop = outbox.stop.get();
        outbox.flush();
        drop(outbox);
        let tx = writer
            .join()
            .map_err(|payload| {
                RunError::Failed(format!(
                    "the results writer panicked: {}",
                    panic_message(payload.as_ref())
                ))
            })?
            .map_err(failed);
        if let Some(stop) = stop {
            return Err(stopped(stop));
        }
        Ok((tx?, counts?))
    })
}

/// The users whose current tags the diff needs: `None` for all (a full run
/// over the whole universe), else the ids of the rows in any tag's scope.
fn scoped_users<'u>(run: &Evaluated<'u>) -> Option<Vec<&'u str>> {
    let universe = run.universe;
    if run.plan.user_ids.is_none() && run.tags.iter().any(|t| t.scope.is_none()) {
        return None;
    }
    let mut rows = Bitset::empty(universe.rows());
    for t in &run.tags {
        match &t.scope {
            Some(s) => rows.union_with(s),
            None => rows = Bitset::full(universe.rows()),
        }
    }
    Some(rows.ones().map(|i| universe.ids.get(i)).collect())
}

/// What the next incremental run of `tags` starts from: the tables' newest
/// times seen. A `user_ids` run evaluates only some users: it must not move
/// the watermarks.
pub fn states(plan: &Plan, tags: &[&TagRun], newest: &BTreeMap<String, i64>) -> Vec<TagState> {
    if plan.user_ids.is_some() {
        return Vec::new();
    }
    tags.iter()
        .map(|t| TagState {
            tag_id: t.id(),
            rule_version: t.rule_version,
            watermarks: t
                .tables()
                .into_iter()
                .filter_map(|table| {
                    let mark = newest.get(table).or(t.watermarks.get(table))?;
                    Some((table.to_string(), *mark))
                })
                .collect(),
            had_full_run: true,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::load::tests::{cash_tag, loaded};
    use crate::engine::report::{report, Computed, Timings};
    use crate::engine::{Failures, TagResult};
    use crate::store::sqlite::SqliteStore;
    use crate::store::ResultStore;

    /// Writes and commits task `task` with `matched` as tag 1's matches;
    /// the committed report.
    fn run(
        store: &SqliteStore,
        task: &str,
        plan: &Plan,
        universe: &Universe,
        matched: Bitset,
        control: &TaskControl,
    ) -> Result<RunReport, RunError> {
        let run = Evaluated {
            plan,
            universe,
            tags: vec![TagResult {
                run: &plan.tags[0],
                scope: None,
                matched,
            }],
        };
        let written = write(store, task, &run, control)?;
        let failures = Failures::default();
        let computed = Computed::of(&run, Default::default());
        let report = report(
            &computed,
            &failures,
            &written.counts,
            &Timings::start(),
            None,
        );
        finish(written, &report, control)?;
        Ok(report)
    }

    #[test]
    fn a_commit_writes_the_diff_and_the_report_together_and_the_next_one_revokes() {
        let (dir, plan, universe) = loaded(&[cash_tag()], None);
        let store = SqliteStore::open(&dir.path().join("tags.db")).unwrap();
        let control = TaskControl::default();
        let rows = |only: usize| Bitset::from_fn(3, |i| i == only);
        // Rows: u2, u1, u3. First u1 holds the tag, then u3 instead.
        let first = run(&store, "t1", &plan, &universe, rows(1), &control).unwrap();
        assert_eq!((first.rows_upserted, first.rows_deleted), (1, 0));
        assert_eq!(store.user_tags("u1").unwrap().unwrap().tag_ids, vec![1]);
        let second = run(&store, "t2", &plan, &universe, rows(2), &control).unwrap();
        assert_eq!((second.rows_upserted, second.rows_deleted), (1, 1));
        assert!(store.user_tags("u1").unwrap().is_none());
        let u3 = store.user_tags("u3").unwrap().unwrap();
        assert!(
            u3.details.contains("\"tag_name\":\"tag 1\""),
            "{}",
            u3.details
        );
        let outcome = store.run_outcome("t2").unwrap().expect("committed outcome");
        assert_eq!(outcome, second);
        // Unchanged matches write nothing.
        let third = run(&store, "t3", &plan, &universe, rows(2), &control).unwrap();
        assert_eq!((third.rows_upserted, third.rows_deleted), (0, 0));
        // The tag's state moved to the tables' newest times.
        let state = &store.tag_states().unwrap()[&1];
        assert_eq!(state.watermarks, universe.newest);
    }

    #[test]
    fn written_but_not_finished_leaves_the_store_as_it_was() {
        let (dir, plan, universe) = loaded(&[cash_tag()], None);
        let store = SqliteStore::open(&dir.path().join("tags.db")).unwrap();
        let control = TaskControl::default();
        let run = Evaluated {
            plan: &plan,
            universe: &universe,
            tags: vec![TagResult {
                run: &plan.tags[0],
                scope: None,
                matched: Bitset::full(3),
            }],
        };
        let written = write(&store, "t1", &run, &control).unwrap();
        assert_eq!(written.counts.upserted, 3);
        drop(written);
        assert!(store.user_tags("u1").unwrap().is_none());
        assert!(store.run_outcome("t1").unwrap().is_none());
    }

    #[test]
    fn a_cancelled_commit_leaves_the_store_as_it_was() {
        let (dir, plan, universe) = loaded(&[cash_tag()], None);
        let store = SqliteStore::open(&dir.path().join("tags.db")).unwrap();
        let cancelled = TaskControl::default();
        cancelled.cancel();
        let outcome = run(&store, "t1", &plan, &universe, Bitset::full(3), &cancelled);
        assert!(matches!(outcome, Err(RunError::Stopped(_))));
        assert!(store.user_tags("u1").unwrap().is_none());
        assert!(store.run_outcome("t1").unwrap().is_none());
    }
}
