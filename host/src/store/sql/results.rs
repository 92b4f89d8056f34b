//! Results on every backend: tag states, run outcomes, a user's tags and
//! the users holding a tag, and the end of a run's write.

use super::audience::AudienceDelta;
use super::{Arg, Conn, Dialect, SqlStore};
use crate::store::{
    parse_tag_ids, Held, ResultStore, RowSink, RunGrants, RunStart, RunTx, StoreError, TagState,
    UserRows, UserTagRow,
};
use std::collections::HashMap;

/// What a run's write keeps on every backend besides its connection: the
/// run, its time, the grants it created, and whether it committed.
#[derive(Debug)]
pub struct RunWrite {
    /// The run.
    pub start: RunStart,
    /// The run's time in Unix seconds (how rows keep their times).
    pub now: i64,
    grants: RunGrants,
    /// Who the run changed, for the audience bitmaps.
    audience: AudienceDelta,
    committed: bool,
}

impl RunWrite {
    /// The state of a run's write that has not committed yet.
    pub fn new(start: &RunStart) -> Result<RunWrite, StoreError> {
        Ok(RunWrite {
            start: start.clone(),
            now: start.unix_time()?,
            grants: RunGrants::default(),
            audience: AudienceDelta::default(),
            committed: false,
        })
    }

    /// Grant ids for `held` into `out`, creating this run's grants on `c`
    /// on first use.
    pub fn resolve(
        &mut self,
        c: &mut dyn Conn,
        held: &[Held],
        out: &mut Vec<u32>,
    ) -> Result<(), StoreError> {
        self.grants
            .resolve(&self.start, held, out, |tag_id, detail| {
                create_grant(c, tag_id, detail)
            })
    }

    /// Records the tag states and the outcome on `c` and commits
    /// ([`finish_run`]).
    pub fn commit(
        &mut self,
        c: &mut dyn Conn,
        states: &[TagState],
        outcome: &crate::model::RunReport,
    ) -> Result<(), StoreError> {
        self.audience.fold(c, &self.start)?;
        finish_run(c, &self.start, states, outcome)?;
        self.committed = true;
        Ok(())
    }

    /// Whether the run committed.
    pub fn committed(&self) -> bool {
        self.committed
    }

    /// Rolls back on `c` unless the run committed (a dropped run leaves
    /// nothing). An error here means the connection is gone, and the
    /// database rolls the transaction back itself.
    pub fn abandon(&self, c: &mut dyn Conn) {
        if !self.committed {
            let _ = c.batch("ROLLBACK");
        }
    }
}

/// A backend's side of a run's write: reading the current rows and
/// writing the changes (its bulk paths). The commit follows once for all
/// backends: what [`BulkWrite::merge`] applies, then the tag states and
/// the outcome ([`finish_run`]).
pub trait BulkWrite: Send {
    /// The connection of the run's transaction, and the run's state.
    fn parts(&mut self) -> (&mut dyn Conn, &mut RunWrite);
    /// As [`RunTx::current`].
    fn current(&mut self, users: Option<&[&str]>, out: &mut dyn RowSink) -> Result<(), StoreError>;
    /// As [`RunTx::apply`], each new row written with its dense index
    /// (`uidx[i]` for row `i`; the other rows keep theirs).
    fn apply(&mut self, changes: &UserRows, uidx: &[u32]) -> Result<(), StoreError>;
    /// Applies what [`BulkWrite::apply`] staged, before the commit
    /// (nothing unless the backend stages changes).
    fn merge(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

impl<W: BulkWrite> RunTx for W {
    fn current(&mut self, users: Option<&[&str]>, out: &mut dyn RowSink) -> Result<(), StoreError> {
        BulkWrite::current(self, users, out)
    }

    fn apply(&mut self, changes: &UserRows) -> Result<(), StoreError> {
        // Before the rows change: an update's or a delete's index is read
        // from its row.
        let (c, run) = self.parts();
        let uidx = run.audience.record(c, changes)?;
        BulkWrite::apply(self, changes, &uidx)
    }

    fn commit(
        mut self: Box<Self>,
        states: &[TagState],
        outcome: &crate::model::RunReport,
    ) -> Result<(), StoreError> {
        self.merge()?;
        let (c, run) = self.parts();
        run.commit(c, states, outcome)
    }
}

/// A run's transaction that counts its commit in the store's
/// [`SqlStore::commits`] once it is done (what
/// `AudienceStore::local_commits` answers).
struct Counted<'s> {
    tx: Box<dyn RunTx + 's>,
    commits: &'s std::sync::atomic::AtomicU64,
}

impl RunTx for Counted<'_> {
    fn current(&mut self, users: Option<&[&str]>, out: &mut dyn RowSink) -> Result<(), StoreError> {
        self.tx.current(users, out)
    }

    fn apply(&mut self, changes: &UserRows) -> Result<(), StoreError> {
        self.tx.apply(changes)
    }

    fn commit(
        self: Box<Self>,
        states: &[TagState],
        outcome: &crate::model::RunReport,
    ) -> Result<(), StoreError> {
        self.tx.commit(states, outcome)?;
        self.commits
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

/// Creates a grant (`detail`: its `tag_details` entry as JSON); its id.
fn create_grant(c: &mut dyn Conn, tag_id: u32, detail: &str) -> Result<u32, StoreError> {
    let dialect = c.dialect();
    let insert = format!(
        "INSERT INTO tag_grants (tag_id, detail) VALUES (?, {})",
        dialect.json_param()
    );
    let args = [Arg::from(tag_id), Arg::from(detail)];
    let row = match dialect {
        // No `RETURNING` on MySQL: the id the connection inserted last.
        Dialect::MySql => {
            c.execute(&insert, &args)?;
            c.query_first("SELECT LAST_INSERT_ID()", &[])?
        }
        Dialect::Sqlite | Dialect::Postgres => {
            c.query_first(&format!("{insert} RETURNING grant_id"), &args)?
        }
    };
    row.ok_or_else(|| StoreError::Database("a new grant has no id".into()))?
        .id(0)
}

/// Records the tag states and the task's outcome in a run's transaction,
/// and commits it: the outcome commits with the results, so a task
/// interrupted after this is reported as done, not run again.
pub fn finish_run(
    c: &mut dyn Conn,
    start: &RunStart,
    states: &[TagState],
    outcome: &crate::model::RunReport,
) -> Result<(), StoreError> {
    let dialect = c.dialect();
    let state_sql = dialect.upsert(
        "tag_state",
        &["tag_id", "rule_version", "watermarks", "had_full_run"],
    );
    for s in states {
        let watermarks =
            serde_json::to_string(&s.watermarks).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let args = [
            Arg::from(s.tag_id),
            Arg::from(s.rule_version),
            Arg::from(&watermarks),
            Arg::from(s.had_full_run),
        ];
        c.execute(&state_sql, &args)?;
    }
    let outcome_sql = dialect.upsert("run_outcomes", &["task_id", "result", "committed_at"]);
    let outcome = outcome.encode();
    c.execute(
        &outcome_sql,
        &[
            (&start.task_id).into(),
            (&outcome).into(),
            (&start.now).into(),
        ],
    )?;
    c.batch("COMMIT")
}

impl<B: SqlStore> ResultStore for B {
    fn tag_states(&self) -> Result<HashMap<u32, TagState>, StoreError> {
        let rows = self.results(|c| {
            c.query(
                "SELECT tag_id, rule_version, watermarks, had_full_run FROM tag_state",
                &[],
            )
        })?;
        let mut states = HashMap::new();
        for row in rows {
            let tag_id = row.id(0)?;
            let watermarks = serde_json::from_str(&row.text(2)?)
                .map_err(|e| StoreError::Corrupt(format!("watermarks of tag {tag_id}: {e}")))?;
            let state = TagState {
                tag_id,
                rule_version: row.int(1)?,
                watermarks,
                had_full_run: row.flag(3)?,
            };
            states.insert(tag_id, state);
        }
        Ok(states)
    }

    fn begin_run(&self, start: &RunStart) -> Result<Box<dyn RunTx + '_>, StoreError> {
        Ok(Box::new(Counted {
            tx: self.begin_run_tx(start)?,
            commits: self.commits(),
        }))
    }

    fn run_outcome(&self, task_id: &str) -> Result<Option<crate::model::RunReport>, StoreError> {
        let row = self.results(|c| {
            c.query_first(
                "SELECT result FROM run_outcomes WHERE task_id = ?",
                &[task_id.into()],
            )
        })?;
        row.map(|r| {
            serde_json::from_str(&r.text(0)?)
                .map_err(|e| StoreError::Corrupt(format!("outcome of task {task_id}: {e}")))
        })
        .transpose()
    }

    fn user_tags(&self, user_id: &str) -> Result<Option<UserTagRow>, StoreError> {
        let row = self.results(|c| {
            let d = c.dialect();
            let sql = format!(
                "SELECT user_id, {}, {}, created_time, updated_time FROM {} WHERE user_id = ?",
                d.json_text("tag_ids"),
                d.json_text("tag_details"),
                d.user_rows(),
            );
            c.query_first(&sql, &[user_id.into()])
        })?;
        row.map(|r| {
            Ok(UserTagRow {
                user_id: r.text(0)?,
                tag_ids: parse_tag_ids(&r.text(1)?)?,
                details: r.text(2)?,
                created_time: r.text(3)?,
                updated_time: r.text(4)?,
            })
        })
        .transpose()
    }

    fn users_with_tag(
        &self,
        tag_id: u32,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
        let mut args = vec![Arg::from(tag_id)];
        // No cursor, no condition: PostgreSQL cannot type a parameter only
        // compared with NULL.
        let after = match cursor {
            Some(cursor) => {
                args.push(cursor.into());
                " AND user_id > ?"
            }
            None => "",
        };
        args.push(Arg::Int(limit as i64));
        let rows = self.results(|c| {
            let from = c.dialect().holding_tag();
            let sql = format!("SELECT user_id FROM {from}{after} ORDER BY user_id LIMIT ?");
            c.query(&sql, &args)
        })?;
        rows.iter().map(|r| r.text(0)).collect()
    }
}
