//! A router that can be replaced while the server runs: start-up serves a
//! "waiting for the store" router, then the API once the store answers.

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::json;
use std::convert::Infallible;
use std::sync::{Arc, RwLock};
use tower::ServiceExt;

/// The router in effect, shared by every connection.
#[derive(Clone, Default)]
pub struct SwapRouter {
    current: Arc<RwLock<Router>>,
}

impl SwapRouter {
    /// Serves `router` from the next request on.
    pub fn set(&self, router: Router) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = router;
    }

    /// A router that hands every request to the one in effect.
    pub fn router(&self) -> Router {
        let current = Arc::clone(&self.current);
        Router::new().fallback_service(tower::service_fn(move |request: Request<Body>| {
            let router = current.read().unwrap_or_else(|p| p.into_inner()).clone();
            async move { Ok::<Response, Infallible>(router.oneshot(request).await.into_response()) }
        }))
    }
}

/// What a process serves while its store cannot be reached: `/health` 503
/// with the reason, every other request 503 in the seed's error format.
pub fn waiting(environment: &str, reason: &str) -> Router {
    let health = json!({"status": "unhealthy", "environment": environment, "error": reason});
    let refused = json!({"success": false, "error": reason, "message": "存储服务不可用"});
    Router::new()
        .route(
            "/health",
            axum::routing::get(move || {
                let mut body = health.clone();
                body["timestamp"] = json!(crate::model::now_timestamp());
                async move { (StatusCode::SERVICE_UNAVAILABLE, Json(body)) }
            }),
        )
        .fallback(move || async move { (StatusCode::SERVICE_UNAVAILABLE, Json(refused)) })
}
