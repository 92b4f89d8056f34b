//! Audiences on every backend: the dense user index, each tag's members as
//! a roaring bitmap, the change feed of each run, and saved audiences.
//!
//! - the users' dense index (`uidx`, [`super::user_index`]): given the
//!   first time a user gets a row and kept for good (a user who loses
//!   every tag and later gains one again keeps it; no other user ever gets
//!   it).
//! - `tag_bitmaps`: per tag, its members' indexes (roaring's portable
//!   serialization).
//! - `tag_changes`: per committed run and tag, who gained and who lost it.
//! - `audience_meta`: one row whose `version` every run's commit bumps, so
//!   a process polls one integer to learn that the bitmaps changed.
//! - `audiences` and `audience_counts`: saved expressions, and each one's
//!   size after every run.
//!
//! A run's write records who changed in each batch ([`AudienceDelta`]) and
//! folds that into the bitmaps in its own transaction, just before the
//! commit, so the bitmaps never show half a run and a run that fails or is
//! cancelled changes none of them.

use super::user_index::{each_indexed, Allocator};
use super::{Arg, Conn, Dialect, SqlStore};
use crate::audience::bitmaps::TagBitmaps;
use crate::audience::expr;
use crate::store::{
    AudienceCount, AudienceStore, ChangeFilter, RunStart, SavedAudience, StoreError, TagChangeRow,
    UserRows,
};
use roaring::RoaringBitmap;
use std::collections::BTreeMap;

/// Rows per page when an existing store's rows are indexed.
const BACKFILL_PAGE: i64 = 20_000;

/// The bytes of `bits` as the stores keep them.
pub fn encode(bits: &RoaringBitmap) -> Vec<u8> {
    let mut out = Vec::with_capacity(bits.serialized_size());
    // Writing into a Vec cannot fail.
    let _ = bits.serialize_into(&mut out);
    out
}

/// A bitmap from the bytes [`encode`] wrote.
pub fn decode(bytes: &[u8]) -> Result<RoaringBitmap, StoreError> {
    RoaringBitmap::deserialize_from(bytes)
        .map_err(|e| StoreError::Corrupt(format!("a tag bitmap: {e}")))
}

/// Who a run changed so far: every changed user's index, and per tag the
/// changed users who hold it after the run.
#[derive(Debug, Default)]
pub struct AudienceDelta {
    changed: RoaringBitmap,
    holding: BTreeMap<u32, RoaringBitmap>,
    index: Allocator,
}

impl AudienceDelta {
    /// Records a batch of a run's changes, before they are applied on
    /// `c`: the index of each row (new users get theirs here), to be
    /// written with the new rows.
    pub fn record(&mut self, c: &mut dyn Conn, changes: &UserRows) -> Result<Vec<u32>, StoreError> {
        let index = self.index.index(c, changes)?;
        // Per tag, the batch's holders, then added to its bitmap at once:
        // a sorted run (a first run's new users) is appended, not inserted
        // one by one.
        let mut batch: Vec<(u32, Vec<u32>)> = Vec::new();
        for ((_, _, held), &uidx) in changes.iter().zip(&index) {
            for h in held {
                match batch.iter_mut().find(|(tag, _)| *tag == h.tag_id) {
                    Some((_, holders)) => holders.push(uidx),
                    None => batch.push((h.tag_id, vec![uidx])),
                }
            }
        }
        add_all(&mut self.changed, index.clone());
        for (tag, holders) in batch {
            add_all(self.holding.entry(tag).or_default(), holders);
        }
        Ok(index)
    }

    /// Folds the run into the bitmaps, records its change feed and the
    /// saved audiences' counts, and bumps the version, on `c` inside the
    /// run's transaction (not committed here).
    pub fn fold(&self, c: &mut dyn Conn, start: &RunStart) -> Result<(), StoreError> {
        let lock = match c.dialect() {
            Dialect::Sqlite => "SELECT version FROM audience_meta WHERE id = 1",
            Dialect::Postgres | Dialect::MySql => {
                "SELECT version FROM audience_meta WHERE id = 1 FOR UPDATE"
            }
        };
        let version = c
            .query_first(lock, &[])?
            .ok_or_else(|| StoreError::Corrupt("audience_meta has no row".into()))?
            .int(0)?;
        // A locking read where there are row locks: the latest committed
        // bitmaps, whatever snapshot the transaction's earlier reads saw.
        let mut bitmaps = read_bitmaps(c, true)?;
        let mut tags: Vec<u32> = start.tags.iter().map(|t| t.tag_id).collect();
        tags.extend(self.holding.keys().copied());
        tags.sort_unstable();
        tags.dedup();
        let in_run = |t: u32| start.tags.iter().any(|g| g.tag_id == t);
        let version = version + 1;
        for tag in tags {
            let old = bitmaps.remove(&tag).unwrap_or_default();
            let mut new = &old - &self.changed;
            if let Some(holding) = self.holding.get(&tag) {
                new |= holding;
            }
            if in_run(tag) {
                let (added, removed) = (&new - &old, &old - &new);
                record_change(c, start, version, tag, [&added, &removed])?;
            }
            if new != old {
                write_bitmap(c, tag, &new)?;
            }
            bitmaps.insert(tag, new);
        }
        c.execute(
            "UPDATE audience_meta SET version = ? WHERE id = 1",
            &[Arg::Int(version)],
        )?;
        let snapshot = TagBitmaps::new(version as u64, bitmaps);
        count_saved(c, start, version, &snapshot)
    }
}

/// Adds `values` to `bits`: appended when they are ascending and above
/// its largest value, else one by one.
fn add_all(bits: &mut RoaringBitmap, values: Vec<u32>) {
    let ascending = values.windows(2).all(|w| w[0] < w[1]);
    let above = match (bits.max(), values.first()) {
        (Some(max), Some(&first)) => first > max,
        _ => true,
    };
    if ascending && above && bits.append(values.iter().copied()).is_ok() {
        return;
    }
    bits.extend(values);
}

/// Every tag's bitmap as stored (`locking`: with the rows locked, where
/// the database has row locks).
fn read_bitmaps(
    c: &mut dyn Conn,
    locking: bool,
) -> Result<BTreeMap<u32, RoaringBitmap>, StoreError> {
    let sql = match (locking, c.dialect()) {
        (true, Dialect::Postgres | Dialect::MySql) => {
            "SELECT tag_id, members FROM tag_bitmaps FOR UPDATE"
        }
        _ => "SELECT tag_id, members FROM tag_bitmaps",
    };
    let mut out = BTreeMap::new();
    for row in c.query(sql, &[])? {
        out.insert(row.id(0)?, decode(&row.blob(1)?)?);
    }
    Ok(out)
}

fn write_bitmap(c: &mut dyn Conn, tag: u32, bits: &RoaringBitmap) -> Result<(), StoreError> {
    let sql = c.dialect().upsert("tag_bitmaps", &["tag_id", "members"]);
    c.execute(&sql, &[Arg::from(tag), Arg::Blob(&encode(bits))])
        .map(drop)
}

/// Records who gained (`[added, removed]`) and who lost `tag` in the run
/// committing as `version`.
fn record_change(
    c: &mut dyn Conn,
    start: &RunStart,
    version: i64,
    tag: u32,
    [added, removed]: [&RoaringBitmap; 2],
) -> Result<(), StoreError> {
    // A task commits once: its run's rows are new.
    let sql = "INSERT INTO tag_changes (task_id, tag_id, version, committed_at, added, removed) \
               VALUES (?, ?, ?, ?, ?, ?)";
    c.execute(
        sql,
        &[
            Arg::from(&start.task_id),
            Arg::from(tag),
            Arg::Int(version),
            Arg::from(&start.now),
            Arg::Blob(&encode(added)),
            Arg::Blob(&encode(removed)),
        ],
    )
    .map(drop)
}

/// Records each saved audience's size in `snapshot` (the state the run
/// commits).
fn count_saved(
    c: &mut dyn Conn,
    start: &RunStart,
    version: i64,
    snapshot: &TagBitmaps,
) -> Result<(), StoreError> {
    let saved = c.query("SELECT name, canonical FROM audiences", &[])?;
    let sql = "INSERT INTO audience_counts (name, task_id, version, committed_at, members) \
               VALUES (?, ?, ?, ?, ?)";
    for row in saved {
        let (name, canonical) = (row.text(0)?, row.text(1)?);
        let parsed = expr::parse_ids(&canonical)
            .map_err(|e| StoreError::Corrupt(format!("saved audience {name:?}: {e}")))?;
        let members = parsed.count(snapshot) as i64;
        c.execute(
            sql,
            &[
                Arg::from(&name),
                Arg::from(&start.task_id),
                Arg::Int(version),
                Arg::from(&start.now),
                Arg::Int(members),
            ],
        )?;
    }
    Ok(())
}

/// Indexes the users of a store that had rows before it kept bitmaps, and
/// builds their bitmaps, once: the first process to insert the version
/// row does it in the same transaction; any other finds the row there.
pub fn backfill(c: &mut dyn Conn) -> Result<(), StoreError> {
    c.transaction(|c| {
        let into = "INTO audience_meta (id, version) VALUES (1, 0)";
        if c.execute(&c.dialect().insert_ignore(into), &[])? == 0 {
            return Ok(());
        }
        let (mut bitmaps, mut after, mut users) = (BTreeMap::new(), String::new(), 0u64);
        let mut allocator = Allocator::default();
        loop {
            let sql = format!(
                "SELECT user_id, {} FROM user_tag_sets WHERE user_id > ? AND uidx IS NULL \
                 ORDER BY user_id LIMIT ?",
                c.dialect().json_text("tag_ids")
            );
            let rows = c.query(&sql, &[Arg::from(after.as_str()), Arg::Int(BACKFILL_PAGE)])?;
            let Some(last) = rows.last() else { break };
            after = last.text(0)?;
            let page: Vec<(String, Vec<u32>)> = rows
                .iter()
                .map(|r| Ok((r.text(0)?, crate::store::parse_tag_ids(&r.text(1)?)?)))
                .collect::<Result<_, StoreError>>()?;
            let ids: Vec<&str> = page.iter().map(|(u, _)| u.as_str()).collect();
            let first = allocator.assign(c, &ids)?;
            for (k, (user, tags)) in page.iter().enumerate() {
                let uidx = first + k as u32;
                c.execute(
                    "UPDATE user_tag_sets SET uidx = ? WHERE user_id = ?",
                    &[Arg::from(uidx), Arg::from(user.as_str())],
                )?;
                for tag in tags {
                    let bits: &mut RoaringBitmap = bitmaps.entry(*tag).or_default();
                    bits.insert(uidx);
                }
            }
            users += page.len() as u64;
        }
        for (tag, bits) in &bitmaps {
            write_bitmap(c, *tag, bits)?;
        }
        if users > 0 {
            tracing::info!(users, "indexed the stored users for audiences");
        }
        Ok(())
    })
}

fn saved(row: &super::Row) -> Result<SavedAudience, StoreError> {
    Ok(SavedAudience {
        name: row.text(0)?,
        expr: row.text(1)?,
        canonical: row.text(2)?,
        description: row.text(3)?,
        saved_by: row.opt_text(4)?,
        saved_at: row.text(5)?,
    })
}

const SAVED_COLUMNS: &str = "name, expr, canonical, description, saved_by, saved_at";

impl<B: SqlStore> AudienceStore for B {
    fn local_commits(&self) -> u64 {
        self.commits().load(std::sync::atomic::Ordering::SeqCst)
    }

    fn audience_version(&self) -> Result<u64, StoreError> {
        let row =
            self.results(|c| c.query_first("SELECT version FROM audience_meta WHERE id = 1", &[]))?;
        Ok(row.map(|r| r.int(0)).transpose()?.unwrap_or(0) as u64)
    }

    fn tag_bitmaps(&self) -> Result<(u64, BTreeMap<u32, RoaringBitmap>), StoreError> {
        // The version before and after the read: equal, no commit came
        // between, so the bitmaps are that version's.
        for _ in 0..10 {
            let before = self.audience_version()?;
            let bitmaps = self.results(|c| read_bitmaps(c, false))?;
            if self.audience_version()? == before {
                return Ok((before, bitmaps));
            }
        }
        Err(StoreError::Database(
            "the bitmaps changed during ten reads in a row".into(),
        ))
    }

    fn indexed_users(&self, uidx: &[u32]) -> Result<Vec<(u32, String)>, StoreError> {
        let mut out = Vec::with_capacity(uidx.len());
        self.results(|c| {
            each_indexed(c, uidx.iter().copied(), &mut |u, id| {
                out.push((u, id.to_string()));
                true
            })
        })?;
        Ok(out)
    }

    fn each_member(
        &self,
        members: &RoaringBitmap,
        each: &mut dyn FnMut(u32, &str) -> bool,
    ) -> Result<(), StoreError> {
        self.results(|c| {
            // One connection for the whole stream, its page cache kept
            // small meanwhile (SQLite's pages count in this process's
            // memory): an export reads every chunk once.
            let sqlite = c.dialect() == Dialect::Sqlite;
            let cache = match sqlite {
                true => c
                    .query_first("PRAGMA cache_size", &[])?
                    .map(|r| r.int(0))
                    .transpose()?,
                false => None,
            };
            if sqlite {
                c.batch("PRAGMA cache_size = -4096; PRAGMA shrink_memory")?;
            }
            let streamed = each_indexed(c, members.iter(), each);
            if let Some(size) = cache {
                c.batch(&format!("PRAGMA cache_size = {size}"))?;
            }
            streamed
        })
    }

    fn user_index(&self, user_id: &str) -> Result<Option<u32>, StoreError> {
        let sql = "SELECT uidx FROM user_tag_sets WHERE user_id = ? \
                   UNION ALL SELECT uidx FROM retired_users WHERE user_id = ?";
        let row = self.results(|c| c.query_first(sql, &[user_id.into(), user_id.into()]))?;
        Ok(row
            .map(|r| r.opt_int(0))
            .transpose()?
            .flatten()
            .map(|n| n as u32))
    }

    fn tag_changes(
        &self,
        tag_id: u32,
        filter: &ChangeFilter,
    ) -> Result<Vec<TagChangeRow>, StoreError> {
        let (condition, value) = match filter {
            ChangeFilter::Task(task_id) => ("task_id = ?", task_id.as_str()),
            ChangeFilter::Since(time) => ("committed_at >= ?", time.as_str()),
        };
        let sql = format!(
            "SELECT task_id, committed_at, added, removed FROM tag_changes \
             WHERE tag_id = ? AND {condition} ORDER BY version"
        );
        let rows = self.results(|c| c.query(&sql, &[Arg::from(tag_id), value.into()]))?;
        rows.iter()
            .map(|r| {
                Ok(TagChangeRow {
                    task_id: r.text(0)?,
                    tag_id,
                    committed_at: r.text(1)?,
                    added: decode(&r.blob(2)?)?,
                    removed: decode(&r.blob(3)?)?,
                })
            })
            .collect()
    }

    fn last_runs(&self) -> Result<Vec<(u32, String, String)>, StoreError> {
        let sql = "SELECT c.tag_id, c.task_id, c.committed_at FROM tag_changes AS c \
                   JOIN (SELECT tag_id, MAX(version) AS version FROM tag_changes GROUP BY tag_id) AS l \
                   ON l.tag_id = c.tag_id AND l.version = c.version ORDER BY c.tag_id";
        let rows = self.results(|c| c.query(sql, &[]))?;
        rows.iter()
            .map(|r| Ok((r.id(0)?, r.text(1)?, r.text(2)?)))
            .collect()
    }

    fn save_audience(&self, audience: &SavedAudience) -> Result<bool, StoreError> {
        let a = audience;
        self.results_write(|c| {
            c.transaction(|c| {
                let existed = c
                    .query_first(
                        "SELECT 1 FROM audiences WHERE name = ?",
                        &[(&a.name).into()],
                    )?
                    .is_some();
                let columns: Vec<&str> = SAVED_COLUMNS.split(", ").collect();
                let sql = c.dialect().upsert("audiences", &columns);
                let args = [
                    (&a.name).into(),
                    (&a.expr).into(),
                    (&a.canonical).into(),
                    (&a.description).into(),
                    (&a.saved_by).into(),
                    (&a.saved_at).into(),
                ];
                c.execute(&sql, &args)?;
                if existed {
                    // A new expression: the old one's counts no longer apply.
                    c.execute(
                        "DELETE FROM audience_counts WHERE name = ?",
                        &[(&a.name).into()],
                    )?;
                }
                Ok(existed)
            })
        })
    }

    fn audiences(&self) -> Result<Vec<SavedAudience>, StoreError> {
        let sql = format!("SELECT {SAVED_COLUMNS} FROM audiences ORDER BY name");
        let rows = self.results(|c| c.query(&sql, &[]))?;
        rows.iter().map(saved).collect()
    }

    fn audience(&self, name: &str) -> Result<Option<SavedAudience>, StoreError> {
        let sql = format!("SELECT {SAVED_COLUMNS} FROM audiences WHERE name = ?");
        let row = self.results(|c| c.query_first(&sql, &[name.into()]))?;
        row.as_ref().map(saved).transpose()
    }

    fn delete_audience(&self, name: &str) -> Result<bool, StoreError> {
        self.results_write(|c| {
            c.transaction(|c| {
                c.execute("DELETE FROM audience_counts WHERE name = ?", &[name.into()])?;
                Ok(c.execute("DELETE FROM audiences WHERE name = ?", &[name.into()])? > 0)
            })
        })
    }

    fn audience_counts(&self, name: &str, limit: usize) -> Result<Vec<AudienceCount>, StoreError> {
        let sql = "SELECT task_id, committed_at, members FROM audience_counts WHERE name = ? \
                   ORDER BY version DESC LIMIT ?";
        let rows = self.results(|c| c.query(sql, &[name.into(), Arg::Int(limit as i64)]))?;
        let mut counts = rows
            .iter()
            .map(|r| {
                Ok(AudienceCount {
                    task_id: r.text(0)?,
                    committed_at: r.text(1)?,
                    members: r.int(2)?.max(0) as u64,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        counts.reverse();
        Ok(counts)
    }

    fn purge_changes(&self, before: &str) -> Result<usize, StoreError> {
        let sql = "DELETE FROM tag_changes WHERE committed_at < ?";
        Ok(self.results_write(|c| c.execute(sql, &[before.into()]))? as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_added_whether_they_come_in_order_or_not() {
        let mut bits: RoaringBitmap = [5, 9].into_iter().collect();
        add_all(&mut bits, vec![10, 11, 400_000]);
        add_all(&mut bits, vec![7, 3, 7]);
        add_all(&mut bits, vec![]);
        let want: RoaringBitmap = [3, 5, 7, 9, 10, 11, 400_000].into_iter().collect();
        assert_eq!(bits, want);
    }
}
