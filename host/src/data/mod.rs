//! The polars-facing pieces: sample data generation, projected and batched
//! parquet reading with type coercion, and zero-copy hand-over of polars
//! columns as FFI batches.
//!
//! # Layout
//! - [`gen`]: deterministic, realistic sample tables for the reference tags.
//! - [`read`]: one table (file or directory of parts) as bounded batches of
//!   the requested columns, coerced to the types the tags expect.
//! - [`ffi`]: a polars `DataFrame` borrowed as a [`tag_plugin_api::abi::FfiBatch`].
//! - [`source`]: where the tables live (a local directory or S3), made local
//!   for a run; [`s3`] mirrors an S3 prefix.

pub mod ffi;
pub mod gen;
pub mod read;
pub mod s3;
pub mod source;

use std::path::PathBuf;

use polars::prelude::PolarsError;
use tag_plugin_api::ColumnType;

/// Everything that can go wrong while generating, reading or handing over data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or directory could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done, e.g. `reading directory`.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Polars failed on a file (decode, encode, schema).
    #[error("{context}: {source}")]
    Polars {
        /// Which table or file, and what was being done.
        context: String,
        /// The underlying error.
        source: PolarsError,
    },
    /// Neither `<table>.parquet` nor a directory `<table>/` with parts exists.
    #[error("table {table}: no {table}.parquet nor {table}/ with *.parquet parts in {dir}")]
    TableNotFound {
        /// The table asked for.
        table: String,
        /// The data directory searched.
        dir: PathBuf,
    },
    /// A requested column is not in a file of the table.
    #[error("table {table}: column {column} not found in {path} (columns: {available})")]
    MissingColumn {
        /// The table.
        table: String,
        /// The missing column.
        column: String,
        /// The file that lacks it.
        path: PathBuf,
        /// The file's columns, comma-separated.
        available: String,
    },
    /// A column's type cannot be coerced to the type a tag expects.
    #[error("table {table}: column {column} has type {found}, expected {expected} (no coercion)")]
    TypeMismatch {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// The type the tag declared.
        expected: ColumnType,
        /// The type found in the data, as polars names it.
        found: String,
    },
    /// A value could not be coerced (overflow, unparsable date string).
    #[error("table {table}: column {column} ({found} -> {expected}): {detail}")]
    InvalidValue {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// The type the tag declared.
        expected: ColumnType,
        /// The type found in the data, as polars names it.
        found: String,
        /// Which value failed and why.
        detail: String,
    },
    /// An S3 location could not be listed or fetched.
    #[error("{url}: {detail}")]
    Remote {
        /// The `s3://` location.
        url: String,
        /// What failed, naming bucket and endpoint.
        detail: String,
    },
    /// A DataFrame column has a type that has no FFI representation.
    #[error("column {column}: type {dtype} cannot be passed to plugins")]
    UnsupportedFfiType {
        /// The column.
        column: String,
        /// Its polars type.
        dtype: String,
    },
    /// A value cannot be represented in the FFI layout (timestamp overflow, huge strings).
    #[error("column {column}: {detail}")]
    FfiValue {
        /// The column.
        column: String,
        /// What went wrong.
        detail: String,
    },
}

impl DataError {
    /// Wraps a polars error with a human context.
    pub(crate) fn polars(context: impl Into<String>, source: PolarsError) -> DataError {
        DataError::Polars {
            context: context.into(),
            source,
        }
    }

    /// Wraps an I/O error with what was done and where.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> DataError {
        DataError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
