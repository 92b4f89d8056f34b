//! The FFI surface: every type that crosses between `tag-server` and a plugin.
//!
//! Only `#[repr(C)]` types deriving [`StableAbi`] live here, so abi_stable can
//! check at load time that host and plugin agree on every layout. The surface
//! is kept small on purpose: batches in, masks out, metadata and errors.

// abi_stable's `#[sabi_trait]` expands impls inside a const block.
#![allow(non_local_definitions)]

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, ROption, RResult, RSlice, RStr, RString, RVec, Tuple2},
    StableAbi,
};

/// The logical type of a column, as a tag declares it and as a batch carries it.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnType {
    /// `true`/`false`, bit-packed.
    Boolean,
    /// 32-bit signed integer.
    Int32,
    /// 64-bit signed integer.
    Int64,
    /// 64-bit float.
    Float64,
    /// Calendar date: days since 1970-01-01.
    Date,
    /// Instant: microseconds since 1970-01-01T00:00:00 UTC.
    Timestamp,
    /// UTF-8 string.
    Utf8,
}

impl ColumnType {
    /// The lower-case name used in error messages and docs.
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Boolean => "boolean",
            ColumnType::Int32 => "int32",
            ColumnType::Int64 => "int64",
            ColumnType::Float64 => "float64",
            ColumnType::Date => "date",
            ColumnType::Timestamp => "timestamp",
            ColumnType::Utf8 => "string",
        }
    }
}

impl std::fmt::Display for ColumnType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A borrowed bitmap in Arrow's layout: bit `offset + i` (least significant
/// bit first) of `bytes` is element `i`.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct FfiBitmap<'a> {
    /// The bytes holding the bits.
    pub bytes: RSlice<'a, u8>,
    /// Index of the first bit that belongs to this bitmap.
    pub offset: usize,
    /// Number of bits.
    pub len: usize,
}

/// The values of one column, borrowed from the host's buffers (no copy).
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub enum FfiValues<'a> {
    /// Bit-packed booleans.
    Boolean(FfiBitmap<'a>),
    /// 32-bit integers.
    Int32(RSlice<'a, i32>),
    /// 64-bit integers.
    Int64(RSlice<'a, i64>),
    /// 64-bit floats.
    Float64(RSlice<'a, f64>),
    /// Days since the Unix epoch.
    Date(RSlice<'a, i32>),
    /// Microseconds since the Unix epoch, UTC.
    Timestamp(RSlice<'a, i64>),
    /// Arrow "large utf8": string `i` is `data[offsets[i]..offsets[i + 1]]`.
    Utf8 {
        /// `num_rows + 1` monotonically non-decreasing offsets into `data`.
        offsets: RSlice<'a, i64>,
        /// Concatenated UTF-8 bytes.
        data: RSlice<'a, u8>,
    },
}

/// One named column of a batch.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct FfiColumn<'a> {
    /// Column name, as the tag declared it.
    pub name: RStr<'a>,
    /// The values; entries whose validity bit is 0 are null and hold garbage.
    pub values: FfiValues<'a>,
    /// Validity bitmap (1 = present); `RNone` means no nulls.
    pub validity: ROption<FfiBitmap<'a>>,
}

/// A batch of rows, one column per declared input, all of `num_rows` rows.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct FfiBatch<'a> {
    /// Number of rows in every column.
    pub num_rows: usize,
    /// The columns.
    pub columns: RSlice<'a, FfiColumn<'a>>,
}

/// A plugin's answer for a batch: bit `i` of `words` (LSB first) is 1 when row
/// `i` gets the tag. `len` must equal the batch's `num_rows`.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct FfiMask {
    /// `ceil(len / 64)` words; bits past `len` are zero.
    pub words: RVec<u64>,
    /// Number of rows the mask covers.
    pub len: usize,
}

/// One column a tag reads.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct FfiInput {
    /// Source table, e.g. `user_asset_summary`.
    pub table: RString,
    /// Column of that table.
    pub column: RString,
    /// The type the tag expects; the host coerces compatible types to it.
    pub column_type: ColumnType,
}

/// A tag's metadata, as `GET /api/v1/tags/available` and the registry show it.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct FfiTagInfo {
    /// Public, unique tag id.
    pub tag_id: u32,
    /// Class name kept from the original system, e.g. `HighNetWorthUserTask`.
    pub task_class: RString,
    /// Human description, e.g. `高净值用户`.
    pub description: RString,
    /// Category, e.g. `财富类`.
    pub category: RString,
    /// The tag's own version string.
    pub version: RString,
    /// Every column the tag reads.
    pub inputs: RVec<FfiInput>,
    /// The default rule, as rule-language JSON.
    pub default_rule: RString,
}

/// What went wrong inside a plugin call.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginErrorKind {
    /// The rule does not parse or does not fit the tag's columns.
    InvalidRule,
    /// The batch is malformed or lacks a column the tag needs.
    InvalidBatch,
    /// The tag's own code reported an error.
    Evaluation,
    /// The tag's code panicked; the panic was caught at the boundary.
    Panic,
}

/// An error returned across the boundary.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct PluginError {
    /// Broad class of the failure.
    pub kind: PluginErrorKind,
    /// What failed, for a person to read.
    pub message: RString,
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            PluginErrorKind::InvalidRule => "invalid rule",
            PluginErrorKind::InvalidBatch => "invalid batch",
            PluginErrorKind::Evaluation => "evaluation failed",
            PluginErrorKind::Panic => "plugin panicked",
        };
        write!(f, "{kind}: {}", self.message)
    }
}

impl std::error::Error for PluginError {}

/// One tag task as the host sees it. Implemented for plugin authors by the
/// SDK ([`crate::export_plugin!`]); every method is panic-guarded there.
///
/// **Threads:** `evaluate` may be called concurrently from several threads,
/// on different batches (the host evaluates a run's (tag, batch) pairs on as
/// many threads as it has cores, and several tasks may run at once); `info`
/// and `validate_rule` may be called from any thread, also during an
/// `evaluate`. Each call gets its own batch, rule text and result, so an
/// implementation only has to make `&self` safe to share, which is what
/// `Send + Sync` promises: state kept across calls needs a lock or atomics,
/// and a batch's result must not depend on which batches were evaluated
/// before it.
#[sabi_trait]
pub trait TagTask: Send + Sync {
    /// The tag's metadata.
    fn info(&self) -> FfiTagInfo;

    /// Checks that `rule` (rule-language JSON) parses and fits the tag's inputs.
    fn validate_rule(&self, rule: RStr<'_>) -> RResult<(), PluginError>;

    /// Evaluates `rule` on `batch` with `as_of` (days since epoch) as the
    /// reference date; returns one bit per row.
    #[sabi(last_prefix_field)]
    fn evaluate(
        &self,
        batch: FfiBatch<'_>,
        rule: RStr<'_>,
        as_of: i32,
    ) -> RResult<FfiMask, PluginError>;
}

/// An owned, type-erased tag task from a plugin.
pub type TagTaskBox = TagTask_TO<'static, RBox<()>>;

/// The root module every plugin library exports. A prefix type: later
/// versions of the API may append fields without breaking older plugins.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = TagPluginRef)))]
#[sabi(missing_field(panic))]
pub struct TagPlugin {
    /// The plugin crate's name.
    pub name: RStr<'static>,
    /// The plugin crate's version.
    pub version: RStr<'static>,
    /// Builds the plugin's tag tasks (called once per load).
    #[sabi(last_prefix_field)]
    pub tasks: extern "C" fn() -> RResult<RVec<TagTaskBox>, PluginError>,
}

impl RootModule for TagPluginRef {
    declare_root_module_statics! {TagPluginRef}
    const BASE_NAME: &'static str = "tag_plugin";
    const NAME: &'static str = "tag_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// The symbol of a plugin's optional second export, beside its root module:
/// a [`CustomEvaluatesFn`]. Not a method of [`TagTask`]: abi_stable refuses
/// a library whose vtable is shorter than the host's, so a method appended
/// there would reject every plugin built before it; a symbol a library may
/// lack keeps those loading (they answer none). `export_plugin!` defines it.
pub const CUSTOM_EVALUATE_SYMBOL: &[u8] = b"tag_plugin_custom_evaluates_v1\0";

/// Each of the library's tags whose own evaluate decides more than its rule
/// tree, with what, in the plugin's words (`TagInfo::custom_evaluate`); the
/// host calls it once per load. Its types are abi_stable's, whose layouts
/// the root module's check has already matched.
pub type CustomEvaluatesFn = extern "C" fn() -> RVec<Tuple2<u32, RString>>;

/// The version of this API crate; plugins built against another `0.y` are
/// rejected at load time.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");
