//! The embedded SQLite store, in two files.
//!
//! The store URL's file holds the results ([`results`]: `user_tags` as a
//! view over compact tables, per-tag run state, run outcomes). Tasks and
//! rules live beside it in `<name>.control.db`, so the API's bookkeeping
//! never waits for a run's write. Both are in WAL mode: readers see the last
//! committed state without waiting for a writer. Each run's write opens its
//! own connection; reads of results share a small pool of connections.

mod checkpoint;
mod results;

use super::sql::{Arg, Cell, Conn, Dialect, Row, SqlStore, WithConn};
use super::{RunStart, RunTx, StoreError};
use results::SqliteRunTx;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// SQLite-backed [`super::Store`].
pub struct SqliteStore {
    results_path: PathBuf,
    control: Mutex<Connection>,
    /// Read connections to the results file, used round-robin.
    reads: Vec<Mutex<Connection>>,
    next_read: AtomicUsize,
    /// Checkpoints the results' WAL after each run's commit.
    checkpoints: checkpoint::Checkpointer,
    /// Runs committed through this object.
    commits: std::sync::atomic::AtomicU64,
}

/// Read connections to the results file.
const READERS: usize = 4;

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

const CONTROL_SCHEMA: &str = concat!(
    "CREATE TABLE IF NOT EXISTS tasks (seq INTEGER PRIMARY KEY AUTOINCREMENT,",
    super::sql::task_text_columns!(),
    ");
CREATE INDEX IF NOT EXISTS tasks_status ON tasks(status);
CREATE TABLE IF NOT EXISTS tag_rules (
    tag_id INTEGER NOT NULL,
    version INTEGER NOT NULL,
    rule TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (tag_id, version)
);
CREATE TABLE IF NOT EXISTS tag_owners (
    tag_id INTEGER PRIMARY KEY,
    plugin TEXT NOT NULL,
    recorded_at TEXT NOT NULL
);
",
    super::sql::sessions::sessions_table!(),
    ";"
);

/// Control files made before attempts were counted and tasks were leased
/// lack these columns.
fn add_task_columns(control: &Connection) -> Result<(), StoreError> {
    for (table, column, kind) in [
        ("tasks", "attempts", "INTEGER NOT NULL DEFAULT 0"),
        ("tasks", "owner", "TEXT"),
        ("tasks", "lease_until", "INTEGER"),
        ("tasks", "cancel_requested", "INTEGER NOT NULL DEFAULT 0"),
        ("tag_rules", "changed_by", "TEXT"),
    ] {
        let present: bool = control
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
                [table, column],
                |r| r.get(0),
            )
            .map_err(db)?;
        if !present {
            control
                .execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))
                .map_err(db)?;
        }
    }
    Ok(())
}

/// Creates the database file readable by its owner only (mode 0600) when
/// it does not exist; SQLite gives its -wal and -shm files the same mode.
fn create_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Database(format!(
            "creating {}: {e}",
            path.display()
        ))),
    }
}

fn connect(path: &Path, results: bool) -> Result<Connection, StoreError> {
    create_private(path)?;
    let conn = Connection::open(path).map_err(db)?;
    conn.busy_timeout(std::time::Duration::from_secs(60))
        .map_err(db)?;
    // 16 KiB pages for the results (only takes effect on a new file, before
    // WAL is set): fewer B-tree splits and page writes per row.
    // FULL: a commit that returned is on disk. The WAL is truncated back to
    // 64 MB after a checkpoint, so a large first run leaves no large file.
    let page = if results {
        "PRAGMA page_size = 16384;"
    } else {
        ""
    };
    conn.execute_batch(&format!(
        "{page} PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA cache_size = -65536; PRAGMA journal_size_limit = 67108864;"
    ))
    .map_err(db)?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Database(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let control = connect(&SqliteStore::control_path(path), false)?;
        control.execute_batch(CONTROL_SCHEMA).map_err(db)?;
        add_task_columns(&control)?;
        let mut results = connect(path, true)?;
        results::prepare(&mut results)?;
        let mut reads = vec![Mutex::new(results)];
        for _ in 1..READERS {
            reads.push(Mutex::new(connect(path, true)?));
        }
        Ok(SqliteStore {
            results_path: path.to_path_buf(),
            control: Mutex::new(control),
            reads,
            next_read: AtomicUsize::new(0),
            checkpoints: checkpoint::Checkpointer::start(path)?,
            commits: Default::default(),
        })
    }

    /// Where tasks and rules are kept for a store whose results are at `path`.
    pub fn control_path(path: &Path) -> PathBuf {
        path.with_extension("control.db")
    }
}

/// A parameter as SQLite binds it.
struct Bind<'a>(Arg<'a>);

impl rusqlite::ToSql for Bind<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value, ValueRef};
        Ok(match self.0 {
            Arg::Null => ToSqlOutput::Owned(Value::Null),
            Arg::Int(n) => ToSqlOutput::Owned(Value::Integer(n)),
            Arg::Text(t) => ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes())),
            Arg::Bool(b) => ToSqlOutput::Owned(Value::Integer(b.into())),
            Arg::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

fn cell(value: rusqlite::types::ValueRef<'_>) -> Result<Cell, StoreError> {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Null => Ok(Cell::Null),
        ValueRef::Integer(n) => Ok(Cell::Int(n)),
        ValueRef::Text(t) => std::str::from_utf8(t)
            .map(|t| Cell::Text(t.to_string()))
            .map_err(|e| StoreError::Corrupt(e.to_string())),
        ValueRef::Blob(b) => Ok(Cell::Blob(b.to_vec())),
        other => Err(StoreError::Corrupt(format!(
            "unexpected {:?} value",
            other.data_type()
        ))),
    }
}

impl Conn for Connection {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn run(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        let mut stmt = self.prepare_cached(sql).map_err(db)?;
        let changed = stmt
            .execute(rusqlite::params_from_iter(args.iter().map(|a| Bind(*a))))
            .map_err(db)?;
        Ok(changed as u64)
    }

    fn rows(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, StoreError> {
        let mut stmt = self.prepare_cached(sql).map_err(db)?;
        let width = stmt.column_count();
        let mut rows = stmt
            .query(rusqlite::params_from_iter(args.iter().map(|a| Bind(*a))))
            .map_err(db)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(db)? {
            out.push(Row::decoded(
                (0..width).map(|i| cell(row.get_ref(i).map_err(db)?)),
            )?);
        }
        Ok(out)
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.execute_batch(sql).map_err(db)
    }
}

impl SqlStore for SqliteStore {
    fn commits(&self) -> &std::sync::atomic::AtomicU64 {
        &self.commits
    }

    fn control<T>(&self, f: impl WithConn<T>) -> Result<T, StoreError> {
        // A poisoned mutex only means another thread panicked mid-call; the
        // connection itself is still usable (SQLite rolls back open work).
        let mut conn = self.control.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut *conn)
    }

    fn results<T>(&self, f: impl WithConn<T>) -> Result<T, StoreError> {
        // Round-robin: concurrent readers spread over the pool instead of
        // queueing behind one connection.
        let i = self.next_read.fetch_add(1, Ordering::Relaxed) % self.reads.len();
        let mut conn = self.reads[i].lock().unwrap_or_else(|p| p.into_inner());
        f(&mut *conn)
    }

    fn results_write<T>(&self, f: impl WithConn<T>) -> Result<T, StoreError> {
        // The results file is written by runs' own connections: a short one here.
        f(&mut connect(&self.results_path, true)?)
    }

    fn begin_run_tx(&self, start: &RunStart) -> Result<Box<dyn RunTx + '_>, StoreError> {
        let done = self.checkpoints.handle();
        Ok(Box::new(SqliteRunTx::begin(
            &self.results_path,
            start,
            done,
        )?))
    }
}
