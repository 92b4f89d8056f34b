//! The `tag_engine_spark` Python module (spark/), built into a wheel by
//! maturin, installed in a venv and driven from Python with pyarrow batches:
//! the eight reference tags over exported-typed data (DECIMAL, zoned
//! timestamps, dictionary and view strings, nulls) give the same user tags
//! as `tag-server run` over the same files; a file the loader rejects is
//! reported and not loaded; a plugin that panics or errs fails its tag only;
//! bad input is a Python exception.

mod support;

use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use support::*;

const AS_OF: &str = "2025-01-15";

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The venv's python with pyarrow and the freshly built module installed.
fn python() -> &'static Path {
    python::with_spark_module(&["pyarrow", "maturin"], &["pyarrow", "maturin"])
}

fn check(args: &[&str]) -> Value {
    let out = python::run_script(python(), "spark_module_check.py", args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("JSON from the check: {e}: {out}"))
}

/// `typed_export.py write` data for `users` users.
fn exported(users: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let python = python::python_with(&["pyarrow"], &["pyarrow"]);
    python::run_script(
        &python,
        "typed_export.py",
        &["write", path(dir.path()), &users.to_string(), "7"],
    );
    dir
}

/// `tag-server run` of tags 1-8 over `data`: the stored user tags.
fn host_tags(data: &Path, plugins: &Path) -> std::collections::BTreeMap<String, Vec<u32>> {
    let work = tempfile::tempdir().unwrap();
    let db = work.path().join("tags.db");
    let store = format!("sqlite://{}", db.display());
    let log = work.path().join("run.log");
    let (code, out, err) = run_with(data, plugins, "1,2,3,4,5,6,7,8", AS_OF, &store, &log, &[]);
    assert_eq!(code, 0, "tag-server run failed: {out}{err}");
    user_tags(&db)
}

#[test]
fn the_reference_tags_in_the_module_give_the_hosts_tags() {
    let data = exported(2000);
    let plugins = reference_plugins_dir();
    let result = check(&["tags", path(plugins.path()), path(data.path()), AS_OF]);
    let tags = result["tags"].as_array().unwrap();
    let ids: Vec<u64> = tags.iter().map(|t| t["tag_id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (1..=8).collect::<Vec<_>>());
    let wealth = tags.iter().find(|t| t["tag_id"] == 1).unwrap();
    assert!(wealth["plugin"]["name"]
        .as_str()
        .unwrap()
        .contains("wealth"));
    assert_eq!(wealth["plugin"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(wealth["inputs"][0][0], "user_asset_summary");
    assert_eq!(result["rejected"], serde_json::json!([]));

    let module: std::collections::BTreeMap<String, Vec<u32>> =
        serde_json::from_value(result["user_tags"].clone()).unwrap();
    let host = host_tags(data.path(), plugins.path());
    // Every tag has members and non-members, so equality is not vacuous.
    for tag in 1..=8u32 {
        let members = host.values().filter(|t| t.contains(&tag)).count();
        assert!(
            members > 0 && members < 2000,
            "tag {tag}: {members} members"
        );
    }
    assert_same_tags(&module, &host);
}

#[test]
fn a_rejected_file_is_reported_and_a_misbehaving_plugin_fails_its_tags_only() {
    let data = exported(300);
    let plugins = reference_and_misbehaving_plugins();
    let writable = plugins.path().join("risk.so");
    std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o777)).unwrap();
    let result = check(&[
        "misbehaving",
        path(plugins.path()),
        path(data.path()),
        AS_OF,
        "901",
        "1",
        "902",
        "903",
        "3",
    ]);
    let rejected = result["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0][0], path(&writable));
    let why = rejected[0][1].as_str().unwrap();
    assert!(why.contains("writable by group or others"), "{why}");

    let results = result["results"].as_array().unwrap();
    let error = |i: usize| results[i]["error"].as_str().unwrap_or("").to_string();
    assert!(
        error(0).contains("plugin panicked") && error(0).contains("fixture tag 901 always panics"),
        "{}",
        error(0)
    );
    assert!(results[0]["matched"].is_null());
    assert!(results[1]["error"].is_null(), "{}", error(1));
    assert!(!results[1]["matched"].as_array().unwrap().is_empty());
    assert_eq!(results[1]["rule_version"], "v1");
    assert!(
        error(2).contains("fixture tag 902 always fails"),
        "{}",
        error(2)
    );
    assert!(
        error(3).contains("plugin returned a mask of") && error(3).contains("rows for a batch of"),
        "{}",
        error(3)
    );
    // Tag 3 was the rejected file's: not loaded, so not evaluated.
    assert!(error(4).starts_with("tag 3 is not loaded"), "{}", error(4));
}

#[test]
fn bad_input_is_a_python_exception_with_a_precise_message() {
    let plugins = reference_plugins_dir();
    let code = r#"
import sys, pyarrow as pa, tag_engine_spark as m
e = m.Evaluator(sys.argv[1])
batch = pa.RecordBatch.from_arrays([pa.array(["x"]), pa.array([1.5])], names=["user_asset_summary.cash_balance", "user_activity_summary.risk_score"])
def fails(f, kind):
    try:
        f()
    except kind as err:
        print(type(err).__name__ + ": " + str(err))
    else:
        raise SystemExit("no exception")
fails(lambda: e.evaluate(batch, [(1, None, 1)], "15/01/2025"), ValueError)
fails(lambda: e.evaluate([1, 2], [(1, None, 1)], "2025-01-15"), TypeError)
fails(lambda: e.evaluate(batch, [1], "2025-01-15"), TypeError)
fails(lambda: m.Evaluator(sys.argv[1] + "/nope"), OSError)
r = e.evaluate(batch, [(6, None, 1), (3, None, 1)], "2025-01-15")
print(r[0]["error"])
print(r[1]["matched"])
"#;
    let out = python::run_code(python(), code, &[path(plugins.path())]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        r#"ValueError: as_of "15/01/2025" is not a YYYY-MM-DD date"#
    );
    assert!(
        lines[1].starts_with("TypeError: batch must be a pyarrow.RecordBatch"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with(
            "TypeError: each tag must be a (tag_id, rule_json or None, rule_version) tuple"
        ),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].starts_with("OSError: cannot read plugins directory"),
        "{}",
        lines[3]
    );
    assert!(
        lines[4].contains(
            "column user_asset_summary.cash_balance is Utf8, which cannot be read as float64"
        ),
        "{}",
        lines[4]
    );
    assert_eq!(lines[5], "[0]");
}
