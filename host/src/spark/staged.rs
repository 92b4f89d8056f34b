//! The job's staged output: `_SUCCESS`, `_summary.json` and parquet parts
//! of `user_id`, `tag_ids` (the tags each evaluated user matched) and
//! `scoped_tag_ids` (the tags evaluated for the user; null: every tag).
//! Parts are read one at a time (the job writes at most
//! [`ROWS_PER_PART`] users to a part), so what the host holds stays small
//! however many users the run has.

use polars::prelude::{DataType, ListChunked, ParquetReader, SerReader, StringChunked};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Users per part file at most (the job's `maxRecordsPerFile`).
pub const ROWS_PER_PART: usize = 500_000;

/// What `_summary.json` says of the run (fields tag-server does not read
/// are ignored).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
pub struct Summary {
    /// Spark's id of the application.
    #[serde(default)]
    pub application_id: Option<String>,
    /// Per table, rows left out because the user has a newer row.
    #[serde(default)]
    pub duplicates_dropped: BTreeMap<String, usize>,
    /// Users in the universe (after a `user_ids` filter).
    #[serde(default)]
    pub universe_users: usize,
    /// Per table, its newest `updated_time` (microseconds).
    #[serde(default)]
    pub newest: BTreeMap<String, i64>,
    /// Users evaluated.
    #[serde(default)]
    pub users_evaluated: usize,
    /// Per tag: its outcome.
    #[serde(default)]
    pub tags: Vec<TagOutcome>,
    /// Milliseconds per step of the job (`read`, `evaluate`, `write`).
    #[serde(default)]
    pub timings_ms: BTreeMap<String, u64>,
}

/// One tag's outcome in the summary.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
pub struct TagOutcome {
    /// The tag.
    pub tag_id: u32,
    /// `completed` or `failed`.
    pub status: String,
    /// Why it failed (a few distinct messages).
    #[serde(default)]
    pub errors: Vec<String>,
}

impl Summary {
    /// The tags that failed, each with its errors joined.
    pub fn failed(&self) -> Vec<(u32, String)> {
        self.tags
            .iter()
            .filter(|t| t.status != "completed")
            .map(|t| (t.tag_id, t.errors.join("; ")))
            .collect()
    }
}

/// One part of the output: its users, and per tag the rows that matched
/// and (when the job scoped tags) the rows it evaluated.
#[derive(Debug, Clone)]
pub struct Part {
    /// The users, one per row.
    pub users: StringChunked,
    /// Per tag, the rows whose user matched it.
    pub matched: BTreeMap<u32, Vec<u32>>,
    /// Per tag, the rows it evaluated; `None` when every row evaluated
    /// every tag.
    pub scoped: Option<BTreeMap<u32, Vec<u32>>>,
}

/// The output at `dir`: its summary and its part files, in name order;
/// an error when the job did not finish writing it.
pub fn open(dir: &Path) -> Result<(Summary, Vec<PathBuf>), String> {
    if !dir.join("_SUCCESS").is_file() {
        return Err(format!(
            "the Spark job's output {} has no _SUCCESS marker: it is incomplete",
            dir.display()
        ));
    }
    let text = std::fs::read_to_string(dir.join("_summary.json"))
        .map_err(|e| format!("cannot read {}/_summary.json: {e}", dir.display()))?;
    let summary: Summary =
        serde_json::from_str(&text).map_err(|e| format!("{}/_summary.json: {e}", dir.display()))?;
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".parquet") && !n.starts_with(['_', '.']))
        })
        .collect();
    parts.sort();
    Ok((summary, parts))
}

/// Reads the part file `path`.
pub fn read_part(path: &Path) -> Result<Part, String> {
    let bad = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(|e| bad(&e))?;
    let frame = ParquetReader::new(file).finish().map_err(|e| bad(&e))?;
    let column = |name: &str| frame.column(name).map_err(|e| bad(&e));
    let users = column("user_id")?
        .cast(&DataType::String)
        .map_err(|e| bad(&e))?
        .str()
        .map_err(|e| bad(&e))?
        .clone();
    let matched =
        rows_per_tag(column("tag_ids")?.list().map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    let scoped = match frame.column("scoped_tag_ids") {
        Ok(c) if c.null_count() < c.len() => {
            let lists = c.list().map_err(|e| bad(&e))?;
            if lists.null_count() > 0 {
                return Err(bad(&"scoped_tag_ids is null on some rows, not all"));
            }
            Some(rows_per_tag(lists).map_err(|e| bad(&e))?)
        }
        _ => None,
    };
    Ok(Part {
        users,
        matched,
        scoped,
    })
}

/// Per tag id in `lists` (a list of tag ids per row), the rows holding it.
fn rows_per_tag(lists: &ListChunked) -> Result<BTreeMap<u32, Vec<u32>>, String> {
    let mut rows: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for row in 0..lists.len() {
        let Some(list) = lists.get_as_series(row) else {
            continue;
        };
        let ids = list.cast(&DataType::Int64).map_err(|e| e.to_string())?;
        for id in ids.i64().map_err(|e| e.to_string())?.iter().flatten() {
            let id = u32::try_from(id).map_err(|_| format!("tag id {id} is out of range"))?;
            rows.entry(id).or_default().push(row as u32);
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_without_its_marker_is_incomplete() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("_summary.json"), "{}").unwrap();
        assert!(open(dir.path()).unwrap_err().contains("_SUCCESS"));
        std::fs::write(dir.path().join("_SUCCESS"), "").unwrap();
        std::fs::write(dir.path().join("part-1.parquet"), "").unwrap();
        std::fs::write(dir.path().join(".part-1.parquet.crc"), "").unwrap();
        let (summary, parts) = open(dir.path()).unwrap();
        assert_eq!(summary, Summary::default());
        assert_eq!(parts, vec![dir.path().join("part-1.parquet")]);
    }

    #[test]
    fn failed_tags_come_with_their_errors() {
        let summary: Summary = serde_json::from_str(
            r#"{"tags":[{"tag_id":1,"status":"completed","errors":[]},
                        {"tag_id":9,"status":"failed","errors":["a","b"]}],"extra":1}"#,
        )
        .unwrap();
        assert_eq!(summary.failed(), vec![(9, "a; b".to_string())]);
    }
}
