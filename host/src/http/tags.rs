//! Tags: `GET /api/v1/tags/available`, and the stored rules.

use super::auth::Caller;
use super::{ApiError, AppState};
use axum::extract::{Extension, Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

/// Routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/tags/available", get(available))
        .route("/api/v1/tags/{tag_id}/rule", get(get_rule).put(put_rule))
}

/// Every loaded tag, ascending by id.
async fn available(State(state): State<AppState>) -> Json<Value> {
    let tags: Vec<Value> = state
        .tags()
        .iter()
        .map(|t| {
            json!({
                "tag_id": t.info.tag_id,
                "task_class": t.info.task_class,
                "description": t.info.description,
                "category": t.info.category,
                "version": t.info.version,
            })
        })
        .collect();
    Json(json!({"success": true, "available_tags": tags}))
}

/// A tag id from the path: 400 if not a number, 404 if no plugin provides it.
pub(crate) fn parse_tag_id(state: &AppState, raw: &str) -> Result<u32, ApiError> {
    // Digits only: `+1`, ` 1` or `01x` are not ids.
    let digits = !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit());
    let id: u32 = raw.parse().ok().filter(|_| digits).ok_or_else(|| {
        ApiError::bad_request(
            format!("tag_id must be a positive integer, got \"{raw}\""),
            "标签ID必须是正整数",
        )
    })?;
    if state.tags().get(id).is_none() {
        return Err(ApiError::not_found(
            format!("Unknown tag_id: {id}"),
            format!("标签不存在: {id}"),
        )
        .with("available_tag_ids", json!(state.tags().ids())));
    }
    Ok(id)
}

/// The current rule and its history.
async fn get_rule(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tag_id = parse_tag_id(&state, &raw)?;
    let history = state.blocking(move |s| s.rule_history(tag_id)).await?;
    let current = history.last().cloned();
    let rule = |r: &crate::store::RuleVersion| json!({"version": r.version, "rule": serde_json::from_str::<Value>(&r.rule).unwrap_or(Value::Null), "created_at": r.created_at, "changed_by": r.changed_by});
    Ok(Json(json!({
        "success": true,
        "tag_id": tag_id,
        "rule": current.as_ref().map(rule),
        "history": history.iter().map(rule).collect::<Vec<_>>(),
    })))
}

/// Replaces the rule (validated by the tag's plugin) as a new version.
async fn put_rule(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let tag_id = parse_tag_id(&state, &raw)?;
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            format!("Request body must be valid JSON: {e}"),
            "请求体必须是有效的JSON",
        )
    })?;
    // Accept either the rule itself or {"rule": {...}}.
    let rule = match value.get("rule") {
        Some(inner) if value.as_object().is_some_and(|o| o.len() == 1) => inner.clone(),
        _ => value,
    };
    let text = rule.to_string();
    let tags = state.tags();
    let tag = tags
        .get(tag_id)
        .ok_or_else(|| ApiError::not_found(format!("Unknown tag_id: {tag_id}"), "标签不存在"))?;
    tag.validate_rule(&text)
        .map_err(|e| ApiError::bad_request(format!("Invalid rule: {e}"), "规则无效"))?;
    let current = state.blocking(move |s| s.current_rule(tag_id)).await?;
    let same = current
        .as_ref()
        .and_then(|c| serde_json::from_str::<Value>(&c.rule).ok())
        .is_some_and(|stored| stored == rule);
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
    Ok(Json(json!({
        "success": true,
        "tag_id": tag_id,
        "changed": changed,
        "rule": {"version": saved.version, "rule": rule, "created_at": saved.created_at},
    })))
}
