//! `/api/v1/audiences/query`: an expression's count, a page of its members
//! and the tags it uses; with `format`, every member as a file.

use super::stream::{
    page, parse_cursor, parse_expr, parse_format, stream_members, MembersQuery, MAX_PAGE,
};
use crate::audience::bitmaps::TagBitmaps;
use crate::audience::expr::Expr;
use crate::http::error::ErrorBody;
use crate::http::params::parse_count;
use crate::http::{ApiError, AppState};
use crate::store::Store;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(query_post, query_get))
}

/// `POST /api/v1/audiences/query`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryBody {
    /// The expression, e.g. `(5 AND 2) AND NOT 3` (ids or tag names).
    pub expr: String,
    /// Members in the first page, 0 to 10000 (default 100).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The last committed run that changed a tag.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LastRun {
    /// The run's task.
    pub task_id: String,
    /// When it committed (UTC).
    pub committed_at: String,
    /// The run's reference date (none: the task is no longer kept).
    pub as_of: Option<String>,
}

/// A tag an expression uses.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UsedTag {
    /// The tag.
    pub tag_id: u32,
    /// Its task class (empty if no loaded plugin provides it).
    pub task_class: String,
    /// Its description.
    pub description: String,
    /// Its members now.
    pub members: u64,
    /// Its last run that a kept change feed records.
    pub last_run: Option<LastRun>,
}

/// An audience's answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QueryAnswer {
    /// True.
    pub success: bool,
    /// The expression as given.
    pub expr: String,
    /// The expression over tag ids, fully parenthesized.
    pub canonical: String,
    /// Members.
    pub count: u64,
    /// The committed version counted (moves with each run's commit).
    pub version: u64,
    /// A page of members, ascending by their dense index.
    pub members: Vec<String>,
    /// Continues the listing (none: this was the last page).
    pub next_cursor: Option<String>,
    /// The tags used, each with its size and last run.
    pub tags: Vec<UsedTag>,
}

/// The tags `expr` uses, as [`UsedTag`]s.
fn used_tags(
    state: &AppState,
    store: &dyn Store,
    snapshot: &TagBitmaps,
    expr: &Expr,
) -> Result<Vec<UsedTag>, crate::store::StoreError> {
    let runs = state.live.last_runs(store, snapshot.version())?;
    Ok(tags_with_runs(state, snapshot, expr, &runs))
}

/// The tags `expr` uses, as [`UsedTag`]s, with their last `runs`.
fn tags_with_runs(
    state: &AppState,
    snapshot: &TagBitmaps,
    expr: &Expr,
    runs: &BTreeMap<u32, crate::members::live::LastRun>,
) -> Vec<UsedTag> {
    let registry = state.tags();
    expr.tags()
        .into_iter()
        .map(|tag_id| {
            let info = registry.get(tag_id).map(|t| &t.info);
            UsedTag {
                tag_id,
                task_class: info.map_or(String::new(), |i| i.task_class.clone()),
                description: info.map_or(String::new(), |i| i.description.clone()),
                members: snapshot.members(tag_id).map_or(0, |b| b.len()),
                last_run: runs.get(&tag_id).map(|r| LastRun {
                    task_id: r.task_id.clone(),
                    committed_at: r.committed_at.clone(),
                    as_of: r.as_of.clone(),
                }),
            }
        })
        .collect()
}

/// Counts `expr` and lists a page of its members.
async fn answer(
    state: AppState,
    text: String,
    limit: usize,
    cursor: Option<u32>,
) -> Result<QueryAnswer, ApiError> {
    let expr = parse_expr(&state, &text)?;
    if limit == 0 {
        // A count asked before at the version served now: from memory, on
        // this thread (a blocking thread's round trip would cost more).
        let commits = state.store.local_commits();
        if let Some(known) = state.live.remembered(commits, &expr) {
            return Ok(QueryAnswer {
                success: true,
                canonical: expr.to_string(),
                count: known.count,
                version: known.snapshot.version(),
                members: Vec::new(),
                next_cursor: None,
                tags: tags_with_runs(&state, &known.snapshot, &expr, &known.runs),
                expr: text,
            });
        }
    }
    let live = Arc::clone(&state.live);
    let reader = state.clone();
    state
        .blocking(move |s| {
            let snapshot = live.fresh(s)?;
            let (count, (members, next_cursor)) = match limit {
                // A count alone: remembered per committed version.
                0 => (live.count(&snapshot, &expr), (Vec::new(), None)),
                _ => {
                    let bits = expr.select(snapshot.as_ref());
                    live.remember(snapshot.version(), expr.to_string(), bits.len());
                    (bits.len(), page(s, &bits, cursor, limit)?)
                }
            };
            Ok(QueryAnswer {
                success: true,
                canonical: expr.to_string(),
                count,
                version: snapshot.version(),
                members,
                next_cursor,
                tags: used_tags(&reader, s, &snapshot, &expr)?,
                expr: text,
            })
        })
        .await
}

/// Counts an expression's users and lists the first of them.
#[utoipa::path(
    post,
    path = "/api/v1/audiences/query",
    tag = "audiences",
    request_body = QueryBody,
    responses(
        (status = 200, description = "The count, a page of members and the tags used", body = QueryAnswer),
        (status = 400, description = "Not JSON, or an expression with an error (its position and token named)", body = ErrorBody),
    )
)]
async fn query_post(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<QueryAnswer>, ApiError> {
    let body: QueryBody =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadJson(e.to_string()))?;
    let limit = body.limit.unwrap_or(100);
    if limit > MAX_PAGE {
        return Err(ApiError::BadParam {
            name: "limit",
            error: format!("limit must be an integer from 0 to {MAX_PAGE}, got {limit}"),
        });
    }
    let cursor = parse_cursor(body.cursor.as_deref())?;
    Ok(Json(answer(state, body.expr, limit, cursor).await?))
}

/// The same as the POST, from the query string; with `format`, every
/// member streamed as a file.
#[utoipa::path(
    get,
    path = "/api/v1/audiences/query",
    tag = "audiences",
    params(MembersQuery),
    responses(
        (status = 200, description = "The count and a page of members; with format, every member as CSV, JSON lines or parquet", content((QueryAnswer = "application/json"), (String = "text/csv"), (String = "application/x-ndjson"), (String = "application/vnd.apache.parquet"))),
        (status = 400, description = "No expr, an expression with an error, or an unknown format", body = ErrorBody),
    )
)]
async fn query_get(
    State(state): State<AppState>,
    Query(q): Query<MembersQuery>,
) -> Result<Response, ApiError> {
    let text = q.expr.clone().ok_or_else(|| ApiError::BadParam {
        name: "expr",
        error: "expr is required: an expression such as (5 AND 2) AND NOT 3".into(),
    })?;
    if let Some(format) = parse_format(q.format.as_deref())? {
        let expr = parse_expr(&state, &text)?;
        return stream_members(state, move |b| expr.select(b), format, "audience").await;
    }
    let limit = parse_count(q.limit.as_deref(), "limit", 100, MAX_PAGE)?;
    let cursor = parse_cursor(q.cursor.as_deref())?;
    Ok(Json(answer(state, text, limit, cursor).await?).into_response())
}
