//! The run contract between the task wing and whatever computes a task:
//! [`TaskControl`] (cancellation and progress, shared with a running task),
//! [`Stop`] and [`RunError`] (how a run ends early), the [`TaskRunner`]
//! trait, and [`run_caught`], which turns a panic anywhere in a run into a
//! failed task.

use crate::model::{RunReport, TaskRecord};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

pub use crate::progress::{Progress, TagProgress};

/// Shared between a running task and the workers: cancellation and progress.
#[derive(Debug, Default)]
pub struct TaskControl {
    cancelled: AtomicBool,
    shutting_down: AtomicBool,
    progress: Mutex<Progress>,
}

/// Why a running task stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Cancelled through the API.
    Cancelled,
    /// The server is shutting down; the task is queued again at next start.
    Shutdown,
}

impl TaskControl {
    /// `Err` once the task should stop: checked by the runner at safe points
    /// (before each batch and before writing).
    pub fn checkpoint(&self) -> Result<(), Stop> {
        if self.shutting_down.load(Ordering::SeqCst) {
            Err(Stop::Shutdown)
        } else if self.cancelled.load(Ordering::SeqCst) {
            Err(Stop::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Asks the task to stop, writing nothing, at its next checkpoint.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    /// Asks the task to stop at its next checkpoint and stay queued.
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Updates the progress report.
    pub fn set_progress(&self, update: impl FnOnce(&mut Progress)) {
        update(&mut self.progress.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The progress report as of now.
    pub fn progress(&self) -> Progress {
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot()
    }
}

/// How a run ended, as the runner reports it.
#[derive(Debug)]
pub enum RunError {
    /// The task failed; the reason is shown to the user.
    Failed(String),
    /// The task stopped at a checkpoint.
    Stopped(Stop),
}

impl RunError {
    /// A failure whose reason is `e`'s text.
    pub fn failed(e: impl std::fmt::Display) -> RunError {
        RunError::Failed(e.to_string())
    }
}

impl From<Stop> for RunError {
    fn from(stop: Stop) -> RunError {
        RunError::Stopped(stop)
    }
}

/// Computes one task: what the workers and `tag-server run` call.
pub trait TaskRunner: Send + Sync {
    /// Runs `task`, returning its report (committed with its results).
    fn run(&self, task: &TaskRecord, control: &TaskControl) -> Result<RunReport, RunError>;
}

/// The text of a caught panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Runs `task` with `runner`; a panic anywhere in it (engine, polars, a
/// plugin call not caught at its boundary) fails the task with its message.
pub fn run_caught(
    runner: &dyn TaskRunner,
    task: &TaskRecord,
    control: &TaskControl,
) -> Result<RunReport, RunError> {
    // Every log line of the run names the task.
    let _span = tracing::info_span!("task", task_id = %task.task_id).entered();
    catch_unwind(AssertUnwindSafe(|| runner.run(task, control))).unwrap_or_else(|payload| {
        Err(RunError::Failed(format!(
            "the run panicked: {}",
            panic_message(payload.as_ref())
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Panics;
    impl TaskRunner for Panics {
        fn run(&self, _: &TaskRecord, _: &TaskControl) -> Result<RunReport, RunError> {
            panic!("plugin went wrong at row {}", 7)
        }
    }

    #[test]
    fn a_panicking_run_fails_with_its_message() {
        let task = crate::tasks::lifecycle::create(Default::default(), "local");
        match run_caught(&Panics, &task, &TaskControl::default()) {
            Err(RunError::Failed(reason)) => {
                assert_eq!(reason, "the run panicked: plugin went wrong at row 7")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_shutdown_outranks_a_cancel_at_a_checkpoint() {
        let control = TaskControl::default();
        assert_eq!(control.checkpoint(), Ok(()));
        control.cancel();
        assert_eq!(control.checkpoint(), Err(Stop::Cancelled));
        control.shut_down();
        assert_eq!(control.checkpoint(), Err(Stop::Shutdown));
    }
}
