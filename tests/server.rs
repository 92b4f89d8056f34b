//! The server end to end over HTTP: the seed's endpoints, a full run checked
//! against an independent computation, the run semantics of tags.md, trigger
//! validation, and faults that fail a task without touching results.

mod support;

use serde_json::{json, Value};
use std::path::Path;
use support::*;
use tag_host::data::gen::{gen_data_with, GenOptions};
use tag_plugin_api::Date;

const AS_OF: &str = "2025-01-15";
const ALL: [u32; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

fn as_of() -> i32 {
    Date::parse(AS_OF).unwrap().days()
}

/// Sample data for `users` users: nulls, threshold values and duplicate rows mixed in.
fn data(users: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let options = GenOptions {
        users,
        seed: 7,
        reference_date: as_of(),
        row_group_rows: 997,
        duplicates: 40,
        ..GenOptions::default()
    };
    gen_data_with(dir.path(), &options).expect("generate data");
    dir
}

struct Env {
    data: tempfile::TempDir,
    _plugins: tempfile::TempDir,
    _db_dir: tempfile::TempDir,
    server: TestServer,
}

fn env_with(users: usize, plugins: tempfile::TempDir, extra: &[&str]) -> Env {
    let data = data(users);
    let db_dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        data.path(),
        plugins.path(),
        &db_dir.path().join("tags.db"),
        extra,
    );
    Env {
        data,
        _plugins: plugins,
        _db_dir: db_dir,
        server,
    }
}

fn env(users: usize) -> Env {
    env_with(users, reference_plugins_dir(), &[])
}

fn all_tags() -> Value {
    json!({"tag_ids": ALL, "mode": "full", "as_of": AS_OF})
}

#[test]
fn a_full_run_equals_an_independent_computation_and_a_rerun_changes_nothing() {
    let env = env(3000);
    let result = env.server.run(all_tags());
    let expected = oracle::expected(env.data.path(), as_of(), &ALL);
    assert_same_tags(&user_tags(&env.server.db), &expected);
    assert_eq!(result["total_users"], 3000, "{result}");
    assert_eq!(result["message"], "Successfully processed 3000 users");
    assert_eq!(
        result["rows_upserted"].as_u64().unwrap() as usize,
        expected.len()
    );
    assert!(
        result["duplicates_dropped"]["user_basic_info"]
            .as_u64()
            .unwrap()
            >= 40,
        "{result}"
    );
    for tag in result["tags"].as_array().unwrap() {
        let id = tag["tag_id"].as_u64().unwrap() as u32;
        let holders = expected.values().filter(|ids| ids.contains(&id)).count();
        assert_eq!(
            tag["matched"].as_u64().unwrap() as usize,
            holders,
            "tag {id}"
        );
        assert_eq!(tag["added"], tag["matched"]);
    }
    // Every tag matches someone and misses someone: the data exercises each rule.
    for id in ALL {
        let holders = expected.values().filter(|ids| ids.contains(&id)).count();
        assert!(
            holders > 0 && holders < 3000,
            "tag {id} has {holders} holders"
        );
    }

    let before = user_tag_rows(&env.server.db);
    let details: Value = serde_json::from_str(&before[0].2).unwrap();
    let first = details.as_object().unwrap().values().next().unwrap();
    assert!(
        first["tag_name"].is_string()
            && first["tag_category"].is_string()
            && first["rule_version"] == 1,
        "{details}"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let again = env.server.run(all_tags());
    assert_eq!(
        (
            again["rows_upserted"].as_u64(),
            again["rows_deleted"].as_u64()
        ),
        (Some(0), Some(0)),
        "{again}"
    );
    assert_eq!(
        user_tag_rows(&env.server.db),
        before,
        "an unchanged rerun must not touch any row"
    );
}

#[test]
fn a_user_ids_run_touches_only_those_users_and_reports_unknown_ids() {
    let env = env(800);
    let expected = oracle::expected(env.data.path(), as_of(), &[1, 6, 7]);
    let chosen: Vec<String> = expected.keys().take(3).cloned().collect();
    let mut ids = chosen.clone();
    ids.push("no_such_user".into());
    let result = env
        .server
        .run(json!({"tag_ids": [1, 6, 7], "user_ids": ids, "as_of": AS_OF}));
    assert_eq!(result["total_users"], 3);
    assert_eq!(
        result["unknown_user_ids"],
        json!({"count": 1, "sample": ["no_such_user"]})
    );
    let stored = user_tags(&env.server.db);
    let want: std::collections::BTreeMap<_, _> = chosen
        .iter()
        .map(|u| (u.clone(), expected[u].clone()))
        .collect();
    assert_eq!(stored, want);
}

#[test]
fn a_changed_rule_revokes_the_tag_and_leaves_other_tags_alone() {
    let env = env(1000);
    env.server.run(json!({"tag_ids": [1, 6], "as_of": AS_OF}));
    let before = user_tags(&env.server.db);
    let holders_of_6 = before.values().filter(|t| t.contains(&6)).count();
    assert!(holders_of_6 > 0);

    let (code, reply) = put_rule(
        &env.server,
        6,
        json!({"field": "cash_balance", "operator": ">=", "value": 1e12}),
    );
    assert_eq!(code, 200, "{reply}");
    assert_eq!(
        (&reply["rule"]["version"], &reply["changed"]),
        (&json!(2), &json!(true))
    );
    // The same rule again (keys in another order, wrapped): no new version.
    let (code, reply) = put_rule(
        &env.server,
        6,
        json!({"rule": {"value": 1e12, "operator": ">=", "field": "cash_balance"}}),
    );
    assert_eq!(code, 200, "{reply}");
    assert_eq!(
        (&reply["rule"]["version"], &reply["changed"]),
        (&json!(2), &json!(false))
    );
    let result = env.server.run(json!({"tag_ids": [6], "as_of": AS_OF}));
    assert_eq!(
        result["tags"][0]["removed"].as_u64().unwrap() as usize,
        holders_of_6,
        "{result}"
    );
    assert_eq!(result["tags"][0]["rule_version"], 2);
    let after = user_tags(&env.server.db);
    let want: std::collections::BTreeMap<_, _> = before
        .iter()
        .filter_map(|(u, t)| {
            let kept: Vec<u32> = t.iter().copied().filter(|id| *id != 6).collect();
            (!kept.is_empty()).then(|| (u.clone(), kept))
        })
        .collect();
    assert_eq!(
        after, want,
        "tag 6 revoked everywhere, tag 1 untouched, empty rows deleted"
    );

    let (code, reply) = put_rule(
        &env.server,
        6,
        json!({"field": "cash", "operator": ">=", "value": 1}),
    );
    assert_eq!(code, 400, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("unknown field \"cash\""),
        "{reply}"
    );
}

fn put_rule(server: &TestServer, tag: u32, rule: Value) -> (u16, Value) {
    let response = client()
        .put(format!("{}/api/v1/tags/{tag}/rule", server.base))
        .json(&rule)
        .send()
        .unwrap();
    (response.status().as_u16(), response.json().unwrap())
}

#[test]
fn concurrent_runs_on_the_same_users_lose_nothing() {
    let env = env(2000);
    let a = env
        .server
        .trigger(json!({"tag_ids": [1, 2, 3, 4], "as_of": AS_OF}));
    let b = env
        .server
        .trigger(json!({"tag_ids": [5, 6, 7, 8], "as_of": AS_OF}));
    let c = env
        .server
        .trigger(json!({"tag_ids": [2, 7], "as_of": AS_OF, "priority": "high"}));
    for id in [a, b, c] {
        assert_eq!(env.server.wait(&id)["status"], "completed");
    }
    assert_same_tags(
        &user_tags(&env.server.db),
        &oracle::expected(env.data.path(), as_of(), &ALL),
    );
}

/// Reads `<table>.parquet` in `dir`, lets `edit` change it, writes it back;
/// returns what `edit` returned.
fn rewrite_table<R>(
    dir: &Path,
    table: &str,
    edit: impl FnOnce(&mut polars::prelude::DataFrame) -> R,
) -> R {
    use polars::prelude::*;
    let path = dir.join(format!("{table}.parquet"));
    let mut df = ParquetReader::new(std::fs::File::open(&path).unwrap())
        .finish()
        .unwrap();
    let out = edit(&mut df);
    ParquetWriter::new(std::fs::File::create(&path).unwrap())
        .finish(&mut df)
        .unwrap();
    out
}

/// Rewrites `user_activity_summary` so that the first `n` users trade a lot
/// and have a newer updated_time; returns their ids.
fn touch_activity(dir: &Path, n: usize) -> Vec<String> {
    use polars::prelude::*;
    rewrite_table(dir, "user_activity_summary", |df| {
        let ids: Vec<String> = df
            .column("user_id")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .take(n)
            .map(|s| s.unwrap().to_string())
            .collect();
        let height = df.height();
        let trades: Int32Chunked = df
            .column("trade_count_30d")
            .unwrap()
            .i32()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, v)| if i < n { Some(500) } else { v })
            .collect();
        let newest = df
            .column("updated_time")
            .unwrap()
            .datetime()
            .unwrap()
            .physical()
            .max()
            .unwrap();
        let stamps: Int64Chunked = df
            .column("updated_time")
            .unwrap()
            .datetime()
            .unwrap()
            .physical()
            .iter()
            .enumerate()
            .map(|(i, v)| if i < n { Some(newest + 1_000_000) } else { v })
            .collect();
        df.with_column(trades.with_name("trade_count_30d".into()).into_column())
            .unwrap();
        df.with_column(
            stamps
                .with_name("updated_time".into())
                .into_datetime(TimeUnit::Microseconds, None)
                .into_column(),
        )
        .unwrap();
        assert_eq!(df.height(), height);
        ids
    })
}

/// Universe users and, among them, those whose newest universe row has no
/// `updated_time` (an incremental run cannot know whether they changed).
fn universe_users(
    dir: &Path,
) -> (
    std::collections::HashSet<String>,
    std::collections::HashSet<String>,
) {
    use polars::prelude::*;
    let path = dir.join("user_basic_info.parquet");
    let df = ParquetReader::new(std::fs::File::open(path).unwrap())
        .finish()
        .unwrap();
    let ids = df.column("user_id").unwrap().str().unwrap().clone();
    let times = df
        .column("updated_time")
        .unwrap()
        .datetime()
        .unwrap()
        .physical()
        .clone();
    let mut timed: std::collections::HashMap<String, bool> = Default::default();
    for (id, time) in ids.iter().zip(times.iter()) {
        if let Some(id) = id {
            *timed.entry(id.to_string()).or_default() |= time.is_some();
        }
    }
    let untimed = timed
        .iter()
        .filter(|(_, t)| !**t)
        .map(|(id, _)| id.clone())
        .collect();
    (timed.into_keys().collect(), untimed)
}

#[test]
fn an_incremental_run_evaluates_changed_users_with_a_full_runs_outcome() {
    let env = env(1500);
    env.server.run(json!({"tag_ids": [2, 8], "as_of": AS_OF}));
    let changed = touch_activity(env.data.path(), 25);
    let (universe, untimed) = universe_users(env.data.path());
    let changed_in_universe: Vec<&String> =
        changed.iter().filter(|u| universe.contains(*u)).collect();
    assert!(
        !untimed.is_empty() && changed_in_universe.len() >= 20,
        "{untimed:?} {changed_in_universe:?}"
    );
    let result = env
        .server
        .run(json!({"tag_ids": [2, 8], "mode": "incremental", "as_of": AS_OF}));
    // Exactly the changed users and those whose change cannot be known.
    let mut expected = untimed.clone();
    expected.extend(changed_in_universe.iter().map(|u| u.to_string()));
    assert_eq!(
        result["tags"][0]["evaluated_users"].as_u64(),
        Some(expected.len() as u64),
        "{result}"
    );
    assert_eq!(result["tags"][0]["scope"], "changed users");
    let notes = result["notes"][0].as_str().unwrap_or_default();
    assert!(notes.contains("date windows"), "{result}");
    // The outcome equals a full run on the new data.
    let stored = user_tags(&env.server.db);
    assert_same_tags(
        &stored,
        &oracle::expected(env.data.path(), as_of(), &[2, 8]),
    );
    // Every changed user now trades a lot: each holds tag 2.
    for user in changed_in_universe {
        assert!(
            stored.get(user).is_some_and(|tags| tags.contains(&2)),
            "{user}"
        );
    }
    // With nothing changed, a second incremental run evaluates only users
    // whose universe row carries no updated_time, and writes nothing.
    let idle = env
        .server
        .run(json!({"tag_ids": [2, 8], "mode": "incremental", "as_of": AS_OF}));
    assert_eq!(
        idle["total_users"].as_u64(),
        Some(untimed.len() as u64),
        "{idle}"
    );
    assert_eq!(
        (
            idle["rows_upserted"].as_u64(),
            idle["rows_deleted"].as_u64()
        ),
        (Some(0), Some(0)),
        "{idle}"
    );
}

/// Moves `<table>.parquet` into `<table>/part-000.parquet` and writes the
/// first `n` rows again, with `trade_count_30d` 500 and a newer
/// `updated_time`, as `part-001.parquet`: a data lake's daily delivery.
fn new_activity_part(dir: &Path, n: usize) -> Vec<String> {
    use polars::prelude::*;
    let parts = dir.join("user_activity_summary");
    std::fs::create_dir(&parts).unwrap();
    let old = parts.join("part-000.parquet");
    std::fs::rename(dir.join("user_activity_summary.parquet"), &old).unwrap();
    let df = ParquetReader::new(std::fs::File::open(&old).unwrap())
        .finish()
        .unwrap();
    let newest = df
        .column("updated_time")
        .unwrap()
        .datetime()
        .unwrap()
        .physical()
        .max()
        .unwrap();
    let mut head = df.head(Some(n));
    let trades = Int32Chunked::full("trade_count_30d".into(), 500, n);
    let stamps = Int64Chunked::full("updated_time".into(), newest + 1_000_000, n)
        .into_datetime(TimeUnit::Microseconds, None);
    head.with_column(trades.into_column()).unwrap();
    head.with_column(stamps.into_column()).unwrap();
    ParquetWriter::new(std::fs::File::create(parts.join("part-001.parquet")).unwrap())
        .finish(&mut head)
        .unwrap();
    head.column("user_id")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .flatten()
        .map(str::to_string)
        .collect()
}

#[test]
fn an_incremental_run_over_a_new_part_file_skips_row_groups_that_cannot_have_changed() {
    let env = env(3000);
    env.server.run(all_tags());
    let changed = new_activity_part(env.data.path(), 40);
    let result = env
        .server
        .run(json!({"tag_ids": ALL, "mode": "incremental", "as_of": AS_OF}));
    assert_same_tags(
        &user_tags(&env.server.db),
        &oracle::expected(env.data.path(), as_of(), &ALL),
    );
    // Statistics rule out the old activity part and every asset row group;
    // the universe's row groups hold rows without a time, so they are read.
    let groups = &result["changed_row_groups"];
    let (read, total) = (
        groups["read"].as_u64().unwrap(),
        groups["total"].as_u64().unwrap(),
    );
    assert!(read < total / 2, "{result}");
    let stored = user_tags(&env.server.db);
    let (universe, _) = universe_users(env.data.path());
    for user in changed.iter().filter(|u| universe.contains(*u)) {
        assert!(stored[user].contains(&2), "{user}");
    }
    // The next incremental run sees the new watermark: nothing new to write.
    let idle = env
        .server
        .run(json!({"tag_ids": ALL, "mode": "incremental", "as_of": AS_OF}));
    assert_eq!(
        (
            idle["rows_upserted"].as_u64(),
            idle["rows_deleted"].as_u64()
        ),
        (Some(0), Some(0)),
        "{idle}"
    );
}

#[test]
fn every_invalid_trigger_is_a_400_with_a_precise_message() {
    let env = env(50);
    let cases: Vec<(&str, &str)> = vec![
        ("", "Request body is required"),
        ("{not json", "must be valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ("{}", "tag_ids is required"),
        (r#"{"tag_ids": []}"#, "tag_ids must not be empty"),
        (r#"{"tag_ids": 1}"#, "tag_ids must be a list"),
        (r#"{"tag_ids": [true]}"#, "item 0 is true"),
        (r#"{"tag_ids": [1.5]}"#, "item 0 is 1.5"),
        (r#"{"tag_ids": ["1"]}"#, "item 0 is \"1\""),
        (r#"{"tag_ids": [-1]}"#, "item 0 is -1"),
        (r#"{"tag_ids": [1, 999]}"#, "Invalid tag_ids: [999]"),
        (
            r#"{"tag_ids": [1], "user_ids": "u1"}"#,
            "user_ids must be a list",
        ),
        (r#"{"tag_ids": [1], "user_ids": [""]}"#, "item 0 is \"\""),
        (r#"{"tag_ids": [1], "user_ids": [1]}"#, "item 0 is 1"),
        (r#"{"tag_ids": [1], "mode": "fast"}"#, "mode must be"),
        (r#"{"tag_ids": [1], "mode": 1}"#, "mode must be a string"),
        (
            r#"{"tag_ids": [1], "priority": "urgent"}"#,
            "priority must be",
        ),
        (
            r#"{"tag_ids": [1], "as_of": "2025-02-30"}"#,
            "as_of must be a YYYY-MM-DD date",
        ),
        (
            r#"{"tag_ids": [1], "as_of": 20250101}"#,
            "as_of must be a YYYY-MM-DD date",
        ),
    ];
    for (body, expected) in cases {
        let (code, reply) = env.server.post_raw("/api/v1/tags/trigger", body);
        assert_eq!(code, 400, "{body}: {reply}");
        assert_eq!(reply["success"], false);
        let error = reply["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(expected),
            "{body}: got {error:?}, wanted {expected:?}"
        );
        assert!(
            reply["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{reply}"
        );
    }
    let (_, reply) = env
        .server
        .post_raw("/api/v1/tags/trigger", r#"{"tag_ids": [999]}"#);
    assert_eq!(reply["message"], "无效的标签ID: [999]");
    assert_eq!(reply["available_tag_ids"], json!(ALL));

    let too_many: Vec<String> = (0..11).map(|i| format!("u{i}")).collect();
    let small = TestServer::start(
        env.data.path(),
        env._plugins.path(),
        &env._db_dir.path().join("other.db"),
        &["--max-user-ids", "10"],
    );
    let (code, reply) = small.post(
        "/api/v1/tags/trigger",
        &json!({"tag_ids": [1], "user_ids": too_many}),
    );
    assert_eq!(code, 400);
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("the maximum is 10"),
        "{reply}"
    );

    // Duplicates collapse; valid extras are echoed.
    let (code, reply) = env.server.post(
        "/api/v1/tags/trigger",
        &json!({"tag_ids": [3, 1, 3], "priority": "low", "as_of": AS_OF}),
    );
    assert_eq!(code, 202, "{reply}");
    assert_eq!(reply["data"]["tag_ids"], json!([1, 3]));
    assert_eq!(reply["message"], "标签任务已成功提交");
}

#[test]
fn tasks_are_listed_newest_first_and_unknown_ids_are_404() {
    let env = env(100);
    let first = env.server.trigger(json!({"tag_ids": [1]}));
    let second = env.server.trigger(json!({"tag_ids": [2]}));
    env.server.wait(&first);
    env.server.wait(&second);
    let (code, list) = env.server.get("/api/v1/tasks").unwrap();
    assert_eq!(code, 200);
    let ids: Vec<&str> = list["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second.as_str(), first.as_str()]);
    let (_, page) = env
        .server
        .get("/api/v1/tasks?status=completed&limit=1&offset=1")
        .unwrap();
    assert_eq!(page["tasks"][0]["task_id"], first.as_str());
    assert_eq!(page["total"], 2);
    let (code, bad) = env.server.get("/api/v1/tasks?status=done").unwrap();
    assert_eq!(code, 400, "{bad}");

    // Summaries: a user_ids list is counted, not copied.
    let id = env
        .server
        .trigger(json!({"tag_ids": [1], "user_ids": ["u1", "u2", "u3"]}));
    env.server.wait(&id);
    let (_, list) = env.server.get("/api/v1/tasks?limit=1").unwrap();
    let summary = &list["tasks"][0];
    assert_eq!(summary["task_id"], json!(id));
    assert!(summary.get("user_ids").is_none(), "{summary}");
    assert_eq!(summary["user_ids_count"], 3);
    let (_, full) = env
        .server
        .get(&format!("/api/v1/tasks/{id}/status"))
        .unwrap();
    assert_eq!(full["status"]["user_ids"], json!(["u1", "u2", "u3"]));
    let (code, missing) = env.server.get("/api/v1/tasks/no-such-task/status").unwrap();
    assert_eq!(code, 404);
    assert_eq!(missing["success"], false);
    assert!(missing["error"].as_str().unwrap().contains("no-such-task"));

    let (_, status) = env
        .server
        .get(&format!("/api/v1/tasks/{first}/status"))
        .unwrap();
    for key in [
        "task_id",
        "tag_ids",
        "user_ids",
        "mode",
        "environment",
        "status",
        "submitted_at",
        "started_at",
        "completed_at",
        "result",
    ] {
        assert!(
            status["status"].get(key).is_some(),
            "status lacks {key}: {status}"
        );
    }
    let (code, health) = env.server.get("/health").unwrap();
    assert_eq!(
        (
            code,
            health["status"].as_str(),
            health["environment"].as_str()
        ),
        (200, Some("healthy"), Some("local"))
    );
    let (_, available) = env.server.get("/api/v1/tags/available").unwrap();
    assert_eq!(
        available["available_tags"][0],
        json!({"tag_id": 1, "task_class": "HighNetWorthUserTask", "description": "高净值用户", "category": "财富类", "version": "0.1.0"})
    );
}

fn assert_failed_without_writes(env: &Env, body: Value, reason: &str) {
    let before = user_tag_rows(&env.server.db);
    let id = env.server.trigger(body);
    let status = env.server.wait(&id);
    assert_eq!(status["status"], "failed", "{status}");
    let error = status["error"].as_str().unwrap();
    assert!(
        error.contains(reason),
        "error {error:?} should name {reason:?}"
    );
    assert_eq!(
        user_tag_rows(&env.server.db),
        before,
        "a failed task writes nothing"
    );
    assert_eq!(
        env.server.get("/health").unwrap().0,
        200,
        "the server still serves"
    );
}

#[test]
fn a_faulty_tag_fails_alone_and_a_retry_runs_only_the_failed_tags() {
    let plugins = plugins_dir(&[
        ("wealth.so", plugin("wealth")),
        ("misbehaving.so", fixture("misbehaving")),
    ]);
    let env = env_with(500, plugins, &[]);
    env.server.run(json!({"tag_ids": [1], "as_of": AS_OF}));

    // Tag 6 is new and computes; tag 901's plugin panics.
    let id = env
        .server
        .trigger(json!({"tag_ids": [6, 901], "as_of": AS_OF}));
    let status = env.server.wait(&id);
    assert_eq!(
        status["status"], "failed",
        "seed clients see a failure: {status}"
    );
    let error = status["error"].as_str().unwrap();
    assert!(
        error.contains("tags [901] failed")
            && error.contains("tag 901: plugin panicked: fixture tag 901 always panics"),
        "{error}"
    );
    let result = &status["result"];
    assert_eq!(result["failed_tags"], json!([901]));
    let (six, bad) = (&result["tags"][0], &result["tags"][1]);
    assert_eq!(
        (&six["tag_id"], &six["status"]),
        (&json!(6), &json!("completed"))
    );
    assert!(six["added"].as_u64().unwrap() > 0, "{six}");
    assert_eq!(
        (&bad["tag_id"], &bad["status"]),
        (&json!(901), &json!("failed"))
    );
    assert!(bad["error"].as_str().unwrap().contains("always panics"));
    // Tag 6's results are committed beside tag 1's.
    assert_same_tags(
        &user_tags(&env.server.db),
        &oracle::expected(env.data.path(), as_of(), &[1, 6]),
    );

    // The retry queues only tag 901, with the same as_of, and links back.
    let (code, retried) = env
        .server
        .post(&format!("/api/v1/tasks/{id}/retry"), &json!({}));
    assert_eq!(code, 202, "{retried}");
    assert_eq!(retried["retry_of"], json!(id));
    assert_eq!(retried["data"]["tag_ids"], json!([901]));
    assert_eq!(retried["data"]["as_of"], json!(AS_OF));
    let again = env.server.wait(retried["task_id"].as_str().unwrap());
    assert_eq!(
        (&again["status"], &again["retry_of"]),
        (&json!("failed"), &json!(id))
    );

    // A plugin error and a wrong-length mask fail their tag the same way;
    // a task whose every tag fails writes nothing.
    let id = env
        .server
        .trigger(json!({"tag_ids": [1, 902], "as_of": AS_OF}));
    let status = env.server.wait(&id);
    assert_eq!(status["result"]["failed_tags"], json!([902]), "{status}");
    assert!(status["error"]
        .as_str()
        .unwrap()
        .contains("tag 902: plugin returned an error: fixture tag 902 always fails"));
    assert_failed_without_writes(
        &env,
        json!({"tag_ids": [903]}),
        "tag 903: plugin returned a mask of",
    );

    // Only a failed task can be retried.
    let done = env.server.trigger(json!({"tag_ids": [1], "as_of": AS_OF}));
    env.server.wait(&done);
    let (code, body) = env
        .server
        .post(&format!("/api/v1/tasks/{done}/retry"), &json!({}));
    assert_eq!((code, &body["success"]), (409, &json!(false)), "{body}");
    let (code, _) = env
        .server
        .post("/api/v1/tasks/no-such-task/retry", &json!({}));
    assert_eq!(code, 404);
}

#[test]
fn data_and_store_faults_fail_the_task_naming_the_cause() {
    let env = env(500);
    env.server
        .run(json!({"tag_ids": [1, 2, 6, 7], "as_of": AS_OF}));

    let activity = env.data.path().join("user_activity_summary.parquet");
    let saved = std::fs::read(&activity).unwrap();
    std::fs::remove_file(&activity).unwrap();
    assert_failed_without_writes(
        &env,
        json!({"tag_ids": [2]}),
        "table user_activity_summary: no user_activity_summary.parquet",
    );
    std::fs::write(&activity, b"PAR1 this is not parquet at all PAR1").unwrap();
    assert_failed_without_writes(&env, json!({"tag_ids": [2]}), "user_activity_summary");
    std::fs::write(&activity, saved).unwrap();

    rewrite_table(env.data.path(), "user_basic_info", |df| {
        use polars::prelude::*;
        let ages: StringChunked = df
            .column("age")
            .unwrap()
            .i32()
            .unwrap()
            .iter()
            .map(|v| v.map(|v| format!("{v} years")))
            .collect();
        df.with_column(ages.with_name("age".into()).into_column())
            .unwrap();
    });
    assert_failed_without_writes(
        &env,
        json!({"tag_ids": [7]}),
        "column age has type str, expected int32",
    );

    let conn = rusqlite::Connection::open(&env.server.db).unwrap();
    conn.execute_batch("CREATE TRIGGER fail_writes BEFORE INSERT ON user_tag_sets BEGIN SELECT RAISE(ABORT, 'injected write failure'); END;")
        .unwrap();
    let control = rusqlite::Connection::open(tag_host::store::sqlite::SqliteStore::control_path(
        &env.server.db,
    ))
    .unwrap();
    control
        .execute_batch("DELETE FROM tag_rules WHERE tag_id = 6 AND version > 1")
        .unwrap();
    put_rule(
        &env.server,
        6,
        json!({"field": "cash_balance", "operator": ">=", "value": 0}),
    );
    assert_failed_without_writes(
        &env,
        json!({"tag_ids": [6], "as_of": AS_OF}),
        "injected write failure",
    );
}

#[test]
fn the_seed_documents_python_client_and_curl_examples_work_unchanged() {
    let env = env(200);
    let seed = std::fs::read_to_string(workspace().join("tests/seed/client_example.py")).unwrap();
    let script = seed.replace("http://localhost:5000", &env.server.base);
    let output = std::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.matches("任务提交成功").count(), 2, "{stdout}");
    assert_eq!(stdout.matches("任务完成").count(), 2, "{stdout}");

    let curls = std::fs::read_to_string(workspace().join("tests/seed/curl_examples.sh")).unwrap();
    let mut last_task = String::new();
    let blocks = curls.split("\n\n").map(|b| {
        b.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    });
    for command in blocks.filter(|c| c.trim_start().starts_with("curl")) {
        let command = command
            .replace("http://localhost:5000", &env.server.base)
            .replace("550e8400-e29b-41d4-a716-446655440000", &last_task);
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{command} -s -w '\\n%{{http_code}}'"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap();
        let body: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        if command.contains("/trigger") {
            assert_eq!(code, "202", "{command}: {body}");
            last_task = body["task_id"].as_str().unwrap().to_string();
        } else {
            assert_eq!(code, "200", "{command}: {body}");
        }
    }
}

fn wait_for_status(server: &TestServer, task_id: &str, wanted: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while server
        .get(&format!("/api/v1/tasks/{task_id}/status"))
        .unwrap()
        .1["status"]["status"]
        != wanted
    {
        assert!(
            std::time::Instant::now() < deadline,
            "task {task_id} never became {wanted}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn a_full_queue_answers_503_and_cancel_stops_tasks_without_writes() {
    let plugins = plugins_dir(&[
        ("wealth.so", plugin("wealth")),
        ("misbehaving.so", fixture("misbehaving")),
    ]);
    let env = env_with(
        300,
        plugins,
        &["--max-concurrent-tasks", "1", "--queue-capacity", "1"],
    );
    // Tag 906 holds the run inside its plugin until the gate file exists.
    let gate = env.data.path().join("gate");
    hold_tag_906_at(&env.server.base, &gate);
    let running = env.server.trigger(json!({"tag_ids": [906, 6]}));
    wait_entered(&gate);
    wait_for_status(&env.server, &running, "running");
    let (_, status) = env
        .server
        .get(&format!("/api/v1/tasks/{running}/status"))
        .unwrap();
    assert!(
        status["status"]["progress"]["stage"].is_string(),
        "a running task reports progress: {status}"
    );
    let queued = env.server.trigger(json!({"tag_ids": [6]}));
    let (code, full) = env
        .server
        .post("/api/v1/tags/trigger", &json!({"tag_ids": [1]}));
    assert_eq!(code, 503, "{full}");
    assert!(
        full["error"].as_str().unwrap().contains("queue is full"),
        "{full}"
    );

    // A queued task is cancelled at once; a running one at its next safe point.
    let (code, reply) = env
        .server
        .post(&format!("/api/v1/tasks/{queued}/cancel"), &json!({}));
    assert_eq!(
        (code, reply["status"]["status"].as_str()),
        (200, Some("cancelled")),
        "{reply}"
    );
    let (code, _) = env
        .server
        .post(&format!("/api/v1/tasks/{running}/cancel"), &json!({}));
    assert_eq!(code, 202);
    // Released, the run reaches its next safe point and stops there.
    std::fs::write(&gate, b"").unwrap();
    let status = env.server.wait(&running);
    assert_eq!(status["status"], "cancelled", "{status}");
    assert!(
        user_tags(&env.server.db).is_empty(),
        "a cancelled run writes nothing"
    );

    let (code, _) = env
        .server
        .post(&format!("/api/v1/tasks/{running}/cancel"), &json!({}));
    assert_eq!(code, 409);
    let (code, _) = env.server.post("/api/v1/tasks/nope/cancel", &json!({}));
    assert_eq!(code, 404);
    // The queue has room again.
    env.server.run(json!({"tag_ids": [6]}));
}

#[test]
fn an_idempotency_key_returns_the_task_already_created() {
    let env = env(100);
    let send = |key: &str, body: Value| {
        let response = client()
            .post(format!("{}/api/v1/tags/trigger", env.server.base))
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().unwrap(),
        )
    };
    let (code, first) = send("nightly-2025-01-15", json!({"tag_ids": [1, 2]}));
    assert_eq!(code, 202);
    let (code, again) = send("nightly-2025-01-15", json!({"tag_ids": [2, 1]}));
    assert_eq!(
        (code, &again["task_id"]),
        (200, &first["task_id"]),
        "{again}"
    );
    let (code, conflict) = send("nightly-2025-01-15", json!({"tag_ids": [3]}));
    assert_eq!(code, 409, "{conflict}");
    let (_, list) = env.server.get("/api/v1/tasks").unwrap();
    assert_eq!(list["total"], 1);
}

#[test]
fn one_shot_run_and_gen_data_work_from_the_command_line() {
    let data = tempfile::tempdir().unwrap();
    let plugins = reference_plugins_dir();
    let db = data.path().join("oneshot.db");
    let store = format!("sqlite://{}", db.display());
    let dir = data.path().to_str().unwrap();
    let (code, out, err) = tag_server(&[
        "gen-data",
        "--users",
        "700",
        "--out",
        dir,
        "--seed",
        "3",
        "--reference-date",
        AS_OF,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, again, _) = tag_server(&[
        "gen-data",
        "--users",
        "700",
        "--out",
        &format!("{dir}/again"),
        "--seed",
        "3",
        "--reference-date",
        AS_OF,
    ]);
    assert_eq!(code, 0);
    for table in [
        "user_basic_info",
        "user_asset_summary",
        "user_activity_summary",
    ] {
        let first = std::fs::read(data.path().join(format!("{table}.parquet"))).unwrap();
        let second = std::fs::read(data.path().join(format!("again/{table}.parquet"))).unwrap();
        assert_eq!(
            first, second,
            "gen-data is deterministic for a seed ({table}): {again}"
        );
    }

    let plugins_arg = plugins.path().to_str().unwrap();
    let common = [
        "--data-dir",
        dir,
        "--store",
        &store,
        "--plugins-dir",
        plugins_arg,
    ];
    let mut args = vec!["run", "--tag-ids", "1,2,5", "--as-of", AS_OF];
    args.extend(common);
    let (code, out, err) = tag_server(&args);
    assert_eq!(code, 0, "{out}{err}");
    let task: Value = serde_json::from_str(&out).expect("run prints the task as JSON");
    assert_eq!(task["status"], "completed");
    assert_eq!(
        task["result"]["message"],
        "Successfully processed 700 users"
    );
    assert_same_tags(
        &user_tags(&db),
        &oracle::expected(data.path(), as_of(), &[1, 2, 5]),
    );

    std::fs::remove_file(data.path().join("user_asset_summary.parquet")).unwrap();
    let mut args = vec!["run", "--tag-ids", "1"];
    args.extend(common);
    let (code, out, _) = tag_server(&args);
    assert_ne!(code, 0, "a failed run exits non-zero");
    let task: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(task["status"], "failed");
    assert!(
        task["error"]
            .as_str()
            .unwrap()
            .contains("user_asset_summary"),
        "{task}"
    );

    let mut args = vec!["run", "--tag-ids", "42"];
    args.extend(common);
    let (code, _, err) = tag_server(&args);
    assert!(code != 0 && err.contains("Invalid tag_ids: [42]"), "{err}");
}

#[test]
fn env_local_creates_sample_data_only_when_there_is_none() {
    use clap::FromArgMatches;
    let empty = tempfile::tempdir().unwrap();
    let dir = empty.path().join("data");
    let parse = |args: &[&str]| {
        let mut all = vec!["tag-server", "--config-dir", empty.path().to_str().unwrap()];
        all.extend_from_slice(args);
        all.extend(["--data-dir", dir.to_str().unwrap()]);
        let matches = tag_host::config::commands::command()
            .try_get_matches_from(all)
            .unwrap();
        let mut cli = tag_host::config::Cli::from_arg_matches(&matches).unwrap();
        // Outside local the checks fail (no profile, no tokens); the data
        // directory's origin is what matters here.
        let _ = tag_host::config::profile::resolve(&mut cli.config, &matches);
        cli.config
    };
    let prepare = |args: &[&str]| tag_host::server::prepare_local_data(&parse(args));
    let error = prepare(&["--env", "glue-dev"]).unwrap_err();
    assert!(error.to_string().contains("does not exist"), "{error}");
    prepare(&[]).unwrap_err();
    assert!(
        !dir.exists(),
        "nothing is made in a directory the user named"
    );
    prepare(&["--sample-data"]).unwrap();
    let written = std::fs::metadata(dir.join("user_basic_info.parquet"))
        .unwrap()
        .modified()
        .unwrap();
    assert!(
        dir.join("user_asset_summary.parquet").exists()
            && dir.join("user_activity_summary.parquet").exists()
    );
    prepare(&["--sample-data"]).unwrap();
    let again = std::fs::metadata(dir.join("user_basic_info.parquet"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(written, again, "existing data is left alone");
}

#[test]
fn results_can_be_read_per_user_and_per_tag() {
    let env = env(400);
    env.server.run(json!({"tag_ids": [6, 7], "as_of": AS_OF}));
    let expected = oracle::expected(env.data.path(), as_of(), &[6, 7]);
    let (user, ids) = expected
        .iter()
        .find(|(_, ids)| ids.len() == 2)
        .expect("someone holds both");
    let (code, body) = env
        .server
        .get(&format!("/api/v1/users/{user}/tags"))
        .unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["tag_ids"], json!(ids));
    assert_eq!(body["tag_details"]["7"]["tag_name"], "年轻用户");
    let (code, _) = env.server.get("/api/v1/users/nobody/tags").unwrap();
    assert_eq!(code, 404);

    let holders: Vec<&String> = expected
        .iter()
        .filter(|(_, ids)| ids.contains(&6))
        .map(|(u, _)| u)
        .collect();
    let mut seen: Vec<String> = Vec::new();
    let mut cursor = String::new();
    loop {
        let (code, page) = env
            .server
            .get(&format!("/api/v1/tags/6/users?limit=7&cursor={cursor}"))
            .unwrap();
        assert_eq!(code, 200, "{page}");
        seen.extend(
            page["users"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u.as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    assert_eq!(
        seen.iter().collect::<Vec<_>>(),
        holders,
        "paging lists every holder once, in order"
    );
    assert_eq!(env.server.get("/api/v1/tags/99/users").unwrap().0, 404);
    assert_eq!(env.server.get("/api/v1/tags/x/users").unwrap().0, 400);
    assert_eq!(
        env.server.get("/api/v1/tags/6/users?limit=-1").unwrap().0,
        400
    );

    let (code, stats) = env.server.get("/api/v1/system/stats").unwrap();
    assert_eq!(code, 200);
    assert_eq!(stats["tasks"]["completed"], 1);
    assert_eq!(
        (
            stats["queue"]["workers"].as_u64(),
            stats["tags_loaded"].as_u64()
        ),
        (Some(3), Some(8))
    );
}

/// Niceness of this process's threads whose name starts with `prefix`.
#[cfg(target_os = "linux")]
fn thread_niceness(pid: u32, prefix: &str) -> Vec<i64> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue; // the thread ended
        };
        // Fields after "pid (comm)": state is field 3, nice is field 19.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        found.push(fields[19 - 3].parse().unwrap());
    }
    found
}

#[cfg(target_os = "linux")]
#[test]
fn task_workers_run_at_a_lower_priority_than_the_api() {
    // A server process of its own: the threads counted are its threads,
    // not those of other servers this test binary runs in parallel.
    let work = tempfile::tempdir().unwrap();
    let data = data(50);
    let plugins = reference_plugins_dir();
    let server = ServerProcess::start_in(
        work.path(),
        data.path(),
        plugins.path(),
        &["--max-concurrent-tasks", "3"],
    );
    // Each worker lowers its own priority as it starts: wait until all
    // three have started rather than racing their start-up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let workers = loop {
        let workers = thread_niceness(server.pid(), "tag-worker-");
        if workers.len() == 3 && workers.iter().all(|n| *n == 10) {
            break workers;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "workers did not reach niceness 10: {workers:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(workers, vec![10, 10, 10]);
    // The HTTP runtime's threads keep the default priority.
    let http = thread_niceness(server.pid(), "tokio-rt");
    assert!(!http.is_empty() && http.iter().all(|n| *n == 0), "{http:?}");
    // And runs still complete.
    let status = server.run(json!({"tag_ids": [1, 7], "as_of": AS_OF}));
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(status["result"]["total_users"], 50, "{status}");
}

#[test]
fn universe_rows_without_a_user_id_are_dropped_and_counted() {
    let env = env(300);
    env.server.run(all_tags());
    let (rows, nulls, users) = rewrite_table(env.data.path(), "user_basic_info", |df| {
        use polars::prelude::*;
        let ids: StringChunked = df
            .column("user_id")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, id)| if i % 100 == 5 { None } else { id })
            .collect();
        let users: std::collections::BTreeSet<String> =
            ids.iter().flatten().map(str::to_string).collect();
        let (rows, nulls) = (ids.len(), ids.null_count());
        df.with_column(ids.with_name("user_id".into()).into_column())
            .unwrap();
        (rows, nulls, users)
    });
    assert!(nulls >= 3, "{nulls}");
    let result = env.server.run(all_tags());
    // Rows without an id and duplicate rows are left out; the rest are users.
    assert_eq!(
        result["duplicates_dropped"]["user_basic_info"],
        rows - users.len(),
        "{result}"
    );
    assert_eq!(result["universe_users"], users.len(), "{result}");
    let expected = oracle::expected(env.data.path(), as_of(), &ALL);
    // Users no longer in the universe keep their rows (a run only touches
    // the users it evaluates): compare the universe's users.
    let mut stored = user_tags(&env.server.db);
    stored.retain(|user, _| users.contains(user));
    assert_same_tags(&stored, &expected);
}

#[test]
fn profiles_apply_under_flags_and_glue_prod_lists_every_problem_at_once() {
    let profiles = workspace().join("config");
    let dir = profiles.display().to_string();
    // The shipped production profile names a MySQL store; without tokens
    // the server refuses to start, and says why.
    let (code, out, err) = tag_server(&["--env", "glue-prod", "--config-dir", &dir]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("TAG_API_TOKENS"), "{err}");
    // With SQLite forced by a flag, both problems are listed together.
    let (code, _, err) = tag_server(&[
        "--env",
        "glue-prod",
        "--config-dir",
        &dir,
        "--store",
        "sqlite://x.db",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("not SQLite") && err.contains("TAG_API_TOKENS"),
        "{err}"
    );
    // glue-dev's profile applies: its plugins directory does not matter to
    // `plugins`, but a bad profile does.
    let bad = tempfile::tempdir().unwrap();
    std::fs::write(
        bad.path().join("glue-dev.toml"),
        "workers = 0\nnot_a_key = 1\n",
    )
    .unwrap();
    let (code, _, err) = tag_server(&[
        "--env",
        "glue-dev",
        "--config-dir",
        &bad.path().display().to_string(),
        "plugins",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("not_a_key"), "{err}");
}

/// A request with an optional bearer token: status and JSON body.
fn call(
    server: &ServerProcess,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client().request(method, format!("{}{path}", server.base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

#[test]
fn tokens_gate_every_route_group_by_role_and_never_reach_the_log() {
    use reqwest::Method;
    const ADMIN: &str = "adm-5f0c2e9b7d41a3c8";
    const READER: &str = "rdr-9a1b7c3d5e2f4a6b";
    let work = tempfile::tempdir().unwrap();
    let tokens = work.path().join("tokens");
    std::fs::write(
        &tokens,
        format!("# who may call\nops:admin:{ADMIN}\nviewer:read:{READER}\n"),
    )
    .unwrap();
    let log = work.path().join("server.log");
    let data = data(300);
    let plugins = reference_plugins_dir();
    let server = &ServerProcess::start_in(
        work.path(),
        data.path(),
        plugins.path(),
        &["--tokens-file", tokens.to_str().unwrap()],
    );
    // Open: health and metrics.
    assert_eq!(call(server, Method::GET, "/health", None, None).0, 200);
    let metrics = client()
        .get(format!("{}/metrics", server.base))
        .send()
        .unwrap();
    assert_eq!(metrics.status().as_u16(), 200);
    // Every response carries a request id; a well-formed one sent is kept.
    for token in [None, Some(READER)] {
        let mut request = client().get(format!("{}/api/v1/tasks", server.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().unwrap();
        let id = response.headers()["x-request-id"].to_str().unwrap();
        assert_eq!(id.len(), 32, "{id}");
    }
    let response = client()
        .get(format!("{}/health", server.base))
        .header("X-Request-Id", "trace-42_a")
        .send()
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-42_a");

    let trigger = json!({"tag_ids": [1], "as_of": AS_OF});
    let rule = json!({"field": "cash_balance", "operator": ">=", "value": 70000});
    let reads = [
        "/api/v1/tags/available",
        "/api/v1/tags/1/rule",
        "/api/v1/tasks",
        "/api/v1/users/u0000001/tags",
        "/api/v1/tags/1/users",
        "/api/v1/plugins",
        "/api/v1/system/stats",
    ];
    for path in reads {
        let (code, body) = call(server, Method::GET, path, None, None);
        assert_eq!(code, 401, "{path}: {body}");
        assert_eq!(body["success"], false, "{path}: the seed's error JSON");
        assert_eq!(
            call(server, Method::GET, path, Some("wrong-token-000000"), None).0,
            401
        );
        let (code, _) = call(server, Method::GET, path, Some(READER), None);
        assert!(code == 200 || code == 404, "{path}: read token got {code}");
        let (code, _) = call(server, Method::GET, path, Some(ADMIN), None);
        assert!(code == 200 || code == 404, "{path}: admin token got {code}");
    }
    // Writes: 401 without a token, 403 for a read token, through for admin.
    let id = {
        let (code, body) = call(
            server,
            Method::POST,
            "/api/v1/tags/trigger",
            Some(READER),
            Some(trigger.clone()),
        );
        assert_eq!((code, &body["success"]), (403, &json!(false)), "{body}");
        assert!(body["error"].as_str().unwrap().contains("viewer"), "{body}");
        assert_eq!(
            call(
                server,
                Method::POST,
                "/api/v1/tags/trigger",
                None,
                Some(trigger.clone())
            )
            .0,
            401
        );
        let (code, body) = call(
            server,
            Method::POST,
            "/api/v1/tags/trigger",
            Some(ADMIN),
            Some(trigger),
        );
        assert_eq!(code, 202, "{body}");
        body["task_id"].as_str().unwrap().to_string()
    };
    let writes: [(Method, String, Value); 5] = [
        (Method::PUT, "/api/v1/tags/6/rule".into(), rule),
        (
            Method::POST,
            format!("/api/v1/tasks/{id}/cancel"),
            json!({}),
        ),
        (Method::POST, format!("/api/v1/tasks/{id}/retry"), json!({})),
        (Method::POST, "/api/v1/plugins/reload".into(), json!({})),
        (
            Method::POST,
            "/api/v1/tags/950/owner".into(),
            json!({"plugin": "nobody"}),
        ),
    ];
    for (method, path, body) in writes {
        assert_eq!(
            call(server, method.clone(), &path, None, Some(body.clone())).0,
            401,
            "{path}"
        );
        assert_eq!(
            call(
                server,
                method.clone(),
                &path,
                Some(READER),
                Some(body.clone())
            )
            .0,
            403,
            "{path}"
        );
        let (code, reply) = call(server, method, &path, Some(ADMIN), Some(body));
        assert!(
            ![401, 403].contains(&code) && code < 500,
            "{path}: admin got {code} {reply}"
        );
    }
    // Files: the store's 0600, the log 0640.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&work.path().join("t.db")), 0o600);
    assert_eq!(mode(&work.path().join("t.control.db")), 0o600);
    assert_eq!(mode(&log), 0o640);
    // The rule history names who changed the rule.
    let (_, rules) = call(
        server,
        Method::GET,
        "/api/v1/tags/6/rule",
        Some(READER),
        None,
    );
    assert_eq!(rules["rule"]["changed_by"], "ops", "{rules}");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        !log.contains(ADMIN) && !log.contains(READER),
        "a token value reached the log"
    );
    // One access line a request, with the caller's name (never a token).
    let access = |status: &str, caller: &str| {
        log.lines().any(|l| {
            l.contains(" access: request")
                && l.contains("path=/api/v1/tasks")
                && l.contains(&format!("status={status}"))
                && l.contains(&format!("caller={caller}"))
                && l.contains("request_id=")
        })
    };
    assert!(
        access("200", "viewer") && access("401", "-"),
        "access lines missing"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("audit: rule replaced") && l.contains("ops")),
        "rule changes are logged with the token's name"
    );
}

#[test]
fn request_bodies_must_be_json_so_other_sites_cannot_post_them() {
    let env = env(50);
    let url = |path: &str| format!("{}{path}", env.server.base);
    let body = r#"{"tag_ids": [1], "as_of": "2025-01-15"}"#;
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut request = client().post(url("/api/v1/tags/trigger")).body(body);
        if let Some(content_type) = content_type {
            request = request.header("Content-Type", content_type);
        }
        let response = request.send().unwrap();
        assert_eq!(response.status().as_u16(), 415, "{content_type:?}");
        let reply: Value = response.json().unwrap();
        assert_eq!(reply["success"], false, "{reply}");
    }
    let response = client()
        .put(url("/api/v1/tags/6/rule"))
        .header("Content-Type", "text/plain")
        .body(r#"{"field": "cash_balance", "operator": ">=", "value": 1}"#)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);
    // JSON with a charset goes through; a bodiless POST needs no type.
    let response = client()
        .post(url("/api/v1/tags/trigger"))
        .header("Content-Type", "application/json; charset=utf-8")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let response = client().post(url("/api/v1/plugins/reload")).send().unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

#[test]
fn strange_values_are_refused_and_concurrent_idempotent_triggers_share_one_task() {
    let env = env(50);
    let server = &env.server;
    for body in [
        json!({"tag_ids": [1], "as_of": "1850-01-01"}),
        json!({"tag_ids": [1], "as_of": "2300-01-01"}),
        json!({"tag_ids": [1], "user_ids": ["u1\u{0}"]}),
    ] {
        let (code, reply) = server.post("/api/v1/tags/trigger", &body);
        assert_eq!(
            (code, &reply["success"]),
            (400, &json!(false)),
            "{body}: {reply}"
        );
    }
    for path in [
        "/api/v1/tags/+1/rule",
        "/api/v1/tags/%201/rule",
        "/api/v1/tags/1x/rule",
    ] {
        let (code, reply) = server.get(path).unwrap();
        assert_eq!(code, 400, "{path}: {reply}");
    }

    // A rule's `in` list is capped (a 620,000-item list once made a run of
    // one tag take minutes per million users).
    let huge: Vec<String> = (0..20_000).map(|i| format!("L{i}")).collect();
    let (code, reply) = put_rule(
        server,
        5,
        json!({"field": "user_level", "operator": "in", "value": huge}),
    );
    assert_eq!(code, 400, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("at most 10000"),
        "{reply}"
    );

    // Eight triggers at once with one key: one task, every caller gets it.
    let body = json!({"tag_ids": [1], "as_of": AS_OF});
    let replies: Vec<(u16, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    let response = client()
                        .post(format!("{}/api/v1/tags/trigger", server.base))
                        .header("Idempotency-Key", "nightly-2025-01-15")
                        .json(&body)
                        .send()
                        .unwrap();
                    let code = response.status().as_u16();
                    let reply: Value = response.json().unwrap();
                    (code, reply["task_id"].as_str().unwrap_or("").to_string())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ids: std::collections::BTreeSet<&str> = replies.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids.len(), 1, "{replies:?}");
    assert!(!ids.contains(""), "{replies:?}");
    assert_eq!(
        replies.iter().filter(|(c, _)| *c == 202).count(),
        1,
        "{replies:?}"
    );
    assert!(
        replies.iter().all(|(c, _)| *c == 202 || *c == 200),
        "{replies:?}"
    );
}

#[test]
fn hostile_requests_get_the_seeds_json_errors_without_internal_detail() {
    let env = env_with(50, reference_plugins_dir(), &["--max-body-bytes", "65536"]);
    let base = &env.server.base;
    let big = format!(
        r#"{{"tag_ids": [1], "user_ids": [{}]}}"#,
        vec!["\"u\""; 30_000].join(",")
    );
    let response = client()
        .post(format!("{base}/api/v1/tags/trigger"))
        .header("Content-Type", "application/json")
        .body(big)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    let reply: Value = response.json().unwrap();
    assert_eq!(reply["success"], false, "{reply}");
    let cases = [
        ("/api/v1/tags/%FF/rule", 400),
        ("/api/v1/tasks?limit=1&limit=2", 400),
        ("/api/v1/users/1'%20OR%20'1'='1/tags", 404),
        ("/api/v1/users/..%2F..%2Fetc%2Fpasswd/tags", 404),
        ("/api/v1/tasks/%3Cscript%3E/status", 404),
    ];
    for (path, want) in cases {
        let response = client().get(format!("{base}{path}")).send().unwrap();
        let code = response.status().as_u16();
        let text = response.text().unwrap();
        let reply: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}"));
        assert_eq!(
            (code, &reply["success"]),
            (want, &json!(false)),
            "{path}: {reply}"
        );
        for leak in ["/work", "/tmp", "SELECT", "sqlite", "panicked"] {
            assert!(!text.contains(leak), "{path}: {text}");
        }
    }
}

/// Parses OpenMetrics text with the reference Python parser; the families
/// (name, type) it found.
const PARSE_METRICS: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
families = text_string_to_metric_families(sys.stdin.read())
print(json.dumps({f.name: f.type for f in families}))
"#;

#[test]
fn metrics_parse_as_openmetrics_with_every_family() {
    let env = env(200);
    env.server.run(json!({"tag_ids": [1, 7], "as_of": AS_OF}));
    let response = client()
        .get(format!("{}/metrics", env.server.base))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().unwrap();
    let python = python::python_with(&["prometheus_client"], &["prometheus_client"]);
    let mut child = std::process::Command::new(python)
        .args(["-c", PARSE_METRICS])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "not OpenMetrics: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let families: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&output.stdout).unwrap();
    for (name, kind) in [
        ("tag_server_http_requests", "counter"),
        ("tag_server_http_request_duration_seconds", "histogram"),
        ("tag_server_tasks_finished", "counter"),
        ("tag_server_task_duration_seconds", "histogram"),
        ("tag_server_stage_duration_seconds", "histogram"),
        ("tag_server_rows_written", "counter"),
        ("tag_server_users_evaluated", "counter"),
        ("tag_server_tags_matched", "counter"),
        ("tag_server_store_errors", "counter"),
        ("tag_server_tasks", "gauge"),
        ("tag_server_queue_depth", "gauge"),
        ("tag_server_running_tasks", "gauge"),
        ("tag_server_plugin_files", "gauge"),
    ] {
        assert_eq!(
            families.get(name).map(String::as_str),
            Some(kind),
            "{name}: {families:?}"
        );
    }
    // What this run did shows: a completed task, tag 7's users, the route.
    assert!(
        text.contains("tag_server_tasks_finished_total{name=\"completed\"}"),
        "{text}"
    );
    assert!(
        text.contains("tag_server_users_evaluated_total{tag_id=\"7\"}"),
        "{text}"
    );
    assert!(
        text.contains("route=\"/api/v1/tasks/{task_id}/status\""),
        "{text}"
    );
}

#[test]
fn json_logs_are_one_flat_object_a_line_with_request_and_task_ids() {
    let work = tempfile::tempdir().unwrap();
    let data = data(300);
    let plugins = reference_plugins_dir();
    let server = ServerProcess::start_in(
        work.path(),
        data.path(),
        plugins.path(),
        &["--log-format", "json"],
    );
    let reply = client()
        .post(format!("{}/api/v1/tags/trigger", server.base))
        .header("x-request-id", "trigger-0001")
        .json(&json!({"tag_ids": [1, 7], "as_of": AS_OF}))
        .send()
        .unwrap();
    assert_eq!(reply.status().as_u16(), 202);
    let task_id = reply.json::<Value>().unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let log_path = work.path().join("server.log");
    let lines = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("task finished") {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no task finished:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let lines: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for line in &lines {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(line[key].is_string(), "{key} missing: {line}");
        }
    }
    let find = |message: &str| {
        lines
            .iter()
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("no \"{message}\" line: {lines:?}"))
    };
    // The access line of the trigger, its request id at the top level.
    let access = lines
        .iter()
        .find(|l| l["target"] == "access" && l["path"] == "/api/v1/tags/trigger")
        .expect("access line of the trigger");
    assert_eq!(access["request_id"], "trigger-0001", "{access}");
    assert_eq!(access["status"], 202, "{access}");
    assert_eq!(find("audit: trigger")["request_id"], "trigger-0001");
    // Lines written inside the run carry the task id at the top level.
    let committed = find("results committed");
    assert_eq!(committed["task_id"], task_id.as_str(), "{committed}");
    assert!(committed["users"].is_u64(), "{committed}");
    assert_eq!(find("task finished")["task_id"], task_id.as_str());
}

#[test]
fn a_second_stop_signal_ends_the_server_at_once() {
    use std::io::Write;
    let work = tempfile::tempdir().unwrap();
    let data = data(300);
    let plugins = reference_plugins_dir();
    let mut server = ServerProcess::start_in(work.path(), data.path(), plugins.path(), &[]);
    // A request whose body never finishes holds the graceful shutdown (it
    // waits for requests in flight, up to the request timeout).
    let address = server.base.trim_start_matches("http://").to_string();
    let mut stalled = std::net::TcpStream::connect(address).unwrap();
    stalled
        .write_all(
            b"POST /api/v1/tags/trigger HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"tag_ids\"",
        )
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pid = server.pid() as i32;
    // SAFETY: signals a child process this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(
        server
            .exit_within(std::time::Duration::from_millis(1500))
            .is_none(),
        "the first signal should wait for the request in flight"
    );
    let second = std::time::Instant::now();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = server
        .exit_within(std::time::Duration::from_secs(2))
        .expect("the second signal should end the server at once");
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert!(second.elapsed() < std::time::Duration::from_secs(2));
    let log = std::fs::read_to_string(work.path().join("server.log")).unwrap();
    assert!(log.contains("second stop signal"), "{log}");
    drop(stalled);
}

#[test]
fn a_second_stop_signal_with_a_task_running_loses_nothing() {
    let work = tempfile::tempdir().unwrap();
    let data = data(300);
    let plugins = reference_and_misbehaving_plugins();
    let lease = ["--task-lease-secs", "2"];
    let mut server = ServerProcess::start_in(work.path(), data.path(), plugins.path(), &lease);
    let gate = work.path().join("gate");
    hold_tag_906_at(&server.base, &gate);
    let reply = client()
        .post(format!("{}/api/v1/tags/trigger", server.base))
        .json(&json!({"tag_ids": [906, 1, 7], "as_of": AS_OF}))
        .send()
        .unwrap();
    let task = reply.json::<Value>().unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_entered(&gate);
    // Two stop signals while the task is inside a plugin: the server ends
    // at once, the task neither finished nor written.
    let pid = server.pid() as i32;
    for _ in 0..2 {
        // SAFETY: signals a child process this test started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let status = server
        .exit_within(std::time::Duration::from_secs(5))
        .expect("the second signal ends the server");
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert!(user_tags(&work.path().join("t.db")).is_empty());
    // The next server on the same store runs the accepted task to its end.
    std::fs::write(&gate, b"").unwrap();
    let next = ServerProcess::start_in(work.path(), data.path(), plugins.path(), &lease);
    let done = wait_ended(&next.base, &task);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    assert_same_tags(
        &user_tags(&work.path().join("t.db")),
        &oracle::expected(data.path(), as_of(), &[1, 7]),
    );
}

/// One poll of a running task: when, stage, percent, and the whole progress.
struct Sample {
    at: std::time::Instant,
    stage: String,
    percent: f64,
    progress: Value,
}

/// Polls `task_id` until it ends, keeping every status that shows progress;
/// also checks the task list shows the running task's stage and percent.
fn poll_progress(server: &TestServer, task_id: &str) -> (Vec<Sample>, bool) {
    let mut samples = Vec::new();
    let mut listed = false;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let (_, body) = server
            .get(&format!("/api/v1/tasks/{task_id}/status"))
            .unwrap();
        let status = &body["status"];
        match status["status"].as_str().unwrap() {
            "completed" => return (samples, listed),
            "submitted" => {}
            "running" => {
                if let Some(p) = status.get("progress") {
                    samples.push(Sample {
                        at: std::time::Instant::now(),
                        stage: p["stage"].as_str().unwrap().to_string(),
                        percent: p["percent"].as_f64().unwrap(),
                        progress: p.clone(),
                    });
                }
                let (_, list) = server.get("/api/v1/tasks?status=running").unwrap();
                if let Some(p) = list["tasks"].get(0).and_then(|t| t.get("progress")) {
                    listed |= p["stage"].is_string() && p["percent"].is_f64();
                }
            }
            other => panic!("task ended {other}: {status}"),
        }
        assert!(std::time::Instant::now() < deadline, "task did not finish");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn progress_moves_through_every_stage_and_never_stalls_while_writing() {
    // Enough users for a run of a few seconds in a test build.
    let env = env(150_000);
    let task_id = env.server.trigger(all_tags());
    let (samples, listed) = poll_progress(&env.server, &task_id);
    assert!(
        listed,
        "the task list never showed the running task's progress"
    );
    assert!(
        samples.len() > 10,
        "only {} polls saw progress",
        samples.len()
    );
    // The percent never goes back, and each stage seen is ahead of the last.
    for pair in samples.windows(2) {
        assert!(
            pair[1].percent >= pair[0].percent,
            "percent went back: {} ({}) then {} ({})",
            pair[0].percent,
            pair[0].stage,
            pair[1].percent,
            pair[1].stage
        );
    }
    let mut stages: Vec<(&str, f64)> = Vec::new();
    for s in &samples {
        match stages.last_mut() {
            Some((stage, high)) if *stage == s.stage => *high = s.percent,
            _ => stages.push((&s.stage, s.percent)),
        }
    }
    assert!(stages.len() >= 4, "stages seen: {stages:?}");
    // Each stage ends at or above the one before; a stage over within one
    // poll (joining, often) may show the percent its predecessor ended at,
    // but never two in a row.
    assert!(
        stages.windows(2).all(|w| w[1].1 >= w[0].1) && stages.windows(3).all(|w| w[2].1 > w[0].1),
        "percent did not rise from stage to stage: {stages:?}"
    );
    let distinct: std::collections::BTreeSet<u64> = samples
        .iter()
        .map(|s| (s.percent * 1000.0) as u64)
        .collect();
    assert!(distinct.len() >= 8, "percent barely moved: {distinct:?}");
    // While writing, the percent never stands still for two seconds.
    let writing: Vec<&Sample> = samples.iter().filter(|s| s.stage == "writing").collect();
    assert!(
        !writing.is_empty(),
        "never saw the writing stage: {stages:?}"
    );
    let mut since = writing[0];
    for s in &writing {
        if s.percent > since.percent {
            since = s;
        }
        assert!(
            s.at.duration_since(since.at) <= std::time::Duration::from_secs(2),
            "writing stood at {}% for more than 2 s",
            since.percent
        );
    }
    // While writing, the finished stages' times are there, and an estimate.
    let p = &writing.last().unwrap().progress;
    for key in ["reading_ms", "joining_ms", "evaluating_ms", "comparing_ms"] {
        assert!(p["timings"][key].is_u64(), "{key}: {p}");
    }
    let stage = |name: &str| {
        p["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(stage("reading")["state"], "finished");
    assert_eq!(stage("reading")["done"], stage("reading")["total"]);
    assert!(
        stage("reading")["total"].as_u64().unwrap() >= 150_000,
        "{p}"
    );
    assert_eq!(stage("writing")["unit"], "users");
    assert_eq!(stage("writing")["total"], 150_000);
    let tables = p["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 3, "{p}");
    assert!(
        tables.iter().all(|t| t["rows_done"] == t["rows_total"]),
        "{p}"
    );
    assert!(
        samples.iter().any(|s| s.progress["eta_seconds"].is_u64()),
        "no estimate of the time left"
    );
}

/// `text` without terminal escape sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// In what a terminal was sent: no frame of the bar shows a stage after
/// that stage's "finished" line, and none shows an empty `0/0` count.
fn assert_bar_keeps_up_with_its_lines(screen: &str) {
    let plain = strip_ansi(screen);
    let (line, frame) = (" finished: ", "% [");
    let mut finished: Vec<&str> = Vec::new();
    let mut frames = 0;
    for chunk in plain.split(['\r', '\n']) {
        // A finished line padded to the terminal's width and the frame
        // after it can share a chunk: take them in order.
        let mut at = 0;
        loop {
            let next_line = chunk[at..].find(line).map(|i| at + i);
            let next_frame = chunk[at..].find(frame).map(|i| at + i);
            match (next_line, next_frame) {
                (Some(l), f) if f.is_none_or(|f| l < f) => {
                    let stage = chunk[..l].split_whitespace().last().unwrap_or("");
                    finished.push(stage);
                    at = l + line.len();
                }
                (_, Some(f)) => {
                    frames += 1;
                    let shown = chunk[f..].split_once("] ").map_or("", |(_, s)| s);
                    let stage = shown.split_whitespace().next().unwrap_or("");
                    assert!(
                        !finished.contains(&stage),
                        "the bar shows {stage} after its finished line: {chunk:?}"
                    );
                    assert!(!shown.contains(" 0/0 "), "an empty count: {chunk:?}");
                    at = f + frame.len();
                }
                _ => break,
            }
        }
    }
    assert!(frames > 0 && finished.len() == 6, "{finished:?}: {plain}");
}

#[test]
fn tag_server_run_draws_a_bar_on_a_terminal_and_keeps_stdout_json_without_one() {
    let data = data(100_000);
    let plugins = reference_plugins_dir();
    let work = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", work.path().join("run.db").display());
    let log = work.path().join("run.log");
    let args = [
        "--data-dir",
        data.path().to_str().unwrap(),
        "--store",
        &store,
        "--plugins-dir",
        plugins.path().to_str().unwrap(),
        "--log-file",
        log.to_str().unwrap(),
        "--batch-rows",
        "2000",
        "run",
        "--tag-ids",
        "1,2,3,4,5,6,7,8",
        "--as-of",
        AS_OF,
    ];
    // Under a pseudo-terminal (util-linux `script`): the bar, and a line
    // for each finished stage above it.
    let command = std::iter::once(env!("CARGO_BIN_EXE_tag-server"))
        .chain(args)
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let output = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .expect("script (util-linux) runs a command under a pseudo-terminal");
    let screen = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{screen}");
    for stage in [
        "reading",
        "joining",
        "evaluating",
        "comparing",
        "writing",
        "committing",
    ] {
        assert!(
            screen.contains(&format!("{stage} finished: ")),
            "{stage}: {screen}"
        );
    }
    assert!(
        screen.contains("[=") && screen.contains("] reading "),
        "no bar drawn: {screen}"
    );
    assert_bar_keeps_up_with_its_lines(&screen);
    assert!(screen.contains("\"status\": \"completed\""), "{screen}");
    // Without a terminal: stdout is exactly the task JSON; stderr has the
    // stage lines as plain log lines.
    let (code, out, err) = tag_server(&args);
    assert_eq!(code, 0, "{err}");
    let task: Value = serde_json::from_str(&out).expect("stdout is only the JSON");
    assert_eq!(task["status"], "completed");
    assert!(err.contains("writing finished: 100000 users in"), "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "terminal codes without a terminal: {err}"
    );
    // --quiet: no progress at all.
    let mut quiet = args.to_vec();
    quiet.push("--quiet");
    let (code, out, err) = tag_server(&quiet);
    assert_eq!(code, 0, "{err}");
    assert!(serde_json::from_str::<Value>(&out).is_ok());
    assert!(!err.contains("finished:"), "{err}");
}

/// The flags of a server on a free loopback port over `data` and
/// `plugins`, logging to `work/server.log`.
fn serving(work: &Path, plugins: &Path, data: &Path) -> Vec<String> {
    let text = |p: &Path| p.display().to_string();
    let port = free_port().to_string();
    let flags = [
        ("--host", "127.0.0.1".to_string()),
        ("--port", port),
        ("--log-file", text(&work.join("server.log"))),
        ("--plugins-dir", text(plugins)),
        ("--data-dir", text(data)),
    ];
    flags
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_string(), value])
        .collect()
}

#[test]
fn a_mistyped_data_dir_is_an_error_and_sample_data_is_made_only_where_asked() {
    let work = tempfile::tempdir().unwrap();
    let plugins = reference_plugins_dir();
    let typo = work.path().join("dtaa");
    let args = serving(work.path(), plugins.path(), &typo);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, err) = tag_server_within(&args, 30).expect("a missing --data-dir stops the server");
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "--data-dir is {}, which does not exist",
            typo.display()
        )) && err.contains("--sample-data"),
        "{err}"
    );
    assert!(
        !typo.exists(),
        "nothing was made in a directory the user named"
    );
    // An existing directory without tables is served as it is, not filled.
    let empty = work.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let server = ServerProcess::start_in(work.path(), &empty, plugins.path(), &[]);
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    drop(server);
    // Asked for, sample data goes where the user said.
    let asked = work.path().join("asked");
    let server = ServerProcess::start_in(work.path(), &asked, plugins.path(), &["--sample-data"]);
    assert!(asked.join("user_basic_info.parquet").is_file());
    drop(server);
    // And, with --env local, into the default `data` of a fresh checkout.
    let fresh = work.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    let plugins_arg = plugins.path().to_str().unwrap();
    let server = ServerProcess::start_at(
        &fresh,
        &["--plugins-dir", plugins_arg, "--log-file", "s.log"],
    );
    assert!(fresh.join("data/user_basic_info.parquet").is_file());
    drop(server);
}

#[test]
fn configuration_errors_name_the_key_the_file_and_what_to_set() {
    // The shipped glue profiles hold placeholders: refused, each named.
    let shipped = workspace().join("config");
    for env in ["glue-dev", "glue-prod"] {
        let args = [
            "--env",
            env,
            "--config-dir",
            shipped.to_str().unwrap(),
            "--log-file",
            "x.log",
        ];
        let (code, err) = tag_server_within(&args, 30).expect("refused at once");
        assert_eq!(code, 2, "{err}");
        let file = shipped.join(format!("{env}.toml"));
        for key in ["data_dir", "store"] {
            let named = format!("{key} in {} is a placeholder", file.display());
            let fix = format!("set {key} in {} (or --", file.display());
            assert!(err.contains(&named) && err.contains(&fix), "{key}: {err}");
        }
    }
    // A log directory that does not exist, in a profile.
    let work = tempfile::tempdir().unwrap();
    let missing = work.path().join("logs");
    let profile = format!("log_file = \"{}/api_server.log\"\n", missing.display());
    std::fs::write(work.path().join("local.toml"), profile).unwrap();
    let args = ["--config-dir", work.path().to_str().unwrap()];
    let (code, err) = tag_server_within(&args, 30).expect("refused at once");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "log_file in {}",
            work.path().join("local.toml").display()
        )) && err.contains(&format!("mkdir -p {}", missing.display())),
        "{err}"
    );
}

#[test]
fn a_store_that_never_answers_stops_the_server_after_the_wait() {
    let data = sample_data(100);
    let plugins = reference_plugins_dir();
    let work = tempfile::tempdir().unwrap();
    let store = format!("postgres://postgres@127.0.0.1:{}/tags", free_port());
    let mut args = serving(work.path(), plugins.path(), data.path());
    args.extend(["--store", &store, "--store-wait-secs", "2"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    let (code, err) = tag_server_within(&args, 60).expect("the server gave up");
    assert_ne!(code, 0, "{err}");
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
    assert!(
        err.contains("the store (--store) did not answer within 2 s of start-up")
            && err.contains(&store)
            && err.contains("--store-wait-secs"),
        "{err}"
    );
}

#[test]
fn each_commands_help_lists_only_the_flags_it_uses() {
    let help = |args: &[&str]| {
        let (code, out, err) = tag_server(args);
        assert_eq!(code, 0, "{err}");
        out
    };
    let top = help(&["--help"]);
    assert!(
        top.contains("With no command it serves") && top.contains("--port"),
        "{top}"
    );
    let cases: [(&[&str], &[&str], &[&str]); 3] = [
        (
            &["gen-data", "--help"],
            &["--users", "--out", "--data-dir", "--env"],
            &[
                "--port",
                "--store",
                "--max-concurrent-tasks",
                "--tokens-file",
                "--plugins-dir",
            ],
        ),
        (
            &["run", "--help"],
            &[
                "--tag-ids",
                "--store",
                "--data-dir",
                "--plugins-dir",
                "--batch-rows",
            ],
            &[
                "--port",
                "--host",
                "--tokens-file",
                "--queue-capacity",
                "--watch-plugins",
            ],
        ),
        (
            &["plugins", "--help"],
            &["--plugins-dir", "--plugin-copies-dir"],
            &["--port", "--store", "--data-dir", "--batch-rows"],
        ),
    ];
    for (args, shown, hidden) in cases {
        let text = help(args);
        for flag in shown {
            assert!(text.contains(flag), "{args:?} lacks {flag}: {text}");
        }
        let listed = |flag: &str| text.lines().any(|l| l.trim_start().starts_with(flag));
        for flag in hidden {
            assert!(!listed(flag), "{args:?} lists {flag}: {text}");
        }
    }
    // A server flag given to a command is refused, not ignored.
    let (code, _, err) = tag_server(&["gen-data", "--port", "1", "--out", "x"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("--port does not apply to `tag-server gen-data`"),
        "{err}"
    );
}

#[test]
fn start_up_logs_short_digests_and_the_consoles_address() {
    let data = sample_data(100);
    let plugins = reference_plugins_dir();
    let work = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_in(work.path(), data.path(), plugins.path(), &[]);
    let log = std::fs::read_to_string(work.path().join("server.log")).unwrap();
    let loaded: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("plugin loaded"))
        .collect();
    assert_eq!(loaded.len(), 5, "{log}");
    for line in loaded {
        let digest = line
            .split("sha256=")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        assert_eq!(digest.len(), 12, "{line}");
    }
    assert!(log.contains(&format!("console: {}/", server.base)), "{log}");
}
