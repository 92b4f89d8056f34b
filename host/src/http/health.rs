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
    Router::new().route("/health", get(health))
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
