//! `tag-server run`'s progress on stderr while the task runs: a bar (stage,
//! percent, units, time left) when stderr is a terminal, a plain log line
//! every few seconds when it is not (a cron job's or Airflow's log), and
//! nothing with `--quiet`. Stdout is left to the task JSON.

use crate::progress::Progress;
use crate::tasks::control::TaskControl;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// A bar, redrawn in place.
    Bar,
    /// A log line now and then.
    Lines,
    /// Nothing.
    Off,
}

/// How often the bar is redrawn, and how often a line is logged.
const BAR_EVERY: Duration = Duration::from_millis(100);
pub(crate) const LINE_EVERY: Duration = Duration::from_secs(5);

impl Display {
    /// A bar on a terminal, lines elsewhere, nothing when `quiet`.
    pub fn choose(quiet: bool) -> Display {
        if quiet {
            Display::Off
        } else if std::io::stderr().is_terminal() {
            Display::Bar
        } else {
            Display::Lines
        }
    }
}

/// The running stage's figures: `reading 1200/5000 rows`, or only its
/// name while its total is not known yet (never `0/0 rows`).
fn stage_text(p: &Progress) -> String {
    let stage = match p.stages.iter().find(|s| s.name == p.stage) {
        Some(s) if s.state == "finished" => return "done".to_string(),
        Some(s) if s.total == 0 => s.name.to_string(),
        Some(s) => format!("{} {}/{} {}", s.name, s.done, s.total, s.unit),
        None => return "starting".to_string(),
    };
    match p.partition {
        Some(part) if part.index == 0 && part.spilled => {
            format!("{stage}, spilling into {} partitions", part.count)
        }
        Some(part) if part.index == 0 => format!("{stage}, into {} partitions", part.count),
        Some(part) => format!("{stage}, partition {} of {}", part.index, part.count),
        None => stage,
    }
}

fn eta_text(p: &Progress) -> String {
    p.eta_seconds
        .map_or_else(String::new, |s| format!(", about {s} s left"))
}

/// Shows `control`'s progress until `running`'s sender is dropped (which
/// wakes it at once: the run's end is not held up by a redraw interval).
/// Each stage that finishes gets a line of its own (above the bar, or in
/// the log).
pub fn show(control: &TaskControl, display: Display, running: Receiver<()>) {
    if display == Display::Off {
        return;
    }
    let bar = (display == Display::Bar).then(new_bar);
    let mut reported = 0;
    let mut last_line = Instant::now();
    loop {
        let done = matches!(
            running.try_recv(),
            Err(std::sync::mpsc::TryRecvError::Disconnected)
        );
        let p = control.progress();
        // The bar shows the state first, so that the lines printed above
        // it (each redraws it) never come with an older bar below them.
        if let Some(bar) = &bar {
            draw(bar, &p);
        }
        for stage in p
            .stages
            .iter()
            .filter(|s| s.state == "finished")
            .skip(reported)
        {
            reported += 1;
            let text = format!(
                "{} finished: {} {} in {} ms",
                stage.name, stage.total, stage.unit, stage.elapsed_ms
            );
            match &bar {
                Some(bar) => bar.println(text),
                None => {
                    tracing::info!(stage = %stage.name, elapsed_ms = stage.elapsed_ms, "{text}")
                }
            }
        }
        if done {
            break;
        }
        match &bar {
            Some(_) => {}
            None if last_line.elapsed() >= LINE_EVERY => {
                last_line = Instant::now();
                tracing::info!(stage = %p.stage, percent = p.percent, eta_seconds = p.eta_seconds,
                    "progress: {:.1}%, {}{}", p.percent, stage_text(&p), eta_text(&p));
            }
            None => {}
        }
        if let Err(RecvTimeoutError::Disconnected) = running.recv_timeout(BAR_EVERY) {
            // One more pass reports the stages that finished meanwhile.
            continue;
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}

/// A bar in the style of every progress bar of the command line: one
/// message line, drawn whole by [`bar_line`].
pub(crate) fn new_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(10));
    let style =
        ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// Width of the bar, in characters.
const BAR_WIDTH: usize = 20;

/// The whole bar as one line: `  34% [======>             ] joining 0/194100 rows`.
fn bar_text(p: &Progress) -> String {
    bar_line(p.percent, &format!("{}{}", stage_text(p), eta_text(p)))
}

/// A bar line: `percent` (0 to 100) as a figure and a bar, then `text`.
pub(crate) fn bar_line(percent: f64, text: &str) -> String {
    let filled = ((percent / 100.0 * BAR_WIDTH as f64) as usize).min(BAR_WIDTH);
    let mut bar = "=".repeat(filled);
    if filled < BAR_WIDTH {
        bar.push('>');
    }
    format!("{percent:>4.0}% [{bar:<BAR_WIDTH$}] {text}")
}

/// One update, so one frame: percent, bar and stage always agree.
fn draw(bar: &ProgressBar, p: &Progress) {
    bar.set_message(bar_text(p));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stage_text_names_the_running_stage_and_its_units() {
        let mut p = Progress::begin();
        assert_eq!(stage_text(&p), "starting");
        p.enter("reading", 0);
        assert_eq!(stage_text(&p), "reading", "not 0/0 rows");
        p.enter("reading", 5000);
        p.advance("reading", 1200);
        assert_eq!(stage_text(&p), "reading 1200/5000 rows");
        assert_eq!(Display::choose(true), Display::Off);
    }
}
