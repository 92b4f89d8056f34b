//! Small real inputs for the stages' unit tests: in-process tags (exported
//! through the plugin ABI exactly as a library's are), parquet files in a
//! temporary directory, and plans built by hand.

use super::{Plan, TagRun};
use crate::model::Mode;
use polars::prelude::*;
use std::path::Path;
use std::sync::Arc;
use tag_plugin_api::{ColumnType, Date, Tag, TagInfo};
use tag_plugin_loader::RegisteredTag;

/// A rule-only tag with the given metadata.
struct RuleTag(TagInfo);

impl Tag for RuleTag {
    fn info(&self) -> TagInfo {
        self.0.clone()
    }
}

/// Tag `id` reading `table.column` (f64) with the rule `column >= min`.
pub fn tag_at_least(id: u32, table: &str, column: &str, min: f64) -> Arc<RegisteredTag> {
    let rule = format!(r#"{{"field": "{column}", "operator": ">=", "value": {min}}}"#);
    let info = TagInfo::new(id, "T", &format!("tag {id}"), "test")
        .input(table, column, ColumnType::Float64)
        .default_rule(&rule);
    registered(RuleTag(info))
}

/// `tag` exported through the plugin ABI and registered, as a library's is.
pub fn registered(tag: impl Tag) -> Arc<RegisteredTag> {
    let tasks = tag_plugin_api::tag::export_tasks(|| vec![Box::new(tag)])
        .into_result()
        .expect("export");
    let task = tasks.into_iter().next().expect("one task");
    let plugin = tag_plugin_loader::PluginIdentity {
        name: "in-process".into(),
        version: "0".into(),
        sha256: String::new(),
    };
    Arc::new(RegisteredTag::new(task, "in-process".into(), plugin))
}

/// A plan over `tags` with their default rules, as of 2025-01-15.
pub fn plan(tags: &[Arc<RegisteredTag>], mode: Mode, user_ids: Option<&[&str]>) -> Plan {
    let runs: Vec<TagRun> = tags
        .iter()
        .map(|tag| TagRun::with_default_rule(tag, mode == Mode::Full))
        .collect();
    Plan::new(
        runs,
        Date::parse("2025-01-15").expect("date"),
        mode,
        user_ids.map(|ids| ids.iter().map(|s| s.to_string()).collect()),
    )
    .expect("column plan")
}

/// Microseconds for `seconds` after the epoch (an `updated_time`).
pub fn at(seconds: i64) -> Option<i64> {
    Some(seconds * 1_000_000)
}

/// Writes `<dir>/<name>` with a `user_id`, an `updated_time` and one f64
/// column `column`, in row groups of `group_rows`.
pub fn write_table(
    path: &Path,
    column: &str,
    rows: &[(Option<&str>, Option<i64>, Option<f64>)],
    group_rows: usize,
) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("table directory");
    }
    let ids: Vec<Option<&str>> = rows.iter().map(|r| r.0).collect();
    let times: Vec<Option<i64>> = rows.iter().map(|r| r.1).collect();
    let values: Vec<Option<f64>> = rows.iter().map(|r| r.2).collect();
    let mut df = DataFrame::new(
        rows.len(),
        vec![
            Column::new("user_id".into(), ids),
            Int64Chunked::from_iter(times)
                .with_name("updated_time".into())
                .into_datetime(TimeUnit::Microseconds, None)
                .into_column(),
            Column::new(column.into(), values),
        ],
    )
    .expect("frame");
    let file = std::fs::File::create(path).expect("create parquet");
    ParquetWriter::new(file)
        .with_row_group_size(Some(group_rows))
        .finish(&mut df)
        .expect("write parquet");
}
