//! How far a running task has got: every stage of a run with its own done
//! and total, an overall percent that weighs the stages by their share of a
//! run, and an estimate of the time left.
//!
//! The engine reports through [`Progress::enter`], [`Progress::advance`]
//! and [`Progress::set_done`]; readers take a [`Progress::snapshot`], which
//! fills in the figures that depend on the clock.

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use utoipa::ToSchema;

/// The stages of a run in order: name, unit, share of a run's time.
///
/// The shares are the mean of each stage's part of a first full run and of
/// a re-run on unchanged data, eight reference tags, 1M users, SQLite,
/// release build (the stage lines of `tag-server run`, three runs each):
/// first run 315/92/53/0/522/94 ms, re-run 308/91/50/233/89/4 ms. A stage a
/// run does not need (no side table to join) counts as done.
pub const STAGES: [(&str, &str, f64); 6] = [
    ("reading", "rows", 34.0),
    ("joining", "rows", 10.0),
    ("evaluating", "rows", 6.0),
    ("comparing", "users", 15.0),
    ("writing", "users", 30.0),
    ("committing", "steps", 5.0),
];

/// A run is this far along before an estimate of the time left is given.
const ESTIMATE_AFTER_SECS: f64 = 1.0;

/// One stage's figures.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StageProgress {
    /// `reading`, `joining`, `evaluating`, `writing` or `committing`.
    pub name: String,
    /// What `done` and `total` count: `rows` (read, joined, or evaluated
    /// per tag), `users` (whose results were written) or `steps`.
    pub unit: String,
    /// `pending`, `running` or `finished`.
    pub state: String,
    /// Units done.
    pub done: u64,
    /// Units in all (known when the stage starts).
    pub total: u64,
    /// Milliseconds it has taken (so far, while running).
    pub elapsed_ms: u64,
}

/// Rows read of one table.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TableProgress {
    /// The table.
    pub table: String,
    /// Rows read so far.
    pub rows_done: u64,
    /// Rows to read (from the parquet footers; only the row groups an
    /// incremental run reads).
    pub rows_total: u64,
}

/// Rows evaluated for one tag.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct TagProgress {
    /// The tag.
    pub tag_id: u32,
    /// Rows evaluated for it.
    pub rows_done: usize,
}

/// Where a partitioned run is: reading into its partitions (`index` 0),
/// then partition `index` of `count`: the one being written, once the first
/// is (the next is read and evaluated meanwhile).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct PartitionProgress {
    /// The partition being computed, from 1; 0 while the tables are
    /// read into the partitions.
    pub index: usize,
    /// Partitions in all.
    pub count: usize,
    /// Whether the partitions are spilled to disk (the run is beyond its
    /// memory limit) rather than kept in memory.
    pub spilled: bool,
}

/// The stages a partitioned run goes through once per partition.
const PER_PARTITION: [&str; 3] = ["joining", "evaluating", "writing"];

/// A running task's progress, as its status shows it.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Progress {
    /// The stage running now.
    pub stage: String,
    /// The whole run, 0 to 100: each stage weighted by its usual share of
    /// a run.
    pub percent: f64,
    /// Seconds left, estimated from the time taken so far (once the run
    /// has gone on for a second).
    pub eta_seconds: Option<u64>,
    /// Milliseconds since the run started.
    pub elapsed_ms: u64,
    /// Every stage, in order.
    pub stages: Vec<StageProgress>,
    /// Per finished stage, its time (`reading_ms`, …), as `timings` in the
    /// result.
    pub timings: BTreeMap<String, u64>,
    /// Per table read, rows read of rows to read.
    pub tables: Vec<TableProgress>,
    /// Rows evaluated so far, over all tags (the evaluating stage's done,
    /// kept under its first name).
    pub rows_done: usize,
    /// Rows to evaluate, over all tags (the evaluating stage's total).
    pub rows_total: usize,
    /// Per tag: rows evaluated so far.
    pub tags: Vec<TagProgress>,
    /// A partitioned run's partitions: which one is being computed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<PartitionProgress>,
    #[serde(skip)]
    #[schema(ignore)]
    clock: Option<Clock>,
    /// A stage whose `done` a counter gives (read at each snapshot).
    #[serde(skip)]
    #[schema(ignore)]
    live: Option<(usize, Arc<AtomicUsize>)>,
}

/// When the run and the current stage started.
#[derive(Debug, Clone, Copy)]
struct Clock {
    run: Instant,
    stage: Instant,
}

impl Progress {
    /// A run starting now: every stage pending.
    pub fn begin() -> Progress {
        let now = Instant::now();
        Progress {
            stages: STAGES
                .iter()
                .map(|(name, unit, _)| StageProgress {
                    name: name.to_string(),
                    unit: unit.to_string(),
                    state: "pending".into(),
                    done: 0,
                    total: 0,
                    elapsed_ms: 0,
                })
                .collect(),
            clock: Some(Clock {
                run: now,
                stage: now,
            }),
            ..Progress::default()
        }
    }

    /// Starts `stage` with `total` units; the stages before it are finished
    /// (a stage skipped counts as done).
    pub fn enter(&mut self, stage: &str, total: u64) {
        let Some(at) = self.position(stage) else {
            return;
        };
        let now = Instant::now();
        let clock = self.clock.get_or_insert(Clock {
            run: now,
            stage: now,
        });
        let lap = now.duration_since(clock.stage).as_millis() as u64;
        clock.stage = now;
        for s in &mut self.stages[..at] {
            if s.state == "running" {
                s.elapsed_ms = lap;
                self.timings.insert(format!("{}_ms", s.name), lap);
            }
            if s.state != "finished" {
                s.state = "finished".into();
                s.done = s.total;
            }
        }
        let s = &mut self.stages[at];
        s.state = "running".into();
        s.total = total;
        s.done = 0;
        self.stage = stage.to_string();
        self.live = None;
    }

    /// Starts `stage` with `total` units, its `done` read from `counter`.
    pub fn enter_counted(&mut self, stage: &str, total: u64, counter: Arc<AtomicUsize>) {
        self.enter(stage, total);
        self.live = self.position(stage).map(|at| (at, counter));
    }

    /// A partitioned run starts reading its tables into `count` partitions,
    /// `spilled` to disk or kept in memory.
    pub fn begin_partitions(&mut self, count: usize, spilled: bool) {
        self.partition = Some(PartitionProgress {
            index: 0,
            count,
            spilled,
        });
    }

    /// A partitioned run starts writing partition `index` (from 1; 0 while
    /// reading into the partitions) of `count` (the next partition is read
    /// and evaluated meanwhile).
    pub fn enter_partition(&mut self, index: usize, count: usize) {
        let spilled = self.partition.is_some_and(|p| p.spilled);
        self.partition = Some(PartitionProgress {
            index,
            count,
            spilled,
        });
    }

    /// Ends the run: every stage finished.
    pub fn finish(&mut self) {
        let last = STAGES.len() - 1;
        if self.stages.get(last).is_some_and(|s| s.state != "running") {
            self.enter(STAGES[last].0, 0);
        }
        let lap = self
            .clock
            .map_or(0, |c| c.stage.elapsed().as_millis() as u64);
        if let Some(s) = self.stages.get_mut(last) {
            s.state = "finished".into();
            s.done = s.total;
            s.elapsed_ms = lap;
            self.timings.insert(format!("{}_ms", s.name), lap);
        }
    }

    /// Sets `stage`'s total (known once its inputs are opened).
    pub fn set_total(&mut self, stage: &str, total: u64) {
        if let Some(at) = self.position(stage) {
            self.stages[at].total = total;
        }
    }

    /// Adds `n` units to `stage` (at most its total).
    pub fn advance(&mut self, stage: &str, n: u64) {
        if let Some(at) = self.position(stage) {
            let s = &mut self.stages[at];
            s.done = (s.done + n).min(s.total);
        }
    }

    /// Sets `stage`'s units done (at most its total).
    pub fn set_done(&mut self, stage: &str, done: u64) {
        if let Some(at) = self.position(stage) {
            let s = &mut self.stages[at];
            s.done = done.min(s.total);
        }
    }

    /// Adds `n` rows read of `table` (and to the reading stage).
    pub fn read_rows(&mut self, table: &str, n: u64) {
        if let Some(t) = self.tables.iter_mut().find(|t| t.table == table) {
            t.rows_done = (t.rows_done + n).min(t.rows_total);
        }
        self.advance("reading", n);
    }

    fn position(&self, stage: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.name == stage)
    }

    /// The figures as of now: percent, estimate, elapsed times.
    pub fn snapshot(&self) -> Progress {
        let mut out = self.clone();
        if let Some(s) = out.stages.iter().find(|s| s.name == "evaluating") {
            (out.rows_done, out.rows_total) = (s.done as usize, s.total as usize);
        }
        let Some(clock) = self.clock else {
            return out;
        };
        if let Some((at, counter)) = &self.live {
            let s = &mut out.stages[*at];
            s.done = (counter.load(Ordering::Relaxed) as u64).min(s.total);
        }
        let now = Instant::now();
        for s in out.stages.iter_mut().filter(|s| s.state == "running") {
            s.elapsed_ms = now.duration_since(clock.stage).as_millis() as u64;
        }
        out.percent = (percent(&out.stages, self.partition) * 10.0).round() / 10.0;
        let elapsed = now.duration_since(clock.run).as_secs_f64();
        out.elapsed_ms = (elapsed * 1000.0) as u64;
        out.eta_seconds = (elapsed >= ESTIMATE_AFTER_SECS && out.percent > 0.5)
            .then(|| (elapsed * (100.0 - out.percent) / out.percent).round() as u64);
        out
    }
}

/// The overall percent: finished stages count whole, the running one by
/// its done/total, each by its share. In a partitioned run the stages
/// computed per partition count the partitions done and this one's part.
fn percent(stages: &[StageProgress], partition: Option<PartitionProgress>) -> f64 {
    let all: f64 = STAGES.iter().map(|s| s.2).sum();
    let done: f64 = stages
        .iter()
        .zip(STAGES.iter())
        .map(|(s, (name, _, share))| {
            let part = match s.state.as_str() {
                "finished" => 1.0,
                "running" if s.total > 0 => s.done as f64 / s.total as f64,
                _ => 0.0,
            };
            match partition {
                Some(_) if PER_PARTITION.contains(name) => 0.0,
                _ => share * part,
            }
        })
        .sum::<f64>()
        + partitions_done(stages, partition);
    // 100 only once every stage finished.
    let percent = done / all * 100.0;
    if stages.iter().all(|s| s.state == "finished") {
        100.0
    } else {
        percent.min(99.9)
    }
}

/// A partitioned run's share of the stages computed per partition: the
/// partitions written, and the one being written by its writing stage's
/// done/total (reading and evaluating the next one overlap it).
fn partitions_done(stages: &[StageProgress], partition: Option<PartitionProgress>) -> f64 {
    let Some(p) = partition.filter(|p| p.count > 0 && p.index > 0) else {
        return 0.0;
    };
    let share: f64 = STAGES
        .iter()
        .filter(|(name, _, _)| PER_PARTITION.contains(name))
        .map(|s| s.2)
        .sum();
    let writing = stages.iter().find(|s| s.name == "writing");
    let this = match writing {
        Some(s) if s.state == "finished" => 1.0,
        Some(s) if s.state == "running" && s.total > 0 => s.done as f64 / s.total as f64,
        _ => 0.0,
    };
    share * ((p.index as f64 - 1.0 + this) / p.count as f64).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partitioned_run_moves_through_its_partitions() {
        let mut p = Progress::begin();
        p.enter("reading", 100);
        p.begin_partitions(4, true);
        p.advance("reading", 100);
        let spilled = p.snapshot().percent;
        assert!((spilled - 34.0).abs() < 1e-9, "{spilled}");
        let mut last = spilled;
        for index in 1..=4 {
            p.enter("evaluating", 10);
            p.enter_partition(index, 4);
            p.enter("writing", 10);
            for _ in 0..2 {
                p.advance("writing", 5);
                let now = p.snapshot().percent;
                assert!(now > last, "partition {index}: {now} after {last}");
                last = now;
            }
        }
        // Every partition written (and comparing, finished by the first
        // write): all but committing's share.
        assert!((last - 95.0).abs() < 0.1, "{last}");
        assert_eq!(
            p.snapshot().partition,
            Some(PartitionProgress {
                index: 4,
                count: 4,
                spilled: true
            })
        );
    }

    #[test]
    fn percent_moves_through_the_stages_by_their_shares() {
        let mut p = Progress::begin();
        assert_eq!(p.snapshot().percent, 0.0);
        p.enter("reading", 200);
        p.advance("reading", 100);
        assert!((p.snapshot().percent - 17.0).abs() < 1e-9);
        // Joining is skipped: reading and joining count as done.
        p.enter("evaluating", 10);
        let s = p.snapshot();
        assert!((s.percent - 44.0).abs() < 1e-9, "{}", s.percent);
        assert_eq!(s.stages[0].state, "finished");
        assert_eq!(s.stages[1].state, "finished");
        assert_eq!(s.stages[0].done, 200);
        assert!(s.timings.contains_key("reading_ms"));
        assert!(!s.timings.contains_key("joining_ms"));
        p.set_done("evaluating", 1_000);
        assert!((p.snapshot().percent - 50.0).abs() < 1e-9);
        p.enter("committing", 1);
        p.advance("committing", 1);
        assert_eq!(p.snapshot().percent, 99.9);
        assert_eq!(p.stage, "committing");
        p.finish();
        let s = p.snapshot();
        assert_eq!(s.percent, 100.0);
        assert!(s.stages.iter().all(|s| s.state == "finished"));
        assert!(s.timings.contains_key("committing_ms"));
    }

    #[test]
    fn a_counted_stage_reads_its_counter_at_each_snapshot() {
        let mut p = Progress::begin();
        let counter = Arc::new(AtomicUsize::new(0));
        p.enter_counted("comparing", 10, Arc::clone(&counter));
        counter.store(4, Ordering::Relaxed);
        assert_eq!(p.snapshot().stages[3].done, 4);
        counter.store(40, Ordering::Relaxed);
        assert_eq!(p.snapshot().stages[3].done, 10);
        p.enter("writing", 5);
        assert_eq!(p.snapshot().stages[3].state, "finished");
    }

    #[test]
    fn rows_read_count_per_table_and_in_the_stage() {
        let mut p = Progress::begin();
        p.tables = vec![TableProgress {
            table: "a".into(),
            rows_done: 0,
            rows_total: 5,
        }];
        p.enter("reading", 5);
        p.read_rows("a", 3);
        p.read_rows("a", 3);
        assert_eq!(p.tables[0].rows_done, 5);
        assert_eq!(p.stages[0].done, 5);
    }

    #[test]
    fn the_estimate_waits_for_a_second_of_running() {
        let mut p = Progress::begin();
        p.enter("reading", 10);
        p.advance("reading", 5);
        assert_eq!(p.snapshot().eta_seconds, None);
        if let Some(clock) = p.clock.as_mut() {
            clock.run -= std::time::Duration::from_secs(3);
        }
        // 3 s for 17%: about 15 s left.
        assert_eq!(p.snapshot().eta_seconds, Some(15));
    }
}
