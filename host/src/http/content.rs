//! Request bodies must be JSON: a `POST` or `PUT` with a body in any other
//! media type is refused with 415. A browser page can send `text/plain` or
//! a form cross-origin without a CORS preflight; it cannot send
//! `application/json` that way, so this keeps other sites from triggering
//! runs through a user's browser.

use super::ApiError;
use axum::extract::Request;
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

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
            return ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("request bodies must be Content-Type: application/json (got {shown})"),
                "请求体必须是application/json",
            )
            .into_response();
        }
    }
    next.run(request).await
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
