//! `tag-server`: see `tag-server --help`.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = tag_host::cli::Cli::parse();
    match tag_host::cli::run(cli, &mut std::io::stdout()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
