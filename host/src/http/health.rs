//! `GET /health`.

use super::AppState;
use crate::model::now_timestamp;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

/// Routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
}

/// `GET /metrics`: Prometheus (OpenMetrics) text. State gauges are read
/// now; a store that does not answer leaves the task gauges as they were.
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
async fn health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let store = std::sync::Arc::clone(&state.store);
    let ping = tokio::task::spawn_blocking(move || store.ping())
        .await
        .unwrap_or_else(|e| {
            Err(crate::store::StoreError::Database(format!(
                "health check aborted: {e}"
            )))
        });
    let mut body = json!({"timestamp": now_timestamp(), "environment": state.environment});
    let rejected = state.catalog.report().rejected().count();
    match ping {
        Ok(()) if rejected > 0 => {
            // Serving, but a plugin file someone dropped in is not.
            body["status"] = json!("degraded");
            body["rejected_plugins"] = json!(rejected);
            (StatusCode::OK, Json(body))
        }
        Ok(()) => {
            body["status"] = json!("healthy");
            (StatusCode::OK, Json(body))
        }
        Err(e) => {
            body["status"] = json!("unhealthy");
            body["error"] = json!(e.to_string());
            (StatusCode::SERVICE_UNAVAILABLE, Json(body))
        }
    }
}
