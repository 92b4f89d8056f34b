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

use super::plan::{tag_tables, Plan, TablePlan};
use super::{failed, stopped, RunError, UNIVERSE_TABLE, UPDATED_TIME, USER_ID};
use crate::data::read::{group_times, scan_row_groups, ColumnRequest, RowGroupId};
use crate::scheduler::TaskControl;
use polars::prelude::*;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use tag_plugin_api::ColumnType;

/// The users an incremental run loads, and what it may skip.
#[derive(Debug, Default)]
pub struct Delta {
    /// Users with a changed row in some table (or no universe time).
    pub users: HashSet<String>,
    /// Per table, row groups that need not be read.
    pub skip: BTreeMap<String, HashSet<RowGroupId>>,
    /// Per table, the newest `updated_time` in the whole table.
    pub newest: BTreeMap<String, i64>,
    /// Row groups read to find the changes, and row groups in all.
    pub groups_read: usize,
    /// Row groups of the planned tables.
    pub groups_total: usize,
}

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
            .filter(|t| tag_tables(&t.tag.info).contains(&table.as_str()))
            .flat_map(|t| tag_tables(&t.tag.info))
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
        .filter(|t| tag_tables(&t.tag.info).contains(&table))
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
