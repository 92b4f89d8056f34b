//! Bit masks: the answer of a tag, and SQL's three-valued truth used while a
//! rule is evaluated.

use crate::abi::FfiMask;
use abi_stable::std_types::RVec;

/// Number of 64-bit words needed for `len` bits.
pub(crate) fn word_count(len: usize) -> usize {
    len.div_ceil(64)
}

/// The bits of the last word that belong to a bitmap of `len` bits.
fn tail_mask(len: usize) -> u64 {
    match len % 64 {
        0 => u64::MAX,
        r => (1u64 << r) - 1,
    }
}

/// Clears the bits past `len`, keeping the invariant that they are zero.
pub(crate) fn clear_tail(words: &mut [u64], len: usize) {
    if let Some(last) = words.last_mut() {
        *last &= tail_mask(len);
    }
}

/// `len` set bits.
pub(crate) fn all_ones(len: usize) -> Vec<u64> {
    let mut words = vec![u64::MAX; word_count(len)];
    clear_tail(&mut words, len);
    words
}

/// Packs `predicate(value)` for each value into bits, 64 at a time.
#[inline]
pub(crate) fn pack<T: Copy>(values: &[T], predicate: impl Fn(T) -> bool) -> Vec<u64> {
    let mut words = Vec::with_capacity(word_count(values.len()));
    let chunks = values.chunks_exact(64);
    let rest = chunks.remainder();
    for chunk in chunks {
        let mut word = 0u64;
        for (i, &v) in chunk.iter().enumerate() {
            word |= u64::from(predicate(v)) << i;
        }
        words.push(word);
    }
    if !rest.is_empty() {
        let mut word = 0u64;
        for (i, &v) in rest.iter().enumerate() {
            word |= u64::from(predicate(v)) << i;
        }
        words.push(word);
    }
    words
}

/// Packs `predicate(i)` for each row index into bits.
pub(crate) fn pack_indexed(len: usize, predicate: impl Fn(usize) -> bool) -> Vec<u64> {
    let mut words = vec![0u64; word_count(len)];
    for i in 0..len {
        words[i / 64] |= u64::from(predicate(i)) << (i % 64);
    }
    words
}

/// Which rows get a tag: one bit per row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    words: Vec<u64>,
    len: usize,
}

impl Mask {
    /// A mask of `len` rows, none set.
    pub fn none(len: usize) -> Mask {
        Mask {
            words: vec![0; word_count(len)],
            len,
        }
    }

    /// A mask from one `bool` per row.
    pub fn from_bools(bits: &[bool]) -> Mask {
        Mask {
            words: pack(bits, |b| b),
            len: bits.len(),
        }
    }

    /// A mask from packed words (bits past `len` are cleared).
    ///
    /// Returns `None` when `words` does not hold exactly `ceil(len / 64)` words.
    pub fn from_words(mut words: Vec<u64>, len: usize) -> Option<Mask> {
        if words.len() != word_count(len) {
            return None;
        }
        clear_tail(&mut words, len);
        Some(Mask { words, len })
    }

    /// Number of rows covered.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the mask covers no rows.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether row `i` gets the tag (false past the end).
    pub fn get(&self, i: usize) -> bool {
        i < self.len && self.words[i / 64] >> (i % 64) & 1 == 1
    }

    /// Sets row `i` (ignored past the end).
    pub fn set(&mut self, i: usize, value: bool) {
        if i < self.len {
            let bit = 1u64 << (i % 64);
            if value {
                self.words[i / 64] |= bit;
            } else {
                self.words[i / 64] &= !bit;
            }
        }
    }

    /// Number of rows that get the tag.
    pub fn count_ones(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The packed words, LSB first.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Indices of the rows that get the tag, ascending.
    pub fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let bit = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                Some(w * 64 + bit)
            })
        })
    }

    /// One `bool` per row.
    pub fn to_bools(&self) -> Vec<bool> {
        (0..self.len).map(|i| self.get(i)).collect()
    }

    /// Converts into the FFI form returned to the host.
    pub fn into_ffi(self) -> FfiMask {
        FfiMask {
            words: RVec::from(self.words),
            len: self.len,
        }
    }

    /// Reads the FFI form; `None` when its word count does not match its length.
    pub fn from_ffi(mask: FfiMask) -> Option<Mask> {
        Mask::from_words(mask.words.into_vec(), mask.len)
    }
}

/// SQL three-valued truth for a column of rows: each row is true, false or
/// unknown (null). Invariant: `value` bits are a subset of `known` bits and
/// bits past `len` are zero.
#[derive(Debug, Clone)]
pub(crate) struct Truth {
    value: Vec<u64>,
    known: Vec<u64>,
    len: usize,
}

impl Truth {
    /// Builds from comparison bits and the rows where the input was not null.
    pub(crate) fn new(mut value: Vec<u64>, known: Vec<u64>, len: usize) -> Truth {
        debug_assert_eq!(value.len(), known.len());
        for (v, k) in value.iter_mut().zip(&known) {
            *v &= k;
        }
        clear_tail(&mut value, len);
        Truth { value, known, len }
    }

    /// Every row known, with the given bits.
    pub(crate) fn definite(value: Vec<u64>, len: usize) -> Truth {
        Truth::new(value, all_ones(len), len)
    }

    /// Kleene AND: false wins over unknown.
    pub(crate) fn and(mut self, other: &Truth) -> Truth {
        for i in 0..self.value.len() {
            let (va, ka, vb, kb) = (self.value[i], self.known[i], other.value[i], other.known[i]);
            self.known[i] = (ka & kb) | (ka & !va) | (kb & !vb);
            self.value[i] = va & vb;
        }
        self
    }

    /// Kleene OR: true wins over unknown.
    pub(crate) fn or(mut self, other: &Truth) -> Truth {
        for i in 0..self.value.len() {
            let (va, ka, vb, kb) = (self.value[i], self.known[i], other.value[i], other.known[i]);
            self.known[i] = (ka & kb) | va | vb;
            self.value[i] = va | vb;
        }
        self
    }

    /// Kleene NOT: unknown stays unknown.
    pub(crate) fn not(mut self) -> Truth {
        for (v, k) in self.value.iter_mut().zip(&self.known) {
            *v = k & !*v;
        }
        self
    }

    /// The rows where the whole expression is true.
    pub(crate) fn into_mask(self) -> Mask {
        Mask {
            words: self.value,
            len: self.len,
        }
    }
}
