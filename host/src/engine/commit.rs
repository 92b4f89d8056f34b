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
/// Batches in flight to the writer thread: enough for the diff of the next
/// part to start while the writer finishes this one (a batch is some
/// 4096 × 60 bytes).
const IN_FLIGHT: usize = 16;
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
    // The write order is sorted while the store reads.
    let (order, read) = std::thread::scope(|scope| {
        let sorter = std::thread::Builder::new()
            .name("write-order".into())
            .spawn_scoped(scope, || sorted_rows(&universe.ids));
        let read = tx.current(scoped.as_deref(), &mut stored);
        let order = sorter
            .map_err(|e| RunError::Failed(format!("cannot start a thread: {e}")))
            .and_then(|t| {
                t.join().map_err(|payload| {
                    RunError::Failed(format!(
                        "sorting the users panicked: {}",
                        panic_message(payload.as_ref())
                    ))
                })
            });
        (order, read)
    });
    read.map_err(failed)?;
    let (order, current) = (order?, placement(universe, &stored));
    let (tx, counts) = with_writer(tx, 1, control, |w| w.write(run, &current, &order))?;
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
/// `stored` tags and applies the changes to `tx`, uncommitted: a part on a
/// writer of its own ([`with_writer`] keeps one for many parts).
pub fn write_part<'s>(
    tx: Box<dyn RunTx + 's>,
    run: &Evaluated<'_>,
    stored: &UserRows,
    control: &TaskControl,
) -> Result<(Box<dyn RunTx + 's>, DiffCounts), RunError> {
    let (order, current) = placed(run.universe, stored);
    with_writer(tx, 1, control, |writer| writer.write(run, &current, &order))
}

/// The universe's rows in write order and `stored` placed on them: what
/// [`Writer::write`] takes, computed ahead (on another thread, say).
pub fn placed<'r>(universe: &Universe, stored: &'r UserRows) -> (Vec<u32>, Current<'r>) {
    (sorted_rows(&universe.ids), placement(universe, stored))
}

/// `stored` placed on the universe's rows.
pub fn placement<'r>(universe: &Universe, stored: &'r UserRows) -> Current<'r> {
    let mut finder = RowFinder::new(&universe.ids, &universe.index);
    Current::place(universe.rows(), stored, |user| finder.find(user))
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

/// What the results writer is sent.
enum ToWriter {
    /// The diff moved on to part `part` (from 0), of `rows` users.
    Part { part: usize, rows: usize },
    /// Changes, and how many of the part's users were diffed before them.
    Batch(UserRows, usize),
}

/// The diff's side of a run's results writer: one thread that applies
/// batches of changes to the transaction, for as many parts as the run
/// has, so the diff of the next part starts while the last batches of
/// this one are written.
pub struct Writer<'a> {
    send: std::sync::mpsc::SyncSender<ToWriter>,
    control: &'a TaskControl,
    /// The next part's number.
    part: Cell<usize>,
    /// Set at a checkpoint that says stop.
    stop: Cell<Option<crate::tasks::control::Stop>>,
    /// The writer thread is gone (it failed: its error is reported).
    gone: Cell<bool>,
}

/// Runs `body` with a results writer applying to `tx` on a thread of its
/// own; `parts` is how many parts the progress counts (1: no partitions).
/// Hands the transaction back uncommitted with what `body` returned.
pub fn with_writer<'s, T>(
    tx: Box<dyn RunTx + 's>,
    parts: usize,
    control: &TaskControl,
    body: impl FnOnce(&Writer<'_>) -> Result<T, RunError>,
) -> Result<(Box<dyn RunTx + 's>, T), RunError> {
    std::thread::scope(|scope| {
        let (send, receive) = std::sync::mpsc::sync_channel::<ToWriter>(IN_FLIGHT);
        let thread = std::thread::Builder::new()
            .name("results-writer".into())
            .spawn_scoped(scope, move || apply_all(tx, receive, parts, control))
            .map_err(|e| RunError::Failed(format!("cannot start the results writer: {e}")))?;
        let writer = Writer {
            send,
            control,
            part: Cell::new(0),
            stop: Cell::new(None),
            gone: Cell::new(false),
        };
        let outcome = body(&writer);
        // Closes the channel: the thread applies what is queued and ends.
        drop(writer);
        let tx = thread.join().map_err(|payload| {
            RunError::Failed(format!(
                "the results writer panicked: {}",
                panic_message(payload.as_ref())
            ))
        })?;
        // The writer's own error first: the diff's is its consequence.
        let tx = tx.map_err(failed)?;
        let value = outcome?;
        // Everything is applied: a stop asked for meanwhile (while the
        // store held the writer, say) is taken here, before any commit.
        control.checkpoint().map_err(stopped)?;
        Ok((tx, value))
    })
}

/// The writer thread: applies each batch, moving the writing stage's
/// progress (and the partition shown) as it goes.
fn apply_all<'s>(
    mut tx: Box<dyn RunTx + 's>,
    receive: std::sync::mpsc::Receiver<ToWriter>,
    parts: usize,
    control: &TaskControl,
) -> Result<Box<dyn RunTx + 's>, StoreError> {
    for message in receive {
        match message {
            ToWriter::Part { part, rows } => control.set_progress(|p| {
                // At once, so no reader sees the new partition with the
                // previous one's finished write.
                if parts > 1 {
                    p.enter_partition(part + 1, parts);
                }
                p.enter("writing", rows as u64);
            }),
            ToWriter::Batch(batch, upto) => {
                tx.apply(&batch)?;
                control.set_progress(|p| p.set_done("writing", upto as u64));
            }
        }
    }
    Ok(tx)
}

impl Writer<'_> {
    /// Diffs the users of `run` (a run's or a partition's), in `order`,
    /// against their `current` tags, and sends the changes to the writer.
    pub fn write(
        &self,
        run: &Evaluated<'_>,
        current: &Current<'_>,
        order: &[u32],
    ) -> Result<DiffCounts, RunError> {
        let universe = run.universe;
        let part = self.part.replace(self.part.get() + 1);
        self.send(ToWriter::Part {
            part,
            rows: universe.rows(),
        });
        let tags: Vec<DiffTag<'_>> = run
            .tags
            .iter()
            .map(|t| DiffTag {
                tag_id: t.run.id(),
                matched: &t.matched,
                scope: t.scope.as_ref(),
            })
            .collect();
        let outbox = Outbox {
            writer: self,
            batch: RefCell::default(),
            diffed: Cell::new(0),
            sent: Cell::new(0),
        };
        let counts = diff(
            order
                .iter()
                .take_while(|_| outbox.next_user())
                .map(|&r| r as usize),
            &tags,
            current,
            |op, row, held| {
                outbox.push(op, universe.ids.get(row), held);
                Ok::<(), RunError>(())
            },
        );
        outbox.flush();
        if let Some(stop) = self.stop.get() {
            return Err(stopped(stop));
        }
        if self.gone.get() {
            return Err(RunError::Failed("the results writer stopped".into()));
        }
        self.control.checkpoint().map_err(stopped)?;
        counts
    }

    fn send(&self, message: ToWriter) {
        // A closed channel means the writer failed: its error is reported
        // when it is joined.
        if self.send.send(message).is_err() {
            self.gone.set(true);
        }
    }

    fn stopping(&self) -> bool {
        self.stop.get().is_some() || self.gone.get()
    }
}

/// One part's changes on their way to the [`Writer`]: sent in batches of
/// [`BATCH`], and at least every [`PROGRESS_USERS`] users diffed, each
/// batch with the number of users diffed before it.
struct Outbox<'w> {
    writer: &'w Writer<'w>,
    batch: RefCell<UserRows>,
    /// Users diffed so far.
    diffed: Cell<usize>,
    /// `diffed` when the last batch was sent.
    sent: Cell<usize>,
}

impl Outbox<'_> {
    /// Called as the diff takes the next user; false once it should stop.
    fn next_user(&self) -> bool {
        if self.diffed.get() - self.sent.get() >= PROGRESS_USERS {
            self.flush();
        }
        self.diffed.set(self.diffed.get() + 1);
        !self.writer.stopping()
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
        if let Err(stop) = self.writer.control.checkpoint() {
            self.writer.stop.set(Some(stop));
        }
        self.sent.set(self.diffed.get());
        let batch = std::mem::take(&mut *self.batch.borrow_mut());
        self.writer.send(ToWriter::Batch(batch, self.diffed.get()));
    }
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
        let run = all_match(&plan, &universe);
        let written = write(&store, "t1", &run, &control).unwrap();
        assert_eq!(written.counts.upserted, 3);
        drop(written);
        assert!(store.user_tags("u1").unwrap().is_none());
        assert!(store.run_outcome("t1").unwrap().is_none());
    }

    /// A transaction that records what it is asked to apply, fails the
    /// `fail_at`-th batch, and, given `cancels`, waits for a word on its
    /// channel and then cancels the task before it applies.
    struct Recording<'c> {
        applied: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
        batches: usize,
        fail_at: Option<usize>,
        cancels: Option<(&'c TaskControl, std::sync::mpsc::Receiver<()>)>,
    }

    impl RunTx for Recording<'_> {
        fn current(
            &mut self,
            _: Option<&[&str]>,
            _: &mut dyn crate::store::RowSink,
        ) -> Result<(), StoreError> {
            Ok(())
        }
        fn apply(&mut self, changes: &UserRows) -> Result<(), StoreError> {
            self.batches += 1;
            if let Some((control, gate)) = &self.cancels {
                let _ = gate.recv();
                control.cancel();
            }
            if self.fail_at == Some(self.batches) {
                return Err(StoreError::Database("disk full".into()));
            }
            let mut applied = self.applied.lock().unwrap();
            applied.extend(changes.iter().map(|(_, user, _)| user.to_string()));
            Ok(())
        }
        fn commit(self: Box<Self>, _: &[TagState], _: &RunReport) -> Result<(), StoreError> {
            Ok(())
        }
    }

    fn recording(
        fail_at: Option<usize>,
    ) -> (
        Recording<'static>,
        std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    ) {
        let applied = std::sync::Arc::default();
        let tx = Recording {
            applied: std::sync::Arc::clone(&applied),
            batches: 0,
            fail_at,
            cancels: None,
        };
        (tx, applied)
    }

    /// The plan's first tag matching every one of the three users.
    fn all_match<'a>(plan: &'a Plan, universe: &'a Universe) -> Evaluated<'a> {
        Evaluated {
            plan,
            universe,
            tags: vec![TagResult {
                run: &plan.tags[0],
                scope: None,
                matched: Bitset::full(3),
            }],
        }
    }

    #[test]
    fn one_writer_applies_every_part_in_order_and_shows_the_partition() {
        let (_dir, plan, universe) = loaded(&[cash_tag()], None);
        let run = all_match(&plan, &universe);
        let control = TaskControl::default();
        let (tx, applied) = recording(None);
        let stored = UserRows::default();
        let (order, current) = placed(&universe, &stored);
        let (_tx, counts) = with_writer(Box::new(tx), 3, &control, |writer| {
            let mut counts = DiffCounts::default();
            for _ in 0..3 {
                counts.add(&writer.write(&run, &current, &order)?);
            }
            Ok(counts)
        })
        .unwrap();
        assert_eq!(counts.upserted, 9);
        // Each part's users ascending (rows are u2, u1, u3).
        let part = ["u1", "u2", "u3"];
        assert_eq!(*applied.lock().unwrap(), [part, part, part].concat());
        let partition = control.progress().partition.expect("partitions shown");
        assert_eq!((partition.index, partition.count), (3, 3));
    }

    #[test]
    fn a_cancel_that_comes_while_the_last_batch_is_written_is_taken_before_the_commit() {
        let (_dir, plan, universe) = loaded(&[cash_tag()], None);
        let run = all_match(&plan, &universe);
        let control = TaskControl::default();
        let (mut tx, applied) = recording(None);
        let (go, gate) = std::sync::mpsc::channel();
        tx.cancels = Some((&control, gate));
        let stored = UserRows::default();
        let (order, current) = placed(&universe, &stored);
        let outcome = with_writer(Box::new(tx), 1, &control, |writer| {
            let counts = writer.write(&run, &current, &order)?;
            // The diff is done; the cancel comes while the store applies.
            go.send(()).unwrap();
            Ok(counts)
        });
        assert_eq!(applied.lock().unwrap().len(), 3);
        assert!(matches!(outcome, Err(RunError::Stopped(_))));
    }

    #[test]
    fn a_failing_writer_ends_the_parts_with_its_own_error() {
        let (_dir, plan, universe) = loaded(&[cash_tag()], None);
        let run = all_match(&plan, &universe);
        let control = TaskControl::default();
        let (tx, applied) = recording(Some(2));
        let stored = UserRows::default();
        let (order, current) = placed(&universe, &stored);
        let mut parts = 0;
        let outcome = with_writer(Box::new(tx), 50, &control, |writer| {
            for _ in 0..50 {
                parts += 1;
                writer.write(&run, &current, &order)?;
            }
            Ok(())
        });
        let Err(RunError::Failed(message)) = outcome else {
            panic!("the writer's failure was not reported");
        };
        assert!(message.contains("disk full"), "{message}");
        assert_eq!(applied.lock().unwrap().len(), 3);
        // The diff stopped soon after (the channel holds a few batches).
        assert!(parts < 50, "{parts} parts diffed after the writer failed");
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
