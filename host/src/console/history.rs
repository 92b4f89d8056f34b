//! Members of each tag run by run, from the runs' reports, and the charts
//! drawn from them (plotters' SVG backend).

use crate::model::TaskRecord;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
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

/// How a chart is framed: its size, the space around the plot, whether
/// the y axis starts just below the lowest value (`zoom`, so a sparkline
/// shows small moves) and whether the axes carry their values.
struct Frame {
    size: (u32, u32),
    margin: u32,
    zoom: bool,
    axes: bool,
}

/// Room for the y axis's values (left) and the runs' numbers (below).
const AXIS_LEFT: u32 = 64;
const AXIS_BELOW: u32 = 22;

/// An SVG chart of `lines` over the runs. With `frame.axes`, the y axis
/// has about five round values with grid lines, and the x axis numbers
/// the runs (1 = the oldest shown).
fn chart(frame: Frame, lines: &[Line<'_>]) -> String {
    let runs = lines.iter().map(|(v, _)| v.len()).max().unwrap_or(0);
    let values = || lines.iter().flat_map(|(v, _)| v.iter().copied());
    let top = values().max().unwrap_or(0);
    let bottom = if frame.zoom {
        values().min().unwrap_or(0)
    } else {
        0
    };
    let pad = ((top - bottom) / 10).max(1);
    // With axes, the y axis ends on its highest round value.
    let ys = if frame.axes {
        ticks(top + pad)
    } else {
        Vec::new()
    };
    let (low, high) = match ys.last() {
        Some(&last) => (bottom.min(0), last),
        None => (bottom - pad, top + pad),
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, frame.size).into_drawing_area();
        let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
            let (left, below) = match frame.axes {
                true => (AXIS_LEFT, AXIS_BELOW),
                false => (frame.margin, frame.margin),
            };
            let mut chart = ChartBuilder::on(&root)
                .margin(frame.margin)
                .margin_left(left)
                .margin_bottom(below)
                .build_cartesian_2d(0..runs.max(2) - 1, low..high)?;
            if frame.axes {
                draw_axes(&root, &chart, runs, ys)?;
            }
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

type Root<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type Plot<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordusize, plotters::coord::types::RangedCoordi64>,
>;

/// The y axis's values (with a grid line each) and the runs' numbers.
fn draw_axes<'b>(
    root: &Root<'b>,
    chart: &Plot<'_, 'b>,
    runs: usize,
    ys: Vec<i64>,
) -> Result<(), Box<dyn std::error::Error + 'b>> {
    let grey = RGBColor(156, 163, 175);
    let label = ("sans-serif", 14).into_font().color(&RGBColor(75, 85, 99));
    let last = runs.max(2) - 1;
    for y in ys {
        let (x0, py) = chart.backend_coord(&(0, y));
        let (x1, _) = chart.backend_coord(&(last, y));
        root.draw(&PathElement::new(vec![(x0, py), (x1, py)], grey.mix(0.4)))?;
        let style = label.clone().pos(Pos::new(HPos::Right, VPos::Center));
        root.draw(&Text::new(count_text(y), (x0 - 6, py), style))?;
    }
    let (_, base) = chart.backend_coord(&(0, 0i64.max(chart.y_range().start)));
    let step = runs.div_ceil(12).max(1);
    for run in (0..runs).step_by(step) {
        let (px, _) = chart.backend_coord(&(run, 0));
        let style = label.clone().pos(Pos::new(HPos::Center, VPos::Top));
        root.draw(&Text::new((run + 1).to_string(), (px, base + 6), style))?;
    }
    Ok(())
}

/// Round values from 0 up to at least `top`: 0, s, 2s, … with s 1, 2 or 5
/// times a power of ten, about five of them.
pub fn ticks(top: i64) -> Vec<i64> {
    let top = top.max(1);
    let rough = (top as f64 / 5.0).max(1.0);
    let power = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|s| *s >= rough)
        .unwrap_or(10.0 * power) as i64;
    let step = step.max(1);
    (0..)
        .map(|k| k * step)
        .take_while(|v| *v < top + step)
        .collect()
}

/// A count for an axis: 950, 12k, 1.5M.
pub fn count_text(n: i64) -> String {
    let a = n.unsigned_abs() as f64;
    let sign = if n < 0 { "-" } else { "" };
    match a {
        a if a >= 1e6 => format!("{sign}{}M", trim(a / 1e6)),
        a if a >= 1e4 => format!("{sign}{}k", trim(a / 1e3)),
        _ => n.to_string(),
    }
}

fn trim(x: f64) -> String {
    let text = format!("{x:.1}");
    text.strip_suffix(".0").unwrap_or(&text).to_string()
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
    let frame = Frame {
        size: (140, 32),
        margin: 4,
        zoom: true,
        axes: false,
    };
    chart(frame, &[(&members, MEMBERS)])
}

/// Members, added and removed per run, for a tag's page.
pub fn members_chart(points: &[RunPoint]) -> String {
    let members: Vec<i64> = points.iter().map(|p| p.members).collect();
    let added: Vec<i64> = points.iter().map(|p| p.added).collect();
    let removed: Vec<i64> = points.iter().map(|p| p.removed).collect();
    let frame = Frame {
        size: (640, 260),
        margin: 12,
        zoom: false,
        axes: true,
    };
    chart(
        frame,
        &[(&members, MEMBERS), (&added, ADDED), (&removed, REMOVED)],
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
        // Three series and a grid line per value of the y axis (0, 5, 10, 15).
        assert_eq!(svg.matches("<polyline").count(), 3 + 4, "{svg}");
        for value in ["0", "5", "10", "15"] {
            assert!(
                svg.contains(&format!(">\n{value}\n</text>")),
                "{value}: {svg}"
            );
        }
        // The runs are numbered along the x axis.
        assert!(svg.contains(">\n3\n</text>"), "{svg}");
        let spark = sparkline(&points[..1]);
        assert!(
            spark.contains("<circle") && !spark.contains("<text"),
            "{spark}"
        );
    }

    #[test]
    fn axis_values_are_round_and_short() {
        assert_eq!(ticks(0), vec![0, 1]);
        assert_eq!(ticks(13), vec![0, 5, 10, 15]);
        assert_eq!(
            ticks(1_000_000),
            vec![0, 200_000, 400_000, 600_000, 800_000, 1_000_000]
        );
        assert_eq!(
            ticks(7_300_000),
            vec![0, 2_000_000, 4_000_000, 6_000_000, 8_000_000]
        );
        assert_eq!(count_text(950), "950");
        assert_eq!(count_text(12_000), "12k");
        assert_eq!(count_text(1_500_000), "1.5M");
        assert_eq!(count_text(2_000_000), "2M");
    }
}
