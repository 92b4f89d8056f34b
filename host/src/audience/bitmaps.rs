//! Each tag's current members as a roaring bitmap over the users' dense
//! indexes, one immutable snapshot per committed version.
//!
//! A snapshot is never changed in place: a run's changes make the next
//! snapshot ([`TagBitmaps::apply`]), sharing the bitmaps of the tags it
//! did not touch, so a reader holding one (a count, a page of members, an
//! export) sees one whole committed state, never half a run.

use super::expr::Members;
use roaring::RoaringBitmap;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One run's effect on one tag: who gained it and who lost it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TagChange {
    /// The tag.
    pub tag_id: u32,
    /// Users who hold the tag after the run and did not before.
    pub added: RoaringBitmap,
    /// Users who held the tag before the run and do not after.
    pub removed: RoaringBitmap,
}

/// The members of every tag at one committed version.
#[derive(Debug, Clone, Default)]
pub struct TagBitmaps {
    version: u64,
    tags: BTreeMap<u32, Arc<RoaringBitmap>>,
    /// Users holding at least one tag.
    universe: Arc<RoaringBitmap>,
}

impl TagBitmaps {
    /// The snapshot of `tags` at `version`.
    pub fn new(version: u64, tags: impl IntoIterator<Item = (u32, RoaringBitmap)>) -> TagBitmaps {
        let tags: BTreeMap<u32, Arc<RoaringBitmap>> = tags
            .into_iter()
            .filter(|(_, bits)| !bits.is_empty())
            .map(|(tag, bits)| (tag, Arc::new(bits)))
            .collect();
        let mut universe = RoaringBitmap::new();
        for bits in tags.values() {
            universe |= bits.as_ref();
        }
        TagBitmaps {
            version,
            tags,
            universe: Arc::new(universe),
        }
    }

    /// The committed version this snapshot shows.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The tags someone holds, ascending.
    pub fn tag_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.tags.keys().copied()
    }

    /// The members of `tag_id` (none: nobody holds it).
    pub fn members(&self, tag_id: u32) -> Option<&RoaringBitmap> {
        self.tags.get(&tag_id).map(|b| b.as_ref())
    }

    /// |A ∩ B| for every pair of `tags`, row by row in the order asked
    /// (the diagonal is each tag's size).
    pub fn overlap(&self, tags: &[u32]) -> Vec<Vec<u64>> {
        let empty = RoaringBitmap::new();
        let bits: Vec<&RoaringBitmap> = tags
            .iter()
            .map(|t| self.members(*t).unwrap_or(&empty))
            .collect();
        let mut matrix = vec![vec![0; tags.len()]; tags.len()];
        for i in 0..tags.len() {
            matrix[i][i] = bits[i].len();
            for j in i + 1..tags.len() {
                let both = bits[i].intersection_len(bits[j]);
                matrix[i][j] = both;
                matrix[j][i] = both;
            }
        }
        matrix
    }

    /// The snapshot after a run's `changes`, at `version`. Users removed
    /// from a tag leave the universe only if they hold no other tag.
    pub fn apply(&self, version: u64, changes: &[TagChange]) -> TagBitmaps {
        let mut tags = self.tags.clone();
        let mut universe = self.universe.as_ref().clone();
        let mut left = RoaringBitmap::new();
        for change in changes {
            let mut bits = tags
                .remove(&change.tag_id)
                .map(Arc::unwrap_or_clone)
                .unwrap_or_default();
            bits -= &change.removed;
            bits |= &change.added;
            universe |= &change.added;
            left |= &change.removed;
            if !bits.is_empty() {
                tags.insert(change.tag_id, Arc::new(bits));
            }
        }
        // Of the users who lost a tag, those still holding one stay.
        let mut still = RoaringBitmap::new();
        for bits in tags.values() {
            still |= &left & bits.as_ref();
        }
        universe -= left - still;
        TagBitmaps {
            version,
            tags,
            universe: Arc::new(universe),
        }
    }

    /// The bitmaps' size serialized (roaring's portable format), about
    /// what they take in memory; a bitmap shared with another snapshot is
    /// counted here too.
    pub fn serialized_bytes(&self) -> usize {
        self.tags
            .values()
            .chain([&self.universe])
            .map(|b| b.serialized_size())
            .sum()
    }
}

impl Members for TagBitmaps {
    fn tag(&self, tag_id: u32) -> Option<&RoaringBitmap> {
        self.members(tag_id)
    }

    fn universe(&self) -> &RoaringBitmap {
        &self.universe
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audience::expr::{parse, Reference};

    fn bits(ids: &[u32]) -> RoaringBitmap {
        ids.iter().copied().collect()
    }

    fn change(tag_id: u32, added: &[u32], removed: &[u32]) -> TagChange {
        TagChange {
            tag_id,
            added: bits(added),
            removed: bits(removed),
        }
    }

    fn count(b: &TagBitmaps, text: &str) -> u64 {
        let resolve = |r: Reference<'_>| match r {
            Reference::Id(id) => Some(id),
            Reference::Name(_) => None,
        };
        parse(text, &resolve).expect(text).count(b)
    }

    #[test]
    fn a_run_moves_members_and_the_universe_and_leaves_the_old_snapshot_whole() {
        let v1 = TagBitmaps::new(
            1,
            [(1, bits(&[1, 2, 3])), (2, bits(&[3, 4])), (3, bits(&[]))],
        );
        assert_eq!(v1.tag_ids().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(count(&v1, "NOT 1"), 1); // user 4
                                            // User 3 loses tag 1 but keeps 2; user 4 loses 2, its only tag;
                                            // user 9 is new.
        let v2 = v1.apply(2, &[change(1, &[9], &[3]), change(2, &[], &[4])]);
        assert_eq!(v2.version(), 2);
        assert_eq!(v2.members(1), Some(&bits(&[1, 2, 9])));
        assert_eq!(v2.members(2), Some(&bits(&[3])));
        assert_eq!(Members::universe(&v2), &bits(&[1, 2, 3, 9]));
        assert_eq!(count(&v2, "NOT 2"), 3);
        // The old snapshot still answers as before.
        assert_eq!(v1.members(1), Some(&bits(&[1, 2, 3])));
        assert_eq!(Members::universe(&v1), &bits(&[1, 2, 3, 4]));
        // A tag emptied by a run disappears.
        let v3 = v2.apply(3, &[change(2, &[], &[3])]);
        assert_eq!(v3.members(2), None);
        assert_eq!(v3.tag_ids().collect::<Vec<_>>(), vec![1]);
        assert_eq!(Members::universe(&v3), &bits(&[1, 2, 9]));
    }

    #[test]
    fn overlap_is_symmetric_with_sizes_on_the_diagonal() {
        let b = TagBitmaps::new(
            1,
            [
                (1, bits(&[1, 2, 3])),
                (2, bits(&[2, 3, 4, 5])),
                (5, bits(&[9])),
            ],
        );
        assert_eq!(
            b.overlap(&[2, 1, 7]),
            vec![vec![4, 2, 0], vec![2, 3, 0], vec![0, 0, 0]]
        );
        assert!(b.serialized_bytes() > 0);
    }
}
