//! Adopting the old system's `user_tags` table.
//!
//! The old system kept one row per user in a `user_tags` table (`user_id`,
//! `tag_ids` and `tag_details` as JSON, `created_time`, `updated_time`),
//! which other services read. A database that holds it is adopted: at the
//! first start its rows are copied into the compact tables in one
//! transaction (each distinct `tag_details` entry becomes a grant, the
//! times are kept), recorded in `adopted_tables`. The table itself stays
//! as it is (columns, types, keys, ids), and every run writes its changes
//! to it in the run's own transaction ([`Mirror::sync`]): a changed row is
//! updated in place (its id and `created_time` kept), a user left without
//! tags loses the row, a new user gets one. A table that cannot be kept
//! that way is refused before anything is created, with what to change.

use super::{db, insert_rows};
use crate::store::{parse_tag_ids, push_ids, StoreError};
use ::mysql::prelude::Queryable;
use ::mysql::{PooledConn, Value};
use std::collections::HashMap;

/// The old table's columns that tag-server reads and writes.
const COLUMNS: [&str; 5] = [
    "user_id",
    "tag_ids",
    "tag_details",
    "created_time",
    "updated_time",
];

/// Rows read per query, and written per statement, while copying.
const CHUNK: usize = 1000;

/// A row's `tag_details` from its grant ids in `run_stage`.
const DETAILS: &str = tag_details_of!("s.grants");

/// An adopted `user_tags` table, as runs write it.
#[derive(Debug, Clone)]
pub struct Mirror {
    /// The collation of its `user_id` (utf8mb4; the old DDL's is
    /// case-insensitive).
    collation: String,
    /// The type of its `user_id`, e.g. `varchar(100)`.
    user_id_type: String,
}

/// A column of the table, as `information_schema.COLUMNS` describes it.
struct Column {
    name: String,
    data_type: String,
    column_type: String,
    nullable: bool,
    has_default: bool,
    /// Filled in by the database (auto-increment or generated).
    automatic: bool,
    charset: Option<String>,
    collation: Option<String>,
}

/// A row of the old table: user, `tag_ids`, `tag_details` and the two
/// times in Unix seconds.
type OldRow = (
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

/// `TABLE_TYPE` of `name` in the current database (`BASE TABLE`, `VIEW`).
pub fn table_kind(conn: &mut PooledConn, name: &str) -> Result<Option<String>, StoreError> {
    conn.exec_first(
        "SELECT TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
        (name,),
    )
    .map_err(db)
}

/// Before the first migration: refuses a database holding a table or view
/// under a name the migrations create (`ours`), and an old `user_tags`
/// that cannot be adopted; whether there is one to adopt.
pub fn before_first_migration(conn: &mut PooledConn, ours: &[&str]) -> Result<bool, StoreError> {
    let tables: Vec<(String, String)> = conn
        .query("SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()")
        .map_err(db)?;
    let mut adopting = false;
    for (name, kind) in tables {
        if name == "user_tags" && kind != "BASE TABLE" {
            let kind = kind.to_lowercase();
            return Err(refuse(&format!(
                "it is a {kind}, not a table; rename or drop it (RENAME TABLE user_tags TO old_user_tags), or point --store at another database"
            )));
        } else if name == "user_tags" {
            adopting = true;
        } else if ours.contains(&name.as_str()) {
            return Err(StoreError::Database(format!(
                "table {name} already exists in this database, which has no tag-server schema yet, and tag-server keeps its own {name}: \
                 if it is the old system's, rename it (RENAME TABLE {name} TO old_{name}) and start again; \
                 if an earlier tag-server start was cut off while creating its tables, drop them. Nothing was changed"
            )));
        }
    }
    if adopting {
        let checked = check_table(conn).and_then(|_| {
            for_each_chunk(conn, |_, rows| {
                rows.iter().try_for_each(|r| tag_ids(r).map(drop))
            })
        });
        checked.map_err(|e| match e {
            StoreError::Database(m) => StoreError::Database(format!("{m}. Nothing was changed")),
            e => e,
        })?;
    }
    Ok(adopting)
}

/// After the migrations, where `user_tags` is a table: checks it still
/// can be written, and copies its rows the first time.
pub fn adopt(conn: &mut PooledConn) -> Result<Mirror, StoreError> {
    let mirror = check_table(conn)?;
    let adopted: Option<i64> = conn
        .query_first("SELECT rows_adopted FROM adopted_tables WHERE table_name = 'user_tags'")
        .map_err(db)?;
    if adopted.is_none() {
        conn.query_drop("START TRANSACTION").map_err(db)?;
        match copy_rows(conn) {
            Ok(rows) => {
                conn.query_drop("COMMIT").map_err(db)?;
                tracing::info!(
                    rows,
                    "adopted the existing user_tags table: its rows are the current tags, and runs update it in place"
                );
            }
            Err(e) => {
                let _ = conn.query_drop("ROLLBACK");
                return Err(e);
            }
        }
    }
    Ok(mirror)
}

/// A refusal of the existing `user_tags`.
fn refuse(what: &str) -> StoreError {
    StoreError::Database(format!("cannot adopt the existing table user_tags: {what}"))
}

fn columns(conn: &mut PooledConn) -> Result<Vec<Column>, StoreError> {
    type Described = (
        String,
        String,
        String,
        String,
        Option<String>,
        String,
        String,
    );
    let rows: Vec<(Described, Option<String>, Option<String>)> = conn
        .query_map(
            "SELECT LOWER(COLUMN_NAME), DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, EXTRA,
                    COALESCE(GENERATION_EXPRESSION, ''), CHARACTER_SET_NAME, COLLATION_NAME
             FROM information_schema.COLUMNS
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'user_tags' ORDER BY ORDINAL_POSITION",
            |(name, data_type, column_type, nullable, default, extra, generated, charset, collation)| {
                ((name, data_type, column_type, nullable, default, extra, generated), charset, collation)
            },
        )
        .map_err(db)?;
    Ok(rows
        .into_iter()
        .map(
            |(
                (name, data_type, column_type, nullable, default, extra, generated),
                charset,
                collation,
            )| Column {
                name,
                data_type: data_type.to_ascii_lowercase(),
                column_type,
                nullable: nullable == "YES",
                has_default: default.is_some(),
                automatic: extra.to_ascii_lowercase().contains("auto_increment")
                    || !generated.is_empty(),
                charset,
                collation,
            },
        )
        .collect())
}

/// Refuses a table runs could not keep right: a missing column, one of
/// the wrong type, no unique `user_id`, no transactions, or a column a
/// new row could not fill.
fn check_table(conn: &mut PooledConn) -> Result<Mirror, StoreError> {
    let columns = columns(conn)?;
    if let Some(missing) = COLUMNS
        .iter()
        .find(|n| !columns.iter().any(|c| c.name == **n))
    {
        return Err(refuse(&format!(
            "it has no column {missing} (the old system's table has user_id, tag_ids, tag_details, created_time and updated_time); \
             add it, or point --store at a database without a user_tags table"
        )));
    }
    let engine: Option<Option<String>> = conn
        .query_first("SELECT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'user_tags'")
        .map_err(db)?;
    let engine = engine.flatten().unwrap_or_default();
    if !engine.eq_ignore_ascii_case("InnoDB") {
        return Err(refuse(&format!(
            "its engine {engine} has no transactions, so a failed run could leave it half-written; convert it (ALTER TABLE user_tags ENGINE = InnoDB)"
        )));
    }
    check_unique(conn)?;
    columns.iter().try_for_each(check_column)?;
    let user_id = columns.iter().find(|c| c.name == "user_id");
    let collation = user_id
        .and_then(|c| c.collation.clone())
        .unwrap_or_default();
    if collation.is_empty()
        || !collation
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(refuse(&format!(
            "column user_id has the collation {collation:?}, which tag-server cannot name in SQL"
        )));
    }
    Ok(Mirror {
        collation,
        user_id_type: user_id.map(|c| c.column_type.clone()).unwrap_or_default(),
    })
}

/// Refuses a table without a unique key on `user_id` alone: it could hold
/// several rows per user.
fn check_unique(conn: &mut PooledConn) -> Result<(), StoreError> {
    let keys: Vec<(String, String)> = conn
        .query(
            "SELECT INDEX_NAME, GROUP_CONCAT(LOWER(COLUMN_NAME) ORDER BY SEQ_IN_INDEX SEPARATOR ', ')
             FROM information_schema.STATISTICS
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'user_tags' AND NON_UNIQUE = 0
             GROUP BY INDEX_NAME ORDER BY INDEX_NAME",
        )
        .map_err(db)?;
    if keys.iter().any(|(_, columns)| columns == "user_id") {
        return Ok(());
    }
    let keys = match keys.is_empty() {
        true => "it has no unique key".to_string(),
        false => {
            let listed: Vec<String> = keys.iter().map(|(k, c)| format!("{k} ({c})")).collect();
            format!("its unique keys: {}", listed.join(", "))
        }
    };
    Err(refuse(&format!(
        "column user_id is not unique on its own ({keys}), so the table can hold several rows per user, and tag-server keeps one row per user; \
         keep one row per user and add the key (ALTER TABLE user_tags ADD UNIQUE KEY uk_user_id (user_id)), or point --store at another database"
    )))
}

/// Refuses a column of a type tag-server cannot read or write, or one
/// that a new row could not fill.
fn check_column(c: &Column) -> Result<(), StoreError> {
    let text = matches!(
        c.data_type.as_str(),
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext"
    );
    let utf8mb4 = c.charset.as_deref() == Some("utf8mb4");
    let json = c.data_type == "json" || (text && utf8mb4);
    let name = c.name.as_str();
    let (wanted, fix) = match name {
        "user_id" if !(text && utf8mb4) => ("text in utf8mb4", "VARCHAR(255) CHARACTER SET utf8mb4 NOT NULL"),
        "tag_ids" | "tag_details" if !json => ("JSON", "JSON"),
        "created_time" | "updated_time" if !matches!(c.data_type.as_str(), "timestamp" | "datetime") => {
            ("a TIMESTAMP or DATETIME", "TIMESTAMP NULL DEFAULT CURRENT_TIMESTAMP")
        }
        _ if !COLUMNS.contains(&name) && !c.nullable && !c.has_default && !c.automatic => {
            return Err(refuse(&format!(
                "column {name} ({}) is NOT NULL without a default, and tag-server writes only user_id, tag_ids, tag_details, created_time and updated_time \
                 when a user gets a row; give it a default (ALTER TABLE user_tags ALTER COLUMN {name} SET DEFAULT ...) or allow NULL in it",
                c.column_type
            )))
        }
        _ => return Ok(()),
    };
    let charset = c
        .charset
        .as_ref()
        .map(|s| format!(" in {s}"))
        .unwrap_or_default();
    Err(refuse(&format!(
        "column {name} is {}{charset}, and tag-server needs {wanted} there; convert it (ALTER TABLE user_tags MODIFY {name} {fix}) and start again",
        c.column_type
    )))
}

/// Calls `f` with the rows of the old table, `CHUNK` at a time, in
/// `user_id` order (the table's own collation).
fn for_each_chunk(
    conn: &mut PooledConn,
    mut f: impl FnMut(&mut PooledConn, Vec<OldRow>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    const SELECT: &str = "SELECT user_id, tag_ids, tag_details,
        CAST(FLOOR(UNIX_TIMESTAMP(created_time)) AS SIGNED), CAST(FLOOR(UNIX_TIMESTAMP(updated_time)) AS SIGNED)
        FROM user_tags";
    let mut after: Option<String> = None;
    loop {
        let rows: Vec<OldRow> = match &after {
            None => conn.query(format!("{SELECT} ORDER BY user_id LIMIT {CHUNK}")),
            Some(last) => conn.exec(
                format!("{SELECT} WHERE user_id > ? ORDER BY user_id LIMIT {CHUNK}"),
                (last,),
            ),
        }
        .map_err(db)?;
        let Some(last) = rows.last() else {
            return Ok(());
        };
        after = Some(last.0.clone());
        f(conn, rows)?;
    }
}

/// A row's tag ids, ascending without duplicates (none for `NULL`).
fn tag_ids(row: &OldRow) -> Result<Vec<u32>, StoreError> {
    let Some(text) = &row.1 else {
        return Ok(Vec::new());
    };
    let mut ids: Vec<u32> = parse_tag_ids(text).map_err(|_| {
        refuse(&format!(
            "the row of user {:?} has tag_ids {text}, which is not a JSON array of tag ids; correct or delete that row and start again",
            row.0
        ))
    })?;
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Copies the old rows into `user_tag_sets`, each tag with the grant of
/// its `tag_details` entry (`{}` where the row has none), and records the
/// adoption; the rows copied. Rows without tags are left out, as a run
/// would delete them. Runs in the caller's transaction.
fn copy_rows(conn: &mut PooledConn) -> Result<u64, StoreError> {
    let now = chrono::Utc::now().timestamp();
    let mut grants: HashMap<(u32, String), u32> = HashMap::new();
    let mut copied = 0;
    let (mut ids_text, mut grants_text) = (String::new(), String::new());
    for_each_chunk(conn, |conn, rows| {
        let (mut values, mut count) = (Vec::new(), 0);
        for row in &rows {
            let ids = tag_ids(row)?;
            if ids.is_empty() {
                continue;
            }
            let details: Option<serde_json::Value> =
                row.2.as_deref().and_then(|d| serde_json::from_str(d).ok());
            let mut held = Vec::with_capacity(ids.len());
            for &tag_id in &ids {
                let entry = details.as_ref().and_then(|d| d.get(tag_id.to_string()));
                let entry = entry.map_or_else(|| "{}".to_string(), |e| e.to_string());
                held.push(grant(conn, &mut grants, tag_id, entry)?);
            }
            push_ids(&mut ids_text, ids.into_iter());
            push_ids(&mut grants_text, held.into_iter());
            let created = row.3.or(row.4).unwrap_or(now);
            let updated = row.4.or(row.3).unwrap_or(now);
            values.extend([
                Value::from(&row.0),
                Value::from(&ids_text),
                Value::from(&grants_text),
                Value::from(created),
                Value::from(updated),
            ]);
            count += 1;
        }
        copied += count as u64;
        insert_rows(
            conn,
            "INSERT INTO user_tag_sets (user_id, tag_ids, grants, created_time, updated_time) VALUES",
            "(?, ?, ?, ?, ?)",
            count,
            values,
        )
    })?;
    conn.exec_drop(
        "INSERT INTO adopted_tables (table_name, adopted_at, rows_adopted) VALUES ('user_tags', ?, ?)",
        (crate::model::now_timestamp(), copied),
    )
    .map_err(db)?;
    Ok(copied)
}

/// The grant of `tag_id` with the detail `entry`, created the first time.
fn grant(
    conn: &mut PooledConn,
    grants: &mut HashMap<(u32, String), u32>,
    tag_id: u32,
    entry: String,
) -> Result<u32, StoreError> {
    if let Some(&id) = grants.get(&(tag_id, entry.clone())) {
        return Ok(id);
    }
    conn.exec_drop(
        "INSERT INTO tag_grants (tag_id, detail) VALUES (?, ?)",
        (tag_id, &entry),
    )
    .map_err(db)?;
    let id = u32::try_from(conn.last_insert_id())
        .map_err(|_| StoreError::Corrupt("a grant id is out of range".into()))?;
    grants.insert((tag_id, entry), id);
    Ok(id)
}

impl Mirror {
    /// Writes a run's staged changes (`run_stage`: `I` new rows, `U`
    /// changed ones, `D` users left without tags; `user_tag_sets` already
    /// holds them) to the adopted table, in the run's transaction. Rows
    /// are matched through the table's own `user_id` key, then byte for
    /// byte; a new user whose id equals an existing row's under the
    /// table's collation (`User1`, `user1`) fails the run.
    pub fn sync(&self, conn: &mut PooledConn, now: i64) -> Result<(), StoreError> {
        let c = &self.collation;
        let clash: Option<(String, String)> = conn
            .query_first(format!(
                "SELECT s.user_id, u.user_id FROM run_stage AS s JOIN user_tags AS u ON u.user_id = s.user_id COLLATE {c}
                 WHERE s.op = 'I' AND CAST(u.user_id AS BINARY) <> CAST(s.user_id AS BINARY) LIMIT 1"
            ))
            .map_err(db)?;
        if let Some((new, old)) = clash {
            return Err(self.clash(&new, &old));
        }
        let same = format!(
            "u.user_id = s.user_id COLLATE {c} AND CAST(u.user_id AS BINARY) = CAST(s.user_id AS BINARY)"
        );
        // A new user's row may be there already, left by the old system
        // with no tags: it is taken over as if new.
        conn.exec_drop(
            format!(
                "UPDATE user_tags AS u JOIN run_stage AS s ON {same} AND s.op IN ('U', 'I')
                 SET u.tag_ids = s.tag_ids, u.tag_details = {DETAILS},
                     u.created_time = IF(s.op = 'I', FROM_UNIXTIME(?), u.created_time),
                     u.updated_time = FROM_UNIXTIME(?)"
            ),
            (now, now),
        )
        .map_err(db)?;
        conn.query_drop(format!(
            "DELETE u FROM user_tags AS u JOIN run_stage AS s ON {same} AND s.op = 'D'"
        ))
        .map_err(db)?;
        // New users, and any changed one whose row someone removed.
        conn.query_drop(format!(
            "INSERT INTO user_tags (user_id, tag_ids, tag_details, created_time, updated_time)
             SELECT s.user_id, s.tag_ids, {DETAILS}, FROM_UNIXTIME(t.created_time), FROM_UNIXTIME(t.updated_time)
             FROM run_stage AS s JOIN user_tag_sets AS t ON t.user_id = s.user_id
             WHERE s.op IN ('U', 'I') AND NOT EXISTS (SELECT 1 FROM user_tags AS u WHERE u.user_id = s.user_id COLLATE {c})"
        ))
        .map_err(db)
    }

    fn clash(&self, new: &str, old: &str) -> StoreError {
        StoreError::Database(format!(
            "user {new:?} cannot get a row in user_tags: the row of user {old:?} has the same user_id under that column's collation {}, \
             and tag-server tells user ids apart by case; make the column compare byte for byte if its readers allow it \
             (ALTER TABLE user_tags MODIFY user_id {} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL). The run changed nothing",
            self.collation, self.user_id_type
        ))
    }
}
