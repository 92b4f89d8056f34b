//! Runs beyond the memory limit: a tiny `--memory-limit` forces 200,000
//! users (pyarrow-written lake parts with duplicates, ties, nulls, DECIMAL
//! money and zoned timestamps) into many user-id-range partitions spilled
//! to disk, and a small `--partition-users` splits the same runs into
//! partitions kept in memory. Full, `user_ids` and incremental runs must
//! equal DuckDB's computation and the same runs neither limited nor split,
//! on all three stores; a
//! server killed while spilling, or while writing partition 2, restarts,
//! finishes the task and leaves no spill files.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use support::backend::Backend;
use support::*;

const AS_OF: &str = "2025-01-15";
const USERS: usize = 200_000;
/// Small enough that every run below is partitioned.
const LIMIT: &str = "4MiB";
/// Small enough that every run below is split in memory when unlimited.
const PARTITION_USERS: &str = "10000";
const ALL_TAGS: [u32; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

/// The lake written once for every test: `base` as first exported, and
/// `appended`, the part files a later export adds; DuckDB's tags for both.
struct Lake {
    base: tempfile::TempDir,
    appended: tempfile::TempDir,
    before: BTreeMap<String, Vec<u32>>,
    after: BTreeMap<String, Vec<u32>>,
}

fn python() -> PathBuf {
    python::python_with(&["pyarrow", "duckdb"], &["pyarrow", "duckdb"])
}

fn export(args: &[&str]) -> String {
    python::run_script(&python(), "typed_export.py", args)
}

fn text(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn lake() -> &'static Lake {
    static LAKE: OnceLock<Lake> = OnceLock::new();
    LAKE.get_or_init(|| {
        let base = tempfile::tempdir().unwrap();
        export(&["lake", text(base.path()), &USERS.to_string(), "11"]);
        let appended = tempfile::tempdir().unwrap();
        copy_dir(base.path(), appended.path());
        export(&["append", text(appended.path()), "5"]);
        let expected =
            |dir: &Path| serde_json::from_str(&export(&["expected", text(dir), AS_OF])).unwrap();
        Lake {
            before: expected(base.path()),
            after: expected(appended.path()),
            base,
            appended,
        }
    })
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A copy of the first export in a directory of the test's own.
fn base_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(lake().base.path(), dir.path());
    dir
}

/// The later export's new part files, added to `dir`.
fn append_to(dir: &Path) {
    copy_dir(lake().appended.path(), dir);
}

/// The figures of a run that must not depend on how it was partitioned.
fn figures(result: &Value) -> Value {
    let tags: Vec<Value> = result["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            json!([
                t["tag_id"],
                t["status"],
                t["evaluated_users"],
                t["matched"],
                t["added"],
                t["removed"],
                t["scope"]
            ])
        })
        .collect();
    json!({
        "total_users": result["total_users"],
        "universe_users": result["universe_users"],
        "rows_upserted": result["rows_upserted"],
        "rows_deleted": result["rows_deleted"],
        "duplicates_dropped": result["duplicates_dropped"],
        "unknown_user_ids": result["unknown_user_ids"],
        "changed_row_groups": result["changed_row_groups"],
        "tags": tags,
    })
}

fn partitions(result: &Value) -> u64 {
    result["memory"]["partitions"].as_u64().unwrap_or(0)
}

/// The servers each run goes to: limited (spilled), split in memory, and
/// neither.
struct Servers {
    small: TestServer,
    split: TestServer,
    whole: TestServer,
}

/// Runs `body` on every server: the limited one spills at least
/// `at_least.0` partitions, the split one keeps at least `at_least.1` in
/// memory, the last is not partitioned, and their figures agree.
fn run_all(servers: &Servers, body: Value, at_least: (u64, u64)) -> Value {
    let limited = servers.small.run(body.clone());
    let split = servers.split.run(body.clone());
    let unlimited = servers.whole.run(body);
    assert!(partitions(&limited) >= at_least.0, "{limited}");
    assert!(partitions(&split) >= at_least.1, "{split}");
    assert_eq!(partitions(&unlimited), 1, "{unlimited}");
    let memory = &limited["memory"];
    assert!(memory["spill_bytes"].as_u64().unwrap() > 0, "{memory}");
    assert!(
        memory["estimate_bytes"].as_u64() > memory["limit_bytes"].as_u64(),
        "{memory}"
    );
    let memory = &split["memory"];
    assert_eq!(memory["spill_bytes"].as_u64(), Some(0), "{memory}");
    assert!(
        memory["estimate_bytes"].as_u64() <= memory["limit_bytes"].as_u64(),
        "{memory}"
    );
    assert_eq!(figures(&limited), figures(&unlimited));
    assert_eq!(figures(&split), figures(&unlimited));
    limited
}

/// No file or directory left under `dir`.
fn assert_empty(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "spill files left: {left:?}");
}

/// Each store's tags equal `expected`.
fn assert_stores(stores: [&Backend; 3], expected: &BTreeMap<String, Vec<u32>>) {
    let [limited, split, unlimited] = stores;
    assert_same_tags(&limited.tags(), expected);
    assert_eq!(limited.tags(), unlimited.tags());
    assert_eq!(split.tags(), unlimited.tags());
}

fn partitioned_runs_equal_whole_runs_and_duckdb(stores: [Backend; 3]) {
    let data = base_copy();
    let plugins = reference_plugins_dir();
    let spill = tempfile::tempdir().unwrap();
    let extra = ["--memory-limit", LIMIT, "--spill-dir", text(spill.path())];
    let [limited, split, unlimited] = &stores;
    let start = |store: &Backend, extra: &[&str]| {
        TestServer::start_with_store(data.path(), plugins.path(), &store.url(), extra)
    };
    let servers = Servers {
        small: start(limited, &extra),
        split: start(split, &["--partition-users", PARTITION_USERS]),
        whole: start(unlimited, &["--partition-users", "0"]),
    };
    let stores = [limited, split, unlimited];
    let lake = lake();

    let _full = run_all(
        &servers,
        json!({"tag_ids": ALL_TAGS, "as_of": AS_OF}),
        (8, 8),
    );
    assert_stores(stores, &lake.before);

    // A later export adds newer rows for every seventh user.
    append_to(data.path());
    // Every third of the first 180,000 users, and two nobody has.
    let mut ids: Vec<String> = (0..180_000)
        .step_by(3)
        .map(|n| format!("u{n:06}"))
        .collect();
    ids.extend(["nobody-1".to_string(), "nobody-2".to_string()]);
    let body = json!({"tag_ids": ALL_TAGS, "user_ids": ids, "as_of": AS_OF});
    let some = run_all(&servers, body, (4, 4));
    // The two made-up ids, and those whose rows all lack a user id.
    let unknown = &some["unknown_user_ids"];
    assert!(unknown["count"].as_u64().unwrap() >= 2, "{unknown}");
    let mut mixed = lake.before.clone();
    for id in &ids {
        match lake.after.get(id) {
            Some(tags) => mixed.insert(id.clone(), tags.clone()),
            None => mixed.remove(id),
        };
    }
    assert_stores(stores, &mixed);

    let body = json!({"tag_ids": ALL_TAGS, "mode": "incremental", "as_of": AS_OF});
    let changed = run_all(&servers, body, (2, 2));
    assert_eq!(changed["tags"][0]["scope"], "changed users", "{changed}");
    assert_stores(stores, &lake.after);
    assert_empty(spill.path());
}

#[test]
fn partitioned_runs_equal_whole_runs_and_duckdb_on_sqlite() {
    partitioned_runs_equal_whole_runs_and_duckdb([
        Backend::sqlite(),
        Backend::sqlite(),
        Backend::sqlite(),
    ]);
}

#[test]
fn partitioned_runs_equal_whole_runs_and_duckdb_on_postgres() {
    partitioned_runs_equal_whole_runs_and_duckdb([
        Backend::postgres(),
        Backend::postgres(),
        Backend::postgres(),
    ]);
}

#[test]
fn partitioned_runs_equal_whole_runs_and_duckdb_on_mariadb() {
    partitioned_runs_equal_whole_runs_and_duckdb([
        Backend::mysql(),
        Backend::mysql(),
        Backend::mysql(),
    ]);
}

/// A tag-server process over `data` with the store `url`, spilling into
/// `spill` under the small limit.
fn process(work: &Path, data: &Path, plugins: &Path, url: &str, spill: &Path) -> ServerProcess {
    let log = work.join("server.log");
    ServerProcess::start(&[
        "--log-file",
        text(&log),
        "--data-dir",
        text(data),
        "--plugins-dir",
        text(plugins),
        "--store",
        url,
        "--memory-limit",
        LIMIT,
        "--spill-dir",
        text(spill),
    ])
}

/// A new process on the same store takes task `task` back from the killed
/// one and completes it on its second attempt; its status.
fn restart_finishes(
    work: &Path,
    data: &Path,
    plugins: &Path,
    url: &str,
    spill: &Path,
    task: &str,
) -> Value {
    let second = process(work, data, plugins, url, spill);
    let done = wait_ended(&second.base, task);
    assert_eq!(
        (&done["status"], &done["attempts"]),
        (&json!("completed"), &json!(2)),
        "{done}"
    );
    done
}

/// The run directories under `spill`.
fn run_dirs(spill: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(spill)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn a_server_killed_while_spilling_restarts_finishes_and_leaves_no_spill_files() {
    let data = base_copy();
    let plugins = reference_plugins_dir();
    let work = tempfile::tempdir().unwrap();
    let spill = work.path().join("spill");
    let backend = Backend::sqlite();
    let first = process(
        work.path(),
        data.path(),
        plugins.path(),
        &backend.url(),
        &spill,
    );
    let task = trigger(&first.base, json!({"tag_ids": ALL_TAGS, "as_of": AS_OF}));
    // Killed as soon as the run's spill files appear: it is spilling.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let dir = loop {
        let files = run_dirs(&spill)
            .into_iter()
            .find(|d| std::fs::read_dir(d).is_ok_and(|mut f| f.next().is_some()));
        if let Some(dir) = files {
            break dir;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            task_status(&first.base, &task)
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    drop(first);
    // Killed before the current tags were spilled, after the first rows.
    assert!(!dir.join("current.0").exists(), "killed too late");
    assert!(dir.exists());
    assert!(backend.tags().is_empty());
    let done = restart_finishes(
        work.path(),
        data.path(),
        plugins.path(),
        &backend.url(),
        &spill,
        &task,
    );
    assert!(partitions(&done["result"]) >= 8, "{done}");
    assert_same_tags(&backend.tags(), &lake().before);
    assert_empty(&spill);
}

/// `tags` without the fixture's tag 906 (users left without a tag dropped).
fn without_906(tags: BTreeMap<String, Vec<u32>>) -> BTreeMap<String, Vec<u32>> {
    tags.into_iter()
        .filter_map(|(user, mut ids)| {
            ids.retain(|&t| t != 906);
            (!ids.is_empty()).then_some((user, ids))
        })
        .collect()
}

/// Tag 906 holds the run in partition 1 while the test inserts, in a
/// transaction it keeps open, a row for a user of partition 2: the run's
/// write of partition 2 waits on it, and the server is killed there. The
/// store keeps nothing of partitions 1 and 2; a restart finishes the task.
fn a_server_killed_while_writing_partition_2_restarts_and_finishes(backend: Backend) {
    let data = base_copy();
    let plugins = reference_and_misbehaving_plugins();
    let work = tempfile::tempdir().unwrap();
    let spill = work.path().join("spill");
    let first = process(
        work.path(),
        data.path(),
        plugins.path(),
        &backend.url(),
        &spill,
    );
    let gate = work.path().join("gate");
    hold_tag_906_at(&first.base, &gate);
    let mut tags = ALL_TAGS.to_vec();
    tags.push(906);
    let task = trigger(&first.base, json!({"tag_ids": tags, "as_of": AS_OF}));
    wait_entered(&gate);
    let held = task_status(&first.base, &task);
    assert_eq!(held["progress"]["partition"]["index"], 1, "{held}");
    // A user of partition 2, from its spill file (Arrow IPC).
    let run = run_dirs(&spill).pop().expect("the run's spill directory");
    use polars::prelude::{IpcReader, SerReader};
    let file = std::fs::File::open(run.join("user_basic_info.1")).unwrap();
    let second = IpcReader::new(file).finish().unwrap();
    let ids = second.column("user_id").unwrap().str().unwrap().clone();
    let user = ids
        .iter()
        .flatten()
        .find(|u| lake().before.contains_key(*u))
        .expect("a user of partition 2")
        .to_string();
    let hold = backend.hold(&format!(
        "INSERT INTO user_tag_sets (user_id, tag_ids, grants, created_time, updated_time) VALUES ('{user}', '[1]', '[]', 0, 0)"
    ));
    std::fs::write(&gate, b"").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let now = task_status(&first.base, &task);
        let progress = &now["progress"];
        // Partition 2 is being written (the next one is evaluated
        // meanwhile, so the current stage may read "evaluating").
        let writing = progress["stages"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["name"] == "writing" && s["state"] == "running")
        });
        if progress["partition"]["index"] == 2 && writing && backend.lock_waiters() > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{now}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(first);
    drop(hold);
    assert!(backend.tags().is_empty(), "partition 1 was committed");
    assert_eq!(run_dirs(&spill).len(), 1);
    restart_finishes(
        work.path(),
        data.path(),
        plugins.path(),
        &backend.url(),
        &spill,
        &task,
    );
    assert_same_tags(&without_906(backend.tags()), &lake().before);
    assert_empty(&spill);
}

#[test]
fn a_server_killed_while_writing_partition_2_restarts_and_finishes_on_mariadb() {
    a_server_killed_while_writing_partition_2_restarts_and_finishes(Backend::mysql());
}

/// A tmpfs of `size` mounted on a new directory (as root, or through
/// `sudo -n`), unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let root = std::process::Command::new("id").arg("-u").output().unwrap();
        let mut command = if String::from_utf8_lossy(&root.stdout).trim() == "0" {
            std::process::Command::new("mount")
        } else {
            let mut sudo = std::process::Command::new("sudo");
            sudo.args(["-n", "mount"]);
            sudo
        };
        let status = command
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("mount");
        assert!(
            status.success(),
            "this test mounts a small tmpfs: it needs root or sudo"
        );
        SmallDisk { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
        let _ = std::process::Command::new("sudo")
            .args(["-n", "umount"])
            .arg(self.dir.path())
            .status();
    }
}

/// A spill directory without room fails the task, naming it, before
/// anything is written (too small to start) or as it fills up (enough to
/// start, not to finish); the store is untouched and no file is left.
#[test]
fn a_spill_directory_out_of_space_fails_the_task_and_writes_nothing() {
    let data = base_copy();
    let plugins = reference_plugins_dir();
    for (size, says) in [
        ("1m", "free, and this run needs about"),
        ("28m", "No space left on device"),
    ] {
        let disk = SmallDisk::mount(size);
        let backend = Backend::sqlite();
        let extra = [
            "--memory-limit",
            LIMIT,
            "--spill-dir",
            text(disk.dir.path()),
        ];
        let server =
            TestServer::start_with_store(data.path(), plugins.path(), &backend.url(), &extra);
        let task = server.trigger(json!({"tag_ids": ALL_TAGS, "as_of": AS_OF}));
        let done = server.wait(&task);
        assert_eq!(done["status"], "failed", "{size}: {done}");
        let error = done["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(says) && error.contains("--spill-dir"),
            "{size}: {error}"
        );
        assert!(backend.tags().is_empty());
        assert_empty(disk.dir.path());
    }
}
