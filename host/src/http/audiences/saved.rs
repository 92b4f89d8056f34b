//! Saved audiences: `PUT/GET/DELETE /api/v1/audiences/{name}`, the list
//! with each one's size now and after each run, and their members.

use super::stream::{
    page, parse_cursor, parse_expr, parse_format, stream_members, MembersQuery, MAX_PAGE,
};
use crate::audience::bitmaps::TagBitmaps;
use crate::audience::expr;
use crate::auth::Caller;
use crate::http::error::ErrorBody;
use crate::http::params::parse_count;
use crate::http::{ApiError, AppState};
use crate::store::{SavedAudience, Store, StoreError};
use axum::extract::{Extension, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Counts per run shown per saved audience.
const COUNT_HISTORY: usize = 100;
/// The longest name, in characters.
const MAX_NAME: usize = 128;
/// The longest description, in characters.
const MAX_DESCRIPTION: usize = 2000;

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_saved))
        .routes(routes!(get_saved, put_saved, delete_saved))
        .routes(routes!(saved_members))
}

/// `PUT /api/v1/audiences/{name}`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SaveBody {
    /// The expression (ids or tag names).
    pub expr: String,
    /// What the audience is for.
    #[serde(default)]
    pub description: String,
}

/// A saved audience's size after one run.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CountAfterRun {
    /// The run's task.
    pub task_id: String,
    /// When the run committed (UTC).
    pub committed_at: String,
    /// Members after it.
    pub members: u64,
}

/// A saved audience.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AudienceBody {
    /// Its name.
    pub name: String,
    /// The expression as saved.
    pub expr: String,
    /// The expression over tag ids.
    pub canonical: String,
    /// What it is for.
    pub description: String,
    /// The token name that saved it.
    pub saved_by: Option<String>,
    /// When (UTC).
    pub saved_at: String,
    /// Members now.
    pub count: u64,
    /// Members after each run since it was saved (the last 100), oldest first.
    pub counts: Vec<CountAfterRun>,
}

/// One saved audience.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OneAudience {
    /// True.
    pub success: bool,
    /// The audience.
    pub audience: AudienceBody,
}

/// Every saved audience.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AudienceList {
    /// True.
    pub success: bool,
    /// By name.
    pub audiences: Vec<AudienceBody>,
}

/// A page of a saved audience's members.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MembersPage {
    /// True.
    pub success: bool,
    /// The audience.
    pub name: String,
    /// Members now.
    pub count: u64,
    /// A page of members, ascending by their dense index.
    pub members: Vec<String>,
    /// Continues the listing (none: this was the last page).
    pub next_cursor: Option<String>,
}

/// The expression of a saved audience, over ids.
fn stored_expr(saved: &SavedAudience) -> Result<expr::Expr, StoreError> {
    expr::parse_ids(&saved.canonical)
        .map_err(|e| StoreError::Corrupt(format!("saved audience {:?}: {e}", saved.name)))
}

fn body(
    store: &dyn Store,
    snapshot: &TagBitmaps,
    saved: SavedAudience,
) -> Result<AudienceBody, StoreError> {
    let count = stored_expr(&saved)?.count(snapshot);
    let counts = store
        .audience_counts(&saved.name, COUNT_HISTORY)?
        .into_iter()
        .map(|c| CountAfterRun {
            task_id: c.task_id,
            committed_at: c.committed_at,
            members: c.members,
        })
        .collect();
    Ok(AudienceBody {
        name: saved.name,
        expr: saved.expr,
        canonical: saved.canonical,
        description: saved.description,
        saved_by: saved.saved_by,
        saved_at: saved.saved_at,
        count,
        counts,
    })
}

/// A name from the path: 1 to 128 characters, no control characters.
fn check_name(name: &str) -> Result<(), ApiError> {
    let n = name.chars().count();
    if n == 0 || n > MAX_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            format!("an audience name has 1 to {MAX_NAME} characters and no control characters"),
            "受众名称无效",
        ));
    }
    Ok(())
}

/// Every saved audience, with its size now and after each run.
#[utoipa::path(
    get,
    path = "/api/v1/audiences",
    tag = "audiences",
    responses((status = 200, description = "The saved audiences, by name", body = AudienceList))
)]
async fn list_saved(State(state): State<AppState>) -> Result<Json<AudienceList>, ApiError> {
    let live = Arc::clone(&state.live);
    let audiences = state
        .blocking(move |s| {
            let snapshot = live.fresh(s)?;
            s.audiences()?
                .into_iter()
                .map(|a| body(s, &snapshot, a))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    Ok(Json(AudienceList {
        success: true,
        audiences,
    }))
}

/// One saved audience, with its size now and after each run.
#[utoipa::path(
    get,
    path = "/api/v1/audiences/{name}",
    tag = "audiences",
    params(("name" = String, Path, description = "The audience's name")),
    responses(
        (status = 200, description = "The audience", body = OneAudience),
        (status = 404, description = "No audience of that name", body = ErrorBody),
    )
)]
async fn get_saved(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<OneAudience>, ApiError> {
    let live = Arc::clone(&state.live);
    let wanted = name.clone();
    let audience = state
        .blocking(move |s| {
            let Some(saved) = s.audience(&wanted)? else {
                return Ok(None);
            };
            let snapshot = live.fresh(s)?;
            body(s, &snapshot, saved).map(Some)
        })
        .await?
        .ok_or(ApiError::AudienceNotFound(name))?;
    Ok(Json(OneAudience {
        success: true,
        audience,
    }))
}

/// Saves an audience (replacing one of the same name; its counts per run
/// start again). Needs the admin role.
#[utoipa::path(
    put,
    path = "/api/v1/audiences/{name}",
    tag = "audiences",
    params(("name" = String, Path, description = "The audience's name (1 to 128 characters)")),
    request_body = SaveBody,
    responses(
        (status = 200, description = "The audience as saved", body = OneAudience),
        (status = 400, description = "Not JSON, a bad name, or an expression with an error", body = ErrorBody),
    )
)]
async fn put_saved(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    raw: axum::body::Bytes,
) -> Result<Json<OneAudience>, ApiError> {
    check_name(&name)?;
    let request: SaveBody =
        serde_json::from_slice(&raw).map_err(|e| ApiError::BadJson(e.to_string()))?;
    if request.description.chars().count() > MAX_DESCRIPTION {
        return Err(ApiError::bad_request(
            format!("description is longer than {MAX_DESCRIPTION} characters"),
            "描述过长",
        ));
    }
    let parsed = parse_expr(&state, &request.expr)?;
    let saved = SavedAudience {
        name,
        canonical: parsed.to_string(),
        expr: request.expr,
        description: request.description,
        saved_by: Some(caller.0),
        saved_at: crate::model::now_timestamp(),
    };
    let live = Arc::clone(&state.live);
    let audience = state
        .blocking(move |s| {
            s.save_audience(&saved)?;
            let snapshot = live.fresh(s)?;
            body(s, &snapshot, saved)
        })
        .await?;
    Ok(Json(OneAudience {
        success: true,
        audience,
    }))
}

/// `DELETE /api/v1/audiences/{name}`'s answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Deleted {
    /// True.
    pub success: bool,
    /// The audience deleted.
    pub deleted: String,
}

/// Deletes a saved audience and its counts. Needs the admin role.
#[utoipa::path(
    delete,
    path = "/api/v1/audiences/{name}",
    tag = "audiences",
    params(("name" = String, Path, description = "The audience's name")),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = 404, description = "No audience of that name", body = ErrorBody),
    )
)]
async fn delete_saved(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    let wanted = name.clone();
    if !state.blocking(move |s| s.delete_audience(&wanted)).await? {
        return Err(ApiError::AudienceNotFound(name));
    }
    Ok(Json(Deleted {
        success: true,
        deleted: name,
    }))
}

/// A saved audience's members: a JSON page, or with `format` every member
/// streamed as a file.
#[utoipa::path(
    get,
    path = "/api/v1/audiences/{name}/members",
    tag = "audiences",
    params(("name" = String, Path, description = "The audience's name"), MembersQuery),
    responses(
        (status = 200, description = "A page of members; with format, every member as CSV, JSON lines or parquet", content((MembersPage = "application/json"), (String = "text/csv"), (String = "application/x-ndjson"), (String = "application/vnd.apache.parquet"))),
        (status = 400, description = "An unknown format, a bad limit or cursor", body = ErrorBody),
        (status = 404, description = "No audience of that name", body = ErrorBody),
    )
)]
async fn saved_members(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<MembersQuery>,
) -> Result<Response, ApiError> {
    let format = parse_format(q.format.as_deref())?;
    let limit = parse_count(q.limit.as_deref(), "limit", 100, MAX_PAGE)?;
    let cursor = parse_cursor(q.cursor.as_deref())?;
    let wanted = name.clone();
    let saved = state.blocking(move |s| s.audience(&wanted)).await?;
    let saved = saved.ok_or_else(|| ApiError::AudienceNotFound(name.clone()))?;
    let parsed = stored_expr(&saved)?;
    if let Some(format) = format {
        let file = format!("audience-{name}");
        return stream_members(state, move |b| parsed.select(b), format, &file).await;
    }
    let live = Arc::clone(&state.live);
    let page = state
        .blocking(move |s| {
            let snapshot = live.fresh(s)?;
            let bits = parsed.select(snapshot.as_ref());
            let (members, next_cursor) = page(s, &bits, cursor, limit)?;
            Ok(MembersPage {
                success: true,
                name,
                count: bits.len(),
                members,
                next_cursor,
            })
        })
        .await?;
    Ok(Json(page).into_response())
}
