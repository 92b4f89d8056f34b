//! The results file: `user_tags` as a view over compact base tables, the
//! per-tag run state, and each run's committed outcome.
//!
//! Layout (schema version 3):
//! - `tag_grants`: one row per tag per run that granted it: the
//!   `tag_details` entry every user who gained the tag in that run shows
//!   (name, category, hit time, rule version), stored once, not per user.
//! - `user_tag_sets`: one row per user holding a tag: `tag_ids` (JSON array,
//!   ascending), `grants` (JSON array of grant ids, parallel to `tag_ids`),
//!   `created_time`/`updated_time` as Unix seconds. Keyed by `user_id`
//!   (`WITHOUT ROWID`: the row lives in the primary-key B-tree, one lookup).
//! - the audience tables (version 3): the dense user index, per-tag
//!   bitmaps, the change feed and saved audiences
//!   ([`crate::store::sql::audience`]).
//! - `user_tags`: a view that rebuilds the original table's five columns.
//!   It uses only SQL that SQLite 3.38 and later understand (no `ORDER BY`
//!   inside an aggregate), so older readers such as Python's `sqlite3` can
//!   open the file.
//!
//! A row is about 45 bytes instead of about 310, so a first run over 1M
//! users writes some 50 MB instead of 260 MB. The file is in WAL mode:
//! readers see the last committed state and never wait for a run's write.

use super::{connect, db};
use crate::store::sql::results::{BulkWrite, RunWrite};
use crate::store::sql::Conn;
use crate::store::{held_tags, push_ids, Op, RowSink, RunStart, StoreError, UserRows};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashSet;
use std::path::Path;

/// The layout this code reads and writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 3;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tag_state (
    tag_id INTEGER PRIMARY KEY,
    rule_version INTEGER NOT NULL,
    watermarks TEXT NOT NULL,
    had_full_run INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tag_grants (
    grant_id INTEGER PRIMARY KEY,
    tag_id INTEGER NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS user_tag_sets (
    user_id TEXT PRIMARY KEY,
    tag_ids TEXT NOT NULL,
    grants TEXT NOT NULL,
    created_time INTEGER NOT NULL,
    updated_time INTEGER NOT NULL,
    uidx INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS run_outcomes (
    task_id TEXT PRIMARY KEY,
    result TEXT NOT NULL,
    committed_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS retired_users (
    user_id TEXT PRIMARY KEY,
    uidx INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audience_ids (
    first_uidx INTEGER PRIMARY KEY,
    user_count INTEGER NOT NULL,
    user_ids BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS audience_meta (
    id INTEGER PRIMARY KEY,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tag_bitmaps (
    tag_id INTEGER PRIMARY KEY,
    members BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS tag_changes (
    task_id TEXT NOT NULL,
    tag_id INTEGER NOT NULL,
    committed_at TEXT NOT NULL,
    version INTEGER NOT NULL,
    added BLOB NOT NULL,
    removed BLOB NOT NULL,
    PRIMARY KEY (tag_id, task_id)
);
CREATE INDEX IF NOT EXISTS tag_changes_time ON tag_changes (committed_at);
CREATE TABLE IF NOT EXISTS audiences (
    name TEXT PRIMARY KEY,
    expr TEXT NOT NULL,
    canonical TEXT NOT NULL,
    description TEXT NOT NULL,
    saved_by TEXT,
    saved_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audience_counts (
    name TEXT NOT NULL,
    task_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    committed_at TEXT NOT NULL,
    members INTEGER NOT NULL,
    PRIMARY KEY (name, task_id)
);
CREATE VIEW IF NOT EXISTS user_tags AS
SELECT s.user_id AS user_id,
       s.tag_ids AS tag_ids,
       (SELECT json_group_object(tag_id, json(detail))
          FROM (SELECT g.tag_id, g.detail FROM json_each(s.grants) AS j
                JOIN tag_grants AS g ON g.grant_id = j.value ORDER BY g.tag_id)) AS tag_details,
       strftime('%Y-%m-%dT%H:%M:%S', s.created_time, 'unixepoch') AS created_time,
       strftime('%Y-%m-%dT%H:%M:%S', s.updated_time, 'unixepoch') AS updated_time
FROM user_tag_sets AS s;
";

/// The first layout kept `user_tags` as a plain table with the detail JSON
/// on every row: its rows move into the compact tables, with one grant per
/// distinct detail entry.
const MIGRATE_FROM_V1: &str = "
ALTER TABLE user_tags RENAME TO user_tags_v1;
";
const MIGRATE_ROWS_FROM_V1: &str = "
INSERT INTO tag_grants (tag_id, detail)
SELECT DISTINCT CAST(j.key AS INTEGER), json(j.value)
FROM user_tags_v1 AS u, json_each(u.tag_details) AS j;
INSERT INTO user_tag_sets (user_id, tag_ids, grants, created_time, updated_time)
SELECT u.user_id, json(u.tag_ids),
       (SELECT json_group_array(g.grant_id ORDER BY g.tag_id)
          FROM json_each(u.tag_details) AS j
          JOIN tag_grants AS g ON g.tag_id = CAST(j.key AS INTEGER) AND g.detail = json(j.value)),
       unixepoch(u.created_time), unixepoch(u.updated_time)
FROM user_tags_v1 AS u;
DROP TABLE user_tags_v1;
";

/// Creates or upgrades the results schema; refuses a newer one.
pub fn prepare(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db)?;
    crate::store::sql::refuse_newer("results database", version, SCHEMA_VERSION)?;
    if version == SCHEMA_VERSION {
        return crate::store::sql::audience::backfill(conn);
    }
    let tx = conn.transaction().map_err(db)?;
    let old_table: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'user_tags')",
            [],
            |r| r.get(0),
        )
        .map_err(db)?;
    if old_table {
        tx.execute_batch(MIGRATE_FROM_V1).map_err(db)?;
    }
    tx.execute_batch(SCHEMA).map_err(db)?;
    // A version 2 table gains the dense index (filled by the backfill).
    let indexed: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info('user_tag_sets') WHERE name = 'uidx')",
            [],
            |r| r.get(0),
        )
        .map_err(db)?;
    if !indexed {
        tx.execute_batch("ALTER TABLE user_tag_sets ADD COLUMN uidx INTEGER")
            .map_err(db)?;
    }
    if old_table {
        tx.execute_batch(MIGRATE_ROWS_FROM_V1).map_err(db)?;
        tracing::info!("results migrated to the compact layout (user_tags is now a view)");
    }
    tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
        .map_err(db)?;
    tx.commit().map_err(db)?;
    crate::store::sql::audience::backfill(conn)
}

/// New rows per multi-row `INSERT` (6 parameters each).
const INSERT_ROWS: usize = 64;

/// The run's writes say `OR FAIL`: a statement that meets a constraint
/// error stops where it is instead of undoing its own rows, which spares
/// SQLite a statement journal (a temporary file that got a copy of every
/// page each multi-row `INSERT` touched: 84,000 writes for a first run of
/// 1M users, as many as all the others nine times over). An error fails
/// the whole run's transaction anyway, so nothing half-done is committed.
fn insert_many_sql() -> String {
    let values = vec!["(?, ?, ?, ?, ?, ?)"; INSERT_ROWS].join(", ");
    format!("INSERT OR FAIL INTO user_tag_sets (user_id, tag_ids, grants, created_time, updated_time, uidx) VALUES {values}")
}

/// `Some(users)` lists up to this many are looked up one by one; more are
/// found by one scan of the key range they span (the whole table for a
/// random sample of users; a slice of it for a part of users sorted by id,
/// as a Spark run's output comes).
const POINT_LOOKUPS: usize = 50_000;

/// The `tag_ids` and `grants` texts of the held-tag sets a run writes,
/// each made once: a run's rows share a few hundred sets (a first run of
/// eight tags at most 255), so most rows find theirs here.
#[derive(Default)]
struct Texts {
    /// Per held set, its slot in `texts`.
    slots: std::collections::HashMap<crate::store::HeldTags, u32>,
    texts: Vec<(String, String)>,
    /// Grant ids, reused.
    grants: Vec<u32>,
}

impl Texts {
    /// The slot of a delete's (no) texts.
    const NONE: u32 = u32::MAX;
    /// Sets kept from one batch to the next at most (a store that has seen
    /// many runs can hold many more distinct sets).
    const KEPT: usize = 4096;

    /// Forgets the sets when there are more than [`Texts::KEPT`], between
    /// batches (a batch's slots stay valid through it).
    fn make_room(&mut self) {
        if self.texts.len() > Self::KEPT {
            self.slots.clear();
            self.texts.clear();
        }
    }

    /// Makes the texts of `held`; its slot.
    fn add(
        &mut self,
        held: &[crate::store::Held],
        run: &mut RunWrite,
        conn: &mut Connection,
    ) -> Result<u32, StoreError> {
        run.resolve(conn, held, &mut self.grants)?;
        let (mut ids, mut grants) = (String::new(), String::new());
        push_ids(&mut ids, held.iter().map(|h| h.tag_id));
        push_ids(&mut grants, self.grants.iter().copied());
        let slot = self.texts.len() as u32;
        self.texts.push((ids, grants));
        self.slots.insert(held.iter().copied().collect(), slot);
        Ok(slot)
    }

    /// The texts in `slot` (empty for [`Texts::NONE`]).
    fn get(&self, slot: u32) -> (&str, &str) {
        match self.texts.get(slot as usize) {
            Some((ids, grants)) => (ids, grants),
            None => ("", ""),
        }
    }
}

/// The SQLite side of one run's write: its own connection, inside
/// `BEGIN IMMEDIATE` (the write lock, taken before reading, so no other run
/// changes the rows between this read and this write).
pub struct SqliteRunTx {
    conn: Connection,
    /// The run, its time and grants, and whether it committed.
    run: RunWrite,
    /// Told once the run committed, to checkpoint what it wrote.
    checkpoint: Option<std::sync::mpsc::Sender<()>>,
    /// The texts of the held-tag sets written so far.
    texts: Texts,
}

impl SqliteRunTx {
    /// Opens a connection to `path` and begins the transaction.
    /// Opens a connection to `path` and begins the transaction; once it
    /// commits, `checkpoint` (when given) is told, instead of the commit
    /// checkpointing the WAL itself.
    pub fn begin(
        path: &Path,
        start: &RunStart,
        checkpoint: Option<std::sync::mpsc::Sender<()>>,
    ) -> Result<SqliteRunTx, StoreError> {
        let conn = connect(path, true)?;
        if checkpoint.is_some() {
            super::checkpoint::leave_to_checkpointer(&conn)?;
        }
        conn.execute_batch("BEGIN IMMEDIATE").map_err(db)?;
        Ok(SqliteRunTx {
            conn,
            run: RunWrite::new(start)?,
            checkpoint,
            texts: Texts::default(),
        })
    }

    /// Every row, or those of the `keep` users, read from the key range
    /// `low..=high` they span.
    fn scan(
        &self,
        keep: Option<(&HashSet<&str>, &str, &str)>,
        out: &mut dyn RowSink,
    ) -> Result<(), StoreError> {
        const ALL: &str = "SELECT user_id, tag_ids, grants FROM user_tag_sets";
        const RANGE: &str =
            "SELECT user_id, tag_ids, grants FROM user_tag_sets WHERE user_id BETWEEN ?1 AND ?2";
        let mut stmt = self
            .conn
            .prepare_cached(if keep.is_some() { RANGE } else { ALL })
            .map_err(db)?;
        let mut rows = match keep {
            Some((_, low, high)) => stmt.query([low, high]),
            None => stmt.query([]),
        }
        .map_err(db)?;
        let keep = keep.map(|(set, _, _)| set);
        let mut scratch = Default::default();
        while let Some(row) = rows.next().map_err(db)? {
            let text = |i| -> Result<&str, StoreError> {
                row.get_ref(i)
                    .map_err(db)?
                    .as_str()
                    .map_err(|e| StoreError::Corrupt(e.to_string()))
            };
            let user = text(0)?;
            if keep.is_some_and(|k| !k.contains(user)) {
                continue;
            }
            out.push(
                Op::Update,
                user,
                &held_tags(text(1)?, text(2)?, &mut scratch)?,
            );
        }
        Ok(())
    }

    fn lookup(&self, users: &[&str], out: &mut dyn RowSink) -> Result<(), StoreError> {
        let mut sorted = users.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut stmt = self
            .conn
            .prepare_cached("SELECT tag_ids, grants FROM user_tag_sets WHERE user_id = ?1")
            .map_err(db)?;
        let mut scratch = Default::default();
        for user in sorted {
            let row = stmt
                .query_row([user], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .optional()
                .map_err(db)?;
            if let Some((ids, grants)) = row {
                out.push(Op::Update, user, &held_tags(&ids, &grants, &mut scratch)?);
            }
        }
        Ok(())
    }

    /// The slot in `self.texts` of each change's `tag_ids` and `grants`
    /// texts (empty for deletes), creating this run's grants on first use.
    fn format(&mut self, changes: &UserRows) -> Result<Vec<u32>, StoreError> {
        self.texts.make_room();
        let mut slots = Vec::with_capacity(changes.len());
        for (op, _, held) in changes.iter() {
            let slot = match op {
                Op::Delete => Texts::NONE,
                _ => match self.texts.slots.get(held) {
                    Some(&slot) => slot,
                    None => self.texts.add(held, &mut self.run, &mut self.conn)?,
                },
            };
            slots.push(slot);
        }
        Ok(slots)
    }

    /// Inserts [`INSERT_ROWS`] new rows with one statement: fewer statement
    /// runs, and one cursor that appends keys in order.
    fn insert_many(
        &mut self,
        rows: &[(Op, &str)],
        slots: &[u32],
        uidx: &[u32],
    ) -> Result<(), StoreError> {
        static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let sql = SQL.get_or_init(insert_many_sql);
        let mut stmt = self.conn.prepare_cached(sql).map_err(db)?;
        for (k, ((_, user), &slot)) in rows.iter().zip(slots).enumerate() {
            let (ids, grants) = self.texts.get(slot);
            let at = k * 6;
            stmt.raw_bind_parameter(at + 1, user).map_err(db)?;
            stmt.raw_bind_parameter(at + 2, ids).map_err(db)?;
            stmt.raw_bind_parameter(at + 3, grants).map_err(db)?;
            stmt.raw_bind_parameter(at + 4, self.run.now).map_err(db)?;
            stmt.raw_bind_parameter(at + 5, self.run.now).map_err(db)?;
            stmt.raw_bind_parameter(at + 6, uidx[k]).map_err(db)?;
        }
        stmt.raw_execute().map_err(db)?;
        Ok(())
    }
}

impl BulkWrite for SqliteRunTx {
    fn parts(&mut self) -> (&mut dyn Conn, &mut RunWrite) {
        (&mut self.conn, &mut self.run)
    }

    fn current(&mut self, users: Option<&[&str]>, out: &mut dyn RowSink) -> Result<(), StoreError> {
        match users {
            None => self.scan(None, out)?,
            Some(users) if users.len() <= POINT_LOOKUPS => self.lookup(users, out)?,
            Some(users) => {
                let keep: HashSet<&str> = users.iter().copied().collect();
                let low = users.iter().min().copied().unwrap_or_default();
                let high = users.iter().max().copied().unwrap_or_default();
                self.scan(Some((&keep, low, high)), out)?;
            }
        }
        Ok(())
    }

    fn apply(&mut self, changes: &UserRows, uidx: &[u32]) -> Result<(), StoreError> {
        let slots = self.format(changes)?;
        let mut i = 0;
        let rows: Vec<(Op, &str)> = changes.iter().map(|(op, user, _)| (op, user)).collect();
        while i < rows.len() {
            let run = rows[i..]
                .iter()
                .take(INSERT_ROWS)
                .take_while(|(op, _)| *op == Op::Insert)
                .count();
            if run == INSERT_ROWS {
                self.insert_many(&rows[i..i + run], &slots[i..i + run], &uidx[i..i + run])?;
                i += run;
                continue;
            }
            let (op, user) = rows[i];
            let (ids, grants) = self.texts.get(slots[i]);
            let sql = match op {
                Op::Insert => "INSERT OR FAIL INTO user_tag_sets (user_id, tag_ids, grants, created_time, updated_time, uidx) VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
                Op::Update => "UPDATE OR FAIL user_tag_sets SET tag_ids = ?2, grants = ?3, updated_time = ?4 WHERE user_id = ?1",
                Op::Delete => "DELETE FROM user_tag_sets WHERE user_id = ?1",
            };
            let mut stmt = self.conn.prepare_cached(sql).map_err(db)?;
            match op {
                Op::Delete => stmt.execute([user]),
                Op::Insert => stmt.execute(params![user, ids, grants, self.run.now, uidx[i]]),
                Op::Update => stmt.execute(params![user, ids, grants, self.run.now]),
            }
            .map_err(db)?;
            i += 1;
        }
        Ok(())
    }
}

impl Drop for SqliteRunTx {
    fn drop(&mut self) {
        self.run.abandon(&mut self.conn);
        if self.run.committed() {
            if let Some(checkpoint) = self.checkpoint.take() {
                // A closed channel: the store is going away and checkpoints
                // as its connections close.
                let _ = checkpoint.send(());
            }
        }
    }
}
