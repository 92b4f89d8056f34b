//! The built-in sample batch of `tag-server plugins check`: for each column a
//! tag declares, values on and around every threshold its default rule
//! names, plus a null, so a data team sees the rule run on edge cases;
//! and how the tag's own evaluate compares with its rule tree there.

use serde_json::Value;
use tag_plugin_api::owned::OwnedBatch;
use tag_plugin_api::{Batch, ColumnType, Date, Rule, TagInfo};
use tag_plugin_loader::RegisteredTag;

/// Every literal the rule compares `field` with (lists flattened).
fn literals<'r>(rule: &'r Rule, field: &str) -> Vec<&'r Value> {
    let mut out = Vec::new();
    for c in rule.conditions().into_iter().filter(|c| c.field == field) {
        match &c.value {
            Value::Array(items) => out.extend(items.iter()),
            Value::Null => {}
            v => out.push(v),
        }
    }
    out
}

fn cycle<T: Clone>(values: &[T], rows: usize) -> Vec<T> {
    (0..rows)
        .map(|i| values[i % values.len()].clone())
        .collect()
}

/// One column's distinct sample values (always non-empty, always one null).
enum Values {
    Numbers(Vec<Option<f64>>),
    Strings(Vec<Option<String>>),
    Dates(Vec<Option<Date>>),
    Booleans(Vec<Option<bool>>),
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Values::Numbers(v) => v.len(),
            Values::Strings(v) => v.len(),
            Values::Dates(v) => v.len(),
            Values::Booleans(v) => v.len(),
        }
    }
}

fn values_for(column_type: ColumnType, lits: &[&Value], as_of: Date) -> Values {
    match column_type {
        ColumnType::Int32 | ColumnType::Int64 | ColumnType::Float64 => {
            let mut v = vec![Some(0.0), None];
            for n in lits.iter().filter_map(|l| l.as_f64()) {
                v.extend([Some(n - 1.0), Some(n), Some(n + 1.0)]);
            }
            Values::Numbers(v)
        }
        ColumnType::Utf8 => {
            let mut v = vec![Some("other".to_string()), Some(String::new()), None];
            v.extend(
                lits.iter()
                    .filter_map(|l| l.as_str())
                    .map(|s| Some(s.to_string())),
            );
            Values::Strings(v)
        }
        ColumnType::Date | ColumnType::Timestamp => {
            let mut v: Vec<Option<Date>> = [0, 1, 6, 7, 8, 29, 30, 31, 365]
                .iter()
                .map(|k| Some(Date(as_of.days() - k)))
                .collect();
            v.push(Some(Date(as_of.days() + 1)));
            v.push(None);
            v.extend(
                lits.iter()
                    .filter_map(|l| l.as_str())
                    .filter_map(Date::parse)
                    .map(Some),
            );
            Values::Dates(v)
        }
        ColumnType::Boolean => Values::Booleans(vec![Some(true), Some(false), None]),
    }
}

/// Builds the sample batch for a tag and its rule.
pub fn sample_batch(info: &TagInfo, rule: &Rule, as_of: Date) -> OwnedBatch {
    let columns: Vec<_> = info
        .inputs
        .iter()
        .map(|input| {
            (
                input,
                values_for(input.column_type, &literals(rule, &input.column), as_of),
            )
        })
        .collect();
    let rows = columns.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
    let mut batch = OwnedBatch::new();
    for (input, values) in columns {
        let name = input.column.as_str();
        batch = match (input.column_type, values) {
            (ColumnType::Int32, Values::Numbers(v)) => batch.int32(
                name,
                &cycle(&v, rows)
                    .iter()
                    .map(|x| x.map(|x| x as i32))
                    .collect::<Vec<_>>(),
            ),
            (ColumnType::Int64, Values::Numbers(v)) => batch.int64(
                name,
                &cycle(&v, rows)
                    .iter()
                    .map(|x| x.map(|x| x as i64))
                    .collect::<Vec<_>>(),
            ),
            (_, Values::Numbers(v)) => batch.float64(name, &cycle(&v, rows)),
            (_, Values::Strings(v)) => batch.string(
                name,
                &cycle(&v, rows)
                    .iter()
                    .map(|s| s.as_deref())
                    .collect::<Vec<_>>(),
            ),
            (ColumnType::Timestamp, Values::Dates(v)) => batch.timestamp(
                name,
                &cycle(&v, rows)
                    .iter()
                    .map(|d| d.map(|d| i64::from(d.days()) * tag_plugin_api::date::MICROS_PER_DAY))
                    .collect::<Vec<_>>(),
            ),
            (_, Values::Dates(v)) => batch.dates(name, &cycle(&v, rows)),
            (_, Values::Booleans(v)) => batch.boolean(name, &cycle(&v, rows)),
        };
    }
    batch
}

/// A tag's default rule on its sample batch, through its plugin and as the
/// rule tree alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleCheck {
    /// Rows in the sample batch.
    pub rows: usize,
    /// Rows the plugin's evaluate matched.
    pub matched: usize,
    /// Rows the rule tree alone matched.
    pub tree_matched: usize,
    /// The rows (from 0) where the two answer otherwise.
    pub differ: Vec<usize>,
}

/// Runs `tag`'s default rule on its sample batch through its plugin, and
/// the same rule tree in the host, so a tag whose code decides more than
/// its tree shows is found (an error names what failed).
pub fn check_tag(tag: &RegisteredTag, as_of: Date) -> Result<SampleCheck, String> {
    let info = &tag.info;
    tag.validate_rule(&info.default_rule)
        .map_err(|e| e.to_string())?;
    let rule = Rule::parse(&info.default_rule).map_err(|e| e.to_string())?;
    let batch = sample_batch(info, &rule, as_of);
    let mask = batch
        .with_ffi(|ffi| tag.evaluate(ffi, &info.default_rule, as_of))
        .map_err(|e| e.to_string())?;
    let tree = batch
        .with_ffi(|ffi| {
            let batch = Batch::new(ffi).map_err(|e| e.to_string())?;
            rule.evaluate(&batch, as_of).map_err(|e| e.to_string())
        })
        .map_err(|e| format!("the rule tree alone: {e}"))?;
    Ok(SampleCheck {
        rows: batch.num_rows(),
        matched: mask.count_ones(),
        tree_matched: tree.count_ones(),
        differ: (0..mask.len())
            .filter(|&i| mask.get(i) != tree.get(i))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tag_plugin_api::{Mask, Tag, TagError};

    /// `tag` exported through the plugin ABI and registered, with what it
    /// says its code adds, as the loader registers a library's tags.
    fn registered(tag: impl Tag) -> RegisteredTag {
        let what = tag.info().custom_evaluate;
        let tasks = tag_plugin_api::tag::export_tasks(|| vec![Box::new(tag)])
            .into_result()
            .expect("export");
        let task = tasks.into_iter().next().expect("one task");
        RegisteredTag::new(task, "in-process".into(), Default::default())
            .with_custom_evaluate(what.as_deref())
    }

    fn info(id: u32) -> TagInfo {
        TagInfo::new(id, "T", "t", "test")
            .input("user_asset_summary", "cash_balance", ColumnType::Float64)
            .default_rule(r#"{"field": "cash_balance", "operator": ">", "value": 10}"#)
    }

    /// The tree, or a null balance: declared when `declared`.
    struct NullsToo {
        declared: bool,
    }

    impl Tag for NullsToo {
        fn info(&self) -> TagInfo {
            match self.declared {
                true => info(2).custom_evaluate("A null balance matches too."),
                false => info(2),
            }
        }
        fn evaluate(&self, batch: &Batch<'_>, rule: &Rule, as_of: Date) -> Result<Mask, TagError> {
            let mut mask = rule.evaluate(batch, as_of)?;
            let column = batch.column("cash_balance")?;
            (0..batch.num_rows())
                .filter(|&i| !column.is_valid(i))
                .for_each(|i| mask.set(i, true));
            Ok(mask)
        }
    }

    struct TreeOnly;
    impl Tag for TreeOnly {
        fn info(&self) -> TagInfo {
            info(1)
        }
    }

    #[test]
    fn a_tag_that_applies_its_rule_answers_as_its_tree() {
        let as_of = Date::parse("2025-01-15").unwrap();
        let checked = check_tag(&registered(TreeOnly), as_of).unwrap();
        // 0, null, 9, 10, 11: only 11 is over 10.
        assert_eq!((checked.rows, checked.matched), (5, 1));
        assert_eq!(checked.tree_matched, 1);
        assert!(checked.differ.is_empty());
    }

    #[test]
    fn code_that_decides_more_than_the_tree_is_found_on_the_null_row() {
        let as_of = Date::parse("2025-01-15").unwrap();
        for declared in [false, true] {
            let tag = registered(NullsToo { declared });
            let checked = check_tag(&tag, as_of).unwrap();
            assert_eq!((checked.matched, checked.tree_matched), (2, 1));
            assert_eq!(checked.differ, [1], "the null is the second value");
            assert_eq!(
                tag.info.custom_evaluate.as_deref(),
                declared.then_some("A null balance matches too.")
            );
        }
    }
}
