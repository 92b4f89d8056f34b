//! Tags: `GET /api/v1/tags/available`, and the stored rules.

use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::auth::Caller;
use crate::model::rule_size;
use axum::extract::{Extension, Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use tag_plugin_loader::RegisteredTag;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(available))
        .routes(routes!(get_rule, put_rule))
}

/// Every loaded tag, ascending by id.
#[utoipa::path(
    get,
    path = "/api/v1/tags/available",
    tag = "tags",
    responses((status = 200, description = "The loaded tags", body = AvailableTags))
)]
async fn available(State(state): State<AppState>) -> Json<AvailableTags> {
    let available_tags = state
        .tags()
        .iter()
        .map(|t| TagInfo {
            tag_id: t.info.tag_id,
            task_class: t.info.task_class.clone(),
            description: t.info.description.clone(),
            category: t.info.category.clone(),
            version: t.info.version.clone(),
            custom_evaluate: t.info.custom_evaluate.clone(),
        })
        .collect();
    Json(AvailableTags {
        success: true,
        available_tags,
    })
}

/// A tag id from the path: 400 if not a number, 404 if no plugin provides it.
pub(crate) fn parse_tag_id(state: &AppState, raw: &str) -> Result<u32, ApiError> {
    // Digits only: `+1`, ` 1` or `01x` are not ids.
    let digits = !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit());
    let id: u32 = raw.parse().ok().filter(|_| digits).ok_or_else(|| {
        ApiError::bad_request(
            format!(
                "tag_id must be a positive integer, got \"{}\"",
                tag_plugin_api::echo::clip(raw)
            ),
            "标签ID必须是正整数",
        )
    })?;
    match state.tags().get(id) {
        Some(_) => Ok(id),
        None => Err(unknown_tag(state, id)),
    }
}

/// 404 for `tag_id`, listing the loaded ids.
fn unknown_tag(state: &AppState, tag_id: u32) -> ApiError {
    ApiError::UnknownTag {
        tag_id,
        available: state.tags().ids(),
    }
}

/// The current rule and its history.
#[utoipa::path(
    get,
    path = "/api/v1/tags/{tag_id}/rule",
    tag = "tags",
    params(("tag_id" = u64, Path, minimum = 0, maximum = 4294967295.0, description = "A loaded tag's id")),
    responses(
        (status = 200, description = "The rule in effect and its history", body = RuleBody),
        (status = 404, description = "No loaded plugin provides the tag", body = ErrorBody),
    )
)]
async fn get_rule(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let tag_id = parse_tag_id(&state, &raw)?;
    let custom_evaluate = state
        .tags()
        .get(tag_id)
        .and_then(|t| t.info.custom_evaluate.clone());
    // Every version, decoded and encoded again: megabytes of JSON for a
    // long history of large rules, so off the async threads.
    let json = state
        .blocking(move |s| {
            let history: Vec<RuleVersionBody> = s
                .rule_history(tag_id)?
                .iter()
                .map(RuleVersionBody::of)
                .collect();
            let body = RuleBody {
                success: true,
                tag_id,
                rule: history.last().cloned(),
                custom_evaluate,
                history,
            };
            Ok(serde_json::to_vec(&body).expect("a rule body encodes"))
        })
        .await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json))
}

/// Replaces the rule (validated by the tag's plugin) as a new version.
#[utoipa::path(
    put,
    path = "/api/v1/tags/{tag_id}/rule",
    tag = "tags",
    params(("tag_id" = u64, Path, minimum = 0, maximum = 4294967295.0, description = "A loaded tag's id")),
    request_body(content = Object, description = "The rule (a condition tree, see tags.md), or `{\"rule\": <rule>}`", content_type = "application/json"),
    responses(
        (status = 200, description = "The rule in effect now", body = RuleReplaced),
        (status = 400, description = "Not JSON, a rule over 20,000 list items in all or 1 MiB encoded, or a rule the tag's plugin refuses", body = ErrorBody),
        (status = 404, description = "No loaded plugin provides the tag", body = ErrorBody),
    )
)]
async fn put_rule(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<RuleReplaced>, ApiError> {
    let tag_id = parse_tag_id(&state, &raw)?;
    // Unloaded since the id was checked: a reload ran in between.
    let tag = state
        .tags()
        .get(tag_id)
        .cloned()
        .ok_or_else(|| unknown_tag(&state, tag_id))?;
    // Decoding, measuring and validating a body of megabytes is CPU work.
    let (rule, text) = tokio::task::spawn_blocking(move || accepted_rule(&tag, &body)).await??;
    let (current, same, rule) = state
        .blocking(move |s| {
            let current = s.current_rule(tag_id)?;
            let same = current
                .as_ref()
                .and_then(|c| serde_json::from_str::<Value>(&c.rule).ok())
                .is_some_and(|stored| stored == rule);
            Ok((current, same, rule))
        })
        .await?;
    // Sending the rule in effect again changes nothing (no new version).
    let (saved, changed) = match current {
        Some(current) if same => (current, false),
        _ => (
            {
                let by = caller.0.clone();
                state
                    .blocking(move |s| s.save_rule(tag_id, &text, &by))
                    .await?
            },
            true,
        ),
    };
    tracing::info!(caller = %caller.0, tag_id, version = saved.version, changed, "audit: rule replaced");
    Ok(Json(RuleReplaced {
        success: true,
        tag_id,
        changed,
        rule: RuleVersionBody {
            version: saved.version,
            rule,
            created_at: saved.created_at,
            changed_by: saved.changed_by,
        },
    }))
}

/// The rule in `body` (the rule itself, or `{"rule": <rule>}`) and its
/// compact text, if it is within the stored rules' size limits and the
/// tag's plugin accepts it.
fn accepted_rule(tag: &RegisteredTag, body: &[u8]) -> Result<(Value, String), ApiError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::BadJson(e.to_string()))?;
    let rule = match value.get("rule") {
        Some(inner) if value.as_object().is_some_and(|o| o.len() == 1) => inner.clone(),
        _ => value,
    };
    let text = rule.to_string();
    let invalid = |e: String| ApiError::bad_request(format!("Invalid rule: {e}"), "规则无效");
    rule_size::check(&rule, text.len()).map_err(invalid)?;
    tag.validate_rule(&text)
        .map_err(|e| invalid(e.to_string()))?;
    Ok((rule, text))
}

/// One loaded tag.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TagInfo {
    /// Its id.
    pub tag_id: u32,
    /// The plugin's name for the task that computes it.
    pub task_class: String,
    /// Its name (Chinese, as the seed has it).
    pub description: String,
    /// Its category.
    pub category: String,
    /// The providing plugin's version.
    pub version: String,
    /// What the tag's code decides beyond its rule tree, when the plugin
    /// says it does more than the tree (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_evaluate: Option<String>,
}

/// `GET /api/v1/tags/available`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AvailableTags {
    /// True.
    pub success: bool,
    /// Ascending by id.
    pub available_tags: Vec<TagInfo>,
}

/// One version of a tag's rule.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RuleVersionBody {
    /// 1 for the plugin's default, +1 per replacement.
    pub version: i64,
    /// The rule (the condition tree of `tags.md`).
    #[schema(value_type = Object)]
    pub rule: Value,
    /// When it was saved (UTC).
    pub created_at: String,
    /// The name of the API token that saved it (none for the default).
    pub changed_by: Option<String>,
}

impl RuleVersionBody {
    /// A stored version (its text was validated when saved).
    pub fn of(stored: &crate::store::RuleVersion) -> RuleVersionBody {
        RuleVersionBody {
            version: stored.version,
            rule: serde_json::from_str(&stored.rule)
                .unwrap_or_else(|_| Value::Object(Default::default())),
            created_at: stored.created_at.clone(),
            changed_by: stored.changed_by.clone(),
        }
    }
}

/// `GET /api/v1/tags/{tag_id}/rule`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RuleBody {
    /// True.
    pub success: bool,
    /// The tag.
    pub tag_id: u32,
    /// The rule in effect.
    pub rule: Option<RuleVersionBody>,
    /// What the tag's code decides beyond this rule tree (null when the
    /// tree is the whole rule): the plugin's own words.
    pub custom_evaluate: Option<String>,
    /// Every version, oldest first.
    pub history: Vec<RuleVersionBody>,
}

/// `PUT /api/v1/tags/{tag_id}/rule`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RuleReplaced {
    /// True.
    pub success: bool,
    /// The tag.
    pub tag_id: u32,
    /// False when the rule sent is the one in effect (no new version).
    pub changed: bool,
    /// The rule now in effect.
    pub rule: RuleVersionBody,
}
