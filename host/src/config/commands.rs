//! Which settings each command uses. The settings are global flags (so
//! `tag-server --data-dir D run` and `tag-server run --data-dir D` both
//! work), but a command's `--help` lists only those it uses (its help is
//! rendered from a copy holding just those), and a flag it does not use is
//! refused rather than ignored.

use super::Cli;
use clap::{ArgMatches, CommandFactory};

/// What every command reads: the profile.
const PROFILE: [&str; 2] = ["env", "config_dir"];
/// Log lines on stderr only (commands whose stdout is their output).
const STDERR_LOG: [&str; 2] = ["debug", "log_level"];

/// The settings the command at `path` uses (`[]`: serving, which uses all,
/// and gives `None`).
pub fn settings_of(path: &[&str]) -> Option<Vec<&'static str>> {
    let own: &[&str] = match path {
        [] => return None,
        ["gen-data"] => &["data_dir"],
        ["plugins"] | ["spark-package"] => &["plugins_dir", "plugin_copies_dir"],
        ["plugins", "check"] => &["plugin_copies_dir", "data_dir"],
        ["export"] => &["plugins_dir", "plugin_copies_dir", "store"],
        ["run", ..] => &[
            "log_format",
            "log_file",
            "plugins_dir",
            "plugin_copies_dir",
            "data_dir",
            "s3_cache_dir",
            "store",
            "batch_rows",
            "memory_limit",
            "spill_dir",
            "partition_users",
            "executor",
        ],
        _ => &[],
    };
    Some(
        PROFILE
            .iter()
            .chain(&STDERR_LOG)
            .chain(own)
            .copied()
            .collect(),
    )
}

/// The command a parse chose: `[]` to serve, `["plugins", "check"]`, ...
pub fn invoked(matches: &ArgMatches) -> Vec<&str> {
    let mut path = Vec::new();
    let mut at = matches;
    while let Some((name, sub)) = at.subcommand() {
        path.push(name);
        at = sub;
    }
    path
}

/// Whether the command at `path` uses setting `id`.
pub fn uses(path: &[&str], id: &str) -> bool {
    settings_of(path).is_none_or(|ids| ids.contains(&id))
}

/// The command line parser: [`Cli`], with each command's help listing only
/// the settings it uses.
pub fn command() -> clap::Command {
    let command = Cli::command();
    let globals: Vec<clap::Arg> = command
        .get_arguments()
        .filter(|a| a.is_global_set())
        .cloned()
        .collect();
    with_own_help(command, &[], &globals)
}

/// `command` (at `path`) and its commands, each with a help text rendered
/// from a copy of it that holds only the global flags it uses.
fn with_own_help(
    mut command: clap::Command,
    path: &[&str],
    globals: &[clap::Arg],
) -> clap::Command {
    let names: Vec<String> = command
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    for name in names {
        let mut inner = path.to_vec();
        inner.push(&name);
        command = command.mut_subcommand(&name, |sub| with_own_help(sub, &inner, globals));
    }
    if path.is_empty() {
        return command;
    }
    let mut alone = command
        .clone()
        .bin_name(format!("tag-server {}", path.join(" ")));
    for arg in globals.iter().filter(|a| uses(path, a.get_id().as_str())) {
        alone = alone.arg(arg.clone().global(false));
    }
    let help = alone.render_long_help().to_string();
    command.override_help(help)
}

/// A problem for each flag given on the command line that the invoked
/// command does not use (variables and profiles are shared by all
/// commands, so only flags are refused).
pub fn unused_flags(matches: &ArgMatches) -> Vec<String> {
    let path = invoked(matches);
    let Some(used) = settings_of(&path) else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    for arg in Cli::command().get_arguments() {
        let id = arg.get_id().as_str();
        let given = matches!(
            matches.value_source(id),
            Some(clap::parser::ValueSource::CommandLine)
        );
        if given && !used.contains(&id) {
            problems.push(format!(
                "--{} does not apply to `tag-server {}` (see `tag-server {} --help`; the server's settings are in `tag-server --help`)",
                arg.get_long().unwrap_or(id),
                path.join(" "),
                path.join(" ")
            ));
        }
    }
    problems
}
