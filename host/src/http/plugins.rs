//! Plugins: what the last scan found, reloads, and tag ownership transfers.

use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::auth::Caller;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tag_plugin_loader::{LoadReport, Outcome, PluginFile};
use utoipa::ToSchema;
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
        (status = 400, description = "A tag id that is not a number, a body without `plugin`, or a plugin that does not provide the tag", body = ErrorBody),
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
                format!(
                    "tag id must be a positive integer, got \"{}\"",
                    tag_plugin_api::echo::clip(&tag_id)
                ),
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
    let scan = state.catalog.report();
    if !scan.may_own(tag_id, &plugin) {
        return Err(ApiError::BadRequest {
            error: format!(
                "plugin \"{plugin}\" does not provide tag {tag_id} in the plugins directory's last scan (plugins that claim it: {:?}); nothing was changed",
                scan.claimants(tag_id)
            ),
            message: "该插件未提供此标签，归属未变更".into(),
        });
    }
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
        .await?
        .map_err(|e| ApiError::ReloadFailed(format!("{e:#}")))?;
    tracing::info!(
        loaded = report.loaded().count(),
        rejected = report.rejected().count(),
        "plugins reloaded"
    );
    let mut body = report_body(&state, &report);
    body.message = Some("插件已重新加载".into());
    Ok(Json(body))
}

/// A tag a plugin file provides.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PluginTag {
    /// Its id.
    pub tag_id: u32,
    /// The task's name.
    pub task_class: String,
    /// Its name.
    pub description: String,
}

/// One file of the plugins directory.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PluginFileBody {
    /// Its name.
    pub file: Option<String>,
    /// Its path.
    pub path: String,
    /// Hex SHA-256 of its bytes.
    pub sha256: String,
    /// When it was checked (UTC).
    pub loaded_at: String,
    /// `loaded` or `rejected`.
    pub status: String,
    /// The plugin crate's name (loaded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// The plugin crate's version (loaded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The plugin interface version it was built against (loaded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// The tags it serves (loaded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<PluginTag>>,
    /// Why it was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /api/v1/plugins` and `POST /api/v1/plugins/reload`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PluginsBody {
    /// True.
    pub success: bool,
    /// The directory scanned.
    pub plugins_dir: String,
    /// Files loaded.
    pub loaded: usize,
    /// Files rejected.
    pub rejected: usize,
    /// Every file, by name.
    pub files: Vec<PluginFileBody>,
    /// What happened (reload).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `POST /api/v1/tags/{tag_id}/owner`'s body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct OwnerRequest {
    /// The plugin crate's name (1 to 255 characters, not all blank).
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    pub plugin: String,
}

/// `POST /api/v1/tags/{tag_id}/owner`: the transfer, then the reload.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OwnerTransferred {
    /// The reload that followed.
    #[serde(flatten)]
    pub plugins: PluginsBody,
    /// The tag.
    pub tag_id: u32,
    /// Its owner now.
    pub owner: String,
    /// Its owner before (none: it had none).
    pub previous_owner: Option<String>,
}
