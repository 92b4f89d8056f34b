#!/usr/bin/env bash
# Spark side by side, one run each on data DuckDB wrote (bench/external_data.py,
# not gen-data's), the eight reference tags, as_of 2025-01-15, Spark local[2]:
#
#   1. PySpark SQL computing the same rules, to parquet (bench/anchors.py spark:
#      the anchor, what the replaced system's jobs did);
#   2. tag-server run --executor spark: the plugins evaluated in Spark by the
#      tag_engine_spark wheel (built here with maturin --release), the output
#      committed into a fresh SQLite store;
#   3. tag-server run in process (polars), into another fresh store.
#
# Each: wall time, and the machine's busy CPU time over it (/proc/stat: the
# JVM's and Python workers' CPU included). For 2, the tag-server
# process's own peak RSS (VmHWM, polled: the JVM is not in it). Then: both
# stores hold the same user_tags (digest), equal to the anchor's tag sets.
#
#   TAG_SERVER_BIN=path bench/spark.sh [--users N] [--store sqlite|mariadb]
#
# --store mariadb: the end to end of the system this one replaces. The
# anchor is then PySpark computing the same rules and appending the
# user_tags rows to MariaDB over JDBC (bench/anchors.py spark_jdbc, driver
# from Debian's libmariadb-java), and both tag-server runs commit into
# MariaDB (fresh databases bench_spark_* on 127.0.0.1:3306, root).
#
# Defaults: 10,000,000 users, SQLite. Needs Java 17+; pyspark, pandas, maturin and
# pyarrow come from PyPI into bench/.venv.
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=10000000 STORE=sqlite
while [ $# -gt 0 ]; do
  case "$1" in
    --users) USERS="$2"; shift 2 ;;
    --store) STORE="$2"; shift 2 ;;
    *) echo "usage: bench/spark.sh [--users N] [--store sqlite|mariadb]" >&2; exit 2 ;;
  esac
done
case "$STORE" in sqlite|mariadb) ;; *) echo "--store: sqlite or mariadb" >&2; exit 2 ;; esac
BIN="${TAG_SERVER_BIN:?set TAG_SERVER_BIN to a release tag-server}"
AS_OF=2025-01-15
. bench/ext_data.sh
PY="$VENV/bin/python"
"$PY" -c "import pyspark, pandas, pyarrow, maturin" 2>/dev/null \
  || "$VENV/bin/pip" install -q pyspark 'pandas>=2.2,<3' pyarrow maturin
WHEELS="$OUT/spark-wheels"
rm -rf "$WHEELS"
"$PY" -m maturin build --release --quiet -m spark/Cargo.toml --out "$WHEELS"
"$VENV/bin/pip" install -q --force-reinstall --no-deps "$WHEELS"/tag_engine_spark-*.whl
RUN="$OUT/spark-run"
rm -rf "$RUN" && mkdir -p "$RUN/config"
cat > "$RUN/config/local.toml" <<EOF
[spark]
spark_submit = "$PWD/$VENV/bin/spark-submit"
python = "$PWD/$PY"
master = "local[2]"
[spark.conf]
"spark.driver.memory" = "4g"
"spark.sql.shuffle.partitions" = 8
"spark.log.level" = "WARN"
EOF

# Busy CPU seconds of the whole machine so far (/proc/stat: user, nice,
# system, irq, softirq): a JVM's and its Python workers' CPU is counted
# whoever waits for them. The machine is otherwise idle during the bench.
busy() {
  awk -v hz="$(getconf CLK_TCK)" '/^cpu / {print ($2 + $3 + $4 + $7 + $8) / hz}' /proc/stat
}

timed() { # name command...: prints "wall cpu"
  local name="$1"; shift
  local before after
  before=$(busy)
  /usr/bin/time -f "%e" -o "$RUN/$name.time" "$@" > "$RUN/$name.out" 2> "$RUN/$name.err"
  after=$(busy)
  read -r wall < "$RUN/$name.time"
  echo "$wall $(python3 -c "print(round($after - $before, 2))")"
}

# A fresh store for run $1: a SQLite file, or a new MariaDB database.
store_url() {
  if [ "$STORE" = sqlite ]; then
    echo "sqlite://$PWD/$RUN/$1.db"
  else
    mysql -h 127.0.0.1 -u root -e "DROP DATABASE IF EXISTS bench_spark_$1; CREATE DATABASE bench_spark_$1 CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
    echo "mysql://root@127.0.0.1:3306/bench_spark_$1"
  fi
}

# tag-server run of the eight tags into a fresh store for $1, with more flags.
OURS=()
ours() {
  local name="$1"; shift
  OURS=("$BIN" run --quiet --config-dir "$RUN/config" --data-dir "$DATA"
    --store "$(store_url "$name")" --tag-ids 1,2,3,4,5,6,7,8 --as-of $AS_OF
    --log-file "$RUN/$name.log" --plugins-dir "$(dirname "$BIN")" "$@")
}

# Polls a process's VmHWM (its own peak RSS) until it ends; the last in MiB.
hwm() {
  local pid="$1" kib=0
  while kill -0 "$pid" 2>/dev/null; do
    kib=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo "$kib")
    sleep 0.5
  done
  echo $((kib / 1024))
}

echo "users=$USERS data=$DATA cores=$(nproc) store=$STORE"
if [ "$STORE" = sqlite ]; then
  read -r a_wall a_cpu < <(timed anchor "$PY" bench/anchors.py spark "$DATA" "$RUN/anchor.parquet" $AS_OF)
  echo "PySpark SQL (anchor)      wall ${a_wall}s cpu ${a_cpu}s"
else
  [ -f /usr/share/java/mariadb-java-client.jar ] || apt-get install -y -qq libmariadb-java > /dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq libmariadb-java > /dev/null; }
  mysql -h 127.0.0.1 -u root -e "DROP DATABASE IF EXISTS bench_spark_anchor; CREATE DATABASE bench_spark_anchor CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
    CREATE TABLE bench_spark_anchor.user_tags (user_id VARCHAR(64) PRIMARY KEY, tag_ids JSON NOT NULL, tag_details JSON NOT NULL,
      created_time VARCHAR(19) NOT NULL, updated_time VARCHAR(19) NOT NULL)"
  read -r a_wall a_cpu < <(timed anchor "$PY" bench/anchors.py spark_jdbc "$DATA" \
    "jdbc:mysql://127.0.0.1:3306/bench_spark_anchor?user=root&rewriteBatchedStatements=true" $AS_OF)
  echo "PySpark SQL -> MariaDB over JDBC (anchor) wall ${a_wall}s cpu ${a_cpu}s"
fi

ours spark --executor spark
( timed spark "${OURS[@]}" > "$RUN/spark.times" ) &
timer=$!
sleep 1
mark="$RUN/spark.db"; [ "$STORE" = mariadb ] && mark="bench_spark_spark"
server=$(pgrep -n -f "$mark" || true)
peak=$( [ -n "$server" ] && hwm "$server" || echo "?")
wait "$timer"
read -r s_wall s_cpu < "$RUN/spark.times"
echo "tag-server --executor spark wall ${s_wall}s cpu ${s_cpu}s tag-server peak ${peak} MiB"

ours local
read -r l_wall l_cpu < <(timed local "${OURS[@]}")
echo "tag-server in process     wall ${l_wall}s cpu ${l_cpu}s"

digest() {
  if [ "$STORE" = sqlite ]; then
    python3 -c "import sqlite3,sys,hashlib; c=sqlite3.connect(sys.argv[1]); h=hashlib.sha256(); [h.update(f'{u}:{t};'.encode()) for u,t in c.execute('select user_id, tag_ids from user_tags order by user_id')]; print(h.hexdigest())" "$RUN/$1.db"
  else
    mysql -N -h 127.0.0.1 -u root -e "SELECT COUNT(*), SUM(CRC32(CONCAT(user_id, REPLACE(tag_ids, ' ', '')))) FROM bench_spark_$1.user_tags"
  fi
}
[ "$(digest spark)" = "$(digest local)" ] && echo "same user_tags: yes" || { echo "same user_tags: NO"; exit 1; }
if [ "$STORE" = mariadb ]; then
  echo "rows: ours $(mysql -N -h 127.0.0.1 -u root -e 'SELECT COUNT(*) FROM bench_spark_local.user_tags'), the anchor's $(mysql -N -h 127.0.0.1 -u root -e 'SELECT COUNT(*) FROM bench_spark_anchor.user_tags')"
  python3 - "$a_wall" "$a_cpu" "$s_wall" "$s_cpu" "$l_wall" "$l_cpu" <<'EOF2'
import sys
aw, ac, sw, sc, lw, lc = map(float, sys.argv[1:])
print(f"spark executor / PySpark over JDBC: wall {sw / aw:.2f}x, cpu {sc / ac:.2f}x (both into MariaDB)")
print(f"in process / PySpark over JDBC:     wall {lw / aw:.2f}x, cpu {lc / ac:.2f}x")
EOF2
  exit 0
fi
"$PY" - "$RUN/local.db" "$RUN/anchor.parquet" <<'EOF'
import json, sqlite3, sys
import pyarrow.parquet as pq
ours = {u: json.loads(t) for u, t in sqlite3.connect(sys.argv[1]).execute("select user_id, tag_ids from user_tags")}
anchor = pq.read_table(sys.argv[2]).to_pydict()
theirs = {u: sorted(t) for u, t in zip(anchor["user_id"], anchor["tag_ids"])}
# The anchor keeps an arbitrary row among a user's rows that tie on
# updated_time (and reads this data's types as Spark does), where ours keeps
# the row written last: an informational figure, not the check (tests hold
# the in-process engine equal to DuckDB; above, Spark's run equals it).
differ = sum(1 for u in ours.keys() | theirs.keys() if ours.get(u) != theirs.get(u))
print(f"users whose tags differ from the anchor's: {differ} of {len(ours)} (ties broken arbitrarily there)")
EOF
python3 - "$a_wall" "$a_cpu" "$s_wall" "$s_cpu" "$l_wall" "$l_cpu" <<'EOF'
import sys
aw, ac, sw, sc, lw, lc = map(float, sys.argv[1:])
print(f"spark executor / PySpark SQL: wall {sw / aw:.2f}x, cpu {sc / ac:.2f}x (target: wall <= 1.0x)")
print(f"in process / PySpark SQL:     wall {lw / aw:.2f}x, cpu {lc / ac:.2f}x")
EOF
