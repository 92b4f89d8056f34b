//! The `spark-submit` process of one run: started in a process group of
//! its own (so a cancel stops the driver and the Python it started), its
//! output kept in a log file, and read back for the application's id and,
//! when it fails, Spark's error.

use super::settings::Launch;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The job's line naming its application (`job.py` prints it first).
const APP_LINE: &str = "tag-engine job: application ";
/// How long a cancelled driver gets to stop its application cleanly.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// Of a failed driver's log, the end searched for its error.
const ERROR_TAIL: u64 = 256 * 1024;

/// A submitted job.
pub struct Submitted {
    child: Child,
    log: PathBuf,
    /// Bytes of the log already scanned.
    scanned: u64,
    /// The application's id, once the driver printed it.
    app_id: Option<String>,
    /// The driver's web UI port, when tag-server chose it (client mode).
    pub ui_port: Option<u16>,
}

/// Starts `launch`'s job on `plan`, its output into `log`; `name` is the
/// application's name.
pub fn submit(launch: &Launch, plan: &Path, name: &str, log: &Path) -> Result<Submitted, String> {
    let ui_port = ui_port(launch);
    let mut command = Command::new(&launch.spark_submit);
    command.args(arguments(launch, plan, name, ui_port));
    if let Some(python) = &launch.python {
        command.env("PYSPARK_PYTHON", python);
        command.env("PYSPARK_DRIVER_PYTHON", python);
    }
    let out = File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let child = command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", launch.spark_submit.display()))?;
    Ok(Submitted {
        child,
        log: log.to_path_buf(),
        scanned: 0,
        app_id: None,
        ui_port,
    })
}

/// spark-submit's arguments: the settings, the job and its plan (in cluster
/// mode shipped with `--files`, the driver reading its own copy).
pub fn arguments(launch: &Launch, plan: &Path, name: &str, ui_port: Option<u16>) -> Vec<String> {
    let mut args = vec![
        "--master".to_string(),
        launch.master.clone(),
        "--deploy-mode".to_string(),
        launch.deploy_mode.clone(),
        "--name".to_string(),
        name.to_string(),
    ];
    let mut conf = launch.conf.clone();
    if let Some(port) = ui_port {
        conf.push(("spark.ui.port".into(), port.to_string()));
    }
    for (key, value) in conf {
        args.extend(["--conf".to_string(), format!("{key}={value}")]);
    }
    let plan_arg = if launch.client_mode() {
        plan.display().to_string()
    } else {
        args.extend(["--files".to_string(), plan.display().to_string()]);
        plan.file_name()
            .map_or("plan.json".into(), |n| n.to_string_lossy().into_owned())
    };
    args.extend([
        launch.job.display().to_string(),
        "--plan".to_string(),
        plan_arg,
    ]);
    args
}

/// The port for the driver's UI, which tag-server follows: chosen here in
/// client mode unless the settings choose one or turn the UI off.
fn ui_port(launch: &Launch) -> Option<u16> {
    if !launch.client_mode() || launch.conf("spark.ui.enabled") == Some("false") {
        return None;
    }
    if let Some(port) = launch.conf("spark.ui.port") {
        return port.parse().ok();
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
    listener.local_addr().ok().map(|a| a.port())
}

impl Submitted {
    /// The exit status, once the driver has ended.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>, String> {
        self.child.try_wait().map_err(|e| e.to_string())
    }

    /// The application's id, once the driver has printed it.
    pub fn app_id(&mut self) -> Option<&str> {
        if self.app_id.is_none() {
            self.scan();
        }
        self.app_id.as_deref()
    }

    /// Reads what the log gained since the last scan, for the id line.
    fn scan(&mut self) {
        let Ok(mut file) = File::open(&self.log) else {
            return;
        };
        if file.seek(SeekFrom::Start(self.scanned)).is_err() {
            return;
        }
        let mut text = String::new();
        if file.read_to_string(&mut text).is_err() {
            return;
        }
        // Only whole lines: a line being written is read next time.
        let whole = text.rfind('\n').map_or(0, |i| i + 1);
        self.scanned += whole as u64;
        self.app_id = application_id(&text[..whole]);
    }

    /// Stops the job: SIGTERM to its process group (the driver stops its
    /// application), SIGKILL after a grace period; waits for it.
    pub fn stop(&mut self) {
        let group = self.child.id() as i32;
        signal_group(group, libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                // The driver is gone; what it started goes with it.
                signal_group(group, libc::SIGKILL);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        signal_group(group, libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// Spark's error from the end of a failed driver's log.
    pub fn error(&self) -> String {
        let tail = read_tail(&self.log, ERROR_TAIL).unwrap_or_default();
        spark_error(&tail)
    }

    /// The driver's log file.
    pub fn log(&self) -> &Path {
        &self.log
    }
}

impl Drop for Submitted {
    /// A run that ends while its job is still running (an error, a panic)
    /// leaves no job behind.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal_group(self.child.id() as i32, libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

fn signal_group(group: i32, signal: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; it has
    // no memory effects on this process.
    unsafe {
        libc::kill(-group, signal);
    }
}

fn read_tail(path: &Path, bytes: u64) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(bytes)))?;
    let mut raw = Vec::new();
    file.read_to_end(&mut raw)?;
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

/// The application id the job printed in `log`, if it did.
pub fn application_id(log: &str) -> Option<String> {
    log.lines()
        .filter_map(|line| line.split_once(APP_LINE))
        .map(|(_, id)| id.trim().to_string())
        .find(|id| !id.is_empty())
}

/// The message a failed driver's `log` ends with: the job's own error
/// (`tag-engine job: ...`), else the last exception line (Python's last
/// traceback line, `Exception in thread "main" ...`, a Py4J error's
/// cause), else its last line.
pub fn spark_error(log: &str) -> String {
    let lines: Vec<&str> = log.lines().map(str::trim_end).collect();
    let job = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("tag-engine job: ") && !l.contains(APP_LINE));
    let message = job
        .copied()
        .or_else(|| last_exception(&lines))
        .or_else(|| lines.iter().rev().find(|l| !l.trim().is_empty()).copied());
    let message = message.unwrap_or("spark-submit printed nothing").trim();
    let mut short: String = message.chars().take(600).collect();
    if short.len() < message.len() {
        short.push('…');
    }
    short
}

fn last_exception<'a>(lines: &[&'a str]) -> Option<&'a str> {
    let at = lines.iter().rposition(|l| is_exception(l))?;
    let line = lines[at];
    // Py4J: "...Py4JJavaError: An error occurred while calling o45.x." and
    // the Java exception on the next line, after ": ".
    match lines.get(at + 1).and_then(|next| next.strip_prefix(": ")) {
        Some(cause) if line.contains("Py4JJavaError") => Some(cause),
        _ => Some(line),
    }
}

fn is_exception(line: &str) -> bool {
    if line.starts_with("Exception in thread") {
        return true;
    }
    let Some((name, _)) = line.split_once(": ") else {
        return false;
    };
    !name.is_empty()
        && !name.contains(' ')
        && (name.ends_with("Error") || name.ends_with("Exception"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(mode: &str) -> Launch {
        Launch {
            spark_submit: "/opt/spark/bin/spark-submit".into(),
            master: "spark://m:7077".into(),
            deploy_mode: mode.into(),
            conf: vec![("spark.executor.memory".into(), "2g".into())],
            job: "/pkg/tag_engine_job.py".into(),
            python: None,
        }
    }

    #[test]
    fn client_mode_passes_the_plan_path_and_cluster_mode_ships_it() {
        let plan = Path::new("/stage/run-1/plan.json");
        let client = arguments(&launch("client"), plan, "tag-engine t1", Some(4050));
        assert_eq!(
            client[6..],
            [
                "--conf",
                "spark.executor.memory=2g",
                "--conf",
                "spark.ui.port=4050",
                "/pkg/tag_engine_job.py",
                "--plan",
                "/stage/run-1/plan.json"
            ]
        );
        let cluster = arguments(&launch("cluster"), plan, "n", None);
        let tail: Vec<&str> = cluster[8..].iter().map(String::as_str).collect();
        assert_eq!(
            tail,
            [
                "--files",
                "/stage/run-1/plan.json",
                "/pkg/tag_engine_job.py",
                "--plan",
                "plan.json"
            ]
        );
    }

    #[test]
    fn the_application_id_comes_from_the_jobs_line() {
        let log = "INFO SparkContext: Running Spark\ntag-engine job: application local-1733300000000\nmore\n";
        assert_eq!(application_id(log).as_deref(), Some("local-1733300000000"));
        assert_eq!(application_id("nothing\n"), None);
    }

    #[test]
    fn a_failed_drivers_error_is_its_message_not_its_stack() {
        let plan =
            "tag-engine job: application local-1\ntag-engine job: plan: tags[0].tag_id: missing\n";
        assert_eq!(
            spark_error(plan),
            "tag-engine job: plan: tags[0].tag_id: missing"
        );
        let master = "Exception in thread \"main\" org.apache.spark.SparkException: Could not parse Master URL: 'bogus'\n\tat org.apache.spark.SparkContext$.createTaskScheduler(SparkContext.scala:3200)\n";
        assert!(spark_error(master).contains("Could not parse Master URL: 'bogus'"));
        let python = "Traceback (most recent call last):\n  File \"job.py\", line 3, in <module>\nRuntimeError: table user_basic_info: no column age in /d (it has user_id)\n";
        assert_eq!(
            spark_error(python),
            "RuntimeError: table user_basic_info: no column age in /d (it has user_id)"
        );
        let py4j = "py4j.protocol.Py4JJavaError: An error occurred while calling o45.parquet.\n: java.io.FileNotFoundException: File /x does not exist\n\tat a.b\n";
        assert_eq!(
            spark_error(py4j),
            "java.io.FileNotFoundException: File /x does not exist"
        );
        assert_eq!(spark_error("\n"), "spark-submit printed nothing");
    }
}
