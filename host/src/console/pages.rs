//! The console's pages.

use super::history::{count_text, members_chart, members_per_run, sparkline, RunPoint};
use super::render::{diff_block, path_segment, pretty, rule_tree, short};
use super::task::{progress_bar, task_actions};
use super::{error_page, loaded_tag, page, read, Viewer};
use crate::http::AppState;
use crate::model::{TagStatus, TaskRecord, TaskStatus};
use crate::store::RuleVersion;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup, PreEscaped};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tag_plugin_loader::Outcome;
use tag_plugin_loader::{RegisteredTag, TagRegistry};

/// Runs the console reads: the newest this many tasks (without their
/// `user_ids` lists, see [`crate::store::TaskStore::task_history`]).
const HISTORY: usize = 500;

/// Rule versions a tag's page shows with their diffs, newest first.
const VERSIONS_SHOWN: usize = 10;

/// Builds a page off the async threads. Decoding rules, diffing their
/// versions and drawing charts is CPU work that grows with the data: on a
/// runtime thread it would hold up every other request, `/health` too, and
/// the request timeout could not answer in its place.
async fn off_runtime(
    viewer: &Viewer,
    build: impl FnOnce() -> Response + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(build).await {
        Ok(page) => page,
        // The panic goes on to the middleware that answers it with a 500.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            viewer,
            "服务正在停止 / the server is stopping; retry later",
        ),
    }
}

/// Query of the tags page.
#[derive(Debug, serde::Deserialize)]
pub struct SortQuery {
    sort: Option<String>,
}

/// `/`: every loaded tag with its owner, members now, members per run and
/// last run; sortable by id, name, category or members.
pub async fn tags(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Query(q): Query<SortQuery>,
) -> Response {
    let registry = state.tags();
    let (live, ids) = (Arc::clone(&state.live), registry.ids());
    let loaded = read(&state, &viewer, move |s| {
        let shown: Vec<u32> = ids.into_iter().take(OVERLAP_TAGS).collect();
        let overlap = live.fresh(s)?.overlap(&shown);
        Ok((s.tag_owners()?, s.task_history(HISTORY)?, (shown, overlap)))
    });
    let (owners, tasks, overlap) = match loaded.await {
        Ok(v) => v,
        Err(page) => return page,
    };
    let alert = plugins_alert(&state);
    let sort = q.sort;
    off_runtime(&viewer.clone(), move || {
        let heatmap = heatmap(&registry, &overlap);
        let listed = Listed {
            owners: &owners,
            tasks: &tasks,
            sort: sort.as_deref(),
        };
        tags_page(&viewer, &registry, listed, alert, heatmap)
    })
    .await
}

/// Tags drawn in the overlap heatmap at most.
const OVERLAP_TAGS: usize = 24;

/// The overlap heatmap of the tags shown, with their names.
fn heatmap(registry: &TagRegistry, (tags, matrix): &(Vec<u32>, Vec<Vec<u64>>)) -> Markup {
    if tags.is_empty() || matrix.iter().all(|row| row.iter().all(|&n| n == 0)) {
        return html! {};
    }
    let named: Vec<(u32, String)> = tags
        .iter()
        .map(|&id| {
            let name = registry
                .get(id)
                .map_or(String::new(), |t| t.info.description.to_string());
            (id, name)
        })
        .collect();
    html! {
        h2 { "重叠 Overlap" }
        p.meta { "格中为同时持有两个标签的用户数；颜色越深，较小标签中同时持有另一标签的比例越高 · users holding both; darker: a larger share of the smaller tag" }
        div.chart.overlap { (PreEscaped(super::audiences::overlap_heatmap(&named, matrix))) }
    }
}

/// What the tags page lists beside the registry.
struct Listed<'a> {
    owners: &'a HashMap<u32, String>,
    tasks: &'a [TaskRecord],
    sort: Option<&'a str>,
}

/// The tags page: members per run and a sparkline per tag, from `tasks`.
fn tags_page(
    viewer: &Viewer,
    registry: &TagRegistry,
    listed: Listed<'_>,
    alert: Markup,
    heatmap: Markup,
) -> Response {
    let Listed {
        owners,
        tasks,
        sort,
    } = listed;
    let series = members_per_run(tasks);
    let mut rows: Vec<_> = registry.iter().collect();
    let members = |id: u32| series.get(&id).and_then(|p| p.last()).map(|p| p.members);
    match sort {
        Some("name") => rows.sort_by(|a, b| a.info.description.cmp(&b.info.description)),
        Some("category") => rows.sort_by(|a, b| a.info.category.cmp(&b.info.category)),
        Some("members") => rows.sort_by_key(|t| std::cmp::Reverse(members(t.info.tag_id))),
        _ => {}
    }
    let body = html! {
        (alert)
        table.tags {
            thead { tr {
                th { a href="/?sort=id" { "ID" } }
                th { a href="/?sort=name" { "名称 Name" } }
                th { a href="/?sort=category" { "类别 Category" } }
                th { "插件 Plugin" } th { "归属 Owner" }
                th { a href="/?sort=members" { "用户数 Members" } }
                th { "每次运行 Per run" } th { "最近运行 Last run" }
            } }
            tbody { @for t in rows {
                @let id = t.info.tag_id;
                @let points = series.get(&id).map(Vec::as_slice).unwrap_or(&[]);
                tr {
                    td { (id) }
                    td {
                        a href={ "/tags/" (id) } { (t.info.description) }
                        @if let Some(what) = &t.info.custom_evaluate {
                            " " small.custom title=(what) { "代码判定 custom evaluate" }
                        }
                    }
                    td { (t.info.category) }
                    td { (t.plugin.name) " " small { (t.plugin.version) } }
                    td { (owners.get(&id).map(String::as_str).unwrap_or("-")) }
                    td.num { (members(id).map_or("-".to_string(), |m| m.to_string())) }
                    td.spark { @if !points.is_empty() {
                        (PreEscaped(sparkline(points)))
                        // The sparkline's scale: its lowest and highest members.
                        small.scale { " " (spark_scale(points)) }
                    } }
                    td { (last_run(tasks, id)) }
                }
            } }
        }
        (heatmap)
    };
    page("标签 Tags", viewer, body).into_response()
}

/// A sparkline's range of members, `min–max` (one value when flat).
fn spark_scale(points: &[RunPoint]) -> String {
    let low = points.iter().map(|p| p.members).min().unwrap_or(0);
    let high = points.iter().map(|p| p.members).max().unwrap_or(0);
    match low == high {
        true => count_text(low),
        false => format!("{}–{}", count_text(low), count_text(high)),
    }
}

/// Above the tags, while plugin files are rejected (or none was found):
/// how many loaded and were rejected, linking to the plugins page.
fn plugins_alert(state: &AppState) -> Markup {
    let report = state.catalog.report();
    let (loaded, rejected) = (report.loaded().count(), report.rejected().count());
    if rejected == 0 && loaded > 0 {
        return html! {};
    }
    html! {
        p.alert role="alert" {
            "插件 Plugins: " strong { (loaded) " loaded, " (rejected) " rejected" }
            @if loaded == 0 && rejected == 0 {
                " (no plugin library in " (state.catalog.dir().display()) ")"
            }
            " · " a href="/plugins" { "see the plugins page for each file and why" }
        }
    }
}

/// The newest task that ran `tag_id`: when, and how it ended.
fn last_run(tasks: &[TaskRecord], tag_id: u32) -> Markup {
    let Some(task) = tasks.iter().find(|t| t.spec.tag_ids.contains(&tag_id)) else {
        return html! { "-" };
    };
    let status = task.status.as_str();
    html! {
        span class={ "status " (status) } { (status) } " "
        small { (task.completed_at.as_deref().unwrap_or(&task.submitted_at)) }
    }
}

/// `/tags/{id}`: the rule as a tree, its history with diffs, an edit form,
/// members per run, sample members and a trigger button.
pub async fn tag(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(raw): Path<String>,
) -> Response {
    let tag = match loaded_tag(&state, &viewer, &raw) {
        Ok(tag) => tag,
        Err(page) => return *page,
    };
    let id = tag.info.tag_id;
    let loaded = read(&state, &viewer, move |s| {
        Ok((
            s.rule_history(id)?,
            s.task_history(HISTORY)?,
            s.users_with_tag(id, 20, None)?,
        ))
    });
    let (history, tasks, members) = match loaded.await {
        Ok(v) => v,
        Err(page) => return page,
    };
    off_runtime(&viewer.clone(), move || {
        tag_page(&viewer, &tag, &history, &tasks, &members)
    })
    .await
}

/// The tag page from what the store gave.
fn tag_page(
    viewer: &Viewer,
    tag: &RegisteredTag,
    history: &[RuleVersion],
    tasks: &[TaskRecord],
    members: &[String],
) -> Response {
    let id = tag.info.tag_id;
    let current: Option<Value> = history.last().map(|r| parsed(&r.rule));
    let series = members_per_run(tasks);
    let points = series.get(&id).map(Vec::as_slice).unwrap_or(&[]);
    let body = html! {
        p.meta { (tag.info.category) " · " (tag.plugin.name) " " (tag.plugin.version) " · ID " (id) }
        @if viewer.admin {
            button.action data-method="POST" data-path="/api/v1/tags/trigger"
                data-body={ "{\"tag_ids\": [" (id) "]}" } data-then="/tasks" { "运行 Run this tag" }
            span.result {}
        }
        h2 { "规则 Rule" }
        @if let Some(what) = &tag.info.custom_evaluate {
            p.custom-evaluate {
                strong { "代码另有判定 Custom evaluate: " } (what)
                br;
                small { "此标签的代码不只按下面的规则树判定。 The tag's code decides more than the tree below shows." }
            }
        }
        @if let Some(current) = &current { div.rule { (rule_tree(current)) } }
        @if viewer.admin { (rule_form(id, current.as_ref())) }
        h2 { "用户数 Members per run" }
        p { a href={ "/tags/" (id) "/changes" } { "每次运行的变化 Who gained and lost it in each run →" } }
        (members_section(points))
        h2 { "用户示例 Sample members" }
        ul.members { @for user in members {
            li { a href={ "/users/" (path_segment(user)) } { (user) } }
        } }
        h2 { "规则历史 Rule history" }
        (rule_history(history))
    };
    page(&tag.info.description, viewer, body).into_response()
}

/// A stored rule's JSON (validated when saved; `null` if it no longer reads).
fn parsed(rule: &str) -> Value {
    serde_json::from_str(rule).unwrap_or(Value::Null)
}

/// The newest [`VERSIONS_SHOWN`] versions, newest first, each with its diff
/// from the one before (the first version in full); older ones by number,
/// date and author only.
fn rule_history(history: &[RuleVersion]) -> Markup {
    let from = history.len().saturating_sub(VERSIONS_SHOWN);
    // The shown versions pretty-printed, and the one before them (the base
    // of the oldest shown diff).
    let base = from.saturating_sub(1);
    let texts: Vec<String> = history[base..]
        .iter()
        .map(|r| pretty(&parsed(&r.rule)))
        .collect();
    let text = |i: usize| texts[i - base].as_str();
    html! {
        @for i in (from..history.len()).rev() {
            @let version = &history[i];
            details.version open[i + 1 == history.len()] {
                summary { (version_line(version)) }
                @if i > 0 { (diff_block(text(i - 1), text(i))) }
                @else { pre { (text(i)) } }
            }
        }
        @if from > 0 {
            p.older { (from) " 个更早的版本 older versions (每个版本的规则见 / every version's rule at "
                code { "GET /api/v1/tags/" (history[0].tag_id) "/rule" } ")" }
            ul.older { @for version in history[..from].iter().rev() { li { (version_line(version)) } } }
        }
    }
}

fn version_line(version: &RuleVersion) -> Markup {
    html! {
        "v" (version.version) " · " (version.created_at) " · "
        (version.changed_by.as_deref().unwrap_or("plugin default"))
    }
}

fn rule_form(id: u32, current: Option<&Value>) -> Markup {
    html! {
        form.rule-edit data-method="PUT" data-path={ "/api/v1/tags/" (id) "/rule" } data-then="reload" {
            textarea name="rule" rows="10" spellcheck="false" { (current.map(pretty).unwrap_or_default()) }
            button type="submit" { "保存 Save rule" }
            p.result {}
        }
    }
}

fn members_section(points: &[RunPoint]) -> Markup {
    if points.is_empty() {
        return html! { p.empty { "还没有运行 / no run yet" } };
    }
    html! {
        div.chart data-points=(points.len()) { (PreEscaped(members_chart(points))) }
        p.legend {
            span.members { "■ 用户数 members" } " " span.added { "■ 新增 added" } " "
            span.removed { "■ 移除 removed" }
        }
        table.runs {
            thead { tr { th { "运行 Run" } th { "时间 At" } th { "用户数 Members" } th { "命中 Matched" }
                th { "新增 Added" } th { "移除 Removed" } } }
            tbody { @for p in points.iter().rev().take(10) {
                tr { td { code { (short(&p.task_id)) } } td { (p.at) } td.num { (p.members) }
                    td.num { (p.matched) } td.num { (p.added) } td.num { (p.removed) } }
            } }
        }
    }
}

/// Query of the tasks page.
#[derive(Debug, serde::Deserialize)]
pub struct StatusQuery {
    status: Option<String>,
}

/// `/tasks`: newest first, with live progress, outcomes and actions.
pub async fn tasks(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Query(q): Query<StatusQuery>,
) -> Response {
    let status = q
        .status
        .as_deref()
        .and_then(|s| s.parse::<TaskStatus>().ok());
    let tasks = match read(&state, &viewer, move |s| s.list_tasks(status, 100, 0)).await {
        Ok((tasks, _)) => tasks,
        Err(page) => return page,
    };
    let filters = ["submitted", "running", "completed", "failed", "cancelled"];
    let body = html! {
        p.filters {
            a href="/tasks" { "全部 all" }
            @for f in filters { " · " a href={ "/tasks?status=" (f) } { (f) } }
        }
        table.tasks {
            thead { tr { th { "任务 Task" } th { "标签 Tags" } th { "状态 Status" } th { "提交 Submitted" }
                th { "进度 Progress" } th { "结果 Outcome" } th {} } }
            tbody { @for task in &tasks { (task_row(&state, &viewer, task)) } }
        }
    };
    page("任务 Tasks", &viewer, body).into_response()
}

fn task_row(state: &AppState, viewer: &Viewer, task: &TaskRecord) -> Markup {
    let status = task.status.as_str();
    let progress = state.scheduler.progress(&task.task_id);
    let done = task.status == TaskStatus::Completed;
    let percent = progress
        .as_ref()
        .map_or(if done { 100.0 } else { 0.0 }, |p| p.percent);
    let stage = progress.as_ref().map_or(String::new(), |p| p.stage.clone());
    html! {
        tr data-task=(task.task_id) data-status=(status) {
            td { a href={ "/tasks/" (path_segment(&task.task_id)) } { code title=(task.task_id) { (short(&task.task_id)) } } }
            td { (crate::tasks::lifecycle::list(&task.spec.tag_ids)) }
            td { span class={ "status " (status) } { (status) } }
            td { small { (task.submitted_at) } }
            td.progress { (progress_bar(percent, &stage)) }
            td.outcome { (outcome(task)) }
            td { (task_actions(viewer, task)) }
        }
    }
}

/// Per tag: ✓ with its counts, or ✗ with why; the task's error.
fn outcome(task: &TaskRecord) -> Markup {
    let lines = task.result.as_ref().map_or(&[][..], |r| r.tags.as_slice());
    html! {
        @for line in lines {
            @let ok = line.status == TagStatus::Completed;
            span class=(if ok { "tag-ok" } else { "tag-failed" })
                title=(line.error.as_deref().unwrap_or("")) {
                (line.tag_id) (if ok { " ✓" } else { " ✗" })
                @if let Some(c) = line.counts { small { " +" (c.added) " −" (c.removed) } }
            }
            " "
        }
        @if let Some(error) = &task.error { p.error { (error) } }
    }
}

/// `/plugins`: every file of the last scan, and a reload button.
pub async fn plugins(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
) -> Response {
    let report = state.catalog.report();
    let body = html! {
        p.meta { (state.catalog.dir().display()) " · " (report.loaded().count()) " loaded · "
            (report.rejected().count()) " rejected" }
        @if viewer.admin {
            button.action #reload data-method="POST" data-path="/api/v1/plugins/reload" data-then="reload" {
                "重新加载 Reload plugins" }
            span.result {}
        }
        table.plugins {
            thead { tr { th { "文件 File" } th { "状态 Status" } th { "插件 Plugin" } th { "SHA-256" }
                th { "标签 Tags / 原因 Reason" } th { "检查 Checked" } } }
            tbody { @for file in &report.files {
                tr {
                    td { (file.path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()) }
                    @match &file.outcome {
                        Outcome::Loaded(p) => {
                            td { span.status.completed { "loaded" } }
                            td { (p.name) " " small { (p.version) } }
                            td { code title=(file.sha256) { (short(&file.sha256)) } }
                            td { @for t in &p.tags { (t.tag_id) " " (t.description.to_string()) "; " } }
                        }
                        Outcome::Rejected(reason) => {
                            td { span.status.failed { "rejected" } }
                            td { "-" }
                            td { code title=(file.sha256) { (short(&file.sha256)) } }
                            td.error { (reason.to_string()) }
                        }
                    }
                    td { small { (file.loaded_at) } }
                }
            } }
        }
    };
    page("插件 Plugins", &viewer, body).into_response()
}

/// Query of `/users`.
#[derive(Debug, serde::Deserialize)]
pub struct FindQuery {
    id: Option<String>,
}

/// `/users?id=`: the user's page.
pub async fn find_user(Query(q): Query<FindQuery>) -> Response {
    let id = q.id.unwrap_or_default();
    Redirect::to(&format!("/users/{}", path_segment(&id))).into_response()
}

/// `/users/{id}`: the user's tags, each with its details.
pub async fn user(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(user_id): Path<String>,
) -> Response {
    let id = user_id.clone();
    let found = read(&state, &viewer, move |s| {
        Ok((s.user_tags(&id)?, s.user_index(&id)?))
    });
    let (row, known) = match found.await {
        Ok(found) => found,
        Err(page) => return page,
    };
    let Some(row) = row else {
        // The dense index outlives a user's last tag: it tells a user who
        // held tags once from one no run ever tagged.
        let message = match known {
            Some(_) => "该用户曾有标签，现在没有 / this user held tags once and holds none now",
            None => "未知用户：没有运行给过它标签 / unknown user: no run has ever tagged this id",
        };
        return error_page(StatusCode::NOT_FOUND, &viewer, message);
    };
    let details: BTreeMap<String, Value> = serde_json::from_str(&row.details).unwrap_or_default();
    let body = html! {
        p.meta { "首次 first tagged " (row.created_time) " · 更新 updated " (row.updated_time) }
        table.user-tags {
            thead { tr { th { "ID" } th { "名称 Name" } th { "类别 Category" } th { "获得 Gained" } th { "规则版本 Rule" } } }
            tbody { @for id in &row.tag_ids {
                @let d = details.get(&id.to_string()).cloned().unwrap_or(Value::Null);
                tr {
                    td { a href={ "/tags/" (id) } { (id) } }
                    td { (d["tag_name"].as_str().unwrap_or("")) }
                    td { (d["tag_category"].as_str().unwrap_or("")) }
                    td { (d["hit_time"].as_str().unwrap_or("")) }
                    td { (d["rule_version"]) }
                }
            } }
        }
    };
    page(&format!("用户 {}", row.user_id), &viewer, body).into_response()
}

/// `/trigger`: tags (with names), mode, users, `as_of`, priority.
pub async fn trigger(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
) -> Response {
    if !viewer.admin {
        return error_page(
            StatusCode::FORBIDDEN,
            &viewer,
            "需要管理员令牌 / an admin token is needed",
        );
    }
    let registry = state.tags();
    let body = html! {
        form #trigger.trigger data-method="POST" data-path="/api/v1/tags/trigger" data-then="/tasks" {
            fieldset { legend { "标签 Tags" }
                @for t in registry.iter() {
                    label.tag { input type="checkbox" name="tag_ids" value=(t.info.tag_id);
                        " " (t.info.tag_id) " " (t.info.description) }
                }
            }
            label { "模式 Mode " select name="mode" { option value="full" { "full" } option value="incremental" { "incremental" } } }
            label { "优先级 Priority " select name="priority" {
                option value="normal" { "normal" } option value="high" { "high" } option value="low" { "low" } } }
            label { "参考日期 as_of " input type="date" name="as_of"; }
            label.users { "用户 user_ids (空 = 全部 / empty = all)"
                textarea name="user_ids" rows="4" placeholder="user_000001, user_000002" {} }
            button type="submit" { "提交 Trigger" }
            p.result {}
        }
    };
    page("触发 Trigger", &viewer, body).into_response()
}

/// `/signin`: the token form.
pub async fn signin(viewer: Option<Extension<Viewer>>) -> Response {
    let viewer = viewer.map(|v| v.0).unwrap_or(Viewer {
        admin: false,
        signed_in: false,
        name: String::new(),
    });
    let body = html! {
        form #signin.signin {
            label { "API 令牌 token " input type="password" name="token" autocomplete="current-password"; }
            button type="submit" { "登录 Sign in" }
            p.result {}
        }
    };
    page("登录 Sign in", &viewer, body).into_response()
}
