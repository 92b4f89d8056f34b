//! The bounded priority queue and the worker pool that runs tasks.
//!
//! Workers are plain OS threads: tag computation is CPU work and never runs
//! on the async runtime's threads, so the API answers while tasks compute.
//! A task is persisted before it is queued, and reaches a terminal status
//! whatever the runner does (an error or a panic fails it). Tasks still
//! queued or running at shutdown stay `submitted` in the store and are queued
//! again at the next start.

use crate::model::{TaskRecord, TaskStatus};
use crate::store::{CancelState, Store, StoreError};
use crate::tasks::lifecycle::{self, Finished};
use crate::tasks::queue::{Full, TaskQueue};
use serde::Serialize;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

pub use crate::tasks::control::{
    panic_message, run_caught, Progress, RunError, Stop, TagProgress, TaskControl, TaskRunner,
};

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
    /// This process's name on the tasks it claims.
    owner: String,
    /// How long a claim holds without renewal.
    lease: std::time::Duration,
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

/// The outcome of a cancel request.
#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    /// It was queued and is now cancelled.
    Cancelled(Box<TaskRecord>),
    /// It is running and will stop at its next safe point, writing nothing.
    Requested,
    /// It had already finished.
    AlreadyFinished(TaskStatus),
    /// No such task.
    NotFound,
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

impl Scheduler {
    /// Starts `workers` threads over a queue of `capacity` tasks, and a
    /// lease keeper that renews this process's claims and queues the tasks
    /// the store holds as claimable: queued ones (from an earlier run or
    /// another process) and running ones whose owner's lease expired.
    pub fn start(
        store: Arc<dyn Store>,
        runner: Arc<dyn TaskRunner>,
        workers: usize,
        capacity: usize,
        lease: std::time::Duration,
    ) -> Result<Scheduler, StoreError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: TaskQueue::new(capacity),
                shutdown: false,
            }),
            wake: Condvar::new(),
            tick: Condvar::new(),
            store,
            runner,
            owner: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
            lease,
        });
        refill(&shared)?;
        let mut handles = (0..workers.max(1))
            .map(|i| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("tag-worker-{i}"))
                    .spawn(move || worker(&shared))
                    .map_err(|e| StoreError::Database(format!("cannot start worker thread: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let keeper = Arc::clone(&shared);
        handles.push(
            std::thread::Builder::new()
                .name("tag-leases".into())
                .spawn(move || keep_leases(&keeper))
                .map_err(|e| StoreError::Database(format!("cannot start the lease keeper: {e}")))?,
        );
        Ok(Scheduler {
            shared,
            workers: Arc::new(Mutex::new(handles)),
            worker_count: workers.max(1),
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
        let persisted = self.shared.store.insert_task(&task, idempotency);
        let mut state = self.shared.lock();
        state.queue.release();
        persisted?;
        state.queue.push(task);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Cancels a queued task at once, or asks a running one to stop.
    pub fn cancel(&self, task_id: &str) -> Result<CancelOutcome, StoreError> {
        let mut state = self.shared.lock();
        if let Some(control) = state.queue.running(task_id) {
            control.cancel();
            drop(state);
            // Its worker may have recorded the end a moment ago.
            return Ok(match self.shared.store.get_task(task_id)? {
                Some(task) if task.status.is_terminal() => {
                    CancelOutcome::AlreadyFinished(task.status)
                }
                _ => CancelOutcome::Requested,
            });
        }
        // Off the local queue (if it is there); the store cancels it.
        state.queue.remove(task_id);
        drop(state);
        // The store decides: another process may have claimed it meanwhile.
        Ok(match self.shared.store.cancel_task(task_id)? {
            CancelState::Cancelled => match self.shared.store.get_task(task_id)? {
                Some(task) => CancelOutcome::Cancelled(Box::new(task)),
                None => CancelOutcome::NotFound,
            },
            // Running here or in another process: it stops at its next safe point.
            CancelState::StopRequested => CancelOutcome::Requested,
            CancelState::AlreadyFinished(status) => CancelOutcome::AlreadyFinished(status),
            CancelState::NotFound => CancelOutcome::NotFound,
        })
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

/// Unix seconds now.
fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Queues every task the store says may be taken.
fn refill(shared: &Shared) -> Result<(), StoreError> {
    let tasks = shared.store.claimable_tasks(unix_now())?;
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

/// Renews this process's leases and picks up claimable tasks, a few times
/// per lease, until shutdown.
fn keep_leases(shared: &Shared) {
    let every = (shared.lease / 3).min(std::time::Duration::from_secs(1));
    loop {
        {
            let state = shared.lock();
            let (state, _) = shared
                .tick
                .wait_timeout_while(state, every, |s| !s.shutdown)
                .unwrap_or_else(|p| p.into_inner());
            if state.shutdown {
                return;
            }
        }
        let lease_until = unix_now() + shared.lease.as_secs() as i64;
        let running = shared.lock().queue.running_ids();
        match shared
            .store
            .renew_leases(&shared.owner, &running, lease_until)
        {
            // Cancels requested through another process's API.
            Ok(cancelled) => {
                let state = shared.lock();
                for id in cancelled {
                    if let Some(control) = state.queue.running(&id) {
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
    loop {
        let (queued, control) = {
            let mut state = shared.lock();
            loop {
                if state.shutdown {
                    return;
                }
                if let Some(next) = state.queue.pop() {
                    break next;
                }
                state = shared.wake.wait(state).unwrap_or_else(|p| p.into_inner());
            }
        };
        let now = unix_now();
        let lease_until = now + shared.lease.as_secs() as i64;
        match shared
            .store
            .claim_task(&queued.task_id, &shared.owner, now, lease_until)
        {
            Ok(Some(mut task)) => run_claimed(shared, &mut task, &control),
            // Another worker (here or in another process) has it, or it ended.
            Ok(None) => {}
            Err(e) => {
                tracing::error!(task_id = %queued.task_id, error = %e, "cannot claim task");
            }
        }
        shared.lock().queue.done(&queued.task_id);
    }
}

/// Runs a task this process claimed, unless it already stopped the server
/// too often.
fn run_claimed(shared: &Shared, task: &mut TaskRecord, control: &TaskControl) {
    if lifecycle::crashed_too_often(task) {
        tracing::error!(task_id = %task.task_id, attempts = task.attempts, "task stopped the server on every attempt: failed, not run again");
        if let Err(e) = shared.store.update_task(task) {
            tracing::error!(task_id = %task.task_id, error = %e, "cannot record task outcome");
        }
        return;
    }
    run_one(shared, task, control);
}

fn run_one(shared: &Shared, task: &mut TaskRecord, control: &TaskControl) {
    let started = std::time::Instant::now();
    // A task whose results (and outcome) were committed before the server
    // stopped is finished with that outcome, not run again.
    let outcome = match lifecycle::committed_outcome(task, shared.store.as_ref()) {
        Ok(Some(result)) => {
            tracing::info!(task_id = %task.task_id, "task had committed before the last stop: recorded its outcome");
            Ok(result)
        }
        Ok(None) | Err(_) => {
            tracing::info!(task_id = %task.task_id, tag_ids = ?task.spec.tag_ids, mode = task.spec.mode.as_str(), "task started");
            run_caught(shared.runner.as_ref(), task, control)
        }
    };
    if let Err(RunError::Failed(reason)) = &outcome {
        tracing::warn!(task_id = %task.task_id, reason = %reason, "task failed");
    }
    match lifecycle::finish(task, outcome) {
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
    if let Err(e) = shared.store.update_task(task) {
        tracing::error!(task_id = %task.task_id, error = %e, "cannot record task outcome");
    }
}
