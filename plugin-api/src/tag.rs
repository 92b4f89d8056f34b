//! What a plugin author implements ([`Tag`]) and how it is exported
//! ([`crate::export_plugin!`]): the adapter that turns a `Tag` into the FFI
//! [`TagTask`] and guards every call with `catch_unwind`.

use crate::abi::{
    ColumnType, FfiBatch, FfiInput, FfiMask, FfiTagInfo, PluginError, PluginErrorKind, TagPlugin,
    TagPluginRef, TagTask, TagTaskBox, TagTask_TO,
};
use crate::batch::{Batch, BatchError};
use crate::date::Date;
use crate::mask::Mask;
use crate::rule::{EvalError, Rule, RuleError, Schema};
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RStr, RString, RVec, Tuple2};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// One column a tag reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// Source table.
    pub table: String,
    /// Column of that table.
    pub column: String,
    /// Type the tag expects.
    pub column_type: ColumnType,
}

/// The longest [`TagInfo::custom_evaluate`] text, in characters.
pub const CUSTOM_EVALUATE_CHARS: usize = 500;

/// A tag's metadata. Build it with [`TagInfo::new`] and the chained setters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagInfo {
    /// Public, unique tag id.
    pub tag_id: u32,
    /// Class name, e.g. `HighNetWorthUserTask`.
    pub task_class: String,
    /// Description, e.g. `高净值用户`.
    pub description: String,
    /// Category, e.g. `财富类`.
    pub category: String,
    /// The tag's version: `"1"` unless set with [`TagInfo::version`]
    /// (the reference plugins pass `env!("CARGO_PKG_VERSION")`).
    pub version: String,
    /// Columns read.
    pub inputs: Vec<Input>,
    /// Default rule, rule-language JSON.
    pub default_rule: String,
    /// What the tag's own [`Tag::evaluate`] decides beyond its rule tree,
    /// when it has one (set with [`TagInfo::custom_evaluate`]).
    pub custom_evaluate: Option<String>,
}

impl TagInfo {
    /// Metadata with no inputs and no rule yet.
    pub fn new(tag_id: u32, task_class: &str, description: &str, category: &str) -> TagInfo {
        TagInfo {
            tag_id,
            task_class: task_class.into(),
            description: description.into(),
            category: category.into(),
            version: "1".into(),
            inputs: Vec::new(),
            default_rule: String::new(),
            custom_evaluate: None,
        }
    }

    /// Declares that the tag reads `table.column` as `column_type`.
    pub fn input(mut self, table: &str, column: &str, column_type: ColumnType) -> TagInfo {
        self.inputs.push(Input {
            table: table.into(),
            column: column.into(),
            column_type,
        });
        self
    }

    /// Sets the default rule (rule-language JSON).
    pub fn default_rule(mut self, rule: &str) -> TagInfo {
        self.default_rule = rule.into();
        self
    }

    /// Sets the tag's version.
    pub fn version(mut self, version: &str) -> TagInfo {
        self.version = version.into();
        self
    }

    /// Declares that the tag's own [`Tag::evaluate`] decides more than its
    /// rule tree shows, and says what in one sentence (for example "A user
    /// with no login date counts as dormant"). The console shows it beside
    /// the tree and the API beside the rule, so nobody reads the tree as the
    /// whole rule; `tag-server plugins check` fails a tag whose evaluate
    /// answers otherwise than its tree on the sample rows without it.
    pub fn custom_evaluate(mut self, what: &str) -> TagInfo {
        self.custom_evaluate = Some(what.into());
        self
    }

    /// The columns as a rule schema (column names are unique across tables
    /// in a tag's inputs: the engine joins tables on `user_id`).
    pub fn schema(&self) -> Schema {
        Schema::new(
            self.inputs
                .iter()
                .map(|i| (i.column.clone(), i.column_type)),
        )
    }

    /// Reads metadata from its FFI form.
    pub fn from_ffi(info: &FfiTagInfo) -> TagInfo {
        TagInfo {
            tag_id: info.tag_id,
            task_class: info.task_class.to_string(),
            description: info.description.to_string(),
            category: info.category.to_string(),
            version: info.version.to_string(),
            inputs: info
                .inputs
                .iter()
                .map(|i| Input {
                    table: i.table.to_string(),
                    column: i.column.to_string(),
                    column_type: i.column_type,
                })
                .collect(),
            default_rule: info.default_rule.to_string(),
            // Not part of the FFI metadata: the host asks the library's
            // optional `CUSTOM_EVALUATE_SYMBOL`, which older plugins lack.
            custom_evaluate: None,
        }
    }

    fn to_ffi(&self) -> FfiTagInfo {
        FfiTagInfo {
            tag_id: self.tag_id,
            task_class: self.task_class.as_str().into(),
            description: self.description.as_str().into(),
            category: self.category.as_str().into(),
            version: self.version.as_str().into(),
            inputs: self
                .inputs
                .iter()
                .map(|i| FfiInput {
                    table: i.table.as_str().into(),
                    column: i.column.as_str().into(),
                    column_type: i.column_type,
                })
                .collect(),
            default_rule: self.default_rule.as_str().into(),
        }
    }

    /// Checks the metadata a host relies on: a rule that fits the inputs and
    /// no column declared twice.
    pub fn check(&self) -> Result<(), String> {
        if let Some(what) = &self.custom_evaluate {
            if what.trim().is_empty() || what.chars().count() > CUSTOM_EVALUATE_CHARS {
                return Err(format!(
                    "tag {}: custom_evaluate must say in 1 to {CUSTOM_EVALUATE_CHARS} characters what the tag's evaluate decides beyond its rule tree",
                    self.tag_id
                ));
            }
        }
        for (i, a) in self.inputs.iter().enumerate() {
            if self.inputs[..i].iter().any(|b| b.column == a.column) {
                return Err(format!(
                    "tag {}: column \"{}\" is declared twice",
                    self.tag_id, a.column
                ));
            }
        }
        Rule::parse(&self.default_rule)
            .and_then(|r| r.validate(&self.schema()))
            .map_err(|e| format!("tag {}: default {e}", self.tag_id))
    }
}

/// Why a tag could not produce a mask.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    /// The rule is invalid for this tag or batch.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// The batch lacks what the tag needs.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// The tag's own logic failed.
    #[error("{0}")]
    Failed(String),
}

impl From<EvalError> for TagError {
    fn from(e: EvalError) -> TagError {
        match e {
            EvalError::Rule(r) => TagError::Rule(r),
            EvalError::Batch(b) => TagError::Batch(b),
        }
    }
}

impl From<TagError> for PluginError {
    fn from(e: TagError) -> PluginError {
        let kind = match e {
            TagError::Rule(_) => PluginErrorKind::InvalidRule,
            TagError::Batch(_) => PluginErrorKind::InvalidBatch,
            TagError::Failed(_) => PluginErrorKind::Evaluation,
        };
        PluginError {
            kind,
            message: e.to_string().into(),
        }
    }
}

/// A tag, as a plugin author writes it. Most tags only describe themselves:
/// the default [`Tag::evaluate`] applies the (stored) rule.
///
/// `evaluate` may be called concurrently from several threads, on different
/// batches: the server evaluates a run's batches on every core. Hence
/// `Send + Sync`. Keep no per-batch state in `self` (a `Cell` or `RefCell`
/// field does not compile); anything shared across calls, such as a cache,
/// needs a `Mutex` or atomics, and each batch's mask must depend only on
/// that batch, the rule and `as_of`, never on the order batches come in.
pub trait Tag: Send + Sync + 'static {
    /// The tag's metadata; called once when the plugin is loaded.
    fn info(&self) -> TagInfo;

    /// Which rows of `batch` get the tag under `rule` on reference date
    /// `as_of`. Override for logic the rule language cannot express; the
    /// result must cover every row of the batch. It may be called
    /// concurrently from several threads, on different batches.
    ///
    /// An override can still take its parameters from the rule, so that an
    /// operator tunes them through the API without a rebuild: here the
    /// multiplier is the value of the rule's `stock_value` condition.
    ///
    /// ```
    /// use tag_plugin_api::{Batch, ColumnType, Date, Mask, Rule, Tag, TagError, TagInfo};
    ///
    /// /// Users whose stock is worth more than k times their cash.
    /// pub struct StockHeavy;
    ///
    /// impl Tag for StockHeavy {
    ///     fn info(&self) -> TagInfo {
    ///         TagInfo::new(102, "StockHeavyTask", "重仓股票用户", "财富类")
    ///             .input("user_asset_summary", "cash_balance", ColumnType::Float64)
    ///             .input("user_asset_summary", "stock_value", ColumnType::Float64)
    ///             .default_rule(r#"{"field": "stock_value", "operator": ">", "value": 2}"#)
    ///             .custom_evaluate("Stock worth more than k times cash, k being the rule's stock_value value.")
    ///     }
    ///
    ///     fn evaluate(&self, batch: &Batch<'_>, rule: &Rule, _: Date) -> Result<Mask, TagError> {
    ///         // Every condition of the rule, with its field, operator and value.
    ///         let k = rule
    ///             .conditions()
    ///             .iter()
    ///             .find(|c| c.field == "stock_value")
    ///             .and_then(|c| c.value.as_f64())
    ///             .ok_or_else(|| TagError::Failed("the rule needs a stock_value condition with a number".into()))?;
    ///         let cash = batch.column("cash_balance")?.f64_values()?;
    ///         let stock = batch.column("stock_value")?.f64_values()?;
    ///         let mut mask = Mask::none(batch.num_rows());
    ///         for i in 0..batch.num_rows() {
    ///             if let (Some(c), Some(s)) = (cash.get(i), stock.get(i)) {
    ///                 mask.set(i, s > k * c);
    ///             }
    ///         }
    ///         Ok(mask)
    ///     }
    /// }
    ///
    /// use tag_plugin_api::owned::OwnedBatch;
    /// use tag_plugin_api::testing::{evaluate_default, evaluate_rule};
    /// let batch = OwnedBatch::new()
    ///     .float64("cash_balance", &[Some(100.0), Some(100.0), None])
    ///     .float64("stock_value", &[Some(250.0), Some(150.0), Some(1e9)]);
    /// // The default rule's multiplier (2), then one an operator set (1).
    /// assert_eq!(evaluate_default(StockHeavy, &batch, "2025-01-15").unwrap(), [true, false, false]);
    /// let tuned = r#"{"field": "stock_value", "operator": ">", "value": 1}"#;
    /// assert_eq!(evaluate_rule(StockHeavy, &batch, tuned, "2025-01-15").unwrap(), [true, true, false]);
    /// ```
    fn evaluate(&self, batch: &Batch<'_>, rule: &Rule, as_of: Date) -> Result<Mask, TagError> {
        Ok(rule.evaluate(batch, as_of)?)
    }
}

/// Runs `f`, turning a panic into a [`PluginError`] so it never unwinds
/// across the FFI boundary (which would abort the host).
pub fn guard<T>(f: impl FnOnce() -> Result<T, PluginError>) -> RResult<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result.into(),
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_string());
            RResult::RErr(PluginError {
                kind: PluginErrorKind::Panic,
                message: message.into(),
            })
        }
    }
}

/// A [`Tag`] behind the FFI trait, with its metadata computed once.
struct Exported {
    tag: Box<dyn Tag>,
    info: FfiTagInfo,
    schema: Schema,
}

impl Exported {
    fn parse_rule(&self, rule: RStr<'_>) -> Result<Rule, PluginError> {
        let rule = Rule::parse(rule.as_str()).map_err(TagError::from)?;
        rule.validate(&self.schema).map_err(TagError::from)?;
        Ok(rule)
    }
}

impl TagTask for Exported {
    fn info(&self) -> FfiTagInfo {
        self.info.clone()
    }

    fn validate_rule(&self, rule: RStr<'_>) -> RResult<(), PluginError> {
        guard(|| self.parse_rule(rule).map(|_| ()))
    }

    fn evaluate(
        &self,
        batch: FfiBatch<'_>,
        rule: RStr<'_>,
        as_of: i32,
    ) -> RResult<FfiMask, PluginError> {
        guard(|| {
            let rule = self.parse_rule(rule)?;
            let batch = Batch::new(batch).map_err(TagError::from)?;
            let mask = self.tag.evaluate(&batch, &rule, Date(as_of))?;
            Ok(mask.into_ffi())
        })
    }
}

/// Wraps tags for export; the body of the plugin's `tasks` entry point.
/// Each tag's metadata is checked here so a broken plugin fails to load with
/// a reason instead of failing every task later.
pub fn export_tasks(
    make: impl FnOnce() -> Vec<Box<dyn Tag>>,
) -> RResult<RVec<TagTaskBox>, PluginError> {
    guard(|| {
        make()
            .into_iter()
            .map(|tag| {
                let info = tag.info();
                info.check().map_err(|message| PluginError {
                    kind: PluginErrorKind::InvalidRule,
                    message: message.into(),
                })?;
                let exported = Exported {
                    schema: info.schema(),
                    info: info.to_ffi(),
                    tag,
                };
                Ok(TagTask_TO::from_value(exported, TD_Opaque))
            })
            .collect()
    })
}

/// The body of a plugin's [`crate::abi::CUSTOM_EVALUATE_SYMBOL`] export
/// (used by [`crate::export_plugin!`]): each tag `make` builds that has a
/// [`TagInfo::custom_evaluate`], with it; none if building them panics.
pub fn custom_evaluates(make: impl FnOnce() -> Vec<Box<dyn Tag>>) -> RVec<Tuple2<u32, RString>> {
    let found = catch_unwind(AssertUnwindSafe(|| {
        make()
            .iter()
            .map(|tag| tag.info())
            .filter_map(|info| Some(Tuple2(info.tag_id, RString::from(info.custom_evaluate?))))
            .collect()
    }));
    found.unwrap_or_default()
}

/// Builds the root module a plugin exports (used by [`crate::export_plugin!`]).
pub fn root_module(
    name: &'static str,
    version: &'static str,
    tasks: extern "C" fn() -> RResult<RVec<TagTaskBox>, PluginError>,
) -> TagPluginRef {
    TagPlugin {
        name: RStr::from_str(name),
        version: RStr::from_str(version),
        tasks,
    }
    .leak_into_prefix()
}

/// Calls a tag the way the host does (through the FFI adapter, rule as
/// JSON), for plugin unit tests and `tag-server plugins check`.
pub fn evaluate_via_ffi(
    tag: Box<dyn Tag>,
    batch: FfiBatch<'_>,
    rule: &str,
    as_of: Date,
) -> Result<Mask, PluginError> {
    let tasks = export_tasks(|| vec![tag]).into_result()?;
    let task = tasks.into_iter().next().ok_or_else(|| PluginError {
        kind: PluginErrorKind::Evaluation,
        message: RString::from("no task exported"),
    })?;
    let mask = task
        .evaluate(batch, RStr::from_str(rule), as_of.days())
        .into_result()?;
    Mask::from_ffi(mask).ok_or_else(|| PluginError {
        kind: PluginErrorKind::Evaluation,
        message: "mask words do not match its length".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> TagInfo {
        TagInfo::new(7, "T", "t", "test")
            .input("user_asset_summary", "cash_balance", ColumnType::Float64)
            .default_rule(r#"{"field": "cash_balance", "operator": ">", "value": 10}"#)
    }

    struct Described(TagInfo);
    impl Tag for Described {
        fn info(&self) -> TagInfo {
            self.0.clone()
        }
    }

    /// What the plugin's custom-evaluate export answers for tag `id`
    /// among the tags `make` builds.
    fn answer(id: u32, make: impl FnOnce() -> Vec<Box<dyn Tag>>) -> Option<String> {
        let all = custom_evaluates(make);
        all.into_iter()
            .find(|Tuple2(tag, _)| *tag == id)
            .map(|Tuple2(_, what)| what.into_string())
    }

    /// What the plugin's custom-evaluate export answers for the tag, or
    /// the reason `export_tasks` refused it.
    fn exported(info: TagInfo) -> Result<Option<String>, String> {
        let id = info.tag_id;
        let make = || vec![Box::new(Described(info.clone())) as Box<dyn Tag>];
        export_tasks(make)
            .into_result()
            .map_err(|e| e.message.to_string())?;
        Ok(answer(id, make))
    }

    #[test]
    fn custom_evaluate_is_answered_by_the_export_and_none_unless_declared() {
        assert_eq!(exported(info()), Ok(None));
        let made = || vec![Box::new(Described(info().custom_evaluate("x"))) as Box<dyn Tag>];
        assert_eq!(answer(8, made), None, "no tag 8");
        let panics = || -> Vec<Box<dyn Tag>> { panic!("a constructor panicked") };
        assert_eq!(answer(7, panics), None);
        let said = "A null balance matches too.";
        assert_eq!(
            exported(info().custom_evaluate(said)),
            Ok(Some(said.into()))
        );
        // Not in the FFI metadata: read back from it, it is unknown.
        let ffi = info().custom_evaluate(said).to_ffi();
        assert_eq!(TagInfo::from_ffi(&ffi).custom_evaluate, None);
    }

    #[test]
    fn a_blank_or_overlong_custom_evaluate_keeps_the_plugin_from_loading() {
        for bad in [
            String::new(),
            "  ".into(),
            "x".repeat(CUSTOM_EVALUATE_CHARS + 1),
        ] {
            let refused = exported(info().custom_evaluate(&bad)).unwrap_err();
            assert!(refused.contains("custom_evaluate must say"), "{refused}");
        }
        let longest = "说".repeat(CUSTOM_EVALUATE_CHARS);
        assert_eq!(
            exported(info().custom_evaluate(&longest)),
            Ok(Some(longest))
        );
    }
}
