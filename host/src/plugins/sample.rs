//! The built-in sample batch of `tag-server plugins check`: for each column a
//! tag declares, values on and around every threshold its default rule
//! names, plus a null, so a data team sees the rule run on edge cases.

use serde_json::Value;
use tag_plugin_api::owned::OwnedBatch;
use tag_plugin_api::{ColumnType, Date, Rule, TagInfo};

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
