//! The diff stage, a pure function: the universe's rows in write order, each
//! tag's matches and scope, and the users' current tags in; the changes to
//! write and the per-tag counts out.

use super::bitset::Bitset;
use super::DiffCounts;
use crate::model::TagCounts;
use crate::store::{Held, HeldTags, Op, UserRows};

/// One tag of the run, as the diff sees it.
pub struct DiffTag<'a> {
    /// The tag.
    pub tag_id: u32,
    /// Universe rows whose rule is true.
    pub matched: &'a Bitset,
    /// Universe rows evaluated (`None`: all).
    pub scope: Option<&'a Bitset>,
}

/// The current tags of each universe row: indexes into the rows the store
/// returned.
pub struct Current<'a> {
    rows: &'a UserRows,
    /// Per universe row, its row in `rows` (`u32::MAX`: none).
    at: Vec<u32>,
}

impl<'a> Current<'a> {
    /// Places the store's `rows` on the universe; `find` gives a user's
    /// universe row (users outside the universe keep their rows: skipped).
    pub fn place(
        universe_rows: usize,
        rows: &'a UserRows,
        mut find: impl FnMut(&str) -> Option<usize>,
    ) -> Current<'a> {
        let mut at = vec![u32::MAX; universe_rows];
        for (i, (_, user, _)) in rows.iter().enumerate() {
            if let Some(row) = find(user) {
                at[row] = i as u32;
            }
        }
        Current { rows, at }
    }

    /// The tags universe row `row` holds now.
    pub fn get(&self, row: usize) -> &[Held] {
        match self.at[row] {
            u32::MAX => &[],
            i => self.rows.get(i as usize).2,
        }
    }
}

/// Calls `emit` with each change, for rows in `order`, so that each
/// evaluated user's tags among the run's tags are exactly those that
/// matched: gained tags get the run's grant ([`Held::NEW`]), kept tags keep
/// theirs, tags outside the run (or outside a tag's scope) stay. A row
/// whose tag ids do not change is not emitted.
pub fn diff<E>(
    order: impl Iterator<Item = usize>,
    tags: &[DiffTag<'_>],
    current: &Current<'_>,
    mut emit: impl FnMut(Op, usize, &[Held]) -> Result<(), E>,
) -> Result<DiffCounts, E> {
    let mut counts = DiffCounts {
        tags: vec![TagCounts::default(); tags.len()],
        ..DiffCounts::default()
    };
    let mut in_scope = vec![false; tags.len()];
    let mut new: HeldTags = HeldTags::new();
    for row in order {
        for (scoped, t) in in_scope.iter_mut().zip(tags) {
            *scoped = t.scope.is_none_or(|s| s.contains(row));
        }
        if !in_scope.contains(&true) {
            continue;
        }
        counts.evaluated += 1;
        let old = current.get(row);
        new.clear();
        // Tags outside this run (or outside its scope for this user) stay.
        new.extend(old.iter().copied().filter(|h| {
            !tags
                .iter()
                .zip(&in_scope)
                .any(|(t, s)| *s && t.tag_id == h.tag_id)
        }));
        for ((t, scoped), c) in tags.iter().zip(&in_scope).zip(counts.tags.iter_mut()) {
            if !scoped {
                continue;
            }
            c.evaluated_users += 1;
            let had = old.iter().find(|h| h.tag_id == t.tag_id);
            let hit = t.matched.contains(row);
            if hit {
                c.matched += 1;
                new.push(had.copied().unwrap_or(Held {
                    tag_id: t.tag_id,
                    grant: Held::NEW,
                }));
            }
            match (had.is_some(), hit) {
                (false, true) => c.added += 1,
                (true, false) => c.removed += 1,
                _ => {}
            }
        }
        new.sort_unstable_by_key(|h| h.tag_id);
        new.dedup_by_key(|h| h.tag_id);
        if new
            .iter()
            .map(|h| h.tag_id)
            .eq(old.iter().map(|h| h.tag_id))
        {
            continue;
        }
        let op = if new.is_empty() {
            Op::Delete
        } else if old.is_empty() {
            Op::Insert
        } else {
            Op::Update
        };
        match op {
            Op::Delete => counts.deleted += 1,
            _ => counts.upserted += 1,
        }
        emit(op, row, &new)?;
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(pairs: &[(u32, u32)]) -> Vec<Held> {
        pairs
            .iter()
            .map(|&(tag_id, grant)| Held { tag_id, grant })
            .collect()
    }

    /// Runs the diff over rows 0..n in order, collecting the changes.
    fn run(
        n: usize,
        tags: &[DiffTag<'_>],
        stored: &UserRows,
    ) -> (Vec<(Op, usize, Vec<Held>)>, DiffCounts) {
        let current = Current::place(n, stored, |u| u.strip_prefix('u')?.parse().ok());
        let mut out = Vec::new();
        let counts = diff(0..n, tags, &current, |op, row, h| {
            out.push((op, row, h.to_vec()));
            Ok::<(), ()>(())
        })
        .unwrap();
        (out, counts)
    }

    #[test]
    fn gains_losses_and_deletions_keep_other_tags_and_old_grants() {
        // u0 holds 1 (grant 7) and 9; u1 holds 1 (grant 7); u2 holds nothing.
        let mut stored = UserRows::default();
        stored.push(Op::Update, "u0", &held(&[(1, 7), (9, 3)]));
        stored.push(Op::Update, "u1", &held(&[(1, 7)]));
        stored.push(Op::Update, "outsider", &held(&[(1, 7)]));
        let one = Bitset::from_fn(4, |i| i == 0 || i == 2);
        let two = Bitset::from_fn(4, |i| i == 0);
        let tags = [
            DiffTag {
                tag_id: 1,
                matched: &one,
                scope: None,
            },
            DiffTag {
                tag_id: 2,
                matched: &two,
                scope: None,
            },
        ];
        let (changes, counts) = run(4, &tags, &stored);
        assert_eq!(
            changes,
            vec![
                // Keeps 1 with its grant, gains 2 with the run's, keeps 9.
                (Op::Update, 0, held(&[(1, 7), (2, Held::NEW), (9, 3)])),
                (Op::Delete, 1, vec![]),
                (Op::Insert, 2, held(&[(1, Held::NEW)])),
            ]
        );
        assert_eq!(counts.evaluated, 4);
        assert_eq!((counts.upserted, counts.deleted), (2, 1));
        assert_eq!(
            counts.tags[0],
            TagCounts {
                evaluated_users: 4,
                matched: 2,
                added: 1,
                removed: 1
            }
        );
    }

    #[test]
    fn unchanged_rows_are_not_written_and_scopes_limit_the_diff() {
        let mut stored = UserRows::default();
        stored.push(Op::Update, "u0", &held(&[(1, 7)]));
        stored.push(Op::Update, "u1", &held(&[(1, 7)]));
        // Nobody matches, but only row 1 is in scope: row 0 keeps its tag.
        let none = Bitset::empty(2);
        let scope = Bitset::from_fn(2, |i| i == 1);
        let tags = [DiffTag {
            tag_id: 1,
            matched: &none,
            scope: Some(&scope),
        }];
        let (changes, counts) = run(2, &tags, &stored);
        assert_eq!(changes, vec![(Op::Delete, 1, vec![])]);
        assert_eq!(counts.evaluated, 1);
        // A rerun that matches what is stored writes nothing.
        let all = Bitset::full(2);
        let tags = [DiffTag {
            tag_id: 1,
            matched: &all,
            scope: None,
        }];
        let (changes, counts) = run(2, &tags, &stored);
        assert!(changes.is_empty());
        assert_eq!(counts.tags[0].matched, 2);
    }
}
