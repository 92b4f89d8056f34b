//! Client input quoted back in an error text, bounded, and the keys of a
//! JSON object that are not known, each with the known key it is nearest to.
//!
//! A refusal names what was wrong, but a hostile request must not get back
//! an answer of megabytes: a quoted text is cut to [`MAX_CHARS`] characters
//! and a quoted list to [`MAX_ITEMS`] items. The rule parser and the host's
//! request checks both quote through here.

use std::borrow::Cow;
use std::fmt::Display;

/// Most characters of one quoted text.
pub const MAX_CHARS: usize = 120;
/// Most items of one quoted list.
pub const MAX_ITEMS: usize = 20;

/// `text`, or its first [`MAX_CHARS`] characters and how long it was.
pub fn clip(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(MAX_CHARS) {
        None => Cow::Borrowed(text),
        Some((end, _)) => Cow::Owned(format!(
            "{}… ({} characters)",
            &text[..end],
            text.chars().count()
        )),
    }
}

/// `[a, b, c]`: at most [`MAX_ITEMS`] items, then `… and N more`.
pub fn list<T: Display>(items: &[T]) -> String {
    let shown: Vec<String> = items
        .iter()
        .take(MAX_ITEMS)
        .map(|i| clip(&i.to_string()).into_owned())
        .collect();
    match items.len().checked_sub(MAX_ITEMS) {
        Some(more) if more > 0 => format!("[{}, … and {more} more]", shown.join(", ")),
        _ => format!("[{}]", shown.join(", ")),
    }
}

/// The edits (insert, delete, replace, swap two neighbours) that turn `a`
/// into `b`.
fn distance(a: &[char], b: &[char]) -> usize {
    let mut rows = vec![(0..=b.len()).collect::<Vec<_>>(); a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let replace = rows[i - 1][j - 1] + usize::from(a[i - 1] != b[j - 1]);
            let mut best = replace.min(rows[i - 1][j] + 1).min(rows[i][j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

/// The known key `key` was most likely meant to be: one a few edits away
/// (a third of its length, at least one), or one it begins (3 characters
/// or more); ties go to the first in `known`.
pub fn nearest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let lower: Vec<char> = key.to_lowercase().chars().collect();
    let longest = known.iter().map(|k| k.chars().count()).max().unwrap_or(0);
    if lower.is_empty() || lower.len() > 2 * longest + 3 {
        return None;
    }
    let allowed = (lower.len() / 3).max(1);
    let scored = known.iter().filter_map(|&k| {
        let candidate: Vec<char> = k.chars().collect();
        let d = distance(&lower, &candidate);
        let prefix = lower.len() >= 3 && candidate.starts_with(&lower);
        (d <= allowed || prefix).then_some((d, k))
    });
    scored.min_by_key(|(d, _)| *d).map(|(_, k)| k)
}

/// A key as a message shows it: plain names as they are, anything else
/// quoted (and clipped).
fn shown(key: &str) -> Cow<'_, str> {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain && key.len() <= MAX_CHARS {
        Cow::Borrowed(key)
    } else {
        Cow::Owned(format!("{:?}", clip(key)))
    }
}

/// `None` when every key is known; otherwise one clause per unknown key
/// (at most [`MAX_ITEMS`]), each with the known key nearest to it:
/// `unknown key userids, did you mean user_ids?; unknown key x`.
pub fn unknown_keys<'k>(keys: impl IntoIterator<Item = &'k str>, known: &[&str]) -> Option<String> {
    let unknown: Vec<&str> = keys.into_iter().filter(|k| !known.contains(k)).collect();
    if unknown.is_empty() {
        return None;
    }
    let mut clauses: Vec<String> = unknown
        .iter()
        .take(MAX_ITEMS)
        .map(|key| match nearest(key, known) {
            Some(near) => format!("unknown key {}, did you mean {near}?", shown(key)),
            None => format!("unknown key {}", shown(key)),
        })
        .collect();
    if unknown.len() > MAX_ITEMS {
        clauses.push(format!(
            "and {} more unknown keys",
            unknown.len() - MAX_ITEMS
        ));
    }
    Some(clauses.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRIGGER: [&str; 5] = ["tag_ids", "user_ids", "mode", "priority", "as_of"];

    #[test]
    fn typos_find_their_key_and_strangers_find_none() {
        let near = |key| nearest(key, &TRIGGER);
        assert_eq!(near("userids"), Some("user_ids"));
        assert_eq!(near("mdoe"), Some("mode"));
        assert_eq!(near("Mode"), Some("mode"));
        assert_eq!(near("prio"), Some("priority"));
        assert_eq!(near("tagids"), Some("tag_ids"));
        assert_eq!(near("asof"), Some("as_of"));
        assert_eq!(near("zebra"), None);
        assert_eq!(near(""), None);
        assert_eq!(near(&"x".repeat(100_000)), None);
    }

    #[test]
    fn unknown_keys_are_named_with_their_nearest_known_key() {
        let keys = ["tag_ids", "userids", "mdoe", "zebra"];
        assert_eq!(
            unknown_keys(keys, &TRIGGER).unwrap(),
            "unknown key userids, did you mean user_ids?; unknown key mdoe, did you mean mode?; unknown key zebra"
        );
        assert_eq!(unknown_keys(["mode", "tag_ids"], &TRIGGER), None);
        let many: Vec<String> = (0..25).map(|i| format!("k{i}")).collect();
        let text = unknown_keys(many.iter().map(String::as_str), &TRIGGER).unwrap();
        assert!(text.ends_with("; and 5 more unknown keys"), "{text}");
        let long = "a b".repeat(1000);
        let text = unknown_keys([long.as_str()], &TRIGGER).unwrap();
        assert!(
            text.len() < 200 && text.contains("(3000 characters)"),
            "{text}"
        );
    }

    #[test]
    fn quoted_texts_and_lists_are_bounded() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(500);
        let clipped = clip(&long);
        assert!(clipped.starts_with(&"é".repeat(MAX_CHARS)));
        assert!(clipped.ends_with("… (500 characters)"), "{clipped}");
        assert_eq!(list(&[1, 2, 3]), "[1, 2, 3]");
        let ids: Vec<u32> = (1..=1_000_000).collect();
        let text = list(&ids);
        assert!(text.starts_with("[1, 2, 3,"), "{text}");
        assert!(text.ends_with(", 20, … and 999980 more]"), "{text}");
        assert_eq!(list(&ids[..MAX_ITEMS]).matches(',').count(), MAX_ITEMS - 1);
    }
}
