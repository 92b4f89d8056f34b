//! The profile's `[spark]` table, and what a run submits from it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The job script's name in a `tag-server spark-package` folder.
pub const PACKAGE_JOB: &str = "tag_engine_job.py";
/// The plugin libraries' folder in a package.
pub const PACKAGE_PLUGINS: &str = "plugins";

/// How runs with `--executor spark` reach Spark (the profile's `[spark]`
/// table; unknown keys are errors).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparkSettings {
    /// The `spark-submit` program [default: `$SPARK_HOME/bin/spark-submit`,
    /// else `spark-submit` on the PATH].
    pub spark_submit: Option<PathBuf>,
    /// `--master`: `local[N]`, `spark://host:7077`, `yarn`, `k8s://...`
    /// [default: `local[*]`].
    pub master: Option<String>,
    /// `--deploy-mode`: `client` (the driver runs beside tag-server, which
    /// follows it through the driver's REST API) or `cluster`.
    pub deploy_mode: Option<String>,
    /// `--conf` settings, such as `"spark.executor.memory" = "4g"`.
    #[serde(default)]
    pub conf: BTreeMap<String, toml::Value>,
    /// A folder made by `tag-server spark-package`: its job script and, when
    /// `plugins_dir` is not set, its `plugins/` are used.
    pub package: Option<PathBuf>,
    /// The job script [default: the package's, else the one installed with
    /// the `tag_engine_spark` wheel in `python`'s environment].
    pub job: Option<PathBuf>,
    /// The Python the driver and executors run (`PYSPARK_PYTHON`) [default:
    /// `spark.pyspark.python` in `conf`, else `$PYSPARK_PYTHON`, else
    /// `python3`].
    pub python: Option<PathBuf>,
    /// The plugin libraries' path on the executors [default: the package's
    /// `plugins/`, else tag-server's plugins directory].
    pub plugins_dir: Option<String>,
    /// Ship the plugin libraries with the job (Spark's `addFile`; the
    /// executors load them from Spark's files directory) instead of
    /// finding them at `plugins_dir` on every node: the libraries are then
    /// those of the package's `plugins/`, else of tag-server's plugins
    /// directory, as the driver reaches them.
    #[serde(default)]
    pub ship_plugins: bool,
    /// Where the executors' private plugin copies go (the job's
    /// `copies_dir`) [default: the job's own default].
    pub copies_dir: Option<String>,
    /// Where each run's plan and output are staged: a directory that the
    /// driver, the executors and tag-server all reach at this path
    /// [default: under --spill-dir].
    pub staging_dir: Option<PathBuf>,
    /// The tables as the executors read them (`s3a://bucket/prefix`, a
    /// path) [default: tag-server's data location, `s3://` as `s3a://`].
    pub data_dir: Option<String>,
    /// Users per part of the job's output, about (each part is one
    /// `user_id` range, committed at a time: what tag-server holds)
    /// [default: 500,000].
    pub part_users: Option<u64>,
}

/// What a run submits: resolved from [`SparkSettings`] at the run's start.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    /// The program.
    pub spark_submit: PathBuf,
    /// `--master`.
    pub master: String,
    /// `--deploy-mode`.
    pub deploy_mode: String,
    /// `--conf` pairs, as given.
    pub conf: Vec<(String, String)>,
    /// The job script.
    pub job: PathBuf,
    /// `PYSPARK_PYTHON`, when known.
    pub python: Option<PathBuf>,
}

impl Launch {
    /// Whether the driver runs beside tag-server (so its REST API and its
    /// output are tag-server's to read).
    pub fn client_mode(&self) -> bool {
        self.deploy_mode == "client"
    }

    /// A `--conf` value the settings give.
    pub fn conf(&self, key: &str) -> Option<&str> {
        self.conf
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl SparkSettings {
    /// The `--conf` pairs, values as Spark reads them (strings unquoted).
    pub fn conf_pairs(&self) -> Result<Vec<(String, String)>, String> {
        self.conf
            .iter()
            .map(|(key, value)| {
                let text = match value {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    other => {
                        return Err(format!(
                        "[spark] conf.\"{key}\": expected a string, number or boolean, got a {}",
                        other.type_str()
                    ))
                    }
                };
                Ok((key.clone(), text))
            })
            .collect()
    }

    /// The master in effect.
    pub fn master(&self) -> &str {
        self.master.as_deref().unwrap_or("local[*]")
    }

    /// The deploy mode in effect, checked.
    pub fn deploy_mode(&self) -> Result<&str, String> {
        match self.deploy_mode.as_deref().unwrap_or("client") {
            mode @ ("client" | "cluster") => Ok(mode),
            other => Err(format!(
                "[spark] deploy_mode must be \"client\" or \"cluster\", got {other:?}"
            )),
        }
    }

    /// The Python of the driver and executors, when one is named.
    pub fn python(&self) -> Option<PathBuf> {
        self.python
            .clone()
            .or_else(|| {
                self.conf
                    .get("spark.pyspark.python")
                    .and_then(|v| v.as_str())
                    .map(PathBuf::from)
            })
            .or_else(|| std::env::var_os("PYSPARK_PYTHON").map(PathBuf::from))
    }

    /// The plugins' path on the executors.
    pub fn executor_plugins(&self, host_plugins: &Path) -> String {
        if let Some(dir) = &self.plugins_dir {
            return dir.clone();
        }
        match &self.package {
            Some(package) => package.join(PACKAGE_PLUGINS).display().to_string(),
            None => host_plugins.display().to_string(),
        }
    }

    /// What to submit; a clear error when `spark-submit` or the job script
    /// cannot be found.
    pub fn launch(&self) -> Result<Launch, String> {
        let python = self.python();
        Ok(Launch {
            spark_submit: self.spark_submit()?,
            master: self.master().to_string(),
            deploy_mode: self.deploy_mode()?.to_string(),
            conf: self.conf_pairs()?,
            job: self.job(python.as_deref())?,
            python,
        })
    }

    fn spark_submit(&self) -> Result<PathBuf, String> {
        if let Some(program) = &self.spark_submit {
            return found(program).ok_or_else(|| {
                format!(
                    "[spark] spark_submit {} is not an executable file",
                    program.display()
                )
            });
        }
        let home = std::env::var_os("SPARK_HOME").map(|h| Path::new(&h).join("bin/spark-submit"));
        home.as_deref()
            .and_then(found)
            .or_else(|| found(Path::new("spark-submit")))
            .ok_or_else(|| {
                "spark-submit was not found (not in $SPARK_HOME/bin, not on the PATH): install Spark (pip install pyspark gives one) and set [spark] spark_submit in the profile, or SPARK_HOME".to_string()
            })
    }

    fn job(&self, python: Option<&Path>) -> Result<PathBuf, String> {
        if let Some(job) = &self.job {
            return job
                .is_file()
                .then(|| job.clone())
                .ok_or_else(|| format!("[spark] job {} is not a file", job.display()));
        }
        if let Some(package) = &self.package {
            let job = package.join(PACKAGE_JOB);
            return job.is_file().then_some(job).ok_or_else(|| {
                format!(
                    "[spark] package {} has no {PACKAGE_JOB}: make it with tag-server spark-package --out DIR",
                    package.display()
                )
            });
        }
        installed_job(python.unwrap_or(Path::new("python3")))
    }
}

/// The job script of the `tag_engine_spark` wheel installed for `python`.
fn installed_job(python: &Path) -> Result<PathBuf, String> {
    let code = "import tag_engine_spark.job as j; print(j.__file__)";
    let output = std::process::Command::new(python)
        .args(["-c", code])
        .output()
        .map_err(|e| {
            format!(
                "cannot run {} to find the Spark job: {e}; set [spark] python, job or package",
                python.display()
            )
        })?;
    if !output.status.success() {
        return Err(format!(
            "{} cannot import tag_engine_spark (install its wheel there, or set [spark] job or package): {}",
            python.display(),
            String::from_utf8_lossy(&output.stderr).trim().lines().last().unwrap_or("")
        ));
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&output.stdout).trim(),
    ))
}

/// `program` if it is an executable file (a bare name: on the PATH).
fn found(program: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 || program.is_absolute() {
        return executable(program).then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}

/// The executors' path of tag-server's data location `location`
/// (`s3://` is Hadoop's `s3a://`).
pub fn executor_data_dir(location: &str) -> String {
    match location.strip_prefix("s3://") {
        Some(rest) => format!("s3a://{rest}"),
        None => location.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_values_are_spark_strings_and_tables_are_refused() {
        let settings: SparkSettings = toml::from_str(
            "[conf]\n\"spark.executor.memory\" = \"4g\"\n\"spark.executor.instances\" = 5\n\"spark.x\" = true\n",
        )
        .unwrap();
        let pairs = settings.conf_pairs().unwrap();
        assert_eq!(
            pairs,
            vec![
                ("spark.executor.instances".to_string(), "5".to_string()),
                ("spark.executor.memory".to_string(), "4g".to_string()),
                ("spark.x".to_string(), "true".to_string()),
            ]
        );
        let nested: SparkSettings = toml::from_str("[conf.spark]\nexecutor = 1\n").unwrap();
        assert!(nested.conf_pairs().unwrap_err().contains("conf.\"spark\""));
    }

    #[test]
    fn unknown_keys_and_bad_deploy_modes_are_errors() {
        assert!(toml::from_str::<SparkSettings>("masterr = \"x\"").is_err());
        let settings: SparkSettings = toml::from_str("deploy_mode = \"both\"").unwrap();
        assert!(settings.deploy_mode().unwrap_err().contains("\"both\""));
        assert_eq!(SparkSettings::default().master(), "local[*]");
    }

    #[test]
    fn a_missing_program_or_job_says_what_to_set() {
        let settings = SparkSettings {
            spark_submit: Some("/nonexistent/spark-submit".into()),
            ..SparkSettings::default()
        };
        assert!(settings
            .launch()
            .unwrap_err()
            .contains("[spark] spark_submit"));
        let dir = tempfile::tempdir().unwrap();
        let settings = SparkSettings {
            spark_submit: Some("/bin/sh".into()),
            package: Some(dir.path().to_path_buf()),
            ..SparkSettings::default()
        };
        assert!(settings.launch().unwrap_err().contains(PACKAGE_JOB));
    }

    #[test]
    fn s3_locations_are_read_through_s3a() {
        assert_eq!(executor_data_dir("s3://lake/daily"), "s3a://lake/daily");
        assert_eq!(executor_data_dir("/data"), "/data");
    }
}
