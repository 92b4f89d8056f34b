//! What an incremental run must read, found from parquet statistics before
//! any table is loaded.
//!
//! A row can only be in scope if its `updated_time` is newer than the
//! lowest watermark of the tags that read its table (or, in the universe
//! table, if it has no time). Row groups whose statistics say every time is
//! at most that watermark, with no null time in the universe, hold no such
//! row. The changed rows are read first (ids and times only); the run then
//! loads just the users they name. A table's unchanged row groups are
//! skipped too when every user that a tag reading the table will evaluate
//! has a changed row in that table (a user's newest row is then among the
//! changed ones); users no such tag evaluates do not need the table at all.

use super::{failed, stopped, Delta, Plan, RunError, TablePlan};
use super::{UNIVERSE_TABLE, UPDATED_TIME, USER_ID};
use crate::data::read::{group_times, scan_row_groups, ColumnRequest, RowGroupId};
use crate::tasks::control::TaskControl;
use polars::prelude::*;
use std::collections::HashSet;
use std::path::Path;
use tag_plugin_api::ColumnType;

/// One table's changed rows.
struct TableDelta {
    /// Users with a row newer than the threshold.
    newer: HashSet<String>,
    /// Users to load because of this table (newer rows; universe: no time).
    wanted: HashSet<String>,
    /// Row groups holding no changed row.
    unchanged: HashSet<RowGroupId>,
    newest: Option<i64>,
    read: usize,
    total: usize,
}

/// The delta of an incremental run, or `None` when some tag needs the
/// whole universe anyway (first run, changed rule).
pub fn find(
    plan: &Plan,
    data_dir: &Path,
    control: &TaskControl,
) -> Result<Option<Delta>, RunError> {
    if !plan.incremental() || plan.tags.iter().any(|t| t.whole_universe) {
        return Ok(None);
    }
    let mut delta = Delta::default();
    let mut tables = Vec::new();
    for table in &plan.tables {
        let found = table_delta(plan, table, data_dir, control)?;
        delta.users.extend(found.wanted.iter().cloned());
        if let Some(newest) = found.newest {
            delta.newest.insert(table.table.clone(), newest);
        }
        delta.groups_read += found.read;
        delta.groups_total += found.total;
        tables.push((table.table.clone(), found));
    }
    // A table's unchanged row groups can be skipped when every user that a
    // tag reading it will evaluate has a changed row in it.
    for (table, found) in &tables {
        let needed = plan
            .tags
            .iter()
            .filter(|t| t.tables().contains(&table.as_str()))
            .flat_map(|t| t.tables())
            .filter_map(|other| tables.iter().find(|(name, _)| name == other))
            .flat_map(|(_, other)| other.wanted.iter());
        if needed.clone().all(|u| found.newer.contains(u)) {
            delta.skip.insert(table.clone(), found.unchanged.clone());
        }
    }
    Ok(Some(delta))
}

/// The lowest watermark of the tags that read `table`.
fn threshold(plan: &Plan, table: &str) -> i64 {
    plan.tags
        .iter()
        .filter(|t| t.tables().contains(&table))
        .map(|t| t.watermarks.get(table).copied().unwrap_or(i64::MIN))
        .min()
        .unwrap_or(i64::MIN)
}

fn table_delta(
    plan: &Plan,
    table: &TablePlan,
    data_dir: &Path,
    control: &TaskControl,
) -> Result<TableDelta, RunError> {
    let name = table.table.as_str();
    let universe = name == UNIVERSE_TABLE;
    let threshold = threshold(plan, name);
    let groups = group_times(data_dir, name, UPDATED_TIME).map_err(failed)?;
    let changed = |g: &crate::data::read::GroupTimes| {
        g.max.is_none_or(|max| max > threshold) || (universe && g.nulls != Some(0))
    };
    let unchanged: HashSet<RowGroupId> = groups
        .iter()
        .filter(|g| !changed(g))
        .map(|g| g.id)
        .collect();
    let mut found = TableDelta {
        newer: HashSet::new(),
        wanted: HashSet::new(),
        newest: groups
            .iter()
            .filter(|g| !changed(g))
            .filter_map(|g| g.max)
            .max(),
        read: groups.len() - unchanged.len(),
        total: groups.len(),
        unchanged,
    };
    let columns = [
        ColumnRequest::new(USER_ID, ColumnType::Utf8),
        ColumnRequest::new(UPDATED_TIME, ColumnType::Timestamp),
    ];
    let skip = |id: RowGroupId| !found.unchanged.contains(&id);
    let scan = scan_row_groups(data_dir, name, &columns, usize::MAX, &skip).map_err(failed)?;
    for batch in scan {
        control.checkpoint().map_err(stopped)?;
        let batch = batch.map_err(failed)?;
        let ids = batch
            .column(USER_ID)
            .and_then(|c| c.as_materialized_series().str().cloned());
        let times = batch.column(UPDATED_TIME).and_then(|c| {
            c.as_materialized_series()
                .datetime()
                .map(|d| d.physical().clone())
        });
        let (ids, times) = ids
            .and_then(|i| Ok((i, times?)))
            .map_err(|e| RunError::Failed(format!("table {name}: {e}")))?;
        found.newest = found.newest.max(times.max());
        for (id, time) in ids.iter().zip(times.iter()) {
            let Some(id) = id else { continue };
            match time {
                Some(t) if t > threshold => {
                    found.newer.insert(id.to_string());
                    found.wanted.insert(id.to_string());
                }
                None if universe => {
                    found.wanted.insert(id.to_string());
                }
                _ => {}
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::load::{load, Source};
    use crate::engine::testkit::{at, plan, tag_at_least, write_table};
    use crate::model::Mode;

    #[test]
    fn only_users_with_newer_rows_are_loaded_and_old_parts_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let universe = [
            (Some("u1"), at(1), Some(1.0)),
            (Some("u2"), at(2), Some(2.0)),
            (Some("u3"), at(3), Some(3.0)),
        ];
        write_table(
            &dir.path().join("user_basic_info.parquet"),
            "score",
            &universe,
            2,
        );
        let parts = dir.path().join("user_asset_summary");
        let old = [
            (Some("u1"), at(1), Some(10.0)),
            (Some("u2"), at(2), Some(20.0)),
            (Some("u3"), at(2), Some(30.0)),
        ];
        write_table(&parts.join("part-000.parquet"), "cash", &old, 2);
        write_table(
            &parts.join("part-001.parquet"),
            "cash",
            &[(Some("u3"), at(7), Some(300.0))],
            2,
        );
        let tags = [tag_at_least(1, "user_asset_summary", "cash", 150.0)];
        let mut plan = plan(&tags, Mode::Incremental, None);
        plan.tags[0].watermarks = [
            ("user_basic_info".to_string(), at(3).unwrap()),
            ("user_asset_summary".to_string(), at(2).unwrap()),
        ]
        .into();
        let control = TaskControl::default();
        let delta = find(&plan, dir.path(), &control).unwrap().expect("a delta");
        assert_eq!(delta.users, HashSet::from(["u3".to_string()]));
        // Every group of the old part is skipped; the universe is read for u3.
        let groups = group_times(dir.path(), "user_asset_summary", UPDATED_TIME).unwrap();
        let old_part: HashSet<RowGroupId> = groups
            .iter()
            .map(|g| g.id)
            .filter(|id| id.part == 0)
            .collect();
        assert!(!old_part.is_empty());
        assert_eq!(delta.skip["user_asset_summary"], old_part);
        assert!(!delta.skip.contains_key("user_basic_info"));
        assert_eq!(delta.newest["user_asset_summary"], at(7).unwrap());
        let universe_groups = group_times(dir.path(), "user_basic_info", UPDATED_TIME)
            .unwrap()
            .len();
        // Only the new part's group could hold a change.
        assert_eq!(
            (delta.groups_read, delta.groups_total),
            (1, universe_groups + groups.len())
        );
        let source = Source {
            data_dir: dir.path(),
            batch_rows: 2,
        };
        let loaded = load(&plan, Some(delta), &source, &control).unwrap();
        assert_eq!(loaded.rows(), 1);
        let cash = loaded.column("user_asset_summary", "cash").unwrap();
        assert_eq!(
            cash.as_materialized_series().f64().unwrap().get(0),
            Some(300.0)
        );
    }

    #[test]
    fn a_tag_that_needs_the_whole_universe_means_no_delta() {
        let dir = tempfile::tempdir().unwrap();
        let tags = [tag_at_least(1, "user_asset_summary", "cash", 150.0)];
        let mut plan = plan(&tags, Mode::Incremental, None);
        plan.tags[0].whole_universe = true;
        assert!(find(&plan, dir.path(), &TaskControl::default())
            .unwrap()
            .is_none());
    }
}
