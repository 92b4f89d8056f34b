//! Spark as a run's executor: the PySpark job of `spark/` (the tags'
//! plugins evaluated in Spark's executors) submitted with `spark-submit`,
//! followed, and its staged output read back for the engine to commit.
//!
//! - [`settings`]: the profile's `[spark]` table and what it resolves to.
//! - [`submit`]: the `spark-submit` process: started in a process group of
//!   its own, its driver log, killed on cancel, its error when it fails.
//! - [`status`]: the driver's REST API (`/api/v1/applications/...`): how
//!   many of the application's tasks are done.
//! - [`staged`]: the job's `_summary.json` and its parquet parts, one part
//!   at a time.
//!
//! Nothing here knows the engine: [`crate::engine::spark`] plans, calls
//! these and commits.

pub mod settings;
pub mod staged;
pub mod status;
pub mod submit;

pub use settings::SparkSettings;
