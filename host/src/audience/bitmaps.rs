//! Each tag's current members as a roaring bitmap over the users' dense
//! indexes, one immutable snapshot per committed version: a reader holding
//! one (a count, a page of members, an export) sees one whole committed
//! state, never half a run. A process loads the next snapshot whole when
//! the store's version moves ([`crate::members::live`]).

use super::expr::Members;
use roaring::RoaringBitmap;
use std::collections::BTreeMap;
use std::sync::Arc;

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

/// Up to `limit` members of `bits` after `cursor` (a member's index), in
/// order, and the cursor of the next page (none: these were the last).
pub fn page_after(
    bits: &RoaringBitmap,
    cursor: Option<u32>,
    limit: usize,
) -> (Vec<u32>, Option<u32>) {
    let start = cursor.map_or(0, |c| bits.rank(c)) as u32;
    let page: Vec<u32> = (0..limit as u32)
        .map_while(|i| bits.select(start.checked_add(i)?))
        .collect();
    let next = (page.len() == limit && limit > 0)
        .then(|| page.last().copied())
        .flatten();
    (page, next)
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
    use crate::audience::expr::parse_ids;

    fn bits(ids: &[u32]) -> RoaringBitmap {
        ids.iter().copied().collect()
    }

    fn count(b: &TagBitmaps, text: &str) -> u64 {
        parse_ids(text).expect(text).count(b)
    }

    #[test]
    fn a_snapshot_keeps_the_tags_someone_holds_and_their_universe() {
        let v1 = TagBitmaps::new(
            1,
            [(1, bits(&[1, 2, 3])), (2, bits(&[3, 4])), (3, bits(&[]))],
        );
        assert_eq!(v1.tag_ids().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(count(&v1, "NOT 1"), 1); // user 4
        assert_eq!(Members::universe(&v1), &bits(&[1, 2, 3, 4]));
    }

    #[test]
    fn pages_after_a_cursor_end_with_the_last_member() {
        let b = bits(&[2, 5, 9, 14]);
        assert_eq!(page_after(&b, None, 3), (vec![2, 5, 9], Some(9)));
        assert_eq!(page_after(&b, Some(9), 3), (vec![14], None));
        assert_eq!(page_after(&b, Some(6), 1), (vec![9], Some(9)));
        assert_eq!(page_after(&b, None, 0), (vec![], None));
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
