//! The HTTP API: one module per resource (its router, handlers and body
//! types), one error type that renders the seed's error JSON
//! ([`error::ApiError`]), the middleware, and the shared application
//! state. The console's pages are mounted beside these routes where the
//! server is assembled ([`crate::server`]); the API does not know them.

pub mod audiences;
pub mod error;
pub mod middleware;
pub mod openapi;
pub(crate) mod params;
pub mod plugins;
pub mod request_id;
pub mod sessions;
pub mod swap;
pub mod system;
pub mod tags;
pub mod tasks;
pub mod users;

pub use error::ApiError;

use crate::auth::Tokens;
use crate::store::{Store, StoreError};
use crate::tasks::Scheduler;
use axum::Router;
use std::sync::{Arc, RwLock};
use tag_plugin_loader::TagRegistry;

/// What every handler can reach: one shared [`AppParts`]. axum clones the
/// state for every request, so a clone is one reference count, not a copy
/// of each part (measured: with the parts cloned and dropped per request,
/// that was a tenth of a remembered count's CPU).
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    /// The state of a server with these parts.
    pub fn new(parts: AppParts) -> AppState {
        AppState(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct AppParts {
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
    pub tokens: Arc<Tokens>,
    /// Failed authentications per client address.
    pub throttle: Arc<crate::throttle::Throttle>,
    /// Largest accepted `user_ids` list.
    pub max_user_ids: usize,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Longest a request may take.
    pub request_timeout: std::time::Duration,
    /// How the console's sessions are made.
    pub sessions: sessions::Settings,
    /// The tags' bitmaps as served (audiences, overlap).
    pub live: Arc<crate::members::live::Live>,
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
        Ok(tokio::task::spawn_blocking(move || f(store.as_ref())).await??)
    }
}

/// The API's routes and its OpenAPI document (not yet layered: see
/// [`serve`]).
pub fn routes(state: &AppState) -> Router<AppState> {
    let (api, doc) = utoipa_axum::router::OpenApiRouter::with_openapi(openapi::frame())
        .merge(system::router())
        .merge(plugins::router())
        .merge(tags::router())
        .merge(tasks::router())
        .merge(users::router())
        .merge(audiences::router())
        .split_for_parts();
    api.merge(openapi::route(&openapi::finish(
        doc,
        state.tokens.enabled(),
    )))
}

/// `routes` (the API's, and whatever is mounted beside them) behind the
/// API's edge: the JSON 404 and 405, body, URI and header limits, the
/// request timeout, authentication by token or console session (with
/// failures throttled per address), JSON error bodies, security headers
/// and request ids.
pub fn serve(routes: Router<AppState>, state: AppState) -> Router {
    let authenticating = state.clone();
    let limit = state.max_body_bytes;
    let patience = state.request_timeout;
    routes
        .fallback(
            |uri: axum::http::Uri| async move { ApiError::RouteNotFound(uri.path().to_string()) },
        )
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(middleware::json_bodies_only))
        .layer(axum::middleware::from_fn_with_state(
            limit,
            middleware::bounded,
        ))
        .layer(axum::middleware::from_fn_with_state(
            patience,
            middleware::timeout,
        ))
        .layer(axum::middleware::from_fn_with_state(
            authenticating,
            middleware::authenticate,
        ))
        .layer(axum::middleware::from_fn(middleware::json_errors))
        .layer(axum::middleware::from_fn(middleware::catch_panic))
        .layer(axum::middleware::from_fn(middleware::bounded_head))
        .layer(axum::middleware::from_fn(middleware::security_headers))
        .layer(axum::middleware::from_fn(request_id::assign))
}
