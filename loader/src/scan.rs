//! Finding, verifying and loading plugin libraries.
//!
//! Every file in the plugins directory with the platform's library extension
//! is tried in name order; each gets an outcome (loaded, or rejected with a
//! reason a person can act on) and one bad file never keeps the others from
//! loading. Before any `dlopen`, [`trust`](crate::trust) checks the file's
//! ownership, permissions and ELF structure and makes the private copy that
//! is loaded. Libraries are loaded one by one through their abi_stable header
//! (`lib_header_from_path` + `init_root_module`) and are never unloaded.

use crate::registry::{PluginIdentity, RegisteredTag, TagRegistry};
use crate::rejection::Rejection;
use crate::trust;
use abi_stable::library::{lib_header_from_path, LibraryError, RawLibrary};
use abi_stable::std_types::Tuple2;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tag_plugin_api::abi::{CustomEvaluatesFn, TagPluginRef, CUSTOM_EVALUATE_SYMBOL};
use tag_plugin_api::{TagInfo, API_VERSION};

/// A file that loaded.
#[derive(Debug, Clone)]
pub struct LoadedPlugin {
    /// The plugin crate's name.
    pub name: String,
    /// The plugin crate's version.
    pub version: String,
    /// The plugin-api version it was built against.
    pub api_version: String,
    /// Its tags, by id.
    pub tags: Vec<TagInfo>,
}

/// What became of one file.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Loaded, its tags registered.
    Loaded(LoadedPlugin),
    /// Not loaded.
    Rejected(Rejection),
}

/// One file of the plugins directory.
#[derive(Debug, Clone)]
pub struct PluginFile {
    /// Where it is.
    pub path: PathBuf,
    /// Hex SHA-256 of its bytes (empty if unreadable).
    pub sha256: String,
    /// Loaded or rejected.
    pub outcome: Outcome,
    /// When it was checked and loaded (UTC).
    pub loaded_at: String,
}

/// Every file found in one scan, in name order.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// The files.
    pub files: Vec<PluginFile>,
}

impl LoadReport {
    /// The files that were rejected.
    pub fn rejected(&self) -> impl Iterator<Item = (&PluginFile, &Rejection)> {
        self.files.iter().filter_map(|f| match &f.outcome {
            Outcome::Rejected(r) => Some((f, r)),
            Outcome::Loaded(_) => None,
        })
    }

    /// The tag ids loaded that have no owner in `owners`, with the plugin
    /// that now serves them: the owners to record.
    pub fn unowned(&self, owners: &HashMap<u32, String>) -> Vec<(u32, String)> {
        self.loaded()
            .flat_map(|(_, p)| p.tags.iter().map(move |t| (t.tag_id, p.name.clone())))
            .filter(|(id, _)| !owners.contains_key(id))
            .collect()
    }

    /// Whether `plugin` may take over `tag_id`: a plugin of the last scan
    /// claims it (loaded with it, or refused it because another owns it),
    /// or its files contest it (their names are unknown until one loads).
    /// A transfer to anything else would unload the tag's real owner.
    pub fn may_own(&self, tag_id: u32, plugin: &str) -> bool {
        let loaded = self
            .loaded()
            .any(|(_, p)| p.name == plugin && p.tags.iter().any(|t| t.tag_id == tag_id));
        loaded
            || self.rejected().any(|(_, r)| match r {
                Rejection::OwnedByOther {
                    tag_id: t,
                    plugin: p,
                    ..
                } => *t == tag_id && p == plugin,
                Rejection::ContestedTagId { tag_id: t, .. } => *t == tag_id,
                _ => false,
            })
    }

    /// The plugins of the last scan that claim `tag_id`, by name.
    pub fn claimants(&self, tag_id: u32) -> Vec<String> {
        let loaded = self
            .loaded()
            .filter(|(_, p)| p.tags.iter().any(|t| t.tag_id == tag_id))
            .map(|(_, p)| p.name.clone());
        let refused = self.rejected().filter_map(|(_, r)| match r {
            Rejection::OwnedByOther {
                tag_id: t, plugin, ..
            } if *t == tag_id => Some(plugin.clone()),
            _ => None,
        });
        let mut names: Vec<String> = loaded.chain(refused).collect();
        names.sort();
        names.dedup();
        names
    }

    /// The files that loaded.
    pub fn loaded(&self) -> impl Iterator<Item = (&PluginFile, &LoadedPlugin)> {
        self.files.iter().filter_map(|f| match &f.outcome {
            Outcome::Loaded(p) => Some((f, p)),
            Outcome::Rejected(_) => None,
        })
    }
}

/// The plugins directory itself could not be listed.
#[derive(Debug, thiserror::Error)]
#[error("cannot read plugins directory {}: {source}", dir.display())]
pub struct ScanError {
    /// The directory.
    pub dir: PathBuf,
    /// The I/O error.
    pub source: std::io::Error,
}

/// A library's tasks, before they are checked against other files.
struct Candidate {
    name: String,
    version: String,
    api_version: String,
    tags: Vec<RegisteredTag>,
}

impl Candidate {
    /// Adds the library's tags to `tags`; what the report says of it.
    fn register(self, tags: &mut BTreeMap<u32, Arc<RegisteredTag>>) -> LoadedPlugin {
        let infos = self.tags.iter().map(|t| t.info.clone()).collect();
        for tag in self.tags {
            tags.insert(tag.info.tag_id, Arc::new(tag));
        }
        LoadedPlugin {
            name: self.name,
            version: self.version,
            api_version: self.api_version,
            tags: infos,
        }
    }
}

fn is_library(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e == std::env::consts::DLL_EXTENSION)
        && !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn classify(error: LibraryError) -> Rejection {
    match error {
        LibraryError::OpenError { err, .. } => Rejection::NotALibrary(err.to_string()),
        LibraryError::GetSymbolError { .. } => Rejection::NotATagPlugin,
        LibraryError::IncompatibleVersionNumber {
            actual_version,
            expected_version,
            ..
        } => Rejection::IncompatibleApi {
            found: actual_version.to_string(),
            expected: expected_version.to_string(),
        },
        LibraryError::ParseVersionError(e) => Rejection::IncompatibleApi {
            found: format!("an unreadable version ({e})"),
            expected: API_VERSION.to_string(),
        },
        LibraryError::RootModule { err, .. } => Rejection::StartFailed(err.to_string()),
        other => Rejection::AbiMismatch {
            expected: API_VERSION.to_string(),
            detail: summarize(&other.to_string()),
        },
    }
}

/// abi_stable's layout reports run to pages; keep the verdict at their end
/// ("Error:mismatched type Expected: X Found: Y") on one line.
fn summarize(report: &str) -> String {
    let verdict = report.rfind("Error:").map_or(report, |at| &report[at..]);
    let line = verdict.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

/// What the library's optional custom-evaluate export says of its tags,
/// by tag id; nothing from a library without it (built before it existed).
/// `copy` is the private copy just loaded through its root module: opening
/// it again only finds that loaded image, and the handle's drop leaves it
/// loaded (abi_stable never unloads it).
fn custom_evaluates(copy: &Path) -> HashMap<u32, String> {
    let Ok(library) = RawLibrary::load_at(copy) else {
        return HashMap::new();
    };
    // SAFETY: the symbol is defined by `export_plugin!` with exactly this
    // type (checked there at compile time), in a library whose root module
    // has passed abi_stable's layout check, so its abi_stable types match.
    match unsafe { library.get::<CustomEvaluatesFn>(CUSTOM_EVALUATE_SYMBOL) } {
        Ok(export) => export()
            .into_iter()
            .map(|Tuple2(tag_id, what)| (tag_id, what.into_string()))
            .collect(),
        Err(_) => HashMap::new(),
    }
}

/// Opens one library (its private copy `copy`) and collects its tasks,
/// recorded as coming from `path` (whose bytes hash to `sha256`); checks
/// nothing across files.
fn open_library(copy: &Path, path: &Path, sha256: &str) -> Result<Candidate, Rejection> {
    let header = lib_header_from_path(copy).map_err(classify)?;
    let api_version = header.version_strings().version.to_string();
    let module = header
        .init_root_module::<TagPluginRef>()
        .map_err(classify)?;
    let tasks = (module.tasks())()
        .into_result()
        .map_err(|e| Rejection::StartFailed(e.to_string()))?;
    let identity = PluginIdentity {
        name: module.name().to_string(),
        version: module.version().to_string(),
        sha256: sha256.to_string(),
    };
    let custom = custom_evaluates(copy);
    let tags = tasks
        .into_iter()
        .map(|task| {
            let tag = RegisteredTag::new(task, path.to_path_buf(), identity.clone());
            let what = custom.get(&tag.info.tag_id).map(String::as_str);
            tag.with_custom_evaluate(what)
        })
        .collect::<Vec<_>>();
    Ok(Candidate {
        name: identity.name,
        version: identity.version,
        api_version,
        tags,
    })
}

/// Checks and copies one file (nothing is loaded yet): its SHA-256 and
/// the private copy to load.
fn vet_file(path: &Path, copies: &Path) -> (String, Result<PathBuf, Rejection>) {
    let real = match trust::check_path(path) {
        Ok(real) => real,
        Err(rejection) => return (String::new(), Err(rejection)),
    };
    let bytes = match std::fs::read(&real) {
        Ok(bytes) => bytes,
        Err(e) => return (String::new(), Err(Rejection::Unreadable(e.to_string()))),
    };
    let sha256 = sha256_hex(&bytes);
    let copy = trust::check_elf(&bytes).and_then(|()| trust::private_copy(copies, &sha256, &bytes));
    (sha256, copy)
}

/// Verifies and opens one file; checks nothing across files but that the
/// library does not claim one id twice.
fn load_file(path: &Path, copies: &Path) -> (String, Result<Candidate, Rejection>) {
    let (sha256, copy) = vet_file(path, copies);
    let copy = match copy {
        Ok(copy) => copy,
        Err(rejection) => return (sha256, Err(rejection)),
    };
    let result = open_library(&copy, path, &sha256).and_then(|candidate| {
        let mut seen = std::collections::BTreeSet::new();
        for tag in &candidate.tags {
            if !seen.insert(tag.info.tag_id) {
                return Err(Rejection::DuplicateTagId {
                    tag_id: tag.info.tag_id,
                    other: path.to_path_buf(),
                });
            }
        }
        Ok(candidate)
    });
    (sha256, result)
}

/// Decides, across the files of one scan, which libraries may serve their
/// tag ids: a library claiming an id whose recorded owner is another plugin
/// is rejected (the owner keeps it); an id claimed by several of the
/// remaining libraries rejects every one of them, named (nothing is decided
/// by file-name order).
fn settle_claims(
    paths: &[PathBuf],
    results: &mut [Result<Candidate, Rejection>],
    owners: &HashMap<u32, String>,
) {
    for result in results.iter_mut() {
        let Ok(candidate) = result else { continue };
        let taken = candidate.tags.iter().find_map(|t| {
            let id = t.info.tag_id;
            owners
                .get(&id)
                .filter(|owner| **owner != candidate.name)
                .map(|owner| (id, owner.clone()))
        });
        if let Some((tag_id, owner)) = taken {
            *result = Err(Rejection::OwnedByOther {
                tag_id,
                owner,
                plugin: candidate.name.clone(),
            });
        }
    }
    let mut claimants: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, result) in results.iter().enumerate() {
        if let Ok(candidate) = result {
            for tag in &candidate.tags {
                claimants.entry(tag.info.tag_id).or_default().push(i);
            }
        }
    }
    for (tag_id, files) in claimants.into_iter().filter(|(_, f)| f.len() > 1) {
        let named: Vec<PathBuf> = files.iter().map(|&i| paths[i].clone()).collect();
        for i in files {
            if results[i].is_ok() {
                results[i] = Err(Rejection::ContestedTagId {
                    tag_id,
                    files: named.clone(),
                });
            }
        }
    }
}

/// Now in UTC as `YYYY-MM-DDTHH:MM:SS`: when a file was checked and
/// loaded, in the form the host's store and API show every time in (the
/// host takes its own times from here too).
pub fn now_timestamp() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string()
}

/// Loads every plugin library in `dir`, loading private copies made in
/// `copies`, honouring the recorded tag `owners` (tag id to plugin name).
pub fn load_dir_with(
    dir: &Path,
    copies: &Path,
    owners: &HashMap<u32, String>,
) -> Result<(TagRegistry, LoadReport), ScanError> {
    let scan_error = |source| ScanError {
        dir: dir.to_path_buf(),
        source,
    };
    let mut paths = std::fs::read_dir(dir)
        .map_err(scan_error)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| is_library(p) && p.is_file())
        .collect::<Vec<_>>();
    paths.sort();
    let mut stamps = Vec::with_capacity(paths.len());
    let mut results = Vec::with_capacity(paths.len());
    for path in &paths {
        let (sha256, result) = load_file(path, copies);
        stamps.push((sha256, now_timestamp()));
        results.push(result);
    }
    settle_claims(&paths, &mut results, owners);
    let mut tags = BTreeMap::new();
    let mut report = LoadReport::default();
    for ((path, (sha256, loaded_at)), result) in paths.into_iter().zip(stamps).zip(results) {
        let outcome = match result {
            Ok(candidate) => Outcome::Loaded(candidate.register(&mut tags)),
            Err(rejection) => Outcome::Rejected(rejection),
        };
        report.files.push(PluginFile {
            path,
            sha256,
            outcome,
            loaded_at,
        });
    }
    Ok((TagRegistry::new(tags), report))
}

/// Loads a single library file (as `tag-server plugins check` does), with
/// the same checks as a directory scan.
pub fn load_file_alone(path: &Path, copies: &Path) -> (TagRegistry, PluginFile) {
    let (sha256, result) = load_file(path, copies);
    let (registry, outcome) = match result {
        Ok(candidate) => {
            let mut tags = BTreeMap::new();
            let loaded = candidate.register(&mut tags);
            (TagRegistry::new(tags), Outcome::Loaded(loaded))
        }
        Err(rejection) => (TagRegistry::default(), Outcome::Rejected(rejection)),
    };
    (
        registry,
        PluginFile {
            path: path.to_path_buf(),
            sha256,
            outcome,
            loaded_at: now_timestamp(),
        },
    )
}

impl fmt::Display for LoadReport {
    /// The `tag-server plugins` listing: the tag table, then every file.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rows: Vec<(&TagInfo, &Path)> = self
            .loaded()
            .flat_map(|(file, p)| p.tags.iter().map(move |t| (t, file.path.as_path())))
            .collect();
        rows.sort_by_key(|(t, _)| t.tag_id);
        writeln!(
            f,
            "{} tags from {} files",
            rows.len(),
            self.loaded().count()
        )?;
        writeln!(
            f,
            "{:<6} {:<24} {:<10} {:<10} {:<8} FILE",
            "TAG", "CLASS", "NAME", "CATEGORY", "VERSION"
        )?;
        for (tag, path) in rows {
            let file = path
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            writeln!(
                f,
                "{:<6} {:<24} {} {} {:<8} {file}",
                tag.tag_id,
                tag.task_class,
                pad(&tag.description, 10),
                pad(&tag.category, 10),
                tag.version
            )?;
        }
        for (file, plugin) in self.loaded() {
            writeln!(
                f,
                "loaded   {} ({} {}, plugin-api {}, sha256 {})",
                file.path.display(),
                plugin.name,
                plugin.version,
                plugin.api_version,
                file.sha256
            )?;
        }
        for (file, rejection) in self.rejected() {
            writeln!(f, "REJECTED {}: {rejection}", file.path.display())?;
        }
        Ok(())
    }
}

/// Pads to a display width, counting CJK characters as two columns.
fn pad(text: &str, width: usize) -> String {
    let used: usize = text
        .chars()
        .map(|c| if (c as u32) >= 0x1100 { 2 } else { 1 })
        .sum();
    format!("{text}{}", " ".repeat(width.saturating_sub(used)))
}
