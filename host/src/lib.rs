//! # tag-host
//!
//! The `tag-server` binary's library: it loads tag plugins, and (as the
//! engine grows) computes user tags over parquet data and serves the HTTP API.
//!
//! ## Layout
//! - [`plugins`]: scan a directory, verify and load each library, report
//!   every file's outcome; the sample batch of `plugins check`.
//! - [`registry`]: the loaded tags, and checked calls into their plugins.
//! - [`cli`]: the command line.

pub mod cli;
pub mod plugins;
pub mod registry;
