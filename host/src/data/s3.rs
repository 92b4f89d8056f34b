//! Source tables in S3 (or any S3-compatible server): `s3://bucket/prefix`
//! with the local layout (`<table>.parquet` or `<table>/*.parquet` parts).
//!
//! A run mirrors the tables it reads into a local cache directory before
//! reading them, so every stage after it (statistics pruning, batched reads)
//! works on local files exactly as for a local data directory. The mirror is
//! keyed by each object's ETag and size: an unchanged object is not fetched
//! again, a new part file is fetched alone, and an object gone from the bucket
//! is removed from the mirror. Downloads land in a hidden temporary file and
//! are renamed into place, so a reader never sees half an object.
//!
//! Endpoint, region and credentials come from the standard AWS environment
//! variables (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, …) or,
//! when the environment has no keys, from the shared files' profile
//! (`AWS_PROFILE`, default `default`, in `~/.aws/credentials` and
//! `~/.aws/config`).

use super::DataError;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectMeta, ObjectStore, ObjectStoreExt, RetryConfig};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Objects fetched at once.
const PARALLEL_DOWNLOADS: usize = 4;

/// A parsed `s3://bucket/prefix` location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket.
    pub bucket: String,
    /// The key prefix of the tables, without leading or trailing `/`.
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3://bucket[/prefix]`; `None` when `url` is not an S3 URL.
    pub fn parse(url: &str) -> Option<Result<S3Location, String>> {
        let rest = url.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Some(Err(format!("{url}: no bucket name after s3://")));
        }
        Some(Ok(S3Location {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        }))
    }

    /// The key of `name` under the prefix.
    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

pub use crate::model::SyncSummary;

/// A local mirror of the tables under an S3 location.
pub struct S3Mirror {
    location: S3Location,
    endpoint: String,
    access_key: Option<String>,
    store: AmazonS3,
    runtime: tokio::runtime::Runtime,
    dir: PathBuf,
    /// One sync at a time (concurrent runs would fetch the same objects).
    syncing: Mutex<()>,
}

impl S3Mirror {
    /// A mirror of `location` under `cache_root`, configured from the AWS
    /// environment and profile. Nothing is fetched yet.
    pub fn open(location: S3Location, cache_root: &Path) -> Result<S3Mirror, DataError> {
        let settings = AwsSettings::from_env_and_profile();
        let endpoint = settings
            .endpoint
            .clone()
            .unwrap_or_else(|| "https://s3.amazonaws.com".into());
        let access_key = settings.access_key.clone();
        let store = settings
            .builder(&location.bucket)
            .build()
            .map_err(|e| remote(&location, format!("invalid S3 configuration: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| remote(&location, format!("cannot start the S3 client: {e}")))?;
        let dir = cache_root.join(&location.bucket).join(&location.prefix);
        Ok(S3Mirror {
            location,
            endpoint,
            access_key,
            store,
            runtime,
            dir,
            syncing: Mutex::new(()),
        })
    }

    /// The local directory the tables are mirrored into.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The location mirrored.
    pub fn location(&self) -> &S3Location {
        &self.location
    }

    /// Brings the mirror of `tables` up to date with the bucket.
    pub fn sync(&self, tables: &[&str]) -> Result<SyncSummary, DataError> {
        let _one = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        let mut summary = SyncSummary::default();
        for table in tables {
            let objects = self.runtime.block_on(self.list_table(table))?;
            self.sync_table(table, &objects, &mut summary)?;
        }
        Ok(summary)
    }

    /// The table's objects: `<table>.parquet` if it exists, else the
    /// `*.parquet` parts directly under `<table>/`; keyed by mirror-relative path.
    async fn list_table(&self, table: &str) -> Result<BTreeMap<String, ObjectMeta>, DataError> {
        let single = format!("{table}.parquet");
        let parts_prefix = ObjectPath::from(self.location.key(table));
        let mut found = BTreeMap::new();
        let mut listing = self.store.list(Some(&parts_prefix));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| self.explain(e))?;
            if let Some(name) = part_name(&meta.location, &parts_prefix) {
                found.insert(format!("{table}/{name}"), meta);
            }
        }
        let single_key = ObjectPath::from(self.location.key(&single));
        match self.store.head(&single_key).await {
            Ok(meta) => return Ok(BTreeMap::from([(single, meta)])),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.explain(e)),
        }
        if found.is_empty() {
            return Err(remote(
                &self.location,
                format!("table {table}: no {single} nor {table}/ with *.parquet parts"),
            ));
        }
        Ok(found)
    }

    /// Fetches what changed of one table and removes what is gone.
    fn sync_table(
        &self,
        table: &str,
        objects: &BTreeMap<String, ObjectMeta>,
        summary: &mut SyncSummary,
    ) -> Result<(), DataError> {
        let mut wanted = Vec::new();
        for (name, meta) in objects {
            let path = self.dir.join(name);
            if read_stamp(&path).as_deref() == Some(stamp(meta).as_str()) {
                summary.cached += 1;
            } else {
                wanted.push((path, meta.clone()));
            }
        }
        summary.removed += self.remove_stale(table, objects)?;
        let fetched = self.runtime.block_on(self.fetch_all(wanted))?;
        summary.fetched += fetched.len();
        summary.bytes += fetched.iter().sum::<u64>();
        Ok(())
    }

    /// Removes mirrored files of `table` that are not in `objects`.
    fn remove_stale(
        &self,
        table: &str,
        objects: &BTreeMap<String, ObjectMeta>,
    ) -> Result<usize, DataError> {
        let mut local = vec![format!("{table}.parquet")];
        let parts = self.dir.join(table);
        if let Ok(entries) = std::fs::read_dir(&parts) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".parquet") && !name.starts_with('.') {
                    local.push(format!("{table}/{name}"));
                }
            }
        }
        let mut removed = 0;
        for name in local.into_iter().filter(|n| !objects.contains_key(n)) {
            let path = self.dir.join(&name);
            if path.is_file() {
                std::fs::remove_file(&path).map_err(|e| DataError::io("removing", &path, e))?;
                let _ = std::fs::remove_file(stamp_path(&path));
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Fetches every object of `wanted`, a few at a time; the sizes fetched.
    async fn fetch_all(&self, wanted: Vec<(PathBuf, ObjectMeta)>) -> Result<Vec<u64>, DataError> {
        futures_util::stream::iter(wanted)
            .map(|(path, meta)| async move { self.fetch(&path, &meta).await })
            .buffer_unordered(PARALLEL_DOWNLOADS)
            .try_collect()
            .await
    }

    /// Fetches one object into `path` (through a hidden temporary file).
    async fn fetch(&self, path: &Path, meta: &ObjectMeta) -> Result<u64, DataError> {
        let parent = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(parent).map_err(|e| DataError::io("creating", parent, e))?;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let partial = parent.join(format!(".{name}.partial"));
        let mut file =
            std::fs::File::create(&partial).map_err(|e| DataError::io("creating", &partial, e))?;
        let got = self
            .store
            .get(&meta.location)
            .await
            .map_err(|e| self.explain(e))?;
        let mut stream = got.into_stream();
        let mut bytes = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.explain(e))?;
            file.write_all(&chunk)
                .map_err(|e| DataError::io("writing", &partial, e))?;
            bytes += chunk.len() as u64;
        }
        file.sync_all()
            .map_err(|e| DataError::io("writing", &partial, e))?;
        std::fs::rename(&partial, path).map_err(|e| DataError::io("renaming", &partial, e))?;
        std::fs::write(stamp_path(path), stamp(meta))
            .map_err(|e| DataError::io("writing", stamp_path(path), e))?;
        Ok(bytes)
    }

    /// An object store error as a sentence naming the bucket and endpoint.
    fn explain(&self, error: object_store::Error) -> DataError {
        let text = error.to_string();
        let detail = if text.contains("NoSuchBucket") {
            format!(
                "bucket {} does not exist at {}",
                self.location.bucket, self.endpoint
            )
        } else if is_credentials_error(&error, &text) {
            let key = self.access_key.as_deref().unwrap_or("none configured");
            format!(
                "{} refused the credentials (access key id: {key}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE: {}",
                self.endpoint,
                first_line(&text)
            )
        } else {
            format!("{} (S3): {}", self.endpoint, first_line(&text))
        };
        remote(&self.location, detail)
    }
}

fn is_credentials_error(error: &object_store::Error, text: &str) -> bool {
    matches!(
        error,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    ) || [
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "403 Forbidden",
    ]
    .iter()
    .any(|code| text.contains(code))
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

fn remote(location: &S3Location, detail: String) -> DataError {
    DataError::Remote {
        url: location.to_string(),
        detail,
    }
}

/// The file name of a direct `*.parquet` child of `prefix` (hidden ones skipped).
fn part_name(location: &ObjectPath, prefix: &ObjectPath) -> Option<String> {
    let mut rest = location.prefix_match(prefix)?;
    let name = rest.next()?;
    let name = name.as_ref();
    let direct = rest.next().is_none();
    (direct && name.ends_with(".parquet") && !name.starts_with('.')).then(|| name.to_string())
}

/// What identifies an object's content: its ETag and size.
fn stamp(meta: &ObjectMeta) -> String {
    format!("{} {}", meta.e_tag.as_deref().unwrap_or("-"), meta.size)
}

fn stamp_path(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.s3stamp"))
}

fn read_stamp(path: &Path) -> Option<String> {
    if !path.is_file() {
        return None;
    }
    std::fs::read_to_string(stamp_path(path)).ok()
}

/// Endpoint, region and credentials, from the environment first and the
/// shared profile files second.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct AwsSettings {
    endpoint: Option<String>,
    region: Option<String>,
    access_key: Option<String>,
    secret_key: Option<String>,
    session_token: Option<String>,
}

impl AwsSettings {
    fn from_env_and_profile() -> AwsSettings {
        let env = |names: &[&str]| names.iter().find_map(|n| std::env::var(n).ok());
        let mut settings = AwsSettings {
            endpoint: env(&["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]),
            region: env(&["AWS_REGION", "AWS_DEFAULT_REGION"]),
            access_key: env(&["AWS_ACCESS_KEY_ID"]),
            secret_key: env(&["AWS_SECRET_ACCESS_KEY"]),
            session_token: env(&["AWS_SESSION_TOKEN"]),
        };
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let file = |var: &str, default: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".aws").join(default)))
                .and_then(|p| std::fs::read_to_string(p).ok())
                .unwrap_or_default()
        };
        let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
        let credentials = file("AWS_SHARED_CREDENTIALS_FILE", "credentials");
        let config = file("AWS_CONFIG_FILE", "config");
        settings.fill_from_profile(&profile, &credentials, &config);
        settings
    }

    /// Fills what the environment left open from the profile's sections:
    /// `[name]` in the credentials file, `[profile name]` (or `[default]`)
    /// in the config file. Keys come as a pair, never one from each source.
    fn fill_from_profile(&mut self, profile: &str, credentials: &str, config: &str) {
        let mut values = ini_section(credentials, profile);
        let config_section = if profile == "default" {
            "default".to_string()
        } else {
            format!("profile {profile}")
        };
        for (key, value) in ini_section(config, &config_section) {
            values.entry(key).or_insert(value);
        }
        if self.access_key.is_none() {
            self.access_key = values.get("aws_access_key_id").cloned();
            self.secret_key = values.get("aws_secret_access_key").cloned();
            self.session_token = values.get("aws_session_token").cloned();
        }
        if self.region.is_none() {
            self.region = values.get("region").cloned();
        }
        if self.endpoint.is_none() {
            self.endpoint = values.get("endpoint_url").cloned();
        }
    }

    fn builder(&self, bucket: &str) -> AmazonS3Builder {
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let pairs = [
            (AmazonS3ConfigKey::Endpoint, &self.endpoint),
            (AmazonS3ConfigKey::Region, &self.region),
            (AmazonS3ConfigKey::AccessKeyId, &self.access_key),
            (AmazonS3ConfigKey::SecretAccessKey, &self.secret_key),
            (AmazonS3ConfigKey::Token, &self.session_token),
        ];
        for (key, value) in pairs {
            if let Some(value) = value {
                builder = builder.with_config(key, value);
            }
        }
        let plain_http = self
            .endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        let options = ClientOptions::new()
            .with_allow_http(plain_http)
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(120));
        let retry = RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
            ..RetryConfig::default()
        };
        builder
            .with_virtual_hosted_style_request(false)
            .with_client_options(options)
            .with_retry(retry)
    }
}

/// The `key = value` lines of section `[name]` of an INI text.
fn ini_section(text: &str, name: &str) -> HashMap<String, String> {
    let mut inside = false;
    let mut values = HashMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = section.trim() == name;
        } else if let (true, Some((key, value))) = (inside, line.split_once('=')) {
            values.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_s3_urls() {
        assert_eq!(S3Location::parse("/data"), None);
        let loc = S3Location::parse("s3://bucket/a/b/").unwrap().unwrap();
        assert_eq!(loc.bucket, "bucket");
        assert_eq!(loc.prefix, "a/b");
        assert_eq!(loc.key("t.parquet"), "a/b/t.parquet");
        let bare = S3Location::parse("s3://bucket").unwrap().unwrap();
        assert_eq!(bare.key("t.parquet"), "t.parquet");
        assert!(S3Location::parse("s3:///x").unwrap().is_err());
    }

    #[test]
    fn keeps_direct_parquet_parts_only() {
        let prefix = ObjectPath::from("data/orders");
        let name = |key: &str| part_name(&ObjectPath::from(key), &prefix);
        assert_eq!(
            name("data/orders/p1.parquet").as_deref(),
            Some("p1.parquet")
        );
        assert_eq!(name("data/orders/.hidden.parquet"), None);
        assert_eq!(name("data/orders/sub/p2.parquet"), None);
        assert_eq!(name("data/orders/_SUCCESS"), None);
        assert_eq!(name("data/orders_old/p1.parquet"), None);
    }

    #[test]
    fn profile_fills_only_what_the_environment_left_open() {
        let credentials = "[default]\naws_access_key_id = A\naws_secret_access_key = B\n\
                           [team]\naws_access_key_id = C\naws_secret_access_key = D\n";
        let config = "[profile team]\nregion = eu-west-1\nendpoint_url = http://minio:9000\n";
        let mut settings = AwsSettings::default();
        settings.fill_from_profile("team", credentials, config);
        assert_eq!(settings.access_key.as_deref(), Some("C"));
        assert_eq!(settings.secret_key.as_deref(), Some("D"));
        assert_eq!(settings.region.as_deref(), Some("eu-west-1"));
        assert_eq!(settings.endpoint.as_deref(), Some("http://minio:9000"));

        let mut from_env = AwsSettings {
            access_key: Some("ENV".into()),
            region: Some("us-east-2".into()),
            ..AwsSettings::default()
        };
        from_env.fill_from_profile("default", credentials, config);
        assert_eq!(from_env.access_key.as_deref(), Some("ENV"));
        assert_eq!(from_env.secret_key, None, "keys never mix sources");
        assert_eq!(from_env.region.as_deref(), Some("us-east-2"));
    }
}
