//! The one place for every state change a task goes through, and for the
//! store calls that make each one durable: the HTTP API, the workers and
//! `tag-server run` all go through these functions (none of them changes a
//! task in the store itself; reading tasks back is theirs), so they agree on
//! states and error texts. Purging old finished tasks (retention, in the
//! server) deletes rather than changes them, and stays a store call there.
//!
//! - created: [`create`] (after [`check`]), persisted `submitted` by
//!   [`submit`];
//! - orphaned: [`requeue_orphans`] queues again the tasks of a dead
//!   process of this host, without waiting out its lease;
//! - claimed by a worker: [`claimable`] lists what may be taken, [`claim`]
//!   takes one (the store marks it `running`, counts the attempt and leases
//!   it; a task that stopped the server too often is failed instead), and
//!   [`renew`] keeps the lease while it runs;
//! - started without the queue (`tag-server run`): [`start_unqueued`];
//! - progress: kept in memory only, by the run's
//!   [`TaskControl`](super::control::TaskControl); the store never sees it;
//! - finished: [`committed_outcome`] (a run that committed before the
//!   process stopped), [`finish`] (the run's outcome becomes a status) and
//!   [`record`] (written to the store);
//! - cancelled: [`cancel`] (the store decides, for a task not running
//!   here) or [`cancel_running`];
//! - retried: [`retry_spec`], a new task created like any other.

use super::control::{RunError, Stop, TaskControl};
use super::owner::Owner;
use crate::model::{now_timestamp, RunReport, TaskRecord, TaskSpec, TaskStatus};
use crate::store::{CancelState, Store, StoreError};
use std::time::Duration;
use tag_plugin_loader::TagRegistry;

pub use crate::model::{id_list as list, CANCELLED_BEFORE_START};

/// Tag ids no loaded plugin provides (the message quotes the first 20).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid tag_ids: {}", tag_plugin_api::echo::list(.unknown))]
pub struct UnknownTags {
    /// The ids asked for that are not loaded, ascending.
    pub unknown: Vec<u32>,
    /// Every loaded id, ascending.
    pub available: Vec<u32>,
}

/// A new task for `spec`, `submitted` now.
pub fn create(spec: TaskSpec, environment: &str) -> TaskRecord {
    TaskRecord {
        task_id: uuid::Uuid::new_v4().to_string(),
        spec,
        environment: environment.to_string(),
        status: TaskStatus::Submitted,
        submitted_at: now_timestamp(),
        started_at: None,
        completed_at: None,
        result: None,
        error: None,
        attempts: 0,
    }
}

/// Checks that every tag of `spec` is loaded.
pub fn check(spec: &TaskSpec, registry: &TagRegistry) -> Result<(), UnknownTags> {
    let unknown = registry.unknown(&spec.tag_ids);
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(UnknownTags {
            unknown,
            available: registry.ids(),
        })
    }
}

/// Persists a new task (`submitted`), with its idempotency key and the
/// fingerprint of the request that created it.
pub fn submit(
    store: &dyn Store,
    task: &TaskRecord,
    idempotency: Option<(&str, &str)>,
) -> Result<(), StoreError> {
    store.insert_task(task, idempotency)
}

/// Marks a task started, counting the attempt (in memory: a claim does the
/// same in the store's SQL).
pub fn start(task: &mut TaskRecord) {
    task.status = TaskStatus::Running;
    task.started_at = Some(now_timestamp());
    task.completed_at = None;
    task.attempts += 1;
}

/// Starts a task that runs in this process without the queue (`tag-server
/// run`): it is persisted already `running`, so no worker claims it.
pub fn start_unqueued(store: &dyn Store, task: &mut TaskRecord) -> Result<(), StoreError> {
    start(task);
    store.insert_task(task, None)
}

/// Unix seconds now: the clock of leases.
fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The tasks the store says may be taken now: queued ones (from an earlier
/// run or another process) and running ones whose owner's lease expired.
pub fn claimable(store: &dyn Store) -> Result<Vec<TaskRecord>, StoreError> {
    store.claimable_tasks(unix_now())
}

/// Queues again, at once rather than when their leases expire, the tasks
/// leased by a process of this host that is no longer alive (a predecessor
/// killed or crashed; see [`Owner::outlived`]); leases of live processes,
/// of other hosts and of owners that cannot be told apart are left alone.
/// The ids queued again; each keeps its attempt counted, as a task taken
/// over after its lease expired does.
pub fn requeue_orphans(store: &dyn Store, me: &Owner) -> Result<Vec<String>, StoreError> {
    let mut requeued = Vec::new();
    for (task_id, owner) in store.running_owners()? {
        let dead = Owner::parse(&owner).is_some_and(|o| me.outlived(&o));
        if dead && store.requeue_orphan(&task_id, &owner)? {
            tracing::info!(task_id = %task_id, owner = %owner, "queued again at once: the process that ran it, on this host, is gone");
            requeued.push(task_id);
        }
    }
    Ok(requeued)
}

/// What a claim got.
#[derive(Debug)]
pub enum Claim {
    /// The task, now `running` for this owner: run it.
    Run(TaskRecord),
    /// The task had stopped the server on every allowed attempt: it is now
    /// `failed` (recorded), not run again.
    CrashedTooOften(TaskRecord),
    /// Another worker (here or in another process) has it, or it ended.
    Taken,
}

/// Takes task `task_id` for `owner`, leased for `lease`; the store makes
/// the claim atomic, so of concurrent claims one wins.
pub fn claim(
    store: &dyn Store,
    task_id: &str,
    owner: &str,
    lease: Duration,
) -> Result<Claim, StoreError> {
    let now = unix_now();
    let Some(mut task) = store.claim_task(task_id, owner, now, now + lease.as_secs() as i64)?
    else {
        return Ok(Claim::Taken);
    };
    if crashed_too_often(&mut task) {
        store.update_task(&task)?;
        return Ok(Claim::CrashedTooOften(task));
    }
    Ok(Claim::Run(task))
}

/// Extends `owner`'s leases on the tasks it runs by `lease`; the ids among
/// them whose cancel was requested (through another process's API).
pub fn renew(
    store: &dyn Store,
    owner: &str,
    running: &[String],
    lease: Duration,
) -> Result<Vec<String>, StoreError> {
    store.renew_leases(owner, running, unix_now() + lease.as_secs() as i64)
}

/// Attempts after which a task whose owner died while running it (its
/// lease expired without a shutdown) is failed instead of re-run.
pub const MAX_CRASHED_ATTEMPTS: u32 = 2;

/// Whether a task just claimed had already stopped the server on every
/// allowed attempt (its earlier owners died while running it). If so it is
/// now `failed` with the reason, and the claim is not counted.
pub fn crashed_too_often(task: &mut TaskRecord) -> bool {
    if task.attempts <= MAX_CRASHED_ATTEMPTS {
        return false;
    }
    task.attempts -= 1;
    task.status = TaskStatus::Failed;
    task.completed_at = Some(now_timestamp());
    task.error = Some(format!(
        "the server stopped while running this task {} times; it is not run again (see the server log for the cause)",
        task.attempts
    ));
    true
}

/// What became of a task after its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// It reached a terminal status.
    Terminal(TaskStatus),
    /// The server is stopping: it goes back to the queue for the next start.
    Requeued,
}

/// Applies a run's outcome to `task`.
pub fn finish(task: &mut TaskRecord, outcome: Result<RunReport, RunError>) -> Finished {
    match outcome {
        Ok(result) => {
            task.error = result.failed_tags_error();
            task.status = if task.error.is_some() {
                TaskStatus::Failed
            } else {
                TaskStatus::Completed
            };
            task.result = Some(result);
        }
        Err(RunError::Failed(reason)) => {
            task.status = TaskStatus::Failed;
            task.error = Some(reason);
        }
        Err(RunError::Stopped(Stop::Cancelled)) => {
            task.status = TaskStatus::Cancelled;
            task.error = Some("cancelled while running; nothing was written".into());
        }
        Err(RunError::Stopped(Stop::Shutdown)) => {
            // A shutdown is not the task's doing: the attempt does not count.
            task.status = TaskStatus::Submitted;
            task.started_at = None;
            task.attempts = task.attempts.saturating_sub(1);
            return Finished::Requeued;
        }
    }
    task.completed_at = Some(now_timestamp());
    Finished::Terminal(task.status)
}

/// Records a task's state in the store (after a run: its outcome).
pub fn record(store: &dyn Store, task: &TaskRecord) -> Result<(), StoreError> {
    store.update_task(task)
}

/// The outcome of a cancel request.
#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    /// It was queued and is now cancelled.
    Cancelled(Box<TaskRecord>),
    /// It is running and will stop at its next safe point, writing nothing.
    Requested,
    /// It had already finished.
    AlreadyFinished(TaskStatus),
    /// No such task.
    NotFound,
}

/// Cancels task `task_id`, which is not running in this process: the store
/// decides, since another process may have claimed it meanwhile.
pub fn cancel(store: &dyn Store, task_id: &str) -> Result<CancelOutcome, StoreError> {
    Ok(match store.cancel_task(task_id)? {
        CancelState::Cancelled => match store.get_task(task_id)? {
            Some(task) => CancelOutcome::Cancelled(Box::new(task)),
            None => CancelOutcome::NotFound,
        },
        // Running in another process: it stops at its next safe point.
        CancelState::StopRequested => CancelOutcome::Requested,
        CancelState::AlreadyFinished(status) => CancelOutcome::AlreadyFinished(status),
        CancelState::NotFound => CancelOutcome::NotFound,
    })
}

/// Asks task `task_id`, running here under `control`, to stop at its next
/// safe point (it then finishes `cancelled`, writing nothing).
pub fn cancel_running(
    store: &dyn Store,
    control: &TaskControl,
    task_id: &str,
) -> Result<CancelOutcome, StoreError> {
    control.cancel();
    // Its worker may have recorded the end a moment ago.
    Ok(match store.get_task(task_id)? {
        Some(task) if task.status.is_terminal() => CancelOutcome::AlreadyFinished(task.status),
        _ => CancelOutcome::Requested,
    })
}

/// A retry was asked of a task that did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("only a failed task can be retried; this one is {}", .0.as_str())]
pub struct NotRetryable(pub TaskStatus);

/// The spec of a retry of failed task `old`: its failed tags (all of them
/// when the run failed as a whole), the same users, mode, `as_of` and
/// priority, and `old` in `retry_of`.
pub fn retry_spec(old: &TaskRecord) -> Result<TaskSpec, NotRetryable> {
    if old.status != TaskStatus::Failed {
        return Err(NotRetryable(old.status));
    }
    let tag_ids = match &old.result {
        Some(report) => report.tags_to_retry(&old.spec.tag_ids),
        None => old.spec.tag_ids.clone(),
    };
    Ok(TaskSpec {
        tag_ids,
        retry_of: Some(old.task_id.clone()),
        ..old.spec.clone()
    })
}

/// The outcome a task's run committed with its results, if the process
/// stopped after that commit but before the task was marked finished: the
/// task is completed with it instead of running again.
pub fn committed_outcome(
    task: &TaskRecord,
    store: &dyn Store,
) -> Result<Option<RunReport>, StoreError> {
    Ok(store.run_outcome(&task.task_id)?.map(RunReport::recovered))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Mode, Priority};

    fn spec() -> TaskSpec {
        TaskSpec {
            tag_ids: vec![1],
            user_ids: None,
            mode: Mode::Full,
            priority: Priority::Normal,
            as_of: None,
            retry_of: None,
        }
    }

    #[test]
    fn a_task_moves_from_submitted_to_a_terminal_status() {
        let mut task = create(spec(), "local");
        assert_eq!(task.status, TaskStatus::Submitted);
        start(&mut task);
        assert_eq!(task.status, TaskStatus::Running);
        let done = finish(&mut task, Err(RunError::Failed("boom".into())));
        assert_eq!(done, Finished::Terminal(TaskStatus::Failed));
        assert_eq!(task.error.as_deref(), Some("boom"));
        assert!(task.completed_at.is_some());
    }

    #[test]
    fn a_task_that_stopped_the_server_twice_is_failed_when_claimed_again() {
        let mut task = create(spec(), "local");
        // Claimed twice (the store counts each claim), its owner died each time.
        task.attempts = 2;
        assert!(!crashed_too_often(&mut task));
        task.attempts = 3;
        assert!(crashed_too_often(&mut task));
        assert_eq!((task.status, task.attempts), (TaskStatus::Failed, 2));
        assert!(
            task.error.as_deref().unwrap().contains("2 times"),
            "{:?}",
            task.error
        );
    }

    #[test]
    fn only_a_failed_task_is_retried_and_the_retry_names_it() {
        let mut old = create(spec(), "local");
        assert_eq!(
            retry_spec(&old).unwrap_err(),
            NotRetryable(TaskStatus::Submitted)
        );
        start(&mut old);
        finish(&mut old, Err(RunError::Failed("boom".into())));
        let retry = retry_spec(&old).unwrap();
        assert_eq!(retry.retry_of.as_deref(), Some(old.task_id.as_str()));
        assert_eq!(
            TaskSpec {
                retry_of: None,
                ..retry
            },
            spec()
        );
    }

    #[test]
    fn a_shutdown_requeues_and_unknown_tags_are_named() {
        let mut task = create(spec(), "local");
        start(&mut task);
        assert_eq!(
            finish(&mut task, Err(RunError::Stopped(Stop::Shutdown))),
            Finished::Requeued
        );
        assert_eq!(
            (task.status, task.started_at.clone()),
            (TaskStatus::Submitted, None)
        );
        let err = check(&spec(), &TagRegistry::default()).unwrap_err();
        assert_eq!(err.to_string(), "Invalid tag_ids: [1]");
        assert!(err.available.is_empty());
    }
}
