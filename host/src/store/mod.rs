//! Persistence: tasks, versioned rules, and the `user_tags` results table.
//!
//! [`Store`] is the interface the rest of the host uses: the union of one
//! trait per concern, [`TaskStore`] (the task queue), [`RuleStore`] (rules
//! and tag owners), [`ResultStore`] (run state, a run's write, reads of
//! results) and [`SessionStore`] (the console's sign-ins). [`sqlite`] is
//! the embedded default; [`postgres`] and [`mysql`]
//! serve deployments of several processes. The SQL the backends share is
//! written once in [`sql`]; each backend keeps its schema, its driver glue
//! and the bulk paths and locks of a run's write.
//! The one subtle part is a run's write, [`RunTx`]: one transaction that
//! reads the current tags of the users in scope, applies the run's changes in
//! batches and commits with the tag states and the task's outcome, excluding
//! other writers of those rows meanwhile (SQLite: `BEGIN IMMEDIATE`;
//! MySQL/PostgreSQL: `SELECT ... FOR UPDATE`), so concurrent runs never lose
//! each other's tags. The store never calls into the engine: the engine
//! pulls current rows and pushes changes.
//!
//! Whatever the physical layout, `SELECT user_id, tag_ids, tag_details,
//! created_time, updated_time FROM user_tags` returns the columns of
//! `tags.md` on every backend; on MySQL it may be the old system's table,
//! adopted with its own column types ([`mysql`]).

pub mod mysql;
pub mod postgres;
pub mod sql;
pub mod sqlite;

use crate::model::{TaskRecord, TaskStatus};
use std::collections::{BTreeMap, HashMap};

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("store error: {0}")]
    Database(String),
    /// The database could not be reached (connection refused or lost,
    /// authentication refused): worth retrying.
    #[error("{0}")]
    Unreachable(String),
    /// A stored value could not be decoded.
    #[error("corrupt store data: {0}")]
    Corrupt(String),
    /// The store URL is not one this server supports.
    #[error(
        "unsupported store URL \"{0}\" (expected sqlite://PATH, postgres://USER@HOST/DATABASE or mysql://USER@HOST/DATABASE)"
    )]
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
    /// The API token name that saved it (none for the plugin's default).
    pub changed_by: Option<String>,
}

/// One tag as a user holds it: the tag, and the grant that gave it to the
/// user (which run, so which `tag_details` entry: name, category, hit time,
/// rule version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Held {
    /// The tag.
    pub tag_id: u32,
    /// The store's id of the grant, or [`Held::NEW`].
    pub grant: u32,
}

impl Held {
    /// The grant of the run being written: the store creates the grant
    /// (with the run's time and the tag's rule version) when first used.
    pub const NEW: u32 = 0;
}

/// A user's held tags, ascending by tag id; inline up to four.
pub type HeldTags = smallvec::SmallVec<[Held; 4]>;

/// What a run does to one user's `user_tags` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A new row.
    Insert,
    /// An existing row whose tag ids changed.
    Update,
    /// A row left without tags.
    Delete,
}

/// Users with their held tags, text and tags in shared buffers (no
/// allocation per row): the current rows a run reads, and the changes it writes.
#[derive(Debug, Default, Clone)]
pub struct UserRows {
    text: String,
    held: Vec<Held>,
    /// Per row: op, then the ends of its text and of its held tags.
    rows: Vec<(Op, u32, u32)>,
    /// Counts the rows pushed, for whoever watches the buffer fill.
    pushed: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
}

impl UserRows {
    /// An empty buffer that counts the rows pushed into it in `pushed`
    /// (the engine shows how far reading the current rows has got).
    pub fn counted(pushed: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> UserRows {
        UserRows {
            pushed: Some(pushed),
            ..UserRows::default()
        }
    }

    /// Adds a row: `op` (ignored for current rows), the user and its tags.
    pub fn push(&mut self, op: Op, user_id: &str, held: &[Held]) {
        if let Some(pushed) = &self.pushed {
            pushed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.text.push_str(user_id);
        self.held.extend_from_slice(held);
        self.rows
            .push((op, self.text.len() as u32, self.held.len() as u32));
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether it holds no row.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Row `i`: its op, user and tags.
    pub fn get(&self, i: usize) -> (Op, &str, &[Held]) {
        let (op, text_end, held_end) = self.rows[i];
        let (text_start, held_start) = match i {
            0 => (0, 0),
            _ => (self.rows[i - 1].1, self.rows[i - 1].2),
        };
        (
            op,
            &self.text[text_start as usize..text_end as usize],
            &self.held[held_start as usize..held_end as usize],
        )
    }

    /// The rows in the order pushed.
    pub fn iter(&self) -> impl Iterator<Item = (Op, &str, &[Held])> {
        (0..self.rows.len()).map(|i| self.get(i))
    }
}

/// Where the current rows a run reads go, as the store reads them: a
/// [`UserRows`] buffer, or a partitioned run's spill files.
pub trait RowSink {
    /// One user's row and its held tags (`op` is ignored for current rows).
    fn push(&mut self, op: Op, user_id: &str, held: &[Held]);
}

impl RowSink for UserRows {
    fn push(&mut self, op: Op, user_id: &str, held: &[Held]) {
        UserRows::push(self, op, user_id, held);
    }
}

/// The tags of a run, as `tag_details` shows them for the users it grants them to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantInfo {
    /// The tag.
    pub tag_id: u32,
    /// `tag_name` (the tag's description, e.g. 高净值用户).
    pub tag_name: String,
    /// `tag_category`.
    pub tag_category: String,
    /// The rule version the run evaluated.
    pub rule_version: i64,
}

/// What a run's transaction needs to know up front.
#[derive(Debug, Clone)]
pub struct RunStart {
    /// The task the run belongs to.
    pub task_id: String,
    /// The run's time (`YYYY-MM-DDTHH:MM:SS`, UTC): `hit_time` of the tags
    /// it grants, `created_time`/`updated_time` of the rows it writes.
    pub now: String,
    /// Its tags.
    pub tags: Vec<GrantInfo>,
}

/// A run's write transaction. Data flows one way: the engine reads the
/// current tags of the users in scope, sends the changes in batches and
/// commits with the tag states and the task's outcome. Dropping it without
/// [`RunTx::commit`] rolls everything back.
pub trait RunTx: Send {
    /// Pushes into `out` the held tags of `users` (all users holding a tag
    /// when `None`) that have a row, ascending by user id. Other writers
    /// are excluded from the rows read until the transaction ends.
    fn current(&mut self, users: Option<&[&str]>, out: &mut dyn RowSink) -> Result<(), StoreError>;
    /// Applies a batch of changes (rows ascending by user id are fastest).
    fn apply(&mut self, changes: &UserRows) -> Result<(), StoreError>;
    /// Records the tag states and the task's outcome (its result JSON), and
    /// commits. The outcome is in the same transaction as the results, so a
    /// task interrupted after its commit is reported as done, not re-run.
    fn commit(
        self: Box<Self>,
        states: &[TagState],
        outcome: &crate::model::RunReport,
    ) -> Result<(), StoreError>;
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

/// Persistence of the task queue: tasks, their idempotency keys, claims,
/// leases, cancels and the purge of finished tasks.
pub trait TaskStore: Send + Sync {
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
    /// The newest `limit` tasks, newest first, light: a task's `user_ids`
    /// list, when it has one, comes back empty (`Some(vec![])`), so a
    /// history of many runs over 100,000 users each stays small.
    fn task_history(&self, limit: usize) -> Result<Vec<TaskRecord>, StoreError>;
    /// Tasks a worker may take, oldest first: queued ones, and running ones
    /// whose lease expired before `now` (Unix seconds; their process died).
    fn claimable_tasks(&self, now: i64) -> Result<Vec<TaskRecord>, StoreError>;
    /// Takes a claimable task for `owner` in one atomic update: it becomes
    /// `running`, its attempt is counted and it is leased until
    /// `lease_until`. `None` if it is no longer claimable (another worker,
    /// in this process or another, took it; or it finished).
    fn claim_task(
        &self,
        task_id: &str,
        owner: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<TaskRecord>, StoreError>;
    /// Extends `owner`'s leases on `task_ids` (the tasks its workers are
    /// running now) to `lease_until`; returns those of them whose
    /// cancellation was requested. A task of `owner` not listed keeps its
    /// lease until it expires (its worker ended without recording the
    /// outcome), so it can be claimed again.
    fn renew_leases(
        &self,
        owner: &str,
        task_ids: &[String],
        lease_until: i64,
    ) -> Result<Vec<String>, StoreError>;
    /// The running tasks that have a lease owner: (task id, owner).
    fn running_owners(&self) -> Result<Vec<(String, String)>, StoreError>;
    /// Queues task `task_id` again, lease and owner cleared, if it is still
    /// running under `owner` (a process known to be dead); whether it was.
    /// Its attempt stays counted: the process died while running it.
    fn requeue_orphan(&self, task_id: &str, owner: &str) -> Result<bool, StoreError>;
    /// Cancels a task that is still queued, or records a request to cancel
    /// a running one (its process sees it when it renews its lease).
    fn cancel_task(&self, task_id: &str) -> Result<CancelState, StoreError>;
    /// Number of tasks per status.
    fn task_counts(&self) -> Result<BTreeMap<String, u64>, StoreError>;
    /// Deletes finished tasks (completed, failed, cancelled) that finished
    /// before `before` (a `YYYY-MM-DDTHH:MM:SS` UTC time), and run outcomes
    /// committed before it; how many tasks went.
    fn purge_finished(&self, before: &str) -> Result<usize, StoreError>;
}

/// Persistence of versioned rules and of which plugin owns each tag.
pub trait RuleStore: Send + Sync {
    /// The current rule of a tag.
    fn current_rule(&self, tag_id: u32) -> Result<Option<RuleVersion>, StoreError>;
    /// Every version of a tag's rule, oldest first.
    fn rule_history(&self, tag_id: u32) -> Result<Vec<RuleVersion>, StoreError>;
    /// Saves a new version of a tag's rule, saved by `changed_by` (the
    /// caller's token name).
    fn save_rule(
        &self,
        tag_id: u32,
        rule: &str,
        changed_by: &str,
    ) -> Result<RuleVersion, StoreError>;
    /// Saves `rule` as version 1 unless the tag already has a rule.
    fn seed_rule(&self, tag_id: u32, rule: &str) -> Result<RuleVersion, StoreError>;

    /// Which plugin (by name) owns each tag id that has an owner.
    fn tag_owners(&self) -> Result<HashMap<u32, String>, StoreError>;
    /// Records owners for tag ids that have none (never replaces one).
    fn record_tag_owners(&self, claims: &[(u32, String)]) -> Result<(), StoreError>;
    /// Makes `plugin` the owner of `tag_id` (an explicit transfer); the
    /// previous owner, if any.
    fn set_tag_owner(&self, tag_id: u32, plugin: &str) -> Result<Option<String>, StoreError>;
}

/// Persistence of results: per-tag run state, a run's write, its outcome,
/// and reads of `user_tags`.
pub trait ResultStore: Send + Sync {
    /// Per-tag state of the last successful runs.
    fn tag_states(&self) -> Result<HashMap<u32, TagState>, StoreError>;
    /// Starts a run's write transaction.
    fn begin_run(&self, start: &RunStart) -> Result<Box<dyn RunTx + '_>, StoreError>;
    /// The outcome a task's run committed with its results, if it did.
    fn run_outcome(&self, task_id: &str) -> Result<Option<crate::model::RunReport>, StoreError>;
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

/// A saved audience: a named expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedAudience {
    /// Its name (the key).
    pub name: String,
    /// The expression as written.
    pub expr: String,
    /// The expression over tag ids, as evaluated after each run.
    pub canonical: String,
    /// What it is for.
    pub description: String,
    /// The API token name that saved it.
    pub saved_by: Option<String>,
    /// When it was saved (`YYYY-MM-DDTHH:MM:SS`, UTC).
    pub saved_at: String,
}

/// A saved audience's size after one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudienceCount {
    /// The run's task.
    pub task_id: String,
    /// When the run committed.
    pub committed_at: String,
    /// The audience's members then.
    pub members: u64,
}

/// Which runs' changes of a tag to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeFilter {
    /// The run of one task.
    Task(String),
    /// Runs committed at or after a time (`YYYY-MM-DDTHH:MM:SS`, UTC).
    Since(String),
}

/// One committed run's effect on one tag, by the users' dense indexes.
#[derive(Debug, Clone, PartialEq)]
pub struct TagChangeRow {
    /// The run's task.
    pub task_id: String,
    /// The tag.
    pub tag_id: u32,
    /// When the run committed.
    pub committed_at: String,
    /// Users who gained the tag.
    pub added: roaring::RoaringBitmap,
    /// Users who lost it.
    pub removed: roaring::RoaringBitmap,
}

/// Persistence of audiences: the dense user index, each tag's members as a
/// bitmap (maintained by every run's commit), the change feed and saved
/// audiences ([`sql::audience`]).
pub trait AudienceStore: Send + Sync {
    /// The version the last commit left (0 before any).
    fn audience_version(&self) -> Result<u64, StoreError>;
    /// How many runs this store object has committed since it was opened:
    /// in memory, no read. A reader holding a version sees its own
    /// process's commits at once by it, and reads the version counter for
    /// other processes' commits only now and then.
    fn local_commits(&self) -> u64;
    /// Every tag's members at one version, with that version.
    fn tag_bitmaps(&self) -> Result<(u64, BTreeMap<u32, roaring::RoaringBitmap>), StoreError>;
    /// The users of the indexes `uidx` (ascending), ascending by index.
    fn indexed_users(&self, uidx: &[u32]) -> Result<Vec<(u32, String)>, StoreError>;
    /// Calls `each` with the index and id of every user of `members`,
    /// ascending by index, on one connection, without holding the list
    /// (an export); `each` returns false to stop.
    fn each_member(
        &self,
        members: &roaring::RoaringBitmap,
        each: &mut dyn FnMut(u32, &str) -> bool,
    ) -> Result<(), StoreError>;
    /// A user's dense index: `None` if the user never had a row.
    fn user_index(&self, user_id: &str) -> Result<Option<u32>, StoreError>;
    /// A tag's changes per run, oldest first.
    fn tag_changes(
        &self,
        tag_id: u32,
        filter: &ChangeFilter,
    ) -> Result<Vec<TagChangeRow>, StoreError>;
    /// Per tag that a kept run changed: (tag, task id, committed at) of its
    /// last run, ascending by tag.
    fn last_runs(&self) -> Result<Vec<(u32, String, String)>, StoreError>;
    /// Saves an audience (replacing one of the same name: its counts
    /// start again); whether one was replaced.
    fn save_audience(&self, audience: &SavedAudience) -> Result<bool, StoreError>;
    /// Every saved audience, by name.
    fn audiences(&self) -> Result<Vec<SavedAudience>, StoreError>;
    /// One saved audience.
    fn audience(&self, name: &str) -> Result<Option<SavedAudience>, StoreError>;
    /// Deletes a saved audience and its counts; whether it was there.
    fn delete_audience(&self, name: &str) -> Result<bool, StoreError>;
    /// A saved audience's size after each of the last `limit` runs, oldest first.
    fn audience_counts(&self, name: &str, limit: usize) -> Result<Vec<AudienceCount>, StoreError>;
    /// Deletes the change feed of runs committed before `before`; rows gone.
    fn purge_changes(&self, before: &str) -> Result<usize, StoreError>;
}

/// A console session as the store keeps it: never the session id the
/// browser holds, only its SHA-256, so a copy of the store signs no one in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    /// SHA-256 of the session id, hex.
    pub id_digest: String,
    /// The name of the API token it was opened with.
    pub token_name: String,
    /// That token's role then (`read` or `admin`).
    pub role: String,
    /// Ties the session to the token's value (SHA-256 over the session id
    /// and the token's digest, hex): a token replaced under the same name
    /// ends the sessions opened with the old one.
    pub binding: String,
    /// When it was opened (Unix seconds).
    pub created_at: i64,
    /// When it ends (Unix seconds).
    pub expires_at: i64,
}

/// Persistence of the console's sessions, shared by every process on the
/// store (a sign-out in one ends the session in all).
pub trait SessionStore: Send + Sync {
    /// Records a new session.
    fn create_session(&self, session: &ConsoleSession) -> Result<(), StoreError>;
    /// The session whose id has digest `id_digest`, if it has not expired
    /// by `now` (Unix seconds); an expired one is deleted.
    fn find_session(&self, id_digest: &str, now: i64)
        -> Result<Option<ConsoleSession>, StoreError>;
    /// Deletes a session (a sign-out); whether it was there.
    fn delete_session(&self, id_digest: &str) -> Result<bool, StoreError>;
    /// Deletes the sessions expired by `now`; how many went.
    fn purge_sessions(&self, now: i64) -> Result<usize, StoreError>;
}

/// Persistence used by the server and the one-shot runner: every concern,
/// so one `Arc<dyn Store>` serves them all. Callers bring the concern's
/// trait into scope (or [`prelude`]) to call its methods.
pub trait Store: TaskStore + RuleStore + ResultStore + SessionStore + AudienceStore {
    /// Checks the store answers.
    fn ping(&self) -> Result<(), StoreError>;
}

/// The store traits, for callers of their methods.
pub mod prelude {
    pub use super::{AudienceStore, ResultStore, RuleStore, SessionStore, Store, TaskStore};
}

/// Opens the store named by a URL: `sqlite://PATH`,
/// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE` or
/// `mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE` (MySQL or MariaDB).
pub fn open(url: &str) -> Result<Box<dyn Store>, StoreError> {
    if let Some(path) = url.strip_prefix("sqlite://").filter(|p| !p.is_empty()) {
        return Ok(Box::new(sqlite::SqliteStore::open(std::path::Path::new(
            path,
        ))?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Box::new(postgres::PgStore::open(url)?));
    }
    if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        let url = url.replacen("mariadb://", "mysql://", 1);
        return Ok(Box::new(mysql::MyStore::open(&url)?));
    }
    Err(StoreError::UnsupportedUrl(redact(url)))
}

/// Parses `user_tags.tag_ids` (`[1,2,5]`; any JSON spacing).
pub fn parse_tag_ids<C: FromIterator<u32>>(text: &str) -> Result<C, StoreError> {
    let mut ids = Vec::new();
    parse_ids_into(text, &mut ids)?;
    Ok(ids.into_iter().collect())
}

/// Parses a JSON array of non-negative integers (`[1,2,5]`, any spacing)
/// into `out`, reusing its buffer.
pub fn parse_ids_into(text: &str, out: &mut Vec<u32>) -> Result<(), StoreError> {
    out.clear();
    let corrupt = || StoreError::Corrupt(format!("{text:?} is not a JSON array of ids"));
    let inner = text
        .trim()
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(corrupt)?;
    if inner.trim().is_empty() {
        return Ok(());
    }
    for n in inner.split(',') {
        out.push(n.trim().parse().map_err(|_| corrupt())?);
    }
    Ok(())
}

/// A user's held tags from the two stored arrays (`tag_ids` and the
/// parallel `grants`), parsed with the buffers of `scratch`.
pub fn held_tags(
    tag_ids: &str,
    grants: &str,
    scratch: &mut [Vec<u32>; 2],
) -> Result<HeldTags, StoreError> {
    let [ids, gs] = scratch;
    parse_ids_into(tag_ids, ids)?;
    parse_ids_into(grants, gs)?;
    if ids.len() != gs.len() {
        return Err(StoreError::Corrupt(format!(
            "tag_ids {tag_ids} and grants {grants} differ in length"
        )));
    }
    Ok(ids
        .iter()
        .zip(gs.iter())
        .map(|(&tag_id, &grant)| Held { tag_id, grant })
        .collect())
}

impl RunStart {
    /// The run's time in Unix seconds (how the stores keep row times).
    pub fn unix_time(&self) -> Result<i64, StoreError> {
        chrono::NaiveDateTime::parse_from_str(&self.now, "%Y-%m-%dT%H:%M:%S")
            .map(|t| t.and_utc().timestamp())
            .map_err(|e| StoreError::Corrupt(format!("run time {:?}: {e}", self.now)))
    }

    /// The `tag_details` entry of tag `tag_id` for users this run grants it to.
    pub fn grant_detail(&self, tag_id: u32) -> Result<serde_json::Value, StoreError> {
        let info = self
            .tags
            .iter()
            .find(|t| t.tag_id == tag_id)
            .ok_or_else(|| StoreError::Corrupt(format!("tag {tag_id} is not part of this run")))?;
        Ok(serde_json::json!({
            "tag_name": info.tag_name,
            "tag_category": info.tag_category,
            "hit_time": self.now,
            "rule_version": info.rule_version,
        }))
    }
}

/// A task's stored columns, as text.
pub struct TaskColumns {
    /// `task_id`.
    pub task_id: String,
    /// The spec as JSON.
    pub spec: String,
    /// `environment`.
    pub environment: String,
    /// The status name.
    pub status: String,
    /// `submitted_at`.
    pub submitted_at: String,
    /// `started_at`.
    pub started_at: Option<String>,
    /// `completed_at`.
    pub completed_at: Option<String>,
    /// The result as JSON.
    pub result: Option<String>,
    /// `error`.
    pub error: Option<String>,
    /// `attempts`.
    pub attempts: i64,
}

impl TaskColumns {
    /// Decodes the record.
    pub fn decode(self) -> Result<TaskRecord, StoreError> {
        let task_id = self.task_id;
        let spec = serde_json::from_str(&self.spec)
            .map_err(|e| StoreError::Corrupt(format!("task {task_id} spec: {e}")))?;
        let status = self.status.parse().map_err(StoreError::Corrupt)?;
        let result = self
            .result
            .map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("task {task_id} result: {e}")))?;
        Ok(TaskRecord {
            task_id,
            spec,
            environment: self.environment,
            status,
            submitted_at: self.submitted_at,
            started_at: self.started_at,
            completed_at: self.completed_at,
            result,
            error: self.error,
            attempts: self.attempts.clamp(0, u32::MAX as i64) as u32,
        })
    }
}

/// Appends a JSON array of integers (`[1,2,5]`) to `out`, after clearing it.
pub fn push_ids(out: &mut String, values: impl Iterator<Item = u32>) {
    out.clear();
    out.push('[');
    for (i, v) in values.enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_u32(out, v);
    }
    out.push(']');
}

/// Appends the decimal digits of `v` (no formatting machinery: this runs
/// twice per row written).
fn push_u32(out: &mut String, mut v: u32) {
    let mut digits = [0u8; 10];
    let mut n = digits.len();
    loop {
        n -= 1;
        digits[n] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    out.push_str(std::str::from_utf8(&digits[n..]).unwrap_or_default());
}

/// A store URL without its password, for messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}@{host}")
        }
        None => url.to_string(),
    }
}

/// `?` placeholders numbered `$1`, `$2`, ... (PostgreSQL).
pub fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// The error of a task cancelled before it started. It lives with the
/// store, which writes it when it cancels a queued task.
pub use crate::model::CANCELLED_BEFORE_START;

/// What a cancel request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelState {
    /// The task was queued and is now cancelled.
    Cancelled,
    /// The task is running; its process will stop it at a safe point.
    StopRequested,
    /// The task had already ended.
    AlreadyFinished(TaskStatus),
    /// No such task.
    NotFound,
}

/// The grants a run created, one per tag, each created in the store the
/// first time a user gains the tag (a run that grants nothing adds none).
#[derive(Debug, Default)]
pub struct RunGrants {
    created: Vec<(u32, u32)>,
}

impl RunGrants {
    /// The grant ids of `held`, into `out`: kept tags keep theirs; this
    /// run's ([`Held::NEW`]) come from `create(tag_id, detail JSON)` the
    /// first time, then from memory.
    pub fn resolve(
        &mut self,
        start: &RunStart,
        held: &[Held],
        out: &mut Vec<u32>,
        mut create: impl FnMut(u32, &str) -> Result<u32, StoreError>,
    ) -> Result<(), StoreError> {
        out.clear();
        for h in held {
            if h.grant != Held::NEW {
                out.push(h.grant);
            } else if let Some(&(_, id)) = self.created.iter().find(|(t, _)| *t == h.tag_id) {
                out.push(id);
            } else {
                let id = create(h.tag_id, &start.grant_detail(h.tag_id)?.to_string())?;
                self.created.push((h.tag_id, id));
                out.push(id);
            }
        }
        Ok(())
    }
}
