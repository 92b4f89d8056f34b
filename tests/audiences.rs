//! Audiences on every backend, through a real server: counts, member
//! lists, exports, saved audiences, the change feed and the overlap, each
//! checked against the same question answered independently over the
//! store's `user_tags` rows (read with SQL, evaluated here), after full,
//! `user_ids` and incremental runs; a failed run changes nothing; a restart
//! and a second process answer the same.

#[macro_use]
mod support;

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use support::backend::Backend;
use support::*;
use tag_host::data::gen::{gen_data_with, GenOptions};
use tag_plugin_api::Date;

const AS_OF: &str = "2025-01-15";

type Rows = BTreeMap<String, Vec<u32>>;

/// An expression as the server takes it, and the same question asked of one
/// user's tag ids.
type Question = (&'static str, fn(&[u32]) -> bool);

fn has(tags: &[u32], t: u32) -> bool {
    tags.contains(&t)
}

const QUESTIONS: &[Question] = &[
    ("1", |t| has(t, 1)),
    ("2 AND 3", |t| has(t, 2) && has(t, 3)),
    ("(5 AND 2) AND NOT 3", |t| {
        has(t, 5) && has(t, 2) && !has(t, 3)
    }),
    ("NOT 7", |t| !has(t, 7)),
    ("1 or 4 OR (6 and not 8)", |t| {
        has(t, 1) || has(t, 4) || (has(t, 6) && !has(t, 8))
    }),
    ("NOT (2 OR 3) AND 6", |t| {
        !(has(t, 2) || has(t, 3)) && has(t, 6)
    }),
];

/// The users of `rows` for whom `question` holds (NOT ranges over the
/// users holding any tag, as `user_tags` does).
fn independent(rows: &Rows, question: fn(&[u32]) -> bool) -> BTreeSet<String> {
    rows.iter()
        .filter(|(_, tags)| question(tags))
        .map(|(u, _)| u.clone())
        .collect()
}

fn generate(users: usize) -> tempfile::TempDir {
    let data = tempfile::tempdir().unwrap();
    let options = GenOptions {
        users,
        seed: 11,
        reference_date: Date::parse(AS_OF).unwrap().days(),
        row_group_rows: 700,
        duplicates: 30,
        ..GenOptions::default()
    };
    gen_data_with(data.path(), &options).expect("generate data");
    data
}

fn query(server: &TestServer, expr: &str, limit: usize, cursor: Option<&str>) -> Value {
    let mut body = json!({"expr": expr, "limit": limit});
    if let Some(c) = cursor {
        body["cursor"] = json!(c);
    }
    let (status, reply) = server.post("/api/v1/audiences/query", &body);
    assert_eq!(status, 200, "{expr}: {reply}");
    reply
}

/// Every member of `expr`, page by page (pages of 37).
fn paged(server: &TestServer, expr: &str) -> BTreeSet<String> {
    let (mut all, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let page = query(server, expr, 37, cursor.as_deref());
        for m in page["members"].as_array().unwrap() {
            all.push(m.as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    let set: BTreeSet<String> = all.iter().cloned().collect();
    assert_eq!(set.len(), all.len(), "{expr}: a member on two pages");
    set
}

/// A CSV export's users.
fn exported_csv(server: &TestServer, path: &str) -> BTreeSet<String> {
    let response = client()
        .get(format!("{}{path}", server.base))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "{path}");
    let text = response.text().unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("user_id"), "{path}");
    lines.map(str::to_string).collect()
}

/// Every question's count, pages and export equal the independent answer.
fn assert_every_question(server: &TestServer, rows: &Rows) {
    for (expr, question) in QUESTIONS {
        let want = independent(rows, *question);
        let first = query(server, expr, 5, None);
        assert_eq!(first["count"].as_u64(), Some(want.len() as u64), "{expr}");
        assert_eq!(paged(server, expr), want, "{expr}: pages");
        let encoded: String = url_encode(expr);
        let csv = exported_csv(
            server,
            &format!("/api/v1/audiences/query?expr={encoded}&format=csv"),
        );
        assert_eq!(csv, want, "{expr}: export");
    }
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A tag's changes in one run, asked of the feed page by page (pages of
/// 53 changed users): (added, removed).
fn feed(server: &TestServer, tag: u32, task: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut added, mut removed) = (BTreeSet::new(), BTreeSet::new());
    let mut cursor = String::new();
    loop {
        let (status, reply) = server
            .get(&format!(
                "/api/v1/tags/{tag}/changes?task_id={task}&limit=53{cursor}"
            ))
            .unwrap();
        assert_eq!(status, 200, "{reply}");
        let runs = reply["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 1, "{reply}");
        for (key, into) in [("added", &mut added), ("removed", &mut removed)] {
            for user in runs[0][key].as_array().unwrap() {
                assert!(
                    into.insert(user.as_str().unwrap().to_string()),
                    "listed twice"
                );
            }
        }
        let counts = (
            runs[0]["added_count"].as_u64(),
            runs[0]["removed_count"].as_u64(),
        );
        match reply["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => {
                assert_eq!(
                    counts,
                    (Some(added.len() as u64), Some(removed.len() as u64))
                );
                return (added, removed);
            }
        }
    }
}

/// Who gained and who lost `tag` between two states of `user_tags`.
fn difference(before: &Rows, after: &Rows, tag: u32) -> (BTreeSet<String>, BTreeSet<String>) {
    let holders = |rows: &Rows| -> BTreeSet<String> {
        rows.iter()
            .filter(|(_, t)| t.contains(&tag))
            .map(|(u, _)| u.clone())
            .collect()
    };
    let (b, a) = (holders(before), holders(after));
    (&a - &b, &b - &a)
}

/// Runs `body`, and checks the change feed of each of `tags` against the
/// difference of `user_tags` before and after.
fn run_and_check_feed(server: &TestServer, backend: &Backend, body: Value, tags: &[u32]) -> String {
    let before = backend.tags();
    let task = server.trigger(body);
    assert_eq!(server.wait(&task)["status"], "completed");
    let after = backend.tags();
    for &tag in tags {
        assert_eq!(
            feed(server, tag, &task),
            difference(&before, &after, tag),
            "tag {tag}"
        );
    }
    task
}

fn audiences_follow_full_user_ids_and_incremental_runs(backend: Backend) {
    let data = generate(1500);
    let plugins = reference_plugins_dir();
    let server = TestServer::start_with_store(data.path(), plugins.path(), &backend.url(), &[]);
    let all = [1, 2, 3, 4, 5, 6, 7, 8];
    // Before any run: nobody.
    assert_eq!(query(&server, "1 OR NOT 1", 10, None)["count"], 0);
    // A saved audience counts after every run.
    let (status, saved) = put_audience(&server, "vip-traders", "(5 AND 2) AND NOT 3");
    assert_eq!(status, 200, "{saved}");
    let first = run_and_check_feed(
        &server,
        &backend,
        json!({"tag_ids": all, "as_of": AS_OF}),
        &all,
    );
    assert_every_question(&server, &backend.tags());
    // A user_ids run of tag 2 over some holders and some not.
    let rows = backend.tags();
    let some: Vec<&String> = rows.keys().step_by(7).take(60).collect();
    run_and_check_feed(
        &server,
        &backend,
        json!({"tag_ids": [2, 6], "user_ids": some, "as_of": AS_OF}),
        &[2, 6],
    );
    // A rule that revokes tag 6 from everyone.
    let response = client()
        .put(format!("{}/api/v1/tags/6/rule", server.base))
        .json(&json!({"rule": {"field": "cash_balance", "operator": ">=", "value": 1.0e12}}))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    run_and_check_feed(
        &server,
        &backend,
        json!({"tag_ids": [6], "as_of": AS_OF}),
        &[6],
    );
    // An incremental run that gives many users tag 2.
    everyone_trades(data.path());
    let last = run_and_check_feed(
        &server,
        &backend,
        json!({"tag_ids": [2], "mode": "incremental", "as_of": AS_OF}),
        &[2],
    );
    let rows = backend.tags();
    assert_every_question(&server, &rows);
    assert_overlap(&server, &rows);
    // Each tag used is shown with its last run.
    let answer = query(&server, "2 AND 3", 0, None);
    let two = &answer["tags"][0];
    assert_eq!(two["tag_id"], 2, "{answer}");
    assert_eq!(two["last_run"]["task_id"], json!(last), "{answer}");
    assert_eq!(two["last_run"]["as_of"], AS_OF, "{answer}");
    assert_eq!(
        answer["tags"][1]["last_run"]["task_id"],
        json!(first),
        "{answer}"
    );
    // The saved audience: its count now, and one count per run, the last
    // equal to now.
    let (status, one) = server.get("/api/v1/audiences/vip-traders").unwrap();
    assert_eq!(status, 200, "{one}");
    let want = independent(&rows, QUESTIONS[2].1).len() as u64;
    assert_eq!(one["audience"]["count"].as_u64(), Some(want), "{one}");
    let counts = one["audience"]["counts"].as_array().unwrap();
    assert_eq!(counts.len(), 4, "{one}");
    assert_eq!(counts[3]["members"].as_u64(), Some(want), "{one}");
    let members = exported_csv(&server, "/api/v1/audiences/vip-traders/members?format=csv");
    assert_eq!(members, independent(&rows, QUESTIONS[2].1));
    // One tag's holders, exported.
    let holders = exported_csv(&server, "/api/v1/tags/2/users?format=csv");
    assert_eq!(holders, independent(&rows, |t| has(t, 2)));
}

fn put_audience(server: &TestServer, name: &str, expr: &str) -> (u16, Value) {
    let response = client()
        .put(format!("{}/api/v1/audiences/{name}", server.base))
        .json(&json!({"expr": expr, "description": "for the test"}))
        .send()
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

fn assert_overlap(server: &TestServer, rows: &Rows) {
    let tags = [1u32, 2, 5, 7];
    let (status, reply) = server.get("/api/v1/tags/overlap?tags=1,2,5,7").unwrap();
    assert_eq!(status, 200, "{reply}");
    for (i, a) in tags.iter().enumerate() {
        for (j, b) in tags.iter().enumerate() {
            let both = rows
                .values()
                .filter(|t| t.contains(a) && t.contains(b))
                .count();
            assert_eq!(
                reply["matrix"][i][j].as_u64(),
                Some(both as u64),
                "{a} and {b}"
            );
        }
    }
}

/// Every question's count, from `server`.
fn counts(server: &TestServer) -> Vec<u64> {
    QUESTIONS
        .iter()
        .map(|(expr, _)| query(server, expr, 0, None)["count"].as_u64().unwrap())
        .collect()
}

fn a_failed_run_changes_no_bitmap_and_a_restart_answers_the_same(backend: Backend) {
    let data = generate(700);
    let plugins = reference_plugins_dir();
    let server = TestServer::start_with_store(data.path(), plugins.path(), &backend.url(), &[]);
    server.run(json!({"tag_ids": [7, 2], "as_of": AS_OF}));
    let before = counts(&server);
    let version = query(&server, "7", 0, None)["version"].clone();
    let trigger = match backend {
        Backend::Sqlite(_) => "CREATE TRIGGER fail_writes BEFORE UPDATE ON user_tag_sets BEGIN SELECT RAISE(ABORT, 'injected write failure'); END;",
        Backend::Postgres(_) => "CREATE FUNCTION fail_writes() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected write failure'; END $$;
             CREATE TRIGGER fail_writes BEFORE UPDATE ON user_tag_sets FOR EACH ROW EXECUTE FUNCTION fail_writes();",
        Backend::Mysql(_) => "CREATE TRIGGER fail_writes BEFORE UPDATE ON user_tag_sets FOR EACH ROW SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'injected write failure'",
    };
    backend.execute(trigger, false);
    let id = server.trigger(json!({"tag_ids": [1, 2, 3, 6], "as_of": AS_OF}));
    assert_eq!(server.wait(&id)["status"], "failed");
    assert_eq!(counts(&server), before);
    assert_eq!(query(&server, "7", 0, None)["version"], version);
    let (status, reply) = server
        .get(&format!("/api/v1/tags/1/changes?task_id={id}"))
        .unwrap();
    assert_eq!((status, reply["runs"].clone()), (200, json!([])), "{reply}");
    drop(server);
    let again = TestServer::start_with_store(data.path(), plugins.path(), &backend.url(), &[]);
    assert_eq!(counts(&again), before);
    assert_every_question(&again, &backend.tags());
}

fn a_second_process_sees_a_commit_of_the_first(backend: Backend) {
    let data = generate(600);
    let plugins = reference_plugins_dir();
    let first = TestServer::start_with_store(data.path(), plugins.path(), &backend.url(), &[]);
    let second = TestServer::start_with_store(data.path(), plugins.path(), &backend.url(), &[]);
    assert_eq!(query(&second, "3 OR 8", 0, None)["count"], 0);
    first.run(json!({"tag_ids": [3, 8], "as_of": AS_OF}));
    let want = independent(&backend.tags(), |t| has(t, 3) || has(t, 8));
    assert!(!want.is_empty());
    let seen = std::time::Instant::now();
    // The first answers at once; the second within a second.
    assert_eq!(
        query(&first, "3 OR 8", 0, None)["count"].as_u64(),
        Some(want.len() as u64)
    );
    loop {
        let count = query(&second, "3 OR 8", 0, None)["count"].as_u64();
        if count == Some(want.len() as u64) {
            break;
        }
        assert!(
            seen.elapsed() < std::time::Duration::from_secs(1),
            "{count:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(paged(&second, "3 OR 8"), want);
}

/// The API's edges: errors point at the token, the read role may ask and
/// export but not save, unknown names and formats are refused clearly.
#[test]
fn expressions_are_checked_and_the_read_role_asks_but_does_not_save() {
    let data = generate(300);
    let plugins = reference_plugins_dir();
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(
        dir.path(),
        "admin-token-0123456789",
        "read-token-0123456789",
    );
    let server = ServerProcess::start_in(
        dir.path(),
        data.path(),
        plugins.path(),
        &["--tokens-file", tokens.to_str().unwrap()],
    );
    let call = |method: reqwest::Method, path: &str, token: &str, body: Option<Value>| {
        let mut request = client()
            .request(method, format!("{}{path}", server.base))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().unwrap_or(Value::Null))
    };
    let admin = "admin-token-0123456789";
    let reader = "read-token-0123456789";
    let trigger = call(
        reqwest::Method::POST,
        "/api/v1/tags/trigger",
        admin,
        Some(json!({"tag_ids": [1, 2], "as_of": AS_OF})),
    );
    assert_eq!(trigger.0, 202, "{}", trigger.1);
    let ask = |expr: &str, token: &str| {
        call(
            reqwest::Method::POST,
            "/api/v1/audiences/query",
            token,
            Some(json!({"expr": expr})),
        )
    };
    let (status, reply) = ask("(1 AND 2) AND NOT 33", reader);
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["success"], false);
    let error = reply["error"].as_str().unwrap();
    assert!(
        error.contains("position 18") && error.contains("\"33\""),
        "{error}"
    );
    for (expr, says) in [
        ("(1 AND 2", "closing parenthesis"),
        ("1 AND", "position 5"),
        ("1 2", "position 2"),
        ("", "position 0"),
    ] {
        let (status, reply) = ask(expr, reader);
        assert_eq!(status, 400, "{expr}: {reply}");
        assert!(
            reply["error"].as_str().unwrap().contains(says),
            "{expr}: {reply}"
        );
    }
    let (status, reply) = ask("1 AND NOT 2", reader);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["canonical"], "1 AND NOT 2");
    // Names: a tag's task class or description.
    let (_, available) = call(reqwest::Method::GET, "/api/v1/tags/available", reader, None);
    let class = available["available_tags"][0]["task_class"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, by_name) = ask(&format!("\"{class}\" AND NOT 2"), reader);
    assert_eq!(
        (status, &by_name["count"]),
        (200, &reply["count"]),
        "{by_name}"
    );
    // The read role may export, not save or delete.
    let csv = client()
        .get(format!(
            "{}/api/v1/audiences/query?expr=1&format=csv",
            server.base
        ))
        .bearer_auth(reader)
        .send()
        .unwrap();
    assert_eq!(csv.status().as_u16(), 200);
    let save = json!({"expr": "1 AND 2"});
    let (status, reply) = call(
        reqwest::Method::PUT,
        "/api/v1/audiences/both",
        reader,
        Some(save.clone()),
    );
    assert_eq!(status, 403, "{reply}");
    let (status, reply) = call(
        reqwest::Method::PUT,
        "/api/v1/audiences/both",
        admin,
        Some(save),
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["audience"]["saved_by"], "ops");
    let (status, _) = call(
        reqwest::Method::DELETE,
        "/api/v1/audiences/both",
        reader,
        None,
    );
    assert_eq!(status, 403);
    let (status, list) = call(reqwest::Method::GET, "/api/v1/audiences", reader, None);
    assert_eq!(
        (status, list["audiences"][0]["name"].clone()),
        (200, json!("both"))
    );
    let (status, _) = call(
        reqwest::Method::DELETE,
        "/api/v1/audiences/both",
        admin,
        None,
    );
    assert_eq!(status, 200);
    let (status, reply) = call(reqwest::Method::GET, "/api/v1/audiences/both", reader, None);
    assert_eq!(status, 404, "{reply}");
    assert!(reply["error"]
        .as_str()
        .unwrap()
        .contains("Audience not found"));
    // Bad formats, cursors, feeds and overlaps are 400s that say why.
    for path in [
        "/api/v1/audiences/query?expr=1&format=xlsx",
        "/api/v1/audiences/query?expr=1&cursor=abc",
        "/api/v1/audiences/query",
        "/api/v1/tags/1/changes",
        "/api/v1/tags/1/changes?since=yesterday",
        "/api/v1/tags/1/changes?since=2020-01-01&cursor=5",
        "/api/v1/tags/overlap?tags=1,999",
        "/api/v1/tags/overlap",
    ] {
        let (status, reply) = call(reqwest::Method::GET, path, reader, None);
        assert_eq!(status, 400, "{path}: {reply}");
        assert!(
            reply["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path}"
        );
    }
}

/// `tag-server export` writes a saved audience or an expression's members
/// to a file whole; an unknown audience or a bad expression fails clearly
/// and leaves no file.
#[test]
fn the_export_command_writes_what_the_api_answers() {
    let data = generate(800);
    let plugins = reference_plugins_dir();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tags.db");
    let server = TestServer::start(data.path(), plugins.path(), &db, &[]);
    server.run(json!({"tag_ids": [1, 2, 5, 3], "as_of": AS_OF}));
    assert_eq!(put_audience(&server, "vip", "(5 AND 2) AND NOT 3").0, 200);
    let rows = user_tags(&db);
    let store = format!("sqlite://{}", db.display());
    let plugins_dir = plugins.path().to_str().unwrap();
    let export = |extra: &[&str]| {
        let mut args = vec![
            "export",
            "--store",
            &store,
            "--plugins-dir",
            plugins_dir,
            "--quiet",
        ];
        args.extend_from_slice(extra);
        tag_server(&args)
    };
    let parquet = dir.path().join("vip.parquet");
    let (code, out, err) = export(&["--audience", "vip", "--out", parquet.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let frame = {
        use polars::prelude::*;
        ParquetReader::new(std::fs::File::open(&parquet).unwrap())
            .finish()
            .unwrap()
    };
    let users: BTreeSet<String> = frame
        .column("user_id")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|u| u.unwrap().to_string())
        .collect();
    assert_eq!(users, independent(&rows, QUESTIONS[2].1));
    assert!(
        out.contains(&format!("wrote {} members", users.len())),
        "{out}"
    );
    let csv = dir.path().join("ones.csv");
    let (code, out, err) = export(&["--expr", "1 OR 3", "--out", csv.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let text = std::fs::read_to_string(&csv).unwrap();
    let listed: BTreeSet<String> = text.lines().skip(1).map(str::to_string).collect();
    assert_eq!(listed, independent(&rows, |t| has(t, 1) || has(t, 3)));
    let missing = dir.path().join("none.csv");
    let (code, _, err) = export(&["--audience", "nobody", "--out", missing.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("no saved audience is named \"nobody\""),
        "{err}"
    );
    let (code, _, err) = export(&["--expr", "1 AND", "--out", missing.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("invalid audience expression") && err.contains("position 5"),
        "{err}"
    );
    assert!(!missing.exists());
}

/// A store whose rows were written before it kept bitmaps (its audience
/// tables emptied here) is indexed at the next start.
fn rows_from_before_audiences_are_indexed_at_start(backend: Backend) {
    let data = generate(500);
    let plugins = reference_plugins_dir();
    let server = TestServer::start_with_store(data.path(), plugins.path(), &backend.url(), &[]);
    server.run(json!({"tag_ids": [1, 2, 3, 5, 6, 7], "as_of": AS_OF}));
    drop(server);
    for table in [
        "audience_meta",
        "tag_bitmaps",
        "tag_changes",
        "retired_users",
        "audience_ids",
    ] {
        backend.execute(&format!("DELETE FROM {table}"), false);
    }
    backend.execute("UPDATE user_tag_sets SET uidx = NULL", false);
    let again = TestServer::start_with_store(data.path(), plugins.path(), &backend.url(), &[]);
    assert_every_question(&again, &backend.tags());
}

/// Runs that overlap in time (each of other tags, so they may write at
/// once where the store allows it) each fold into the bitmaps the others
/// left: every answer equals `user_tags` after them all.
fn overlapping_runs_keep_every_bitmap(backend: Backend) {
    let data = generate(1500);
    let plugins = reference_plugins_dir();
    let server = TestServer::start_with_store(data.path(), plugins.path(), &backend.url(), &[]);
    let ids: Vec<String> = [vec![1, 6], vec![2, 8], vec![3, 7], vec![4, 5]]
        .iter()
        .map(|tags| server.trigger(json!({"tag_ids": tags, "as_of": AS_OF})))
        .collect();
    for id in &ids {
        assert_eq!(server.wait(id)["status"], "completed");
    }
    let rows = backend.tags();
    assert_every_question(&server, &rows);
    assert_overlap(&server, &rows);
}

/// A change feed older than `--change-retention-days` is deleted at start.
fn change_feeds_past_retention_are_deleted(backend: Backend) {
    let data = generate(300);
    let plugins = reference_plugins_dir();
    let server = TestServer::start_with_store(data.path(), plugins.path(), &backend.url(), &[]);
    let old = server.trigger(json!({"tag_ids": [7], "as_of": AS_OF}));
    server.wait(&old);
    let recent = server.trigger(json!({"tag_ids": [7, 1], "as_of": AS_OF}));
    server.wait(&recent);
    drop(server);
    backend.execute(
        &format!(
            "UPDATE tag_changes SET committed_at = '2000-01-01T00:00:00' WHERE task_id = '{old}'"
        ),
        false,
    );
    let server = TestServer::start_with_store(
        data.path(),
        plugins.path(),
        &backend.url(),
        &["--change-retention-days", "7"],
    );
    let runs = |task: &str| {
        let (status, reply) = server
            .get(&format!("/api/v1/tags/7/changes?task_id={task}"))
            .unwrap();
        assert_eq!(status, 200, "{reply}");
        reply["runs"].as_array().unwrap().len()
    };
    assert_eq!((runs(&old), runs(&recent)), (0, 1));
    let (_, since) = server
        .get("/api/v1/tags/7/changes?since=2001-01-01")
        .unwrap();
    assert_eq!(since["runs"][0]["task_id"], json!(recent), "{since}");
}

on_every_backend!(
    audiences_follow_full_user_ids_and_incremental_runs,
    a_failed_run_changes_no_bitmap_and_a_restart_answers_the_same,
    a_second_process_sees_a_commit_of_the_first,
    rows_from_before_audiences_are_indexed_at_start,
    change_feeds_past_retention_are_deleted,
    overlapping_runs_keep_every_bitmap,
);
