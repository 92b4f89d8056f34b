//! Evaluating tags over one batch: each tag's inputs found and prepared,
//! lent to its plugin, and the answer checked; a tag whose columns are
//! wrong, or whose plugin errs or panics, fails alone.

use crate::batch::Table;
use crate::columns::prepare;
use tag_plugin_api::abi::FfiBatch;
use tag_plugin_api::abi_stable::std_types::RSlice;
use tag_plugin_api::{Date, Mask};
use tag_plugin_loader::{RegisteredTag, TagRegistry};

/// One tag to evaluate, with its rule (rule-language JSON; `None` for the
/// tag's default rule).
#[derive(Debug, Clone)]
pub struct Request {
    /// The tag.
    pub tag_id: u32,
    /// Its rule.
    pub rule: Option<String>,
}

/// Evaluates every request over `table` as of `as_of`: per request, in
/// order, the rows that match or why the tag failed.
pub fn evaluate(
    registry: &TagRegistry,
    table: &Table,
    requests: &[Request],
    as_of: Date,
) -> Vec<Result<Mask, String>> {
    requests
        .iter()
        .map(|request| match registry.get(request.tag_id) {
            None => Err(format!(
                "tag {} is not loaded (loaded: {:?})",
                request.tag_id,
                registry.ids()
            )),
            Some(tag) => {
                let rule = request.rule.as_deref().unwrap_or(&tag.info.default_rule);
                evaluate_tag(tag, table, rule, as_of)
            }
        })
        .collect()
}

/// One tag over the batch.
fn evaluate_tag(
    tag: &RegisteredTag,
    table: &Table,
    rule: &str,
    as_of: Date,
) -> Result<Mask, String> {
    let tag_id = tag.info.tag_id;
    let prepared = tag
        .info
        .inputs
        .iter()
        .map(|input| {
            let (name, array) = table.find(&input.table, &input.column)?;
            prepare(name, array, &input.column, input.column_type)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tag {tag_id}: {e}"))?;
    let columns: Vec<_> = prepared.iter().map(|p| p.ffi()).collect();
    let batch = FfiBatch {
        num_rows: table.num_rows(),
        columns: RSlice::from_slice(&columns),
    };
    tag.evaluate(batch, rule, as_of).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{ArrayRef, Decimal128Array, StringArray, StructArray};
    use arrow_schema::{Field, Fields};
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use tag_plugin_api::{ColumnType, Tag, TagInfo};
    use tag_plugin_loader::PluginIdentity;

    /// A rule-only tag, exported through the plugin ABI as a library's is.
    struct RuleTag(TagInfo);

    impl Tag for RuleTag {
        fn info(&self) -> TagInfo {
            self.0.clone()
        }
    }

    fn registry(infos: Vec<TagInfo>) -> TagRegistry {
        let mut tags = BTreeMap::new();
        for info in infos {
            let id = info.tag_id;
            let tasks = tag_plugin_api::tag::export_tasks(move || vec![Box::new(RuleTag(info))])
                .into_result()
                .unwrap();
            let task = tasks.into_iter().next().unwrap();
            let plugin = PluginIdentity::default();
            tags.insert(
                id,
                Arc::new(RegisteredTag::new(task, "in-process".into(), plugin)),
            );
        }
        TagRegistry::new(tags)
    }

    fn table() -> Table {
        let cash = Decimal128Array::from(vec![Some(6_000_000), Some(5_999_999), None])
            .with_precision_and_scale(18, 2)
            .unwrap();
        let columns: Vec<ArrayRef> =
            vec![Arc::new(cash), Arc::new(StringArray::from(vec!["a"; 3]))];
        let fields: Fields = columns
            .iter()
            .zip(["assets.cash", "assets.note"])
            .map(|(a, n)| Field::new(n, a.data_type().clone(), true))
            .collect();
        Table::from_struct(StructArray::new(fields, columns, None)).unwrap()
    }

    #[test]
    fn each_tag_gets_its_rows_or_its_own_error() {
        let rich = TagInfo::new(1, "Rich", "rich", "test")
            .input("assets", "cash", ColumnType::Float64)
            .default_rule(r#"{"field": "cash", "operator": ">=", "value": 60000}"#);
        let typo = TagInfo::new(2, "Typo", "typo", "test")
            .input("assets", "csah", ColumnType::Float64)
            .default_rule(r#"{"field": "csah", "operator": ">=", "value": 1}"#);
        let wrong = TagInfo::new(3, "Wrong", "wrong", "test")
            .input("assets", "note", ColumnType::Float64)
            .default_rule(r#"{"field": "note", "operator": ">=", "value": 1}"#);
        let registry = registry(vec![rich, typo, wrong]);
        let as_of = Date::parse("2025-01-15").unwrap();
        let request = |tag_id, rule: Option<&str>| Request {
            tag_id,
            rule: rule.map(str::to_string),
        };
        let lower = r#"{"field": "cash", "operator": ">=", "value": 59999.99}"#;
        let results = evaluate(
            &registry,
            &table(),
            &[
                request(1, None),
                request(1, Some(lower)),
                request(2, None),
                request(3, None),
                request(9, None),
            ],
            as_of,
        );
        let rows = |r: &Result<Mask, String>| r.as_ref().unwrap().ones().collect::<Vec<_>>();
        assert_eq!(rows(&results[0]), vec![0]);
        assert_eq!(rows(&results[1]), vec![0, 1]);
        let err = |i: usize| results[i].as_ref().unwrap_err().clone();
        assert!(
            err(2).starts_with("tag 2: the batch has no column assets.csah"),
            "{}",
            err(2)
        );
        assert!(
            err(3).contains("column assets.note is Utf8, which cannot be read as float64"),
            "{}",
            err(3)
        );
        assert_eq!(err(4), "tag 9 is not loaded (loaded: [1, 2, 3])");
    }
}
