//! Sample data generation: schema, determinism, distributions, thresholds.

use std::collections::{HashMap, HashSet};

use polars::prelude::*;
use tag_host::data::gen::{
    estimate_bytes, gen_data, gen_data_with, GenOptions, DEFAULT_REFERENCE_DATE,
};

use crate::support::read_parquet;

fn tables(dir: &std::path::Path) -> [DataFrame; 3] {
    [
        read_parquet(&dir.join("user_basic_info.parquet")),
        read_parquet(&dir.join("user_asset_summary.parquet")),
        read_parquet(&dir.join("user_activity_summary.parquet")),
    ]
}

fn schema_of(df: &DataFrame) -> Vec<(String, DataType)> {
    df.columns()
        .iter()
        .map(|c| (c.name().to_string(), c.dtype().clone()))
        .collect()
}

#[test]
fn writes_exactly_the_contract_schema() {
    let dir = tempfile::tempdir().unwrap();
    gen_data(dir.path(), 500, 1).unwrap();
    let [basic, asset, activity] = tables(dir.path());
    let ts = DataType::Datetime(TimeUnit::Microseconds, None);
    let s = |cols: &[(&str, DataType)]| -> Vec<(String, DataType)> {
        cols.iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect()
    };
    assert_eq!(
        schema_of(&basic),
        s(&[
            ("user_id", DataType::String),
            ("age", DataType::Int32),
            ("gender", DataType::String),
            ("registration_date", DataType::Date),
            ("user_level", DataType::String),
            ("kyc_status", DataType::String),
            ("country", DataType::String),
            ("city", DataType::String),
            ("created_time", ts.clone()),
            ("updated_time", ts.clone()),
        ])
    );
    assert_eq!(
        schema_of(&asset),
        s(&[
            ("user_id", DataType::String),
            ("total_asset_value", DataType::Float64),
            ("cash_balance", DataType::Float64),
            ("stock_value", DataType::Float64),
            ("bond_value", DataType::Float64),
            ("fund_value", DataType::Float64),
            ("crypto_value", DataType::Float64),
            ("computed_date", DataType::Date),
            ("updated_time", ts.clone()),
        ])
    );
    assert_eq!(
        schema_of(&activity),
        s(&[
            ("user_id", DataType::String),
            ("trade_count_30d", DataType::Int32),
            ("trade_amount_30d", DataType::Float64),
            ("login_count_30d", DataType::Int32),
            ("last_login_date", DataType::Date),
            ("risk_score", DataType::Float64),
            ("credit_score", DataType::Int32),
            ("computed_date", DataType::Date),
            ("updated_time", ts),
        ])
    );
}

#[test]
fn is_deterministic_for_a_seed() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    // Different row group sizes must not change the data either.
    let options = |seed, rg| GenOptions {
        users: 3_000,
        seed,
        row_group_rows: rg,
        ..GenOptions::default()
    };
    let sa = gen_data_with(a.path(), &options(7, 1_000)).unwrap();
    let sb = gen_data_with(b.path(), &options(7, 1_000)).unwrap();
    gen_data_with(c.path(), &options(8, 700)).unwrap();
    for table in [
        "user_basic_info",
        "user_asset_summary",
        "user_activity_summary",
    ] {
        let file = format!("{table}.parquet");
        let bytes_a = std::fs::read(a.path().join(&file)).unwrap();
        let bytes_b = std::fs::read(b.path().join(&file)).unwrap();
        assert_eq!(
            bytes_a, bytes_b,
            "{table} differs between two runs with one seed"
        );
    }
    assert_eq!(
        (sa.basic_rows, sa.asset_rows, sa.activity_rows),
        (sb.basic_rows, sb.asset_rows, sb.activity_rows)
    );

    let d = tempfile::tempdir().unwrap();
    gen_data_with(d.path(), &options(7, 700)).unwrap();
    let [basic_a, ..] = tables(a.path());
    let [basic_c, ..] = tables(c.path());
    let [basic_d, ..] = tables(d.path());
    assert!(
        basic_a.equals_missing(&basic_d),
        "row group size changed the data"
    );
    assert!(
        !basic_a.equals_missing(&basic_c),
        "another seed gave the same data"
    );
}

/// Fraction of nulls in a column.
fn null_rate(df: &DataFrame, column: &str) -> f64 {
    df.column(column).unwrap().null_count() as f64 / df.height() as f64
}

fn count_eq_f64(df: &DataFrame, column: &str, value: f64) -> usize {
    df.column(column)
        .unwrap()
        .f64()
        .unwrap()
        .iter()
        .filter(|v| *v == Some(value))
        .count()
}

fn count_eq_i32(ca: &Int32Chunked, value: i32) -> usize {
    ca.iter().filter(|v| *v == Some(value)).count()
}

#[test]
fn has_realistic_distributions_nulls_and_threshold_values() {
    let dir = tempfile::tempdir().unwrap();
    let users = 20_000;
    let summary = gen_data(dir.path(), users, 3).unwrap();
    let [basic, asset, activity] = tables(dir.path());
    let reference = DEFAULT_REFERENCE_DATE;
    assert_eq!(summary.reference_date, reference);
    assert_eq!(basic.height(), users);
    assert_eq!(summary.basic_rows, users);

    // user_id: never null, formatted, unique in the universe.
    let ids = basic.column("user_id").unwrap().str().unwrap().clone();
    assert_eq!(ids.null_count(), 0);
    assert_eq!(ids.get(0), Some("user_000001"));
    let universe: HashSet<&str> = ids.iter().flatten().collect();
    assert_eq!(universe.len(), users);

    // About 1-2 % nulls in every other column.
    for df in [&basic, &asset, &activity] {
        for column in df.columns().iter().skip(1) {
            let rate = null_rate(df, column.name());
            assert!(
                (0.007..=0.03).contains(&rate),
                "{}: null rate {rate}",
                column.name()
            );
        }
    }

    // Side tables: ~97 % of the users, plus a few ids outside the universe.
    for (df, missing) in [
        (&asset, summary.users_missing_asset),
        (&activity, summary.users_missing_activity),
    ] {
        let side_ids = df.column("user_id").unwrap().str().unwrap();
        let present: HashSet<&str> = side_ids.iter().flatten().collect();
        let covered = universe.iter().filter(|id| present.contains(*id)).count();
        assert_eq!(covered + missing, users);
        let coverage = covered as f64 / users as f64;
        assert!((0.95..=0.99).contains(&coverage), "coverage {coverage}");
        let extra = present.iter().filter(|id| !universe.contains(*id)).count();
        assert_eq!(extra, summary.extra_ids);
        assert!(extra >= 3);
    }

    // Values exactly on the reference thresholds.
    assert!(count_eq_f64(&asset, "total_asset_value", 150_000.0) > 10);
    assert!(count_eq_f64(&asset, "cash_balance", 60_000.0) > 10);
    assert!(count_eq_f64(&asset, "cash_balance", 50_000.0) > 10);
    assert!(count_eq_f64(&asset, "cash_balance", 59_999.99) > 5);
    assert!(count_eq_f64(&activity, "risk_score", 0.0) > 10);
    assert!(count_eq_f64(&activity, "risk_score", 30.0) > 10);
    let trades = activity.column("trade_count_30d").unwrap().i32().unwrap();
    assert!(count_eq_i32(trades, 10) > 10 && count_eq_i32(trades, 11) > 10);
    let age = basic.column("age").unwrap().i32().unwrap();
    assert!(count_eq_i32(age, 18) > 10 && count_eq_i32(age, 30) > 10);
    let days = |df: &DataFrame, column: &str| -> Int32Chunked {
        df.column(column)
            .unwrap()
            .date()
            .unwrap()
            .physical()
            .clone()
    };
    let registration = days(&basic, "registration_date");
    assert!(count_eq_i32(&registration, reference - 30) > 10);
    assert!(count_eq_i32(&registration, reference - 31) > 10);
    let last_login = days(&activity, "last_login_date");
    assert!(count_eq_i32(&last_login, reference - 7) > 10);
    assert!(count_eq_i32(&last_login, reference - 30) > 10);
    assert!(registration.iter().flatten().all(|d| d <= reference));
    assert!(last_login.iter().flatten().all(|d| d <= reference));

    // Categorical columns hold only the contract's values.
    let levels = ["VIP3", "VIP2", "VIP1", "GOLD", "SILVER", "BRONZE"];
    let level = basic.column("user_level").unwrap().str().unwrap();
    assert!(level.iter().flatten().all(|l| levels.contains(&l)));
    let kyc = basic.column("kyc_status").unwrap().str().unwrap();
    assert!(kyc
        .iter()
        .flatten()
        .all(|k| ["verified", "pending", "rejected"].contains(&k)));

    // The tier drives wealth, trading and risk: medians fall from VIP3 to BRONZE.
    let level_of: HashMap<&str, &str> = ids
        .iter()
        .zip(level.iter())
        .filter_map(|(id, l)| Some((id?, l?)))
        .collect();
    let median_by_level = |df: &DataFrame, column: &str| -> Vec<f64> {
        let ids = df.column("user_id").unwrap().str().unwrap();
        let values = df.column(column).unwrap().cast(&DataType::Float64).unwrap();
        let values = values.f64().unwrap();
        let mut by: HashMap<&str, Vec<f64>> = HashMap::new();
        for (id, v) in ids.iter().zip(values.iter()) {
            if let (Some(l), Some(v)) = (id.and_then(|id| level_of.get(id)), v) {
                by.entry(l).or_default().push(v);
            }
        }
        levels
            .iter()
            .map(|l| {
                let v = by.get_mut(l).unwrap();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            })
            .collect()
    };
    let assets = median_by_level(&asset, "total_asset_value");
    assert!(assets.windows(2).all(|w| w[0] > w[1]), "assets {assets:?}");
    let trades = median_by_level(&activity, "trade_amount_30d");
    assert!(
        trades.windows(2).all(|w| w[0] > w[1]),
        "trade amounts {trades:?}"
    );
    let risk = median_by_level(&activity, "risk_score");
    assert!(risk.windows(2).all(|w| w[0] < w[1]), "risk {risk:?}");

    // Assets add up.
    let parts = [
        "cash_balance",
        "stock_value",
        "bond_value",
        "fund_value",
        "crypto_value",
    ];
    let total = asset.column("total_asset_value").unwrap().f64().unwrap();
    let columns: Vec<&Float64Chunked> = parts
        .iter()
        .map(|p| asset.column(p).unwrap().f64().unwrap())
        .collect();
    for row in 0..asset.height() {
        let values: Option<Vec<f64>> = columns.iter().map(|c| c.get(row)).collect();
        if let (Some(t), Some(values)) = (total.get(row), values) {
            assert!((t - values.iter().sum::<f64>()).abs() < 0.01, "row {row}");
        }
    }
}

#[test]
fn duplicates_are_newer_or_older_copies_of_existing_rows() {
    let dir = tempfile::tempdir().unwrap();
    let summary = gen_data_with(
        dir.path(),
        &GenOptions {
            users: 2_000,
            seed: 5,
            duplicates: 40,
            ..GenOptions::default()
        },
    )
    .unwrap();
    assert!(summary.duplicate_rows > 30, "{summary:?}");
    for (i, df) in tables(dir.path()).iter().enumerate() {
        let ids = df.column("user_id").unwrap().str().unwrap();
        let stamps = df.column("updated_time").unwrap();
        let stamps = stamps.datetime().unwrap().physical();
        let mut first: HashMap<&str, Option<i64>> = HashMap::new();
        let (mut newer, mut older) = (0, 0);
        for (id, t) in ids.iter().zip(stamps.iter()) {
            let id = id.unwrap();
            match first.get(id) {
                None => {
                    first.insert(id, t);
                }
                Some(original) => {
                    let (t, original) = (t.unwrap(), original.unwrap());
                    assert_ne!(t, original, "{id}: tie");
                    if t > original {
                        newer += 1;
                    } else {
                        older += 1;
                    }
                }
            }
        }
        assert_eq!(newer + older, summary.duplicate_rows, "table {i}");
        assert!(
            newer > 10 && older > 10,
            "table {i}: {newer} newer, {older} older"
        );
    }
    let [basic, ..] = tables(dir.path());
    assert_eq!(basic.height(), 2_000 + summary.duplicate_rows);
}

#[test]
fn zero_users_gives_empty_tables_with_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let summary = gen_data(dir.path(), 0, 1).unwrap();
    let [basic, asset, _] = tables(dir.path());
    assert_eq!(basic.height(), 0);
    assert_eq!(basic.width(), 10);
    // Side tables still carry their few foreign ids.
    assert_eq!(asset.height(), summary.asset_rows);
}

/// A digest of a table's values (not of the file's bytes, so a change in
/// parquet encoding or row group layout does not change it): column names,
/// then each column's physical values with their nulls, in row order.
fn data_digest(df: &DataFrame) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for column in df.columns() {
        hash.update(column.name().as_bytes());
        let physical = column.to_physical_repr();
        let series = physical.as_materialized_series();
        let mut cell = |value: Option<Vec<u8>>| match value {
            Some(bytes) => {
                hash.update([1]);
                hash.update(bytes);
            }
            None => hash.update([0]),
        };
        match series.dtype() {
            DataType::String => series
                .str()
                .unwrap()
                .iter()
                .for_each(|v| cell(v.map(|s| s.as_bytes().to_vec()))),
            DataType::Int32 => series
                .i32()
                .unwrap()
                .iter()
                .for_each(|v| cell(v.map(|x| x.to_le_bytes().to_vec()))),
            DataType::Int64 => series
                .i64()
                .unwrap()
                .iter()
                .for_each(|v| cell(v.map(|x| x.to_le_bytes().to_vec()))),
            DataType::Float64 => series
                .f64()
                .unwrap()
                .iter()
                .for_each(|v| cell(v.map(|x| x.to_bits().to_le_bytes().to_vec()))),
            other => panic!("{}: unexpected type {other}", column.name()),
        }
    }
    format!("{:x}", hash.finalize())
}

#[test]
fn the_data_for_a_seed_is_what_it_always_was() {
    // Digests of the data the generator wrote before it streamed the
    // duplicate rows (commit 565e3fe, in row groups of 16 rows and in one
    // row group): neither streaming nor the row group size changes a value.
    let expected = [
        "b608905fef151ebf3f07aa7de23db7f9114ad6e9914252b745df343843e99ec4",
        "462118dd749c4065a20971dba56da6420e1929f23887645cb2a0825cca5bd6f8",
        "a17b034c0588744dc78a8918177ea336ec277d78102e5205e61ddbfb95757e16",
    ];
    for row_group_rows in [16, 128 * 1024] {
        let dir = tempfile::tempdir().unwrap();
        let summary = gen_data_with(
            dir.path(),
            &GenOptions {
                users: 3_000,
                seed: 7,
                row_group_rows,
                duplicates: 40,
                ..GenOptions::default()
            },
        )
        .unwrap();
        assert_eq!(
            (
                summary.basic_rows,
                summary.asset_rows,
                summary.activity_rows
            ),
            (3_040, 2_958, 2_959)
        );
        let digests: Vec<String> = tables(dir.path()).iter().map(data_digest).collect();
        assert_eq!(digests, expected, "row groups of {row_group_rows}");
    }
}

#[test]
fn the_size_estimate_is_close_above_the_files_written() {
    let cases = [
        (200_000, 0, 128 * 1024),
        (50_000, 5_000, 128 * 1024),
        (3_000, 40, 16),
        (100, 0, 128 * 1024),
        (0, 0, 128 * 1024),
    ];
    for (users, duplicates, row_group_rows) in cases {
        let options = GenOptions {
            users,
            duplicates,
            row_group_rows,
            ..GenOptions::default()
        };
        let estimate = estimate_bytes(&options).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let summary = gen_data_with(dir.path(), &options).unwrap();
        let on_disk: u64 = summary
            .files
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum();
        assert_eq!(summary.bytes, on_disk);
        // Never below; at most 10 % above (or 100 KiB, for tiny tables).
        let slack = (on_disk / 10).max(100 << 10);
        assert!(
            (on_disk..=on_disk + slack).contains(&estimate),
            "{users} users, {duplicates} duplicates, row groups of {row_group_rows}: \
             estimated {estimate} bytes, wrote {on_disk}"
        );
    }
}
