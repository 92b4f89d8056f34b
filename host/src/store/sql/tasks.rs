//! The task queue on every backend: tasks, idempotency keys, claims,
//! leases, cancels and the purge of finished tasks.

use super::{Arg, Conn, Row, SqlStore};
use crate::model::{now_timestamp, TaskRecord, TaskStatus};
use crate::store::{CancelState, StoreError, TaskColumns, TaskStore, CANCELLED_BEFORE_START};
use std::collections::BTreeMap;

/// The columns [`task_of`] decodes, in its order.
const TASK_COLUMNS: &str =
    "task_id, spec, environment, status, submitted_at, started_at, completed_at, result, error, attempts";

/// The claim: owner, start time, lease end, task id, now. Atomic per row:
/// of two workers, one updates the row and the other finds nothing to update.
const CLAIM_SQL: &str = "UPDATE tasks SET status = 'running', owner = ?, started_at = ?, lease_until = ?,
    attempts = attempts + 1, completed_at = NULL
    WHERE task_id = ? AND (status = 'submitted' OR (status = 'running' AND (lease_until IS NULL OR lease_until < ?)))";

/// Tasks a worker may take (`?`: now), oldest first.
const CLAIMABLE_SQL: &str = "status = 'submitted' OR (status = 'running' AND (lease_until IS NULL OR lease_until < ?)) ORDER BY seq";

/// Renews one lease (lease end, task id, owner).
const RENEW_SQL: &str =
    "UPDATE tasks SET lease_until = ? WHERE task_id = ? AND owner = ? AND status = 'running'";

/// Running tasks with their lease owners.
const RUNNING_OWNERS_SQL: &str =
    "SELECT task_id, owner FROM tasks WHERE status = 'running' AND owner IS NOT NULL";

/// Queues a dead owner's task again (task id, owner), atomically: of two
/// processes doing it, one updates the row.
const REQUEUE_ORPHAN_SQL: &str =
    "UPDATE tasks SET status = 'submitted', owner = NULL, lease_until = NULL,
    started_at = NULL WHERE task_id = ? AND status = 'running' AND owner = ?";

/// An owner's running tasks whose cancellation was requested (owner).
const CANCEL_REQUESTED_SQL: &str =
    "SELECT task_id FROM tasks WHERE owner = ? AND status = 'running' AND cancel_requested = 1";

/// Cancels a queued task (completed_at, error, task id).
const CANCEL_QUEUED_SQL: &str = "UPDATE tasks SET status = 'cancelled', completed_at = ?,
    error = ? WHERE task_id = ? AND status = 'submitted'";

/// Asks a running task to stop (task id).
const CANCEL_RUNNING_SQL: &str =
    "UPDATE tasks SET cancel_requested = 1 WHERE task_id = ? AND status = 'running'";

/// Deletes the finished tasks that ended before `?`.
const PURGE_TASKS_SQL: &str =
    "DELETE FROM tasks WHERE status IN ('completed', 'failed', 'cancelled') AND completed_at < ?";

/// Deletes run outcomes committed before `?`.
const PURGE_OUTCOMES_SQL: &str = "DELETE FROM run_outcomes WHERE committed_at < ?";

/// A task from a row of [`TASK_COLUMNS`].
fn task_of(row: &Row) -> Result<TaskRecord, StoreError> {
    TaskColumns {
        task_id: row.text(0)?,
        spec: row.text(1)?,
        environment: row.text(2)?,
        status: row.text(3)?,
        submitted_at: row.text(4)?,
        started_at: row.opt_text(5)?,
        completed_at: row.opt_text(6)?,
        result: row.opt_text(7)?,
        error: row.opt_text(8)?,
        attempts: row.int(9)?,
    }
    .decode()
}

/// The tasks `sql` selects (its columns those of [`TASK_COLUMNS`]).
fn tasks(c: &mut dyn Conn, sql: &str, args: &[Arg<'_>]) -> Result<Vec<TaskRecord>, StoreError> {
    c.query(sql, args)?.iter().map(task_of).collect()
}

/// Runs the two cancel updates in order, then, if neither applied, reads
/// the status to say why.
fn cancel(c: &mut dyn Conn, task_id: &str) -> Result<CancelState, StoreError> {
    let now = now_timestamp();
    let queued = [
        Arg::from(&now),
        CANCELLED_BEFORE_START.into(),
        task_id.into(),
    ];
    if c.execute(CANCEL_QUEUED_SQL, &queued)? == 1 {
        return Ok(CancelState::Cancelled);
    }
    if c.execute(CANCEL_RUNNING_SQL, &[task_id.into()])? == 1 {
        return Ok(CancelState::StopRequested);
    }
    let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = ?");
    let status = tasks(c, &sql, &[task_id.into()])?.pop().map(|t| t.status);
    Ok(match status {
        None => CancelState::NotFound,
        Some(s) if s.is_terminal() => CancelState::AlreadyFinished(s),
        // It changed state between the two updates: ask again later.
        Some(_) => CancelState::StopRequested,
    })
}

impl<B: SqlStore> TaskStore for B {
    fn insert_task(
        &self,
        task: &TaskRecord,
        idempotency: Option<(&str, &str)>,
    ) -> Result<(), StoreError> {
        let spec =
            serde_json::to_string(&task.spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let args = [
            Arg::from(&task.task_id),
            Arg::from(&spec),
            Arg::from(&task.environment),
            Arg::from(task.status.as_str()),
            Arg::from(&task.submitted_at),
            Arg::from(idempotency.map(|i| i.0)),
            Arg::from(idempotency.map(|i| i.1)),
        ];
        self.control(|c| {
            c.execute(
                "INSERT INTO tasks (task_id, spec, environment, status, submitted_at, idempotency_key, request_hash)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
                &args,
            )
            .map(drop)
        })
    }

    fn find_idempotent(&self, key: &str) -> Result<Option<(String, String)>, StoreError> {
        let row = self.control(|c| {
            c.query_first(
                "SELECT task_id, request_hash FROM tasks WHERE idempotency_key = ?",
                &[key.into()],
            )
        })?;
        row.map(|r| Ok((r.text(0)?, r.opt_text(1)?.unwrap_or_default())))
            .transpose()
    }

    fn update_task(&self, task: &TaskRecord) -> Result<(), StoreError> {
        let result = task.result.as_ref().map(crate::model::RunReport::encode);
        let args = [
            Arg::from(task.status.as_str()),
            Arg::from(&task.started_at),
            Arg::from(&task.completed_at),
            Arg::from(&result),
            Arg::from(&task.error),
            Arg::from(task.attempts),
            Arg::from(&task.task_id),
        ];
        self.control(|c| {
            c.execute(
                "UPDATE tasks SET status = ?, started_at = ?, completed_at = ?, result = ?, error = ?, attempts = ? WHERE task_id = ?",
                &args,
            )
            .map(drop)
        })
    }

    fn get_task(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = ?");
        Ok(self.control(|c| tasks(c, &sql, &[task_id.into()]))?.pop())
    }

    fn list_tasks(
        &self,
        status: Option<TaskStatus>,
        limit: usize,
        offset: usize,
    ) -> Result<(Vec<TaskRecord>, usize), StoreError> {
        // The filter is left out rather than passed as NULL: PostgreSQL
        // cannot type a parameter that is only compared with NULL.
        let (filter, args) = match status {
            Some(s) => (" WHERE status = ?", vec![Arg::from(s.as_str())]),
            None => ("", Vec::new()),
        };
        let sql =
            format!("SELECT {TASK_COLUMNS} FROM tasks{filter} ORDER BY seq DESC LIMIT ? OFFSET ?");
        let mut paged = args.clone();
        paged.extend([Arg::Int(limit as i64), Arg::Int(offset as i64)]);
        self.control(|c| {
            let tasks = tasks(c, &sql, &paged)?;
            let count = format!("SELECT COUNT(*) FROM tasks{filter}");
            let total = match c.query_first(&count, &args)? {
                Some(row) => row.int(0)?,
                None => 0,
            };
            Ok((tasks, total.max(0) as usize))
        })
    }

    fn task_history(&self, limit: usize) -> Result<Vec<TaskRecord>, StoreError> {
        self.control(|c| {
            let spec = c.dialect().spec_without_user_ids();
            let sql = format!(
                "SELECT task_id, {spec} AS spec, environment, status, submitted_at, started_at, \
                 completed_at, result, error, attempts FROM tasks ORDER BY seq DESC LIMIT ?"
            );
            tasks(c, &sql, &[Arg::Int(limit as i64)])
        })
    }

    fn claimable_tasks(&self, now: i64) -> Result<Vec<TaskRecord>, StoreError> {
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE {CLAIMABLE_SQL}");
        self.control(|c| tasks(c, &sql, &[now.into()]))
    }

    fn claim_task(
        &self,
        task_id: &str,
        owner: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<TaskRecord>, StoreError> {
        let started = now_timestamp();
        let args = [
            Arg::from(owner),
            Arg::from(&started),
            Arg::from(lease_until),
            Arg::from(task_id),
            Arg::from(now),
        ];
        let claimed = self.control(|c| c.execute(CLAIM_SQL, &args))?;
        if claimed == 1 {
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
        self.control(|c| {
            for id in task_ids {
                c.execute(RENEW_SQL, &[lease_until.into(), id.into(), owner.into()])?;
            }
            let rows = c.query(CANCEL_REQUESTED_SQL, &[owner.into()])?;
            rows.iter().map(|r| r.text(0)).collect()
        })
    }

    fn running_owners(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self.control(|c| c.query(RUNNING_OWNERS_SQL, &[]))?;
        rows.iter().map(|r| Ok((r.text(0)?, r.text(1)?))).collect()
    }

    fn requeue_orphan(&self, task_id: &str, owner: &str) -> Result<bool, StoreError> {
        let args = [Arg::from(task_id), Arg::from(owner)];
        Ok(self.control(|c| c.execute(REQUEUE_ORPHAN_SQL, &args))? == 1)
    }

    fn cancel_task(&self, task_id: &str) -> Result<CancelState, StoreError> {
        self.control(|c| cancel(c, task_id))
    }

    fn task_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let rows =
            self.control(|c| c.query("SELECT status, COUNT(*) FROM tasks GROUP BY status", &[]))?;
        rows.iter()
            .map(|r| Ok((r.text(0)?, r.int(1)?.max(0) as u64)))
            .collect()
    }

    fn purge_finished(&self, before: &str) -> Result<usize, StoreError> {
        let purged = self.control(|c| c.execute(PURGE_TASKS_SQL, &[before.into()]))?;
        self.results_write(|c| c.execute(PURGE_OUTCOMES_SQL, &[before.into()]))?;
        Ok(purged as usize)
    }
}
