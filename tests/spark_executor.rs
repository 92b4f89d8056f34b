//! tag-server as the driver of the PySpark job (`--executor spark`): a
//! server on 127.0.0.1:0 whose profile's `[spark]` table points at the
//! `spark-submit` of PySpark from PyPI (`local[2]`) and the Python with the
//! `tag_engine_spark` wheel, triggered over HTTP, compared user by user
//! with `tag-server run` (the in-process engine) over the same
//! pyarrow-typed lake: full, `user_ids` and incremental runs; a panicking
//! plugin failing its tag only; a cancelled run stopping its application
//! and writing nothing; jobs that cannot start failing with what to fix.

mod support;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::*;

const AS_OF: &str = "2025-01-15";
const TAGS: [u32; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn python() -> &'static Path {
    python::with_pyspark()
}

/// A config directory whose `local.toml` runs tasks in Spark with
/// `spark` (the `[spark]` table's lines, added to the defaults).
fn spark_profile(dir: &Path, spark: &str) -> PathBuf {
    spark_profile_with(dir, spark, "")
}

/// [`spark_profile`] with more `[spark.conf]` lines.
fn spark_profile_with(dir: &Path, spark: &str, conf: &str) -> PathBuf {
    let bin = python().parent().unwrap();
    let config = dir.join("config");
    std::fs::create_dir_all(&config).unwrap();
    let profile = format!(
        r#"executor = "spark"
[spark]
spark_submit = "{submit}"
python = "{python}"
# Several parts (user_id ranges) of the job's output over the tests' users.
part_users = 700
{spark}
[spark.conf]
"spark.sql.shuffle.partitions" = 4
"spark.log.level" = "WARN"
"spark.sql.execution.arrow.maxRecordsPerBatch" = 300
{conf}
"#,
        submit = bin.join("spark-submit").display(),
        python = python().display(),
    );
    std::fs::write(config.join("local.toml"), profile).unwrap();
    config
}

/// A real tag-server over `data` whose runs go to Spark as `spark` says,
/// its store `work/t.db`, its staging under `work/spill/spark`.
struct SparkServer {
    base: String,
    db: PathBuf,
    _process: ServerProcess,
}

impl SparkServer {
    fn start(work: &Path, data: &Path, plugins: &Path, spark: &str) -> SparkServer {
        let config = spark_profile(work, spark);
        SparkServer::with_config(work, data, plugins, &config)
    }

    fn with_config(work: &Path, data: &Path, plugins: &Path, config: &Path) -> SparkServer {
        let spill = work.join("spill");
        let extra = ["--config-dir", path(config), "--spill-dir", path(&spill)];
        let process = ServerProcess::start_in(work, data, plugins, &extra);
        SparkServer {
            base: process.base.clone(),
            db: work.join("t.db"),
            _process: process,
        }
    }

    fn trigger(&self, body: Value) -> String {
        trigger(&self.base, body)
    }

    /// Waits (up to five minutes: Spark on a loaded machine) for the end.
    fn wait(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let status = task_status(&self.base, id);
            if ["completed", "failed", "cancelled"]
                .contains(&status["status"].as_str().unwrap_or(""))
            {
                return status;
            }
            assert!(Instant::now() < deadline, "{status}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Triggers, waits, asserts it completed: its report.
    fn run(&self, body: Value) -> Value {
        let id = self.trigger(body);
        let status = self.wait(&id);
        assert_eq!(status["status"], "completed", "{status}");
        status["result"].clone()
    }
}

/// `tag-server run` (in process, polars) of `tags` into `db`.
fn local_run(data: &Path, plugins: &Path, db: &Path, tags: &[u32], extra: &[&str]) -> Value {
    let ids: Vec<String> = tags.iter().map(u32::to_string).collect();
    run_report(data, plugins, db, &ids.join(","), AS_OF, extra)
}

/// `typed_export.py command DIR args...`.
fn export(command: &str, dir: &Path, args: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    let py = python::python_with(&["pyarrow"], &["pyarrow"]);
    python::run_script(
        &py,
        "typed_export.py",
        &[&[command, path(dir)], args].concat(),
    );
}

fn trigger_body(tags: &[u32], extra: Value) -> Value {
    let mut body = json!({"tag_ids": tags, "as_of": AS_OF});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// The report's figures a Spark run must share with the local run's.
fn assert_same_figures(spark: &Value, local: &Value) {
    // An incremental run counts duplicates among the rows it reads: the
    // host reads the changed row groups, Spark every row of the users it
    // evaluates, so only full and user_ids runs compare them.
    let duplicates = spark["mode"] == "full";
    for key in [
        "total_users",
        "rows_upserted",
        "rows_deleted",
        "duplicates_dropped",
    ] {
        if key == "duplicates_dropped" && !duplicates {
            continue;
        }
        assert_eq!(spark[key], local[key], "{key}: spark {spark} local {local}");
    }
    let counts = |r: &Value| -> Vec<Value> {
        r["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| json!([t["tag_id"], t["matched"], t["added"], t["removed"]]))
            .collect()
    };
    assert_eq!(counts(spark), counts(local));
}

#[test]
fn full_user_ids_and_incremental_spark_runs_commit_what_local_runs_commit() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("lake");
    export("lake", &data, &["2000", "7"]);
    let plugins = reference_plugins_dir();
    let server = SparkServer::start(work.path(), &data, plugins.path(), "master = \"local[2]\"");
    let local_db = work.path().join("local.db");

    let spark = server.run(trigger_body(&TAGS, json!({})));
    let local = local_run(&data, plugins.path(), &local_db, &TAGS, &[]);
    assert_same_tags(&user_tags(&server.db), &user_tags(&local_db));
    assert_same_figures(&spark, &local);
    assert_eq!(spark["universe_users"], local["universe_users"]);
    let executor = &spark["executor"];
    assert_eq!(executor["name"], "spark", "{spark}");
    assert_eq!(executor["master"], "local[2]");
    assert!(
        executor["application_id"]
            .as_str()
            .unwrap()
            .starts_with("local-"),
        "{executor}"
    );
    assert!(executor["staged_parts"].as_u64().unwrap() >= 1);
    assert!(local.get("executor").is_none());

    let ids = ["u000010", "nobody-1", "u001999", "u000003", "u000200"];
    let spark = server.run(trigger_body(&TAGS, json!({"user_ids": ids})));
    let local = local_run(
        &data,
        plugins.path(),
        &local_db,
        &TAGS,
        &["--user-ids", &ids.join(",")],
    );
    assert_same_tags(&user_tags(&server.db), &user_tags(&local_db));
    assert_eq!(spark["unknown_user_ids"], local["unknown_user_ids"]);
    assert_eq!(spark["unknown_user_ids"]["count"], 1);

    // New rows for some users: an incremental run re-evaluates them, per
    // tag by the tables it reads, and keeps everyone else's tags.
    export("append", &data, &["11"]);
    let spark = server.run(trigger_body(&TAGS, json!({"mode": "incremental"})));
    let local = local_run(
        &data,
        plugins.path(),
        &local_db,
        &TAGS,
        &["--mode", "incremental"],
    );
    assert_same_tags(&user_tags(&server.db), &user_tags(&local_db));
    assert_same_figures(&spark, &local);
    let added: u64 = spark["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["added"].as_u64().unwrap() + t["removed"].as_u64().unwrap())
        .sum();
    assert!(added > 0, "the appended part changed no tag: {spark}");
    let scoped: Vec<&Value> = spark["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["scope"])
        .collect();
    let local_scoped: Vec<&Value> = local["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["scope"])
        .collect();
    assert_eq!(scoped, local_scoped);
    assert_eq!(
        std::fs::read_dir(work.path().join("spill/spark"))
            .unwrap()
            .count(),
        0,
        "staging left behind"
    );
}

#[test]
fn a_panicking_plugin_fails_its_tag_in_spark_and_the_others_commit() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    export("write", &data, &["1000", "7"]);
    let plugins = reference_and_misbehaving_plugins();
    let server = SparkServer::start(work.path(), &data, plugins.path(), "master = \"local[2]\"");
    let id = server.trigger(trigger_body(&[1, 901, 2], json!({})));
    let status = server.wait(&id);
    assert_eq!(status["status"], "failed", "{status}");
    let report = &status["result"];
    assert_eq!(report["failed_tags"], json!([901]), "{report}");
    let failed = report["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tag_id"] == 901)
        .unwrap();
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("plugin panicked") && error.contains("in Spark"),
        "{error}"
    );
    let local_db = work.path().join("local.db");
    local_run(&data, plugins.path(), &local_db, &[1, 2], &[]);
    assert_same_tags(&user_tags(&server.db), &user_tags(&local_db));
}

/// Whether a process's command line mentions `needle`.
fn process_mentions(needle: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
    })
}

#[test]
fn a_cancelled_spark_run_stops_its_application_and_writes_nothing() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    export("write", &data, &["1000", "7"]);
    let plugins = reference_and_misbehaving_plugins();
    let server = SparkServer::start(work.path(), &data, plugins.path(), "master = \"local[2]\"");
    let gate = work.path().join("gate");
    hold_tag_906_at(&server.base, &gate);
    let id = server.trigger(trigger_body(&[1, 906], json!({})));
    wait_entered(&gate);
    assert!(
        process_mentions(&id),
        "no spark-submit of task {id} is running"
    );
    // The driver's REST API moves the bar: its tasks are known.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = task_status(&server.base, &id);
        let stages = body["progress"]["stages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let reading = stages.iter().find(|s| s["name"] == "reading");
        if reading.is_some_and(|s| s["total"].as_u64().unwrap_or(0) > 0) {
            break;
        }
        assert!(Instant::now() < deadline, "no Spark task progress: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let reply = client()
        .post(format!("{}/api/v1/tasks/{id}/cancel", server.base))
        .send()
        .unwrap();
    assert_eq!(reply.status().as_u16(), 202, "{:?}", reply.text());
    let status = server.wait(&id);
    assert_eq!(status["status"], "cancelled", "{status}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while process_mentions(&id) {
        assert!(
            Instant::now() < deadline,
            "the Spark application of {id} still runs"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        user_tags(&server.db).is_empty(),
        "a cancelled run wrote results"
    );
    assert_eq!(
        std::fs::read_dir(work.path().join("spill/spark"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn a_job_that_cannot_start_fails_its_task_with_what_to_fix() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    export("write", &data, &["200", "7"]);
    let plugins = reference_plugins_dir();

    let missing = work.path().join("missing");
    std::fs::create_dir_all(&missing).unwrap();
    let no_submit = format!("spark_submit = \"{}/spark-submit\"", missing.display());
    let profile = spark_profile(&missing, "");
    // Replace the working spark-submit with one that is not there.
    let text = std::fs::read_to_string(profile.join("local.toml")).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("spark_submit") {
                no_submit.clone()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(profile.join("local.toml"), text).unwrap();
    let server = SparkServer::with_config(&missing, &data, plugins.path(), &profile);
    let id = server.trigger(trigger_body(&[1], json!({})));
    let status = server.wait(&id);
    assert_eq!(status["status"], "failed");
    let error = status["error"]
        .as_str()
        .or(status["result"]["message"].as_str())
        .unwrap_or_default()
        .to_string();
    let text = status.to_string();
    assert!(
        text.contains("[spark] spark_submit") && text.contains("is not an executable file"),
        "{error} {status}"
    );
    drop(server);

    let bad = work.path().join("bad");
    let server = SparkServer::start(&bad, &data, plugins.path(), "master = \"bogus://nowhere\"");
    let id = server.trigger(trigger_body(&[1], json!({})));
    let status = server.wait(&id);
    assert_eq!(status["status"], "failed");
    let text = status.to_string();
    assert!(
        text.contains("the Spark job failed") && text.contains("Master must"),
        "{status}"
    );
    assert!(
        !text.contains("\\tat org.apache"),
        "a stack trace: {status}"
    );
    assert!(user_tags(&server.db).is_empty());
}

/// A standalone Spark cluster on loopback, started from the pyspark
/// distribution: a master and two one-core workers. Killed on drop.
struct Cluster {
    url: String,
    ui: u16,
    master: std::process::Child,
    workers: Vec<std::process::Child>,
}

fn spark_home() -> PathBuf {
    let code = "import os, pyspark; print(os.path.dirname(pyspark.__file__))";
    python::run_code(python(), code, &[]).trim().into()
}

fn spark_class(work: &Path, name: &str, args: &[&str]) -> std::process::Child {
    let log = std::fs::File::create(work.join(format!("{name}.log"))).unwrap();
    std::process::Command::new(spark_home().join("bin/spark-class"))
        .args(args)
        .env("SPARK_HOME", spark_home())
        .env("SPARK_LOCAL_IP", "127.0.0.1")
        .env("PYSPARK_PYTHON", python())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spark-class")
}

impl Cluster {
    fn start(work: &Path) -> Cluster {
        let (port, ui) = (free_port(), free_port());
        let master = spark_class(
            work,
            "master",
            &[
                "org.apache.spark.deploy.master.Master",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--webui-port",
                &ui.to_string(),
            ],
        );
        let url = format!("spark://127.0.0.1:{port}");
        let mut cluster = Cluster {
            url,
            ui,
            master,
            workers: Vec::new(),
        };
        cluster.wait_for(|m| m["status"] == "ALIVE", "the master");
        for i in 0..2 {
            let dir = work.join(format!("worker-{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let worker = spark_class(
                work,
                &format!("worker-{i}"),
                &[
                    "org.apache.spark.deploy.worker.Worker",
                    &cluster.url,
                    "--host",
                    "127.0.0.1",
                    "--cores",
                    "1",
                    "--memory",
                    "1g",
                    "--webui-port",
                    &free_port().to_string(),
                    "--work-dir",
                    path(&dir),
                ],
            );
            cluster.workers.push(worker);
        }
        cluster.wait_for(|m| m["aliveworkers"] == 2, "two workers");
        cluster
    }

    /// The master's status (its UI's `/json/`).
    fn state(&self) -> Option<Value> {
        client()
            .get(format!("http://127.0.0.1:{}/json/", self.ui))
            .send()
            .ok()?
            .json()
            .ok()
    }

    fn wait_for(&self, ready: impl Fn(&Value) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.state().is_some_and(|m| ready(&m)) {
            assert!(
                Instant::now() < deadline,
                "{what} did not come up: {:?}",
                self.state()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.workers.iter_mut().chain([&mut self.master]) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn on_a_standalone_cluster_a_worker_killed_mid_job_still_gives_the_local_results_once() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("lake");
    export("lake", &data, &["2000", "7"]);
    let plugins = reference_and_misbehaving_plugins();
    let mut cluster = Cluster::start(work.path());
    // The libraries go with the job (addFile), not installed on the nodes.
    let master = format!("master = \"{}\"\nship_plugins = true", cluster.url);
    // Four evaluation tasks (no coalescing), one core per executor.
    let conf = "\"spark.sql.adaptive.enabled\" = false\n\"spark.cores.max\" = 2\n\"spark.executor.cores\" = 1";
    let config = spark_profile_with(work.path(), &master, conf);
    let server = SparkServer::with_config(work.path(), &data, plugins.path(), &config);
    let gate = work.path().join("gate");
    hold_tag_906_at(&server.base, &gate);
    let mut tags = TAGS.to_vec();
    tags.push(906);
    let id = server.trigger(trigger_body(&tags, json!({})));
    wait_entered(&gate);
    // Both executors are inside the plugin now; one worker dies with its
    // executor and task, and Spark runs that task again on the other.
    std::thread::sleep(Duration::from_secs(3));
    let state = cluster.state().unwrap();
    assert_eq!(
        state["activeapps"].as_array().map(Vec::len),
        Some(1),
        "{state}"
    );
    let mut killed = cluster.workers.remove(0);
    killed.kill().unwrap();
    killed.wait().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(&gate, "").unwrap();
    let status = server.wait(&id);
    assert_eq!(status["status"], "completed", "{status}");
    let report = &status["result"];
    let app = report["executor"]["application_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(app.starts_with("app-"), "{report}");
    assert_eq!(report["executor"]["master"], json!(cluster.url));

    let local_db = work.path().join("local.db");
    let local = local_run(&data, plugins.path(), &local_db, &TAGS, &[]);
    let mut spark = user_tags(&server.db);
    let held = report["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tag_id"] == 906)
        .unwrap();
    assert_eq!(held["status"], "completed", "{report}");
    for tags in spark.values_mut() {
        tags.retain(|&t| t != 906);
    }
    spark.retain(|_, tags| !tags.is_empty());
    assert_same_tags(&spark, &user_tags(&local_db));
    // Written once: one row per user holding a tag, as the report counted.
    assert_eq!(
        user_tag_rows(&server.db).len() as u64,
        report["rows_upserted"].as_u64().unwrap()
    );
    assert_eq!(report["universe_users"], local["universe_users"]);
    let done = cluster.state().unwrap();
    let apps = done["completedapps"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(apps.iter().any(|a| a["id"] == json!(app)), "{done}");
}

#[test]
fn spark_package_holds_the_wheel_the_job_and_the_checked_plugins_and_runs() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    export("write", &data, &["1000", "7"]);
    python();
    let wheel = std::fs::read_dir(python::wheel_dir())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let plugins = reference_plugins_dir();
    // A library anyone may replace is not packaged.
    let loose = plugins.path().join("loose.so");
    std::fs::copy(plugin("wealth"), &loose).unwrap();
    std::fs::set_permissions(&loose, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let package = work.path().join("package");
    let (code, out, err) = tag_server(&[
        "spark-package",
        "--out",
        path(&package),
        "--wheel",
        path(&wheel),
        "--plugins-dir",
        path(plugins.path()),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("not packaged") && out.contains("loose.so"),
        "{out}"
    );
    let sums = std::process::Command::new("sha256sum")
        .arg("-c")
        .arg("SHA256SUMS")
        .current_dir(&package)
        .output()
        .unwrap();
    assert!(
        sums.status.success(),
        "{}",
        String::from_utf8_lossy(&sums.stdout)
    );
    let listed = String::from_utf8_lossy(&sums.stdout);
    assert!(
        listed.contains("tag_engine_job.py: OK") && listed.contains(".whl: OK"),
        "{listed}"
    );
    assert!(!package.join("plugins/loose.so").exists());
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(package.join("manifest.json")).unwrap()).unwrap();
    let mut ids: Vec<u64> = manifest["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["tag_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap())
        })
        .collect();
    ids.sort();
    assert_eq!(ids, (1..=8).collect::<Vec<u64>>());

    // The package as the profile's: its job and its plugins.
    let spark = format!("master = \"local[2]\"\npackage = \"{}\"", package.display());
    let server = SparkServer::start(work.path(), &data, plugins.path(), &spark);
    let report = server.run(trigger_body(&TAGS, json!({})));
    assert_eq!(report["executor"]["name"], "spark");
    let local_db = work.path().join("local.db");
    local_run(&data, plugins.path(), &local_db, &TAGS, &[]);
    assert_same_tags(&user_tags(&server.db), &user_tags(&local_db));
}
