//! Pieces of pages: a rule as a readable condition tree, a line diff
//! between two rule versions, short forms of ids and hashes.

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

/// One line of a diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiffLine<'a> {
    /// In both.
    Same(&'a str),
    /// Only in the old text.
    Removed(&'a str),
    /// Only in the new text.
    Added(&'a str),
}

/// The lines of `old` and `new`, in order, marked by which side has them
/// (a longest-common-subsequence diff; rules are short).
pub fn line_diff<'a>(old: &'a str, new: &'a str) -> Vec<DiffLine<'a>> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // common[i][j]: longest common run of a[i..] and b[j..].
    let mut common = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            common[i][j] = if a[i] == b[j] {
                common[i + 1][j + 1] + 1
            } else {
                common[i + 1][j].max(common[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        if a[i] == b[j] {
            out.push(DiffLine::Same(a[i]));
            (i, j) = (i + 1, j + 1);
        } else if common[i + 1][j] >= common[i][j + 1] {
            out.push(DiffLine::Removed(a[i]));
            i += 1;
        } else {
            out.push(DiffLine::Added(b[j]));
            j += 1;
        }
    }
    out.extend(a[i..].iter().map(|l| DiffLine::Removed(l)));
    out.extend(b[j..].iter().map(|l| DiffLine::Added(l)));
    out
}

/// A diff as a `<pre>`, `+`/`-` lines marked.
pub fn diff_block(old: &str, new: &str) -> Markup {
    html! {
        pre.diff {
            @for line in line_diff(old, new) {
                @match line {
                    DiffLine::Same(l) => span { "  " (l) "\n" },
                    DiffLine::Removed(l) => span.removed { "- " (l) "\n" },
                    DiffLine::Added(l) => span.added { "+ " (l) "\n" },
                }
            }
        }
    }
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
    fn a_changed_threshold_is_one_line_out_and_one_in() {
        let old = pretty(&json!({"field": "cash", "operator": ">=", "value": 1}));
        let new = pretty(&json!({"field": "cash", "operator": ">=", "value": 2}));
        let diff = line_diff(&old, &new);
        let changed: Vec<_> = diff
            .iter()
            .filter(|l| !matches!(l, DiffLine::Same(_)))
            .collect();
        assert_eq!(
            changed,
            vec![
                &DiffLine::Removed("  \"value\": 1"),
                &DiffLine::Added("  \"value\": 2")
            ]
        );
        assert_eq!(
            line_diff("a\nb", "a\nb\nc").last(),
            Some(&DiffLine::Added("c"))
        );
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
