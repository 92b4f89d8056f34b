//! The report stage: a run's [`RunReport`] from its stages' outputs and
//! the diff's counts (the types are the task model's).

use super::{DiffCounts, Evaluated, Failures, Loaded, Plan, TagRun};
use crate::model::report::{MemoryReport, RowGroups, TagReport, TagScope, TagStatus, UnknownUsers};
use crate::model::{Mode, RunReport, SyncSummary};
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

    /// Records the time since the last lap as `name`.
    pub fn lap(&mut self, name: &str) {
        self.laps
            .insert(name.to_string(), self.lap.elapsed().as_millis() as u64);
        self.lap = Instant::now();
    }
}

/// What a run computed, as its report gives it: the plan, the tags that
/// evaluated (each with whether it was scoped to changed rows) and the
/// users loaded.
pub struct Computed<'a> {
    /// The plan (its `tags` include those that failed to evaluate).
    pub plan: &'a Plan,
    /// The tags that evaluated, in the plan's order, and their scoping.
    pub tags: Vec<(&'a TagRun, bool)>,
    /// The users loaded, over all partitions.
    pub loaded: Loaded,
    /// The memory estimate, the limit and the partitions.
    pub memory: MemoryReport,
}

impl<'a> Computed<'a> {
    /// The figures of an un-partitioned run.
    pub fn of(run: &Evaluated<'a>, memory: MemoryReport) -> Computed<'a> {
        Computed {
            plan: run.plan,
            tags: run
                .tags
                .iter()
                .map(|t| (t.run, t.scope.is_some()))
                .collect(),
            loaded: Loaded::of(run.plan, run.universe),
            memory,
        }
    }
}

/// The report of a run, from what it computed, the tags that failed, the
/// diff's counts and what an S3 mirror fetched.
pub fn report(
    run: &Computed<'_>,
    failures: &Failures,
    counts: &DiffCounts,
    timings: &Timings,
    fetched: Option<SyncSummary>,
) -> RunReport {
    let plan = run.plan;
    let failed_tags: Vec<u32> = failures.tags().iter().map(|f| f.tag_id).collect();
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
        universe_users: run.loaded.users,
        tags: tag_reports(run, failures, counts),
        rows_upserted: counts.upserted,
        rows_deleted: counts.deleted,
        duplicates_dropped: run.loaded.duplicates.clone(),
        notes: notes(run),
        duration_ms: timings.started.elapsed().as_millis() as u64,
        timings: timings.laps.clone(),
        changed_row_groups: run
            .loaded
            .row_groups
            .map(|(read, total)| RowGroups { read, total }),
        unknown_user_ids: plan
            .user_ids
            .as_ref()
            .map(|wanted| unknown(wanted, run.loaded.found.as_ref())),
        source_objects: fetched,
        memory: Some(run.memory),
        executor: None,
    }
}

/// One report per tag of the task, completed or failed, by tag id.
fn tag_reports(run: &Computed<'_>, failures: &Failures, counts: &DiffCounts) -> Vec<TagReport> {
    let completed = run
        .tags
        .iter()
        .zip(&counts.tags)
        .map(|((t, scoped), c)| TagReport {
            tag_id: t.id(),
            tag_name: t.tag.info.description.clone(),
            status: TagStatus::Completed,
            error: None,
            rule_version: Some(t.rule_version),
            counts: Some(*c),
            scope: Some(TagScope::of(run.plan.user_ids.is_some(), *scoped)),
            plugin: Some(t.tag.plugin.clone()),
        });
    let failed = failures.tags().iter().map(|f| TagReport {
        tag_id: f.tag_id,
        tag_name: f.tag_name.clone(),
        status: TagStatus::Failed,
        error: Some(f.error.clone()),
        rule_version: f.rule_version,
        counts: None,
        scope: None,
        plugin: f.plugin.clone(),
    });
    let mut tags: Vec<TagReport> = completed.chain(failed).collect();
    // A task's tag ids are ascending: its order.
    tags.sort_by_key(|t| t.tag_id);
    tags
}

fn unknown(wanted: &[String], found: Option<&HashSet<String>>) -> UnknownUsers {
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|id| found.is_none_or(|f| !f.contains(id.as_str())))
        .collect();
    UnknownUsers {
        count: missing.len(),
        sample: missing.into_iter().take(UNKNOWN_SAMPLE).cloned().collect(),
    }
}

/// What a reader of an incremental run's report must know: the tags that
/// ran with date windows were not revoked by date alone.
fn notes(run: &Computed<'_>) -> Vec<String> {
    if run.plan.mode != Mode::Incremental {
        return Vec::new();
    }
    let windowed: Vec<u32> = run
        .tags
        .iter()
        .map(|(t, _)| *t)
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
    use crate::engine::bitset::Bitset;
    use crate::engine::load::tests::{cash_tag, loaded};
    use crate::engine::testkit::tag_at_least;
    use crate::engine::{TagFailure, TagResult};
    use crate::model::TagCounts;

    #[test]
    fn the_report_lists_completed_and_failed_tags_by_id_with_the_runs_figures() {
        let tags = [tag_at_least(2, "user_basic_info", "score", 2.0), cash_tag()];
        let (_dir, plan, universe) = loaded(&tags, Some(&["u1", "u3", "gone"]));
        // Tag 2 evaluated over u1 only; tag 1 failed.
        let run = Evaluated {
            plan: &plan,
            universe: &universe,
            tags: vec![TagResult {
                run: &plan.tags[0],
                scope: Some(Bitset::from_fn(2, |i| i == 0)),
                matched: Bitset::full(2),
            }],
        };
        let mut failures = Failures::default();
        let failure = TagFailure::of(&plan.tags[1], "the plugin panicked".into());
        failures.add(vec![failure], 1).unwrap();
        let one = TagCounts {
            evaluated_users: 1,
            matched: 1,
            added: 1,
            removed: 0,
        };
        let counts = DiffCounts {
            evaluated: 1,
            tags: vec![one],
            upserted: 1,
            deleted: 0,
        };
        let fetched = Some(SyncSummary::default());
        let computed = Computed::of(&run, MemoryReport::default());
        let report = report(&computed, &failures, &counts, &Timings::start(), fetched);
        assert_eq!(report.message, "Processed 1 users; tags [1] failed");
        assert_eq!(
            (report.failed_tags.clone(), report.universe_users),
            (vec![1], 2)
        );
        let ids: Vec<(u32, TagStatus)> = report.tags.iter().map(|t| (t.tag_id, t.status)).collect();
        assert_eq!(ids, vec![(1, TagStatus::Failed), (2, TagStatus::Completed)]);
        assert_eq!(report.tags[0].error.as_deref(), Some("the plugin panicked"));
        assert_eq!(report.tags[1].scope, Some(TagScope::ChangedRequestedUsers));
        assert_eq!(report.tags[1].counts, Some(one));
        let unknown = report.unknown_user_ids.expect("a user_ids run");
        assert_eq!(
            (unknown.count, unknown.sample),
            (1, vec!["gone".to_string()])
        );
        assert_eq!(report.source_objects, fetched);
        assert!(report.notes.is_empty());
    }

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
