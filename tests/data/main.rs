//! Tests of the polars-facing pieces, through their public interfaces.
//! One test binary, so polars is linked once.

mod ffi;
mod gen;
mod read;
mod support;
