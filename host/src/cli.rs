//! The `tag-server` command line.

use crate::plugins::{self, sample::sample_batch, Outcome};
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tag_plugin_api::{Date, Rule};

/// tag-server: computes user tags with plugins.
#[derive(Debug, Parser)]
#[command(name = "tag-server", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the plugins found in the plugins directory and why any were
    /// rejected; exits non-zero if any file was rejected.
    Plugins(PluginsArgs),
}

/// `tag-server plugins`.
#[derive(Debug, clap::Args)]
pub struct PluginsArgs {
    /// Directory of plugin libraries [default: the directory of the
    /// tag-server executable, where cargo puts the plugins it builds].
    #[arg(long, env = "TAG_PLUGINS_DIR", global = true)]
    pub plugins_dir: Option<PathBuf>,
    /// `check FILE`: load one library and run each of its tags on a sample batch.
    #[command(subcommand)]
    pub action: Option<PluginsAction>,
}

/// Subcommands of `tag-server plugins`.
#[derive(Debug, Subcommand)]
pub enum PluginsAction {
    /// Load one plugin library and evaluate each of its tags' default rules
    /// on a built-in sample batch, to verify a plugin before shipping it.
    Check {
        /// The library file (.so).
        file: PathBuf,
        /// Reference date for date rules (YYYY-MM-DD) [default: today, UTC].
        #[arg(long, value_parser = parse_date)]
        as_of: Option<Date>,
    },
}

/// Parses a `YYYY-MM-DD` argument.
pub fn parse_date(text: &str) -> Result<Date, String> {
    Date::parse(text).ok_or_else(|| format!("\"{text}\" is not a YYYY-MM-DD date"))
}

/// The plugins directory used when none is given: next to the executable.
pub fn default_plugins_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs the command line; what `main` returns.
pub fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Plugins(args) => match args.action {
            None => list_plugins(&args.plugins_dir.unwrap_or_else(default_plugins_dir), out),
            Some(PluginsAction::Check { file, as_of }) => {
                check_plugin(&file, as_of.unwrap_or_else(Date::today_utc), out)
            }
        },
    }
}

fn list_plugins(dir: &Path, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let (_, report) = plugins::load_dir(dir)?;
    writeln!(out, "plugins directory: {}", dir.display())?;
    write!(out, "{report}")?;
    Ok(if report.rejected().next().is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn check_plugin(file: &Path, as_of: Date, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let (registry, report) = plugins::load_file_alone(file);
    writeln!(out, "file:    {}", file.display())?;
    writeln!(out, "sha256:  {}", report.sha256)?;
    let plugin = match report.outcome {
        Outcome::Rejected(reason) => {
            writeln!(out, "REJECTED: {reason}")?;
            return Ok(ExitCode::FAILURE);
        }
        Outcome::Loaded(plugin) => plugin,
    };
    writeln!(
        out,
        "plugin:  {} {} (plugin-api {})",
        plugin.name, plugin.version, plugin.api_version
    )?;
    writeln!(out, "as_of:   {as_of}")?;
    let mut failed = false;
    for tag in registry.iter() {
        let info = &tag.info;
        let label = format!(
            "tag {} {} ({})",
            info.tag_id, info.task_class, info.description
        );
        let checked = tag
            .validate_rule(&info.default_rule)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                let rule = Rule::parse(&info.default_rule).map_err(|e| e.to_string())?;
                let batch = sample_batch(info, &rule, as_of);
                let mask = batch
                    .with_ffi(|ffi| tag.evaluate(ffi, &info.default_rule, as_of))
                    .map_err(|e| e.to_string())?;
                Ok((batch.num_rows(), mask.count_ones()))
            });
        match checked {
            Ok((rows, matched)) => writeln!(
                out,
                "ok      {label}: default rule on {rows} sample rows, {matched} matched"
            )?,
            Err(reason) => {
                failed = true;
                writeln!(out, "FAILED  {label}: {reason}")?;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
