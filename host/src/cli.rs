//! The one-shot commands: `plugins`, `plugins check`, `gen-data`, `run`.

use crate::config::{Config, GenDataArgs, PluginsAction, PluginsArgs, RunArgs};
use crate::data::gen::{estimate_bytes, gen_data_observed, table_files, GenOptions, GenProgress};
use crate::disk::{available_bytes, human_bytes};
use crate::engine::sample::SampleOutcome;
use crate::model::{Priority, RunReport, TaskRecord, TaskSpec, TaskStatus};
use crate::plugins::sample::{check_tag, SampleCheck};
use crate::server::Core;
use crate::store::{Store, StoreError};
use crate::tasks::control::{RunError, TaskControl, TaskRunner};
use crate::tasks::lifecycle;
use crate::tasks::workers::run_to_end;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{mpsc, Mutex};
use std::time::Instant;
use tag_plugin_api::Date;
use tag_plugin_loader::TagRegistry;
use tag_plugin_loader::{self as plugins, Outcome};

/// `tag-server plugins [check FILE]`.
pub fn plugins_command(
    config: &Config,
    args: PluginsArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    match args.action {
        None => list_plugins(config, out),
        Some(PluginsAction::Check {
            file,
            as_of,
            sample,
        }) => {
            let data = config
                .data_dir_given()
                .then(|| config.data_dir.local())
                .flatten();
            let as_of = as_of.unwrap_or_else(Date::today_utc);
            let (registry, checked) = check_plugin(&file, &config.plugin_copies_dir(), as_of, out)?;
            let on_data = match data {
                Some(dir) => check_on_data(&registry, dir, as_of, sample as usize, out)?,
                None => true,
            };
            Ok(if checked && on_data {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn list_plugins(config: &Config, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let dir = config.plugins_dir();
    // Clashes within the directory are decided here; owners recorded in the
    // store are the server's to honour.
    let (_, report) =
        plugins::load_dir_with(&dir, &config.plugin_copies_dir(), &Default::default())?;
    writeln!(out, "plugins directory: {}", dir.display())?;
    write!(out, "{report}")?;
    Ok(if report.rejected().next().is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Loads `file` and runs each tag's default rule on the built-in sample
/// batch; the registry, and whether every tag passed.
fn check_plugin(
    file: &Path,
    copies: &Path,
    as_of: Date,
    out: &mut dyn Write,
) -> anyhow::Result<(TagRegistry, bool)> {
    let (registry, report) = plugins::load_file_alone(file, copies);
    writeln!(out, "file:    {}", file.display())?;
    writeln!(out, "sha256:  {}", report.sha256)?;
    let plugin = match report.outcome {
        Outcome::Rejected(reason) => {
            writeln!(out, "REJECTED: {reason}")?;
            return Ok((registry, false));
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
        let line = match check_tag(tag, as_of) {
            Ok(checked) => sample_line(&label, &checked, info.custom_evaluate.as_deref()),
            Err(reason) => Err(format!("FAILED  {label}: {reason}")),
        };
        match line {
            Ok(line) => writeln!(out, "{line}")?,
            Err(line) => {
                failed = true;
                writeln!(out, "{line}")?;
            }
        }
    }
    Ok((registry, !failed))
}

/// The line `plugins check` prints for a tag's sample rows: `Ok` when it
/// passed, `Err` when its evaluate answers otherwise than its rule tree
/// and the tag does not say what its code adds (`custom`).
fn sample_line(label: &str, checked: &SampleCheck, custom: Option<&str>) -> Result<String, String> {
    let SampleCheck {
        rows,
        matched,
        tree_matched,
        differ,
    } = checked;
    let ok = format!("ok      {label}: default rule on {rows} sample rows, {matched} matched");
    match (custom, differ.first()) {
        (Some(what), _) => Ok(format!(
            "{ok} ({tree_matched} by the rule tree alone); custom evaluate: {what}"
        )),
        (None, None) => Ok(ok),
        (None, Some(row)) => Err(format!(
            "FAILED  {label}: its evaluate answers otherwise than its rule tree on {} of {rows} sample rows (the first is sample row {row}; the code matched {matched}, the tree {tree_matched}), and the tag does not say so: declare what its code decides with TagInfo::custom_evaluate, or the console and the API show the tree as the whole rule",
            differ.len()
        )),
    }
}

/// Each tag of `registry` on the first `sample` users of the data in `dir`
/// (tables, columns, types, the default rule, the plugin's evaluate);
/// whether every tag passed.
fn check_on_data(
    registry: &TagRegistry,
    dir: &Path,
    as_of: Date,
    sample: usize,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    writeln!(out, "data:    {} (first {sample} users)", dir.display())?;
    let tags: Vec<_> = registry.iter().cloned().collect();
    let outcomes = match crate::engine::sample::check(&tags, dir, as_of, sample) {
        Ok(outcomes) => outcomes,
        Err(e) => {
            let reason = match e {
                RunError::Failed(reason) => reason,
                RunError::Stopped(stop) => format!("stopped: {stop:?}"),
            };
            writeln!(out, "FAILED  data: {reason}")?;
            return Ok(false);
        }
    };
    let mut passed = true;
    for tag in &tags {
        let info = &tag.info;
        let label = format!("tag {} {}", info.tag_id, info.task_class);
        match outcomes.get(&info.tag_id) {
            Some(SampleOutcome::Evaluated {
                users,
                matched,
                examples,
            }) => writeln!(
                out,
                "ok      {label} on data: {matched} of {users} users matched; e.g. {}",
                if examples.is_empty() {
                    "-".to_string()
                } else {
                    examples.join(", ")
                }
            )?,
            Some(SampleOutcome::Failed(reason)) => {
                passed = false;
                writeln!(out, "FAILED  {label} on data: {reason}")?;
            }
            None => {
                passed = false;
                writeln!(out, "FAILED  {label} on data: not evaluated")?;
            }
        }
    }
    Ok(passed)
}

/// `tag-server gen-data`: says how much disk the tables need and how much
/// is free, refuses (unless `--force`) when that is too little, then
/// streams them out with progress on stderr.
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
        duplicates: args.duplicates,
        ..GenOptions::default()
    };
    check_space(&dir, &options, args.force, out)?;
    let mut shown = RowsDisplay::new(crate::watch::Display::choose(args.quiet), "generating");
    let summary = gen_data_observed(&dir, &options, &mut |p| shown.update(p));
    shown.finish();
    let summary = summary?;
    writeln!(
        out,
        "wrote {} users ({}) to {} in {:.2} s (reference date {}): {}",
        args.users,
        human_bytes(summary.bytes),
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

/// Prints the size estimate of `options`' tables and the free space in
/// `dir`; fails, before anything is written, when the space is short and
/// not `force`d.
fn check_space(
    dir: &Path,
    options: &GenOptions,
    force: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let needed = estimate_bytes(options)?;
    let free = available_bytes(dir)
        .map_err(|e| anyhow::anyhow!("cannot tell the free space in {}: {e}", dir.display()))?;
    let Some(free) = free else {
        writeln!(
            out,
            "needs about {} in {} (free space unknown)",
            human_bytes(needed),
            dir.display()
        )?;
        return Ok(());
    };
    // The files it replaces give their space back as they are rewritten.
    let replaced: u64 = table_files(dir)
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let usable = free.saturating_add(replaced);
    writeln!(
        out,
        "needs about {} in {}, {} free{}",
        human_bytes(needed),
        dir.display(),
        human_bytes(usable),
        if replaced > 0 {
            " (with the files it replaces)"
        } else {
            ""
        }
    )?;
    if usable < needed && !force {
        anyhow::bail!(
            "not enough free space in {}: the tables need about {}, {} is free \
             (free some, choose another --out or fewer --users, or --force to write anyway)",
            dir.display(),
            human_bytes(needed),
            human_bytes(usable)
        );
    }
    if usable < needed {
        writeln!(out, "--force: writing anyway")?;
    }
    Ok(())
}

/// A count of rows done on stderr (`gen-data`'s, `export`'s), shown like
/// `run`'s progress: a bar on a terminal, a log line every few seconds
/// otherwise, nothing when quiet.
pub struct RowsDisplay {
    /// What is being done (`generating`, `exporting`).
    doing: &'static str,
    display: crate::watch::Display,
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    last_line: Instant,
}

impl RowsDisplay {
    /// Shown as `display` says; `doing` names the work.
    pub fn new(display: crate::watch::Display, doing: &'static str) -> Self {
        let bar = (display == crate::watch::Display::Bar).then(crate::watch::new_bar);
        RowsDisplay {
            doing,
            display,
            bar,
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    /// Shows `p.rows_done` of `p.rows_total`.
    pub fn update(&mut self, p: GenProgress) {
        let share = p.rows_done as f64 / p.rows_total.max(1) as f64;
        let elapsed = self.started.elapsed().as_secs_f64();
        let left = if p.rows_done > 0 && elapsed >= 1.0 {
            format!(", about {:.0} s left", elapsed / share - elapsed)
        } else {
            String::new()
        };
        let text = format!("{} {}/{} rows{left}", self.doing, p.rows_done, p.rows_total);
        match (&self.bar, self.display) {
            (Some(bar), _) => {
                bar.set_message(crate::watch::bar_line(share * 100.0, &text));
            }
            (None, crate::watch::Display::Lines)
                if self.last_line.elapsed() >= crate::watch::LINE_EVERY =>
            {
                self.last_line = Instant::now();
                tracing::info!(
                    rows_done = p.rows_done,
                    rows_total = p.rows_total,
                    "{:.1}%, {text}",
                    share * 100.0
                );
            }
            _ => {}
        }
    }

    /// Takes the bar away.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `tag-server run`: one task through the server's engine and store; the
/// task is recorded like a triggered one, with the same lifecycle.
pub fn run_command(
    config: &Config,
    args: RunArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    crate::server::require_data_dir(config)?;
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
    lifecycle::start_unqueued(core.store.as_ref(), &mut task)?;
    let display = crate::watch::Display::choose(args.quiet);
    run_watched(
        core.store.as_ref(),
        core.engine.as_ref(),
        &mut task,
        display,
    )?;
    writeln!(out, "{}", serde_json::to_string_pretty(&task)?)?;
    Ok(if task.status == TaskStatus::Completed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs `task` to its end the way a worker does ([`run_to_end`]: committed
/// outcome, run, status, log, metrics, store), with its progress on stderr
/// until the run itself returns.
fn run_watched(
    store: &dyn Store,
    engine: &dyn TaskRunner,
    task: &mut TaskRecord,
    display: crate::watch::Display,
) -> Result<(), StoreError> {
    let control = TaskControl::default();
    let (running, watched) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        scope.spawn(|| crate::watch::show(&control, display, watched));
        // Owns the display's sender; dropped at the latest when this
        // closure returns, before the scope waits for the display.
        let runner = Watched {
            engine,
            running: Mutex::new(Some(running)),
        };
        run_to_end(store, &runner, task, &control).map(|_| ())
    })
}

/// The engine, ending the progress display as soon as its run returns, so
/// the display's last lines come before the outcome's log lines.
struct Watched<'a> {
    engine: &'a dyn TaskRunner,
    /// Dropping the sender wakes the display for its last lines.
    running: Mutex<Option<mpsc::Sender<()>>>,
}

impl TaskRunner for Watched<'_> {
    fn run(&self, task: &TaskRecord, control: &TaskControl) -> Result<RunReport, RunError> {
        // Dropped when the run returns, or unwinds from a panic.
        let _running = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.engine.run(task, control)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::prelude::*;
    use crate::store::sqlite::SqliteStore;
    use crate::tasks::workers::testing::{commit_outcome, MustNotRun};

    #[test]
    fn a_sample_line_fails_only_a_tag_whose_code_differs_unsaid() {
        let same = SampleCheck {
            rows: 5,
            matched: 1,
            tree_matched: 1,
            differ: vec![],
        };
        let line = sample_line("tag 1 T (t)", &same, None).unwrap();
        assert_eq!(
            line,
            "ok      tag 1 T (t): default rule on 5 sample rows, 1 matched"
        );
        let more = SampleCheck {
            matched: 2,
            differ: vec![1],
            ..same
        };
        let said = sample_line("tag 1 T (t)", &more, Some("Nulls too.")).unwrap();
        assert!(
            said.starts_with("ok ")
                && said.ends_with("(1 by the rule tree alone); custom evaluate: Nulls too."),
            "{said}"
        );
        let unsaid = sample_line("tag 1 T (t)", &more, None).unwrap_err();
        assert!(unsaid.starts_with("FAILED  tag 1 T (t): its evaluate answers otherwise than its rule tree on 1 of 5 sample rows (the first is sample row 1;"), "{unsaid}");
        assert!(unsaid.contains("TagInfo::custom_evaluate"), "{unsaid}");
    }

    #[test]
    fn a_run_whose_outcome_was_committed_is_recorded_with_it_not_run_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("tags.db")).unwrap();
        let spec = TaskSpec {
            tag_ids: vec![1],
            ..TaskSpec::default()
        };
        let mut task = lifecycle::create(spec, "local");
        lifecycle::start_unqueued(&store, &mut task).unwrap();
        // The process stopped after the run's commit, before the task's end
        // was recorded.
        let committed = commit_outcome(&store, &task.task_id);
        run_watched(&store, &MustNotRun, &mut task, crate::watch::Display::Off).unwrap();
        assert_eq!(task.status, TaskStatus::Completed, "{:?}", task.error);
        assert_eq!(task.result, Some(committed.recovered()));
        let stored = store.get_task(&task.task_id).unwrap().unwrap();
        assert_eq!((stored.status, stored.result), (task.status, task.result));
    }
}
