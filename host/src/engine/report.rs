//! The run report: what a task's `result` shows (the seed's `total_users`
//! and `message`, then per-tag counts, rows written, duplicates, notes and
//! stage timings).

use super::commit::Evaluated;
use super::diff::{DiffCounts, TagCounts};
use super::load::Universe;
use super::plan::Plan;
use crate::data::s3::SyncSummary;
use crate::model::Mode;
use crate::registry::PluginIdentity;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::time::Instant;
use tag_plugin_api::rule::Operator;
use tag_plugin_api::Rule;

/// How many unknown `user_ids` a report lists.
const UNKNOWN_SAMPLE: usize = 10;

/// A run's outcome, as `result` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
    /// Wall time of the run.
    pub duration_ms: u64,
    /// Per stage, milliseconds (`commit_ms` once committed).
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
}

/// One tag's line of the report.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TagReport {
    /// The tag.
    pub tag_id: u32,
    /// Its description.
    pub tag_name: String,
    /// `completed` (its results are committed) or `failed` (its results
    /// and state are as before the run).
    #[schema(value_type = String)]
    pub status: &'static str,
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
    /// `all users` or `changed users`, when it completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub scope: Option<&'static str>,
    /// The plugin build that computed it (name, version, SHA-256).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginIdentity>,
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RowGroups {
    /// Read (their statistics allow a changed row).
    pub read: usize,
    /// In all.
    pub total: usize,
}

/// Requested users that are not in the universe.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UnknownUsers {
    /// How many.
    pub count: usize,
    /// The first few, in request order.
    pub sample: Vec<String>,
}

/// Wall time per stage.
pub struct Timings {
    started: Instant,
    lap: Instant,
    laps: BTreeMap<String, u64>,
}

impl Timings {
    /// Starts the clock.
    pub fn start() -> Timings {
        let now = Instant::now();
        Timings {
            started: now,
            lap: now,
            laps: BTreeMap::new(),
        }
    }

    /// A copy, to take laps on without moving the original.
    pub fn clone_of(other: &Timings) -> Timings {
        Timings {
            started: other.started,
            lap: other.lap,
            laps: other.laps.clone(),
        }
    }

    /// Records the time since the last lap as `name`.
    pub fn lap(&mut self, name: &str) {
        self.laps
            .insert(name.to_string(), self.lap.elapsed().as_millis() as u64);
        self.lap = Instant::now();
    }
}

/// The report of a run, from its stages' outputs and the diff's counts.
pub fn report(run: &Evaluated<'_>, counts: &DiffCounts, timings: &Timings) -> RunReport {
    let Evaluated {
        plan,
        universe,
        scopes,
        ..
    } = *run;
    let mut tags: Vec<TagReport> = plan
        .tags
        .iter()
        .zip(scopes)
        .zip(&counts.tags)
        .map(|((t, scope), c)| TagReport {
            tag_id: t.id(),
            tag_name: t.tag.info.description.clone(),
            status: "completed",
            error: None,
            rule_version: Some(t.rule_version),
            counts: Some(*c),
            scope: Some(if scope.is_some() {
                "changed users"
            } else {
                "all users"
            }),
            plugin: Some(t.tag.plugin.clone()),
        })
        .collect();
    tags.extend(plan.failed.iter().map(|f| TagReport {
        tag_id: f.tag_id,
        tag_name: f.tag_name.clone(),
        status: "failed",
        error: Some(f.error.clone()),
        rule_version: f.rule_version,
        counts: None,
        scope: None,
        plugin: f.plugin.clone(),
    }));
    // A task's tag ids are ascending: its order.
    tags.sort_by_key(|t| t.tag_id);
    let failed_tags: Vec<u32> = plan.failed.iter().map(|f| f.tag_id).collect();
    let message = if failed_tags.is_empty() {
        format!("Successfully processed {} users", counts.evaluated)
    } else {
        format!(
            "Processed {} users; tags {failed_tags:?} failed",
            counts.evaluated
        )
    };
    RunReport {
        total_users: counts.evaluated,
        message,
        failed_tags,
        mode: plan.mode,
        as_of: plan.as_of.to_string(),
        universe_users: universe.rows(),
        tags,
        rows_upserted: counts.upserted,
        rows_deleted: counts.deleted,
        duplicates_dropped: universe.duplicates.clone(),
        notes: notes(plan),
        duration_ms: timings.started.elapsed().as_millis() as u64,
        timings: timings.laps.clone(),
        changed_row_groups: universe
            .row_groups
            .map(|(read, total)| RowGroups { read, total }),
        unknown_user_ids: plan
            .user_ids
            .as_ref()
            .map(|wanted| unknown(wanted, universe)),
        source_objects: None,
    }
}

fn unknown(wanted: &[String], universe: &Universe) -> UnknownUsers {
    let known: HashSet<&str> = (0..universe.rows()).map(|i| universe.ids.get(i)).collect();
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|id| !known.contains(id.as_str()))
        .collect();
    UnknownUsers {
        count: missing.len(),
        sample: missing.into_iter().take(UNKNOWN_SAMPLE).cloned().collect(),
    }
}

fn notes(plan: &Plan) -> Vec<String> {
    if plan.mode != Mode::Incremental {
        return Vec::new();
    }
    let windowed: Vec<u32> = plan
        .tags
        .iter()
        .filter(|t| uses_date_window(&t.rule))
        .map(|t| t.id())
        .collect();
    if windowed.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "tags {windowed:?} use date windows that move with as_of; an incremental run does not revoke tags that expired by date alone, a full run does"
    )]
}

/// Whether a rule has a condition relative to `as_of`.
pub fn uses_date_window(rule: &str) -> bool {
    Rule::parse(rule).is_ok_and(|r| {
        r.conditions()
            .iter()
            .any(|c| matches!(c.operator, Operator::RecentDays | Operator::DaysAgoBetween))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_windows_are_recognised() {
        assert!(uses_date_window(
            r#"{"logic":"AND","conditions":[{"field":"d","operator":"recent_days","value":7}]}"#
        ));
        assert!(!uses_date_window(
            r#"{"logic":"AND","conditions":[{"field":"x","operator":">","value":7}]}"#
        ));
    }

    #[test]
    fn a_report_serialises_the_seed_fields_and_flattens_counts() {
        let line = TagReport {
            tag_id: 2,
            tag_name: "活跃交易者".into(),
            status: "completed",
            error: None,
            rule_version: Some(1),
            counts: Some(TagCounts {
                evaluated_users: 3,
                matched: 2,
                added: 1,
                removed: 0,
            }),
            scope: Some("all users"),
            plugin: None,
        };
        let v = serde_json::to_value(&line).unwrap();
        assert_eq!(v["evaluated_users"], 3);
        assert_eq!(v["matched"], 2);
        assert_eq!(v["scope"], "all users");
        assert_eq!(v["status"], "completed");
        assert!(v.get("error").is_none());
        let failed = TagReport {
            status: "failed",
            error: Some("boom".into()),
            counts: None,
            scope: None,
            ..line
        };
        let v = serde_json::to_value(&failed).unwrap();
        assert_eq!(
            (&v["status"], &v["error"]),
            (&serde_json::json!("failed"), &serde_json::json!("boom"))
        );
        assert!(v.get("matched").is_none() && v.get("scope").is_none());
    }
}
