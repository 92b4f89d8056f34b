//! Reading one source table as bounded batches of the requested columns,
//! coerced to the types the tags expect.
//!
//! A table is `<data_dir>/<table>.parquet` or a directory `<data_dir>/<table>/`
//! of `*.parquet` parts. Only the requested columns are decoded (projection),
//! and every batch lies inside one row group and holds at most `batch_rows`
//! rows, so memory stays bounded by the batch size and each batch column is a
//! single arrow chunk (which [`super::ffi`] hands over without copying).

use std::fs::File;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use tag_plugin_api::{ColumnType, Date};

use super::DataError as Error;

/// One column to read and the logical type its consumer expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnRequest {
    /// Column name in the table.
    pub name: String,
    /// The type the batch column will have after coercion.
    pub column_type: ColumnType,
}

impl ColumnRequest {
    /// A request for `name` as `column_type`.
    pub fn new(name: impl Into<String>, column_type: ColumnType) -> Self {
        ColumnRequest {
            name: name.into(),
            column_type,
        }
    }
}

/// The parquet files that make up `table` in `data_dir`: the single file
/// `<table>.parquet` if it exists, else the `*.parquet` parts of the directory
/// `<table>/` in name order (hidden files skipped).
pub fn table_files(data_dir: &Path, table: &str) -> Result<Vec<PathBuf>, Error> {
    let file = data_dir.join(format!("{table}.parquet"));
    if file.is_file() {
        return Ok(vec![file]);
    }
    let dir = data_dir.join(table);
    if !dir.is_dir() {
        return Err(Error::TableNotFound {
            table: table.to_string(),
            dir: data_dir.to_path_buf(),
        });
    }
    let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("reading directory", &dir, e))?;
    let mut parts = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("reading directory", &dir, e))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with('.') && name.ends_with(".parquet") && path.is_file() {
            parts.push(path);
        }
    }
    if parts.is_empty() {
        return Err(Error::TableNotFound {
            table: table.to_string(),
            dir: data_dir.to_path_buf(),
        });
    }
    parts.sort();
    Ok(parts)
}

/// One parquet file of a table, with its footer read once.
struct Part {
    path: PathBuf,
    metadata: FileMetadataRef,
}

/// A planned batch: rows `offset..offset + len` of part `part`, inside one row group.
#[derive(Debug, Clone, Copy)]
struct Slice {
    part: usize,
    offset: usize,
    len: usize,
}

/// An iterator over the batches of one table: each item is a DataFrame with
/// exactly the requested columns, in request order, of the requested types.
pub struct TableScan {
    table: String,
    columns: Vec<ColumnRequest>,
    parts: Vec<Part>,
    plan: std::vec::IntoIter<Slice>,
    num_rows: usize,
    /// Rows in the slices to read (the row groups kept).
    planned: usize,
    /// The part currently being read and its open file.
    open: Option<(usize, File)>,
}

/// Opens `table` in `data_dir` for batched reading of `columns`.
///
/// Every part's footer is read and checked here: a missing column or a type
/// that cannot be coerced fails now, before any data is decoded. Values that
/// cannot be coerced (an i64 beyond i32, a malformed date string) fail the
/// batch that holds them.
pub fn scan_table(
    data_dir: &Path,
    table: &str,
    columns: &[ColumnRequest],
    batch_rows: usize,
) -> Result<TableScan, Error> {
    scan_row_groups(data_dir, table, columns, batch_rows, &|_| true)
}

/// A row group of a table: which part file, which group, and its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RowGroupId {
    /// The part's index in [`table_files`] order.
    pub part: usize,
    /// The row group's index in that file.
    pub group: usize,
}

/// What a row group's statistics say about a time column, in microseconds
/// since the epoch (the unit rows are coerced to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupTimes {
    /// Which row group.
    pub id: RowGroupId,
    /// The greatest value, if the file records it.
    pub max: Option<i64>,
    /// How many nulls, if the file records it.
    pub nulls: Option<u64>,
}

/// Like [`scan_table`], reading only the row groups `keep` accepts.
pub fn scan_row_groups(
    data_dir: &Path,
    table: &str,
    columns: &[ColumnRequest],
    batch_rows: usize,
    keep: &dyn Fn(RowGroupId) -> bool,
) -> Result<TableScan, Error> {
    let batch_rows = batch_rows.max(1);
    let mut parts = Vec::new();
    let mut plan = Vec::new();
    let mut num_rows = 0;
    for path in table_files(data_dir, table)? {
        let mut file = File::open(&path).map_err(|e| Error::io("opening", &path, e))?;
        let mut reader = ParquetReader::new(&mut file);
        let context = || format!("table {table}: reading footer of {}", path.display());
        let schema = reader.schema().map_err(|e| Error::polars(context(), e))?;
        let metadata = reader
            .get_metadata()
            .map_err(|e| Error::polars(context(), e))?
            .clone();

        for request in columns {
            let Some(field) = schema.get(request.name.as_str()) else {
                return Err(Error::MissingColumn {
                    table: table.to_string(),
                    column: request.name.clone(),
                    path,
                    available: schema
                        .iter_names()
                        .map(|n| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            let found = DataType::from_arrow_field(field);
            check_coercible(table, &request.name, &found, request.column_type)?;
        }

        let part = parts.len();
        let mut offset = 0;
        for (group, row_group) in metadata.row_groups.iter().enumerate() {
            let end = offset + row_group.num_rows();
            if !keep(RowGroupId { part, group }) {
                offset = end;
                continue;
            }
            while offset < end {
                let len = batch_rows.min(end - offset);
                plan.push(Slice { part, offset, len });
                offset += len;
            }
        }
        num_rows += metadata.num_rows;
        parts.push(Part { path, metadata });
    }
    let planned = plan.iter().map(|s| s.len).sum();
    Ok(TableScan {
        planned,
        table: table.to_string(),
        columns: columns.to_vec(),
        parts,
        plan: plan.into_iter(),
        num_rows,
        open: None,
    })
}

impl TableScan {
    /// Total rows of the table, over all parts.
    pub fn num_rows(&self) -> usize {
        self.num_rows
    }

    /// Rows this scan reads: those of the row groups kept.
    pub fn rows_planned(&self) -> usize {
        self.planned
    }

    /// Row groups in all the table's parts.
    pub fn row_groups(&self) -> usize {
        self.parts.iter().map(|p| p.metadata.row_groups.len()).sum()
    }

    /// Row groups in the parts before part `part`.
    pub fn groups_before(&self, part: usize) -> usize {
        self.parts[..part.min(self.parts.len())]
            .iter()
            .map(|p| p.metadata.row_groups.len())
            .sum()
    }

    /// Uncompressed bytes per row of `column`, from the footers (0 for a
    /// table without rows).
    pub fn column_bytes_per_row(&self, column: &str) -> f64 {
        let mut bytes = 0i64;
        for part in &self.parts {
            for group in &part.metadata.row_groups {
                if let Some(chunks) = group.columns_under_root_iter(column) {
                    bytes += chunks.map(|c| c.uncompressed_size()).sum::<i64>();
                }
            }
        }
        bytes.max(0) as f64 / self.num_rows.max(1) as f64
    }

    /// The files being read, in order.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.parts.iter().map(|p| p.path.as_path())
    }

    fn read(&mut self, slice: Slice) -> Result<DataFrame, Error> {
        let part = &self.parts[slice.part];
        let context = || {
            format!(
                "table {}: reading rows {}..{} of {}",
                self.table,
                slice.offset,
                slice.offset + slice.len,
                part.path.display()
            )
        };
        if self.open.as_ref().map(|(i, _)| *i) != Some(slice.part) {
            let file = File::open(&part.path).map_err(|e| Error::io("opening", &part.path, e))?;
            self.open = Some((slice.part, file));
        }
        let Some((_, file)) = self.open.as_mut() else {
            unreachable!("the part's file was opened above");
        };
        let mut reader = ParquetReader::new(file)
            .with_columns(Some(self.columns.iter().map(|c| c.name.clone()).collect()))
            .with_slice(Some((slice.offset, slice.len)))
            // This strategy skips row groups outside the slice; the per-column
            // one opens every earlier row group (reading its dictionary pages)
            // on each call, which makes a full scan quadratic in row groups.
            .read_parallel(ParallelStrategy::RowGroups);
        reader.set_metadata(part.metadata.clone());
        let df = reader.finish().map_err(|e| Error::polars(context(), e))?;

        let mut out = Vec::with_capacity(self.columns.len());
        for request in &self.columns {
            let column = df
                .column(&request.name)
                .map_err(|e| Error::polars(context(), e))?;
            let coerced =
                coerce_column(&self.table, column, request.column_type).map_err(|e| match e {
                    // Rows in the detail count from the batch start: say where it starts.
                    Error::InvalidValue {
                        table,
                        column,
                        expected,
                        found,
                        detail,
                    } => Error::InvalidValue {
                        table,
                        column,
                        expected,
                        found,
                        detail: format!(
                            "{detail} (in the batch from row {} of {})",
                            slice.offset,
                            part.path.display()
                        ),
                    },
                    other => other,
                })?;
            out.push(coerced);
        }
        DataFrame::new(df.height(), out).map_err(|e| Error::polars(context(), e))
    }
}

impl Iterator for TableScan {
    type Item = Result<DataFrame, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let slice = self.plan.next()?;
        let result = self.read(slice);
        if result.is_err() {
            // A failed table stays failed: no partial batches after an error.
            self.plan = Vec::new().into_iter();
        }
        Some(result)
    }
}

/// The statistics of a time column (timestamp or date) per row group of
/// `table`, read from the footers only. A group whose file has no usable
/// statistics for the column has `max: None`.
pub fn group_times(data_dir: &Path, table: &str, column: &str) -> Result<Vec<GroupTimes>, Error> {
    let mut out = Vec::new();
    for (part, path) in table_files(data_dir, table)?.into_iter().enumerate() {
        let mut file = File::open(&path).map_err(|e| Error::io("opening", &path, e))?;
        let mut reader = ParquetReader::new(&mut file);
        let context = || format!("table {table}: reading footer of {}", path.display());
        let schema = reader.schema().map_err(|e| Error::polars(context(), e))?;
        let scale: Option<i64> = match schema.get(column).map(DataType::from_arrow_field) {
            Some(DataType::Datetime(TimeUnit::Milliseconds, _)) => Some(1_000),
            Some(DataType::Datetime(TimeUnit::Microseconds, _)) => Some(1),
            Some(DataType::Datetime(TimeUnit::Nanoseconds, _)) => Some(-1_000),
            Some(DataType::Date) => Some(86_400_000_000),
            _ => None,
        };
        let metadata = reader
            .get_metadata()
            .map_err(|e| Error::polars(context(), e))?
            .clone();
        for (group, row_group) in metadata.row_groups.iter().enumerate() {
            let stats = row_group
                .columns_under_root_iter(column)
                .and_then(|mut chunks| chunks.next())
                .and_then(|chunk| chunk.statistics(&metadata.footer_buf))
                .and_then(Result::ok);
            let (max, nulls) = match (&stats, scale) {
                (Some(stats), Some(scale)) => match (stats.as_int64(), stats.as_int32()) {
                    (Some(s), _) => (s.max_value.map(|v| to_micros(v, scale)), s.null_count),
                    (_, Some(s)) => (
                        s.max_value.map(|v| to_micros(v as i64, scale)),
                        s.null_count,
                    ),
                    _ => (None, None),
                },
                _ => (None, None),
            };
            out.push(GroupTimes {
                id: RowGroupId { part, group },
                max,
                nulls: nulls.map(|n| n.max(0) as u64),
            });
        }
    }
    Ok(out)
}

/// A raw statistic in microseconds: `scale` > 0 multiplies, < 0 divides
/// (rounding down, as the cast of the values does).
fn to_micros(value: i64, scale: i64) -> i64 {
    if scale > 0 {
        value.saturating_mul(scale)
    } else {
        value.div_euclid(-scale)
    }
}

/// A timestamp column (any unit, any time zone: its values are UTC instants)
/// as the UTC day or as UTC microseconds, computed on the instants
/// themselves so that no time zone database is consulted.
fn instants(column: &Column, unit: TimeUnit, expected: ColumnType) -> PolarsResult<Column> {
    let per_second: i64 = match unit {
        TimeUnit::Nanoseconds => 1_000_000_000,
        TimeUnit::Microseconds => 1_000_000,
        TimeUnit::Milliseconds => 1_000,
    };
    let values = column
        .as_materialized_series()
        .datetime()?
        .physical()
        .clone();
    let name = column.name().clone();
    Ok(match expected {
        ColumnType::Date => {
            let per_day = per_second * 86_400;
            let days: Int32Chunked = values
                .apply_nonnull_values_generic(DataType::Int32, |v| v.div_euclid(per_day) as i32);
            days.with_name(name).into_date().into_column()
        }
        _ => {
            let scale = match unit {
                TimeUnit::Nanoseconds => -1_000,
                TimeUnit::Microseconds => 1,
                TimeUnit::Milliseconds => 1_000,
            };
            let micros: Int64Chunked =
                values.apply_nonnull_values_generic(DataType::Int64, |v| to_micros(v, scale));
            micros
                .with_name(name)
                .into_datetime(TimeUnit::Microseconds, None)
                .into_column()
        }
    })
}

/// A DECIMAL column as float64: each unscaled integer divided by the exact
/// power of ten, so a value with up to 15 significant digits becomes the
/// float nearest to it (60000.00 is exactly 60000.0, 59999.99 stays below
/// it), where multiplying by 10^-scale would not.
fn decimal_to_float(column: &Column, scale: usize) -> PolarsResult<Column> {
    let divisor = 10f64.powi(scale as i32);
    let values = column
        .as_materialized_series()
        .decimal()?
        .physical()
        .clone();
    let floats: Float64Chunked =
        values.apply_nonnull_values_generic(DataType::Float64, |v| v as f64 / divisor);
    Ok(floats.with_name(column.name().clone()).into_column())
}

/// The polars type a column of logical type `column_type` has after coercion.
pub fn polars_type(column_type: ColumnType) -> DataType {
    match column_type {
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::Int32 => DataType::Int32,
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Date => DataType::Date,
        ColumnType::Timestamp => DataType::Datetime(TimeUnit::Microseconds, None),
        ColumnType::Utf8 => DataType::String,
    }
}

/// Checks that a column of type `found` can be coerced to `expected`, without
/// looking at its values.
pub fn check_coercible(
    table: &str,
    column: &str,
    found: &DataType,
    expected: ColumnType,
) -> Result<(), Error> {
    let ok = matches!(found, DataType::Null)
        || match expected {
            ColumnType::Boolean => matches!(found, DataType::Boolean),
            ColumnType::Int32 | ColumnType::Int64 => found.is_integer(),
            ColumnType::Float64 => {
                found.is_integer() || found.is_float() || matches!(found, DataType::Decimal(..))
            }
            ColumnType::Date => {
                matches!(
                    found,
                    DataType::Date | DataType::Datetime(..) | DataType::String
                )
            }
            ColumnType::Timestamp => matches!(found, DataType::Datetime(..) | DataType::Date),
            ColumnType::Utf8 => matches!(
                found,
                DataType::String | DataType::Categorical(..) | DataType::Enum(..)
            ),
        };
    if ok {
        Ok(())
    } else {
        Err(Error::TypeMismatch {
            table: table.to_string(),
            column: column.to_string(),
            expected,
            found: found.to_string(),
        })
    }
}

/// Coerces `column` of `table` to `expected`: integer widths (with overflow
/// check), DECIMAL and float32 to float64, timestamps of any unit and time
/// zone to dates (the UTC day) and to UTC microseconds, dates to timestamps
/// (midnight UTC), `YYYY-MM-DD` strings to dates, and dictionary strings to
/// strings. A column already of the target type is returned as is (no copy).
pub fn coerce_column(table: &str, column: &Column, expected: ColumnType) -> Result<Column, Error> {
    let found = column.dtype();
    let target = polars_type(expected);
    let already = found == &target
        // Any time zone is the same instant in UTC microseconds.
        || (expected == ColumnType::Timestamp
            && matches!(found, DataType::Datetime(TimeUnit::Microseconds, _)));
    if already {
        return Ok(column.clone());
    }
    check_coercible(table, column.name(), found, expected)?;
    let invalid = |detail: String| Error::InvalidValue {
        table: table.to_string(),
        column: column.name().to_string(),
        expected,
        found: found.to_string(),
        detail,
    };
    if let DataType::Datetime(unit, _) = found {
        return instants(column, *unit, expected).map_err(|e| invalid(e.to_string()));
    }
    if let DataType::Decimal(_, scale) = found {
        return decimal_to_float(column, *scale).map_err(|e| invalid(e.to_string()));
    }
    if let (DataType::String, ColumnType::Date) = (found, expected) {
        let strings = column
            .as_materialized_series()
            .str()
            .map_err(|e| invalid(e.to_string()))?;
        let mut days = Vec::with_capacity(strings.len());
        for (row, text) in strings.iter().enumerate() {
            match text {
                None => days.push(None),
                Some(text) => match Date::parse(text) {
                    Some(date) => days.push(Some(date.days())),
                    None => {
                        return Err(invalid(format!(
                            "row {row}: {text:?} is not a YYYY-MM-DD date"
                        )))
                    }
                },
            }
        }
        return Ok(
            Int32Chunked::from_iter_options(column.name().clone(), days.into_iter())
                .into_date()
                .into_column(),
        );
    }

    let cast = column.cast(&target).map_err(|e| invalid(e.to_string()))?;
    if cast.null_count() != column.null_count() {
        // A non-strict cast turns values that do not fit into nulls: name the first.
        let source = column.as_materialized_series();
        let result = cast.as_materialized_series();
        let (was_null, is_null) = (source.is_null(), result.is_null());
        let row = was_null
            .iter()
            .zip(is_null.iter())
            .position(|(was_null, is_null)| was_null == Some(false) && is_null == Some(true))
            .unwrap_or(0);
        let value = source
            .get(row)
            .map(|v| v.to_string())
            .unwrap_or_else(|_| "?".to_string());
        return Err(invalid(format!("row {row}: value {value} does not fit")));
    }
    Ok(cast)
}
