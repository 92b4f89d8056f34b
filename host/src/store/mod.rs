//! Persistence: tasks, versioned rules, and the `user_tags` results table.
//!
//! [`Store`] is the interface the rest of the host uses; [`sqlite`] is the
//! embedded default. A MySQL or PostgreSQL backend implements the same trait:
//! the one subtle method is [`Store::write_run`], which must read the current
//! tags and write the run's changes in one transaction that excludes other
//! writers (SQLite: `BEGIN IMMEDIATE`; MySQL/PostgreSQL: `SELECT ... FOR
//! UPDATE` on the rows touched), so concurrent runs never lose each other's tags.

pub mod pipeline;
pub mod sqlite;

use crate::model::{TaskRecord, TaskStatus};
use std::collections::{BTreeMap, HashMap};

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("store error: {0}")]
    Database(String),
    /// A stored value could not be decoded.
    #[error("corrupt store data: {0}")]
    Corrupt(String),
    /// The store URL is not one this server supports.
    #[error("unsupported store URL \"{0}\" (expected sqlite://PATH)")]
    UnsupportedUrl(String),
}

/// One stored version of a tag's rule.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuleVersion {
    /// The tag.
    pub tag_id: u32,
    /// 1 for the seeded default, +1 per replacement.
    pub version: i64,
    /// Rule-language JSON.
    pub rule: String,
    /// When it was saved.
    pub created_at: String,
}

/// A user's tag ids, ascending; inline up to four (a run holds one per user).
pub type TagIds = smallvec::SmallVec<[u32; 4]>;

/// Receives a run's changes row by row, inside the run's write transaction,
/// so a run never holds all of its changes in memory. Rows written get the
/// run's timestamp as `updated_time` (and as `created_time` when new).
pub trait ChangeSink {
    /// A new row (`tag_ids` ascending, never empty; `details` is `tag_details`).
    fn insert(&mut self, user_id: &str, tag_ids: &[u32], details: &str) -> Result<(), StoreError>;
    /// An existing row whose `tag_ids` changed; `details_patch` is a JSON
    /// merge patch (RFC 7396) for `tag_details`: members of tags gained,
    /// `null` for tags lost, so entries of kept tags stay as they are.
    fn update(
        &mut self,
        user_id: &str,
        tag_ids: &[u32],
        details_patch: &str,
    ) -> Result<(), StoreError>;
    /// A row left without tags.
    fn delete(&mut self, user_id: &str) -> Result<(), StoreError>;
}

/// A row of `user_tags`, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserTagRow {
    /// The user.
    pub user_id: String,
    /// Tag ids, ascending, no duplicates, never empty.
    pub tag_ids: Vec<u32>,
    /// `tag_details` JSON text.
    pub details: String,
    /// Kept from the existing row, or now for a new one.
    pub created_time: String,
    /// Now if `tag_ids` changed, else kept.
    pub updated_time: String,
}

/// What the engine remembers per tag between runs (for incremental mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagState {
    /// The tag.
    pub tag_id: u32,
    /// Rule version of the last successful run.
    pub rule_version: i64,
    /// Per source table, the greatest `updated_time` (µs) the last
    /// successful run saw (tables keep their own clocks).
    pub watermarks: BTreeMap<String, i64>,
    /// Whether any successful run evaluated the whole universe.
    pub had_full_run: bool,
}

/// What a run's write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WriteSummary {
    /// Rows inserted or updated.
    pub rows_upserted: usize,
    /// Rows deleted.
    pub rows_deleted: usize,
    /// Time spent committing (making the writes durable), in milliseconds.
    pub commit_ms: u64,
}

/// A run's side of its write transaction.
pub trait RunWriter {
    /// Called once per `user_tags` row, before [`RunWriter::changes`], with
    /// the user's current tag ids. Only ids are read: a run never needs the
    /// other columns of rows it does not change.
    fn current(&mut self, user_id: &str, tag_ids: TagIds);
    /// Sends the run's changes to `sink` and returns the per-tag states to
    /// record. Returning `Err` rolls everything back.
    fn changes(&mut self, sink: &mut dyn ChangeSink) -> Result<Vec<TagState>, StoreError>;
}

/// Persistence used by the server and the one-shot runner.
pub trait Store: Send + Sync {
    /// Checks the store answers.
    fn ping(&self) -> Result<(), StoreError>;

    /// Records an accepted task (with its idempotency key and request hash).
    fn insert_task(
        &self,
        task: &TaskRecord,
        idempotency: Option<(&str, &str)>,
    ) -> Result<(), StoreError>;
    /// The task id and request hash recorded under an idempotency key.
    fn find_idempotent(&self, key: &str) -> Result<Option<(String, String)>, StoreError>;
    /// Sets a task's status, timestamps, result and error.
    fn update_task(&self, task: &TaskRecord) -> Result<(), StoreError>;
    /// One task.
    fn get_task(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError>;
    /// Tasks newest first, optionally of one status, paged; with the total count.
    fn list_tasks(
        &self,
        status: Option<TaskStatus>,
        limit: usize,
        offset: usize,
    ) -> Result<(Vec<TaskRecord>, usize), StoreError>;
    /// Tasks not yet terminal, oldest first (re-queued at start-up).
    fn unfinished_tasks(&self) -> Result<Vec<TaskRecord>, StoreError>;
    /// Number of tasks per status.
    fn task_counts(&self) -> Result<BTreeMap<String, u64>, StoreError>;

    /// The current rule of a tag.
    fn current_rule(&self, tag_id: u32) -> Result<Option<RuleVersion>, StoreError>;
    /// Every version of a tag's rule, oldest first.
    fn rule_history(&self, tag_id: u32) -> Result<Vec<RuleVersion>, StoreError>;
    /// Saves a new version of a tag's rule.
    fn save_rule(&self, tag_id: u32, rule: &str) -> Result<RuleVersion, StoreError>;
    /// Saves `rule` as version 1 unless the tag already has a rule.
    fn seed_rule(&self, tag_id: u32, rule: &str) -> Result<RuleVersion, StoreError>;

    /// Per-tag state of the last successful runs.
    fn tag_states(&self) -> Result<HashMap<u32, TagState>, StoreError>;
    /// Reads every user's current tag ids and applies `build`'s changes, with
    /// `now` as their timestamp, in one transaction.
    fn write_run(&self, now: &str, run: &mut dyn RunWriter) -> Result<WriteSummary, StoreError>;
    /// One user's row.
    fn user_tags(&self, user_id: &str) -> Result<Option<UserTagRow>, StoreError>;
    /// Users holding a tag, ascending, after `cursor`.
    fn users_with_tag(
        &self,
        tag_id: u32,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Vec<String>, StoreError>;
}

/// Opens the store named by a URL (`sqlite://PATH`).
pub fn open(url: &str) -> Result<Box<dyn Store>, StoreError> {
    match url.strip_prefix("sqlite://") {
        Some(path) if !path.is_empty() => Ok(Box::new(sqlite::SqliteStore::open(
            std::path::Path::new(path),
        )?)),
        _ => Err(StoreError::UnsupportedUrl(url.to_string())),
    }
}

/// Appends tag ids the way `user_tags.tag_ids` stores them (`[1,2,5]`) to
/// `out`.
pub fn push_tag_ids(out: &mut String, ids: &[u32]) {
    use std::fmt::Write;
    out.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Writing to a String cannot fail.
        let _ = write!(out, "{id}");
    }
    out.push(']');
}

/// Parses `user_tags.tag_ids` (`[1,2,5]`; any JSON spacing).
pub fn parse_tag_ids<C: FromIterator<u32>>(text: &str) -> Result<C, StoreError> {
    let corrupt =
        || StoreError::Corrupt(format!("tag_ids {text:?} is not a JSON array of tag ids"));
    let inner = text
        .trim()
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(corrupt)?;
    if inner.trim().is_empty() {
        return Ok(C::from_iter(None));
    }
    inner
        .split(',')
        .map(|n| n.trim().parse::<u32>().map_err(|_| corrupt()))
        .collect()
}
