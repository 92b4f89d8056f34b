//! Reading tables: projection, bounded batches, directories of parts, coercion.

use polars::prelude::*;
use tag_host::data::gen::{gen_data_with, GenOptions};
use tag_host::data::read::{coerce_column, scan_table, table_files, ColumnRequest};
use tag_host::data::DataError as Error;
use tag_plugin_api::ColumnType;

use crate::support::{concat, read_parquet, row_groups, write_parquet};

fn req(name: &str, t: ColumnType) -> ColumnRequest {
    ColumnRequest::new(name, t)
}

fn collect(scan: tag_host::data::read::TableScan) -> Vec<DataFrame> {
    scan.collect::<Result<Vec<_>, _>>().unwrap()
}

#[test]
fn reads_only_the_requested_columns_in_bounded_batches() {
    let dir = tempfile::tempdir().unwrap();
    gen_data_with(
        dir.path(),
        &GenOptions {
            users: 5_000,
            row_group_rows: 2_000,
            ..GenOptions::default()
        },
    )
    .unwrap();
    let columns = [
        req("cash_balance", ColumnType::Float64),
        req("user_id", ColumnType::Utf8),
    ];
    let scan = scan_table(dir.path(), "user_asset_summary", &columns, 700).unwrap();
    let total = scan.num_rows();
    let batches = collect(scan);

    // Batches never exceed the bound nor cross a row group.
    let groups = row_groups(&dir.path().join("user_asset_summary.parquet"));
    assert!(groups.len() >= 3 && groups[0] > 1_400, "{groups:?}");
    let expected: Vec<usize> = groups
        .iter()
        .flat_map(|&g| (0..g.div_ceil(700)).map(move |i| (g - i * 700).min(700)))
        .collect();
    let heights: Vec<usize> = batches.iter().map(|b| b.height()).collect();
    assert_eq!(heights, expected);
    assert_eq!(heights.iter().sum::<usize>(), total);
    for batch in &batches {
        let names: Vec<&str> = batch.columns().iter().map(|c| c.name().as_str()).collect();
        assert_eq!(names, ["cash_balance", "user_id"]);
        assert!(batch.columns().iter().all(|c| c.n_chunks() == 1));
    }

    // Same data as a full read of those columns.
    let full = read_parquet(&dir.path().join("user_asset_summary.parquet"));
    let expected = full.select(["cash_balance", "user_id"]).unwrap();
    assert!(concat(&batches).equals_missing(&expected));
}

/// A small asset-like frame for hand-made files.
fn part(ids: &[&str], cash: &[Option<f64>]) -> DataFrame {
    df!("user_id" => ids, "cash_balance" => cash, "noise" => vec![1i32; ids.len()]).unwrap()
}

#[test]
fn reads_a_directory_of_parts_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("user_asset_summary");
    std::fs::create_dir(&table).unwrap();
    write_parquet(
        &table.join("part-1.parquet"),
        &mut part(&["c", "d", "e"], &[Some(3.0), None, Some(5.0)]),
        2,
    );
    write_parquet(
        &table.join("part-0.parquet"),
        &mut part(&["a", "b"], &[Some(1.0), Some(2.0)]),
        10,
    );
    // Ignored: not parquet, hidden.
    std::fs::write(table.join("_SUCCESS"), b"").unwrap();
    write_parquet(
        &table.join(".part-9.parquet"),
        &mut part(&["z"], &[Some(9.0)]),
        10,
    );

    let files = table_files(dir.path(), "user_asset_summary").unwrap();
    let names: Vec<_> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["part-0.parquet", "part-1.parquet"]);

    let scan = scan_table(
        dir.path(),
        "user_asset_summary",
        &[
            req("user_id", ColumnType::Utf8),
            req("cash_balance", ColumnType::Float64),
        ],
        100,
    )
    .unwrap();
    assert_eq!(scan.num_rows(), 5);
    let batches = collect(scan);
    // part-0: one row group; part-1: row groups of 2 and 1.
    let heights: Vec<usize> = batches.iter().map(|b| b.height()).collect();
    assert_eq!(heights, [2, 2, 1]);
    let all = concat(&batches);
    let ids: Vec<_> = all
        .column("user_id")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .flatten()
        .collect();
    assert_eq!(ids, ["a", "b", "c", "d", "e"]);
    let cash: Vec<_> = all
        .column("cash_balance")
        .unwrap()
        .f64()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(cash, [Some(1.0), Some(2.0), Some(3.0), None, Some(5.0)]);
}

#[test]
fn a_single_file_wins_over_a_directory_and_absent_tables_are_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("t")).unwrap();
    write_parquet(
        &dir.path().join("t/p.parquet"),
        &mut part(&["x"], &[None]),
        10,
    );
    write_parquet(
        &dir.path().join("t.parquet"),
        &mut part(&["y"], &[None]),
        10,
    );
    assert_eq!(
        table_files(dir.path(), "t").unwrap(),
        [dir.path().join("t.parquet")]
    );

    std::fs::create_dir(dir.path().join("empty")).unwrap();
    for table in ["missing", "empty"] {
        let err = scan_table(dir.path(), table, &[], 10).err().unwrap();
        assert!(matches!(err, Error::TableNotFound { .. }), "{err}");
        assert!(err.to_string().contains(table), "{err}");
    }
}

#[test]
fn a_missing_column_fails_before_reading_and_names_table_and_column() {
    let dir = tempfile::tempdir().unwrap();
    write_parquet(
        &dir.path().join("t.parquet"),
        &mut part(&["x"], &[None]),
        10,
    );
    let err = scan_table(
        dir.path(),
        "t",
        &[req("risk_score", ColumnType::Float64)],
        10,
    )
    .err()
    .unwrap();
    let msg = err.to_string();
    assert!(matches!(err, Error::MissingColumn { .. }), "{msg}");
    assert!(
        msg.contains("table t") && msg.contains("risk_score") && msg.contains("user_id"),
        "{msg}"
    );
}

/// A file whose columns come "from another writer": i64 ints, dates as
/// timestamps and strings, timestamps in ms.
fn foreign_frame() -> DataFrame {
    let day = 20_089i64; // 2025-01-01
    let micros = |d: i64, h: i64| (d * 86_400 + h * 3_600) * 1_000_000;
    df!(
        "user_id" => ["a", "b", "c", "d"],
        "trade_count_30d" => [Some(10i64), Some(11), None, Some(-5)],
        "last_login_date" => [Some(micros(day, 23)), Some(micros(day - 7, 0)), None, Some(micros(-1, 1))],
        "registration_date" => [Some("2025-01-01"), Some("2024-12-02"), None, Some("1969-12-31")],
        "updated_time" => [Some(day * 86_400_000), None, Some(1), Some(-1)],
        "computed_date" => [Some(day as i32), None, Some(0), Some(1)],
        "risk_score" => [Some(1.5f32), None, Some(30.0), Some(0.0)],
        "credit_score" => [Some(700i32), Some(0), None, Some(850)],
    )
    .unwrap()
    .lazy_cast()
}

/// Gives the hand-made frame its logical types.
trait LazyCast {
    fn lazy_cast(self) -> DataFrame;
}

impl LazyCast for DataFrame {
    fn lazy_cast(mut self) -> DataFrame {
        let cast = |df: &DataFrame, name: &str, dtype: DataType| {
            df.column(name).unwrap().cast(&dtype).unwrap()
        };
        let login = cast(
            &self,
            "last_login_date",
            DataType::Datetime(TimeUnit::Microseconds, None),
        );
        let updated = cast(
            &self,
            "updated_time",
            DataType::Datetime(TimeUnit::Milliseconds, None),
        );
        let computed = cast(&self, "computed_date", DataType::Date);
        self.with_column(login).unwrap();
        self.with_column(updated).unwrap();
        self.with_column(computed).unwrap();
        self
    }
}

#[test]
fn coerces_foreign_types_to_the_declared_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut df = foreign_frame();
    write_parquet(
        &dir.path().join("user_activity_summary.parquet"),
        &mut df,
        100,
    );
    let columns = [
        req("trade_count_30d", ColumnType::Int32),
        req("last_login_date", ColumnType::Date),
        req("registration_date", ColumnType::Date),
        req("updated_time", ColumnType::Timestamp),
        req("computed_date", ColumnType::Timestamp),
        req("risk_score", ColumnType::Float64),
        req("credit_score", ColumnType::Int64),
    ];
    let batches = collect(scan_table(dir.path(), "user_activity_summary", &columns, 100).unwrap());
    assert_eq!(batches.len(), 1);
    let b = &batches[0];
    let dtypes: Vec<DataType> = b.columns().iter().map(|c| c.dtype().clone()).collect();
    let us = DataType::Datetime(TimeUnit::Microseconds, None);
    assert_eq!(
        dtypes,
        [
            DataType::Int32,
            DataType::Date,
            DataType::Date,
            us.clone(),
            us,
            DataType::Float64,
            DataType::Int64
        ]
    );
    let i32s = |name: &str| -> Vec<Option<i32>> {
        let c = b.column(name).unwrap();
        match c.dtype() {
            DataType::Date => c.date().unwrap().physical().iter().collect(),
            _ => c.i32().unwrap().iter().collect(),
        }
    };
    assert_eq!(
        i32s("trade_count_30d"),
        [Some(10), Some(11), None, Some(-5)]
    );
    // Timestamps become their UTC day, flooring before the epoch too.
    assert_eq!(
        i32s("last_login_date"),
        [Some(20_089), Some(20_082), None, Some(-1)]
    );
    assert_eq!(
        i32s("registration_date"),
        [Some(20_089), Some(20_059), None, Some(-1)]
    );
    let micros: Vec<Option<i64>> = b
        .column("updated_time")
        .unwrap()
        .datetime()
        .unwrap()
        .physical()
        .iter()
        .collect();
    assert_eq!(
        micros,
        [
            Some(20_089 * 86_400_000_000),
            None,
            Some(1_000),
            Some(-1_000)
        ]
    );
    let midnight: Vec<Option<i64>> = b
        .column("computed_date")
        .unwrap()
        .datetime()
        .unwrap()
        .physical()
        .iter()
        .collect();
    assert_eq!(
        midnight,
        [
            Some(20_089 * 86_400_000_000),
            None,
            Some(0),
            Some(86_400_000_000)
        ]
    );
    let risk: Vec<_> = b
        .column("risk_score")
        .unwrap()
        .f64()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(risk, [Some(1.5), None, Some(30.0), Some(0.0)]);
}

#[test]
fn a_column_already_of_the_declared_type_is_not_copied() {
    let df = df!("x" => [1.0f64, 2.0]).unwrap();
    let column = df.column("x").unwrap();
    let out = coerce_column("t", column, ColumnType::Float64).unwrap();
    let ptr = |c: &Column| {
        c.f64()
            .unwrap()
            .downcast_iter()
            .next()
            .unwrap()
            .values()
            .as_ptr()
    };
    assert_eq!(ptr(column), ptr(&out));
}

#[test]
fn impossible_coercions_name_table_column_and_types() {
    // Static: the type itself cannot become the declared one (checked at open).
    let dir = tempfile::tempdir().unwrap();
    write_parquet(&dir.path().join("t.parquet"), &mut foreign_frame(), 100);
    for (column, expected, found) in [
        ("risk_score", ColumnType::Int32, "f32"),
        ("user_id", ColumnType::Float64, "str"),
        ("trade_count_30d", ColumnType::Utf8, "i64"),
        ("credit_score", ColumnType::Boolean, "i32"),
        ("registration_date", ColumnType::Timestamp, "str"),
    ] {
        let err = scan_table(dir.path(), "t", &[req(column, expected)], 10)
            .err()
            .unwrap();
        let msg = err.to_string();
        assert!(matches!(err, Error::TypeMismatch { .. }), "{msg}");
        for part in ["table t", column, expected.name(), found] {
            assert!(msg.contains(part), "{msg:?} lacks {part:?}");
        }
    }

    // By value: an i64 beyond i32, a malformed date string (fail the batch).
    let cases = [
        (
            Series::new(
                "n".into(),
                [Some(1i64), None, Some(i64::from(i32::MAX) + 1)],
            ),
            ColumnType::Int32,
            "row 2",
            "2147483648",
        ),
        (
            Series::new("d".into(), [Some("2025-01-01"), None, Some("2025/01/02")]),
            ColumnType::Date,
            "row 2",
            "2025/01/02",
        ),
        (
            Series::new("d".into(), [Some("2025-02-30")]),
            ColumnType::Date,
            "row 0",
            "2025-02-30",
        ),
    ];
    for (series, expected, row, value) in cases {
        let name = series.name().to_string();
        let found = series.dtype().to_string();
        let err =
            coerce_column("user_activity_summary", &series.into_column(), expected).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::InvalidValue { .. }), "{msg}");
        for part in [
            "user_activity_summary",
            name.as_str(),
            expected.name(),
            found.as_str(),
            row,
            value,
        ] {
            assert!(msg.contains(part), "{msg:?} lacks {part:?}");
        }
    }

    // Through a scan: the batch holding the bad value fails, then the scan ends.
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    let mut df = df!("d" => [Some("2025-01-01"), Some("soon")]).unwrap();
    write_parquet(&bad.join("p.parquet"), &mut df, 1);
    let mut scan = scan_table(dir.path(), "bad", &[req("d", ColumnType::Date)], 10).unwrap();
    assert!(scan.next().unwrap().is_ok());
    let err = scan.next().unwrap().unwrap_err();
    assert!(err.to_string().contains("\"soon\""), "{err}");
    assert!(scan.next().is_none());
}

#[test]
fn decimals_become_the_nearest_float_so_thresholds_hold() {
    // Unscaled values of DECIMAL(18,2) and DECIMAL(38,10).
    let cents = Int128Chunked::from_slice("cash".into(), &[6_000_000, 5_999_999, -1, 0])
        .into_decimal_unchecked(18, 2)
        .into_column();
    let out = coerce_column("t", &cents, ColumnType::Float64).unwrap();
    let values: Vec<f64> = out.f64().unwrap().into_no_null_iter().collect();
    assert_eq!(values[0], 60_000.0, "60000.00 is exactly the threshold");
    assert!(values[1] < 60_000.0 && values[1] == 59_999.99);
    assert_eq!(values[2], -0.01);
    let fine =
        Int128Chunked::from_slice("v".into(), &[1_500_000_000_000_000, 1_499_999_999_999_999])
            .into_decimal_unchecked(38, 10)
            .into_column();
    let out = coerce_column("t", &fine, ColumnType::Float64).unwrap();
    let values: Vec<f64> = out.f64().unwrap().into_no_null_iter().collect();
    assert_eq!(values[0], 150_000.0);
    assert!(values[1] < 150_000.0);
}

#[test]
fn timestamps_in_any_unit_and_zone_become_utc_days_and_microseconds() {
    // 2025-01-14T23:30:00Z, which is already the 15th in Shanghai.
    let instant_ns: i64 = 1_736_897_400_000_000_000;
    let column = Int64Chunked::from_slice("t".into(), &[instant_ns])
        // SAFETY: a valid IANA name, as a parquet export would carry.
        .into_datetime(
            TimeUnit::Nanoseconds,
            Some(unsafe { TimeZone::from_static("Asia/Shanghai") }),
        )
        .into_column();
    let day = coerce_column("t", &column, ColumnType::Date).unwrap();
    let expected = tag_plugin_api::Date::parse("2025-01-14").unwrap().days();
    assert_eq!(day.date().unwrap().physical().get(0), Some(expected));
    let micros = coerce_column("t", &column, ColumnType::Timestamp).unwrap();
    assert_eq!(
        micros.datetime().unwrap().physical().get(0),
        Some(instant_ns / 1000)
    );
    let millis = Int64Chunked::from_slice("t".into(), &[-1])
        .into_datetime(TimeUnit::Milliseconds, None)
        .into_column();
    let day = coerce_column("t", &millis, ColumnType::Date).unwrap();
    assert_eq!(
        day.date().unwrap().physical().get(0),
        Some(-1),
        "before 1970 rounds down"
    );
}

#[test]
fn dictionary_strings_read_as_strings() {
    let column = Series::new("level".into(), ["VIP1", "VIP2", "VIP1"])
        .cast(&DataType::from_categories(Categories::global()))
        .unwrap()
        .into_column();
    let out = coerce_column("t", &column, ColumnType::Utf8).unwrap();
    let values: Vec<Option<&str>> = out.str().unwrap().iter().collect();
    assert_eq!(values, [Some("VIP1"), Some("VIP2"), Some("VIP1")]);
}
