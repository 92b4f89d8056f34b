//! Versioned rules and tag owners on every backend.

use super::{Conn, Row, SqlStore};
use crate::model::now_timestamp;
use crate::store::{RuleStore, RuleVersion, StoreError};
use std::collections::HashMap;

/// The columns [`rule_of`] decodes, in its order.
const RULE_COLUMNS: &str = "tag_id, version, rule, created_at, changed_by";

fn rule_of(row: &Row) -> Result<RuleVersion, StoreError> {
    Ok(RuleVersion {
        tag_id: row.id(0)?,
        version: row.int(1)?,
        rule: row.text(2)?,
        created_at: row.text(3)?,
        changed_by: row.opt_text(4)?,
    })
}

fn current(c: &mut dyn Conn, tag_id: u32) -> Result<Option<RuleVersion>, StoreError> {
    let sql = format!(
        "SELECT {RULE_COLUMNS} FROM tag_rules WHERE tag_id = ? ORDER BY version DESC LIMIT 1"
    );
    c.query_first(&sql, &[tag_id.into()])?
        .as_ref()
        .map(rule_of)
        .transpose()
}

/// Adds the next version of a tag's rule, in the caller's transaction.
/// Two savers of one tag race for the same version number: the primary key
/// makes one of them fail rather than overwrite.
fn add_version(
    c: &mut dyn Conn,
    tag_id: u32,
    rule: &str,
    now: &str,
    changed_by: &str,
) -> Result<i64, StoreError> {
    let last = c
        .query_first(
            "SELECT COALESCE(MAX(version), 0) FROM tag_rules WHERE tag_id = ?",
            &[tag_id.into()],
        )?
        .map(|r| r.int(0))
        .transpose()?
        .unwrap_or(0);
    let version = last + 1;
    c.execute(
        "INSERT INTO tag_rules (tag_id, version, rule, created_at, changed_by) VALUES (?, ?, ?, ?, ?)",
        &[tag_id.into(), version.into(), rule.into(), now.into(), changed_by.into()],
    )?;
    Ok(version)
}

impl<B: SqlStore> RuleStore for B {
    fn current_rule(&self, tag_id: u32) -> Result<Option<RuleVersion>, StoreError> {
        self.control(|c| current(c, tag_id))
    }

    fn rule_history(&self, tag_id: u32) -> Result<Vec<RuleVersion>, StoreError> {
        let sql = format!("SELECT {RULE_COLUMNS} FROM tag_rules WHERE tag_id = ? ORDER BY version");
        let rows = self.control(|c| c.query(&sql, &[tag_id.into()]))?;
        rows.iter().map(rule_of).collect()
    }

    fn save_rule(
        &self,
        tag_id: u32,
        rule: &str,
        changed_by: &str,
    ) -> Result<RuleVersion, StoreError> {
        let now = now_timestamp();
        let version =
            self.control(|c| c.transaction(|c| add_version(c, tag_id, rule, &now, changed_by)))?;
        Ok(RuleVersion {
            tag_id,
            version,
            rule: rule.to_string(),
            created_at: now,
            changed_by: Some(changed_by.to_string()),
        })
    }

    fn seed_rule(&self, tag_id: u32, rule: &str) -> Result<RuleVersion, StoreError> {
        let now = now_timestamp();
        self.control(|c| {
            // Version 1 is there whenever the tag has any rule: a present
            // key means the tag is already seeded.
            let sql = c.dialect().insert_ignore(
                "INTO tag_rules (tag_id, version, rule, created_at) VALUES (?, 1, ?, ?)",
            );
            c.execute(&sql, &[tag_id.into(), rule.into(), now.as_str().into()])?;
            current(c, tag_id)
        })?
        .ok_or_else(|| StoreError::Database(format!("rule of tag {tag_id} vanished")))
    }

    fn tag_owners(&self) -> Result<HashMap<u32, String>, StoreError> {
        let rows = self.control(|c| c.query("SELECT tag_id, plugin FROM tag_owners", &[]))?;
        rows.iter().map(|r| Ok((r.id(0)?, r.text(1)?))).collect()
    }

    fn record_tag_owners(&self, claims: &[(u32, String)]) -> Result<(), StoreError> {
        let now = now_timestamp();
        self.control(|c| {
            let sql = c
                .dialect()
                .insert_ignore("INTO tag_owners (tag_id, plugin, recorded_at) VALUES (?, ?, ?)");
            for (tag_id, plugin) in claims {
                c.execute(
                    &sql,
                    &[(*tag_id).into(), plugin.into(), now.as_str().into()],
                )?;
            }
            Ok(())
        })
    }

    fn set_tag_owner(&self, tag_id: u32, plugin: &str) -> Result<Option<String>, StoreError> {
        let previous = self.tag_owners()?.remove(&tag_id);
        let now = now_timestamp();
        self.control(|c| {
            let sql = c
                .dialect()
                .upsert("tag_owners", &["tag_id", "plugin", "recorded_at"]);
            c.execute(&sql, &[tag_id.into(), plugin.into(), now.as_str().into()])
        })?;
        Ok(previous)
    }
}
