//! `tag_engine_spark`: tag plugins evaluated over Arrow record batches from
//! Python, for Spark executors (`mapInArrow`). Plugins are loaded through
//! `tag-plugin-loader` with exactly tag-server's trust, ABI and tag-ownership
//! checks; batches come in through the Arrow C Data Interface and their
//! buffers are lent to the plugins (see [`columns`] for what is converted).
//! The Python API is described in `spark/README.md`.

pub mod batch;
pub mod columns;
pub mod evaluate;
mod python;

use pyo3::prelude::*;

/// The native module, `tag_engine_spark._native`; the package
/// `tag_engine_spark` (spark/python/) re-exports it.
#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<python::Evaluator>()?;
    module.add("API_VERSION", tag_plugin_api::API_VERSION)?;
    Ok(())
}
