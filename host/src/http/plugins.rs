//! Plugins: what the last scan found, reloads, and tag ownership transfers.

use super::auth::Caller;
use super::{ApiError, AppState};
use crate::plugins::{LoadReport, Outcome, PluginFile};
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

/// Routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/plugins", get(list))
        .route("/api/v1/plugins/reload", post(reload))
        .route("/api/v1/tags/{tag_id}/owner", post(transfer))
}

fn file_json(file: &PluginFile) -> Value {
    let mut v = json!({
        "file": file.path.file_name().map(|n| n.to_string_lossy().into_owned()),
        "path": file.path,
        "sha256": file.sha256,
        "loaded_at": file.loaded_at,
    });
    match &file.outcome {
        Outcome::Loaded(plugin) => {
            v["status"] = json!("loaded");
            v["plugin"] = json!(plugin.name);
            v["version"] = json!(plugin.version);
            v["api_version"] = json!(plugin.api_version);
            v["tags"] = plugin
                .tags
                .iter()
                .map(|t| json!({"tag_id": t.tag_id, "task_class": t.task_class, "description": t.description}))
                .collect();
        }
        Outcome::Rejected(reason) => {
            v["status"] = json!("rejected");
            v["reason"] = json!(reason.to_string());
        }
    }
    v
}

fn report_json(state: &AppState, report: &LoadReport) -> Value {
    json!({
        "success": true,
        "plugins_dir": state.catalog.dir(),
        "loaded": report.loaded().count(),
        "rejected": report.rejected().count(),
        "files": report.files.iter().map(file_json).collect::<Vec<_>>(),
    })
}

/// `GET /api/v1/plugins`: every file of the last scan, loaded or rejected.
async fn list(State(state): State<AppState>) -> Json<Value> {
    let report = state.catalog.report();
    Json(report_json(&state, &report))
}

/// `POST /api/v1/tags/{tag_id}/owner` with `{"plugin": NAME}`: records
/// NAME as the plugin that owns the tag id (an explicit transfer), then
/// reloads, so that plugin's library can serve it.
async fn transfer(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(tag_id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
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
    let plugin = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("plugin").and_then(Value::as_str).map(str::to_string))
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
    let Json(mut body) = reload(State(state), Extension(caller)).await?;
    body["tag_id"] = json!(tag_id);
    body["owner"] = json!(plugin);
    body["previous_owner"] = json!(previous);
    body["message"] = json!("标签归属已转移，插件已重新加载");
    Ok(Json(body))
}

/// `POST /api/v1/plugins/reload`: scans the plugins directory again. New
/// and changed libraries load, removed ones stop being offered; tasks
/// already running keep the plugins they started with.
async fn reload(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
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
    let mut body = report_json(&state, &report);
    body["message"] = json!("插件已重新加载");
    Ok(Json(body))
}
