//! The results store through the running server and plain SQL: the
//! `user_tags` view and its index, migration from the first layout, a run's
//! outcome committed with its results, and readers that never wait for a
//! writer.

mod support;

use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};
use support::*;
use tag_host::data::gen::{gen_data_with, GenOptions};
use tag_plugin_api::Date;

const AS_OF: &str = "2025-01-15";

fn data(users: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let options = GenOptions {
        users,
        seed: 11,
        reference_date: Date::parse(AS_OF).unwrap().days(),
        row_group_rows: 500,
        ..GenOptions::default()
    };
    gen_data_with(dir.path(), &options).expect("generate data");
    dir
}

fn start(data: &Path, plugins: &Path, db: &Path) -> TestServer {
    TestServer::start(data, plugins, db, &[])
}

#[test]
fn user_tags_is_a_view_with_the_seed_columns_and_an_indexed_user_lookup() {
    let (data, plugins, dir) = (
        data(400),
        reference_plugins_dir(),
        tempfile::tempdir().unwrap(),
    );
    let db = dir.path().join("tags.db");
    let server = start(data.path(), plugins.path(), &db);
    let result = server.run(json!({"tag_ids": [1, 6, 7], "as_of": AS_OF}));
    let rows = user_tag_rows(&db);
    assert_eq!(rows.len() as u64, result["rows_upserted"].as_u64().unwrap());
    let (user, ids, details, created, updated) = &rows[0];
    let ids: Vec<u32> = serde_json::from_str(ids).unwrap();
    let details: serde_json::Value = serde_json::from_str(details).unwrap();
    // One entry per tag id, with the tag's name, category, hit time and rule version.
    assert_eq!(details.as_object().unwrap().len(), ids.len(), "{details}");
    for id in &ids {
        let entry = &details[id.to_string()];
        assert_eq!(entry["rule_version"], 1, "{entry}");
        assert_eq!(entry["hit_time"].as_str().unwrap(), created);
        assert!(["现金充足用户", "高净值用户", "年轻用户"]
            .contains(&entry["tag_name"].as_str().unwrap()));
    }
    assert_eq!(created, updated);
    assert!(
        chrono::NaiveDateTime::parse_from_str(created, "%Y-%m-%dT%H:%M:%S").is_ok(),
        "{created}"
    );
    // The API shows the same row.
    let (status, body) = server.get(&format!("/api/v1/users/{user}/tags")).unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["tag_details"], details);
    // A lookup by user_id through the view searches the primary key.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let plan: Vec<String> = conn
        .prepare("EXPLAIN QUERY PLAN SELECT * FROM user_tags WHERE user_id = 'x'")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(3))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        plan.iter()
            .any(|p| p.contains("SEARCH s USING PRIMARY KEY (user_id=?)")),
        "{plan:?}"
    );
    let kind: String = conn
        .query_row(
            "SELECT type FROM sqlite_master WHERE name = 'user_tags'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(kind, "view");
}

/// The first layout: `user_tags` a plain table with the detail JSON on
/// every row.
fn first_layout(db: &Path) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(
        r#"
        CREATE TABLE tag_state (tag_id INTEGER PRIMARY KEY, rule_version INTEGER NOT NULL,
            watermarks TEXT NOT NULL, had_full_run INTEGER NOT NULL);
        CREATE TABLE user_tags (user_id TEXT PRIMARY KEY, tag_ids TEXT NOT NULL,
            tag_details TEXT NOT NULL, created_time TEXT NOT NULL, updated_time TEXT NOT NULL);
        INSERT INTO user_tags VALUES
          ('old-a', '[1,7]', '{"1":{"tag_name":"高净值用户","tag_category":"财富类","hit_time":"2025-01-01T08:00:00","rule_version":1},"7":{"tag_name":"年轻用户","tag_category":"人口统计类","hit_time":"2025-01-02T09:30:00","rule_version":2}}', '2025-01-01T08:00:00', '2025-01-02T09:30:00'),
          ('old-b', '[7]', '{"7":{"tag_name":"年轻用户","tag_category":"人口统计类","hit_time":"2025-01-02T09:30:00","rule_version":2}}', '2025-01-02T09:30:00', '2025-01-02T09:30:00');
        "#,
    )
    .unwrap();
}

#[test]
fn a_store_in_the_first_layout_is_migrated_with_every_row() {
    let (data, plugins, dir) = (
        data(100),
        reference_plugins_dir(),
        tempfile::tempdir().unwrap(),
    );
    let db = dir.path().join("tags.db");
    first_layout(&db);
    let before: Vec<(String, String, serde_json::Value, String, String)> = vec![
        (
            "old-a".into(),
            "[1,7]".into(),
            json!({"1":{"tag_name":"高净值用户","tag_category":"财富类","hit_time":"2025-01-01T08:00:00","rule_version":1},"7":{"tag_name":"年轻用户","tag_category":"人口统计类","hit_time":"2025-01-02T09:30:00","rule_version":2}}),
            "2025-01-01T08:00:00".into(),
            "2025-01-02T09:30:00".into(),
        ),
        (
            "old-b".into(),
            "[7]".into(),
            json!({"7":{"tag_name":"年轻用户","tag_category":"人口统计类","hit_time":"2025-01-02T09:30:00","rule_version":2}}),
            "2025-01-02T09:30:00".into(),
            "2025-01-02T09:30:00".into(),
        ),
    ];
    let server = start(data.path(), plugins.path(), &db);
    let after: Vec<_> = user_tag_rows(&db)
        .into_iter()
        .map(|(u, i, d, c, up)| {
            (
                u,
                i,
                serde_json::from_str::<serde_json::Value>(&d).unwrap(),
                c,
                up,
            )
        })
        .collect();
    assert_eq!(after, before);
    let (status, body) = server.get("/api/v1/users/old-a/tags").unwrap();
    assert_eq!((status, body["tag_ids"].clone()), (200, json!([1, 7])));
    // A second start changes nothing.
    drop(server);
    let _again = start(data.path(), plugins.path(), &db);
    assert_eq!(user_tag_rows(&db).len(), 2);
}

#[test]
fn a_task_committed_before_a_stop_is_finished_with_its_outcome_not_run_again() {
    let (data, plugins, dir) = (
        data(300),
        reference_plugins_dir(),
        tempfile::tempdir().unwrap(),
    );
    let db = dir.path().join("tags.db");
    let server = start(data.path(), plugins.path(), &db);
    let task = server.trigger(json!({"tag_ids": [1, 7], "as_of": AS_OF}));
    let first = server.wait(&task);
    let written = first["result"]["rows_upserted"].as_u64().unwrap();
    assert!(written > 0);
    drop(server);
    // As if the process died between the results' commit and recording the
    // task as completed.
    let control =
        rusqlite::Connection::open(tag_host::store::sqlite::SqliteStore::control_path(&db))
            .unwrap();
    let changed = control
        .execute("UPDATE tasks SET status = 'running', result = NULL, completed_at = NULL WHERE task_id = ?1", [&task])
        .unwrap();
    assert_eq!(changed, 1);
    let before = user_tag_rows(&db);
    let server = start(data.path(), plugins.path(), &db);
    let again = server.wait(&task);
    assert_eq!(again["status"], "completed", "{again}");
    // Had it run again on unchanged data, it would report 0 rows written.
    assert_eq!(
        again["result"]["rows_upserted"].as_u64(),
        Some(written),
        "{again}"
    );
    assert!(
        again["result"]["notes"]
            .to_string()
            .contains("recovered after a restart"),
        "{again}"
    );
    assert_eq!(user_tag_rows(&db), before);
}

#[test]
fn readers_see_the_last_commit_while_a_writer_holds_the_store() {
    let (data, plugins, dir) = (
        data(200),
        reference_plugins_dir(),
        tempfile::tempdir().unwrap(),
    );
    let db = dir.path().join("tags.db");
    let server = start(data.path(), plugins.path(), &db);
    server.run(json!({"tag_ids": [7], "as_of": AS_OF}));
    let (user, ids, ..) = user_tag_rows(&db).remove(0);
    // Another writer takes the store exclusively and changes the user.
    let writer = rusqlite::Connection::open(&db).unwrap();
    writer
        .execute_batch(&format!(
            "BEGIN EXCLUSIVE; DELETE FROM user_tag_sets WHERE user_id = '{user}';"
        ))
        .unwrap();
    let started = Instant::now();
    let (status, body) = server.get(&format!("/api/v1/users/{user}/tags")).unwrap();
    let waited = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tag_ids"].to_string(), ids);
    assert!(
        waited < Duration::from_secs(2),
        "the read waited {waited:?}"
    );
    writer.execute_batch("ROLLBACK").unwrap();
}
