//! The bodies of the tasks resource (the OpenAPI document is derived from
//! these types).

use crate::model::{Mode, Priority, RunReport, TaskRecord, TaskStatus};
use crate::tasks::control::Progress;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /api/v1/tags/trigger`'s body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[allow(dead_code)] // read field by field, for errors that name the field
pub struct TriggerRequest {
    /// Tags to compute (at least one; duplicates are dropped). An id no
    /// loaded plugin provides is refused (400, listing the loaded ids).
    #[schema(min_items = 1)]
    pub tag_ids: Vec<u32>,
    /// Only these users (absent or null: all users; at most the server's
    /// `--max-user-ids`).
    #[schema(min_items = 1)]
    pub user_ids: Option<Vec<String>>,
    /// `full` (default) or `incremental`.
    pub mode: Option<Mode>,
    /// `low`, `normal` (default) or `high`.
    pub priority: Option<Priority>,
    /// The rules' reference date, 1900-01-01 to 2200-12-31 (default: the
    /// day the task runs, UTC).
    #[schema(format = Date, pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    pub as_of: Option<String>,
}

/// What was accepted.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SubmittedTask {
    /// Tags, ascending.
    pub tag_ids: Vec<u32>,
    /// Only these users (null: all).
    pub user_ids: Option<Vec<String>>,
    /// Full or incremental.
    pub mode: Mode,
    /// The server's environment.
    pub environment: String,
    /// When it was accepted (UTC).
    pub submitted_at: String,
    /// Queue priority.
    pub priority: Priority,
    /// The reference date asked for (null: the day it runs).
    pub as_of: Option<String>,
}

/// A trigger or retry accepted (202), or the task an `Idempotency-Key`
/// already created (200).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Submitted {
    /// True.
    pub success: bool,
    /// Poll `/api/v1/tasks/{task_id}/status`.
    pub task_id: String,
    /// `标签任务已成功提交`.
    pub message: String,
    /// What was accepted.
    pub data: SubmittedTask,
    /// The failed task this one retries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
}

impl Submitted {
    /// The answer for `task`.
    pub fn of(task: &TaskRecord) -> Submitted {
        Submitted {
            success: true,
            task_id: task.task_id.clone(),
            message: "标签任务已成功提交".into(),
            data: SubmittedTask {
                tag_ids: task.spec.tag_ids.clone(),
                user_ids: task.spec.user_ids.clone(),
                mode: task.spec.mode,
                environment: task.environment.clone(),
                submitted_at: task.submitted_at.clone(),
                priority: task.spec.priority,
                as_of: task.spec.as_of.clone(),
            },
            retry_of: task.spec.retry_of.clone(),
        }
    }
}

/// A task's state, as its status URL and the listing show it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskState {
    /// UUID.
    pub task_id: String,
    /// Tags, ascending.
    pub tag_ids: Vec<u32>,
    /// Full or incremental.
    pub mode: Mode,
    /// Queue priority.
    pub priority: Priority,
    /// The reference date asked for (null: the day it runs).
    pub as_of: Option<String>,
    /// The server's environment.
    pub environment: String,
    /// Where it is in its life.
    pub status: TaskStatus,
    /// When it was accepted (UTC).
    pub submitted_at: String,
    /// When a worker took it.
    pub started_at: Option<String>,
    /// When it finished.
    pub completed_at: Option<String>,
    /// Starts that did not finish cleanly (a crash counts).
    pub attempts: u32,
    /// The failed task this one retries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
    /// The run's report, once it finished (also for a failed task whose
    /// other tags completed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<RunReport>,
    /// Why it failed or was cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl TaskState {
    /// `task`'s state.
    pub fn of(task: &TaskRecord) -> TaskState {
        TaskState {
            task_id: task.task_id.clone(),
            tag_ids: task.spec.tag_ids.clone(),
            mode: task.spec.mode,
            priority: task.spec.priority,
            as_of: task.spec.as_of.clone(),
            environment: task.environment.clone(),
            status: task.status,
            submitted_at: task.submitted_at.clone(),
            started_at: task.started_at.clone(),
            completed_at: task.completed_at.clone(),
            attempts: task.attempts,
            retry_of: task.spec.retry_of.clone(),
            result: task.result.clone(),
            error: task.error.clone(),
        }
    }
}

/// A running task's progress, in short: enough to draw a bar.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProgressSummary {
    /// The stage running now.
    pub stage: String,
    /// The whole run, 0 to 100.
    pub percent: f64,
    /// Seconds left (estimated).
    pub eta_seconds: Option<u64>,
}

impl From<&Progress> for ProgressSummary {
    fn from(p: &Progress) -> ProgressSummary {
        ProgressSummary {
            stage: p.stage.clone(),
            percent: p.percent,
            eta_seconds: p.eta_seconds,
        }
    }
}

/// A task in full (its `user_ids` list included).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskDetail {
    /// Its state.
    #[serde(flatten)]
    pub state: TaskState,
    /// Only these users (null: all).
    pub user_ids: Option<Vec<String>>,
    /// How far it has got, while it runs: every stage with its done and
    /// total, the overall percent, an estimate of the time left.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}

/// A task in a listing: its `user_ids` list is replaced by its length.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskSummary {
    /// Its state.
    #[serde(flatten)]
    pub state: TaskState,
    /// How many users it is limited to (null: all).
    pub user_ids_count: Option<usize>,
    /// Stage, percent and estimate, while it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<ProgressSummary>,
}

/// `GET /api/v1/tasks/{task_id}/status`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskStatusBody {
    /// True.
    pub success: bool,
    /// The task.
    pub task_id: String,
    /// Its state.
    pub status: TaskDetail,
}

/// `GET /api/v1/tasks`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskList {
    /// True.
    pub success: bool,
    /// Newest first.
    pub tasks: Vec<TaskSummary>,
    /// Tasks matching the filter, in all.
    pub total: u64,
    /// The page size used.
    pub limit: usize,
    /// The offset used.
    pub offset: usize,
}

/// `POST /api/v1/tasks/{task_id}/cancel`: cancelled (200), or asked to
/// stop at its next safe point (202, no `status`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Cancelled {
    /// True.
    pub success: bool,
    /// The task.
    pub task_id: String,
    /// What happened (Chinese).
    pub message: String,
    /// Its state, when it was cancelled before it started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<TaskDetail>,
}
