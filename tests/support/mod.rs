//! Shared helpers for the end-to-end tests: real plugin libraries, built
//! once per test run with cargo into their own target directory (so the
//! outer `cargo test` holds no lock on it), and plugin directories made from
//! copies of them.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The reference plugin crates, as (package, library file stem).
pub const REFERENCE_PLUGINS: [&str; 5] = ["wealth", "behavior", "risk", "lifecycle", "demographic"];
/// The test-fixture crates.
pub const FIXTURES: [&str; 3] = ["misbehaving", "incompatible", "not-a-plugin"];

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// The directory holding the freshly built plugin and fixture libraries.
pub fn built_libraries() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // target/<profile>/deps/<test binary> -> target/
        let exe = std::env::current_exe().expect("test binary path");
        let target = exe
            .ancestors()
            .nth(3)
            .expect("test binary lives in target/<profile>/deps")
            .to_path_buf();
        let out = target.join("e2e-plugins");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--manifest-path"])
            .arg(workspace().join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&out);
        for name in REFERENCE_PLUGINS {
            cmd.args(["-p", &format!("tag-plugin-{name}")]);
        }
        for name in FIXTURES {
            cmd.args(["-p", &format!("tag-fixture-{name}")]);
        }
        let status = cmd
            .status()
            .expect("run cargo build for the plugin libraries");
        assert!(
            status.success(),
            "building the plugin libraries failed: {status}"
        );
        out.join("debug")
    })
}

/// Path of a built library: `plugin("wealth")` or `fixture("misbehaving")`.
fn library(stem: &str) -> PathBuf {
    let path = built_libraries().join(format!(
        "lib{}.{}",
        stem.replace('-', "_"),
        std::env::consts::DLL_EXTENSION
    ));
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// A reference plugin library.
pub fn plugin(name: &str) -> PathBuf {
    library(&format!("tag-plugin-{name}"))
}

/// A fixture library.
pub fn fixture(name: &str) -> PathBuf {
    library(&format!("tag-fixture-{name}"))
}

/// A fresh plugins directory (mode 0755) holding copies of `files` (mode
/// 0755), each under the given name.
pub fn plugins_dir(files: &[(&str, PathBuf)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod dir");
    for (name, source) in files {
        let dest = dir.path().join(name);
        std::fs::copy(source, &dest).expect("copy library");
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))
            .expect("chmod file");
    }
    dir
}

/// A plugins directory with the five reference plugins.
pub fn reference_plugins_dir() -> tempfile::TempDir {
    let files: Vec<_> = REFERENCE_PLUGINS
        .iter()
        .map(|n| (format!("{n}.so"), plugin(n)))
        .collect();
    plugins_dir(
        &files
            .iter()
            .map(|(n, p)| (n.as_str(), p.clone()))
            .collect::<Vec<_>>(),
    )
}
