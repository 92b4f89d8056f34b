//! The job's staged output: `_SUCCESS`, `_summary.json` and the parts
//! `part=K/` (K from 1), each the users of one `user_id` range in parquet
//! files of `user_id`, `tag_ids` (the tags each evaluated user matched)
//! and `scoped_tag_ids` (the tags evaluated for the user; null: every
//! tag). `part=0/` holds the job's rows without a user (its figures, which
//! the summary gives), and is not read. Parts are read one at a time (the
//! job aims at [`ROWS_PER_PART`] users a part), so what the host holds
//! stays small however many users the run has.

use polars::prelude::{
    DataFrame, DataType, IntoSeries, ListChunked, ParquetReader, SerReader, StringChunked,
};
use polars_arrow::array::{Array, PrimitiveArray};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Users per part the job aims at (it places the ranges' bounds by a
/// sample of the universe's user ids).
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

/// The output at `dir`: its summary and its parts (`part=K`, K >= 1, in
/// K's order), each its parquet files in name order; an error when the
/// job did not finish writing it.
pub fn open(dir: &Path) -> Result<(Summary, Vec<Vec<PathBuf>>), String> {
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
    let mut parts: Vec<(u64, PathBuf)> = listed(dir)?
        .into_iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            let k: u64 = name.strip_prefix("part=")?.parse().ok()?;
            (k > 0 && p.is_dir()).then_some((k, p))
        })
        .collect();
    parts.sort();
    parts
        .into_iter()
        .map(|(_, part)| part_files(&part))
        .collect::<Result<_, _>>()
        .map(|parts| (summary, parts))
}

/// The entries of `dir`.
fn listed(dir: &Path) -> Result<Vec<PathBuf>, String> {
    Ok(std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .collect())
}

/// A part's parquet files in name order (not Spark's hidden `_`/`.` files).
fn part_files(part: &Path) -> Result<Vec<PathBuf>, String> {
    let mut files: Vec<PathBuf> = listed(part)?
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".parquet") && !n.starts_with(['_', '.']))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Reads one part: its files, as one.
pub fn read_part(files: &[PathBuf]) -> Result<Part, String> {
    let mut frame: Option<DataFrame> = None;
    for path in files {
        let bad = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        let file = std::fs::File::open(path).map_err(|e| bad(&e))?;
        let read = ParquetReader::new(file)
            .with_columns(Some(COLUMNS.iter().map(|c| c.to_string()).collect()))
            .finish()
            .map_err(|e| bad(&e))?;
        match frame.as_mut() {
            None => frame = Some(read),
            Some(all) => {
                all.vstack_mut(&read).map_err(|e| bad(&e))?;
            }
        }
    }
    let Some(frame) = frame else {
        return Err("a part of the Spark job's output has no parquet file".to_string());
    };
    let where_ = files
        .first()
        .and_then(|f| f.parent())
        .unwrap_or(Path::new(""));
    part_of(&frame).map_err(|e| format!("{}: {e}", where_.display()))
}

/// The columns of a part that tag-server reads.
const COLUMNS: [&str; 3] = ["user_id", "tag_ids", "scoped_tag_ids"];

/// A part's frame as its users, matches and scopes.
fn part_of(frame: &DataFrame) -> Result<Part, String> {
    let column = |name: &str| frame.column(name).map_err(|e| e.to_string());
    let users = column("user_id")?
        .cast(&DataType::String)
        .map_err(|e| e.to_string())?
        .str()
        .map_err(|e| e.to_string())?
        .clone();
    if users.null_count() > 0 {
        return Err("a row without a user_id".to_string());
    }
    let matched = rows_per_tag(column("tag_ids")?.list().map_err(|e| e.to_string())?)?;
    let scoped = match frame.column("scoped_tag_ids") {
        Ok(c) if c.null_count() < c.len() => {
            let lists = c.list().map_err(|e| e.to_string())?;
            if lists.null_count() > 0 {
                return Err("scoped_tag_ids is null on some rows, not all".to_string());
            }
            Some(rows_per_tag(lists)?)
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
/// Read from the lists' Arrow buffers (a `Series` per row cost seconds at
/// 10M users); a null list holds no tag.
fn rows_per_tag(lists: &ListChunked) -> Result<BTreeMap<u32, Vec<u32>>, String> {
    let ids = lists
        .clone()
        .into_series()
        .cast(&DataType::List(Box::new(DataType::Int64)))
        .map_err(|e| e.to_string())?;
    let ids = ids.list().map_err(|e| e.to_string())?;
    let mut rows: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let mut row = 0u32;
    for chunk in ids.downcast_iter() {
        let values: &PrimitiveArray<i64> = chunk
            .values()
            .as_any()
            .downcast_ref()
            .ok_or("tag ids that are not integers")?;
        let offsets = chunk.offsets().buffer();
        for i in 0..chunk.len() {
            if chunk.is_valid(i) {
                for k in offsets[i] as usize..offsets[i + 1] as usize {
                    if !values.is_valid(k) {
                        continue;
                    }
                    let id = values.value(k);
                    let id =
                        u32::try_from(id).map_err(|_| format!("tag id {id} is out of range"))?;
                    rows.entry(id).or_default().push(row);
                }
            }
            row += 1;
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
        let (summary, parts) = open(dir.path()).unwrap();
        assert_eq!(summary, Summary::default());
        assert!(parts.is_empty());
    }

    #[test]
    fn parts_are_the_ranges_in_order_without_the_notes_and_hidden_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("_summary.json"), "{}").unwrap();
        std::fs::write(dir.path().join("_SUCCESS"), "").unwrap();
        for (part, files) in [
            ("part=0", &["a.parquet"][..]),
            ("part=10", &["b.parquet"]),
            (
                "part=2",
                &["d.parquet", "c.parquet", ".c.parquet.crc", "_x.parquet"],
            ),
        ] {
            std::fs::create_dir(dir.path().join(part)).unwrap();
            for f in files {
                std::fs::write(dir.path().join(part).join(f), "").unwrap();
            }
        }
        let (_, parts) = open(dir.path()).unwrap();
        let p = |part: &str, f: &str| dir.path().join(part).join(f);
        assert_eq!(
            parts,
            vec![
                vec![p("part=2", "c.parquet"), p("part=2", "d.parquet")],
                vec![p("part=10", "b.parquet")],
            ]
        );
    }

    #[test]
    fn each_tag_gets_the_rows_holding_it_across_chunks_and_nulls() {
        use polars::prelude::{NamedFrom, Series};
        fn lists(rows: &[Option<&[i32]>]) -> ListChunked {
            let rows: Vec<Option<Series>> = rows
                .iter()
                .map(|r| r.map(|ids| Series::new("".into(), ids)))
                .collect();
            Series::new("t".into(), rows).list().unwrap().clone()
        }
        let mut all = lists(&[Some(&[1, 3]), None, Some(&[])]);
        all.append(&lists(&[Some(&[3]), Some(&[1, 2, 3])])).unwrap();
        assert_eq!(all.chunks().len(), 2);
        let want: BTreeMap<u32, Vec<u32>> = [(1, vec![0, 4]), (2, vec![4]), (3, vec![0, 3, 4])]
            .into_iter()
            .collect();
        assert_eq!(rows_per_tag(&all).unwrap(), want);
        let error = rows_per_tag(&lists(&[Some(&[-1])])).unwrap_err();
        assert!(error.contains("-1 is out of range"), "{error}");
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
