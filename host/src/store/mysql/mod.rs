//! The MySQL/MariaDB store: one database holds everything of a deployment,
//! as with PostgreSQL. `tag_ids` and `tag_details` are JSON, text utf8mb4.
//!
//! Calls are blocking (the `mysql` crate, with its own connection pool),
//! made from worker threads and the API's blocking pool.

mod results;
mod schema;

use super::*;
use crate::model::now_timestamp;
use ::mysql::prelude::Queryable;
use ::mysql::{Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, PooledConn, Row};
use results::MyRunTx;

/// MySQL/MariaDB-backed [`Store`].
pub struct MyStore {
    pool: Pool,
    /// The URL without its password, for messages.
    shown: String,
}

fn db(e: ::mysql::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

const TASK_COLUMNS: &str =
    "task_id, spec, environment, status, submitted_at, started_at, completed_at, result, error, attempts";

fn task_from_row(row: Row) -> Result<TaskRecord, StoreError> {
    let (
        task_id,
        spec,
        environment,
        status,
        submitted_at,
        started_at,
        completed_at,
        result,
        error,
        attempts,
    ) = ::mysql::from_row_opt(row).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    TaskColumns {
        task_id,
        spec,
        environment,
        status,
        submitted_at,
        started_at,
        completed_at,
        result,
        error,
        attempts,
    }
    .decode()
}

type RuleRow = (i64, i64, String, String, Option<String>);

fn rule_of((tag_id, version, rule, created_at, changed_by): RuleRow) -> RuleVersion {
    RuleVersion {
        tag_id: tag_id as u32,
        version,
        rule,
        created_at,
        changed_by,
    }
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
        let store = MyStore { pool, shown };
        schema::migrate(&mut store.conn()?)?;
        Ok(store)
    }

    /// A connection from the pool.
    pub fn conn(&self) -> Result<PooledConn, StoreError> {
        self.pool
            .get_conn()
            .map_err(|e| StoreError::Unreachable(format!("cannot connect to {}: {e}", self.shown)))
    }

    fn tasks(
        &self,
        sql: &str,
        params: impl Into<::mysql::Params>,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let rows: Vec<Row> = self.conn()?.exec(sql, params).map_err(db)?;
        rows.into_iter().map(task_from_row).collect()
    }
}

impl Store for MyStore {
    fn ping(&self) -> Result<(), StoreError> {
        self.conn()?.query_drop("SELECT 1").map_err(db)
    }

    fn insert_task(
        &self,
        task: &TaskRecord,
        idempotency: Option<(&str, &str)>,
    ) -> Result<(), StoreError> {
        let spec =
            serde_json::to_string(&task.spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.conn()?
            .exec_drop(
                "INSERT INTO tasks (task_id, spec, environment, status, submitted_at, idempotency_key, request_hash)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
                (&task.task_id, spec, &task.environment, task.status.as_str(), &task.submitted_at,
                 idempotency.map(|i| i.0), idempotency.map(|i| i.1)),
            )
            .map_err(db)
    }

    fn find_idempotent(&self, key: &str) -> Result<Option<(String, String)>, StoreError> {
        let row: Option<(String, Option<String>)> = self
            .conn()?
            .exec_first(
                "SELECT task_id, request_hash FROM tasks WHERE idempotency_key = ?",
                (key,),
            )
            .map_err(db)?;
        Ok(row.map(|(id, hash)| (id, hash.unwrap_or_default())))
    }

    fn update_task(&self, task: &TaskRecord) -> Result<(), StoreError> {
        let result = task.result.as_ref().map(crate::model::RunReport::encode);
        self.conn()?
            .exec_drop(
                "UPDATE tasks SET status = ?, started_at = ?, completed_at = ?, result = ?, error = ?, attempts = ? WHERE task_id = ?",
                (task.status.as_str(), &task.started_at, &task.completed_at, result, &task.error, task.attempts, &task.task_id),
            )
            .map_err(db)
    }

    fn get_task(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = ?");
        Ok(self.tasks(&sql, (task_id,))?.pop())
    }

    fn task_history(&self, limit: usize) -> Result<Vec<TaskRecord>, StoreError> {
        self.tasks(
            "SELECT task_id, CASE WHEN JSON_TYPE(JSON_EXTRACT(spec, '$.user_ids')) = 'ARRAY' \
             THEN JSON_SET(spec, '$.user_ids', JSON_ARRAY()) ELSE spec END AS spec, \
             environment, status, submitted_at, started_at, completed_at, result, error, attempts \
             FROM tasks ORDER BY seq DESC LIMIT ?",
            (limit as u64,),
        )
    }

    fn list_tasks(
        &self,
        status: Option<TaskStatus>,
        limit: usize,
        offset: usize,
    ) -> Result<(Vec<TaskRecord>, usize), StoreError> {
        let status = status.map(|s| s.as_str());
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE ? IS NULL OR status = ? ORDER BY seq DESC LIMIT ? OFFSET ?"
        );
        let tasks = self.tasks(&sql, (status, status, limit as u64, offset as u64))?;
        let total: Option<i64> = self
            .conn()?
            .exec_first(
                "SELECT COUNT(*) FROM tasks WHERE ? IS NULL OR status = ?",
                (status, status),
            )
            .map_err(db)?;
        Ok((tasks, total.unwrap_or(0) as usize))
    }

    fn claimable_tasks(&self, now: i64) -> Result<Vec<TaskRecord>, StoreError> {
        self.tasks(
            &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE {CLAIMABLE_SQL}"),
            (now,),
        )
    }

    fn claim_task(
        &self,
        task_id: &str,
        owner: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<TaskRecord>, StoreError> {
        let mut conn = self.conn()?;
        conn.exec_drop(
            CLAIM_SQL,
            (owner, now_timestamp(), lease_until, task_id, now),
        )
        .map_err(db)?;
        if conn.affected_rows() == 1 {
            drop(conn);
            self.get_task(task_id)
        } else {
            Ok(None)
        }
    }

    fn renew_leases(
        &self,
        owner: &str,
        task_ids: &[String],
        lease_until: i64,
    ) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn()?;
        for id in task_ids {
            conn.exec_drop(RENEW_SQL, (lease_until, id, owner))
                .map_err(db)?;
        }
        conn.exec(CANCEL_REQUESTED_SQL, (owner,)).map_err(db)
    }

    fn cancel_task(&self, task_id: &str) -> Result<CancelState, StoreError> {
        cancel_with(
            task_id,
            |sql, args| {
                let mut conn = self.conn()?;
                let params: Vec<::mysql::Value> =
                    args.iter().map(|a| ::mysql::Value::from(*a)).collect();
                conn.exec_drop(sql, params).map_err(db)?;
                Ok(conn.affected_rows())
            },
            || Ok(self.get_task(task_id)?.map(|t| t.status)),
        )
    }

    fn purge_finished(&self, before: &str) -> Result<usize, StoreError> {
        let mut conn = self.conn()?;
        conn.exec_drop(PURGE_TASKS_SQL, (before,)).map_err(db)?;
        let purged = conn.affected_rows() as usize;
        conn.exec_drop(PURGE_OUTCOMES_SQL, (before,)).map_err(db)?;
        Ok(purged)
    }

    fn task_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let rows: Vec<(String, i64)> = self
            .conn()?
            .query("SELECT status, COUNT(*) FROM tasks GROUP BY status")
            .map_err(db)?;
        Ok(rows.into_iter().map(|(s, n)| (s, n as u64)).collect())
    }

    fn current_rule(&self, tag_id: u32) -> Result<Option<RuleVersion>, StoreError> {
        let row = self
            .conn()?
            .exec_first(
                "SELECT tag_id, version, rule, created_at, changed_by FROM tag_rules WHERE tag_id = ? ORDER BY version DESC LIMIT 1",
                (tag_id,),
            )
            .map_err(db)?;
        Ok(row.map(rule_of))
    }

    fn rule_history(&self, tag_id: u32) -> Result<Vec<RuleVersion>, StoreError> {
        let rows = self
            .conn()?
            .exec(
                "SELECT tag_id, version, rule, created_at, changed_by FROM tag_rules WHERE tag_id = ? ORDER BY version",
                (tag_id,),
            )
            .map_err(db)?;
        Ok(rows.into_iter().map(rule_of).collect())
    }

    fn save_rule(
        &self,
        tag_id: u32,
        rule: &str,
        changed_by: &str,
    ) -> Result<RuleVersion, StoreError> {
        let now = now_timestamp();
        let mut conn = self.conn()?;
        let mut tx = conn.start_transaction(Default::default()).map_err(db)?;
        // The primary key makes a concurrent saver of the same version fail
        // rather than overwrite.
        tx.exec_drop(
            "INSERT INTO tag_rules (tag_id, version, rule, created_at, changed_by)
             SELECT ?, COALESCE(MAX(version), 0) + 1, ?, ?, ? FROM tag_rules WHERE tag_id = ?",
            (tag_id, rule, &now, changed_by, tag_id),
        )
        .map_err(db)?;
        let row = tx
            .exec_first(
                "SELECT tag_id, version, rule, created_at, changed_by FROM tag_rules WHERE tag_id = ? ORDER BY version DESC LIMIT 1",
                (tag_id,),
            )
            .map_err(db)?;
        tx.commit().map_err(db)?;
        row.map(rule_of)
            .ok_or_else(|| StoreError::Database(format!("rule of tag {tag_id} vanished")))
    }

    fn seed_rule(&self, tag_id: u32, rule: &str) -> Result<RuleVersion, StoreError> {
        self.conn()?
            .exec_drop(
                "INSERT IGNORE INTO tag_rules (tag_id, version, rule, created_at) VALUES (?, 1, ?, ?)",
                (tag_id, rule, now_timestamp()),
            )
            .map_err(db)?;
        self.current_rule(tag_id)?
            .ok_or_else(|| StoreError::Database(format!("rule of tag {tag_id} vanished")))
    }

    fn tag_owners(&self) -> Result<HashMap<u32, String>, StoreError> {
        let rows: Vec<(u32, String)> = self
            .conn()?
            .query("SELECT tag_id, plugin FROM tag_owners")
            .map_err(db)?;
        Ok(rows.into_iter().collect())
    }

    fn record_tag_owners(&self, claims: &[(u32, String)]) -> Result<(), StoreError> {
        let now = now_timestamp();
        self.conn()?
            .exec_batch(
                "INSERT IGNORE INTO tag_owners (tag_id, plugin, recorded_at) VALUES (?, ?, ?)",
                claims.iter().map(|(id, plugin)| (*id, plugin, &now)),
            )
            .map_err(db)
    }

    fn set_tag_owner(&self, tag_id: u32, plugin: &str) -> Result<Option<String>, StoreError> {
        let previous = self.tag_owners()?.remove(&tag_id);
        self.conn()?
            .exec_drop(
                "INSERT INTO tag_owners (tag_id, plugin, recorded_at) VALUES (?, ?, ?)
                 ON DUPLICATE KEY UPDATE plugin = VALUES(plugin), recorded_at = VALUES(recorded_at)",
                (tag_id, plugin, now_timestamp()),
            )
            .map_err(db)?;
        Ok(previous)
    }

    fn tag_states(&self) -> Result<HashMap<u32, TagState>, StoreError> {
        let rows: Vec<(i64, i64, String, bool)> = self
            .conn()?
            .query("SELECT tag_id, rule_version, watermarks, had_full_run FROM tag_state")
            .map_err(db)?;
        let mut states = HashMap::new();
        for (tag_id, rule_version, watermarks, had_full_run) in rows {
            let tag_id = tag_id as u32;
            let watermarks = serde_json::from_str(&watermarks)
                .map_err(|e| StoreError::Corrupt(format!("watermarks of tag {tag_id}: {e}")))?;
            states.insert(
                tag_id,
                TagState {
                    tag_id,
                    rule_version,
                    watermarks,
                    had_full_run,
                },
            );
        }
        Ok(states)
    }

    fn begin_run(&self, start: &RunStart) -> Result<Box<dyn RunTx + '_>, StoreError> {
        Ok(Box::new(MyRunTx::begin(self.conn()?, start)?))
    }

    fn run_outcome(&self, task_id: &str) -> Result<Option<crate::model::RunReport>, StoreError> {
        let text: Option<String> = self
            .conn()?
            .exec_first(
                "SELECT result FROM run_outcomes WHERE task_id = ?",
                (task_id,),
            )
            .map_err(db)?;
        text.map(|t| {
            serde_json::from_str(&t)
                .map_err(|e| StoreError::Corrupt(format!("outcome of task {task_id}: {e}")))
        })
        .transpose()
    }

    fn user_tags(&self, user_id: &str) -> Result<Option<UserTagRow>, StoreError> {
        let row: Option<(String, String, String, String, String)> = self
            .conn()?
            .exec_first(
                "SELECT user_id, tag_ids, tag_details, created_time, updated_time FROM user_tags WHERE user_id = ?",
                (user_id,),
            )
            .map_err(db)?;
        row.map(|(user_id, ids, details, created_time, updated_time)| {
            Ok(UserTagRow {
                user_id,
                tag_ids: parse_tag_ids(&ids)?,
                details,
                created_time,
                updated_time,
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
        self.conn()?
            .exec(
                "SELECT user_id FROM user_tag_sets WHERE JSON_CONTAINS(tag_ids, ?)
                 AND (? IS NULL OR user_id > ?) ORDER BY user_id LIMIT ?",
                (tag_id.to_string(), cursor, cursor, limit as u64),
            )
            .map_err(db)
    }
}
