//! The tags the server can compute, each bound to the plugin that provides it.
//!
//! The rest of the host sees plain Rust types here: the FFI task object stays
//! inside [`RegisteredTag`], and every call into a plugin is checked (error,
//! caught panic, mask of the wrong length) and turned into [`TagFailure`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tag_plugin_api::abi::{FfiBatch, PluginError, PluginErrorKind, TagTaskBox};
use tag_plugin_api::abi_stable::std_types::RStr;
use tag_plugin_api::{Date, Mask, TagInfo, CUSTOM_EVALUATE_CHARS};

/// Which build of which plugin a tag came from (recorded in each result).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct PluginIdentity {
    /// The plugin crate's name.
    pub name: String,
    /// The plugin crate's version.
    pub version: String,
    /// Hex SHA-256 of the library file.
    pub sha256: String,
}

/// One tag provided by a loaded plugin.
pub struct RegisteredTag {
    /// Its metadata, read once at load time.
    pub info: TagInfo,
    /// The library file it came from.
    pub source: PathBuf,
    /// The plugin build that provides it.
    pub plugin: PluginIdentity,
    task: TagTaskBox,
}

// The evaluate stage calls `evaluate` on one `RegisteredTag` from several
// threads at once. That is sound: `TagTask: Send + Sync` (checked by
// abi_stable's layout check at load, and required of every SDK `Tag`), and
// each call borrows only its own batch, rule text and result.
const _: fn() = || {
    fn shared_across_threads<T: Send + Sync>() {}
    shared_across_threads::<RegisteredTag>();
};

impl std::fmt::Debug for RegisteredTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredTag")
            .field("info", &self.info)
            .field("source", &self.source)
            .field("plugin", &self.plugin)
            .finish()
    }
}

/// Why a plugin call did not produce a usable mask.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagFailure {
    /// The plugin rejected the rule.
    #[error("tag {tag_id}: invalid rule: {message}")]
    InvalidRule {
        /// The tag.
        tag_id: u32,
        /// The plugin's explanation.
        message: String,
    },
    /// The plugin returned an error.
    #[error("tag {tag_id}: plugin returned an error: {message}")]
    PluginError {
        /// The tag.
        tag_id: u32,
        /// The plugin's error.
        message: String,
    },
    /// The plugin panicked (caught at the boundary).
    #[error("tag {tag_id}: plugin panicked: {message}")]
    PluginPanicked {
        /// The tag.
        tag_id: u32,
        /// The panic message.
        message: String,
    },
    /// The plugin answered for another number of rows than it was given.
    #[error(
        "tag {tag_id}: plugin returned a mask of {returned} rows for a batch of {expected} rows"
    )]
    WrongMaskLength {
        /// The tag.
        tag_id: u32,
        /// Rows in the batch.
        expected: usize,
        /// Rows in the mask.
        returned: usize,
    },
}

/// A plugin's `custom_evaluate` text as the host keeps it.
fn custom_evaluate_text(what: &str) -> Option<String> {
    let what = what.trim();
    (!what.is_empty()).then(|| what.chars().take(CUSTOM_EVALUATE_CHARS).collect())
}

impl RegisteredTag {
    /// Wraps a task from a plugin, reading its metadata once (the loader
    /// does this for every task of a library it loaded; tests register
    /// in-process tags exported through the same ABI).
    pub fn new(task: TagTaskBox, source: PathBuf, plugin: PluginIdentity) -> RegisteredTag {
        let info = TagInfo::from_ffi(&task.info());
        RegisteredTag {
            info,
            source,
            plugin,
            task,
        }
    }

    /// The tag with what its plugin says its code decides beyond its rule
    /// tree (the library's custom-evaluate export's answer): trimmed, at
    /// most [`CUSTOM_EVALUATE_CHARS`] characters (the SDK refuses longer
    /// ones; a library built without it may send anything), none if blank.
    pub fn with_custom_evaluate(mut self, what: Option<&str>) -> RegisteredTag {
        self.info.custom_evaluate = what.and_then(custom_evaluate_text);
        self
    }

    fn failure(&self, error: PluginError) -> TagFailure {
        let tag_id = self.info.tag_id;
        let message = error.message.to_string();
        match error.kind {
            PluginErrorKind::InvalidRule => TagFailure::InvalidRule { tag_id, message },
            PluginErrorKind::Panic => TagFailure::PluginPanicked { tag_id, message },
            PluginErrorKind::InvalidBatch | PluginErrorKind::Evaluation => {
                TagFailure::PluginError { tag_id, message }
            }
        }
    }

    /// Asks the plugin whether `rule` (rule-language JSON) is valid for this tag.
    pub fn validate_rule(&self, rule: &str) -> Result<(), TagFailure> {
        self.task
            .validate_rule(RStr::from_str(rule))
            .into_result()
            .map_err(|e| self.failure(e))
    }

    /// Evaluates `rule` on `batch`; the mask is checked to cover exactly the
    /// batch's rows.
    pub fn evaluate(
        &self,
        batch: FfiBatch<'_>,
        rule: &str,
        as_of: Date,
    ) -> Result<Mask, TagFailure> {
        let mask = self
            .task
            .evaluate(batch, RStr::from_str(rule), as_of.days())
            .into_result()
            .map_err(|e| self.failure(e))?;
        let returned = mask.len;
        if returned != batch.num_rows {
            return Err(TagFailure::WrongMaskLength {
                tag_id: self.info.tag_id,
                expected: batch.num_rows,
                returned,
            });
        }
        Mask::from_ffi(mask).ok_or(TagFailure::WrongMaskLength {
            tag_id: self.info.tag_id,
            expected: batch.num_rows,
            returned,
        })
    }
}

/// Every loaded tag by id. Cheap to clone; a reload builds a new one, so
/// tasks in flight keep the tags they started with.
#[derive(Debug, Clone, Default)]
pub struct TagRegistry {
    tags: Arc<BTreeMap<u32, Arc<RegisteredTag>>>,
}

impl TagRegistry {
    /// A registry of these tags.
    pub fn new(tags: BTreeMap<u32, Arc<RegisteredTag>>) -> TagRegistry {
        TagRegistry {
            tags: Arc::new(tags),
        }
    }

    /// The tag with this id.
    pub fn get(&self, tag_id: u32) -> Option<&Arc<RegisteredTag>> {
        self.tags.get(&tag_id)
    }

    /// All tags, by ascending id.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<RegisteredTag>> {
        self.tags.values()
    }

    /// The ids among `ids` that no loaded plugin provides.
    pub fn unknown(&self, ids: &[u32]) -> Vec<u32> {
        ids.iter()
            .copied()
            .filter(|id| !self.tags.contains_key(id))
            .collect()
    }

    /// All tag ids, ascending.
    pub fn ids(&self) -> Vec<u32> {
        self.tags.keys().copied().collect()
    }

    /// Number of tags.
    pub fn len(&self) -> usize {
        self.tags.len()
    }

    /// True when no tag is loaded.
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }
}
