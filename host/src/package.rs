//! `tag-server spark-package --out DIR`: one folder to upload for running
//! the tags on a Spark cluster (or AWS Glue): the `tag_engine_spark`
//! wheel, the job script (this build's), and the plugin libraries that pass
//! tag-server's own checks, each listed with its SHA-256 in `SHA256SUMS`
//! and `manifest.json`.

use crate::config::{Config, SparkPackageArgs};
use crate::spark::settings::{PACKAGE_JOB, PACKAGE_PLUGINS};
use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tag_plugin_loader::{self as plugins, LoadedPlugin, PluginFile};

/// The job script this build ships (the wheel holds the same as
/// `tag_engine_spark.job`).
const JOB: &str = include_str!("../../spark/python/tag_engine_spark/job.py");
/// The wheel's file name starts so.
const WHEEL_PREFIX: &str = "tag_engine_spark-";

/// Writes the package; lists what it holds and how to submit it.
pub fn spark_package_command(
    config: &Config,
    args: SparkPackageArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let wheel = match args.wheel {
        Some(wheel) => wheel,
        None => find_wheel()?,
    };
    let dir = args.out;
    let libraries = dir.join(PACKAGE_PLUGINS);
    if libraries.exists() {
        std::fs::remove_dir_all(&libraries)
            .with_context(|| format!("removing the old {}", libraries.display()))?;
    }
    std::fs::create_dir_all(&libraries)
        .with_context(|| format!("creating {}", libraries.display()))?;
    let plugins_dir = config.plugins_dir();
    let (_, report) = plugins::load_dir_with(
        &plugins_dir,
        &config.plugin_copies_dir(),
        &Default::default(),
    )
    .with_context(|| format!("scanning {}", plugins_dir.display()))?;
    for (file, why) in report.rejected() {
        writeln!(out, "not packaged: {}: {why}", file.path.display())?;
    }
    let loaded: Vec<(&PluginFile, &LoadedPlugin)> = report.loaded().collect();
    if loaded.is_empty() {
        bail!(
            "no plugin in {} passed the checks: nothing to package",
            plugins_dir.display()
        );
    }
    let mut sums = Vec::new();
    let mut listed = Vec::new();
    for (file, plugin) in &loaded {
        let name = file.path.file_name().context("a plugin file name")?;
        let to = libraries.join(name);
        copy_checked(&file.path, &to, &file.sha256)?;
        let relative = format!("{PACKAGE_PLUGINS}/{}", name.to_string_lossy());
        sums.push((file.sha256.clone(), relative.clone()));
        let tags: Vec<u32> = plugin.tags.iter().map(|t| t.tag_id).collect();
        listed.push(serde_json::json!({"file": relative, "sha256": file.sha256,
            "plugin": plugin.name, "version": plugin.version, "tag_ids": tags}));
    }
    let wheel_name = wheel
        .file_name()
        .context("a wheel file name")?
        .to_string_lossy()
        .into_owned();
    let wheel_sum = sha256_of(&wheel)?;
    copy_checked(&wheel, &dir.join(&wheel_name), &wheel_sum)?;
    sums.push((wheel_sum.clone(), wheel_name.clone()));
    let job = dir.join(PACKAGE_JOB);
    std::fs::write(&job, JOB).with_context(|| format!("writing {}", job.display()))?;
    sums.push((
        hex(&Sha256::digest(JOB.as_bytes())),
        PACKAGE_JOB.to_string(),
    ));
    write_lists(&dir, &sums, &listed, &wheel_name)?;
    summary(out, &dir, &wheel_name, &listed)?;
    Ok(ExitCode::SUCCESS)
}

/// `SHA256SUMS` (as `sha256sum -c` reads it) and `manifest.json`.
fn write_lists(
    dir: &Path,
    sums: &[(String, String)],
    plugins: &[serde_json::Value],
    wheel: &str,
) -> anyhow::Result<()> {
    let text: String = sums
        .iter()
        .map(|(sum, file)| format!("{sum}  {file}\n"))
        .collect();
    std::fs::write(dir.join("SHA256SUMS"), text).context("writing SHA256SUMS")?;
    let manifest = serde_json::json!({
        "tag_server": env!("CARGO_PKG_VERSION"),
        "job": PACKAGE_JOB,
        "wheel": wheel,
        "plugins_dir": PACKAGE_PLUGINS,
        "plugins": plugins,
    });
    let text = serde_json::to_string_pretty(&manifest)?;
    std::fs::write(dir.join("manifest.json"), text + "\n").context("writing manifest.json")?;
    Ok(())
}

fn summary(
    out: &mut dyn Write,
    dir: &Path,
    wheel: &str,
    plugins: &[serde_json::Value],
) -> anyhow::Result<()> {
    writeln!(out, "spark package: {}", dir.display())?;
    writeln!(out, "  {PACKAGE_JOB}  the job (spark-submit's entry point)")?;
    writeln!(out, "  {wheel}  pip install it on the driver and executors")?;
    for p in plugins {
        writeln!(
            out,
            "  {}  tags {}",
            p["file"].as_str().unwrap_or(""),
            p["tag_ids"]
        )?;
    }
    writeln!(out, "  SHA256SUMS, manifest.json")?;
    writeln!(
        out,
        "set [spark] package = \"{}\" in the profile (or plugins_dir to where the executors find {PACKAGE_PLUGINS}/)",
        dir.display()
    )?;
    Ok(())
}

/// Copies `from` to `to` (mode 0644), checking the copy's SHA-256 is
/// `sha256` (a file replaced while packaging is refused).
fn copy_checked(from: &Path, to: &Path, sha256: &str) -> anyhow::Result<()> {
    let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    let got = hex(&Sha256::digest(&bytes));
    if got != sha256 {
        bail!(
            "{} changed while it was packaged (SHA-256 {got}, checked {sha256}): run again",
            from.display()
        );
    }
    std::fs::write(to, &bytes).with_context(|| format!("writing {}", to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("setting the mode of {}", to.display()))?;
    Ok(())
}

fn sha256_of(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex(&Sha256::digest(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The newest `tag_engine_spark` wheel where `maturin build` puts it: in
/// `$TAG_SPARK_WHEEL_DIR`, else `wheels/` beside this program's directory
/// (cargo's target directory).
fn find_wheel() -> anyhow::Result<PathBuf> {
    let dirs: Vec<PathBuf> = std::env::var_os("TAG_SPARK_WHEEL_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            std::env::current_exe()
                .ok()
                .and_then(|exe| Some(exe.parent()?.parent()?.join("wheels"))),
        )
        .collect();
    let mut wheels: Vec<(std::time::SystemTime, PathBuf)> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(WHEEL_PREFIX) && n.ends_with(".whl"))
        })
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    wheels.sort();
    match wheels.pop() {
        Some((_, wheel)) => Ok(wheel),
        None => bail!(
            "no {WHEEL_PREFIX}*.whl in {}: build it with `maturin build --release -m spark/Cargo.toml` and pass --wheel FILE",
            dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(" or ")
        ),
    }
}
