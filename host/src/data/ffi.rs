//! Lending a polars `DataFrame` to a plugin as an [`FfiBatch`].
//!
//! Numeric, boolean, date and microsecond-timestamp columns are passed as
//! borrowed slices of polars' own arrow buffers, validity bitmaps included
//! (bytes plus bit offset, so sliced frames need no copy either). A column
//! made of several chunks is rechunked first, which copies it once. Strings
//! are copied into the ABI's offsets + data layout (polars stores string
//! views, which the ABI does not carry), and so are timestamps in ms or ns,
//! which are converted to microseconds.

use std::borrow::Cow;

use abi_stable::std_types::{RNone, ROption, RSlice, RSome, RStr};
use polars::prelude::*;
use polars_arrow::array::PrimitiveArray;
use polars_arrow::bitmap::Bitmap;
use polars_arrow::types::NativeType;
use tag_plugin_api::abi::{FfiBatch, FfiBitmap, FfiColumn, FfiValues};
use tag_plugin_api::ColumnType;

use super::DataError as Error;

/// Calls `f` with `df` borrowed as an FFI batch: one FFI column per frame
/// column, in frame order, with the frame's column names.
pub fn with_ffi_batch<R>(df: &DataFrame, f: impl FnOnce(FfiBatch<'_>) -> R) -> Result<R, Error> {
    let held = df
        .columns()
        .iter()
        .map(Held::new)
        .collect::<Result<Vec<_>, _>>()?;
    let columns = held.iter().map(Held::ffi).collect::<Result<Vec<_>, _>>()?;
    Ok(f(FfiBatch {
        num_rows: df.height(),
        columns: RSlice::from_slice(&columns),
    }))
}

/// The FFI column type a polars type is passed as, if it can be passed at all.
pub fn ffi_type(dtype: &DataType) -> Option<ColumnType> {
    Some(match dtype {
        DataType::Boolean => ColumnType::Boolean,
        DataType::Int32 => ColumnType::Int32,
        DataType::Int64 => ColumnType::Int64,
        DataType::Float64 => ColumnType::Float64,
        DataType::Date => ColumnType::Date,
        DataType::Datetime(..) => ColumnType::Timestamp,
        DataType::String => ColumnType::Utf8,
        _ => return None,
    })
}

/// What one column needs to stay alive while the batch is lent out.
enum Held<'df> {
    /// A single-chunk series whose buffers are lent as they are.
    Buffers {
        name: &'df str,
        series: Cow<'df, Series>,
        column_type: ColumnType,
    },
    /// Timestamps converted to microseconds.
    Micros {
        name: &'df str,
        values: Vec<i64>,
        validity: Option<Bitmap>,
    },
    /// Strings copied into offsets + data.
    Utf8 {
        name: &'df str,
        offsets: Vec<i64>,
        data: Vec<u8>,
        validity: Option<Bitmap>,
    },
}

impl<'df> Held<'df> {
    fn new(column: &'df Column) -> Result<Held<'df>, Error> {
        let name = column.name().as_str();
        let series = column.as_materialized_series();
        let unsupported = || Error::UnsupportedFfiType {
            column: name.to_string(),
            dtype: series.dtype().to_string(),
        };
        let column_type = ffi_type(series.dtype()).ok_or_else(unsupported)?;
        let polars_err = |e: PolarsError| Error::polars(format!("column {name}"), e);
        match series.dtype() {
            DataType::String => {
                let strings = series.str().map_err(polars_err)?;
                let mut offsets = Vec::with_capacity(strings.len() + 1);
                let mut data = Vec::new();
                offsets.push(0i64);
                for value in strings.iter() {
                    data.extend_from_slice(value.unwrap_or("").as_bytes());
                    offsets.push(data.len() as i64);
                }
                Ok(Held::Utf8 {
                    name,
                    offsets,
                    data,
                    validity: strings.rechunk_validity(),
                })
            }
            DataType::Datetime(unit, _) if *unit != TimeUnit::Microseconds => {
                let stamps = series.datetime().map_err(polars_err)?.physical();
                let to_micros = |v: i64| match unit {
                    TimeUnit::Milliseconds => v.checked_mul(1_000),
                    _ => Some(v.div_euclid(1_000)),
                };
                let values = stamps
                    .iter()
                    .enumerate()
                    .map(|(row, v)| match v {
                        None => Ok(0),
                        Some(v) => to_micros(v).ok_or_else(|| Error::FfiValue {
                            column: name.to_string(),
                            detail: format!("row {row}: timestamp {v} ms overflows microseconds"),
                        }),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Held::Micros {
                    name,
                    values,
                    validity: stamps.rechunk_validity(),
                })
            }
            _ => {
                let series = if series.n_chunks() > 1 {
                    Cow::Owned(series.rechunk())
                } else {
                    Cow::Borrowed(series)
                };
                Ok(Held::Buffers {
                    name,
                    series,
                    column_type,
                })
            }
        }
    }

    fn ffi(&self) -> Result<FfiColumn<'_>, Error> {
        match self {
            Held::Micros {
                name,
                values,
                validity,
            } => Ok(FfiColumn {
                name: RStr::from_str(name),
                values: FfiValues::Timestamp(RSlice::from_slice(values)),
                validity: ffi_validity(validity.as_ref()),
            }),
            Held::Utf8 {
                name,
                offsets,
                data,
                validity,
            } => Ok(FfiColumn {
                name: RStr::from_str(name),
                values: FfiValues::Utf8 {
                    offsets: RSlice::from_slice(offsets),
                    data: RSlice::from_slice(data),
                },
                validity: ffi_validity(validity.as_ref()),
            }),
            Held::Buffers {
                name,
                series,
                column_type,
            } => {
                let err = |e: PolarsError| Error::polars(format!("column {name}"), e);
                let (values, validity) = match column_type {
                    ColumnType::Int32 => {
                        let (v, m) = primitive(series.i32().map_err(err)?);
                        (FfiValues::Int32(v), m)
                    }
                    ColumnType::Int64 => {
                        let (v, m) = primitive(series.i64().map_err(err)?);
                        (FfiValues::Int64(v), m)
                    }
                    ColumnType::Float64 => {
                        let (v, m) = primitive(series.f64().map_err(err)?);
                        (FfiValues::Float64(v), m)
                    }
                    ColumnType::Date => {
                        let (v, m) = primitive(series.date().map_err(err)?.physical());
                        (FfiValues::Date(v), m)
                    }
                    ColumnType::Timestamp => {
                        let (v, m) = primitive(series.datetime().map_err(err)?.physical());
                        (FfiValues::Timestamp(v), m)
                    }
                    ColumnType::Boolean => {
                        let booleans = series.bool().map_err(err)?;
                        match single_chunk(booleans) {
                            Some(array) => (
                                FfiValues::Boolean(ffi_bitmap(array.values())),
                                ffi_validity(array.validity()),
                            ),
                            None => (FfiValues::Boolean(EMPTY_BITMAP), RNone),
                        }
                    }
                    ColumnType::Utf8 => unreachable!("strings are always copied"),
                };
                Ok(FfiColumn {
                    name: RStr::from_str(name),
                    values,
                    validity,
                })
            }
        }
    }
}

const EMPTY_BITMAP: FfiBitmap<'static> = FfiBitmap {
    bytes: RSlice::from_slice(&[]),
    offset: 0,
    len: 0,
};

/// The only chunk of `ca`, or `None` when it has no chunk (an empty array).
fn single_chunk<T: PolarsDataType>(ca: &ChunkedArray<T>) -> Option<&T::Array> {
    debug_assert!(ca.chunks().len() <= 1, "rechunked above");
    ca.downcast_iter().next()
}

/// Borrows the values and validity of a single-chunk primitive array.
fn primitive<T>(ca: &ChunkedArray<T>) -> (RSlice<'_, T::Native>, ROption<FfiBitmap<'_>>)
where
    T: PolarsNumericType,
    T::Native: NativeType,
{
    match single_chunk(ca) {
        Some(array) => {
            let array: &PrimitiveArray<T::Native> = array;
            (
                RSlice::from_slice(array.values().as_slice()),
                ffi_validity(array.validity()),
            )
        }
        None => (RSlice::from_slice(&[]), RNone),
    }
}

/// A validity bitmap for the ABI; `RNone` when there is no null.
fn ffi_validity(bitmap: Option<&Bitmap>) -> ROption<FfiBitmap<'_>> {
    match bitmap {
        Some(b) if b.unset_bits() > 0 => RSome(ffi_bitmap(b)),
        _ => RNone,
    }
}

/// Borrows an arrow bitmap as bytes + bit offset + length.
fn ffi_bitmap(bitmap: &Bitmap) -> FfiBitmap<'_> {
    let (bytes, offset, len) = bitmap.as_slice();
    FfiBitmap {
        bytes: RSlice::from_slice(bytes),
        offset,
        len,
    }
}
