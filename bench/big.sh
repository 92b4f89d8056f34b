#!/usr/bin/env bash
# A run far beyond memory, side by side with DuckDB in one run: gen-data
# writes N users (default 100,000,000; streamed, it says how much disk it
# needs first), tag-server computes the eight tags under its default memory
# limit into SQLite, and DuckDB computes the same rules to parquet with
# memory_limit='4GB' and 2 threads (compute only; each table's newest row per
# user kept by a grouped arg_max, which DuckDB spills to disk: the window
# form bench/run.sh uses runs out of memory at 100M users under 4GB, with or
# without preserve_insertion_order; --duckdb-dedup window to see it). Each
# under /usr/bin/time:
# wall, CPU (user + system), system and peak RSS; then the ratio ours /
# DuckDB, and both tag sets compared by an order-free digest
# (bench/digest.py: count and md5 sum of every user's tag set).
#
#   TAG_SERVER_BIN=path bench/big.sh [--users N] [--limit SIZE] [--duckdb-dedup aggregate|window]
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=100000000 LIMIT="" DEDUP=aggregate
while [ $# -gt 0 ]; do
  case "$1" in
    --users) USERS="$2"; shift 2 ;;
    --limit) LIMIT="$2"; shift 2 ;;
    --duckdb-dedup) DEDUP="$2"; shift 2 ;;
    *) echo "usage: bench/big.sh [--users N] [--limit SIZE] [--duckdb-dedup aggregate|window]" >&2; exit 2 ;;
  esac
done
BIN="${TAG_SERVER_BIN:?set TAG_SERVER_BIN to a release tag-server}"
OUT=bench/out DATA=bench/out/data-$USERS AS_OF=2025-01-15 VENV=bench/.venv
mkdir -p "$OUT"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c "import duckdb, pyarrow" 2>/dev/null || "$VENV/bin/pip" install -q duckdb pyarrow
export TAG_PLUGINS_DIR="${TAG_PLUGINS_DIR:-$(dirname "$BIN")}"
[ -f "$DATA/user_basic_info.parquet" ] ||
  "$BIN" gen-data --users "$USERS" --out "$DATA" --reference-date "$AS_OF" --seed 42
rm -f "$OUT/big.db"*
limit=()
[ -z "$LIMIT" ] || limit=(--memory-limit "$LIMIT")
/usr/bin/time -f "%e %U %S %M" -o "$OUT/big-ours.time" \
  "$BIN" run --quiet --data-dir "$DATA" --store "sqlite://$PWD/$OUT/big.db" --tag-ids 1,2,3,4,5,6,7,8 \
    --as-of "$AS_OF" --log-file "$OUT/big.log" --spill-dir "$OUT/spill" "${limit[@]}" > "$OUT/big-ours.json"
cat > "$OUT/big-duckdb.py" <<EOF
import sys; sys.path.insert(0, "bench")
import duckdb, anchors
con = duckdb.connect()
con.execute("SET threads TO 2")
con.execute("SET memory_limit = '4GB'")
# DuckDB's own advice when it runs out of memory (it did, at 100M users, without it).
con.execute("SET preserve_insertion_order = false")
con.execute("SET temp_directory = '$OUT/duckdb-tmp'")
con.execute(f"COPY ({anchors.duckdb_tagged('$DATA', '$AS_OF', '$DEDUP')}) TO '$OUT/big-duckdb.parquet' (FORMAT parquet)")
EOF
/usr/bin/time -f "%e %U %S %M" -o "$OUT/big-duckdb.time" "$VENV/bin/python" "$OUT/big-duckdb.py"
python3 - "$OUT" "$USERS" <<'EOF'
import json, sys
out, users = sys.argv[1], sys.argv[2]
rows = {}
for name in ("ours", "duckdb"):
    wall, user, sys_, rss = open(f"{out}/big-{name}.time").read().split()
    rows[name] = (float(wall), float(user) + float(sys_), float(sys_), int(rss) // 1024)
    print(f"{name:7} wall {rows[name][0]:8.1f} s  CPU {rows[name][1]:8.1f} s  sys {rows[name][2]:7.1f} s  peak {rows[name][3]:6d} MiB")
memory = json.load(open(f"{out}/big-ours.json"))["result"]["memory"]
print(f"ours: {memory['partitions']} partitions, estimate {memory['estimate_bytes'] / 2**30:.1f} GiB, limit {memory['limit_bytes'] / 2**30:.1f} GiB, spilled {memory['spill_bytes'] / 2**30:.1f} GiB")
print(f"ours / DuckDB ({users} users): wall {rows['ours'][0] / rows['duckdb'][0]:.3f}x, CPU {rows['ours'][1] / rows['duckdb'][1]:.3f}x")
EOF
ours=$("$VENV/bin/python" bench/digest.py sqlite "$OUT/big.db")
theirs=$("$VENV/bin/python" bench/digest.py parquet "$OUT/big-duckdb.parquet")
echo "digest ours: $ours, DuckDB: $theirs"
[ "$ours" = "$theirs" ] && echo "tag sets equal" || { echo "tag sets differ" >&2; exit 1; }
