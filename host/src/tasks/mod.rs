//! The task wing, shared by the server and `tag-server run`:
//! - [`control`]: the run contract (cancellation, progress, how a run ends);
//! - [`queue`]: the bounded priority queue, a plain data structure;
//! - [`workers`]: the worker threads, their leases and shutdown
//!   ([`Scheduler`]), and [`workers::run_to_end`], the one way a task runs;
//! - [`lifecycle`]: every state change a task goes through, and the store
//!   calls behind each.

pub mod control;
pub mod lifecycle;
pub mod queue;
pub mod workers;

pub use control::Progress;
pub use lifecycle::CancelOutcome;
pub use workers::{QueueStats, Scheduler, SubmitError};
