//! A run's write on two threads: the run computes its changes on the calling
//! thread while a writer thread applies them to the database.
//!
//! The database side (one transaction: read the current tag ids, apply the
//! changes, record the tag states, commit) is single-threaded in every
//! backend, and so is the run's diff and row formatting; on two cores they
//! overlap. Rows travel in batches that share one text buffer, so a row
//! costs no allocation. The channels are bounded: memory does not grow with
//! the run.
//!
//! A backend provides the writer: [`pipelined`] gives it the sending end for
//! current rows and the receiving end for changes.

use super::{ChangeSink, RunWriter, StoreError, TagIds, TagState, WriteSummary};
use std::ops::Range;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// Rows per batch in either direction.
const BATCH_ROWS: usize = 2048;
/// Batches in flight per channel.
const IN_FLIGHT: usize = 8;

/// A change to one `user_tags` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// [`ChangeSink::insert`]: `details` is the whole `tag_details`.
    Insert,
    /// [`ChangeSink::update`]: `details` is a JSON merge patch.
    Update,
    /// [`ChangeSink::delete`]: `tag_ids` and `details` are empty.
    Delete,
}

#[derive(Debug)]
struct Change {
    op: Op,
    user_id: Range<usize>,
    tag_ids: Range<usize>,
    details: Range<usize>,
}

/// Up to [`BATCH_ROWS`] changes, their text in one buffer.
#[derive(Debug, Default)]
pub struct ChangeBatch {
    text: String,
    changes: Vec<Change>,
}

impl ChangeBatch {
    fn push(&mut self, op: Op, user_id: &str, tag_ids: &[u32], details: &str) {
        let user_id = push_str(&mut self.text, user_id);
        let start = self.text.len();
        if op != Op::Delete {
            super::push_tag_ids(&mut self.text, tag_ids);
        }
        let tag_ids = start..self.text.len();
        let details = push_str(&mut self.text, details);
        self.changes.push(Change {
            op,
            user_id,
            tag_ids,
            details,
        });
    }

    /// The changes, in the order the run made them: `(op, user_id,
    /// tag_ids JSON, details)`.
    pub fn iter(&self) -> impl Iterator<Item = (Op, &str, &str, &str)> {
        self.changes.iter().map(|c| {
            (
                c.op,
                &self.text[c.user_id.clone()],
                &self.text[c.tag_ids.clone()],
                &self.text[c.details.clone()],
            )
        })
    }
}

fn push_str(text: &mut String, s: &str) -> Range<usize> {
    let start = text.len();
    text.push_str(s);
    start..text.len()
}

/// Up to [`BATCH_ROWS`] current rows (user id and tag ids).
#[derive(Debug, Default)]
pub struct CurrentBatch {
    text: String,
    rows: Vec<(Range<usize>, TagIds)>,
}

impl CurrentBatch {
    /// Adds a row; `true` when the batch is full.
    pub fn push(&mut self, user_id: &str, tag_ids: TagIds) -> bool {
        let id = push_str(&mut self.text, user_id);
        self.rows.push((id, tag_ids));
        self.rows.len() >= BATCH_ROWS
    }

    /// Whether it holds no row.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// What the writer receives.
pub enum ToWriter {
    /// Changes to apply, in order.
    Changes(ChangeBatch),
    /// The run's changes are complete: record these tag states and commit.
    Finish(Vec<TagState>),
}

/// The writer's end for current rows: send [`CurrentBatch`]es, then drop it.
pub type CurrentSender = SyncSender<CurrentBatch>;
/// The writer's end for changes. If it closes before [`ToWriter::Finish`],
/// the run stopped: roll back.
pub type ChangeReceiver = Receiver<ToWriter>;

/// The error a writer returns when the run stopped before finishing.
pub fn abandoned() -> StoreError {
    StoreError::Database("the run stopped before its changes were complete".into())
}

/// A [`ChangeSink`] that batches changes to the writer thread.
struct ChannelSink {
    to_writer: SyncSender<ToWriter>,
    batch: ChangeBatch,
    /// The writer hung up (it failed; its error is the one to report).
    writer_gone: bool,
}

impl ChannelSink {
    fn push(
        &mut self,
        op: Op,
        user_id: &str,
        tag_ids: &[u32],
        details: &str,
    ) -> Result<(), StoreError> {
        self.batch.push(op, user_id, tag_ids, details);
        if self.batch.changes.len() >= BATCH_ROWS {
            self.send_batch()?;
        }
        Ok(())
    }

    fn send_batch(&mut self) -> Result<(), StoreError> {
        let batch = std::mem::take(&mut self.batch);
        self.send(ToWriter::Changes(batch))
    }

    fn send(&mut self, message: ToWriter) -> Result<(), StoreError> {
        self.to_writer.send(message).map_err(|_| {
            self.writer_gone = true;
            StoreError::Database("the results writer stopped".into())
        })
    }

    fn finish(&mut self, states: Vec<TagState>) -> Result<(), StoreError> {
        if !self.batch.changes.is_empty() {
            self.send_batch()?;
        }
        self.send(ToWriter::Finish(states))
    }
}

impl ChangeSink for ChannelSink {
    fn insert(&mut self, user_id: &str, tag_ids: &[u32], details: &str) -> Result<(), StoreError> {
        self.push(Op::Insert, user_id, tag_ids, details)
    }

    fn update(
        &mut self,
        user_id: &str,
        tag_ids: &[u32],
        details_patch: &str,
    ) -> Result<(), StoreError> {
        self.push(Op::Update, user_id, tag_ids, details_patch)
    }

    fn delete(&mut self, user_id: &str) -> Result<(), StoreError> {
        self.push(Op::Delete, user_id, &[], "")
    }
}

/// Runs `writer` on a thread of its own and `run` on this one.
///
/// `writer` opens the transaction, sends the current rows (then drops the
/// sender), applies the changes it receives and, on [`ToWriter::Finish`],
/// records the states and commits. If the channel closes first it must roll
/// back and return [`abandoned`]. Nothing is committed unless `run`
/// finished without error.
pub fn pipelined<W>(run: &mut dyn RunWriter, writer: W) -> Result<WriteSummary, StoreError>
where
    W: FnOnce(CurrentSender, ChangeReceiver) -> Result<WriteSummary, StoreError> + Send,
{
    let (current_tx, current_rx) = sync_channel(IN_FLIGHT);
    let (change_tx, change_rx) = sync_channel(IN_FLIGHT);
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("results-writer".into())
            .spawn_scoped(scope, move || writer(current_tx, change_rx))
            .map_err(|e| StoreError::Database(format!("cannot start the results writer: {e}")))?;
        // Ends when the writer has sent every row (or failed).
        for batch in current_rx {
            for (id, tag_ids) in batch.rows {
                run.current(&batch.text[id], tag_ids);
            }
        }
        let mut sink = ChannelSink {
            to_writer: change_tx,
            batch: ChangeBatch::default(),
            writer_gone: false,
        };
        let outcome = run
            .changes(&mut sink)
            .and_then(|states| sink.finish(states));
        let writer_gone = sink.writer_gone;
        // Hanging up tells a writer still waiting that the run stopped.
        drop(sink);
        let written = handle
            .join()
            .map_err(|_| StoreError::Database("the results writer panicked".into()))?;
        match outcome {
            Ok(()) => written,
            // The send failed because the writer failed: report its error.
            Err(e) => Err(if writer_gone {
                written.err().unwrap_or(e)
            } else {
                e
            }),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run over `users` users: every user gains tag 1 unless it already
    /// has it, and user `fail_at` (if any) makes the run fail.
    struct FakeRun {
        users: usize,
        fail_at: Option<usize>,
        current: Vec<(String, TagIds)>,
    }

    impl RunWriter for FakeRun {
        fn current(&mut self, user_id: &str, tag_ids: TagIds) {
            self.current.push((user_id.to_string(), tag_ids));
        }

        fn changes(&mut self, sink: &mut dyn ChangeSink) -> Result<Vec<TagState>, StoreError> {
            for i in 0..self.users {
                if Some(i) == self.fail_at {
                    return Err(StoreError::Corrupt(format!("run failed at {i}")));
                }
                let user = format!("u{i}");
                if !self.current.iter().any(|(u, _)| *u == user) {
                    sink.insert(&user, &[1, 20], r#"{"1":{}}"#)?;
                }
            }
            sink.delete("gone")?;
            Ok(vec![TagState {
                tag_id: 1,
                rule_version: 1,
                watermarks: Default::default(),
                had_full_run: true,
            }])
        }
    }

    fn run(users: usize, fail_at: Option<usize>) -> FakeRun {
        FakeRun {
            users,
            fail_at,
            current: Vec::new(),
        }
    }

    /// A writer that holds `current` rows and records what it is sent; it
    /// fails on change number `fail_at`.
    fn writer(
        current_rows: usize,
        fail_at: Option<usize>,
        seen: &mut Vec<(Op, String, String)>,
    ) -> impl FnOnce(CurrentSender, ChangeReceiver) -> Result<WriteSummary, StoreError> + Send + '_
    {
        move |current, changes| {
            let mut batch = CurrentBatch::default();
            for i in 0..current_rows {
                if batch.push(&format!("u{i}"), TagIds::from_slice(&[1])) {
                    current.send(std::mem::take(&mut batch)).unwrap();
                }
            }
            if !batch.is_empty() {
                current.send(batch).unwrap();
            }
            drop(current);
            let mut summary = WriteSummary::default();
            loop {
                match changes.recv().map_err(|_| abandoned())? {
                    ToWriter::Changes(batch) => {
                        for (op, user, ids, _) in batch.iter() {
                            if Some(seen.len()) == fail_at {
                                return Err(StoreError::Database("disk full".into()));
                            }
                            seen.push((op, user.to_string(), ids.to_string()));
                            summary.rows_upserted += 1;
                        }
                    }
                    ToWriter::Finish(states) => {
                        assert_eq!(states.len(), 1);
                        return Ok(summary);
                    }
                }
            }
        }
    }

    #[test]
    fn current_rows_reach_the_run_and_changes_reach_the_writer_in_order() {
        let mut seen = Vec::new();
        let mut fake = run(10_000, None);
        let summary = pipelined(&mut fake, writer(3, None, &mut seen)).unwrap();
        assert_eq!(fake.current.len(), 3);
        assert_eq!(summary.rows_upserted, 10_000 - 3 + 1);
        assert_eq!(seen[0], (Op::Insert, "u3".into(), "[1,20]".into()));
        assert_eq!(seen[9_996].1, "u9999");
        assert_eq!(
            seen.last().unwrap(),
            &(Op::Delete, "gone".into(), String::new())
        );
    }

    #[test]
    fn a_writer_that_fails_stops_the_run_and_its_error_is_reported() {
        // Far more rows than fit in the channel, so the run sees the hang-up.
        let mut seen = Vec::new();
        let mut fake = run(BATCH_ROWS * IN_FLIGHT * 4, None);
        let err = pipelined(&mut fake, writer(0, Some(5_000), &mut seen)).unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        assert_eq!(seen.len(), 5_000);
        // Or when the run had already sent everything.
        let mut seen = Vec::new();
        let err = pipelined(&mut run(10, None), writer(0, Some(5), &mut seen)).unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
    }

    #[test]
    fn a_run_that_fails_is_abandoned_by_the_writer() {
        let mut seen = Vec::new();
        let mut writer_said = None;
        let mut fake = run(BATCH_ROWS * 3, Some(BATCH_ROWS * 2 + 7));
        let err = pipelined(&mut fake, |current, changes| {
            let result = writer(0, None, &mut seen)(current, changes);
            writer_said = Some(result.as_ref().map_err(|e| e.to_string()).err());
            result
        })
        .unwrap_err();
        assert!(err.to_string().contains("run failed at"), "{err}");
        // The writer got the full batches sent before the failure and no
        // finish: it returned `abandoned`, so a real one rolls back.
        assert_eq!(seen.len(), BATCH_ROWS * 2);
        assert_eq!(writer_said, Some(Some(abandoned().to_string())));
    }
}
