//! Source tables in S3: the real `tag-server run` binary reads
//! `--data-dir s3://bucket/prefix` from a real S3-compatible server (moto's,
//! from PyPI, with IAM authentication on), with credentials from the standard
//! AWS environment variables. Checked against the independent computation on
//! the same files read locally.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use support::*;
use tag_host::data::gen::{gen_data_with, GenOptions};
use tag_plugin_api::Date;

const AS_OF: &str = "2025-01-15";
const BUCKET: &str = "exports";
const PREFIX: &str = "daily/v1";

fn as_of() -> i32 {
    Date::parse(AS_OF).unwrap().days()
}

fn python() -> PathBuf {
    python::python_with(&["moto", "boto3", "flask"], &["moto[server]", "boto3"])
}

/// A moto S3 server on a free loopback port, stopped on drop.
struct S3Server {
    endpoint: String,
    child: Child,
}

impl S3Server {
    fn start() -> S3Server {
        let python = python();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(python.with_file_name("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "moto did not start");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        S3Server { endpoint, child }
    }

    /// Creates a user, its key and the bucket, uploads `dir` under
    /// [`PREFIX`], and turns authentication on; the key and secret.
    fn setup(&self, dir: &Path) -> (String, String) {
        let output = fixture(&["setup", &self.endpoint, BUCKET, PREFIX, path(dir)]);
        let keys: Value = serde_json::from_str(&output).expect("setup prints keys");
        let field = |name: &str| keys[name].as_str().unwrap().to_string();
        (field("key"), field("secret"))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fixture(args: &[&str]) -> String {
    python::run_script(&python(), "s3_fixture.py", args)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Sample data with the universe table as a directory of parts.
fn sample_data() -> tempfile::TempDir {
    let data = tempfile::tempdir().unwrap();
    let options = GenOptions {
        users: 800,
        seed: 11,
        reference_date: as_of(),
        row_group_rows: 300,
        duplicates: 20,
        ..GenOptions::default()
    };
    gen_data_with(data.path(), &options).expect("generate data");
    let parts = data.path().join("user_basic_info");
    std::fs::create_dir(&parts).unwrap();
    std::fs::rename(
        data.path().join("user_basic_info.parquet"),
        parts.join("part-0000.parquet"),
    )
    .unwrap();
    data
}

/// A one-shot run against the bucket: exit code and the task JSON.
struct Runner<'a> {
    s3: &'a S3Server,
    key: String,
    secret: String,
    work: tempfile::TempDir,
    plugins: tempfile::TempDir,
    /// `AWS_PROFILE`, for keys from `$HOME/.aws/credentials`.
    profile: Option<&'static str>,
}

impl Runner<'_> {
    fn run(&self, data_dir: &str, args: &[&str]) -> (i32, Value) {
        let store = format!("sqlite://{}", self.work.path().join("tags.db").display());
        let cache = self.work.path().join("cache");
        let mut command = Command::new(env!("CARGO_BIN_EXE_tag-server"));
        if !self.key.is_empty() {
            command
                .env("AWS_ACCESS_KEY_ID", &self.key)
                .env("AWS_SECRET_ACCESS_KEY", &self.secret);
        }
        if let Some(profile) = self.profile {
            command.env("AWS_PROFILE", profile);
        }
        let output = command
            .args(["run", "--as-of", AS_OF, "--data-dir", data_dir])
            .args(["--store", &store, "--s3-cache-dir", path(&cache)])
            .args(["--plugins-dir", path(self.plugins.path())])
            .args(["--log-file", path(&self.work.path().join("log"))])
            .args(args)
            .env("AWS_ENDPOINT_URL", &self.s3.endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("HOME", self.work.path())
            .output()
            .expect("run tag-server");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let task = serde_json::from_str(&stdout).unwrap_or_else(|_| {
            panic!(
                "run prints the task as JSON: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        (output.status.code().unwrap_or(-1), task)
    }

    fn tags(&self) -> std::collections::BTreeMap<String, Vec<u32>> {
        user_tags(&self.work.path().join("tags.db"))
    }
}

fn s3_url() -> String {
    format!("s3://{BUCKET}/{PREFIX}")
}

#[test]
fn runs_read_tables_from_s3_and_fetch_only_what_changed() {
    let s3 = S3Server::start();
    let data = sample_data();
    let (key, secret) = s3.setup(data.path());
    let runner = Runner {
        s3: &s3,
        key,
        secret,
        work: tempfile::tempdir().unwrap(),
        plugins: reference_plugins_dir(),
        profile: None,
    };
    let all = [1, 2, 3, 4, 5, 6, 7, 8];
    let (code, task) = runner.run(&s3_url(), &["--tag-ids", "1,2,3,4,5,6,7,8"]);
    assert_eq!(code, 0, "{task}");
    let objects = &task["result"]["source_objects"];
    // The eight tags read three tables, each one object.
    assert_eq!(objects["fetched"], 3, "{objects}");
    assert_eq!(objects["cached"], 0);
    assert_same_tags(
        &runner.tags(),
        &oracle::expected(data.path(), as_of(), &all),
    );

    // A rerun fetches nothing and writes nothing.
    let (code, task) = runner.run(&s3_url(), &["--tag-ids", "1,2,3,4,5,6,7,8"]);
    assert_eq!(code, 0, "{task}");
    assert_eq!(task["result"]["source_objects"]["fetched"], 0);
    assert_eq!(task["result"]["source_objects"]["cached"], 3);
    assert_eq!(task["result"]["rows_upserted"], 0);

    // A new part of the universe table: only it is fetched, and the
    // incremental run equals the independent computation on the new files.
    let before = oracle::expected(data.path(), as_of(), &all);
    let part = data.path().join("user_basic_info/part-0001.parquet");
    write_newer_copy(
        &data.path().join("user_basic_info/part-0000.parquet"),
        &part,
    );
    let object = format!("{PREFIX}/user_basic_info/part-0001.parquet");
    fixture(&[
        "put",
        &s3.endpoint,
        &runner.key,
        &runner.secret,
        BUCKET,
        &object,
        path(&part),
    ]);
    let (code, task) = runner.run(
        &s3_url(),
        &["--tag-ids", "1,2,3,4,5,6,7,8", "--mode", "incremental"],
    );
    assert_eq!(code, 0, "{task}");
    assert_eq!(task["result"]["source_objects"]["fetched"], 1, "{task}");
    let after = oracle::expected(data.path(), as_of(), &all);
    assert_ne!(before, after, "the new part changes some users' tags");
    assert_same_tags(&runner.tags(), &after);
}

/// Writes the users of `from` again into `to` with a newer `updated_time`
/// and an age of 30, so the new rows win and change tag 7's answer.
fn write_newer_copy(from: &Path, to: &Path) {
    use polars::prelude::*;
    let mut df = ParquetReader::new(std::fs::File::open(from).unwrap())
        .finish()
        .unwrap();
    let times = df.column("updated_time").unwrap().datetime().unwrap();
    let newest = times.physical().max().unwrap();
    let n = df.height();
    df.with_column(
        Int64Chunked::full("updated_time".into(), newest + 1_000_000, n)
            .into_datetime(TimeUnit::Microseconds, None)
            .into_column(),
    )
    .unwrap();
    let age = df.column("age").unwrap().dtype().clone();
    df.with_column(
        Int32Chunked::full("age".into(), 30, n)
            .into_column()
            .cast(&age)
            .unwrap(),
    )
    .unwrap();
    ParquetWriter::new(std::fs::File::create(to).unwrap())
        .finish(&mut df)
        .unwrap();
}

#[test]
fn a_missing_bucket_and_refused_credentials_fail_the_task_clearly() {
    let s3 = S3Server::start();
    let data = sample_data();
    let (key, secret) = s3.setup(data.path());
    let refused = Runner {
        s3: &s3,
        key: key.clone(),
        secret: "not-the-secret".into(),
        work: tempfile::tempdir().unwrap(),
        plugins: reference_plugins_dir(),
        profile: None,
    };
    let (code, task) = refused.run(&s3_url(), &["--tag-ids", "1"]);
    assert_ne!(code, 0);
    assert_eq!(task["status"], "failed");
    let error = task["error"].as_str().unwrap();
    assert!(
        error.contains("refused the credentials") && error.contains(&key),
        "{error}"
    );
    assert!(!error.contains("not-the-secret"), "{error}");

    let runner = Runner { secret, ..refused };
    let (code, task) = runner.run("s3://no-such-bucket/x", &["--tag-ids", "1"]);
    assert_ne!(code, 0);
    assert_eq!(task["status"], "failed");
    let error = task["error"].as_str().unwrap();
    assert!(
        error.contains("bucket no-such-bucket does not exist") && error.contains(&s3.endpoint),
        "{error}"
    );
    // The same keys, from a profile of the shared credentials file this
    // time, read the real bucket: the failures above were the bucket's and
    // the secret's, not the setup's.
    let aws = runner.work.path().join(".aws");
    std::fs::create_dir(&aws).unwrap();
    let profile = format!(
        "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\
         [tagger]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
        runner.key, runner.secret
    );
    std::fs::write(aws.join("credentials"), profile).unwrap();
    let runner = Runner {
        key: String::new(),
        profile: Some("tagger"),
        ..runner
    };
    let (code, task) = runner.run(&s3_url(), &["--tag-ids", "1"]);
    assert_eq!(code, 0, "{task}");
}
