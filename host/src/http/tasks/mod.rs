//! Tasks: trigger, status, list, cancel, retry.

mod bodies;
mod trigger;

pub use bodies::*;
pub use trigger::parse_trigger;

use super::error::ErrorBody;
use super::params::parse_count;
use super::{ApiError, AppState};
use crate::auth::Caller;
use crate::model::{TaskRecord, TaskStatus};
use crate::tasks::lifecycle;
use crate::tasks::CancelOutcome;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
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
        serde_json::to_string(&spec).map_err(|e| ApiError::Internal(e.to_string()))?;
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
        return Err(ApiError::IdempotencyConflict);
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
    tokio::task::spawn_blocking(move || {
        scheduler.submit(task, key.as_ref().map(|(k, f)| (k.as_str(), f.as_str())))
    })
    .await??;
    Ok(())
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
    let old = stored_task(&state, &task_id).await?;
    let spec = lifecycle::retry_spec(&old).map_err(|not_failed| ApiError::NotRetryable {
        task_id,
        status: not_failed.0,
    })?;
    lifecycle::check(&spec, &state.tags()).map_err(ApiError::TagsGone)?;
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

/// The stored task `task_id`, or 404.
async fn stored_task(state: &AppState, task_id: &str) -> Result<TaskRecord, ApiError> {
    let id = task_id.to_string();
    let task = state.blocking(move |s| s.get_task(&id)).await?;
    task.ok_or_else(|| ApiError::TaskNotFound(task_id.to_string()))
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
    let task = stored_task(&state, &task_id).await?;
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
        .map_err(|error| ApiError::BadParam {
            name: "status",
            error,
        })?;
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
    let outcome = tokio::task::spawn_blocking(move || scheduler.cancel(&id)).await??;
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
        CancelOutcome::AlreadyFinished(status) => Err(ApiError::AlreadyFinished(status)),
        CancelOutcome::NotFound => Err(ApiError::TaskNotFound(task_id)),
    }
}
