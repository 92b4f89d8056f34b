#!/usr/bin/env bash
# Runs beyond memory, side by side in one run: the same first full run of the
# eight reference tags with and without --memory-limit, alternating, on data
# DuckDB wrote (bench/external_data.py: not gen-data's), each under
# /usr/bin/time: wall and CPU seconds (user + system, and system alone), peak
# RSS, the partitions the run used, and the ratios limited / unlimited, per
# round and their medians. Both runs' user_tags must be equal (checked).
#
#   TAG_SERVER_BIN=path bench/partitions.sh [--users N] [--limit SIZE] [--rounds N]
#                                          [--store sqlite|postgres|mariadb]
#
# Defaults: 10,000,000 users, 512MiB, 3 rounds, SQLite. --store postgres uses
# a fresh database bench_parts_<n> on 127.0.0.1:5432 (user postgres),
# mariadb one on 127.0.0.1:3306 (root). Data goes to bench/out/ext-<N>.
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=10000000 LIMIT=512MiB ROUNDS=3 STORE=sqlite
while [ $# -gt 0 ]; do
  case "$1" in
    --users) USERS="$2"; shift 2 ;;
    --limit) LIMIT="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --store) STORE="$2"; shift 2 ;;
    *) echo "usage: bench/partitions.sh [--users N] [--limit SIZE] [--rounds N] [--store sqlite|postgres|mariadb]" >&2; exit 2 ;;
  esac
done
BIN="${TAG_SERVER_BIN:?set TAG_SERVER_BIN to a release tag-server}"
. bench/ext_data.sh
export TAG_PLUGINS_DIR="${TAG_PLUGINS_DIR:-$(dirname "$BIN")}"

# A fresh store URL for run $1 (sqlite file, or a new database).
store_url() {
  case "$STORE" in
    sqlite) rm -f "$OUT/parts-$1.db"*; echo "sqlite://$PWD/$OUT/parts-$1.db" ;;
    postgres)
      psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS bench_parts_$1 WITH (FORCE)" -c "CREATE DATABASE bench_parts_$1" postgres
      echo "postgres://postgres@127.0.0.1:5432/bench_parts_$1" ;;
    mariadb)
      mysql -h 127.0.0.1 -u root -e "DROP DATABASE IF EXISTS bench_parts_$1; CREATE DATABASE bench_parts_$1 CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
      echo "mysql://root@127.0.0.1:3306/bench_parts_$1" ;;
  esac
}

# One run: $1 = name, the rest = extra flags. Prints "wall cpu sys rss_kib partitions".
one_run() {
  local name="$1"; shift
  local url; url=$(store_url "$name")
  /usr/bin/time -f "%e %U %S %M" -o "$OUT/parts-$name.time" \
    "$BIN" run --quiet --data-dir "$DATA" --store "$url" --tag-ids 1,2,3,4,5,6,7,8 \
      --as-of 2025-01-15 --log-file "$OUT/parts-$name.log" --spill-dir "$OUT/spill" "$@" \
      > "$OUT/parts-$name.json"
  read -r wall user sys rss < "$OUT/parts-$name.time"
  local parts; parts=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['result']['memory']['partitions'])" "$OUT/parts-$name.json")
  echo "$wall $(python3 -c "print(round($user + $sys, 2))") $sys $rss $parts"
}

# user_tags of run $1, as a digest of sorted (user_id, tag_ids).
digest() {
  case "$STORE" in
    sqlite) python3 -c "import sqlite3,sys,hashlib; c=sqlite3.connect(sys.argv[1]); h=hashlib.sha256(); [h.update(f'{u}:{t};'.encode()) for u,t in c.execute('select user_id, tag_ids from user_tags order by user_id')]; print(h.hexdigest())" "$OUT/parts-$1.db" ;;
    postgres) psql -qAt -h 127.0.0.1 -U postgres -d "bench_parts_$1" -c "SELECT md5(string_agg(user_id || ':' || tag_ids::text, ';' ORDER BY user_id)) FROM user_tags" ;;
    mariadb) mysql -N -h 127.0.0.1 -u root "bench_parts_$1" -e "SET SESSION group_concat_max_len = 4294967295; SELECT md5(GROUP_CONCAT(user_id, ':', tag_ids ORDER BY user_id SEPARATOR ';')) FROM user_tags" ;;
  esac
}

echo "users=$USERS limit=$LIMIT store=$STORE rounds=$ROUNDS data=$DATA"
printf "%-6s %-10s %8s %8s %8s %10s %6s\n" round run wall_s cpu_s sys_s peak_MiB parts
ratios=()
for round in $(seq "$ROUNDS"); do
  read -r w0 c0 s0 r0 p0 < <(one_run whole)
  read -r w1 c1 s1 r1 p1 < <(one_run limited --memory-limit "$LIMIT")
  printf "%-6s %-10s %8s %8s %8s %10d %6s\n" "$round" unlimited "$w0" "$c0" "$s0" $((r0 / 1024)) "$p0"
  printf "%-6s %-10s %8s %8s %8s %10d %6s\n" "$round" "$LIMIT" "$w1" "$c1" "$s1" $((r1 / 1024)) "$p1"
  [ "$(digest whole)" = "$(digest limited)" ] || { echo "user_tags differ between the runs" >&2; exit 1; }
  ratios+=("$(python3 -c "print(f'{$w1 / $w0:.3f} {$c1 / $c0:.3f}')")")
  echo "       limited/unlimited: wall and CPU ${ratios[-1]// /x, }x"
done
python3 - "${ratios[@]}" <<'EOF'
import statistics, sys
walls = [float(r.split()[0]) for r in sys.argv[1:]]
cpus = [float(r.split()[1]) for r in sys.argv[1:]]
print(f"limited / unlimited, median of {len(walls)} rounds: wall {statistics.median(walls):.3f}x, CPU {statistics.median(cpus):.3f}x")
print("user_tags equal in every round")
EOF
