//! Tasks: trigger, status, list, cancel, retry.

use super::auth::Caller;
use super::schema::{
    Cancelled, ErrorBody, ProgressSummary, Submitted, TaskDetail, TaskList, TaskState,
    TaskStatusBody, TaskSummary, TriggerRequest,
};
use super::{ApiError, AppState};
use crate::model::{Mode, Priority, TaskRecord, TaskSpec, TaskStatus};
use crate::registry::TagRegistry;
use crate::tasks::lifecycle;
use crate::tasks::{CancelOutcome, SubmitError};
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use tag_plugin_api::Date;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(trigger))
        .routes(routes!(list))
        .routes(routes!(status))
        .routes(routes!(cancel))
        .routes(routes!(retry))
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    }
}

fn parse_tag_ids(body: &Map<String, Value>) -> Result<Vec<u32>, ApiError> {
    let raw = match body.get("tag_ids") {
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request(
                "tag_ids is required",
                "缺少必需参数: tag_ids",
            ))
        }
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(ApiError::bad_request(
                "tag_ids must not be empty",
                "标签ID列表不能为空",
            ))
        }
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(ApiError::bad_request(
                format!(
                    "tag_ids must be a list of integers, got {}",
                    describe(other)
                ),
                "tag_ids必须是整数列表",
            ))
        }
    };
    let mut ids = BTreeSet::new();
    for (i, item) in raw.iter().enumerate() {
        // JSON `true` is not an integer, and neither is 1.0.
        let id = item
            .as_u64()
            .filter(|_| item.is_number())
            .and_then(|n| u32::try_from(n).ok());
        match id {
            Some(id) => ids.insert(id),
            None => {
                return Err(ApiError::bad_request(
                    format!(
                        "tag_ids must contain only positive integers; item {i} is {}",
                        describe(item)
                    ),
                    "tag_ids必须只包含整数",
                ))
            }
        };
    }
    Ok(ids.into_iter().collect())
}

fn parse_user_ids(body: &Map<String, Value>, max: usize) -> Result<Option<Vec<String>>, ApiError> {
    let items = match body.get("user_ids") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(ApiError::bad_request(
                format!(
                    "user_ids must be a list of strings, got {}",
                    describe(other)
                ),
                "user_ids必须是字符串列表",
            ))
        }
    };
    if items.len() > max {
        return Err(ApiError::bad_request(
            format!("user_ids has {} entries; the maximum is {max}", items.len()),
            format!("user_ids数量超过上限: {max}"),
        ));
    }
    let mut seen = BTreeSet::new();
    let mut ids = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match item.as_str() {
            Some(s) if !s.trim().is_empty() && !s.chars().any(char::is_control) => {
                if seen.insert(s) {
                    ids.push(s.to_string());
                }
            }
            _ => {
                return Err(ApiError::bad_request(
                    format!(
                        "user_ids must contain only non-empty strings without control characters; item {i} is {}",
                        describe(item)
                    ),
                    "user_ids必须只包含非空字符串",
                ))
            }
        }
    }
    if ids.is_empty() {
        return Err(ApiError::bad_request(
            "user_ids must not be empty when given",
            "user_ids不能为空列表",
        ));
    }
    Ok(Some(ids))
}

fn parse_choice<T: std::str::FromStr<Err = String>>(
    body: &Map<String, Value>,
    key: &str,
    zh: &str,
) -> Result<Option<T>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|e: String| ApiError::bad_request(e, zh.to_string())),
        Some(other) => Err(ApiError::bad_request(
            format!("{key} must be a string, got {}", describe(other)),
            zh.to_string(),
        )),
    }
}

/// A reference date a person could mean: 1900-01-01 to 2200-12-31.
fn plausible_date(date: Date) -> bool {
    let bound = |text: &str| Date::parse(text).map_or(0, |d| d.days());
    (bound("1900-01-01")..=bound("2200-12-31")).contains(&date.days())
}

/// Validates a trigger body into a task spec; every failure is a 400 naming the field.
pub fn parse_trigger(
    body: &[u8],
    registry: &TagRegistry,
    max_user_ids: usize,
) -> Result<TaskSpec, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "Request body is required",
            "请求体不能为空",
        ));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            format!("Request body must be valid JSON: {e}"),
            "请求体必须是有效的JSON",
        )
    })?;
    let Value::Object(body) = value else {
        return Err(ApiError::bad_request(
            format!(
                "Request body must be a JSON object, got {}",
                describe(&value)
            ),
            "请求体必须是JSON对象",
        ));
    };
    let tag_ids = parse_tag_ids(&body)?;
    let user_ids = parse_user_ids(&body, max_user_ids)?;
    let mode =
        parse_choice::<Mode>(&body, "mode", "mode必须是full或incremental")?.unwrap_or_default();
    let priority = parse_choice::<Priority>(&body, "priority", "priority必须是low、normal或high")?
        .unwrap_or_default();
    let as_of = match body.get("as_of") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if Date::parse(s).is_some_and(plausible_date) => Some(s.clone()),
        Some(other) => {
            return Err(ApiError::bad_request(
                format!(
                    "as_of must be a YYYY-MM-DD date from 1900-01-01 to 2200-12-31, got {}",
                    describe(other)
                ),
                "as_of必须是1900至2200年之间的YYYY-MM-DD日期",
            ))
        }
    };
    let spec = TaskSpec {
        tag_ids,
        user_ids,
        mode,
        priority,
        as_of,
        retry_of: None,
    };
    lifecycle::check(&spec, registry).map_err(|e| {
        let list = lifecycle::list(&e.unknown);
        ApiError::bad_request(e.to_string(), format!("无效的标签ID: {list}"))
            .with_available(e.available)
    })?;
    Ok(spec)
}

/// `POST /api/v1/tags/trigger`: validates, persists and queues a task (202).
#[utoipa::path(
    post,
    path = "/api/v1/tags/trigger",
    tag = "tasks",
    params(("Idempotency-Key" = Option<String>, Header,
        description = "1 to 255 visible ASCII characters: a repeated request with the same key and body gets the same task (200)")),
    request_body(content = TriggerRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted and queued", body = Submitted),
        (status = 200, description = "The task this Idempotency-Key already created", body = Submitted),
        (status = 400, description = "Invalid body (the error names the field)", body = ErrorBody),
        (status = 409, description = "The Idempotency-Key came with another body", body = ErrorBody),
    )
)]
async fn trigger(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Submitted>), ApiError> {
    let spec = parse_trigger(&body, &state.tags(), state.max_user_ids)?;
    tracing::info!(caller = %caller.0, tag_ids = ?spec.tag_ids, mode = spec.mode.as_str(), "audit: trigger");
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) if !k.is_empty() && k.len() <= 255 => Some(k.to_string()),
        Some(_) => {
            return Err(ApiError::bad_request(
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
                "Idempotency-Key格式无效",
            ))
        }
    };
    let fingerprint =
        serde_json::to_string(&spec).map_err(|e| ApiError::internal(e.to_string()))?;
    if let Some(key) = &key {
        if let Some(reply) = earlier_task(&state, key, &fingerprint).await? {
            return Ok(reply);
        }
    }
    let task = lifecycle::create(spec, &state.environment);
    let body = Submitted::of(&task);
    match (
        submit(&state, task, key.clone().map(|k| (k, fingerprint.clone()))).await,
        &key,
    ) {
        (Ok(()), _) => Ok((StatusCode::ACCEPTED, Json(body))),
        // A concurrent trigger with the same key stored its task first:
        // this one gets that task too.
        (Err(e), Some(key)) => earlier_task(&state, key, &fingerprint).await?.ok_or(e),
        (Err(e), None) => Err(e),
    }
}

/// The task an `Idempotency-Key` already created (200), 409 if the key came
/// with another request, or `None` if the key is new.
async fn earlier_task(
    state: &AppState,
    key: &str,
    fingerprint: &str,
) -> Result<Option<(StatusCode, Json<Submitted>)>, ApiError> {
    let key = key.to_string();
    let Some((task_id, hash)) = state.blocking(move |s| s.find_idempotent(&key)).await? else {
        return Ok(None);
    };
    if hash != fingerprint {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "Idempotency-Key was already used with a different request",
            "Idempotency-Key已被另一个请求使用",
        ));
    }
    let task = state.blocking(move |s| s.get_task(&task_id)).await?;
    Ok(task.map(|task| (StatusCode::OK, Json(Submitted::of(&task)))))
}

/// Persists and queues `task` (with its idempotency key and fingerprint).
async fn submit(
    state: &AppState,
    task: TaskRecord,
    key: Option<(String, String)>,
) -> Result<(), ApiError> {
    let scheduler = state.scheduler.clone();
    let submitted = tokio::task::spawn_blocking(move || {
        scheduler.submit(task, key.as_ref().map(|(k, f)| (k.as_str(), f.as_str())))
    })
    .await
    .map_err(|e| ApiError::internal(format!("submit aborted: {e}")))?;
    match submitted {
        Ok(()) => Ok(()),
        Err(SubmitError::QueueFull(n)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Task queue is full ({n} tasks waiting); retry later"),
            "任务队列已满，请稍后重试",
        )),
        Err(SubmitError::ShuttingDown) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Server is shutting down",
            "服务器正在关闭",
        )),
        Err(SubmitError::Store(e)) => Err(e.into()),
    }
}

/// `POST /api/v1/tasks/{task_id}/retry`: queues a new task with the failed
/// tags of a failed task (all its tags if it failed as a whole), with the
/// same users, mode, `as_of` and priority; the new task names the old one
/// in `retry_of` (202).
#[utoipa::path(
    post,
    path = "/api/v1/tasks/{task_id}/retry",
    tag = "tasks",
    params(("task_id" = String, Path, description = "A failed task")),
    responses(
        (status = 202, description = "The retry, queued", body = Submitted),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The task did not fail, or its tags are no longer loaded", body = ErrorBody),
    )
)]
async fn retry(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(task_id): Path<String>,
) -> Result<(StatusCode, Json<Submitted>), ApiError> {
    tracing::info!(caller = %caller.0, task_id = %task_id, "audit: retry requested");
    let id = task_id.clone();
    let old = state
        .blocking(move |s| s.get_task(&id))
        .await?
        .ok_or_else(|| task_not_found(&task_id))?;
    let spec = lifecycle::retry_spec(&old).map_err(|not_failed| {
        ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "Task {task_id} is {}: only a failed task can be retried",
                not_failed.0.as_str()
            ),
            "只能重试失败的任务",
        )
    })?;
    lifecycle::check(&spec, &state.tags()).map_err(|e| {
        let list = lifecycle::list(&e.unknown);
        ApiError::new(
            StatusCode::CONFLICT,
            format!("{e}: no loaded plugin provides them any more"),
            format!("无效的标签ID: {list}"),
        )
        .with_available(e.available)
    })?;
    let task = lifecycle::create(spec, &state.environment);
    let body = Submitted::of(&task);
    submit(&state, task, None).await?;
    Ok((StatusCode::ACCEPTED, Json(body)))
}

/// A task as the listing shows it: its status without the `user_ids` list
/// (a count instead: 20 tasks of 100,000 ids would be tens of MB); the
/// whole task stays at its status URL.
fn task_summary(task: &TaskRecord, state: &AppState) -> TaskSummary {
    TaskSummary {
        state: TaskState::of(task),
        user_ids_count: task.spec.user_ids.as_ref().map(Vec::len),
        progress: progress(task, state).as_ref().map(ProgressSummary::from),
    }
}

/// A running task's progress.
fn progress(task: &TaskRecord, state: &AppState) -> Option<crate::progress::Progress> {
    (task.status == TaskStatus::Running)
        .then(|| state.scheduler.progress(&task.task_id))
        .flatten()
}

/// A task in full.
fn task_detail(task: &TaskRecord, state: &AppState) -> TaskDetail {
    TaskDetail {
        state: TaskState::of(task),
        user_ids: task.spec.user_ids.clone(),
        progress: progress(task, state),
    }
}

fn task_not_found(task_id: &str) -> ApiError {
    ApiError::not_found(
        format!("Task not found: {task_id}"),
        format!("任务不存在: {task_id}"),
    )
}

/// `GET /api/v1/tasks/{task_id}/status`.
#[utoipa::path(
    get,
    path = "/api/v1/tasks/{task_id}/status",
    tag = "tasks",
    params(("task_id" = String, Path, description = "The id the trigger answered with")),
    responses(
        (status = 200, description = "The task, with `progress` while it runs and `result` once it finished", body = TaskStatusBody),
        (status = 404, description = "No such task", body = ErrorBody),
    )
)]
async fn status(
    State(state): State<AppState>,
    Path(task_id): Path<String>,
) -> Result<Json<TaskStatusBody>, ApiError> {
    let id = task_id.clone();
    let task = state
        .blocking(move |s| s.get_task(&id))
        .await?
        .ok_or_else(|| task_not_found(&task_id))?;
    Ok(Json(TaskStatusBody {
        success: true,
        task_id: task.task_id.clone(),
        status: task_detail(&task, &state),
    }))
}

/// Query of `GET /api/v1/tasks`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only tasks in this state.
    #[param(value_type = Option<TaskStatus>)]
    status: Option<String>,
    /// Tasks per page, 0 to 1000 (default 100).
    #[param(value_type = Option<u32>, maximum = 1000)]
    limit: Option<String>,
    /// Tasks to skip (default 0).
    #[param(value_type = Option<u64>)]
    offset: Option<String>,
}

/// A non-negative count from the query string, at most `max`.
pub(crate) fn parse_count(
    raw: Option<&str>,
    key: &str,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match raw {
        None => Ok(default),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n <= max => Ok(n),
            _ => Err(ApiError::bad_request(
                format!("{key} must be an integer from 0 to {max}, got \"{s}\""),
                format!("{key}参数无效"),
            )),
        },
    }
}

/// `GET /api/v1/tasks?status=&limit=&offset=`: newest first.
#[utoipa::path(
    get,
    path = "/api/v1/tasks",
    tag = "tasks",
    params(ListQuery),
    responses((status = 200, description = "Task summaries, newest first (`user_ids` replaced by `user_ids_count`)", body = TaskList))
)]
async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<TaskList>, ApiError> {
    let status = q
        .status
        .as_deref()
        .map(str::parse::<TaskStatus>)
        .transpose()
        .map_err(|e| ApiError::bad_request(e, "status参数无效"))?;
    let limit = parse_count(q.limit.as_deref(), "limit", 100, 1000)?;
    let offset = parse_count(q.offset.as_deref(), "offset", 0, usize::MAX / 2)?;
    let (tasks, total) = state
        .blocking(move |s| s.list_tasks(status, limit, offset))
        .await?;
    let tasks = tasks.iter().map(|t| task_summary(t, &state)).collect();
    Ok(Json(TaskList {
        success: true,
        tasks,
        total: total as u64,
        limit,
        offset,
    }))
}

/// `POST /api/v1/tasks/{task_id}/cancel`.
#[utoipa::path(
    post,
    path = "/api/v1/tasks/{task_id}/cancel",
    tag = "tasks",
    params(("task_id" = String, Path, description = "A queued or running task")),
    responses(
        (status = 200, description = "Cancelled before it started", body = Cancelled),
        (status = 202, description = "Running: it stops at its next safe point and writes nothing", body = Cancelled),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "It had already finished", body = ErrorBody),
    )
)]
async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(task_id): Path<String>,
) -> Result<(StatusCode, Json<Cancelled>), ApiError> {
    tracing::info!(caller = %caller.0, task_id = %task_id, "audit: cancel requested");
    let scheduler = state.scheduler.clone();
    let id = task_id.clone();
    let outcome = tokio::task::spawn_blocking(move || scheduler.cancel(&id))
        .await
        .map_err(|e| ApiError::internal(format!("cancel aborted: {e}")))??;
    match outcome {
        CancelOutcome::Cancelled(task) => Ok((
            StatusCode::OK,
            Json(Cancelled {
                success: true,
                status: Some(task_detail(&task, &state)),
                task_id,
                message: "任务已取消".into(),
            }),
        )),
        CancelOutcome::Requested => Ok((
            StatusCode::ACCEPTED,
            Json(Cancelled {
                success: true,
                task_id,
                message: "任务将在下一个安全点停止，不写入任何结果".into(),
                status: None,
            }),
        )),
        CancelOutcome::AlreadyFinished(status) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("Task already finished: {status}"),
            format!("任务已结束: {status}"),
        )),
        CancelOutcome::NotFound => Err(task_not_found(&task_id)),
    }
}
