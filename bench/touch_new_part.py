"""A day's worth of upstream updates for the incremental run, as a data lake
delivers them: DATA_DIR/user_activity_summary.parquet becomes the directory
DATA_DIR/user_activity_summary/ holding the original file, moved, as
part-000.parquet, and a new part-001.parquet that holds only the changed rows:
2% of the activity rows (every 50th), with trade_count_30d increased by 5 (a
null count becomes 5) and updated_time one second after the table's newest,
so that they supersede the rows of part-000. Same schema as the original.

usage: touch_new_part.py DATA_DIR
"""

import datetime
import os
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

EVERY = 50

data = sys.argv[1]
original = f"{data}/user_activity_summary.parquet"
parts = f"{data}/user_activity_summary"
os.mkdir(parts)
os.rename(original, f"{parts}/part-000.parquet")
table = pq.read_table(f"{parts}/part-000.parquet")
schema = table.schema
# take has no kernel for string_view (gen-data's user_id): take as string,
# then cast back.
plain = pa.schema([f.with_type(pa.string()) if f.type == pa.string_view() else f for f in schema], metadata=schema.metadata)
changed = table.cast(plain).take(pa.array(range(0, table.num_rows, EVERY), type=pa.int64())).cast(schema)

newest = pc.max(table.column("updated_time")).as_py()
times = pa.array([newest + datetime.timedelta(seconds=1)] * changed.num_rows, type=schema.field("updated_time").type)
trades = pc.add(pc.fill_null(changed.column("trade_count_30d"), 0), 5).cast(schema.field("trade_count_30d").type)
changed = changed.set_column(schema.get_field_index("trade_count_30d"), schema.field("trade_count_30d"), trades)
changed = changed.set_column(schema.get_field_index("updated_time"), schema.field("updated_time"), times)
changed = changed.replace_schema_metadata(schema.metadata)
assert changed.schema.equals(schema, check_metadata=True), (changed.schema, schema)
pq.write_table(changed, f"{parts}/part-001.parquet")
written = pq.read_schema(f"{parts}/part-001.parquet")
assert written.equals(pq.read_schema(f"{parts}/part-000.parquet"), check_metadata=True)
print(f"wrote {changed.num_rows} of {table.num_rows} activity rows as {parts}/part-001.parquet")
