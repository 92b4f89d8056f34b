//! The bounded priority queue of tasks waiting for a worker, and the set of
//! tasks this process is running. A plain data structure: it persists
//! nothing, starts no thread and takes no lock; the workers hold it behind
//! their mutex and tell the store about every change through the lifecycle.
//!
//! Order is priority first, then first in, first out. The capacity bounds
//! what submissions may add: a submission reserves its slot before it is
//! persisted (slow, and done without the lock), so two concurrent ones
//! cannot both take the last slot. Tasks the store hands back at a refill
//! are queued whatever the capacity (they are persisted already and would
//! otherwise wait for the next refill), but never twice.

use super::control::TaskControl;
use crate::model::{Priority, TaskRecord};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

/// A task in the heap, with its arrival number for FIFO within a priority.
struct Queued {
    priority: Priority,
    seq: u64,
    task: TaskRecord,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    /// Max-heap: higher priority first, then lower sequence (FIFO).
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then(other.seq.cmp(&self.seq))
    }
}

/// A submission was refused: the queue holds this many tasks (counting
/// reserved slots) already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full(pub usize);

/// Waiting tasks by priority, slots reserved for submissions, and the tasks
/// running here with their controls.
pub struct TaskQueue {
    heap: BinaryHeap<Queued>,
    /// Ids in `heap`, so a task is never queued twice.
    queued: HashSet<String>,
    /// Slots promised to submissions still being persisted.
    reserved: usize,
    running: HashMap<String, Arc<TaskControl>>,
    capacity: usize,
    next_seq: u64,
}

impl TaskQueue {
    /// An empty queue that accepts `capacity` submissions.
    pub fn new(capacity: usize) -> TaskQueue {
        TaskQueue {
            heap: BinaryHeap::new(),
            queued: HashSet::new(),
            reserved: 0,
            running: HashMap::new(),
            capacity,
            next_seq: 0,
        }
    }

    /// Reserves a slot for a submission about to be persisted; `Full` if
    /// the waiting and reserved tasks fill the capacity.
    pub fn reserve(&mut self) -> Result<(), Full> {
        let taken = self.heap.len() + self.reserved;
        if taken >= self.capacity {
            return Err(Full(taken));
        }
        self.reserved += 1;
        Ok(())
    }

    /// Gives back a slot [`TaskQueue::reserve`] took (the submission was
    /// persisted, or failed to be).
    pub fn release(&mut self) {
        self.reserved = self.reserved.saturating_sub(1);
    }

    /// Queues `task` unless it is queued or running already; whether it was.
    pub fn push(&mut self, task: TaskRecord) -> bool {
        if self.running.contains_key(&task.task_id) || !self.queued.insert(task.task_id.clone()) {
            return false;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Queued {
            priority: task.spec.priority,
            seq,
            task,
        });
        true
    }

    /// Takes the next task and marks it running, with a fresh control.
    pub fn pop(&mut self) -> Option<(TaskRecord, Arc<TaskControl>)> {
        let next = self.heap.pop()?;
        self.queued.remove(&next.task.task_id);
        let control = Arc::new(TaskControl::default());
        self.running
            .insert(next.task.task_id.clone(), Arc::clone(&control));
        Some((next.task, control))
    }

    /// Forgets a running task once its worker is done with it.
    pub fn done(&mut self, task_id: &str) {
        self.running.remove(task_id);
    }

    /// Takes a waiting task off the queue (it was cancelled); whether it
    /// was there.
    pub fn remove(&mut self, task_id: &str) -> bool {
        if !self.queued.remove(task_id) {
            return false;
        }
        self.heap.retain(|q| q.task.task_id != task_id);
        true
    }

    /// The control of a task running here.
    pub fn running(&self, task_id: &str) -> Option<&Arc<TaskControl>> {
        self.running.get(task_id)
    }

    /// The ids of the tasks running here.
    pub fn running_ids(&self) -> Vec<String> {
        self.running.keys().cloned().collect()
    }

    /// The controls of the tasks running here.
    pub fn controls(&self) -> impl Iterator<Item = &Arc<TaskControl>> {
        self.running.values()
    }

    /// Tasks waiting.
    pub fn queued_len(&self) -> usize {
        self.heap.len()
    }

    /// Tasks running here.
    pub fn running_len(&self) -> usize {
        self.running.len()
    }

    /// Submissions the queue accepts.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TaskSpec;

    fn task(id: &str, priority: Priority) -> TaskRecord {
        let mut task = crate::tasks::lifecycle::create(
            TaskSpec {
                priority,
                ..TaskSpec::default()
            },
            "local",
        );
        task.task_id = id.into();
        task
    }

    fn drain(queue: &mut TaskQueue) -> Vec<String> {
        std::iter::from_fn(|| queue.pop().map(|(t, _)| t.task_id)).collect()
    }

    #[test]
    fn higher_priority_first_and_first_in_first_out_within_one() {
        let mut queue = TaskQueue::new(10);
        for (id, priority) in [
            ("n1", Priority::Normal),
            ("l1", Priority::Low),
            ("h1", Priority::High),
            ("n2", Priority::Normal),
            ("h2", Priority::High),
            ("l2", Priority::Low),
            ("n3", Priority::Normal),
        ] {
            assert!(queue.push(task(id, priority)));
        }
        assert_eq!(
            drain(&mut queue),
            ["h1", "h2", "n1", "n2", "n3", "l1", "l2"]
        );
        assert_eq!((queue.queued_len(), queue.running_len()), (0, 7));
    }

    #[test]
    fn reservations_count_against_the_capacity_until_released() {
        let mut queue = TaskQueue::new(2);
        assert_eq!(queue.reserve(), Ok(()));
        assert_eq!(queue.reserve(), Ok(()));
        assert_eq!(queue.reserve(), Err(Full(2)));
        // The first submission was persisted: its slot becomes its task.
        queue.release();
        queue.push(task("a", Priority::Normal));
        assert_eq!(queue.reserve(), Err(Full(2)));
        // The second failed to persist: its slot is free again.
        queue.release();
        assert_eq!(queue.reserve(), Ok(()));
        // A running task no longer takes a slot.
        queue.release();
        queue.pop();
        assert_eq!(queue.reserve(), Ok(()));
        assert_eq!(queue.reserve(), Ok(()));
        assert_eq!(queue.reserve(), Err(Full(2)));
    }

    #[test]
    fn refilled_tasks_go_past_the_capacity() {
        let mut queue = TaskQueue::new(1);
        assert!(queue.push(task("a", Priority::Normal)));
        assert!(queue.push(task("b", Priority::Normal)));
        assert_eq!(queue.queued_len(), 2);
        assert_eq!(queue.reserve(), Err(Full(2)));
    }

    #[test]
    fn a_task_is_never_queued_twice_nor_while_it_runs() {
        let mut queue = TaskQueue::new(10);
        assert!(queue.push(task("a", Priority::Normal)));
        assert!(!queue.push(task("a", Priority::High)));
        assert_eq!(queue.queued_len(), 1);
        let (popped, _) = queue.pop().unwrap();
        assert_eq!(popped.task_id, "a");
        assert!(!queue.push(task("a", Priority::Normal)), "running");
        assert!(queue.running("a").is_some());
        assert_eq!(queue.running_ids(), ["a"]);
        queue.done("a");
        assert!(queue.running("a").is_none());
        assert!(queue.push(task("a", Priority::Normal)), "finished here");
    }

    #[test]
    fn a_cancelled_task_leaves_the_queue_and_can_come_back() {
        let mut queue = TaskQueue::new(10);
        queue.push(task("a", Priority::Normal));
        queue.push(task("b", Priority::Normal));
        assert!(queue.remove("a"));
        assert!(!queue.remove("a"));
        assert!(!queue.remove("nobody"));
        assert_eq!(drain(&mut queue), ["b"]);
        assert!(queue.push(task("a", Priority::Normal)));
        assert_eq!(drain(&mut queue), ["a"]);
    }

    #[test]
    fn each_popped_task_gets_its_own_control() {
        let mut queue = TaskQueue::new(10);
        queue.push(task("a", Priority::Normal));
        queue.push(task("b", Priority::Normal));
        let (_, a) = queue.pop().unwrap();
        let (_, b) = queue.pop().unwrap();
        a.cancel();
        assert!(a.checkpoint().is_err());
        assert!(b.checkpoint().is_ok());
        assert_eq!(queue.controls().count(), 2);
    }
}
