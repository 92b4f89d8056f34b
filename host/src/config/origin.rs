//! Where each setting's value came from (a flag, a `TAG_*` variable, a key
//! of the profile file, or the built-in default), so that an error about a
//! value names the key, the file and what to set.

use clap::parser::ValueSource;
use clap::{ArgMatches, Command};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// Where one value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The command line.
    Flag,
    /// Its environment variable.
    Variable,
    /// The profile file.
    Profile(PathBuf),
    /// Nobody set it.
    Default,
}

/// One setting and where its value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The flag, as `--data-dir`.
    pub flag: String,
    /// Its environment variable, if it has one.
    pub variable: Option<String>,
    /// Its key in a profile file, if profiles may set it.
    pub key: Option<&'static str>,
    /// Where the value came from.
    pub source: Source,
}

impl Origin {
    /// The ways to set it, the one that set it first: "set `store` in
    /// config/glue-prod.toml (or --store, TAG_STORE)".
    pub fn how_to_set(&self) -> String {
        let mut others = vec![self.flag.clone()];
        others.extend(self.variable.clone());
        let others = others.join(", ");
        match (&self.source, self.key) {
            (Source::Profile(file), Some(key)) => {
                format!("set {key} in {} (or {others})", file.display())
            }
            _ => format!("set {others}"),
        }
    }
}

impl fmt::Display for Origin {
    /// The setting as the user gave it: `--data-dir`, `TAG_DATA_DIR`,
    /// `data_dir in config/glue-dev.toml` or `--data-dir (the default)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.source, &self.variable, self.key) {
            (Source::Variable, Some(variable), _) => f.write_str(variable),
            (Source::Profile(file), _, Some(key)) => write!(f, "{key} in {}", file.display()),
            (Source::Default, ..) => write!(f, "{} (the default)", self.flag),
            _ => f.write_str(&self.flag),
        }
    }
}

/// The origin of every setting, by argument id.
#[derive(Debug, Clone, Default)]
pub struct Origins(BTreeMap<String, Origin>);

impl Origins {
    /// The origins of `command`'s arguments in `matches`; `from_profile`
    /// lists the ids whose value `profile` supplied, with their keys.
    pub fn collect(
        command: &Command,
        matches: &ArgMatches,
        profile: &std::path::Path,
        keys: &[(&'static str, &'static str)],
        from_profile: &[&str],
    ) -> Origins {
        let mut origins = BTreeMap::new();
        for arg in command.get_arguments() {
            let (id, Some(long)) = (arg.get_id().as_str(), arg.get_long()) else {
                continue;
            };
            let source = match matches.value_source(id) {
                Some(ValueSource::CommandLine) => Source::Flag,
                Some(ValueSource::EnvVariable) => Source::Variable,
                _ if from_profile.contains(&id) => Source::Profile(profile.to_path_buf()),
                _ => Source::Default,
            };
            let origin = Origin {
                flag: format!("--{long}"),
                variable: arg.get_env().map(|v| v.to_string_lossy().into_owned()),
                key: keys.iter().find(|(i, _)| *i == id).map(|(_, key)| *key),
                source,
            };
            origins.insert(id.to_string(), origin);
        }
        Origins(origins)
    }

    /// The origin of setting `id` (a default one when it is unknown, as
    /// for a configuration built without [`super::profile::resolve`]).
    pub fn of(&self, id: &str) -> Origin {
        self.0.get(id).cloned().unwrap_or_else(|| Origin {
            flag: format!("--{}", id.replace('_', "-")),
            variable: None,
            key: None,
            source: Source::Default,
        })
    }

    /// Whether setting `id` was given (flag, variable or profile).
    pub fn given(&self, id: &str) -> bool {
        self.of(id).source != Source::Default
    }
}
