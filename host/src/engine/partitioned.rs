//! A run in partitions (ranges of user ids): beyond the memory limit, with
//! the partitions spilled to disk; within it, for a large run, kept in
//! memory, so that writing one partition overlaps computing the next.
//!
//! 1. one pass reads each planned table (projection, pruning and the
//!    run's user filter as always) and puts every row into its user's
//!    partition ([`load::spill`]);
//! 2. the run's transaction opens and the current tags of the users it
//!    loads are read once, streamed into the partitions' files;
//! 3. each partition in turn goes through the usual stages: de-duplicate
//!    and join ([`load::assemble`]), scope and evaluate on one thread, diff
//!    and apply to the one transaction on another, so partition k+1 is read
//!    and evaluated while partition k is written;
//! 4. the transaction commits once, with the report.
//!
//! Nothing is committed before step 4, so a failed, cancelled or killed run
//! leaves the store as it was. A tag whose plugin fails in a partition
//! after earlier partitions were written fails alone: the transaction is
//! dropped and the partitions are computed again without it (the spill
//! files stay).

use super::bitset::Bitset;
use super::budget::Budget;
use super::index::sorted_rows;
use super::load::{self, Source};
use super::report::{self, Computed, Timings};
use super::spill::{self, CurrentSpill, Partitions, Spill};
use super::Universe;
use super::{commit, evaluate, scope};
use super::{Delta, DiffCounts, Evaluated, Failures, Loaded, Plan, RunError, TagFailure, TagRun};
use crate::model::report::MemoryReport;
use crate::model::{RunReport, SyncSummary};
use crate::store::{RunTx, Store, UserRows};
use crate::tasks::control::TaskControl;
use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

/// What a partitioned run works with.
pub struct Partitioned<'a> {
    /// Where results go.
    pub store: &'a dyn Store,
    /// The task.
    pub task_id: &'a str,
    /// An incremental run's changed users and skipped row groups.
    pub delta: Option<Delta>,
    /// The tables.
    pub source: &'a Source<'a>,
    /// The estimate, the limit and the partitions.
    pub budget: Budget,
    /// Where the run's spill directory is made.
    pub spill_root: &'a Path,
    /// Cancel, shutdown and progress.
    pub control: &'a TaskControl,
}

/// How one pass over the partitions ended.
enum Attempt {
    /// Committed, with this report.
    Committed(Box<RunReport>),
    /// These tags' plugins failed: nothing was committed.
    TagsFailed(Vec<TagFailure>),
}

/// Runs `plan` in partitions; the committed report.
pub fn run(
    run: Partitioned<'_>,
    mut plan: Plan,
    mut failures: Failures,
    mut timings: Timings,
    fetched: Option<SyncSummary>,
) -> Result<RunReport, RunError> {
    let dir = if run.budget.spills() {
        let dir = Spill::create(run.spill_root, run.task_id)?;
        check_space(&dir, run.budget.estimate)?;
        dir
    } else {
        Spill::in_memory()
    };
    let universe = &plan.tables[0].table;
    let parts = spill::sample_partitions(run.source.data_dir, universe, run.budget.partitions)?;
    let budget = Budget {
        partitions: parts.count(),
        ..run.budget
    };
    let run = Partitioned { budget, ..run };
    let spills = run.budget.spills();
    run.control
        .set_progress(|p| p.begin_partitions(parts.count(), spills));
    load::spill(
        &plan,
        run.delta.as_ref(),
        run.source,
        &dir,
        &parts,
        run.control,
    )?;
    timings.lap("read_ms");
    // Spilled: partition 1 is read back and evaluated next.
    run.control
        .set_progress(|p| p.enter_partition(1, parts.count()));
    loop {
        match attempt(&run, &plan, &dir, &parts, &failures, &mut timings, fetched)? {
            Attempt::Committed(report) => return Ok(*report),
            Attempt::TagsFailed(more) => {
                let left = plan.tags.len() - more.len();
                failures.add(more.clone(), left)?;
                plan = plan.without(&more)?;
            }
        }
    }
}

/// Refuses to start spilling when the spill directory's filesystem has
/// less room than the run's rows are expected to take.
fn check_space(dir: &Spill, estimate: u64) -> Result<(), RunError> {
    // The files hold the rows' columns without the index, the views and
    // the copies the estimate counts: about half of it (a run that
    // passes this check and still fills the disk fails as it writes).
    let needed = estimate / 5 * 2;
    let Some(path) = dir.path() else {
        return Ok(());
    };
    match crate::disk::available_bytes(path) {
        Ok(Some(free)) if free < needed => Err(RunError::Failed(format!(
            "the spill directory {} has {} free, and this run needs about {} there: free disk space or pass --spill-dir another directory; nothing was written",
            path.display(),
            crate::disk::human_bytes(free),
            crate::disk::human_bytes(needed)
        ))),
        _ => Ok(()),
    }
}

/// One pass over the partitions into one transaction, committed unless a
/// tag fails.
fn attempt(
    run: &Partitioned<'_>,
    plan: &Plan,
    dir: &Spill,
    parts: &Partitions,
    failures: &Failures,
    timings: &mut Timings,
    fetched: Option<SyncSummary>,
) -> Result<Attempt, RunError> {
    let tags: Vec<&TagRun> = plan.tags.iter().collect();
    let tx = commit::begin(run.store, run.task_id, &tags)?;
    let tx = spill_current(run, plan, dir, parts, tx)?;
    let (tx, counts, loaded, scoped) = match partitions(run, plan, dir, tx)? {
        Ok(done) => done,
        Err(failed) => return Ok(Attempt::TagsFailed(failed)),
    };
    timings.lap("partitions_ms");
    let memory = MemoryReport {
        estimate_bytes: run.budget.estimate,
        limit_bytes: run.budget.limit,
        partitions: run.budget.partitions,
        spill_bytes: dir.bytes(),
    };
    let states = commit::states(plan, &tags, &loaded.newest);
    let computed = Computed {
        plan,
        tags: tags.iter().copied().zip(scoped).collect(),
        loaded,
        memory,
    };
    let report = report::report(&computed, failures, &counts, timings, fetched);
    let commit_ms = commit::finish(commit::written(tx, counts, states), &report, run.control)?;
    super::log_committed(&report, commit_ms);
    Ok(Attempt::Committed(Box::new(report)))
}

/// Reads the current tags of the users the run loaded, inside `tx`,
/// streamed into the partitions' files (never all held at once).
fn spill_current<'s>(
    run: &Partitioned<'_>,
    plan: &Plan,
    dir: &Spill,
    parts: &Partitions,
    mut tx: Box<dyn RunTx + 's>,
) -> Result<Box<dyn RunTx + 's>, RunError> {
    let users: Option<Vec<&str>> =
        load::wanted_users(plan, run.delta.as_ref()).map(|set| set.into_iter().collect());
    let read = Arc::new(AtomicUsize::new(0));
    let total = users.as_ref().map_or(run.budget.users, |u| u.len() as u64);
    run.control
        .set_progress(|p| p.enter_counted("comparing", total, Arc::clone(&read)));
    let mut sink = CurrentSpill::create(dir, parts, Arc::clone(&read))?;
    tx.current(users.as_deref(), &mut sink).map_err(|e| {
        RunError::Failed(format!(
            "reading the current tags failed, nothing was written: {e}"
        ))
    })?;
    sink.finish()?;
    // Done as counted: the partitions' stages take over the progress.
    let rows = read.load(std::sync::atomic::Ordering::Relaxed) as u64;
    run.control.set_progress(|p| {
        p.set_total("comparing", rows);
        p.set_done("comparing", rows);
    });
    Ok(tx)
}

/// What the partitions wrote: the transaction, the counts, the users
/// loaded and each tag's scoping; or the tags that failed.
type Written<'s> = (Box<dyn RunTx + 's>, DiffCounts, Loaded, Vec<bool>);

/// One partition read back, de-duplicated, joined, scoped and evaluated,
/// with its users' current tags and its write order: ready to be diffed and
/// written.
struct Prepared {
    universe: Universe,
    scopes: Vec<Option<Bitset>>,
    outcomes: Vec<Result<Bitset, String>>,
    stored: UserRows,
    /// The universe's rows in write order.
    order: Vec<u32>,
}

/// Partition `part` up to its evaluation.
fn prepare(
    run: &Partitioned<'_>,
    plan: &Plan,
    dir: &Spill,
    part: usize,
) -> Result<Prepared, RunError> {
    let frames = plan
        .tables
        .iter()
        .map(|t| spill::read_table(dir, &t.table, part))
        .collect::<Result<Vec<_>, _>>()?;
    let universe = load::assemble(plan, frames, run.delta.as_ref(), run.control)?;
    let scopes = scope::scopes(plan, &universe)?;
    let batch_rows = run.source.batch_rows;
    let outcomes = evaluate::evaluate(&plan.tags, &universe, plan.as_of, batch_rows, run.control)?;
    let stored = spill::read_current(dir, part)?;
    // Sorted here, not on the writing side, which is the slower one.
    let order = sorted_rows(&universe.ids);
    Ok(Prepared {
        universe,
        scopes,
        outcomes,
        stored,
        order,
    })
}

/// Each partition through the stages, its changes applied to `tx`: while
/// one partition is written on this thread, the next is read and evaluated
/// on another (one handed over at a time, so at most two are held).
fn partitions<'s>(
    run: &Partitioned<'_>,
    plan: &Plan,
    dir: &Spill,
    tx: Box<dyn RunTx + 's>,
) -> Result<Result<Written<'s>, Vec<TagFailure>>, RunError> {
    let count = run.budget.partitions;
    std::thread::scope(|scope| {
        let (send, receive) = std::sync::mpsc::sync_channel::<Result<Prepared, RunError>>(0);
        let producer = std::thread::Builder::new()
            .name("partition-reader".into())
            .spawn_scoped(scope, move || {
                for part in 0..count {
                    let prepared = prepare(run, plan, dir, part);
                    let failed = prepared.is_err();
                    // A closed channel: the writer stopped, and says why.
                    if send.send(prepared).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| RunError::Failed(format!("cannot start a partition reader: {e}")))?;
        let written = write_all(run, plan, tx, receive);
        producer.join().map_err(|payload| {
            RunError::Failed(format!(
                "a partition reader panicked: {}",
                crate::tasks::control::panic_message(payload.as_ref())
            ))
        })?;
        written
    })
}

/// Writes each prepared partition into `tx` as it arrives, through one
/// results writer for them all.
fn write_all<'s>(
    run: &Partitioned<'_>,
    plan: &Plan,
    tx: Box<dyn RunTx + 's>,
    prepared: std::sync::mpsc::Receiver<Result<Prepared, RunError>>,
) -> Result<Result<Written<'s>, Vec<TagFailure>>, RunError> {
    let count = run.budget.partitions;
    let (tx, written) = commit::with_writer(tx, count, run.control, |writer| {
        let (mut counts, mut loaded) = (DiffCounts::default(), Loaded::default());
        let mut scoped = vec![false; plan.tags.len()];
        for next in prepared {
            let Prepared {
                universe,
                scopes,
                outcomes,
                stored,
                order,
            } = next?;
            let (evaluated, unevaluated) = Evaluated::split(plan, &universe, scopes, outcomes);
            if !unevaluated.is_empty() {
                return Ok(Err(unevaluated));
            }
            scoped = evaluated.tags.iter().map(|t| t.scope.is_some()).collect();
            let current = commit::placement(&universe, &stored);
            counts.add(&writer.write(&evaluated, &current, &order)?);
            loaded.add(plan, &universe);
        }
        Ok(Ok((counts, loaded, scoped)))
    })?;
    let (counts, mut loaded, scoped) = match written {
        Ok(done) => done,
        Err(failed) => return Ok(Err(failed)),
    };
    if let Some(delta) = &run.delta {
        loaded.newest = delta.newest.clone();
        loaded.row_groups = Some((delta.groups_read, delta.groups_total));
    }
    Ok(Ok((tx, counts, loaded, scoped)))
}
