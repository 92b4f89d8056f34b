//! The evaluate stage: each tag's rule through its plugin, batch by batch,
//! into one bitset of matching universe rows per tag.

use super::bitset::Bitset;
use super::{failed, polars_failed, stopped, RunError, TagRun, Universe};
use crate::data::ffi::with_ffi_batch;
use crate::data::DataError;
use crate::tasks::control::{TagProgress, TaskControl};
use polars::prelude::*;
use tag_plugin_api::Date;

/// Per tag, in order, the rows whose whole rule is true, or why the tag
/// failed (its plugin erred, panicked or answered for the wrong number of
/// rows): one tag's failure does not stop the others. Only a stop (cancel,
/// shutdown) ends the stage.
pub fn evaluate(
    tags: &[TagRun],
    universe: &Universe,
    as_of: Date,
    batch_rows: usize,
    control: &TaskControl,
) -> Result<Vec<Result<Bitset, String>>, RunError> {
    let rows = universe.rows();
    control.set_progress(|p| {
        p.enter("evaluating", (rows * tags.len()) as u64);
        p.tags = tags
            .iter()
            .map(|t| TagProgress {
                tag_id: t.id(),
                rows_done: 0,
            })
            .collect();
    });
    tags.iter()
        .map(
            |t| match evaluate_tag(t, universe, as_of, batch_rows, control) {
                Ok(matched) => Ok(Ok(matched)),
                Err(RunError::Failed(error)) => Ok(Err(error)),
                Err(stop) => Err(stop),
            },
        )
        .collect()
}

fn evaluate_tag(
    t: &TagRun,
    universe: &Universe,
    as_of: Date,
    batch_rows: usize,
    control: &TaskControl,
) -> Result<Bitset, RunError> {
    let rows = universe.rows();
    let columns: Vec<Column> = t
        .tag
        .info
        .inputs
        .iter()
        .map(|input| universe.column(&input.table, &input.column).cloned())
        .collect::<Result<_, _>>()?;
    let mut matched = Bitset::empty(rows);
    let mut offset = 0;
    while offset < rows {
        control.checkpoint().map_err(stopped)?;
        let len = batch_rows.min(rows - offset);
        let batch = DataFrame::new(
            len,
            columns
                .iter()
                .map(|c| c.slice(offset as i64, len))
                .collect(),
        )
        .map_err(|e| polars_failed("building a batch", e))?;
        let mask = with_ffi_batch(&batch, |ffi| t.tag.evaluate(ffi, &t.rule, as_of))
            .map_err(|e: DataError| failed(e))?
            .map_err(failed)?;
        matched.place(offset, &mask);
        offset += len;
        control.set_progress(|p| {
            p.advance("evaluating", len as u64);
            if let Some(tp) = p.tags.iter_mut().find(|tp| tp.tag_id == t.id()) {
                tp.rows_done += len;
            }
        });
    }
    Ok(matched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::load::tests::{cash_tag, loaded};
    use crate::engine::testkit::tag_at_least;

    #[test]
    fn each_tag_gets_the_rows_its_rule_matches_across_batches() {
        let tags = [cash_tag(), tag_at_least(2, "user_basic_info", "score", 2.0)];
        let (_dir, plan, universe) = loaded(&tags, None);
        let control = TaskControl::default();
        control.set_progress(|p| *p = crate::progress::Progress::begin());
        // Batches of two rows: the second starts at an unaligned offset.
        let matched = evaluate(&plan.tags, &universe, plan.as_of, 2, &control).unwrap();
        // Rows: u2 (score 2, no cash), u1 (score 10, cash 200), u3 (score 4, cash 30).
        let ones = |i: usize| matched[i].as_ref().unwrap().ones().collect::<Vec<_>>();
        assert_eq!(ones(0), vec![1]);
        assert_eq!(ones(1), vec![0, 1, 2]);
        let progress = control.progress();
        assert_eq!((progress.rows_done, progress.rows_total), (6, 6));
    }
}
