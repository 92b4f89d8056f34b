//! The API's one error type. Handlers return `Result<_, ApiError>` and end
//! in `?`: the errors of the layers below (store, scheduler, task checks,
//! authentication) convert through `From`, and [`IntoResponse`] renders
//! every variant in the seed's bilingual format, so a status code and its
//! English and Chinese texts are chosen in one place.

use super::request_id;
use crate::auth::Denied;
use crate::model::TaskStatus;
use crate::store::StoreError;
use crate::tasks::lifecycle::UnknownTags;
use crate::tasks::SubmitError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use std::borrow::Cow;
use tag_plugin_api::echo::{self, clip};
use utoipa::ToSchema;

/// Every error answer (the seed's format): `success` is false, `error`
/// says what went wrong in English and `message` in Chinese.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Always false.
    pub success: bool,
    /// What went wrong (English).
    pub error: String,
    /// What went wrong (Chinese).
    pub message: String,
    /// On 5xx answers: the id of the request, which the server's log line
    /// with the details carries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// On an unknown tag id: the ids that exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_tag_ids: Option<Vec<u32>>,
}

/// Why a request failed; each variant is one status and one pair of texts.
#[derive(Debug)]
pub enum ApiError {
    /// 400: a field, parameter or header of the request is not acceptable.
    /// The English names the field and what was wrong with it; the texts
    /// differ per field, so the validating code gives both.
    BadRequest {
        /// What was wrong (English, naming the field).
        error: String,
        /// The same in Chinese.
        message: Cow<'static, str>,
    },
    /// 400: the body is not JSON (the parser's words).
    BadJson(String),
    /// 400: a query parameter such as `limit` or `status` is not valid.
    BadParam {
        /// The parameter.
        name: &'static str,
        /// What was wrong (English).
        error: String,
    },
    /// 400: tags no loaded plugin provides (the answer lists the loaded ids).
    UnknownTags(UnknownTags),
    /// 404: the path names a tag no loaded plugin provides.
    UnknownTag {
        /// The id asked for.
        tag_id: u32,
        /// Every loaded id.
        available: Vec<u32>,
    },
    /// 404: no such task.
    TaskNotFound(String),
    /// 404: the user holds no tag.
    UserNotFound(String),
    /// 404: no saved audience has this name.
    AudienceNotFound(String),
    /// 404: no route has this path.
    RouteNotFound(String),
    /// 405: the path exists, the method does not.
    MethodNotAllowed,
    /// 409: the `Idempotency-Key` came with another body.
    IdempotencyConflict,
    /// 409: only a failed task can be retried.
    NotRetryable {
        /// The task.
        task_id: String,
        /// Its status.
        status: TaskStatus,
    },
    /// 409: a retry's tags are no longer provided by any loaded plugin.
    TagsGone(UnknownTags),
    /// 409: the task to cancel had already finished.
    AlreadyFinished(TaskStatus),
    /// 401: no valid token (the answer names the bearer scheme).
    Unauthorized,
    /// 401: the console's sign-in form got a token that is not ours.
    InvalidToken,
    /// 403: the token's role does not allow the request.
    Forbidden {
        /// The token's name.
        name: String,
        /// Its role.
        role: &'static str,
        /// The role the request needs.
        needs: &'static str,
    },
    /// 413: the body is larger than the limit (bytes).
    PayloadTooLarge(usize),
    /// 415: the body is not JSON (the `Content-Type` sent, or `none`).
    UnsupportedMediaType(String),
    /// 414: the request's URI is longer than this many bytes.
    UriTooLong(usize),
    /// 431: the request's header fields hold more than this many bytes.
    HeadersTooLarge(usize),
    /// 429: too many failed authentications from the caller's address;
    /// the next is let through after this many seconds.
    TooManyFailures(u64),
    /// 4xx or 5xx answered by axum itself (a rejection), rewritten in the
    /// seed's format with its status kept.
    Rejected {
        /// The status axum chose.
        status: StatusCode,
        /// Its reason phrase, with axum's detail for a 4xx.
        error: String,
    },
    /// 503: the queue holds this many tasks already.
    QueueFull(usize),
    /// 503: the server is shutting down.
    ShuttingDown,
    /// 503: the request took longer than the limit (seconds).
    Timeout(u64),
    /// 503: reloading the plugins failed (the previous ones stay).
    ReloadFailed(String),
    /// 503: the store failed; its words go to the log only.
    Store(StoreError),
    /// 500: a bug or an aborted call; the detail goes to the log only.
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError::Store(e)
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> ApiError {
        match e {
            SubmitError::QueueFull(n) => ApiError::QueueFull(n),
            SubmitError::ShuttingDown => ApiError::ShuttingDown,
            SubmitError::Store(e) => ApiError::Store(e),
        }
    }
}

impl From<UnknownTags> for ApiError {
    fn from(e: UnknownTags) -> ApiError {
        ApiError::UnknownTags(e)
    }
}

impl From<Denied> for ApiError {
    fn from(denied: Denied) -> ApiError {
        match denied {
            Denied::Unauthenticated => ApiError::Unauthorized,
            Denied::Forbidden { name, role, needs } => ApiError::Forbidden {
                name,
                role: role.as_str(),
                needs: needs.as_str(),
            },
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    /// A blocking call that panicked or was cancelled.
    fn from(e: tokio::task::JoinError) -> ApiError {
        ApiError::Internal(format!("blocking call aborted: {e}"))
    }
}

impl ApiError {
    /// A 400 with its English and Chinese texts.
    pub fn bad_request(error: impl Into<String>, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::BadRequest {
            error: error.into(),
            message: message.into(),
        }
    }

    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            BadRequest { .. } | BadJson(_) | BadParam { .. } | UnknownTags(_) => {
                StatusCode::BAD_REQUEST
            }
            UnknownTag { .. }
            | TaskNotFound(_)
            | UserNotFound(_)
            | AudienceNotFound(_)
            | RouteNotFound(_) => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            IdempotencyConflict | NotRetryable { .. } | TagsGone(_) | AlreadyFinished(_) => {
                StatusCode::CONFLICT
            }
            Unauthorized | InvalidToken => StatusCode::UNAUTHORIZED,
            Forbidden { .. } => StatusCode::FORBIDDEN,
            PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            UriTooLong(_) => StatusCode::URI_TOO_LONG,
            HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            TooManyFailures(_) => StatusCode::TOO_MANY_REQUESTS,
            Rejected { status, .. } => *status,
            QueueFull(_) | ShuttingDown | Timeout(_) | ReloadFailed(_) | Store(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The English `error` and the Chinese `message`.
    fn texts(&self) -> (String, Cow<'static, str>) {
        use ApiError::*;
        let owned = |s: String| Cow::Owned(s);
        match self {
            BadRequest { error, message } => (error.clone(), message.clone()),
            BadJson(e) => (
                format!("Request body must be valid JSON: {e}"),
                "请求体必须是有效的JSON".into(),
            ),
            BadParam { name, error } => (error.clone(), owned(format!("{name}参数无效"))),
            UnknownTags(e) => (e.to_string(), invalid_tags(e)),
            UnknownTag { tag_id, .. } => (
                format!("Unknown tag_id: {tag_id}"),
                owned(format!("标签不存在: {tag_id}")),
            ),
            TaskNotFound(id) => (
                format!("Task not found: {}", clip(id)),
                owned(format!("任务不存在: {}", clip(id))),
            ),
            UserNotFound(id) => (
                format!("User has no tags: {}", clip(id)),
                owned(format!("该用户没有标签: {}", clip(id))),
            ),
            AudienceNotFound(name) => (
                format!("Audience not found: {}", clip(name)),
                owned(format!("受众不存在: {}", clip(name))),
            ),
            RouteNotFound(path) => (format!("Not found: {}", clip(path)), "接口不存在".into()),
            MethodNotAllowed => ("Method not allowed".into(), "请求方法不被允许".into()),
            other => other.more_texts(),
        }
    }

    /// [`ApiError::texts`] of the conflicts, refusals and failures.
    fn more_texts(&self) -> (String, Cow<'static, str>) {
        use ApiError::*;
        let owned = |s: String| Cow::Owned(s);
        match self {
            IdempotencyConflict => (
                "Idempotency-Key was already used with a different request".into(),
                "Idempotency-Key已被另一个请求使用".into(),
            ),
            NotRetryable { task_id, status } => (
                format!(
                    "Task {task_id} is {}: only a failed task can be retried",
                    status.as_str()
                ),
                "只能重试失败的任务".into(),
            ),
            TagsGone(e) => (
                format!("{e}: no loaded plugin provides them any more"),
                invalid_tags(e),
            ),
            AlreadyFinished(status) => (
                format!("Task already finished: {status}"),
                owned(format!("任务已结束: {status}")),
            ),
            Unauthorized => (
                "missing or invalid API token: send Authorization: Bearer <token>".into(),
                "未授权：缺少或无效的API令牌".into(),
            ),
            InvalidToken => ("invalid API token".into(), "令牌无效".into()),
            Forbidden { name, role, needs } => (
                format!("token {name} has the role {role}; this request needs {needs}"),
                "权限不足".into(),
            ),
            PayloadTooLarge(limit) => (
                format!("request body larger than {limit} bytes"),
                "请求体过大".into(),
            ),
            UnsupportedMediaType(shown) => (
                format!("request bodies must be Content-Type: application/json (got {shown})"),
                "请求体必须是application/json".into(),
            ),
            Rejected { error, .. } => (error.clone(), "请求无效".into()),
            other => other.edge_texts(),
        }
    }

    /// [`ApiError::texts`] of the refusals at the server's edge.
    fn edge_texts(&self) -> (String, Cow<'static, str>) {
        use ApiError::*;
        match self {
            UriTooLong(limit) => (
                format!("request URI longer than {limit} bytes"),
                "请求URI过长".into(),
            ),
            HeadersTooLarge(limit) => (
                format!("request header fields larger than {limit} bytes in all"),
                "请求头过大".into(),
            ),
            TooManyFailures(secs) => (
                format!("too many failed authentications from this address; retry in {secs} s"),
                "认证失败次数过多，请稍后重试".into(),
            ),
            other => other.failure_texts(),
        }
    }

    /// [`ApiError::texts`] of the 5xx answers.
    fn failure_texts(&self) -> (String, Cow<'static, str>) {
        use ApiError::*;
        match self {
            QueueFull(n) => (
                format!("Task queue is full ({n} tasks waiting); retry later"),
                "任务队列已满，请稍后重试".into(),
            ),
            ShuttingDown => ("Server is shutting down".into(), "服务器正在关闭".into()),
            Timeout(secs) => (
                format!("the request took longer than {secs} s; retry later"),
                "请求超时".into(),
            ),
            ReloadFailed(why) => (
                format!("reload failed, the previous plugins stay: {why}"),
                "插件重新加载失败".into(),
            ),
            // The store's own words (SQL, paths, driver messages) stay in
            // the log: the body says only what kind of failure it was.
            Store(StoreError::Unreachable(_)) => (
                "the store cannot be reached; retry later".into(),
                "存储服务不可用".into(),
            ),
            Store(_) => (
                "the store failed to answer; retry later".into(),
                "存储服务不可用".into(),
            ),
            _ => ("internal error".into(), "服务器内部错误".into()),
        }
    }

    /// The loaded tag ids, for the errors about unknown tags.
    fn available(&self) -> Option<Vec<u32>> {
        match self {
            ApiError::UnknownTags(e) | ApiError::TagsGone(e) => Some(e.available.clone()),
            ApiError::UnknownTag { available, .. } => Some(available.clone()),
            _ => None,
        }
    }

    /// Logs what only the log may carry (under the request's id, which the
    /// body quotes) and counts store failures.
    fn log(&self) {
        match self {
            ApiError::Store(e) => {
                tracing::error!(error = %e, "store error");
                crate::metrics::metrics().store_errors.inc();
            }
            ApiError::Internal(detail) => tracing::error!(error = %detail, "internal error"),
            _ => {}
        }
    }
}

/// `无效的标签ID: [7, 8]`.
fn invalid_tags(e: &UnknownTags) -> Cow<'static, str> {
    Cow::Owned(format!("无效的标签ID: {}", echo::list(&e.unknown)))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let status = self.status();
        let (error, message) = self.texts();
        let body = ErrorBody {
            success: false,
            error,
            message: message.into_owned(),
            request_id: request_id::current().filter(|_| status.is_server_error()),
            available_tag_ids: self.available(),
        };
        let mut response = (status, Json(body)).into_response();
        match self {
            ApiError::Unauthorized => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::TooManyFailures(secs) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// The status, `WWW-Authenticate` and JSON body `error` answers with,
    /// rendered as the request with id `req-1` would get it.
    fn render(error: ApiError) -> (StatusCode, Option<String>, Value) {
        let response = request_id::scope_for_tests("req-1".into(), || error.into_response());
        let status = response.status();
        let challenge = response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .map(|v| v.to_str().unwrap().to_string());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = runtime
            .block_on(axum::body::to_bytes(response.into_body(), 1 << 16))
            .unwrap();
        (status, challenge, serde_json::from_slice(&bytes).unwrap())
    }

    /// The seed's body: no `request_id` below 500, no `available_tag_ids`
    /// unless given.
    fn body(error: &str, message: &str) -> Value {
        json!({"success": false, "error": error, "message": message})
    }

    /// Each error answers with its status and body (and no bearer challenge).
    fn check<const N: usize>(cases: [(ApiError, u16, Value); N]) {
        for (error, status, expected) in cases {
            let (got, challenge, json) = render(error);
            assert_eq!(got.as_u16(), status, "{expected}");
            assert_eq!(json, expected);
            assert_eq!(challenge, None);
        }
    }

    fn unknown() -> UnknownTags {
        UnknownTags {
            unknown: vec![7, 8],
            available: vec![1, 2],
        }
    }

    #[test]
    fn client_errors_render_their_status_and_both_texts() {
        let cases = [
            (
                ApiError::bad_request("tag_ids is required", "缺少必需参数: tag_ids"),
                400,
                body("tag_ids is required", "缺少必需参数: tag_ids"),
            ),
            (
                ApiError::BadJson("EOF".into()),
                400,
                body(
                    "Request body must be valid JSON: EOF",
                    "请求体必须是有效的JSON",
                ),
            ),
            (
                ApiError::BadParam {
                    name: "limit",
                    error: "limit must be an integer".into(),
                },
                400,
                body("limit must be an integer", "limit参数无效"),
            ),
            (
                ApiError::TaskNotFound("t1".into()),
                404,
                body("Task not found: t1", "任务不存在: t1"),
            ),
            (
                ApiError::UserNotFound("u1".into()),
                404,
                body("User has no tags: u1", "该用户没有标签: u1"),
            ),
            (
                ApiError::RouteNotFound("/nope".into()),
                404,
                body("Not found: /nope", "接口不存在"),
            ),
            (
                ApiError::MethodNotAllowed,
                405,
                body("Method not allowed", "请求方法不被允许"),
            ),
        ];
        check(cases);
    }

    #[test]
    fn refusals_and_conflicts_render_their_status_and_both_texts() {
        let cases = [
            (
                ApiError::IdempotencyConflict,
                409,
                body(
                    "Idempotency-Key was already used with a different request",
                    "Idempotency-Key已被另一个请求使用",
                ),
            ),
            (
                ApiError::NotRetryable {
                    task_id: "t1".into(),
                    status: TaskStatus::Completed,
                },
                409,
                body(
                    "Task t1 is completed: only a failed task can be retried",
                    "只能重试失败的任务",
                ),
            ),
            (
                ApiError::AlreadyFinished(TaskStatus::Cancelled),
                409,
                body("Task already finished: cancelled", "任务已结束: cancelled"),
            ),
            (
                ApiError::InvalidToken,
                401,
                body("invalid API token", "令牌无效"),
            ),
            (
                ApiError::Forbidden {
                    name: "ci".into(),
                    role: "read",
                    needs: "admin",
                },
                403,
                body(
                    "token ci has the role read; this request needs admin",
                    "权限不足",
                ),
            ),
            (
                ApiError::PayloadTooLarge(10),
                413,
                body("request body larger than 10 bytes", "请求体过大"),
            ),
            (
                ApiError::UnsupportedMediaType("text/plain".into()),
                415,
                body(
                    "request bodies must be Content-Type: application/json (got text/plain)",
                    "请求体必须是application/json",
                ),
            ),
            (
                ApiError::Rejected {
                    status: StatusCode::URI_TOO_LONG,
                    error: "URI Too Long".into(),
                },
                414,
                body("URI Too Long", "请求无效"),
            ),
        ];
        check(cases);
    }

    #[test]
    fn unknown_tags_list_the_loaded_ids() {
        let mut expected = body("Invalid tag_ids: [7, 8]", "无效的标签ID: [7, 8]");
        expected["available_tag_ids"] = json!([1, 2]);
        assert_eq!(
            render(unknown().into()),
            (StatusCode::BAD_REQUEST, None, expected)
        );

        let mut expected = body(
            "Invalid tag_ids: [7, 8]: no loaded plugin provides them any more",
            "无效的标签ID: [7, 8]",
        );
        expected["available_tag_ids"] = json!([1, 2]);
        assert_eq!(
            render(ApiError::TagsGone(unknown())),
            (StatusCode::CONFLICT, None, expected)
        );

        let mut expected = body("Unknown tag_id: 9", "标签不存在: 9");
        expected["available_tag_ids"] = json!([1]);
        let error = ApiError::UnknownTag {
            tag_id: 9,
            available: vec![1],
        };
        assert_eq!(render(error), (StatusCode::NOT_FOUND, None, expected));
    }

    #[test]
    fn unauthorized_names_the_bearer_scheme() {
        let (status, challenge, json) = render(Denied::Unauthenticated.into());
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(challenge.as_deref(), Some("Bearer"));
        assert_eq!(
            json,
            body(
                "missing or invalid API token: send Authorization: Bearer <token>",
                "未授权：缺少或无效的API令牌",
            )
        );
    }

    #[test]
    fn server_errors_quote_the_request_id_and_keep_details_in_the_log() {
        let with_id = |error: &str, message: &str| {
            let mut b = body(error, message);
            b["request_id"] = json!("req-1");
            b
        };
        let cases = [
            (
                SubmitError::QueueFull(3).into(),
                503,
                with_id(
                    "Task queue is full (3 tasks waiting); retry later",
                    "任务队列已满，请稍后重试",
                ),
            ),
            (
                SubmitError::ShuttingDown.into(),
                503,
                with_id("Server is shutting down", "服务器正在关闭"),
            ),
            (
                SubmitError::Store(StoreError::Database("SELECT 1".into())).into(),
                503,
                with_id("the store failed to answer; retry later", "存储服务不可用"),
            ),
            (
                StoreError::Unreachable("10.0.0.1 refused".into()).into(),
                503,
                with_id("the store cannot be reached; retry later", "存储服务不可用"),
            ),
            (
                ApiError::Timeout(30),
                503,
                with_id("the request took longer than 30 s; retry later", "请求超时"),
            ),
            (
                ApiError::ReloadFailed("disk".into()),
                503,
                with_id(
                    "reload failed, the previous plugins stay: disk",
                    "插件重新加载失败",
                ),
            ),
            (
                ApiError::Internal("/work/secret.rs:1".into()),
                500,
                with_id("internal error", "服务器内部错误"),
            ),
            (
                ApiError::Rejected {
                    status: StatusCode::BAD_GATEWAY,
                    error: "Bad Gateway".into(),
                },
                502,
                with_id("Bad Gateway", "请求无效"),
            ),
        ];
        check(cases);
    }
}
