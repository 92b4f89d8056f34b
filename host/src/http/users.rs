//! Results: a user's tags, the users holding a tag, and system figures.

use super::{ApiError, AppState};
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

/// Routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/users/{user_id}/tags", get(user_tags))
        .route("/api/v1/tags/{tag_id}/users", get(tag_users))
        .route("/api/v1/system/stats", get(stats))
}

/// `GET /api/v1/users/{user_id}/tags`: the user's `user_tags` row.
async fn user_tags(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = user_id.clone();
    let row = state.blocking(move |s| s.user_tags(&id)).await?;
    let Some(row) = row else {
        return Err(ApiError::not_found(
            format!("User has no tags: {user_id}"),
            format!("该用户没有标签: {user_id}"),
        ));
    };
    Ok(Json(json!({
        "success": true,
        "user_id": row.user_id,
        "tag_ids": row.tag_ids,
        "tag_details": serde_json::from_str::<Value>(&row.details).unwrap_or(Value::Null),
        "created_time": row.created_time,
        "updated_time": row.updated_time,
    })))
}

/// Query of `GET /api/v1/tags/{tag_id}/users`.
#[derive(Debug, serde::Deserialize)]
struct PageQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /api/v1/tags/{tag_id}/users?limit=&cursor=`: holders, by user id;
/// `next_cursor` continues the listing.
async fn tag_users(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let tag_id = super::tags::parse_tag_id(&state, &raw)?;
    let limit = super::tasks::parse_count(q.limit.as_deref(), "limit", 100, 10_000)?;
    let cursor = q.cursor.clone();
    let users = state
        .blocking(move |s| s.users_with_tag(tag_id, limit, cursor.as_deref()))
        .await?;
    let next = (users.len() == limit)
        .then(|| users.last().cloned())
        .flatten();
    Ok(Json(
        json!({"success": true, "tag_id": tag_id, "users": users, "next_cursor": next}),
    ))
}

/// `GET /api/v1/system/stats`: tasks by status, the queue and its workers.
async fn stats(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let counts = state.blocking(|s| s.task_counts()).await?;
    Ok(Json(json!({
        "success": true,
        "environment": state.environment,
        "tasks": counts,
        "queue": state.scheduler.stats(),
        "tags_loaded": state.tags().len(),
    })))
}
