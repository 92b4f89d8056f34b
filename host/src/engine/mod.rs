//! One task end to end, as a list of stages with typed hand-offs:
//!
//! plan → load → scope → evaluate → commit (diff inside the store's
//! transaction) → report.
//!
//! - [`plan`]: the tags' rules and last states, and the columns to read.
//! - [`inputs`]: each tag's tables and columns exist and coerce (footers
//!   only); a tag that fails here, or in [`evaluate`], fails alone.
//! - [`delta`]: for an incremental run, the changed users, from parquet
//!   statistics and the changed row groups only.
//! - [`load`]: read, de-duplicate and left-join the tables into a [`load::Universe`].
//! - [`index`]: finding users by id (the hash index the joins use).
//! - [`scope`]: which rows each tag evaluates (full, `user_ids`, incremental).
//! - [`evaluate`]: plugin batches into a [`bitset::Bitset`] of matches per tag.
//! - [`diff`]: a pure function from matches and current tags to changes.
//! - [`commit`]: the store transaction ([`crate::store::RunTx`]).
//! - [`report`]: the typed result a task shows.
//!
//! Data flows one way: the engine reads from and writes to the store; the
//! store never calls back.

pub mod bitset;
pub mod commit;
pub mod delta;
pub mod diff;
pub mod evaluate;
pub mod index;
pub mod inputs;
pub mod load;
pub mod plan;
pub mod report;
pub mod sample;
pub mod scope;
#[cfg(test)]
mod testkit;

use crate::data::source::DataSource;
use crate::model::{RunReport, SyncSummary, TaskRecord};
use crate::registry::TagRegistry;
use crate::store::Store;
use crate::tasks::control::{RunError, Stop, TaskControl, TaskRunner};
use polars::prelude::PolarsError;
use report::Timings;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

/// The table that defines the user universe.
pub const UNIVERSE_TABLE: &str = "user_basic_info";
const USER_ID: &str = "user_id";
const UPDATED_TIME: &str = "updated_time";

/// Computes tasks for the scheduler and the one-shot runner.
pub struct Engine {
    store: Arc<dyn Store>,
    registry: Arc<RwLock<TagRegistry>>,
    data: DataSource,
    batch_rows: usize,
}

fn failed(e: impl std::fmt::Display) -> RunError {
    RunError::Failed(e.to_string())
}

fn stopped(stop: Stop) -> RunError {
    RunError::Stopped(stop)
}

fn polars_failed(context: &str, e: PolarsError) -> RunError {
    RunError::Failed(format!("{context}: {e}"))
}

impl Engine {
    /// An engine over the tables of `data`, using the tags of `registry` and `store`.
    pub fn new(
        store: Arc<dyn Store>,
        registry: Arc<RwLock<TagRegistry>>,
        data: DataSource,
        batch_rows: usize,
    ) -> Engine {
        Engine {
            store,
            registry,
            data,
            batch_rows: batch_rows.max(64),
        }
    }

    /// Runs `task`: every stage in order; the results and the report are
    /// committed together, or nothing is.
    pub fn run(&self, task: &TaskRecord, control: &TaskControl) -> Result<RunReport, RunError> {
        let mut timings = Timings::start();
        let registry = self
            .registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut plan = plan::plan(task, &registry, self.store.as_ref())?;
        control.set_progress(|p| {
            *p = crate::progress::Progress::begin();
            p.enter("reading", 0);
        });
        let (data_dir, fetched) = self.fetch(&plan, &mut timings)?;
        inputs::check(&mut plan, &data_dir)?;
        let source = load::Source {
            data_dir: &data_dir,
            batch_rows: self.batch_rows,
        };
        let universe = load::load(&plan, &source, control)?;
        timings.lap("read_ms");
        let mut scopes = scope::scopes(&plan, &universe)?;
        let outcomes =
            evaluate::evaluate(&plan.tags, &universe, plan.as_of, self.batch_rows, control)?;
        let matched = keep_succeeded(&mut plan, &mut scopes, outcomes)?;
        timings.lap("evaluate_ms");
        control.checkpoint().map_err(stopped)?;
        let run = commit::Evaluated {
            plan: &plan,
            universe: &universe,
            scopes: &scopes,
            matched: &matched,
        };
        let committed = commit::commit(
            self.store.as_ref(),
            &task.task_id,
            &run,
            control,
            |counts| {
                let mut timings = Timings::clone_of(&timings);
                timings.lap("write_ms");
                let mut report = report::report(&run, counts, &timings);
                report.source_objects = fetched;
                report
            },
        )?;
        let report = committed.report;
        crate::metrics::metrics().stage_finished("commit", committed.commit_ms);
        tracing::info!(
            users = report.total_users,
            rows_upserted = report.rows_upserted,
            rows_deleted = report.rows_deleted,
            duration_ms = report.duration_ms + committed.commit_ms,
            commit_ms = committed.commit_ms,
            "results committed"
        );
        Ok(report)
    }
}

/// The matches of the tags that evaluated; the others move to
/// `plan.failed` with their scopes dropped (their results stay as they were).
fn keep_succeeded(
    plan: &mut plan::Plan,
    scopes: &mut Vec<Option<bitset::Bitset>>,
    outcomes: Vec<Result<bitset::Bitset, String>>,
) -> Result<Vec<bitset::Bitset>, RunError> {
    let mut matched = Vec::with_capacity(outcomes.len());
    let mut failures = Vec::new();
    let mut kept_scopes = Vec::with_capacity(outcomes.len());
    for ((t, scope), outcome) in plan.tags.iter().zip(scopes.drain(..)).zip(outcomes) {
        match outcome {
            Ok(bits) => {
                matched.push(bits);
                kept_scopes.push(scope);
            }
            Err(error) => failures.push((t.id(), error)),
        }
    }
    *scopes = kept_scopes;
    plan.fail_tags(failures)?;
    plan.any_left()?;
    Ok(matched)
}

impl Engine {
    /// Makes the plan's tables local (an S3 mirror fetches what changed,
    /// timed as `fetch_ms`); the directory to read them from.
    fn fetch(
        &self,
        plan: &plan::Plan,
        timings: &mut Timings,
    ) -> Result<(PathBuf, Option<SyncSummary>), RunError> {
        let tables: Vec<&str> = plan.tables.iter().map(|t| t.table.as_str()).collect();
        let (dir, fetched) = self.data.prepare(&tables).map_err(failed)?;
        if let Some(summary) = fetched {
            tracing::info!(source = %self.data, fetched = summary.fetched, bytes = summary.bytes,
                cached = summary.cached, removed = summary.removed, "source tables mirrored");
            timings.lap("fetch_ms");
        }
        Ok((dir, fetched))
    }
}

impl TaskRunner for Engine {
    fn run(&self, task: &TaskRecord, control: &TaskControl) -> Result<RunReport, RunError> {
        Engine::run(self, task, control)
    }
}
