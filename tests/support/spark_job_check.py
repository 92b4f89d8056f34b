"""Helpers for tests/spark_job.rs around the PySpark job (tag_engine_spark.job).

    spark_job_check.py plan PLUGINS_DIR DATA_DIR OUTPUT AS_OF TAG_IDS SCOPE_JSON PLAN
        Writes the plan file PLAN as the host will: one table entry per
        table the requested tags read (user_basic_info always), with the
        columns and types the plugins declare (from Evaluator.tags()), each
        table's path left to the job (data_dir layout), default rules.
    spark_job_check.py watermarks DATA_DIR
        Prints {table: newest updated_time in microseconds since the epoch},
        read with pyarrow from DATA_DIR/<table>.parquet or DATA_DIR/<table>/.
    spark_job_check.py changed DATA_DIR WATERMARKS_JSON
        Prints the sorted user ids an incremental run must evaluate: users of
        the universe whose newest row in some table is newer than that
        table's watermark, or whose universe row has no time.
    spark_job_check.py output OUTPUT
        Prints {"user_tags": {user_id: [tag ids]}, "parts": N, "users": [...], "summary": {...}}
        from the job's parquet output (read with pyarrow, after checking
        _SUCCESS) and its _summary.json.
"""
import glob
import json
import os
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import tag_engine_spark

sys.path.insert(0, os.path.dirname(__file__))
from spark_module_check import newest_rows  # noqa: E402

UNIVERSE = "user_basic_info"


def plan(plugins_dir, data_dir, output, as_of, tag_ids, scope, path):
    wanted = [int(t) for t in tag_ids.split(",")]
    tables = {UNIVERSE: {}}
    for tag in tag_engine_spark.Evaluator(plugins_dir).tags():
        if tag["tag_id"] in wanted:
            for table, column, kind in tag["inputs"]:
                tables.setdefault(table, {})[column] = kind
    doc = {
        "tables": [
            {"name": t, "columns": [{"name": c, "type": k} for c, k in cols.items()]}
            for t, cols in tables.items()
        ],
        "data_dir": data_dir,
        "tags": [{"tag_id": t, "rule": None, "rule_version": 1} for t in wanted],
        "scope": json.loads(scope),
        "as_of": as_of,
        "plugins_dir": plugins_dir,
        # Several parts (user_id ranges) over the tests' users.
        "part_users": 300,
        "output": output,
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)


def read(data_dir, table):
    single = f"{data_dir}/{table}.parquet"
    files = [single] if os.path.exists(single) else sorted(glob.glob(f"{data_dir}/{table}/*.parquet"))
    schema = pq.read_schema(files[0])
    return pa.concat_tables([pq.read_table(f, schema=schema) for f in files])


def micros(table):
    """updated_time as microseconds (nanoseconds rounded down)."""
    column = table.column("updated_time")
    unit = column.type.unit
    values = pc.cast(column, pa.timestamp(unit)).cast(pa.int64()).to_pylist()
    scale = {"s": 10**6, "ms": 1000, "us": 1, "ns": None}[unit]
    return [None if v is None else (v // 1000 if scale is None else v * scale) for v in values]


def watermarks(data_dir):
    tables = (UNIVERSE, "user_asset_summary", "user_activity_summary")
    marks = {}
    for t in tables:
        times = [v for v in micros(read(data_dir, t)) if v is not None]
        marks[t] = max(times)
    print(json.dumps(marks))


def changed(data_dir, marks):
    marks = json.loads(marks)
    newest = {}
    for t in marks:
        table = read(data_dir, t)
        times = micros(table)
        rows = newest_rows(table.set_column(table.schema.get_field_index("updated_time"), "updated_time", pa.array(times)))
        newest[t] = {user: times[row] for user, row in rows.items()}
    users = set()
    for user, time in newest[UNIVERSE].items():
        newer = [newest[t].get(user) for t in marks]
        if time is None or any(n is not None and n > marks[t] for n, t in zip(newer, marks)):
            users.add(user)
    print(json.dumps(sorted(users)))


def output(path):
    if not os.path.exists(f"{path}/_SUCCESS"):
        raise SystemExit(f"no _SUCCESS in {path}: {os.listdir(path)}")
    with open(f"{path}/_summary.json") as f:
        summary = json.load(f)
    # The parts part=1, part=2, ... (user_id ranges, ascending and
    # disjoint); part=0 holds the rows without a user (the figures).
    parts = sorted(int(d.split("=", 1)[1]) for d in os.listdir(path) if d.startswith("part="))
    if len([k for k in parts if k > 0]) > summary["parts"]:
        raise SystemExit(f"parts {parts}, more than the summary's {summary['parts']}")
    ranges = []
    users, tags = [], []
    for k in (k for k in parts if k > 0):
        files = sorted(glob.glob(f"{path}/part={k}/*.parquet"))
        table = pa.concat_tables([pq.read_table(f, columns=["user_id", "tag_ids"]) for f in files])
        ids = table.column("user_id").to_pylist()
        ranges.append((min(ids), max(ids)))
        users += ids
        tags += table.column("tag_ids").to_pylist()
    if any(a[1] >= b[0] for a, b in zip(ranges, ranges[1:])):
        raise SystemExit(f"the parts' user_id ranges overlap or are out of order: {ranges}")
    # A failed tag's ids may be in tag_ids (from the batches where it did
    # not fail); tag-server commits none of them, and neither does this.
    failed = set(summary["failed_tags"])
    tags = [[t for t in ts if t not in failed] for ts in tags]
    print(json.dumps({
        "user_tags": {u: t for u, t in zip(users, tags) if t},
        "parts": len(ranges),
        "users": sorted(users),
        "summary": summary,
    }))


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"plan": plan, "watermarks": watermarks, "changed": changed, "output": output}[command](*args)
