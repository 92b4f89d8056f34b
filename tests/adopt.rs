//! Moving from the old system: a MariaDB database that already holds the
//! old system's `user_tags` table, created with its DDL and written its way,
//! is adopted by a real server on `--store mysql://...`: the rows become
//! the current tags, the first run updates and revokes in place instead of
//! re-creating, and the old readers' query keeps its columns and types.
//! A table that cannot be kept that way is refused, and left as it was.

mod support;

use mysql::consts::ColumnType;
use mysql::prelude::Queryable;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use support::backend::Backend;
use support::*;
use tag_host::data::gen::{gen_data_with, GenOptions};
use tag_plugin_api::Date;

const AS_OF: &str = "2025-01-15";

/// The old system's results table, as its init SQL creates it.
const OLD_DDL: &str = "CREATE TABLE user_tags (
    id BIGINT PRIMARY KEY AUTO_INCREMENT,
    user_id VARCHAR(100) NOT NULL COMMENT '用户ID',
    tag_ids JSON NOT NULL COMMENT '用户的所有标签ID数组',
    tag_details JSON COMMENT '标签详细信息（key-value形式）',
    created_time TIMESTAMP DEFAULT CURRENT_TIMESTAMP COMMENT '创建时间（永远不变）',
    updated_time TIMESTAMP DEFAULT CURRENT_TIMESTAMP COMMENT '更新时间（由UPSERT逻辑控制）',
    INDEX idx_user_id (user_id),
    INDEX idx_created_time (created_time),
    INDEX idx_updated_time (updated_time),
    UNIQUE KEY uk_user_id (user_id)
) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci COMMENT '用户标签结果表（一个用户一条记录，包含标签ID数组）'";

/// The old system's other layout, one row per user and day.
const DAILY_DDL: &str = "CREATE TABLE user_tags (
    id BIGINT PRIMARY KEY AUTO_INCREMENT,
    user_id VARCHAR(100) NOT NULL,
    tag_ids JSON NOT NULL COMMENT '用户的所有标签ID数组 [1,2,3,5]',
    tag_details JSON COMMENT '标签详细信息',
    computed_date DATE NOT NULL,
    created_time TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_time TIMESTAMP DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
    UNIQUE KEY uk_user_date (user_id, computed_date)
) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci";

/// The old system's rule table, under the name of tag-server's.
const OLD_RULES_DDL: &str = "CREATE TABLE tag_rules (
    rule_id INT PRIMARY KEY AUTO_INCREMENT,
    tag_id INT NOT NULL COMMENT '标签ID',
    rule_conditions JSON NOT NULL COMMENT '规则条件（JSON格式）',
    is_active BOOLEAN DEFAULT TRUE COMMENT '是否激活',
    created_date TIMESTAMP DEFAULT CURRENT_TIMESTAMP
)";

/// What the other services run against it.
const READER: &str =
    "SELECT user_id, tag_ids, tag_details, created_time, updated_time FROM user_tags ORDER BY user_id";

/// When the old system wrote its rows.
const OLD_CREATED: &str = "2024-03-01 08:00:00";
const OLD_UPDATED: &str = "2024-06-01 09:30:00";

/// A tag the old system had and tag-server does not serve.
const RETIRED_TAG: u32 = 42;

/// A row of the table with its id: id, user, tag_ids, tag_details, times.
type Stored = (i64, String, String, Option<String>, String, String);

fn conn(backend: &Backend) -> mysql::PooledConn {
    mysql::Pool::new(backend.url().as_str())
        .and_then(|p| p.get_conn())
        .expect("connect to MariaDB")
}

/// The old system's `tag_details` for `tags`: name and category per tag.
fn old_details(tags: &[u32]) -> String {
    let names = [
        "高净值用户",
        "活跃交易者",
        "低风险用户",
        "新注册用户",
        "VIP客户",
        "现金充足用户",
        "年轻用户",
        "最近活跃用户",
    ];
    let entries: serde_json::Map<String, Value> = tags
        .iter()
        .map(|&t| {
            let name = names.get(t as usize - 1).copied().unwrap_or("已下线标签");
            (
                t.to_string(),
                json!({"tag_name": name, "tag_category": "旧系统"}),
            )
        })
        .collect();
    Value::Object(entries).to_string()
}

/// Every row with its id, in id order.
fn stored_rows(backend: &Backend) -> Vec<Stored> {
    conn(backend)
        .query("SELECT id, user_id, tag_ids, tag_details, created_time, updated_time FROM user_tags ORDER BY id")
        .expect("read user_tags")
}

/// Every row with its id, by user.
fn stored(backend: &Backend) -> BTreeMap<String, Stored> {
    stored_rows(backend)
        .into_iter()
        .map(|r| (r.1.clone(), r))
        .collect()
}

/// The tables and views of the database.
fn tables(backend: &Backend) -> Vec<String> {
    conn(backend).query("SHOW TABLES").expect("list tables")
}

/// The names and wire types of the old readers' result columns, and the
/// declared columns of the table (name, then type, nullability, default).
type Shape = (Vec<(String, ColumnType)>, Vec<(String, String)>);

fn reader_shape(backend: &Backend) -> Shape {
    let mut conn = conn(backend);
    let result = conn.query_iter(READER).expect("the readers' query");
    let columns = result
        .columns()
        .as_ref()
        .iter()
        .map(|c| (c.name_str().to_string(), c.column_type()))
        .collect();
    drop(result);
    let declared = conn
        .query(
            "SELECT COLUMN_NAME, CONCAT(COLUMN_TYPE, ' ', IS_NULLABLE, ' ', COALESCE(COLUMN_DEFAULT, '-'))
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'user_tags'
             ORDER BY ORDINAL_POSITION",
        )
        .expect("columns");
    (columns, declared)
}

/// The users of the old table and what the first run does to each.
struct Plan {
    /// Hold exactly what the run finds: their rows must not change at all.
    kept: Vec<String>,
    /// Hold a tag the run revokes, besides ones it keeps.
    loses_one: String,
    /// Lack one tag the run grants.
    gains_one: String,
    /// Hold a tag the run revokes and nothing else: the row goes.
    loses_all: String,
    /// Hold only a tag tag-server does not serve: the row stays as it is.
    retired: String,
}

impl Plan {
    fn new(expected: &BTreeMap<String, Vec<u32>>, users: usize) -> Plan {
        let mut holders = expected.keys().cloned();
        let kept: Vec<String> = holders.by_ref().take(3).collect();
        let loses_one = holders
            .find(|u| expected[u].len() < 8)
            .expect("a user without every tag");
        let gains_one = holders
            .find(|u| expected[u].len() >= 2)
            .expect("a user with two tags");
        let mut without = (1..=users)
            .map(|i| format!("user_{i:06}"))
            .filter(|u| !expected.contains_key(u));
        Plan {
            kept,
            loses_one,
            gains_one,
            loses_all: without.next().expect("a user without tags"),
            retired: without.next().expect("a second user without tags"),
        }
    }

    /// The old rows: user and `tag_ids`.
    fn old_rows(&self, expected: &BTreeMap<String, Vec<u32>>) -> Vec<(String, Vec<u32>)> {
        let mut rows: Vec<(String, Vec<u32>)> = self
            .kept
            .iter()
            .map(|u| (u.clone(), expected[u].clone()))
            .collect();
        let mut more = expected[&self.loses_one].clone();
        more.push((1..=8).find(|t| !more.contains(t)).unwrap());
        more.sort_unstable();
        rows.push((self.loses_one.clone(), more));
        let mut fewer = expected[&self.gains_one].clone();
        fewer.pop();
        rows.push((self.gains_one.clone(), fewer));
        rows.push((self.loses_all.clone(), vec![1]));
        rows.push((self.retired.clone(), vec![RETIRED_TAG]));
        rows
    }
}

/// Creates the old table and writes `rows` the old system's way (one
/// `INSERT` per user with JSON text, times of its own).
fn write_old_table(backend: &Backend, rows: &[(String, Vec<u32>)]) {
    let mut conn = conn(backend);
    conn.query_drop(OLD_DDL).expect("the old DDL");
    for (user, tags) in rows {
        conn.exec_drop(
            "INSERT INTO user_tags (user_id, tag_ids, tag_details, created_time, updated_time) VALUES (?, ?, ?, ?, ?)",
            (user, serde_json::to_string(tags).unwrap(), old_details(tags), OLD_CREATED, OLD_UPDATED),
        )
        .expect("an old row");
    }
}

/// `created_time` of `user`'s row as the API shows times (UTC).
fn utc_created(backend: &Backend, user: &str) -> String {
    let seconds: i64 = conn(backend)
        .exec_first(
            "SELECT UNIX_TIMESTAMP(created_time) FROM user_tags WHERE user_id = ?",
            (user,),
        )
        .expect("read")
        .expect("a row");
    chrono::DateTime::from_timestamp(seconds, 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

fn entries(details: &str) -> serde_json::Map<String, Value> {
    match serde_json::from_str(details).expect("tag_details is JSON") {
        Value::Object(map) => map,
        other => panic!("tag_details {other} is not an object"),
    }
}

#[test]
fn the_old_systems_table_is_adopted_and_the_first_run_updates_it_in_place() {
    let backend = Backend::mysql();
    let data = tempfile::tempdir().unwrap();
    let users = 400;
    let options = GenOptions {
        users,
        seed: 11,
        reference_date: Date::parse(AS_OF).unwrap().days(),
        ..GenOptions::default()
    };
    gen_data_with(data.path(), &options).expect("generate data");
    let all = [1, 2, 3, 4, 5, 6, 7, 8];
    let expected = oracle::expected(data.path(), Date::parse(AS_OF).unwrap().days(), &all);
    let plan = Plan::new(&expected, users);
    write_old_table(&backend, &plan.old_rows(&expected));
    let before = stored(&backend);
    let shape = reader_shape(&backend);
    assert_eq!(shape.0[3].1, ColumnType::MYSQL_TYPE_TIMESTAMP);

    let plugins = reference_plugins_dir();
    let server = TestServer::start_with_store(data.path(), plugins.path(), &backend.url(), &[]);
    // Adopted, not yet run: the table is as the old system left it, and
    // the API serves its rows as the current tags.
    assert_eq!(stored(&backend), before);
    let kept = &plan.kept[0];
    let (code, row) = server.get(&format!("/api/v1/users/{kept}/tags")).unwrap();
    assert_eq!(code, 200, "{row}");
    assert_eq!(row["tag_ids"], json!(expected[kept]));
    assert_eq!(row["created_time"], utc_created(&backend, kept));
    let old: Value = serde_json::from_str(&old_details(&expected[kept])).unwrap();
    assert_eq!(
        row["tag_details"], old,
        "the old details are the current ones"
    );

    let result = server.run(json!({"tag_ids": all, "as_of": AS_OF}));
    let new_users = expected.keys().filter(|u| !before.contains_key(*u)).count();
    // Two rows changed, one deleted, the rest new: nothing re-created.
    assert_eq!(result["rows_upserted"], json!(2 + new_users), "{result}");
    assert_eq!(result["rows_deleted"], json!(1), "{result}");
    check_after_first_run(&backend, &plan, &before, &expected);
    assert_eq!(reader_shape(&backend), shape);

    // A restart adopts nothing again; a second run changes nothing.
    let after = stored(&backend);
    drop(server);
    let server = TestServer::start_with_store(data.path(), plugins.path(), &backend.url(), &[]);
    let again = server.run(json!({"tag_ids": all, "as_of": AS_OF}));
    assert_eq!(
        (
            again["rows_upserted"].as_u64(),
            again["rows_deleted"].as_u64()
        ),
        (Some(0), Some(0)),
        "{again}"
    );
    assert_eq!(stored(&backend), after);
}

/// The table after the first run: every user's tags as the oracle says
/// (and the retired tag kept), kept rows untouched, changed rows updated
/// in place, the revoked user's row gone, new users' rows new.
fn check_after_first_run(
    backend: &Backend,
    plan: &Plan,
    before: &BTreeMap<String, Stored>,
    expected: &BTreeMap<String, Vec<u32>>,
) {
    let mut want = expected.clone();
    want.insert(plan.retired.clone(), vec![RETIRED_TAG]);
    assert_same_tags(&backend.tags(), &want);
    let after = stored(backend);
    for user in plan.kept.iter().chain([&plan.retired]) {
        assert_eq!(after[user], before[user], "{user}'s row was rewritten");
    }
    for user in [&plan.loses_one, &plan.gains_one] {
        let (old, new) = (&before[user], &after[user]);
        assert_eq!(
            (new.0, &new.4),
            (old.0, &old.4),
            "{user}: same row, same created_time"
        );
        assert_ne!(new.5, old.5, "{user}: updated_time moves with tag_ids");
        let (old_entries, new_entries) = (
            entries(old.3.as_deref().unwrap()),
            entries(new.3.as_deref().unwrap()),
        );
        for tag in &expected[user] {
            let key = tag.to_string();
            match old_entries.get(&key) {
                Some(entry) => assert_eq!(
                    &new_entries[&key], entry,
                    "{user}: a kept tag keeps its details"
                ),
                None => assert!(
                    new_entries[&key]["hit_time"].is_string(),
                    "{user}: a new tag's details"
                ),
            }
        }
        assert_eq!(
            new_entries.len(),
            expected[user].len(),
            "{user}: a revoked tag's details go"
        );
    }
    assert!(
        !after.contains_key(&plan.loses_all),
        "a user left without tags keeps no row"
    );
    let last_old_id = before.values().map(|r| r.0).max().unwrap();
    for (user, row) in after.iter().filter(|(u, _)| !before.contains_key(*u)) {
        assert!(row.0 > last_old_id && row.4 == row.5, "{user}: {row:?}");
    }
}

/// Opening the store (what the server and `tag-server run` do first)
/// fails; the message.
fn refusal(backend: &Backend) -> String {
    match tag_host::store::open(&backend.url()) {
        Ok(_) => panic!("the database must be refused"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_table_that_cannot_be_kept_is_refused_and_left_as_it_was() {
    let daily = Backend::mysql();
    daily.execute(DAILY_DDL, false);
    daily.execute(
        "INSERT INTO user_tags (user_id, tag_ids, tag_details, computed_date) VALUES
         ('user_000001', '[1]', '{}', '2024-03-01'), ('user_000001', '[1, 3]', '{}', '2024-03-02')",
        false,
    );
    let before = stored_rows(&daily);
    let err = refusal(&daily);
    for part in [
        "cannot adopt the existing table user_tags",
        "column user_id is not unique on its own",
        "uk_user_date (user_id, computed_date)",
        "ALTER TABLE user_tags ADD UNIQUE KEY uk_user_id (user_id)",
        "Nothing was changed",
    ] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
    assert_eq!(tables(&daily), ["user_tags"]);
    assert_eq!(stored_rows(&daily), before);

    // The old system's rules under tag-server's table name: refused until
    // renamed as the message says, then adopted.
    let rules = Backend::mysql();
    rules.execute(OLD_DDL, false);
    rules.execute(OLD_RULES_DDL, false);
    let err = refusal(&rules);
    for part in [
        "table tag_rules already exists",
        "RENAME TABLE tag_rules TO old_tag_rules",
        "Nothing was changed",
    ] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
    assert_eq!(tables(&rules), ["tag_rules", "user_tags"]);
    rules.execute("RENAME TABLE tag_rules TO old_tag_rules", false);
    drop(tag_host::store::open(&rules.url()).expect("adopted once the old rules are renamed"));
    let kind: Option<String> = conn(&rules)
        .query_first("SELECT TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'user_tags'")
        .unwrap();
    assert_eq!(kind.as_deref(), Some("BASE TABLE"));
}
