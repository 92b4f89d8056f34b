//! The PySpark job of spark/ (`tag_engine_spark/job.py`, run from the
//! installed wheel) under a real `spark-submit --master local[2]` (PySpark
//! from PyPI, the system's Java), over `typed_export.py`'s pyarrow-typed
//! exports (DECIMAL, zoned and nanosecond timestamps, duplicates, ties
//! across part files, nulls), compared user by user with `tag-server run`
//! over the same files: a full run, a `user_ids` run, an incremental run
//! after an appended part, and a panicking plugin failing its tag alone.

mod support;

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

const AS_OF: &str = "2025-01-15";
const TAGS: &str = "1,2,3,4,5,6,7,8";
type UserTags = BTreeMap<String, Vec<u32>>;

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn python() -> &'static Path {
    python::with_pyspark()
}

/// JAVA_HOME, or the home of the `java` on PATH.
fn java_home() -> PathBuf {
    if let Some(home) = std::env::var_os("JAVA_HOME") {
        return home.into();
    }
    let java = which("java").expect("Java (17 or later) is needed for Spark");
    let real = std::fs::canonicalize(java).unwrap();
    real.ancestors().nth(2).unwrap().to_path_buf()
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The job as the wheel installed it.
fn job_file() -> PathBuf {
    let code = "import tag_engine_spark.job as j; print(j.__file__)";
    python::run_code(python(), code, &[]).trim().into()
}

/// What the job wrote: each evaluated user's tags, the users, the summary.
struct JobRun {
    user_tags: UserTags,
    users: Vec<String>,
    /// Parts of the output (user_id ranges, in order and disjoint).
    parts: u64,
    summary: Value,
}

/// Writes a plan for `tags` over `data` with `scope` and runs the job.
fn spark_job(plugins: &Path, data: &Path, tags: &str, scope: Value) -> JobRun {
    let work = tempfile::tempdir().unwrap();
    let (plan, output) = (work.path().join("plan.json"), work.path().join("out"));
    let scope = scope.to_string();
    let args = [
        path(plugins),
        path(data),
        path(&output),
        AS_OF,
        tags,
        &scope,
        path(&plan),
    ];
    python::run_script(
        python(),
        "spark_job_check.py",
        &[&["plan"], &args[..]].concat(),
    );
    let bin = python().parent().unwrap();
    let out = Command::new(bin.join("spark-submit"))
        .args(["--master", "local[2]", "--conf", "spark.ui.enabled=false"])
        .args(["--conf", "spark.log.level=WARN"])
        .args(["--conf", "spark.sql.shuffle.partitions=4"])
        // Several batches per task, so a tag must fail as a whole.
        .args(["--conf", "spark.sql.execution.arrow.maxRecordsPerBatch=300"])
        .arg(job_file())
        .arg("--plan")
        .arg(&plan)
        .env("JAVA_HOME", java_home())
        .env("PYSPARK_PYTHON", python())
        .env("PYSPARK_DRIVER_PYTHON", python())
        .output()
        .expect("run spark-submit");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "spark-submit failed: {}",
        &err[err.len().saturating_sub(6000)..]
    );
    let read = python::run_script(python(), "spark_job_check.py", &["output", path(&output)]);
    let read: Value = serde_json::from_str(&read).unwrap();
    JobRun {
        user_tags: serde_json::from_value(read["user_tags"].clone()).unwrap(),
        users: serde_json::from_value(read["users"].clone()).unwrap(),
        parts: read["parts"].as_u64().unwrap(),
        summary: read["summary"].clone(),
    }
}

/// `tag-server run` of `tags` over `data` into the SQLite store `db`,
/// with `extra` flags: its result (the run's report).
fn host_run(data: &Path, plugins: &Path, db: &Path, tags: &str, extra: &[&str]) -> Value {
    run_report(data, plugins, db, tags, AS_OF, extra)
}

fn export(command: &str, dir: &Path, users: &str) {
    let py = python::python_with(&["pyarrow"], &["pyarrow"]);
    python::run_script(&py, "typed_export.py", &[command, path(dir), users, "7"]);
}

/// The job's per-tag matched counts against the host report's.
fn assert_same_counts(summary: &Value, report: &Value) {
    for (ours, theirs) in summary["tags"]
        .as_array()
        .unwrap()
        .iter()
        .zip(report["tags"].as_array().unwrap())
    {
        assert_eq!(ours["tag_id"], theirs["tag_id"]);
        assert_eq!(
            ours["matched_users"], theirs["matched"],
            "tag {}",
            ours["tag_id"]
        );
    }
}

#[test]
fn a_full_and_a_user_ids_run_give_the_hosts_tags() {
    let data = tempfile::tempdir().unwrap();
    export("write", data.path(), "2000");
    let plugins = reference_plugins_dir();
    let work = tempfile::tempdir().unwrap();

    let job = spark_job(plugins.path(), data.path(), TAGS, json!({"mode": "full"}));
    // 300 users a part (the plan's part_users) over the universe.
    assert!(job.parts >= 3, "{} parts", job.parts);
    let db = work.path().join("full.db");
    let report = host_run(data.path(), plugins.path(), &db, TAGS, &[]);
    let host = user_tags(&db);
    for tag in 1..=8u32 {
        let members = host.values().filter(|t| t.contains(&tag)).count();
        assert!(
            members > 0 && members < 2000,
            "tag {tag}: {members} members"
        );
    }
    assert_same_tags(&job.user_tags, &host);
    // Every universe user is in the output, with or without tags.
    assert_eq!(
        job.users.len(),
        report["universe_users"].as_u64().unwrap() as usize
    );
    assert_eq!(job.summary["users_evaluated"], report["universe_users"]);
    assert_eq!(
        job.summary["duplicates_dropped"],
        report["duplicates_dropped"]
    );
    assert_same_counts(&job.summary, &report);
    assert_eq!(job.summary["failed_tags"], json!([]));

    let ids = [
        "u000010", "nobody-1", "u001999", "u000003", "u000010", "nobody-2", "u000200",
    ];
    let job = spark_job(
        plugins.path(),
        data.path(),
        TAGS,
        json!({"mode": "user_ids", "user_ids": ids}),
    );
    let db = work.path().join("ids.db");
    let report = host_run(
        data.path(),
        plugins.path(),
        &db,
        TAGS,
        &["--user-ids", &ids.join(",")],
    );
    assert_same_tags(&job.user_tags, &user_tags(&db));
    assert!(!job.user_tags.is_empty());
    let known: BTreeSet<String> = ids
        .iter()
        .filter(|i| i.starts_with('u'))
        .map(|i| i.to_string())
        .collect();
    assert_eq!(job.users.iter().cloned().collect::<BTreeSet<_>>(), known);
    assert_eq!(
        job.summary["unknown_user_ids"],
        json!({"count": 2, "sample": ["nobody-1", "nobody-2"]})
    );
    assert_eq!(job.summary["unknown_user_ids"], report["unknown_user_ids"]);
    assert_same_counts(&job.summary, &report);
}

#[test]
fn over_a_lake_a_full_then_an_incremental_run_give_the_hosts_tags() {
    let data = tempfile::tempdir().unwrap();
    export("lake", data.path(), "2000");
    let plugins = reference_plugins_dir();
    let work = tempfile::tempdir().unwrap();
    let db = work.path().join("lake.db");
    let job = spark_job(plugins.path(), data.path(), TAGS, json!({"mode": "full"}));
    let report = host_run(data.path(), plugins.path(), &db, TAGS, &[]);
    let before = user_tags(&db);
    // Ties within and across part files: the row written last wins.
    assert_same_tags(&job.user_tags, &before);
    assert_eq!(
        job.summary["duplicates_dropped"],
        report["duplicates_dropped"]
    );

    let script = |args: &[&str]| python::run_script(python(), "spark_job_check.py", args);
    let marks: Value = serde_json::from_str(&script(&["watermarks", path(data.path())])).unwrap();
    let py = python::python_with(&["pyarrow"], &["pyarrow"]);
    python::run_script(&py, "typed_export.py", &["append", path(data.path()), "11"]);
    let changed: Vec<String> =
        serde_json::from_str(&script(&["changed", path(data.path()), &marks.to_string()])).unwrap();
    assert!(
        changed.len() > 100 && changed.len() < 1000,
        "{} changed users",
        changed.len()
    );

    let scope = json!({"mode": "incremental", "watermarks": marks});
    let job = spark_job(plugins.path(), data.path(), TAGS, scope);
    assert_eq!(job.users, changed, "the incremental scope");
    host_run(
        data.path(),
        plugins.path(),
        &db,
        TAGS,
        &["--mode", "incremental"],
    );
    let after = user_tags(&db);
    // The job's users replaced in the first run's results are the host's
    // incremental results.
    let mut merged = before.clone();
    for user in &job.users {
        match job.user_tags.get(user) {
            Some(tags) => merged.insert(user.clone(), tags.clone()),
            None => merged.remove(user),
        };
    }
    assert_ne!(after, before, "the appended part changed no tag");
    assert_same_tags(&merged, &after);
}

#[test]
fn a_panicking_plugin_fails_its_tag_only_and_the_other_tags_are_complete() {
    let data = tempfile::tempdir().unwrap();
    export("write", data.path(), "1000");
    let plugins = reference_and_misbehaving_plugins();
    let job = spark_job(
        plugins.path(),
        data.path(),
        "1,901,2",
        json!({"mode": "full"}),
    );
    assert_eq!(job.summary["failed_tags"], json!([901]));
    let tags = job.summary["tags"].as_array().unwrap();
    let failed = tags.iter().find(|t| t["tag_id"] == 901).unwrap();
    assert_eq!(failed["status"], "failed");
    assert!(failed["matched_users"].is_null());
    let error = failed["errors"][0].as_str().unwrap();
    assert!(
        error.contains("plugin panicked") && error.contains("fixture tag 901 always panics"),
        "{error}"
    );

    let work = tempfile::tempdir().unwrap();
    let db = work.path().join("tags.db");
    let report = host_run(data.path(), plugins.path(), &db, "1,2", &[]);
    assert_same_tags(&job.user_tags, &user_tags(&db));
    assert_eq!(
        job.users.len(),
        report["universe_users"].as_u64().unwrap() as usize
    );
    let done: Vec<&Value> = tags.iter().filter(|t| t["tag_id"] != 901).collect();
    assert!(done
        .iter()
        .all(|t| t["status"] == "completed" && t["errors"] == json!([])));
}
