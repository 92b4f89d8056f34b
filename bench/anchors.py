"""The eight reference rules of tags.md computed by other engines, as anchors
for tag-server's benchmark, with the same semantics as tag-server: the
universe is user_basic_info, side tables are left-joined on user_id, and a
user_id repeated within a table keeps the row with the greatest updated_time.
A table is DATA_DIR/<table>.parquet or a directory DATA_DIR/<table>/ of parts.

duckdb, polars and spark write (user_id, tag_ids) to parquet for the users
holding at least one tag. duckdb_table does tag-server's work instead: it
builds the table user_tags (user_id primary key, tag_ids as a JSON array,
tag_details as a JSON object keyed by tag id, created_time, updated_time) in
a new DuckDB database file OUT, and checkpoints and closes it.

spark_jdbc does what the replaced system did: Spark computes the same rules
and appends user_tags rows to MariaDB over JDBC (OUT is the JDBC URL).

usage: anchors.py ENGINE DATA_DIR OUT AS_OF   (ENGINE: duckdb, duckdb_table, polars, spark, spark_jdbc)
"""

import datetime as dt
import json
import os
import sys
import time

TABLES = ("user_basic_info", "user_asset_summary", "user_activity_summary")

# tags.md, "The eight reference tags": tag_id -> (tag_name, tag_category)
TAGS = {
    1: ("高净值用户", "财富类"),
    2: ("活跃交易者", "行为类"),
    3: ("低风险用户", "风险类"),
    4: ("新注册用户", "生命周期类"),
    5: ("VIP客户", "生命周期类"),
    6: ("现金充足用户", "财富类"),
    7: ("年轻用户", "人口统计类"),
    8: ("最近活跃用户", "行为类"),
}


def source(data, table):
    """The parquet file of a table, or a glob over its directory of parts."""
    if os.path.isdir(f"{data}/{table}"):
        return f"{data}/{table}/*.parquet"
    return f"{data}/{table}.parquet"


def newest_rows(data, table, dedup="window"):
    """SQL: a table's newest row per user_id (updated_time descending, nulls
    last; ties arbitrary). "window" numbers each user's rows
    (`QUALIFY row_number()`); "aggregate" keeps each user's newest row with
    `arg_max` in a grouped aggregate, which DuckDB can spill to disk: at 100M
    users under memory_limit='4GB' the window runs out of memory."""
    if dedup == "aggregate":
        return f"""SELECT unnest(arg_max(r, coalesce(epoch_us(r.updated_time), -9223372036854775807)))
                   FROM read_parquet('{source(data, table)}') r WHERE r.user_id IS NOT NULL
                   GROUP BY r.user_id"""
    return f"""SELECT * FROM read_parquet('{source(data, table)}') WHERE user_id IS NOT NULL
               QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY updated_time DESC NULLS LAST) = 1"""


def duckdb_tagged(data, as_of, dedup="window"):
    """SQL: (user_id, tag_ids) for the users holding at least one tag, tag_ids ascending."""
    dedup = {t: newest_rows(data, t, dedup) for t in TABLES}
    d = f"DATE '{as_of}'"
    return f"""
      WITH b AS ({dedup['user_basic_info']}),
           a AS ({dedup['user_asset_summary']}),
           t AS ({dedup['user_activity_summary']}),
           j AS (
             SELECT b.user_id, b.age, b.registration_date, b.user_level, b.kyc_status,
                    a.total_asset_value, a.cash_balance,
                    t.trade_count_30d, t.risk_score, t.last_login_date
             FROM b LEFT JOIN a ON a.user_id = b.user_id LEFT JOIN t ON t.user_id = b.user_id),
           tagged AS (
             SELECT user_id, list_filter([
               CASE WHEN total_asset_value >= 150000 AND cash_balance >= 60000 THEN 1 END,
               CASE WHEN trade_count_30d > 10 THEN 2 END,
               CASE WHEN risk_score BETWEEN 0 AND 30 THEN 3 END,
               CASE WHEN registration_date BETWEEN {d} - INTERVAL 30 DAY AND {d} THEN 4 END,
               CASE WHEN user_level IN ('VIP2', 'VIP3') AND kyc_status = 'verified' THEN 5 END,
               CASE WHEN cash_balance >= 50000 THEN 6 END,
               CASE WHEN age BETWEEN 18 AND 30 THEN 7 END,
               CASE WHEN last_login_date BETWEEN {d} - INTERVAL 7 DAY AND {d} THEN 8 END
             ], lambda x: x IS NOT NULL) AS tag_ids FROM j)
      SELECT user_id, tag_ids FROM tagged WHERE len(tag_ids) > 0"""


def run_duckdb(data, out, as_of):
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads TO 2")
    con.execute(f"COPY ({duckdb_tagged(data, as_of)}) TO '{out}' (FORMAT parquet)")


def detail_members(now):
    """tag_details members, one per tag, as tag-server writes them for a
    first run (rule version 1); list element i is tag i + 1."""
    return [
        f'"{tag}":'
        + json.dumps(
            {"tag_name": name, "tag_category": category, "hit_time": now, "rule_version": 1},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        for tag, (name, category) in sorted(TAGS.items())
    ]


def run_duckdb_table(data, out, as_of):
    import duckdb

    for path in (out, out + ".wal"):
        if os.path.exists(path):
            os.remove(path)
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    members = detail_members(now)
    members_sql = "[" + ", ".join("'" + m.replace("'", "''") + "'" for m in members) + "]"
    con = duckdb.connect(out)
    con.execute("SET threads TO 2")
    con.execute("""
      CREATE TABLE user_tags (
        user_id VARCHAR PRIMARY KEY,
        tag_ids VARCHAR NOT NULL,
        tag_details VARCHAR NOT NULL,
        created_time VARCHAR NOT NULL,
        updated_time VARCHAR NOT NULL)""")
    con.execute(f"""
      INSERT INTO user_tags
      SELECT user_id,
             '[' || array_to_string(tag_ids, ',') || ']',
             '{{' || array_to_string(list_transform(tag_ids, lambda x: {members_sql}[x]), ',') || '}}',
             '{now}', '{now}'
      FROM ({duckdb_tagged(data, as_of)})""")
    con.execute("CHECKPOINT")
    con.close()


def run_polars(data, out, as_of):
    import polars as pl

    day = dt.date.fromisoformat(as_of)

    def table(name):
        return (
            pl.scan_parquet(source(data, name))
            .filter(pl.col("user_id").is_not_null())
            .sort("updated_time", descending=True, nulls_last=True)
            .unique(subset="user_id", keep="first")
        )

    b = table("user_basic_info").select("user_id", "age", "registration_date", "user_level", "kyc_status")
    a = table("user_asset_summary").select("user_id", "total_asset_value", "cash_balance")
    t = table("user_activity_summary").select("user_id", "trade_count_30d", "risk_score", "last_login_date")
    j = b.join(a, on="user_id", how="left").join(t, on="user_id", how="left")
    within = lambda col, n: pl.col(col).is_between(day - dt.timedelta(days=n), day)
    rules = [
        (pl.col("total_asset_value") >= 150000) & (pl.col("cash_balance") >= 60000),
        pl.col("trade_count_30d") > 10,
        pl.col("risk_score").is_between(0, 30),
        within("registration_date", 30),
        pl.col("user_level").is_in(["VIP2", "VIP3"]) & (pl.col("kyc_status") == "verified"),
        pl.col("cash_balance") >= 50000,
        pl.col("age").is_between(18, 30),
        within("last_login_date", 7),
    ]
    tags = pl.concat_list([pl.when(r.fill_null(False)).then(pl.lit(i + 1)) for i, r in enumerate(rules)]).list.drop_nulls()
    (
        j.select("user_id", tags.alias("tag_ids"))
        .filter(pl.col("tag_ids").list.len() > 0)
        .sink_parquet(out)
    )


def spark_session(jars=None):
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.driver.memory", "4g")
    )
    if jars:
        builder = builder.config("spark.jars", jars)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def spark_tagged(spark, data, as_of):
    """DataFrame (user_id, tag_ids) for the users holding at least one tag."""
    from pyspark.sql import Window, functions as F

    def table(name):
        w = Window.partitionBy("user_id").orderBy(F.col("updated_time").desc_nulls_last())
        df = spark.read.parquet(source(data, name).removesuffix("/*.parquet")).where(F.col("user_id").isNotNull())
        return df.withColumn("_rn", F.row_number().over(w)).where("_rn = 1").drop("_rn")

    b = table("user_basic_info").select("user_id", "age", "registration_date", "user_level", "kyc_status")
    a = table("user_asset_summary").select("user_id", "total_asset_value", "cash_balance")
    t = table("user_activity_summary").select("user_id", "trade_count_30d", "risk_score", "last_login_date")
    j = b.join(a, "user_id", "left").join(t, "user_id", "left")
    d = F.to_date(F.lit(as_of))
    within = lambda col, n: F.col(col).between(F.date_sub(d, n), d)
    rules = [
        (F.col("total_asset_value") >= 150000) & (F.col("cash_balance") >= 60000),
        F.col("trade_count_30d") > 10,
        F.col("risk_score").between(0, 30),
        within("registration_date", 30),
        F.col("user_level").isin("VIP2", "VIP3") & (F.col("kyc_status") == "verified"),
        F.col("cash_balance") >= 50000,
        F.col("age").between(18, 30),
        within("last_login_date", 7),
    ]
    tags = F.array_compact(F.array(*[F.when(r, F.lit(i + 1)) for i, r in enumerate(rules)]))
    return j.select("user_id", tags.alias("tag_ids")).where(F.size("tag_ids") > 0)


def run_spark(data, out, as_of):
    spark = spark_session()
    spark_tagged(spark, data, as_of).write.mode("overwrite").parquet(out)
    spark.stop()


# Debian's libmariadb-java (spark.jars.packages cannot download here).
MARIADB_JAR = "/usr/share/java/mariadb-java-client.jar"


def run_spark_jdbc(data, out, as_of):
    """The original system's way: Spark computes the rules and appends the
    rows of user_tags (the seed's columns, JSON as text) to MariaDB over
    JDBC. OUT is a JDBC URL whose database holds an empty user_tags."""
    from pyspark.sql import functions as F

    spark = spark_session(MARIADB_JAR)
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    members = F.array(*[F.lit(m) for m in detail_members(now)])
    rows = spark_tagged(spark, data, as_of).select(
        "user_id",
        F.concat(F.lit("["), F.array_join("tag_ids", ","), F.lit("]")).alias("tag_ids"),
        F.concat(
            F.lit("{"),
            F.array_join(F.transform("tag_ids", lambda t: F.element_at(members, t)), ","),
            F.lit("}"),
        ).alias("tag_details"),
        F.lit(now).alias("created_time"),
        F.lit(now).alias("updated_time"),
    )
    (
        rows.write.format("jdbc")
        .option("url", out)
        .option("driver", "org.mariadb.jdbc.Driver")
        .option("dbtable", "user_tags")
        .option("batchsize", 10000)
        .mode("append")
        .save()
    )
    spark.stop()


if __name__ == "__main__":
    engine, data, out, as_of = sys.argv[1:5]
    started = time.perf_counter()
    engines = {
        "duckdb": run_duckdb,
        "duckdb_table": run_duckdb_table,
        "polars": run_polars,
        "spark": run_spark,
        "spark_jdbc": run_spark_jdbc,
    }
    engines[engine](data, out, as_of)
    print(f"{engine}: {time.perf_counter() - started:.3f} s", file=sys.stderr)
