//! The MySQL/MariaDB store: one database holds everything of a deployment,
//! as with PostgreSQL. `tag_ids` and `tag_details` are JSON, text utf8mb4.
//!
//! Calls are blocking (the `mysql` crate, with its own connection pool),
//! made from worker threads and the API's blocking pool.
//!
//! A database that already holds the old system's `user_tags` table is
//! adopted ([`adopt`]): its rows become the current tags, and the table
//! stays where its readers find it, written with every run's results.

/// The `tag_details` object of a row whose grant ids are the JSON array
/// `$grants` (a column): one entry per grant, keyed by tag id.
macro_rules! tag_details_of {
    ($grants:literal) => {
        concat!(
            "(SELECT JSON_OBJECTAGG(g.tag_id, JSON_EXTRACT(g.detail, '$'))
               FROM JSON_TABLE(",
            $grants,
            ", '$[*]' COLUMNS (grant_id INT PATH '$')) AS j
               JOIN tag_grants AS g ON g.grant_id = j.grant_id)"
        )
    };
}

mod adopt;
mod results;
mod schema;

use super::sql::{Arg, Cell, Conn, Dialect, Row, SqlStore, WithConn};
use super::{redact, RunStart, RunTx, StoreError};
use ::mysql::prelude::Queryable;
use ::mysql::{Opts, OptsBuilder, Params, Pool, PoolConstraints, PoolOpts, PooledConn, Value};
use adopt::Mirror;
use results::MyRunTx;

/// MySQL/MariaDB-backed [`super::Store`].
pub struct MyStore {
    pool: Pool,
    /// The URL without its password, for messages.
    shown: String,
    /// The adopted `user_tags` table runs also write, if there is one.
    mirror: Option<Mirror>,
    /// Runs committed through this object.
    commits: std::sync::atomic::AtomicU64,
}

fn db(e: ::mysql::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

impl MyStore {
    /// Connects to `url` and brings the schema up to date.
    pub fn open(url: &str) -> Result<MyStore, StoreError> {
        let shown = redact(url);
        let opts = Opts::from_url(url)
            .map_err(|e| StoreError::Database(format!("invalid store URL {shown}: {e}")))?;
        // One connection opened at start (not the crate's default ten); at
        // most sixteen: the workers, the API's readers and a migration.
        let limits = PoolConstraints::new_const::<1, 16>();
        let opts =
            OptsBuilder::from_opts(opts).pool_opts(PoolOpts::default().with_constraints(limits));
        let pool = Pool::new(opts)
            .map_err(|e| StoreError::Unreachable(format!("cannot connect to {shown}: {e}")))?;
        let mut store = MyStore {
            pool,
            shown,
            mirror: None,
            commits: Default::default(),
        };
        store.mirror = schema::migrate(&mut store.conn()?)?;
        crate::store::sql::audience::backfill(&mut store.conn()?)?;
        Ok(store)
    }

    /// A connection from the pool.
    pub fn conn(&self) -> Result<PooledConn, StoreError> {
        self.pool
            .get_conn()
            .map_err(|e| StoreError::Unreachable(format!("cannot connect to {}: {e}", self.shown)))
    }
}

/// One multi-row statement on `conn`: `head`, then `tuple` once per row
/// (`values` holds the parameters of all the rows).
fn insert_rows(
    conn: &mut PooledConn,
    head: &str,
    tuple: &str,
    rows: usize,
    values: Vec<Value>,
) -> Result<(), StoreError> {
    if rows == 0 {
        return Ok(());
    }
    let sql = format!("{head} {}", vec![tuple; rows].join(", "));
    conn.exec_drop(sql, Params::Positional(values)).map_err(db)
}

fn value(arg: &Arg<'_>) -> Value {
    match *arg {
        Arg::Null => Value::NULL,
        Arg::Int(n) => Value::Int(n),
        Arg::Text(t) => Value::from(t),
        Arg::Bool(b) => Value::from(b),
        Arg::Blob(b) => Value::Bytes(b.to_vec()),
    }
}

fn params(args: &[Arg<'_>]) -> Params {
    match args {
        [] => Params::Empty,
        _ => Params::Positional(args.iter().map(value).collect()),
    }
}

fn cell(value: Value) -> Result<Cell, StoreError> {
    match value {
        Value::NULL => Ok(Cell::Null),
        Value::Int(n) => Ok(Cell::Int(n)),
        Value::UInt(n) => i64::try_from(n)
            .map(Cell::Int)
            .map_err(|_| StoreError::Corrupt(format!("{n} is out of range"))),
        // Text and bytes come alike: bytes that are not UTF-8 are a blob.
        Value::Bytes(b) => Ok(String::from_utf8(b)
            .map(Cell::Text)
            .unwrap_or_else(|e| Cell::Blob(e.into_bytes()))),
        other => Err(StoreError::Corrupt(format!("unexpected value {other:?}"))),
    }
}

impl Conn for PooledConn {
    fn dialect(&self) -> Dialect {
        Dialect::MySql
    }

    fn run(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        self.exec_drop(sql, params(args)).map_err(db)?;
        Ok(self.affected_rows())
    }

    fn rows(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, StoreError> {
        let rows: Vec<::mysql::Row> = self.exec(sql, params(args)).map_err(db)?;
        // A value is absent only once taken out of the row: none is here.
        let values = |r: ::mysql::Row| r.unwrap_raw().into_iter().map(|v| v.unwrap_or(Value::NULL));
        rows.into_iter()
            .map(|r| Row::decoded(values(r).map(cell)))
            .collect()
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.query_drop(sql).map_err(db)
    }
}

impl SqlStore for MyStore {
    fn commits(&self) -> &std::sync::atomic::AtomicU64 {
        &self.commits
    }

    fn control<T>(&self, f: impl WithConn<T>) -> Result<T, StoreError> {
        f(&mut self.conn()?)
    }

    fn begin_run_tx(&self, start: &RunStart) -> Result<Box<dyn RunTx + '_>, StoreError> {
        let mirror = self.mirror.clone();
        Ok(Box::new(MyRunTx::begin(self.conn()?, start, mirror)?))
    }
}
