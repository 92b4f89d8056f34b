//! The columns a tag reads, taken from an Arrow batch and lent to the plugin
//! as the ABI's columns, with the host's coercions.
//!
//! A column already of the type the tag declares is lent as it is, without a
//! copy: its Arrow buffers (reference-counted, so holding them is free) are
//! the ABI column's slices, validity bitmap and bit offset included; so are
//! `large_string` columns (the ABI's string layout is Arrow's large utf8) and
//! microsecond timestamps in any time zone (the same UTC instant). Anything
//! else the host would coerce is converted into a new buffer, as the host
//! does: integers of other widths (with an overflow check), float32,
//! integers and DECIMAL to float64, timestamps of other units to
//! microseconds, timestamps to dates (the UTC day), dates to timestamps
//! (midnight UTC), `YYYY-MM-DD` strings to dates, and `string` (32-bit
//! offsets: only the offsets are widened, the bytes are lent), string views
//! and dictionary strings to strings. A column of Arrow's null type is all
//! nulls.

use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, ArrowPrimitiveType, PrimitiveArray};
use arrow_buffer::{BooleanBuffer, Buffer, NullBuffer, ScalarBuffer};
use arrow_schema::{DataType, TimeUnit};
use tag_plugin_api::abi::{FfiBitmap, FfiColumn, FfiValues};
use tag_plugin_api::abi_stable::std_types::{RNone, ROption, RSlice, RSome, RStr};
use tag_plugin_api::{ColumnType, Date};

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Why a column cannot be lent as the type a tag declares.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ColumnError {
    /// The batch has no column for the input.
    #[error("the batch has no column {table}.{column} (nor {column}); its columns: {available}")]
    Missing {
        /// The input's table.
        table: String,
        /// The input's column.
        column: String,
        /// The batch's column names, comma-separated.
        available: String,
    },
    /// The column's Arrow type cannot become the declared type.
    #[error("column {name} is {found}, which cannot be read as {expected}")]
    TypeMismatch {
        /// The batch's column name.
        name: String,
        /// The type the tag declares.
        expected: ColumnType,
        /// The column's Arrow type.
        found: String,
    },
    /// A value does not fit the declared type.
    #[error("column {name} ({found}) as {expected}: {detail}")]
    InvalidValue {
        /// The batch's column name.
        name: String,
        /// The type the tag declares.
        expected: ColumnType,
        /// The column's Arrow type.
        found: String,
        /// Which row and why.
        detail: String,
    },
}

/// The values of one prepared column: Arrow buffers, lent or new.
#[derive(Debug, Clone)]
enum Values {
    Boolean(BooleanBuffer),
    Int32(ScalarBuffer<i32>),
    Int64(ScalarBuffer<i64>),
    Float64(ScalarBuffer<f64>),
    Date(ScalarBuffer<i32>),
    Timestamp(ScalarBuffer<i64>),
    Utf8 {
        offsets: ScalarBuffer<i64>,
        data: Buffer,
    },
}

/// One input of a tag, ready to be lent: it owns (shares) every buffer the
/// ABI column points at.
#[derive(Debug, Clone)]
pub struct Prepared {
    name: String,
    values: Values,
    validity: Option<NullBuffer>,
}

fn bitmap(bits: &BooleanBuffer) -> FfiBitmap<'_> {
    FfiBitmap {
        bytes: RSlice::from_slice(bits.values()),
        offset: bits.offset(),
        len: bits.len(),
    }
}

impl Prepared {
    /// The ABI column, borrowing this column's buffers.
    pub fn ffi(&self) -> FfiColumn<'_> {
        let values = match &self.values {
            Values::Boolean(bits) => FfiValues::Boolean(bitmap(bits)),
            Values::Int32(v) => FfiValues::Int32(RSlice::from_slice(v)),
            Values::Int64(v) => FfiValues::Int64(RSlice::from_slice(v)),
            Values::Float64(v) => FfiValues::Float64(RSlice::from_slice(v)),
            Values::Date(v) => FfiValues::Date(RSlice::from_slice(v)),
            Values::Timestamp(v) => FfiValues::Timestamp(RSlice::from_slice(v)),
            Values::Utf8 { offsets, data } => FfiValues::Utf8 {
                offsets: RSlice::from_slice(offsets),
                data: RSlice::from_slice(data.as_slice()),
            },
        };
        let validity: ROption<FfiBitmap<'_>> = match &self.validity {
            Some(nulls) if nulls.null_count() > 0 => RSome(bitmap(nulls.inner())),
            _ => RNone,
        };
        FfiColumn {
            name: RStr::from_str(&self.name),
            values,
            validity,
        }
    }

    /// The address of the first value (tests check what is lent, not copied).
    #[cfg(test)]
    fn values_ptr(&self) -> *const u8 {
        match &self.values {
            Values::Boolean(bits) => bits.values().as_ptr(),
            Values::Int32(v) | Values::Date(v) => v.as_ptr().cast(),
            Values::Int64(v) | Values::Timestamp(v) => v.as_ptr().cast(),
            Values::Float64(v) => v.as_ptr().cast(),
            Values::Utf8 { data, .. } => data.as_ptr(),
        }
    }
}

/// What converting one column needs to say in an error.
struct Source<'a> {
    name: &'a str,
    array: &'a dyn Array,
    expected: ColumnType,
}

impl Source<'_> {
    fn mismatch(&self) -> ColumnError {
        ColumnError::TypeMismatch {
            name: self.name.to_string(),
            expected: self.expected,
            found: self.array.data_type().to_string(),
        }
    }

    fn invalid(&self, detail: String) -> ColumnError {
        ColumnError::InvalidValue {
            name: self.name.to_string(),
            expected: self.expected,
            found: self.array.data_type().to_string(),
            detail,
        }
    }
}

/// `array` (the batch's column `name`) as the ABI column `input_name` of
/// type `expected`.
pub fn prepare(
    name: &str,
    array: &dyn Array,
    input_name: &str,
    expected: ColumnType,
) -> Result<Prepared, ColumnError> {
    let source = Source {
        name,
        array,
        expected,
    };
    let values = match expected {
        _ if *array.data_type() == DataType::Null => all_null(array.len(), expected),
        ColumnType::Boolean => match array.as_boolean_opt() {
            Some(bools) => Values::Boolean(bools.values().clone()),
            None => return Err(source.mismatch()),
        },
        ColumnType::Int32 => match array.as_primitive_opt::<Int32Type>() {
            Some(ints) => Values::Int32(ints.values().clone()),
            None => Values::Int32(
                integers(&source, i64::from(i32::MIN)..=i64::from(i32::MAX))?
                    .into_iter()
                    .map(|v| v as i32)
                    .collect(),
            ),
        },
        ColumnType::Int64 => match array.as_primitive_opt::<Int64Type>() {
            Some(ints) => Values::Int64(ints.values().clone()),
            None => Values::Int64(integers(&source, i64::MIN..=i64::MAX)?.into()),
        },
        ColumnType::Float64 => Values::Float64(floats(&source)?),
        ColumnType::Date => Values::Date(dates(&source)?),
        ColumnType::Timestamp => Values::Timestamp(timestamps(&source)?),
        ColumnType::Utf8 => strings(&source)?,
    };
    Ok(Prepared {
        name: input_name.to_string(),
        values,
        validity: array.logical_nulls(),
    })
}

fn all_null(len: usize, expected: ColumnType) -> Values {
    match expected {
        ColumnType::Boolean => Values::Boolean(BooleanBuffer::new_unset(len)),
        ColumnType::Int32 => Values::Int32(vec![0; len].into()),
        ColumnType::Int64 => Values::Int64(vec![0; len].into()),
        ColumnType::Float64 => Values::Float64(vec![0.0; len].into()),
        ColumnType::Date => Values::Date(vec![0; len].into()),
        ColumnType::Timestamp => Values::Timestamp(vec![0; len].into()),
        ColumnType::Utf8 => Values::Utf8 {
            offsets: vec![0; len + 1].into(),
            data: Buffer::from_vec(Vec::<u8>::new()),
        },
    }
}

/// Each value of a primitive column through `f` (nulls become the default).
fn map_values<T, U>(
    array: &PrimitiveArray<T>,
    f: impl Fn(T::Native) -> Option<U>,
    what: &str,
) -> Result<Vec<U>, String>
where
    T: ArrowPrimitiveType,
    T::Native: std::fmt::Display,
    U: Default,
{
    (0..array.len())
        .map(|row| match array.is_null(row) {
            true => Ok(U::default()),
            false => {
                let v = array.value(row);
                f(v).ok_or_else(|| format!("row {row}: value {v} does not fit {what}"))
            }
        })
        .collect()
}

/// An integer column's values within `range`, as i64.
fn integers(
    source: &Source<'_>,
    range: std::ops::RangeInclusive<i64>,
) -> Result<Vec<i64>, ColumnError> {
    let a = source.array;
    let what = source.expected.name();
    let fit = |v: i64| range.contains(&v).then_some(v);
    let result = match a.data_type() {
        DataType::Int8 => map_values(a.as_primitive::<Int8Type>(), |v| fit(v.into()), what),
        DataType::Int16 => map_values(a.as_primitive::<Int16Type>(), |v| fit(v.into()), what),
        DataType::Int32 => map_values(a.as_primitive::<Int32Type>(), |v| fit(v.into()), what),
        DataType::Int64 => map_values(a.as_primitive::<Int64Type>(), fit, what),
        DataType::UInt8 => map_values(a.as_primitive::<UInt8Type>(), |v| fit(v.into()), what),
        DataType::UInt16 => map_values(a.as_primitive::<UInt16Type>(), |v| fit(v.into()), what),
        DataType::UInt32 => map_values(a.as_primitive::<UInt32Type>(), |v| fit(v.into()), what),
        DataType::UInt64 => map_values(
            a.as_primitive::<UInt64Type>(),
            |v| i64::try_from(v).ok().and_then(fit),
            what,
        ),
        _ => return Err(source.mismatch()),
    };
    result.map_err(|detail| source.invalid(detail))
}

/// A float, integer or DECIMAL column as float64 (lent when it is one).
fn floats(source: &Source<'_>) -> Result<ScalarBuffer<f64>, ColumnError> {
    let a = source.array;
    if let Some(floats) = a.as_primitive_opt::<Float64Type>() {
        return Ok(floats.values().clone());
    }
    let what = "float64";
    let result = match a.data_type() {
        DataType::Float32 => map_values(a.as_primitive::<Float32Type>(), |v| Some(v.into()), what),
        DataType::Decimal128(_, scale) => {
            let divisor = 10f64.powi(i32::from(*scale));
            map_values(
                a.as_primitive::<Decimal128Type>(),
                |v| Some(v as f64 / divisor),
                what,
            )
        }
        t if t.is_integer() => {
            let ints = integers(source, i64::MIN..=i64::MAX)?;
            Ok(ints.into_iter().map(|v| v as f64).collect())
        }
        _ => return Err(source.mismatch()),
    };
    result
        .map(ScalarBuffer::from)
        .map_err(|detail| source.invalid(detail))
}

/// A timestamp column's values in microseconds (lent when they are).
fn micros(source: &Source<'_>, unit: TimeUnit) -> Result<ScalarBuffer<i64>, ColumnError> {
    let a = source.array;
    let what = "microseconds";
    let result = match unit {
        TimeUnit::Microsecond => {
            return Ok(a
                .as_primitive::<TimestampMicrosecondType>()
                .values()
                .clone())
        }
        TimeUnit::Second => map_values(
            a.as_primitive::<TimestampSecondType>(),
            |v| v.checked_mul(1_000_000),
            what,
        ),
        TimeUnit::Millisecond => map_values(
            a.as_primitive::<TimestampMillisecondType>(),
            |v| v.checked_mul(1_000),
            what,
        ),
        TimeUnit::Nanosecond => map_values(
            a.as_primitive::<TimestampNanosecondType>(),
            |v| Some(v.div_euclid(1_000)),
            what,
        ),
    };
    result
        .map(ScalarBuffer::from)
        .map_err(|detail| source.invalid(detail))
}

/// A timestamp (any unit, any zone) or date column as UTC microseconds.
fn timestamps(source: &Source<'_>) -> Result<ScalarBuffer<i64>, ColumnError> {
    let a = source.array;
    match a.data_type() {
        DataType::Timestamp(unit, _) => micros(source, *unit),
        DataType::Date32 => map_values(
            a.as_primitive::<Date32Type>(),
            |d| i64::from(d).checked_mul(MICROS_PER_DAY),
            "microseconds",
        )
        .map(ScalarBuffer::from)
        .map_err(|detail| source.invalid(detail)),
        _ => Err(source.mismatch()),
    }
}

/// A date, timestamp (its UTC day) or `YYYY-MM-DD` string column as days.
fn dates(source: &Source<'_>) -> Result<ScalarBuffer<i32>, ColumnError> {
    let a = source.array;
    if let Some(days) = a.as_primitive_opt::<Date32Type>() {
        return Ok(days.values().clone());
    }
    if let DataType::Timestamp(unit, _) = a.data_type() {
        let stamps = micros(source, *unit)?;
        let days = stamps.iter().enumerate().map(|(row, &us)| {
            i32::try_from(us.div_euclid(MICROS_PER_DAY))
                .map_err(|_| source.invalid(format!("row {row}: timestamp {us} µs is no date")))
        });
        return days.collect::<Result<Vec<_>, _>>().map(ScalarBuffer::from);
    }
    let text = Text::of(a).filter(|_| !matches!(a.data_type(), DataType::Dictionary(..)));
    let text = text.ok_or_else(|| source.mismatch())?;
    let days = (0..a.len()).map(|row| match text.get(row) {
        None => Ok(0),
        Some(s) => Date::parse(s)
            .map(|d| d.days())
            .ok_or_else(|| source.invalid(format!("row {row}: {s:?} is not a YYYY-MM-DD date"))),
    });
    days.collect::<Result<Vec<_>, _>>().map(ScalarBuffer::from)
}

/// A string column in the ABI's layout: lent as it is when it is Arrow's
/// large utf8, its bytes lent when it is utf8 (32-bit offsets widened),
/// otherwise (views, dictionaries) copied.
fn strings(source: &Source<'_>) -> Result<Values, ColumnError> {
    let a = source.array;
    if let Some(large) = a.as_string_opt::<i64>() {
        return Ok(Values::Utf8 {
            offsets: large.offsets().inner().clone(),
            data: large.values().clone(),
        });
    }
    if let Some(small) = a.as_string_opt::<i32>() {
        let offsets = small.offsets().iter().map(|&o| i64::from(o)).collect();
        return Ok(Values::Utf8 {
            offsets,
            data: small.values().clone(),
        });
    }
    let text = Text::of(a).ok_or_else(|| source.mismatch())?;
    let mut offsets = Vec::with_capacity(a.len() + 1);
    let mut data = Vec::new();
    offsets.push(0i64);
    for row in 0..a.len() {
        data.extend_from_slice(text.get(row).unwrap_or("").as_bytes());
        offsets.push(data.len() as i64);
    }
    Ok(Values::Utf8 {
        offsets: offsets.into(),
        data: Buffer::from_vec(data),
    })
}

/// Read access to any Arrow string column: utf8, large utf8, views, and
/// dictionaries of those.
enum Text<'a> {
    Small(&'a arrow_array::StringArray),
    Large(&'a arrow_array::LargeStringArray),
    View(&'a arrow_array::StringViewArray),
    Dictionary {
        keys: Vec<usize>,
        nulls: Option<NullBuffer>,
        values: Box<Text<'a>>,
    },
}

impl<'a> Text<'a> {
    fn of(array: &'a dyn Array) -> Option<Text<'a>> {
        if let Some(a) = array.as_string_opt::<i32>() {
            return Some(Text::Small(a));
        }
        if let Some(a) = array.as_string_opt::<i64>() {
            return Some(Text::Large(a));
        }
        if let Some(a) = array.as_string_view_opt() {
            return Some(Text::View(a));
        }
        let dictionary = array.as_any_dictionary_opt()?;
        let values = Text::of(dictionary.values().as_ref())?;
        Some(Text::Dictionary {
            keys: dictionary.normalized_keys(),
            nulls: array.logical_nulls(),
            values: Box::new(values),
        })
    }

    /// Row `row`'s string, `None` when it is null.
    fn get(&self, row: usize) -> Option<&str> {
        match self {
            Text::Small(a) => a.is_valid(row).then(|| a.value(row)),
            Text::Large(a) => a.is_valid(row).then(|| a.value(row)),
            Text::View(a) => a.is_valid(row).then(|| a.value(row)),
            Text::Dictionary {
                keys,
                nulls,
                values,
            } => match nulls.as_ref().is_some_and(|n| n.is_null(row)) {
                true => None,
                false => values.get(keys[row]),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::builder::StringDictionaryBuilder;
    use arrow_array::*;

    fn column(array: &dyn Array, expected: ColumnType) -> Result<Prepared, ColumnError> {
        prepare("t.c", array, "c", expected)
    }

    /// The values the plugin sees, nulls as `None`, through the SDK's reader.
    fn seen_f64(p: &Prepared) -> Vec<Option<f64>> {
        let ffi = [p.ffi()];
        let batch = tag_plugin_api::abi::FfiBatch {
            num_rows: ffi_len(&ffi[0]),
            columns: RSlice::from_slice(&ffi),
        };
        let batch = tag_plugin_api::Batch::new(batch).expect("a well-formed batch");
        let col = batch.column("c").unwrap();
        let floats = col.f64_values().unwrap();
        (0..batch.num_rows()).map(|i| floats.get(i)).collect()
    }

    fn ffi_len(c: &FfiColumn<'_>) -> usize {
        match &c.values {
            FfiValues::Float64(v) => v.len(),
            FfiValues::Int32(v) | FfiValues::Date(v) => v.len(),
            FfiValues::Int64(v) | FfiValues::Timestamp(v) => v.len(),
            FfiValues::Boolean(b) => b.len,
            FfiValues::Utf8 { offsets, .. } => offsets.len() - 1,
        }
    }

    #[test]
    fn a_column_of_the_declared_type_is_lent_not_copied_even_when_sliced() {
        let floats = Float64Array::from(vec![Some(1.0), None, Some(3.0), Some(4.0)]);
        let sliced = floats.slice(1, 3);
        let p = column(&sliced, ColumnType::Float64).unwrap();
        assert_eq!(p.values_ptr(), sliced.values().as_ptr().cast());
        assert_eq!(seen_f64(&p), vec![None, Some(3.0), Some(4.0)]);

        let stamps = TimestampMicrosecondArray::from(vec![1, 2]).with_timezone("Asia/Shanghai");
        let p = column(&stamps, ColumnType::Timestamp).unwrap();
        assert_eq!(p.values_ptr(), stamps.values().as_ptr().cast());

        let large = LargeStringArray::from(vec![Some("a"), None, Some("bc")]);
        let p = column(&large, ColumnType::Utf8).unwrap();
        assert_eq!(p.values_ptr(), large.values().as_ptr());
        let bools = BooleanArray::from(vec![true, false, true]).slice(1, 2);
        let p = column(&bools, ColumnType::Boolean).unwrap();
        let FfiValues::Boolean(bits) = p.ffi().values else {
            panic!("not boolean")
        };
        assert_eq!((bits.offset, bits.len), (1, 2));
    }

    #[test]
    fn decimals_floats_and_integers_become_float64_as_the_host_converts_them() {
        let decimals = Decimal128Array::from(vec![Some(15_000_000), None, Some(-1)])
            .with_precision_and_scale(18, 2)
            .unwrap();
        let p = column(&decimals, ColumnType::Float64).unwrap();
        assert_eq!(seen_f64(&p), vec![Some(150000.0), None, Some(-0.01)]);
        let p = column(&Float32Array::from(vec![0.5f32, 30.0]), ColumnType::Float64).unwrap();
        assert_eq!(seen_f64(&p), vec![Some(0.5), Some(30.0)]);
        let p = column(
            &UInt16Array::from(vec![Some(7u16), None]),
            ColumnType::Float64,
        )
        .unwrap();
        assert_eq!(seen_f64(&p), vec![Some(7.0), None]);
    }

    #[test]
    fn integers_are_widened_and_one_that_does_not_fit_names_its_row() {
        let p = column(&Int8Array::from(vec![Some(-3i8), None]), ColumnType::Int32).unwrap();
        let FfiValues::Int32(v) = p.ffi().values else {
            panic!("not int32")
        };
        assert_eq!(v.as_slice()[0], -3);
        assert!(p.ffi().validity.is_some());
        let big = UInt64Array::from(vec![1, u64::MAX]);
        let err = column(&big, ColumnType::Int64).unwrap_err().to_string();
        assert!(
            err.contains("row 1: value 18446744073709551615 does not fit int64"),
            "{err}"
        );
        let err = column(&Int64Array::from(vec![1i64 << 40]), ColumnType::Int32)
            .unwrap_err()
            .to_string();
        assert!(err.contains("row 0") && err.contains("int32"), "{err}");
    }

    #[test]
    fn timestamps_of_any_unit_and_zone_become_utc_days_and_microseconds() {
        // 2025-01-14T23:30:00Z, which is the 15th in Shanghai: the UTC day counts.
        let ns = 1_736_897_400_000_000_000i64;
        let stamps =
            TimestampNanosecondArray::from(vec![Some(ns), None]).with_timezone("Asia/Shanghai");
        let p = column(&stamps, ColumnType::Date).unwrap();
        let FfiValues::Date(days) = p.ffi().values else {
            panic!("not date")
        };
        assert_eq!(
            days.as_slice()[0],
            Date::parse("2025-01-14").unwrap().days()
        );
        let ms = TimestampMillisecondArray::from(vec![ns / 1_000_000]);
        let p = column(&ms, ColumnType::Timestamp).unwrap();
        let FfiValues::Timestamp(us) = p.ffi().values else {
            panic!("not timestamp")
        };
        assert_eq!(us.as_slice(), &[ns / 1_000]);
        let p = column(&Date32Array::from(vec![1]), ColumnType::Timestamp).unwrap();
        let FfiValues::Timestamp(us) = p.ffi().values else {
            panic!("not timestamp")
        };
        assert_eq!(us.as_slice(), &[MICROS_PER_DAY]);
    }

    #[test]
    fn strings_of_every_layout_reach_the_plugin_and_date_strings_are_parsed() {
        let mut dict = StringDictionaryBuilder::<Int8Type>::new();
        dict.append_value("VIP1");
        dict.append_null();
        dict.append_value("普通");
        let dict = dict.finish();
        let view = StringViewArray::from(vec![Some("VIP1"), None, Some("普通")]);
        let small = StringArray::from(vec![Some("VIP1"), None, Some("普通")]);
        for array in [&dict as &dyn Array, &view, &small] {
            let p = column(array, ColumnType::Utf8).unwrap();
            let FfiValues::Utf8 { offsets, data } = p.ffi().values else {
                panic!("not utf8")
            };
            let text = |i: usize| {
                std::str::from_utf8(&data.as_slice()[offsets[i] as usize..offsets[i + 1] as usize])
                    .unwrap()
                    .to_string()
            };
            assert_eq!((text(0), text(2)), ("VIP1".into(), "普通".into()));
            assert!(p.ffi().validity.is_some(), "{}", array.data_type());
        }
        let dates = LargeStringArray::from(vec![Some("2025-01-15"), None]);
        let p = column(&dates, ColumnType::Date).unwrap();
        let FfiValues::Date(days) = p.ffi().values else {
            panic!("not date")
        };
        assert_eq!(
            days.as_slice()[0],
            Date::parse("2025-01-15").unwrap().days()
        );
        let bad = StringArray::from(vec!["2025-01-15", "15/01/2025"]);
        let err = column(&bad, ColumnType::Date).unwrap_err().to_string();
        assert!(
            err.contains(r#"row 1: "15/01/2025" is not a YYYY-MM-DD date"#),
            "{err}"
        );
    }

    #[test]
    fn a_type_that_cannot_become_the_declared_one_is_refused_and_null_columns_are_all_null() {
        let err = column(&StringArray::from(vec!["1"]), ColumnType::Float64).unwrap_err();
        assert_eq!(
            err.to_string(),
            "column t.c is Utf8, which cannot be read as float64"
        );
        let err = column(&Float64Array::from(vec![1.0]), ColumnType::Boolean).unwrap_err();
        assert!(matches!(err, ColumnError::TypeMismatch { .. }));
        let nulls = NullArray::new(3);
        let p = column(&nulls, ColumnType::Float64).unwrap();
        assert_eq!(seen_f64(&p), vec![None, None, None]);
    }
}
