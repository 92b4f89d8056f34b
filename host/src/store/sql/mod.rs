//! The SQL every backend runs, written once.
//!
//! A backend gives a connection as a [`Conn`] (run a statement, read rows,
//! run a batch) and says which [`Dialect`] it speaks; statements here are
//! written with `?` placeholders and rewritten for the dialect
//! ([`Dialect::placeholders`]). What is not the same modulo placeholders
//! and a few spellings (JSON functions, upserts, how a write transaction
//! begins) stays with the backend: schemas, the bulk paths of a run's
//! write ([`super::RunTx`]) and its locks.
//!
//! A backend implements [`SqlStore`] (where its connections come from and
//! how a run's write begins); the task, rule, result and session stores
//! follow from that ([`tasks`], [`rules`], [`results`], [`sessions`]).

pub mod audience;
pub mod results;
pub mod rules;
pub mod sessions;
pub mod tasks;
pub mod user_index;

use super::{numbered, RunStart, RunTx, StoreError};
use std::borrow::Cow;

/// The SQL spoken by a backend, where the backends differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite: `?` placeholders, `json_*` functions, `INSERT OR IGNORE`.
    Sqlite,
    /// PostgreSQL: `$1` placeholders, `jsonb`, `ON CONFLICT`.
    Postgres,
    /// MySQL/MariaDB: `?` placeholders, `JSON_*` functions,
    /// `ON DUPLICATE KEY UPDATE`.
    MySql,
}

impl Dialect {
    /// `sql` (written with `?` placeholders) as this dialect wants it.
    pub fn placeholders(self, sql: &str) -> Cow<'_, str> {
        match self {
            Dialect::Postgres => Cow::Owned(numbered(sql)),
            Dialect::Sqlite | Dialect::MySql => Cow::Borrowed(sql),
        }
    }

    /// The statement that begins a write transaction. SQLite takes its
    /// write lock up front (`IMMEDIATE`), so a transaction that reads before
    /// it writes cannot fail at its first write because another connection
    /// wrote meanwhile.
    pub fn begin(self) -> &'static str {
        match self {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
            Dialect::MySql => "START TRANSACTION",
        }
    }

    /// An insert of `into` (`INTO table (columns) VALUES (...)`) that does
    /// nothing when the row's key is already there.
    pub fn insert_ignore(self, into: &str) -> String {
        match self {
            Dialect::Sqlite => format!("INSERT OR IGNORE {into}"),
            Dialect::Postgres => format!("INSERT {into} ON CONFLICT DO NOTHING"),
            Dialect::MySql => format!("INSERT IGNORE {into}"),
        }
    }

    /// An insert of one row of `columns` into `table` that replaces the
    /// other columns of the row with the same `key` (the first column).
    pub fn upsert(self, table: &str, columns: &[&str]) -> String {
        let marks = vec!["?"; columns.len()].join(", ");
        let insert = format!(
            "INSERT INTO {table} ({}) VALUES ({marks})",
            columns.join(", ")
        );
        let rest = columns.get(1..).unwrap_or_default();
        let set = |value: &dyn Fn(&str) -> String| {
            rest.iter()
                .map(|c| format!("{c} = {}", value(c)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Dialect::Sqlite | Dialect::Postgres => {
                let key = columns.first().copied().unwrap_or_default();
                let set = set(&|c| format!("excluded.{c}"));
                format!("{insert} ON CONFLICT ({key}) DO UPDATE SET {set}")
            }
            Dialect::MySql => {
                let set = set(&|c| format!("VALUES({c})"));
                format!("{insert} ON DUPLICATE KEY UPDATE {set}")
            }
        }
    }

    /// `column` (JSON) read back as text.
    pub fn json_text(self, column: &str) -> String {
        match self {
            Dialect::Postgres => format!("{column}::text"),
            Dialect::Sqlite | Dialect::MySql => column.to_string(),
        }
    }

    /// A placeholder for a JSON value passed as text.
    pub fn json_param(self) -> &'static str {
        match self {
            Dialect::Postgres => "?::text::jsonb",
            Dialect::Sqlite | Dialect::MySql => "?",
        }
    }

    /// The task spec with its `user_ids` list, when it has one, emptied.
    pub fn spec_without_user_ids(self) -> &'static str {
        match self {
            Dialect::Sqlite => {
                "CASE WHEN json_type(spec, '$.user_ids') = 'array' \
                 THEN json_set(spec, '$.user_ids', json('[]')) ELSE spec END"
            }
            Dialect::Postgres => {
                "CASE WHEN jsonb_typeof(spec::jsonb -> 'user_ids') = 'array' \
                 THEN jsonb_set(spec::jsonb, '{user_ids}', '[]'::jsonb)::text ELSE spec END"
            }
            Dialect::MySql => {
                "CASE WHEN JSON_TYPE(JSON_EXTRACT(spec, '$.user_ids')) = 'ARRAY' \
                 THEN JSON_SET(spec, '$.user_ids', JSON_ARRAY()) ELSE spec END"
            }
        }
    }

    /// The view a user's row is read through: `user_tags`, except on
    /// MySQL, where `user_tags` may be the old system's table, adopted
    /// (with its own column types), and the view is `user_tag_rows`.
    pub fn user_rows(self) -> &'static str {
        match self {
            Dialect::Sqlite | Dialect::Postgres => "user_tags",
            Dialect::MySql => "user_tag_rows",
        }
    }

    /// The `FROM` and the condition that select the `user_tag_sets` rows
    /// whose `tag_ids` hold the tag given as one integer parameter.
    pub fn holding_tag(self) -> &'static str {
        match self {
            Dialect::Sqlite => {
                "user_tag_sets, json_each(user_tag_sets.tag_ids) WHERE json_each.value = ?"
            }
            Dialect::Postgres => "user_tag_sets WHERE tag_ids @> to_jsonb(?::bigint)",
            // The candidate is JSON text: `5`, not the number 5.
            Dialect::MySql => "user_tag_sets WHERE JSON_CONTAINS(tag_ids, CAST(? AS CHAR))",
        }
    }
}

/// A statement parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg<'a> {
    /// SQL `NULL`.
    Null,
    /// An integer (the backend narrows it to the column's width).
    Int(i64),
    /// Text.
    Text(&'a str),
    /// A flag (a `BOOLEAN` where there is one, else 0 or 1).
    Bool(bool),
    /// Bytes (a `BLOB`, `BYTEA` or `LONGBLOB`).
    Blob(&'a [u8]),
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(text: &'a str) -> Arg<'a> {
        Arg::Text(text)
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(text: &'a String) -> Arg<'a> {
        Arg::Text(text)
    }
}

impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(text: Option<&'a str>) -> Arg<'a> {
        text.map_or(Arg::Null, Arg::Text)
    }
}

impl<'a> From<&'a Option<String>> for Arg<'a> {
    fn from(text: &'a Option<String>) -> Arg<'a> {
        text.as_deref().into()
    }
}

impl From<i64> for Arg<'_> {
    fn from(n: i64) -> Self {
        Arg::Int(n)
    }
}

impl From<u32> for Arg<'_> {
    fn from(n: u32) -> Self {
        Arg::Int(n.into())
    }
}

impl From<bool> for Arg<'_> {
    fn from(flag: bool) -> Self {
        Arg::Bool(flag)
    }
}

/// One value of a row read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    /// SQL `NULL`.
    Null,
    /// An integer.
    Int(i64),
    /// Text (JSON columns are read as text).
    Text(String),
    /// A `BOOLEAN`.
    Bool(bool),
    /// Bytes that are not text.
    Blob(Vec<u8>),
}

/// A row read back, its values in the order selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row(pub Vec<Cell>);

impl Row {
    /// A row of `cells`, or the first error decoding them.
    pub fn decoded(
        cells: impl Iterator<Item = Result<Cell, StoreError>>,
    ) -> Result<Row, StoreError> {
        cells.collect::<Result<_, _>>().map(Row)
    }

    fn cell(&self, i: usize) -> Result<&Cell, StoreError> {
        self.0
            .get(i)
            .ok_or_else(|| StoreError::Corrupt(format!("a row lacks column {i}")))
    }

    fn unexpected(&self, i: usize, wanted: &str) -> StoreError {
        StoreError::Corrupt(format!("column {i}: {:?} is not {wanted}", self.0.get(i)))
    }

    /// Column `i` as text, or `None` for `NULL`.
    pub fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        match self.cell(i)? {
            Cell::Null => Ok(None),
            Cell::Text(t) => Ok(Some(t.clone())),
            _ => Err(self.unexpected(i, "text")),
        }
    }

    /// Column `i` as text.
    pub fn text(&self, i: usize) -> Result<String, StoreError> {
        self.opt_text(i)?.ok_or_else(|| self.unexpected(i, "text"))
    }

    /// Column `i` as bytes (a driver that cannot tell bytes from text
    /// may hand them over as text).
    pub fn blob(&self, i: usize) -> Result<Vec<u8>, StoreError> {
        match self.cell(i)? {
            Cell::Blob(b) => Ok(b.clone()),
            Cell::Text(t) => Ok(t.clone().into_bytes()),
            _ => Err(self.unexpected(i, "bytes")),
        }
    }

    /// Column `i` as an integer, or `None` for `NULL`.
    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.cell(i)? {
            Cell::Null => Ok(None),
            Cell::Int(n) => Ok(Some(*n)),
            _ => Err(self.unexpected(i, "an integer")),
        }
    }

    /// Column `i` as an integer.
    pub fn int(&self, i: usize) -> Result<i64, StoreError> {
        match self.cell(i)? {
            Cell::Int(n) => Ok(*n),
            _ => Err(self.unexpected(i, "an integer")),
        }
    }

    /// Column `i` as an id (a non-negative 32-bit integer).
    pub fn id(&self, i: usize) -> Result<u32, StoreError> {
        let n = self.int(i)?;
        u32::try_from(n).map_err(|_| self.unexpected(i, "an id"))
    }

    /// Column `i` as a flag (a `BOOLEAN`, or an integer: non-zero is set).
    pub fn flag(&self, i: usize) -> Result<bool, StoreError> {
        match self.cell(i)? {
            Cell::Bool(b) => Ok(*b),
            Cell::Int(n) => Ok(*n != 0),
            _ => Err(self.unexpected(i, "a flag")),
        }
    }
}

/// A database connection, as the shared SQL uses it.
pub trait Conn {
    /// The SQL it speaks.
    fn dialect(&self) -> Dialect;
    /// Runs one statement, already in the dialect's placeholders; rows changed.
    fn run(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError>;
    /// Runs one query, already in the dialect's placeholders; its rows.
    fn rows(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, StoreError>;
    /// Runs statements without parameters (transaction control).
    fn batch(&mut self, sql: &str) -> Result<(), StoreError>;
}

impl dyn Conn + '_ {
    /// Runs one statement written with `?` placeholders; rows changed.
    pub fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        let sql = self.dialect().placeholders(sql).into_owned();
        self.run(&sql, args)
    }

    /// Runs one query written with `?` placeholders; its rows.
    pub fn query(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, StoreError> {
        let sql = self.dialect().placeholders(sql).into_owned();
        self.rows(&sql, args)
    }

    /// The first row of a query, if any.
    pub fn query_first(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, args)?.into_iter().next())
    }

    /// Runs `f` in a write transaction: committed if it succeeds, rolled
    /// back if it fails.
    pub fn transaction<T>(
        &mut self,
        f: impl FnOnce(&mut dyn Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.batch(self.dialect().begin())?;
        match f(self) {
            Ok(value) => {
                self.batch("COMMIT")?;
                Ok(value)
            }
            Err(e) => {
                // The error that matters is `e`; a failed rollback means the
                // connection is gone and the server rolls back itself.
                let _ = self.batch("ROLLBACK");
                Err(e)
            }
        }
    }
}

/// Work done on a connection: what [`SqlStore`] runs.
pub trait WithConn<T>: FnOnce(&mut dyn Conn) -> Result<T, StoreError> {}

impl<T, F: FnOnce(&mut dyn Conn) -> Result<T, StoreError>> WithConn<T> for F {}

/// Refuses a database (`what`) whose schema version `current` is newer
/// than the `known` one of this server: it would misread it.
pub fn refuse_newer(what: &str, current: i64, known: i64) -> Result<(), StoreError> {
    if current > known {
        return Err(StoreError::Database(format!(
            "the {what} has schema version {current}, newer than this server's {known}: upgrade tag-server"
        )));
    }
    Ok(())
}

/// The columns of `tasks` after its sequence number, as SQLite and
/// PostgreSQL both declare them (MySQL sizes its own). PostgreSQL's
/// released migration 1 is built with it: never change it; add columns
/// with a migration.
macro_rules! task_text_columns {
    () => {
        "
    task_id TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    environment TEXT NOT NULL,
    status TEXT NOT NULL,
    submitted_at TEXT NOT NULL,
    started_at TEXT,
    completed_at TEXT,
    result TEXT,
    error TEXT,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT
"
    };
}
pub(crate) use task_text_columns;

/// A backend of the shared SQL: where its connections come from, and how a
/// run's write begins. [`super::TaskStore`], [`super::RuleStore`],
/// [`super::ResultStore`] and [`super::Store`] follow.
pub trait SqlStore: Send + Sync {
    /// Runs `f` on a connection to the tasks and rules.
    fn control<T>(&self, f: impl WithConn<T>) -> Result<T, StoreError>;

    /// Runs `f` on a connection that reads results (the same database as
    /// the tasks unless the backend keeps them apart).
    fn results<T>(&self, f: impl WithConn<T>) -> Result<T, StoreError> {
        self.control(f)
    }

    /// Runs `f` on a connection that may delete results (run outcomes).
    fn results_write<T>(&self, f: impl WithConn<T>) -> Result<T, StoreError> {
        self.control(f)
    }

    /// Starts a run's write transaction (the backend's bulk path).
    fn begin_run_tx(&self, start: &RunStart) -> Result<Box<dyn RunTx + '_>, StoreError>;

    /// The runs committed through this object since it was opened.
    fn commits(&self) -> &std::sync::atomic::AtomicU64;
}

impl<B: SqlStore> super::Store for B {
    fn ping(&self) -> Result<(), StoreError> {
        self.control(|c| c.query("SELECT 1", &[]).map(drop))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres_only() {
        let sql = "UPDATE t SET a = ? WHERE b = ? AND c = ?";
        assert_eq!(
            Dialect::Postgres.placeholders(sql),
            "UPDATE t SET a = $1 WHERE b = $2 AND c = $3"
        );
        assert_eq!(Dialect::Sqlite.placeholders(sql), sql);
        assert_eq!(Dialect::MySql.placeholders(sql), sql);
        assert!(matches!(Dialect::MySql.placeholders(sql), Cow::Borrowed(_)));
    }

    #[test]
    fn a_write_transaction_begins_per_dialect() {
        assert_eq!(Dialect::Sqlite.begin(), "BEGIN IMMEDIATE");
        assert_eq!(Dialect::Postgres.begin(), "BEGIN");
        assert_eq!(Dialect::MySql.begin(), "START TRANSACTION");
    }

    #[test]
    fn upserts_replace_all_but_the_key() {
        let columns = ["task_id", "result", "committed_at"];
        assert_eq!(
            Dialect::Sqlite.upsert("run_outcomes", &columns),
            "INSERT INTO run_outcomes (task_id, result, committed_at) VALUES (?, ?, ?) \
             ON CONFLICT (task_id) DO UPDATE SET result = excluded.result, committed_at = excluded.committed_at"
        );
        assert_eq!(
            Dialect::Postgres.upsert("run_outcomes", &columns),
            Dialect::Sqlite.upsert("run_outcomes", &columns)
        );
        assert_eq!(
            Dialect::MySql.upsert("run_outcomes", &columns),
            "INSERT INTO run_outcomes (task_id, result, committed_at) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE result = VALUES(result), committed_at = VALUES(committed_at)"
        );
    }

    #[test]
    fn inserts_that_ignore_a_present_key() {
        let into = "INTO tag_owners (tag_id, plugin) VALUES (?, ?)";
        assert_eq!(
            Dialect::Sqlite.insert_ignore(into),
            "INSERT OR IGNORE INTO tag_owners (tag_id, plugin) VALUES (?, ?)"
        );
        assert_eq!(
            Dialect::Postgres.insert_ignore(into),
            "INSERT INTO tag_owners (tag_id, plugin) VALUES (?, ?) ON CONFLICT DO NOTHING"
        );
        assert_eq!(
            Dialect::MySql.insert_ignore(into),
            "INSERT IGNORE INTO tag_owners (tag_id, plugin) VALUES (?, ?)"
        );
    }

    #[test]
    fn a_newer_schema_is_refused() {
        assert!(refuse_newer("database", 5, 5).is_ok());
        assert!(refuse_newer("database", 0, 5).is_ok());
        let err = refuse_newer("results database", 3, 2)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("results database has schema version 3"),
            "{err}"
        );
    }

    #[test]
    fn json_is_read_as_text() {
        assert_eq!(Dialect::Postgres.json_text("tag_ids"), "tag_ids::text");
        assert_eq!(Dialect::MySql.json_text("tag_ids"), "tag_ids");
        assert_eq!(Dialect::Postgres.json_param(), "?::text::jsonb");
        assert_eq!(Dialect::Sqlite.json_param(), "?");
    }

    #[test]
    fn rows_decode_their_cells_or_say_why_not() {
        let row = Row(vec![
            Cell::Text("a".into()),
            Cell::Null,
            Cell::Int(7),
            Cell::Bool(true),
            Cell::Int(-1),
        ]);
        assert_eq!(row.text(0).unwrap(), "a");
        assert_eq!(row.opt_text(1).unwrap(), None);
        assert!(row.text(1).is_err());
        assert_eq!(row.int(2).unwrap(), 7);
        assert_eq!(row.id(2).unwrap(), 7);
        assert!(row.flag(3).unwrap());
        assert!(row.flag(2).unwrap());
        assert!(row.id(4).is_err(), "a negative id is corrupt");
        assert!(row.int(0).is_err());
        assert!(row.text(9).is_err(), "a missing column is an error");
    }

    #[test]
    fn args_convert_from_the_values_stores_pass() {
        assert_eq!(Arg::from(None::<&str>), Arg::Null);
        assert_eq!(Arg::from(Some("x")), Arg::Text("x"));
        assert_eq!(Arg::from(5u32), Arg::Int(5));
        assert_eq!(Arg::from(&Some("y".to_string())), Arg::Text("y"));
    }
}
