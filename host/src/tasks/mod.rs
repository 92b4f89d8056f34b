//! The task wing, shared by the server and `tag-server run`:
//! - [`control`]: the run contract (cancellation, progress, how a run ends);
//! - [`queue`]: the bounded priority queue, a plain data structure;
//! - [`workers`]: the worker threads, their leases and shutdown
//!   ([`Scheduler`]), and [`workers::run_to_end`], the one way a task runs;
//! - [`lifecycle`]: every state change a task goes through, and the store
//!   calls behind each;
//! - [`owner`]: the name on a lease, which tells a dead process of this
//!   host from a live one or another host's.

pub mod control;
pub mod lifecycle;
pub mod owner;
pub mod queue;
pub mod workers;

pub use control::Progress;
pub use lifecycle::CancelOutcome;
pub use workers::{QueueStats, Scheduler, SubmitError};
