//! Safe, typed access to the columns of a batch handed over by the host.

use crate::abi::{ColumnType, FfiBatch, FfiBitmap, FfiColumn, FfiValues};
use crate::date::Date;
use crate::mask::{all_ones, clear_tail, word_count};

/// A batch whose buffers have been checked: every column has `num_rows`
/// entries, bitmaps are large enough, string offsets are in bounds.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    num_rows: usize,
    columns: &'a [FfiColumn<'a>],
}

/// A batch that cannot be read, or a column that is missing or of another type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The batch has no column of that name.
    #[error("column \"{name}\" is not in the batch (columns: {available})")]
    MissingColumn {
        /// The column asked for.
        name: String,
        /// The batch's columns, comma-separated.
        available: String,
    },
    /// The column exists with another type than the one asked for.
    #[error("column \"{name}\" is {found}, expected {expected}")]
    WrongType {
        /// The column.
        name: String,
        /// The type asked for.
        expected: String,
        /// The column's type.
        found: ColumnType,
    },
    /// The column's buffers are inconsistent.
    #[error("column \"{name}\" is malformed: {reason}")]
    Malformed {
        /// The column.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

fn values_len(values: &FfiValues<'_>) -> usize {
    match values {
        FfiValues::Boolean(b) => b.len,
        FfiValues::Int32(v) | FfiValues::Date(v) => v.len(),
        FfiValues::Int64(v) | FfiValues::Timestamp(v) => v.len(),
        FfiValues::Float64(v) => v.len(),
        FfiValues::Utf8 { offsets, .. } => offsets.len().saturating_sub(1),
    }
}

fn check_bitmap(bitmap: &FfiBitmap<'_>, what: &str) -> Result<(), String> {
    let needed = bitmap
        .offset
        .checked_add(bitmap.len)
        .ok_or("bitmap offset overflows")?;
    if needed > bitmap.bytes.len() * 8 {
        return Err(format!(
            "{what} bitmap needs {needed} bits but has {}",
            bitmap.bytes.len() * 8
        ));
    }
    Ok(())
}

fn check_column(column: &FfiColumn<'_>, num_rows: usize) -> Result<(), String> {
    let len = values_len(&column.values);
    if len != num_rows {
        return Err(format!("{len} values for a batch of {num_rows} rows"));
    }
    if let FfiValues::Boolean(bits) = &column.values {
        check_bitmap(bits, "value")?;
    }
    if let FfiValues::Utf8 { offsets, data } = &column.values {
        if offsets.is_empty() {
            return Err("string column without offsets".into());
        }
        let mut previous = 0i64;
        for (i, &offset) in offsets.iter().enumerate() {
            if offset < previous || offset as u64 > data.len() as u64 {
                return Err(format!(
                    "string offset {i} ({offset}) is out of order or out of bounds"
                ));
            }
            previous = offset;
        }
    }
    if let Some(validity) = column.validity.as_ref().into_option() {
        if validity.len != num_rows {
            return Err(format!(
                "validity has {} bits for {num_rows} rows",
                validity.len
            ));
        }
        check_bitmap(validity, "validity")?;
    }
    Ok(())
}

impl<'a> Batch<'a> {
    /// Checks an FFI batch and wraps it for typed access.
    pub fn new(batch: FfiBatch<'a>) -> Result<Batch<'a>, BatchError> {
        let columns = batch.columns.as_slice();
        for column in columns {
            check_column(column, batch.num_rows).map_err(|reason| BatchError::Malformed {
                name: column.name.to_string(),
                reason,
            })?;
        }
        Ok(Batch {
            num_rows: batch.num_rows,
            columns,
        })
    }

    /// Number of rows.
    pub fn num_rows(&self) -> usize {
        self.num_rows
    }

    /// Names and types of the columns, in batch order.
    pub fn schema(&self) -> Vec<(&'a str, ColumnType)> {
        self.columns
            .iter()
            .map(|c| (c.name.as_str(), Column::type_of(&c.values)))
            .collect()
    }

    /// The column called `name`.
    pub fn column(&self, name: &str) -> Result<Column<'a>, BatchError> {
        self.columns
            .iter()
            .find(|c| c.name.as_str() == name)
            .map(|c| Column {
                raw: *c,
                len: self.num_rows,
            })
            .ok_or_else(|| BatchError::MissingColumn {
                name: name.to_string(),
                available: self
                    .columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// One column of a checked batch.
#[derive(Debug, Clone, Copy)]
pub struct Column<'a> {
    raw: FfiColumn<'a>,
    len: usize,
}

/// Reads bit `i` of an Arrow bitmap.
fn bit(bitmap: &FfiBitmap<'_>, i: usize) -> bool {
    let at = bitmap.offset + i;
    bitmap.bytes[at / 8] >> (at % 8) & 1 == 1
}

/// Copies an Arrow bitmap into 64-bit words starting at bit 0.
pub(crate) fn bitmap_words(bitmap: &FfiBitmap<'_>) -> Vec<u64> {
    let len = bitmap.len;
    let mut words = vec![0u64; word_count(len)];
    if bitmap.offset.is_multiple_of(8) {
        let bytes = &bitmap.bytes[bitmap.offset / 8..];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks(8)) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            *word = u64::from_le_bytes(buf);
        }
    } else {
        for i in 0..len {
            words[i / 64] |= u64::from(bit(bitmap, i)) << (i % 64);
        }
    }
    clear_tail(&mut words, len);
    words
}

impl<'a> Column<'a> {
    fn type_of(values: &FfiValues<'_>) -> ColumnType {
        match values {
            FfiValues::Boolean(_) => ColumnType::Boolean,
            FfiValues::Int32(_) => ColumnType::Int32,
            FfiValues::Int64(_) => ColumnType::Int64,
            FfiValues::Float64(_) => ColumnType::Float64,
            FfiValues::Date(_) => ColumnType::Date,
            FfiValues::Timestamp(_) => ColumnType::Timestamp,
            FfiValues::Utf8 { .. } => ColumnType::Utf8,
        }
    }

    /// The column's name.
    pub fn name(&self) -> &'a str {
        self.raw.name.as_str()
    }

    /// The column's type.
    pub fn column_type(&self) -> ColumnType {
        Column::type_of(&self.raw.values)
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a column of no rows.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether row `i` holds a value (false past the end).
    pub fn is_valid(&self, i: usize) -> bool {
        i < self.len
            && self
                .raw
                .validity
                .as_ref()
                .into_option()
                .is_none_or(|v| bit(v, i))
    }

    /// Number of null rows.
    pub fn null_count(&self) -> usize {
        self.len
            - self
                .validity_words()
                .iter()
                .map(|w| w.count_ones() as usize)
                .sum::<usize>()
    }

    /// The rows that hold a value, one bit each.
    pub(crate) fn validity_words(&self) -> Vec<u64> {
        match self.raw.validity.as_ref().into_option() {
            Some(v) => bitmap_words(v),
            None => all_ones(self.len),
        }
    }

    fn wrong_type(&self, expected: &str) -> BatchError {
        BatchError::WrongType {
            name: self.name().to_string(),
            expected: expected.to_string(),
            found: self.column_type(),
        }
    }

    /// Row `i` of any numeric column (int32, int64, float64) as `f64`.
    pub fn numbers(&self) -> Result<Numbers<'a>, BatchError> {
        match self.raw.values {
            FfiValues::Int32(v) => Ok(Numbers::Int32(v.as_slice())),
            FfiValues::Int64(v) => Ok(Numbers::Int64(v.as_slice())),
            FfiValues::Float64(v) => Ok(Numbers::Float64(v.as_slice())),
            _ => Err(self.wrong_type("a number")),
        }
    }

    /// A number accessor that honours nulls: `get(i)` is `None` for null rows.
    pub fn f64_values(&self) -> Result<Nullable<'a, Numbers<'a>>, BatchError> {
        Ok(Nullable {
            column: *self,
            inner: self.numbers()?,
        })
    }

    /// Dates (date or timestamp columns, timestamps by their UTC day), null-aware.
    pub fn dates(&self) -> Result<Nullable<'a, Dates<'a>>, BatchError> {
        let inner = match self.raw.values {
            FfiValues::Date(v) => Dates::Days(v.as_slice()),
            FfiValues::Timestamp(v) => Dates::Micros(v.as_slice()),
            _ => return Err(self.wrong_type("a date")),
        };
        Ok(Nullable {
            column: *self,
            inner,
        })
    }

    /// Strings, null-aware.
    pub fn strings(&self) -> Result<Nullable<'a, Strings<'a>>, BatchError> {
        match self.raw.values {
            FfiValues::Utf8 { offsets, data } => Ok(Nullable {
                column: *self,
                inner: Strings {
                    offsets: offsets.as_slice(),
                    data: data.as_slice(),
                },
            }),
            _ => Err(self.wrong_type("a string")),
        }
    }

    /// Booleans, null-aware.
    pub fn booleans(&self) -> Result<Nullable<'a, Booleans<'a>>, BatchError> {
        match self.raw.values {
            FfiValues::Boolean(bits) => Ok(Nullable {
                column: *self,
                inner: Booleans(bits),
            }),
            _ => Err(self.wrong_type("a boolean")),
        }
    }
}

/// Read access to row `i` of a column's values, ignoring nulls.
pub trait Values {
    /// The Rust type of one value.
    type Item;
    /// The value stored at row `i` (meaningless where the row is null).
    fn raw(&self, i: usize) -> Self::Item;
}

/// A column of values with its validity: `get(i)` is `None` for null rows.
#[derive(Debug, Clone, Copy)]
pub struct Nullable<'a, V> {
    column: Column<'a>,
    inner: V,
}

impl<V: Values> Nullable<'_, V> {
    /// Row `i`, or `None` when it is null or past the end.
    pub fn get(&self, i: usize) -> Option<V::Item> {
        self.column.is_valid(i).then(|| self.inner.raw(i))
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.column.len
    }

    /// True for a column of no rows.
    pub fn is_empty(&self) -> bool {
        self.column.len == 0
    }

    /// All rows, `None` for nulls.
    pub fn iter(&self) -> impl Iterator<Item = Option<V::Item>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

/// A numeric column's values.
#[derive(Debug, Clone, Copy)]
pub enum Numbers<'a> {
    /// int32 values.
    Int32(&'a [i32]),
    /// int64 values.
    Int64(&'a [i64]),
    /// float64 values.
    Float64(&'a [f64]),
}

impl Values for Numbers<'_> {
    type Item = f64;
    fn raw(&self, i: usize) -> f64 {
        match self {
            Numbers::Int32(v) => f64::from(v[i]),
            Numbers::Int64(v) => v[i] as f64,
            Numbers::Float64(v) => v[i],
        }
    }
}

/// A date or timestamp column's values, as dates.
#[derive(Debug, Clone, Copy)]
pub enum Dates<'a> {
    /// Days since the epoch.
    Days(&'a [i32]),
    /// Microseconds since the epoch.
    Micros(&'a [i64]),
}

impl Values for Dates<'_> {
    type Item = Date;
    fn raw(&self, i: usize) -> Date {
        match self {
            Dates::Days(v) => Date(v[i]),
            Dates::Micros(v) => Date::from_timestamp_micros(v[i]),
        }
    }
}

/// A string column's values.
#[derive(Debug, Clone, Copy)]
pub struct Strings<'a> {
    offsets: &'a [i64],
    data: &'a [u8],
}

impl<'a> Strings<'a> {
    /// The bytes of row `i`; offsets were checked when the batch was built.
    pub(crate) fn bytes(&self, i: usize) -> &'a [u8] {
        &self.data[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }
}

impl<'a> Values for Strings<'a> {
    /// Invalid UTF-8 from a misbehaving host reads as the replacement text.
    type Item = std::borrow::Cow<'a, str>;
    fn raw(&self, i: usize) -> Self::Item {
        String::from_utf8_lossy(self.bytes(i))
    }
}

/// A boolean column's values.
#[derive(Debug, Clone, Copy)]
pub struct Booleans<'a>(FfiBitmap<'a>);

impl Values for Booleans<'_> {
    type Item = bool;
    fn raw(&self, i: usize) -> bool {
        bit(&self.0, i)
    }
}

impl<'a> Booleans<'a> {
    pub(crate) fn words(&self) -> Vec<u64> {
        bitmap_words(&self.0)
    }
}

impl<V: Copy> Nullable<'_, V> {
    /// The values without their validity.
    pub(crate) fn inner(&self) -> V {
        self.inner
    }
}
