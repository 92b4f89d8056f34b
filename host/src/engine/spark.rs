//! A run with Spark as its executor (`--executor spark`): the plan is
//! written for the PySpark job of `spark/`, submitted with `spark-submit`
//! and followed until it ends; then its staged output is committed here,
//! through the same store path as a local run:
//!
//! 1. plan as always, then write `plan.json` (tables and declared columns,
//!    each tag's rule and version and, in an incremental run, the tables
//!    and watermarks it is scoped by; the scope; `as_of`) into a staging
//!    directory of the run's own;
//! 2. submit and follow: the driver's REST API gives the tasks done, shown
//!    as the reading stage; a cancel or shutdown stops the application; a
//!    job that fails fails the task with Spark's error;
//! 3. read `_summary.json` (failed tags fail alone, as in a local run) and
//!    commit the parts (`part=K/`, one `user_id` range each, see
//!    [`staged`]) one at a time into one transaction: each part's
//!    users' current tags are read, diffed and written, then the tag
//!    states and the report commit once.
//!
//! The staging directory is removed when the run ends however it ends (a
//! start-up removes what a killed server left), so the store is written
//! once, from a complete output, or not at all.

use super::bitset::Bitset;
use super::index::{UniverseIndex, UserIds};
use super::report::{self, Computed, Timings};
use super::spill::Spill;
use super::{commit, stopped, DiffCounts, Evaluated, Failures, Loaded, Plan, RunError};
use super::{TagFailure, TagRun, Universe};
use crate::model::report::{ExecutorReport, MemoryReport};
use crate::model::RunReport;
use crate::spark::settings::Launch;
use crate::spark::staged::{self, Part, Summary};
use crate::spark::{status, submit, SparkSettings};
use crate::store::{RunTx, Store, UserRows};
use crate::tasks::control::TaskControl;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often the driver is looked at.
const POLL: Duration = Duration::from_millis(250);
/// How often its REST API is asked for progress.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// What a Spark run needs besides its plan: set once per engine.
#[derive(Debug, Clone)]
pub struct SparkExecutor {
    /// The profile's `[spark]` table.
    pub settings: SparkSettings,
    /// tag-server's plugins directory (the executors' by default).
    pub host_plugins: PathBuf,
    /// The tables as the executors read them.
    pub data_dir: String,
    /// Where runs are staged when the settings do not say.
    pub staging_root: PathBuf,
}

/// One run's context.
pub struct SparkRun<'a> {
    /// Where results go.
    pub store: &'a dyn Store,
    /// The task.
    pub task_id: &'a str,
    /// The executor's settings.
    pub executor: &'a SparkExecutor,
    /// Cancel, shutdown and progress.
    pub control: &'a TaskControl,
}

/// Runs `plan` in Spark and commits its output; the committed report.
pub fn run(
    run: SparkRun<'_>,
    plan: Plan,
    mut failures: Failures,
    mut timings: Timings,
) -> Result<RunReport, RunError> {
    let executor = run.executor;
    let launch = executor.settings.launch().map_err(RunError::Failed)?;
    let root = executor.settings.staging_dir.as_deref();
    let staging = Spill::create(root.unwrap_or(&executor.staging_root), run.task_id)?;
    let dir = staging.path().expect("a staging directory on disk");
    let output = dir.join("output");
    let plan_file = dir.join("plan.json");
    let document = plan_document(&plan, executor, &output);
    std::fs::write(&plan_file, format!("{document:#}"))
        .map_err(|e| RunError::Failed(format!("cannot write {}: {e}", plan_file.display())))?;
    let app = follow(&run, &launch, &plan_file, &dir.join("spark-submit.log"))?;
    timings.lap("spark_ms");
    let (summary, parts) = staged::open(&output).map_err(RunError::Failed)?;
    let failed = tag_failures(&plan, &summary);
    failures.add(failed.clone(), plan.tags.len() - failed.len())?;
    let plan = plan.without(&failed)?;
    let mut report = commit_output(&run, &plan, &failures, &summary, &parts, timings)?;
    report.executor = Some(ExecutorReport {
        name: "spark".into(),
        application_id: summary.application_id.clone().or(app),
        master: launch.master.clone(),
        deploy_mode: launch.deploy_mode.clone(),
        staged_parts: parts.len(),
    });
    Ok(report)
}

/// The job's plan (spark/README.md, "The plan").
pub fn plan_document(plan: &Plan, executor: &SparkExecutor, output: &Path) -> Value {
    let tables: Vec<Value> = plan
        .tables
        .iter()
        .map(|t| {
            let columns: Vec<Value> = t
                .columns
                .iter()
                .filter(|c| c.name != "user_id" && c.name != "updated_time")
                .map(|c| json!({"name": c.name, "type": c.column_type.name()}))
                .collect();
            json!({"name": t.table, "columns": columns})
        })
        .collect();
    let incremental = plan.incremental();
    let settings = &executor.settings;
    let plugins_dir = settings.executor_plugins(&executor.host_plugins);
    let tags: Vec<Value> = plan
        .tags
        .iter()
        .map(|t| tag_document(t, incremental))
        .collect();
    json!({
        "tables": tables,
        "data_dir": executor.data_dir,
        "tags": tags,
        "scope": scope_document(plan),
        "as_of": plan.as_of.to_string(),
        "plugins_dir": (!settings.ship_plugins).then_some(plugins_dir.clone()),
        "plugin_files": shipped(settings.ship_plugins, &plugins_dir),
        "copies_dir": settings.copies_dir,
        "part_users": settings.part_users.unwrap_or(staged::ROWS_PER_PART as u64),
        "output": output.display().to_string(),
    })
}

/// The libraries shipped with the job (the `*.so` of `dir`, by name),
/// when the settings ship them.
fn shipped(ship: bool, dir: &str) -> Vec<String> {
    if !ship {
        return Vec::new();
    }
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "so") && p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    files
}

/// A tag of the plan; in an incremental run, unless it evaluates everyone,
/// scoped by the tables it reads and its watermarks (null: never seen).
fn tag_document(t: &TagRun, incremental: bool) -> Value {
    let rule: Value = serde_json::from_str(&t.rule).unwrap_or(Value::Null);
    let mut tag = json!({"tag_id": t.id(), "rule": rule, "rule_version": t.rule_version});
    if incremental && !t.whole_universe {
        let marks: serde_json::Map<String, Value> = t
            .tables()
            .into_iter()
            .map(|table| (table.to_string(), json!(t.watermarks.get(table))))
            .collect();
        tag["changed_since"] = Value::Object(marks);
    }
    tag
}

/// The run's scope. An incremental run's watermarks select the union of
/// its tags' scopes: per table the oldest mark of the tags reading it (a
/// tag that never saw the table, or evaluates everyone: no mark, so any
/// row counts).
fn scope_document(plan: &Plan) -> Value {
    if let Some(users) = &plan.user_ids {
        return json!({"mode": "user_ids", "user_ids": users});
    }
    if !plan.incremental() {
        return json!({"mode": "full"});
    }
    let mut marks: BTreeMap<&str, Option<i64>> = BTreeMap::new();
    for t in &plan.tags {
        for table in t.tables() {
            let mark = t
                .watermarks
                .get(table)
                .copied()
                .filter(|_| !t.whole_universe);
            let entry = marks.entry(table).or_insert(mark);
            *entry = match (*entry, mark) {
                (Some(a), Some(b)) => Some(a.min(b)),
                _ => None,
            };
        }
    }
    let watermarks: BTreeMap<&str, i64> = marks
        .into_iter()
        .filter_map(|(table, mark)| Some((table, mark?)))
        .collect();
    json!({"mode": "incremental", "watermarks": watermarks})
}

/// Submits the job and waits for it: progress from its REST API, stopped
/// on cancel or shutdown; the application's id, if the driver gave it.
fn follow(
    run: &SparkRun<'_>,
    launch: &Launch,
    plan: &Path,
    log: &Path,
) -> Result<Option<String>, RunError> {
    let name = format!("tag-engine {}", run.task_id);
    let mut job = submit::submit(launch, plan, &name, log).map_err(RunError::Failed)?;
    let mut asked = Instant::now() - STATUS_EVERY;
    loop {
        if let Some(exit) = job.exited().map_err(RunError::Failed)? {
            let app = job.app_id().map(str::to_string);
            if exit.success() {
                return Ok(app);
            }
            tracing::warn!(log = %job.log().display(), application = ?app, "the Spark job failed");
            return Err(RunError::Failed(format!(
                "the Spark job failed ({exit}, application {}): {}",
                app.as_deref().unwrap_or("not started"),
                job.error()
            )));
        }
        if let Err(stop) = run.control.checkpoint() {
            tracing::info!(application = ?job.app_id(), "stopping the Spark application");
            job.stop();
            return Err(stopped(stop));
        }
        if asked.elapsed() >= STATUS_EVERY {
            asked = Instant::now();
            show_tasks(&mut job, run.control);
        }
        std::thread::sleep(POLL);
    }
}

/// The application's tasks done, as the reading stage's figures.
fn show_tasks(job: &mut submit::Submitted, control: &TaskControl) {
    let Some(port) = job.ui_port else { return };
    let Some(app) = job.app_id().map(str::to_string) else {
        return;
    };
    if let Some(tasks) = status::tasks(port, &app) {
        control.set_progress(|p| {
            p.set_total("reading", tasks.total);
            p.set_done("reading", tasks.done);
        });
    }
}

/// The tags the summary says failed, as the run's failures.
fn tag_failures(plan: &Plan, summary: &Summary) -> Vec<TagFailure> {
    summary
        .failed()
        .into_iter()
        .filter_map(|(tag_id, error)| {
            let t = plan.tags.iter().find(|t| t.id() == tag_id)?;
            Some(TagFailure::of(t, format!("in Spark: {error}")))
        })
        .collect()
}

/// Commits the output's parts in one transaction, with the report.
fn commit_output(
    run: &SparkRun<'_>,
    plan: &Plan,
    failures: &Failures,
    summary: &Summary,
    parts: &[Vec<PathBuf>],
    mut timings: Timings,
) -> Result<RunReport, RunError> {
    let tags: Vec<&TagRun> = plan.tags.iter().collect();
    let tx = commit::begin(run.store, run.task_id, &tags)?;
    run.control
        .set_progress(|p| p.begin_partitions(parts.len(), false));
    let (tx, counts, mut loaded, scoped) = commit_parts(run, plan, tx, parts)?;
    timings.lap("write_ms");
    loaded.users = summary.universe_users;
    loaded.duplicates = summary.duplicates_dropped.clone();
    loaded.newest = summary.newest.clone();
    let states = commit::states(plan, &tags, &loaded.newest);
    let computed = Computed {
        plan,
        tags: tags.iter().copied().zip(scoped).collect(),
        loaded,
        memory: MemoryReport::default(),
    };
    let mut report = report::report(&computed, failures, &counts, &timings, None);
    report.memory = None;
    for (step, ms) in &summary.timings_ms {
        report.timings.insert(format!("spark_{step}_ms"), *ms);
    }
    let commit_ms = commit::finish(commit::written(tx, counts, states), &report, run.control)?;
    super::log_committed(&report, commit_ms);
    Ok(report)
}

/// What the committed parts give back: the transaction, the counts, the
/// users loaded and per tag whether it was scoped.
type PartsWritten<'s> = (Box<dyn RunTx + 's>, DiffCounts, Loaded, Vec<bool>);

/// Commits the parts into `tx` one at a time; each is read on a thread of
/// its own while the one before it is written (at most two are held).
fn commit_parts<'s>(
    run: &SparkRun<'_>,
    plan: &Plan,
    mut tx: Box<dyn RunTx + 's>,
    parts: &[Vec<PathBuf>],
) -> Result<PartsWritten<'s>, RunError> {
    let (mut counts, mut loaded) = (DiffCounts::default(), Loaded::default());
    let mut scoped = vec![false; plan.tags.len()];
    std::thread::scope(|scope| {
        let (send, receive) = std::sync::mpsc::sync_channel(0);
        std::thread::Builder::new()
            .name("part-reader".into())
            .spawn_scoped(scope, move || {
                for files in parts {
                    let part = staged::read_part(files);
                    let failed = part.is_err();
                    // A closed channel: the commit stopped, and says why.
                    if send.send(part).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| RunError::Failed(format!("cannot start the part reader: {e}")))?;
        for (k, part) in receive.into_iter().enumerate() {
            run.control
                .set_progress(|p| p.enter_partition(k + 1, parts.len()));
            let part = part.map_err(RunError::Failed)?;
            let (next, part_counts, universe, part_scoped) = commit_part(run, plan, tx, part)?;
            tx = next;
            counts.add(&part_counts);
            loaded.add(plan, &universe);
            scoped = part_scoped;
        }
        Ok((tx, counts, loaded, scoped))
    })
}

/// What one committed part gives back: the transaction, its counts, its
/// users, and per tag whether it was scoped.
type PartWritten<'s> = (Box<dyn RunTx + 's>, DiffCounts, Universe, Vec<bool>);

/// One part: its users' current tags read inside `tx`, diffed against
/// the part's matches and applied.
fn commit_part<'s>(
    run: &SparkRun<'_>,
    plan: &Plan,
    mut tx: Box<dyn RunTx + 's>,
    part: Part,
) -> Result<PartWritten<'s>, RunError> {
    let ids = UserIds::new(&part.users);
    let universe = Universe {
        index: UniverseIndex::of_unique(&ids),
        ids,
        tables: Vec::new(),
        duplicates: BTreeMap::new(),
        newest: BTreeMap::new(),
        row_groups: None,
    };
    let rows = universe.rows();
    let users: Vec<&str> = (0..rows).map(|i| universe.ids.get(i)).collect();
    let mut stored = UserRows::default();
    tx.current(Some(&users), &mut stored).map_err(|e| {
        RunError::Failed(format!(
            "reading the current tags failed, nothing was written: {e}"
        ))
    })?;
    let bitset = |rows_of: &[u32]| {
        let mut set = Bitset::empty(rows);
        rows_of.iter().for_each(|&r| set.insert(r as usize));
        set
    };
    let none = Vec::new();
    let outcomes = plan
        .tags
        .iter()
        .map(|t| Ok(bitset(part.matched.get(&t.id()).unwrap_or(&none))))
        .collect();
    let scopes: Vec<Option<Bitset>> = plan
        .tags
        .iter()
        .map(|t| {
            let scoped = part.scoped.as_ref()?;
            Some(bitset(scoped.get(&t.id()).unwrap_or(&none)))
        })
        .collect();
    let scoped = scopes.iter().map(Option::is_some).collect();
    let (evaluated, _) = Evaluated::split(plan, &universe, scopes, outcomes);
    let (tx, counts) = commit::write_part(tx, &evaluated, &stored, run.control)?;
    Ok((tx, counts, universe, scoped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testkit::{at, plan, tag_at_least};
    use crate::engine::UNIVERSE_TABLE;
    use crate::model::Mode;

    fn executor() -> SparkExecutor {
        SparkExecutor {
            settings: SparkSettings::default(),
            host_plugins: "/opt/plugins".into(),
            data_dir: "s3a://lake/daily".into(),
            staging_root: "/tmp".into(),
        }
    }

    #[test]
    fn the_plan_lists_declared_columns_and_the_tags_rules() {
        let tags = [tag_at_least(1, "user_asset_summary", "cash", 1.0)];
        let planned = plan(&tags, Mode::Full, None);
        let doc = plan_document(&planned, &executor(), Path::new("/stage/output"));
        assert_eq!(doc["scope"], json!({"mode": "full"}));
        assert_eq!(doc["plugins_dir"], json!("/opt/plugins"));
        assert_eq!(doc["data_dir"], json!("s3a://lake/daily"));
        let tables = doc["tables"].as_array().unwrap();
        let side = tables
            .iter()
            .find(|t| t["name"] == "user_asset_summary")
            .unwrap();
        assert_eq!(
            side["columns"],
            json!([{"name": "cash", "type": "float64"}])
        );
        assert!(doc["tags"][0]["rule"].is_object());
        assert!(doc["tags"][0].get("changed_since").is_none());
    }

    #[test]
    fn an_incremental_plan_scopes_each_tag_and_selects_their_union() {
        let tags = [
            tag_at_least(1, "user_asset_summary", "cash", 1.0),
            tag_at_least(2, UNIVERSE_TABLE, "score", 0.0),
        ];
        let mut planned = plan(&tags, Mode::Incremental, None);
        planned.tags[0].watermarks = [
            (UNIVERSE_TABLE.to_string(), at(5).unwrap()),
            ("user_asset_summary".to_string(), at(7).unwrap()),
        ]
        .into();
        planned.tags[1].watermarks = [(UNIVERSE_TABLE.to_string(), at(3).unwrap())].into();
        let doc = plan_document(&planned, &executor(), Path::new("/o"));
        let marks = &doc["scope"]["watermarks"];
        assert_eq!(marks[UNIVERSE_TABLE], json!(at(3).unwrap()));
        assert_eq!(marks["user_asset_summary"], json!(at(7).unwrap()));
        assert_eq!(
            doc["tags"][1]["changed_since"],
            json!({UNIVERSE_TABLE: at(3).unwrap()})
        );
        // A tag that evaluates everyone: no scope of its own, no union mark.
        planned.tags[1].whole_universe = true;
        let doc = plan_document(&planned, &executor(), Path::new("/o"));
        assert!(doc["tags"][1].get("changed_since").is_none());
        assert!(doc["scope"]["watermarks"].get(UNIVERSE_TABLE).is_none());
    }

    #[test]
    fn shipped_plugins_are_listed_instead_of_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.so", "a.so", "notes.txt"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let mut executor = executor();
        executor.host_plugins = dir.path().to_path_buf();
        executor.settings.ship_plugins = true;
        let tags = [tag_at_least(1, UNIVERSE_TABLE, "score", 0.0)];
        let doc = plan_document(&plan(&tags, Mode::Full, None), &executor, Path::new("/o"));
        assert!(doc["plugins_dir"].is_null());
        let at = |n: &str| json!(dir.path().join(n).display().to_string());
        assert_eq!(doc["plugin_files"], json!([at("a.so"), at("b.so")]));
    }

    #[test]
    fn a_user_ids_run_names_its_users() {
        let tags = [tag_at_least(1, UNIVERSE_TABLE, "score", 0.0)];
        let planned = plan(&tags, Mode::Incremental, Some(&["u1"]));
        let doc = plan_document(&planned, &executor(), Path::new("/o"));
        assert_eq!(
            doc["scope"],
            json!({"mode": "user_ids", "user_ids": ["u1"]})
        );
    }
}
