//! Where a partitioned run keeps its partitions until each is computed:
//! the partition of each row, each table's rows per partition, and the
//! users' current tags per partition. A run beyond its memory limit spills
//! them to files (a directory of its own, 0700, removed when the run ends
//! however it ends, and by the next start after a kill; tables as Arrow IPC
//! files); a run within its limit that is split only so its writing
//! overlaps the next partition's computing keeps them in memory.
//!
//! Every row of a user lands in the same partition, in the order it was
//! read, so de-duplicating and joining a partition gives exactly the rows
//! the whole table would. Partitions are ranges of user ids ([`Partitions`]).

use super::{RunError, USER_ID};
use crate::store::{Held, Op, RowSink, UserRows};
use crate::tasks::owner::Owner;
use polars::prelude::*;
use polars_arrow::io::ipc::write::{FileWriter, WriteOptions};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Where runs spill when `--spill-dir` is not given.
pub fn default_root() -> PathBuf {
    crate::disk::cache_dir("spill")
}

/// Row groups of the universe table whose user ids are read to place the
/// partitions' bounds.
const SAMPLED_GROUPS: usize = 32;

/// The partitions of a run: user-id ranges, split at ids sampled from the
/// universe table, so each partition's users are contiguous in id order.
/// The store then takes each partition's writes as one ascending run after
/// the previous partition's (with hash partitions each partition's keys
/// spread over the whole B-tree: a 10M-user run into SQLite took 1.4x as
/// long, into MariaDB 2.1x). Users without an id go to the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partitions {
    /// Ascending: partition `k` holds ids from `bounds[k - 1]` (inclusive)
    /// to `bounds[k]` (exclusive).
    bounds: Vec<String>,
    /// Each bound's [`prefix`], compared first: every row of every table
    /// is placed, and whole-string comparisons were a tenth of a run's CPU.
    prefixes: Vec<u64>,
}

/// The first 8 bytes of `id`, zero-padded, as a big-endian number: two
/// ids whose prefixes differ compare as their prefixes do.
fn prefix(id: &str) -> u64 {
    let bytes = id.as_bytes();
    let mut first = [0u8; 8];
    let n = bytes.len().min(8);
    first[..n].copy_from_slice(&bytes[..n]);
    u64::from_be_bytes(first)
}

impl Partitions {
    /// `count` ranges with bounds at the quantiles of `sample` (ids from
    /// across the universe); fewer when the sample has fewer distinct ids.
    pub fn from_sample(sample: Vec<String>, count: usize) -> Partitions {
        Partitions::weighted(sample, &vec![4; count.max(1)])
    }

    /// As [`Partitions::from_sample`], with the first and the last range a
    /// quarter of the others (`count` + 2 ranges from 2 on): the pipeline
    /// waits for the first partition to be computed before anything is
    /// written, and for the last one to be written after everything else
    /// is computed, so small ends shorten both waits (at 10M users in 11
    /// partitions each end took about 0.4 s on one core).
    pub fn tapered(sample: Vec<String>, count: usize) -> Partitions {
        if count < 2 {
            return Partitions::from_sample(sample, count);
        }
        let mut shares = vec![1, 3];
        shares.extend(std::iter::repeat_n(4, count - 2));
        shares.extend([3, 1]);
        Partitions::weighted(sample, &shares)
    }

    /// Ranges whose sizes are in proportion to `shares`.
    fn weighted(mut sample: Vec<String>, shares: &[usize]) -> Partitions {
        sample.sort_unstable();
        let total: usize = shares.iter().sum();
        let mut bounds: Vec<String> = shares[..shares.len() - 1]
            .iter()
            .scan(0, |upto, share| {
                *upto += share;
                Some(*upto * sample.len() / total)
            })
            .filter_map(|at| sample.get(at).cloned())
            .collect();
        bounds.dedup();
        let prefixes = bounds.iter().map(|b| prefix(b)).collect();
        Partitions { bounds, prefixes }
    }

    /// How many partitions.
    pub fn count(&self) -> usize {
        self.bounds.len() + 1
    }

    /// The partition of `user_id`.
    pub fn of(&self, user_id: &str) -> usize {
        let key = prefix(user_id);
        let (mut low, mut high) = (0, self.bounds.len());
        // The first bound above `user_id`, by prefix, then by the whole id
        // where the prefixes tie.
        while low < high {
            let mid = (low + high) / 2;
            let at_or_below = match self.prefixes[mid].cmp(&key) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Greater => false,
                std::cmp::Ordering::Equal => self.bounds[mid].as_str() <= user_id,
            };
            if at_or_below {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        low
    }
}

/// Up to `count` ranges for `table` in `data_dir`, from the user ids of
/// [`SAMPLED_GROUPS`] of its row groups spread over the table (the footers
/// say where they are; only the id column is decoded).
pub fn sample_partitions(
    data_dir: &Path,
    table: &str,
    count: usize,
) -> Result<Partitions, RunError> {
    use crate::data::read::{scan_row_groups, ColumnRequest};
    let columns = [ColumnRequest::new(
        USER_ID,
        tag_plugin_api::ColumnType::Utf8,
    )];
    let failed = |e: crate::data::DataError| RunError::Failed(e.to_string());
    let all = scan_row_groups(data_dir, table, &columns, usize::MAX, &|_| true).map_err(failed)?;
    let groups = all.row_groups();
    let step = groups.div_ceil(SAMPLED_GROUPS).max(1);
    let keep = |id: crate::data::read::RowGroupId| groups_index(&all, id).is_multiple_of(step);
    let scan = scan_row_groups(data_dir, table, &columns, usize::MAX, &keep).map_err(failed)?;
    let mut sample = Vec::new();
    for batch in scan {
        let batch = batch.map_err(failed)?;
        let ids = batch
            .column(USER_ID)
            .and_then(|c| c.as_materialized_series().str().cloned())
            .map_err(|e| RunError::Failed(format!("table {table}: {e}")))?;
        // Every 16th id is plenty for the quantiles of 128 partitions.
        sample.extend(ids.iter().step_by(16).flatten().map(str::to_string));
    }
    Ok(Partitions::tapered(sample, count))
}

/// The position of row group `id` among all of the scan's, in file order.
fn groups_index(scan: &crate::data::read::TableScan, id: crate::data::read::RowGroupId) -> usize {
    scan.groups_before(id.part) + id.group
}

/// Where one run keeps its partitions: a spill directory (removed when
/// dropped) or memory.
pub struct Spill {
    place: Place,
}

enum Place {
    Disk(PathBuf),
    Memory(Mutex<Shelves>),
}

/// Partitions kept in memory, each taken (and freed) as it is read back.
#[derive(Default)]
struct Shelves {
    /// Per table and partition: its columns, and its rows in spill order.
    tables: HashMap<(String, usize), (Schema, Vec<DataFrame>)>,
    /// Per partition, the current rows.
    current: Vec<UserRows>,
}

impl Spill {
    /// A new directory of this run under `root` (made 0700 if missing),
    /// named after this process (so a later start can tell it is stale).
    pub fn create(root: &Path, task_id: &str) -> Result<Spill, RunError> {
        use std::os::unix::fs::DirBuilderExt;
        let cannot = |e: std::io::Error| {
            RunError::Failed(format!(
                "cannot make the spill directory under {} ({e}): pass --spill-dir (TAG_SPILL_DIR) a directory this user can write",
                root.display()
            ))
        };
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(root)
            .map_err(cannot)?;
        let task: String = task_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(64)
            .collect();
        let path = root.join(format!("{}.{task}", Owner::this_process()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(cannot)?;
        Ok(Spill {
            place: Place::Disk(path),
        })
    }

    /// Partitions kept in memory (nothing touches the disk).
    pub fn in_memory() -> Spill {
        Spill {
            place: Place::Memory(Mutex::default()),
        }
    }

    /// The spill directory, when the partitions are on disk.
    pub fn path(&self) -> Option<&Path> {
        match &self.place {
            Place::Disk(path) => Some(path),
            Place::Memory(_) => None,
        }
    }

    /// Bytes in the directory's files now (0 in memory: nothing spilled).
    pub fn bytes(&self) -> u64 {
        let Some(path) = self.path() else {
            return 0;
        };
        std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    }

    fn file(path: &Path, name: &str, partition: usize) -> PathBuf {
        path.join(format!("{name}.{partition}"))
    }

    fn shelves(&self) -> Option<std::sync::MutexGuard<'_, Shelves>> {
        match &self.place {
            Place::Memory(shelves) => Some(shelves.lock().unwrap_or_else(PoisonError::into_inner)),
            Place::Disk(_) => None,
        }
    }

    /// A failed spill write or read, naming the directory.
    fn failed(&self, e: impl std::fmt::Display) -> RunError {
        match self.path() {
            Some(dir) => spill_failed(dir, e),
            None => RunError::Failed(format!("keeping a partition in memory failed: {e}")),
        }
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        let Some(path) = self.path() else {
            return;
        };
        if let Err(e) = std::fs::remove_dir_all(path) {
            tracing::warn!(dir = %path.display(), error = %e, "could not remove a run's spill files");
        }
    }
}

/// Removes the spill directories under `root` that processes of this host
/// left when they died (a run that was killed); how many.
pub fn remove_stale(root: &Path) -> usize {
    let me = Owner::this_process();
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(owner) = name
            .to_str()
            .and_then(|n| n.split_once('.'))
            .and_then(|(owner, _)| Owner::parse(owner))
        else {
            continue;
        };
        if me.outlived(&owner) && std::fs::remove_dir_all(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// A spill write failed: the disk is full, or the directory went away.
fn spill_failed(dir: &Path, e: impl std::fmt::Display) -> RunError {
    RunError::Failed(format!(
        "spilling to {} failed, nothing was written to the results: {e} (free disk space there or pass --spill-dir another directory)",
        dir.display()
    ))
}

/// One table's rows, appended to its partitions: an Arrow IPC file each,
/// or frames in memory.
pub struct TableSpill<'d> {
    spill: &'d Spill,
    name: String,
    schema: Schema,
    out: PartsOut,
    partitions: &'d Partitions,
}

enum PartsOut {
    Files(Vec<FileWriter<BufWriter<File>>>),
    Memory(Vec<Vec<DataFrame>>),
}

impl<'d> TableSpill<'d> {
    /// Partitions for `name` with `schema`'s columns.
    pub fn create(
        spill: &'d Spill,
        name: &str,
        schema: &Schema,
        partitions: &'d Partitions,
    ) -> Result<TableSpill<'d>, RunError> {
        let count = partitions.count();
        let out = match spill.path() {
            None => PartsOut::Memory(vec![Vec::new(); count]),
            Some(dir) => {
                let arrow = Arc::new(schema.to_arrow(CompatLevel::newest()));
                let open = |k| {
                    let file = File::create(Spill::file(dir, name, k))?;
                    let buffered = BufWriter::with_capacity(1 << 16, file);
                    let options = WriteOptions { compression: None };
                    FileWriter::try_new(buffered, Arc::clone(&arrow), None, options)
                        .map_err(std::io::Error::other)
                };
                let writers = (0..count).map(open).collect::<std::io::Result<_>>();
                PartsOut::Files(writers.map_err(|e| spill.failed(e))?)
            }
        };
        Ok(TableSpill {
            spill,
            name: name.to_string(),
            schema: schema.clone(),
            out,
            partitions,
        })
    }

    /// Appends each row of `batch` to its user's partition.
    pub fn append(&mut self, batch: &DataFrame) -> Result<(), RunError> {
        let failed = |e: PolarsError| self.spill.failed(e);
        let ids = batch
            .column(USER_ID)
            .and_then(|c| c.as_materialized_series().str().cloned())
            .map_err(failed)?;
        let mut rows: Vec<Vec<IdxSize>> = vec![Vec::new(); self.partitions.count()];
        for (i, id) in ids.iter().enumerate() {
            rows[self.partitions.of(id.unwrap_or(""))].push(i as IdxSize);
        }
        for (k, rows) in rows.into_iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let mut part = batch
                .take(&IdxCa::from_vec("rows".into(), rows))
                .map_err(failed)?;
            part.rechunk_mut();
            match &mut self.out {
                PartsOut::Memory(parts) => parts[k].push(part),
                PartsOut::Files(writers) => {
                    for chunk in part.iter_chunks(CompatLevel::newest(), false) {
                        writers[k]
                            .write(&chunk, None)
                            .map_err(|e| self.spill.failed(e))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Ends every partition: its file's IPC footer, flushed, or its frames
    /// put where [`read_table`] finds them.
    pub fn finish(self) -> Result<(), RunError> {
        match self.out {
            PartsOut::Files(writers) => {
                for mut writer in writers {
                    writer.finish().map_err(|e| self.spill.failed(e))?;
                    writer
                        .into_inner()
                        .flush()
                        .map_err(|e| self.spill.failed(e))?;
                }
            }
            PartsOut::Memory(parts) => {
                let mut shelves = self.spill.shelves().expect("kept in memory");
                for (k, frames) in parts.into_iter().enumerate() {
                    let key = (self.name.clone(), k);
                    shelves.tables.insert(key, (self.schema.clone(), frames));
                }
            }
        }
        Ok(())
    }
}

/// Partition `partition` of the rows spilled as `name`, in spill order
/// (taken: a partition kept in memory is read back once).
pub fn read_table(spill: &Spill, name: &str, partition: usize) -> Result<DataFrame, RunError> {
    let Some(dir) = spill.path() else {
        let kept = spill
            .shelves()
            .and_then(|mut s| s.tables.remove(&(name.to_string(), partition)));
        let (schema, frames) =
            kept.ok_or_else(|| spill.failed(format!("partition {partition} of {name} is gone")))?;
        let mut frames = frames.into_iter();
        let Some(mut out) = frames.next() else {
            return Ok(DataFrame::empty_with_schema(&schema));
        };
        for frame in frames {
            out.vstack_mut_owned(frame).map_err(|e| spill.failed(e))?;
        }
        return Ok(out);
    };
    let file = File::open(Spill::file(dir, name, partition)).map_err(|e| spill.failed(e))?;
    IpcReader::new(file).finish().map_err(|e| spill.failed(e))
}

/// The users' current tags as the store reads them, per partition: a
/// [`RowSink`] for [`crate::store::RunTx::current`].
pub struct CurrentSpill<'d> {
    spill: &'d Spill,
    out: CurrentOut,
    /// The first write error (the store's read goes on; it is reported after).
    error: Option<std::io::Error>,
    /// Rows pushed, for the comparing stage's progress.
    pushed: Arc<AtomicUsize>,
    partitions: &'d Partitions,
}

enum CurrentOut {
    Files(Vec<BufWriter<File>>),
    Memory(Vec<UserRows>),
}

/// The name of the current rows' spill files.
const CURRENT: &str = "current";

impl<'d> CurrentSpill<'d> {
    /// Empty partitions; `pushed` counts the rows.
    pub fn create(
        spill: &'d Spill,
        partitions: &'d Partitions,
        pushed: Arc<AtomicUsize>,
    ) -> Result<CurrentSpill<'d>, RunError> {
        let count = partitions.count();
        let out = match spill.path() {
            None => CurrentOut::Memory((0..count).map(|_| UserRows::default()).collect()),
            Some(dir) => CurrentOut::Files(
                (0..count)
                    .map(|k| File::create(Spill::file(dir, CURRENT, k)).map(BufWriter::new))
                    .collect::<Result<_, _>>()
                    .map_err(|e| spill.failed(e))?,
            ),
        };
        Ok(CurrentSpill {
            spill,
            out,
            error: None,
            pushed,
            partitions,
        })
    }

    /// Flushes the files (or shelves the rows); the first error the writes met.
    pub fn finish(self) -> Result<(), RunError> {
        if let Some(e) = self.error {
            return Err(self.spill.failed(e));
        }
        match self.out {
            CurrentOut::Files(writers) => {
                for mut writer in writers {
                    writer.flush().map_err(|e| self.spill.failed(e))?;
                }
            }
            CurrentOut::Memory(rows) => {
                self.spill.shelves().expect("kept in memory").current = rows;
            }
        }
        Ok(())
    }
}

impl RowSink for CurrentSpill<'_> {
    fn push(&mut self, op: Op, user_id: &str, held: &[Held]) {
        self.pushed.fetch_add(1, Ordering::Relaxed);
        if self.error.is_some() {
            return;
        }
        let part = self.partitions.of(user_id);
        match &mut self.out {
            CurrentOut::Memory(rows) => rows[part].push(op, user_id, held),
            CurrentOut::Files(writers) => {
                if let Err(e) = write_current(&mut writers[part], user_id, held) {
                    self.error = Some(e);
                }
            }
        }
    }
}

/// One current row: the id's length and bytes, the tags' count, then each
/// tag and grant (little-endian).
fn write_current(out: &mut impl Write, user_id: &str, held: &[Held]) -> std::io::Result<()> {
    out.write_all(&(user_id.len() as u32).to_le_bytes())?;
    out.write_all(user_id.as_bytes())?;
    out.write_all(&(held.len() as u32).to_le_bytes())?;
    for h in held {
        out.write_all(&h.tag_id.to_le_bytes())?;
        out.write_all(&h.grant.to_le_bytes())?;
    }
    Ok(())
}

/// Partition `partition` of the current rows, as the store gave them
/// (taken, when kept in memory).
pub fn read_current(spill: &Spill, partition: usize) -> Result<UserRows, RunError> {
    let Some(dir) = spill.path() else {
        let mut shelves = spill.shelves().expect("kept in memory");
        return Ok(shelves
            .current
            .get_mut(partition)
            .map(std::mem::take)
            .unwrap_or_default());
    };
    let path = Spill::file(dir, CURRENT, partition);
    let file = File::open(&path).map_err(|e| spill.failed(e))?;
    let mut input = BufReader::with_capacity(1 << 16, file);
    let mut rows = UserRows::default();
    let (mut id, mut held) = (Vec::new(), Vec::new());
    let corrupt = |what: &str| spill.failed(format!("{} is {what}", path.display()));
    while let Some(len) = read_u32(&mut input).map_err(|e| spill.failed(e))? {
        id.resize(len as usize, 0);
        input
            .read_exact(&mut id)
            .map_err(|_| corrupt("truncated"))?;
        let count = read_u32(&mut input)
            .map_err(|e| spill.failed(e))?
            .ok_or_else(|| corrupt("truncated"))?;
        held.clear();
        for _ in 0..count {
            let tag_id = read_u32(&mut input).ok().flatten();
            let grant = read_u32(&mut input).ok().flatten();
            let (Some(tag_id), Some(grant)) = (tag_id, grant) else {
                return Err(corrupt("truncated"));
            };
            held.push(Held { tag_id, grant });
        }
        let user = std::str::from_utf8(&id).map_err(|_| corrupt("not UTF-8"))?;
        rows.push(Op::Update, user, &held);
    }
    Ok(rows)
}

/// The next little-endian u32, or `None` at the end of the input.
fn read_u32(input: &mut impl Read) -> std::io::Result<Option<u32>> {
    let mut bytes = [0u8; 4];
    match input.read_exact(&mut bytes) {
        Ok(()) => Ok(Some(u32::from_le_bytes(bytes))),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_id_ranges_at_the_samples_quantiles() {
        let sample: Vec<String> = (0..40_000).rev().map(|i| format!("user_{i:07}")).collect();
        let parts = Partitions::from_sample(sample, 8);
        assert_eq!(parts.count(), 8);
        let counts = (0..40_000).fold(vec![0usize; 8], |mut counts, i| {
            counts[parts.of(&format!("user_{i:07}"))] += 1;
            counts
        });
        assert_eq!(counts, vec![5_000; 8]);
        // Ascending ids fill the partitions in order; no id goes first.
        assert_eq!(parts.of(""), 0);
        assert_eq!(parts.of("user_0000000"), 0);
        assert_eq!(parts.of("user_0039999"), 7);
        assert_eq!(parts.of("zzz"), 7);
        // Ids that share their first 8 bytes with a bound, or are shorter,
        // or hold a zero byte, are placed as whole strings compare.
        let bounds: Vec<String> = [
            "user_000",
            "user_0005",
            "user_0005\0",
            "user_0005a",
            "user_0006",
        ]
        .iter()
        .map(|b| b.to_string())
        .collect();
        let close = Partitions::from_sample(bounds.clone(), bounds.len());
        for id in [
            "",
            "u",
            "user_",
            "user_000",
            "user_0004",
            "user_0005",
            "user_0005\0",
            "user_0005\0\0",
            "user_00050",
            "user_0005a",
            "user_0005b",
            "user_0006",
            "user_0007",
            "v",
        ] {
            let expected = close.bounds.partition_point(|b| b.as_str() <= id);
            assert_eq!(close.of(id), expected, "{id:?}");
        }
        let tapered = Partitions::tapered((0..16_000).map(|i| format!("u{i:05}")).collect(), 4);
        let counts = (0..16_000).fold(vec![0usize; 6], |mut counts, i| {
            counts[tapered.of(&format!("u{i:05}"))] += 1;
            counts
        });
        assert_eq!(counts, vec![1_000, 3_000, 4_000, 4_000, 3_000, 1_000]);
        assert_eq!(Partitions::tapered(vec!["a".into()], 1).count(), 1);
        let few = Partitions::from_sample(vec!["a".into(), "a".into()], 4);
        assert_eq!(few.count(), 2);
        assert_eq!(Partitions::from_sample(Vec::new(), 4).count(), 1);
    }

    /// Six rows of users a–d appended in two batches to three partitions
    /// kept by `spill`, read back: (id, x) in each partition's order.
    fn round_trip(spill: &Spill) -> Vec<Vec<(String, i64)>> {
        let ids = ["a", "b", "a", "c", "b", "d"];
        let frame = DataFrame::new(
            ids.len(),
            vec![
                Column::new(USER_ID.into(), ids),
                Column::new("x".into(), [1i64, 2, 3, 4, 5, 6]),
            ],
        )
        .unwrap();
        let parts = Partitions::from_sample(vec!["a".into(), "b".into(), "c".into()], 3);
        let mut out = TableSpill::create(spill, "t", frame.schema(), &parts).unwrap();
        out.append(&frame.slice(0, 3)).unwrap();
        out.append(&frame.slice(3, 3)).unwrap();
        out.finish().unwrap();
        (0..3)
            .map(|k| {
                let part = read_table(spill, "t", k).unwrap();
                let ids = part.column(USER_ID).unwrap().str().unwrap().clone();
                let xs = part.column("x").unwrap().i64().unwrap().clone();
                let rows: Vec<(String, i64)> = ids
                    .iter()
                    .zip(xs.iter())
                    .map(|(id, x)| (id.unwrap().to_string(), x.unwrap()))
                    .collect();
                assert!(rows.iter().all(|(id, _)| parts.of(id) == k));
                rows
            })
            .collect()
    }

    #[test]
    fn spilled_rows_read_back_per_partition_in_order() {
        let root = tempfile::tempdir().unwrap();
        let on_disk = Spill::create(root.path(), "task-1").unwrap();
        let expected: Vec<Vec<(String, i64)>> = vec![
            vec![("a".into(), 1), ("a".into(), 3)],
            vec![("b".into(), 2), ("b".into(), 5)],
            vec![("c".into(), 4), ("d".into(), 6)],
        ];
        assert_eq!(round_trip(&on_disk), expected);
        assert!(on_disk.bytes() > 0);
        // Kept in memory: the same partitions, nothing on disk, and each
        // partition is taken when read.
        let in_memory = Spill::in_memory();
        assert_eq!(round_trip(&in_memory), expected);
        assert_eq!((in_memory.bytes(), in_memory.path()), (0, None));
        assert!(read_table(&in_memory, "t", 0).is_err());
    }

    /// Current rows of u1 and u2 pushed into two partitions kept by
    /// `spill`, read back sorted by user.
    fn current_round_trip(spill: &Spill) -> Vec<(String, Vec<Held>)> {
        let counter = Arc::new(AtomicUsize::new(0));
        let parts = Partitions::from_sample(vec!["u0".into(), "u2".into()], 2);
        let mut sink = CurrentSpill::create(spill, &parts, Arc::clone(&counter)).unwrap();
        let held = [
            Held {
                tag_id: 3,
                grant: 9,
            },
            Held {
                tag_id: 5,
                grant: 1,
            },
        ];
        sink.push(Op::Update, "u1", &held);
        sink.push(Op::Update, "u2", &held[..1]);
        sink.finish().unwrap();
        assert_eq!(counter.load(Ordering::Relaxed), 2);
        let mut back = Vec::new();
        for k in 0..2 {
            let rows = read_current(spill, k).unwrap();
            back.extend(rows.iter().map(|(_, u, h)| (u.to_string(), h.to_vec())));
        }
        back.sort_by(|a, b| a.0.cmp(&b.0));
        back
    }

    #[test]
    fn current_rows_round_trip_and_the_directory_goes_with_the_run() {
        let root = tempfile::tempdir().unwrap();
        let dir = Spill::create(root.path(), "task-2").unwrap();
        let path = dir.path().unwrap().to_path_buf();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let back = current_round_trip(&dir);
        let in_memory = current_round_trip(&Spill::in_memory());
        assert_eq!(back, in_memory);
        let held = |tags: &[(u32, u32)]| -> Vec<Held> {
            tags.iter()
                .map(|&(tag_id, grant)| Held { tag_id, grant })
                .collect()
        };
        assert_eq!(
            back,
            vec![
                ("u1".into(), held(&[(3, 9), (5, 1)])),
                ("u2".into(), held(&[(3, 9)]))
            ]
        );
        assert!(dir.bytes() > 0);
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn a_start_removes_what_dead_processes_left_and_nothing_else() {
        let root = tempfile::tempdir().unwrap();
        let me = Owner::this_process();
        let dead = Owner {
            pid: u32::MAX - 1,
            ..me.clone()
        };
        for name in [format!("{dead}.t1"), format!("{me}.t2"), "mine".to_string()] {
            std::fs::create_dir(root.path().join(name)).unwrap();
        }
        assert_eq!(remove_stale(root.path()), 1);
        assert!(!root.path().join(format!("{dead}.t1")).exists());
        assert!(root.path().join(format!("{me}.t2")).exists());
        assert!(root.path().join("mine").exists());
    }
}
