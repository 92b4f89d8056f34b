//! The scope stage: which universe rows each tag evaluates. A full or
//! `user_ids` run evaluates every row it loaded; an incremental run only rows
//! whose source rows changed since the tag's last run.

use super::bitset::Bitset;
use super::{Plan, RunError, Universe, UNIVERSE_TABLE};
use polars::prelude::Int64Chunked;

/// Per tag of the plan, in order: `None` to evaluate every row, or the rows
/// to evaluate.
pub fn scopes(plan: &Plan, universe: &Universe) -> Result<Vec<Option<Bitset>>, RunError> {
    plan.tags
        .iter()
        .map(|t| {
            if !plan.incremental() || t.whole_universe {
                return Ok(None);
            }
            let mut tables = Vec::new();
            for table in t.tables() {
                let times = universe.updated_times(table).ok_or_else(|| {
                    RunError::Failed(format!("table {table}: updated_time was not kept"))
                })?;
                let watermark = t.watermarks.get(table).copied().unwrap_or(i64::MIN);
                tables.push(TableTimes {
                    universe: table == UNIVERSE_TABLE,
                    times,
                    watermark,
                });
            }
            Ok(Some(changed_rows(universe.rows(), &tables)))
        })
        .collect()
}

/// One table's `updated_time` aligned with the universe, and the tag's
/// watermark for it.
pub struct TableTimes<'a> {
    /// Whether this is the universe table (a null time there means "unknown").
    pub universe: bool,
    /// Per universe row; null where the row has no time (or, for a side
    /// table, where the user has no row).
    pub times: &'a Int64Chunked,
    /// The newest time the tag's last run saw in this table.
    pub watermark: i64,
}

/// Rows where any table has a row newer than its watermark, or where the
/// user's universe row has no `updated_time` (its change cannot be known:
/// evaluate).
pub fn changed_rows(rows: usize, tables: &[TableTimes<'_>]) -> Bitset {
    let mut scope = Bitset::empty(rows);
    for t in tables {
        for (i, time) in t.times.iter().enumerate() {
            let changed = match time {
                Some(time) => time > t.watermark,
                None => t.universe,
            };
            if changed {
                scope.insert(i);
            }
        }
    }
    scope
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::load::tests::{cash_tag, sample};
    use crate::engine::load::{load, Source};
    use crate::engine::testkit::{self, at, plan, tag_at_least};
    use crate::model::Mode;
    use crate::tasks::control::TaskControl;
    use polars::prelude::*;

    #[test]
    fn an_incremental_run_scopes_each_tag_to_its_changed_rows_unless_it_needs_all() {
        let dir = tempfile::tempdir().unwrap();
        sample(dir.path());
        let tags = [cash_tag(), tag_at_least(2, UNIVERSE_TABLE, "score", 0.0)];
        let mut plan = plan(&tags, Mode::Incremental, None);
        plan.tags[0].watermarks = [
            (UNIVERSE_TABLE.to_string(), at(1).unwrap()),
            ("user_asset_summary".to_string(), at(1).unwrap()),
        ]
        .into();
        plan.tags[1].whole_universe = true;
        let source = Source {
            data_dir: dir.path(),
            batch_rows: 2,
        };
        let universe = load(&plan, None, &source, &TaskControl::default()).unwrap();
        let scoped = scopes(&plan, &universe).unwrap();
        // Rows: u2 (nothing newer), u1 (newer in both tables), u3 (no
        // universe time); tag 2 evaluates everyone.
        let ones: Vec<usize> = scoped[0].as_ref().expect("a scope").ones().collect();
        assert_eq!(ones, vec![1, 2]);
        assert!(scoped[1].is_none());
        // A full run evaluates every row for every tag.
        let full = testkit::plan(&tags, Mode::Full, None);
        assert!(scopes(&full, &universe)
            .unwrap()
            .iter()
            .all(Option::is_none));
    }

    fn times(t: &[Option<i64>]) -> Int64Chunked {
        Int64Chunked::new("updated_time".into(), t)
    }

    #[test]
    fn newer_rows_and_unknown_universe_times_are_in_scope() {
        let universe = times(&[Some(5), None, Some(10), Some(5)]);
        let side = times(&[None, Some(1), Some(1), Some(8)]);
        let scope = changed_rows(
            4,
            &[
                TableTimes {
                    universe: true,
                    times: &universe,
                    watermark: 5,
                },
                TableTimes {
                    universe: false,
                    times: &side,
                    watermark: 7,
                },
            ],
        );
        // Row 1: unknown universe time; row 2: newer universe row; row 3:
        // newer side row; row 0: nothing newer (a missing side row is not a change).
        assert_eq!(scope.ones().collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn a_table_never_seen_puts_every_row_with_a_time_in_scope() {
        let side = times(&[Some(i64::MIN + 1), None]);
        let scope = changed_rows(
            2,
            &[TableTimes {
                universe: false,
                times: &side,
                watermark: i64::MIN,
            }],
        );
        assert_eq!(scope.ones().collect::<Vec<_>>(), vec![0]);
    }
}
