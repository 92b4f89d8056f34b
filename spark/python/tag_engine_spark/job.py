"""The PySpark job: tag-engine's tags evaluated in Spark executors.

    spark-submit job.py --plan plan.json

reads the plan's tables (each user's newest row, as tag-server keeps it),
joins the side tables onto the universe, applies the scope, evaluates the
tags with the plugins through `tag_engine_spark.Evaluator` in `mapInArrow`,
and writes the per-user matches (parquet, with `_SUCCESS`) and
`_summary.json` to the plan's output. See spark/README.md.
"""
import argparse
import json
import sys
import time
from dataclasses import dataclass
from urllib.parse import unquote

from pyspark.sql import SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from tag_engine_spark import plan as plans

UNKNOWN_SAMPLE = 10  # as tag-server's report
ERRORS_PER_TAG = 5
# Up to this many requested users are filtered in the scan (pushed down to
# parquet); more are a broadcast semi-join.
PUSHED_USER_IDS = 10_000
ARROW_BATCH = "spark.sql.execution.arrow.maxRecordsPerBatch"
ARROW_BATCH_ROWS = 100_000
# The output's partition column: `part=K` (K >= 1) holds the users of the
# K-th user_id range, `part=0` the rows without a user (failed tags and
# each batch's figures).
PART = "part"
# Users sampled per part to place the ranges' bounds.
SAMPLED_PER_PART = 1_000
OUTPUT_SCHEMA = T.StructType([
    T.StructField("user_id", T.StringType()),
    T.StructField("tag_ids", T.ArrayType(T.IntegerType())),
    # The tags evaluated for the user when some tag has a scope of its own
    # (an incremental plan's `changed_since`); null: every tag of the plan.
    T.StructField("scoped_tag_ids", T.ArrayType(T.IntegerType())),
    T.StructField("failed_tag", T.LongType()),
    T.StructField("error", T.StringType()),
    # One row per batch (no user_id): its figures, as JSON.
    T.StructField("stats", T.StringType()),
])

# One Evaluator per Python worker process (Spark reuses its workers), per
# plugins directory: the plugins are loaded and checked once.
_EVALUATORS = {}


def evaluator(plugins_dir, copies_dir):
    """The process's Evaluator of `plugins_dir`, loaded on first use."""
    key = (plugins_dir, copies_dir)
    if key not in _EVALUATORS:
        import tag_engine_spark

        _EVALUATORS[key] = tag_engine_spark.Evaluator(plugins_dir, copies_dir)
    return _EVALUATORS[key]


def session():
    spark = SparkSession.builder.appName("tag-engine").getOrCreate()
    # Naive timestamps are read as UTC instants, as tag-server reads them.
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    # Spark has no nanosecond timestamp: such columns come as int64 ns.
    spark.conf.set("spark.sql.legacy.parquet.nanosAsLong", "true")
    # Larger batches to the plugins than Spark's 10,000 rows, unless set:
    # fewer calls into Python and the plugins (90.5 s against 105.7 s at 10M).
    if not spark.sparkContext.getConf().contains(ARROW_BATCH):
        spark.conf.set(ARROW_BATCH, str(ARROW_BATCH_ROWS))
    return spark


def hadoop_path(spark, uri):
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path, path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())


def table_path(spark, plan, table):
    """The table's path: the plan's, else `<data_dir>/<table>.parquet` if it
    exists, else the part directory `<data_dir>/<table>/`."""
    if table.path is not None:
        return table.path
    single = f"{plan.data_dir.rstrip('/')}/{table.name}.parquet"
    path, fs = hadoop_path(spark, single)
    return single if fs.isFile(path) else f"{plan.data_dir.rstrip('/')}/{table.name}"


def micros(column, kind, table, name):
    """A time column as microseconds since the epoch (UTC), rounding
    nanoseconds down as tag-server does."""
    c = F.col(column)
    if isinstance(kind, (T.TimestampType, T.TimestampNTZType)):
        return F.unix_micros(c.cast(T.TimestampType()))
    if isinstance(kind, T.LongType):  # nanoseconds (nanosAsLong)
        quoted = "`" + column.replace("`", "``") + "`"
        return F.expr(f"({quoted} - pmod({quoted}, 1000)) div 1000")
    raise RuntimeError(f"table {table}: column {name} is {kind.simpleString()}, not a timestamp")


def read_table(spark, plan, table):
    """The table's user_id, declared columns (named `table.column`), `_t`
    (updated_time in microseconds), `_pos` (its place in the write order)."""
    path = table_path(spark, plan, table)
    df = spark.read.option("pathGlobFilter", "*.parquet").parquet(path)
    types = {f.name: f.dataType for f in df.schema.fields}
    for name in ["user_id", "updated_time", *table.columns]:
        if name not in types:
            raise RuntimeError(
                f"table {table.name}: no column {name} in {path} (it has {', '.join(types)})"
            )
    columns = [F.col("user_id").cast(T.StringType()).alias("user_id")]
    for name, declared in table.columns.items():
        c = F.col(name)
        if declared in ("timestamp", "date") and isinstance(types[name], T.LongType):
            c = F.timestamp_micros(micros(name, types[name], table.name, name))
        columns.append(c.alias(f"{table.name}.{name}"))
    columns += [
        micros("updated_time", types["updated_time"], table.name, "updated_time").alias("_t"),
        write_order(df).alias("_pos"),
    ]
    df = df.select(*columns)
    if plan.scope.mode == "user_ids":
        df = only_users(spark, df, plan.scope.user_ids)
    return df


# A row's place in its table's write order: its file's rank by name above
# this many bits, its row in the file below (2^40 rows a file, 2^23 files).
ROW_BITS = 40


def write_order(df):
    """Each row's place in the write order as one long (the file's rank by
    name, then the row): the window that keeps each user's newest row
    breaks ties on it, and a long is a smaller sort key than the file's
    name (no faster at 10M users from one file, where the name is short)."""
    names = sorted({unquote(f.rsplit("/", 1)[-1]) for f in df.inputFiles()})
    if len(names) <= 1:
        rank = F.lit(0).cast("long")
    else:
        ranks = F.create_map(*[F.lit(x) for i, n in enumerate(names) for x in (n, i)])
        rank = ranks[F.col("_metadata.file_name")].cast("long")
    return F.shiftleft(rank, ROW_BITS) + F.col("_metadata.row_index")


def only_users(spark, df, user_ids):
    if len(user_ids) <= PUSHED_USER_IDS:
        return df.where(F.col("user_id").isin(user_ids))
    wanted = spark.createDataFrame([(u,) for u in user_ids], "user_id string")
    return df.join(F.broadcast(wanted), "user_id", "left_semi")


def latest(df):
    """Each user's newest row: the greatest time, a row without one losing
    to any timed row, and on a tie the row written last (the later file by
    name, then the later row); with `_n`, the user's rows in the table (so
    the duplicates dropped are counted in the same pass)."""
    order = Window.partitionBy("user_id").orderBy(F.col("_t").desc_nulls_last(), F.col("_pos").desc())
    # The count over the same ordering with the whole partition as its
    # frame: one window operator computes both.
    everything = order.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    return (
        df.where(F.col("user_id").isNotNull())
        .withColumn("_rank", F.row_number().over(order))
        .withColumn("_n", F.count(F.lit(1)).over(everything))
        .where("_rank = 1")
        .drop("_rank", "_pos")
    )


@dataclass
class Joined:
    frame: object
    # Per table, observed as the evaluation reads it: its newest time and
    # (the universe) its rows without a user_id.
    observed: dict

    def newest(self):
        """Per table, its newest time in microseconds (after an action)."""
        marks = {t: o.get["newest"] for t, o in self.observed.items()}
        return {t: n for t, n in marks.items() if n is not None}

    def nulls(self):
        """The universe's rows without a user_id (after an action)."""
        return self.observed[plans.UNIVERSE].get["nulls"] or 0


def observed(df, table):
    """`df` observed (no extra pass): its newest `_t` and rows without a user."""
    from pyspark.sql import Observation

    seen = Observation(f"read {table}")
    nulls = F.sum(F.col("user_id").isNull().cast("long")).alias("nulls")
    return df.observe(seen, F.max("_t").alias("newest"), nulls), seen


def joined(spark, plan):
    """Universe rows (each user's newest) with the side tables' newest rows
    left-joined, each table's time as `_t.<table>` and its rows of the user
    as `_n.<table>`; the universe's rows without a user_id; and each
    table's newest time and the universe's rows without a user_id,
    observed as the evaluation reads them."""
    seen = {}
    universe_raw, seen[plans.UNIVERSE] = observed(read_table(spark, plan, plan.table(plans.UNIVERSE)), plans.UNIVERSE)
    frame = latest(universe_raw)
    frame = frame.withColumnRenamed("_t", f"_t.{plans.UNIVERSE}").withColumnRenamed("_n", f"_n.{plans.UNIVERSE}")
    for table in plan.tables:
        if table.name == plans.UNIVERSE:
            continue
        raw, seen[table.name] = observed(read_table(spark, plan, table), table.name)
        side = latest(raw).withColumnRenamed("_t", f"_t.{table.name}").withColumnRenamed("_n", f"_n.{table.name}")
        frame = frame.join(side, "user_id", "left")
    return Joined(frame, seen)


def changed(marks):
    """A user changed since `marks` (table -> microseconds): a row newer
    than its table's mark in any of those tables, or a universe row
    without a time (its change cannot be known)."""
    flag = F.col(f"`_t.{plans.UNIVERSE}`").isNull()
    for table, mark in marks.items():
        time = F.col(f"`_t.{table}`")
        flag = flag | F.coalesce(time > F.lit(mark), F.lit(False))
    return flag


def in_scope(frame, plan):
    """An incremental run's users (changed since the plan's watermarks),
    each tag with a `changed_since` of its own given a column `_s.<tag_id>`:
    whether the tag evaluates the user; other scopes keep every row."""
    if plan.scope.mode != "incremental":
        return frame
    marks = {t.name: plan.scope.watermark(t.name) for t in plan.tables}
    frame = frame.where(changed(marks))
    for tag in plan.tags:
        if tag.changed_since is not None:
            frame = frame.withColumn(f"_s.{tag.tag_id}", changed(tag.changed_since))
    return frame


def unknown_users(spark, plan, users):
    """Requested user_ids not in the universe: count and the first few in
    request order."""
    wanted = spark.createDataFrame(list(enumerate(plan.scope.user_ids)), "position long, user_id string")
    missing = wanted.join(users, "user_id", "left_anti")
    sample = [r.user_id for r in missing.orderBy("position").limit(UNKNOWN_SAMPLE).collect()]
    return {"count": missing.count(), "sample": sample}


def evaluate_batches(batches, settings):
    """mapInArrow's function: per batch, a row per user with the tags it
    matched (ascending), and a row per failed tag (no user_id) with why."""
    import pyarrow as pa

    plugins_dir, copies_dir, requests, as_of, names = settings
    if plugins_dir is None:  # the plan's plugin_files, shipped by Spark
        from pyspark import SparkFiles

        plugins_dir = SparkFiles.getRootDirectory()
    ev = evaluator(plugins_dir, copies_dir)
    for batch in batches:
        # Spark's columns are c0, c1, ... (mapInArrow resolves names, and
        # `table.column` has a dot); the plugins read them by their names.
        batch = pa.RecordBatch.from_arrays(batch.columns, names=names)
        users, matched, scoped, failed = evaluate_batch(ev, batch, requests, as_of)
        rows = batch.num_rows
        yield pa.RecordBatch.from_arrays(
            [users, matched, scoped, pa.nulls(rows, pa.int64()), pa.nulls(rows, pa.string()),
             pa.nulls(rows, pa.string())],
            names=OUTPUT_SCHEMA.names,
        )
        # Per failed tag a row with why, and one row of the batch's figures.
        notes = [(t, e, None) for t, e in failed] + [(None, None, json.dumps(batch_stats(batch, matched)))]
        yield pa.RecordBatch.from_arrays(
            [
                pa.nulls(len(notes), users.type),
                pa.nulls(len(notes), pa.list_(pa.int32())),
                pa.nulls(len(notes), pa.list_(pa.int32())),
                pa.array([t for t, _, _ in notes], pa.int64()),
                pa.array([e for _, e, _ in notes], pa.string()),
                pa.array([f for _, _, f in notes], pa.string()),
            ],
            names=OUTPUT_SCHEMA.names,
        )


def batch_stats(batch, matched):
    """A batch's figures: its users, per table the rows dropped as older
    rows of its users (`_n.<table>` - 1), per tag its users matched."""
    import pyarrow.compute as pc

    dups = {}
    for name in batch.schema.names:
        if name.startswith("_n."):
            n = pc.sum(pc.subtract(batch.column(name), 1)).as_py()
            dups[name[3:]] = n or 0
    tags = pc.value_counts(pc.list_flatten(matched)).to_pylist() if len(matched) else []
    return {"users": batch.num_rows, "dups": dups, "matched": {str(t["values"]): t["counts"] for t in tags}}


def evaluate_batch(ev, batch, requests, as_of):
    """One batch: its user ids, per row the tags it matched and (when some
    tag has a scope of its own) the tags evaluated for it, as Arrow list
    arrays, and the failed tags with why. A tag matches a row only where it
    evaluates it. Vectorised: a rows x tags table of flags, not Python
    loops over rows."""
    import numpy as np
    import pyarrow as pa

    rows, ids = batch.num_rows, np.asarray([t for t, _, _ in requests], dtype=np.int32)
    scope = None
    for column, tag_id in enumerate(ids):
        at = batch.schema.get_field_index(f"_s.{tag_id}")
        if at >= 0:
            if scope is None:
                scope = np.ones((rows, len(ids)), dtype=bool)
            flags = batch.column(at).fill_null(False).to_numpy(zero_copy_only=False)
            scope[:, column] = flags
    hits = np.zeros((rows, len(ids)), dtype=bool)
    failed = []
    for column, result in enumerate(ev.evaluate(batch, requests, as_of)):
        if result["error"] is not None:
            failed.append((result["tag_id"], result["error"]))
            continue
        hits[np.asarray(result["matched"], dtype=np.int64), column] = True
    if scope is not None:
        hits &= scope
    users = batch.column(batch.schema.get_field_index("user_id"))
    scoped = pa.nulls(rows, pa.list_(pa.int32())) if scope is None else tag_lists(scope, ids)
    return users, tag_lists(hits, ids), scoped, failed


def tag_lists(flags, ids):
    """Per row of the rows x tags table `flags`, the ids of its set flags,
    ascending when `ids` is."""
    import numpy as np
    import pyarrow as pa

    offsets = np.zeros(flags.shape[0] + 1, dtype=np.int32)
    np.cumsum(flags.sum(axis=1), out=offsets[1:])
    _, columns = np.nonzero(flags)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids[columns], pa.int32()))


def evaluated(frame, plan):
    """The frame's rows evaluated in the executors: a row per user, and
    rows without a user for the failed tags and each batch's figures."""
    names = [c for c in frame.columns if not c.startswith("_t.")]  # _s.<tag>, _n.<table> stay
    requests = [(t.tag_id, t.rule, t.rule_version) for t in plan.tags]
    settings = (plan.plugins_dir, plan.copies_dir, requests, plan.as_of, names)
    columns = [F.col("`" + c.replace("`", "``") + "`").alias(f"c{i}") for i, c in enumerate(names)]
    return frame.select(*columns).mapInArrow(lambda it: evaluate_batches(it, settings), OUTPUT_SCHEMA)


def range_bounds(spark, plan):
    """The lower bounds of the output's user_id ranges after the first:
    about the plan's `part_users` universe users to a range, placed by a sample of
    the universe's user ids (a scan of that one column). tag-server
    commits a range at a time, reading its users' current tags from the
    key range it spans; no global sort (which would evaluate twice or
    cache the whole output) is needed for that."""
    if plan.scope.mode == "user_ids":
        users = len(plan.scope.user_ids)
    else:
        users = spark.read.option("pathGlobFilter", "*.parquet").parquet(
            table_path(spark, plan, plan.table(plans.UNIVERSE))
        ).count()  # from the parquet footers
    parts = -(-users // plan.part_users)
    if parts <= 1:
        return []
    ids = read_table(spark, plan, plan.table(plans.UNIVERSE)).select("user_id").where(F.col("user_id").isNotNull())
    fraction = min(1.0, parts * SAMPLED_PER_PART / users)
    sample = sorted(r.user_id for r in ids.sample(fraction=fraction, seed=21).collect())
    if not sample:
        return []
    return sorted({sample[len(sample) * k // parts] for k in range(1, parts)})


def part_of(user_id, bounds):
    """The output part of a row: 0 without a user, else 1 + the bounds at
    or below its user_id, found by a binary search over the bounds (a
    comparison in each of its log2 levels: summing one comparison per bound
    cost 5 s of a 10M-user job)."""
    def search(low, high):  # the part among bounds[low:high], offset low + 1
        if low == high:
            return F.lit(low + 1)
        mid = (low + high) // 2
        return F.when(user_id < F.lit(bounds[mid]), search(low, mid)).otherwise(search(mid + 1, high))

    return F.when(user_id.isNull(), 0).otherwise(search(0, len(bounds)))


def read_notes(spark, output):
    """The rows without a user of the written output (`part=0`)."""
    notes = f"{output.rstrip('/')}/{PART}=0"
    path, fs = hadoop_path(spark, notes)
    if not fs.exists(path):  # no batch at all: an empty universe or scope
        return []
    return spark.read.parquet(notes).select("failed_tag", "error", "stats").collect()


def figures(notes, plan):
    """From the rows without a user (`notes`: failed tags and each batch's
    figures): the users evaluated, per table the duplicates dropped, and
    per tag of the plan its status, matched users and errors."""
    errors, users, dups, matched = {}, 0, {}, {}
    for r in notes:
        if r.failed_tag is not None:
            errors.setdefault(r.failed_tag, set()).add(r.error)
        if r.stats is not None:
            stats = json.loads(r.stats)
            users += stats["users"]
            for table, n in stats["dups"].items():
                dups[table] = dups.get(table, 0) + n
            for tag, n in stats["matched"].items():
                matched[int(tag)] = matched.get(int(tag), 0) + n
    tags = []
    for tag in plan.tags:
        failed = tag.tag_id in errors
        tags.append({
            "tag_id": tag.tag_id,
            "rule_version": tag.rule_version,
            "status": "failed" if failed else "completed",
            "matched_users": None if failed else matched.get(tag.tag_id, 0),
            "errors": sorted(errors.get(tag.tag_id, []))[:ERRORS_PER_TAG],
        })
    return users, dups, tags


def write_summary(spark, output, summary):
    path, fs = hadoop_path(spark, f"{output.rstrip('/')}/_summary.json")
    stream = fs.create(path, True)
    try:
        stream.write(bytearray(json.dumps(summary, indent=2, ensure_ascii=False).encode("utf-8")))
    finally:
        stream.close()


class Clock:
    """Milliseconds per step of the job (the summary's `timings_ms`)."""

    def __init__(self):
        self.laps, self.at = {}, time.monotonic()

    def lap(self, name):
        now = time.monotonic()
        self.laps[name] = round((now - self.at) * 1000)
        self.at = now


def run(spark, plan):
    """Runs `plan`; returns the summary it wrote."""
    for library in plan.plugin_files:
        spark.sparkContext.addFile(library)
    clock = Clock()
    read = joined(spark, plan)
    summary = {"scope": plan.scope.mode, "as_of": plan.as_of}
    if plan.scope.mode == "user_ids":
        summary["unknown_user_ids"] = unknown_users(spark, plan, read.frame.select("user_id"))
    bounds = range_bounds(spark, plan)
    clock.lap("sample")
    out = evaluated(in_scope(read.frame, plan), plan)
    # One pass evaluates and writes: each task writes its rows into the
    # parts of their user_id ranges (a sort within the task, no shuffle).
    # A failed tag's ids may be in `tag_ids`: tag-server commits none of a
    # failed tag's matches.
    out = out.withColumn(PART, part_of(F.col("user_id"), bounds))
    out.write.mode("overwrite").partitionBy(PART).parquet(plan.output)
    clock.lap("evaluate_write")
    users_evaluated, dups, tags = figures(read_notes(spark, plan.output), plan)
    if plan.scope.mode != "incremental":
        dups[plans.UNIVERSE] = dups.get(plans.UNIVERSE, 0) + read.nulls()
    summary.update({
        "timings_ms": clock.laps,
        "application_id": spark.sparkContext.applicationId,
        # The users evaluated: the universe's (after a user_ids filter), or
        # an incremental run's changed users, as tag-server loads them.
        "universe_users": users_evaluated,
        "duplicates_dropped": dups,
        "newest": read.newest(),
        "users_evaluated": users_evaluated,
        "tags": tags,
        "failed_tags": [t["tag_id"] for t in tags if t["status"] == "failed"],
        "parts": len(bounds) + 1,
        "output": plan.output,
    })
    write_summary(spark, plan.output, summary)
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description="tag-engine's tags evaluated in Spark (spark/README.md)")
    parser.add_argument("--plan", required=True, help="the plan, a local JSON file")
    args = parser.parse_args(argv)
    try:
        plan = plans.load(args.plan)
    except plans.PlanError as e:
        print(f"tag-engine job: {e}", file=sys.stderr)
        return 2
    spark = session()
    # The driver's output tells tag-server (the driver of this job) its id.
    print(f"tag-engine job: application {spark.sparkContext.applicationId}", file=sys.stderr, flush=True)
    summary = run(spark, plan)
    print(json.dumps(summary, ensure_ascii=False))
    spark.stop()
    # Failed tags are in the summary; the output of the others is complete.
    return 0


if __name__ == "__main__":
    sys.exit(main())
