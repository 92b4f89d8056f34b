//! A run's write on PostgreSQL: one transaction on a connection of its own.
//! Changes are streamed with `COPY` into a temporary staging table and
//! merged into `user_tag_sets` with three set-based statements at commit,
//! so a run makes a handful of round trips, not one per row.

use super::{db, Pooled};
use crate::store::sql::results::{BulkWrite, RunWrite};
use crate::store::sql::Conn;
use crate::store::{held_tags, push_ids, Held, Op, RowSink, RunStart, StoreError, UserRows};
use std::io::Write;

/// The PostgreSQL side of one run's write.
pub struct PgRunTx<'a> {
    client: Pooled<'a>,
    /// The run, its time and grants, and whether it committed.
    run: RunWrite,
}

impl<'a> PgRunTx<'a> {
    /// Begins the transaction. Other runs' writes wait until it ends (the
    /// table lock lets readers through), so no run changes the rows between
    /// this one's read and its write.
    pub fn begin(mut client: Pooled<'a>, start: &RunStart) -> Result<PgRunTx<'a>, StoreError> {
        client
            .batch_execute(
                "BEGIN;
                 LOCK TABLE user_tag_sets IN SHARE ROW EXCLUSIVE MODE;
                 CREATE TEMPORARY TABLE run_stage (op \"char\" NOT NULL, user_id TEXT NOT NULL, tag_ids JSONB, grants JSONB) ON COMMIT DROP;",
            )
            .map_err(db)?;
        Ok(PgRunTx {
            client,
            run: RunWrite::new(start)?,
        })
    }

    /// One change as a line of `COPY` text: a new row for `user_tag_sets`
    /// (`user_id, tag_ids, grants, created_time, updated_time`) or a staged
    /// update or delete (`op, user_id, tag_ids, grants`).
    fn copy_line(
        &mut self,
        out: &mut Vec<u8>,
        (op, user, held, uidx): (Op, &str, &[Held], u32),
        text: &mut String,
    ) -> Result<(), StoreError> {
        match op {
            Op::Insert => {}
            Op::Update => out.extend_from_slice(b"U\t"),
            Op::Delete => out.extend_from_slice(b"D\t"),
        }
        copy_escape(out, user);
        if op == Op::Delete {
            out.extend_from_slice(b"\t\\N\t\\N\n");
            return Ok(());
        }
        push_ids(text, held.iter().map(|h| h.tag_id));
        out.push(b'\t');
        out.extend_from_slice(text.as_bytes());
        let mut grants = Vec::with_capacity(held.len());
        self.run.resolve(&mut *self.client, held, &mut grants)?;
        push_ids(text, grants.into_iter());
        out.push(b'\t');
        out.extend_from_slice(text.as_bytes());
        if op == Op::Insert {
            out.extend_from_slice(format!("\t{0}\t{0}\t{uidx}", self.run.now).as_bytes());
        }
        out.push(b'\n');
        Ok(())
    }

    fn copy(&mut self, sql: &str, lines: &[u8]) -> Result<(), StoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut copy = self.client.copy_in(sql).map_err(db)?;
        copy.write_all(lines)
            .map_err(|e| StoreError::Database(format!("COPY: {e}")))?;
        copy.finish().map_err(db)?;
        Ok(())
    }
}

/// Appends `text` escaped for `COPY`'s text format.
fn copy_escape(out: &mut Vec<u8>, text: &str) {
    for b in text.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

impl BulkWrite for PgRunTx<'_> {
    fn parts(&mut self) -> (&mut dyn Conn, &mut RunWrite) {
        (&mut *self.client, &mut self.run)
    }

    /// Applies the staged updates and deletes to `user_tag_sets`.
    fn merge(&mut self) -> Result<(), StoreError> {
        self.client
            .execute(
                "UPDATE user_tag_sets AS u SET tag_ids = s.tag_ids, grants = s.grants, updated_time = $1
                 FROM run_stage AS s WHERE s.op = 'U' AND u.user_id = s.user_id",
                &[&self.run.now],
            )
            .map_err(db)?;
        self.client
            .execute(
                "DELETE FROM user_tag_sets AS u USING run_stage AS s WHERE s.op = 'D' AND u.user_id = s.user_id",
                &[],
            )
            .map_err(db)?;
        Ok(())
    }

    fn current(&mut self, users: Option<&[&str]>, out: &mut dyn RowSink) -> Result<(), StoreError> {
        use postgres::fallible_iterator::FallibleIterator;
        use postgres::types::ToSql;
        let (sql, params): (&str, Vec<&(dyn ToSql + Sync)>) = match &users {
            None => (
                "SELECT user_id, tag_ids::text, grants::text FROM user_tag_sets ORDER BY user_id",
                Vec::new(),
            ),
            Some(users) => (
                "SELECT user_id, tag_ids::text, grants::text FROM user_tag_sets WHERE user_id = ANY($1) ORDER BY user_id",
                vec![users],
            ),
        };
        // Streamed: rows are counted into `out` as they arrive, not after
        // the whole result was fetched.
        let mut rows = self.client.query_raw(sql, params).map_err(db)?;
        let mut scratch = Default::default();
        while let Some(row) = rows.next().map_err(db)? {
            let held = held_tags(row.get(1), row.get(2), &mut scratch)?;
            out.push(Op::Update, row.get(0), &held);
        }
        Ok(())
    }

    fn apply(&mut self, changes: &UserRows, uidx: &[u32]) -> Result<(), StoreError> {
        // New rows go straight into the table; updates and deletes are
        // staged and merged with one statement each at commit.
        let (mut new_rows, mut staged) = (Vec::new(), Vec::new());
        let mut text = String::new();
        for ((op, user, held), &index) in changes.iter().zip(uidx) {
            let out = if op == Op::Insert {
                &mut new_rows
            } else {
                &mut staged
            };
            self.copy_line(out, (op, user, held, index), &mut text)?;
        }
        self.copy(
            "COPY user_tag_sets (user_id, tag_ids, grants, created_time, updated_time, uidx) FROM STDIN",
            &new_rows,
        )?;
        self.copy(
            "COPY run_stage (op, user_id, tag_ids, grants) FROM STDIN",
            &staged,
        )
    }
}

impl Drop for PgRunTx<'_> {
    fn drop(&mut self) {
        self.run.abandon(&mut *self.client);
    }
}
