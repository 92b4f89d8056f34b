//! The run report: what a task's `result` holds, typed from the engine that
//! builds it to the store that keeps it and the API, console and metrics
//! that read it (the seed's `total_users` and `message`, then per-tag
//! counts, rows written, duplicates, notes and stage timings).
//!
//! Every field has a default, so an outcome stored by an earlier version
//! (fewer fields) still loads.

use super::Mode;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A run's outcome, as `result` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct RunReport {
    /// Users evaluated for at least one tag (the seed's field).
    pub total_users: usize,
    /// `Successfully processed N users` (the seed's field).
    pub message: String,
    /// Full or incremental.
    pub mode: Mode,
    /// The rules' reference date.
    pub as_of: String,
    /// Users in the universe the run loaded.
    pub universe_users: usize,
    /// Per tag, in the task's order.
    pub tags: Vec<TagReport>,
    /// The tags that failed (the task is then `failed`; the others'
    /// results are committed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_tags: Vec<u32>,
    /// `user_tags` rows inserted or updated.
    pub rows_upserted: usize,
    /// `user_tags` rows deleted.
    pub rows_deleted: usize,
    /// Per table, rows left out because the user has a newer row.
    pub duplicates_dropped: BTreeMap<String, usize>,
    /// Things the reader should know (e.g. date windows in incremental runs).
    pub notes: Vec<String>,
    /// Wall time of the run up to its commit.
    pub duration_ms: u64,
    /// Per stage before the commit, milliseconds (`fetch_ms`, `read_ms`,
    /// `evaluate_ms`, `write_ms`). The commit's own time is not here: the
    /// report is committed with the results, so it cannot know it.
    pub timings: BTreeMap<String, u64>,
    /// An incremental run's reads: row groups read to find changed rows,
    /// of all row groups of the tables it reads (parquet statistics skip
    /// the rest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed_row_groups: Option<RowGroups>,
    /// Requested `user_ids` not in the universe (count and a sample).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_user_ids: Option<UnknownUsers>,
    /// For tables in S3: objects fetched into the local mirror, and those
    /// already there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_objects: Option<SyncSummary>,
    /// The run's memory: its estimate, the limit, and the partitions and
    /// spill files that kept it within the limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryReport>,
    /// Where the tags were evaluated, when not in tag-server's own process
    /// (`--executor spark`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executor: Option<ExecutorReport>,
}

/// The executor a run was computed by, other than tag-server itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct ExecutorReport {
    /// `spark`.
    pub name: String,
    /// Spark's id of the application (`local-...`, `app-...`,
    /// `application_...`), when the driver gave it.
    pub application_id: Option<String>,
    /// The master it was submitted to.
    pub master: String,
    /// `client` or `cluster`.
    pub deploy_mode: String,
    /// Part files of the staged output, committed one after another.
    pub staged_parts: usize,
}

/// How a run kept within the memory limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemoryReport {
    /// The working set the run was estimated to need, from the parquet
    /// footers, before reading (bytes).
    pub estimate_bytes: u64,
    /// The memory limit (`--memory-limit`, bytes).
    pub limit_bytes: u64,
    /// Partitions by user id the run was computed in (1: not partitioned).
    pub partitions: usize,
    /// Bytes of spill files written (source rows and current tags).
    pub spill_bytes: u64,
}

/// How a tag fared in a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TagStatus {
    /// Its results are committed.
    #[default]
    Completed,
    /// Its results and state are as before the run.
    Failed,
}

/// Which users a tag's run evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum TagScope {
    /// Every user in the universe.
    #[serde(rename = "all users")]
    AllUsers,
    /// The users whose source rows changed since the tag's last run.
    #[serde(rename = "changed users")]
    ChangedUsers,
    /// The users the task named (`user_ids`).
    #[serde(rename = "requested users")]
    RequestedUsers,
    /// Of the users the task named, those whose source rows changed since
    /// the tag's last run (an incremental run with `user_ids`).
    #[serde(rename = "changed requested users")]
    ChangedRequestedUsers,
}

impl TagScope {
    /// The scope of a tag's run: over the task's `user_ids` (`requested`)
    /// or every user, and only the changed ones (`changed`) or all of them.
    pub fn of(requested: bool, changed: bool) -> TagScope {
        match (requested, changed) {
            (false, false) => TagScope::AllUsers,
            (false, true) => TagScope::ChangedUsers,
            (true, false) => TagScope::RequestedUsers,
            (true, true) => TagScope::ChangedRequestedUsers,
        }
    }
}

/// One tag's line of the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct TagReport {
    /// The tag.
    pub tag_id: u32,
    /// Its description.
    pub tag_name: String,
    /// `completed` or `failed`.
    pub status: TagStatus,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The rule version evaluated (or to be).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_version: Option<i64>,
    /// Its counts, when it completed.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = CompletedCounts)]
    pub counts: Option<TagCounts>,
    /// Which users it evaluated, when it completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<TagScope>,
    /// The plugin build that computed it (name, version, SHA-256).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginIdentity>,
}

/// Per-tag figures of a run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TagCounts {
    /// Users evaluated for the tag.
    pub evaluated_users: usize,
    /// Of those, users who match.
    pub matched: usize,
    /// Users who gained the tag.
    pub added: usize,
    /// Users who lost it.
    pub removed: usize,
}

/// How the document describes [`TagReport::counts`]: flattened into the
/// tag's line, and absent when the tag failed.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // a description only
pub struct CompletedCounts {
    /// Users evaluated for the tag.
    evaluated_users: Option<usize>,
    /// Of those, users who match.
    matched: Option<usize>,
    /// Users who gained the tag.
    added: Option<usize>,
    /// Users who lost it.
    removed: Option<usize>,
}

/// Row groups an incremental run read to find what changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RowGroups {
    /// Read (their statistics allow a changed row).
    pub read: usize,
    /// In all.
    pub total: usize,
}

/// Requested users that are not in the universe.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UnknownUsers {
    /// How many.
    pub count: usize,
    /// The first few, in request order.
    pub sample: Vec<String>,
}

/// What a sync of an S3 mirror did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SyncSummary {
    /// Objects fetched (new or changed).
    pub fetched: usize,
    /// Bytes fetched.
    pub bytes: u64,
    /// Objects already in the mirror.
    pub cached: usize,
    /// Mirrored files removed because their object is gone.
    pub removed: usize,
}

pub use tag_plugin_loader::PluginIdentity;

/// The note a report recovered after a restart carries.
pub const RECOVERED_NOTE: &str =
    "recovered after a restart: this outcome was committed with the results before the server stopped";

impl RunReport {
    /// The lines of the tags that failed.
    pub fn failed(&self) -> impl Iterator<Item = &TagReport> {
        self.tags.iter().filter(|t| t.status == TagStatus::Failed)
    }

    /// For a run some of whose tags failed (the others committed): the
    /// task's error, naming each failed tag and why.
    pub fn failed_tags_error(&self) -> Option<String> {
        let failed: Vec<String> = self
            .failed()
            .map(|t| format!("tag {}: {}", t.tag_id, t.error.as_deref().unwrap_or("?")))
            .collect();
        if failed.is_empty() {
            return None;
        }
        let ids: Vec<u32> = self.failed().map(|t| t.tag_id).collect();
        Some(format!(
            "tags {} failed (the other tags' results are committed): {}",
            super::id_list(&ids),
            failed.join("; ")
        ))
    }

    /// The tags a retry runs: the failed ones, or `all` when none failed
    /// here (the run failed as a whole, before any tag's line was made).
    pub fn tags_to_retry(&self, all: &[u32]) -> Vec<u32> {
        match self.failed_tags.as_slice() {
            [] => all.to_vec(),
            failed => failed.to_vec(),
        }
    }

    /// The stored outcome of a run whose process stopped after the commit,
    /// marked as recovered.
    pub fn recovered(mut self) -> RunReport {
        self.notes.push(RECOVERED_NOTE.into());
        self
    }

    /// The JSON text the stores keep (the one encoding of a report).
    pub fn encode(&self) -> String {
        // A report holds strings, numbers, maps with string keys and
        // enums: serialising it cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A report from its stored JSON text.
    pub fn decode(text: &str) -> Result<RunReport, serde_json::Error> {
        serde_json::from_str(text)
    }
}

impl TagReport {
    /// Users holding the tag after a run over all users (its `matched`).
    pub fn members_after(&self, run_over_all: bool) -> Option<usize> {
        (run_over_all && self.scope == Some(TagScope::AllUsers)).then_some(self.counts?.matched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(tag_id: u32, status: TagStatus) -> TagReport {
        TagReport {
            tag_id,
            tag_name: format!("tag {tag_id}"),
            status,
            error: (status == TagStatus::Failed).then(|| "boom".to_string()),
            rule_version: Some(1),
            counts: (status == TagStatus::Completed).then_some(TagCounts {
                evaluated_users: 3,
                matched: 2,
                added: 1,
                removed: 0,
            }),
            scope: (status == TagStatus::Completed).then_some(TagScope::AllUsers),
            plugin: None,
        }
    }

    #[test]
    fn a_line_serialises_flat_with_its_status_and_scope() {
        let v = serde_json::to_value(line(2, TagStatus::Completed)).unwrap();
        assert_eq!(
            (
                &v["evaluated_users"],
                &v["matched"],
                &v["scope"],
                &v["status"]
            ),
            (
                &serde_json::json!(3),
                &serde_json::json!(2),
                &serde_json::json!("all users"),
                &serde_json::json!("completed")
            )
        );
        assert!(v.get("error").is_none());
        let v = serde_json::to_value(line(2, TagStatus::Failed)).unwrap();
        assert_eq!(
            (&v["status"], &v["error"]),
            (&serde_json::json!("failed"), &serde_json::json!("boom"))
        );
        assert!(v.get("matched").is_none() && v.get("scope").is_none());
    }

    #[test]
    fn a_report_round_trips_through_its_stored_text() {
        let report = RunReport {
            total_users: 3,
            message: "Processed 3 users; tags [5] failed".into(),
            tags: vec![line(1, TagStatus::Completed), line(5, TagStatus::Failed)],
            failed_tags: vec![5],
            timings: [("read_ms".to_string(), 7)].into(),
            ..RunReport::default()
        };
        assert_eq!(RunReport::decode(&report.encode()).unwrap(), report);
        assert_eq!(report.tags_to_retry(&[1, 5]), vec![5]);
        assert_eq!(
            report.failed_tags_error().as_deref(),
            Some("tags [5] failed (the other tags' results are committed): tag 5: boom")
        );
    }

    /// The outcome of a run as the version before the typed report wrote
    /// it (v0.4: no `universe_users`, `plugin`, `changed_row_groups`; a
    /// line's counts flat), and an even older minimal one.
    #[test]
    fn outcomes_written_by_earlier_versions_still_load() {
        let old = r#"{"total_users":2,"message":"Successfully processed 2 users","mode":"full",
            "as_of":"2026-11-01","tags":[{"tag_id":1,"tag_name":"高净值用户","status":"completed",
            "rule_version":1,"evaluated_users":2,"matched":1,"added":1,"removed":0,"scope":"all users"}],
            "rows_upserted":1,"rows_deleted":0,"duplicates_dropped":{},"notes":[],"duration_ms":12,
            "timings":{"read_ms":3,"commit_ms":2}}"#;
        let report = RunReport::decode(old).unwrap();
        assert_eq!(report.universe_users, 0);
        let tag = &report.tags[0];
        assert_eq!(
            (tag.scope, tag.counts.unwrap().matched),
            (Some(TagScope::AllUsers), 1)
        );
        assert_eq!(tag.members_after(true), Some(1));
        assert!(report.failed_tags_error().is_none());
        let minimal = RunReport::decode(r#"{"total_users":5,"message":"ok"}"#).unwrap();
        assert_eq!((minimal.total_users, minimal.tags.len()), (5, 0));
        assert_eq!(minimal.tags_to_retry(&[3]), vec![3]);
    }
}
