//! Deterministic, realistic sample data for the three source tables of
//! `tags.md`: `user_basic_info`, `user_asset_summary`, `user_activity_summary`.
//!
//! Every user draws a tier (the `user_level`) that drives assets, trading and
//! risk. Each row is a pure function of `(seed, user index, table)`, so the
//! output depends only on the options, not on chunking. A small share of rows
//! sits exactly on the reference tags' thresholds, and every nullable column
//! has about 1.5 % nulls.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use polars::prelude::*;
use polars_arrow::bitmap::MutableBitmap;
use tag_plugin_api::date::MICROS_PER_DAY;

use super::DataError as Error;

/// Default reference date of [`gen_data`]: 2025-01-01, as days since 1970-01-01.
pub const DEFAULT_REFERENCE_DATE: i32 = 20_089;

/// File name of the user universe table.
pub const BASIC_TABLE: &str = "user_basic_info";
/// File name of the asset side table.
pub const ASSET_TABLE: &str = "user_asset_summary";
/// File name of the activity side table.
pub const ACTIVITY_TABLE: &str = "user_activity_summary";

/// Share of nulls in every nullable column.
const NULL_RATE: f64 = 0.015;
/// Share of universe users present in each side table.
const SIDE_COVERAGE: f64 = 0.97;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenOptions {
    /// Number of users in `user_basic_info`.
    pub users: usize,
    /// Seed: the same options always give byte-identical tables.
    pub seed: u64,
    /// Reference date (days since epoch) that all dates are relative to.
    pub reference_date: i32,
    /// Rows per parquet row group (and per generation chunk).
    pub row_group_rows: usize,
    /// Extra rows appended to each table for already present user ids, to
    /// exercise de-duplication: alternately newer (they win) and older than
    /// the original row (they lose); `updated_time` never ties.
    pub duplicates: usize,
    /// Parquet compression.
    pub compression: ParquetCompression,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            users: 10_000,
            seed: 42,
            reference_date: DEFAULT_REFERENCE_DATE,
            row_group_rows: 128 * 1024,
            duplicates: 0,
            compression: ParquetCompression::Snappy,
        }
    }
}

/// What [`gen_data`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct GenSummary {
    /// The reference date used, days since epoch.
    pub reference_date: i32,
    /// Rows in `user_basic_info` (users plus duplicates).
    pub basic_rows: usize,
    /// Rows in `user_asset_summary`.
    pub asset_rows: usize,
    /// Rows in `user_activity_summary`.
    pub activity_rows: usize,
    /// Universe users that have no row in `user_asset_summary`.
    pub users_missing_asset: usize,
    /// Universe users that have no row in `user_activity_summary`.
    pub users_missing_activity: usize,
    /// Ids present in each side table but not in `user_basic_info`.
    pub extra_ids: usize,
    /// Duplicate rows appended to each table.
    pub duplicate_rows: usize,
    /// The three files written, in table order.
    pub files: Vec<PathBuf>,
    /// Size of the three files together, in bytes.
    pub bytes: u64,
    /// Wall-clock time spent generating and writing.
    pub elapsed: std::time::Duration,
}

/// How far [`gen_data_observed`] has got, in rows of `user_basic_info`:
/// its users first, then the duplicate rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenProgress {
    /// Rows written so far.
    pub rows_done: u64,
    /// Rows planned: the users plus the duplicates asked for (fewer
    /// duplicates may be found; the last report then jumps to the total).
    pub rows_total: u64,
}

/// Writes the three source tables for `users` users into `out_dir`, with dates
/// relative to [`DEFAULT_REFERENCE_DATE`].
pub fn gen_data(out_dir: &Path, users: usize, seed: u64) -> Result<GenSummary, Error> {
    gen_data_with(
        out_dir,
        &GenOptions {
            users,
            seed,
            ..GenOptions::default()
        },
    )
}

/// Writes the three source tables described by `options` into `out_dir`.
pub fn gen_data_with(out_dir: &Path, options: &GenOptions) -> Result<GenSummary, Error> {
    gen_data_observed(out_dir, options, &mut |_| {})
}

/// Writes the three source tables described by `options` into `out_dir`,
/// calling `progress` as it starts and after each row group.
///
/// The tables are streamed: one row group of each (`row_group_rows` rows)
/// is built, written and dropped before the next, duplicates included, so
/// the memory used does not grow with `users` (only the parquet footers
/// do, by a few hundred bytes per row group).
pub fn gen_data_observed(
    out_dir: &Path,
    options: &GenOptions,
    progress: &mut dyn FnMut(GenProgress),
) -> Result<GenSummary, Error> {
    let started = Instant::now();
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io("creating directory", out_dir, e))?;
    let ctx = Ctx {
        seed: options.seed,
        reference_date: options.reference_date,
    };
    let mut tables = Tables::create(out_dir, options)?;
    let mut report = Reporter {
        rows_total: (options.users + planned_duplicates(options)) as u64,
        progress,
    };
    report.send(0);
    let (users_missing_asset, users_missing_activity) =
        write_rows(&ctx, &mut tables, options, &mut report)?;
    // Copies of existing rows with other values and another `updated_time`:
    // a de-duplicating reader must keep the newer of each pair.
    let duplicate_rows = write_duplicates(&ctx, &mut tables, options, &mut report)?;
    report.send(report.rows_total);

    let ([basic_rows, asset_rows, activity_rows], bytes) = tables.finish()?;
    Ok(GenSummary {
        reference_date: options.reference_date,
        basic_rows,
        asset_rows,
        activity_rows,
        users_missing_asset,
        users_missing_activity,
        extra_ids: extra_ids(options.users),
        duplicate_rows,
        files: table_files(out_dir).to_vec(),
        bytes,
        elapsed: started.elapsed(),
    })
}

/// Rows in the sample that [`estimate_bytes`] encodes.
const ESTIMATE_SAMPLE_ROWS: usize = 32 * 1024;

/// About how many bytes the three files of `options` will take, before any
/// is written: the first rows of each table (up to 32k) are generated and
/// encoded with the options' compression and row group size, and their
/// size per row is scaled to the rows the options make. The rows are a pure
/// function of their index and alike along the tables, so the sample is
/// representative; 2 % and 64 KiB more cover the duplicates' random ids
/// (which compress a little worse than a run of consecutive ones) and
/// their row groups' footer entries.
pub fn estimate_bytes(options: &GenOptions) -> Result<u64, Error> {
    let ctx = Ctx {
        seed: options.seed,
        reference_date: options.reference_date,
    };
    let (users, duplicates) = (options.users, planned_duplicates(options));
    let total = users + extra_ids(users);
    let sample = total.min(ESTIMATE_SAMPLE_ROWS);
    let (chunk, _) = rows_chunk(&ctx, 0..sample, users);
    // Each table has a row per index it covers: scale its sample's rows by
    // the indices in all; duplicates add rows of the same kind.
    let scale = total as f64 / sample as f64;
    let mut bytes = 0.0;
    for mut df in chunk.finish()? {
        let size = ParquetWriter::new(std::io::sink())
            .with_compression(options.compression)
            .with_row_group_size(Some(options.row_group_rows.max(1)))
            .finish(&mut df)
            .map_err(|e| Error::polars("encoding the sample for the size estimate", e))?
            as f64;
        let rows = df.height() as f64;
        bytes += match rows > 0.0 {
            true => size / rows * (rows * scale + duplicates as f64),
            false => size,
        };
    }
    Ok((bytes * 1.02).ceil() as u64 + 64 * 1024)
}

/// Calls the progress callback with `rows_done` of a fixed total.
struct Reporter<'a> {
    rows_total: u64,
    progress: &'a mut dyn FnMut(GenProgress),
}

impl Reporter<'_> {
    fn send(&mut self, rows_done: u64) {
        (self.progress)(GenProgress {
            rows_done: rows_done.min(self.rows_total),
            rows_total: self.rows_total,
        });
    }
}

/// Writes the rows of users `0..users + extra ids` (those from `users` on
/// exist only in the side tables) in chunks of `row_group_rows`; how many
/// universe users have no asset row and no activity row.
fn write_rows(
    ctx: &Ctx,
    tables: &mut Tables,
    options: &GenOptions,
    report: &mut Reporter,
) -> Result<(usize, usize), Error> {
    let users = options.users;
    let total = users + extra_ids(users);
    let chunk_rows = options.row_group_rows.max(1);
    let (mut missing_asset, mut missing_activity) = (0, 0);
    let mut start = 0;
    while start < total {
        let end = (start + chunk_rows).min(total);
        let (chunk, (asset, activity)) = rows_chunk(ctx, start..end, users);
        tables.write(chunk)?;
        missing_asset += asset;
        missing_activity += activity;
        report.send(end.min(users) as u64);
        start = end;
    }
    Ok((missing_asset, missing_activity))
}

/// The rows of the users at `range` in each table, and how many of them
/// are universe users (below `users`) without an asset row and without an
/// activity row.
fn rows_chunk(ctx: &Ctx, range: Range<usize>, users: usize) -> (Chunk, (usize, usize)) {
    let mut chunk = Chunk::new(range.len());
    let (mut missing_asset, mut missing_activity) = (0, 0);
    for index in range {
        let in_universe = index < users;
        if in_universe {
            chunk.basic.push(&ctx.basic_row(index as u64));
        }
        match ctx.asset_row(index as u64) {
            Some(row) => chunk.asset.push(&row),
            None if in_universe => missing_asset += 1,
            None => {}
        }
        match ctx.activity_row(index as u64) {
            Some(row) => chunk.activity.push(&row),
            None if in_universe => missing_activity += 1,
            None => {}
        }
    }
    (chunk, (missing_asset, missing_activity))
}

/// The duplicate rows `options` asks for: none without users.
fn planned_duplicates(options: &GenOptions) -> usize {
    if options.users > 0 {
        options.duplicates
    } else {
        0
    }
}

/// Writes up to `options.duplicates` copies of existing users' rows in
/// every table, `row_group_rows` at a time; how many were made.
fn write_duplicates(
    ctx: &Ctx,
    tables: &mut Tables,
    options: &GenOptions,
    report: &mut Reporter,
) -> Result<usize, Error> {
    let mut draws = DuplicateDraws::new(options);
    while let Some(chunk) = draws.next_chunk(ctx, options.row_group_rows.max(1)) {
        tables.write(chunk)?;
        report.send((options.users + draws.made) as u64);
    }
    Ok(draws.made)
}

/// The state of the duplicate draws: one random stream over the whole run,
/// so the duplicates do not depend on how they are chunked.
struct DuplicateDraws {
    rng: Rng,
    users: usize,
    wanted: usize,
    attempts: usize,
    made: usize,
}

impl DuplicateDraws {
    fn new(options: &GenOptions) -> Self {
        DuplicateDraws {
            rng: Rng::new(options.seed, u64::MAX, STREAM_DUPLICATES),
            users: options.users,
            wanted: planned_duplicates(options),
            attempts: 0,
            made: 0,
        }
    }

    /// The next up to `limit` duplicates; `None` once all are made or the
    /// attempts (20 per duplicate wanted) are used up.
    fn next_chunk(&mut self, ctx: &Ctx, limit: usize) -> Option<Chunk> {
        let (before, goal) = (self.made, self.wanted.min(self.made + limit));
        let mut chunk = Chunk::new(goal - self.made);
        while self.made < goal && self.attempts < self.wanted * 20 {
            self.attempts += 1;
            let index = self.rng.below(self.users as u64);
            // Alternately a second newer (the copy wins) and a day older
            // (the original wins), so neither "keep first" nor "keep last"
            // passes.
            let shift = if self.made.is_multiple_of(2) {
                1_000_000
            } else {
                -MICROS_PER_DAY
            };
            if let Some((b, a, t)) = duplicate_of(ctx, index, self.attempts as u64, shift) {
                chunk.basic.push(&b);
                chunk.asset.push(&a);
                chunk.activity.push(&t);
                self.made += 1;
            }
        }
        (self.made > before).then_some(chunk)
    }
}

/// Copies of the rows of the user at `index` with the values of another
/// seed (`variant`) and each `updated_time` moved by `shift`, or `None`
/// when the user lacks a side row or an `updated_time`.
fn duplicate_of(
    ctx: &Ctx,
    index: u64,
    variant: u64,
    shift: i64,
) -> Option<(BasicRow, AssetRow, ActivityRow)> {
    let bt = ctx.basic_row(index).updated_time?;
    let at = ctx.asset_row(index)?.updated_time?;
    let tt = ctx.activity_row(index)?.updated_time?;
    let variant = ctx.reseeded(variant);
    let (vb, va, vt) = (
        variant.basic_row(index),
        variant.asset_row_unconditional(index),
        variant.activity_row_unconditional(index),
    );
    Some((
        BasicRow {
            updated_time: Some(bt + shift),
            ..vb
        },
        AssetRow {
            updated_time: Some(at + shift),
            ..va
        },
        ActivityRow {
            updated_time: Some(tt + shift),
            ..vt
        },
    ))
}

/// The three files `gen_data` writes into `dir`, in table order.
pub fn table_files(dir: &Path) -> [PathBuf; 3] {
    [BASIC_TABLE, ASSET_TABLE, ACTIVITY_TABLE].map(|t| dir.join(format!("{t}.parquet")))
}

/// The user id of the user at `index` (0-based): `user_000001` for index 0.
pub fn user_id(index: u64) -> String {
    format!("user_{:06}", index + 1)
}

/// Number of ids that appear only in side tables.
fn extra_ids(users: usize) -> usize {
    3 + users / 5_000
}

// ---------------------------------------------------------------------------
// Randomness

/// RNG streams: one per table, so tables do not shift each other's draws.
const STREAM_BASIC: u64 = 1;
const STREAM_ASSET: u64 = 2;
const STREAM_ACTIVITY: u64 = 3;
const STREAM_DUPLICATES: u64 = 4;

/// SplitMix64: tiny, fast, and good enough for sample data.
struct Rng(u64);

impl Rng {
    /// A generator for one (seed, user, stream) triple.
    fn new(seed: u64, user: u64, stream: u64) -> Rng {
        let mut r = Rng(seed ^ mix64(user.wrapping_mul(0xA24B_AED4_963E_E407) ^ mix64(stream)));
        r.next_u64();
        r
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform in `[0, 1)`.
    fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[0, n)`; 0 when `n` is 0.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.f64();
        let u2 = self.f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Exponential with the given mean.
    fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.f64()).ln()
    }

    /// Index drawn with the given (cumulative-free) weights.
    fn weighted(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut x = self.f64() * total;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }

    /// `Some(value)` except for [`NULL_RATE`] of the draws.
    fn nullable<T>(&mut self, value: T) -> Option<T> {
        if self.chance(NULL_RATE) {
            None
        } else {
            Some(value)
        }
    }
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------
// The population

/// Levels from richest to poorest; the index is the tier.
const LEVELS: [&str; 6] = ["VIP3", "VIP2", "VIP1", "GOLD", "SILVER", "BRONZE"];
const LEVEL_WEIGHTS: [f64; 6] = [0.02, 0.05, 0.10, 0.18, 0.25, 0.40];
/// Median total assets per tier, in currency units.
const ASSET_MEDIAN: [f64; 6] = [
    3_000_000.0,
    800_000.0,
    220_000.0,
    70_000.0,
    18_000.0,
    3_000.0,
];
/// Mean 30-day trade count per tier (for active users).
const TRADE_MEAN: [f64; 6] = [40.0, 25.0, 15.0, 8.0, 4.0, 2.0];
/// Share of users without a trade in 30 days, per tier.
const INACTIVE: [f64; 6] = [0.05, 0.08, 0.12, 0.20, 0.30, 0.45];
/// Median size of one trade per tier.
const TRADE_SIZE: [f64; 6] = [50_000.0, 20_000.0, 8_000.0, 3_000.0, 1_000.0, 300.0];
/// Mean days since last login per tier.
const LOGIN_GAP: [f64; 6] = [2.0, 3.0, 4.0, 6.0, 10.0, 20.0];
/// Mean risk score per tier.
const RISK_MEAN: [f64; 6] = [15.0, 20.0, 28.0, 35.0, 45.0, 55.0];
/// Mean credit score per tier.
const CREDIT_MEAN: [f64; 6] = [780.0, 750.0, 720.0, 680.0, 640.0, 600.0];
/// Share of KYC-verified users per tier.
const VERIFIED: [f64; 6] = [0.97, 0.95, 0.90, 0.80, 0.70, 0.55];
/// Age skew per tier: larger exponents give younger users.
const AGE_SKEW: [f64; 6] = [0.7, 0.8, 0.9, 1.1, 1.3, 1.6];

const GENDERS: [&str; 3] = ["male", "female", "other"];
const GENDER_WEIGHTS: [f64; 3] = [0.49, 0.49, 0.02];

/// Countries (ISO 3166 codes) with their cities.
const COUNTRIES: [(&str, &[&str]); 9] = [
    (
        "CN",
        &["Beijing", "Shanghai", "Shenzhen", "Hangzhou", "Guangzhou"],
    ),
    ("US", &["New York", "San Francisco", "Chicago"]),
    ("SG", &["Singapore"]),
    ("HK", &["Hong Kong"]),
    ("JP", &["Tokyo", "Osaka"]),
    ("GB", &["London", "Manchester"]),
    ("DE", &["Berlin", "Frankfurt"]),
    ("AU", &["Sydney", "Melbourne"]),
    ("AE", &["Dubai"]),
];
const COUNTRY_WEIGHTS: [f64; 9] = [0.35, 0.15, 0.10, 0.10, 0.08, 0.07, 0.05, 0.05, 0.05];

/// One row of `user_basic_info`.
struct BasicRow {
    index: u64,
    age: Option<i32>,
    gender: Option<&'static str>,
    registration_date: Option<i32>,
    user_level: Option<&'static str>,
    kyc_status: Option<&'static str>,
    country: Option<&'static str>,
    city: Option<&'static str>,
    created_time: Option<i64>,
    updated_time: Option<i64>,
}

/// One row of `user_asset_summary`.
struct AssetRow {
    index: u64,
    total_asset_value: Option<f64>,
    cash_balance: Option<f64>,
    stock_value: Option<f64>,
    bond_value: Option<f64>,
    fund_value: Option<f64>,
    crypto_value: Option<f64>,
    computed_date: Option<i32>,
    updated_time: Option<i64>,
}

/// One row of `user_activity_summary`.
struct ActivityRow {
    index: u64,
    trade_count_30d: Option<i32>,
    trade_amount_30d: Option<f64>,
    login_count_30d: Option<i32>,
    last_login_date: Option<i32>,
    risk_score: Option<f64>,
    credit_score: Option<i32>,
    computed_date: Option<i32>,
    updated_time: Option<i64>,
}

/// The parameters every row depends on.
#[derive(Clone, Copy)]
struct Ctx {
    seed: u64,
    reference_date: i32,
}

fn cents(value: f64) -> i64 {
    (value * 100.0).round() as i64
}

fn from_cents(c: i64) -> f64 {
    c as f64 / 100.0
}

impl Ctx {
    /// The same context with another seed, for alternative versions of a row.
    fn reseeded(self, salt: u64) -> Ctx {
        Ctx {
            seed: mix64(self.seed ^ mix64(salt ^ 0xD1B5_4A32_D192_ED03)),
            ..self
        }
    }

    /// A user's tier: the first draw of the basic stream.
    fn tier(&self, index: u64) -> usize {
        Rng::new(self.seed, index, STREAM_BASIC).weighted(&LEVEL_WEIGHTS)
    }

    /// A day `days_ago` days before the reference date.
    fn day(&self, days_ago: i64) -> i32 {
        (i64::from(self.reference_date) - days_ago) as i32
    }

    /// A timestamp on `day`, a few hours after midnight.
    fn stamp(&self, rng: &mut Rng, day: i32) -> i64 {
        i64::from(day) * MICROS_PER_DAY + 3_600_000_000 + rng.below(6 * 3_600_000_000) as i64
    }

    fn basic_row(&self, index: u64) -> BasicRow {
        let mut rng = Rng::new(self.seed, index, STREAM_BASIC);
        let tier = rng.weighted(&LEVEL_WEIGHTS);

        let age = match rng.below(200) {
            0 | 1 => 18,
            2 | 3 => 30,
            4 => 17,
            5 => 31,
            _ => 18 + (55.0 * rng.f64().powf(AGE_SKEW[tier])) as i32,
        };
        let gender = GENDERS[rng.weighted(&GENDER_WEIGHTS)];

        // Richer tiers have been customers for longer.
        let years = 3 + (5 - tier as i64);
        let reg_days_ago = match rng.below(100) {
            0 => 30,
            1 => 31,
            2 => 0,
            3..=8 => rng.below(30) as i64,
            _ => 31 + rng.below((years * 365 - 31) as u64) as i64,
        };
        let registration = self.day(reg_days_ago);

        let v = VERIFIED[tier];
        let kyc = ["verified", "pending", "rejected"]
            [rng.weighted(&[v, (1.0 - v) * 0.7, (1.0 - v) * 0.3])];
        let (country, cities) = COUNTRIES[rng.weighted(&COUNTRY_WEIGHTS)];
        let city = cities[rng.below(cities.len() as u64) as usize];

        let created =
            i64::from(registration) * MICROS_PER_DAY + rng.below(MICROS_PER_DAY as u64) as i64;
        let span = reg_days_ago.max(0) * MICROS_PER_DAY + 1;
        let updated = created + rng.below(span as u64) as i64;

        BasicRow {
            index,
            age: rng.nullable(age),
            gender: rng.nullable(gender),
            registration_date: rng.nullable(registration),
            user_level: rng.nullable(LEVELS[tier]),
            kyc_status: rng.nullable(kyc),
            country: rng.nullable(country),
            city: rng.nullable(city),
            created_time: rng.nullable(created),
            updated_time: rng.nullable(updated),
        }
    }

    /// The asset row of a user, or `None` for users the table does not cover.
    fn asset_row(&self, index: u64) -> Option<AssetRow> {
        let mut rng = Rng::new(self.seed, index, STREAM_ASSET);
        rng.chance(SIDE_COVERAGE)
            .then(|| self.asset_row_unconditional(index))
    }

    fn asset_row_unconditional(&self, index: u64) -> AssetRow {
        let tier = self.tier(index);
        let mut rng = Rng::new(self.seed, index, STREAM_ASSET);
        rng.next_u64(); // the coverage draw

        // (total, cash) in cents; `None` total means "sum of the parts".
        let (total, cash) = match rng.below(200) {
            0 | 1 => (Some(15_000_000), 6_000_000),
            2 => (Some(15_000_000), 5_999_999),
            3 => (Some(14_999_999), 6_000_000),
            4 | 5 => (None, 5_000_000),
            6 => (None, 4_999_999),
            _ => {
                let total = ASSET_MEDIAN[tier] * (0.9 * rng.normal()).exp();
                let cash_share = 0.05 + 0.55 * rng.f64();
                (Some(cents(total)), cents(total * cash_share))
            }
        };
        let rest = match total {
            Some(t) => t - cash,
            None => cents(ASSET_MEDIAN[tier] * (0.9 * rng.normal()).exp() * 0.6),
        };
        // Split the rest over stock, bond, fund, crypto; crypto is rarer.
        let w = [
            rng.f64() + 0.2,
            rng.f64() * 0.6,
            rng.f64() * 0.8,
            rng.f64() * rng.f64() * 0.5,
        ];
        let sum: f64 = w.iter().sum();
        let stock = (rest as f64 * w[0] / sum) as i64;
        let bond = (rest as f64 * w[1] / sum) as i64;
        let fund = (rest as f64 * w[2] / sum) as i64;
        let crypto = rest - stock - bond - fund;
        let total = cash + stock + bond + fund + crypto;

        let computed = self.day(rng.below(3) as i64);
        let updated = self.stamp(&mut rng, computed);
        AssetRow {
            index,
            total_asset_value: rng.nullable(from_cents(total)),
            cash_balance: rng.nullable(from_cents(cash)),
            stock_value: rng.nullable(from_cents(stock)),
            bond_value: rng.nullable(from_cents(bond)),
            fund_value: rng.nullable(from_cents(fund)),
            crypto_value: rng.nullable(from_cents(crypto)),
            computed_date: rng.nullable(computed),
            updated_time: rng.nullable(updated),
        }
    }

    /// The activity row of a user, or `None` for users the table does not cover.
    fn activity_row(&self, index: u64) -> Option<ActivityRow> {
        let mut rng = Rng::new(self.seed, index, STREAM_ACTIVITY);
        rng.chance(SIDE_COVERAGE)
            .then(|| self.activity_row_unconditional(index))
    }

    fn activity_row_unconditional(&self, index: u64) -> ActivityRow {
        let tier = self.tier(index);
        let mut rng = Rng::new(self.seed, index, STREAM_ACTIVITY);
        rng.next_u64(); // the coverage draw

        let trades = match rng.below(200) {
            0..=2 => 10,
            3..=5 => 11,
            _ if rng.chance(INACTIVE[tier]) => 0,
            _ => ((TRADE_MEAN[tier] * (0.6 * rng.normal()).exp()).round() as i32).max(1),
        };
        let amount = if trades == 0 {
            0
        } else {
            cents(f64::from(trades) * TRADE_SIZE[tier] * (0.7 * rng.normal()).exp())
        };
        let login_gap = match rng.below(100) {
            0 => 7,
            1 => 8,
            2 => 30,
            3 => 31,
            4 => 0,
            _ => (rng.exp(LOGIN_GAP[tier]) as i64).min(400),
        };
        let logins = if login_gap >= 30 {
            0
        } else {
            (1 + rng.exp(LOGIN_GAP[5 - tier] * 3.0) as i32 + trades / 3).min(300)
        };
        let risk = match rng.below(200) {
            0 | 1 => 0.0,
            2 | 3 => 30.0,
            4 => 30.1,
            _ => ((RISK_MEAN[tier] + 15.0 * rng.normal()).clamp(0.0, 100.0) * 10.0).round() / 10.0,
        };
        let credit = (CREDIT_MEAN[tier] - (risk - RISK_MEAN[tier]) * 2.0 + 40.0 * rng.normal())
            .round()
            .clamp(300.0, 850.0) as i32;

        let computed = self.day(rng.below(3) as i64);
        let updated = self.stamp(&mut rng, computed);
        ActivityRow {
            index,
            trade_count_30d: rng.nullable(trades),
            trade_amount_30d: rng.nullable(from_cents(amount)),
            login_count_30d: rng.nullable(logins),
            last_login_date: rng.nullable(self.day(login_gap)),
            risk_score: rng.nullable(risk),
            credit_score: rng.nullable(credit),
            computed_date: rng.nullable(computed),
            updated_time: rng.nullable(updated),
        }
    }
}

// ---------------------------------------------------------------------------
// Column building and writing

/// A growing primitive column with its validity.
struct Values<T> {
    values: Vec<T>,
    validity: MutableBitmap,
    nulls: usize,
}

impl<T: Default> Values<T> {
    fn new(capacity: usize) -> Self {
        Values {
            values: Vec::with_capacity(capacity),
            validity: MutableBitmap::with_capacity(capacity),
            nulls: 0,
        }
    }

    fn push(&mut self, value: Option<T>) {
        self.validity.push(value.is_some());
        self.nulls += usize::from(value.is_none());
        self.values.push(value.unwrap_or_default());
    }

    /// The values as a chunked array of polars type `P`.
    fn finish<P>(self, name: &str) -> ChunkedArray<P>
    where
        P: PolarsNumericType<Native = T>,
    {
        let validity = (self.nulls > 0).then(|| self.validity.into());
        ChunkedArray::<P>::from_vec_validity(name.into(), self.values, validity)
    }
}

fn i32_column(v: Values<i32>, name: &str) -> Column {
    v.finish::<Int32Type>(name).into_column()
}

fn f64_column(v: Values<f64>, name: &str) -> Column {
    v.finish::<Float64Type>(name).into_column()
}

fn date_column(v: Values<i32>, name: &str) -> Column {
    v.finish::<Int32Type>(name).into_date().into_column()
}

fn timestamp_column(v: Values<i64>, name: &str) -> Column {
    v.finish::<Int64Type>(name)
        .into_datetime(TimeUnit::Microseconds, None)
        .into_column()
}

/// Builds the `user_id` column without a heap allocation per id.
struct Ids {
    builder: StringChunkedBuilder,
    buf: String,
}

impl Ids {
    fn new(capacity: usize) -> Self {
        Ids {
            builder: StringChunkedBuilder::new("user_id".into(), capacity),
            buf: String::with_capacity(16),
        }
    }

    fn push(&mut self, index: u64) {
        use std::fmt::Write;
        self.buf.clear();
        // Writing to a String cannot fail.
        let _ = write!(self.buf, "user_{:06}", index + 1);
        self.builder.append_value(&self.buf);
    }

    fn finish(self) -> Column {
        self.builder.finish().into_column()
    }
}

fn strings(name: &str, capacity: usize) -> StringChunkedBuilder {
    StringChunkedBuilder::new(name.into(), capacity)
}

fn frame(columns: Vec<Column>) -> Result<DataFrame, Error> {
    let height = columns.first().map_or(0, |c| c.len());
    DataFrame::new(height, columns).map_err(|e| Error::polars("building generated frame", e))
}

struct BasicChunk {
    user_id: Ids,
    age: Values<i32>,
    gender: StringChunkedBuilder,
    registration_date: Values<i32>,
    user_level: StringChunkedBuilder,
    kyc_status: StringChunkedBuilder,
    country: StringChunkedBuilder,
    city: StringChunkedBuilder,
    created_time: Values<i64>,
    updated_time: Values<i64>,
}

impl BasicChunk {
    fn new(n: usize) -> Self {
        BasicChunk {
            user_id: Ids::new(n),
            age: Values::new(n),
            gender: strings("gender", n),
            registration_date: Values::new(n),
            user_level: strings("user_level", n),
            kyc_status: strings("kyc_status", n),
            country: strings("country", n),
            city: strings("city", n),
            created_time: Values::new(n),
            updated_time: Values::new(n),
        }
    }

    fn push(&mut self, r: &BasicRow) {
        self.user_id.push(r.index);
        self.age.push(r.age);
        self.gender.append_option(r.gender);
        self.registration_date.push(r.registration_date);
        self.user_level.append_option(r.user_level);
        self.kyc_status.append_option(r.kyc_status);
        self.country.append_option(r.country);
        self.city.append_option(r.city);
        self.created_time.push(r.created_time);
        self.updated_time.push(r.updated_time);
    }

    fn finish(self) -> Result<DataFrame, Error> {
        frame(vec![
            self.user_id.finish(),
            i32_column(self.age, "age"),
            self.gender.finish().into_column(),
            date_column(self.registration_date, "registration_date"),
            self.user_level.finish().into_column(),
            self.kyc_status.finish().into_column(),
            self.country.finish().into_column(),
            self.city.finish().into_column(),
            timestamp_column(self.created_time, "created_time"),
            timestamp_column(self.updated_time, "updated_time"),
        ])
    }
}

struct AssetChunk {
    user_id: Ids,
    total_asset_value: Values<f64>,
    cash_balance: Values<f64>,
    stock_value: Values<f64>,
    bond_value: Values<f64>,
    fund_value: Values<f64>,
    crypto_value: Values<f64>,
    computed_date: Values<i32>,
    updated_time: Values<i64>,
}

impl AssetChunk {
    fn new(n: usize) -> Self {
        AssetChunk {
            user_id: Ids::new(n),
            total_asset_value: Values::new(n),
            cash_balance: Values::new(n),
            stock_value: Values::new(n),
            bond_value: Values::new(n),
            fund_value: Values::new(n),
            crypto_value: Values::new(n),
            computed_date: Values::new(n),
            updated_time: Values::new(n),
        }
    }

    fn push(&mut self, r: &AssetRow) {
        self.user_id.push(r.index);
        self.total_asset_value.push(r.total_asset_value);
        self.cash_balance.push(r.cash_balance);
        self.stock_value.push(r.stock_value);
        self.bond_value.push(r.bond_value);
        self.fund_value.push(r.fund_value);
        self.crypto_value.push(r.crypto_value);
        self.computed_date.push(r.computed_date);
        self.updated_time.push(r.updated_time);
    }

    fn finish(self) -> Result<DataFrame, Error> {
        frame(vec![
            self.user_id.finish(),
            f64_column(self.total_asset_value, "total_asset_value"),
            f64_column(self.cash_balance, "cash_balance"),
            f64_column(self.stock_value, "stock_value"),
            f64_column(self.bond_value, "bond_value"),
            f64_column(self.fund_value, "fund_value"),
            f64_column(self.crypto_value, "crypto_value"),
            date_column(self.computed_date, "computed_date"),
            timestamp_column(self.updated_time, "updated_time"),
        ])
    }
}

struct ActivityChunk {
    user_id: Ids,
    trade_count_30d: Values<i32>,
    trade_amount_30d: Values<f64>,
    login_count_30d: Values<i32>,
    last_login_date: Values<i32>,
    risk_score: Values<f64>,
    credit_score: Values<i32>,
    computed_date: Values<i32>,
    updated_time: Values<i64>,
}

impl ActivityChunk {
    fn new(n: usize) -> Self {
        ActivityChunk {
            user_id: Ids::new(n),
            trade_count_30d: Values::new(n),
            trade_amount_30d: Values::new(n),
            login_count_30d: Values::new(n),
            last_login_date: Values::new(n),
            risk_score: Values::new(n),
            credit_score: Values::new(n),
            computed_date: Values::new(n),
            updated_time: Values::new(n),
        }
    }

    fn push(&mut self, r: &ActivityRow) {
        self.user_id.push(r.index);
        self.trade_count_30d.push(r.trade_count_30d);
        self.trade_amount_30d.push(r.trade_amount_30d);
        self.login_count_30d.push(r.login_count_30d);
        self.last_login_date.push(r.last_login_date);
        self.risk_score.push(r.risk_score);
        self.credit_score.push(r.credit_score);
        self.computed_date.push(r.computed_date);
        self.updated_time.push(r.updated_time);
    }

    fn finish(self) -> Result<DataFrame, Error> {
        frame(vec![
            self.user_id.finish(),
            i32_column(self.trade_count_30d, "trade_count_30d"),
            f64_column(self.trade_amount_30d, "trade_amount_30d"),
            i32_column(self.login_count_30d, "login_count_30d"),
            date_column(self.last_login_date, "last_login_date"),
            f64_column(self.risk_score, "risk_score"),
            i32_column(self.credit_score, "credit_score"),
            date_column(self.computed_date, "computed_date"),
            timestamp_column(self.updated_time, "updated_time"),
        ])
    }
}

/// One row group's worth of rows of each table.
struct Chunk {
    basic: BasicChunk,
    asset: AssetChunk,
    activity: ActivityChunk,
}

impl Chunk {
    fn new(n: usize) -> Self {
        Chunk {
            basic: BasicChunk::new(n),
            asset: AssetChunk::new(n),
            activity: ActivityChunk::new(n),
        }
    }

    /// The three frames, in table order.
    fn finish(self) -> Result<[DataFrame; 3], Error> {
        Ok([
            self.basic.finish()?,
            self.asset.finish()?,
            self.activity.finish()?,
        ])
    }
}

/// The three files being written, in table order.
struct Tables([TableWriter; 3]);

impl Tables {
    fn create(dir: &Path, options: &GenOptions) -> Result<Self, Error> {
        let [basic, asset, activity] = Chunk::new(0).finish()?;
        let [basic_path, asset_path, activity_path] = table_files(dir);
        Ok(Tables([
            TableWriter::create(basic_path, basic, options)?,
            TableWriter::create(asset_path, asset, options)?,
            TableWriter::create(activity_path, activity, options)?,
        ]))
    }

    /// Appends each table's rows of `chunk` as a row group (if it has any).
    fn write(&mut self, chunk: Chunk) -> Result<(), Error> {
        for (writer, df) in self.0.iter_mut().zip(chunk.finish()?) {
            writer.write(df)?;
        }
        Ok(())
    }

    /// Writes the footers: each table's rows, and the bytes of all three.
    fn finish(self) -> Result<([usize; 3], u64), Error> {
        let mut rows = [0; 3];
        let mut bytes = 0;
        for (i, writer) in self.0.into_iter().enumerate() {
            let (r, b) = writer.finish()?;
            rows[i] = r;
            bytes += b;
        }
        Ok((rows, bytes))
    }
}

/// One parquet file written chunk by chunk, one row group per chunk.
struct TableWriter {
    path: PathBuf,
    writer: polars::io::parquet::write::BatchedWriter<File>,
    rows: usize,
}

impl TableWriter {
    /// Creates the file at `path` with the schema of `empty`.
    fn create(path: PathBuf, empty: DataFrame, options: &GenOptions) -> Result<Self, Error> {
        let file = File::create(&path).map_err(|e| Error::io("creating", &path, e))?;
        let writer = ParquetWriter::new(file)
            .with_compression(options.compression)
            .with_row_group_size(Some(options.row_group_rows.max(1)))
            .batched(empty.schema())
            .map_err(|e| Error::polars(format!("opening {}", path.display()), e))?;
        Ok(TableWriter {
            path,
            writer,
            rows: 0,
        })
    }

    /// Appends the rows of `df` (if any) as a row group.
    fn write(&mut self, df: DataFrame) -> Result<(), Error> {
        if df.height() == 0 {
            return Ok(());
        }
        self.rows += df.height();
        self.writer
            .write_batch(&df)
            .map_err(|e| Error::polars(format!("writing {}", self.path.display()), e))
    }

    /// Writes the footer; returns the rows written and the file's size.
    fn finish(self) -> Result<(usize, u64), Error> {
        let bytes = self
            .writer
            .finish()
            .map_err(|e| Error::polars(format!("finishing {}", self.path.display()), e))?;
        Ok((self.rows, bytes))
    }
}
