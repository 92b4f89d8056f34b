//! The only place a task is created, checked, finished and turned into a
//! status: the HTTP API, the workers and `tag-server run` all go through
//! these functions, so they agree on states and error texts.

use crate::model::{now_timestamp, TaskRecord, TaskSpec, TaskStatus};
use crate::registry::TagRegistry;
use crate::scheduler::{RunError, Stop};
use crate::store::{Store, StoreError};
use serde_json::{json, Value};

/// Tag ids no loaded plugin provides.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid tag_ids: {}", list(.unknown))]
pub struct UnknownTags {
    /// The ids asked for that are not loaded, ascending.
    pub unknown: Vec<u32>,
    /// Every loaded id, ascending.
    pub available: Vec<u32>,
}

/// `[1, 2]`.
pub fn list(ids: &[u32]) -> String {
    format!(
        "[{}]",
        ids.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    )
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

/// Marks a task taken by a worker, counting the attempt.
pub fn start(task: &mut TaskRecord) {
    task.status = TaskStatus::Running;
    task.started_at = Some(now_timestamp());
    task.completed_at = None;
    task.attempts += 1;
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
pub fn finish(task: &mut TaskRecord, outcome: Result<Value, RunError>) -> Finished {
    match outcome {
        Ok(result) => {
            task.error = failed_tags_error(&result);
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

/// For a run some of whose tags failed (the others committed): the task's
/// error, naming each failed tag and why.
pub fn failed_tags_error(result: &Value) -> Option<String> {
    let failed: Vec<String> = result
        .get("tags")?
        .as_array()?
        .iter()
        .filter(|t| t["status"] == "failed")
        .map(|t| {
            format!(
                "tag {}: {}",
                t["tag_id"],
                t["error"].as_str().unwrap_or("?")
            )
        })
        .collect();
    if failed.is_empty() {
        return None;
    }
    let ids = result["failed_tags"].to_string();
    Some(format!(
        "tags {ids} failed (the other tags' results are committed): {}",
        failed.join("; ")
    ))
}

/// The tags a retry of `task` runs: the failed tags of a partly failed
/// run, or all its tags when the run failed as a whole.
pub fn tags_to_retry(task: &TaskRecord) -> Vec<u32> {
    let failed = task
        .result
        .as_ref()
        .and_then(|r| r.get("failed_tags"))
        .and_then(|ids| serde_json::from_value::<Vec<u32>>(ids.clone()).ok());
    match failed {
        Some(ids) if !ids.is_empty() => ids,
        _ => task.spec.tag_ids.clone(),
    }
}

/// The error of a task cancelled before it started (the store writes it).
pub use crate::store::CANCELLED_BEFORE_START;

/// The outcome a task's run committed with its results, if the process
/// stopped after that commit but before the task was marked finished: the
/// task is completed with it instead of running again.
pub fn committed_outcome(
    task: &TaskRecord,
    store: &dyn Store,
) -> Result<Option<Value>, StoreError> {
    let Some(mut result) = store.run_outcome(&task.task_id)? else {
        return Ok(None);
    };
    if let Some(notes) = result.get_mut("notes").and_then(Value::as_array_mut) {
        notes.push(json!(
            "recovered after a restart: this outcome was committed with the results before the server stopped"
        ));
    }
    Ok(Some(result))
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
