//! The Python class `Evaluator`: Python values in and out, every error a
//! Python exception with the precise message, no panic let through.

use crate::batch::Table;
use crate::evaluate::{evaluate, Request};
use arrow_array::ffi::{FFI_ArrowArray, FFI_ArrowSchema};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyDict, PyList};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use tag_plugin_api::Date;
use tag_plugin_loader::{load_dir_with, LoadReport, RegisteredTag, TagRegistry};

/// Where private copies go when the caller names no directory:
/// `$XDG_CACHE_HOME/tag-engine-spark/plugins`,
/// `$HOME/.cache/tag-engine-spark/plugins`, else
/// `<temp dir>/tag-engine-spark-plugins-<uid>`.
fn default_copies_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    match cache {
        Some(cache) => cache.join("tag-engine-spark").join("plugins"),
        // SAFETY: geteuid has no preconditions and cannot fail.
        None => std::env::temp_dir().join(format!("tag-engine-spark-plugins-{}", unsafe {
            libc::geteuid()
        })),
    }
}

/// The plugins of one directory, loaded and checked as tag-server loads
/// them, ready to evaluate batches.
#[pyclass(frozen, module = "tag_engine_spark")]
pub struct Evaluator {
    registry: TagRegistry,
    report: LoadReport,
}

fn plugin_dict<'py>(py: Python<'py>, tag: &RegisteredTag) -> PyResult<Bound<'py, PyDict>> {
    let info = &tag.info;
    let dict = PyDict::new(py);
    dict.set_item("tag_id", info.tag_id)?;
    dict.set_item("task_class", &info.task_class)?;
    dict.set_item("name", &info.description)?;
    dict.set_item("category", &info.category)?;
    dict.set_item("version", &info.version)?;
    let inputs: Vec<(&str, &str, &str)> = info
        .inputs
        .iter()
        .map(|i| (i.table.as_str(), i.column.as_str(), i.column_type.name()))
        .collect();
    dict.set_item("inputs", inputs)?;
    dict.set_item("default_rule", &info.default_rule)?;
    let plugin = PyDict::new(py);
    plugin.set_item("name", &tag.plugin.name)?;
    plugin.set_item("version", &tag.plugin.version)?;
    plugin.set_item("sha256", &tag.plugin.sha256)?;
    dict.set_item("plugin", plugin)?;
    dict.set_item("file", tag.source.to_string_lossy())?;
    Ok(dict)
}

/// Imports `batch` (anything with `__arrow_c_array__` exporting a struct
/// array, as `pyarrow.RecordBatch` does) without copying its buffers.
fn import_batch(batch: &Bound<'_, PyAny>) -> PyResult<Table> {
    if !batch.hasattr("__arrow_c_array__")? {
        return Err(PyTypeError::new_err(format!(
            "batch must be a pyarrow.RecordBatch (an object with __arrow_c_array__, pyarrow >= 14), not {}",
            batch.get_type().name()?
        )));
    }
    let exported = batch.call_method0("__arrow_c_array__")?;
    let (schema, array): (Bound<'_, PyCapsule>, Bound<'_, PyCapsule>) = exported.extract()?;
    let named = |capsule: &Bound<'_, PyCapsule>, name: &str| -> PyResult<()> {
        match capsule.name()? {
            Some(n) if n.to_bytes() == name.as_bytes() => Ok(()),
            other => Err(PyTypeError::new_err(format!(
                "__arrow_c_array__ returned a capsule named {other:?}, expected {name:?}"
            ))),
        }
    };
    named(&schema, "arrow_schema")?;
    named(&array, "arrow_array")?;
    let schema_ptr = schema.pointer() as *const FFI_ArrowSchema;
    let array_ptr = array.pointer() as *mut FFI_ArrowArray;
    let imported = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the capsules are the C Data Interface structures their
        // names say (checked above), alive while `exported` is; the array
        // is moved out (its release left null in the capsule, as the
        // PyCapsule protocol has consumers do), the schema only borrowed.
        unsafe {
            let array = FFI_ArrowArray::from_raw(array_ptr);
            Table::from_c(array, &*schema_ptr)
        }
    }));
    match imported {
        Ok(table) => table.map_err(PyValueError::new_err),
        Err(_) => Err(PyValueError::new_err(
            "cannot import the Arrow batch: its buffers are inconsistent",
        )),
    }
}

/// `(tag_id, rule_json, rule_version)` items into requests, keeping each
/// rule version to hand back.
fn requests(tags: &Bound<'_, PyAny>) -> PyResult<(Vec<Request>, Vec<PyObject>)> {
    let mut requests = Vec::new();
    let mut versions = Vec::new();
    for item in tags.try_iter()? {
        let item = item?;
        let (tag_id, rule, version): (u32, Option<String>, PyObject) =
            item.extract().map_err(|_| {
                PyTypeError::new_err(format!(
                    "each tag must be a (tag_id, rule_json or None, rule_version) tuple, got {item}"
                ))
            })?;
        requests.push(Request { tag_id, rule });
        versions.push(version);
    }
    Ok((requests, versions))
}

#[pymethods]
impl Evaluator {
    /// Loads every plugin library in `plugins_dir` with tag-server's checks,
    /// dlopening private copies made in `copies_dir`.
    #[new]
    #[pyo3(signature = (plugins_dir, copies_dir = None))]
    fn new(plugins_dir: PathBuf, copies_dir: Option<PathBuf>) -> PyResult<Evaluator> {
        let copies = copies_dir.unwrap_or_else(default_copies_dir);
        let (registry, report) = load_dir_with(Path::new(&plugins_dir), &copies, &HashMap::new())
            .map_err(|e| PyOSError::new_err(e.to_string()))?;
        Ok(Evaluator { registry, report })
    }

    /// The loaded tags, by ascending id, as dicts.
    fn tags<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        self.registry.iter().map(|t| plugin_dict(py, t)).collect()
    }

    /// The files that were not loaded: `(file, reason)`.
    fn rejected(&self) -> Vec<(String, String)> {
        self.report
            .rejected()
            .map(|(file, why)| (file.path.to_string_lossy().into_owned(), why.to_string()))
            .collect()
    }

    /// Evaluates `tags` (`(tag_id, rule_json or None, rule_version)` items)
    /// over `batch` as of `as_of` (`YYYY-MM-DD`): per tag, in order, a dict
    /// of `tag_id`, `rule_version`, `matched` (the matching row indices, or
    /// None when the tag failed) and `error` (None, or why it failed).
    fn evaluate<'py>(
        &self,
        py: Python<'py>,
        batch: &Bound<'py, PyAny>,
        tags: &Bound<'py, PyAny>,
        as_of: &str,
    ) -> PyResult<Bound<'py, PyList>> {
        let as_of = Date::parse(as_of).ok_or_else(|| {
            PyValueError::new_err(format!("as_of {as_of:?} is not a YYYY-MM-DD date"))
        })?;
        let (requests, versions) = requests(tags)?;
        let table = import_batch(batch)?;
        let registry = &self.registry;
        let outcomes = py.allow_threads(|| {
            catch_unwind(AssertUnwindSafe(|| {
                evaluate(registry, &table, &requests, as_of)
            }))
        });
        let outcomes = outcomes.map_err(|_| {
            PyRuntimeError::new_err("internal error while evaluating the batch (a panic)")
        })?;
        let results = PyList::empty(py);
        for ((request, version), outcome) in requests.iter().zip(versions).zip(outcomes) {
            let dict = PyDict::new(py);
            dict.set_item("tag_id", request.tag_id)?;
            dict.set_item("rule_version", version)?;
            match outcome {
                Ok(mask) => {
                    dict.set_item("matched", mask.ones().collect::<Vec<_>>())?;
                    dict.set_item("error", py.None())?;
                }
                Err(error) => {
                    dict.set_item("matched", py.None())?;
                    dict.set_item("error", error)?;
                }
            }
            results.append(dict)?;
        }
        Ok(results)
    }
}
