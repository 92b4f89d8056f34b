//! A fixed-length set of universe rows: a tag's matches, a tag's scope.

use tag_plugin_api::Mask;

/// One bit per universe row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitset {
    words: Vec<u64>,
    len: usize,
}

impl Bitset {
    /// `len` rows, none set.
    pub fn empty(len: usize) -> Bitset {
        Bitset {
            words: vec![0; len.div_ceil(64)],
            len,
        }
    }

    /// `len` rows, all set.
    pub fn full(len: usize) -> Bitset {
        let mut set = Bitset {
            words: vec![u64::MAX; len.div_ceil(64)],
            len,
        };
        set.clear_tail();
        set
    }

    /// The rows for which `keep` is true.
    pub fn from_fn(len: usize, mut keep: impl FnMut(usize) -> bool) -> Bitset {
        let mut set = Bitset::empty(len);
        for i in 0..len {
            if keep(i) {
                set.insert(i);
            }
        }
        set
    }

    fn clear_tail(&mut self) {
        if let Some(last) = self.words.last_mut() {
            let used = self.len % 64;
            if used != 0 {
                *last &= (1u64 << used) - 1;
            }
        }
    }

    /// Rows in the universe (set or not).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the universe has no row.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether row `i` is set.
    pub fn contains(&self, i: usize) -> bool {
        self.words[i / 64] >> (i % 64) & 1 == 1
    }

    /// Sets row `i`.
    pub fn insert(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
    }

    /// Rows set.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Adds every row of `other` (of the same length).
    pub fn union_with(&mut self, other: &Bitset) {
        debug_assert_eq!(self.len, other.len);
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
    }

    /// The rows set, ascending.
    pub fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                (rest != 0).then(|| {
                    let bit = rest.trailing_zeros() as usize;
                    rest &= rest - 1;
                    w * 64 + bit
                })
            })
        })
    }

    /// Adds a plugin's mask for rows `offset..offset + mask.len()`. Batches
    /// may be placed in any order: the words are OR-ed in, so a mask's last
    /// word (zero past its rows) never clears rows of the batch after it.
    pub fn place(&mut self, offset: usize, mask: &Mask) {
        assert!(offset + mask.len() <= self.len, "mask beyond the universe");
        if offset.is_multiple_of(64) {
            let start = offset / 64;
            let words = mask.words();
            for (into, word) in self.words[start..start + words.len()].iter_mut().zip(words) {
                *into |= word;
            }
        } else {
            for i in mask.ones() {
                self.insert(offset + i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_sets_exactly_len_rows_and_ones_lists_them() {
        let set = Bitset::full(70);
        assert_eq!(set.count(), 70);
        assert_eq!(set.ones().last(), Some(69));
        let set = Bitset::from_fn(130, |i| i % 64 == 3);
        assert_eq!(set.ones().collect::<Vec<_>>(), vec![3, 67]);
    }

    #[test]
    fn place_copies_aligned_and_unaligned_masks() {
        let mask = Mask::from_bools(&[true, false, true]);
        let mut aligned = Bitset::empty(200);
        aligned.place(128, &mask);
        assert_eq!(aligned.ones().collect::<Vec<_>>(), vec![128, 130]);
        let mut unaligned = Bitset::empty(200);
        unaligned.place(5, &mask);
        assert_eq!(unaligned.ones().collect::<Vec<_>>(), vec![5, 7]);
    }

    #[test]
    fn batches_placed_out_of_order_keep_every_row() {
        // Batches of 100 rows: the first ends inside the word the second
        // starts in, and the second is placed first.
        let mut set = Bitset::empty(200);
        set.place(100, &Mask::from_bools(&[true; 100]));
        set.place(0, &Mask::from_bools(&[false; 100]));
        assert_eq!(set.count(), 100);
        assert_eq!(set.ones().next(), Some(100));
    }

    #[test]
    fn union_adds_rows() {
        let mut a = Bitset::from_fn(10, |i| i < 2);
        a.union_with(&Bitset::from_fn(10, |i| i == 9));
        assert_eq!(a.ones().collect::<Vec<_>>(), vec![0, 1, 9]);
        assert!(a.contains(9) && !a.contains(5));
    }
}
