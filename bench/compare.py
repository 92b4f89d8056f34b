"""Checks that every engine produced the same tag sets as tag-server.

usage: compare.py SQLITE_DB ANCHOR_PARQUET...   (a Spark output is a directory)
Exits non-zero and names the first differing users if any set differs.
"""

import json
import sqlite3
import sys

import pyarrow.parquet as pq


def ours(db):
    con = sqlite3.connect(db)
    return {u: tuple(json.loads(t)) for u, t in con.execute("SELECT user_id, tag_ids FROM user_tags")}


def theirs(path):
    table = pq.read_table(path)
    return {u: tuple(sorted(t)) for u, t in zip(table.column("user_id").to_pylist(), table.column("tag_ids").to_pylist())}


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
        else:
            print(f"same tag sets: {path} ({len(other)} users)")
    sys.exit(0 if ok else 1)
