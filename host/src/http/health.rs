//! `GET /health`.

use super::schema::HealthBody;
use super::AppState;
use crate::model::now_timestamp;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(metrics))
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
