//! One task end to end: read the declared columns of the source tables,
//! de-duplicate and join them onto the user universe, evaluate each tag's
//! current rule through its plugin batch by batch, then diff the per-user
//! tag sets against the store and write the changes in one transaction.

use crate::data::ffi::with_ffi_batch;
use crate::data::read::{scan_table, ColumnRequest};
use crate::data::DataError;
use crate::model::{now_timestamp, Mode, TaskRecord};
use crate::registry::{RegisteredTag, TagRegistry};
use crate::scheduler::{RunError, Stop, TagProgress, TaskControl, TaskRunner};
use crate::store::{ChangeSink, RunWriter, Store, StoreError, TagIds, TagState};
use hashbrown::HashTable;
use polars::prelude::*;
use rustc_hash::FxBuildHasher;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashSet};
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Instant;
use tag_plugin_api::{ColumnType, Date, Mask, Rule};

/// The table that defines the user universe.
pub const UNIVERSE_TABLE: &str = "user_basic_info";
const USER_ID: &str = "user_id";
const UPDATED_TIME: &str = "updated_time";
/// How many unknown `user_ids` a result lists.
const UNKNOWN_SAMPLE: usize = 10;

/// Computes tasks for the scheduler and the one-shot runner.
pub struct Engine {
    store: Arc<dyn Store>,
    registry: Arc<RwLock<TagRegistry>>,
    data_dir: PathBuf,
    batch_rows: usize,
}

/// A tag prepared for one run.
struct TagRun {
    tag: Arc<RegisteredTag>,
    rule: String,
    rule_version: i64,
    /// Evaluate every row (full semantics) even in incremental mode.
    whole_universe: bool,
    watermarks: BTreeMap<String, i64>,
    mask: Vec<u64>,
    scope: Option<Vec<u64>>,
}

/// One source table, aligned row for row with the universe.
struct Aligned {
    table: String,
    frame: DataFrame,
}

fn failed(e: impl std::fmt::Display) -> RunError {
    RunError::Failed(e.to_string())
}

fn stopped(stop: Stop) -> RunError {
    RunError::Stopped(stop)
}

fn polars_failed(context: &str, e: PolarsError) -> RunError {
    RunError::Failed(format!("{context}: {e}"))
}

fn bit(words: &[u64], i: usize) -> bool {
    words[i / 64] >> (i % 64) & 1 == 1
}

impl Engine {
    /// An engine over `data_dir`, using the tags of `registry` and `store`.
    pub fn new(
        store: Arc<dyn Store>,
        registry: Arc<RwLock<TagRegistry>>,
        data_dir: PathBuf,
        batch_rows: usize,
    ) -> Engine {
        Engine {
            store,
            registry,
            data_dir,
            batch_rows: batch_rows.max(64),
        }
    }

    /// The columns each table must provide for `tags` (plus `user_id` and
    /// `updated_time`), universe first.
    fn plan(tags: &[TagRun]) -> Result<Vec<(String, Vec<ColumnRequest>)>, RunError> {
        let mut tables: BTreeMap<String, Vec<ColumnRequest>> = BTreeMap::new();
        tables.entry(UNIVERSE_TABLE.to_string()).or_default();
        for t in tags {
            for input in &t.tag.info.inputs {
                let columns = tables.entry(input.table.clone()).or_default();
                match columns.iter().find(|c| c.name == input.column) {
                    Some(c) if c.column_type != input.column_type => {
                        return Err(RunError::Failed(format!(
                            "tags disagree on the type of {}.{}: {} and {}",
                            input.table, input.column, c.column_type, input.column_type
                        )))
                    }
                    Some(_) => {}
                    None => {
                        columns.push(ColumnRequest::new(input.column.clone(), input.column_type))
                    }
                }
            }
        }
        let mut plan: Vec<_> = tables
            .into_iter()
            .map(|(table, mut columns)| {
                columns.retain(|c| c.name != USER_ID && c.name != UPDATED_TIME);
                columns.insert(0, ColumnRequest::new(USER_ID, ColumnType::Utf8));
                columns.push(ColumnRequest::new(UPDATED_TIME, ColumnType::Timestamp));
                (table, columns)
            })
            .collect();
        plan.sort_by_key(|(table, _)| table != UNIVERSE_TABLE);
        Ok(plan)
    }

    /// Reads a whole table's requested columns, keeping only `users` if given.
    fn read_table(
        &self,
        table: &str,
        columns: &[ColumnRequest],
        users: Option<&HashSet<&str>>,
        control: &TaskControl,
    ) -> Result<DataFrame, RunError> {
        let scan = scan_table(&self.data_dir, table, columns, self.batch_rows).map_err(failed)?;
        let mut out: Option<DataFrame> = None;
        for batch in scan {
            control.checkpoint().map_err(stopped)?;
            let mut batch = batch.map_err(failed)?;
            if let Some(users) = users {
                // The user filter is applied batch by batch as the scan goes,
                // so a user_ids run never holds the whole table.
                let ids = user_ids(&batch, table)?;
                let keep: BooleanChunked = ids
                    .iter()
                    .map(|id| Some(id.is_some_and(|id| users.contains(id))))
                    .collect();
                batch = batch.filter(&keep).map_err(|e| polars_failed(table, e))?;
            }
            match out.as_mut() {
                None => out = Some(batch),
                Some(acc) => {
                    acc.vstack_mut(&batch)
                        .map_err(|e| polars_failed(table, e))?;
                }
            }
        }
        let mut frame = match out {
            Some(frame) => frame,
            None => DataFrame::empty_with_schema(
                &columns
                    .iter()
                    .map(|c| {
                        Field::new(
                            c.name.as_str().into(),
                            crate::data::read::polars_type(c.column_type),
                        )
                    })
                    .collect(),
            ),
        };
        frame.rechunk_mut();
        Ok(frame)
    }

    fn prepare_tags(&self, task: &TaskRecord) -> Result<Vec<TagRun>, RunError> {
        let registry = self
            .registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let states = self.store.tag_states().map_err(failed)?;
        task.spec
            .tag_ids
            .iter()
            .map(|&id| {
                let tag = registry.get(id).cloned().ok_or_else(|| {
                    RunError::Failed(format!("tag {id} is not provided by any loaded plugin"))
                })?;
                let stored = match self.store.current_rule(id).map_err(failed)? {
                    Some(rule) => rule,
                    None => self
                        .store
                        .seed_rule(id, &tag.info.default_rule)
                        .map_err(failed)?,
                };
                tag.validate_rule(&stored.rule).map_err(|e| {
                    RunError::Failed(format!(
                        "stored rule version {} is invalid: {e}",
                        stored.version
                    ))
                })?;
                let state = states.get(&id);
                let whole_universe = task.spec.mode == Mode::Full
                    || state.is_none_or(|s| !s.had_full_run || s.rule_version != stored.version);
                Ok(TagRun {
                    tag,
                    rule: stored.rule,
                    rule_version: stored.version,
                    whole_universe,
                    watermarks: state.map(|s| s.watermarks.clone()).unwrap_or_default(),
                    mask: Vec::new(),
                    scope: None,
                })
            })
            .collect()
    }

    fn run_task(&self, task: &TaskRecord, control: &TaskControl) -> Result<Value, RunError> {
        let started = Instant::now();
        let as_of = match &task.spec.as_of {
            Some(text) => Date::parse(text)
                .ok_or_else(|| RunError::Failed(format!("as_of {text:?} is not a date")))?,
            None => Date::today_utc(),
        };
        let mut tags = self.prepare_tags(task)?;
        let plan = Engine::plan(&tags)?;
        control.set_progress(|p| {
            p.stage = "reading".into();
            p.tags = tags
                .iter()
                .map(|t| TagProgress {
                    tag_id: t.tag.info.tag_id,
                    rows_done: 0,
                })
                .collect();
        });

        let mut timings = Map::new();
        let mut lap = Instant::now();
        let mut mark = |name: &str, timings: &mut Map<String, Value>| {
            timings.insert(name.to_string(), json!(lap.elapsed().as_millis() as u64));
            lap = Instant::now();
        };
        let requested: Option<HashSet<&str>> = task
            .spec
            .user_ids
            .as_ref()
            .map(|ids| ids.iter().map(String::as_str).collect());
        let mut duplicates = Map::new();
        let (universe_table, universe_columns) = &plan[0];
        let raw_universe = self.read_table(
            universe_table,
            universe_columns,
            requested.as_ref(),
            control,
        )?;
        // Every user id of the universe table, "" for a null one (rows
        // without a user id are dropped below, so "" is never looked up).
        let raw_ids: Vec<&str> = user_ids(&raw_universe, universe_table)?
            .iter()
            .map(Option::unwrap_or_default)
            .collect();
        let (latest, dropped) = latest_rows(&raw_universe, &raw_ids, universe_table)?;
        let deduplicated;
        let (universe, universe_ids, universe_rows) = if dropped == 0 {
            // Every row is its own user's latest: the table built to find
            // duplicates is already the join index.
            (&raw_universe, raw_ids, latest)
        } else {
            duplicates.insert(universe_table.clone(), json!(dropped));
            let mut keep: Vec<IdxSize> = latest.into_iter().collect();
            keep.sort_unstable();
            drop(raw_ids);
            deduplicated = raw_universe
                .take(&IdxCa::from_vec("keep".into(), keep))
                .map_err(|e| {
                    polars_failed(&format!("table {universe_table}: de-duplicating"), e)
                })?;
            let ids: Vec<&str> = user_ids(&deduplicated, universe_table)?
                .iter()
                .map(Option::unwrap_or_default)
                .collect();
            let index = UniverseIndex::of_unique(&ids);
            (&deduplicated, ids, index)
        };
        let mut aligned = vec![Aligned {
            table: universe_table.clone(),
            frame: universe.clone(),
        }];
        let incremental = task.spec.user_ids.is_none() && task.spec.mode == Mode::Incremental;
        // Per table, the newest row read: the next incremental run's watermark.
        let mut newest: BTreeMap<String, i64> = BTreeMap::new();
        if let Some(max) = max_updated(universe, universe_table)? {
            newest.insert(universe_table.clone(), max);
        }
        for (table, columns) in &plan[1..] {
            let frame = self.read_table(table, columns, requested.as_ref(), control)?;
            let (take, dropped) = join_latest(
                &frame,
                table,
                &mut RowFinder::new(&universe_ids, &universe_rows),
            )?;
            if dropped > 0 {
                duplicates.insert(table.clone(), json!(dropped));
            }
            if let Some(max) = max_updated(&frame, table)? {
                newest.insert(table.clone(), max);
            }
            // Only the tags' columns (and updated_time, for an incremental
            // scope) are carried over: the join key is not copied.
            let carried: Vec<PlSmallStr> = frame
                .get_column_names()
                .into_iter()
                .filter(|name| {
                    name.as_str() != USER_ID && (incremental || name.as_str() != UPDATED_TIME)
                })
                .cloned()
                .collect();
            // Left join on user_id: row i belongs to universe_ids[i], nulls
            // where this table has no row for that user.
            let mut frame = frame
                .select(carried)
                .and_then(|f| f.take(&take))
                .map_err(|e| polars_failed(&format!("table {table}: joining on user_id"), e))?;
            frame.rechunk_mut();
            aligned.push(Aligned {
                table: table.clone(),
                frame,
            });
        }
        let rows = universe_ids.len();
        mark("read_ms", &mut timings);

        // Incremental scope: rows whose source rows changed since the tag's watermarks.
        if incremental {
            for t in tags.iter_mut().filter(|t| !t.whole_universe) {
                t.scope = Some(changed_rows(&aligned, &t.tag, &t.watermarks, rows)?);
            }
        }

        control.set_progress(|p| {
            p.stage = "evaluating".into();
            p.rows_total = rows * tags.len();
        });
        for t in tags.iter_mut() {
            t.mask = vec![0; rows.div_ceil(64)];
            let columns: Vec<Column> = t
                .tag
                .info
                .inputs
                .iter()
                .map(|input| {
                    let a = aligned
                        .iter()
                        .find(|a| a.table == input.table)
                        .expect("every input table was read");
                    a.frame
                        .column(&input.column)
                        .cloned()
                        .map_err(|e| polars_failed(&input.table, e))
                })
                .collect::<Result<_, _>>()?;
            let mut offset = 0;
            while offset < rows {
                control.checkpoint().map_err(stopped)?;
                let len = self.batch_rows.min(rows - offset);
                let batch = DataFrame::new(
                    len,
                    columns
                        .iter()
                        .map(|c| c.slice(offset as i64, len))
                        .collect(),
                )
                .map_err(|e| polars_failed("building a batch", e))?;
                let mask = with_ffi_batch(&batch, |ffi| t.tag.evaluate(ffi, &t.rule, as_of))
                    .map_err(|e: DataError| RunError::Failed(e.to_string()))?
                    .map_err(failed)?;
                merge_mask(&mut t.mask, offset, &mask);
                offset += len;
                let id = t.tag.info.tag_id;
                control.set_progress(|p| {
                    p.rows_done += len;
                    if let Some(tp) = p.tags.iter_mut().find(|tp| tp.tag_id == id) {
                        tp.rows_done += len;
                    }
                });
            }
        }

        mark("evaluate_ms", &mut timings);
        control.checkpoint().map_err(stopped)?;
        control.set_progress(|p| p.stage = "writing".into());
        let now = now_timestamp();
        // A user_ids run evaluates only some users: it must not move the
        // watermarks that incremental runs rely on.
        let states = if task.spec.user_ids.is_some() {
            Vec::new()
        } else {
            tags.iter()
                .map(|t| TagState {
                    tag_id: t.tag.info.tag_id,
                    rule_version: t.rule_version,
                    watermarks: tag_tables(&t.tag)
                        .filter_map(|table| {
                            let mark = newest.get(table).or(t.watermarks.get(table))?;
                            Some((table.to_string(), *mark))
                        })
                        .collect(),
                    had_full_run: true,
                })
                .collect()
        };
        let mut write = RunWrite {
            ids: &universe_ids,
            rows: RowFinder::new(&universe_ids, &universe_rows),
            tags: &tags,
            now: &now,
            old: vec![TagIds::new(); rows],
            counts: Vec::new(),
            evaluated: 0,
            states,
        };
        let summary = self.store.write_run(&now, &mut write).map_err(|e| {
            RunError::Failed(format!("writing results failed, nothing was written: {e}"))
        })?;
        let (evaluated, counts) = (write.evaluated, write.counts);

        mark("write_ms", &mut timings);
        timings.insert("commit_ms".into(), json!(summary.commit_ms));
        let mut notes = Vec::new();
        if task.spec.mode == Mode::Incremental {
            let windowed: Vec<u32> = tags
                .iter()
                .filter(|t| uses_date_window(&t.rule))
                .map(|t| t.tag.info.tag_id)
                .collect();
            if !windowed.is_empty() {
                notes.push(format!(
                    "tags {windowed:?} use date windows that move with as_of; an incremental run does not revoke tags that expired by date alone, a full run does"
                ));
            }
        }
        let mut result = json!({
            "total_users": evaluated,
            "message": format!("Successfully processed {evaluated} users"),
            "mode": task.spec.mode,
            "as_of": as_of.to_string(),
            "universe_users": rows,
            "tags": tags.iter().zip(&counts).map(|(t, c)| json!({
                "tag_id": t.tag.info.tag_id,
                "tag_name": t.tag.info.description,
                "rule_version": t.rule_version,
                "evaluated_users": c.evaluated,
                "matched": c.matched,
                "added": c.added,
                "removed": c.removed,
                "scope": if t.scope.is_some() { "changed users" } else { "all users" },
            })).collect::<Vec<_>>(),
            "rows_upserted": summary.rows_upserted,
            "rows_deleted": summary.rows_deleted,
            "duplicates_dropped": duplicates,
            "notes": notes,
            "duration_ms": started.elapsed().as_millis() as u64,
            "timings": timings,
        });
        if let Some(requested) = &task.spec.user_ids {
            let known: HashSet<&str> = universe_ids.iter().copied().collect();
            let unknown: Vec<&String> = requested
                .iter()
                .filter(|id| !known.contains(id.as_str()))
                .collect();
            result["unknown_user_ids"] = json!({
                "count": unknown.len(),
                "sample": unknown.iter().take(UNKNOWN_SAMPLE).collect::<Vec<_>>(),
            });
        }
        Ok(result)
    }
}

impl TaskRunner for Engine {
    fn run(&self, task: &TaskRecord, control: &TaskControl) -> Result<Value, RunError> {
        self.run_task(task, control)
    }
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

/// The universe row of each user id: a hash table of row numbers whose
/// keys are read from the universe's id column. Four bytes a user, where a
/// map keyed by string slices takes forty: at 10M users that is 64 MB
/// instead of 640 MB to allocate, fault in and miss in the cache.
struct UniverseIndex {
    rows: HashTable<IdxSize>,
}

fn hash_id(id: &str) -> u64 {
    FxBuildHasher.hash_one(id)
}

impl UniverseIndex {
    fn with_capacity(n: usize) -> UniverseIndex {
        UniverseIndex {
            rows: HashTable::with_capacity(n),
        }
    }

    /// The index of `ids`, which holds no duplicates.
    fn of_unique(ids: &[&str]) -> UniverseIndex {
        let mut index = UniverseIndex::with_capacity(ids.len());
        for (row, id) in ids.iter().enumerate() {
            index.insert(ids, hash_id(id), row);
        }
        index
    }

    /// Adds `row` (whose id in `ids` hashes to `hash`), which is not in yet.
    fn insert(&mut self, ids: &[&str], hash: u64, row: usize) {
        self.rows
            .insert_unique(hash, row as IdxSize, |&r| hash_id(ids[r as usize]));
    }

    /// The row of `user_id`, where `ids` are the ids the index was built on.
    fn row(&self, ids: &[&str], user_id: &str) -> Option<IdxSize> {
        self.rows
            .find(hash_id(user_id), |&r| ids[r as usize] == user_id)
            .copied()
    }
}

impl IntoIterator for UniverseIndex {
    type Item = IdxSize;
    type IntoIter = hashbrown::hash_table::IntoIter<IdxSize>;

    fn into_iter(self) -> Self::IntoIter {
        self.rows.into_iter()
    }
}

/// Finds universe rows for a stream of user ids. Tables written by the same
/// pipeline usually list users in the same order, so the row after the last
/// one found is tried first; the hash index is the fallback (a lookup in a
/// map of millions of users costs a cache miss, a comparison does not).
struct RowFinder<'a> {
    ids: &'a [&'a str],
    index: &'a UniverseIndex,
    next: usize,
}

impl<'a> RowFinder<'a> {
    fn new(ids: &'a [&'a str], index: &'a UniverseIndex) -> RowFinder<'a> {
        RowFinder {
            ids,
            index,
            next: 0,
        }
    }

    fn find(&mut self, user_id: &str) -> Option<IdxSize> {
        // The next row, or the one after it (a user missing from this table).
        for guess in [self.next, self.next + 1] {
            if self.ids.get(guess) == Some(&user_id) {
                self.next = guess + 1;
                return Some(guess as IdxSize);
            }
        }
        let row = self.index.row(self.ids, user_id)?;
        self.next = row as usize + 1;
        Some(row)
    }
}

/// For each `user_id`, the row with the greatest `updated_time` (the first
/// such row on ties; rows without a user id are skipped), as an index of
/// those rows, and how many rows that leaves out. `ids` are the frame's user
/// ids.
fn latest_rows(
    frame: &DataFrame,
    ids: &[&str],
    table: &str,
) -> Result<(UniverseIndex, usize), RunError> {
    let nullable = user_ids(frame, table)?;
    let times = updated_times(frame, table)?;
    let mut latest = UniverseIndex::with_capacity(ids.len());
    let mut dropped = 0;
    for (i, (id, time)) in nullable.iter().zip(times.iter()).enumerate() {
        let Some(id) = id else {
            dropped += 1;
            continue;
        };
        let hash = hash_id(id);
        match latest.rows.find_mut(hash, |&r| ids[r as usize] == id) {
            None => latest.insert(ids, hash, i),
            Some(kept) => {
                dropped += 1;
                // Duplicates are rare: the kept row's time is looked up.
                if time > times.get(*kept as usize) {
                    *kept = i as IdxSize;
                }
            }
        }
    }
    Ok((latest, dropped))
}

/// For each universe row, the row of a side table with that user's greatest
/// `updated_time` (the first on ties), or null where the table has none: a
/// de-duplicating left join in one pass over the side table. Also returns how
/// many of the table's rows for universe users were left out as duplicates.
fn join_latest(
    frame: &DataFrame,
    table: &str,
    universe: &mut RowFinder<'_>,
) -> Result<(IdxCa, usize), RunError> {
    let ids = user_ids(frame, table)?;
    let times = updated_times(frame, table)?;
    let mut chosen: Vec<Option<(IdxSize, Option<i64>)>> = vec![None; universe.ids.len()];
    let mut dropped = 0usize;
    for (i, (id, time)) in ids.iter().zip(times.iter()).enumerate() {
        let Some(slot) = id.and_then(|id| universe.find(id)) else {
            continue;
        };
        match &mut chosen[slot as usize] {
            entry @ None => *entry = Some((i as IdxSize, time)),
            Some(best) => {
                dropped += 1;
                if time > best.1 {
                    *best = (i as IdxSize, time);
                }
            }
        }
    }
    Ok((
        chosen.into_iter().map(|c| c.map(|(i, _)| i)).collect(),
        dropped,
    ))
}

fn max_updated(frame: &DataFrame, table: &str) -> Result<Option<i64>, RunError> {
    Ok(updated_times(frame, table)?.max())
}

/// The tables a tag depends on: its inputs' and the universe.
fn tag_tables(tag: &RegisteredTag) -> impl Iterator<Item = &str> {
    let mut tables: Vec<&str> = tag
        .info
        .inputs
        .iter()
        .map(|i| i.table.as_str())
        .chain([UNIVERSE_TABLE])
        .collect();
    tables.sort_unstable();
    tables.dedup();
    tables.into_iter()
}

/// Rows where any table the tag reads has a row newer than that table's
/// watermark, or where the user's universe row has no `updated_time`
/// (unknown: evaluate).
fn changed_rows(
    aligned: &[Aligned],
    tag: &RegisteredTag,
    watermarks: &BTreeMap<String, i64>,
    rows: usize,
) -> Result<Vec<u64>, RunError> {
    let mut scope = vec![0u64; rows.div_ceil(64)];
    let tables: HashSet<&str> = tag_tables(tag).collect();
    for a in aligned.iter().filter(|a| tables.contains(a.table.as_str())) {
        let universe = a.table == UNIVERSE_TABLE;
        let watermark = watermarks.get(&a.table).copied().unwrap_or(i64::MIN);
        for (i, time) in updated_times(&a.frame, &a.table)?.iter().enumerate() {
            let changed = match time {
                Some(t) => t > watermark,
                None => universe,
            };
            if changed {
                scope[i / 64] |= 1 << (i % 64);
            }
        }
    }
    Ok(scope)
}

fn merge_mask(words: &mut [u64], offset: usize, mask: &Mask) {
    if offset.is_multiple_of(64) {
        let start = offset / 64;
        words[start..start + mask.words().len()].copy_from_slice(mask.words());
    } else {
        for i in mask.ones() {
            let at = offset + i;
            words[at / 64] |= 1 << (at % 64);
        }
    }
}

fn uses_date_window(rule: &str) -> bool {
    Rule::parse(rule).is_ok_and(|r| {
        r.conditions().iter().any(|c| {
            matches!(
                c.operator,
                tag_plugin_api::rule::Operator::RecentDays
                    | tag_plugin_api::rule::Operator::DaysAgoBetween
            )
        })
    })
}

/// Per-tag figures of a run.
#[derive(Debug, Default, Clone, Copy)]
struct TagCounts {
    evaluated: usize,
    matched: usize,
    added: usize,
    removed: usize,
}

/// `"<id>":{...}`: the `tag_details` member of a tag a user gains in this
/// run. The same for every user, so built once per run.
fn detail_member(t: &TagRun, now: &str) -> String {
    let entry = json!({
        "tag_name": t.tag.info.description,
        "tag_category": t.tag.info.category,
        "hit_time": now,
        "rule_version": t.rule_version,
    });
    format!("\"{}\":{entry}", t.tag.info.tag_id)
}

/// The member for tag `id` in a per-run table of members.
fn lookup(members: &[(u32, String)], id: u32) -> Option<&str> {
    members
        .iter()
        .find(|(t, _)| *t == id)
        .map(|(_, m)| m.as_str())
}

/// A JSON object of the members `member(id)` for each id of `ids` that has one.
fn json_object<'m>(
    ids: impl Iterator<Item = u32>,
    member: impl Fn(u32) -> Option<&'m str>,
) -> String {
    let mut out = String::with_capacity(256);
    out.push('{');
    for text in ids.filter_map(member) {
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(text);
    }
    out.push('}');
    out
}

/// A run's side of the write transaction: current tag ids are placed by
/// universe row as the store reads them, then the diff goes to the sink.
struct RunWrite<'r> {
    ids: &'r [&'r str],
    rows: RowFinder<'r>,
    tags: &'r [TagRun],
    now: &'r str,
    /// Current tag ids per universe row (users outside the universe keep
    /// their rows untouched, so they are not held).
    old: Vec<TagIds>,
    counts: Vec<TagCounts>,
    evaluated: usize,
    states: Vec<TagState>,
}

impl RunWriter for RunWrite<'_> {
    fn current(&mut self, user_id: &str, tag_ids: TagIds) {
        if let Some(row) = self.rows.find(user_id) {
            self.old[row as usize] = tag_ids;
        }
    }

    fn changes(&mut self, sink: &mut dyn ChangeSink) -> Result<Vec<TagState>, StoreError> {
        self.counts = vec![TagCounts::default(); self.tags.len()];
        self.evaluated = diff(
            self.ids,
            self.tags,
            &self.old,
            self.now,
            &mut self.counts,
            sink,
        )?;
        Ok(self.states.clone())
    }
}

/// Sends to `sink` the rows to write so that each evaluated user's tags in
/// the run's tag set are exactly those that matched; other tags are kept.
/// Returns the number of users evaluated for at least one tag.
fn diff(
    ids: &[&str],
    tags: &[TagRun],
    olds: &[TagIds],
    now: &str,
    counts: &mut [TagCounts],
    sink: &mut dyn ChangeSink,
) -> Result<usize, StoreError> {
    let mut evaluated = 0;
    let mut in_scope = vec![false; tags.len()];
    let gained: Vec<(u32, String)> = tags
        .iter()
        .map(|t| (t.tag.info.tag_id, detail_member(t, now)))
        .collect();
    let lost: Vec<(u32, String)> = tags
        .iter()
        .map(|t| (t.tag.info.tag_id, format!("\"{}\":null", t.tag.info.tag_id)))
        .collect();
    let mut new_ids: Vec<u32> = Vec::with_capacity(16);
    for (i, user) in ids.iter().enumerate() {
        for (scoped, t) in in_scope.iter_mut().zip(tags) {
            *scoped = t.scope.as_ref().is_none_or(|s| bit(s, i));
        }
        if !in_scope.contains(&true) {
            continue;
        }
        evaluated += 1;
        let old: &[u32] = &olds[i];
        // Tags outside this run (or outside its scope for this user) stay.
        new_ids.clear();
        new_ids.extend(old.iter().copied().filter(|id| {
            !tags
                .iter()
                .zip(&in_scope)
                .any(|(t, s)| *s && t.tag.info.tag_id == *id)
        }));
        for ((t, scoped), c) in tags.iter().zip(&in_scope).zip(counts.iter_mut()) {
            if !scoped {
                continue;
            }
            c.evaluated += 1;
            let id = t.tag.info.tag_id;
            let hit = bit(&t.mask, i);
            let had = old.contains(&id);
            if hit {
                c.matched += 1;
                new_ids.push(id);
            }
            match (had, hit) {
                (false, true) => c.added += 1,
                (true, false) => c.removed += 1,
                _ => {}
            }
        }
        new_ids.sort_unstable();
        new_ids.dedup();
        if new_ids.as_slice() == old {
            continue;
        }
        if new_ids.is_empty() {
            sink.delete(user)?;
        } else if old.is_empty() {
            let details = json_object(new_ids.iter().copied(), |id| lookup(&gained, id));
            sink.insert(user, &new_ids, &details)?;
        } else {
            // A merge patch: members for gained tags, null for lost ones.
            let changed = tags
                .iter()
                .map(|t| t.tag.info.tag_id)
                .filter(|id| old.contains(id) != new_ids.contains(id));
            let details_patch = json_object(changed, |id| {
                if new_ids.contains(&id) {
                    lookup(&gained, id)
                } else {
                    lookup(&lost, id)
                }
            });
            sink.update(user, &new_ids, &details_patch)?;
        }
    }
    Ok(evaluated)
}
