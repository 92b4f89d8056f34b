"""The eight reference rules of tags.md computed by other engines, as anchors
for tag-server's benchmark. Each writes (user_id, tag_ids) to parquet for the
users holding at least one tag, with the same semantics as tag-server: the
universe is user_basic_info, side tables are left-joined on user_id, and a
user_id repeated within a table keeps the row with the greatest updated_time.

usage: anchors.py ENGINE DATA_DIR OUT_PARQUET AS_OF   (ENGINE: duckdb, polars, spark)
"""

import datetime as dt
import sys
import time

TABLES = ("user_basic_info", "user_asset_summary", "user_activity_summary")


def run_duckdb(data, out, as_of):
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads TO 2")
    dedup = {
        t: f"""SELECT * FROM read_parquet('{data}/{t}.parquet') WHERE user_id IS NOT NULL
               QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY updated_time DESC NULLS LAST) = 1"""
        for t in TABLES
    }
    d = f"DATE '{as_of}'"
    con.execute(f"""
    COPY (
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
      SELECT user_id, tag_ids FROM tagged WHERE len(tag_ids) > 0
    ) TO '{out}' (FORMAT parquet)""")


def run_polars(data, out, as_of):
    import polars as pl

    day = dt.date.fromisoformat(as_of)

    def table(name):
        return (
            pl.scan_parquet(f"{data}/{name}.parquet")
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


def run_spark(data, out, as_of):
    from pyspark.sql import SparkSession, Window, functions as F

    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.driver.memory", "4g")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")

    def table(name):
        w = Window.partitionBy("user_id").orderBy(F.col("updated_time").desc_nulls_last())
        df = spark.read.parquet(f"{data}/{name}.parquet").where(F.col("user_id").isNotNull())
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
    j.select("user_id", tags.alias("tag_ids")).where(F.size("tag_ids") > 0).write.mode("overwrite").parquet(out)
    spark.stop()


if __name__ == "__main__":
    engine, data, out, as_of = sys.argv[1:5]
    started = time.perf_counter()
    {"duckdb": run_duckdb, "polars": run_polars, "spark": run_spark}[engine](data, out, as_of)
    print(f"{engine}: {time.perf_counter() - started:.3f} s", file=sys.stderr)
