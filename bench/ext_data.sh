# Sourced by the bench scripts that run on data DuckDB wrote: makes
# bench/.venv with duckdb when missing, and the data for $USERS users
# (bench/external_data.py) in $DATA = bench/out/ext-$USERS when missing.
OUT=bench/out
DATA="$OUT/ext-$USERS"
VENV=bench/.venv
mkdir -p "$OUT"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c "import duckdb" 2>/dev/null || "$VENV/bin/pip" install -q duckdb
if [ ! -f "$DATA/user_basic_info.parquet" ]; then
  "$VENV/bin/python" bench/external_data.py "$DATA" "$USERS"
fi
