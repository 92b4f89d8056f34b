//! The first stage: which tags run with which rules and watermarks, and which
//! columns of which tables they read.

use super::{RunError, UNIVERSE_TABLE, UPDATED_TIME, USER_ID};
use crate::data::read::ColumnRequest;
use crate::model::{Mode, TaskRecord};
use crate::registry::{PluginIdentity, RegisteredTag, TagRegistry};
use crate::store::{RuleVersion, Store, TagState};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tag_plugin_api::{ColumnType, Date, TagInfo};

/// A tag prepared for one run.
pub struct TagRun {
    /// The plugin's tag.
    pub tag: Arc<RegisteredTag>,
    /// Its current rule (rule-language JSON).
    pub rule: String,
    /// That rule's version.
    pub rule_version: i64,
    /// Evaluate every row (full semantics) even in an incremental run.
    pub whole_universe: bool,
    /// Per table, the newest `updated_time` its last successful run saw.
    pub watermarks: BTreeMap<String, i64>,
}

impl TagRun {
    /// `tag` with its plugin's default rule as version 1 and no history
    /// (`plugins check` on data, and tests).
    pub fn with_default_rule(tag: &Arc<RegisteredTag>, whole_universe: bool) -> TagRun {
        TagRun {
            tag: Arc::clone(tag),
            rule: tag.info.default_rule.clone(),
            rule_version: 1,
            whole_universe,
            watermarks: BTreeMap::new(),
        }
    }

    /// The tag's id.
    pub fn id(&self) -> u32 {
        self.tag.info.tag_id
    }
}

/// The columns to read from one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePlan {
    /// The table.
    pub table: String,
    /// `user_id` first, the tags' columns, `updated_time` last.
    pub columns: Vec<ColumnRequest>,
}

/// A tag of the task that does not run, and why (the others still do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagFailure {
    /// The tag.
    pub tag_id: u32,
    /// Its description, when its plugin is loaded.
    pub tag_name: String,
    /// The rule version it was to evaluate, once known.
    pub rule_version: Option<i64>,
    /// The plugin build that provides it, when loaded.
    pub plugin: Option<PluginIdentity>,
    /// What went wrong.
    pub error: String,
}

/// What a run will do.
pub struct Plan {
    /// The tags that run, in the task's order.
    pub tags: Vec<TagRun>,
    /// The tags that failed so far (they keep their results and state).
    pub failed: Vec<TagFailure>,
    /// Tables to read, the universe first.
    pub tables: Vec<TablePlan>,
    /// The rules' reference date.
    pub as_of: Date,
    /// Full or incremental.
    pub mode: Mode,
    /// The users a `user_ids` run is restricted to.
    pub user_ids: Option<Vec<String>>,
}

impl Plan {
    /// An incremental run over the whole universe (not restricted to `user_ids`).
    pub fn incremental(&self) -> bool {
        self.mode == Mode::Incremental && self.user_ids.is_none()
    }

    /// Moves the tags named in `failures` (tag id, error) from the run to
    /// `failed` and plans the columns again for the tags left.
    pub fn fail_tags(&mut self, failures: Vec<(u32, String)>) -> Result<(), RunError> {
        for (tag_id, error) in failures {
            if let Some(at) = self.tags.iter().position(|t| t.id() == tag_id) {
                let t = self.tags.remove(at);
                self.failed.push(TagFailure {
                    tag_id,
                    tag_name: t.tag.info.description.clone(),
                    rule_version: Some(t.rule_version),
                    plugin: Some(t.tag.plugin.clone()),
                    error,
                });
            }
        }
        self.failed.sort_by_key(|f| f.tag_id);
        self.tables = columns(self.tags.iter().map(|t| &t.tag.info))?;
        Ok(())
    }

    /// Fails the run when no tag is left to run, naming every failure.
    pub fn any_left(&self) -> Result<(), RunError> {
        if self.tags.is_empty() {
            let each: Vec<String> = self
                .failed
                .iter()
                .map(|f| format!("tag {}: {}", f.tag_id, f.error))
                .collect();
            return Err(RunError::Failed(each.join("; ")));
        }
        Ok(())
    }
}

/// Plans `task`: each tag's rule (seeded from its plugin's default if the
/// store has none), its last run's state, and the column plan.
pub fn plan(
    task: &TaskRecord,
    registry: &TagRegistry,
    store: &dyn Store,
) -> Result<Plan, RunError> {
    let as_of = match &task.spec.as_of {
        Some(text) => Date::parse(text)
            .ok_or_else(|| RunError::Failed(format!("as_of {text:?} is not a date")))?,
        None => Date::today_utc(),
    };
    let states = store.tag_states().map_err(super::failed)?;
    let mut tags = Vec::new();
    let mut failed = Vec::new();
    for &id in &task.spec.tag_ids {
        match tag_run(id, task.spec.mode, registry, store, &states) {
            Ok(run) => tags.push(run),
            Err(RunError::Failed(error)) => failed.push(TagFailure {
                tag_id: id,
                tag_name: registry
                    .get(id)
                    .map(|t| t.info.description.clone())
                    .unwrap_or_default(),
                rule_version: None,
                plugin: registry.get(id).map(|t| t.plugin.clone()),
                error,
            }),
            Err(stop) => return Err(stop),
        }
    }
    let tables = columns(tags.iter().map(|t| &t.tag.info))?;
    let plan = Plan {
        tags,
        failed,
        tables,
        as_of,
        mode: task.spec.mode,
        user_ids: task.spec.user_ids.clone(),
    };
    plan.any_left()?;
    Ok(plan)
}

fn tag_run(
    id: u32,
    mode: Mode,
    registry: &TagRegistry,
    store: &dyn Store,
    states: &HashMap<u32, TagState>,
) -> Result<TagRun, RunError> {
    let tag = registry.get(id).cloned().ok_or_else(|| {
        RunError::Failed(format!("tag {id} is not provided by any loaded plugin"))
    })?;
    let stored: RuleVersion = match store.current_rule(id).map_err(super::failed)? {
        Some(rule) => rule,
        None => store
            .seed_rule(id, &tag.info.default_rule)
            .map_err(super::failed)?,
    };
    tag.validate_rule(&stored.rule).map_err(|e| {
        RunError::Failed(format!(
            "stored rule version {} is invalid: {e}",
            stored.version
        ))
    })?;
    let state = states.get(&id);
    let whole_universe = mode == Mode::Full
        || state.is_none_or(|s| !s.had_full_run || s.rule_version != stored.version);
    Ok(TagRun {
        tag,
        rule: stored.rule,
        rule_version: stored.version,
        whole_universe,
        watermarks: state.map(|s| s.watermarks.clone()).unwrap_or_default(),
    })
}

/// The columns each table must provide for `tags` (plus `user_id` and
/// `updated_time`), universe first; two tags declaring one column with two
/// types is an error.
pub fn columns<'a>(tags: impl Iterator<Item = &'a TagInfo>) -> Result<Vec<TablePlan>, RunError> {
    let mut tables: BTreeMap<String, Vec<ColumnRequest>> = BTreeMap::new();
    tables.entry(UNIVERSE_TABLE.to_string()).or_default();
    for info in tags {
        for input in &info.inputs {
            let columns = tables.entry(input.table.clone()).or_default();
            match columns.iter().find(|c| c.name == input.column) {
                Some(c) if c.column_type != input.column_type => {
                    return Err(RunError::Failed(format!(
                        "tags disagree on the type of {}.{}: {} and {}",
                        input.table, input.column, c.column_type, input.column_type
                    )))
                }
                Some(_) => {}
                None => columns.push(ColumnRequest::new(input.column.clone(), input.column_type)),
            }
        }
    }
    let mut plan: Vec<TablePlan> = tables
        .into_iter()
        .map(|(table, mut columns)| {
            columns.retain(|c| c.name != USER_ID && c.name != UPDATED_TIME);
            columns.insert(0, ColumnRequest::new(USER_ID, ColumnType::Utf8));
            columns.push(ColumnRequest::new(UPDATED_TIME, ColumnType::Timestamp));
            TablePlan { table, columns }
        })
        .collect();
    plan.sort_by_key(|t| t.table != UNIVERSE_TABLE);
    Ok(plan)
}

/// The tables a tag depends on: its inputs' and the universe, sorted.
pub fn tag_tables(info: &TagInfo) -> Vec<&str> {
    let mut tables: Vec<&str> = info
        .inputs
        .iter()
        .map(|i| i.table.as_str())
        .chain([UNIVERSE_TABLE])
        .collect();
    tables.sort_unstable();
    tables.dedup();
    tables
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(plan: &TablePlan) -> Vec<&str> {
        plan.columns.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn the_universe_comes_first_and_each_column_is_read_once() {
        let a = TagInfo::new(1, "A", "a", "x")
            .input("user_asset_summary", "cash_balance", ColumnType::Float64)
            .input(UNIVERSE_TABLE, "age", ColumnType::Int32);
        let b = TagInfo::new(2, "B", "b", "x")
            .input("user_asset_summary", "cash_balance", ColumnType::Float64)
            .input("user_asset_summary", "updated_time", ColumnType::Timestamp);
        let plan = columns([&a, &b].into_iter()).unwrap();
        assert_eq!(plan[0].table, UNIVERSE_TABLE);
        assert_eq!(names(&plan[0]), vec!["user_id", "age", "updated_time"]);
        assert_eq!(plan[1].table, "user_asset_summary");
        assert_eq!(
            names(&plan[1]),
            vec!["user_id", "cash_balance", "updated_time"]
        );
        assert_eq!(tag_tables(&a), vec!["user_asset_summary", UNIVERSE_TABLE]);
    }

    #[test]
    fn two_types_for_one_column_fail_the_plan() {
        let a = TagInfo::new(1, "A", "a", "x").input("t", "c", ColumnType::Float64);
        let b = TagInfo::new(2, "B", "b", "x").input("t", "c", ColumnType::Utf8);
        let Err(RunError::Failed(message)) = columns([&a, &b].into_iter()) else {
            panic!("expected a failure");
        };
        assert!(message.contains("t.c"), "{message}");
    }
}
