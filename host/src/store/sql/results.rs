//! Results on every backend: tag states, run outcomes, a user's tags and
//! the users holding a tag, and the end of a run's write.

use super::{Arg, Conn, SqlStore};
use crate::store::{parse_tag_ids, ResultStore, RunStart, RunTx, StoreError, TagState, UserTagRow};
use std::collections::HashMap;

/// Records the tag states and the task's outcome in a run's transaction,
/// and commits it: the outcome commits with the results, so a task
/// interrupted after this is reported as done, not run again.
pub fn finish_run(
    c: &mut dyn Conn,
    start: &RunStart,
    states: &[TagState],
    outcome: &serde_json::Value,
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
    let outcome = outcome.to_string();
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
        self.begin_run_tx(start)
    }

    fn run_outcome(&self, task_id: &str) -> Result<Option<serde_json::Value>, StoreError> {
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
                "SELECT user_id, {}, {}, created_time, updated_time FROM user_tags WHERE user_id = ?",
                d.json_text("tag_ids"),
                d.json_text("tag_details"),
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
