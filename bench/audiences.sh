#!/usr/bin/env bash
# Audiences at scale, side by side in one run, on data DuckDB wrote
# (bench/external_data.py: not gen-data's):
#
# 1. The first full run of the eight reference tags into a fresh SQLite
#    store, this build and BASELINE_BIN (a build without the bitmaps)
#    alternating, each under /usr/bin/time: wall, CPU, peak RSS and the
#    commit's own time (logged commit_ms); ratios ours / baseline, and
#    their medians (--first-run-only stops there).
# 2. tag-server serving that store: its RSS before and after the bitmaps
#    are loaded (the first question loads them).
# 3. Counts under load: CONNS connections, each asking EACH questions (eight
#    expressions over up to eight tags, bench/audience_load.py), timed on the
#    client, and the same questions from wrk for 20 s when it is installed
#    (bench/audience_wrk.lua: a C client, which leaves the server more of
#    the two cores than the Python one); the same questions asked of DuckDB over a parquet export of
#    user_tags and of PostgreSQL over the same rows (tag_ids jsonb, JSON
#    containment), each with CONNS connections; every system's counts must
#    be equal (checked).
# 4. A parquet export of the audience nearest 3M members with curl: rows per
#    second, and the server's RSS rise during it (sampled every 20 ms).
#
#   TAG_SERVER_BIN=path [BASELINE_BIN=path] bench/audiences.sh [--users N]
#       [--rounds N] [--conns N] [--each N] [--anchor-each N] [--first-run-only]
#
# Defaults: 10,000,000 users, 2 rounds, 64 connections, 40 questions each
# for the server, 1 each for DuckDB and PostgreSQL (a question takes them
# tens of milliseconds to seconds). PostgreSQL: a fresh database
# bench_audiences on 127.0.0.1:5432 (user postgres), dropped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=10000000 ROUNDS=2 CONNS=64 EACH=40 ANCHOR_EACH=1 FIRST_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --users) USERS="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --conns) CONNS="$2"; shift 2 ;;
    --each) EACH="$2"; shift 2 ;;
    --anchor-each) ANCHOR_EACH="$2"; shift 2 ;;
    --first-run-only) FIRST_ONLY=1; shift ;;
    *) echo "usage: bench/audiences.sh [--users N] [--rounds N] [--conns N] [--each N] [--anchor-each N] [--first-run-only]" >&2; exit 2 ;;
  esac
done
BIN="${TAG_SERVER_BIN:?set TAG_SERVER_BIN to a release tag-server}"
BASE="${BASELINE_BIN:-}"
. bench/ext_data.sh
"$VENV/bin/python" -c "import psycopg, pyarrow" 2>/dev/null || "$VENV/bin/pip" install -q "psycopg[binary]" pyarrow
PY="$VENV/bin/python"

# The first run of $2 into a fresh store named $1; prints
# "wall cpu rss_kib commit_ms".
first_run() {
  local name="$1" bin="$2"
  rm -f "$OUT/aud-$name.db"* "$OUT/aud-$name.log"
  /usr/bin/time -f "%e %U %S %M" -o "$OUT/aud-$name.time" \
    "$bin" run --quiet --data-dir "$DATA" --store "sqlite://$PWD/$OUT/aud-$name.db" \
      --tag-ids 1,2,3,4,5,6,7,8 --as-of 2025-01-15 --log-file "$OUT/aud-$name.log" \
      --plugins-dir "$(dirname "$bin")" > "$OUT/aud-$name.json"
  "$PY" - "$OUT/aud-$name" <<'EOF'
import json, re, sys
base = sys.argv[1]
wall, user, system, rss = open(base + ".time").read().split()[-4:]
report = json.load(open(base + ".json"))["result"]
log = open(base + ".log").read()
commit = re.findall(r'commit_ms"?[=:]\s*"?(\d+)', log)
print(wall, round(float(user) + float(system), 2), rss, commit[-1] if commit else 0)
EOF
}

echo "== 1. first run of 8 tags, $USERS users, SQLite: wall s, CPU s, peak RSS KiB, commit ms"
RATIOS="$OUT/aud-ratios"; : > "$RATIOS"
for round in $(seq 1 "$ROUNDS"); do
  ours=$(first_run "ours" "$BIN"); echo "round $round ours:     $ours"
  if [ -n "$BASE" ]; then
    base=$(first_run "base" "$BASE"); echo "round $round baseline: $base"
    "$PY" -c "
o, b = [list(map(float, s.split())) for s in ('$ours', '$base')]
print('round $round ours/baseline: wall %.3f  CPU %.3f  commit %.3f' % (o[0]/b[0], o[1]/b[1], o[3]/b[3]))
open('$RATIOS', 'a').write('%f %f\\n' % (o[0]/b[0], o[1]/b[1]))"
  fi
done
if [ -n "$BASE" ]; then
  "$PY" -c "
import statistics
rows = [list(map(float, l.split())) for l in open('$RATIOS')]
print('median ours/baseline: wall %.3f  CPU %.3f' % (statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)))"
fi
[ "$FIRST_ONLY" = 1 ] && exit 0

echo "== 2. serving: RSS before and after the bitmaps load"
PORT=$("$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
"$BIN" --port "$PORT" --host 127.0.0.1 --data-dir "$DATA" --store "sqlite://$PWD/$OUT/aud-ours.db" \
  --plugins-dir "$(dirname "$BIN")" --log-file "$OUT/aud-serve.log" --env local > /dev/null 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS bench_audiences WITH (FORCE)" postgres >/dev/null 2>&1 || true' EXIT
until curl -sf "http://127.0.0.1:$PORT/health" > /dev/null; do sleep 0.2; done
rss() { awk '/VmRSS/ {print $2}' "/proc/$SERVER/status"; }
before=$(rss)
curl -sf -X POST "http://127.0.0.1:$PORT/api/v1/audiences/query" -H 'Content-Type: application/json' \
  -d '{"expr": "1", "limit": 0}' > /dev/null
after=$(rss)
echo "RSS before ${before} KiB, after ${after} KiB: the bitmaps add $(( (after - before) / 1024 )) MiB"

echo "== 3. counts under load: $CONNS connections"
echo "each expression asked once, before anything is remembered (one connection):"
"$PY" bench/audience_load.py cold "127.0.0.1:$PORT"
"$PY" bench/audience_load.py server "127.0.0.1:$PORT" "$CONNS" "$EACH" | tee "$OUT/aud-load-server.json"
if command -v wrk > /dev/null; then
  # The Python client takes much of the two cores itself; wrk (C, epoll)
  # little. Same questions, same connections, closed loop, 20 s.
  echo "the same questions from wrk, $CONNS connections, 20 s:"
  cpu() { awk '{print $14 + $15}' "/proc/$SERVER/stat"; }
  c0=$(cpu)
  wrk -t2 -c"$CONNS" -d20s --latency -s bench/audience_wrk.lua "http://127.0.0.1:$PORT" | tee "$OUT/aud-load-wrk.txt"
  c1=$(cpu)
  echo "server CPU during it: $(( (c1 - c0) / $(getconf CLK_TCK) )) s in 20 s of wall time"
else
  echo "(no wrk: apt-get install wrk for the figures from a C client)"
fi
echo "the same with a first page of 100 members each (computed every time):"
"$PY" bench/audience_load.py server "127.0.0.1:$PORT" "$CONNS" "$EACH" 100 | tee "$OUT/aud-load-server-pages.json"
echo "server's own histogram (http_request_duration_seconds, the query route):"
curl -sf "http://127.0.0.1:$PORT/metrics" | grep 'audiences/query' | grep -E '_bucket.*le="0.00(2|4|8)|_count' | head -4 || true
# user_tags exported by tag-server's own view through Python's sqlite3 (no DuckDB extension needed).
"$PY" - "$OUT" <<'EOF'
import json, sqlite3, sys, duckdb
out = sys.argv[1]
rows = sqlite3.connect(f"{out}/aud-ours.db").execute("SELECT user_id, tag_ids FROM user_tags")
import pyarrow as pa, pyarrow.parquet as pq
writer = None
while True:
    chunk = rows.fetchmany(500_000)
    if not chunk:
        break
    table = pa.table({"user_id": [r[0] for r in chunk], "tag_ids": [json.loads(r[1]) for r in chunk]},
                     schema=pa.schema([("user_id", pa.string()), ("tag_ids", pa.list_(pa.int32()))]))
    writer = writer or pq.ParquetWriter(f"{out}/aud-user_tags.parquet", table.schema)
    writer.write_table(table)
writer.close()
EOF
"$PY" bench/audience_load.py duckdb "$OUT/aud-user_tags.parquet" "$CONNS" "$ANCHOR_EACH" | tee "$OUT/aud-load-duckdb.json"
psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS bench_audiences WITH (FORCE)" -c "CREATE DATABASE bench_audiences" postgres
"$PY" - "$OUT" <<'EOF'
import duckdb, psycopg, sys
out = sys.argv[1]
duckdb.sql(f"COPY (SELECT user_id, to_json(tag_ids) AS tag_ids FROM '{out}/aud-user_tags.parquet') TO '{out}/aud-user_tags.csv' (HEADER false)")
with psycopg.connect("postgresql://postgres@127.0.0.1:5432/bench_audiences", autocommit=True) as c:
    c.execute("CREATE TABLE user_tags (user_id TEXT PRIMARY KEY, tag_ids JSONB NOT NULL)")
    with c.cursor().copy("COPY user_tags FROM STDIN WITH (FORMAT csv)") as copy, open(f"{out}/aud-user_tags.csv", "rb") as f:
        while data := f.read(1 << 20):
            copy.write(data)
    c.execute("VACUUM ANALYZE user_tags")
EOF
"$PY" bench/audience_load.py postgres "postgresql://postgres@127.0.0.1:5432/bench_audiences" user_tags "$CONNS" "$ANCHOR_EACH" | tee "$OUT/aud-load-postgres.json"
"$PY" - "$OUT" <<'EOF'
import json, sys
out = sys.argv[1]
runs = {s: json.load(open(f"{out}/aud-load-{s}.json")) for s in ("server", "duckdb", "postgres")}
assert runs["server"]["counts"] == runs["duckdb"]["counts"] == runs["postgres"]["counts"], runs
print("counts equal on all three systems:", runs["server"]["counts"])
for s, r in runs.items():
    print(f"{s:9} p50 {r['p50_ms']:>9} ms  p99 {r['p99_ms']:>9} ms  max {r['max_ms']:>9} ms  {r['per_second']:>8}/s  ({r['questions']} questions)")
print("p99 ratio server/duckdb %.4f  server/postgres %.5f" % (runs["server"]["p99_ms"] / runs["duckdb"]["p99_ms"], runs["server"]["p99_ms"] / runs["postgres"]["p99_ms"]))
EOF

echo "== 4. a parquet export of the audience nearest 3M members"
EXPR=$("$PY" - "http://127.0.0.1:$PORT" <<'EOF'
import itertools, json, sys, urllib.request
base = sys.argv[1]
def count(e):
    r = urllib.request.Request(base + "/api/v1/audiences/query", json.dumps({"expr": e, "limit": 0}).encode(), {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(r))["count"]
candidates = [str(t) for t in range(1, 9)] + [f"{a} OR {b}" for a, b in itertools.combinations(range(1, 9), 2)]
print(min(candidates, key=lambda e: abs(count(e) - 3_000_000)))
EOF
)
ENCODED=$("$PY" -c "import urllib.parse,sys; print(urllib.parse.quote(sys.argv[1]))" "$EXPR")
before=$(rss); peak=$before
start=$(date +%s.%N)
curl -sf -o "$OUT/aud-export.parquet" "http://127.0.0.1:$PORT/api/v1/audiences/query?expr=$ENCODED&format=parquet" &
CURL=$!
while kill -0 $CURL 2>/dev/null; do now=$(rss); [ "$now" -gt "$peak" ] && peak=$now; sleep 0.02; done
wait $CURL
end=$(date +%s.%N)
"$PY" - "$OUT/aud-export.parquet" "$start" "$end" "$before" "$peak" "$EXPR" <<'EOF'
import sys, pyarrow.parquet as pq
path, start, end, before, peak, expr = sys.argv[1:]
rows = pq.ParquetFile(path).metadata.num_rows
secs = float(end) - float(start)
print(f"export of '{expr}': {rows} rows in {secs:.2f} s = {rows / secs / 1e6:.2f}M rows/s; RSS {int(before)//1024} -> peak {int(peak)//1024} MiB (+{(int(peak)-int(before))//1024} MiB)")
EOF
