//! The evaluate stage: each tag's rule through its plugin, batch by batch,
//! into one bitset of matching universe rows per tag.
//!
//! The (tag, batch) pairs are one shared queue, taken in order by a bounded
//! number of scoped worker threads ([`eval_threads`]); each batch's mask is
//! placed into its tag's bitset as it comes. Plugins are called from several
//! threads at once, on different batches: the plugin API's contract
//! (`TagTask: Send + Sync`, `Tag: Send + Sync`) allows it.

use super::bitset::Bitset;
use super::{polars_failed, stopped, RunError, TagRun, Universe};
use crate::data::ffi::with_ffi_batch;
use crate::data::DataError;
use crate::tasks::control::{Stop, TagProgress, TaskControl};
use polars::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use tag_plugin_api::Date;

/// The environment variable that caps the evaluating threads of one run.
pub const EVAL_THREADS_VAR: &str = "TAG_EVAL_THREADS";

/// Threads that evaluate one run's tags: `TAG_EVAL_THREADS` if it is a
/// positive number, else the cores this process may use.
pub fn eval_threads() -> usize {
    std::env::var(EVAL_THREADS_VAR)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

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
    let stage = Stage::new(tags, universe, as_of, batch_rows, control);
    stage.run(eval_threads())
}

/// One tag's share of the stage.
struct TagWork<'a> {
    run: &'a TagRun,
    /// Its input columns, or why they cannot be had.
    columns: Result<Vec<Column>, String>,
    matched: Mutex<Bitset>,
    /// The first failed batch and its error; batches after it are skipped,
    /// those before it still run, so the error is the one a batch-by-batch
    /// pass would have met first.
    failure: Mutex<Option<(usize, String)>>,
    first_failed: AtomicUsize,
}

/// The evaluate stage of one run: the queue of (tag, batch) items.
struct Stage<'a> {
    tags: Vec<TagWork<'a>>,
    rows: usize,
    batch_rows: usize,
    batches: usize,
    as_of: Date,
    control: &'a TaskControl,
    next: AtomicUsize,
    stop: OnceLock<Stop>,
}

impl<'a> Stage<'a> {
    fn new(
        tags: &'a [TagRun],
        universe: &Universe,
        as_of: Date,
        batch_rows: usize,
        control: &'a TaskControl,
    ) -> Stage<'a> {
        let rows = universe.rows();
        let batch_rows = batch_rows.max(1);
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
        let tags = tags
            .iter()
            .map(|run| TagWork {
                run,
                columns: input_columns(run, universe),
                matched: Mutex::new(Bitset::empty(rows)),
                failure: Mutex::new(None),
                first_failed: AtomicUsize::new(usize::MAX),
            })
            .collect();
        Stage {
            tags,
            rows,
            batch_rows,
            batches: rows.div_ceil(batch_rows),
            as_of,
            control,
            next: AtomicUsize::new(0),
            stop: OnceLock::new(),
        }
    }

    /// Works the queue on up to `threads` threads (the calling thread alone
    /// for one), then collects each tag's outcome.
    fn run(self, threads: usize) -> Result<Vec<Result<Bitset, String>>, RunError> {
        let items = self.batches * self.tags.len();
        let threads = threads.clamp(1, items.max(1));
        if threads == 1 {
            self.work();
        } else {
            std::thread::scope(|scope| {
                // The calling thread is one of the `threads`.
                let workers: Vec<_> = (1..threads)
                    .map(|i| {
                        std::thread::Builder::new()
                            .name(format!("tag-eval-{i}"))
                            .spawn_scoped(scope, || self.work())
                    })
                    .collect();
                // A worker that cannot start leaves its share to the others,
                // and the calling thread works too, so the queue always drains.
                self.work();
                for worker in workers.into_iter().flatten() {
                    if let Err(payload) = worker.join() {
                        std::panic::resume_unwind(payload);
                    }
                }
            });
        }
        if let Some(stop) = self.stop.get() {
            return Err(stopped(*stop));
        }
        Ok(self.tags.into_iter().map(TagWork::outcome).collect())
    }

    /// Takes items off the queue until it is empty or the run is stopped.
    fn work(&self) {
        let items = self.batches * self.tags.len();
        while self.stop.get().is_none() {
            let item = self.next.fetch_add(1, Ordering::Relaxed);
            if item >= items {
                return;
            }
            if let Err(stop) = self.control.checkpoint() {
                let _ = self.stop.set(stop);
                return;
            }
            // Tag-major: a tag's batches are taken one after another.
            let (tag, batch) = (&self.tags[item / self.batches], item % self.batches);
            self.evaluate_batch(tag, batch);
        }
    }

    fn evaluate_batch(&self, tag: &TagWork<'_>, batch: usize) {
        if batch > tag.first_failed.load(Ordering::Acquire) {
            return;
        }
        let offset = batch * self.batch_rows;
        let len = self.batch_rows.min(self.rows - offset);
        let columns = match &tag.columns {
            Ok(columns) => columns,
            Err(error) => return tag.fail(batch, error.clone()),
        };
        match evaluate_slice(tag.run, columns, offset, len, self.as_of) {
            Ok(mask) => {
                tag.matched
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .place(offset, &mask);
                self.control.set_progress(|p| {
                    p.advance("evaluating", len as u64);
                    if let Some(tp) = p.tags.iter_mut().find(|tp| tp.tag_id == tag.run.id()) {
                        tp.rows_done += len;
                    }
                });
            }
            Err(error) => tag.fail(batch, error),
        }
    }
}

impl TagWork<'_> {
    /// Records that `batch` failed, keeping the earliest batch's error.
    fn fail(&self, batch: usize, error: String) {
        self.first_failed.fetch_min(batch, Ordering::AcqRel);
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if failure.as_ref().is_none_or(|(at, _)| batch < *at) {
            *failure = Some((batch, error));
        }
    }

    fn outcome(self) -> Result<Bitset, String> {
        let failure = self.failure.into_inner().unwrap_or_else(|p| p.into_inner());
        if let Some((_, error)) = failure {
            return Err(error);
        }
        // A tag over no rows still fails when its columns are missing.
        self.columns?;
        Ok(self.matched.into_inner().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The universe's columns a tag reads, in its declared order.
fn input_columns(t: &TagRun, universe: &Universe) -> Result<Vec<Column>, String> {
    t.tag
        .info
        .inputs
        .iter()
        .map(|input| universe.column(&input.table, &input.column).cloned())
        .collect::<Result<_, _>>()
        .map_err(message)
}

/// The plugin's mask for rows `offset..offset + len` of `columns`.
fn evaluate_slice(
    t: &TagRun,
    columns: &[Column],
    offset: usize,
    len: usize,
    as_of: Date,
) -> Result<tag_plugin_api::Mask, String> {
    let batch = DataFrame::new(
        len,
        columns
            .iter()
            .map(|c| c.slice(offset as i64, len))
            .collect(),
    )
    .map_err(|e| message(polars_failed("building a batch", e)))?;
    with_ffi_batch(&batch, |ffi| t.tag.evaluate(ffi, &t.rule, as_of))
        .map_err(|e: DataError| e.to_string())?
        .map_err(|e| e.to_string())
}

/// The text of a tag's failure.
fn message(error: RunError) -> String {
    match error {
        RunError::Failed(message) => message,
        RunError::Stopped(stop) => format!("stopped: {stop:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::load::tests::{cash_tag, loaded};
    use crate::engine::testkit::{registered, tag_at_least};
    use std::collections::HashSet;
    use std::sync::atomic::AtomicBool;
    use std::thread::ThreadId;
    use std::time::{Duration, Instant};
    use tag_plugin_api::{Batch, ColumnType, Mask, Rule, Tag, TagError, TagInfo};

    fn info(id: u32) -> TagInfo {
        TagInfo::new(id, "T", &format!("tag {id}"), "test")
            .input("user_basic_info", "score", ColumnType::Float64)
            .default_rule(r#"{"field": "score", "operator": ">=", "value": 3}"#)
    }

    /// Applies its rule, and records the threads that called it and whether
    /// two calls were ever in flight at once (each call waits up to two
    /// seconds for a second one).
    struct Gauge {
        id: u32,
        in_flight: &'static AtomicUsize,
        overlapped: &'static AtomicBool,
        threads: &'static Mutex<HashSet<ThreadId>>,
    }

    impl Tag for Gauge {
        fn info(&self) -> TagInfo {
            info(self.id)
        }
        fn evaluate(&self, batch: &Batch<'_>, rule: &Rule, as_of: Date) -> Result<Mask, TagError> {
            self.threads
                .lock()
                .unwrap()
                .insert(std::thread::current().id());
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(2);
            while !self.overlapped.load(Ordering::SeqCst) && Instant::now() < deadline {
                if self.in_flight.load(Ordering::SeqCst) >= 2 {
                    self.overlapped.store(true, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            Ok(rule.evaluate(batch, as_of)?)
        }
    }

    /// Fails (an error, or a panic) on the batch that holds its second row.
    struct FailsOnSecondRow {
        id: u32,
        panics: bool,
    }

    impl Tag for FailsOnSecondRow {
        fn info(&self) -> TagInfo {
            info(self.id)
        }
        fn evaluate(&self, batch: &Batch<'_>, rule: &Rule, as_of: Date) -> Result<Mask, TagError> {
            let score = batch.column("score")?.f64_values()?;
            // The sample's second universe row is u1, score 10.
            if score.get(0) == Some(10.0) {
                if self.panics {
                    panic!("tag {} panics on u1", self.id);
                }
                return Err(TagError::Failed(format!("tag {} fails on u1", self.id)));
            }
            Ok(rule.evaluate(batch, as_of)?)
        }
    }

    fn began() -> TaskControl {
        let control = TaskControl::default();
        control.set_progress(|p| *p = crate::progress::Progress::begin());
        control
    }

    #[test]
    fn each_tag_gets_the_rows_its_rule_matches_across_batches() {
        let tags = [cash_tag(), tag_at_least(2, "user_basic_info", "score", 2.0)];
        let (_dir, plan, universe) = loaded(&tags, None);
        let control = began();
        // Batches of two rows: the second starts at an unaligned offset.
        let matched = evaluate(&plan.tags, &universe, plan.as_of, 2, &control).unwrap();
        // Rows: u2 (score 2, no cash), u1 (score 10, cash 200), u3 (score 4, cash 30).
        let ones = |i: usize| matched[i].as_ref().unwrap().ones().collect::<Vec<_>>();
        assert_eq!(ones(0), vec![1]);
        assert_eq!(ones(1), vec![0, 1, 2]);
        let progress = control.progress();
        assert_eq!((progress.rows_done, progress.rows_total), (6, 6));
    }

    #[test]
    fn tags_and_batches_are_evaluated_on_several_threads_at_once() {
        static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
        static OVERLAPPED: AtomicBool = AtomicBool::new(false);
        static THREADS: OnceLock<Mutex<HashSet<ThreadId>>> = OnceLock::new();
        let threads = THREADS.get_or_init(Default::default);
        let gauge = |id| {
            registered(Gauge {
                id,
                in_flight: &IN_FLIGHT,
                overlapped: &OVERLAPPED,
                threads,
            })
        };
        let (_dir, plan, universe) = loaded(&[gauge(1), gauge(2)], None);
        let control = began();
        // One row a batch: six items for three threads.
        let stage = Stage::new(&plan.tags, &universe, plan.as_of, 1, &control);
        let matched = stage.run(3).unwrap();
        assert!(OVERLAPPED.load(Ordering::SeqCst), "no two calls overlapped");
        assert!(
            threads.lock().unwrap().len() >= 2,
            "one thread made every call"
        );
        for tag in matched {
            // u2 (score 2) no, u1 (10) and u3 (4) yes.
            assert_eq!(tag.unwrap().ones().collect::<Vec<_>>(), vec![1, 2]);
        }
        let progress = control.progress();
        assert_eq!((progress.rows_done, progress.rows_total), (6, 6));
        assert!(progress.tags.iter().all(|t| t.rows_done == 3));
    }

    #[test]
    fn a_failing_tag_fails_alone_when_tags_run_concurrently() {
        let tags = [
            registered(FailsOnSecondRow {
                id: 1,
                panics: false,
            }),
            tag_at_least(2, "user_basic_info", "score", 3.0),
            registered(FailsOnSecondRow {
                id: 3,
                panics: true,
            }),
            tag_at_least(4, "user_basic_info", "score", 5.0),
        ];
        let (_dir, plan, universe) = loaded(&tags, None);
        let control = began();
        let stage = Stage::new(&plan.tags, &universe, plan.as_of, 1, &control);
        let outcomes = stage.run(4).unwrap();
        let error = |i: usize| outcomes[i].as_ref().unwrap_err().as_str();
        let ones = |i: usize| outcomes[i].as_ref().unwrap().ones().collect::<Vec<_>>();
        assert_eq!(
            error(0),
            "tag 1: plugin returned an error: tag 1 fails on u1"
        );
        assert_eq!(ones(1), vec![1, 2]);
        assert_eq!(error(2), "tag 3: plugin panicked: tag 3 panics on u1");
        assert_eq!(ones(3), vec![1]);
    }

    #[test]
    fn a_cancel_ends_the_stage_on_every_thread() {
        let (_dir, plan, universe) = loaded(
            &[cash_tag(), tag_at_least(2, "user_basic_info", "score", 2.0)],
            None,
        );
        let control = began();
        control.cancel();
        let stage = Stage::new(&plan.tags, &universe, plan.as_of, 1, &control);
        assert!(matches!(
            stage.run(2),
            Err(RunError::Stopped(Stop::Cancelled))
        ));
    }
}
