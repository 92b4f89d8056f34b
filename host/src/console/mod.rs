//! The web console at `/`: server-rendered pages (maud) over the same state
//! as the API, with a few lines of JavaScript (`assets/app.js`) for the
//! live parts and for actions, which go through the JSON API.
//!
//! With tokens configured, a sign-in form opens a session in the store
//! ([`crate::http::sessions`]) whose random id goes into an HttpOnly,
//! SameSite=Strict cookie (`Secure` when configured); signing out deletes
//! it. Pages without a live session redirect to the form. Admin actions
//! are only shown to admin tokens (and the API refuses them to read tokens
//! anyway). State-changing API calls that authenticate
//! with the cookie must carry `X-Requested-With: tag-console`, a header a
//! page on another site cannot add without a CORS preflight (which this
//! server never grants), on top of the SameSite cookie.
//!
//! Every answer carries [`CONTENT_POLICY`]: scripts and styles only from
//! the console's own files (no inline script, style or handler), no
//! framing; the API's edge adds `nosniff`, `X-Frame-Options` and
//! `Referrer-Policy`.

mod audiences;
pub mod diff;
pub mod history;
mod pages;
pub mod render;
mod task;

use crate::auth::{self, Role};
use crate::http::{sessions, ApiError, AppState};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup, DOCTYPE};

/// Who is looking: what the pages may offer.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// May trigger, cancel, retry, edit rules and reload plugins.
    pub admin: bool,
    /// Tokens are configured (so there is a sign-out button).
    pub signed_in: bool,
    /// The token's name (`anonymous` when the API is open).
    pub name: String,
}

/// The console's content security policy: everything from this server's
/// own files, nothing inline, no plugins, no framing.
pub const CONTENT_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'none'";

/// Pages see a [`Viewer`]; without a live session they go to the sign-in
/// form (when tokens are configured).
async fn viewer(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let public = path == "/signin" || path.starts_with("/console/");
    let viewer = if !state.tokens.enabled() {
        Some(Viewer {
            admin: true,
            signed_in: false,
            name: "anonymous".into(),
        })
    } else {
        let found = match auth::session_id(request.headers()) {
            // The console's own files and the session's endpoint need no one.
            Some(id) if !path.starts_with("/console/") => sessions::resolve(&state, id).await,
            _ => Ok(None),
        };
        match found {
            Ok(found) => found.map(|(name, role)| Viewer {
                admin: role == Role::Admin,
                signed_in: true,
                name,
            }),
            Err(_) if public => None,
            Err(e) => return e.into_response(),
        }
    };
    match viewer {
        Some(viewer) => {
            request.extensions_mut().insert(viewer);
            next.run(request).await
        }
        None if public => next.run(request).await,
        None => Redirect::to("/signin").into_response(),
    }
}

/// The console's routes (the API's authentication leaves paths outside
/// `/api/` to [`viewer`]), each answer with [`CONTENT_POLICY`].
pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/", get(pages::tags))
        .route("/tags/{tag_id}", get(pages::tag))
        .route("/tags/{tag_id}/changes", get(audiences::changes))
        .route("/audiences", get(audiences::audiences))
        .route("/audiences/{name}", get(audiences::audience))
        .route("/tasks", get(pages::tasks))
        .route("/tasks/{task_id}", get(task::task))
        .route("/plugins", get(pages::plugins))
        .route("/users", get(pages::find_user))
        .route("/users/{user_id}", get(pages::user))
        .route("/trigger", get(pages::trigger))
        .route("/signin", get(pages::signin))
        .route("/console/session", post(sign_in).delete(sign_out))
        .route("/console/app.js", get(script))
        .route("/console/style.css", get(style))
        .layer(axum::middleware::from_fn_with_state(state, viewer))
        .layer(axum::middleware::from_fn(content_policy))
}

async fn content_policy(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_POLICY),
    );
    response
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/app.js"),
    )
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/style.css"),
    )
}

/// `POST /console/session` with `{"token": …}`: opens a session and sets
/// its cookie if the token is valid (401 otherwise, 429 from an address
/// that failed too often). Never logged.
async fn sign_in(
    State(state): State<AppState>,
    extensions: axum::http::Extensions,
    body: axum::body::Bytes,
) -> Response {
    let token = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["token"].as_str().map(str::to_string))
        .unwrap_or_default();
    let address = crate::http::middleware::peer(&extensions);
    if let Some(refused) = crate::http::middleware::held_back(&state.throttle, address) {
        return refused;
    }
    match sessions::open(&state, &token).await {
        Ok(cookie) => (
            [(header::SET_COOKIE, cookie)],
            axum::Json(serde_json::json!({"success": true})),
        )
            .into_response(),
        Err(ApiError::InvalidToken) => {
            crate::http::middleware::failed(&state.throttle, address, ApiError::InvalidToken)
        }
        Err(e) => e.into_response(),
    }
}

/// `DELETE /console/session`: ends the session in the store (for every
/// process on it) and clears the cookie.
async fn sign_out(State(state): State<AppState>, headers: header::HeaderMap) -> Response {
    if let Some(id) = auth::session_id(&headers) {
        if let Err(e) = sessions::close(&state, id).await {
            return e.into_response();
        }
    }
    (
        [(
            header::SET_COOKIE,
            auth::cleared_cookie(state.sessions.secure),
        )],
        axum::Json(serde_json::json!({"success": true})),
    )
        .into_response()
}

/// A store read for a page; a failure is an error page.
pub(super) async fn read<T: Send + 'static>(
    state: &AppState,
    viewer: &Viewer,
    f: impl FnOnce(&dyn crate::store::Store) -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, Response> {
    state.blocking(f).await.map_err(|_| {
        error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            viewer,
            "存储服务不可用 / the store failed to answer; retry later",
        )
    })
}

/// The loaded tag a page's path names (`raw`), or the 404 page.
pub(super) fn loaded_tag(
    state: &AppState,
    viewer: &Viewer,
    raw: &str,
) -> Result<std::sync::Arc<tag_plugin_loader::RegisteredTag>, Box<Response>> {
    let registry = state.tags();
    raw.parse::<u32>()
        .ok()
        .and_then(|id| registry.get(id))
        .cloned()
        .ok_or_else(|| {
            Box::new(error_page(
                StatusCode::NOT_FOUND,
                viewer,
                "没有这个标签 / no such tag",
            ))
        })
}

/// A whole page: navigation, title, body.
fn page(title: &str, viewer: &Viewer, body: Markup) -> Html<String> {
    let markup = html! {
        (DOCTYPE)
        html lang="zh" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · tag-engine" }
                link rel="stylesheet" href="/console/style.css";
                script src="/console/app.js" defer {}
            }
            body {
                nav {
                    a.brand href="/" { "tag-engine" }
                    a href="/" { "标签 Tags" }
                    a href="/audiences" { "受众 Audiences" }
                    a href="/tasks" { "任务 Tasks" }
                    a href="/plugins" { "插件 Plugins" }
                    @if viewer.admin { a href="/trigger" { "触发 Trigger" } }
                    form.find action="/users" method="get" {
                        input name="id" placeholder="用户ID / user id" aria-label="user id";
                    }
                    @if viewer.signed_in {
                        span.who { (viewer.name) }
                        button #signout type="button" { "退出 Sign out" }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    };
    Html(markup.into_string())
}

/// An error page with `status`.
fn error_page(status: StatusCode, viewer: &Viewer, message: &str) -> Response {
    let body = html! { p.error { (message) } };
    (status, page(&status.to_string(), viewer, body)).into_response()
}
