//! A Python interpreter for the tests that need a real third-party peer
//! (an S3 server, parquet written by pyarrow or DuckDB): a virtual
//! environment under cargo's test scratch directory, created on first use
//! and given the packages the caller needs from PyPI.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// The environment's directory (kept between runs with the target directory).
pub fn venv() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python-venv")
}

/// The environment's `python`, with `modules` importable: `packages` (pip
/// requirement strings) are installed when one of them is not.
pub fn python_with(modules: &[&str], packages: &[&str]) -> PathBuf {
    static SETUP: Mutex<()> = Mutex::new(());
    let _one = SETUP.lock().unwrap_or_else(|p| p.into_inner());
    let dir = venv();
    let python = dir.join("bin").join("python");
    if !python.exists() {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&dir)
            .status()
            .expect("python3 is needed for this test");
        assert!(status.success(), "python3 -m venv {} failed", dir.display());
    }
    let imports = format!("import {}", modules.join(", "));
    let present = Command::new(&python)
        .args(["-c", &imports])
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        let output = pip_install(&python)
            .args(packages)
            .output()
            .expect("run pip");
        assert!(
            output.status.success(),
            "pip install {packages:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    python
}

/// `python -m pip install --quiet`, to which the caller adds what to install.
pub fn pip_install(python: &std::path::Path) -> Command {
    let mut command = Command::new(python);
    command.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]);
    command
}

/// Runs `tests/support/<script>` with `python` and `args`, asserting it
/// succeeds; its stdout.
pub fn run_script(python: &std::path::Path, script: &str, args: &[&str]) -> String {
    let path = super::workspace().join("tests/support").join(script);
    run(python, path.as_os_str(), args, script)
}

/// Runs the program `code` (`python -c`) with `args`, asserting it
/// succeeds; its stdout.
pub fn run_code(python: &std::path::Path, code: &str, args: &[&str]) -> String {
    run(
        python,
        "-c".as_ref(),
        &[&[code], args].concat(),
        "python -c",
    )
}

fn run(python: &std::path::Path, first: &std::ffi::OsStr, args: &[&str], what: &str) -> String {
    let output = Command::new(python)
        .arg(first)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(
        output.status.success(),
        "{what} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// [`with_spark_module`] with PySpark (and the pandas its `mapInArrow`
/// needs): the Python of the tests that run the job under spark-submit.
pub fn with_pyspark() -> &'static std::path::Path {
    with_spark_module(
        &["pyarrow", "maturin", "pyspark", "pandas"],
        &["pyarrow", "maturin", "pyspark", "pandas>=2.2,<3"],
    )
}

/// Where [`with_spark_module`] leaves the wheel it built: a folder per
/// test binary (they build at once), kept until the next build.
pub fn wheel_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary");
    let name = exe
        .file_stem()
        .expect("a name")
        .to_string_lossy()
        .into_owned();
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("wheel-{name}"))
}

/// The venv's python with `modules` importable (from `packages`) and the
/// `tag_engine_spark` wheel freshly built from spark/ (maturin, a debug
/// build) installed: built once per test binary.
pub fn with_spark_module(modules: &[&str], packages: &[&str]) -> &'static std::path::Path {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON.get_or_init(|| {
        let python = python_with(modules, packages);
        let wheels = wheel_dir();
        let _ = std::fs::remove_dir_all(&wheels);
        std::fs::create_dir_all(&wheels).unwrap();
        let manifest = super::workspace().join("spark/Cargo.toml");
        let run = |cmd: &mut Command, what: &str| {
            let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(
                out.status.success(),
                "{what} failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(
            Command::new(&python)
                .args(["-m", "maturin", "build", "--quiet", "-m"])
                .arg(&manifest)
                .arg("--out")
                .arg(&wheels),
            "maturin build",
        );
        let wheel = std::fs::read_dir(&wheels)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "whl"))
            .expect("maturin wrote a wheel");
        assert!(
            wheel.to_string_lossy().contains("abi3"),
            "not an abi3 wheel: {}",
            wheel.display()
        );
        run(
            pip_install(&python)
                .args(["--force-reinstall", "--no-deps"])
                .arg(&wheel),
            "pip install the wheel",
        );
        python
    })
}
