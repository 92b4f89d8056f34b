//! The report stage: a run's [`RunReport`] from its stages' outputs and
//! the diff's counts (the types are the task model's).

use super::commit::Evaluated;
use super::diff::DiffCounts;
use super::load::Universe;
use super::plan::Plan;
use crate::model::report::{RowGroups, TagReport, TagScope, TagStatus, UnknownUsers};
use crate::model::{Mode, RunReport};
use std::collections::{BTreeMap, HashSet};
use std::time::Instant;
use tag_plugin_api::rule::Operator;
use tag_plugin_api::Rule;

/// How many unknown `user_ids` a report lists.
const UNKNOWN_SAMPLE: usize = 10;

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
            status: TagStatus::Completed,
            error: None,
            rule_version: Some(t.rule_version),
            counts: Some(*c),
            scope: Some(if scope.is_some() {
                TagScope::ChangedUsers
            } else {
                TagScope::AllUsers
            }),
            plugin: Some(t.tag.plugin.clone()),
        })
        .collect();
    tags.extend(plan.failed.iter().map(|f| TagReport {
        tag_id: f.tag_id,
        tag_name: f.tag_name.clone(),
        status: TagStatus::Failed,
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
}
