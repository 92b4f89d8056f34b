//! How large a stored rule may be, whatever its plugin's rule language: the
//! list items it holds in all and its encoded size. A plugin bounds each
//! list on its own, but many lists of the most it allows would still make a
//! rule that every run, every read of its history and every console page
//! showing it has to carry.

use serde_json::Value;

/// Most list items a rule may hold in all: the values (strings, numbers,
/// booleans, nulls) in every JSON array of it, such as the `in` / `not_in`
/// lists and `in_range` pairs. A `conditions` list holds objects, not
/// values, so it does not count (a plugin bounds the conditions).
pub const MAX_RULE_ITEMS: usize = 20_000;

/// Largest encoded rule (compact JSON, as stored), in bytes: 1 MiB.
pub const MAX_RULE_BYTES: usize = 1 << 20;

/// Checks `rule`, whose compact encoding is `encoded_len` bytes long,
/// against both limits; the error says the limit and the size found.
pub fn check(rule: &Value, encoded_len: usize) -> Result<(), String> {
    let items = list_items(rule);
    if items > MAX_RULE_ITEMS {
        return Err(format!(
            "the rule holds {items} list items in all; at most {MAX_RULE_ITEMS}"
        ));
    }
    if encoded_len > MAX_RULE_BYTES {
        return Err(format!(
            "the rule is {encoded_len} bytes encoded; at most {MAX_RULE_BYTES} (1 MiB)"
        ));
    }
    Ok(())
}

/// The values in every array in `value`, nested ones included (walked
/// with a stack of its own, so no depth can exhaust the thread's).
pub fn list_items(value: &Value) -> usize {
    let (mut count, mut pending) = (0, vec![value]);
    while let Some(v) = pending.pop() {
        match v {
            Value::Array(items) => {
                count += items
                    .iter()
                    .filter(|i| !i.is_array() && !i.is_object())
                    .count();
                pending.extend(items);
            }
            Value::Object(fields) => pending.extend(fields.values()),
            _ => {}
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lists(n: usize, each: usize) -> Value {
        let conditions: Vec<Value> = (0..n)
            .map(|_| json!({"field": "f", "operator": "in", "value": vec![1; each]}))
            .collect();
        json!({"logic": "OR", "conditions": conditions})
    }

    #[test]
    fn items_are_counted_across_every_list() {
        // 60 lists of 10,000: each within a plugin's bound, 600,000 in all.
        let rule = lists(60, 10_000);
        assert_eq!(list_items(&rule), 600_000);
        let err = check(&rule, 10).unwrap_err();
        assert!(
            err.contains("600000 list items") && err.contains("at most 20000"),
            "{err}"
        );
        // Two lists of 10,000 are just within; nested lists count too.
        assert_eq!(check(&lists(2, 10_000), 10), Ok(()));
        assert_eq!(list_items(&json!({"a": [[1, 2], {"b": [3]}, 4]})), 4);
    }

    #[test]
    fn the_encoded_size_is_bounded() {
        let rule = json!({"field": "f", "operator": "=", "value": "x"});
        assert_eq!(check(&rule, MAX_RULE_BYTES), Ok(()));
        let err = check(&rule, MAX_RULE_BYTES + 1).unwrap_err();
        assert!(
            err.contains("1048577 bytes") && err.contains("at most 1048576"),
            "{err}"
        );
    }
}
