//! Batches that own their buffers: for plugin unit tests, for the host's
//! built-in sample data, and anywhere a batch is built from plain Rust values.

use crate::abi::{FfiBatch, FfiBitmap, FfiColumn, FfiValues};
use crate::date::Date;
use abi_stable::std_types::{RNone, RSlice, RSome, RStr};

#[derive(Debug, Clone)]
enum OwnedValues {
    Boolean(Vec<u8>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Float64(Vec<f64>),
    Date(Vec<i32>),
    Timestamp(Vec<i64>),
    Utf8 { offsets: Vec<i64>, data: Vec<u8> },
}

#[derive(Debug, Clone)]
struct OwnedColumn {
    name: String,
    values: OwnedValues,
    validity: Option<Vec<u8>>,
    len: usize,
}

/// A batch built column by column from `Option` values (`None` is null).
///
/// ```
/// use tag_plugin_api::owned::OwnedBatch;
/// let batch = OwnedBatch::new()
///     .float64("cash_balance", &[Some(60000.0), None])
///     .string("user_level", &[Some("VIP2"), Some("GOLD")]);
/// assert_eq!(batch.num_rows(), 2);
/// ```
#[derive(Debug, Clone, Default)]
pub struct OwnedBatch {
    columns: Vec<OwnedColumn>,
}

fn pack_bits(bits: impl ExactSizeIterator<Item = bool>) -> Vec<u8> {
    let mut bytes = vec![0u8; bits.len().div_ceil(8)];
    for (i, b) in bits.enumerate() {
        bytes[i / 8] |= u8::from(b) << (i % 8);
    }
    bytes
}

/// A validity bitmap for `values`, or `None` when none is null.
fn validity_of<T>(values: &[Option<T>]) -> Option<Vec<u8>> {
    values
        .iter()
        .any(Option::is_none)
        .then(|| pack_bits(values.iter().map(Option::is_some)))
}

fn bitmap(bytes: &[u8], len: usize) -> FfiBitmap<'_> {
    FfiBitmap {
        bytes: RSlice::from_slice(bytes),
        offset: 0,
        len,
    }
}

impl OwnedBatch {
    /// An empty batch.
    pub fn new() -> OwnedBatch {
        OwnedBatch::default()
    }

    /// Number of rows (0 before the first column).
    pub fn num_rows(&self) -> usize {
        self.columns.first().map_or(0, |c| c.len)
    }

    /// Adds a column. Panics when its length differs from earlier columns':
    /// that is a bug in the code building the batch, not a data error.
    fn push(
        mut self,
        name: &str,
        len: usize,
        validity: Option<Vec<u8>>,
        values: OwnedValues,
    ) -> Self {
        assert!(
            self.columns.is_empty() || len == self.num_rows(),
            "column {name} has {len} rows, the batch has {}",
            self.num_rows()
        );
        self.columns.push(OwnedColumn {
            name: name.into(),
            values,
            validity,
            len,
        });
        self
    }

    /// Adds a column of fixed-width values; `None` becomes a null.
    fn push_plain<T: Copy + Default>(
        self,
        name: &str,
        values: &[Option<T>],
        make: impl FnOnce(Vec<T>) -> OwnedValues,
    ) -> Self {
        let plain = values.iter().map(|v| v.unwrap_or_default()).collect();
        self.push(name, values.len(), validity_of(values), make(plain))
    }

    /// Adds a float64 column.
    pub fn float64(self, name: &str, values: &[Option<f64>]) -> Self {
        self.push_plain(name, values, OwnedValues::Float64)
    }

    /// Adds an int32 column.
    pub fn int32(self, name: &str, values: &[Option<i32>]) -> Self {
        self.push_plain(name, values, OwnedValues::Int32)
    }

    /// Adds an int64 column.
    pub fn int64(self, name: &str, values: &[Option<i64>]) -> Self {
        self.push_plain(name, values, OwnedValues::Int64)
    }

    /// Adds a boolean column.
    pub fn boolean(self, name: &str, values: &[Option<bool>]) -> Self {
        self.push_plain(name, values, |v| {
            OwnedValues::Boolean(pack_bits(v.into_iter()))
        })
    }

    /// Adds a timestamp column (microseconds since the epoch, UTC).
    pub fn timestamp(self, name: &str, values: &[Option<i64>]) -> Self {
        self.push_plain(name, values, OwnedValues::Timestamp)
    }

    /// Adds a date column from dates.
    pub fn dates(self, name: &str, values: &[Option<Date>]) -> Self {
        let days: Vec<Option<i32>> = values.iter().map(|d| d.map(Date::days)).collect();
        self.push_plain(name, &days, OwnedValues::Date)
    }

    /// Adds a date column from `YYYY-MM-DD` text. Panics on a malformed date
    /// (a literal in test code).
    pub fn date(self, name: &str, values: &[Option<&str>]) -> Self {
        let dates: Vec<Option<Date>> = values
            .iter()
            .map(|v| v.map(|s| Date::parse(s).unwrap_or_else(|| panic!("bad date literal {s:?}"))))
            .collect();
        self.dates(name, &dates)
    }

    /// Adds a string column.
    pub fn string(self, name: &str, values: &[Option<&str>]) -> Self {
        let mut offsets = Vec::with_capacity(values.len() + 1);
        let mut data = Vec::new();
        offsets.push(0i64);
        for v in values {
            data.extend_from_slice(v.unwrap_or_default().as_bytes());
            offsets.push(data.len() as i64);
        }
        self.push(
            name,
            values.len(),
            validity_of(values),
            OwnedValues::Utf8 { offsets, data },
        )
    }

    /// Borrowed FFI views of the columns.
    pub fn ffi_columns(&self) -> Vec<FfiColumn<'_>> {
        self.columns
            .iter()
            .map(|c| FfiColumn {
                name: RStr::from_str(&c.name),
                values: match &c.values {
                    OwnedValues::Boolean(b) => FfiValues::Boolean(bitmap(b, c.len)),
                    OwnedValues::Int32(v) => FfiValues::Int32(RSlice::from_slice(v)),
                    OwnedValues::Int64(v) => FfiValues::Int64(RSlice::from_slice(v)),
                    OwnedValues::Float64(v) => FfiValues::Float64(RSlice::from_slice(v)),
                    OwnedValues::Date(v) => FfiValues::Date(RSlice::from_slice(v)),
                    OwnedValues::Timestamp(v) => FfiValues::Timestamp(RSlice::from_slice(v)),
                    OwnedValues::Utf8 { offsets, data } => FfiValues::Utf8 {
                        offsets: RSlice::from_slice(offsets),
                        data: RSlice::from_slice(data),
                    },
                },
                validity: match &c.validity {
                    Some(v) => RSome(bitmap(v, c.len)),
                    None => RNone,
                },
            })
            .collect()
    }

    /// Runs `f` with the batch in its FFI form.
    pub fn with_ffi<R>(&self, f: impl FnOnce(FfiBatch<'_>) -> R) -> R {
        let columns = self.ffi_columns();
        f(FfiBatch {
            num_rows: self.num_rows(),
            columns: RSlice::from_slice(&columns),
        })
    }
}
