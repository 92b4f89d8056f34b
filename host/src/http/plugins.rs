//! Plugins: what the last scan found, reloads, and tag ownership transfers.

use super::auth::Caller;
use super::schema::{
    ErrorBody, OwnerRequest, OwnerTransferred, PluginFileBody, PluginTag, PluginsBody,
};
use super::{ApiError, AppState};
use crate::plugins::{LoadReport, Outcome, PluginFile};
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::Json;
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(reload))
        .routes(routes!(transfer))
}

fn file_body(file: &PluginFile) -> PluginFileBody {
    let mut body = PluginFileBody {
        file: file
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned()),
        path: file.path.to_string_lossy().into_owned(),
        sha256: file.sha256.clone(),
        loaded_at: file.loaded_at.clone(),
        status: "loaded".into(),
        plugin: None,
        version: None,
        api_version: None,
        tags: None,
        reason: None,
    };
    match &file.outcome {
        Outcome::Loaded(plugin) => {
            body.plugin = Some(plugin.name.clone());
            body.version = Some(plugin.version.clone());
            body.api_version = Some(plugin.api_version.clone());
            body.tags = Some(
                plugin
                    .tags
                    .iter()
                    .map(|t| PluginTag {
                        tag_id: t.tag_id,
                        task_class: t.task_class.to_string(),
                        description: t.description.to_string(),
                    })
                    .collect(),
            );
        }
        Outcome::Rejected(reason) => {
            body.status = "rejected".into();
            body.reason = Some(reason.to_string());
        }
    }
    body
}

fn report_body(state: &AppState, report: &LoadReport) -> PluginsBody {
    PluginsBody {
        success: true,
        plugins_dir: state.catalog.dir().to_string_lossy().into_owned(),
        loaded: report.loaded().count(),
        rejected: report.rejected().count(),
        files: report.files.iter().map(file_body).collect(),
        message: None,
    }
}

/// `GET /api/v1/plugins`: every file of the last scan, loaded or rejected.
#[utoipa::path(
    get,
    path = "/api/v1/plugins",
    tag = "plugins",
    responses((status = 200, description = "Every file of the last scan", body = PluginsBody))
)]
async fn list(State(state): State<AppState>) -> Json<PluginsBody> {
    let report = state.catalog.report();
    Json(report_body(&state, &report))
}

/// `POST /api/v1/tags/{tag_id}/owner` with `{"plugin": NAME}`: records
/// NAME as the plugin that owns the tag id (an explicit transfer), then
/// reloads, so that plugin's library can serve it.
#[utoipa::path(
    post,
    path = "/api/v1/tags/{tag_id}/owner",
    tag = "plugins",
    params(("tag_id" = u64, Path, minimum = 0, maximum = 4294967295.0, description = "A tag id (loaded or not)")),
    request_body(content = OwnerRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Transferred; the plugins were reloaded", body = OwnerTransferred),
        (status = 400, description = "A tag id that is not a number, or a body without `plugin`", body = ErrorBody),
    )
)]
async fn transfer(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(tag_id): Path<String>,
    body: Bytes,
) -> Result<Json<OwnerTransferred>, ApiError> {
    let tag_id: u32 = tag_id
        .parse()
        .ok()
        .filter(|_| tag_id.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            ApiError::bad_request(
                format!("tag id must be a positive integer, got \"{tag_id}\""),
                "标签ID无效",
            )
        })?;
    let plugin = serde_json::from_slice::<OwnerRequest>(&body)
        .ok()
        .map(|r| r.plugin)
        .filter(|p| !p.trim().is_empty() && p.len() <= 255)
        .ok_or_else(|| {
            ApiError::bad_request(
                "body must be {\"plugin\": NAME}, the plugin crate's name (1 to 255 characters)",
                "请求体必须包含plugin名称",
            )
        })?;
    let name = plugin.clone();
    let previous = state
        .blocking(move |s| s.set_tag_owner(tag_id, &name))
        .await?;
    tracing::warn!(caller = %caller.0, tag_id, owner = %plugin, previous = ?previous, "audit: tag ownership transferred");
    let Json(mut plugins) = reload(State(state), Extension(caller)).await?;
    plugins.message = Some("标签归属已转移，插件已重新加载".into());
    Ok(Json(OwnerTransferred {
        plugins,
        tag_id,
        owner: plugin,
        previous_owner: previous,
    }))
}

/// `POST /api/v1/plugins/reload`: scans the plugins directory again. New
/// and changed libraries load, removed ones stop being offered; tasks
/// already running keep the plugins they started with.
#[utoipa::path(
    post,
    path = "/api/v1/plugins/reload",
    tag = "plugins",
    responses((status = 200, description = "The new scan", body = PluginsBody))
)]
async fn reload(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<PluginsBody>, ApiError> {
    tracing::info!(caller = %caller.0, "audit: plugin reload requested");
    let catalog = Arc::clone(&state.catalog);
    let store = Arc::clone(&state.store);
    let report = tokio::task::spawn_blocking(move || catalog.reload(store.as_ref()))
        .await
        .map_err(|e| ApiError::internal(format!("reload aborted: {e}")))?
        .map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                format!("reload failed, the previous plugins stay: {e:#}"),
                "插件重新加载失败",
            )
        })?;
    tracing::info!(
        loaded = report.loaded().count(),
        rejected = report.rejected().count(),
        "plugins reloaded"
    );
    let mut body = report_body(&state, &report);
    body.message = Some("插件已重新加载".into());
    Ok(Json(body))
}
