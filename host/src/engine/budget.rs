//! How much memory a run will need, estimated from the parquet footers
//! before anything is read, and how many partitions by user id keep it
//! within the memory limit.
//!
//! The estimate adds, per table, the rows the run will read times the
//! in-memory width of their declared columns (a string is a 16-byte view
//! plus its bytes where longer than 12), then per universe user the hash
//! index, the current tags read back from the store and the diff's order.
//! [`OVERHEAD`] covers the copies made while de-duplicating and joining.
//!
//! A run within the limit may still be split, into partitions kept in
//! memory ([`Budget::pipelined`]), so its write overlaps the next
//! partition's computing.

use super::{Delta, Plan, RunError};
use crate::data::read::{scan_row_groups, RowGroupId};
use std::path::Path;
use tag_plugin_api::ColumnType;

/// Copies made while de-duplicating and joining, and the allocator's slack.
const OVERHEAD: f64 = 1.35;
/// Per universe user: the index's slots, its current row (id, tags and the
/// placement array) and the diff's order.
const PER_USER: f64 = 24.0 + 40.0 + 4.0 + 4.0;
/// A partition is sized to this share of the limit: two are held at once
/// (one written while the next is evaluated), and the rest holds the write
/// batches and the process itself.
const PARTITION_SHARE: f64 = 0.35;
/// The most partitions a run is split into (each table keeps a file open
/// per partition while spilling).
pub const MAX_PARTITIONS: usize = 128;
/// Users per in-memory partition of a run within its limit, by default
/// (`--partition-users`); a run of fewer than twice as many is not split.
/// Measured with the pipeline's one results writer and tapered ends
/// (2026-12-04, 2 cores, into SQLite, medians of alternating runs): at 1M
/// gen-data users, unsplit 0.78 s, 500k a partition 0.75 s, 250k 0.72 s,
/// 125k 0.72 s; at 10M DuckDB-written users, 1M a partition 8.90 s, 250k
/// (16 partitions, the most) 8.66 s. (Before that pipeline, four partitions
/// took 1.15x the unsplit run at 1M users, and the default was 1M.)
pub const PARTITION_USERS: u64 = 250_000;
/// The most in-memory partitions a run within its limit is split into:
/// overlap needs only a few, and each costs a pass over the rows.
pub const MAX_MEMORY_PARTITIONS: usize = 16;

/// What a run is expected to need, and how it will keep within the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The working set of the whole run, estimated (bytes).
    pub estimate: u64,
    /// The memory limit (bytes).
    pub limit: u64,
    /// Partitions by user id (1: not partitioned).
    pub partitions: usize,
    /// Universe rows the run will read.
    pub users: u64,
}

impl Budget {
    /// Whether the run's partitions are spilled to disk: the run is beyond
    /// its limit. Otherwise any partitions are kept in memory.
    pub fn spills(&self) -> bool {
        self.estimate > self.limit
    }

    /// A run within its limit over at least twice `per_partition` users,
    /// split into partitions of about that many (at most
    /// [`MAX_MEMORY_PARTITIONS`]; 0: never split). A run beyond its limit
    /// keeps its partitions.
    pub fn pipelined(self, per_partition: u64) -> Budget {
        if self.spills() || per_partition == 0 {
            return self;
        }
        let count = (self.users / per_partition).min(MAX_MEMORY_PARTITIONS as u64);
        Budget {
            partitions: count.max(1) as usize,
            ..self
        }
    }
}

/// The budget of `plan` over the tables in `data_dir` under `limit`.
pub fn budget(
    plan: &Plan,
    delta: Option<&Delta>,
    data_dir: &Path,
    limit: u64,
) -> Result<Budget, RunError> {
    let wanted = match (&plan.user_ids, delta) {
        (Some(ids), _) => Some(ids.len()),
        (None, Some(delta)) => Some(delta.users.len()),
        (None, None) => None,
    };
    let mut bytes = 0.0;
    let mut users = 0.0;
    for (i, table) in plan.tables.iter().enumerate() {
        let skip = delta.and_then(|d| d.skip.get(&table.table));
        let keep = |id: RowGroupId| skip.is_none_or(|s| !s.contains(&id));
        let scan = scan_row_groups(data_dir, &table.table, &table.columns, usize::MAX, &keep)
            .map_err(|e| RunError::Failed(e.to_string()))?;
        let rows = wanted.map_or(scan.rows_planned(), |w| w.min(scan.rows_planned())) as f64;
        let width: f64 = table
            .columns
            .iter()
            .map(|c| width(c.column_type, || scan.column_bytes_per_row(&c.name)))
            .sum();
        bytes += rows * width;
        if i == 0 {
            users = rows;
        }
    }
    let tags = plan.tags.len() as f64;
    bytes += users * (PER_USER + tags / 4.0);
    let estimate = (bytes * OVERHEAD) as u64;
    Ok(Budget {
        estimate,
        limit,
        partitions: partitions(estimate, limit),
        users: users as u64,
    })
}

/// In-memory bytes per row of a column of `column_type` (`footer` gives a
/// string column's bytes per row in the file).
fn width(column_type: ColumnType, footer: impl Fn() -> f64) -> f64 {
    let validity = 0.125;
    validity
        + match column_type {
            ColumnType::Boolean => 0.125,
            ColumnType::Int32 | ColumnType::Date => 4.0,
            ColumnType::Int64 | ColumnType::Float64 | ColumnType::Timestamp => 8.0,
            // A view, and the bytes of strings too long to be inlined
            // (the file's figure includes a 4-byte length per value).
            ColumnType::Utf8 => {
                let text = (footer() - 4.0).max(0.0);
                16.0 + if text > 12.0 { text } else { 0.0 }
            }
        }
}

/// 1 when the whole run fits the limit, else enough partitions for each to
/// take [`PARTITION_SHARE`] of it.
pub fn partitions(estimate: u64, limit: u64) -> usize {
    if estimate <= limit {
        return 1;
    }
    let share = (limit as f64 * PARTITION_SHARE).max(1.0);
    ((estimate as f64 / share).ceil() as usize).clamp(2, MAX_PARTITIONS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_within_the_limit_is_one_partition_and_beyond_it_several() {
        assert_eq!(partitions(100, 100), 1);
        assert_eq!(partitions(101, 100), 3);
        assert_eq!(partitions(1000, 100), 29);
        assert_eq!(partitions(u64::MAX, 1), MAX_PARTITIONS);
    }

    #[test]
    fn a_large_run_within_the_limit_is_split_in_memory_and_a_small_one_is_not() {
        let fits = |users| Budget {
            estimate: 10,
            limit: 100,
            partitions: 1,
            users,
        };
        assert_eq!(fits(499_999).pipelined(250_000).partitions, 1);
        assert_eq!(fits(500_000).pipelined(250_000).partitions, 2);
        assert_eq!(fits(1_000_000).pipelined(250_000).partitions, 4);
        assert_eq!(
            fits(100_000_000).pipelined(250_000).partitions,
            MAX_MEMORY_PARTITIONS
        );
        assert_eq!(fits(1_000_000).pipelined(0).partitions, 1);
        assert!(!fits(1_000_000).pipelined(250_000).spills());
        let beyond = Budget {
            estimate: 1000,
            limit: 100,
            partitions: 29,
            users: 1_000_000,
        };
        assert_eq!(beyond.pipelined(250_000), beyond);
        assert!(beyond.spills());
    }

    #[test]
    fn widths_follow_the_declared_types() {
        let no_footer = || 0.0;
        assert_eq!(width(ColumnType::Int64, no_footer), 8.125);
        assert_eq!(width(ColumnType::Utf8, || 10.0), 16.125);
        assert_eq!(width(ColumnType::Utf8, || 40.0), 52.125);
    }
}
