//! One task end to end, as a list of stages with typed hand-offs:
//!
//! plan → input check → delta → load → scope → evaluate → write (diff
//! inside the store's transaction) → report → finish (commit).
//!
//! - [`plan`]: the tags' rules and last states, and the columns to read.
//! - [`inputs`]: each tag's tables and columns exist and coerce (footers
//!   only); a tag that fails here, or in [`evaluate`], fails alone.
//! - [`delta`]: for an incremental run, the changed users, from parquet
//!   statistics and the changed row groups only.
//! - [`load`]: read, de-duplicate and left-join the tables into a [`Universe`].
//! - [`index`]: finding users by id (the hash index the joins use).
//! - [`scope`]: which rows each tag evaluates (full, `user_ids`, incremental).
//! - [`evaluate`]: plugin batches into a [`bitset::Bitset`] of matches per tag.
//! - [`diff`]: a pure function from matches and current tags to changes.
//! - [`commit`]: the store transaction ([`crate::store::RunTx`]), written
//!   and then finished with the report.
//! - [`report`]: the typed result a task shows.
//!
//! The values the stages hand each other ([`Plan`], [`Failures`],
//! [`Delta`], [`Universe`], [`Evaluated`], [`DiffCounts`]) are defined
//! here, where the stages meet: a stage imports them from this module, not
//! from the stage that makes them, and returns new values instead of
//! editing the ones it was given. Only [`Engine::run`] (and
//! [`sample::check`], a shorter list) puts the stages together.
//!
//! Data flows one way: the engine reads from and writes to the store; the
//! store never calls back.

pub mod bitset;
pub mod budget;
pub mod commit;
pub mod delta;
pub mod diff;
pub mod evaluate;
pub mod index;
pub mod inputs;
pub mod load;
pub mod partitioned;
pub mod plan;
pub mod report;
pub mod sample;
pub mod scope;
pub mod spark;
pub mod spill;
#[cfg(test)]
mod testkit;

use crate::data::read::{ColumnRequest, RowGroupId};
use crate::data::source::DataSource;
use crate::model::{Mode, RunReport, SyncSummary, TagCounts, TaskRecord};
use crate::store::Store;
use crate::tasks::control::{RunError, Stop, TaskControl, TaskRunner};
use bitset::Bitset;
use index::{UniverseIndex, UserIds};
use polars::prelude::{Column, DataFrame, Int64Chunked, PolarsError};
use report::Timings;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use tag_plugin_api::Date;
use tag_plugin_loader::{PluginIdentity, RegisteredTag, TagRegistry};

/// The table that defines the user universe.
pub const UNIVERSE_TABLE: &str = "user_basic_info";
const USER_ID: &str = "user_id";
const UPDATED_TIME: &str = "updated_time";

/// A tag prepared for one run.
pub struct TagRun {
    /// The plugin's tag.
    pub tag: Arc<RegisteredTag>,
    /// Its current rule (rule-language JSON).
    pub rule: String,
    /// That rule's version.
    pub rule_version: i64,
    /// Evaluate every row (full semantics) even in an incremental run.
    pub whole_universe: bool,
    /// Per table, the newest `updated_time` its last successful run saw.
    pub watermarks: BTreeMap<String, i64>,
}

impl TagRun {
    /// `tag` with its plugin's default rule as version 1 and no history
    /// (`plugins check` on data, and tests).
    pub fn with_default_rule(tag: &Arc<RegisteredTag>, whole_universe: bool) -> TagRun {
        TagRun {
            tag: Arc::clone(tag),
            rule: tag.info.default_rule.clone(),
            rule_version: 1,
            whole_universe,
            watermarks: BTreeMap::new(),
        }
    }

    /// The tag's id.
    pub fn id(&self) -> u32 {
        self.tag.info.tag_id
    }

    /// The tables the tag depends on: its inputs' and the universe, sorted.
    pub fn tables(&self) -> Vec<&str> {
        let mut tables: Vec<&str> = self
            .tag
            .info
            .inputs
            .iter()
            .map(|i| i.table.as_str())
            .chain([UNIVERSE_TABLE])
            .collect();
        tables.sort_unstable();
        tables.dedup();
        tables
    }
}

/// The columns to read from one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePlan {
    /// The table.
    pub table: String,
    /// `user_id` first, the tags' columns, `updated_time` last.
    pub columns: Vec<ColumnRequest>,
}

/// A tag of the task that does not run, and why (the others still do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagFailure {
    /// The tag.
    pub tag_id: u32,
    /// Its description, when its plugin is loaded.
    pub tag_name: String,
    /// The rule version it was to evaluate, once known.
    pub rule_version: Option<i64>,
    /// The plugin build that provides it, when loaded.
    pub plugin: Option<PluginIdentity>,
    /// What went wrong.
    pub error: String,
}

impl TagFailure {
    /// `t` failed with `error` after it was planned.
    pub fn of(t: &TagRun, error: String) -> TagFailure {
        TagFailure {
            tag_id: t.id(),
            tag_name: t.tag.info.description.clone(),
            rule_version: Some(t.rule_version),
            plugin: Some(t.tag.plugin.clone()),
            error,
        }
    }
}

/// What a run will do: made by [`plan::plan`] and read by every later
/// stage. Nothing edits a plan; the input check returns a narrower one.
pub struct Plan {
    /// The tags that run, in the task's order.
    pub tags: Vec<TagRun>,
    /// Tables to read, the universe first.
    pub tables: Vec<TablePlan>,
    /// The rules' reference date.
    pub as_of: Date,
    /// Full or incremental.
    pub mode: Mode,
    /// The users a `user_ids` run is restricted to.
    pub user_ids: Option<Vec<String>>,
}

impl Plan {
    /// A plan for `tags`, with the columns they read.
    pub fn new(
        tags: Vec<TagRun>,
        as_of: Date,
        mode: Mode,
        user_ids: Option<Vec<String>>,
    ) -> Result<Plan, RunError> {
        Ok(Plan {
            tables: plan::columns(tags.iter().map(|t| &t.tag.info))?,
            tags,
            as_of,
            mode,
            user_ids,
        })
    }

    /// An incremental run over the whole universe (not restricted to `user_ids`).
    pub fn incremental(&self) -> bool {
        self.mode == Mode::Incremental && self.user_ids.is_none()
    }

    /// The plan for the tags not in `failed`, with the columns planned again
    /// (so what only the failed tags read is not read).
    pub fn without(self, failed: &[TagFailure]) -> Result<Plan, RunError> {
        if failed.is_empty() {
            return Ok(self);
        }
        let tags = self
            .tags
            .into_iter()
            .filter(|t| failed.iter().all(|f| f.tag_id != t.id()))
            .collect();
        Plan::new(tags, self.as_of, self.mode, self.user_ids)
    }
}

/// The task's tags that do not run, and why (they keep their results and
/// state): owned by the run, which adds what each stage returns.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Failures(Vec<TagFailure>);

impl Failures {
    /// Adds `more`; fails the run, naming every failure, when `left` (the
    /// tags still running) is zero.
    pub fn add(&mut self, more: Vec<TagFailure>, left: usize) -> Result<(), RunError> {
        self.0.extend(more);
        self.0.sort_by_key(|f| f.tag_id);
        if left == 0 {
            let each: Vec<String> = self
                .0
                .iter()
                .map(|f| format!("tag {}: {}", f.tag_id, f.error))
                .collect();
            return Err(RunError::Failed(each.join("; ")));
        }
        Ok(())
    }

    /// The failures, by tag id.
    pub fn tags(&self) -> &[TagFailure] {
        &self.0
    }
}

/// The users an incremental run loads, and what it may skip: made by
/// [`delta::find`], read by [`load::load`].
#[derive(Debug, Default)]
pub struct Delta {
    /// Users with a changed row in some table (or no universe time).
    pub users: HashSet<String>,
    /// Per table, row groups that need not be read.
    pub skip: BTreeMap<String, HashSet<RowGroupId>>,
    /// Per table, the newest `updated_time` in the whole table.
    pub newest: BTreeMap<String, i64>,
    /// Row groups read to find the changes, and row groups in all.
    pub groups_read: usize,
    /// Row groups of the planned tables.
    pub groups_total: usize,
}

/// The users of a run and their source rows, aligned: row `i` of every
/// table's frame belongs to user `ids.get(i)`. Made by [`load::load`].
pub struct Universe {
    /// The universe's user ids, one per row, unique.
    pub ids: UserIds,
    /// Finds a user's row.
    pub index: UniverseIndex,
    /// Per table, its read columns (side tables: without `user_id`).
    pub tables: Vec<(String, DataFrame)>,
    /// Per table, rows left out because a newer row of the same user exists.
    pub duplicates: BTreeMap<String, usize>,
    /// Per table, the newest `updated_time` in the table.
    pub newest: BTreeMap<String, i64>,
    /// For an incremental run: row groups read to find changes, of all.
    pub row_groups: Option<(usize, usize)>,
}

impl Universe {
    /// Users in the universe.
    pub fn rows(&self) -> usize {
        self.ids.len()
    }

    /// A column of a table, aligned with the universe.
    pub fn column(&self, table: &str, column: &str) -> Result<&Column, RunError> {
        let (_, frame) = self
            .tables
            .iter()
            .find(|(t, _)| t == table)
            .ok_or_else(|| RunError::Failed(format!("table {table} was not read")))?;
        frame
            .column(column)
            .map_err(|e| polars_failed(&format!("table {table}"), e))
    }

    /// A table's `updated_time`, aligned with the universe, if it was kept.
    pub fn updated_times(&self, table: &str) -> Option<&Int64Chunked> {
        let column = self.column(table, UPDATED_TIME).ok()?;
        column
            .as_materialized_series()
            .datetime()
            .ok()
            .map(|d| d.physical())
    }
}

/// One tag that evaluated.
pub struct TagResult<'a> {
    /// The tag, as planned.
    pub run: &'a TagRun,
    /// The rows it evaluated (`None`: all).
    pub scope: Option<Bitset>,
    /// The rows that matched.
    pub matched: Bitset,
}

/// What the stages before the commit produced: the tags that evaluated, in
/// the plan's order, over the loaded users.
pub struct Evaluated<'a> {
    /// The plan (its `tags` include those that failed to evaluate).
    pub plan: &'a Plan,
    /// The loaded users.
    pub universe: &'a Universe,
    /// The tags that evaluated.
    pub tags: Vec<TagResult<'a>>,
}

impl<'a> Evaluated<'a> {
    /// Pairs each planned tag with its scope and its evaluation (both in
    /// the plan's order): the tags that evaluated, and the failures of the
    /// others (their scopes are dropped; their results stay as they were).
    pub fn split(
        plan: &'a Plan,
        universe: &'a Universe,
        scopes: Vec<Option<Bitset>>,
        outcomes: Vec<Result<Bitset, String>>,
    ) -> (Evaluated<'a>, Vec<TagFailure>) {
        let mut tags = Vec::with_capacity(outcomes.len());
        let mut failed = Vec::new();
        for ((run, scope), outcome) in plan.tags.iter().zip(scopes).zip(outcomes) {
            match outcome {
                Ok(matched) => tags.push(TagResult {
                    run,
                    scope,
                    matched,
                }),
                Err(error) => failed.push(TagFailure::of(run, error)),
            }
        }
        let evaluated = Evaluated {
            plan,
            universe,
            tags,
        };
        (evaluated, failed)
    }
}

/// What the diff found: made while writing, read by the report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DiffCounts {
    /// Users evaluated for at least one tag.
    pub evaluated: usize,
    /// Per tag, in the run's order.
    pub tags: Vec<TagCounts>,
    /// Rows inserted or updated.
    pub upserted: usize,
    /// Rows deleted.
    pub deleted: usize,
}

impl DiffCounts {
    /// Adds the counts of another part of the same run (a partition).
    pub fn add(&mut self, other: &DiffCounts) {
        if self.tags.is_empty() {
            self.tags = vec![TagCounts::default(); other.tags.len()];
        }
        for (mine, theirs) in self.tags.iter_mut().zip(&other.tags) {
            mine.evaluated_users += theirs.evaluated_users;
            mine.matched += theirs.matched;
            mine.added += theirs.added;
            mine.removed += theirs.removed;
        }
        self.evaluated += other.evaluated;
        self.upserted += other.upserted;
        self.deleted += other.deleted;
    }
}

/// What the report and the tag states need of the users a run loaded: one
/// universe's figures, or those of every partition added up.
#[derive(Debug, Default, Clone)]
pub struct Loaded {
    /// Users in the universe.
    pub users: usize,
    /// Per table, rows left out because a newer row of the same user exists.
    pub duplicates: BTreeMap<String, usize>,
    /// Per table, the newest `updated_time` in the table.
    pub newest: BTreeMap<String, i64>,
    /// For an incremental run: row groups read to find changes, of all.
    pub row_groups: Option<(usize, usize)>,
    /// For a `user_ids` run: the requested users found in the universe.
    pub found: Option<HashSet<String>>,
}

impl Loaded {
    /// Adds `universe`, a part of the run's users (all, or a partition).
    pub fn add(&mut self, plan: &Plan, universe: &Universe) {
        self.users += universe.rows();
        for (table, n) in &universe.duplicates {
            *self.duplicates.entry(table.clone()).or_default() += n;
        }
        for (table, time) in &universe.newest {
            let newest = self.newest.entry(table.clone()).or_insert(*time);
            *newest = (*newest).max(*time);
        }
        self.row_groups = universe.row_groups.or(self.row_groups);
        if plan.user_ids.is_some() {
            let found = self.found.get_or_insert_with(HashSet::new);
            found.extend((0..universe.rows()).map(|i| universe.ids.get(i).to_string()));
        }
    }

    /// The figures of one universe.
    pub fn of(plan: &Plan, universe: &Universe) -> Loaded {
        let mut loaded = Loaded::default();
        loaded.add(plan, universe);
        loaded
    }
}

/// Computes tasks for the scheduler and the one-shot runner.
pub struct Engine {
    store: Arc<dyn Store>,
    registry: Arc<RwLock<TagRegistry>>,
    data: DataSource,
    batch_rows: usize,
    /// The memory a run keeps within (bytes).
    memory_limit: u64,
    /// Where partitioned runs spill.
    spill_root: PathBuf,
    /// Users per in-memory partition of a run within the limit (0: none).
    partition_users: u64,
    /// Spark, when runs are evaluated there (`--executor spark`).
    spark: Option<Arc<spark::SparkExecutor>>,
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
            memory_limit: crate::memory::default_limit().bytes(),
            spill_root: spill::default_root(),
            partition_users: budget::PARTITION_USERS,
            spark: None,
        }
    }

    /// The engine with runs evaluated in Spark by `executor`.
    pub fn with_spark(mut self, executor: spark::SparkExecutor) -> Engine {
        self.spark = Some(Arc::new(executor));
        self
    }

    /// The engine with runs kept within `limit` bytes, partitioned runs
    /// spilling under `spill_root`.
    pub fn with_memory(mut self, limit: u64, spill_root: PathBuf) -> Engine {
        self.memory_limit = limit.max(1);
        self.spill_root = spill_root;
        self
    }

    /// The engine with runs within the limit split into in-memory
    /// partitions of about `users` users (0: not split).
    pub fn with_partition_users(mut self, users: u64) -> Engine {
        self.partition_users = users;
        self
    }

    /// Runs `task`: every stage in order; the results and the report are
    /// committed together, or nothing is.
    pub fn run(&self, task: &TaskRecord, control: &TaskControl) -> Result<RunReport, RunError> {
        let mut timings = Timings::start();
        let store = self.store.as_ref();
        let (plan, mut failures) = plan::plan(task, &self.registry(), store)?;
        control.set_progress(|p| {
            *p = crate::progress::Progress::begin();
            p.enter("reading", 0);
        });
        if let Some(executor) = &self.spark {
            return self.run_in_spark(task, executor, plan, failures, timings, control);
        }
        let (data_dir, fetched) = self.fetch(&plan, &mut timings)?;
        let (plan, unreadable) = inputs::check(plan, &data_dir)?;
        failures.add(unreadable, plan.tags.len())?;
        let delta = delta::find(&plan, &data_dir, control)?;
        let budget = budget::budget(&plan, delta.as_ref(), &data_dir, self.memory_limit)?
            .pipelined(self.partition_users);
        let source = load::Source {
            data_dir: &data_dir,
            batch_rows: self.batch_rows,
        };
        if budget.partitions > 1 {
            tracing::info!(
                estimate = budget.estimate,
                limit = budget.limit,
                partitions = budget.partitions,
                spilled = budget.spills(),
                "{}",
                if budget.spills() {
                    "the run exceeds the memory limit: partitioned, spilled to disk"
                } else {
                    "the run is split into partitions kept in memory, so writing overlaps computing"
                }
            );
            let run = partitioned::Partitioned {
                store,
                task_id: &task.task_id,
                delta,
                source: &source,
                budget,
                spill_root: &self.spill_root,
                control,
            };
            return partitioned::run(run, plan, failures, timings, fetched);
        }
        let universe = load::load(&plan, delta, &source, control)?;
        timings.lap("read_ms");
        let scopes = scope::scopes(&plan, &universe)?;
        let outcomes =
            evaluate::evaluate(&plan.tags, &universe, plan.as_of, self.batch_rows, control)?;
        let (evaluated, unevaluated) = Evaluated::split(&plan, &universe, scopes, outcomes);
        failures.add(unevaluated, evaluated.tags.len())?;
        timings.lap("evaluate_ms");
        control.checkpoint().map_err(stopped)?;
        let written = commit::write(store, &task.task_id, &evaluated, control)?;
        timings.lap("write_ms");
        let memory = crate::model::report::MemoryReport {
            estimate_bytes: budget.estimate,
            limit_bytes: budget.limit,
            partitions: 1,
            spill_bytes: 0,
        };
        let computed = report::Computed::of(&evaluated, memory);
        let report = report::report(&computed, &failures, &written.counts, &timings, fetched);
        let commit_ms = commit::finish(written, &report, control)?;
        log_committed(&report, commit_ms);
        Ok(report)
    }

    /// Runs `plan` in Spark: its inputs checked here first when the tables
    /// are local (in S3 the job checks them, and a bad column fails it).
    fn run_in_spark(
        &self,
        task: &TaskRecord,
        executor: &spark::SparkExecutor,
        plan: Plan,
        mut failures: Failures,
        timings: Timings,
        control: &TaskControl,
    ) -> Result<RunReport, RunError> {
        let plan = match &self.data {
            DataSource::Local(dir) => {
                let (plan, unreadable) = inputs::check(plan, dir)?;
                failures.add(unreadable, plan.tags.len())?;
                plan
            }
            DataSource::S3(_) => plan,
        };
        let run = spark::SparkRun {
            store: self.store.as_ref(),
            task_id: &task.task_id,
            executor,
            control,
        };
        spark::run(run, plan, failures, timings)
    }

    /// The registry as the task starts (a reload does not change it under
    /// a running task).
    fn registry(&self) -> TagRegistry {
        self.registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Makes the plan's tables local (an S3 mirror fetches what changed,
    /// timed as `fetch_ms`); the directory to read them from.
    fn fetch(
        &self,
        plan: &Plan,
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

/// The commit's time goes to the log line and the stage metric: it is known
/// only after the report was committed.
pub(crate) fn log_committed(report: &RunReport, commit_ms: u64) {
    crate::metrics::metrics().stage_finished("commit", commit_ms);
    tracing::info!(
        users = report.total_users,
        rows_upserted = report.rows_upserted,
        rows_deleted = report.rows_deleted,
        duration_ms = report.duration_ms + commit_ms,
        commit_ms = commit_ms,
        "results committed"
    );
}

impl TaskRunner for Engine {
    fn run(&self, task: &TaskRecord, control: &TaskControl) -> Result<RunReport, RunError> {
        Engine::run(self, task, control)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::{plan, tag_at_least};

    fn ids(tags: &[TagRun]) -> Vec<u32> {
        tags.iter().map(TagRun::id).collect()
    }

    #[test]
    fn a_tag_depends_on_its_inputs_tables_and_the_universe() {
        let tag = tag_at_least(1, "user_asset_summary", "cash", 1.0);
        let run = TagRun::with_default_rule(&tag, true);
        assert_eq!(run.tables(), vec!["user_asset_summary", UNIVERSE_TABLE]);
    }

    #[test]
    fn a_plan_without_failed_tags_no_longer_reads_their_tables() {
        let tags = [
            tag_at_least(1, UNIVERSE_TABLE, "score", 1.0),
            tag_at_least(2, "user_asset_summary", "cash", 1.0),
        ];
        let planned = plan(&tags, Mode::Full, None);
        assert_eq!(planned.tables.len(), 2);
        let failed = TagFailure::of(&planned.tags[1], "unreadable".into());
        let narrowed = planned.without(&[failed]).unwrap();
        assert_eq!(ids(&narrowed.tags), vec![1]);
        assert_eq!(narrowed.tables.len(), 1);
    }

    #[test]
    fn failures_are_kept_by_tag_id_and_fail_the_run_when_no_tag_is_left() {
        let tags = [
            tag_at_least(1, UNIVERSE_TABLE, "a", 1.0),
            tag_at_least(2, UNIVERSE_TABLE, "b", 1.0),
        ];
        let planned = plan(&tags, Mode::Full, None);
        let mut failures = Failures::default();
        let second = TagFailure::of(&planned.tags[1], "two".into());
        failures.add(vec![second], 1).unwrap();
        let first = TagFailure::of(&planned.tags[0], "one".into());
        let Err(RunError::Failed(message)) = failures.add(vec![first], 0) else {
            panic!("expected the run to fail");
        };
        assert_eq!(message, "tag 1: one; tag 2: two");
        let order: Vec<u32> = failures.tags().iter().map(|f| f.tag_id).collect();
        assert_eq!(order, vec![1, 2]);
    }

    #[test]
    fn splitting_evaluations_keeps_each_tag_with_its_own_scope() {
        let tags = [
            tag_at_least(1, UNIVERSE_TABLE, "a", 1.0),
            tag_at_least(2, UNIVERSE_TABLE, "b", 1.0),
            tag_at_least(3, UNIVERSE_TABLE, "c", 1.0),
        ];
        let planned = plan(&tags, Mode::Incremental, None);
        let universe = Universe {
            ids: UserIds::from_strs(&["u1", "u2"]),
            index: UniverseIndex::of_unique(&UserIds::from_strs(&["u1", "u2"])),
            tables: Vec::new(),
            duplicates: BTreeMap::new(),
            newest: BTreeMap::new(),
            row_groups: None,
        };
        let only = |row: usize| Some(Bitset::from_fn(2, |i| i == row));
        let scopes = vec![only(0), None, only(1)];
        let outcomes = vec![
            Ok(Bitset::full(2)),
            Err("broke".into()),
            Ok(Bitset::empty(2)),
        ];
        let (evaluated, failed) = Evaluated::split(&planned, &universe, scopes, outcomes);
        let kept: Vec<(u32, Vec<usize>)> = evaluated
            .tags
            .iter()
            .map(|t| (t.run.id(), t.scope.as_ref().unwrap().ones().collect()))
            .collect();
        assert_eq!(kept, vec![(1, vec![0]), (3, vec![1])]);
        assert_eq!(evaluated.tags[0].matched.count(), 2);
        assert_eq!(failed.len(), 1);
        assert_eq!((failed[0].tag_id, failed[0].error.as_str()), (2, "broke"));
        assert_eq!(failed[0].rule_version, Some(1));
    }
}
