//! Environment profiles: `--env local|glue-dev|glue-prod` selects
//! `<config-dir>/<env>.toml`, whose settings apply where neither a flag nor
//! a `TAG_*` environment variable gave one. Then the whole configuration is
//! checked, and every problem is reported at once.
//!
//! A profile holds no secret: a store URL with a password is refused there
//! (put it in `TAG_STORE`), and API tokens come only from the environment.

use super::{Config, Environment, LogFormat, LogLevel};
use clap::parser::ValueSource;
use clap::ArgMatches;
use std::path::{Path, PathBuf};

/// The settings a profile file may hold (unknown keys are errors).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Address to listen on.
    pub host: Option<String>,
    /// Port to listen on.
    pub port: Option<u16>,
    /// Source tables: a directory or `s3://bucket/prefix`.
    pub data_dir: Option<String>,
    /// Where S3 tables are mirrored.
    pub s3_cache_dir: Option<PathBuf>,
    /// Store URL, without a password.
    pub store: Option<String>,
    /// Plugin libraries.
    pub plugins_dir: Option<PathBuf>,
    /// Tasks computed at once.
    pub workers: Option<u16>,
    /// Tasks that may wait.
    pub queue_capacity: Option<u32>,
    /// Largest `user_ids` list.
    pub max_user_ids: Option<usize>,
    /// Rows per plugin batch.
    pub batch_rows: Option<u32>,
    /// Memory a run keeps within (`2GiB`).
    pub memory_limit: Option<String>,
    /// Where partitioned runs spill.
    pub spill_dir: Option<PathBuf>,
    /// Users per in-memory partition of a run within its limit (0: never).
    pub partition_users: Option<u64>,
    /// Failed authentications an address may make at once (0: no limit).
    pub auth_failure_burst: Option<u32>,
    /// Log level.
    pub log_level: Option<LogLevel>,
    /// Log line format.
    pub log_format: Option<LogFormat>,
    /// Log file.
    pub log_file: Option<PathBuf>,
    /// Seconds a console sign-in lasts.
    pub console_session_secs: Option<u32>,
    /// Whether the console's session cookie is `Secure` (HTTPS only).
    pub secure_cookies: Option<bool>,
    /// Where runs evaluate the tags: `local` or `spark`.
    pub executor: Option<super::Executor>,
    /// How `spark` runs reach Spark.
    pub spark: Option<crate::spark::SparkSettings>,
}

/// Every problem found in a configuration.
#[derive(Debug, thiserror::Error)]
#[error("the configuration is invalid:\n{}", .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

/// The settings a profile may hold: (argument id, profile key).
pub const PROFILE_KEYS: [(&str, &str); 20] = [
    ("host", "host"),
    ("port", "port"),
    ("data_dir", "data_dir"),
    ("s3_cache_dir", "s3_cache_dir"),
    ("store", "store"),
    ("plugins_dir", "plugins_dir"),
    ("max_concurrent_tasks", "workers"),
    ("queue_capacity", "queue_capacity"),
    ("max_user_ids", "max_user_ids"),
    ("batch_rows", "batch_rows"),
    ("log_level", "log_level"),
    ("log_format", "log_format"),
    ("log_file", "log_file"),
    ("console_session_secs", "console_session_secs"),
    ("secure_cookies", "secure_cookies"),
    ("auth_failure_burst", "auth_failure_burst"),
    ("memory_limit", "memory_limit"),
    ("spill_dir", "spill_dir"),
    ("partition_users", "partition_users"),
    ("executor", "executor"),
];

/// What marks a value of a shipped profile that must be replaced before
/// use: a profile value holding it is refused.
pub const PLACEHOLDER: &str = "CHANGE-ME";

/// Applies the environment's profile under `matches` (flags and variables
/// win), then validates the result for the command `matches` chose.
pub fn resolve(config: &mut Config, matches: &ArgMatches) -> Result<(), ConfigErrors> {
    let mut errors = super::commands::unused_flags(matches);
    let path = config
        .config_dir
        .join(format!("{}.toml", config.env.as_str()));
    let mut applied = Vec::new();
    if let Some(profile) = read_profile(&path, config.env, &mut errors) {
        check_secrets(&profile, &path, &mut errors);
        applied = apply(profile, &path, config, matches, &mut errors);
    }
    let command = <super::Cli as clap::CommandFactory>::command();
    config.origins =
        super::origin::Origins::collect(&command, matches, &path, &PROFILE_KEYS, &applied);
    let invoked = super::commands::invoked(matches);
    check_placeholders(config, &invoked, &mut errors);
    if super::commands::uses(&invoked, "tokens_file") {
        config.tokens = load_tokens(config.tokens_file.as_deref(), &mut errors);
    }
    validate(config, &invoked, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The profile at `path`, if there is one to apply; a missing one is an
/// error outside `--env local`.
fn read_profile(path: &Path, env: Environment, errors: &mut Vec<String>) -> Option<Profile> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str::<Profile>(&text)
            .map_err(|e| errors.push(format!("{}: {}", path.display(), e.message())))
            .ok(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && env == Environment::Local => None,
        Err(e) => {
            errors.push(format!(
                "profile {}: {e}: --env {} reads its settings from that file; create it (config/local.toml lists every key) or pass --config-dir (TAG_CONFIG_DIR) the directory that holds it",
                path.display(),
                env.as_str()
            ));
            None
        }
    }
}

/// Whether `id` was left at its built-in default (no flag, no variable).
fn defaulted(matches: &ArgMatches, id: &str) -> bool {
    matches!(
        matches.value_source(id),
        None | Some(ValueSource::DefaultValue)
    )
}

/// Sets what `profile` holds where no flag or variable did; the ids set.
fn apply(
    profile: Profile,
    path: &Path,
    config: &mut Config,
    matches: &ArgMatches,
    errors: &mut Vec<String>,
) -> Vec<&'static str> {
    let mut applied = Vec::new();
    macro_rules! set {
        ($field:ident, $id:literal, $value:expr) => {
            if let Some(value) = $value {
                if defaulted(matches, $id) {
                    config.$field = value;
                    applied.push($id);
                }
            }
        };
    }
    set!(host, "host", profile.host);
    set!(port, "port", profile.port);
    let data_dir = profile.data_dir.and_then(|text| {
        text.parse()
            .map_err(|e| errors.push(format!("data_dir in {}: {e}", path.display())))
            .ok()
    });
    set!(data_dir, "data_dir", data_dir);
    set!(s3_cache_dir, "s3_cache_dir", profile.s3_cache_dir.map(Some));
    set!(
        max_concurrent_tasks,
        "max_concurrent_tasks",
        profile.workers
    );
    set!(queue_capacity, "queue_capacity", profile.queue_capacity);
    set!(max_user_ids, "max_user_ids", profile.max_user_ids);
    set!(batch_rows, "batch_rows", profile.batch_rows);
    let memory_limit = profile.memory_limit.and_then(|text| {
        text.parse()
            .map_err(|e| errors.push(format!("memory_limit in {}: {e}", path.display())))
            .ok()
    });
    set!(memory_limit, "memory_limit", memory_limit.map(Some));
    set!(spill_dir, "spill_dir", profile.spill_dir.map(Some));
    set!(partition_users, "partition_users", profile.partition_users);
    set!(
        auth_failure_burst,
        "auth_failure_burst",
        profile.auth_failure_burst
    );
    set!(log_level, "log_level", profile.log_level);
    set!(log_format, "log_format", profile.log_format);
    set!(log_file, "log_file", profile.log_file);
    set!(
        console_session_secs,
        "console_session_secs",
        profile.console_session_secs
    );
    set!(secure_cookies, "secure_cookies", profile.secure_cookies);
    set!(executor, "executor", profile.executor);
    if let Some(spark) = profile.spark {
        config.spark = spark;
    }
    set!(store, "store", profile.store.map(Some));
    set!(plugins_dir, "plugins_dir", profile.plugins_dir.map(Some));
    applied
}

fn check_secrets(profile: &Profile, path: &std::path::Path, errors: &mut Vec<String>) {
    let has_password = profile.store.as_deref().is_some_and(|url| {
        url.split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .is_some_and(|(credentials, _)| credentials.contains(':'))
    });
    if has_password {
        errors.push(format!(
            "{}: store holds a password; secrets come only from the environment (TAG_STORE)",
            path.display()
        ));
    }
}

/// What a setting whose value is a placeholder should be set to.
fn meaning(id: &str) -> &'static str {
    match id {
        "store" => "your PostgreSQL or MySQL database's URL, without its password (the whole URL with the password goes in TAG_STORE)",
        "data_dir" => "where your source tables are: a directory or s3://BUCKET/PREFIX",
        "host" => "the address to listen on",
        "log_file" => "a file in a directory this user can write",
        _ => "a real value",
    }
}

/// Refuses profile values that still hold [`PLACEHOLDER`], for the settings
/// the command uses.
fn check_placeholders(config: &Config, invoked: &[&str], errors: &mut Vec<String>) {
    let values = [
        ("host", Some(config.host.clone())),
        ("data_dir", Some(config.data_dir.to_string())),
        ("store", config.store.clone()),
        (
            "s3_cache_dir",
            config
                .s3_cache_dir
                .as_ref()
                .map(|p| p.display().to_string()),
        ),
        (
            "plugins_dir",
            config.plugins_dir.as_ref().map(|p| p.display().to_string()),
        ),
        ("log_file", Some(config.log_file.display().to_string())),
        (
            "spill_dir",
            config.spill_dir.as_ref().map(|p| p.display().to_string()),
        ),
    ];
    for (id, value) in values {
        let Some(value) = value.filter(|v| v.contains(PLACEHOLDER)) else {
            continue;
        };
        if !super::commands::uses(invoked, id) {
            continue;
        }
        let origin = config.origins.of(id);
        errors.push(format!(
            "{origin} is a placeholder ({}): {} to {}",
            crate::store::redact(&value),
            origin.how_to_set(),
            meaning(id)
        ));
    }
}

/// The API tokens of `TAG_API_TOKENS` and the tokens file; problems are
/// added to `errors` (never with a token's value).
fn load_tokens(file: Option<&std::path::Path>, errors: &mut Vec<String>) -> crate::auth::Tokens {
    let env = std::env::var("TAG_API_TOKENS").ok();
    let text = match file.map(|f| (f, std::fs::read_to_string(f))) {
        Some((f, Ok(text))) => Some((f, text)),
        Some((f, Err(e))) => {
            errors.push(format!("tokens file {}: {e}", f.display()));
            None
        }
        None => None,
    };
    let file = text.as_ref().map(|(f, t)| (*f, t.as_str()));
    crate::auth::Tokens::parse(env.as_deref(), file).unwrap_or_else(|problems| {
        errors.extend(problems);
        Default::default()
    })
}

/// The range checks of values a profile may set (flags are checked when
/// they are parsed).
fn check_bounds(config: &Config, errors: &mut Vec<String>) {
    let ranges = [
        (
            "max_concurrent_tasks",
            u64::from(config.max_concurrent_tasks),
            1,
            64,
        ),
        (
            "queue_capacity",
            config.queue_capacity.into(),
            1,
            u32::MAX.into(),
        ),
        ("batch_rows", config.batch_rows.into(), 64, u32::MAX.into()),
        (
            "console_session_secs",
            config.console_session_secs.into(),
            1,
            super::MAX_CONSOLE_SESSION_SECS.into(),
        ),
    ];
    for (id, value, min, max) in ranges {
        if value < min || value > max {
            let origin = config.origins.of(id);
            errors.push(format!(
                "{origin} must be from {min} to {max}, got {value}: {}",
                origin.how_to_set()
            ));
        }
    }
}

/// The checks that span settings, for the command at `invoked`.
fn validate(config: &Config, invoked: &[&str], errors: &mut Vec<String>) {
    check_bounds(config, errors);
    let uses = |id| super::commands::uses(invoked, id);
    if uses("store") {
        check_store(config, errors);
    }
    if uses("log_file") {
        check_log_dir(config, errors);
    }
    if uses("executor") && config.executor == super::Executor::Spark {
        check_spark(config, errors);
    }
    if uses("tokens_file") && config.env != Environment::Local && !config.tokens.enabled() {
        errors.push(format!(
            "{} refuses to start without API tokens: set TAG_API_TOKENS or --tokens-file",
            config.env.as_str()
        ));
    }
}

/// The `[spark]` settings a `spark` executor needs: their values checked
/// now (whether spark-submit and the job are there is checked by each run,
/// which fails with what to set).
fn check_spark(config: &Config, errors: &mut Vec<String>) {
    let spark = &config.spark;
    if let Err(e) = spark.deploy_mode() {
        errors.push(e);
    }
    if let Err(e) = spark.conf_pairs() {
        errors.push(e);
    }
    let file = config
        .config_dir
        .join(format!("{}.toml", config.env.as_str()));
    if spark.master().contains(PLACEHOLDER) {
        errors.push(format!(
            "[spark] master in {} is a placeholder ({}): set it to your cluster's master URL (spark://HOST:7077, yarn, k8s://https://HOST:PORT), or run in this process with --executor local",
            file.display(),
            spark.master()
        ));
    }
}

/// The store URL's scheme, and what the environment allows.
fn check_store(config: &Config, errors: &mut Vec<String>) {
    let store = config.store_url();
    let origin = config.origins.of("store");
    if store.is_empty() {
        errors.push(format!(
            "{} is {}, not a local directory, so the default SQLite store has no place: {} to a postgres:// or mysql:// URL",
            config.origins.of("data_dir"),
            config.data_dir,
            origin.how_to_set()
        ));
        return;
    }
    let known = [
        "sqlite://",
        "postgres://",
        "postgresql://",
        "mysql://",
        "mariadb://",
    ];
    if !known.iter().any(|scheme| store.starts_with(scheme)) {
        errors.push(format!(
            "{origin} is {}, which is not sqlite://, postgres:// or mysql://: {} to one of those",
            crate::store::redact(&store),
            origin.how_to_set()
        ));
    }
    if config.env == Environment::GlueProd && store.starts_with("sqlite://") {
        errors.push(format!(
            "glue-prod needs a network store (postgres:// or mysql://), not SQLite ({origin} is {store}): {}",
            origin.how_to_set()
        ));
    }
}

/// A log file must be in a directory that exists (it is created, the
/// directory is not).
fn check_log_dir(config: &Config, errors: &mut Vec<String>) {
    let dir = match config.log_file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => return,
    };
    if dir.is_dir() {
        return;
    }
    let origin = config.origins.of("log_file");
    errors.push(format!(
        "{origin} is {}, but the directory {} does not exist: create it (`mkdir -p {}`, writable by this user), or {} to a file in a directory that exists",
        config.log_file.display(),
        dir.display(),
        dir.display(),
        origin.how_to_set()
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cli;
    use clap::{CommandFactory, FromArgMatches};

    /// Parses `args` with a profile directory holding `files`.
    fn parse(args: &[&str], files: &[(&str, &str)]) -> (Result<(), ConfigErrors>, Config) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let dir_arg = dir.path().display().to_string();
        let mut all = vec!["tag-server", "--config-dir", &dir_arg];
        all.extend_from_slice(args);
        let matches = Cli::command().try_get_matches_from(all).unwrap();
        let mut cli = Cli::from_arg_matches(&matches).unwrap();
        let outcome = resolve(&mut cli.config, &matches);
        (outcome, cli.config)
    }

    #[test]
    fn a_profile_fills_what_flags_leave_at_their_defaults() {
        let profile = "workers = 7\nport = 6000\ndata_dir = \"/srv/data\"\nlog_format = \"json\"\nauth_failure_burst = 4\n\
                       console_session_secs = 600\nsecure_cookies = true\n";
        let tokens = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tokens.path(), "ops:admin:0123456789abcdef-ops\n").unwrap();
        let tokens_arg = tokens.path().display().to_string();
        let (outcome, config) = parse(
            &[
                "--env",
                "glue-dev",
                "--port",
                "7000",
                "--tokens-file",
                &tokens_arg,
            ],
            &[("glue-dev.toml", profile)],
        );
        outcome.unwrap();
        assert!(config.tokens.enabled());
        assert_eq!(config.max_concurrent_tasks, 7);
        assert_eq!(config.port, 7000, "the flag wins");
        assert_eq!(
            config.data_dir.local(),
            Some(std::path::Path::new("/srv/data"))
        );
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.auth_failure_burst, 4);
        assert_eq!(config.console_session_secs, 600);
        assert!(config.secure_cookies);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let profile = "store = \"mysql://root:hunter2@db/tags\"\nworkerz = 3\n";
        let (outcome, _) = parse(&["--env", "glue-prod"], &[("glue-prod.toml", profile)]);
        let errors = outcome.unwrap_err().0;
        // The unknown key stops the file from being read at all.
        assert!(errors.iter().any(|e| e.contains("workerz")), "{errors:?}");
        let profile = "store = \"mysql://root:hunter2@db/tags\"\n";
        let (outcome, _) = parse(&["--env", "glue-prod"], &[("glue-prod.toml", profile)]);
        let errors = outcome.unwrap_err().0;
        assert!(
            errors
                .iter()
                .any(|e| e.contains("secrets come only from the environment")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.contains("TAG_API_TOKENS")),
            "{errors:?}"
        );
        assert!(!errors.iter().any(|e| e.contains("hunter2")), "{errors:?}");
    }

    #[test]
    fn an_s3_data_location_needs_a_store_and_other_schemes_are_refused() {
        let (outcome, _) = parse(&["--data-dir", "s3://exports/daily"], &[]);
        let errors = outcome.unwrap_err().0;
        assert!(
            errors.iter().any(|e| e.contains("set --store")),
            "{errors:?}"
        );
        let (outcome, config) = parse(
            &[
                "--data-dir",
                "s3://exports/daily",
                "--store",
                "postgres://db/tags",
            ],
            &[],
        );
        outcome.unwrap();
        assert_eq!(config.data_dir.to_string(), "s3://exports/daily");
        let profile = "data_dir = \"gs://exports\"\nworkers = 0\n";
        let (outcome, _) = parse(&["--env", "glue-dev"], &[("glue-dev.toml", profile)]);
        let errors = outcome.unwrap_err().0;
        assert!(
            errors.iter().any(|e| e.contains("gs://exports")),
            "{errors:?}"
        );
        assert!(errors.iter().any(|e| e.contains("workers")), "{errors:?}");
    }

    #[test]
    fn outside_local_tokens_are_required_and_bad_entries_are_listed() {
        let (outcome, _) = parse(&["--env", "glue-dev"], &[("glue-dev.toml", "")]);
        let errors = outcome.unwrap_err().0;
        assert!(
            errors
                .iter()
                .any(|e| e.contains("glue-dev refuses to start without API tokens")),
            "{errors:?}"
        );
        let tokens = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tokens.path(), "ops:root:0123456789abcdef-secret\n").unwrap();
        let tokens_arg = tokens.path().display().to_string();
        let (outcome, _) = parse(&["--tokens-file", &tokens_arg], &[]);
        let errors = outcome.unwrap_err().0;
        assert!(
            errors
                .iter()
                .any(|e| e.contains("line 1") && e.contains("read or admin")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .all(|e| !e.contains("0123456789abcdef-secret")),
            "{errors:?}"
        );
    }

    #[test]
    fn glue_prod_refuses_sqlite_and_a_missing_profile_is_an_error_outside_local() {
        let (outcome, _) = parse(
            &["--env", "glue-prod"],
            &[("glue-prod.toml", "workers = 2\n")],
        );
        let errors = outcome.unwrap_err().0;
        assert!(
            errors.iter().any(|e| e.contains("not SQLite")),
            "{errors:?}"
        );
        let (outcome, _) = parse(&["--env", "glue-dev"], &[]);
        assert!(outcome.unwrap_err().0[0].contains("glue-dev.toml"));
        let (outcome, _) = parse(&["--env", "local"], &[]);
        outcome.unwrap();
    }
}
