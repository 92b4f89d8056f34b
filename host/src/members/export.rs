//! Rows of text columns written as CSV, JSON lines or parquet, a chunk at a
//! time: an export of millions of members never holds the list, only the
//! chunk being written (and, for parquet, one row group).

use crate::store::{AudienceStore, StoreError};
use polars::prelude::{Column, DataFrame, ParquetWriter};
use roaring::RoaringBitmap;
use std::io::Write;

/// Rows per parquet row group (and per store read of user ids).
pub const CHUNK: usize = 65_536;

/// How members are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `user_id` header, then one quoted-as-needed line per row.
    Csv,
    /// One JSON object per line.
    Jsonl,
    /// A parquet file of UTF-8 columns, one row group per [`CHUNK`] rows.
    Parquet,
}

impl Format {
    /// `csv`, `jsonl` or `parquet`.
    pub fn parse(text: &str) -> Option<Format> {
        match text {
            "csv" => Some(Format::Csv),
            "jsonl" => Some(Format::Jsonl),
            "parquet" => Some(Format::Parquet),
            _ => None,
        }
    }

    /// The file name extension (and the `format` value).
    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
            Format::Parquet => "parquet",
        }
    }

    /// The `Content-Type` an export answers with.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Jsonl => "application/x-ndjson",
            Format::Parquet => "application/vnd.apache.parquet",
        }
    }
}

/// An export that stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the members failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing failed (a full disk, or the client went away).
    #[error("writing the export: {0}")]
    Io(#[from] std::io::Error),
    /// The parquet writer failed.
    #[error("writing parquet: {0}")]
    Parquet(String),
}

/// Writes rows of named text columns in one [`Format`].
pub struct RowWriter<W: Write + Send> {
    columns: Vec<&'static str>,
    state: State<W>,
    rows: u64,
}

enum State<W: Write + Send> {
    Text(Format, W),
    Parquet {
        writer: Option<Box<polars::io::parquet::write::BatchedWriter<W>>>,
        out: Option<W>,
        buffered: Vec<Vec<String>>,
    },
}

impl<W: Write + Send> RowWriter<W> {
    /// A writer of `columns` into `out`; CSV writes its header now.
    pub fn new(format: Format, columns: &[&'static str], mut out: W) -> Result<Self, ExportError> {
        let state = match format {
            Format::Csv => {
                out.write_all(columns.join(",").as_bytes())?;
                out.write_all(b"\n")?;
                State::Text(format, out)
            }
            Format::Jsonl => State::Text(format, out),
            Format::Parquet => State::Parquet {
                writer: None,
                out: Some(out),
                buffered: vec![Vec::new(); columns.len()],
            },
        };
        Ok(RowWriter {
            columns: columns.to_vec(),
            state,
            rows: 0,
        })
    }

    /// Appends one row (one value per column).
    pub fn row(&mut self, values: &[&str]) -> Result<(), ExportError> {
        self.rows += 1;
        match &mut self.state {
            State::Text(Format::Csv, out) => {
                let line: Vec<String> = values.iter().map(|v| csv_field(v)).collect();
                out.write_all(line.join(",").as_bytes())?;
                out.write_all(b"\n")?;
            }
            State::Text(_, out) => {
                let object: serde_json::Map<String, serde_json::Value> = self
                    .columns
                    .iter()
                    .zip(values)
                    .map(|(c, v)| (c.to_string(), serde_json::Value::from(*v)))
                    .collect();
                serde_json::to_writer(&mut *out, &object).map_err(std::io::Error::other)?;
                out.write_all(b"\n")?;
            }
            State::Parquet { buffered, .. } => {
                for (column, v) in buffered.iter_mut().zip(values) {
                    column.push(v.to_string());
                }
                if buffered[0].len() >= CHUNK {
                    self.flush_group()?;
                }
            }
        }
        Ok(())
    }

    /// Writes the buffered parquet rows as a row group.
    fn flush_group(&mut self) -> Result<(), ExportError> {
        let State::Parquet {
            writer,
            out,
            buffered,
        } = &mut self.state
        else {
            return Ok(());
        };
        let columns: Vec<Column> = self
            .columns
            .iter()
            .zip(buffered.iter_mut())
            .map(|(name, values)| Column::new((*name).into(), std::mem::take(values)))
            .collect();
        let height = columns.first().map_or(0, |c| c.len());
        let frame =
            DataFrame::new(height, columns).map_err(|e| ExportError::Parquet(e.to_string()))?;
        if writer.is_none() {
            let out = out
                .take()
                .ok_or_else(|| ExportError::Parquet("no output".into()))?;
            let batched = ParquetWriter::new(out)
                .with_row_group_size(Some(CHUNK))
                .batched(frame.schema())
                .map_err(|e| ExportError::Parquet(e.to_string()))?;
            *writer = Some(Box::new(batched));
        }
        if frame.height() > 0 {
            if let Some(w) = writer.as_mut() {
                w.write_batch(&frame)
                    .map_err(|e| ExportError::Parquet(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Ends the output (parquet's footer); the rows written.
    pub fn finish(mut self) -> Result<u64, ExportError> {
        self.flush_group()?;
        match self.state {
            State::Text(_, mut out) => out.flush()?,
            State::Parquet { writer, .. } => {
                if let Some(w) = writer {
                    w.finish()
                        .map_err(|e| ExportError::Parquet(e.to_string()))?;
                }
            }
        }
        Ok(self.rows)
    }
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}

/// Calls `each` with the user id of every member of `members`, ascending
/// by dense index, streamed from the store on one connection; `progress`
/// gets the count done every [`CHUNK`] members and at the end.
pub fn each_member(
    store: &dyn AudienceStore,
    members: &RoaringBitmap,
    mut each: impl FnMut(&str) -> Result<(), ExportError>,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, ExportError> {
    let (mut done, mut failed) = (0u64, None);
    store.each_member(members, &mut |_, user| match each(user) {
        Ok(()) => {
            done += 1;
            if done % CHUNK as u64 == 0 {
                progress(done);
            }
            true
        }
        Err(e) => {
            failed = Some(e);
            false
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    progress(done);
    Ok(done)
}

/// Writes every member of `members` as rows of `user_id` into `out`.
pub fn write_members<W: Write + Send>(
    store: &dyn AudienceStore,
    members: &RoaringBitmap,
    format: Format,
    out: W,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, ExportError> {
    let mut writer = RowWriter::new(format, &["user_id"], out)?;
    each_member(store, members, |user| writer.row(&[user]), progress)?;
    writer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(format: Format, rows: &[&[&str]]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = RowWriter::new(format, &["user_id", "change"], &mut out).unwrap();
        for row in rows {
            w.row(row).unwrap();
        }
        assert_eq!(w.finish().unwrap(), rows.len() as u64);
        out
    }

    #[test]
    fn csv_quotes_only_what_needs_it_and_jsonl_is_one_object_a_line() {
        let rows: &[&[&str]] = &[&["u1", "added"], &["a,\"b\"", "removed"]];
        let csv = String::from_utf8(written(Format::Csv, rows)).unwrap();
        assert_eq!(csv, "user_id,change\nu1,added\n\"a,\"\"b\"\"\",removed\n");
        let jsonl = String::from_utf8(written(Format::Jsonl, rows)).unwrap();
        let lines: Vec<serde_json::Value> = jsonl
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[1]["user_id"], "a,\"b\"");
        assert_eq!(lines[0]["change"], "added");
    }

    #[test]
    fn parquet_holds_every_row_across_row_groups_and_an_empty_export_is_a_file() {
        use polars::prelude::{ParquetReader, SerReader};
        let many: Vec<String> = (0..CHUNK + 10).map(|i| format!("u{i:06}")).collect();
        let rows: Vec<[&str; 2]> = many.iter().map(|u| [u.as_str(), "added"]).collect();
        let refs: Vec<&[&str]> = rows.iter().map(|r| &r[..]).collect();
        let bytes = written(Format::Parquet, &refs);
        let frame = ParquetReader::new(std::io::Cursor::new(bytes))
            .finish()
            .unwrap();
        assert_eq!(frame.height(), CHUNK + 10);
        let last = frame
            .column("user_id")
            .unwrap()
            .str()
            .unwrap()
            .get(CHUNK + 9);
        assert_eq!(last, Some("u065545"));
        let empty = written(Format::Parquet, &[]);
        let frame = ParquetReader::new(std::io::Cursor::new(empty))
            .finish()
            .unwrap();
        assert_eq!((frame.height(), frame.width()), (0, 2));
    }

    #[test]
    fn formats_are_named_as_asked() {
        assert_eq!(Format::parse("parquet"), Some(Format::Parquet));
        assert_eq!(Format::parse("xlsx"), None);
        assert_eq!(Format::Csv.extension(), "csv");
    }
}
