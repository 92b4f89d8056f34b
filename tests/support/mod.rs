//! Shared helpers for the end-to-end tests: real plugin libraries, built
//! once per test run with cargo into their own target directory (so the
//! outer `cargo test` holds no lock on it), and plugin directories made from
//! copies of them.

#![allow(dead_code)]

pub mod backend;

/// Runs each scenario (a function taking a [`backend::Backend`]) as a test
/// on SQLite, PostgreSQL and MariaDB, in modules named after them; the
/// test file brings `Backend` into scope.
#[allow(unused_macros)]
macro_rules! on_every_backend {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $scenario() { super::$scenario(super::Backend::sqlite()) })*
        }
        mod postgres {
            $(#[test] fn $scenario() { super::$scenario(super::Backend::postgres()) })*
        }
        mod mariadb {
            $(#[test] fn $scenario() { super::$scenario(super::Backend::mysql()) })*
        }
    };
}
pub mod oracle;
pub mod proxy;
pub mod python;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The reference plugin crates, as (package, library file stem).
pub const REFERENCE_PLUGINS: [&str; 5] = ["wealth", "behavior", "risk", "lifecycle", "demographic"];
/// The test-fixture crates.
pub const FIXTURES: [&str; 7] = [
    "misbehaving",
    "incompatible",
    "not-a-plugin",
    "constructor",
    "usurper",
    "custom",
    "older",
];

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// The directory holding the freshly built plugin and fixture libraries.
pub fn built_libraries() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // target/<profile>/deps/<test binary> -> target/
        let exe = std::env::current_exe().expect("test binary path");
        let target = exe
            .ancestors()
            .nth(3)
            .expect("test binary lives in target/<profile>/deps")
            .to_path_buf();
        let out = target.join("e2e-plugins");
        // The reference plugins from this workspace, the fixtures from
        // theirs (tests/fixtures), both into the tests' own target directory.
        let builds = [
            (
                "Cargo.toml",
                REFERENCE_PLUGINS
                    .map(|n| format!("tag-plugin-{n}"))
                    .to_vec(),
            ),
            (
                "tests/fixtures/Cargo.toml",
                FIXTURES.map(|n| format!("tag-fixture-{n}")).to_vec(),
            ),
        ];
        for (manifest, packages) in builds {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--quiet", "--manifest-path"])
                .arg(workspace().join(manifest))
                .arg("--target-dir")
                .arg(&out);
            for package in &packages {
                cmd.args(["-p", package]);
            }
            let status = cmd
                .status()
                .expect("run cargo build for the plugin libraries");
            assert!(status.success(), "building {packages:?} failed: {status}");
        }
        out.join("debug")
    })
}

/// Path of a built library: `plugin("wealth")` or `fixture("misbehaving")`.
fn library(stem: &str) -> PathBuf {
    let path = built_libraries().join(format!(
        "lib{}.{}",
        stem.replace('-', "_"),
        std::env::consts::DLL_EXTENSION
    ));
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// A reference plugin library.
pub fn plugin(name: &str) -> PathBuf {
    library(&format!("tag-plugin-{name}"))
}

/// A fixture library.
pub fn fixture(name: &str) -> PathBuf {
    library(&format!("tag-fixture-{name}"))
}

/// A directory the plugin loader trusts, for the tests' plugin directories:
/// the loader refuses a library with a directory on its path that others
/// can write (unless sticky with our entry below it), and the system temp
/// directory may be anything on a test machine, so the tests keep theirs
/// in a place of this user's whatever `TMPDIR` is.
/// `$HOME/.cache/tag-engine-tests`, owned by this user, mode 0755.
pub fn trusted_base() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let home = std::env::var_os("HOME").expect("HOME is set");
        let dir = PathBuf::from(home).join(".cache").join("tag-engine-tests");
        std::fs::create_dir_all(&dir).expect("create the tests' plugin base");
        for d in [dir.parent().unwrap(), dir.as_path()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
                .expect("chmod the tests' plugin base");
        }
        dir
    })
}

/// A fresh plugins directory (mode 0755, in [`trusted_base`]) holding
/// copies of `files` (mode 0755), each under the given name.
pub fn plugins_dir(files: &[(&str, PathBuf)]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("plugins-")
        .tempdir_in(trusted_base())
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod dir");
    for (name, source) in files {
        let dest = dir.path().join(name);
        std::fs::copy(source, &dest).expect("copy library");
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))
            .expect("chmod file");
    }
    dir
}

/// The reference plugins and the misbehaving fixture (tags 901-906).
pub fn reference_and_misbehaving_plugins() -> tempfile::TempDir {
    let mut files: Vec<(String, PathBuf)> = REFERENCE_PLUGINS
        .iter()
        .map(|n| (format!("{n}.so"), plugin(n)))
        .collect();
    files.push(("misbehaving.so".into(), fixture("misbehaving")));
    let named: Vec<(&str, PathBuf)> = files.iter().map(|(n, p)| (n.as_str(), p.clone())).collect();
    plugins_dir(&named)
}

/// Sets the rule of the misbehaving fixture's tag 906 on the server at
/// `base` so that its batches wait for `gate`: each batch creates
/// `<gate>.entered`, then waits until `gate` exists. Tests hold a task
/// running with it instead of guessing how long a slow task takes.
pub fn hold_tag_906_at(base: &str, gate: &Path) {
    let rule = serde_json::json!({"rule": {"field": "kyc_status", "operator": "!=", "value": gate.to_str().expect("UTF-8 path")}});
    let reply = client()
        .put(format!("{base}/api/v1/tags/906/rule"))
        .json(&rule)
        .send()
        .expect("PUT rule");
    assert_eq!(reply.status().as_u16(), 200, "{:?}", reply.text());
}

/// Waits (up to three minutes) until a batch of tag 906 held by
/// [`hold_tag_906_at`] has entered the plugin. A minute was too short once
/// for a standalone Spark cluster started while the other Spark tests ran
/// on the same two cores (the job had not reached the plugin yet; run
/// alone, the whole test takes 74 s).
pub fn wait_entered(gate: &Path) {
    let entered = gate.with_extension("entered");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    while !entered.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no batch reached tag 906"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A plugins directory with the five reference plugins.
pub fn reference_plugins_dir() -> tempfile::TempDir {
    let files: Vec<_> = REFERENCE_PLUGINS
        .iter()
        .map(|n| (format!("{n}.so"), plugin(n)))
        .collect();
    plugins_dir(
        &files
            .iter()
            .map(|(n, p)| (n.as_str(), p.clone()))
            .collect::<Vec<_>>(),
    )
}

/// A tag-server running in-process on 127.0.0.1:0 with its own runtime.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The SQLite file of its store (empty for another backend).
    pub db: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Starts a server over `data_dir` and `plugins_dir` with an SQLite
    /// store at `db`, with extra CLI flags.
    pub fn start(data_dir: &Path, plugins_dir: &Path, db: &Path, extra: &[&str]) -> TestServer {
        let url = format!("sqlite://{}", db.display());
        let mut server = TestServer::start_with_store(data_dir, plugins_dir, &url, extra);
        server.db = db.to_path_buf();
        server
    }

    /// Starts a server over `data_dir` and `plugins_dir` with the store at
    /// `store` (a `--store` URL), with extra CLI flags.
    pub fn start_with_store(
        data_dir: &Path,
        plugins_dir: &Path,
        store: &str,
        extra: &[&str],
    ) -> TestServer {
        let mut args = vec![
            "tag-server".to_string(),
            "--plugins-dir".into(),
            plugins_dir.display().to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--store".into(),
            store.to_string(),
            "--batch-rows".into(),
            "1000".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let cli = <tag_host::config::Cli as clap::Parser>::try_parse_from(&args)
            .expect("valid test flags");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let base = format!("http://{}", listener.local_addr().expect("local addr"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                tag_host::server::run(cli.config, listener, async {
                    let _ = stopped.await;
                })
                .await
            })
        });
        let server = TestServer {
            base,
            db: PathBuf::new(),
            stop: Some(stop),
            thread: Some(thread),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while server.get("/health").is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "server did not come up"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        server
    }

    /// GET a path; the status and the JSON body.
    pub fn get(&self, path: &str) -> reqwest::Result<(u16, serde_json::Value)> {
        let response = client().get(format!("{}{path}", self.base)).send()?;
        let status = response.status().as_u16();
        Ok((status, response.json().unwrap_or(serde_json::Value::Null)))
    }

    /// POST a raw body; the status and the JSON body.
    pub fn post_raw(&self, path: &str, body: &str) -> (u16, serde_json::Value) {
        let response = client()
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().unwrap_or(serde_json::Value::Null))
    }

    /// POST JSON; the status and the JSON body.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        self.post_raw(path, &body.to_string())
    }

    /// Triggers a task and returns its id (asserting 202).
    pub fn trigger(&self, body: serde_json::Value) -> String {
        let (status, reply) = self.post("/api/v1/tags/trigger", &body);
        assert_eq!(status, 202, "{reply}");
        reply["task_id"].as_str().expect("task_id").to_string()
    }

    /// Waits for a task to reach a terminal status; returns its status object.
    pub fn wait(&self, task_id: &str) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        loop {
            let (code, body) = self
                .get(&format!("/api/v1/tasks/{task_id}/status"))
                .expect("status");
            assert_eq!(code, 200, "{body}");
            let status = body["status"].clone();
            if ["completed", "failed", "cancelled"]
                .contains(&status["status"].as_str().unwrap_or(""))
            {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "task {task_id} did not finish: {status}"
            );
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
    }

    /// Triggers and waits; asserts the task completed and returns its result.
    pub fn run(&self, body: serde_json::Value) -> serde_json::Value {
        let id = self.trigger(body);
        let status = self.wait(&id);
        assert_eq!(status["status"], "completed", "{status}");
        status["result"].clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sample data from `gen-data` for `users` users, reference date 2025-01-15.
pub fn sample_data(users: usize) -> tempfile::TempDir {
    use tag_host::data::gen::{gen_data_with, GenOptions};
    let data = tempfile::tempdir().expect("temp dir");
    let options = GenOptions {
        users,
        reference_date: tag_plugin_api::Date::parse("2025-01-15")
            .expect("date")
            .days(),
        ..GenOptions::default()
    };
    gen_data_with(data.path(), &options).expect("generate data");
    data
}

/// A blocking HTTP client with a generous timeout.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .expect("http client")
}

/// A blocking HTTP client that follows no redirect (to see the console's
/// own answers: a page without a session redirects to the sign-in form).
pub fn no_redirects() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

/// Signs in to the console at `base` with `token` (asserting 200): the
/// `Cookie` header to send, and the whole `Set-Cookie` answer.
pub fn console_sign_in(base: &str, token: &str) -> (String, String) {
    let response = client()
        .post(format!("{base}/console/session"))
        .json(&serde_json::json!({ "token": token }))
        .send()
        .expect("sign in");
    assert_eq!(response.status().as_u16(), 200);
    let set = response.headers()["set-cookie"]
        .to_str()
        .expect("a text cookie")
        .to_string();
    let cookie = set.split(';').next().unwrap_or_default().to_string();
    (cookie, set)
}

/// A GET of `path` with `cookie`, following no redirect: the status, the
/// `Location` header (empty without one) and the body.
pub fn get_with_cookie(base: &str, path: &str, cookie: &str) -> (u16, String, String) {
    let response = no_redirects()
        .get(format!("{base}{path}"))
        .header("cookie", cookie)
        .send()
        .expect("request");
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, location, response.text().unwrap_or_default())
}

/// A GET of an API path with `cookie`, as a console page sends it: the
/// status.
pub fn api_with_cookie(base: &str, path: &str, cookie: &str) -> u16 {
    client()
        .get(format!("{base}{path}"))
        .header("cookie", cookie)
        .send()
        .expect("request")
        .status()
        .as_u16()
}

/// Asserts that `cookie` opens neither a console page nor the API: the
/// page sends the browser to the sign-in form, the API answers 401.
pub fn assert_console_refuses(base: &str, cookie: &str) {
    let (code, location, _) = get_with_cookie(base, "/tasks", cookie);
    assert_eq!((code, location.as_str()), (303, "/signin"), "{cookie}");
    assert_eq!(
        api_with_cookie(base, "/api/v1/tasks", cookie),
        401,
        "{cookie}"
    );
}

/// `user_tags` as `user_id -> tag_ids`, read straight from SQLite.
pub fn user_tags(db: &Path) -> std::collections::BTreeMap<String, Vec<u32>> {
    let conn = rusqlite::Connection::open(db).expect("open store");
    let mut stmt = conn
        .prepare("SELECT user_id, tag_ids FROM user_tags")
        .expect("query");
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .expect("rows")
        .map(|r| {
            let (user, ids) = r.expect("row");
            (
                user,
                serde_json::from_str(&ids).expect("tag_ids is a JSON array"),
            )
        })
        .collect();
    rows
}

/// `user_tags` rows with their timestamps, for idempotency checks.
pub fn user_tag_rows(db: &Path) -> Vec<(String, String, String, String, String)> {
    let conn = rusqlite::Connection::open(db).expect("open store");
    let mut stmt = conn
        .prepare("SELECT user_id, tag_ids, tag_details, created_time, updated_time FROM user_tags ORDER BY user_id")
        .expect("query");
    let rows = stmt
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .expect("rows")
        .map(|r| r.expect("row"))
        .collect();
    rows
}

/// Asserts two `user_tags` maps are equal, showing only the first differences.
pub fn assert_same_tags(
    actual: &std::collections::BTreeMap<String, Vec<u32>>,
    expected: &std::collections::BTreeMap<String, Vec<u32>>,
) {
    let mut diffs = Vec::new();
    for user in actual.keys().chain(expected.keys()) {
        if actual.get(user) != expected.get(user)
            && !diffs.iter().any(|(u, _, _): &(String, _, _)| u == user)
        {
            diffs.push((
                user.clone(),
                actual.get(user).cloned(),
                expected.get(user).cloned(),
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} users differ (user, stored, expected), first ones: {:?}",
        diffs.len(),
        &diffs[..diffs.len().min(8)]
    );
}

/// Runs the real `tag-server` binary:
/// `tag-server run --tag-ids tags --as-of as_of` over `data` with the
/// plugins in `plugins`, into `store` (a URL), logging to `log`, with
/// `extra` flags: exit code, stdout, stderr.
pub fn run_with(
    data: &Path,
    plugins: &Path,
    tags: &str,
    as_of: &str,
    store: &str,
    log: &Path,
    extra: &[&str],
) -> (i32, String, String) {
    let text = |p: &Path| p.to_str().expect("UTF-8 path").to_string();
    let (data, plugins, log) = (text(data), text(plugins), text(log));
    let mut args = vec![
        "run",
        "--tag-ids",
        tags,
        "--as-of",
        as_of,
        "--data-dir",
        &data,
    ];
    args.extend([
        "--store",
        store,
        "--plugins-dir",
        &plugins,
        "--log-file",
        &log,
    ]);
    args.extend(extra);
    tag_server(&args)
}

/// `tag-server run` of `tags` (`1,2,3`) at `as_of` over `data` with the
/// plugins in `plugins`, into the SQLite store `db` (its log beside it),
/// with `extra` flags; asserts it succeeds: its report (the task's result).
pub fn run_report(
    data: &Path,
    plugins: &Path,
    db: &Path,
    tags: &str,
    as_of: &str,
    extra: &[&str],
) -> serde_json::Value {
    let store = format!("sqlite://{}", db.display());
    let log = db.with_extension("log");
    let (code, out, err) = run_with(data, plugins, tags, as_of, &store, &log, extra);
    assert_eq!(code, 0, "tag-server run: {out}{err}");
    let task: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("report: {e}: {out}"));
    task["result"].clone()
}

/// Runs the real `tag-server` binary with `args`: exit code, stdout, stderr.
pub fn tag_server(args: &[&str]) -> (i32, String, String) {
    // `run` logs to a file too: keep it out of the source tree (a
    // `--log-file` among `args` wins over the variable).
    let output = Command::new(env!("CARGO_BIN_EXE_tag-server"))
        .args(args)
        .env(
            "TAG_LOG_FILE",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("tag-server-run.log"),
        )
        .output()
        .expect("run tag-server");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs the real `tag-server` binary with `args` and nothing else in its
/// environment set by the tests: its exit code and stderr if it ends
/// within `secs`; `None` if it was still running then (it is killed).
pub fn tag_server_within(args: &[&str], secs: u64) -> Option<(i32, String)> {
    let errors = tempfile::NamedTempFile::new().expect("temp file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tag-server"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(errors.reopen().expect("reopen temp file"))
        .spawn()
        .expect("start tag-server");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for tag-server") {
            break Some(status);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(errors.path()).unwrap_or_default();
    status.map(|s| (s.code().unwrap_or(-1), stderr))
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Triggers `body` on the server at `base` (202 expected); the task id.
pub fn trigger(base: &str, body: serde_json::Value) -> String {
    let reply = client()
        .post(format!("{base}/api/v1/tags/trigger"))
        .json(&body)
        .send()
        .expect("trigger");
    assert_eq!(reply.status().as_u16(), 202, "{:?}", reply.text());
    reply.json::<serde_json::Value>().expect("JSON")["task_id"]
        .as_str()
        .expect("task_id")
        .to_string()
}

/// Task `task`'s status object on the server at `base`.
pub fn task_status(base: &str, task: &str) -> serde_json::Value {
    let reply: serde_json::Value = client()
        .get(format!("{base}/api/v1/tasks/{task}/status"))
        .send()
        .and_then(|r| r.json())
        .expect("status");
    reply["status"].clone()
}

/// Waits (up to two minutes) until task `task` of the server at `base`
/// ends (completed, failed or cancelled); its status object.
pub fn wait_ended(base: &str, task: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let status = task_status(base, task);
        if ["completed", "failed", "cancelled"].contains(&status["status"].as_str().unwrap_or("")) {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Waits (up to 120 s: a loaded machine running the whole suite starts
/// dozens of debug-built servers at once) until a tag-server at `base`
/// answers `/health`.
pub fn wait_until_up(base: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while client().get(format!("{base}/health")).send().is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "tag-server did not come up"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Writes `<dir>/tokens` with an admin token named `ops` and a read token
/// named `viewer`; returns its path (for `--tokens-file`).
pub fn tokens_file(dir: &Path, admin: &str, reader: &str) -> PathBuf {
    let path = dir.join("tokens");
    std::fs::write(&path, format!("ops:admin:{admin}\nviewer:read:{reader}\n"))
        .expect("write the tokens file");
    path
}

/// A real `tag-server` process on a free loopback port, killed on drop.
pub struct ServerProcess {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    child: std::process::Child,
}

impl ServerProcess {
    /// Starts `tag-server` with `args` and waits until `/health` answers.
    pub fn start(args: &[&str]) -> ServerProcess {
        ServerProcess::start_at(Path::new("."), args)
    }

    /// [`ServerProcess::start`] in the working directory `cwd`.
    pub fn start_at(cwd: &Path, args: &[&str]) -> ServerProcess {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_tag-server"))
            .current_dir(cwd)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start tag-server");
        let server = ServerProcess {
            base: format!("http://127.0.0.1:{port}"),
            child,
        };
        wait_until_up(&server.base);
        server
    }

    /// Starts `tag-server` over `data` and `plugins` with its SQLite store
    /// (`t.db`) and log file (`server.log`) in `work`, and `extra` flags.
    pub fn start_in(work: &Path, data: &Path, plugins: &Path, extra: &[&str]) -> ServerProcess {
        let log = work.join("server.log");
        let store = format!("sqlite://{}", work.join("t.db").display());
        let mut args = vec![
            "--log-file",
            log.to_str().expect("UTF-8 path"),
            "--data-dir",
            data.to_str().expect("UTF-8 path"),
            "--plugins-dir",
            plugins.to_str().expect("UTF-8 path"),
            "--store",
            &store,
        ];
        args.extend_from_slice(extra);
        ServerProcess::start(&args)
    }

    /// Triggers `body` and waits (up to two minutes) until the task ends;
    /// its status.
    pub fn run(&self, body: serde_json::Value) -> serde_json::Value {
        let id = trigger(&self.base, body);
        wait_ended(&self.base, &id)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status if it ends within `limit`.
    pub fn exit_within(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for tag-server") {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes every user of the sample data in `data` a heavy trader, with a
/// newer `updated_time`: an incremental run re-evaluates them all.
pub fn everyone_trades(data: &Path) {
    use polars::prelude::*;
    let path = data.join("user_activity_summary.parquet");
    let mut df = ParquetReader::new(std::fs::File::open(&path).unwrap())
        .finish()
        .unwrap();
    let newest = df
        .column("updated_time")
        .unwrap()
        .datetime()
        .unwrap()
        .physical()
        .max()
        .unwrap();
    let n = df.height();
    df.with_column(Int32Chunked::full("trade_count_30d".into(), 99, n).into_column())
        .unwrap();
    df.with_column(
        Int64Chunked::full("updated_time".into(), newest + 1_000_000, n)
            .into_datetime(TimeUnit::Microseconds, None)
            .into_column(),
    )
    .unwrap();
    ParquetWriter::new(std::fs::File::create(&path).unwrap())
        .finish(&mut df)
        .unwrap();
}
