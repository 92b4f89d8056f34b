//! The load stage: read each planned table, keep each user's newest row, and
//! left-join the side tables onto the universe, row for row.

use super::index::{join_latest, latest_rows, RowFinder, UserIds};
use super::spill::{Partitions, Spill, TableSpill};
use super::{failed, polars_failed, stopped, Delta, Plan, RunError, TablePlan, Universe};
use super::{UPDATED_TIME, USER_ID};
use crate::data::read::{polars_type, scan_row_groups, RowGroupId, TableScan};
use crate::progress::TableProgress;
use crate::tasks::control::{panic_message, TaskControl};
use polars::prelude::*;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// Where source tables are read from, and in what batch size.
pub struct Source<'a> {
    /// `<table>.parquet` files or `<table>/` directories of parts.
    pub data_dir: &'a Path,
    /// Rows per batch read (and per batch handed to a plugin).
    pub batch_rows: usize,
}

/// How tables are read in one run: where, which users, which row groups.
struct Reader<'a> {
    source: &'a Source<'a>,
    /// Only these users are kept (`None`: all).
    wanted: Option<HashSet<&'a str>>,
    /// An incremental run's delta: row groups to skip.
    delta: Option<&'a Delta>,
    control: &'a TaskControl,
}

impl Reader<'_> {
    /// Opens a table's scan (its footers only): what it will read.
    fn open(&self, plan: &TablePlan) -> Result<TableScan, RunError> {
        let skip = self.delta.and_then(|d| d.skip.get(&plan.table));
        // Whole row groups, filtered as they come: a slice inside a row
        // group decodes its pages again up to the slice, so reading a
        // 200,000-row group in slices of 1,000 decoded it 100 times over
        // (a filtered run read for minutes).
        let batch_rows = usize::MAX;
        let keep = |id: RowGroupId| skip.is_none_or(|s| !s.contains(&id));
        scan_row_groups(
            self.source.data_dir,
            &plan.table,
            &plan.columns,
            batch_rows,
            &keep,
        )
        .map_err(failed)
    }

    fn read(&self, plan: &TablePlan, scan: TableScan) -> Result<DataFrame, RunError> {
        read_table(plan, scan, self.wanted.as_ref(), self.control)
    }

    /// Reads a table's kept rows into its partitions' spill files.
    fn spill(
        &self,
        plan: &TablePlan,
        scan: TableScan,
        dir: &Spill,
        partitions: &Partitions,
    ) -> Result<(), RunError> {
        let schema = plan_schema(plan);
        let mut out = TableSpill::create(dir, &plan.table, &schema, partitions)?;
        for_each_batch(plan, scan, self.wanted.as_ref(), self.control, |batch| {
            out.append(&batch)
        })?;
        out.finish()
    }
}

/// Opens every table's scan and starts the reading stage with their rows.
fn open_all(reader: &Reader<'_>, tables: &[TablePlan]) -> Result<Vec<TableScan>, RunError> {
    let scans = tables
        .iter()
        .map(|t| reader.open(t))
        .collect::<Result<Vec<_>, _>>()?;
    reader.control.set_progress(|p| {
        p.tables = tables
            .iter()
            .zip(&scans)
            .map(|(t, scan)| TableProgress {
                table: t.table.clone(),
                rows_done: 0,
                rows_total: scan.rows_planned() as u64,
            })
            .collect();
        // Rows read, then the universe table's rows de-duplicated and
        // indexed (see `universe_of`).
        let read: u64 = scans.iter().map(|s| s.rows_planned() as u64).sum();
        let indexed = scans.first().map_or(0, |s| 2 * s.rows_planned() as u64);
        p.set_total("reading", read + indexed);
    });
    Ok(scans)
}

/// Reads the plan's tables into a [`Universe`]. A `user_ids` run keeps only
/// those users as it reads; an incremental run with a `delta` only the
/// users it names, skipping its row groups.
pub fn load(
    plan: &Plan,
    delta: Option<Delta>,
    source: &Source<'_>,
    control: &TaskControl,
) -> Result<Universe, RunError> {
    let reader = Reader {
        source,
        wanted: wanted_users(plan, delta.as_ref()),
        delta: delta.as_ref(),
        control,
    };
    let (first, rest) = plan
        .tables
        .split_first()
        .ok_or_else(|| RunError::Failed("no table planned".into()))?;
    let mut scans = open_all(&reader, &plan.tables)?.into_iter();
    let first_scan = scans.next().expect("one scan per table");
    let rest_scans: Vec<TableScan> = scans.collect();
    let reader = &reader;
    // Side tables are read on a second thread while this one reads,
    // de-duplicates and indexes the universe; then they are joined.
    let (universe, sides) = std::thread::scope(|scope| {
        let sides = std::thread::Builder::new()
            .name("side-table-reader".into())
            .spawn_scoped(scope, move || {
                rest.iter()
                    .zip(rest_scans)
                    .map(|(table, scan)| reader.read(table, scan))
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|e| RunError::Failed(format!("cannot start a reader thread: {e}")))?;
        let universe = reader
            .read(first, first_scan)
            .and_then(|raw| universe_of(&first.table, raw, control));
        let sides = sides.join().map_err(|payload| {
            RunError::Failed(format!(
                "the side-table reader panicked: {}",
                panic_message(payload.as_ref())
            ))
        })?;
        Ok::<_, RunError>((universe?, sides?))
    })?;
    let mut universe = join_sides(plan, universe, sides, control)?;
    if let Some(delta) = delta {
        // Only changed users were read: the watermarks come from the
        // whole tables' statistics and changed rows.
        universe.newest = delta.newest;
        universe.row_groups = Some((delta.groups_read, delta.groups_total));
    }
    Ok(universe)
}

/// The universe of one partition of a partitioned run, from the rows each
/// planned table spilled to `partition` (the universe table's first).
pub fn assemble(
    plan: &Plan,
    mut frames: Vec<DataFrame>,
    delta: Option<&Delta>,
    control: &TaskControl,
) -> Result<Universe, RunError> {
    if frames.len() != plan.tables.len() || frames.is_empty() {
        return Err(RunError::Failed("a partition lacks a planned table".into()));
    }
    let sides = frames.split_off(1);
    let first = frames.pop().expect("one frame per table");
    let universe = universe_of(&plan.tables[0].table, first, control)?;
    let mut universe = join_sides(plan, universe, sides, control)?;
    if let Some(delta) = delta {
        universe.newest = delta.newest.clone();
    }
    Ok(universe)
}

/// Joins the side tables' rows (in the plan's order after the universe
/// table) onto `universe`.
fn join_sides(
    plan: &Plan,
    mut universe: Universe,
    sides: Vec<DataFrame>,
    control: &TaskControl,
) -> Result<Universe, RunError> {
    let side_rows = sides.iter().map(|f| f.height() as u64).sum();
    control.set_progress(|p| p.enter("joining", side_rows));
    for (table, frame) in plan.tables[1..].iter().zip(sides) {
        let rows = frame.height() as u64;
        join_side_table(&mut universe, &table.table, frame, plan.incremental())?;
        control.set_progress(|p| p.advance("joining", rows));
    }
    Ok(universe)
}

/// Reads every planned table once, appending each row (of the wanted users,
/// outside the skipped row groups) to its user's partition in `dir`: the
/// first pass of a partitioned run. Each table is read on a thread of its own.
pub fn spill(
    plan: &Plan,
    delta: Option<&Delta>,
    source: &Source<'_>,
    dir: &Spill,
    partitions: &Partitions,
    control: &TaskControl,
) -> Result<(), RunError> {
    let reader = Reader {
        source,
        wanted: wanted_users(plan, delta),
        delta,
        control,
    };
    let scans = open_all(&reader, &plan.tables)?;
    let reader = &reader;
    // A thread per table: the tables' sizes differ, and with the universe
    // on one thread and the side tables one after another on a second, the
    // first thread idled for the last third of the pass. Each holds a row
    // group at a time.
    std::thread::scope(|scope| {
        let threads = plan
            .tables
            .iter()
            .zip(scans)
            .map(|(table, scan)| {
                std::thread::Builder::new()
                    .name("spill-reader".into())
                    .spawn_scoped(scope, move || reader.spill(table, scan, dir, partitions))
                    .map_err(|e| RunError::Failed(format!("cannot start a reader thread: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut first_error = None;
        for thread in threads {
            let outcome = thread.join().unwrap_or_else(|payload| {
                Err(RunError::Failed(format!(
                    "a spill reader panicked: {}",
                    panic_message(payload.as_ref())
                )))
            });
            if let Err(e) = outcome {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    })
}

/// The users a run keeps as it reads: a `user_ids` run's, an incremental
/// run's changed users, or all (`None`).
pub fn wanted_users<'a>(plan: &'a Plan, delta: Option<&'a Delta>) -> Option<HashSet<&'a str>> {
    match (&plan.user_ids, delta) {
        (Some(ids), _) => Some(ids.iter().map(String::as_str).collect()),
        (None, Some(delta)) => Some(delta.users.iter().map(String::as_str).collect()),
        (None, None) => None,
    }
}

/// The universe from the universe table's rows: each user's newest row,
/// indexed by user id.
fn universe_of(table: &str, raw: DataFrame, control: &TaskControl) -> Result<Universe, RunError> {
    // De-duplicating and indexing count in the reading stage (two units a
    // row): at 10M users they take over a second after the last row read.
    let mut tick = |n: usize| control.set_progress(|p| p.advance("reading", n as u64));
    let latest = latest_rows(
        user_ids(&raw, table)?,
        updated_times(&raw, table)?,
        &mut tick,
    )?;
    let (keep, dropped) = (latest.keep, latest.dropped);
    let frame = if dropped == 0 {
        raw
    } else {
        let keep = IdxCa::from_vec("keep".into(), keep);
        take_columns(raw, |_| true, &keep)
            .map_err(|e| polars_failed(&format!("table {table}: de-duplicating"), e))?
    };
    let ids = UserIds::new(user_ids(&frame, table)?);
    let mut universe = Universe {
        ids,
        index: latest.index,
        tables: Vec::new(),
        duplicates: BTreeMap::new(),
        newest: BTreeMap::new(),
        row_groups: None,
    };
    if dropped > 0 {
        universe.duplicates.insert(table.to_string(), dropped);
    }
    if let Some(max) = updated_times(&frame, table)?.max() {
        universe.newest.insert(table.to_string(), max);
    }
    universe.tables.push((table.to_string(), frame));
    Ok(universe)
}

/// Left-joins `frame` (a side table's rows) onto the universe, keeping each
/// user's newest row; `updated_time` is carried only when `keep_times`.
fn join_side_table(
    universe: &mut Universe,
    table: &str,
    frame: DataFrame,
    keep_times: bool,
) -> Result<(), RunError> {
    let times = updated_times(&frame, table)?;
    let (take, dropped) = join_latest(
        user_ids(&frame, table)?,
        times,
        &mut RowFinder::new(&universe.ids, &universe.index),
    );
    if dropped > 0 {
        universe.duplicates.insert(table.to_string(), dropped);
    }
    if let Some(max) = times.max() {
        universe.newest.insert(table.to_string(), max);
    }
    // Only the tags' columns (and updated_time, for an incremental scope)
    // are carried over: the join key is not copied.
    let carried = |name: &str| name != USER_ID && (keep_times || name != UPDATED_TIME);
    let frame = take_columns(frame, carried, &take)
        .map_err(|e| polars_failed(&format!("table {table}: joining on user_id"), e))?;
    universe.tables.push((table.to_string(), frame));
    Ok(())
}

/// The rows `rows` of the columns of `frame` that `keep` names, one column
/// at a time: each source column is freed as soon as it is copied, so a
/// table is never held twice (at 10M users a universe copy is ~600 MB).
fn take_columns(
    frame: DataFrame,
    keep: impl Fn(&str) -> bool,
    rows: &IdxCa,
) -> PolarsResult<DataFrame> {
    let mut out = Vec::new();
    for column in frame.into_columns() {
        if keep(column.name().as_str()) {
            out.push(column.take(rows)?.rechunk());
        }
    }
    DataFrame::new(rows.len(), out)
}

/// Each batch of a table's scan, of only `wanted` users if given (filtered
/// batch by batch as the scan goes, so a `user_ids` run never holds the
/// whole table).
fn for_each_batch(
    plan: &TablePlan,
    scan: TableScan,
    wanted: Option<&HashSet<&str>>,
    control: &TaskControl,
    mut each: impl FnMut(DataFrame) -> Result<(), RunError>,
) -> Result<(), RunError> {
    let table = &plan.table;
    for batch in scan {
        control.checkpoint().map_err(stopped)?;
        let mut batch = batch.map_err(failed)?;
        let read = batch.height() as u64;
        control.set_progress(|p| p.read_rows(table, read));
        if let Some(wanted) = wanted {
            let keep: BooleanChunked = user_ids(&batch, table)?
                .iter()
                .map(|id| Some(id.is_some_and(|id| wanted.contains(id))))
                .collect();
            batch = batch.filter(&keep).map_err(|e| polars_failed(table, e))?;
        }
        each(batch)?;
    }
    Ok(())
}

/// The columns a table's batches have.
fn plan_schema(plan: &TablePlan) -> Schema {
    plan.columns
        .iter()
        .map(|c| Field::new(c.name.as_str().into(), polars_type(c.column_type)))
        .collect()
}

/// Reads a table's planned columns, keeping only `wanted` users if given
/// and leaving out the row groups in `skip`.
fn read_table(
    plan: &TablePlan,
    scan: TableScan,
    wanted: Option<&HashSet<&str>>,
    control: &TaskControl,
) -> Result<DataFrame, RunError> {
    let table = &plan.table;
    let mut out: Option<DataFrame> = None;
    for_each_batch(plan, scan, wanted, control, |batch| {
        match out.as_mut() {
            None => out = Some(batch),
            Some(acc) => {
                acc.vstack_mut(&batch)
                    .map_err(|e| polars_failed(table, e))?;
            }
        }
        Ok(())
    })?;
    let frame = out.unwrap_or_else(|| DataFrame::empty_with_schema(&plan_schema(plan)));
    rechunked(frame).map_err(|e| polars_failed(table, e))
}

/// `frame` with each column in one chunk, one column at a time, so the
/// table is not held twice.
pub fn rechunked(frame: DataFrame) -> PolarsResult<DataFrame> {
    let height = frame.height();
    let columns = frame
        .into_columns()
        .into_iter()
        .map(|c| c.rechunk())
        .collect();
    DataFrame::new(height, columns)
}

fn user_ids<'a>(frame: &'a DataFrame, table: &str) -> Result<&'a StringChunked, RunError> {
    frame
        .column(USER_ID)
        .and_then(|c| c.as_materialized_series().str())
        .map_err(|e| polars_failed(&format!("table {table}: column {USER_ID}"), e))
}

fn updated_times<'a>(frame: &'a DataFrame, table: &str) -> Result<&'a Int64Chunked, RunError> {
    frame
        .column(UPDATED_TIME)
        .and_then(|c| c.as_materialized_series().datetime())
        .map(|d| d.physical())
        .map_err(|e| polars_failed(&format!("table {table}: column {UPDATED_TIME}"), e))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::testkit::{at, plan, tag_at_least, write_table};
    use crate::model::Mode;
    use std::sync::Arc;
    use tag_plugin_loader::RegisteredTag;

    /// A universe with a newer duplicate, a null id and a null time; a side
    /// table with a newer duplicate, a missing user and an outsider.
    pub fn sample(dir: &Path) {
        write_table(
            &dir.join("user_basic_info.parquet"),
            "score",
            &[
                (Some("u1"), at(1), Some(1.0)),
                (Some("u2"), at(1), Some(2.0)),
                (Some("u1"), at(5), Some(10.0)),
                (None, at(1), Some(3.0)),
                (Some("u3"), None, Some(4.0)),
            ],
            2,
        );
        write_table(
            &dir.join("user_asset_summary.parquet"),
            "cash",
            &[
                (Some("u3"), at(1), Some(30.0)),
                (Some("u1"), at(1), Some(100.0)),
                (Some("u1"), at(2), Some(200.0)),
                (Some("zz"), at(9), Some(9.0)),
            ],
            3,
        );
    }

    /// The sample written to a new directory, planned for `tags` (a full
    /// run, or one over `user_ids`) and loaded in batches of two rows.
    pub fn loaded(
        tags: &[Arc<RegisteredTag>],
        user_ids: Option<&[&str]>,
    ) -> (tempfile::TempDir, Plan, Universe) {
        let dir = tempfile::tempdir().unwrap();
        sample(dir.path());
        let plan = plan(tags, Mode::Full, user_ids);
        let source = Source {
            data_dir: dir.path(),
            batch_rows: 2,
        };
        let universe = load(&plan, None, &source, &TaskControl::default()).unwrap();
        (dir, plan, universe)
    }

    /// Tag 1: `user_asset_summary.cash >= 150`.
    pub fn cash_tag() -> Arc<RegisteredTag> {
        tag_at_least(1, "user_asset_summary", "cash", 150.0)
    }

    fn values(universe: &Universe, table: &str, column: &str) -> Vec<Option<f64>> {
        let column = universe.column(table, column).unwrap();
        column
            .as_materialized_series()
            .f64()
            .unwrap()
            .iter()
            .collect()
    }

    #[test]
    fn the_universe_keeps_each_users_newest_row_and_side_tables_align_with_it() {
        let (_dir, _, universe) = loaded(&[cash_tag()], None);
        let ids: Vec<&str> = (0..universe.rows()).map(|i| universe.ids.get(i)).collect();
        assert_eq!(ids, vec!["u2", "u1", "u3"]);
        assert_eq!(
            values(&universe, "user_asset_summary", "cash"),
            vec![None, Some(200.0), Some(30.0)]
        );
        assert_eq!(universe.duplicates["user_basic_info"], 2);
        assert_eq!(universe.duplicates["user_asset_summary"], 1);
        assert_eq!(universe.newest["user_basic_info"], at(5).unwrap());
        assert_eq!(universe.newest["user_asset_summary"], at(9).unwrap());
        assert_eq!(universe.index.row(&universe.ids, "u3"), Some(2));
    }

    #[test]
    fn a_user_ids_run_loads_only_those_users() {
        let (_dir, _, universe) = loaded(&[cash_tag()], Some(&["u3", "nobody"]));
        assert_eq!(universe.rows(), 1);
        assert_eq!(
            values(&universe, "user_asset_summary", "cash"),
            vec![Some(30.0)]
        );
    }
}
