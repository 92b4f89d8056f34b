//! `tag-server`: see `tag-server --help`.

use clap::{CommandFactory, FromArgMatches};
use std::process::ExitCode;
use tag_host::config::{Cli, Command, Config, LogFormat};
use tracing_subscriber::fmt::writer::MakeWriterExt;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc v3's `mi_option_purge_delay` (its `mi_option_e` has no Rust
/// constant for it); this build's default is 1000 ms (the header says 10).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Returns freed memory to the OS at once instead of after a delay: a run
/// frees and allocates large column buffers in quick succession, and at 10M
/// users the delay left about 0.5 GB of freed memory resident at the peak
/// (2.2 GiB against 1.7 GiB). The option is only set if it reads as one of
/// the known defaults, so a renumbered enum in another mimalloc is left alone.
fn purge_freed_memory_at_once() {
    // SAFETY: plain calls into the allocator's option table.
    unsafe {
        if matches!(
            libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY),
            10 | 1000
        ) {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
        }
    }
}

/// Where log lines go besides the log file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Console {
    /// The server: the console is its output.
    Stdout,
    /// `tag-server run`: stdout holds the task JSON.
    Stderr,
}

fn init_logging(config: &Config, to_file: Option<Console>) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(config.log_filter()));
    let Some(console) = to_file else {
        // `plugins` and `gen-data` keep stdout for their output.
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
        return Ok(());
    };
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        // Owner read-write, group read: logs name tasks, users and callers.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(&config.log_file)?
    };
    let file = std::sync::Mutex::new(file);
    let console = move || -> Box<dyn std::io::Write> {
        match console {
            Console::Stdout => Box::new(std::io::stdout()),
            Console::Stderr => Box::new(std::io::stderr()),
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(console.and(file))
        .with_ansi(false);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(tag_host::logging::FlatJson)
            .init(),
    }
    Ok(())
}

/// Panics are logged (and so reach the log file) before the default hook
/// prints them; the task they happen in fails with the message.
fn log_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = tag_host::tasks::control::panic_message(info.payload());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        tracing::error!(panic = %message, %location, %thread, "panic");
        default(info);
    }));
}

/// Resolves at the next SIGINT or SIGTERM.
async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
}

async fn shutdown_signal() {
    stop_signal().await;
    // The first signal stops gracefully (running tasks reach a safe point
    // and stay queued); a second one exits at once. Nothing is lost either
    // way: a run's writes are one transaction, and its task is taken up
    // again after its lease.
    tokio::spawn(async {
        stop_signal().await;
        tracing::warn!("second stop signal: exiting now");
        // At once: no exit handlers (log lines are written unbuffered).
        // SAFETY: _exit only ends the process.
        unsafe { libc::_exit(130) };
    });
}

fn serve(config: Config) -> anyhow::Result<()> {
    tag_host::server::prepare_local_data(&config)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let addr = format!("{}:{}", config.host, config.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        tag_host::server::run(config, listener, shutdown_signal()).await
    })
}

fn main() -> ExitCode {
    purge_freed_memory_at_once();
    let matches = Cli::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Err(errors) = tag_host::config::profile::resolve(&mut cli.config, &matches) {
        eprintln!("error: {errors}");
        return ExitCode::from(2);
    }
    let to_file = match cli.command {
        None => Some(Console::Stdout),
        Some(Command::Run(_)) => Some(Console::Stderr),
        Some(_) => None,
    };
    if let Err(e) = init_logging(&cli.config, to_file) {
        eprintln!(
            "error: cannot open log file {}: {e}",
            cli.config.log_file.display()
        );
        return ExitCode::FAILURE;
    }
    log_panics();
    let mut stdout = std::io::stdout();
    let outcome = match cli.command {
        None => serve(cli.config).map(|()| ExitCode::SUCCESS),
        Some(Command::Plugins(args)) => {
            tag_host::cli::plugins_command(&cli.config, args, &mut stdout)
        }
        Some(Command::GenData(args)) => {
            tag_host::cli::gen_data_command(&cli.config, args, &mut stdout)
        }
        Some(Command::Run(args)) => tag_host::cli::run_command(&cli.config, args, &mut stdout),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
