//! The PostgreSQL store: one database holds everything of a deployment
//! (tasks, rules, run state, results, run outcomes), so several tag-server
//! processes can share it.
//!
//! Calls are blocking (the `postgres` crate), made from worker threads and
//! the API's blocking pool, never from async tasks. Connections come from a
//! small pool; each run's write takes one of its own ([`results`]).

mod results;
mod schema;

use super::sql::{Arg, Cell, Conn, Dialect, Row, SqlStore, WithConn};
use super::{redact, RunStart, RunTx, StoreError};
use ::postgres::types::{IsNull, ToSql, Type};
use ::postgres::{Client, NoTls};
use results::PgRunTx;
use std::sync::Mutex;

/// PostgreSQL-backed [`super::Store`].
pub struct PgStore {
    config: ::postgres::Config,
    /// The URL without its password, for messages.
    shown: String,
    idle: Mutex<Vec<Client>>,
    /// Runs committed through this object.
    commits: std::sync::atomic::AtomicU64,
}

/// Idle connections kept for reuse.
const IDLE: usize = 8;

fn db(e: ::postgres::Error) -> StoreError {
    StoreError::Database(message(&e))
}

/// The database's own message when there is one (the client's `Display`
/// says only "db error").
fn message(e: &::postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => match d.detail() {
            Some(detail) => format!("{}: {} ({detail})", d.severity(), d.message()),
            None => format!("{}: {}", d.severity(), d.message()),
        },
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

/// A connection taken from the pool; it goes back when dropped, unless it
/// broke.
pub struct Pooled<'a> {
    store: &'a PgStore,
    client: Option<Client>,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("present until dropped")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take().filter(|c| !c.is_closed()) {
            let mut idle = self.store.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < IDLE {
                idle.push(client);
            }
        }
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Closing a client blocks on its own runtime, which panics on an
        // async thread (where the server's last reference may be dropped).
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()));
        let _ = std::thread::spawn(move || drop(idle)).join();
    }
}

impl PgStore {
    /// Connects to `url` and brings the schema up to date.
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        let config: ::postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Database(format!("invalid store URL {}: {e}", redact(url))))?;
        let store = PgStore {
            config,
            shown: redact(url),
            idle: Mutex::new(Vec::new()),
            commits: Default::default(),
        };
        let mut client = store.client()?;
        schema::migrate(&mut client)?;
        crate::store::sql::audience::backfill(&mut *client)?;
        drop(client);
        Ok(store)
    }

    /// A connection from the pool, or a new one.
    pub fn client(&self) -> Result<Pooled<'_>, StoreError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let client = match idle {
            Some(client) => client,
            None => self.config.connect(NoTls).map_err(|e| {
                StoreError::Unreachable(format!(
                    "cannot connect to {}: {}",
                    self.shown,
                    message(&e)
                ))
            })?,
        };
        Ok(Pooled {
            store: self,
            client: Some(client),
        })
    }
}

/// A parameter as PostgreSQL binds it: integers narrowed to the column's
/// width (`INTEGER` columns refuse an `i64`).
#[derive(Debug)]
struct Bind<'a>(Arg<'a>);

impl ToSql for Bind<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut ::postgres::types::private::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            Arg::Null => Ok(IsNull::Yes),
            Arg::Int(n) if *ty == Type::INT4 => i32::try_from(n)?.to_sql(ty, out),
            Arg::Int(n) if *ty == Type::INT2 => i16::try_from(n)?.to_sql(ty, out),
            Arg::Int(n) => n.to_sql(ty, out),
            Arg::Text(t) => t.to_sql(ty, out),
            Arg::Bool(b) => b.to_sql(ty, out),
            Arg::Blob(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <i64 as ToSql>::accepts(ty)
            || <i32 as ToSql>::accepts(ty)
            || <i16 as ToSql>::accepts(ty)
            || <&str as ToSql>::accepts(ty)
            || <bool as ToSql>::accepts(ty)
            || <&[u8] as ToSql>::accepts(ty)
    }

    ::postgres::types::to_sql_checked!();
}

/// Column `i` of `row`, by its type (JSON columns are selected as text).
fn cell(row: &::postgres::Row, i: usize) -> Result<Cell, StoreError> {
    let ty = row.columns()[i].type_().clone();
    let cell = if ty == Type::INT8 {
        row.try_get::<_, Option<i64>>(i).map(|v| v.map(Cell::Int))
    } else if ty == Type::INT4 {
        row.try_get::<_, Option<i32>>(i)
            .map(|v| v.map(|n| Cell::Int(n.into())))
    } else if ty == Type::INT2 {
        row.try_get::<_, Option<i16>>(i)
            .map(|v| v.map(|n| Cell::Int(n.into())))
    } else if ty == Type::BOOL {
        row.try_get::<_, Option<bool>>(i).map(|v| v.map(Cell::Bool))
    } else if ty == Type::BYTEA {
        row.try_get::<_, Option<Vec<u8>>>(i)
            .map(|v| v.map(Cell::Blob))
    } else {
        row.try_get::<_, Option<String>>(i)
            .map(|v| v.map(Cell::Text))
    };
    Ok(cell.map_err(db)?.unwrap_or(Cell::Null))
}

/// The parameters of a statement, as the client takes them.
fn binds<'a>(args: &'a [Arg<'a>]) -> Vec<Bind<'a>> {
    args.iter().map(|a| Bind(*a)).collect()
}

fn refs<'a>(binds: &'a [Bind<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    binds.iter().map(|b| b as &(dyn ToSql + Sync)).collect()
}

impl Conn for Client {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn run(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        let binds = binds(args);
        self.execute(sql, &refs(&binds)).map_err(db)
    }

    fn rows(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, StoreError> {
        let binds = binds(args);
        let rows = self.query(sql, &refs(&binds)).map_err(db)?;
        rows.iter()
            .map(|r| Row::decoded((0..r.len()).map(|i| cell(r, i))))
            .collect()
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.batch_execute(sql).map_err(db)
    }
}

impl SqlStore for PgStore {
    fn commits(&self) -> &std::sync::atomic::AtomicU64 {
        &self.commits
    }

    fn control<T>(&self, f: impl WithConn<T>) -> Result<T, StoreError> {
        let mut client = self.client()?;
        match f(&mut *client) {
            // A pooled connection the network cut: the store is unreachable
            // (worth retrying), and the message says which store.
            Err(StoreError::Database(m)) if client.is_closed() => Err(StoreError::Unreachable(
                format!("lost the connection to {}: {m}", self.shown),
            )),
            outcome => outcome,
        }
    }

    fn begin_run_tx(&self, start: &RunStart) -> Result<Box<dyn RunTx + '_>, StoreError> {
        Ok(Box::new(PgRunTx::begin(self.client()?, start)?))
    }
}
