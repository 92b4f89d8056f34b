//! The store semantics of tags.md on every backend: each scenario runs
//! against SQLite, PostgreSQL and MariaDB through a real server, in a
//! database of its own, and is checked against the independent computation.

#[macro_use]
mod support;

use serde_json::json;
use support::backend::Backend;
use support::*;
use tag_host::data::gen::{gen_data_with, GenOptions};
use tag_plugin_api::Date;

const AS_OF: &str = "2025-01-15";

fn as_of() -> i32 {
    Date::parse(AS_OF).unwrap().days()
}

/// A server over fresh sample data and `backend`.
struct Env {
    data: tempfile::TempDir,
    plugins: tempfile::TempDir,
    backend: Backend,
    server: TestServer,
}

impl Env {
    fn new(backend: Backend, users: usize) -> Env {
        let data = tempfile::tempdir().unwrap();
        let options = GenOptions {
            users,
            seed: 5,
            reference_date: as_of(),
            row_group_rows: 700,
            duplicates: 30,
            ..GenOptions::default()
        };
        gen_data_with(data.path(), &options).expect("generate data");
        let plugins = reference_plugins_dir();
        let server = TestServer::start_with_store(data.path(), plugins.path(), &backend.url(), &[]);
        Env {
            data,
            plugins,
            backend,
            server,
        }
    }

    /// A server on existing data and store (a restart).
    fn start(data: tempfile::TempDir, plugins: tempfile::TempDir, backend: Backend) -> Env {
        let server = TestServer::start_with_store(data.path(), plugins.path(), &backend.url(), &[]);
        Env {
            data,
            plugins,
            backend,
            server,
        }
    }

    fn expected(&self, tags: &[u32]) -> std::collections::BTreeMap<String, Vec<u32>> {
        oracle::expected(self.data.path(), as_of(), tags)
    }
}

fn full_runs_equal_the_oracle_and_a_rerun_writes_nothing(backend: Backend) {
    let env = Env::new(backend, 1200);
    let all = [1, 2, 3, 4, 5, 6, 7, 8];
    let result = env.server.run(json!({"tag_ids": all, "as_of": AS_OF}));
    assert_same_tags(&env.backend.tags(), &env.expected(&all));
    assert_eq!(
        result["rows_upserted"].as_u64(),
        Some(env.backend.rows().len() as u64)
    );
    let before = env.backend.rows();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let again = env.server.run(json!({"tag_ids": all, "as_of": AS_OF}));
    assert_eq!(
        (
            again["rows_upserted"].as_u64(),
            again["rows_deleted"].as_u64()
        ),
        (Some(0), Some(0))
    );
    assert_eq!(env.backend.rows(), before, "not even updated_time moves");
    // The API reads the same rows.
    let (user, ids, ..) = &before[0];
    let (status, body) = env
        .server
        .get(&format!("/api/v1/users/{user}/tags"))
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        body["tag_ids"],
        serde_json::from_str::<serde_json::Value>(ids).unwrap()
    );
}

fn a_user_ids_run_touches_only_those_users(backend: Backend) {
    let env = Env::new(backend, 600);
    env.server.run(json!({"tag_ids": [7], "as_of": AS_OF}));
    let sevens = env.expected(&[7]);
    // Before: every row as the oracle says.
    assert_same_tags(&env.backend.tags(), &sevens);
    // Tag 2 for two users only, one who matches and one who does not.
    let twos = env.expected(&[2]);
    let matching = twos.keys().next().unwrap().clone();
    let other = sevens
        .keys()
        .find(|u| !twos.contains_key(*u))
        .unwrap()
        .clone();
    let result = env
        .server
        .run(json!({"tag_ids": [2], "user_ids": [matching, other, "ghost"], "as_of": AS_OF}));
    assert_eq!(result["unknown_user_ids"]["count"], 1);
    // After: every row is the oracle's tag 7, plus tag 2 for the matching
    // user alone: nobody else gained it and nothing else changed.
    let mut want = sevens.clone();
    want.entry(matching.clone()).or_default().push(2);
    want.values_mut().for_each(|tags| tags.sort_unstable());
    assert_same_tags(&env.backend.tags(), &want);
}

fn a_changed_rule_revokes_and_leaves_other_tags(backend: Backend) {
    let env = Env::new(backend, 800);
    env.server.run(json!({"tag_ids": [6, 7], "as_of": AS_OF}));
    let response = client()
        .put(format!("{}/api/v1/tags/6/rule", env.server.base))
        .json(&json!({"rule": {"field": "cash_balance", "operator": ">=", "value": 1.0e12}}))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    // The history says who saved each version (no tokens here: anonymous;
    // the seeded default: nobody).
    let (_, rules) = env.server.get("/api/v1/tags/6/rule").unwrap();
    let history = rules["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{rules}");
    assert_eq!(
        (&history[0]["changed_by"], &history[1]["changed_by"]),
        (&json!(null), &json!("anonymous"))
    );
    let result = env.server.run(json!({"tag_ids": [6], "as_of": AS_OF}));
    assert!(
        result["tags"][0]["removed"].as_u64().unwrap() > 0,
        "{result}"
    );
    let after = env.backend.tags();
    assert!(after.values().all(|tags| !tags.contains(&6)));
    assert_same_tags(&after, &env.expected(&[7]));
}

fn an_incremental_run_equals_a_full_one(backend: Backend) {
    let env = Env::new(backend, 900);
    env.server
        .run(json!({"tag_ids": [2, 3, 8], "as_of": AS_OF}));
    everyone_trades(env.data.path());
    let result = env
        .server
        .run(json!({"tag_ids": [2, 3, 8], "mode": "incremental", "as_of": AS_OF}));
    assert_eq!(result["tags"][0]["scope"], "changed users");
    assert_same_tags(&env.backend.tags(), &env.expected(&[2, 3, 8]));
}

fn overlapping_runs_lose_nothing(backend: Backend) {
    let env = Env::new(backend, 1500);
    let ids: Vec<String> = [vec![1, 6], vec![2, 8], vec![3, 7], vec![4, 5]]
        .iter()
        .map(|tags| env.server.trigger(json!({"tag_ids": tags, "as_of": AS_OF})))
        .collect();
    for id in &ids {
        assert_eq!(env.server.wait(id)["status"], "completed");
    }
    assert_same_tags(
        &env.backend.tags(),
        &env.expected(&[1, 2, 3, 4, 5, 6, 7, 8]),
    );
}

fn a_failure_mid_write_leaves_nothing(backend: Backend) {
    let env = Env::new(backend, 500);
    env.server.run(json!({"tag_ids": [7], "as_of": AS_OF}));
    let before = env.backend.rows();
    let trigger = match env.backend {
        Backend::Sqlite(_) => "CREATE TRIGGER fail_writes BEFORE UPDATE ON user_tag_sets BEGIN SELECT RAISE(ABORT, 'injected write failure'); END;",
        Backend::Postgres(_) => "CREATE FUNCTION fail_writes() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected write failure'; END $$;
             CREATE TRIGGER fail_writes BEFORE UPDATE ON user_tag_sets FOR EACH ROW EXECUTE FUNCTION fail_writes();",
        Backend::Mysql(_) => "CREATE TRIGGER fail_writes BEFORE UPDATE ON user_tag_sets FOR EACH ROW SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'injected write failure'",
    };
    env.backend.execute(trigger, false);
    // Gains for new users are inserted first, then an update fails.
    let id = env
        .server
        .trigger(json!({"tag_ids": [1, 2, 3, 6], "as_of": AS_OF}));
    let status = env.server.wait(&id);
    assert_eq!(status["status"], "failed", "{status}");
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("injected write failure"),
        "{status}"
    );
    assert_eq!(env.backend.rows(), before);
}

fn a_restart_finishes_committed_tasks_and_runs_queued_ones(backend: Backend) {
    let env = Env::new(backend, 400);
    let done = env.server.trigger(json!({"tag_ids": [7], "as_of": AS_OF}));
    let written = env.server.wait(&done)["result"]["rows_upserted"]
        .as_u64()
        .unwrap();
    assert!(written > 0);
    let Env {
        data,
        plugins,
        backend,
        server,
    } = env;
    drop(server);
    // As if the process died after the results' commit, with a task queued.
    backend.execute(
        &format!(
            "UPDATE tasks SET status = 'running', result = NULL, completed_at = NULL WHERE task_id = '{done}';
             INSERT INTO tasks (task_id, spec, environment, status, submitted_at)
             VALUES ('queued-1', '{{\"tag_ids\":[2],\"user_ids\":null,\"mode\":\"full\",\"priority\":\"normal\",\"as_of\":\"{AS_OF}\"}}', 'local', 'submitted', '2025-01-15T00:00:00');"
        ),
        true,
    );
    let env = Env::start(data, plugins, backend);
    let recovered = env.server.wait(&done);
    assert_eq!(recovered["status"], "completed", "{recovered}");
    assert_eq!(
        recovered["result"]["rows_upserted"].as_u64(),
        Some(written),
        "not run again"
    );
    assert_eq!(env.server.wait("queued-1")["status"], "completed");
    assert_same_tags(&env.backend.tags(), &env.expected(&[2, 7]));
}

/// A `tag-server` process serving on a free loopback port.
struct Process {
    child: std::process::Child,
    base: String,
}

impl Process {
    /// Starts the process and waits until it answers `/health`.
    fn start(
        data: &std::path::Path,
        plugins: &std::path::Path,
        store: &str,
        log: &std::path::Path,
    ) -> Process {
        Process::start_with(data, plugins, store, log, &[])
    }

    /// [`Process::start`] with extra flags.
    fn start_with(
        data: &std::path::Path,
        plugins: &std::path::Path,
        store: &str,
        log: &std::path::Path,
        extra: &[&str],
    ) -> Process {
        let process = Process::spawn_with(data, plugins, store, log, extra);
        wait_until_up(&process.base);
        process
    }

    /// Starts the process without waiting for it.
    fn spawn(
        data: &std::path::Path,
        plugins: &std::path::Path,
        store: &str,
        log: &std::path::Path,
    ) -> Process {
        Process::spawn_with(data, plugins, store, log, &[])
    }

    fn spawn_with(
        data: &std::path::Path,
        plugins: &std::path::Path,
        store: &str,
        log: &std::path::Path,
        extra: &[&str],
    ) -> Process {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Unless `extra` says otherwise, a dead process's claims expire
        // within two seconds.
        let defaults = [("--task-lease-secs", "2"), ("--batch-rows", "1000")]
            .into_iter()
            .filter(|(flag, _)| !extra.contains(flag))
            .flat_map(|(flag, value)| [flag, value]);
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_tag-server"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--store", store])
            .args(defaults)
            .arg("--data-dir")
            .arg(data)
            .arg("--plugins-dir")
            .arg(plugins)
            .arg("--log-file")
            .arg(log)
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start tag-server");
        Process {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    fn status(&self, task: &str) -> serde_json::Value {
        task_status(&self.base, task)
    }

    /// Waits for the process to die by itself (the task aborts it).
    fn wait_for_crash(mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(!status.success(), "{status}");
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not stop"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn a_task_that_kills_the_server_is_failed_after_its_second_crash(backend: Backend) {
    let data = sample_data(300);
    let plugins = reference_and_misbehaving_plugins();
    let log = data.path().join("server.log");
    let server = Process::start(data.path(), plugins.path(), &backend.url(), &log);
    let (code, reply) = {
        let response = client()
            .post(format!("{}/api/v1/tags/trigger", server.base))
            .json(&json!({"tag_ids": [905], "as_of": AS_OF}))
            .send()
            .unwrap();
        (
            response.status().as_u16(),
            response.json::<serde_json::Value>().unwrap(),
        )
    };
    assert_eq!(code, 202, "{reply}");
    let task = reply["task_id"].as_str().unwrap().to_string();
    server.wait_for_crash();
    // Restarted, it runs the task again at once, which stops it a second time.
    Process::spawn(data.path(), plugins.path(), &backend.url(), &log).wait_for_crash();
    let server = Process::start(data.path(), plugins.path(), &backend.url(), &log);
    // Once the dead process's lease expires, the task is claimed and failed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        let status = server.status(&task);
        if status["status"] != "running" || std::time::Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(status["status"], "failed", "{status}");
    assert_eq!(status["attempts"], 2, "{status}");
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("stopped while running this task 2 times"),
        "{status}"
    );
    // And it serves on: another task completes.
    let response = client()
        .post(format!("{}/api/v1/tags/trigger", server.base))
        .json(&json!({"tag_ids": [7], "as_of": AS_OF}))
        .send()
        .unwrap();
    let other = response.json::<serde_json::Value>().unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while server.status(&other)["status"] != "completed" {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            server.status(&other)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn three_processes_share_the_queue_and_take_over_from_one_killed_mid_run(backend: Backend) {
    let data = sample_data(3000);
    let plugins = reference_and_misbehaving_plugins();
    let log = data.path().join("server.log");
    let first = Process::start(data.path(), plugins.path(), &backend.url(), &log);
    // Tag 906 holds every batch until the gate file exists: the tasks
    // `first` takes cannot finish before it is killed, however slow the
    // machine.
    let gate = data.path().join("gate");
    hold_tag_906_at(&first.base, &gate);
    let tasks: Vec<String> = (1..=6)
        .map(|tag| trigger(&first.base, json!({"tag_ids": [906, tag], "as_of": AS_OF})))
        .collect();
    // Its three workers take three tasks; those die with it.
    let running = |p: &Process| -> Vec<String> {
        tasks
            .iter()
            .filter(|t| p.status(t)["status"] == "running")
            .cloned()
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let killed = loop {
        let now_running = running(&first);
        if now_running.len() == 3 {
            break now_running;
        }
        assert!(std::time::Instant::now() < deadline, "{now_running:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    drop(first); // kill -9 mid-run
    std::fs::write(&gate, b"").unwrap();
    let others = [
        Process::start(data.path(), plugins.path(), &backend.url(), &log),
        Process::start(data.path(), plugins.path(), &backend.url(), &log),
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    for task in &tasks {
        loop {
            let status = others[0].status(task);
            if status["status"] == "completed" {
                // Taken over once if its first owner died, else run once.
                let runs = if killed.contains(task) { 2 } else { 1 };
                assert_eq!(status["attempts"], runs, "{status}");
                break;
            }
            assert_ne!(status["status"], "failed", "{status}");
            assert!(std::time::Instant::now() < deadline, "{status}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    assert!(!killed.is_empty());
    assert_same_tags(
        &backend.tags(),
        &oracle::expected(data.path(), as_of(), &[1, 2, 3, 4, 5, 6]),
    );
}

/// How a test stops a run it holds in its commit.
#[derive(Clone, Copy, PartialEq)]
enum StopBy {
    /// SIGKILL of the server process.
    Kill,
    /// `POST /api/v1/tasks/{id}/cancel`.
    Cancel,
}

/// Where a test holds a run before it stops it.
#[derive(Clone, Copy, PartialEq)]
enum HeldIn {
    /// Writing: its first new grant waits on a lock of `tag_grants`.
    Writing,
    /// Committing: its outcome row waits on a row the test inserted.
    Committing,
}

/// A run held while it writes (its first new grant waiting on a lock the
/// test holds) or inside its commit (the results written into the
/// transaction, the outcome row waiting on a lock the test holds) is
/// killed or cancelled: `user_tags` is either as before or the whole run's,
/// never part of it, and the status says which (a cancel while writing
/// always stops it: a safe point comes before the commit). A killed run is
/// taken over by the next process and completes.
fn a_run_stopped_while_it_writes_or_commits_is_all_or_nothing(
    backend: Backend,
    by: StopBy,
    at: HeldIn,
) {
    let data = sample_data(600);
    let plugins = reference_and_misbehaving_plugins();
    let log = data.path().join("server.log");
    let first = Process::start(data.path(), plugins.path(), &backend.url(), &log);
    let before_run = trigger(&first.base, json!({"tag_ids": [1], "as_of": AS_OF}));
    wait_completed(&first, &before_run);
    let before = oracle::expected(data.path(), as_of(), &[1]);
    assert_same_tags(&backend.tags(), &before);
    // Tag 906 holds the run in its plugin while the test takes the lock.
    let gate = data.path().join("gate");
    hold_tag_906_at(&first.base, &gate);
    let task = trigger(&first.base, json!({"tag_ids": [906, 1, 7], "as_of": AS_OF}));
    wait_entered(&gate);
    let (lock, stage) = match (at, backend.url().starts_with("postgres")) {
        (HeldIn::Writing, true) => ("LOCK TABLE tag_grants IN EXCLUSIVE MODE".to_string(), "writing"),
        (HeldIn::Writing, false) => ("SELECT grant_id FROM tag_grants FOR UPDATE".to_string(), "writing"),
        (HeldIn::Committing, _) => (
            format!("INSERT INTO run_outcomes (task_id, result, committed_at) VALUES ('{task}', '{{}}', 'held')"),
            "committing",
        ),
    };
    let hold = backend.hold(&lock);
    std::fs::write(&gate, b"").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while first.status(&task)["progress"]["stage"] != stage || backend.lock_waiters() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            first.status(&task)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let after = oracle::expected(data.path(), as_of(), &[1, 7]);
    match by {
        StopBy::Kill => {
            drop(first);
            drop(hold);
            assert_same_tags(&backend.tags(), &before);
            let next = Process::start(data.path(), plugins.path(), &backend.url(), &log);
            let done = wait_completed(&next, &task);
            assert_eq!(done["attempts"], 2, "{done}");
            assert_same_tags(&backend.tags(), &after);
        }
        StopBy::Cancel => {
            let reply = client()
                .post(format!("{}/api/v1/tasks/{task}/cancel", first.base))
                .send()
                .unwrap();
            // 202: accepted, the run stops at its next safe point.
            assert_eq!(reply.status().as_u16(), 202);
            drop(hold);
            let done = wait_ended(&first.base, &task);
            if at == HeldIn::Writing {
                assert_eq!(done["status"], "cancelled", "{done}");
            }
            match done["status"].as_str().unwrap() {
                "cancelled" => assert_same_tags(&backend.tags(), &before),
                "completed" => assert_same_tags(&backend.tags(), &after),
                other => panic!("{other}: {done}"),
            }
        }
    }
}

/// A process killed just after its run committed (the results and the
/// outcome in; the task's own row, which it marks completed next, locked by
/// the test, and that statement ended): the next process reports the
/// committed outcome, with a note, and does not run the task again.
fn a_process_killed_just_after_its_commit_reports_what_it_committed(backend: Backend) {
    let data = sample_data(600);
    let plugins = reference_and_misbehaving_plugins();
    let log = data.path().join("server.log");
    let first = Process::start(data.path(), plugins.path(), &backend.url(), &log);
    let gate = data.path().join("gate");
    hold_tag_906_at(&first.base, &gate);
    let task = trigger(&first.base, json!({"tag_ids": [906, 1, 7], "as_of": AS_OF}));
    wait_entered(&gate);
    let hold = backend.hold(&format!(
        "SELECT task_id FROM tasks WHERE task_id = '{task}' FOR UPDATE"
    ));
    std::fs::write(&gate, b"").unwrap();
    let committed = || {
        let rows = backend.query_count(&format!(
            "SELECT COUNT(*) FROM run_outcomes WHERE task_id = '{task}'"
        ));
        rows == 1 && backend.lock_waiters() > 0
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !committed() {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            first.status(&task)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(first);
    // The database still holds the dead process's waiting statement (the
    // task marked completed); end it, as if the process had died before
    // sending it.
    backend.end_lock_waiters();
    drop(hold);
    let after = oracle::expected(data.path(), as_of(), &[1, 7]);
    assert_same_tags(&backend.tags(), &after);
    let next = Process::start(data.path(), plugins.path(), &backend.url(), &log);
    let done = wait_completed(&next, &task);
    // Claimed again (attempt 2), found committed, not run again: the
    // result is the committed one, with the note that says so.
    let notes = done["result"]["notes"].to_string();
    assert!(notes.contains("recovered after a restart"), "{done}");
    assert_eq!(done["result"]["rows_upserted"], after.len(), "{done}");
    assert_same_tags(&backend.tags(), &after);
}

/// [`wait_ended`], asserting the task completed.
fn wait_completed(process: &Process, task: &str) -> serde_json::Value {
    let status = wait_ended(&process.base, task);
    assert_eq!(status["status"], "completed", "{status}");
    status
}

/// Waits (up to `secs`) until `task`'s status, read through `process`,
/// satisfies `done`; the status.
fn wait_status(
    process: &Process,
    task: &str,
    secs: u64,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let status = process.status(task);
        if done(&status) {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "{task}: {status}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A server killed mid-run and started again takes its dead predecessor's
/// task back at once (its lease, 300 s, has far to run), and leaves alone
/// the task a live process on this host runs and the one leased by a
/// process of another host. Every task holds on tag 906's gate, so none
/// ends before the test has looked, however slow the machine.
fn a_restart_takes_back_its_dead_predecessors_tasks_at_once(backend: Backend) {
    let data = sample_data(2000);
    let plugins = reference_and_misbehaving_plugins();
    let log = data.path().join("server.log");
    let (url, lease) = (backend.url(), ["--task-lease-secs", "300"]);
    let running = |s: &serde_json::Value| s["status"] == "running";
    let mut one = lease.to_vec();
    one.extend(["--max-concurrent-tasks", "1"]);
    let live = Process::start_with(data.path(), plugins.path(), &url, &log, &one);
    let gate = data.path().join("gate");
    hold_tag_906_at(&live.base, &gate);
    let its = trigger(&live.base, json!({"tag_ids": [906, 3], "as_of": AS_OF}));
    wait_status(&live, &its, 60, running);
    let mut two = lease.to_vec();
    two.extend(["--max-concurrent-tasks", "2"]);
    let first = Process::start_with(data.path(), plugins.path(), &url, &log, &two);
    let mine = trigger(&first.base, json!({"tag_ids": [906, 1], "as_of": AS_OF}));
    let elsewhere = trigger(&first.base, json!({"tag_ids": [906, 2], "as_of": AS_OF}));
    wait_status(&first, &mine, 60, running);
    wait_status(&first, &elsewhere, 60, running);
    // `elsewhere` now looks leased by the same process id on another host
    // (the owner is `<host>-<pid>-<start>-<instance>`).
    let owner = &backend.texts(&format!(
        "SELECT owner FROM tasks WHERE task_id = '{elsewhere}'"
    ))[0];
    let foreign = format!("000000000000{}", &owner[12..]);
    backend.execute(
        &format!("UPDATE tasks SET owner = '{foreign}' WHERE task_id = '{elsewhere}'"),
        true,
    );
    drop(first);
    let second = Process::start_with(data.path(), plugins.path(), &url, &log, &lease);
    // Taken back at once: running again, on its second attempt, long before
    // its lease would have run out.
    let taken = wait_status(&second, &mine, 60, |s| running(s) && s["attempts"] == 2);
    assert_eq!(taken["attempts"], 2, "{taken}");
    let left = second.status(&elsewhere);
    assert_eq!(
        (&left["status"], &left["attempts"]),
        (&json!("running"), &json!(1)),
        "{left}"
    );
    let alive = second.status(&its);
    assert_eq!(
        (&alive["status"], &alive["attempts"]),
        (&json!("running"), &json!(1)),
        "{alive}"
    );
    assert_eq!(
        backend.texts(&format!(
            "SELECT owner FROM tasks WHERE task_id = '{elsewhere}'"
        )),
        [foreign]
    );
    // Released, the taken-back task and the live process's one complete.
    std::fs::write(&gate, b"").unwrap();
    wait_status(&second, &mine, 120, |s| s["status"] == "completed");
    wait_status(&live, &its, 120, |s| s["status"] == "completed");
}

fn cancels_reach_tasks_queued_or_running_in_another_process(backend: Backend) {
    let data = sample_data(3000);
    let named = [("misbehaving.so", fixture("misbehaving"))];
    let plugins = plugins_dir(&named);
    let log = data.path().join("server.log");
    let first = Process::start(data.path(), plugins.path(), &backend.url(), &log);
    // Five tasks held on tag 906's gate: three run in `first`, one in
    // `second` (one worker), one waits in both queues.
    let gate = data.path().join("gate");
    hold_tag_906_at(&first.base, &gate);
    let tasks: Vec<String> = (0..5)
        .map(|_| trigger(&first.base, json!({"tag_ids": [906], "as_of": AS_OF})))
        .collect();
    let count = |status: &str| {
        tasks
            .iter()
            .filter(|t| first.status(t)["status"] == status)
            .cloned()
            .collect::<Vec<_>>()
    };
    let wait_running = |n: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while count("running").len() < n {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    wait_running(3);
    let running = count("running")[0].clone();
    let second = Process::start_with(
        data.path(),
        plugins.path(),
        &backend.url(),
        &log,
        &["--max-concurrent-tasks", "1"],
    );
    wait_running(4);
    let waiting = count("submitted")[0].clone();
    let cancel = |task: &str| {
        let url = format!("{}/api/v1/tasks/{task}/cancel", second.base);
        let response = client().post(url).send().unwrap();
        let status = response.status().as_u16();
        if status >= 500 {
            eprintln!("cancel: {}", response.text().unwrap_or_default());
        }
        status
    };
    assert_eq!(cancel(&waiting), 200);
    // `running` runs in `first`: the request reaches it through the store.
    assert_eq!(cancel(&running), 202);
    // Once `first` has heard of the cancel (it says so in the log), the
    // released task stops at its next safe point.
    let heard = format!("task_id={running}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains("cancel requested through another process") && l.contains(&heard))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the cancel never reached the run"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::fs::write(&gate, b"").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while second.status(&running)["status"] == "running" {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            second.status(&running)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(second.status(&running)["status"], "cancelled");
    // The cancelled queued task never ran, though `first` had it queued too.
    std::thread::sleep(std::time::Duration::from_secs(5));
    let waited = second.status(&waiting);
    assert_eq!(
        (waited["status"].clone(), waited["attempts"].clone()),
        (json!("cancelled"), json!(0)),
        "{waited}"
    );
}

/// Finished tasks past the retention period are deleted at start; recent
/// ones stay.
fn finished_tasks_past_retention_are_deleted(backend: Backend) {
    let env = Env::new(backend, 200);
    let old = env.server.trigger(json!({"tag_ids": [7], "as_of": AS_OF}));
    let recent = env.server.trigger(json!({"tag_ids": [1], "as_of": AS_OF}));
    env.server.wait(&old);
    env.server.wait(&recent);
    let Env {
        data,
        plugins,
        backend,
        server,
    } = env;
    drop(server);
    backend.execute(
        &format!("UPDATE tasks SET completed_at = '2000-01-01T00:00:00' WHERE task_id = '{old}'"),
        true,
    );
    let env = Env::start(data, plugins, backend);
    let status = |id: &str| {
        env.server
            .get(&format!("/api/v1/tasks/{id}/status"))
            .unwrap()
            .0
    };
    assert_eq!(status(&old), 404, "deleted: it finished in 2000");
    assert_eq!(status(&recent), 200);
}

/// Tag ownership in the store: recorded once, replaced only by a transfer.
fn tag_owners_are_recorded_once_and_moved_only_by_a_transfer(backend: Backend) {
    let store = tag_host::store::open(&backend.url()).expect("open the store");
    let claims = [(1, "wealth".to_string()), (6, "wealth".to_string())];
    store.record_tag_owners(&claims).unwrap();
    store
        .record_tag_owners(&[(1, "usurper".to_string())])
        .unwrap();
    let owners = store.tag_owners().unwrap();
    assert_eq!(owners.len(), 2);
    assert_eq!(
        owners[&1], "wealth",
        "a recorded owner is never replaced by a claim"
    );
    assert_eq!(
        store.set_tag_owner(1, "usurper").unwrap().as_deref(),
        Some("wealth")
    );
    assert_eq!(store.set_tag_owner(950, "usurper").unwrap(), None);
    let owners = store.tag_owners().unwrap();
    assert_eq!(
        (
            owners[&1].as_str(),
            owners[&6].as_str(),
            owners[&950].as_str()
        ),
        ("usurper", "wealth", "usurper")
    );
}

/// The console's history: newest first, results kept, `user_ids` lists
/// emptied (a marker that the run covered some users only).
fn task_history_leaves_out_user_ids_lists(backend: Backend) {
    let env = Env::new(backend, 200);
    let full = env.server.trigger(json!({"tag_ids": [1], "as_of": AS_OF}));
    env.server.wait(&full);
    let users: Vec<String> = (1..=50).map(|i| format!("user_{i:06}")).collect();
    let some = env
        .server
        .trigger(json!({"tag_ids": [1, 7], "as_of": AS_OF, "user_ids": users}));
    env.server.wait(&some);
    let store = tag_host::store::open(&env.backend.url()).expect("open the store");
    let history = store.task_history(10).unwrap();
    let ids: Vec<&str> = history.iter().map(|t| t.task_id.as_str()).collect();
    assert_eq!(ids, [some.as_str(), full.as_str()], "newest first");
    assert_eq!(history[0].spec.user_ids, Some(Vec::new()));
    assert_eq!(history[0].spec.tag_ids, [1, 7]);
    assert_eq!(history[1].spec.user_ids, None);
    assert!(history.iter().all(|t| t.result.is_some()));
    let (listed, _) = store.list_tasks(None, 10, 0).unwrap();
    assert_eq!(listed[0].spec.user_ids.as_ref().map(Vec::len), Some(50));
    assert_eq!(listed[0].result, history[0].result);
    assert_eq!(store.task_history(1).unwrap().len(), 1);
}

/// Writes a tokens file named `name` in `dir` holding `lines`.
fn tokens_in(dir: &std::path::Path, name: &str, lines: &[String]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

fn console_sessions_are_shared_by_the_processes_on_one_store(backend: Backend) {
    let data = sample_data(200);
    let plugins = reference_plugins_dir();
    let work = tempfile::tempdir().unwrap();
    let (ops, viewer, auditor) = (
        "ops-backends-3f9a1c7e2d",
        "viewer-backends-8e2b4d6a0c",
        "auditor-backends-5c1e9b7f3a",
    );
    let first_tokens = tokens_in(
        work.path(),
        "first",
        &[
            format!("ops:admin:{ops}"),
            format!("viewer:read:{viewer}"),
            format!("auditor:read:{auditor}"),
        ],
    );
    // The second process's file: the auditor's token removed, the viewer's
    // replaced under the same name.
    let second_tokens = tokens_in(
        work.path(),
        "second",
        &[
            format!("ops:admin:{ops}"),
            format!("viewer:read:{viewer}-new"),
        ],
    );
    let log = work.path().join("server.log");
    let start = |tokens: &std::path::Path| {
        let flags = ["--tokens-file", tokens.to_str().unwrap()];
        Process::start_with(data.path(), plugins.path(), &backend.url(), &log, &flags)
    };
    let (first, second) = (start(&first_tokens), start(&second_tokens));
    let (as_ops, _) = console_sign_in(&first.base, ops);
    let (as_viewer, _) = console_sign_in(&first.base, viewer);
    let (as_auditor, _) = console_sign_in(&first.base, auditor);
    for cookie in [&as_ops, &as_viewer, &as_auditor] {
        assert_eq!(api_with_cookie(&first.base, "/api/v1/tasks", cookie), 200);
    }
    // A session opened in the first process works in the second.
    let (code, _, html) = get_with_cookie(&second.base, "/tasks", &as_ops);
    assert_eq!(code, 200);
    assert!(html.contains(r#"<span class="who">ops</span>"#), "{html}");
    assert_eq!(api_with_cookie(&second.base, "/api/v1/tasks", &as_ops), 200);
    // Not one whose token the second process does not hold as it was.
    assert_console_refuses(&second.base, &as_auditor);
    assert_console_refuses(&second.base, &as_viewer);
    // A sign-out in the second ends the session in both.
    let out = client()
        .delete(format!("{}/console/session", second.base))
        .header("cookie", &as_ops)
        .send()
        .unwrap();
    assert_eq!(out.status().as_u16(), 200);
    assert_console_refuses(&first.base, &as_ops);
    assert_console_refuses(&second.base, &as_ops);
    assert_eq!(
        api_with_cookie(&first.base, "/api/v1/tasks", &as_viewer),
        200
    );
}

on_every_backend!(
    full_runs_equal_the_oracle_and_a_rerun_writes_nothing,
    a_user_ids_run_touches_only_those_users,
    a_changed_rule_revokes_and_leaves_other_tags,
    an_incremental_run_equals_a_full_one,
    overlapping_runs_lose_nothing,
    a_failure_mid_write_leaves_nothing,
    a_restart_finishes_committed_tasks_and_runs_queued_ones,
    a_task_that_kills_the_server_is_failed_after_its_second_crash,
    three_processes_share_the_queue_and_take_over_from_one_killed_mid_run,
    a_restart_takes_back_its_dead_predecessors_tasks_at_once,
    cancels_reach_tasks_queued_or_running_in_another_process,
    tag_owners_are_recorded_once_and_moved_only_by_a_transfer,
    task_history_leaves_out_user_ids_lists,
    finished_tasks_past_retention_are_deleted,
    console_sessions_are_shared_by_the_processes_on_one_store,
);

/// `tag-server run` against a `scheme://` store on a closed port fails,
/// naming the URL without its password.
fn assert_unreachable_store_named(scheme: &str) {
    let data = tempfile::tempdir().unwrap();
    let url = format!("{scheme}://tagger:s3cret@127.0.0.1:1/tags");
    let dir = data.path().display().to_string();
    let (code, out, err) =
        tag_server(&["run", "--tag-ids", "1", "--data-dir", &dir, "--store", &url]);
    assert_ne!(code, 0, "{out}");
    let shown = format!("cannot connect to {scheme}://tagger@127.0.0.1:1/tags");
    assert!(err.contains(&shown), "{err}");
    assert!(!err.contains("s3cret") && !out.contains("s3cret"), "{err}");
}

#[test]
fn an_unreachable_store_is_named_without_its_password() {
    assert_unreachable_store_named("postgres");
}

#[test]
fn a_database_from_a_newer_server_is_refused_and_a_second_start_changes_nothing() {
    let backend = Backend::postgres();
    let first = tag_host::store::open(&backend.url()).expect("migrate a new database");
    drop(first);
    let count = |backend: &Backend| {
        let mut client = ::postgres::Client::connect(&backend.url(), ::postgres::NoTls).unwrap();
        client
            .query_one("SELECT COUNT(*) FROM schema_migrations", &[])
            .unwrap()
            .get::<_, i64>(0)
    };
    let migrated = count(&backend);
    assert!(migrated >= 1);
    drop(tag_host::store::open(&backend.url()).expect("open again"));
    assert_eq!(count(&backend), migrated);
    backend.execute("INSERT INTO schema_migrations VALUES (999, 'later')", false);
    let Err(err) = tag_host::store::open(&backend.url()) else {
        panic!("a newer schema must be refused");
    };
    assert!(err.to_string().contains("schema version 999"), "{err}");
}

#[test]
fn an_unreachable_mariadb_is_named_without_its_password() {
    assert_unreachable_store_named("mysql");
}

/// The network store goes away under a running server (every connection
/// cut, new ones refused) while a task runs, and comes back: `/health` says
/// 503 naming the store without its password, a trigger meanwhile gets 503
/// (not 500), and the running task, which reaches its write while the store
/// is away, completes once the store is back.
fn a_store_that_goes_away_is_reported_and_nothing_accepted_is_lost(backend: Backend) {
    let (proxy, url) = proxied(&backend);
    let data = sample_data(600);
    let plugins = reference_and_misbehaving_plugins();
    let server = TestServer::start_with_store(
        data.path(),
        plugins.path(),
        &url,
        &["--task-lease-secs", "2"],
    );
    // Tag 906 holds the task inside the plugin until the gate file exists.
    let gate = data.path().join("gate");
    hold_tag_906_at(&server.base, &gate);
    let all = json!({"tag_ids": [1, 2, 3, 4, 5, 6, 7, 8, 906], "as_of": AS_OF});
    let accepted = server.trigger(all.clone());
    wait_entered(&gate);
    let (_, status) = server
        .get(&format!("/api/v1/tasks/{accepted}/status"))
        .unwrap();
    assert_eq!(status["status"]["status"], "running", "{status}");
    proxy.cut();

    let (code, health) = server.get("/health").unwrap();
    assert_eq!(code, 503, "{health}");
    let error = health["error"].as_str().unwrap();
    assert!(error.contains(&proxy.addr.to_string()), "{error}");
    assert!(!error.contains("hunter2"), "{error}");
    let (code, refused) = server.post("/api/v1/tags/trigger", &all);
    assert_eq!(code, 503, "{refused}");
    assert_eq!(refused["success"], false);
    // The body says what kind of failure and quotes the request id; the
    // driver's words (addresses, SQL) stay in the log.
    let error = refused["error"].as_str().unwrap();
    assert!(error.starts_with("the store"), "{refused}");
    assert!(
        !error.contains("127.0.0.1") && !error.contains("hunter2"),
        "{refused}"
    );
    assert_eq!(
        refused["request_id"].as_str().map(str::len),
        Some(32),
        "{refused}"
    );
    // The task goes on to its write while the store is away.
    std::fs::write(&gate, b"").unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));

    proxy.restore();
    wait_healthy(&server);
    let done = server.wait(&accepted);
    assert_eq!(done["status"], "completed", "{done}");
    let expected = oracle::expected(data.path(), as_of(), &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_same_tags(&backend.tags(), &expected);
}

/// A proxy in front of `backend`'s server and the store URL through it
/// (with a password for PostgreSQL, which trust authentication ignores: it
/// only has to stay hidden).
fn proxied(backend: &Backend) -> (support::proxy::Proxy, String) {
    let direct = backend.url();
    let target = if direct.starts_with("postgres") {
        "127.0.0.1:5432"
    } else {
        "127.0.0.1:3306"
    };
    let proxy = support::proxy::Proxy::start(target.parse().unwrap());
    let mut url = direct.replace(target, &proxy.addr.to_string());
    if url.starts_with("postgres") {
        url = url.replace("postgres@", "postgres:hunter2@");
    } else {
        // Or the client would reconnect through MariaDB's local socket.
        url.push_str("?prefer_socket=false");
    }
    (proxy, url)
}

/// Waits until `/health` answers 200.
fn wait_healthy(server: &TestServer) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while server.get("/health").unwrap().0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "store never came back"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A store down when the server starts: the server still starts, answers
/// `/health` 503 naming the store without its password and every other
/// request 503 in the seed's format, and serves the API once the store is up.
fn a_store_down_at_start_is_waited_for(backend: Backend) {
    let (proxy, url) = proxied(&backend);
    proxy.cut();
    let data = sample_data(300);
    let plugins = reference_plugins_dir();
    let server = TestServer::start_with_store(data.path(), plugins.path(), &url, &[]);
    let (code, health) = server.get("/health").unwrap();
    assert_eq!(code, 503, "{health}");
    let error = health["error"].as_str().unwrap();
    assert!(
        error.contains(&proxy.addr.to_string()) && !error.contains("hunter2"),
        "{error}"
    );
    let (code, refused) = server.get("/api/v1/tags/available").unwrap();
    assert_eq!(
        (code, &refused["success"]),
        (503, &json!(false)),
        "{refused}"
    );

    proxy.restore();
    wait_healthy(&server);
    let result = server.run(json!({"tag_ids": [1, 7], "as_of": AS_OF}));
    assert_eq!(result["tags"][0]["tag_id"], 1);
    assert_same_tags(
        &backend.tags(),
        &oracle::expected(data.path(), as_of(), &[1, 7]),
    );
}

/// A store that stops answering (connections open, no reply): a request
/// waiting on it is answered 503 after the request timeout, not held.
fn a_stalled_store_times_requests_out(backend: Backend) {
    let (proxy, url) = proxied(&backend);
    let data = sample_data(100);
    let plugins = reference_plugins_dir();
    let server = TestServer::start_with_store(
        data.path(),
        plugins.path(),
        &url,
        &["--request-timeout-secs", "1"],
    );
    assert_eq!(server.get("/api/v1/tasks").unwrap().0, 200);
    proxy.stall();
    let started = std::time::Instant::now();
    let (code, reply) = server.get("/api/v1/tasks").unwrap();
    let waited = started.elapsed();
    assert_eq!((code, &reply["success"]), (503, &json!(false)), "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("longer than 1 s"),
        "{reply}"
    );
    assert!(waited < std::time::Duration::from_secs(5), "{waited:?}");
    proxy.resume();
}

/// Runs stopped while they write or inside their commit, on the network
/// stores (the test holds a lock the run waits on; SQLite takes its write
/// lock before it reads, so there is none to hold mid-run).
mod stopped_mid_write {
    use super::{
        a_run_stopped_while_it_writes_or_commits_is_all_or_nothing as scenario, Backend, HeldIn,
        StopBy,
    };

    #[test]
    fn postgres_killed() {
        scenario(Backend::postgres(), StopBy::Kill, HeldIn::Committing)
    }

    #[test]
    fn postgres_cancelled() {
        scenario(Backend::postgres(), StopBy::Cancel, HeldIn::Committing)
    }

    #[test]
    fn mariadb_killed() {
        scenario(Backend::mysql(), StopBy::Kill, HeldIn::Committing)
    }

    #[test]
    fn mariadb_cancelled() {
        scenario(Backend::mysql(), StopBy::Cancel, HeldIn::Committing)
    }

    #[test]
    fn postgres_killed_while_writing() {
        scenario(Backend::postgres(), StopBy::Kill, HeldIn::Writing)
    }

    #[test]
    fn postgres_cancelled_while_writing() {
        scenario(Backend::postgres(), StopBy::Cancel, HeldIn::Writing)
    }

    #[test]
    fn mariadb_killed_while_writing() {
        scenario(Backend::mysql(), StopBy::Kill, HeldIn::Writing)
    }

    #[test]
    fn mariadb_cancelled_while_writing() {
        scenario(Backend::mysql(), StopBy::Cancel, HeldIn::Writing)
    }

    #[test]
    fn postgres_killed_after_it() {
        super::a_process_killed_just_after_its_commit_reports_what_it_committed(Backend::postgres())
    }

    #[test]
    fn mariadb_killed_after_it() {
        super::a_process_killed_just_after_its_commit_reports_what_it_committed(Backend::mysql())
    }
}

mod store_outage {
    #[test]
    fn postgres_stalled() {
        super::a_stalled_store_times_requests_out(super::Backend::postgres())
    }

    #[test]
    fn postgres_down_at_start() {
        super::a_store_down_at_start_is_waited_for(super::Backend::postgres())
    }

    #[test]
    fn mariadb_down_at_start() {
        super::a_store_down_at_start_is_waited_for(super::Backend::mysql())
    }

    #[test]
    fn postgres() {
        super::a_store_that_goes_away_is_reported_and_nothing_accepted_is_lost(
            super::Backend::postgres(),
        )
    }

    #[test]
    fn mariadb() {
        super::a_store_that_goes_away_is_reported_and_nothing_accepted_is_lost(
            super::Backend::mysql(),
        )
    }
}
