//! Before anything is read: each tag's tables and columns exist and their
//! types can become the declared ones (parquet footers only). A tag whose
//! inputs fail this fails alone; the others run.

use super::{Plan, RunError, TagFailure, TagRun, UNIVERSE_TABLE, UPDATED_TIME, USER_ID};
use crate::data::read::{scan_table, ColumnRequest};
use std::path::Path;
use tag_plugin_api::ColumnType;

/// Batch size of the checking scans: one slice per row group (only their
/// footers are read; with 1-row batches a 10M-row table planned 10M slices,
/// a second of a 10M-user run).
const WHOLE_GROUPS: usize = usize::MAX;

/// The plan for the tags whose inputs can be read, and the failures of the
/// others (an empty plan when none can: failing the run is the caller's
/// call, `plugins check` still reports each tag).
pub fn check(plan: Plan, data_dir: &Path) -> Result<(Plan, Vec<TagFailure>), RunError> {
    let mut failures: Vec<TagFailure> = Vec::new();
    for table in &plan.tables {
        if scan_table(data_dir, &table.table, &table.columns, WHOLE_GROUPS).is_ok() {
            continue;
        }
        // Something in this table fails: find whose columns.
        for t in plan.tags.iter().filter(|t| reads(t, &table.table)) {
            if failures.iter().any(|f| f.tag_id == t.id()) {
                continue;
            }
            if let Err(e) = scan_table(
                data_dir,
                &table.table,
                &requests(t, &table.table),
                WHOLE_GROUPS,
            ) {
                failures.push(TagFailure::of(t, e.to_string()));
            }
        }
    }
    Ok((plan.without(&failures)?, failures))
}

/// Whether `t` needs `table` (every tag needs the universe).
fn reads(t: &TagRun, table: &str) -> bool {
    table == UNIVERSE_TABLE || t.tag.info.inputs.iter().any(|i| i.table == table)
}

/// The columns `t` reads from `table`, with the key and time columns.
fn requests(t: &TagRun, table: &str) -> Vec<ColumnRequest> {
    let mut columns = vec![ColumnRequest::new(USER_ID, ColumnType::Utf8)];
    columns.extend(
        t.tag
            .info
            .inputs
            .iter()
            .filter(|i| i.table == table && i.column != USER_ID && i.column != UPDATED_TIME)
            .map(|i| ColumnRequest::new(i.column.clone(), i.column_type)),
    );
    columns.push(ColumnRequest::new(UPDATED_TIME, ColumnType::Timestamp));
    columns
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testkit::{at, plan, tag_at_least, write_table};
    use crate::engine::Failures;
    use crate::model::Mode;

    /// A universe table with one user and a `score` column.
    fn universe_with_score() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let rows = [(Some("u1"), at(1), Some(1.0))];
        write_table(
            &dir.path().join("user_basic_info.parquet"),
            "score",
            &rows,
            10,
        );
        dir
    }

    #[test]
    fn a_tag_with_a_missing_table_or_column_fails_alone() {
        let dir = universe_with_score();
        let tags = [
            tag_at_least(1, "user_basic_info", "score", 0.0),
            tag_at_least(2, "user_basic_info", "no_such_column", 0.0),
            tag_at_least(3, "no_such_table", "x", 0.0),
        ];
        let (plan, failed) = check(plan(&tags, Mode::Full, None), dir.path()).unwrap();
        let running: Vec<u32> = plan.tags.iter().map(|t| t.id()).collect();
        assert_eq!(running, vec![1]);
        let failed: Vec<(u32, &str)> = failed
            .iter()
            .map(|f| (f.tag_id, f.error.as_str()))
            .collect();
        assert_eq!(failed.len(), 2);
        assert!(
            failed[0].0 == 2 && failed[0].1.contains("no_such_column"),
            "{failed:?}"
        );
        assert!(
            failed[1].0 == 3 && failed[1].1.contains("no_such_table"),
            "{failed:?}"
        );
        // The column plan no longer asks for what the failed tags read.
        assert_eq!(plan.tables.len(), 1);
        assert_eq!(plan.tables[0].columns.len(), 3);
    }

    #[test]
    fn when_every_tag_fails_the_plan_is_empty_and_the_run_fails_naming_each() {
        let dir = universe_with_score();
        let tags = [tag_at_least(2, "user_basic_info", "nope", 0.0)];
        let (plan, failed) = check(plan(&tags, Mode::Full, None), dir.path()).unwrap();
        assert!(plan.tags.is_empty());
        let Err(RunError::Failed(message)) = Failures::default().add(failed, plan.tags.len())
        else {
            panic!("expected the run to fail");
        };
        assert!(
            message.contains("tag 2:") && message.contains("nope"),
            "{message}"
        );
    }
}
