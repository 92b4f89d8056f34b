//! The rule language through the SDK's public interface: every operator,
//! nesting, NOT, SQL null logic, and errors that point at the condition.

use serde_json::json;
use tag_plugin_api::owned::OwnedBatch;
use tag_plugin_api::{Batch, ColumnType, Date, Rule, Schema};

const AS_OF: &str = "2025-01-15";

fn as_of() -> Date {
    Date::parse(AS_OF).unwrap()
}

/// Five rows covering each column type, with a null in every column.
fn batch() -> OwnedBatch {
    OwnedBatch::new()
        .float64(
            "amount",
            &[Some(100.0), Some(150.0), None, Some(-5.5), Some(150.0)],
        )
        .int32("count", &[Some(10), Some(11), Some(0), None, Some(30)])
        .int64("big", &[Some(1), Some(2), Some(3), Some(4), None])
        .string(
            "level",
            &[Some("VIP2"), Some("vip2"), Some("GOLD"), None, Some("VIP3")],
        )
        .date(
            "day",
            &[
                Some("2025-01-15"),
                Some("2025-01-08"),
                Some("2025-01-07"),
                None,
                Some("2024-12-16"),
            ],
        )
        .timestamp(
            "seen",
            &[
                Some(1_736_899_200_000_000),
                Some(1_736_899_199_999_999),
                None,
                Some(0),
                Some(1_736_985_599_999_999),
            ],
        )
        .boolean(
            "flag",
            &[Some(true), Some(false), None, Some(true), Some(false)],
        )
}

fn eval(rule: serde_json::Value) -> Vec<bool> {
    let owned = batch();
    owned.with_ffi(|ffi| {
        let batch = Batch::new(ffi).unwrap();
        Rule::from_json(&rule)
            .unwrap()
            .evaluate(&batch, as_of())
            .unwrap()
            .to_bools()
    })
}

fn cond(field: &str, op: &str, value: serde_json::Value) -> serde_json::Value {
    json!({"field": field, "operator": op, "value": value})
}

fn rows(bits: &[u8]) -> Vec<bool> {
    bits.iter().map(|&b| b == 1).collect()
}

#[test]
fn numeric_comparisons_treat_null_as_unknown() {
    assert_eq!(
        eval(cond("amount", "=", json!(150))),
        rows(&[0, 1, 0, 0, 1])
    );
    assert_eq!(
        eval(cond("amount", "!=", json!(150))),
        rows(&[1, 0, 0, 1, 0])
    );
    assert_eq!(
        eval(cond("amount", ">", json!(100))),
        rows(&[0, 1, 0, 0, 1])
    );
    assert_eq!(
        eval(cond("amount", ">=", json!(100))),
        rows(&[1, 1, 0, 0, 1])
    );
    assert_eq!(
        eval(cond("amount", "<", json!(100))),
        rows(&[0, 0, 0, 1, 0])
    );
    assert_eq!(
        eval(cond("amount", "<=", json!(100))),
        rows(&[1, 0, 0, 1, 0])
    );
    assert_eq!(eval(cond("count", ">", json!(10))), rows(&[0, 1, 0, 0, 1]));
    assert_eq!(
        eval(cond("count", ">", json!(10.5))),
        rows(&[0, 1, 0, 0, 1])
    );
    assert_eq!(eval(cond("big", "<=", json!(3))), rows(&[1, 1, 1, 0, 0]));
}

#[test]
fn lists_and_ranges_on_numbers() {
    assert_eq!(
        eval(cond("count", "in", json!([10, 30]))),
        rows(&[1, 0, 0, 0, 1])
    );
    assert_eq!(
        eval(cond("count", "not_in", json!([10, 30]))),
        rows(&[0, 1, 1, 0, 0])
    );
    assert_eq!(
        eval(cond("count", "in_range", json!([10, 11]))),
        rows(&[1, 1, 0, 0, 0])
    );
    assert_eq!(
        eval(cond("count", "not_in_range", json!([10, 11]))),
        rows(&[0, 0, 1, 0, 1])
    );
    assert_eq!(
        eval(cond("amount", "in_range", json!([-5.5, 100]))),
        rows(&[1, 0, 0, 1, 0])
    );
}

#[test]
fn string_operators_are_exact_and_case_sensitive() {
    assert_eq!(
        eval(cond("level", "=", json!("VIP2"))),
        rows(&[1, 0, 0, 0, 0])
    );
    assert_eq!(
        eval(cond("level", "!=", json!("VIP2"))),
        rows(&[0, 1, 1, 0, 1])
    );
    assert_eq!(
        eval(cond("level", "in", json!(["VIP2", "VIP3"]))),
        rows(&[1, 0, 0, 0, 1])
    );
    assert_eq!(
        eval(cond("level", "not_in", json!(["VIP2", "VIP3"]))),
        rows(&[0, 1, 1, 0, 0])
    );
    assert_eq!(
        eval(cond("level", "contains", json!("IP"))),
        rows(&[1, 0, 0, 0, 1])
    );
    assert_eq!(
        eval(cond("level", "not_contains", json!("IP"))),
        rows(&[0, 1, 1, 0, 0])
    );
    assert_eq!(
        eval(cond("level", "starts_with", json!("VIP"))),
        rows(&[1, 0, 0, 0, 1])
    );
    assert_eq!(
        eval(cond("level", "ends_with", json!("2"))),
        rows(&[1, 1, 0, 0, 0])
    );
    assert_eq!(
        eval(cond("level", ">", json!("VIP2"))),
        rows(&[0, 1, 0, 0, 1])
    );
}

#[test]
fn date_operators_use_as_of() {
    // as_of is 2025-01-15: recent_days 7 is [01-08, 01-15].
    assert_eq!(
        eval(cond("day", "recent_days", json!(7))),
        rows(&[1, 1, 0, 0, 0])
    );
    assert_eq!(
        eval(cond("day", "recent_days", json!(30))),
        rows(&[1, 1, 1, 0, 1])
    );
    assert_eq!(
        eval(cond("day", "days_ago_between", json!([7, 8]))),
        rows(&[0, 1, 1, 0, 0])
    );
    assert_eq!(
        eval(cond(
            "day",
            "date_in_range",
            json!(["2025-01-07", "2025-01-08"])
        )),
        rows(&[0, 1, 1, 0, 0])
    );
    assert_eq!(
        eval(cond("day", ">=", json!("2025-01-08"))),
        rows(&[1, 1, 0, 0, 0])
    );
    assert_eq!(
        eval(cond("day", "=", json!("2024-12-16"))),
        rows(&[0, 0, 0, 0, 1])
    );
    assert_eq!(
        eval(cond(
            "day",
            "not_in_range",
            json!(["2025-01-01", "2025-12-31"])
        )),
        rows(&[0, 0, 0, 0, 1])
    );
}

#[test]
fn timestamps_compare_by_their_utc_date() {
    // Row 0 is 2025-01-15T00:00:00, row 1 one microsecond earlier (01-14),
    // row 4 the last microsecond of 2025-01-15.
    assert_eq!(
        eval(cond("seen", "=", json!("2025-01-15"))),
        rows(&[1, 0, 0, 0, 1])
    );
    assert_eq!(
        eval(cond("seen", "recent_days", json!(0))),
        rows(&[1, 0, 0, 0, 1])
    );
    assert_eq!(
        eval(cond("seen", "<", json!("2025-01-15"))),
        rows(&[0, 1, 0, 1, 0])
    );
}

#[test]
fn boolean_and_null_operators_are_never_unknown() {
    let f = |op: &str| eval(json!({"field": "flag", "operator": op}));
    assert_eq!(f("is_true"), rows(&[1, 0, 0, 1, 0]));
    assert_eq!(f("is_false"), rows(&[0, 1, 0, 0, 1]));
    assert_eq!(f("is_null"), rows(&[0, 0, 1, 0, 0]));
    assert_eq!(f("is_not_null"), rows(&[1, 1, 0, 1, 1]));
    assert_eq!(eval(cond("flag", "=", json!(true))), rows(&[1, 0, 0, 1, 0]));
    assert_eq!(
        eval(cond("flag", "!=", json!(true))),
        rows(&[0, 1, 0, 0, 1])
    );
    // NOT of is_null is definite even on the null row.
    assert_eq!(
        eval(json!({"logic": "NOT", "conditions": [{"field": "amount", "operator": "is_null"}]})),
        rows(&[1, 1, 0, 1, 1])
    );
}

#[test]
fn groups_nest_and_follow_three_valued_logic() {
    // Row 2 has amount null: (null > 0) AND (count = 0) is unknown, not true.
    let and = json!({"logic": "AND", "conditions": [cond("amount", ">", json!(0)), cond("count", "=", json!(0))]});
    assert_eq!(eval(and.clone()), rows(&[0, 0, 0, 0, 0]));
    // unknown OR true is true.
    let or = json!({"logic": "OR", "conditions": [cond("amount", ">", json!(120)), cond("count", "=", json!(0))]});
    assert_eq!(eval(or), rows(&[0, 1, 1, 0, 1]));
    // NOT(unknown) stays unknown: rows with null amount never match either way.
    let not = json!({"logic": "NOT", "conditions": [cond("amount", ">", json!(120))]});
    assert_eq!(eval(not), rows(&[1, 0, 0, 1, 0]));
    // NOT negates the AND of its conditions; false AND unknown is false, so NOT gives true.
    let not_and = json!({"logic": "NOT", "conditions": [cond("amount", ">", json!(1000)), cond("count", ">", json!(0))]});
    assert_eq!(eval(not_and), rows(&[1, 1, 1, 1, 1]));
    let nested = json!({"logic": "AND", "conditions": [
        cond("level", "starts_with", json!("VIP")),
        {"logic": "OR", "conditions": [
            cond("count", ">=", json!(30)),
            {"logic": "NOT", "conditions": [cond("flag", "is_true", serde_json::Value::Null)]}
        ]}
    ]});
    let nested = {
        // is_true takes no value: build it without one.
        let mut n = nested;
        n["conditions"][1]["conditions"][1]["conditions"][0] =
            json!({"field": "flag", "operator": "is_true"});
        n
    };
    assert_eq!(eval(nested), rows(&[0, 0, 0, 0, 1]));
}

#[test]
fn masks_are_right_past_word_boundaries() {
    let values: Vec<Option<f64>> = (0..200)
        .map(|i| if i % 7 == 0 { None } else { Some(f64::from(i)) })
        .collect();
    let owned = OwnedBatch::new().float64("x", &values);
    let bits = owned.with_ffi(|ffi| {
        let batch = Batch::new(ffi).unwrap();
        let rule = Rule::from_json(&cond("x", ">=", json!(100))).unwrap();
        rule.evaluate(&batch, as_of()).unwrap()
    });
    assert_eq!(bits.len(), 200);
    let expected: Vec<bool> = (0..200).map(|i| i % 7 != 0 && i >= 100).collect();
    assert_eq!(bits.to_bools(), expected);
    assert_eq!(bits.count_ones(), expected.iter().filter(|b| **b).count());
}

fn schema() -> Schema {
    Schema::new([
        ("amount", ColumnType::Float64),
        ("level", ColumnType::Utf8),
        ("day", ColumnType::Date),
    ])
}

fn error_of(rule: serde_json::Value) -> (String, String) {
    let err = match Rule::from_json(&rule) {
        Err(e) => e,
        Ok(rule) => rule.validate(&schema()).unwrap_err(),
    };
    (err.path, err.message)
}

#[test]
fn errors_point_at_the_condition() {
    let (path, message) = error_of(json!({"logic": "AND", "conditions": [
        cond("amount", ">=", json!(1)),
        {"logic": "OR", "conditions": [cond("level", "=", json!("VIP2")), cond("nope", "=", json!(1))]}
    ]}));
    assert_eq!(path, "rule.conditions[1].conditions[1]");
    assert!(message.contains("unknown field \"nope\""), "{message}");

    let (path, message) =
        error_of(json!({"logic": "AND", "conditions": [cond("amount", ">==", json!(1))]}));
    assert_eq!(path, "rule.conditions[0]");
    assert!(message.contains("unknown operator \">==\""), "{message}");

    let (path, message) = error_of(
        json!({"logic": "AND", "conditions": [cond("level", "=", json!("a")), cond("amount", ">=", json!("150000"))]}),
    );
    assert_eq!(path, "rule.conditions[1]");
    assert!(
        message.contains("amount >=") && message.contains("must be a number"),
        "{message}"
    );
}

#[test]
fn wrong_value_types_and_shapes_are_rejected() {
    let cases = [
        (cond("amount", "in", json!(5)), "must be a list"),
        (cond("amount", "in", json!([])), "must not be empty"),
        (cond("amount", "in_range", json!([5])), "[low, high] pair"),
        (
            cond("amount", "in_range", json!([9, 1])),
            "is after its end",
        ),
        (cond("amount", ">", json!(true)), "must be a number"),
        (cond("level", "=", json!(5)), "must be a string"),
        (cond("level", "in", json!(["a", 1])), "must be a string"),
        (
            cond("day", "recent_days", json!(-1)),
            "whole number of days",
        ),
        (
            cond("day", "recent_days", json!("7")),
            "whole number of days",
        ),
        (
            cond("day", ">", json!("2025-02-30")),
            "is not a YYYY-MM-DD date",
        ),
        (
            cond("day", "date_in_range", json!(["2025-01-01"])),
            "[low, high] pair",
        ),
        (
            cond("amount", "contains", json!("1")),
            "does not apply to float64",
        ),
        (
            cond("level", "recent_days", json!(3)),
            "does not apply to string",
        ),
        (
            cond("amount", "is_true", serde_json::Value::Null),
            "does not apply to float64",
        ),
        (
            json!({"field": "amount", "operator": ">="}),
            "needs a \"value\"",
        ),
        (
            json!({"field": "amount", "operator": "is_null", "value": 3}),
            "takes no \"value\"",
        ),
        (
            json!({"field": "amount", "operator": "=", "value": 1, "extra": 1}),
            "unknown key extra (a condition takes field, operator, value)",
        ),
        (
            json!({"field": "amount", "opertor": "=", "value": 1}),
            "unknown key opertor, did you mean operator?",
        ),
        (
            json!({"logic": "XOR", "conditions": [cond("amount", "=", json!(1))]}),
            "logic must be",
        ),
        (
            json!({"logic": "AND", "conditions": []}),
            "must not be empty",
        ),
        (json!({"logic": "AND"}), "needs \"conditions\""),
        (json!([1, 2]), "expected a group"),
    ];
    for (rule, expected) in cases {
        let (_, message) = error_of(rule.clone());
        assert!(
            message.contains(expected),
            "rule {rule}: got {message:?}, wanted {expected:?}"
        );
    }
}

#[test]
fn invalid_json_and_deep_nesting_are_rejected() {
    assert!(Rule::parse("{not json")
        .unwrap_err()
        .message
        .contains("not valid JSON"));
    let mut rule = cond("amount", "=", json!(1));
    for _ in 0..40 {
        rule = json!({"logic": "NOT", "conditions": [rule]});
    }
    assert!(Rule::from_json(&rule)
        .unwrap_err()
        .message
        .contains("deeper than"));
}

#[test]
fn rules_round_trip_through_json() {
    let rule = json!({"logic": "AND", "conditions": [cond("amount", ">=", json!(150000)), {"field": "level", "operator": "is_null"}]});
    assert_eq!(Rule::from_json(&rule).unwrap().to_json(), rule);
}

#[test]
fn rules_are_bounded_in_size_and_in_lists_are_sets() {
    // A list of the largest size works as a set; one more item is refused.
    let mut items: Vec<serde_json::Value> = (0..tag_plugin_api::rule::MAX_LIST - 2)
        .map(|i| json!(format!("X{i}")))
        .collect();
    items.push(json!("VIP3"));
    items.push(json!("GOLD"));
    assert_eq!(
        eval(cond("level", "in", json!(items))),
        rows(&[0, 0, 1, 0, 1])
    );
    items.push(json!("one too many"));
    let err = Rule::from_json(&cond("level", "in", json!(items)))
        .unwrap()
        .validate(&schema())
        .unwrap_err();
    assert!(err.message.contains("at most"), "{err}");
    // Numbers: -0 and 0 are one value, as `=` has them.
    assert_eq!(
        eval(cond("count", "in", json!([-0.0, 30]))),
        rows(&[0, 0, 1, 0, 1])
    );
    // Too many conditions in one rule.
    let many: Vec<_> = (0..=tag_plugin_api::rule::MAX_CONDITIONS)
        .map(|i| cond("count", ">", json!(i)))
        .collect();
    let err = Rule::from_json(&json!({"logic": "OR", "conditions": many})).unwrap_err();
    assert!(err.message.contains("at most"), "{err}");
}
