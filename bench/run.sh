#!/usr/bin/env bash
# tag-server against DuckDB, Polars and (optionally) PySpark on the same data,
# in one run: wall time, peak memory and each anchor's time / ours.
#
#   [TAG_SERVER_BIN=path] [BASELINE_BIN=path] bench/run.sh [--users N] [--10m] [--spark] [--rounds N]
#                                      [--stores] [--no-api]
#
# Steps: gen-data (N users, default 1M); tag-server's first full run of the
# eight tags into a fresh SQLite store and a re-run on unchanged data; the
# anchors: DuckDB (same rules to parquet), DuckDB building the same user_tags
# table as ours (JSON tag_ids and tag_details, timestamps, primary key) in a
# DuckDB file, Polars[, PySpark with --spark]; a check that all produced the
# same tag sets; an incremental run after 2% of the activity rows changed,
# delivered as a new part file (user_activity_summary/ becomes a directory of
# part-000.parquet, the original, and part-001.parquet, the changed rows),
# checked against DuckDB over the new data; API latency with wrk (64
# connections) of /health, a rejected trigger and GET /api/v1/users/{id}/tags,
# idle and while six queued full runs compute (and, for the user lookups,
# write: they alternate as_of so every run changes rows).
#
# --stores: also the first full run and re-run into MariaDB (127.0.0.1:3306,
# root) and PostgreSQL (127.0.0.1:5432, postgres), each in a fresh database
# bench_tags, as ratios to the SQLite run; with --spark also the replaced
# system's way, PySpark computing the rules and appending user_tags to
# MariaDB over JDBC (driver: Debian's libmariadb-java, installed with
# apt-get when missing; a jdbc:mysql: URL so that Spark quotes identifiers
# the MySQL way), beside ours into MariaDB.
# --no-api: skip the API latency part.
# --rounds N (default 1): N more rounds of the first full run, DuckDB and
# DuckDB-table, alternating, with each round's ratios and their medians: on a
# shared 2-core machine single timings vary by 20% or more.
# TAG_SERVER_BIN: a prebuilt tag-server to use; without it the script runs
# cargo build --release.
# BASELINE_BIN: another tag-server build (say, of the commit before a
# change): with --rounds, each round also runs it, and the ratio ours /
# baseline is printed per round with its median (the cost of a change,
# measured side by side). Every round reports wall and CPU (user + system)
# seconds and both ratios: on a busy machine CPU time varies less.
#
# Needs python3 (a virtualenv with duckdb, polars, pyarrow[, pyspark] is made in
# bench/.venv), wrk for the API latency part (installed with apt-get when
# missing and run as root), curl and /usr/bin/time. Everything it writes goes
# to bench/out/; the final table is printed last.
#
# The cases of runs beyond memory and on every core have scripts of their
# own, which this one starts with the arguments after the case's flag:
#   bench/run.sh --partitions [...]   bench/partitions.sh: --memory-limit runs
#                                     against unlimited ones (10M, 512MiB)
#   bench/run.sh --cores [...]        bench/cores.sh: all cores against one
#                                     (taskset), CPU / wall, kernel share
#   bench/run.sh --big [...]          bench/big.sh: 100M users against DuckDB
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  --partitions) shift; exec bench/partitions.sh "$@" ;;
  --cores) shift; exec bench/cores.sh "$@" ;;
  --big) shift; exec bench/big.sh "$@" ;;
esac
USERS=1000000
SPARK=0
ROUNDS=1
STORES=0
API_PART=1
while [ $# -gt 0 ]; do
  case "$1" in
    --users) USERS="$2"; shift 2 ;;
    --10m) USERS=10000000; shift ;;
    --spark) SPARK=1; shift ;;
    --stores) STORES=1; shift ;;
    --no-api) API_PART=0; shift ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    *) echo "usage: bench/run.sh [--users N] [--10m] [--spark] [--rounds N] [--stores] [--no-api]" >&2; exit 2 ;;
  esac
done
AS_OF=2025-01-15
OUT=bench/out
DATA=$OUT/data-$USERS
mkdir -p "$OUT"

if [ -n "${TAG_SERVER_BIN:-}" ]; then
  BIN=$TAG_SERVER_BIN
  echo "== using $BIN"
else
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/tag-engine-target}"
  BIN=$CARGO_TARGET_DIR/release/tag-server
  echo "== building (release)"
  cargo build --release --quiet
fi
# The loader refuses libraries under a directory others can write (such as
# /var/tmp, where CARGO_TARGET_DIR often is): run from a copy in bench/out.
mkdir -p "$OUT/plugins"
cp "$(dirname "$BIN")"/libtag_plugin_*.so "$OUT/plugins/"
chmod 755 "$OUT/plugins" "$OUT/plugins"/*.so
export TAG_PLUGINS_DIR=$PWD/$OUT/plugins
if [ ! -x bench/.venv/bin/python ]; then python3 -m venv bench/.venv; fi
PY=bench/.venv/bin/python
PKGS="duckdb polars pyarrow"
[ "$SPARK" = 1 ] && PKGS="$PKGS pyspark"
$PY -m pip install --quiet $PKGS

if [ ! -f "$DATA/user_basic_info.parquet" ]; then
  echo "== generating $USERS users"
  $BIN gen-data --users "$USERS" --out "$DATA" --reference-date "$AS_OF" --seed 42
fi

if ! command -v wrk >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "== installing wrk"
  apt-get install -y -qq wrk > /dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk > /dev/null; } || true
fi

RESULTS=$OUT/results.tsv
: > "$RESULTS"
# measure NAME COMMAND...: wall seconds and peak RSS (MB) into results.tsv
measure() {
  local name=$1; shift
  local stats
  stats=$(mktemp)
  /usr/bin/time -f "%e %M" -o "$stats" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
  read -r secs kb < "$stats"
  rm -f "$stats"
  printf '%s\t%s\t%s\n' "$name" "$secs" "$((kb / 1024))" >> "$RESULTS"
  echo "   $name: ${secs}s, $((kb / 1024)) MB"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
# timed NAME CMD...: runs CMD (output to $RUN/round/NAME.log) and keeps its
# wall and CPU (user + system) seconds; `wall NAME` and `cpu NAME` read them.
timed() { local name=$1; shift; /usr/bin/time -f "%e %U %S" -o "$RUN/round/$name.time" "$@" > "$RUN/round/$name.log" 2>&1; }
wall() { awk '{ print $1 }' "$RUN/round/$1.time"; }
cpu() { awk '{ printf "%.2f", $2 + $3 }' "$RUN/round/$1.time"; }
rows_written() { $PY -c "import json,sys; r=json.load(open(sys.argv[1]))['result']; print(r['rows_upserted'] + r['rows_deleted'])" "$1"; }

RUN=$OUT/run-$USERS
rm -rf "$RUN"; mkdir -p "$RUN"
STORE="sqlite://$RUN/tags.db"
TAGS=1,2,3,4,5,6,7,8
echo "== tag-server: first full run, re-run on unchanged data"
measure tag-server-full "$BIN" run --tag-ids $TAGS --data-dir "$DATA" --store "$STORE" --as-of $AS_OF
measure tag-server-rerun "$BIN" run --tag-ids $TAGS --data-dir "$DATA" --store "$STORE" --as-of $AS_OF
RERUN_WRITES=$(rows_written "$OUT/tag-server-rerun.out")

echo "== anchors"
measure duckdb $PY bench/anchors.py duckdb "$DATA" "$RUN/duckdb.parquet" $AS_OF
measure duckdb-table $PY bench/anchors.py duckdb_table "$DATA" "$RUN/duckdb-table.duckdb" $AS_OF
measure polars $PY bench/anchors.py polars "$DATA" "$RUN/polars.parquet" $AS_OF
ANCHOR_OUT="$RUN/duckdb.parquet $RUN/duckdb-table.duckdb $RUN/polars.parquet"
if [ "$SPARK" = 1 ]; then
  measure pyspark $PY bench/anchors.py spark "$DATA" "$RUN/spark.parquet" $AS_OF
  ANCHOR_OUT="$ANCHOR_OUT $RUN/spark.parquet"
fi
echo "== same tag sets?"
$PY bench/compare.py "$RUN/tags.db" $ANCHOR_OUT

ROUNDS_TSV=$OUT/rounds.tsv
: > "$ROUNDS_TSV"
if [ "$ROUNDS" -gt 1 ]; then
  echo "== $ROUNDS rounds: first full run, DuckDB and DuckDB-table, alternating"
  for i in $(seq "$ROUNDS"); do
    rm -rf "$RUN/round"; mkdir -p "$RUN/round"
    timed ours "$BIN" run --tag-ids $TAGS --data-dir "$DATA" --store "sqlite://$RUN/round/tags.db" --as-of $AS_OF
    timed duck $PY bench/anchors.py duckdb "$DATA" "$RUN/round/duckdb.parquet" $AS_OF
    timed table $PY bench/anchors.py duckdb_table "$DATA" "$RUN/round/duckdb-table.duckdb" $AS_OF
    ours=$(wall ours); duck=$(wall duck); table=$(wall table)
    base=""; base_cpu=""
    if [ -n "${BASELINE_BIN:-}" ]; then
      timed base "$BASELINE_BIN" run --tag-ids $TAGS --data-dir "$DATA" --store "sqlite://$RUN/round/base.db" --as-of $AS_OF
      base=$(wall base); base_cpu=$(cpu base)
      echo "   round $i: baseline ${base}s (CPU ${base_cpu}s), ours / baseline $(ratio "$ours" "$base") wall, $(ratio "$(cpu ours)" "$base_cpu") CPU"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$ours" "$duck" "$table" "$base" "$(cpu ours)" "$(cpu duck)" "$(cpu table)" "$base_cpu" >> "$ROUNDS_TSV"
    echo "   round $i: tag-server ${ours}s (CPU $(cpu ours)s), duckdb ${duck}s (CPU $(cpu duck)s, $(ratio "$duck" "$ours")), duckdb-table ${table}s (CPU $(cpu table)s, $(ratio "$table" "$ours"))"
  done
fi

echo "== incremental run after 2% of the activity rows changed, as a new part file"
# The store is the first full run's (and re-run's) over DATA; the copy INC
# differs only in user_activity_summary, now a directory of two parts.
INC=$OUT/inc-$USERS
rm -rf "$INC"; cp -r "$DATA" "$INC"
$PY bench/touch_new_part.py "$INC"
measure tag-server-incremental "$BIN" run --tag-ids $TAGS --data-dir "$INC" --store "$STORE" --as-of $AS_OF --mode incremental
INC_USERS=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['result']['total_users'])" "$OUT/tag-server-incremental.out")
INC_WRITES=$(rows_written "$OUT/tag-server-incremental.out")
echo "== incremental result equals a full run's over the new data?"
$PY bench/anchors.py duckdb "$INC" "$RUN/duckdb-inc.parquet" $AS_OF 2> /dev/null
$PY bench/compare.py "$RUN/tags.db" "$RUN/duckdb-inc.parquet"

if [ "$STORES" = 1 ]; then
  echo "== network stores: first full run and re-run into MariaDB and PostgreSQL"
  mysql -h 127.0.0.1 -u root -e "DROP DATABASE IF EXISTS bench_tags; CREATE DATABASE bench_tags CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS bench_tags" -c "CREATE DATABASE bench_tags"
  for store in mariadb:mysql://root@127.0.0.1:3306/bench_tags postgres:postgres://postgres@127.0.0.1:5432/bench_tags; do
    name=${store%%:*}; url=${store#*:}
    measure "tag-server-$name" "$BIN" run --tag-ids $TAGS --data-dir "$DATA" --store "$url" --as-of $AS_OF
    measure "tag-server-$name-rerun" "$BIN" run --tag-ids $TAGS --data-dir "$DATA" --store "$url" --as-of $AS_OF
    echo "   $name re-run wrote $(rows_written "$OUT/tag-server-$name-rerun.out") rows"
  done
  if [ "$SPARK" = 1 ]; then
    if [ ! -f /usr/share/java/mariadb-java-client.jar ]; then
      apt-get install -y -qq libmariadb-java > /dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq libmariadb-java > /dev/null; }
    fi
    mysql -h 127.0.0.1 -u root -e "DROP DATABASE IF EXISTS bench_spark; CREATE DATABASE bench_spark CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
      CREATE TABLE bench_spark.user_tags (user_id VARCHAR(64) PRIMARY KEY, tag_ids JSON NOT NULL, tag_details JSON NOT NULL,
        created_time VARCHAR(19) NOT NULL, updated_time VARCHAR(19) NOT NULL)"
    measure pyspark-jdbc-mariadb $PY bench/anchors.py spark_jdbc "$DATA" "jdbc:mysql://127.0.0.1:3306/bench_spark?user=root&rewriteBatchedStatements=true" $AS_OF
    echo "== same rows in MariaDB? (user_id, tag_ids)"
    ours_sum=$(mysql -N -h 127.0.0.1 -u root -e "SELECT COUNT(*), SUM(CRC32(CONCAT(user_id, REPLACE(tag_ids, ' ', '')))) FROM bench_tags.user_tags")
    spark_sum=$(mysql -N -h 127.0.0.1 -u root -e "SELECT COUNT(*), SUM(CRC32(CONCAT(user_id, REPLACE(tag_ids, ' ', '')))) FROM bench_spark.user_tags")
    if [ "$ours_sum" = "$spark_sum" ]; then echo "   yes: $ours_sum"; else echo "   NO: ours $ours_sum, pyspark $spark_sum"; exit 1; fi
  fi
fi

LATENCY=$OUT/latency.tsv
WINDOW_WRITES=$OUT/window-writes.tsv
: > "$LATENCY"; : > "$WINDOW_WRITES"
if [ "$API_PART" = 1 ] && command -v wrk >/dev/null; then
  echo "== API latency, 64 connections"
  PORT=5099
  API=$OUT/api-$USERS; rm -rf "$API"; mkdir -p "$API"
  "$BIN" --data-dir "$DATA" --store "sqlite://$API/tags.db" --port $PORT --host 127.0.0.1 --log-file "$API/api_server.log" > /dev/null 2>&1 &
  SERVER=$!
  trap 'kill $SERVER 2>/dev/null || true' EXIT
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break; sleep 0.1; done
  printf 'wrk.method = "POST"\nwrk.body = %s\nwrk.headers["Content-Type"] = "application/json"\n' "'{\"tag_ids\": [999]}'" > "$API/reject.lua"
  $PY bench/user_tags_lua.py "$RUN/tags.db" "$API/user_tags.lua"
  running() { curl -sf "http://127.0.0.1:$PORT/api/v1/tasks?status=running" | $PY -c "import json,sys; print(json.load(sys.stdin)['total'])"; }
  # wrk_run NAME ARGS...: p50, p99, max, socket errors, unexpected statuses
  # (for user-tags: besides 404), 404s (user-tags only), and how many tasks
  # were still running when the window closed
  wrk_run() {
    local name=$1; shift
    wrk -t2 -c64 --latency "$@" > "$API/$name.wrk"
    local p50 p99 max errors non2xx n404 busy
    busy=$(running)
    p50=$(awk '$1 == "50%" {print $2}' "$API/$name.wrk")
    p99=$(awk '$1 == "99%" {print $2}' "$API/$name.wrk")
    max=$(awk '$1 == "Latency" {print $4; exit}' "$API/$name.wrk")
    errors=$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$API/$name.wrk")
    if grep -q '^status 404:' "$API/$name.wrk"; then
      n404=$(awk '/^status 404:/ {print $3}' "$API/$name.wrk")
      non2xx=$(awk '/^status other:/ {print $3}' "$API/$name.wrk")
    else
      n404=-
      non2xx=$(awk '/Non-2xx/ {print $5}' "$API/$name.wrk")
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$p50" "$p99" "$max" "${errors:-0}" "${non2xx:-0}" "$n404" "$busy" >> "$LATENCY"
    echo "   $name: p50 $p50, p99 $p99, max $max, socket errors ${errors:-0}, unexpected statuses ${non2xx:-0}, 404 $n404, tasks running at the end: $busy"
  }
  # full_runs SLEEP AS_OF...: six full runs (three compute while three wait,
  # so the workers stay busy for the whole window), the i-th with the i-th
  # as_of given (cycling), then SLEEP seconds for them to get going.
  full_runs() {
    local pause=$1; shift
    local dates=("$@")
    for i in 0 1 2 3 4 5; do
      curl -sf -X POST "http://127.0.0.1:$PORT/api/v1/tags/trigger" -H 'Content-Type: application/json' \
        -d "{\"tag_ids\": [1,2,3,4,5,6,7,8], \"as_of\": \"${dates[i % ${#dates[@]}]}\"}" > /dev/null
    done
    sleep "$pause"
  }
  wait_idle() { while [ "$(running)" != 0 ] || [ "$(curl -sf "http://127.0.0.1:$PORT/api/v1/tasks?status=submitted" | $PY -c "import json,sys; print(json.load(sys.stdin)['total'])")" != 0 ]; do sleep 0.5; done; }
  # window_writes NAME: rows written by the six runs of the window just
  # finished (the newest six tasks), once they are all done
  window_writes() {
    wait_idle
    local rows
    rows=$(curl -sf "http://127.0.0.1:$PORT/api/v1/tasks?limit=6" | $PY -c "
import json, sys
tasks = json.load(sys.stdin)['tasks']
r = [t.get('result') or {} for t in tasks]
print(sum(x.get('rows_upserted', 0) + x.get('rows_deleted', 0) for x in r), sum(t['status'] == 'completed' for t in tasks))")
    printf '%s\t%s\n' "$1" "${rows% *}" >> "$WINDOW_WRITES"
    echo "   $1: the six runs wrote ${rows% *} rows (${rows#* } of 6 completed)"
  }
  wrk_run health-idle -d5s "http://127.0.0.1:$PORT/health"
  wrk_run reject-idle -d5s -s "$API/reject.lua" "http://127.0.0.1:$PORT/api/v1/tags/trigger"
  # Busy windows are short enough that the three runs outlast them. The
  # store is empty until the first of these runs commits.
  full_runs 0.5 $AS_OF
  wrk_run health-busy -d3s "http://127.0.0.1:$PORT/health"
  window_writes health-busy
  full_runs 0.5 $AS_OF
  wrk_run reject-busy -d3s -s "$API/reject.lua" "http://127.0.0.1:$PORT/api/v1/tags/trigger"
  window_writes reject-busy
  # The store now holds the tags as of AS_OF. Lookups while runs write: the
  # runs alternate as_of between AS_OF + 90 days (no user is new or
  # recently active: tags 4 and 8 are revoked) and AS_OF (granted again), so
  # each run rewrites the rows of those users.
  wrk_run user-tags-idle -d5s -s "$API/user_tags.lua" "http://127.0.0.1:$PORT"
  full_runs 1 "$(date -d "$AS_OF + 90 days" +%F)" $AS_OF
  wrk_run user-tags-busy -d3s -s "$API/user_tags.lua" "http://127.0.0.1:$PORT"
  window_writes user-tags-busy
  kill $SERVER; wait $SERVER 2>/dev/null || true
  trap - EXIT
fi

echo
echo "== results: $USERS users, 8 tags, as_of $AS_OF"
$PY - "$RESULTS" "$LATENCY" "$RERUN_WRITES" "$INC_USERS" "$ROUNDS_TSV" "$INC_WRITES" "$WINDOW_WRITES" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
res = {name: (float(secs), int(mb)) for name, secs, mb in rows}
ours = res["tag-server-full"][0]
print(f"{'run':<26}{'wall s':>9}{'peak MB':>9}{'time / ours':>13}")
for name, (secs, mb) in res.items():
    ratio = f"{secs / ours:.2f}x" if not name.startswith("tag-server") else ""
    print(f"{name:<26}{secs:>9.2f}{mb:>9}{ratio:>13}")
print(f"re-run on unchanged data: {sys.argv[3]} rows written, {res['tag-server-rerun'][0] / ours:.2f}x the first run")
print(f"incremental after 2% of activity rows changed, as a new part file: {sys.argv[4]} users evaluated, "
      f"{sys.argv[6]} rows written, {res['tag-server-incremental'][0] / ours:.2f}x the first run")
for name in ("mariadb", "postgres"):
    if f"tag-server-{name}" in res:
        first, rerun = res[f"tag-server-{name}"][0], res[f"tag-server-{name}-rerun"][0]
        print(f"into {name}: first run {first:.2f} s ({first / ours:.2f}x SQLite), re-run {rerun:.2f} s")
if "pyspark-jdbc-mariadb" in res:
    spark, mine = res["pyspark-jdbc-mariadb"][0], res["tag-server-mariadb"][0]
    print(f"PySpark -> MariaDB over JDBC (the replaced system's way): {spark:.2f} s, {spark / mine:.2f}x ours into MariaDB")
# Per round: wall s of ours, duckdb, duckdb-table, baseline, then the same
# four as CPU s (the baseline's empty without BASELINE_BIN).
rounds = [[float(x) if x else None for x in l.rstrip("\n").split("\t")] for l in open(sys.argv[5]) if l.strip()]
if rounds:
    for kind, at in (("wall", 0), ("CPU", 4)):
        listed = ", ".join(f"{r[at]:.2f}/{r[at + 1]:.2f}/{r[at + 2]:.2f}" for r in rounds)
        print(f"first run vs DuckDB, {len(rounds)} alternating rounds, {kind} (ours/duckdb/duckdb-table s): {listed}")
        for label, col in (("duckdb", 1), ("duckdb-table", 2)):
            ratios = [r[at + col] / r[at] for r in rounds]
            print(f"  {label + ' / ours':<20} {kind:>4} per round: {', '.join(f'{r:.2f}x' for r in ratios)}; median {statistics.median(ratios):.2f}x")
        if all(r[at + 3] for r in rounds):
            ratios = [r[at] / r[at + 3] for r in rounds]
            print(f"  {'ours / baseline':<20} {kind:>4} per round: {', '.join(f'{r:.3f}x' for r in ratios)}; median {statistics.median(ratios):.3f}x")
lat = [l.rstrip("\n").split("\t") for l in open(sys.argv[2]) if l.strip()]
writes = dict(l.rstrip("\n").split("\t") for l in open(sys.argv[7]) if l.strip())
if lat:
    print(f"{'API, 64 connections':<26}{'p50':>9}{'p99':>9}{'max':>9}{'errors':>8}{'non-2xx':>9}{'404':>8}{'running':>9}{'written':>9}")
    for name, p50, p99, mx, errors, non2xx, n404, busy in lat:
        print(f"{name:<26}{p50:>9}{p99:>9}{mx:>9}{errors:>8}{non2xx:>9}{n404:>8}{busy:>9}{writes.get(name, '-'):>9}")
    print("(a rejected trigger answers 400 by design: its non-2xx count is every request; for user-tags, non-2xx")
    print(" excludes 404, a user without tags; running: tasks still running when the window closed; written: rows")
    print(" the window's six full runs wrote)")
PY
