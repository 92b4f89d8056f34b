"""An order-free digest of a run's tag sets, in bounded memory, so that runs
too large for Python dicts (100M users) can be compared: the count of users
holding a tag, and the sum of the first 60 bits of md5("user_id:[t1,t2]")
over them, computed by DuckDB for either side.

    python bench/digest.py sqlite FILE.db      # tag-server's user_tags
    python bench/digest.py parquet FILE        # (user_id, tag_ids) of anchors.py
"""
import sqlite3
import sys

import duckdb
import pyarrow as pa

ROW = "user_id || ':' || replace(CAST(tag_ids AS VARCHAR), ' ', '')"
SUM = f"count(*), sum(CAST(('0x' || substr(md5({ROW}), 1, 15)) AS BIGINT)::HUGEINT)"


def of_sqlite(path):
    """Streams user_tags in batches through DuckDB (tag_ids is JSON text)."""
    con = duckdb.connect()
    con.execute("SET memory_limit = '1GB'")
    cursor = sqlite3.connect(path).execute("SELECT user_id, tag_ids FROM user_tags")
    count, total = 0, 0
    while rows := cursor.fetchmany(1_000_000):
        batch = pa.table({"user_id": [r[0] for r in rows], "tag_ids": [r[1] for r in rows]})
        n, s = con.execute(f"SELECT {SUM} FROM batch").fetchone()
        count, total = count + n, total + (s or 0)
    return count, total


def of_parquet(path):
    con = duckdb.connect()
    con.execute("SET memory_limit = '1GB'")
    return con.execute(f"SELECT {SUM} FROM read_parquet('{path}')").fetchone()


if __name__ == "__main__":
    kind, path = sys.argv[1], sys.argv[2]
    count, total = {"sqlite": of_sqlite, "parquet": of_parquet}[kind](path)
    print(f"{count} {total}")
