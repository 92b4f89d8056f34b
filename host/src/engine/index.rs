//! Finding users by id: the universe's id column, a compact hash index over
//! it, and the de-duplicating steps that use them (latest row per user in
//! the universe table; a de-duplicating left join for side tables).

use super::RunError;
use hashbrown::HashTable;
use polars::prelude::*;
use polars_arrow::array::{Array, Utf8ViewArray};
use rustc_hash::FxBuildHasher;
use std::hash::BuildHasher;

/// Rows between two progress ticks of the indexing loops.
pub const TICK_ROWS: usize = 65_536;

/// A column of user ids held as one arrow array, read by row number.
#[derive(Clone)]
pub struct UserIds {
    column: StringChunked,
}

impl UserIds {
    /// The ids of a string column (rechunked into one array if needed).
    pub fn new(column: &StringChunked) -> UserIds {
        UserIds {
            column: column.rechunk().into_owned(),
        }
    }

    /// Ids given as strings (for tests and small sets).
    pub fn from_strs(ids: &[&str]) -> UserIds {
        UserIds::new(&StringChunked::from_slice("user_id".into(), ids))
    }

    fn array(&self) -> Option<&Utf8ViewArray> {
        self.column.downcast_iter().next()
    }

    /// The id of row `row` ("" for a null id).
    pub fn get(&self, row: usize) -> &str {
        match self.array() {
            Some(a) if a.is_valid(row) => a.value(row),
            _ => "",
        }
    }

    /// How many rows.
    pub fn len(&self) -> usize {
        self.column.len()
    }

    /// Whether there is no row.
    pub fn is_empty(&self) -> bool {
        self.column.is_empty()
    }
}

fn hash_id(id: &str) -> u64 {
    FxBuildHasher.hash_one(id)
}

/// The row of each user id: a hash table of row numbers whose keys are read
/// from the id column. Four bytes a user, where a map keyed by string slices
/// takes forty: at 10M users that is 40 MB instead of 400 MB to allocate,
/// fault in and miss in the cache.
pub struct UniverseIndex {
    rows: HashTable<IdxSize>,
}

impl UniverseIndex {
    fn with_capacity(n: usize) -> UniverseIndex {
        UniverseIndex {
            rows: HashTable::with_capacity(n),
        }
    }

    /// The index of `ids`, which holds no duplicates and no nulls.
    pub fn of_unique(ids: &UserIds) -> UniverseIndex {
        UniverseIndex::of_unique_ticked(ids, &mut |_| {})
    }

    /// [`UniverseIndex::of_unique`], calling `tick` with the rows indexed
    /// every [`TICK_ROWS`] rows and at the end (for progress).
    pub fn of_unique_ticked(ids: &UserIds, tick: &mut dyn FnMut(usize)) -> UniverseIndex {
        let mut index = UniverseIndex::with_capacity(ids.len());
        for row in 0..ids.len() {
            let hash = hash_id(ids.get(row));
            index
                .rows
                .insert_unique(hash, row as IdxSize, |&r| hash_id(ids.get(r as usize)));
            if (row + 1) % TICK_ROWS == 0 {
                tick(TICK_ROWS);
            }
        }
        tick(ids.len() % TICK_ROWS);
        index
    }

    /// The row of `user_id`, where `ids` are the ids the index was built on.
    pub fn row(&self, ids: &UserIds, user_id: &str) -> Option<usize> {
        self.rows
            .find(hash_id(user_id), |&r| ids.get(r as usize) == user_id)
            .map(|&r| r as usize)
    }
}

/// Finds universe rows for a stream of user ids. Tables written by the same
/// pipeline usually list users in the same order, so the row after the last
/// one found is tried first; the hash index is the fallback (a lookup in a
/// map of millions of users costs a cache miss, a comparison does not).
pub struct RowFinder<'a> {
    ids: &'a UserIds,
    index: &'a UniverseIndex,
    next: usize,
}

impl<'a> RowFinder<'a> {
    /// A finder over `ids` and its index.
    pub fn new(ids: &'a UserIds, index: &'a UniverseIndex) -> RowFinder<'a> {
        RowFinder {
            ids,
            index,
            next: 0,
        }
    }

    /// The universe row of `user_id`.
    pub fn find(&mut self, user_id: &str) -> Option<usize> {
        // The next row, or the one after it (a user missing from this table).
        for guess in [self.next, self.next + 1] {
            if guess < self.ids.len() && self.ids.get(guess) == user_id {
                self.next = guess + 1;
                return Some(guess);
            }
        }
        let row = self.index.row(self.ids, user_id)?;
        self.next = row + 1;
        Some(row)
    }
}

/// A table's newest row per user ([`latest_rows`]).
pub struct Latest {
    /// The rows kept, ascending.
    pub keep: Vec<IdxSize>,
    /// How many rows that leaves out.
    pub dropped: usize,
    /// The index of the kept rows' ids, by their position in `keep` (the
    /// rows of the table once only `keep` is taken).
    pub index: UniverseIndex,
}

/// For each `user_id` of a table, the row with the greatest `updated_time`
/// (the last such row on ties, see [`replaces`]; rows without a user id are
/// skipped), in ascending row order, with the index of those rows: the hash
/// table that finds each user's newest row becomes the universe's index,
/// instead of a second pass hashing every id again. `tick` gets two units a
/// row gone through (finding, then indexing), every [`TICK_ROWS`] rows and
/// at the end.
pub fn latest_rows(
    ids: &StringChunked,
    times: &Int64Chunked,
    tick: &mut dyn FnMut(usize),
) -> Result<Latest, RunError> {
    let all = UserIds::new(ids);
    let times = times.rechunk();
    let mut latest: HashTable<IdxSize> = HashTable::with_capacity(all.len());
    let mut dropped = 0;
    for (i, (id, time)) in ids.iter().zip(times.iter()).enumerate() {
        let Some(id) = id else {
            dropped += 1;
            continue;
        };
        let hash = hash_id(id);
        match latest.find_mut(hash, |&r| all.get(r as usize) == id) {
            None => {
                latest.insert_unique(hash, i as IdxSize, |&r| hash_id(all.get(r as usize)));
            }
            Some(kept) => {
                dropped += 1;
                // Duplicates are rare: the kept row's time is looked up.
                if replaces(time, times.get(*kept as usize)) {
                    *kept = i as IdxSize;
                }
            }
        }
        if (i + 1) % TICK_ROWS == 0 {
            tick(TICK_ROWS);
        }
    }
    tick(ids.len() % TICK_ROWS);
    let mut keep: Vec<IdxSize> = latest.iter().copied().collect();
    keep.sort_unstable();
    if dropped > 0 {
        // Each kept row's number once the others are gone (4 bytes a row).
        let mut renumbered: Vec<IdxSize> = vec![0; ids.len()];
        for (new, &old) in keep.iter().enumerate() {
            renumbered[old as usize] = new as IdxSize;
        }
        latest
            .iter_mut()
            .for_each(|row| *row = renumbered[*row as usize]);
    }
    tick(ids.len());
    Ok(Latest {
        keep,
        dropped,
        index: UniverseIndex { rows: latest },
    })
}

/// For each universe row, the row of a side table with that user's greatest
/// `updated_time` (the last on ties, see [`replaces`]), or null where the table has none: a
/// de-duplicating left join in one pass over the side table. Also returns how
/// many of the table's rows for universe users were left out as duplicates.
pub fn join_latest(
    ids: &StringChunked,
    times: &Int64Chunked,
    universe: &mut RowFinder<'_>,
) -> (IdxCa, usize) {
    // Four bytes a universe row (a row number, or NONE), where pairs of
    // row and time took 24: at 10M users 40 MB to zero and fault in, not
    // 240 MB. Duplicates are rare, so the kept row's time is looked up.
    const NONE: IdxSize = IdxSize::MAX;
    let mut chosen: Vec<IdxSize> = vec![NONE; universe.ids.len()];
    let mut dropped = 0usize;
    for (i, (id, time)) in ids.iter().zip(times.iter()).enumerate() {
        let Some(slot) = id.and_then(|id| universe.find(id)) else {
            continue;
        };
        let kept = &mut chosen[slot];
        if *kept == NONE {
            *kept = i as IdxSize;
        } else {
            dropped += 1;
            if replaces(time, times.get(*kept as usize)) {
                *kept = i as IdxSize;
            }
        }
    }
    let take = chosen.into_iter().map(|row| (row != NONE).then_some(row));
    (IdxCa::from_iter_options("take".into(), take), dropped)
}

/// Whether a later row of a user, updated at `later`, replaces the one kept
/// so far (updated at `kept`): a row without a time loses to any timed row,
/// and on a tie the row written last wins (rows come in part-file order,
/// then row order: a data lake appends newer parts after older ones).
fn replaces(later: Option<i64>, kept: Option<i64>) -> bool {
    later >= kept
}

/// Universe rows in ascending user-id order (the order a store's B-tree
/// takes new keys fastest). The stable sort finds runs already in order and
/// merges them, so ids written in order (or as a few ordered runs, such as
/// `user_999999` followed by `user_1000000`) cost about one pass.
pub fn sorted_rows(ids: &UserIds) -> Vec<u32> {
    let mut rows: Vec<u32> = (0..ids.len() as u32).collect();
    rows.sort_by(|&a, &b| ids.get(a as usize).cmp(ids.get(b as usize)));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(ids: &[Option<&str>]) -> StringChunked {
        StringChunked::from_iter_options("user_id".into(), ids.iter().copied())
    }

    fn times(t: &[Option<i64>]) -> Int64Chunked {
        Int64Chunked::new("updated_time".into(), t)
    }

    #[test]
    fn latest_rows_keeps_the_newest_row_per_user_and_skips_null_ids() {
        let ids = strings(&[Some("a"), Some("b"), Some("a"), None, Some("a"), Some("b")]);
        let t = times(&[Some(1), Some(5), Some(3), Some(9), None, Some(5)]);
        let mut ticked = 0;
        let latest = latest_rows(&ids, &t, &mut |n| ticked += n).unwrap();
        assert_eq!(ticked, 2 * ids.len());
        // a: row 2 (time 3) beats 1 and null; b: tie on 5, the last wins.
        assert_eq!(latest.keep, vec![2, 5]);
        assert_eq!(latest.dropped, 4);
        // The index finds each user at its row among the kept ones.
        let kept = UserIds::from_strs(&["a", "b"]);
        assert_eq!(latest.index.row(&kept, "a"), Some(0));
        assert_eq!(latest.index.row(&kept, "b"), Some(1));
        assert_eq!(latest.index.row(&kept, "c"), None);
        // Without duplicates the rows stay where they are.
        let unique = strings(&[Some("x"), Some("y"), Some("z")]);
        let same = latest_rows(&unique, &times(&[None, Some(1), Some(2)]), &mut |_| {}).unwrap();
        assert_eq!((same.keep, same.dropped), (vec![0, 1, 2], 0));
        let all = UserIds::from_strs(&["x", "y", "z"]);
        assert_eq!(same.index.row(&all, "z"), Some(2));
    }

    #[test]
    fn a_timed_row_beats_a_null_and_ties_go_to_the_row_written_last() {
        assert!(replaces(Some(2), Some(1)));
        assert!(replaces(Some(1), Some(1)));
        assert!(!replaces(Some(0), Some(1)));
        assert!(replaces(Some(i64::MIN), None));
        assert!(!replaces(None, Some(i64::MIN)));
        assert!(replaces(None, None));
    }

    #[test]
    fn rows_are_found_in_order_and_out_of_order() {
        let ids = UserIds::from_strs(&["u1", "u2", "u3", "u4"]);
        let index = UniverseIndex::of_unique(&ids);
        let mut finder = RowFinder::new(&ids, &index);
        let found: Vec<_> = ["u1", "u3", "u4", "u2", "zz"]
            .iter()
            .map(|id| finder.find(id))
            .collect();
        assert_eq!(found, vec![Some(0), Some(2), Some(3), Some(1), None]);
    }

    #[test]
    fn rows_are_sorted_by_user_id() {
        let ids = UserIds::from_strs(&["b", "a", "c", "aa"]);
        assert_eq!(sorted_rows(&ids), vec![1, 3, 0, 2]);
        assert_eq!(sorted_rows(&UserIds::from_strs(&["a", "b"])), vec![0, 1]);
    }

    #[test]
    fn join_latest_aligns_side_rows_with_the_universe() {
        let universe = UserIds::from_strs(&["a", "b", "c"]);
        let index = UniverseIndex::of_unique(&universe);
        let side = strings(&[Some("c"), Some("x"), Some("a"), Some("c"), None]);
        let t = times(&[Some(1), Some(1), Some(1), Some(2), Some(3)]);
        let (take, dropped) = join_latest(&side, &t, &mut RowFinder::new(&universe, &index));
        let take: Vec<_> = take.iter().collect();
        assert_eq!(take, vec![Some(2), None, Some(3)]);
        assert_eq!(dropped, 1);
        // On a tie the later row wins; a null time loses to a timed one.
        let side = strings(&[Some("a"), Some("a"), Some("b"), Some("b")]);
        let t = times(&[Some(4), Some(4), Some(4), None]);
        let (take, dropped) = join_latest(&side, &t, &mut RowFinder::new(&universe, &index));
        assert_eq!(
            take.iter().collect::<Vec<_>>(),
            vec![Some(1), Some(2), None]
        );
        assert_eq!(dropped, 2);
    }
}
