//! `tag-server plugins check FILE --data-dir DIR`: a plugin's tags, with
//! their default rules, over the first users of real data, through the same
//! stages a run uses (input check, load, evaluate) and writing nothing.

use super::{evaluate, inputs, load, Plan, RunError, TagRun, UNIVERSE_TABLE, USER_ID};
use crate::data::read::{scan_table, ColumnRequest};
use crate::model::Mode;
use crate::tasks::control::TaskControl;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use tag_plugin_api::{ColumnType, Date};
use tag_plugin_loader::RegisteredTag;

/// How many matching user ids a check shows per tag.
const EXAMPLES: usize = 5;

/// What one tag did on the sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SampleOutcome {
    /// It evaluated: users evaluated, users matched, a few of them.
    Evaluated {
        /// Users in the sample.
        users: usize,
        /// Of those, users matching the default rule.
        matched: usize,
        /// The first matching user ids.
        examples: Vec<String>,
    },
    /// Its inputs or its plugin failed.
    Failed(String),
}

/// Evaluates each of `tags` (default rules) over the first `sample` users
/// of the universe in `data_dir`; per tag id, what happened. An error is
/// returned only when nothing could be read at all.
pub fn check(
    tags: &[Arc<RegisteredTag>],
    data_dir: &Path,
    as_of: Date,
    sample: usize,
) -> Result<BTreeMap<u32, SampleOutcome>, RunError> {
    let users = first_users(data_dir, sample.max(1))?;
    let runs: Vec<TagRun> = tags
        .iter()
        .map(|tag| TagRun::with_default_rule(tag, true))
        .collect();
    let plan = Plan::new(runs, as_of, Mode::Full, Some(users))?;
    let (plan, unreadable) = inputs::check(plan, data_dir)?;
    let mut outcomes = BTreeMap::new();
    if !plan.tags.is_empty() {
        let control = TaskControl::default();
        let source = load::Source {
            data_dir,
            batch_rows: 65_536,
        };
        let universe = load::load(&plan, None, &source, &control)?;
        let matched = evaluate::evaluate(&plan.tags, &universe, as_of, 65_536, &control)?;
        for (t, result) in plan.tags.iter().zip(matched) {
            let outcome = match result {
                Ok(bits) => SampleOutcome::Evaluated {
                    users: universe.rows(),
                    matched: bits.count(),
                    examples: bits
                        .ones()
                        .take(EXAMPLES)
                        .map(|row| universe.ids.get(row).to_string())
                        .collect(),
                },
                Err(error) => SampleOutcome::Failed(error),
            };
            outcomes.insert(t.id(), outcome);
        }
    }
    for failure in unreadable {
        outcomes.insert(failure.tag_id, SampleOutcome::Failed(failure.error));
    }
    Ok(outcomes)
}

/// The first `n` distinct user ids of the universe table, in file order.
fn first_users(data_dir: &Path, n: usize) -> Result<Vec<String>, RunError> {
    let request = [ColumnRequest::new(USER_ID, ColumnType::Utf8)];
    let scan = scan_table(data_dir, UNIVERSE_TABLE, &request, n)
        .map_err(|e| RunError::Failed(e.to_string()))?;
    let mut seen = HashSet::new();
    let mut users = Vec::with_capacity(n);
    for batch in scan {
        let batch = batch.map_err(|e| RunError::Failed(e.to_string()))?;
        let ids = batch
            .column(USER_ID)
            .and_then(|c| c.str().cloned())
            .map_err(|e| RunError::Failed(e.to_string()))?;
        for id in ids.iter().flatten() {
            if users.len() < n && seen.insert(id.to_string()) {
                users.push(id.to_string());
            }
        }
        if users.len() >= n {
            break;
        }
    }
    Ok(users)
}
