//! The commit stage: one store transaction per run. Read the current tags
//! of the users in scope, diff, send the changes in batches, and commit them
//! with the tag states and the run's report.

use super::bitset::Bitset;
use super::diff::{diff, Current, DiffCounts, DiffTag};
use super::index::{sorted_rows, RowFinder};
use super::load::Universe;
use super::plan::{tag_tables, Plan};
use super::report::RunReport;
use super::{stopped, RunError};
use crate::model::now_timestamp;
use crate::scheduler::{panic_message, TaskControl};
use crate::store::{GrantInfo, RunStart, RunTx, Store, StoreError, TagState, UserRows};
use std::cell::{Cell, RefCell};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

/// Changes per batch sent to the store.
const BATCH: usize = 4096;
/// Batches in flight to the writer thread.
const IN_FLIGHT: usize = 4;
/// A batch is sent at least every this many users diffed, however few of
/// them changed, so the writing stage's progress keeps moving.
const PROGRESS_USERS: usize = 65_536;

/// What the stage hands back.
pub struct Committed {
    /// The report, as committed with the results.
    pub report: RunReport,
    /// Milliseconds spent in the store's commit.
    pub commit_ms: u64,
}

/// What the stages before the commit produced.
pub struct Evaluated<'a> {
    /// The plan.
    pub plan: &'a Plan,
    /// The loaded users.
    pub universe: &'a Universe,
    /// Per tag, the rows evaluated (`None`: all).
    pub scopes: &'a [Option<Bitset>],
    /// Per tag, the rows that matched.
    pub matched: &'a [Bitset],
}

/// Writes a run's changes and its report in one transaction. `report`
/// builds the report from the diff's counts (it is committed with them).
pub fn commit(
    store: &dyn Store,
    task_id: &str,
    run: &Evaluated<'_>,
    control: &TaskControl,
    report: impl FnOnce(&DiffCounts) -> RunReport,
) -> Result<Committed, RunError> {
    let Evaluated {
        plan,
        universe,
        scopes,
        matched,
    } = *run;
    let scoped = scoped_users(plan, universe, scopes);
    // Comparing: the current tags of the users in scope, counted as read.
    let read = Arc::new(AtomicUsize::new(0));
    let in_scope = scoped.as_ref().map_or(universe.rows(), Vec::len) as u64;
    control.set_progress(|p| p.enter_counted("comparing", in_scope, Arc::clone(&read)));
    let mut tx = store.begin_run(&run_start(task_id, plan)).map_err(failed)?;
    let mut stored = UserRows::counted(read);
    tx.current(scoped.as_deref(), &mut stored).map_err(failed)?;
    control.set_progress(|p| p.enter("writing", universe.rows() as u64));
    let mut finder = RowFinder::new(&universe.ids, &universe.index);
    let current = Current::place(universe.rows(), &stored, |user| finder.find(user));
    let tags: Vec<DiffTag<'_>> = plan
        .tags
        .iter()
        .zip(scopes)
        .zip(matched)
        .map(|((t, scope), matched)| DiffTag {
            tag_id: t.id(),
            matched,
            scope: scope.as_ref(),
        })
        .collect();
    let (tx, counts) = write_changes(tx, universe, &tags, &current, control)?;
    control.checkpoint().map_err(stopped)?;
    let report = report(&counts);
    let outcome = serde_json::to_value(&report)
        .map_err(|e| RunError::Failed(format!("cannot encode the run report: {e}")))?;
    // The whole commit call: PostgreSQL merges its staged rows here.
    control.set_progress(|p| p.enter("committing", 1));
    let started = std::time::Instant::now();
    tx.commit(&states(plan, universe), &outcome)
        .map_err(failed)?;
    let commit_ms = started.elapsed().as_millis() as u64;
    control.set_progress(|p| p.finish());
    Ok(Committed { report, commit_ms })
}

fn failed(e: StoreError) -> RunError {
    RunError::Failed(format!("writing results failed, nothing was written: {e}"))
}

/// What the transaction records about the run's tags.
fn run_start(task_id: &str, plan: &Plan) -> RunStart {
    RunStart {
        task_id: task_id.to_string(),
        now: now_timestamp(),
        tags: plan
            .tags
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
    stop: Cell<Option<crate::scheduler::Stop>>,
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
fn scoped_users<'u>(
    plan: &Plan,
    universe: &'u Universe,
    scopes: &[Option<Bitset>],
) -> Option<Vec<&'u str>> {
    if plan.user_ids.is_none() && scopes.iter().any(Option::is_none) {
        return None;
    }
    let mut rows = Bitset::empty(universe.rows());
    for scope in scopes {
        match scope {
            Some(s) => rows.union_with(s),
            None => rows = Bitset::full(universe.rows()),
        }
    }
    Some(rows.ones().map(|i| universe.ids.get(i)).collect())
}

/// What the next incremental run starts from. A `user_ids` run evaluates
/// only some users: it must not move the watermarks.
fn states(plan: &Plan, universe: &Universe) -> Vec<TagState> {
    if plan.user_ids.is_some() {
        return Vec::new();
    }
    plan.tags
        .iter()
        .map(|t| TagState {
            tag_id: t.id(),
            rule_version: t.rule_version,
            watermarks: tag_tables(&t.tag.info)
                .into_iter()
                .filter_map(|table| {
                    let mark = universe.newest.get(table).or(t.watermarks.get(table))?;
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
    use crate::engine::report::{report, Timings};
    use crate::store::sqlite::SqliteStore;
    use crate::store::ResultStore;

    /// Commits task `task` with `matched` as tag 1's matches.
    fn run(
        store: &SqliteStore,
        task: &str,
        plan: &Plan,
        universe: &Universe,
        matched: Bitset,
        control: &TaskControl,
    ) -> Result<Committed, RunError> {
        let (scopes, matched) = ([None], [matched]);
        let run = Evaluated {
            plan,
            universe,
            scopes: &scopes,
            matched: &matched,
        };
        commit(store, task, &run, control, |counts| {
            report(&run, counts, &Timings::start())
        })
    }

    #[test]
    fn a_commit_writes_the_diff_and_the_report_together_and_the_next_one_revokes() {
        let (dir, plan, universe) = loaded(&[cash_tag()], None);
        let store = SqliteStore::open(&dir.path().join("tags.db")).unwrap();
        let control = TaskControl::default();
        let rows = |only: usize| Bitset::from_fn(3, |i| i == only);
        // Rows: u2, u1, u3. First u1 holds the tag, then u3 instead.
        let first = run(&store, "t1", &plan, &universe, rows(1), &control).unwrap();
        assert_eq!(
            (first.report.rows_upserted, first.report.rows_deleted),
            (1, 0)
        );
        assert_eq!(store.user_tags("u1").unwrap().unwrap().tag_ids, vec![1]);
        let second = run(&store, "t2", &plan, &universe, rows(2), &control).unwrap();
        assert_eq!(
            (second.report.rows_upserted, second.report.rows_deleted),
            (1, 1)
        );
        assert!(store.user_tags("u1").unwrap().is_none());
        let u3 = store.user_tags("u3").unwrap().unwrap();
        assert!(
            u3.details.contains("\"tag_name\":\"tag 1\""),
            "{}",
            u3.details
        );
        let outcome = store.run_outcome("t2").unwrap().expect("committed outcome");
        assert_eq!(outcome["rows_deleted"], 1);
        // Unchanged matches write nothing.
        let third = run(&store, "t3", &plan, &universe, rows(2), &control).unwrap();
        assert_eq!(
            (third.report.rows_upserted, third.report.rows_deleted),
            (0, 0)
        );
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
