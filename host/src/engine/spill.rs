//! A partitioned run's spill files: its directory (0700, removed when the
//! run ends however it ends, and by the next start after a kill), the
//! partition of each row, each table's rows per partition as an
//! Arrow IPC file, and the users' current tags per partition.
//!
//! Every row of a user lands in the same partition, in the order it was
//! read, so de-duplicating and joining a partition gives exactly the rows
//! the whole table would. Partitions are ranges of user ids ([`Partitions`]).

use super::{RunError, USER_ID};
use crate::store::{Held, Op, RowSink, UserRows};
use crate::tasks::owner::Owner;
use polars::prelude::*;
use polars_arrow::io::ipc::write::{FileWriter, WriteOptions};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

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
}

impl Partitions {
    /// `count` ranges with bounds at the quantiles of `sample` (ids from
    /// across the universe); fewer when the sample has fewer distinct ids.
    pub fn from_sample(mut sample: Vec<String>, count: usize) -> Partitions {
        sample.sort_unstable();
        let mut bounds: Vec<String> = (1..count.max(1))
            .map(|k| k * sample.len() / count)
            .filter_map(|at| sample.get(at).cloned())
            .collect();
        bounds.dedup();
        Partitions { bounds }
    }

    /// How many partitions.
    pub fn count(&self) -> usize {
        self.bounds.len() + 1
    }

    /// The partition of `user_id`.
    pub fn of(&self, user_id: &str) -> usize {
        self.bounds.partition_point(|b| b.as_str() <= user_id)
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
    let keep = |id: crate::data::read::RowGroupId| groups_index(&all, id) % step == 0;
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
    Ok(Partitions::from_sample(sample, count))
}

/// The position of row group `id` among all of the scan's, in file order.
fn groups_index(scan: &crate::data::read::TableScan, id: crate::data::read::RowGroupId) -> usize {
    scan.groups_before(id.part) + id.group
}

/// One run's spill directory, removed when dropped.
pub struct SpillDir {
    path: PathBuf,
}

impl SpillDir {
    /// A new directory of this run under `root` (made 0700 if missing),
    /// named after this process (so a later start can tell it is stale).
    pub fn create(root: &Path, task_id: &str) -> Result<SpillDir, RunError> {
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
        Ok(SpillDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes in the directory's files now.
    pub fn bytes(&self) -> u64 {
        std::fs::read_dir(&self.path)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    }

    fn file(&self, name: &str, partition: usize) -> PathBuf {
        self.path.join(format!("{name}.{partition}"))
    }
}

impl Drop for SpillDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(dir = %self.path.display(), error = %e, "could not remove a run's spill files");
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

/// One table's rows, appended to one Arrow IPC file per partition.
pub struct TableSpill<'d> {
    dir: &'d SpillDir,
    writers: Vec<FileWriter<BufWriter<File>>>,
    partitions: &'d Partitions,
}

impl<'d> TableSpill<'d> {
    /// Files for `name` with `schema`'s columns, one per partition.
    pub fn create(
        dir: &'d SpillDir,
        name: &str,
        schema: &Schema,
        partitions: &'d Partitions,
    ) -> Result<TableSpill<'d>, RunError> {
        let arrow = Arc::new(schema.to_arrow(CompatLevel::newest()));
        let writers = (0..partitions.count())
            .map(|k| {
                let file =
                    File::create(dir.file(name, k)).map_err(|e| spill_failed(&dir.path, e))?;
                FileWriter::try_new(
                    BufWriter::with_capacity(1 << 16, file),
                    Arc::clone(&arrow),
                    None,
                    WriteOptions { compression: None },
                )
                .map_err(|e| spill_failed(&dir.path, e))
            })
            .collect::<Result<_, _>>()?;
        Ok(TableSpill {
            dir,
            writers,
            partitions,
        })
    }

    /// Appends each row of `batch` to its user's partition.
    pub fn append(&mut self, batch: &DataFrame) -> Result<(), RunError> {
        let ids = batch
            .column(USER_ID)
            .and_then(|c| c.as_materialized_series().str().cloned())
            .map_err(|e| spill_failed(&self.dir.path, e))?;
        let count = self.writers.len();
        let mut rows: Vec<Vec<IdxSize>> = vec![Vec::new(); count];
        for (i, id) in ids.iter().enumerate() {
            rows[self.partitions.of(id.unwrap_or(""))].push(i as IdxSize);
        }
        for (writer, rows) in self.writers.iter_mut().zip(rows) {
            if rows.is_empty() {
                continue;
            }
            let mut part = batch
                .take(&IdxCa::from_vec("rows".into(), rows))
                .map_err(|e| spill_failed(&self.dir.path, e))?;
            part.rechunk_mut();
            for chunk in part.iter_chunks(CompatLevel::newest(), false) {
                writer
                    .write(&chunk, None)
                    .map_err(|e| spill_failed(&self.dir.path, e))?;
            }
        }
        Ok(())
    }

    /// Ends every partition's file (its IPC footer) and flushes it.
    pub fn finish(self) -> Result<(), RunError> {
        for mut writer in self.writers {
            writer
                .finish()
                .map_err(|e| spill_failed(&self.dir.path, e))?;
            writer
                .into_inner()
                .flush()
                .map_err(|e| spill_failed(&self.dir.path, e))?;
        }
        Ok(())
    }
}

/// Partition `partition` of the rows spilled as `name`, in spill order.
pub fn read_table(dir: &SpillDir, name: &str, partition: usize) -> Result<DataFrame, RunError> {
    let path = dir.file(name, partition);
    let file = File::open(&path).map_err(|e| spill_failed(&dir.path, e))?;
    IpcReader::new(file)
        .finish()
        .map_err(|e| spill_failed(&dir.path, e))
}

/// The users' current tags as the store reads them, one file per
/// partition: a [`RowSink`] for [`crate::store::RunTx::current`].
pub struct CurrentSpill<'d> {
    dir: &'d SpillDir,
    writers: Vec<BufWriter<File>>,
    /// The first write error (the store's read goes on; it is reported after).
    error: Option<std::io::Error>,
    /// Rows pushed, for the comparing stage's progress.
    pushed: Arc<AtomicUsize>,
    partitions: &'d Partitions,
}

/// The name of the current rows' spill files.
const CURRENT: &str = "current";

impl<'d> CurrentSpill<'d> {
    /// Empty files, one per partition; `pushed` counts the rows.
    pub fn create(
        dir: &'d SpillDir,
        partitions: &'d Partitions,
        pushed: Arc<AtomicUsize>,
    ) -> Result<CurrentSpill<'d>, RunError> {
        let writers = (0..partitions.count())
            .map(|k| File::create(dir.file(CURRENT, k)).map(BufWriter::new))
            .collect::<Result<_, _>>()
            .map_err(|e| spill_failed(&dir.path, e))?;
        Ok(CurrentSpill {
            dir,
            writers,
            error: None,
            pushed,
            partitions,
        })
    }

    /// Flushes the files; the first error the writes met.
    pub fn finish(self) -> Result<(), RunError> {
        if let Some(e) = self.error {
            return Err(spill_failed(&self.dir.path, e));
        }
        for mut writer in self.writers {
            writer
                .flush()
                .map_err(|e| spill_failed(&self.dir.path, e))?;
        }
        Ok(())
    }
}

impl RowSink for CurrentSpill<'_> {
    fn push(&mut self, _op: Op, user_id: &str, held: &[Held]) {
        self.pushed.fetch_add(1, Ordering::Relaxed);
        if self.error.is_some() {
            return;
        }
        let part = self.partitions.of(user_id);
        let writer = &mut self.writers[part];
        if let Err(e) = write_current(writer, user_id, held) {
            self.error = Some(e);
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

/// Partition `partition` of the current rows, as the store gave them.
pub fn read_current(dir: &SpillDir, partition: usize) -> Result<UserRows, RunError> {
    let path = dir.file(CURRENT, partition);
    let file = File::open(&path).map_err(|e| spill_failed(&dir.path, e))?;
    let mut input = BufReader::with_capacity(1 << 16, file);
    let mut rows = UserRows::default();
    let (mut id, mut held) = (Vec::new(), Vec::new());
    let corrupt = |what: &str| spill_failed(&dir.path, format!("{} is {what}", path.display()));
    while let Some(len) = read_u32(&mut input).map_err(|e| spill_failed(&dir.path, e))? {
        id.resize(len as usize, 0);
        input
            .read_exact(&mut id)
            .map_err(|_| corrupt("truncated"))?;
        let count = read_u32(&mut input)
            .map_err(|e| spill_failed(&dir.path, e))?
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
        let few = Partitions::from_sample(vec!["a".into(), "a".into()], 4);
        assert_eq!(few.count(), 2);
        assert_eq!(Partitions::from_sample(Vec::new(), 4).count(), 1);
    }

    #[test]
    fn spilled_rows_read_back_per_partition_in_order() {
        let root = tempfile::tempdir().unwrap();
        let dir = SpillDir::create(root.path(), "task-1").unwrap();
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
        let mut spill = TableSpill::create(&dir, "t", frame.schema(), &parts).unwrap();
        spill.append(&frame.slice(0, 3)).unwrap();
        spill.append(&frame.slice(3, 3)).unwrap();
        spill.finish().unwrap();
        let mut seen = Vec::new();
        for k in 0..3 {
            let part = read_table(&dir, "t", k).unwrap();
            let ids = part.column(USER_ID).unwrap().str().unwrap().clone();
            let xs = part.column("x").unwrap().i64().unwrap().clone();
            for (id, x) in ids.iter().zip(xs.iter()) {
                assert_eq!(parts.of(id.unwrap()), k);
                seen.push((id.unwrap().to_string(), x.unwrap()));
            }
        }
        seen.sort();
        let a: Vec<i64> = seen
            .iter()
            .filter(|(id, _)| id == "a")
            .map(|s| s.1)
            .collect();
        assert_eq!(a, vec![1, 3]);
        assert_eq!(seen.len(), 6);
    }

    #[test]
    fn current_rows_round_trip_and_the_directory_goes_with_the_run() {
        let root = tempfile::tempdir().unwrap();
        let dir = SpillDir::create(root.path(), "task-2").unwrap();
        let path = dir.path().to_path_buf();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let counter = Arc::new(AtomicUsize::new(0));
        let parts = Partitions::from_sample(vec!["u0".into(), "u2".into()], 2);
        let mut sink = CurrentSpill::create(&dir, &parts, Arc::clone(&counter)).unwrap();
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
            let rows = read_current(&dir, k).unwrap();
            back.extend(rows.iter().map(|(_, u, h)| (u.to_string(), h.to_vec())));
        }
        back.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            back,
            vec![
                ("u1".into(), held.to_vec()),
                ("u2".into(), held[..1].to_vec())
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
