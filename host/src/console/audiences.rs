//! The audience pages: an expression box whose count and members follow
//! the typing (tag names offered as you type), saving and exporting; the
//! saved audiences with their size per run; a tag's change feed; and the
//! tags' overlap heatmap for the tags page.

use super::history::{count_text, members_chart, sparkline, RunPoint};
use super::render::{path_segment, short};
use super::{error_page, loaded_tag, page, read, Viewer};
use crate::audience::expr;
use crate::http::AppState;
use crate::store::{AudienceCount, ChangeFilter, SavedAudience, TagChangeRow};
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, PreEscaped};
use std::fmt::Write;
use std::sync::Arc;
use tag_plugin_loader::TagRegistry;

/// Runs of counts shown per saved audience.
const COUNTS_SHOWN: usize = 100;
/// Members listed on an audience's page.
const MEMBERS_SHOWN: usize = 50;

/// A saved audience as the pages show it: its size now and per run.
struct Shown {
    saved: SavedAudience,
    count: u64,
    counts: Vec<AudienceCount>,
}

/// The counts per run as chart points (added and removed: the moves from
/// one run to the next).
fn points(counts: &[AudienceCount]) -> Vec<RunPoint> {
    let mut last = 0i64;
    counts
        .iter()
        .map(|c| {
            let members = c.members as i64;
            let moved = members - std::mem::replace(&mut last, members);
            RunPoint {
                task_id: c.task_id.clone(),
                at: c.committed_at.clone(),
                members,
                matched: members,
                added: moved.max(0),
                removed: (-moved).max(0),
            }
        })
        .collect()
}

/// Loads the saved audiences (or the one named) with their counts.
async fn load(
    state: &AppState,
    viewer: &Viewer,
    only: Option<String>,
) -> Result<Vec<Shown>, Response> {
    let live = Arc::clone(&state.live);
    read(state, viewer, move |s| {
        let snapshot = live.fresh(s)?;
        let saved = match only {
            Some(name) => s.audience(&name)?.into_iter().collect(),
            None => s.audiences()?,
        };
        let mut shown = Vec::new();
        for saved in saved {
            let parsed = expr::parse_ids(&saved.canonical);
            let count = parsed.map_or(0, |e| e.count(snapshot.as_ref()));
            let counts = s.audience_counts(&saved.name, COUNTS_SHOWN)?;
            shown.push(Shown {
                saved,
                count,
                counts,
            });
        }
        Ok(shown)
    })
    .await
}

/// The names an expression may use, for the suggestions as you type.
fn tag_names(registry: &TagRegistry) -> Markup {
    html! {
        datalist #tag-names { @for t in registry.iter() {
            option value=(t.info.task_class) label=(t.info.description) {}
            option value=(t.info.description) label=(t.info.task_class) {}
        } }
    }
}

/// Export links of an audience (`query`: the API path before `format=`).
fn export_links(query: &str) -> Markup {
    html! {
        span.exports {
            @for f in ["csv", "parquet", "jsonl"] {
                a.export data-format=(f) href={ (query) "format=" (f) } { (f) } " "
            }
        }
    }
}

/// `/audiences`: the expression box and the saved audiences.
pub async fn audiences(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
) -> Response {
    let shown = match load(&state, &viewer, None).await {
        Ok(shown) => shown,
        Err(page) => return page,
    };
    let registry = state.tags();
    let body = html! {
        (tag_names(&registry))
        form #audience autocomplete="off" {
            label for="expr" { "表达式 Expression " small { "(5 AND 2) AND NOT 3 · 标签ID或名称 ids or names" } }
            input #expr name="expr" list="" spellcheck="false" placeholder="VIP客户 AND NOT LowRiskUserTask";
            ul #suggest {}
        }
        p.answer {
            "用户数 Members: " strong #count { "-" } " "
            span #export-links hidden { (export_links("/api/v1/audiences/query?expr=&")) }
        }
        p #expr-error .result {}
        ul #audience-members .members {}
        @if viewer.admin {
            form #save-audience {
                input name="name" required placeholder="名称 name" aria-label="name";
                input name="description" placeholder="描述 description" aria-label="description";
                button type="submit" { "保存 Save" }
                span.result {}
            }
        }
        h2 { "已保存 Saved audiences" }
        (saved_table(&viewer, &shown))
    };
    page("受众 Audiences", &viewer, body).into_response()
}

fn saved_table(viewer: &Viewer, shown: &[Shown]) -> Markup {
    if shown.is_empty() {
        return html! { p.empty { "还没有保存的受众 / none saved yet" } };
    }
    html! {
        table.audiences {
            thead { tr {
                th { "名称 Name" } th { "表达式 Expression" } th { "用户数 Members" }
                th { "每次运行 Per run" } th { "保存 Saved" } th { "导出 Export" }
                @if viewer.admin { th {} }
            } }
            tbody { @for a in shown {
                @let name = &a.saved.name;
                tr {
                    td { a href={ "/audiences/" (path_segment(name)) } { (name) } }
                    td { code { (a.saved.expr) } }
                    td.num { (a.count) }
                    td.spark { @if !a.counts.is_empty() { (PreEscaped(sparkline(&points(&a.counts)))) } }
                    td { (a.saved.saved_by.as_deref().unwrap_or("-")) " " small { (a.saved.saved_at) } }
                    td { (export_links(&format!("/api/v1/audiences/{}/members?", path_segment(name)))) }
                    @if viewer.admin { td {
                        button.action data-method="DELETE" data-path={ "/api/v1/audiences/" (path_segment(name)) }
                            data-then="reload" { "删除 Delete" }
                        span.result {}
                    } }
                }
            } }
        }
    }
}

/// `/audiences/{name}`: one saved audience's size per run and members.
pub async fn audience(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
) -> Response {
    let shown = match load(&state, &viewer, Some(name.clone())).await {
        Ok(shown) => shown,
        Err(page) => return page,
    };
    let Some(a) = shown.into_iter().next() else {
        return error_page(
            StatusCode::NOT_FOUND,
            &viewer,
            "没有这个受众 / no such audience",
        );
    };
    let points = points(&a.counts);
    let body = html! {
        p.meta { code { (a.saved.expr) } " · " (a.saved.description) }
        p { "用户数 Members: " strong #count { (a.count) } " · "
            (export_links(&format!("/api/v1/audiences/{}/members?", path_segment(&name)))) }
        h2 { "每次运行后的用户数 Members after each run" }
        @if points.is_empty() { p.empty { "保存后还没有运行 / no run since it was saved" } }
        @else {
            div.chart { (PreEscaped(members_chart(&points))) }
            table.runs {
                thead { tr { th { "运行 Run" } th { "时间 At" } th { "用户数 Members" } } }
                tbody { @for p in points.iter().rev().take(20) {
                    tr { td { a href={ "/tasks/" (p.task_id) } { code { (short(&p.task_id)) } } }
                        td { (p.at) } td.num { (p.members) } }
                } }
            }
        }
        h2 { "用户 Members" }
        ul #audience-members .members data-audience=(name) data-limit=(MEMBERS_SHOWN) {}
    };
    page(&format!("受众 {name}"), &viewer, body).into_response()
}

/// `/tags/{id}/changes`: who gained and who lost the tag in each kept run.
pub async fn changes(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(raw): Path<String>,
) -> Response {
    let tag = match loaded_tag(&state, &viewer, &raw) {
        Ok(tag) => tag,
        Err(page) => return *page,
    };
    let id = tag.info.tag_id;
    let since = ChangeFilter::Since("0000-01-01T00:00:00".into());
    let runs = match read(&state, &viewer, move |s| s.tag_changes(id, &since)).await {
        Ok(runs) => runs,
        Err(page) => return page,
    };
    let body = changes_table(id, &runs);
    page(
        &format!("{} · 变化 Changes", tag.info.description),
        &viewer,
        body,
    )
    .into_response()
}

fn changes_table(id: u32, runs: &[TagChangeRow]) -> Markup {
    html! {
        p.meta { a href={ "/tags/" (id) } { "← 标签 tag " (id) } }
        @if runs.is_empty() { p.empty { "没有保留的运行 / no run kept" } }
        @else {
            table.changes {
                thead { tr { th { "运行 Run" } th { "提交 Committed" } th { "新增 Added" } th { "移除 Removed" } th { "导出 Export" } } }
                tbody { @for r in runs.iter().rev() {
                    tr {
                        td { a href={ "/tasks/" (r.task_id) } { code { (short(&r.task_id)) } } }
                        td { (r.committed_at) }
                        td.num.added { (r.added.len()) }
                        td.num.removed { (r.removed.len()) }
                        td { (export_links(&format!("/api/v1/tags/{id}/changes?task_id={}&", r.task_id))) }
                    }
                } }
            }
        }
    }
}

/// The overlap of `tags` as an SVG heatmap: cell (i, j) darker the larger
/// the share of the smaller tag that also holds the other, with |A ∩ B|
/// written in it (presentation attributes only: the page allows no
/// inline style).
pub fn overlap_heatmap(tags: &[(u32, String)], matrix: &[Vec<u64>]) -> String {
    const CELL: usize = 46;
    const LEFT: usize = 150;
    const TOP: usize = 24;
    let n = tags.len();
    let (w, h) = (LEFT + CELL * n + 4, TOP + CELL * n + 4);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"11\">"
    );
    for (i, (id, name)) in tags.iter().enumerate() {
        let y = TOP + i * CELL + CELL / 2 + 4;
        let label = html! { (id) " " (name) }.into_string();
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{y}\" text-anchor=\"end\">{label}</text>",
            LEFT - 6
        );
        let x = LEFT + i * CELL + CELL / 2;
        let _ = write!(
            svg,
            "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{id}</text>",
            TOP - 8
        );
    }
    for i in 0..n {
        for j in 0..n {
            let both = matrix[i][j];
            let smaller = matrix[i][i].min(matrix[j][j]).max(1);
            let share = both as f64 / smaller as f64;
            let shade = (235.0 - 190.0 * share).round() as u8;
            let (x, y) = (LEFT + j * CELL, TOP + i * CELL);
            let ink = if share > 0.55 { "#ffffff" } else { "#1f2937" };
            let _ = write!(
                svg,
                "<rect x=\"{x}\" y=\"{y}\" width=\"{}\" height=\"{}\" fill=\"rgb({shade},{},{})\"><title>{} ∩ {}: {both}</title></rect>\
                 <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"{ink}\">{}</text>",
                CELL - 2,
                CELL - 2,
                shade.saturating_add(10),
                255,
                tags[i].0,
                tags[j].0,
                x + CELL / 2 - 1,
                y + CELL / 2 + 3,
                count_text(both as i64)
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heatmap_has_a_cell_per_pair_with_its_count_and_escapes_names() {
        let tags = vec![(1, "高净值用户".to_string()), (2, "<b>".to_string())];
        let svg = overlap_heatmap(&tags, &[vec![10, 4], vec![4, 6]]);
        assert_eq!(svg.matches("<rect").count(), 4);
        assert!(svg.contains("<title>1 ∩ 2: 4</title>"));
        assert!(svg.contains("&lt;b&gt;") && !svg.contains("<b>"));
    }

    #[test]
    fn counts_per_run_become_points_with_their_moves() {
        let c = |m: u64| AudienceCount {
            task_id: "t".into(),
            committed_at: "x".into(),
            members: m,
        };
        let p = points(&[c(10), c(7), c(12)]);
        let moves: Vec<(i64, i64, i64)> =
            p.iter().map(|p| (p.members, p.added, p.removed)).collect();
        assert_eq!(moves, vec![(10, 10, 0), (7, 0, 3), (12, 5, 0)]);
    }
}
