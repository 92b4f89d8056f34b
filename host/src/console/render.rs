//! Pieces of pages: a rule as a readable condition tree, the bounded diff
//! between two rule versions, ids as URL path segments, short forms of ids
//! and hashes.

use super::diff::{excerpt, line_diff, DiffLine, Shown};
use maud::{html, Markup};
use serde_json::Value;

/// A rule (`{"logic", "conditions"}` groups, `{"field", "operator",
/// "value"}` leaves) as nested lists: `AND` over `total_asset_value ≥
/// 150000`, … Anything else is shown as JSON.
pub fn rule_tree(rule: &Value) -> Markup {
    if let (Some(logic), Some(children)) = (rule["logic"].as_str(), rule["conditions"].as_array()) {
        return html! {
            div.group {
                span.logic { (logic) }
                ul { @for child in children { li { (rule_tree(child)) } } }
            }
        };
    }
    if let (Some(field), Some(operator)) = (rule["field"].as_str(), rule["operator"].as_str()) {
        return html! {
            span.condition {
                code.field { (field) } " " span.operator { (operator) } " "
                code.value { (value_text(&rule["value"])) }
            }
        };
    }
    html! { code { (rule.to_string()) } }
}

fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => format!("\"{s}\""),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Changed lines a diff shows at most; the rest are counted.
pub const DIFF_CHANGED_LINES: usize = 200;

/// Unchanged lines shown around each changed one.
pub const DIFF_CONTEXT: usize = 2;

/// A diff as a `<pre>`: `+`/`-` lines marked, at most
/// [`DIFF_CHANGED_LINES`] of them with [`DIFF_CONTEXT`] lines around each;
/// unchanged stretches and the changed lines beyond those as counts.
pub fn diff_block(old: &str, new: &str) -> Markup {
    let diff = line_diff(old, new);
    html! {
        pre.diff {
            @for shown in excerpt(&diff, DIFF_CONTEXT, DIFF_CHANGED_LINES) {
                @match shown {
                    Shown::Line(DiffLine::Same(l)) => span { "  " (l) "\n" },
                    Shown::Line(DiffLine::Removed(l)) => span.removed { "- " (l) "\n" },
                    Shown::Line(DiffLine::Added(l)) => span.added { "+ " (l) "\n" },
                    Shown::Unchanged(n) => span.unchanged { "  … " (n) " 行未变 unchanged\n" },
                    Shown::More(n) => span.more { "… " (n) " more changed lines / 另有 " (n) " 行改动\n" },
                }
            }
        }
    }
}

/// `text` as one segment of a URL path: every byte but ASCII letters,
/// digits, `-`, `_` and `.` percent-encoded (so `has?query` or `a/b` stay
/// one segment and name the page of exactly that id).
pub fn path_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The first 8 characters of a task id or hash.
pub fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// A rule as indented JSON.
pub fn pretty(rule: &Value) -> String {
    serde_json::to_string_pretty(rule).unwrap_or_else(|_| rule.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_diff_block_caps_its_changed_lines() {
        let old: String = (0..1_000).map(|i| format!("{i}\n")).collect();
        let new: String = (0..1_000).map(|i| format!("{}\n", i + 5_000)).collect();
        let html = diff_block(&old, &new).into_string();
        assert_eq!(
            html.matches("class=\"removed\"").count(),
            DIFF_CHANGED_LINES
        );
        assert!(html.contains("… 1800 more changed lines"), "{html}");
        assert!(diff_block("a\nb", "a\nc").into_string().contains("+ c"));
    }

    #[test]
    fn a_path_segment_keeps_an_id_whole() {
        assert_eq!(path_segment("user_000001"), "user_000001");
        assert_eq!(path_segment("has?query"), "has%3Fquery");
        assert_eq!(path_segment("a/b #1"), "a%2Fb%20%231");
        assert_eq!(path_segment("用户"), "%E7%94%A8%E6%88%B7");
    }

    #[test]
    fn a_rule_tree_shows_groups_and_conditions() {
        let rule = json!({"logic": "AND", "conditions": [
            {"field": "total_asset_value", "operator": ">=", "value": 150000},
            {"logic": "NOT", "conditions": [{"field": "risk_level", "operator": "in", "value": ["high"]}]}
        ]});
        let html = rule_tree(&rule).into_string();
        assert!(html.contains("AND") && html.contains("NOT"), "{html}");
        assert!(
            html.contains("total_asset_value") && html.contains("150000"),
            "{html}"
        );
        assert!(html.contains("[&quot;high&quot;]"), "{html}");
        assert_eq!(short("0123456789"), "01234567");
    }
}
