//! Members of each tag run by run, from the runs' reports, and the charts
//! drawn from them (plotters' SVG backend).

use crate::model::TaskRecord;
use plotters::prelude::*;
use std::collections::BTreeMap;

/// One run's figures for one tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPoint {
    /// The task.
    pub task_id: String,
    /// When it finished (UTC).
    pub at: String,
    /// Users holding the tag after the run.
    pub members: i64,
    /// Users the run found matching (of those it evaluated).
    pub matched: i64,
    /// Users who gained the tag.
    pub added: i64,
    /// Users who lost it.
    pub removed: i64,
}

/// Per tag, its runs oldest first. `tasks` may come in any order. A run
/// over all users gives the members exactly (its `matched`); a run over
/// some users moves them by its `added` and `removed`. A tag's series
/// starts at its first run over all users (earlier levels are unknown).
pub fn members_per_run(tasks: &[TaskRecord]) -> BTreeMap<u32, Vec<RunPoint>> {
    let mut ordered: Vec<&TaskRecord> = tasks.iter().filter(|t| t.result.is_some()).collect();
    ordered.sort_by(|a, b| (&a.completed_at, &a.task_id).cmp(&(&b.completed_at, &b.task_id)));
    let mut series: BTreeMap<u32, Vec<RunPoint>> = BTreeMap::new();
    for task in ordered {
        let Some(result) = &task.result else { continue };
        for line in &result.tags {
            let Some(counts) = line.counts else { continue };
            let (matched, added, removed) = (
                counts.matched as i64,
                counts.added as i64,
                counts.removed as i64,
            );
            let points = series.entry(line.tag_id).or_default();
            let members = match (
                line.members_after(task.spec.user_ids.is_none()),
                points.last(),
            ) {
                (Some(members), _) => members as i64,
                (None, Some(last)) => last.members + added - removed,
                (None, None) => continue,
            };
            points.push(RunPoint {
                task_id: task.task_id.clone(),
                at: task.completed_at.clone().unwrap_or_default(),
                members,
                matched,
                added,
                removed,
            });
        }
    }
    series.retain(|_, points| !points.is_empty());
    series
}

/// The lines of a chart: values per run, and a colour.
type Line<'a> = (&'a [i64], RGBColor);

/// An SVG chart of `lines` over the runs (no text: labels are the page's).
/// The y axis starts at 0, or (`zoom`) just below the lowest value, so a
/// sparkline shows small moves.
fn chart(size: (u32, u32), lines: &[Line<'_>], margin: u32, zoom: bool) -> String {
    let runs = lines.iter().map(|(v, _)| v.len()).max().unwrap_or(0);
    let values = || lines.iter().flat_map(|(v, _)| v.iter().copied());
    let top = values().max().unwrap_or(0);
    let bottom = if zoom { values().min().unwrap_or(0) } else { 0 };
    let pad = ((top - bottom) / 10).max(1);
    let (low, high) = (bottom - pad, top + pad);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
            let mut chart = ChartBuilder::on(&root)
                .margin(margin)
                .build_cartesian_2d(0..runs.max(2) - 1, low..high)?;
            for (values, colour) in lines {
                let points = values.iter().enumerate().map(|(i, v)| (i, *v));
                chart.draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?;
                chart.draw_series(points.map(|p| Circle::new(p, 3, colour.filled())))?;
            }
            root.present()?;
            Ok(())
        })();
        if let Err(e) = drawn {
            tracing::warn!(error = %e, "chart not drawn");
        }
    }
    svg
}

/// Colours of members, added and removed.
pub const MEMBERS: RGBColor = RGBColor(37, 99, 235);
/// Added.
pub const ADDED: RGBColor = RGBColor(22, 163, 74);
/// Removed.
pub const REMOVED: RGBColor = RGBColor(220, 38, 38);

/// A small line of members per run, for the tags table.
pub fn sparkline(points: &[RunPoint]) -> String {
    let members: Vec<i64> = points.iter().map(|p| p.members).collect();
    chart((140, 32), &[(&members, MEMBERS)], 4, true)
}

/// Members, added and removed per run, for a tag's page.
pub fn members_chart(points: &[RunPoint]) -> String {
    let members: Vec<i64> = points.iter().map(|p| p.members).collect();
    let added: Vec<i64> = points.iter().map(|p| p.added).collect();
    let removed: Vec<i64> = points.iter().map(|p| p.removed).collect();
    chart(
        (640, 240),
        &[(&members, MEMBERS), (&added, ADDED), (&removed, REMOVED)],
        12,
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Mode, Priority, TaskSpec, TaskStatus};
    use serde_json::{json, Value};

    fn task(id: &str, at: &str, user_ids: Option<Vec<String>>, tags: Value) -> TaskRecord {
        TaskRecord {
            task_id: id.into(),
            spec: TaskSpec {
                tag_ids: vec![1],
                user_ids,
                mode: Mode::Full,
                priority: Priority::Normal,
                as_of: None,
                retry_of: None,
            },
            environment: "local".into(),
            status: TaskStatus::Completed,
            submitted_at: at.into(),
            started_at: None,
            completed_at: Some(at.into()),
            result: Some(serde_json::from_value(json!({ "tags": tags })).unwrap()),
            error: None,
            attempts: 1,
        }
    }

    fn line(tag: u32, scope: &str, matched: i64, added: i64, removed: i64) -> Value {
        json!({"tag_id": tag, "scope": scope, "evaluated_users": matched, "matched": matched, "added": added, "removed": removed, "status": "completed"})
    }

    #[test]
    fn full_runs_set_the_level_and_partial_runs_move_it() {
        let tasks = vec![
            // Newest first, as listed; a partial run before any full one is skipped.
            task(
                "d",
                "2026-01-04T00:00:00",
                Some(vec!["u1".into()]),
                json!([line(1, "all users", 1, 0, 1)]),
            ),
            task(
                "c",
                "2026-01-03T00:00:00",
                None,
                json!([
                    line(1, "changed users", 5, 4, 2),
                    line(2, "all users", 9, 9, 0)
                ]),
            ),
            task(
                "b",
                "2026-01-02T00:00:00",
                None,
                json!([line(1, "all users", 100, 100, 0), {"tag_id": 2, "status": "failed"}]),
            ),
            task(
                "a",
                "2026-01-01T00:00:00",
                Some(vec!["u9".into()]),
                json!([line(1, "all users", 3, 3, 0)]),
            ),
        ];
        let series = members_per_run(&tasks);
        let members: Vec<i64> = series[&1].iter().map(|p| p.members).collect();
        assert_eq!(members, vec![100, 102, 101]);
        assert_eq!(series[&1][1].task_id, "c");
        assert_eq!(series[&2].len(), 1);
        assert_eq!(series[&2][0].members, 9);
    }

    #[test]
    fn charts_are_svg_with_a_line_per_series() {
        let points: Vec<RunPoint> = (0..3)
            .map(|i| RunPoint {
                task_id: i.to_string(),
                at: String::new(),
                members: 10 + i,
                matched: 10 + i,
                added: i,
                removed: 0,
            })
            .collect();
        let svg = members_chart(&points);
        assert!(svg.starts_with("<svg"), "{svg}");
        assert_eq!(svg.matches("<polyline").count(), 3, "{svg}");
        assert!(sparkline(&points[..1]).contains("<circle"));
    }
}
