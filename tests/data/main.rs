//! Tests of the polars-facing pieces, through their public interfaces.
//! One test binary, so polars is linked once.

mod ffi;
mod gen;
#[cfg(target_os = "linux")]
mod gen_cli;
mod read;
mod support;
