//! Every request gets an id: taken from a well-formed `X-Request-Id` header
//! or made up, echoed in the response's `X-Request-Id`, attached to every
//! log line of the request, and quoted in the body of an internal or store
//! error (whose detail goes only to the log). Each request ends with an
//! access log line (target `access`): method, path, status, duration,
//! caller (the token's name) and request id.

use crate::auth::Caller;
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being served, if any.
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(|id| id.clone()).ok()
}

/// A caller-given id is kept when it is 1 to 64 letters, digits, `-` or `_`.
fn given(request: &Request) -> Option<String> {
    let id = request.headers().get("x-request-id")?.to_str().ok()?;
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then(|| id.to_string())
}

/// The middleware.
pub async fn assign(request: Request, next: Next) -> Response {
    let id = given(&request).unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let started = std::time::Instant::now();
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let span = tracing::info_span!("request", request_id = %id);
    let mut response = REQUEST_ID
        .scope(id.clone(), next.run(request).instrument(span))
        .await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    let m = crate::metrics::metrics();
    let status = response.status().as_u16();
    m.http_requests
        .get_or_create(&crate::metrics::RouteStatus {
            route: route.clone(),
            status,
        })
        .inc();
    m.http_duration
        .get_or_create(&crate::metrics::Route { route })
        .observe(started.elapsed().as_secs_f64());
    let caller = response
        .extensions()
        .get::<Caller>()
        .map_or("-", |c| c.0.as_str());
    tracing::info!(
        target: "access",
        request_id = %id,
        %method,
        path = %path,
        status = response.status().as_u16(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        caller = %caller,
        "request"
    );
    response
}

/// Runs `f` as if serving the request `id` (for tests of what a response
/// quotes).
#[cfg(test)]
pub fn scope_for_tests<T>(id: String, f: impl FnOnce() -> T) -> T {
    REQUEST_ID.sync_scope(id, f)
}
