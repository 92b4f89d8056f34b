//! The stores the backend suite runs against, each test in a database of
//! its own: SQLite in a temporary directory, PostgreSQL on 127.0.0.1:5432
//! (user postgres, trust authentication) and MariaDB on 127.0.0.1:3306
//! (root, no password), a fresh database per test.

use std::collections::BTreeMap;

/// Where PostgreSQL's administrative connection goes.
const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Where MariaDB's administrative connection goes.
const MY_ADMIN: &str = "mysql://root@127.0.0.1:3306/test";

fn mysql_admin() -> mysql::PooledConn {
    mysql::Pool::new(MY_ADMIN)
        .and_then(|p| p.get_conn())
        .expect("MariaDB on 127.0.0.1:3306 (start it with `service mariadb start`)")
}

/// The rows `sql` selects from the SQLite file `file`, each made by `row`.
fn sqlite_rows<T>(
    file: &std::path::Path,
    sql: &str,
    row: impl Fn(&rusqlite::Row) -> rusqlite::Result<T>,
) -> Vec<T> {
    let conn = rusqlite::Connection::open(file).expect("open store");
    let mut stmt = conn.prepare(sql).expect("query");
    let rows = stmt
        .query_map([], row)
        .expect("rows")
        .map(|r| r.expect("row"))
        .collect();
    rows
}

/// One store for one test; dropped, it removes its database.
pub enum Backend {
    /// An SQLite file in a temporary directory.
    Sqlite(tempfile::TempDir),
    /// A PostgreSQL database created for the test.
    Postgres(String),
    /// A MariaDB database created for the test.
    Mysql(String),
}

impl Backend {
    /// A fresh SQLite store.
    pub fn sqlite() -> Backend {
        Backend::Sqlite(tempfile::tempdir().expect("temp dir"))
    }

    /// A fresh PostgreSQL database.
    pub fn postgres() -> Backend {
        let name = format!("tag_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = postgres::Client::connect(PG_ADMIN, postgres::NoTls)
            .expect("PostgreSQL on 127.0.0.1:5432 (start it with `service postgresql start`)");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create test database");
        Backend::Postgres(name)
    }

    /// A fresh MariaDB database.
    pub fn mysql() -> Backend {
        use mysql::prelude::Queryable;
        let name = format!("tag_test_{}", uuid::Uuid::new_v4().simple());
        mysql_admin()
            .query_drop(format!(
                "CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            ))
            .expect("create test database");
        Backend::Mysql(name)
    }

    /// A new connection to this PostgreSQL database.
    fn pg(&self) -> postgres::Client {
        postgres::Client::connect(&self.url(), postgres::NoTls).expect("connect")
    }

    /// A new connection to this MariaDB database.
    fn my(&self) -> mysql::PooledConn {
        mysql::Pool::new(self.url().as_str())
            .and_then(|pool| pool.get_conn())
            .expect("connect")
    }

    /// The `--store` URL.
    pub fn url(&self) -> String {
        match self {
            Backend::Sqlite(dir) => format!("sqlite://{}", dir.path().join("tags.db").display()),
            Backend::Postgres(name) => format!("postgres://postgres@127.0.0.1:5432/{name}"),
            Backend::Mysql(name) => format!("mysql://root@127.0.0.1:3306/{name}"),
        }
    }

    /// Runs SQL statements on the results database (and, for SQLite, the
    /// same on the control file when `control` is set).
    pub fn execute(&self, sql: &str, control: bool) {
        match self {
            Backend::Sqlite(dir) => {
                let file = if control {
                    "tags.control.db"
                } else {
                    "tags.db"
                };
                let conn = rusqlite::Connection::open(dir.path().join(file)).expect("open store");
                conn.execute_batch(sql).expect("run SQL");
            }
            Backend::Postgres(_) => {
                let mut client = self.pg();
                client.batch_execute(sql).expect("run SQL");
            }
            Backend::Mysql(_) => {
                use mysql::prelude::Queryable;
                self.my().query_drop(sql).expect("run SQL");
            }
        }
    }

    /// Opens a transaction on the results database, runs `sql` in it and
    /// keeps it open (its locks held) until the value is dropped, when it
    /// rolls back. PostgreSQL and MariaDB only.
    pub fn hold(&self, sql: &str) -> Hold {
        match self {
            Backend::Sqlite(_) => panic!("Backend::hold is for the network stores"),
            Backend::Postgres(_) => {
                let mut client = self.pg();
                client.batch_execute("BEGIN").expect("BEGIN");
                client.batch_execute(sql).expect("run SQL");
                Hold::Postgres(Box::new(client))
            }
            Backend::Mysql(_) => {
                use mysql::prelude::Queryable;
                let mut conn = self.my();
                conn.query_drop("START TRANSACTION")
                    .expect("START TRANSACTION");
                conn.query_drop(sql).expect("run SQL");
                Hold::Mysql(conn)
            }
        }
    }

    /// Ends every session of this database that waits for a lock (its
    /// statement never runs): what a client's death does to a statement
    /// the server had not received yet.
    pub fn end_lock_waiters(&self) {
        match self {
            Backend::Sqlite(_) => panic!("Backend::end_lock_waiters is for the network stores"),
            Backend::Postgres(name) => {
                let mut client = self.pg();
                client
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
                        &[name],
                    )
                    .expect("pg_terminate_backend");
            }
            Backend::Mysql(_) => {
                use mysql::prelude::Queryable;
                let mut conn = self.my();
                for id in self.mysql_lock_waiters() {
                    let _ = conn.query_drop(format!("KILL {id}"));
                }
            }
        }
    }

    /// The number a `SELECT COUNT(*) ...` answers on the results database
    /// (PostgreSQL and MariaDB).
    pub fn query_count(&self, sql: &str) -> u64 {
        match self {
            Backend::Sqlite(_) => panic!("Backend::query_count is for the network stores"),
            Backend::Postgres(_) => {
                let mut client = self.pg();
                client.query_one(sql, &[]).expect("query").get::<_, i64>(0) as u64
            }
            Backend::Mysql(_) => {
                use mysql::prelude::Queryable;
                let n: Option<u64> = self.my().query_first(sql).expect("query");
                n.unwrap_or(0)
            }
        }
    }

    /// How many of this database's sessions wait for a lock now.
    pub fn lock_waiters(&self) -> usize {
        match self {
            Backend::Sqlite(_) => panic!("Backend::lock_waiters is for the network stores"),
            Backend::Postgres(name) => {
                let mut client = self.pg();
                let row = client
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
                        &[name],
                    )
                    .expect("pg_stat_activity");
                row.get::<_, i64>(0) as usize
            }
            Backend::Mysql(_) => self.mysql_lock_waiters().len(),
        }
    }

    /// The thread ids of this MariaDB database's sessions that wait for a
    /// row lock now. Read from `SHOW ENGINE INNODB STATUS`, not from
    /// `information_schema.innodb_trx`: InnoDB refreshes that table's
    /// cache only when nobody read it in the last 0.1 s, so a test polling
    /// it faster (or two tests polling it at once) sees the first answer
    /// for as long as they poll.
    fn mysql_lock_waiters(&self) -> Vec<u64> {
        use mysql::prelude::Queryable;
        let Backend::Mysql(name) = self else {
            panic!("Backend::mysql_lock_waiters is for MariaDB")
        };
        let mut conn = self.my();
        let status: Option<(String, String, String)> = conn
            .query_first("SHOW ENGINE INNODB STATUS")
            .expect("SHOW ENGINE INNODB STATUS");
        let waiting = lock_waiting_threads(&status.expect("InnoDB's status").2);
        let here: Vec<u64> = conn
            .exec(
                "SELECT id FROM information_schema.processlist WHERE db = ?",
                (name,),
            )
            .expect("processlist");
        waiting.into_iter().filter(|id| here.contains(id)).collect()
    }

    /// The one text column `sql` selects from the control tables (tasks,
    /// rules: for SQLite the `.control.db` file).
    pub fn texts(&self, sql: &str) -> Vec<String> {
        match self {
            Backend::Sqlite(dir) => {
                sqlite_rows(&dir.path().join("tags.control.db"), sql, |r| r.get(0))
            }
            Backend::Postgres(_) => {
                let mut client = self.pg();
                let rows = client.query(sql, &[]).expect("query");
                rows.iter().map(|r| r.get(0)).collect()
            }
            Backend::Mysql(_) => {
                use mysql::prelude::Queryable;
                self.my().query(sql).expect("query")
            }
        }
    }

    /// `SELECT user_id, tag_ids, tag_details, created_time, updated_time
    /// FROM user_tags`, ordered by user, as text.
    pub fn rows(&self) -> Vec<(String, String, String, String, String)> {
        const SQL: &str = "SELECT user_id, tag_ids, tag_details, created_time, updated_time FROM user_tags ORDER BY user_id";
        match self {
            Backend::Sqlite(dir) => sqlite_rows(&dir.path().join("tags.db"), SQL, |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            }),
            Backend::Postgres(_) => {
                let mut client = self.pg();
                let sql = "SELECT user_id, tag_ids::text, tag_details::text, created_time, updated_time FROM user_tags ORDER BY user_id";
                client
                    .query(sql, &[])
                    .expect("query")
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
                    .collect()
            }
            Backend::Mysql(_) => {
                use mysql::prelude::Queryable;
                self.my().query(SQL).expect("query")
            }
        }
    }

    /// `user_id -> tag_ids`.
    pub fn tags(&self) -> BTreeMap<String, Vec<u32>> {
        self.rows()
            .into_iter()
            .map(|(user, ids, ..)| {
                (
                    user,
                    serde_json::from_str(&ids).expect("tag_ids is a JSON array"),
                )
            })
            .collect()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        match self {
            Backend::Postgres(name) => {
                if let Ok(mut admin) = postgres::Client::connect(PG_ADMIN, postgres::NoTls) {
                    let _ = admin
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
                }
            }
            Backend::Mysql(name) => {
                use mysql::prelude::Queryable;
                if let Ok(mut admin) = mysql::Pool::new(MY_ADMIN).and_then(|p| p.get_conn()) {
                    let _ = admin.query_drop(format!("DROP DATABASE IF EXISTS {name}"));
                }
            }
            Backend::Sqlite(_) => {}
        }
    }
}

/// A transaction a test holds open: see [`Backend::hold`].
pub enum Hold {
    /// On PostgreSQL.
    Postgres(Box<postgres::Client>),
    /// On MariaDB.
    Mysql(mysql::PooledConn),
}

/// The thread ids of the transactions `SHOW ENGINE INNODB STATUS` lists
/// as waiting for a lock (a `LOCK WAIT` line in a transaction's block).
fn lock_waiting_threads(status: &str) -> Vec<u64> {
    status
        .split("---TRANSACTION")
        .filter(|block| block.lines().any(|l| l.starts_with("LOCK WAIT")))
        .filter_map(|block| {
            let (_, after) = block.split_once(" thread id ")?;
            let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}
