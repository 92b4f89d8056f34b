//! The API's edge, in the order a request meets it: every answer gets the
//! security headers, an over-long URI or over-large header fields are
//! refused, a panic becomes a 500, every error answer is the seed's JSON,
//! the caller must authenticate (a bearer token or a console session),
//! requests are bounded in time, and bodies must be JSON of bounded size.
//!
//! A `POST` or `PUT` with a body in any other media type is refused with 415. A browser page can send `text/plain` or
//! a form cross-origin without a CORS preflight; it cannot send
//! `application/json` that way, so this keeps other sites from triggering
//! runs through a user's browser.

use super::{ApiError, AppState};
use crate::auth::{self, Caller, Denied};
use crate::throttle::Throttle;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, Extensions, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;

/// Whether a `Content-Type` value names JSON (`application/json`, with
/// parameters, or an `application/*+json` type).
fn is_json(value: &str) -> bool {
    let media = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// Whether the request carries a body.
fn has_body(request: &Request) -> bool {
    let headers = request.headers();
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

/// The middleware: 415 for a non-JSON body on a method that takes one.
pub async fn json_bodies_only(request: Request, next: Next) -> Response {
    let takes_body = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH
    );
    if takes_body && has_body(&request) {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !is_json(content_type) {
            let shown = if content_type.is_empty() {
                "none"
            } else {
                content_type
            };
            return ApiError::UnsupportedMediaType(shown.to_string()).into_response();
        }
    }
    next.run(request).await
}

/// Longest request URI (path and query) accepted, in bytes: below hyper's
/// own limit (64 KiB), which it answers with an empty body.
pub const MAX_URI_BYTES: usize = 16 * 1024;
/// Most bytes of header fields (names, values and their separators) a
/// request may carry: below hyper's own limit (about 400 KiB), which it
/// answers with an empty body.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The middleware: 414 for a URI longer than [`MAX_URI_BYTES`] and 431
/// for header fields over [`MAX_HEADER_BYTES`], in the seed's format.
pub async fn bounded_head(request: Request, next: Next) -> Response {
    let uri = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if uri > MAX_URI_BYTES {
        return ApiError::UriTooLong(MAX_URI_BYTES).into_response();
    }
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if headers > MAX_HEADER_BYTES {
        return ApiError::HeadersTooLarge(MAX_HEADER_BYTES).into_response();
    }
    next.run(request).await
}

/// The middleware: a body declared larger than `limit` bytes answers 413
/// before it is read (a larger chunked body is cut off by axum's own limit).
pub async fn bounded(State(limit): State<usize>, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return ApiError::PayloadTooLarge(limit).into_response();
    }
    next.run(request).await
}

/// The middleware: an error answer that is not JSON (axum's own
/// rejections: body too large, a path that is not UTF-8, a malformed query
/// string) is rewritten in the seed's error format, keeping its status.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // JSON already, or one of the console's HTML pages.
    let answered = is_json(content_type) || content_type.starts_with("text/html");
    if !(status.is_client_error() || status.is_server_error()) || answered {
        return response;
    }
    let detail = match axum::body::to_bytes(response.into_body(), 4096).await {
        Ok(bytes) if !bytes.is_empty() => String::from_utf8_lossy(&bytes).trim().to_string(),
        _ => String::new(),
    };
    let reason = status.canonical_reason().unwrap_or("error");
    let error = if detail.is_empty() || status.is_server_error() {
        reason.to_string()
    } else {
        format!("{reason}: {detail}")
    };
    ApiError::Rejected { status, error }.into_response()
}

/// The middleware: a request not answered within `limit` gets 503 in the
/// seed's format (the work it started, such as a store call, finishes or
/// fails on its own; nothing half-done is committed by an API call).
pub async fn timeout(
    State(limit): State<std::time::Duration>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(limit_secs = limit.as_secs(), "request timed out");
            ApiError::Timeout(limit.as_secs()).into_response()
        }
    }
}

/// Paths anyone may call: everything outside `/api/` (`/health`,
/// `/metrics`, and the console's pages, which check their session
/// themselves and send the browser to the sign-in form), and the API's
/// description (clients read it to learn how to authenticate).
fn open_path(path: &str) -> bool {
    !path.starts_with("/api/") || path == super::openapi::PATH
}

/// The address the request came from (the server is served with its
/// connection info; a router driven without it has none).
pub fn peer(extensions: &Extensions) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.ip())
}

/// The answer to a failed authentication from `address`: `error` (a 401),
/// or 429 once the address has used up its failures (see [`Throttle`]).
pub fn failed(throttle: &Throttle, address: Option<IpAddr>, error: ApiError) -> Response {
    let Some(address) = address else {
        return error.into_response();
    };
    match throttle.fail(address) {
        Ok(()) => error.into_response(),
        Err(retry_after) => {
            // Every refusal has its access line already (status 429).
            tracing::debug!(peer = %address, retry_after, "too many failed authentications");
            ApiError::TooManyFailures(retry_after).into_response()
        }
    }
}

/// 429 for a token sent from an address that has used up its failures,
/// before the token is checked (see [`Throttle`]); `None` otherwise.
pub fn held_back(throttle: &Throttle, address: Option<IpAddr>) -> Option<Response> {
    let retry_after = throttle.blocked(address?)?;
    Some(ApiError::TooManyFailures(retry_after).into_response())
}

/// The middleware: 401 without a valid token or console session, 403
/// without the role (see [`auth::authenticate`]), 429 for any token or
/// session from an address that has failed too often; the caller goes into
/// the request for the audit lines and onto the response for the access
/// log.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let caller = if open_path(request.uri().path()) {
        Caller("anonymous".into())
    } else {
        let (method, headers) = (request.method(), request.headers());
        if auth::presents_token(method, headers) {
            if let Some(refused) = held_back(&state.throttle, peer(request.extensions())) {
                return refused;
            }
        }
        let session = match super::sessions::of_request(&state, method, headers).await {
            Ok(session) => session,
            Err(e) => return e.into_response(),
        };
        let path = request.uri().path();
        match auth::authenticate(&state.tokens, (method, path), headers, session.as_ref()) {
            Ok(caller) => caller,
            // A wrong token counts against the address; no token at all
            // guesses nothing and does not.
            Err(Denied::Unauthenticated)
                if auth::presents_token(request.method(), request.headers()) =>
            {
                let address = peer(request.extensions());
                return failed(&state.throttle, address, ApiError::Unauthorized);
            }
            Err(denied) => return ApiError::from(denied).into_response(),
        }
    };
    request.extensions_mut().insert(caller.clone());
    let mut response = next.run(request).await;
    response.extensions_mut().insert(caller);
    response
}

/// The middleware: headers every answer carries unless it set its own
/// (the console sets its pages' policy): no guessing of content types, no
/// framing by any page, no referrer sent on, and a content policy under
/// which a JSON or text answer opened in a browser loads nothing.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'",
        ),
    ] {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    response
}

/// The middleware: a panic in a handler becomes a 500 in the seed's format
/// (quoting the request id) instead of a dropped connection.
pub async fn catch_panic(request: Request, next: Next) -> Response {
    match AssertUnwindSafe(next.run(request)).catch_unwind().await {
        Ok(response) => response,
        Err(payload) => {
            let message = crate::tasks::control::panic_message(payload.as_ref());
            ApiError::Internal(format!("a request handler panicked: {message}")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn json_media_types_are_recognised() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
        assert!(!is_json(""));
    }
}
