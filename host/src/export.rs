//! `tag-server export`: an audience's members (a saved one, an expression,
//! or a tag's holders) written to a file for schedulers, with progress on
//! stderr. The file appears whole or not at all: it is written beside its
//! final name and renamed when complete.

use crate::catalog::Catalog;
use crate::cli::RowsDisplay;
use crate::config::{Config, ExportArgs};
use crate::data::gen::GenProgress;
use crate::members::export::{write_members, Format};
use crate::members::live::Live;
use crate::store::{self, Store};
use anyhow::Context;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

/// `tag-server export --audience NAME | --expr EXPR --out FILE`.
pub fn export_command(
    config: &Config,
    args: ExportArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let format = format_of(args.format.as_deref(), &args.out)?;
    let store: Box<dyn Store> = store::open(&config.store_url()).context("opening the store")?;
    let text = match (&args.audience, &args.expr) {
        (Some(name), _) => {
            let saved = store
                .audience(name)?
                .with_context(|| format!("no saved audience is named {name:?}"))?;
            saved.canonical
        }
        (None, Some(expr)) => expr.clone(),
        (None, None) => anyhow::bail!("give --audience NAME or --expr EXPR"),
    };
    let catalog = Catalog::open(
        config.plugins_dir(),
        config.plugin_copies_dir(),
        store.as_ref(),
    )?;
    let registry = catalog.registry();
    let tags = registry.read().unwrap_or_else(|p| p.into_inner()).clone();
    let expr = crate::members::resolve::parse(&text, &tags)
        .map_err(|e| anyhow::anyhow!("invalid audience expression: {e}"))?;
    let snapshot = Live::new().fresh(store.as_ref())?;
    let members = expr.select(snapshot.as_ref());
    let total = members.len();
    let mut shown = RowsDisplay::new(crate::watch::Display::choose(args.quiet), "exporting");
    let written = write_file(&args.out, |file| {
        let mut progress = |done| {
            shown.update(GenProgress {
                rows_done: done,
                rows_total: total,
            })
        };
        Ok(write_members(
            store.as_ref(),
            &members,
            format,
            file,
            &mut progress,
        )?)
    });
    shown.finish();
    let written = written?;
    writeln!(
        out,
        "wrote {written} members of {text} ({} at version {}) to {}",
        format.extension(),
        snapshot.version(),
        args.out.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The format asked for, else the one `out`'s extension names, else CSV.
fn format_of(asked: Option<&str>, out: &Path) -> anyhow::Result<Format> {
    match asked {
        Some(f) => Format::parse(f)
            .with_context(|| format!("--format must be csv, jsonl or parquet, got {f:?}")),
        None => Ok(out
            .extension()
            .and_then(|e| Format::parse(&e.to_string_lossy()))
            .unwrap_or(Format::Csv)),
    }
}

/// Writes `out` through `write` into a file beside it, renamed to `out`
/// once `write` succeeded (removed if it failed).
fn write_file<T>(
    out: &Path,
    write: impl FnOnce(std::io::BufWriter<std::fs::File>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let name = out
        .file_name()
        .with_context(|| format!("{} is not a file name", out.display()))?;
    let partial = out.with_file_name(format!(".{}.partial", name.to_string_lossy()));
    let file = std::fs::File::create(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    match write(std::io::BufWriter::with_capacity(1 << 20, file)) {
        Ok(value) => {
            std::fs::rename(&partial, out).with_context(|| {
                format!("cannot rename {} to {}", partial.display(), out.display())
            })?;
            Ok(value)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_comes_from_the_flag_else_the_extension_else_csv() {
        let p = Path::new("x/members.parquet");
        assert_eq!(format_of(None, p).unwrap(), Format::Parquet);
        assert_eq!(format_of(Some("jsonl"), p).unwrap(), Format::Jsonl);
        assert_eq!(format_of(None, Path::new("out.txt")).unwrap(), Format::Csv);
        assert!(format_of(Some("xml"), p).is_err());
    }

    #[test]
    fn a_failed_write_leaves_no_file_and_a_good_one_appears_whole() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.csv");
        let failed: anyhow::Result<()> = write_file(&out, |mut f| {
            f.write_all(b"user_id\n")?;
            anyhow::bail!("the store went away")
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        write_file(&out, |mut f| Ok(f.write_all(b"user_id\nu1\n")?)).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "user_id\nu1\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
