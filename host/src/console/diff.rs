//! A line diff between two rule versions whose cost stays near linear in
//! their size, and the bounded excerpt of it that a page shows.
//!
//! Rules can hold tens of thousands of list items, one a line once
//! pretty-printed, so a table of old × new lines is out of the question.
//! [`line_diff`] takes the lines both sides share at either end, then
//! anchors on lines that occur once on each side (in order: the longest
//! increasing run of their positions, as patience diff does) and diffs the
//! gaps between anchors the same way, a few levels deep. Only a gap small
//! enough that its table costs at most [`TABLE_PER_LINE`] cells a line gets
//! an exact longest-common-subsequence diff; any other gap without anchors
//! is shown as removed and added whole. [`excerpt`] then keeps the first
//! changed lines with a little context around them.

use std::collections::HashMap;

/// One line of a diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffLine<'a> {
    /// In both.
    Same(&'a str),
    /// Only in the old text.
    Removed(&'a str),
    /// Only in the new text.
    Added(&'a str),
}

/// A gap of `a` × `b` lines gets an exact table when `a × b` is at most
/// this many cells per line of the gap (so all tables together cost at
/// most this many cells per line of the input).
pub const TABLE_PER_LINE: usize = 64;

/// Rounds of anchoring on unique lines inside the gaps left by the last.
const ANCHOR_ROUNDS: usize = 4;

/// The lines of `old` and `new`, in order, marked by which side has them.
/// The `Same` and `Removed` lines are `old`'s lines and the `Same` and
/// `Added` lines `new`'s, each in order.
pub fn line_diff<'a>(old: &'a str, new: &'a str) -> Vec<DiffLine<'a>> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    diff_range(&a, &b, ANCHOR_ROUNDS, &mut out);
    out
}

fn diff_range<'a>(a: &[&'a str], b: &[&'a str], rounds: usize, out: &mut Vec<DiffLine<'a>>) {
    let head = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let (a_rest, b_rest) = (&a[head..], &b[head..]);
    let tail = a_rest
        .iter()
        .rev()
        .zip(b_rest.iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (mid_a, mid_b) = (
        &a_rest[..a_rest.len() - tail],
        &b_rest[..b_rest.len() - tail],
    );
    out.extend(a[..head].iter().map(|l| DiffLine::Same(l)));
    if mid_a.is_empty() || mid_b.is_empty() {
        whole(mid_a, mid_b, out);
    } else if mid_a.len() * mid_b.len() <= TABLE_PER_LINE * (mid_a.len() + mid_b.len()) {
        table_diff(mid_a, mid_b, out);
    } else {
        match anchors(mid_a, mid_b).filter(|_| rounds > 0) {
            Some(anchors) => {
                let (mut i, mut j) = (0, 0);
                for (ai, bj) in anchors {
                    diff_range(&mid_a[i..ai], &mid_b[j..bj], rounds - 1, out);
                    out.push(DiffLine::Same(mid_a[ai]));
                    (i, j) = (ai + 1, bj + 1);
                }
                diff_range(&mid_a[i..], &mid_b[j..], rounds - 1, out);
            }
            None => whole(mid_a, mid_b, out),
        }
    }
    out.extend(
        a_rest[a_rest.len() - tail..]
            .iter()
            .map(|l| DiffLine::Same(l)),
    );
}

/// `a` removed, then `b` added.
fn whole<'a>(a: &[&'a str], b: &[&'a str], out: &mut Vec<DiffLine<'a>>) {
    out.extend(a.iter().map(|l| DiffLine::Removed(l)));
    out.extend(b.iter().map(|l| DiffLine::Added(l)));
}

/// Pairs `(i, j)` with `a[i] == b[j]`, each line occurring once in `a` and
/// once in `b`, increasing in both (the longest such run); none if no line
/// is unique on both sides.
fn anchors(a: &[&str], b: &[&str]) -> Option<Vec<(usize, usize)>> {
    // Per line: its count and position in `a`, and in `b`.
    let mut seen: HashMap<&str, (u32, usize, u32, usize)> = HashMap::with_capacity(a.len());
    for (i, line) in a.iter().enumerate() {
        let e = seen.entry(line).or_insert((0, i, 0, 0));
        e.0 += 1;
    }
    for (j, line) in b.iter().enumerate() {
        if let Some(e) = seen.get_mut(line) {
            e.2 += 1;
            e.3 = j;
        }
    }
    let mut pairs: Vec<(usize, usize)> = seen
        .into_values()
        .filter(|&(na, _, nb, _)| na == 1 && nb == 1)
        .map(|(_, i, _, j)| (i, j))
        .collect();
    pairs.sort_unstable();
    let run = longest_increasing(&pairs);
    (!run.is_empty()).then_some(run)
}

/// The longest run of `pairs` (sorted by their first) whose seconds
/// increase (patience sorting, `O(n log n)`).
fn longest_increasing(pairs: &[(usize, usize)]) -> Vec<(usize, usize)> {
    // tops[k]: index into `pairs` of the smallest end of a run of length k+1.
    let mut tops: Vec<usize> = Vec::new();
    let mut back: Vec<Option<usize>> = vec![None; pairs.len()];
    for (n, &(_, j)) in pairs.iter().enumerate() {
        let k = tops.partition_point(|&t| pairs[t].1 < j);
        back[n] = k.checked_sub(1).map(|p| tops[p]);
        if k == tops.len() {
            tops.push(n);
        } else {
            tops[k] = n;
        }
    }
    let mut run = Vec::with_capacity(tops.len());
    let mut at = tops.last().copied();
    while let Some(n) = at {
        run.push(pairs[n]);
        at = back[n];
    }
    run.reverse();
    run
}

/// An exact longest-common-subsequence diff (for small gaps only).
fn table_diff<'a>(a: &[&'a str], b: &[&'a str], out: &mut Vec<DiffLine<'a>>) {
    let width = b.len() + 1;
    // common[i * width + j]: longest common run of a[i..] and b[j..].
    let mut common = vec![0u32; (a.len() + 1) * width];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            common[i * width + j] = if a[i] == b[j] {
                common[(i + 1) * width + j + 1] + 1
            } else {
                common[(i + 1) * width + j].max(common[i * width + j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i] == b[j] {
            out.push(DiffLine::Same(a[i]));
            (i, j) = (i + 1, j + 1);
        } else if common[(i + 1) * width + j] >= common[i * width + j + 1] {
            out.push(DiffLine::Removed(a[i]));
            i += 1;
        } else {
            out.push(DiffLine::Added(b[j]));
            j += 1;
        }
    }
    whole(&a[i..], &b[j..], out);
}

/// What a page shows of a diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown<'a> {
    /// A line of the diff.
    Line(DiffLine<'a>),
    /// This many unchanged lines, not shown.
    Unchanged(usize),
    /// This many more changed lines, not shown (always last).
    More(usize),
}

/// The first `max_changed` changed lines of `diff`, each with up to
/// `context` unchanged lines around it; the unchanged lines between them
/// as counts, and the changed lines left over as one count at the end. At
/// most `max_changed × (2 × context + 1)` lines and as many counts, plus one.
pub fn excerpt<'a>(diff: &[DiffLine<'a>], context: usize, max_changed: usize) -> Vec<Shown<'a>> {
    let changed: Vec<usize> = diff
        .iter()
        .enumerate()
        .filter(|(_, l)| !matches!(l, DiffLine::Same(_)))
        .map(|(i, _)| i)
        .collect();
    let shown = &changed[..changed.len().min(max_changed)];
    let mut out = Vec::new();
    let mut next = 0; // first line of `diff` not yet accounted for
    for (k, &at) in shown.iter().enumerate() {
        let from = at.saturating_sub(context).max(next);
        if from > next {
            out.push(Shown::Unchanged(from - next));
        }
        // Context after this change stops at the next change (shown or not).
        let until = changed.get(k + 1).map_or(diff.len(), |&n| n);
        let to = (at + 1 + context).min(until);
        out.extend(diff[from..to].iter().map(|&l| Shown::Line(l)));
        next = to;
    }
    let left = changed.len() - shown.len();
    if left > 0 {
        out.push(Shown::More(left));
    } else if next < diff.len() {
        out.push(Shown::Unchanged(diff.len() - next));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The old and the new text, read back from a diff.
    fn sides(diff: &[DiffLine<'_>]) -> (Vec<String>, Vec<String>) {
        let (mut old, mut new) = (Vec::new(), Vec::new());
        for line in diff {
            match *line {
                DiffLine::Same(l) => {
                    old.push(l.to_string());
                    new.push(l.to_string());
                }
                DiffLine::Removed(l) => old.push(l.to_string()),
                DiffLine::Added(l) => new.push(l.to_string()),
            }
        }
        (old, new)
    }

    fn changes(diff: &[DiffLine<'_>]) -> usize {
        diff.iter()
            .filter(|l| !matches!(l, DiffLine::Same(_)))
            .count()
    }

    fn lines_of(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    /// A pretty-printed `in` list of `items`, as a rule's page shows it.
    fn list(items: impl Iterator<Item = usize>) -> String {
        let items: Vec<String> = items.map(|i| format!("    \"item-{i:06}\"")).collect();
        format!("{{\n  \"value\": [\n{}\n  ]\n}}", items.join(",\n"))
    }

    #[test]
    fn a_changed_threshold_is_one_line_out_and_one_in() {
        let old = "{\n  \"field\": \"cash\",\n  \"value\": 1\n}";
        let new = "{\n  \"field\": \"cash\",\n  \"value\": 2\n}";
        let diff = line_diff(old, new);
        let changed: Vec<_> = diff
            .iter()
            .filter(|l| !matches!(l, DiffLine::Same(_)))
            .collect();
        assert_eq!(
            changed,
            vec![
                &DiffLine::Removed("  \"value\": 1"),
                &DiffLine::Added("  \"value\": 2")
            ]
        );
        assert_eq!(
            line_diff("a\nb", "a\nb\nc").last(),
            Some(&DiffLine::Added("c"))
        );
        assert_eq!(line_diff("", ""), vec![]);
    }

    #[test]
    fn small_gaps_get_the_shortest_diff() {
        // No line is unique here, so only the table finds the common run.
        let (old, new) = ("x\ny\nx\ny\nx", "y\nx\ny\ny\nx\nx");
        let diff = line_diff(old, new);
        assert_eq!(sides(&diff), (lines_of(old), lines_of(new)));
        // Longest common subsequence: 4 of 5 and 6 lines.
        assert_eq!(changes(&diff), 1 + 2);
    }

    #[test]
    fn large_lists_diff_to_just_what_changed() {
        // 20,000 items; two removed, one replaced, three added: anchors on
        // the unique items find exactly those.
        let old = list(0..20_000);
        let new = list(
            (0..20_000)
                .filter(|&i| i != 5 && i != 15_000)
                .map(|i| if i == 9_000 { 99_999_999 } else { i })
                .chain(20_000..20_003),
        );
        let diff = line_diff(&old, &new);
        assert_eq!(sides(&diff), (lines_of(&old), lines_of(&new)));
        // -5, -15000, -9000 +replacement, +3 new, and the old last line
        // `"item-019999"` gains a comma: 4 removed and 5 added lines.
        assert_eq!(changes(&diff), 4 + 5);
    }

    #[test]
    fn unrelated_large_versions_diff_in_bounded_time_and_space() {
        // 10,000 against 20,000 items, none shared: an exact table would be
        // 200 million cells; here every line is changed and each is read a
        // few times.
        let old = list(0..10_000);
        let new = list(50_000..70_000);
        let diff = line_diff(&old, &new);
        assert_eq!(sides(&diff), (lines_of(&old), lines_of(&new)));
        assert_eq!(changes(&diff), 30_000);
        // Lines shared only in repeats (no anchors) are changed whole.
        let old = "a\nb\n".repeat(5_000);
        let new = "b\na\n".repeat(5_000) + "c";
        let diff = line_diff(&old, &new);
        assert_eq!(sides(&diff), (lines_of(&old), lines_of(&new)));
    }

    #[test]
    fn an_excerpt_shows_the_first_changes_with_context_then_counts() {
        let old = list(0..20_000);
        let new = list((0..20_000).map(|i| if i % 100 == 50 { i + 1_000_000 } else { i }));
        let diff = line_diff(&old, &new);
        assert_eq!(changes(&diff), 400);
        let shown = excerpt(&diff, 2, 10);
        let lines = shown.iter().filter(|s| matches!(s, Shown::Line(_))).count();
        // Ten changed lines (five pairs), two lines of context either side
        // of each pair.
        assert_eq!(lines, 10 + 5 * 4, "{shown:?}");
        assert_eq!(shown.last(), Some(&Shown::More(390)));
        // Lines 0..50 of the list (and its 2 opening lines) minus 2 of context.
        assert_eq!(shown[0], Shown::Unchanged(50));
        // Everything is accounted for: lines shown, unchanged counted, and
        // the changes left over.
        let counted: usize = shown
            .iter()
            .map(|s| match s {
                Shown::Line(_) | Shown::More(_) => 0,
                Shown::Unchanged(n) => *n,
            })
            .sum();
        let tenth = diff
            .iter()
            .enumerate()
            .filter(|(_, l)| !matches!(l, DiffLine::Same(_)))
            .nth(9)
            .unwrap()
            .0;
        assert_eq!(lines + counted, tenth + 1 + 2, "{shown:?}");
        // With room for every change, the unchanged end is counted instead.
        let all = excerpt(&diff, 0, 400);
        assert_eq!(
            all.last(),
            Some(&Shown::Unchanged(
                diff.len()
                    - 1
                    - diff
                        .iter()
                        .rposition(|l| !matches!(l, DiffLine::Same(_)))
                        .unwrap()
            ))
        );
    }
}
