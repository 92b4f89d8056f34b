//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document. Each handler
//! carries a `#[utoipa::path]` naming its parameters, body and answers in
//! the body types each resource module declares; the routers register handlers through
//! `utoipa_axum`, so a route exists in the document exactly when it exists
//! in the server. The answers every route can give (the middleware's: 401,
//! 403, 413, 414, 415, 429, 431, 500, 503) are added here, with the `X-Request-Id` header
//! every answer carries.

use super::error::ErrorBody;
use utoipa::openapi::header::Header;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    Content, ObjectBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder, Type,
};
use utoipa::{OpenApi as _, ToSchema};

/// Where the document is served.
pub const PATH: &str = "/api/v1/openapi.json";

/// The document's frame: title, version, the bearer scheme, the error body.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "tag-engine",
        description = "Computes user tags with plugins over parquet data. \
            With tokens configured, `/api/v1` needs `Authorization: Bearer <token>`: \
            GET needs the read role, everything else the admin role.",
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "system", description = "Health, metrics, figures"),
        (name = "tags", description = "Loaded tags and their rules"),
        (name = "tasks", description = "Runs: trigger, status, list, cancel, retry"),
        (name = "results", description = "Who holds which tag"),
        (name = "audiences", description = "Expressions over tags: counts, members, exports, saved audiences, change feeds, overlap"),
        (name = "plugins", description = "Plugin files, reloads, ownership"),
    )
)]
struct Frame;

/// The frame the routers add their paths to.
pub fn frame() -> OpenApi {
    Frame::openapi()
}

/// An error answer in the seed's format.
fn error(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name(ErrorBody::name()))),
        )
        .build()
        .into()
}

/// The answers the middleware gives on `path` for `method`, besides the
/// handler's own.
fn common(path: &str, method: &str) -> Vec<(&'static str, &'static str)> {
    let mut codes = vec![
        (
            "500",
            "Internal error (details in the log, under the quoted request_id)",
        ),
        (
            "503",
            "The store cannot be reached, the queue is full, or the request timed out",
        ),
        ("414", "Request URI longer than 16 KiB"),
        ("431", "Request header fields larger than 64 KiB in all"),
    ];
    if path.starts_with("/api/v1/") && path != PATH {
        codes.push(("400", "Malformed path or query string"));
        codes.push((
            "401",
            "Missing or invalid token (when tokens are configured)",
        ));
        codes.push(("403", "The token's role does not allow this request"));
        codes.push((
            "429",
            "A wrong token from an address that failed too often (see Retry-After)",
        ));
    }
    if matches!(method, "post" | "put") {
        codes.push(("413", "Request body too large"));
        codes.push(("415", "Request body is not application/json"));
    }
    codes
}

/// Adds the common answers, the `X-Request-Id` header and (under `/api/v1`,
/// when tokens are configured) the bearer requirement to every operation.
fn complete(path: &str, method: &str, op: &mut Operation, tokens: bool) {
    for (code, description) in common(path, method) {
        op.responses
            .responses
            .entry(code.to_string())
            .or_insert_with(|| error(description));
    }
    let request_id = Header::new(ObjectBuilder::new().schema_type(Type::String));
    for response in op.responses.responses.values_mut() {
        if let RefOr::T(response) = response {
            response
                .headers
                .insert("X-Request-Id".into(), RefOr::T(request_id.clone()));
        }
    }
    if tokens && path.starts_with("/api/v1/") && path != PATH {
        op.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// The finished document: `paths` (from the routers) completed with what
/// every route shares; `tokens`: whether the server requires them.
pub fn finish(mut doc: OpenApi, tokens: bool) -> OpenApi {
    for (path, item) in doc.paths.paths.iter_mut() {
        let ops = [
            ("get", &mut item.get),
            ("put", &mut item.put),
            ("post", &mut item.post),
            ("delete", &mut item.delete),
        ];
        for (method, op) in ops {
            if let Some(op) = op {
                complete(path, method, op, tokens);
            }
        }
    }
    if let Some(components) = doc.components.as_mut() {
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
    doc
}

/// `GET /api/v1/openapi.json`, serving `doc` (open, like `/health`:
/// clients read it to learn how to authenticate).
pub fn route<S: Clone + Send + Sync + 'static>(doc: &OpenApi) -> axum::Router<S> {
    let text: std::sync::Arc<str> = doc.to_json().unwrap_or_default().into();
    axum::Router::new().route(
        PATH,
        axum::routing::get(move || {
            let text = std::sync::Arc::clone(&text);
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    text.to_string(),
                )
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posts_get_the_body_errors_and_api_routes_the_auth_errors() {
        let post: Vec<_> = common("/api/v1/tags/trigger", "post")
            .iter()
            .map(|c| c.0)
            .collect();
        for code in [
            "400", "401", "403", "413", "414", "415", "429", "431", "500", "503",
        ] {
            assert!(post.contains(&code), "{code} missing from {post:?}");
        }
        let health: Vec<_> = common("/health", "get").iter().map(|c| c.0).collect();
        assert_eq!(health, ["500", "503", "414", "431"]);
    }
}
