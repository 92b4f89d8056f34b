//! # tag-host
//!
//! The `tag-server` binary's library: it loads tag plugins, computes user
//! tags over parquet data with polars, stores results, and serves the API.
//!
//! ## Layout
//! - [`config`]: the command line (clap), every flag documented.
//! - [`plugins`]: scan a directory, verify and load each library, report
//!   every file's outcome; the sample batch of `plugins check`.
//! - [`registry`]: the loaded tags, and checked calls into their plugins.
//! - [`catalog`]: the current scan and registry, replaced whole by a reload.
//! - [`data`]: polars I/O: sample data, projected batched reads with type
//!   coercion, zero-copy FFI batches.
//! - [`engine`]: one task end to end: read, join, evaluate, diff, write.
//! - [`audience`]: the expression language over tags and the tags'
//!   members as roaring bitmaps.
//! - [`members`]: audiences as served: the live bitmaps, expressions
//!   resolved against the loaded tags, members exported.
//! - [`tasks`]: the task wing: the bounded priority queue, the worker
//!   threads, the run contract and every state change of a task;
//!   [`progress`]: how far a running task has got.
//! - [`spark`]: `spark-submit`, the driver's REST API and the staged output
//!   of the PySpark job, for runs with `--executor spark`.
//! - [`store`]: tasks, rules and `user_tags` (SQLite by default).
//! - [`http`]: the API, one module per resource; [`console`]: the web
//!   console's pages; [`auth`]: tokens, roles and the console's session,
//!   for both; [`throttle`]: failed authentications per client address.
//! - [`server`]: start-up and shutdown; [`cli`]: the one-shot commands
//!   ([`package`]: `spark-package`; [`export`]: `export`)
//!   ([`watch`]: `tag-server run`'s progress on stderr).
//! - [`disk`]: free space where files go, byte counts for people;
//!   [`memory`]: sizes, the machine's memory and the default run limit.
//! - [`logging`]: log set-up, logged panics, the flat JSON log format;
//!   [`signals`]: the stop signals; [`alloc`]: the allocator's tuning.

pub mod alloc;
pub mod audience;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod console;
pub mod data;
pub mod disk;
pub mod engine;
pub mod export;
pub mod http;
pub mod logging;
pub mod members;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod package;
pub mod plugins;
pub mod progress;
pub mod server;
pub mod signals;
pub mod spark;
pub mod store;
pub mod tasks;
pub mod throttle;
pub mod watch;
