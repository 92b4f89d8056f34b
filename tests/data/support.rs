//! Helpers shared by the tests.

use std::fs::File;
use std::path::Path;

use polars::prelude::*;

/// Writes `df` to `path` as parquet, one row group per `row_group_rows` rows.
pub fn write_parquet(path: &Path, df: &mut DataFrame, row_group_rows: usize) {
    df.rechunk_mut();
    let file = File::create(path).expect("create parquet file");
    let mut writer = ParquetWriter::new(file)
        .batched(df.schema())
        .expect("open writer");
    let mut offset = 0;
    while offset < df.height() {
        // One row group per call: the slice of a single chunk is a single chunk.
        writer
            .write_batch(&df.slice(offset as i64, row_group_rows))
            .expect("write row group");
        offset += row_group_rows;
    }
    writer.finish().expect("finish parquet");
}

/// Row group sizes of a parquet file.
pub fn row_groups(path: &Path) -> Vec<usize> {
    let file = File::open(path).expect("open parquet file");
    let mut reader = ParquetReader::new(file);
    let metadata = reader.get_metadata().expect("parquet footer");
    metadata.row_groups.iter().map(|rg| rg.num_rows()).collect()
}

/// Reads a whole parquet file.
pub fn read_parquet(path: &Path) -> DataFrame {
    let file = File::open(path).expect("open parquet file");
    ParquetReader::new(file).finish().expect("read parquet")
}

/// Stacks frames vertically.
pub fn concat(frames: &[DataFrame]) -> DataFrame {
    let mut iter = frames.iter();
    let mut out = iter.next().expect("at least one frame").clone();
    for df in iter {
        out.vstack_mut(df).expect("same schema");
    }
    out
}
