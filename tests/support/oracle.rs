//! An independent computation of the eight reference rules, for checking the
//! engine: reads the parquet files with polars directly, resolves duplicates
//! and joins by hand, and applies each rule as plain Rust comparisons on
//! `Option` values. It shares no code with the engine or the plugin SDK.

use polars::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// One user's values from one table.
type Row = HashMap<String, AnyValue<'static>>;

/// `<table>.parquet`, or every `*.parquet` part of the directory `<table>/`.
fn read(dir: &Path, table: &str) -> DataFrame {
    let single = dir.join(format!("{table}.parquet"));
    let mut files: Vec<_> = if single.is_file() {
        vec![single]
    } else {
        std::fs::read_dir(dir.join(table))
            .expect("table directory")
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .collect()
    };
    files.sort();
    let mut frames = files.into_iter().map(|path| {
        let file = std::fs::File::open(path).expect("table file");
        ParquetReader::new(file).finish().expect("read parquet")
    });
    let mut all = frames.next().expect("at least one part");
    for frame in frames {
        all.vstack_mut(&frame).expect("parts share a schema");
    }
    all
}

/// `user_id -> row`, keeping the row with the greatest updated_time (a row
/// without one loses to any timed row; on a tie the row read last, as the
/// data rules say), and the universe order.
fn rows(df: &DataFrame) -> (HashMap<String, Row>, Vec<String>) {
    let names: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    let mut best: HashMap<String, (Option<i64>, Row)> = HashMap::new();
    let mut order = Vec::new();
    for i in 0..df.height() {
        let row: Row = names
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    df.column(n).unwrap().get(i).unwrap().into_static(),
                )
            })
            .collect();
        let Some(id) = row["user_id"].get_str().map(str::to_string) else {
            continue;
        };
        let time = match &row["updated_time"] {
            AnyValue::Datetime(t, ..) | AnyValue::DatetimeOwned(t, ..) => Some(*t),
            _ => None,
        };
        match best.get(&id) {
            None => {
                order.push(id.clone());
                best.insert(id, (time, row));
            }
            Some((t, _)) if time >= *t => {
                best.insert(id, (time, row));
            }
            Some(_) => {}
        }
    }
    (best.into_iter().map(|(k, (_, r))| (k, r)).collect(), order)
}

fn num(row: Option<&Row>, col: &str) -> Option<f64> {
    match row?.get(col)? {
        AnyValue::Float64(v) => Some(*v),
        AnyValue::Int32(v) => Some(f64::from(*v)),
        AnyValue::Int64(v) => Some(*v as f64),
        _ => None,
    }
}

fn text<'r>(row: Option<&'r Row>, col: &str) -> Option<&'r str> {
    row?.get(col)?.get_str()
}

fn day(row: Option<&Row>, col: &str) -> Option<i32> {
    match row?.get(col)? {
        AnyValue::Date(d) => Some(*d),
        _ => None,
    }
}

/// The tags each universe user should hold after a full run of `tag_ids`
/// with reference date `as_of` (days since epoch); users with none omitted.
pub fn expected(dir: &Path, as_of: i32, tag_ids: &[u32]) -> BTreeMap<String, Vec<u32>> {
    let (basic, universe) = rows(&read(dir, "user_basic_info"));
    let (asset, _) = rows(&read(dir, "user_asset_summary"));
    let (activity, _) = rows(&read(dir, "user_activity_summary"));
    let within = |d: Option<i32>, n: i32| d.is_some_and(|d| as_of - n <= d && d <= as_of);
    let mut out = BTreeMap::new();
    for user in universe {
        let (b, a, t) = (basic.get(&user), asset.get(&user), activity.get(&user));
        let checks: [(u32, bool); 8] = [
            (
                1,
                num(a, "total_asset_value").is_some_and(|v| v >= 150_000.0)
                    && num(a, "cash_balance").is_some_and(|v| v >= 60_000.0),
            ),
            (2, num(t, "trade_count_30d").is_some_and(|v| v > 10.0)),
            (
                3,
                num(t, "risk_score").is_some_and(|v| (0.0..=30.0).contains(&v)),
            ),
            (4, within(day(b, "registration_date"), 30)),
            (
                5,
                matches!(text(b, "user_level"), Some("VIP2" | "VIP3"))
                    && text(b, "kyc_status") == Some("verified"),
            ),
            (6, num(a, "cash_balance").is_some_and(|v| v >= 50_000.0)),
            (7, num(b, "age").is_some_and(|v| (18.0..=30.0).contains(&v))),
            (8, within(day(t, "last_login_date"), 7)),
        ];
        let tags: Vec<u32> = checks
            .iter()
            .filter(|(id, hit)| *hit && tag_ids.contains(id))
            .map(|(id, _)| *id)
            .collect();
        if !tags.is_empty() {
            out.insert(user, tags);
        }
    }
    out
}
