//! The server itself: `GET /health`, `GET /metrics` and
//! `GET /api/v1/system/stats`.

use super::{ApiError, AppState};
use crate::model::now_timestamp;
use crate::tasks::QueueStats;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(metrics))
        .routes(routes!(stats))
}

/// `GET /metrics`: Prometheus (OpenMetrics) text. State gauges are read
/// now; a store that does not answer leaves the task gauges as they were.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "system",
    responses((status = 200, description = "Prometheus metrics (OpenMetrics text)",
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String))
)]
async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    let m = crate::metrics::metrics();
    if let Ok(counts) = state.blocking(|s| s.task_counts()).await {
        for (status, n) in counts {
            let named = crate::metrics::Named { name: status };
            m.tasks.get_or_create(&named).set(n as i64);
        }
    }
    let stats = state.scheduler.stats();
    m.queue_depth.set(stats.queued as i64);
    m.running_tasks.set(stats.running as i64);
    let report = state.catalog.report();
    for (status, n) in [
        ("loaded", report.loaded().count()),
        ("rejected", report.rejected().count()),
    ] {
        let named = crate::metrics::Named {
            name: status.into(),
        };
        m.plugin_files.get_or_create(&named).set(n as i64);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}

/// Healthy when the store answers (degraded, still 200, while a plugin
/// file is rejected); 503 otherwise.
#[utoipa::path(
    get,
    path = "/health",
    tag = "system",
    responses(
        (status = 200, description = "Serving (`healthy`, or `degraded` while a plugin file is rejected)", body = HealthBody),
        (status = 503, description = "The store does not answer (`unhealthy`)", body = HealthBody),
    )
)]
async fn health(State(state): State<AppState>) -> (StatusCode, Json<HealthBody>) {
    let store = std::sync::Arc::clone(&state.store);
    let ping = tokio::task::spawn_blocking(move || store.ping())
        .await
        .unwrap_or_else(|e| {
            Err(crate::store::StoreError::Database(format!(
                "health check aborted: {e}"
            )))
        });
    let mut body = HealthBody {
        status: "healthy".into(),
        timestamp: now_timestamp(),
        environment: state.environment.clone(),
        rejected_plugins: None,
        error: None,
    };
    let rejected = state.catalog.report().rejected().count();
    match ping {
        Ok(()) if rejected > 0 => {
            // Serving, but a plugin file someone dropped in is not.
            body.status = "degraded".into();
            body.rejected_plugins = Some(rejected);
            (StatusCode::OK, Json(body))
        }
        Ok(()) => (StatusCode::OK, Json(body)),
        Err(e) => {
            body.status = "unhealthy".into();
            body.error = Some(e.to_string());
            (StatusCode::SERVICE_UNAVAILABLE, Json(body))
        }
    }
}

/// `GET /api/v1/system/stats`: tasks by status, the queue and its workers.
#[utoipa::path(
    get,
    path = "/api/v1/system/stats",
    tag = "system",
    responses((status = 200, description = "Tasks by status, the queue, tags loaded", body = Stats))
)]
async fn stats(State(state): State<AppState>) -> Result<Json<Stats>, ApiError> {
    let tasks = state.blocking(|s| s.task_counts()).await?;
    Ok(Json(Stats {
        success: true,
        environment: state.environment.clone(),
        tasks,
        queue: state.scheduler.stats(),
        tags_loaded: state.tags().len(),
    }))
}

/// `GET /health`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HealthBody {
    /// `healthy`, `degraded` (serving, but a plugin file was rejected) or
    /// `unhealthy` (the store does not answer; HTTP 503).
    pub status: String,
    /// Now (UTC).
    pub timestamp: String,
    /// `local`, `glue-dev` or `glue-prod`.
    pub environment: String,
    /// Plugin files rejected by the last scan (when degraded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_plugins: Option<usize>,
    /// Why the store is unreachable (when unhealthy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /api/v1/system/stats`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Stats {
    /// True.
    pub success: bool,
    /// `local`, `glue-dev` or `glue-prod`.
    pub environment: String,
    /// Tasks stored, by status.
    pub tasks: BTreeMap<String, u64>,
    /// The queue and its workers.
    pub queue: QueueStats,
    /// Tags the loaded plugins provide.
    pub tags_loaded: usize,
}
