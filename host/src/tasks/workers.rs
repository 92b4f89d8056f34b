//! The worker pool ([`Scheduler`]) and [`run_to_end`], the one way a claimed
//! or started task is run, finished and recorded, which `tag-server run`
//! calls too.
//!
//! Workers are plain OS threads at a lower CPU priority: tag computation is
//! CPU work and never runs on the async runtime's threads, so the API
//! answers while tasks compute. A task is persisted before it is queued,
//! and reaches a terminal status whatever the runner does (an error or a
//! panic fails it). A lease keeper renews this process's claims and queues
//! what the store says may be taken. Tasks still queued or running at
//! shutdown stay `submitted` in the store and are queued again at the next
//! start. Every state change goes through [`lifecycle`].

use super::control::{run_caught, Progress, RunError, TaskControl, TaskRunner};
use super::lifecycle::{self, CancelOutcome, Claim, Finished};
use super::owner::Owner;
use super::queue::{Full, TaskQueue};
use crate::model::TaskRecord;
use crate::store::{Store, StoreError};
use serde::Serialize;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The queue and whether the pool is stopping, behind one mutex.
struct State {
    queue: TaskQueue,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes workers when tasks are queued (and at shutdown).
    wake: Condvar,
    /// Wakes the lease keeper at shutdown (its own condvar, so a
    /// notification meant for a worker never lands on it).
    tick: Condvar,
    store: Arc<dyn Store>,
    runner: Arc<dyn TaskRunner>,
    /// This pool's name on the tasks it claims.
    owner: Owner,
    /// The same, as written in the store.
    owner_name: String,
    /// How long a claim holds without renewal.
    lease: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a submission was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The queue holds `capacity` tasks already.
    #[error("the task queue is full ({0} tasks waiting)")]
    QueueFull(usize),
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The task could not be persisted.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Queue figures for `/api/v1/system/stats`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct QueueStats {
    /// Tasks waiting.
    pub queued: usize,
    /// Tasks running.
    pub running: usize,
    /// Worker threads.
    pub workers: usize,
    /// Queue capacity.
    pub capacity: usize,
}

/// The queue and its workers. Cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    shared: Arc<Shared>,
    workers: Arc<Mutex<Vec<JoinHandle<()>>>>,
    worker_count: usize,
}

/// Starts a named thread; failing to is a start-up error.
fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, StoreError> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map_err(|e| StoreError::Database(format!("cannot start thread {name}: {e}")))
}

impl Scheduler {
    /// Starts `workers` threads over a queue of `capacity` tasks, and a
    /// lease keeper that renews this process's claims and queues the tasks
    /// the store holds as claimable: queued ones (from an earlier run or
    /// another process), running ones whose owner's lease expired, and at
    /// once those of a dead process of this host.
    pub fn start(
        store: Arc<dyn Store>,
        runner: Arc<dyn TaskRunner>,
        workers: usize,
        capacity: usize,
        lease: Duration,
    ) -> Result<Scheduler, StoreError> {
        let owner = Owner::this_process();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: TaskQueue::new(capacity),
                shutdown: false,
            }),
            wake: Condvar::new(),
            tick: Condvar::new(),
            store,
            runner,
            owner_name: owner.to_string(),
            owner,
            lease,
        });
        refill(&shared)?;
        let worker_count = workers.max(1);
        let mut handles = Vec::with_capacity(worker_count + 1);
        for i in 0..worker_count {
            let shared = Arc::clone(&shared);
            handles.push(spawn(format!("tag-worker-{i}"), move || worker(&shared))?);
        }
        let keeper = Arc::clone(&shared);
        handles.push(spawn("tag-leases".into(), move || keep_leases(&keeper))?);
        Ok(Scheduler {
            shared,
            workers: Arc::new(Mutex::new(handles)),
            worker_count,
        })
    }

    /// Persists `task` (status `submitted`) and queues it.
    pub fn submit(
        &self,
        task: TaskRecord,
        idempotency: Option<(&str, &str)>,
    ) -> Result<(), SubmitError> {
        {
            let mut state = self.shared.lock();
            if state.shutdown {
                return Err(SubmitError::ShuttingDown);
            }
            if let Err(Full(n)) = state.queue.reserve() {
                return Err(SubmitError::QueueFull(n));
            }
        }
        // Persisting may be slow (a network store): not under the lock.
        let persisted = lifecycle::submit(self.shared.store.as_ref(), &task, idempotency);
        let mut state = self.shared.lock();
        state.queue.release();
        persisted?;
        state.queue.push(task);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Cancels a queued task at once, or asks a running one to stop.
    pub fn cancel(&self, task_id: &str) -> Result<CancelOutcome, StoreError> {
        let store = self.shared.store.as_ref();
        let mut state = self.shared.lock();
        if let Some(control) = state.queue.running(task_id).cloned() {
            drop(state);
            return lifecycle::cancel_running(store, &control, task_id);
        }
        // Off the local queue (if it is there); the store cancels it.
        state.queue.remove(task_id);
        drop(state);
        lifecycle::cancel(store, task_id)
    }

    /// The progress of a running task.
    pub fn progress(&self, task_id: &str) -> Option<Progress> {
        self.shared
            .lock()
            .queue
            .running(task_id)
            .map(|c| c.progress())
    }

    /// Queue figures.
    pub fn stats(&self) -> QueueStats {
        let state = self.shared.lock();
        QueueStats {
            queued: state.queue.queued_len(),
            running: state.queue.running_len(),
            workers: self.worker_count,
            capacity: state.queue.capacity(),
        }
    }

    /// Stops taking tasks, asks running ones to stop at their next safe
    /// point, and waits for the workers. Unfinished tasks stay `submitted`.
    pub fn shutdown(&self) {
        {
            let mut state = self.shared.lock();
            state.shutdown = true;
            for control in state.queue.controls() {
                control.shut_down();
            }
        }
        self.shared.wake.notify_all();
        self.shared.tick.notify_all();
        let handles = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()));
        for handle in handles {
            let _ = handle.join();
        }
    }
}

/// The niceness of worker threads (and of the threads they start).
const WORKER_NICENESS: i32 = 10;

/// Lowers the calling thread's CPU priority, so that on a busy machine the
/// HTTP threads run first and the API stays responsive while runs compute.
/// Threads started from it (a run's results writer, and polars' pool when
/// a run creates it) inherit the priority. Failing to lower it only costs
/// latency, so errors are ignored.
#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: plain system calls on the calling thread's own id.
    unsafe {
        libc::setpriority(
            libc::PRIO_PROCESS,
            libc::gettid() as libc::id_t,
            WORKER_NICENESS,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// Queues every task the store says may be taken, after queueing again
/// those of this host's dead processes.
fn refill(shared: &Shared) -> Result<(), StoreError> {
    lifecycle::requeue_orphans(shared.store.as_ref(), &shared.owner)?;
    let tasks = lifecycle::claimable(shared.store.as_ref())?;
    let mut state = shared.lock();
    let mut added = false;
    for task in tasks {
        added |= state.queue.push(task);
    }
    if added {
        shared.wake.notify_all();
    }
    Ok(())
}

/// Waits `every`, or less at shutdown; false once the pool is stopping.
fn tick(shared: &Shared, every: Duration) -> bool {
    let state = shared.lock();
    let (state, _) = shared
        .tick
        .wait_timeout_while(state, every, |s| !s.shutdown)
        .unwrap_or_else(|p| p.into_inner());
    !state.shutdown
}

/// Renews this process's leases and picks up claimable tasks, a few times
/// per lease, until shutdown.
fn keep_leases(shared: &Shared) {
    let every = (shared.lease / 3).min(Duration::from_secs(1));
    while tick(shared, every) {
        let running = shared.lock().queue.running_ids();
        match lifecycle::renew(
            shared.store.as_ref(),
            &shared.owner_name,
            &running,
            shared.lease,
        ) {
            // Cancels requested through another process's API.
            Ok(cancelled) => {
                let state = shared.lock();
                for id in cancelled {
                    if let Some(control) = state.queue.running(&id) {
                        tracing::info!(task_id = %id, "cancel requested through another process: stopping at the next safe point");
                        control.cancel();
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew task leases"),
        }
        if let Err(e) = refill(shared) {
            tracing::warn!(error = %e, "cannot read claimable tasks");
        }
    }
}

fn worker(shared: &Shared) {
    lower_priority();
    // polars starts its thread pool on first use; starting it here makes
    // its threads inherit this thread's priority.
    polars_core::runtime::THREAD_POOL.current_num_threads();
    while let Some((queued, control)) = next_task(shared) {
        work_on(shared, &queued.task_id, &control);
        shared.lock().queue.done(&queued.task_id);
    }
}

/// The next queued task (now in the running set), waiting for one; `None`
/// at shutdown.
fn next_task(shared: &Shared) -> Option<(TaskRecord, Arc<TaskControl>)> {
    let mut state = shared.lock();
    loop {
        if state.shutdown {
            return None;
        }
        if let Some(next) = state.queue.pop() {
            return Some(next);
        }
        state = shared.wake.wait(state).unwrap_or_else(|p| p.into_inner());
    }
}

/// Claims task `task_id` and, if this worker got it, runs it to its end.
fn work_on(shared: &Shared, task_id: &str, control: &TaskControl) {
    let store = shared.store.as_ref();
    match lifecycle::claim(store, task_id, &shared.owner_name, shared.lease) {
        Ok(Claim::Run(mut task)) => {
            if let Err(e) = run_to_end(store, shared.runner.as_ref(), &mut task, control) {
                tracing::error!(task_id = %task_id, error = %e, "cannot record task outcome");
            }
        }
        Ok(Claim::CrashedTooOften(task)) => {
            tracing::error!(task_id = %task_id, attempts = task.attempts, "task stopped the server on every attempt: failed, not run again");
        }
        Ok(Claim::Taken) => {}
        Err(e) => tracing::error!(task_id = %task_id, error = %e, "cannot claim task"),
    }
}

/// Runs a started task to its end: the outcome its run committed before
/// the process last stopped if there is one, else a run of `runner` (a
/// panic fails it); then the status ([`lifecycle::finish`]), the log line,
/// the metrics, and the task recorded in `store`. The pool's workers and
/// `tag-server run` both call it; `Err` only if the store could not record
/// the end.
pub fn run_to_end(
    store: &dyn Store,
    runner: &dyn TaskRunner,
    task: &mut TaskRecord,
    control: &TaskControl,
) -> Result<Finished, StoreError> {
    let started = Instant::now();
    let outcome = match lifecycle::committed_outcome(task, store) {
        Ok(Some(result)) => {
            tracing::info!(task_id = %task.task_id, "task had committed before the last stop: recorded its outcome");
            Ok(result)
        }
        // If the store cannot say, the task runs as if it had not
        // committed: its own store calls then succeed or fail on their own.
        Ok(None) | Err(_) => {
            tracing::info!(task_id = %task.task_id, tag_ids = ?task.spec.tag_ids, mode = task.spec.mode.as_str(), "task started");
            run_caught(runner, task, control)
        }
    };
    if let Err(RunError::Failed(reason)) = &outcome {
        tracing::warn!(task_id = %task.task_id, reason = %reason, "task failed");
    }
    let finished = lifecycle::finish(task, outcome);
    match finished {
        Finished::Requeued => {
            tracing::info!(task_id = %task.task_id, "task stopped by shutdown: queued again at the next start");
        }
        Finished::Terminal(status) => {
            tracing::info!(task_id = %task.task_id, status = status.as_str(), "task finished");
            crate::metrics::metrics().task_finished(
                status.as_str(),
                started.elapsed().as_secs_f64(),
                task.result.as_ref(),
            );
        }
    }
    lifecycle::record(store, task)?;
    Ok(finished)
}

/// What the tests of a task's end share (the pool's here, the CLI's in
/// `cli.rs`): a run committed before its process stopped.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::model::{now_timestamp, RunReport};
    use crate::store::RunStart;

    /// A runner that fails the task if it is asked to run it at all.
    pub struct MustNotRun;
    impl TaskRunner for MustNotRun {
        fn run(&self, _: &TaskRecord, _: &TaskControl) -> Result<RunReport, RunError> {
            Err(RunError::Failed(
                "ran a task whose run had committed".into(),
            ))
        }
    }

    /// Commits a run of `task_id` with its outcome, as a process that then
    /// stopped before recording the task's end; the outcome.
    pub fn commit_outcome(store: &dyn Store, task_id: &str) -> RunReport {
        let committed = RunReport {
            total_users: 3,
            ..RunReport::default()
        };
        let start = RunStart {
            task_id: task_id.to_string(),
            now: now_timestamp(),
            tags: vec![],
        };
        store
            .begin_run(&start)
            .unwrap()
            .commit(&[], &committed)
            .unwrap();
        committed
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{self, MustNotRun};
    use super::*;
    use crate::model::{TaskSpec, TaskStatus};
    use crate::store::sqlite::SqliteStore;

    /// The task once it reached a terminal status.
    fn ended(store: &dyn Store, task_id: &str) -> TaskRecord {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let task = store.get_task(task_id).unwrap().expect("the task");
            if task.status.is_terminal() {
                return task;
            }
            assert!(Instant::now() < deadline, "{task:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_worker_records_an_outcome_committed_before_the_last_stop() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("tags.db")).unwrap());
        let spec = TaskSpec {
            tag_ids: vec![1],
            ..TaskSpec::default()
        };
        let task = lifecycle::create(spec, "local");
        // An earlier process committed the run, then stopped before it
        // recorded the task's end.
        let committed = testing::commit_outcome(store.as_ref(), &task.task_id);
        let pool = Scheduler::start(
            Arc::clone(&store),
            Arc::new(MustNotRun),
            1,
            4,
            Duration::from_secs(30),
        )
        .unwrap();
        pool.submit(task.clone(), None).unwrap();
        let done = ended(store.as_ref(), &task.task_id);
        pool.shutdown();
        assert_eq!(done.status, TaskStatus::Completed, "{:?}", done.error);
        assert_eq!(done.result, Some(committed.recovered()));
        assert_eq!(done.attempts, 1);
    }
}
