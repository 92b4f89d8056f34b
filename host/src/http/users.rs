//! Results: a user's tags, and the users holding a tag.

use super::audiences::stream;
use super::error::ErrorBody;
use super::params::parse_count;
use super::tags::parse_tag_id;
use super::{ApiError, AppState};
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(user_tags))
        .routes(routes!(tag_users))
}

/// `GET /api/v1/users/{user_id}/tags`: the user's `user_tags` row.
#[utoipa::path(
    get,
    path = "/api/v1/users/{user_id}/tags",
    tag = "results",
    params(("user_id" = String, Path, description = "The user's id")),
    responses(
        (status = 200, description = "The user's tags", body = UserTags),
        (status = 404, description = "The user holds no tag", body = ErrorBody),
    )
)]
async fn user_tags(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
) -> Result<Json<UserTags>, ApiError> {
    let id = user_id.clone();
    let row = state.blocking(move |s| s.user_tags(&id)).await?;
    let row = row.ok_or(ApiError::UserNotFound(user_id))?;
    Ok(Json(UserTags {
        success: true,
        tag_details: serde_json::from_str::<Value>(&row.details)
            .unwrap_or_else(|_| Value::Object(Default::default())),
        user_id: row.user_id,
        tag_ids: row.tag_ids,
        created_time: row.created_time,
        updated_time: row.updated_time,
    }))
}

/// Query of `GET /api/v1/tags/{tag_id}/users`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct PageQuery {
    /// Users per page, 0 to 10000 (default 100).
    #[param(value_type = Option<u32>, maximum = 10000)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// `csv`, `jsonl` or `parquet`: every holder streamed as a file (in
    /// the order of their dense index), instead of a page.
    format: Option<String>,
}

/// `GET /api/v1/tags/{tag_id}/users?limit=&cursor=`: holders, by user id;
/// `next_cursor` continues the listing. With `format`, every holder as a
/// file.
#[utoipa::path(
    get,
    path = "/api/v1/tags/{tag_id}/users",
    tag = "results",
    params(("tag_id" = u64, Path, minimum = 0, maximum = 4294967295.0, description = "A loaded tag's id"), PageQuery),
    responses(
        (status = 200, description = "A page of the tag's holders; with format, every holder as CSV, JSON lines or parquet", content((TagUsers = "application/json"), (String = "text/csv"), (String = "application/x-ndjson"), (String = "application/vnd.apache.parquet"))),
        (status = 400, description = "A bad limit or format", body = ErrorBody),
        (status = 404, description = "No loaded plugin provides the tag", body = ErrorBody),
    )
)]
async fn tag_users(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let tag_id = parse_tag_id(&state, &raw)?;
    if let Some(format) = stream::parse_format(q.format.as_deref())? {
        let select = move |b: &crate::audience::bitmaps::TagBitmaps| {
            b.members(tag_id).cloned().unwrap_or_default()
        };
        let name = format!("tag-{tag_id}");
        return stream::stream_members(state, select, format, &name).await;
    }
    let limit = parse_count(q.limit.as_deref(), "limit", 100, 10_000)?;
    let cursor = q.cursor.clone();
    let users = state
        .blocking(move |s| s.users_with_tag(tag_id, limit, cursor.as_deref()))
        .await?;
    let next = (users.len() == limit)
        .then(|| users.last().cloned())
        .flatten();
    Ok(Json(TagUsers {
        success: true,
        tag_id,
        users,
        next_cursor: next,
    })
    .into_response())
}

/// `GET /api/v1/users/{user_id}/tags`: the user's row of results.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserTags {
    /// True.
    pub success: bool,
    /// The user.
    pub user_id: String,
    /// Tags held, ascending.
    pub tag_ids: Vec<u32>,
    /// Per tag id: name, category, when it was gained, by which run.
    #[schema(value_type = Object)]
    pub tag_details: Value,
    /// When the user first held a tag (UTC).
    pub created_time: String,
    /// When the user's tags last changed (UTC).
    pub updated_time: String,
}

/// `GET /api/v1/tags/{tag_id}/users`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TagUsers {
    /// True.
    pub success: bool,
    /// The tag.
    pub tag_id: u32,
    /// Holders, ascending by user id.
    pub users: Vec<String>,
    /// Pass as `cursor` for the next page (none: this was the last).
    pub next_cursor: Option<String>,
}
