//! The HTTP API: one `router()` per resource, one error type that renders
//! the seed's error JSON, and the shared application state.

pub mod auth;
pub mod content;
pub mod health;
pub mod openapi;
pub mod plugins;
pub mod request_id;
pub mod schema;
pub mod swap;
pub mod tags;
pub mod tasks;
pub mod users;

use crate::registry::TagRegistry;
use crate::store::{Store, StoreError};
use crate::tasks::Scheduler;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use std::sync::{Arc, RwLock};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// `local`, `glue-dev` or `glue-prod`.
    pub environment: String,
    /// Persistence (calls block: run them with [`AppState::blocking`]).
    pub store: Arc<dyn Store>,
    /// The task queue.
    pub scheduler: Scheduler,
    /// The loaded tags (swapped whole on reload).
    pub registry: Arc<RwLock<TagRegistry>>,
    /// The plugins directory's last scan, and reloads.
    pub catalog: Arc<crate::catalog::Catalog>,
    /// The API tokens (empty: the API is open).
    pub tokens: Arc<auth::Tokens>,
    /// Largest accepted `user_ids` list.
    pub max_user_ids: usize,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Longest a request may take.
    pub request_timeout: std::time::Duration,
}

impl AppState {
    /// The current registry.
    pub fn tags(&self) -> TagRegistry {
        self.registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs a store call off the async threads.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| ApiError::internal(format!("store call aborted: {e}")))?
            .map_err(ApiError::from)
    }
}

/// An error response: `{success: false, error, message, ...}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: String,
    message: String,
    available_tag_ids: Option<Vec<u32>>,
}

impl ApiError {
    /// An error with an English `error` and a Chinese `message`.
    pub fn new(
        status: StatusCode,
        error: impl Into<String>,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            error: error.into(),
            message: message.into(),
            available_tag_ids: None,
        }
    }

    /// A 400 for invalid input.
    pub fn bad_request(error: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, error, message)
    }

    /// A 404.
    pub fn not_found(error: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, error, message)
    }

    /// A 500: the detail goes to the log (with the request id), the body
    /// says only "internal error" and quotes the id.
    pub fn internal(detail: impl Into<String>) -> ApiError {
        let detail = detail.into();
        tracing::error!(error = %detail, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error",
            "服务器内部错误",
        )
    }

    /// Lists the tag ids that exist (for an unknown tag id).
    pub fn with_available(mut self, ids: Vec<u32>) -> ApiError {
        self.available_tag_ids = Some(ids);
        self
    }
}

impl From<StoreError> for ApiError {
    /// Answers 503: the store's own words (SQL, paths, driver messages) go
    /// to the log; the body says what kind of failure it was and quotes the
    /// request id.
    fn from(e: StoreError) -> ApiError {
        tracing::error!(error = %e, "store error");
        crate::metrics::metrics().store_errors.inc();
        let error = match e {
            StoreError::Unreachable(_) => "the store cannot be reached; retry later",
            _ => "the store failed to answer; retry later",
        };
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error, "存储服务不可用")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = schema::ErrorBody {
            success: false,
            error: self.error,
            message: self.message,
            request_id: request_id::current().filter(|_| self.status.is_server_error()),
            available_tag_ids: self.available_tag_ids,
        };
        (self.status, Json(body)).into_response()
    }
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("Not found: {}", uri.path()), "接口不存在")
}

/// The whole API, behind token authentication when tokens are configured.
pub fn router(state: AppState) -> Router {
    let tokens = Arc::clone(&state.tokens);
    let limit = state.max_body_bytes;
    let patience = state.request_timeout;
    let (api, doc) = utoipa_axum::router::OpenApiRouter::with_openapi(openapi::frame())
        .merge(health::router())
        .merge(plugins::router())
        .merge(tags::router())
        .merge(tasks::router())
        .merge(users::router())
        .split_for_parts();
    api.merge(openapi::route(&openapi::finish(doc, tokens.enabled())))
        .merge(crate::console::router(Arc::clone(&tokens)))
        .fallback(not_found)
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed",
                "请求方法不被允许",
            )
        })
        .with_state(state)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(content::json_bodies_only))
        .layer(axum::middleware::from_fn_with_state(
            limit,
            content::bounded,
        ))
        .layer(axum::middleware::from_fn_with_state(
            patience,
            content::timeout,
        ))
        .layer(axum::middleware::from_fn_with_state(tokens, auth::require))
        .layer(axum::middleware::from_fn(content::json_errors))
        .layer(axum::middleware::from_fn(request_id::assign))
}
