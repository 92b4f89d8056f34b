//! The one-shot commands: `plugins`, `plugins check`, `gen-data`, `run`.

use crate::config::{Config, GenDataArgs, PluginsAction, PluginsArgs, RunArgs};
use crate::data::gen::{gen_data_with, GenOptions};
use crate::model::{Priority, TaskSpec, TaskStatus};
use crate::plugins::{self, sample::sample_batch, Outcome};
use crate::scheduler::{run_caught, RunError, TaskControl};
use crate::server::Core;
use crate::tasks::lifecycle;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use tag_plugin_api::{Date, Rule};

/// `tag-server plugins [check FILE]`.
pub fn plugins_command(
    config: &Config,
    args: PluginsArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    match args.action {
        None => list_plugins(config, out),
        Some(PluginsAction::Check { file, as_of }) => check_plugin(
            &file,
            &config.plugin_copies_dir(),
            as_of.unwrap_or_else(Date::today_utc),
            out,
        ),
    }
}

fn list_plugins(config: &Config, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let dir = config.plugins_dir();
    let (_, report) = plugins::load_dir_with(&dir, &config.plugin_copies_dir())?;
    writeln!(out, "plugins directory: {}", dir.display())?;
    write!(out, "{report}")?;
    Ok(if report.rejected().next().is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn check_plugin(
    file: &Path,
    copies: &Path,
    as_of: Date,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let (registry, report) = plugins::load_file_alone(file, copies);
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

/// `tag-server gen-data`.
pub fn gen_data_command(
    config: &Config,
    args: GenDataArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let dir = match (args.out, config.data_dir.local()) {
        (Some(dir), _) => dir,
        (None, Some(dir)) => dir.to_path_buf(),
        (None, None) => anyhow::bail!(
            "gen-data writes local files: data_dir is {}, give --out DIR",
            config.data_dir
        ),
    };
    let options = GenOptions {
        users: args.users,
        seed: args.seed,
        reference_date: args.reference_date.unwrap_or_else(Date::today_utc).days(),
        ..GenOptions::default()
    };
    let summary = gen_data_with(&dir, &options)?;
    writeln!(
        out,
        "wrote {} users to {} in {:.2} s (reference date {}): {}",
        args.users,
        dir.display(),
        summary.elapsed.as_secs_f64(),
        Date(summary.reference_date),
        summary
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `tag-server run`: one task through the server's engine and store; the
/// task is recorded like a triggered one, with the same lifecycle.
pub fn run_command(
    config: &Config,
    args: RunArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let core = Core::open(config)?;
    let mut tag_ids = args.tag_ids.clone();
    tag_ids.sort_unstable();
    tag_ids.dedup();
    let spec = TaskSpec {
        tag_ids,
        user_ids: args.user_ids,
        mode: args.mode,
        priority: Priority::Normal,
        as_of: args.as_of.map(|d| d.to_string()),
        retry_of: None,
    };
    let registry = core
        .registry
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let Err(unknown) = lifecycle::check(&spec, &registry) {
        anyhow::bail!(
            "{unknown} (available: {})",
            lifecycle::list(&unknown.available)
        );
    }
    let mut task = lifecycle::create(spec, config.env.as_str());
    lifecycle::start(&mut task);
    core.store.insert_task(&task, None)?;
    let outcome = run_caught(core.engine.as_ref(), &task, &TaskControl::default());
    if let Err(RunError::Failed(reason)) = &outcome {
        tracing::warn!(task_id = %task.task_id, reason = %reason, "task failed");
    }
    lifecycle::finish(&mut task, outcome);
    core.store.update_task(&task)?;
    writeln!(out, "{}", serde_json::to_string_pretty(&task)?)?;
    Ok(if task.status == TaskStatus::Completed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
