//! A run's write on MySQL/MariaDB: one transaction on a connection of its
//! own. New rows go in with multi-row `INSERT`s of up to [`ROWS`] rows;
//! updates and deletes are staged in a temporary table the same way and
//! merged with one statement each at commit. Where `user_tags` is a table
//! adopted from the old system, new rows are staged too, and the staged
//! changes are written to that table as well ([`Mirror::sync`]).

use super::adopt::Mirror;
use super::{db, insert_rows};
use crate::store::sql::results::{BulkWrite, RunWrite};
use crate::store::sql::Conn;
use crate::store::{held_tags, push_ids, Held, Op, RowSink, RunStart, StoreError, UserRows};
use ::mysql::prelude::Queryable;
use ::mysql::{Params, PooledConn, Value};

/// A change as the run's rows hold it: op, user, held tags.
type Row<'a> = (Op, &'a str, &'a [Held]);

/// Rows per multi-row statement.
const ROWS: usize = 1000;

/// How long a run's statements wait for a row lock, in seconds (the
/// session's `innodb_lock_wait_timeout`; InnoDB's default is 50). A run
/// waits its turn behind another process's run, whose partitioned write
/// can hold the run lock for minutes, and behind a killed server's session
/// until InnoDB has rolled it back: with 50 s the second run failed with
/// ERROR 1205 (seen under load in the kill-and-restart tests). PostgreSQL
/// waits without a limit by default.
pub const LOCK_WAIT_SECONDS: u32 = 600;

/// The MySQL side of one run's write.
pub struct MyRunTx {
    conn: PooledConn,
    /// The run, its time and grants, and whether it committed.
    run: RunWrite,
    /// The adopted `user_tags` table, if there is one.
    mirror: Option<Mirror>,
}

impl MyRunTx {
    /// Begins the transaction and takes the run lock: other runs' writes
    /// wait until it ends; readers see the last commit meanwhile.
    pub fn begin(
        mut conn: PooledConn,
        start: &RunStart,
        mirror: Option<Mirror>,
    ) -> Result<MyRunTx, StoreError> {
        // Reset when the connection goes back to the pool (the pool resets
        // sessions unless the URL says reset_connection=false).
        conn.query_drop(format!(
            "SET SESSION innodb_lock_wait_timeout = {LOCK_WAIT_SECONDS}"
        ))
        .map_err(db)?;
        for sql in [
            "DROP TEMPORARY TABLE IF EXISTS run_stage",
            "CREATE TEMPORARY TABLE run_stage (op CHAR(1) NOT NULL, user_id VARCHAR(255) NOT NULL,
               tag_ids LONGTEXT, grants LONGTEXT, PRIMARY KEY (user_id))
             CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
            "START TRANSACTION",
            "SELECT id FROM run_lock WHERE id = 1 FOR UPDATE",
        ] {
            conn.query_drop(sql).map_err(db)?;
        }
        Ok(MyRunTx {
            conn,
            run: RunWrite::new(start)?,
            mirror,
        })
    }

    /// The parameters of one changed row: user, `tag_ids`, `grants`.
    fn row_values(
        &mut self,
        user: &str,
        held: &[Held],
        out: &mut Vec<Value>,
    ) -> Result<(), StoreError> {
        let mut text = String::new();
        out.push(Value::from(user));
        push_ids(&mut text, held.iter().map(|h| h.tag_id));
        out.push(Value::from(text.as_str()));
        let mut grants = Vec::with_capacity(held.len());
        self.run.resolve(&mut self.conn, held, &mut grants)?;
        push_ids(&mut text, grants.into_iter());
        out.push(Value::from(text.as_str()));
        Ok(())
    }

    fn read_rows(
        &mut self,
        sql: &str,
        params: Params,
        out: &mut dyn RowSink,
    ) -> Result<(), StoreError> {
        let rows: Vec<(String, String, String)> = self.conn.exec(sql, params).map_err(db)?;
        let mut scratch = Default::default();
        for (user, tag_ids, grant_ids) in rows {
            let held = held_tags(&tag_ids, &grant_ids, &mut scratch)?;
            out.push(Op::Update, &user, &held);
        }
        Ok(())
    }
}

impl BulkWrite for MyRunTx {
    fn parts(&mut self) -> (&mut dyn Conn, &mut RunWrite) {
        (&mut self.conn, &mut self.run)
    }

    fn merge(&mut self) -> Result<(), StoreError> {
        self.conn
            .exec_drop(
                "UPDATE user_tag_sets AS u JOIN run_stage AS s ON u.user_id = s.user_id AND s.op = 'U'
                 SET u.tag_ids = s.tag_ids, u.grants = s.grants, u.updated_time = ?",
                (self.run.now,),
            )
            .map_err(db)?;
        self.conn
            .query_drop("DELETE u FROM user_tag_sets AS u JOIN run_stage AS s ON u.user_id = s.user_id AND s.op = 'D'")
            .map_err(db)?;
        match &self.mirror {
            Some(mirror) => mirror.sync(&mut self.conn, self.run.now),
            None => Ok(()),
        }
    }

    fn current(&mut self, users: Option<&[&str]>, out: &mut dyn RowSink) -> Result<(), StoreError> {
        const ALL: &str = "SELECT user_id, tag_ids, grants FROM user_tag_sets ORDER BY user_id";
        let Some(users) = users else {
            return self.read_rows(ALL, Params::Empty, out);
        };
        let mut sorted = users.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        for chunk in sorted.chunks(ROWS) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = format!("SELECT user_id, tag_ids, grants FROM user_tag_sets WHERE user_id IN ({marks}) ORDER BY user_id");
            let params = Params::Positional(chunk.iter().map(|u| Value::from(*u)).collect());
            self.read_rows(&sql, params, out)?;
        }
        Ok(())
    }

    fn apply(&mut self, changes: &UserRows, uidx: &[u32]) -> Result<(), StoreError> {
        let rows: Vec<(Row<'_>, u32)> = changes.iter().zip(uidx.iter().copied()).collect();
        for chunk in rows.chunks(ROWS) {
            let (mut new_rows, mut new_values) = (0, Vec::new());
            let (mut staged, mut staged_values) = (0, Vec::new());
            for &((op, user, held), index) in chunk {
                if op == Op::Insert {
                    let at = new_values.len();
                    self.row_values(user, held, &mut new_values)?;
                    if self.mirror.is_some() {
                        staged_values.push(Value::from("I"));
                        staged_values.extend_from_slice(&new_values[at..]);
                        staged += 1;
                    }
                    new_values.extend([
                        Value::from(self.run.now),
                        Value::from(self.run.now),
                        Value::from(index),
                    ]);
                    new_rows += 1;
                } else {
                    staged_values.push(Value::from(if op == Op::Update { "U" } else { "D" }));
                    self.row_values(user, held, &mut staged_values)?;
                    staged += 1;
                }
            }
            insert_rows(
                &mut self.conn,
                "INSERT INTO user_tag_sets (user_id, tag_ids, grants, created_time, updated_time, uidx) VALUES",
                "(?, ?, ?, ?, ?, ?)",
                new_rows,
                new_values,
            )?;
            insert_rows(
                &mut self.conn,
                "INSERT INTO run_stage (op, user_id, tag_ids, grants) VALUES",
                "(?, ?, ?, ?)",
                staged,
                staged_values,
            )?;
        }
        Ok(())
    }
}

impl Drop for MyRunTx {
    fn drop(&mut self) {
        self.run.abandon(&mut self.conn);
        // The connection goes back to the pool: without its staging table,
        // committed or not (an error means the connection is gone).
        let _ = self
            .conn
            .query_drop("DROP TEMPORARY TABLE IF EXISTS run_stage");
    }
}
