//! The first stage: which tags run with which rules and watermarks, and which
//! columns of which tables they read.

use super::{Failures, Plan, RunError, TablePlan, TagFailure, TagRun};
use super::{UNIVERSE_TABLE, UPDATED_TIME, USER_ID};
use crate::data::read::ColumnRequest;
use crate::model::{Mode, TaskRecord};
use crate::store::{RuleVersion, Store, StoreError, TagState};
use std::collections::{BTreeMap, HashMap};
use tag_plugin_api::{ColumnType, Date, TagInfo};
use tag_plugin_loader::{RegisteredTag, TagRegistry};

/// Plans `task`: each tag's rule (seeded from its plugin's default if the
/// store has none), its last run's state, and the column plan; the tags
/// that cannot run (not loaded, invalid rule) are the first failures.
pub fn plan(
    task: &TaskRecord,
    registry: &TagRegistry,
    store: &dyn Store,
) -> Result<(Plan, Failures), RunError> {
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
    let plan = Plan::new(tags, as_of, task.spec.mode, task.spec.user_ids.clone())?;
    let mut failures = Failures::default();
    failures.add(failed, plan.tags.len())?;
    Ok((plan, failures))
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
    let stored = current_rule(store, &tag).map_err(super::failed)?;
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

/// A tag's current rule: its plugin's default, saved as version 1, when
/// the store has none. Every rule is seeded through here: the catalog calls
/// it for each tag it loads, a run's plan for each tag it plans (a store
/// shared with servers that never loaded the tag has no rule for it yet).
pub fn current_rule(store: &dyn Store, tag: &RegisteredTag) -> Result<RuleVersion, StoreError> {
    match store.current_rule(tag.info.tag_id)? {
        Some(rule) => Ok(rule),
        None => store.seed_rule(tag.info.tag_id, &tag.info.default_rule),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testkit::tag_at_least;
    use crate::model::TaskSpec;
    use crate::store::prelude::*;
    use crate::store::sqlite::SqliteStore;

    /// A task over `tag_ids` in `mode`, as of 2025-01-15.
    fn task(tag_ids: &[u32], mode: Mode) -> TaskRecord {
        let spec = TaskSpec {
            tag_ids: tag_ids.to_vec(),
            user_ids: None,
            mode,
            priority: Default::default(),
            as_of: Some("2025-01-15".into()),
            retry_of: None,
        };
        crate::tasks::lifecycle::create(spec, "local")
    }

    /// A registry of tag 1 (`cash >= 150`) and a new store.
    fn setup() -> (tempfile::TempDir, TagRegistry, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("tags.db")).unwrap();
        let tag = tag_at_least(1, "user_asset_summary", "cash", 150.0);
        let registry = TagRegistry::new([(1, tag)].into());
        (dir, registry, store)
    }

    #[test]
    fn a_tag_without_a_rule_gets_its_default_and_an_unknown_tag_fails_alone() {
        let (_dir, registry, store) = setup();
        let (plan, failures) = plan(&task(&[1, 2], Mode::Incremental), &registry, &store).unwrap();
        let t = &plan.tags[0];
        assert_eq!((plan.tags.len(), t.id(), t.rule_version), (1, 1, 1));
        assert_eq!(t.rule, registry.get(1).unwrap().info.default_rule);
        assert_eq!(store.current_rule(1).unwrap().unwrap().rule, t.rule);
        // Never run before: the whole universe, even incrementally.
        assert!(t.whole_universe && plan.incremental());
        assert_eq!(plan.as_of.to_string(), "2025-01-15");
        assert_eq!(
            names(&plan.tables[1]),
            vec!["user_id", "cash", "updated_time"]
        );
        let failed = failures.tags();
        assert_eq!(failed.len(), 1);
        assert!(failed[0].tag_id == 2 && failed[0].error.contains("not provided"));
    }

    #[test]
    fn a_saved_rule_is_used_and_kept_and_an_invalid_one_fails_the_tag() {
        let (_dir, registry, store) = setup();
        let tag = registry.get(1).unwrap();
        let rule = r#"{"field": "cash", "operator": ">=", "value": 5}"#;
        store.save_rule(1, rule, "test").unwrap();
        let (planned, _) = plan(&task(&[1], Mode::Full), &registry, &store).unwrap();
        let t = &planned.tags[0];
        assert_eq!((t.rule.as_str(), t.rule_version), (rule, 1));
        // Seeding again (the catalog at a reload) keeps the saved rule.
        assert_eq!(current_rule(&store, tag).unwrap().rule, rule);
        store.save_rule(1, "not json", "test").unwrap();
        let Err(RunError::Failed(message)) = plan(&task(&[1], Mode::Full), &registry, &store)
        else {
            panic!("expected the run to fail");
        };
        assert!(
            message.contains("tag 1: stored rule version 2 is invalid"),
            "{message}"
        );
    }

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
