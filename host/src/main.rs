//! `tag-server`: see `tag-server --help`. Parse the command line, configure
//! the allocator, logging and panic reporting, run the server or a command.

use clap::FromArgMatches;
use std::process::ExitCode;
use tag_host::config::{Cli, Command, Config};
use tag_host::logging::Console;

/// mimalloc: the benchmarks' figures depend on it. Plugins allocate with
/// their own (system) allocator; that is safe because every value crossing
/// the boundary is an abi_stable R-type freed by the side that made it,
/// which tests/allocator.rs checks under this allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Serves the API until the first stop signal (see `tag_host::signals`).
fn serve(config: Config) -> anyhow::Result<()> {
    tag_host::server::prepare_local_data(&config)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let addr = format!("{}:{}", config.host, config.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        let stop = tag_host::signals::shutdown_signal();
        tag_host::server::run(config, listener, stop).await
    })
}

fn main() -> ExitCode {
    tag_host::alloc::purge_freed_memory_soon();
    let matches = tag_host::config::commands::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Err(errors) = tag_host::config::profile::resolve(&mut cli.config, &matches) {
        eprintln!("error: {errors}");
        return ExitCode::from(2);
    }
    let console = match cli.command {
        None => Some(Console::Stdout),
        Some(Command::Run(_)) | Some(Command::Export(_)) => Some(Console::Stderr),
        Some(_) => None,
    };
    if let Err(e) = tag_host::logging::init(&cli.config, console) {
        let (file, origin) = (
            cli.config.log_file.display(),
            cli.config.origins.of("log_file"),
        );
        eprintln!(
            "error: cannot open the log file {file} ({origin}): {e}: {} to a file this user can write",
            origin.how_to_set()
        );
        return ExitCode::from(2);
    }
    tag_host::logging::log_panics();
    let (config, out) = (&cli.config, &mut std::io::stdout());
    let outcome = match cli.command {
        None => serve(cli.config).map(|()| ExitCode::SUCCESS),
        Some(Command::Plugins(args)) => tag_host::cli::plugins_command(config, args, out),
        Some(Command::GenData(args)) => tag_host::cli::gen_data_command(config, args, out),
        Some(Command::Run(args)) => tag_host::cli::run_command(config, args, out),
        Some(Command::Export(args)) => tag_host::export::export_command(config, args, out),
        Some(Command::SparkPackage(args)) => {
            tag_host::package::spark_package_command(config, args, out)
        }
    };
    outcome.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}
