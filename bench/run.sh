#!/usr/bin/env bash
# tag-server against DuckDB, Polars and (optionally) PySpark on the same data,
# in one run: wall time, peak memory and each anchor's time / ours.
#
#   bench/run.sh [--users N] [--10m] [--spark] [--rounds N]
#
# --rounds N (default 1) repeats the first full run and DuckDB N more times,
# alternating, and reports each round's ratio and the median: on a shared
# 2-core machine single timings vary by 20% or more.
#
# Needs python3 (a virtualenv with duckdb, polars, pyarrow[, pyspark] is made
# in bench/.venv), wrk for the API latency part (installed with apt-get when
# missing and run as root) and /usr/bin/time. Everything it writes goes to bench/out/.
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=1000000
SPARK=0
ROUNDS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --users) USERS="$2"; shift 2 ;;
    --10m) USERS=10000000; shift ;;
    --spark) SPARK=1; shift ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    *) echo "usage: bench/run.sh [--users N] [--10m] [--spark] [--rounds N]" >&2; exit 2 ;;
  esac
done
AS_OF=2025-01-15
OUT=bench/out
DATA=$OUT/data-$USERS
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/tag-engine-target}"
BIN=$CARGO_TARGET_DIR/release/tag-server
mkdir -p "$OUT"

echo "== building (release)"
cargo build --release --quiet
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
measure polars $PY bench/anchors.py polars "$DATA" "$RUN/polars.parquet" $AS_OF
ANCHOR_OUT="$RUN/duckdb.parquet $RUN/polars.parquet"
if [ "$SPARK" = 1 ]; then
  measure pyspark $PY bench/anchors.py spark "$DATA" "$RUN/spark.parquet" $AS_OF
  ANCHOR_OUT="$ANCHOR_OUT $RUN/spark.parquet"
fi
echo "== same tag sets?"
$PY bench/compare.py "$RUN/tags.db" $ANCHOR_OUT

ROUNDS_TSV=$OUT/rounds.tsv
: > "$ROUNDS_TSV"
if [ "$ROUNDS" -gt 1 ]; then
  echo "== $ROUNDS rounds: first full run and DuckDB, alternating"
  for i in $(seq "$ROUNDS"); do
    rm -rf "$RUN/round"; mkdir -p "$RUN/round"
    /usr/bin/time -f "%e" -o "$RUN/round/ours.time" "$BIN" run --tag-ids $TAGS --data-dir "$DATA" --store "sqlite://$RUN/round/tags.db" --as-of $AS_OF > /dev/null 2>&1
    /usr/bin/time -f "%e" -o "$RUN/round/duck.time" $PY bench/anchors.py duckdb "$DATA" "$RUN/round/duckdb.parquet" $AS_OF > /dev/null 2>&1
    ours=$(cat "$RUN/round/ours.time"); duck=$(cat "$RUN/round/duck.time")
    printf '%s\t%s\n' "$ours" "$duck" >> "$ROUNDS_TSV"
    echo "   round $i: tag-server ${ours}s, duckdb ${duck}s"
  done
fi

echo "== incremental run after 1% of the activity rows changed"
INC=$OUT/inc-$USERS
rm -rf "$INC"; cp -r "$DATA" "$INC"
$PY bench/touch_one_percent.py "$INC"
measure tag-server-incremental "$BIN" run --tag-ids $TAGS --data-dir "$INC" --store "$STORE" --as-of $AS_OF --mode incremental
INC_USERS=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['result']['total_users'])" "$OUT/tag-server-incremental.out")

LATENCY=$OUT/latency.tsv
: > "$LATENCY"
if command -v wrk >/dev/null; then
  echo "== API latency, 64 connections"
  PORT=5099
  API=$OUT/api-$USERS; rm -rf "$API"; mkdir -p "$API"
  "$BIN" --data-dir "$DATA" --store "sqlite://$API/tags.db" --port $PORT --host 127.0.0.1 --log-file "$API/api_server.log" > /dev/null 2>&1 &
  SERVER=$!
  trap 'kill $SERVER 2>/dev/null || true' EXIT
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break; sleep 0.1; done
  printf 'wrk.method = "POST"\nwrk.body = %s\nwrk.headers["Content-Type"] = "application/json"\n' "'{\"tag_ids\": [999]}'" > "$API/reject.lua"
  running() { curl -sf "http://127.0.0.1:$PORT/api/v1/tasks?status=running" | $PY -c "import json,sys; print(json.load(sys.stdin)['total'])"; }
  # wrk_run NAME ARGS...: p50, p99, max, socket errors, unexpected statuses,
  # and how many tasks were still running when the window closed
  wrk_run() {
    local name=$1; shift
    wrk -t2 -c64 --latency "$@" > "$API/$name.wrk"
    local p50 p99 max errors non2xx busy
    busy=$(running)
    p50=$(awk '$1 == "50%" {print $2}' "$API/$name.wrk")
    p99=$(awk '$1 == "99%" {print $2}' "$API/$name.wrk")
    max=$(awk '$1 == "Latency" {print $4; exit}' "$API/$name.wrk")
    errors=$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$API/$name.wrk")
    non2xx=$(awk '/Non-2xx/ {print $5}' "$API/$name.wrk")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$p50" "$p99" "$max" "${errors:-0}" "${non2xx:-0}" "$busy" >> "$LATENCY"
    echo "   $name: p50 $p50, p99 $p99, max $max, socket errors ${errors:-0}, non-2xx ${non2xx:-0}, tasks running at the end: $busy"
  }
  # Six full runs: three compute while three wait, so the workers stay busy
  # for the whole window.
  full_runs() {
    for _ in 1 2 3 4 5 6; do
      curl -sf -X POST "http://127.0.0.1:$PORT/api/v1/tags/trigger" -H 'Content-Type: application/json' \
        -d "{\"tag_ids\": [1,2,3,4,5,6,7,8], \"as_of\": \"$AS_OF\"}" > /dev/null
    done
    sleep 0.5
  }
  wait_idle() { while [ "$(running)" != 0 ]; do sleep 0.5; done; }
  wrk_run health-idle -d5s "http://127.0.0.1:$PORT/health"
  wrk_run reject-idle -d5s -s "$API/reject.lua" "http://127.0.0.1:$PORT/api/v1/tags/trigger"
  # Busy windows are short enough that the three runs outlast them.
  full_runs
  wrk_run health-busy -d3s "http://127.0.0.1:$PORT/health"
  wait_idle
  full_runs
  wrk_run reject-busy -d3s -s "$API/reject.lua" "http://127.0.0.1:$PORT/api/v1/tags/trigger"
  wait_idle
  kill $SERVER; wait $SERVER 2>/dev/null || true
  trap - EXIT
fi

echo
echo "== results: $USERS users, 8 tags, as_of $AS_OF"
$PY - "$RESULTS" "$LATENCY" "$RERUN_WRITES" "$INC_USERS" "$ROUNDS_TSV" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
res = {name: (float(secs), int(mb)) for name, secs, mb in rows}
ours = res["tag-server-full"][0]
print(f"{'run':<26}{'wall s':>9}{'peak MB':>9}{'time / ours':>13}")
for name, (secs, mb) in res.items():
    ratio = f"{secs / ours:.2f}x" if not name.startswith("tag-server") else ""
    print(f"{name:<26}{secs:>9.2f}{mb:>9}{ratio:>13}")
print(f"re-run on unchanged data: {sys.argv[3]} rows written, {res['tag-server-rerun'][0] / ours:.2f}x the first run")
print(f"incremental after 1% changed: {sys.argv[4]} users evaluated, {res['tag-server-incremental'][0] / ours:.2f}x the first run")
rounds = [tuple(map(float, l.split())) for l in open(sys.argv[5]) if l.strip()]
if rounds:
    ratios = [duck / ours for ours, duck in rounds]
    listed = ", ".join(f"{o:.2f}/{d:.2f}" for o, d in rounds)
    print(f"first run vs DuckDB, {len(rounds)} alternating rounds (ours/duckdb s): {listed}")
    print(f"  duckdb / ours per round: {', '.join(f'{r:.2f}x' for r in ratios)}; median {statistics.median(ratios):.2f}x")
lat = [l.rstrip("\n").split("\t") for l in open(sys.argv[2]) if l.strip()]
if lat:
    print(f"{'API, 64 connections':<26}{'p50':>9}{'p99':>9}{'max':>9}{'errors':>8}{'non-2xx':>9}{'running':>9}")
    for name, p50, p99, mx, errors, non2xx, busy in lat:
        print(f"{name:<26}{p50:>9}{p99:>9}{mx:>9}{errors:>8}{non2xx:>9}{busy:>9}")
    print("(a rejected trigger answers 400 by design: its non-2xx count is every request)")
PY
