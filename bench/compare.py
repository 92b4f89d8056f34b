"""Checks that every engine produced the same tag sets as tag-server.

usage: compare.py SQLITE_DB ANCHOR...
An ANCHOR is a parquet file of (user_id, tag_ids) (a Spark output is a
directory), or a DuckDB database FILE.duckdb holding a table user_tags like
tag-server's (anchors.py duckdb_table): its tag_ids text must be the same JSON
arrays, and for a sample of users its tag_details must be tag-server's up to
hit_time, with every timestamp as YYYY-MM-DDTHH:MM:SS.
Exits non-zero and names the first differing users if any set differs.
"""

import json
import re
import sys

import pyarrow.parquet as pq

from sqlite3 import connect

STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
SAMPLE = 1000


def ours(db):
    con = connect(db)
    return {u: tuple(json.loads(t)) for u, t in con.execute("SELECT user_id, tag_ids FROM user_tags")}


def theirs(path):
    if path.endswith(".duckdb"):
        import duckdb

        con = duckdb.connect(path, read_only=True)
        # Not sorted: the text itself must list the ids ascending.
        return {u: tuple(json.loads(t)) for u, t in con.execute("SELECT user_id, tag_ids FROM user_tags").fetchall()}
    table = pq.read_table(path)
    return {u: tuple(sorted(t)) for u, t in zip(table.column("user_id").to_pylist(), table.column("tag_ids").to_pylist())}


def without_hit_time(details):
    """tag_details text -> {tag id: the entry without hit_time}, and the hit_times."""
    parsed = json.loads(details)
    stamps = [entry.pop("hit_time", None) for entry in parsed.values()]
    return parsed, stamps


def detail_problems(db, path):
    """Users of a sample whose DuckDB row differs from tag-server's beyond the
    run's timestamps, or whose timestamps are malformed."""
    import duckdb

    con = duckdb.connect(path, read_only=True)
    rows = con.execute(
        f"SELECT user_id, tag_details, created_time, updated_time FROM user_tags USING SAMPLE {SAMPLE} ROWS"
    ).fetchall()
    mine = connect(db)
    problems = []
    for user_id, details, created, updated in rows:
        row = mine.execute(
            "SELECT tag_details, created_time, updated_time FROM user_tags WHERE user_id = ?", (user_id,)
        ).fetchone()
        if row is None:
            problems.append((user_id, "not in tag-server's user_tags"))
            continue
        a, a_stamps = without_hit_time(row[0])
        b, b_stamps = without_hit_time(details)
        if a != b:
            problems.append((user_id, row[0], details))
        elif not all(isinstance(s, str) and STAMP.fullmatch(s) for s in [created, updated] + b_stamps):
            problems.append((user_id, "timestamps", created, updated, b_stamps))
    return len(rows), problems


if __name__ == "__main__":
    reference = ours(sys.argv[1])
    ok = True
    for path in sys.argv[2:]:
        other = theirs(path)
        differ = [u for u in reference.keys() | other.keys() if reference.get(u) != other.get(u)]
        if differ:
            ok = False
            sample = [(u, reference.get(u), other.get(u)) for u in sorted(differ)[:5]]
            print(f"MISMATCH {path}: {len(differ)} users differ, e.g. {sample}")
            continue
        print(f"same tag sets: {path} ({len(other)} users)")
        if path.endswith(".duckdb"):
            checked, problems = detail_problems(sys.argv[1], path)
            if problems:
                ok = False
                print(f"MISMATCH {path}: tag_details of {len(problems)} of {checked} sampled users differ, e.g. {problems[:3]}")
            else:
                print(f"same tag_details (up to hit_time): {path} ({checked} sampled users)")
    sys.exit(0 if ok else 1)
