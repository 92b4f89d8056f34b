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
from dataclasses import dataclass

from pyspark.sql import SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from tag_engine_spark import plan as plans

UNKNOWN_SAMPLE = 10  # as tag-server's report
ERRORS_PER_TAG = 5
# Up to this many requested users are filtered in the scan (pushed down to
# parquet); more are a broadcast semi-join.
PUSHED_USER_IDS = 10_000
ROWS_PER_PART = 500_000  # tag-server: spark::staged::ROWS_PER_PART
OUTPUT_SCHEMA = T.StructType([
    T.StructField("user_id", T.StringType()),
    T.StructField("tag_ids", T.ArrayType(T.IntegerType())),
    # The tags evaluated for the user when some tag has a scope of its own
    # (an incremental plan's `changed_since`); null: every tag of the plan.
    T.StructField("scoped_tag_ids", T.ArrayType(T.IntegerType())),
    T.StructField("failed_tag", T.LongType()),
    T.StructField("error", T.StringType()),
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
    (updated_time in microseconds), `_file` and `_row` (the write order)."""
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
        F.col("_metadata.file_name").alias("_file"),
        F.col("_metadata.row_index").alias("_row"),
    ]
    df = df.select(*columns)
    if plan.scope.mode == "user_ids":
        df = only_users(spark, df, plan.scope.user_ids)
    return df


def only_users(spark, df, user_ids):
    if len(user_ids) <= PUSHED_USER_IDS:
        return df.where(F.col("user_id").isin(user_ids))
    wanted = spark.createDataFrame([(u,) for u in user_ids], "user_id string")
    return df.join(F.broadcast(wanted), "user_id", "left_semi")


def ranked(df):
    """`_rank` 1 for each user's newest row: the greatest time, a row
    without one losing to any timed row, and on a tie the row written last
    (the later file by name, then the later row)."""
    order = Window.partitionBy("user_id").orderBy(
        F.col("_t").desc_nulls_last(), F.col("_file").desc(), F.col("_row").desc()
    )
    return df.where(F.col("user_id").isNotNull()).withColumn("_rank", F.row_number().over(order))


@dataclass
class Joined:
    frame: object
    dropped: dict
    newest: dict
    universe_users: int
    ranked: dict


def scoped_duplicates(joined, scoped):
    """An incremental run's duplicates, counted as tag-server counts them:
    among the rows of the users it evaluates."""
    ids = scoped.select("user_id")
    return {
        table: ranked.where("_rank > 1").join(ids, "user_id", "left_semi").count()
        for table, ranked in joined.ranked.items()
    }


def joined(spark, plan):
    """Universe rows (each user's newest) with the side tables' newest rows
    left-joined, each table's time as `_t.<table>`; the duplicates dropped
    per table (for a side table, among the universe's users); and each
    table's newest time in microseconds (the tags' next watermarks); the
    universe's users (after a `user_ids` scope's filter); and each table's
    ranked rows (cached, for an incremental run's own count)."""
    dropped, newest, kept = {}, {}, {}
    universe_raw = read_table(spark, plan, plan.table(plans.UNIVERSE))
    newest[plans.UNIVERSE] = universe_raw.agg(F.max("_t")).collect()[0][0]
    universe_ranked = ranked(universe_raw).cache()
    users = universe_ranked.where("_rank = 1")
    nulls = universe_raw.where(F.col("user_id").isNull()).count()
    dropped[plans.UNIVERSE] = universe_ranked.where("_rank > 1").count() + nulls
    kept[plans.UNIVERSE] = universe_ranked
    frame = users.drop("_rank", "_file", "_row").withColumnRenamed("_t", f"_t.{plans.UNIVERSE}")
    ids = users.select("user_id")
    for table in plan.tables:
        if table.name == plans.UNIVERSE:
            continue
        raw = read_table(spark, plan, table)
        newest[table.name] = raw.agg(F.max("_t")).collect()[0][0]
        side = ranked(raw).join(ids, "user_id", "left_semi").cache()
        dropped[table.name] = side.where("_rank > 1").count()
        kept[table.name] = side
        side = side.where("_rank = 1").drop("_rank", "_file", "_row")
        frame = frame.join(side.withColumnRenamed("_t", f"_t.{table.name}"), "user_id", "left")
    newest = {t: n for t, n in newest.items() if n is not None}
    return Joined(frame, dropped, newest, users.count(), kept)


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
            [users, matched, scoped, pa.nulls(rows, pa.int64()), pa.nulls(rows, pa.string())],
            names=OUTPUT_SCHEMA.names,
        )
        if failed:
            yield pa.RecordBatch.from_arrays(
                [
                    pa.nulls(len(failed), users.type),
                    pa.nulls(len(failed), pa.list_(pa.int32())),
                    pa.nulls(len(failed), pa.list_(pa.int32())),
                    pa.array([t for t, _ in failed], pa.int64()),
                    pa.array([e for _, e in failed], pa.string()),
                ],
                names=OUTPUT_SCHEMA.names,
            )


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
    """The frame's rows evaluated in the executors (cached: the summary's
    figures and the written matches come from one evaluation)."""
    names = [c for c in frame.columns if not c.startswith("_t.")]  # _s.<tag> stay
    requests = [(t.tag_id, t.rule, t.rule_version) for t in plan.tags]
    settings = (plan.plugins_dir, plan.copies_dir, requests, plan.as_of, names)
    columns = [F.col("`" + c.replace("`", "``") + "`").alias(f"c{i}") for i, c in enumerate(names)]
    out = frame.select(*columns).mapInArrow(lambda it: evaluate_batches(it, settings), OUTPUT_SCHEMA)
    return out.persist()


def tag_figures(out, plan):
    """Per tag of the plan: its status, matched users and errors."""
    errors = {}
    for r in out.where("failed_tag IS NOT NULL").select("failed_tag", "error").distinct().collect():
        errors.setdefault(r.failed_tag, []).append(r.error)
    counts = dict(
        out.where("user_id IS NOT NULL")
        .select(F.explode("tag_ids").alias("tag_id"))
        .groupBy("tag_id").count().collect()
    )
    figures = []
    for tag in plan.tags:
        failed = tag.tag_id in errors
        figures.append({
            "tag_id": tag.tag_id,
            "rule_version": tag.rule_version,
            "status": "failed" if failed else "completed",
            "matched_users": None if failed else counts.get(tag.tag_id, 0),
            "errors": sorted(errors.get(tag.tag_id, []))[:ERRORS_PER_TAG],
        })
    return figures


def write_summary(spark, output, summary):
    path, fs = hadoop_path(spark, f"{output.rstrip('/')}/_summary.json")
    stream = fs.create(path, True)
    try:
        stream.write(bytearray(json.dumps(summary, indent=2, ensure_ascii=False).encode("utf-8")))
    finally:
        stream.close()


def run(spark, plan):
    """Runs `plan`; returns the summary it wrote."""
    for library in plan.plugin_files:
        spark.sparkContext.addFile(library)
    read = joined(spark, plan)
    summary = {"scope": plan.scope.mode, "as_of": plan.as_of, "duplicates_dropped": read.dropped}
    if plan.scope.mode == "user_ids":
        summary["unknown_user_ids"] = unknown_users(spark, plan, read.frame.select("user_id"))
    scoped = in_scope(read.frame, plan)
    if plan.scope.mode == "incremental":
        summary["duplicates_dropped"] = scoped_duplicates(read, scoped)
    out = evaluated(scoped, plan)
    figures = tag_figures(out, plan)
    failed = [f["tag_id"] for f in figures if f["status"] == "failed"]
    users = out.where("user_id IS NOT NULL")
    # A tag that failed in any batch fails as a whole: none of its matches.
    tag_ids = F.array_except("tag_ids", F.array(*[F.lit(t) for t in failed]).cast("array<int>"))
    users = users.select("user_id", tag_ids.alias("tag_ids") if failed else "tag_ids", "scoped_tag_ids")
    # Sorted by user_id, at most this many users per part: tag-server
    # commits a part at a time, reading its users' current tags from the
    # key range the part spans.
    users = users.orderBy("user_id")
    users.write.mode("overwrite").option("maxRecordsPerFile", ROWS_PER_PART).parquet(plan.output)
    summary.update({
        "application_id": spark.sparkContext.applicationId,
        "universe_users": read.universe_users,
        "newest": read.newest,
        "users_evaluated": out.where("user_id IS NOT NULL").count(),
        "tags": figures,
        "failed_tags": failed,
        "output": plan.output,
    })
    write_summary(spark, plan.output, summary)
    out.unpersist()
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
