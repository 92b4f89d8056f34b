//! Where the source tables live: a local directory, or an S3 prefix that a
//! run mirrors into a local cache first ([`super::s3`]).

use super::s3::{S3Location, S3Mirror, SyncSummary};
use super::DataError;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A `--data-dir` value: a local path or `s3://bucket/prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataLocation {
    /// A local directory.
    Local(PathBuf),
    /// An S3 (or S3-compatible) prefix.
    S3(S3Location),
}

impl DataLocation {
    /// The local directory, if the location is local.
    pub fn local(&self) -> Option<&Path> {
        match self {
            DataLocation::Local(dir) => Some(dir),
            DataLocation::S3(_) => None,
        }
    }
}

impl FromStr for DataLocation {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match S3Location::parse(text) {
            Some(parsed) => parsed.map(DataLocation::S3),
            None if text.contains("://") => Err(format!(
                "{text}: only local paths and s3://bucket/prefix are supported"
            )),
            None => Ok(DataLocation::Local(PathBuf::from(text))),
        }
    }
}

impl std::fmt::Display for DataLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataLocation::Local(dir) => write!(f, "{}", dir.display()),
            DataLocation::S3(location) => write!(f, "{location}"),
        }
    }
}

/// The tables of a deployment, made readable as local files.
pub enum DataSource {
    /// Read in place.
    Local(PathBuf),
    /// Mirrored before each run.
    S3(S3Mirror),
}

impl DataSource {
    /// The source for `location`; an S3 mirror keeps its files under `cache_dir`.
    pub fn open(location: &DataLocation, cache_dir: &Path) -> Result<DataSource, DataError> {
        Ok(match location {
            DataLocation::Local(dir) => DataSource::Local(dir.clone()),
            DataLocation::S3(s3) => DataSource::S3(S3Mirror::open(s3.clone(), cache_dir)?),
        })
    }

    /// Makes `tables` readable locally; the directory that holds them, and
    /// what the mirror fetched (none for a local directory).
    pub fn prepare(&self, tables: &[&str]) -> Result<(PathBuf, Option<SyncSummary>), DataError> {
        match self {
            DataSource::Local(dir) => Ok((dir.clone(), None)),
            DataSource::S3(mirror) => {
                let summary = mirror.sync(tables)?;
                Ok((mirror.dir().to_path_buf(), Some(summary)))
            }
        }
    }
}

impl std::fmt::Display for DataSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataSource::Local(dir) => write!(f, "{}", dir.display()),
            DataSource::S3(mirror) => write!(f, "{}", mirror.location()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_local_paths_and_s3_urls() {
        assert_eq!(
            "data".parse::<DataLocation>(),
            Ok(DataLocation::Local(PathBuf::from("data")))
        );
        let s3 = "s3://b/p".parse::<DataLocation>().unwrap();
        assert_eq!(s3.to_string(), "s3://b/p");
        assert!(s3.local().is_none());
        assert!("gs://b/p".parse::<DataLocation>().is_err());
        assert!("s3://".parse::<DataLocation>().is_err());
    }
}
