//! Plain types shared by the task wing, engine, store and HTTP layers: the
//! task record and its parts, and the typed run report ([`report`]).

pub mod report;
pub mod rule_size;

pub use report::{
    PluginIdentity, RunReport, SyncSummary, TagCounts, TagReport, TagScope, TagStatus,
};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A task's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Accepted and queued.
    Submitted,
    /// A worker is computing it.
    Running,
    /// Finished; its changes are written.
    Completed,
    /// Finished with an error; nothing was written.
    Failed,
    /// Cancelled before it wrote anything.
    Cancelled,
}

impl TaskStatus {
    /// Every status.
    pub const ALL: [TaskStatus; 5] = [
        TaskStatus::Submitted,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ];

    /// The lower-case name used in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Submitted => "submitted",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    /// True once the task can no longer change.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }
}

impl FromStr for TaskStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        TaskStatus::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown task status \"{s}\" (expected submitted, running, completed, failed or cancelled)"))
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which users a run evaluates (with `user_ids` a run is restricted further).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every user in the universe.
    #[default]
    Full,
    /// Only users whose source rows changed since each tag's last run.
    Incremental,
}

impl Mode {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Incremental => "incremental",
        }
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(Mode::Full),
            "incremental" => Ok(Mode::Incremental),
            _ => Err(format!(
                "mode must be \"full\" or \"incremental\", got \"{s}\""
            )),
        }
    }
}

/// Queue priority: higher runs first, FIFO within a priority.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    Default,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Runs after everything else.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Runs before everything else.
    High,
}

impl Priority {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }
}

impl FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "low" => Ok(Priority::Low),
            "normal" => Ok(Priority::Normal),
            "high" => Ok(Priority::High),
            _ => Err(format!(
                "priority must be \"low\", \"normal\" or \"high\", got \"{s}\""
            )),
        }
    }
}

/// What a task asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Tags to compute, ascending, no duplicates.
    pub tag_ids: Vec<u32>,
    /// Restrict the run to these users (`None`: the whole universe).
    pub user_ids: Option<Vec<String>>,
    /// Full or incremental.
    pub mode: Mode,
    /// Queue priority.
    pub priority: Priority,
    /// The rules' reference date, `YYYY-MM-DD` (`None`: today, UTC, when it runs).
    pub as_of: Option<String>,
    /// The failed task this one retries (`POST /api/v1/tasks/{id}/retry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
}

/// A task as stored and reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// UUID.
    pub task_id: String,
    /// What it computes.
    #[serde(flatten)]
    pub spec: TaskSpec,
    /// The server's environment name (`local`, `glue-dev`, `glue-prod`).
    pub environment: String,
    /// Lifecycle state.
    pub status: TaskStatus,
    /// When it was accepted (`YYYY-MM-DDTHH:MM:SS`, UTC).
    pub submitted_at: String,
    /// When a worker took it.
    pub started_at: Option<String>,
    /// When it reached a terminal state.
    pub completed_at: Option<String>,
    /// The run's report, once it finished (also for a failed task some of
    /// whose tags committed).
    pub result: Option<RunReport>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// Times a worker started it without finishing it cleanly (a crash of
    /// the server while it ran counts; a shutdown does not).
    #[serde(default)]
    pub attempts: u32,
}

/// Now, in the API's timestamp format (UTC, seconds): the one the plugin
/// loader stamps loads with.
pub use tag_plugin_loader::now_timestamp;

/// The error of a task cancelled before it started.
pub const CANCELLED_BEFORE_START: &str = "cancelled before it started";

/// Tag ids as the API's messages list them: `[1, 2]`.
pub fn id_list(ids: &[u32]) -> String {
    format!(
        "[{}]",
        ids.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    )
}
