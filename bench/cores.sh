#!/usr/bin/env bash
# Every core: the first full run of the eight reference tags into a fresh
# SQLite store at the default memory limit, on data DuckDB wrote
# (bench/external_data.py: not gen-data's), on all cores and pinned to one
# (`taskset -c 0`), alternating, each under /usr/bin/time: wall, CPU (user +
# system), the kernel's share of the CPU, CPU / wall, peak RSS and the
# partitions the run used; per round, one core / all cores; medians at the
# end. With BASELINE_BIN, each round also runs that build on all cores and
# prints ours / baseline (does a change pay?). Both builds' user_tags must
# be equal (checked).
#
#   TAG_SERVER_BIN=path [BASELINE_BIN=path] bench/cores.sh [--users N] [--rounds N]
#                                                          [-- extra tag-server flags]
#
# Defaults: 10,000,000 users, 3 rounds. Data goes to bench/out/ext-<N>.
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=10000000 ROUNDS=3 EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --users) USERS="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "usage: bench/cores.sh [--users N] [--rounds N] [-- flags]" >&2; exit 2 ;;
  esac
done
BIN="${TAG_SERVER_BIN:?set TAG_SERVER_BIN to a release tag-server}"
BASE="${BASELINE_BIN:-}"
. bench/ext_data.sh
command -v taskset >/dev/null || { echo "taskset (util-linux) is needed" >&2; exit 1; }

# One run: $1 = name, $2 = binary, the rest = a command prefix (taskset).
# Prints "wall cpu sys rss_kib partitions".
one_run() {
  local name="$1" bin="$2"; shift 2
  rm -f "$OUT/cores-$name.db"*
  /usr/bin/time -f "%e %U %S %M" -o "$OUT/cores-$name.time" "$@" \
    "$bin" run --quiet --data-dir "$DATA" --store "sqlite://$PWD/$OUT/cores-$name.db" \
      --tag-ids 1,2,3,4,5,6,7,8 --as-of 2025-01-15 --log-file "$OUT/cores-$name.log" \
      --plugins-dir "$(dirname "$bin")" "${EXTRA[@]}" > "$OUT/cores-$name.json"
  read -r wall user sys rss < "$OUT/cores-$name.time"
  local parts; parts=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['result']['memory']['partitions'])" "$OUT/cores-$name.json" 2>/dev/null || echo -)
  echo "$wall $(python3 -c "print(round($user + $sys, 2))") $sys $rss $parts"
}

digest() {
  python3 -c "import sqlite3,sys,hashlib; c=sqlite3.connect(sys.argv[1]); h=hashlib.sha256(); [h.update(f'{u}:{t};'.encode()) for u,t in c.execute('select user_id, tag_ids from user_tags order by user_id')]; print(h.hexdigest())" "$OUT/cores-$1.db"
}

row() { # name wall cpu sys rss parts
  printf "%-6s %-12s %8s %8s %8s %7s %8s %9d %6s\n" "$round" "$1" "$2" "$3" "$4" \
    "$(python3 -c "print(f'{$4 / $3:.0%}')")" "$(python3 -c "print(f'{$3 / $2:.2f}')")" $(($5 / 1024)) "$6"
}

echo "users=$USERS rounds=$ROUNDS data=$DATA cores=$(nproc)"
printf "%-6s %-12s %8s %8s %8s %7s %8s %9s %6s\n" round run wall_s cpu_s sys_s kernel cpu/wall peak_MiB parts
results=()
for round in $(seq "$ROUNDS"); do
  read -r w2 c2 s2 r2 p2 < <(one_run all "$BIN")
  row "all cores" "$w2" "$c2" "$s2" "$r2" "$p2"
  read -r w1 c1 s1 r1 p1 < <(one_run one "$BIN" taskset -c 0)
  row "one core" "$w1" "$c1" "$s1" "$r1" "$p1"
  [ "$(digest all)" = "$(digest one)" ] || { echo "user_tags differ between the runs" >&2; exit 1; }
  base=0
  if [ -n "$BASE" ]; then
    read -r wb cb sb rb pb < <(one_run base "$BASE")
    row "baseline" "$wb" "$cb" "$sb" "$rb" "$pb"
    [ "$(digest all)" = "$(digest base)" ] || { echo "user_tags differ from the baseline's" >&2; exit 1; }
    base="$wb $cb"
  fi
  results+=("$w2 $c2 $s2 $w1 ${base}")
  python3 -c "import sys; w2,c2,s2,w1,*b=map(float,sys.argv[1:]); print(f'       one core / all cores: {w1 / w2:.2f}x' + (f'; ours / baseline: wall {w2 / b[0]:.3f}x, CPU {c2 / b[1]:.3f}x' if len(b) == 2 else ''))" ${results[-1]}
done
python3 - "${results[@]}" <<'EOF'
import statistics, sys
rows = [list(map(float, r.split())) for r in sys.argv[1:]]
med = lambda xs: statistics.median(xs)
print(f"medians of {len(rows)} rounds: CPU / wall {med([r[1] / r[0] for r in rows]):.2f}, "
      f"kernel {med([r[2] / r[1] for r in rows]):.0%} of CPU, one core / all cores {med([r[3] / r[0] for r in rows]):.2f}x")
if all(len(r) == 6 for r in rows):
    print(f"ours / baseline: wall {med([r[0] / r[4] for r in rows]):.3f}x, CPU {med([r[1] / r[5] for r in rows]):.3f}x")
print("user_tags equal in every round")
EOF
