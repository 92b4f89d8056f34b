//! The API's bodies as types. Handlers build and return these, and the
//! OpenAPI document (`/api/v1/openapi.json`) is derived from the same
//! types, so the two cannot drift apart.

use crate::model::RunReport;
use crate::model::{Mode, Priority, TaskRecord, TaskStatus};
use crate::tasks::{Progress, QueueStats};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Every error answer (the seed's format): `success` is false, `error`
/// says what went wrong in English and `message` in Chinese.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Always false.
    pub success: bool,
    /// What went wrong (English).
    pub error: String,
    /// What went wrong (Chinese).
    pub message: String,
    /// On 5xx answers: the id of the request, which the server's log line
    /// with the details carries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// On an unknown tag id: the ids that exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_tag_ids: Option<Vec<u32>>,
}

/// `GET /health`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HealthBody {
    /// `healthy`, `degraded` (serving, but a plugin file was rejected) or
    /// `unhealthy` (the store does not answer; HTTP 503).
    pub status: String,
    /// Now (UTC).
    pub timestamp: String,
    /// `local`, `glue-dev` or `glue-prod`.
    pub environment: String,
    /// Plugin files rejected by the last scan (when degraded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_plugins: Option<usize>,
    /// Why the store is unreachable (when unhealthy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One loaded tag.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TagInfo {
    /// Its id.
    pub tag_id: u32,
    /// The plugin's name for the task that computes it.
    pub task_class: String,
    /// Its name (Chinese, as the seed has it).
    pub description: String,
    /// Its category.
    pub category: String,
    /// The providing plugin's version.
    pub version: String,
}

/// `GET /api/v1/tags/available`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AvailableTags {
    /// True.
    pub success: bool,
    /// Ascending by id.
    pub available_tags: Vec<TagInfo>,
}

/// One version of a tag's rule.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RuleVersionBody {
    /// 1 for the plugin's default, +1 per replacement.
    pub version: i64,
    /// The rule (the condition tree of `tags.md`).
    #[schema(value_type = Object)]
    pub rule: Value,
    /// When it was saved (UTC).
    pub created_at: String,
    /// The name of the API token that saved it (none for the default).
    pub changed_by: Option<String>,
}

impl RuleVersionBody {
    /// A stored version (its text was validated when saved).
    pub fn of(stored: &crate::store::RuleVersion) -> RuleVersionBody {
        RuleVersionBody {
            version: stored.version,
            rule: serde_json::from_str(&stored.rule)
                .unwrap_or_else(|_| Value::Object(Default::default())),
            created_at: stored.created_at.clone(),
            changed_by: stored.changed_by.clone(),
        }
    }
}

/// `GET /api/v1/tags/{tag_id}/rule`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RuleBody {
    /// True.
    pub success: bool,
    /// The tag.
    pub tag_id: u32,
    /// The rule in effect.
    pub rule: Option<RuleVersionBody>,
    /// Every version, oldest first.
    pub history: Vec<RuleVersionBody>,
}

/// `PUT /api/v1/tags/{tag_id}/rule`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RuleReplaced {
    /// True.
    pub success: bool,
    /// The tag.
    pub tag_id: u32,
    /// False when the rule sent is the one in effect (no new version).
    pub changed: bool,
    /// The rule now in effect.
    pub rule: RuleVersionBody,
}

/// `GET /api/v1/users/{user_id}/tags`: the user's row of results.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserTags {
    /// True.
    pub success: bool,
    /// The user.
    pub user_id: String,
    /// Tags held, ascending.
    pub tag_ids: Vec<u32>,
    /// Per tag id: name, category, when it was gained, by which run.
    #[schema(value_type = Object)]
    pub tag_details: Value,
    /// When the user first held a tag (UTC).
    pub created_time: String,
    /// When the user's tags last changed (UTC).
    pub updated_time: String,
}

/// `GET /api/v1/tags/{tag_id}/users`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TagUsers {
    /// True.
    pub success: bool,
    /// The tag.
    pub tag_id: u32,
    /// Holders, ascending by user id.
    pub users: Vec<String>,
    /// Pass as `cursor` for the next page (none: this was the last).
    pub next_cursor: Option<String>,
}

/// `GET /api/v1/system/stats`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Stats {
    /// True.
    pub success: bool,
    /// `local`, `glue-dev` or `glue-prod`.
    pub environment: String,
    /// Tasks stored, by status.
    pub tasks: BTreeMap<String, u64>,
    /// The queue and its workers.
    pub queue: QueueStats,
    /// Tags the loaded plugins provide.
    pub tags_loaded: usize,
}

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

/// A tag a plugin file provides.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PluginTag {
    /// Its id.
    pub tag_id: u32,
    /// The task's name.
    pub task_class: String,
    /// Its name.
    pub description: String,
}

/// One file of the plugins directory.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PluginFileBody {
    /// Its name.
    pub file: Option<String>,
    /// Its path.
    pub path: String,
    /// Hex SHA-256 of its bytes.
    pub sha256: String,
    /// When it was checked (UTC).
    pub loaded_at: String,
    /// `loaded` or `rejected`.
    pub status: String,
    /// The plugin crate's name (loaded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// The plugin crate's version (loaded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The plugin interface version it was built against (loaded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// The tags it serves (loaded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<PluginTag>>,
    /// Why it was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /api/v1/plugins` and `POST /api/v1/plugins/reload`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PluginsBody {
    /// True.
    pub success: bool,
    /// The directory scanned.
    pub plugins_dir: String,
    /// Files loaded.
    pub loaded: usize,
    /// Files rejected.
    pub rejected: usize,
    /// Every file, by name.
    pub files: Vec<PluginFileBody>,
    /// What happened (reload).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `POST /api/v1/tags/{tag_id}/owner`'s body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct OwnerRequest {
    /// The plugin crate's name (1 to 255 characters, not all blank).
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    pub plugin: String,
}

/// `POST /api/v1/tags/{tag_id}/owner`: the transfer, then the reload.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OwnerTransferred {
    /// The reload that followed.
    #[serde(flatten)]
    pub plugins: PluginsBody,
    /// The tag.
    pub tag_id: u32,
    /// Its owner now.
    pub owner: String,
    /// Its owner before (none: it had none).
    pub previous_owner: Option<String>,
}
