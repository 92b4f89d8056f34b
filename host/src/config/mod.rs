//! The command line: one clap struct whose doc comments are `--help`.
//!
//! Server flags are global, so `tag-server run ...` and `tag-server
//! gen-data ...` take the same `--env`, `--plugins-dir`, `--data-dir` and
//! `--store` as the server. Every setting can also come from a `TAG_*`
//! environment variable and from the environment's profile file
//! (`config/<env>.toml`, see [`profile`]); a flag beats the variable, which
//! beats the profile, which beats the built-in default.

pub mod commands;
pub mod origin;
pub mod profile;

use crate::data::source::DataLocation;
use crate::model::Mode;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use tag_plugin_api::Date;

/// tag-server computes user tags with plugins. With no command it serves:
/// the tag API under /api/v1 and the web console at / (on --host and
/// --port, http://localhost:5000/ by default). A command runs one job
/// instead and exits.
#[derive(Debug, Parser)]
#[command(name = "tag-server", version)]
pub struct Cli {
    /// Run one job instead of serving (no command: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Server and engine settings.
    #[command(flatten)]
    pub config: Config,
}

/// The deployment environment (reported by the API; `local` also creates
/// sample data when the data directory has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Environment {
    /// A developer machine.
    Local,
    /// The shared development environment.
    #[value(name = "glue-dev")]
    GlueDev,
    /// Production.
    #[value(name = "glue-prod")]
    GlueProd,
}

impl Environment {
    /// The name used in API responses.
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Local => "local",
            Environment::GlueDev => "glue-dev",
            Environment::GlueProd => "glue-prod",
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Log verbosity, spelled as the original system spelled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[value(rename_all = "UPPER")]
#[serde(rename_all = "UPPERCASE")]
pub enum LogLevel {
    /// Everything.
    Debug,
    /// Normal operation.
    Info,
    /// Problems only.
    Warning,
    /// Errors only.
    Error,
}

/// Settings shared by the server and the one-shot commands.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Deployment environment.
    #[arg(
        long,
        value_enum,
        default_value = "local",
        env = "TAG_ENV",
        global = true
    )]
    pub env: Environment,
    /// Directory of the profile files (`<env>.toml`).
    #[arg(long, default_value = "config", env = "TAG_CONFIG_DIR", global = true)]
    pub config_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0", env = "TAG_HOST", global = true)]
    pub host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 5000, env = "TAG_PORT", global = true)]
    pub port: u16,
    /// Debug mode: DEBUG logging.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Log level.
    #[arg(
        long,
        value_enum,
        default_value = "INFO",
        env = "TAG_LOG_LEVEL",
        global = true,
        ignore_case = true
    )]
    pub log_level: LogLevel,
    /// Log line format.
    #[arg(
        long,
        value_enum,
        default_value = "text",
        env = "TAG_LOG_FORMAT",
        global = true
    )]
    pub log_format: LogFormat,
    /// Log file (besides the console).
    #[arg(
        long,
        default_value = "api_server.log",
        env = "TAG_LOG_FILE",
        global = true
    )]
    pub log_file: PathBuf,
    /// Directory of plugin libraries [default: $TAG_PLUGINS_DIR, else the
    /// directory of the tag-server executable, where cargo puts the plugins].
    #[arg(long, env = "TAG_PLUGINS_DIR", global = true)]
    pub plugins_dir: Option<PathBuf>,
    /// Where plugin libraries are copied (by SHA-256, in a 0700 directory)
    /// after their checks, to be loaded from [default:
    /// $XDG_CACHE_HOME/tag-server/plugins or ~/.cache/tag-server/plugins].
    #[arg(long, env = "TAG_PLUGIN_COPIES_DIR", global = true)]
    pub plugin_copies_dir: Option<PathBuf>,
    /// Source tables (`<table>.parquet` or `<table>/*.parquet`): a local
    /// directory, or `s3://bucket/prefix` (endpoint, region and credentials
    /// from the AWS environment variables or `AWS_PROFILE`).
    #[arg(long, default_value = "data", env = "TAG_DATA_DIR", global = true, value_parser = DataLocation::from_str)]
    pub data_dir: DataLocation,
    /// A file of API tokens, one `name:role:token` a line (`#` comments);
    /// tokens also come from TAG_API_TOKENS, never from a flag.
    #[arg(long, env = "TAG_TOKENS_FILE", global = true)]
    pub tokens_file: Option<PathBuf>,
    /// The API tokens in effect (read at start from the environment and
    /// the tokens file).
    #[arg(skip)]
    pub tokens: crate::auth::Tokens,
    /// Where each setting's value came from (filled in by
    /// [`profile::resolve`]), for messages that name it.
    #[arg(skip)]
    pub origins: origin::Origins,
    /// Write a sample dataset of 100,000 users into --data-dir when it has
    /// no tables (without it, only the default `data` directory of `--env
    /// local` gets one).
    #[arg(long, env = "TAG_SAMPLE_DATA", global = true)]
    pub sample_data: bool,
    /// Where S3 tables are mirrored for reading [default: <temp dir>/tag-server-s3].
    #[arg(long, env = "TAG_S3_CACHE_DIR", global = true)]
    pub s3_cache_dir: Option<PathBuf>,
    /// Store URL: sqlite://PATH, postgres://… or mysql://… [default:
    /// sqlite://<data-dir>/tag_system.db]. A password belongs in TAG_STORE,
    /// not in a profile file.
    #[arg(long, env = "TAG_STORE", hide_env_values = true, global = true)]
    pub store: Option<String>,
    /// Tasks computed at once.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64), env = "TAG_MAX_CONCURRENT_TASKS", global = true)]
    pub max_concurrent_tasks: u16,
    /// Tasks that may wait in the queue; a trigger beyond it gets 503.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..), env = "TAG_QUEUE_CAPACITY", global = true)]
    pub queue_capacity: u32,
    /// Largest `user_ids` list a trigger may carry.
    #[arg(
        long,
        default_value_t = 100_000,
        env = "TAG_MAX_USER_IDS",
        global = true
    )]
    pub max_user_ids: usize,
    /// Seconds a worker's claim on a task holds without renewal: when a
    /// process dies, its running tasks are taken by another after this.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(2..=3600), env = "TAG_TASK_LEASE_SECS", global = true)]
    pub task_lease_secs: u32,
    /// Seconds the server waits at start for a store that does not answer
    /// (serving /health 503 meanwhile) before it gives up and exits.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=86400), env = "TAG_STORE_WAIT_SECS", global = true)]
    pub store_wait_secs: u32,
    /// Seconds a request may take before it is answered 503.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3600), env = "TAG_REQUEST_TIMEOUT_SECS", global = true)]
    pub request_timeout_secs: u32,
    /// Largest request body accepted, in bytes (413 beyond).
    #[arg(long, default_value_t = 8 * 1024 * 1024, value_parser = clap::value_parser!(u32).range(1024..), env = "TAG_MAX_BODY_BYTES", global = true)]
    pub max_body_bytes: u32,
    /// Days a finished task (completed, failed, cancelled) is kept before it
    /// is deleted, checked at start and hourly; 0 keeps tasks forever.
    #[arg(
        long,
        default_value_t = 30,
        env = "TAG_TASK_RETENTION_DAYS",
        global = true
    )]
    pub task_retention_days: u32,
    /// Days each run's change feed (who gained and who lost each tag) is
    /// kept, checked at start and hourly; 0 keeps it forever.
    #[arg(
        long,
        default_value_t = 30,
        env = "TAG_CHANGE_RETENTION_DAYS",
        global = true
    )]
    pub change_retention_days: u32,
    /// Seconds a console sign-in lasts; its session is then refused and
    /// deleted (sign in again).
    #[arg(long, default_value_t = 43_200, value_parser = clap::value_parser!(u32).range(1..=MAX_CONSOLE_SESSION_SECS as i64), env = "TAG_CONSOLE_SESSION_SECS", global = true)]
    pub console_session_secs: u32,
    /// Mark the console's session cookie `Secure`, so browsers send it over
    /// HTTPS only: set it when the console is reached through TLS (a
    /// TLS-terminating proxy in front of this server).
    #[arg(long, env = "TAG_SECURE_COOKIES", global = true)]
    pub secure_cookies: bool,
    /// Reload the plugins whenever a file in the plugins directory changes
    /// (after half a second without further changes).
    #[arg(long, env = "TAG_WATCH_PLUGINS", global = true)]
    pub watch_plugins: bool,
    /// Failed authentications (a wrong API token, a wrong console sign-in)
    /// a client address may make at once; then one more every 6 s, and
    /// each beyond answers 429 with `Retry-After` (a correct token still
    /// passes). 0 turns this off.
    #[arg(
        long,
        default_value_t = 10,
        env = "TAG_AUTH_FAILURE_BURST",
        global = true
    )]
    pub auth_failure_burst: u32,
    /// Rows per batch handed to a plugin.
    #[arg(long, default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(64..), env = "TAG_BATCH_ROWS", global = true)]
    pub batch_rows: u32,
    /// Memory a run keeps within, such as 2GiB or 512MiB: a run whose
    /// working set (estimated from the parquet footers before reading) is
    /// larger is split into partitions by user id, spilled to --spill-dir
    /// and computed one after another [default: a fifth of this machine's
    /// memory].
    #[arg(long, env = "TAG_MEMORY_LIMIT", global = true, value_parser = crate::memory::ByteSize::from_str)]
    pub memory_limit: Option<crate::memory::ByteSize>,
    /// Where partitioned runs write their spill files, each run in a 0700
    /// directory of its own, removed when the run ends [default:
    /// $XDG_CACHE_HOME/tag-server/spill or ~/.cache/tag-server/spill].
    #[arg(long, env = "TAG_SPILL_DIR", global = true)]
    pub spill_dir: Option<PathBuf>,
    /// A run within the memory limit over at least twice this many users
    /// is split into partitions of about this many, kept in memory, so that
    /// writing one partition's results overlaps computing the next's (0:
    /// never split a run that fits).
    #[arg(
        long,
        default_value_t = crate::engine::budget::PARTITION_USERS,
        env = "TAG_PARTITION_USERS",
        global = true
    )]
    pub partition_users: u64,
    /// Where runs evaluate the tags: `local` in this process, or `spark`,
    /// submitting the PySpark job of the tag_engine_spark wheel with
    /// spark-submit as the profile's [spark] table says (master, deploy
    /// mode, conf, package) and committing its output here.
    #[arg(
        long,
        value_enum,
        default_value = "local",
        env = "TAG_EXECUTOR",
        global = true
    )]
    pub executor: Executor,
    /// The profile's `[spark]` table (profile only).
    #[arg(skip)]
    pub spark: crate::spark::SparkSettings,
}

/// Where a run's tags are evaluated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Executor {
    /// In tag-server's own process (polars).
    #[default]
    Local,
    /// In Spark's executors, through spark-submit.
    Spark,
}

/// The longest a console session may last: 30 days.
pub const MAX_CONSOLE_SESSION_SECS: u32 = 30 * 24 * 3600;

impl Config {
    /// Whether the data location was given (flag, variable or profile)
    /// rather than left at its default.
    pub fn data_dir_given(&self) -> bool {
        self.origins.given("data_dir")
    }

    /// The plugins directory in effect.
    pub fn plugins_dir(&self) -> PathBuf {
        self.plugins_dir.clone().unwrap_or_else(default_plugins_dir)
    }

    /// The directory private copies of plugins are loaded from.
    pub fn plugin_copies_dir(&self) -> PathBuf {
        self.plugin_copies_dir
            .clone()
            .unwrap_or_else(crate::plugins::default_copies_dir)
    }

    /// The store URL in effect: the default SQLite store lives in a local
    /// data directory (an S3 data location needs `--store`).
    pub fn store_url(&self) -> String {
        self.store.clone().unwrap_or_else(|| match &self.data_dir {
            DataLocation::Local(dir) => {
                format!("sqlite://{}", dir.join("tag_system.db").display())
            }
            DataLocation::S3(_) => String::new(),
        })
    }

    /// The memory limit in effect.
    pub fn memory_limit(&self) -> crate::memory::ByteSize {
        self.memory_limit
            .unwrap_or_else(crate::memory::default_limit)
    }

    /// The directory partitioned runs spill into.
    pub fn spill_dir(&self) -> PathBuf {
        self.spill_dir
            .clone()
            .unwrap_or_else(crate::engine::spill::default_root)
    }

    /// The directory S3 tables are mirrored into.
    pub fn s3_cache_dir(&self) -> PathBuf {
        self.s3_cache_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("tag-server-s3"))
    }

    /// The log filter in effect.
    pub fn log_filter(&self) -> &'static str {
        match (self.debug, self.log_level) {
            (true, _) | (_, LogLevel::Debug) => "debug",
            (_, LogLevel::Info) => "info",
            (_, LogLevel::Warning) => "warn",
            (_, LogLevel::Error) => "error",
        }
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the plugins found in the plugins directory and why any were
    /// rejected; exits non-zero if any file was rejected.
    Plugins(PluginsArgs),
    /// Write sample source tables (deterministic for a seed).
    GenData(GenDataArgs),
    /// Run one task with the server's engine and store, print its result as
    /// JSON, exit non-zero on failure (for cron, Airflow and the like).
    Run(RunArgs),
    /// Write the folder to upload for running the tags on a Spark cluster
    /// or AWS Glue: the tag_engine_spark wheel, the job script, and the
    /// plugin libraries that pass tag-server's checks, with their SHA-256.
    SparkPackage(SparkPackageArgs),
    /// Write the members of a saved audience, an expression or a tag to a
    /// file (CSV, JSON lines or parquet), for schedulers.
    Export(ExportArgs),
}

/// `tag-server export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A saved audience's name.
    #[arg(long, conflicts_with = "expr", required_unless_present = "expr")]
    pub audience: Option<String>,
    /// An expression over tag ids or names, e.g. "(5 AND 2) AND NOT 3"
    /// (one tag's holders: its id alone).
    #[arg(long)]
    pub expr: Option<String>,
    /// The file to write (replaced whole when the export is complete).
    #[arg(long)]
    pub out: PathBuf,
    /// csv, jsonl or parquet [default: from --out's extension, else csv].
    #[arg(long)]
    pub format: Option<String>,
    /// Show no progress on stderr (by default a bar on a terminal, a log
    /// line every 5 s otherwise).
    #[arg(long, short)]
    pub quiet: bool,
}

/// `tag-server spark-package`.
#[derive(Debug, Args)]
pub struct SparkPackageArgs {
    /// The folder to write (made if missing; its plugins/ is replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// The tag_engine_spark wheel [default: the newest in
    /// $TAG_SPARK_WHEEL_DIR, else in the wheels/ folder of cargo's target
    /// directory, where `maturin build -m spark/Cargo.toml` puts it].
    #[arg(long)]
    pub wheel: Option<PathBuf>,
}

/// `tag-server plugins`.
#[derive(Debug, Args)]
pub struct PluginsArgs {
    /// `check FILE`: load one library and run each of its tags on a sample batch.
    #[command(subcommand)]
    pub action: Option<PluginsAction>,
}

/// Subcommands of `tag-server plugins`.
#[derive(Debug, Subcommand)]
pub enum PluginsAction {
    /// Load one plugin library and evaluate each of its tags' default rules
    /// on a built-in sample batch and, when `--data-dir` is given, on the
    /// first `--sample` users of that real data, to verify a plugin before
    /// shipping it.
    Check {
        /// The library file (.so).
        file: PathBuf,
        /// Reference date for date rules (YYYY-MM-DD) [default: today, UTC].
        #[arg(long, value_parser = parse_date)]
        as_of: Option<Date>,
        /// With `--data-dir` (or a profile's data_dir): how many users of
        /// the real data each tag is evaluated on.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
        sample: u32,
    },
}

/// `tag-server gen-data`.
#[derive(Debug, Args)]
pub struct GenDataArgs {
    /// Number of users.
    #[arg(long, default_value_t = 100_000)]
    pub users: usize,
    /// Output directory [default: --data-dir].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Dates are generated relative to this day (YYYY-MM-DD) [default: today, UTC].
    #[arg(long, value_parser = parse_date)]
    pub reference_date: Option<Date>,
    /// Extra rows appended to each table for already present user ids,
    /// alternately newer and older than the original row (to exercise
    /// de-duplication).
    #[arg(long, default_value_t = 0)]
    pub duplicates: usize,
    /// Write even when the output directory's filesystem has less free
    /// space than the files are estimated to need.
    #[arg(long)]
    pub force: bool,
    /// Show no progress on stderr (by default a bar on a terminal, a log
    /// line every 5 s otherwise).
    #[arg(long, short)]
    pub quiet: bool,
}

/// `tag-server run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Tags to compute, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub tag_ids: Vec<u32>,
    /// Restrict to these users, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub user_ids: Option<Vec<String>>,
    /// full or incremental.
    #[arg(long, default_value = "full", value_parser = parse_mode)]
    pub mode: Mode,
    /// Reference date of the rules (YYYY-MM-DD) [default: today, UTC].
    #[arg(long, value_parser = parse_date)]
    pub as_of: Option<Date>,
    /// Show no progress on stderr (by default a bar on a terminal, a log
    /// line every 5 s otherwise).
    #[arg(long, short)]
    pub quiet: bool,
}

/// Parses a `YYYY-MM-DD` argument.
pub fn parse_date(text: &str) -> Result<Date, String> {
    Date::parse(text).ok_or_else(|| format!("\"{text}\" is not a YYYY-MM-DD date"))
}

fn parse_mode(text: &str) -> Result<Mode, String> {
    text.parse()
}

/// The plugins directory used when none is given: next to the executable.
pub fn default_plugins_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}
