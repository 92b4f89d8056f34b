//! Lending DataFrames as FFI batches: zero copy, validity, strings, units.

use polars::prelude::*;
use tag_host::data::ffi::with_ffi_batch;
use tag_host::data::gen::{gen_data_with, GenOptions};
use tag_host::data::read::{scan_table, ColumnRequest};
use tag_host::data::DataError as Error;
use tag_plugin_api::abi::{FfiBatch, FfiValues};
use tag_plugin_api::{Batch, ColumnType, Date};

/// The address of the first value of a single-chunk primitive column.
fn buffer_ptr<T: PolarsNumericType>(ca: &ChunkedArray<T>) -> *const T::Native {
    assert_eq!(ca.chunks().len(), 1);
    ca.downcast_iter().next().unwrap().values().as_ptr()
}

fn values_ptr(batch: &FfiBatch<'_>, column: usize) -> *const u8 {
    match batch.columns[column].values {
        FfiValues::Int32(v) | FfiValues::Date(v) => v.as_ptr().cast(),
        FfiValues::Int64(v) | FfiValues::Timestamp(v) => v.as_ptr().cast(),
        FfiValues::Float64(v) => v.as_ptr().cast(),
        FfiValues::Boolean(b) => b.bytes.as_ptr(),
        FfiValues::Utf8 { data, .. } => data.as_ptr(),
    }
}

/// A frame with every FFI type and nulls at rows divisible by 3.
fn sample(rows: usize) -> DataFrame {
    let opt = |i: usize| !i.is_multiple_of(3);
    let i32s: Vec<Option<i32>> = (0..rows).map(|i| opt(i).then_some(i as i32)).collect();
    let i64s: Vec<Option<i64>> = (0..rows).map(|i| opt(i).then_some(-(i as i64))).collect();
    let f64s: Vec<Option<f64>> = (0..rows)
        .map(|i| opt(i).then_some(i as f64 + 0.5))
        .collect();
    let bools: Vec<Option<bool>> = (0..rows).map(|i| opt(i).then_some(i % 2 == 0)).collect();
    let strs: Vec<Option<String>> = (0..rows)
        .map(|i| opt(i).then(|| "é".repeat(i % 4) + &i.to_string()))
        .collect();
    let mut df = df!(
        "i32" => i32s.clone(),
        "i64" => i64s.clone(),
        "f64" => f64s,
        "bool" => bools,
        "date" => i32s,
        "ts" => i64s,
        "str" => strs,
    )
    .unwrap();
    let date = df.column("date").unwrap().cast(&DataType::Date).unwrap();
    let ts = df
        .column("ts")
        .unwrap()
        .cast(&DataType::Datetime(TimeUnit::Microseconds, None))
        .unwrap();
    df.with_column(date).unwrap();
    df.with_column(ts).unwrap();
    df
}

#[test]
fn numeric_boolean_and_date_buffers_are_lent_without_copy() {
    let df = sample(100);
    let col = |n: &str| df.column(n).unwrap();
    let expected: Vec<*const u8> = vec![
        buffer_ptr(col("i32").i32().unwrap()).cast(),
        buffer_ptr(col("i64").i64().unwrap()).cast(),
        buffer_ptr(col("f64").f64().unwrap()).cast(),
        col("bool")
            .bool()
            .unwrap()
            .downcast_iter()
            .next()
            .unwrap()
            .values()
            .as_slice()
            .0
            .as_ptr(),
        buffer_ptr(col("date").date().unwrap().physical()).cast(),
        buffer_ptr(col("ts").datetime().unwrap().physical()).cast(),
    ];
    let validity_ptr = col("f64")
        .f64()
        .unwrap()
        .downcast_iter()
        .next()
        .unwrap()
        .validity()
        .unwrap()
        .as_slice()
        .0
        .as_ptr();
    with_ffi_batch(&df, |batch| {
        assert_eq!(batch.num_rows, 100);
        for (i, ptr) in expected.iter().enumerate() {
            assert_eq!(values_ptr(&batch, i), *ptr, "column {i} was copied");
        }
        let validity = batch.columns[2].validity.as_ref().into_option().unwrap();
        assert_eq!(validity.bytes.as_ptr(), validity_ptr, "validity was copied");
    })
    .unwrap();
}

/// Checks every FFI column against the frame, value by value, null by null.
fn assert_same_values(df: &DataFrame, batch: FfiBatch<'_>) {
    let batch = Batch::new(batch).expect("a well-formed batch");
    assert_eq!(batch.num_rows(), df.height());
    let types: Vec<ColumnType> = batch.schema().iter().map(|(_, t)| *t).collect();
    use ColumnType as T;
    assert_eq!(
        types,
        [
            T::Int32,
            T::Int64,
            T::Float64,
            T::Boolean,
            T::Date,
            T::Timestamp,
            T::Utf8
        ]
    );
    let col = |n: &str| df.column(n).unwrap().as_materialized_series().clone();
    for (name, numbers) in [
        ("i32", col("i32")),
        ("i64", col("i64")),
        ("f64", col("f64")),
    ] {
        let expected: Vec<Option<f64>> = numbers
            .cast(&DataType::Float64)
            .unwrap()
            .f64()
            .unwrap()
            .iter()
            .collect();
        let got: Vec<Option<f64>> = batch
            .column(name)
            .unwrap()
            .f64_values()
            .unwrap()
            .iter()
            .collect();
        assert_eq!(got, expected, "{name}");
    }
    let expected: Vec<Option<bool>> = col("bool").bool().unwrap().iter().collect();
    let got: Vec<Option<bool>> = batch
        .column("bool")
        .unwrap()
        .booleans()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(got, expected);
    let expected: Vec<Option<Date>> = col("date")
        .date()
        .unwrap()
        .physical()
        .iter()
        .map(|d| d.map(Date))
        .collect();
    let got: Vec<Option<Date>> = batch
        .column("date")
        .unwrap()
        .dates()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(got, expected);
    let expected: Vec<Option<String>> = col("str")
        .str()
        .unwrap()
        .iter()
        .map(|s| s.map(String::from))
        .collect();
    let got: Vec<Option<String>> = batch
        .column("str")
        .unwrap()
        .strings()
        .unwrap()
        .iter()
        .map(|s| s.map(|s| s.into_owned()))
        .collect();
    assert_eq!(got, expected);
    for (name, _) in batch.schema() {
        let nulls = df.column(name).unwrap().null_count();
        assert_eq!(batch.column(name).unwrap().null_count(), nulls, "{name}");
    }
}

#[test]
fn a_sliced_frame_keeps_its_bitmap_offset_and_correct_nulls() {
    let df = sample(100);
    let sliced = df.slice(13, 40);
    let f64_ptr = buffer_ptr(sliced.column("f64").unwrap().f64().unwrap());
    assert_eq!(f64_ptr, unsafe {
        buffer_ptr(df.column("f64").unwrap().f64().unwrap()).add(13)
    });
    with_ffi_batch(&sliced, |batch| {
        assert_eq!(values_ptr(&batch, 2), f64_ptr.cast(), "slice was copied");
        let validity = batch.columns[2].validity.as_ref().into_option().unwrap();
        assert_eq!((validity.offset, validity.len), (13 % 8, 40));
        // Row 0 of the slice is row 13 (valid), row 2 is row 15 (null).
        let checked = Batch::new(batch).unwrap();
        let f = checked.column("f64").unwrap();
        assert!(f.is_valid(0) && !f.is_valid(2));
        assert_same_values(&sliced, batch);
    })
    .unwrap();
}

#[test]
fn several_chunks_are_rechunked_and_strings_use_offsets() {
    let mut df = sample(10);
    df.vstack_mut(&sample(7)).unwrap();
    assert!(df.columns()[0].n_chunks() > 1);
    with_ffi_batch(&df, |batch| {
        if let FfiValues::Utf8 { offsets, data } = batch.columns[6].values {
            assert_eq!(offsets.len(), 18);
            assert_eq!(offsets[0], 0);
            assert_eq!(*offsets.last().unwrap() as usize, data.len());
        } else {
            panic!("strings are not Utf8");
        }
        assert_same_values(&df, batch);
    })
    .unwrap();
}

#[test]
fn timestamps_in_ms_and_ns_arrive_in_microseconds() {
    let ms = Series::new("ms".into(), [Some(1_500i64), None, Some(-1)])
        .cast(&DataType::Datetime(TimeUnit::Milliseconds, None))
        .unwrap();
    let ns = Series::new("ns".into(), [Some(1_500_999i64), Some(-1), None])
        .cast(&DataType::Datetime(TimeUnit::Nanoseconds, None))
        .unwrap();
    let df = DataFrame::new(3, vec![ms.into_column(), ns.into_column()]).unwrap();
    with_ffi_batch(&df, |batch| {
        let b = Batch::new(batch).unwrap();
        for (name, expected) in [
            ("ms", [Some(1_500_000i64), None, Some(-1_000)]),
            ("ns", [Some(1_500), Some(-1), None]),
        ] {
            let column = b.column(name).unwrap();
            assert_eq!(column.column_type(), ColumnType::Timestamp);
            let FfiValues::Timestamp(values) = batch
                .columns
                .iter()
                .find(|c| c.name.as_str() == name)
                .unwrap()
                .values
            else {
                panic!("{name} is not a timestamp");
            };
            let got: Vec<Option<i64>> = (0..3)
                .map(|i| column.is_valid(i).then(|| values[i]))
                .collect();
            assert_eq!(got, expected, "{name}");
        }
    })
    .unwrap();
}

#[test]
fn unsupported_types_are_refused_by_name() {
    let df = df!("ok" => [1i32], "small" => [1.5f32]).unwrap();
    let err = with_ffi_batch(&df, |_| ()).unwrap_err();
    assert!(matches!(err, Error::UnsupportedFfiType { .. }));
    assert!(
        err.to_string().contains("small") && err.to_string().contains("f32"),
        "{err}"
    );
}

#[test]
fn empty_frames_and_scanned_batches_cross_without_copy() {
    let empty = sample(0);
    with_ffi_batch(&empty, |batch| {
        assert_eq!(batch.num_rows, 0);
        Batch::new(batch).unwrap();
    })
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    gen_data_with(
        dir.path(),
        &GenOptions {
            users: 3_000,
            row_group_rows: 1_000,
            ..GenOptions::default()
        },
    )
    .unwrap();
    let columns = [
        ColumnRequest::new("user_id", ColumnType::Utf8),
        ColumnRequest::new("trade_count_30d", ColumnType::Int32),
        ColumnRequest::new("risk_score", ColumnType::Float64),
        ColumnRequest::new("last_login_date", ColumnType::Date),
    ];
    let mut batches = 0;
    for df in scan_table(dir.path(), "user_activity_summary", &columns, 400).unwrap() {
        let df = df.unwrap();
        let trades = buffer_ptr(df.column("trade_count_30d").unwrap().i32().unwrap());
        let risk = buffer_ptr(df.column("risk_score").unwrap().f64().unwrap());
        let nulls = df.column("risk_score").unwrap().null_count();
        with_ffi_batch(&df, |batch| {
            assert_eq!(values_ptr(&batch, 1), trades.cast());
            assert_eq!(values_ptr(&batch, 2), risk.cast());
            let b = Batch::new(batch).unwrap();
            assert_eq!(b.column("risk_score").unwrap().null_count(), nulls);
        })
        .unwrap();
        batches += 1;
    }
    assert!(batches >= 9);
}
