//! The trigger body, field by field: each refusal is a 400 that names the
//! field (the seed's texts), which a derived `Deserialize` could not give.

use crate::http::ApiError;
use crate::model::{Mode, Priority, TaskSpec};
use crate::tasks::lifecycle;
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use tag_plugin_api::{echo, Date};
use tag_plugin_loader::TagRegistry;

/// The keys a trigger body may hold.
const KEYS: [&str; 5] = ["tag_ids", "user_ids", "mode", "priority", "as_of"];

/// A value as an error quotes it (clipped: see [`echo::clip`]).
fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{}\"", echo::clip(s)),
        other => echo::clip(&other.to_string()).into_owned(),
    }
}

fn parse_tag_ids(body: &Map<String, Value>) -> Result<Vec<u32>, ApiError> {
    let raw = match body.get("tag_ids") {
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request(
                "tag_ids is required",
                "缺少必需参数: tag_ids",
            ))
        }
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(ApiError::bad_request(
                "tag_ids must not be empty",
                "标签ID列表不能为空",
            ))
        }
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(ApiError::bad_request(
                format!(
                    "tag_ids must be a list of integers, got {}",
                    describe(other)
                ),
                "tag_ids必须是整数列表",
            ))
        }
    };
    let mut ids = BTreeSet::new();
    for (i, item) in raw.iter().enumerate() {
        // JSON `true` is not an integer, and neither is 1.0.
        let id = item
            .as_u64()
            .filter(|_| item.is_number())
            .and_then(|n| u32::try_from(n).ok());
        match id {
            Some(id) => ids.insert(id),
            None => {
                return Err(ApiError::bad_request(
                    format!(
                        "tag_ids must contain only positive integers; item {i} is {}",
                        describe(item)
                    ),
                    "tag_ids必须只包含整数",
                ))
            }
        };
    }
    Ok(ids.into_iter().collect())
}

fn parse_user_ids(body: &Map<String, Value>, max: usize) -> Result<Option<Vec<String>>, ApiError> {
    let items = match body.get("user_ids") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(ApiError::bad_request(
                format!(
                    "user_ids must be a list of strings, got {}",
                    describe(other)
                ),
                "user_ids必须是字符串列表",
            ))
        }
    };
    if items.len() > max {
        return Err(ApiError::bad_request(
            format!("user_ids has {} entries; the maximum is {max}", items.len()),
            format!("user_ids数量超过上限: {max}"),
        ));
    }
    let mut seen = BTreeSet::new();
    let mut ids = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match item.as_str() {
            Some(s) if !s.trim().is_empty() && !s.chars().any(char::is_control) => {
                if seen.insert(s) {
                    ids.push(s.to_string());
                }
            }
            _ => {
                return Err(ApiError::bad_request(
                    format!(
                        "user_ids must contain only non-empty strings without control characters; item {i} is {}",
                        describe(item)
                    ),
                    "user_ids必须只包含非空字符串",
                ))
            }
        }
    }
    if ids.is_empty() {
        return Err(ApiError::bad_request(
            "user_ids must not be empty when given",
            "user_ids不能为空列表",
        ));
    }
    Ok(Some(ids))
}

fn parse_choice<T: std::str::FromStr<Err = String>>(
    body: &Map<String, Value>,
    key: &str,
    zh: &'static str,
) -> Result<Option<T>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        // The refusal quotes the value: a long one is quoted clipped (the
        // clipped text is refused just the same).
        Some(Value::String(s)) => s.parse().map(Some).map_err(|_| {
            let error = echo::clip(s).parse::<T>().err().unwrap_or_default();
            ApiError::bad_request(error, zh)
        }),
        Some(other) => Err(ApiError::bad_request(
            format!("{key} must be a string, got {}", describe(other)),
            zh,
        )),
    }
}

/// A reference date a person could mean: 1900-01-01 to 2200-12-31.
fn plausible_date(date: Date) -> bool {
    let bound = |text: &str| Date::parse(text).map_or(0, |d| d.days());
    (bound("1900-01-01")..=bound("2200-12-31")).contains(&date.days())
}

/// Validates a trigger body into a task spec; every failure is a 400 naming
/// the field (an unknown key, with the known key nearest to it).
pub fn parse_trigger(
    body: &[u8],
    registry: &TagRegistry,
    max_user_ids: usize,
) -> Result<TaskSpec, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "Request body is required",
            "请求体不能为空",
        ));
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::BadJson(e.to_string()))?;
    let Value::Object(body) = value else {
        return Err(ApiError::bad_request(
            format!(
                "Request body must be a JSON object, got {}",
                describe(&value)
            ),
            "请求体必须是JSON对象",
        ));
    };
    if let Some(unknown) = echo::unknown_keys(body.keys().map(String::as_str), &KEYS) {
        return Err(ApiError::bad_request(
            format!("{unknown} (a trigger body takes {})", KEYS.join(", ")),
            "请求体包含未知字段",
        ));
    }
    let tag_ids = parse_tag_ids(&body)?;
    let user_ids = parse_user_ids(&body, max_user_ids)?;
    let mode =
        parse_choice::<Mode>(&body, "mode", "mode必须是full或incremental")?.unwrap_or_default();
    let priority = parse_choice::<Priority>(&body, "priority", "priority必须是low、normal或high")?
        .unwrap_or_default();
    let as_of = match body.get("as_of") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if Date::parse(s).is_some_and(plausible_date) => Some(s.clone()),
        Some(other) => {
            return Err(ApiError::bad_request(
                format!(
                    "as_of must be a YYYY-MM-DD date from 1900-01-01 to 2200-12-31, got {}",
                    describe(other)
                ),
                "as_of必须是1900至2200年之间的YYYY-MM-DD日期",
            ))
        }
    };
    let spec = TaskSpec {
        tag_ids,
        user_ids,
        mode,
        priority,
        as_of,
        retry_of: None,
    };
    lifecycle::check(&spec, registry)?;
    Ok(spec)
}
