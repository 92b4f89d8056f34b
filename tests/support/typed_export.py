"""Source tables as real exports type them, written by pyarrow, and the
eight reference tags computed over them by DuckDB (the independent oracle).

    typed_export.py write DIR USERS SEED
        Writes DIR/user_basic_info.parquet, user_asset_summary.parquet and
        user_activity_summary.parquet: DECIMAL(18,2) and DECIMAL(38,10)
        money (with values on both sides of every threshold), timestamps
        with time zones in ms/us/ns (a date column as instants whose UTC
        day is the date), dates as YYYY-MM-DD strings, dictionary, large and view strings, integers of every
        width, float32, duplicate users (the newest row wins) and nulls in
        every column.
    typed_export.py lake DIR USERS SEED
        The same tables as a data lake writes them: each a directory DIR/<table>/
        of part files, where a duplicated user's rows tie on updated_time, or
        have none, within one part and across parts (the row written last
        wins: the later part file, then the later row).
    typed_export.py append DIR SEED
        Appends a part file DIR/<table>/part-002.parquet to each table of a
        lake: newer rows (an hour after the table's newest) for every
        seventh user, carrying another user's values, so their tags change.
    typed_export.py expected DIR AS_OF
        Prints {user_id: [tag ids]} for the users holding at least one tag,
        from DIR/<table>.parquet or the parts of DIR/<table>/.
"""
import datetime as dt
import json
import random
import sys

import pyarrow as pa
import pyarrow.parquet as pq

SHANGHAI = "Asia/Shanghai"


def maybe(rng, value, nulls=0.08):
    return None if rng.random() < nulls else value


def money(rng, thresholds):
    """A decimal string near a threshold (on either side) or anywhere."""
    if rng.random() < 0.4:
        base = rng.choice(thresholds)
        return f"{base + rng.choice([-0.01, 0, 0.01, -1, 1]):.2f}"
    return f"{rng.uniform(0, 400000):.2f}"


def write(directory, users, seed):
    for table, (data, schema) in tables(int(users), int(seed), ties=False).items():
        pq.write_table(pa.table(data, schema=schema), f"{directory}/{table}.parquet")


def lake(directory, users, seed):
    """Each table as two parts: part-000 holds every user's first row and
    some second rows after them; part-001, written later, the other second
    rows (so a later part's rows have lower row numbers than the earlier's)."""
    import os

    users, rng = int(users), random.Random(int(seed) + 1)
    for table, (data, schema) in tables(users, int(seed), ties=True).items():
        os.makedirs(f"{directory}/{table}")
        rows = len(data["user_id"])
        later = {i for i in range(users, rows) if rng.random() < 0.5}
        first = [i for i in range(rows) if i not in later]
        later = sorted(later)
        for n, part in enumerate([first, later]):
            columns = {k: [v[i] for i in part] for k, v in data.items()}
            pq.write_table(pa.table(columns, schema=schema), f"{directory}/{table}/part-{n:03d}.parquet")


def append(directory, seed):
    import glob
    import os

    rng = random.Random(int(seed))
    for table in ("user_basic_info", "user_asset_summary", "user_activity_summary"):
        parts = sorted(glob.glob(f"{directory}/{table}/*.parquet"))
        schema = pq.read_schema(parts[0])
        old = pa.concat_tables([pq.read_table(p, schema=schema) for p in parts])
        columns = {name: old.column(name).to_pylist() for name in schema.names}
        seen, chosen = set(), []
        for i, user in enumerate(columns["user_id"]):
            if user is not None and int(user[1:]) % 7 == 0 and user not in seen:
                seen.add(user)
                chosen.append(i)
        donors = [rng.randrange(len(columns["user_id"])) for _ in chosen]
        times = [t for t in columns["updated_time"] if t is not None]
        newer = max(times) + dt.timedelta(hours=1)
        data = {}
        for name in schema.names:
            if name == "user_id":
                data[name] = [columns[name][i] for i in chosen]
            elif name == "updated_time":
                data[name] = [newer] * len(chosen)
            else:
                data[name] = [columns[name][d] for d in donors]
        path = os.path.join(directory, table, "part-002.parquet")
        pq.write_table(pa.table(data, schema=schema), path)


def tables(users, seed, ties):
    """{table: (columns, schema)}. Every tenth user appears twice. Without
    `ties` the second row is the newer and both carry times; with them the
    second row ties with the first, is newer, or (like the first, sometimes)
    has no time."""
    from decimal import Decimal

    rng = random.Random(seed)
    as_of = dt.date(2025, 1, 15)
    base = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    ids = [f"u{n:06d}" for n in range(users)]
    rows = ids + ids[::10]

    def stamp(i):
        return base + dt.timedelta(minutes=i if i < users else users + i)

    def updated(i):
        if not ties:
            # A duplicated user's rows always carry times, so which wins is defined.
            duplicated = i >= users or i % 10 == 0
            return stamp(i) if duplicated else maybe(rng, stamp(i), 0.02)
        if i < users:
            return maybe(rng, stamp(i), 0.05)
        return rng.choice([stamp((i - users) * 10), stamp((i - users) * 10), stamp(i), None])

    basic = {
        "user_id": [maybe(rng, u, 0.01) for u in rows],
        "age": [maybe(rng, rng.randint(10, 70)) for _ in rows],
        # Instants near midnight: Shanghai's day is not always UTC's.
        "registration_date": [
            maybe(
                rng,
                dt.datetime.combine(
                    as_of - dt.timedelta(days=rng.randint(-3, 90)),
                    dt.time(hour=rng.choice([0, 7, 16, 23]), minute=30),
                    tzinfo=dt.timezone.utc,
                ),
            )
            for _ in rows
        ],
        "user_level": [maybe(rng, rng.choice(["VIP1", "VIP2", "VIP3", "普通"])) for _ in rows],
        "kyc_status": [maybe(rng, rng.choice(["verified", "pending", "rejected"])) for _ in rows],
        "updated_time": [updated(i) for i in range(len(rows))],
    }
    basic_schema = pa.schema([
        ("user_id", pa.dictionary(pa.int32(), pa.string())),
        ("age", pa.int8()),
        ("registration_date", pa.timestamp("us", tz=SHANGHAI)),
        ("user_level", pa.dictionary(pa.int8(), pa.large_string())),
        ("kyc_status", pa.string_view()),
        ("updated_time", pa.timestamp("ns", tz=SHANGHAI)),
    ])

    asset = {
        "user_id": [maybe(rng, u, 0.01) for u in rows],
        "total_asset_value": [maybe(rng, Decimal(money(rng, [150000]))) for _ in rows],
        "cash_balance": [maybe(rng, Decimal(money(rng, [60000, 50000]))) for _ in rows],
        "updated_time": [updated(i) for i in range(len(rows))],
    }
    asset_schema = pa.schema([
        ("user_id", pa.large_string()),
        ("total_asset_value", pa.decimal128(38, 10)),
        ("cash_balance", pa.decimal128(18, 2)),
        ("updated_time", pa.timestamp("us", tz="UTC")),
    ])

    activity = {
        "user_id": [maybe(rng, u, 0.01) for u in rows],
        "trade_count_30d": [maybe(rng, rng.randint(0, 20)) for _ in rows],
        "risk_score": [maybe(rng, rng.choice([0.0, 30.0, 30.5, rng.uniform(0, 100)])) for _ in rows],
        "last_login_date": [
            maybe(rng, (as_of - dt.timedelta(days=rng.randint(-2, 20))).isoformat()) for _ in rows
        ],
        "updated_time": [updated(i) for i in range(len(rows))],
    }
    activity_schema = pa.schema([
        ("user_id", pa.string()),
        ("trade_count_30d", pa.uint16()),
        ("risk_score", pa.float32()),
        ("last_login_date", pa.large_string()),
        ("updated_time", pa.timestamp("ms")),
    ])
    return {
        "user_basic_info": (basic, basic_schema),
        "user_asset_summary": (asset, asset_schema),
        "user_activity_summary": (activity, activity_schema),
    }


def expected(directory, as_of):
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")

    import os

    def newest(table):
        # The newest row per user; on a tie the one written last (the later
        # part file by name, then the later row), as the README's data rules say.
        files = f"{directory}/{table}.parquet"
        if not os.path.exists(files):
            files = f"{directory}/{table}/*.parquet"
        return f"""(SELECT * EXCLUDE (filename, file_row_number)
                   FROM read_parquet('{files}', filename = true, file_row_number = true)
                   WHERE user_id IS NOT NULL
                   QUALIFY row_number() OVER (PARTITION BY user_id
                       ORDER BY updated_time DESC NULLS LAST, filename DESC, file_row_number DESC) = 1)"""

    day = f"DATE '{as_of}'"
    rules = [
        "a.total_asset_value >= 150000 AND a.cash_balance >= 60000",
        "t.trade_count_30d > 10",
        "t.risk_score BETWEEN 0 AND 30",
        f"CAST(b.registration_date AS DATE) BETWEEN {day} - 30 AND {day}",
        "b.user_level IN ('VIP2', 'VIP3') AND b.kyc_status = 'verified'",
        "a.cash_balance >= 50000",
        "b.age BETWEEN 18 AND 30",
        f"CAST(t.last_login_date AS DATE) BETWEEN {day} - 7 AND {day}",
    ]
    tags = ", ".join(f"CASE WHEN {r} THEN {i + 1} END" for i, r in enumerate(rules))
    rows = con.execute(f"""
        SELECT b.user_id, list_filter([{tags}], lambda x: x IS NOT NULL) AS tag_ids
        FROM {newest('user_basic_info')} b
        LEFT JOIN {newest('user_asset_summary')} a USING (user_id)
        LEFT JOIN {newest('user_activity_summary')} t USING (user_id)""").fetchall()
    print(json.dumps({str(u): sorted(t) for u, t in rows if t}))


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"write": write, "lake": lake, "append": append, "expected": expected}[command](*args)
