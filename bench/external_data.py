"""Source tables written by DuckDB, not by `tag-server gen-data`: the bench's
data "we did not make". Typed as exports are (DECIMAL money, zoned
timestamps, small integers, float32, dates as strings), 10% of users twice
(the second row newer), 1% null user ids, nulls in every value column,
DuckDB's own row groups (122,880 rows).

    python bench/external_data.py OUT_DIR USERS [SEED]

Streams through DuckDB (never in Python), so 100M users take minutes and
bounded memory.
"""
import os
import sys

import duckdb


def main(out, users, seed=42):
    users = int(users)
    os.makedirs(out, exist_ok=True)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET preserve_insertion_order = true")
    con.execute(f"SELECT setseed({(int(seed) % 1000) / 1000})")
    rows = f"""(SELECT i AS n, i AS src FROM range({users}) t(i)
               UNION ALL SELECT i, i + {users} FROM range(0, {users}, 10) t(i))"""

    def maybe(expr, share=0.05):
        return f"CASE WHEN random() < {share} THEN NULL ELSE {expr} END"

    uid = f"CASE WHEN random() < 0.01 THEN NULL ELSE printf('u%09d', n) END"
    updated = "TIMESTAMPTZ '2025-01-01 00:00:00+00' + to_seconds(src)"
    tables = {
        "user_basic_info": f"""
            SELECT {uid} AS user_id,
                   {maybe('CAST(10 + floor(random() * 60) AS TINYINT)')} AS age,
                   {maybe("TIMESTAMPTZ '2025-01-15 00:30:00+00' - to_days(CAST(floor(random() * 94) - 3 AS INTEGER))")} AS registration_date,
                   {maybe("(['VIP1', 'VIP2', 'VIP3', '普通'])[1 + floor(random() * 4)::INTEGER]")} AS user_level,
                   {maybe("(['verified', 'pending', 'rejected'])[1 + floor(random() * 3)::INTEGER]")} AS kyc_status,
                   {updated} AS updated_time
            FROM {rows}""",
        "user_asset_summary": f"""
            SELECT {uid} AS user_id,
                   {maybe('CAST(random() * 300000 AS DECIMAL(38, 10))')} AS total_asset_value,
                   {maybe('CAST(random() * 120000 AS DECIMAL(18, 2))')} AS cash_balance,
                   {updated} AS updated_time
            FROM {rows}""",
        "user_activity_summary": f"""
            SELECT {uid} AS user_id,
                   {maybe('CAST(floor(random() * 21) AS USMALLINT)')} AS trade_count_30d,
                   {maybe('CAST(random() * 100 AS FLOAT)')} AS risk_score,
                   {maybe("strftime(DATE '2025-01-15' - CAST(floor(random() * 23) - 2 AS INTEGER), '%Y-%m-%d')")} AS last_login_date,
                   CAST({updated} AS TIMESTAMP) AS updated_time
            FROM {rows}""",
    }
    for table, query in tables.items():
        path = os.path.join(out, f"{table}.parquet")
        con.execute(f"COPY ({query}) TO '{path}' (FORMAT parquet, COMPRESSION zstd)")
        print(f"{path}: {os.path.getsize(path) / 2**20:.1f} MiB", file=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:])
