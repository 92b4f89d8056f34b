//! A task's own page (`/tasks/{task_id}`): what it was asked to do, how it
//! went tag by tag, and its whole report.

use super::render::{path_segment, short};
use super::{error_page, page, read, Viewer};
use crate::http::AppState;
use crate::model::{RunReport, TagScope, TagStatus, TaskRecord, TaskStatus};
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use tag_plugin_loader::TagRegistry;

/// `/tasks/{task_id}`: the task's spec, timing, per-tag outcome and report.
pub async fn task(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(task_id): Path<String>,
) -> Response {
    let id = task_id.clone();
    let found = match read(&state, &viewer, move |s| s.get_task(&id)).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    let Some(task) = found else {
        return error_page(
            StatusCode::NOT_FOUND,
            &viewer,
            &format!("没有这个任务 / no task {task_id}"),
        );
    };
    let progress = state.scheduler.progress(&task.task_id);
    let registry = state.tags();
    let body = html! {
        (summary(&task, progress.as_ref()))
        p.actions { (task_actions(&viewer, &task)) }
        @if let Some(error) = &task.error { p.error { (error) } }
        @if let Some(report) = &task.result {
            h2 { "各标签结果 Per tag" }
            (tag_table(report, &registry))
            h2 { "报告 Report" }
            (report_figures(report))
            details.report {
                summary { "JSON" }
                pre { (serde_json::to_string_pretty(report).unwrap_or_default()) }
            }
        }
    };
    page(
        &format!("任务 Task {}", short(&task.task_id)),
        &viewer,
        body,
    )
    .into_response()
}

/// The users the task covers: every user, or how many it named.
fn users_text(task: &TaskRecord) -> String {
    match &task.spec.user_ids {
        None => "全部 all users".into(),
        Some(ids) => format!("{} 个指定用户 requested users", ids.len()),
    }
}

/// How long it ran: the report's figure, else none yet.
fn duration_text(task: &TaskRecord) -> String {
    match &task.result {
        Some(report) => format!("{:.1} s", report.duration_ms as f64 / 1000.0),
        None => "—".into(),
    }
}

fn summary(task: &TaskRecord, progress: Option<&crate::progress::Progress>) -> Markup {
    let status = task.status.as_str();
    html! {
        table.summary data-task=(task.task_id) data-status=(status) {
            tbody {
                tr { th { "任务 Task" } td { code { (task.task_id) } } }
                tr { th { "状态 Status" } td { span class={ "status " (status) } { (status) } } }
                @if let Some(p) = progress {
                    tr { th { "进度 Progress" } td.progress { (progress_bar(p.percent, &p.stage)) } }
                }
                tr { th { "模式 Mode" } td { (task.spec.mode.as_str()) } }
                tr { th { "标签 Tags" } td { @for id in &task.spec.tag_ids {
                    a href={ "/tags/" (id) } { (id) } " "
                } } }
                tr { th { "用户 Users" } td { (users_text(task)) } }
                tr { th { "基准日 As of" } td { (task.spec.as_of.as_deref().unwrap_or("today")) } }
                tr { th { "优先级 Priority" } td { (task.spec.priority.as_str()) } }
                tr { th { "提交 Submitted" } td { (task.submitted_at) } }
                tr { th { "开始 Started" } td { (task.started_at.as_deref().unwrap_or("—")) } }
                tr { th { "结束 Finished" } td { (task.completed_at.as_deref().unwrap_or("—")) } }
                tr { th { "耗时 Duration" } td { (duration_text(task)) } }
                tr { th { "尝试 Attempts" } td { (task.attempts) } }
                @if let Some(of) = &task.spec.retry_of {
                    tr { th { "重试自 Retry of" } td { a href={ "/tasks/" (path_segment(of)) } { (short(of)) } } }
                }
            }
        }
    }
}

/// A task's bar and its label (`42% evaluating`). The script sets the
/// fill's width: the page's policy allows no inline style.
pub(super) fn progress_bar(percent: f64, stage: &str) -> Markup {
    html! {
        div.bar { div.fill data-percent=(percent) {} }
        span.label { (format!("{percent:.0}%")) " " (stage) }
    }
}

/// The buttons an admin gets for a task: cancel while it is queued or
/// running, retry the failed tags once it failed; where the outcome shows.
pub(super) fn task_actions(viewer: &Viewer, task: &TaskRecord) -> Markup {
    html! {
        @if viewer.admin && matches!(task.status, TaskStatus::Submitted | TaskStatus::Running) {
            button.action data-method="POST" data-path={ "/api/v1/tasks/" (task.task_id) "/cancel" }
                data-then="reload" { "取消 Cancel" }
        }
        @if viewer.admin && task.status == TaskStatus::Failed {
            button.action data-method="POST" data-path={ "/api/v1/tasks/" (task.task_id) "/retry" }
                data-then="reload" { "重试失败 Retry failed" }
        }
        span.result {}
    }
}

fn tag_table(report: &RunReport, registry: &TagRegistry) -> Markup {
    html! {
        table.task-tags {
            thead { tr {
                th { "ID" } th { "名称 Name" } th { "结果 Outcome" } th { "规则版本 Rule" } th { "范围 Scope" }
                th { "评估 Evaluated" } th { "命中 Matched" } th { "新增 Added" } th { "移除 Removed" }
                th { "插件 Plugin" }
            } }
            tbody { @for line in &report.tags {
                @let ok = line.status == TagStatus::Completed;
                @let name = if line.tag_name.is_empty() {
                    registry.get(line.tag_id).map(|t| t.info.description.clone()).unwrap_or_default()
                } else { line.tag_name.clone() };
                tr {
                    td { a href={ "/tags/" (line.tag_id) } { (line.tag_id) } }
                    td { (name) }
                    td class=(if ok { "tag-ok" } else { "tag-failed" }) {
                        (if ok { "✓ completed" } else { "✗ failed" })
                        @if let Some(e) = &line.error { div.error { (e) } }
                    }
                    td { (line.rule_version.map(|v| v.to_string()).unwrap_or_default()) }
                    td { (scope_text(line.scope)) }
                    @match line.counts {
                        Some(c) => {
                            td.num { (c.evaluated_users) } td.num { (c.matched) }
                            td.num { "+" (c.added) } td.num { "−" (c.removed) }
                        }
                        None => { td {} td {} td {} td {} }
                    }
                    td { @if let Some(p) = &line.plugin { (p.name) " " (p.version) } }
                }
            } }
        }
    }
}

/// A tag's scope as the report writes it (`all users`, `changed users`, …).
fn scope_text(scope: Option<TagScope>) -> String {
    scope
        .and_then(|s| serde_json::to_value(s).ok())
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn report_figures(report: &RunReport) -> Markup {
    html! {
        table.summary { tbody {
            tr { th { "消息 Message" } td { (report.message) } }
            tr { th { "用户 Users evaluated" } td.num { (report.total_users) } }
            tr { th { "全体 Universe" } td.num { (report.universe_users) } }
            tr { th { "写入 Rows upserted" } td.num { (report.rows_upserted) } }
            tr { th { "删除 Rows deleted" } td.num { (report.rows_deleted) } }
            @for (table, n) in &report.duplicates_dropped {
                tr { th { "重复 Duplicates in " (table) } td.num { (n) } }
            }
            @if let Some(unknown) = &report.unknown_user_ids {
                tr { th { "未知用户 Unknown user_ids" } td { (unknown.count) " " small { (unknown.sample.join(", ")) } } }
            }
            @if let Some(m) = &report.memory {
                tr { th { "分区 Partitions" } td { (m.partitions) " (spilled " (m.spill_bytes) " bytes)" } }
            }
            @if let Some(e) = &report.executor {
                tr { th { "执行器 Executor" } td { (e.name) " " (e.application_id.as_deref().unwrap_or("")) } }
            }
            @for note in &report.notes { tr { th { "说明 Note" } td.note { (note) } } }
        } }
    }
}
