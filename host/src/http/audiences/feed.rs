//! A tag's change feed (`GET /api/v1/tags/{tag_id}/changes`: who gained
//! and who lost it in each committed run) and the tags' overlap
//! (`GET /api/v1/tags/overlap`), from the bitmaps.

use super::stream::{attachment, parse_cursor, parse_format, streamed};
use crate::audience::bitmaps::page_after;
use crate::http::error::ErrorBody;
use crate::http::params::parse_count;
use crate::http::tags::parse_tag_id;
use crate::http::{ApiError, AppState};
use crate::members::export::{each_member, ExportError, Format, RowWriter};
use crate::store::{ChangeFilter, Store, StoreError, TagChangeRow};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Tags in one overlap matrix at most.
const MAX_OVERLAP_TAGS: usize = 64;

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(overlap))
        .routes(routes!(changes))
}

/// Query of `GET /api/v1/tags/overlap`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OverlapQuery {
    /// Loaded tag ids, comma-separated (1 to 64).
    pub tags: Option<String>,
}

/// The overlap of tags.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Overlap {
    /// True.
    pub success: bool,
    /// The tags, in the order asked.
    pub tags: Vec<u32>,
    /// Each tag's members.
    pub sizes: Vec<u64>,
    /// `matrix[i][j]`: users holding both `tags[i]` and `tags[j]`.
    pub matrix: Vec<Vec<u64>>,
    /// The committed version counted.
    pub version: u64,
}

/// |A ∩ B| for every pair of the tags asked, and each tag's size.
#[utoipa::path(
    get,
    path = "/api/v1/tags/overlap",
    tag = "audiences",
    params(OverlapQuery),
    responses(
        (status = 200, description = "The overlap matrix", body = Overlap),
        (status = 400, description = "No tags, more than 64, or one that is not a loaded tag's id", body = ErrorBody),
    )
)]
async fn overlap(
    State(state): State<AppState>,
    Query(q): Query<OverlapQuery>,
) -> Result<Json<Overlap>, ApiError> {
    let bad = |error: String| ApiError::BadParam {
        name: "tags",
        error,
    };
    let raw = q.tags.unwrap_or_default();
    let mut tags = Vec::new();
    for part in raw.split(',').filter(|p| !p.trim().is_empty()) {
        let id = parse_tag_id(&state, part.trim()).map_err(|_| {
            bad(format!(
                "tags must be loaded tag ids, comma-separated; \"{}\" is not one",
                tag_plugin_api::echo::clip(part)
            ))
        })?;
        if !tags.contains(&id) {
            tags.push(id);
        }
    }
    if tags.is_empty() || tags.len() > MAX_OVERLAP_TAGS {
        return Err(bad(format!(
            "tags must name 1 to {MAX_OVERLAP_TAGS} loaded tag ids, comma-separated"
        )));
    }
    let live = Arc::clone(&state.live);
    let (version, matrix) = state
        .blocking(move |s| {
            let snapshot = live.fresh(s)?;
            let matrix = snapshot.overlap(&tags);
            Ok((snapshot.version(), (tags, matrix)))
        })
        .await?;
    let (tags, matrix) = matrix;
    Ok(Json(Overlap {
        success: true,
        sizes: (0..tags.len()).map(|i| matrix[i][i]).collect(),
        tags,
        matrix,
        version,
    }))
}

/// Query of `GET /api/v1/tags/{tag_id}/changes`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChangesQuery {
    /// The run of this task.
    pub task_id: Option<String>,
    /// Runs committed at or after this time (`YYYY-MM-DD` or
    /// `YYYY-MM-DDTHH:MM:SS`, UTC).
    pub since: Option<String>,
    /// Users listed per run and direction, 0 to 10000 (default 100).
    #[param(value_type = Option<u32>, maximum = 10000)]
    pub limit: Option<String>,
    /// With `task_id`: the `next_cursor` of the previous page (the run's
    /// lists continue after it).
    pub cursor: Option<String>,
    /// `csv`, `jsonl` or `parquet`: every change as a file of rows
    /// `user_id, change (added|removed), task_id, committed_at`.
    pub format: Option<String>,
}

/// One run's changes of the tag.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunChanges {
    /// The run's task.
    pub task_id: String,
    /// When it committed (UTC).
    pub committed_at: String,
    /// Users who gained the tag.
    pub added_count: u64,
    /// Users who lost it.
    pub removed_count: u64,
    /// Who gained it, of the page's (at most `limit`) changed users.
    pub added: Vec<String>,
    /// Who lost it, of the page's changed users.
    pub removed: Vec<String>,
}

/// A tag's change feed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Changes {
    /// True.
    pub success: bool,
    /// The tag.
    pub tag_id: u32,
    /// The runs, oldest first.
    pub runs: Vec<RunChanges>,
    /// With `task_id`: continues the run's lists (none: they ended).
    pub next_cursor: Option<String>,
}

/// `since` as stored times compare: `YYYY-MM-DDTHH:MM:SS`.
fn parse_since(raw: &str) -> Result<String, ApiError> {
    let full = if raw.len() == 10 {
        format!("{raw}T00:00:00")
    } else {
        raw.to_string()
    };
    chrono::NaiveDateTime::parse_from_str(&full, "%Y-%m-%dT%H:%M:%S")
        .map(|_| full)
        .map_err(|_| ApiError::BadParam {
            name: "since",
            error: format!(
                "since must be YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS (UTC), got \"{}\"",
                tag_plugin_api::echo::clip(raw)
            ),
        })
}

fn filter(q: &ChangesQuery) -> Result<ChangeFilter, ApiError> {
    match (&q.task_id, &q.since) {
        (Some(task), None) => Ok(ChangeFilter::Task(task.clone())),
        (None, Some(since)) => Ok(ChangeFilter::Since(parse_since(since)?)),
        _ => Err(ApiError::BadParam {
            name: "task_id",
            error: "give exactly one of task_id and since".into(),
        }),
    }
}

/// Who gained and who lost a tag in each committed run (kept for
/// `--change-retention-days`).
#[utoipa::path(
    get,
    path = "/api/v1/tags/{tag_id}/changes",
    tag = "audiences",
    params(("tag_id" = u64, Path, minimum = 0, maximum = 4294967295.0, description = "A loaded tag's id"), ChangesQuery),
    responses(
        (status = 200, description = "Per run: who gained and who lost the tag; with format, every change as a file", content((Changes = "application/json"), (String = "text/csv"), (String = "application/x-ndjson"), (String = "application/vnd.apache.parquet"))),
        (status = 400, description = "Neither or both of task_id and since, a bad time, limit or format", body = ErrorBody),
        (status = 404, description = "No loaded plugin provides the tag", body = ErrorBody),
    )
)]
async fn changes(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<ChangesQuery>,
) -> Result<Response, ApiError> {
    let tag_id = parse_tag_id(&state, &raw)?;
    let filter = filter(&q)?;
    let one_run = matches!(filter, ChangeFilter::Task(_));
    let limit = parse_count(q.limit.as_deref(), "limit", 100, super::stream::MAX_PAGE)?;
    let cursor = parse_cursor(q.cursor.as_deref())?;
    if cursor.is_some() && !one_run {
        return Err(ApiError::BadParam {
            name: "cursor",
            error: "cursor pages one run: give it with task_id (since lists each run's first limit users)".into(),
        });
    }
    let format = parse_format(q.format.as_deref())?;
    let runs = state
        .blocking(move |s| s.tag_changes(tag_id, &filter))
        .await?;
    if let Some(format) = format {
        let store = Arc::clone(&state.store);
        let body = streamed(move |out| write_changes(store.as_ref(), &runs, format, out));
        return Ok(attachment(body, format, &format!("tag-{tag_id}-changes")));
    }
    let pages: Vec<(RunChanges, Option<u32>)> = state
        .blocking(move |s| runs.iter().map(|r| run_page(s, r, cursor, limit)).collect())
        .await?;
    // Only one run's lists can be continued by one cursor.
    let next_cursor = match one_run {
        true => pages.first().and_then(|(_, n)| *n).map(|n| n.to_string()),
        false => None,
    };
    Ok(Json(Changes {
        success: true,
        tag_id,
        runs: pages.into_iter().map(|(run, _)| run).collect(),
        next_cursor,
    })
    .into_response())
}

/// One run's lists: up to `limit` of its changed users (gained or lost)
/// after `cursor`, by dense index, and the cursor that continues them
/// (none: they ended).
fn run_page(
    store: &dyn Store,
    run: &TagChangeRow,
    cursor: Option<u32>,
    limit: usize,
) -> Result<(RunChanges, Option<u32>), StoreError> {
    let (uidx, next) = page_after(&(&run.added | &run.removed), cursor, limit);
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    for (at, user) in store.indexed_users(&uidx)? {
        match run.added.contains(at) {
            true => added.push(user),
            false => removed.push(user),
        }
    }
    let changes = RunChanges {
        task_id: run.task_id.clone(),
        committed_at: run.committed_at.clone(),
        added_count: run.added.len(),
        removed_count: run.removed.len(),
        added,
        removed,
    };
    Ok((changes, next))
}

/// Every change of `runs` as rows `user_id, change, task_id, committed_at`.
fn write_changes<W: std::io::Write + Send>(
    store: &dyn Store,
    runs: &[TagChangeRow],
    format: Format,
    out: W,
) -> Result<(), ExportError> {
    let columns = ["user_id", "change", "task_id", "committed_at"];
    let mut writer = RowWriter::new(format, &columns, out)?;
    for run in runs {
        for (change, bits) in [("added", &run.added), ("removed", &run.removed)] {
            let row = |user: &str| writer.row(&[user, change, &run.task_id, &run.committed_at]);
            each_member(store, bits, row, &mut |_| {})?;
        }
    }
    writer.finish().map(drop)
}
