"""Changes 1% of user_activity_summary (every 100th row: more trades, a newer
updated_time), as a day's worth of upstream updates for the incremental run.

usage: touch_one_percent.py DATA_DIR
"""

import datetime
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

path = f"{sys.argv[1]}/user_activity_summary.parquet"
table = pq.read_table(path)
n = table.num_rows
picked = pa.array([i % 100 == 0 for i in range(n)])
newest = pc.max(table.column("updated_time")).as_py()
stamp = pa.scalar(newest + datetime.timedelta(seconds=1), type=table.schema.field("updated_time").type)
trades = pc.if_else(picked, pc.add(pc.fill_null(table.column("trade_count_30d"), 0), 5), table.column("trade_count_30d"))
times = pc.if_else(picked, stamp, table.column("updated_time"))
table = table.set_column(table.schema.get_field_index("trade_count_30d"), "trade_count_30d", trades.cast(pa.int32()))
table = table.set_column(table.schema.get_field_index("updated_time"), "updated_time", times)
pq.write_table(table, path)
print(f"touched {sum(picked.to_pylist())} of {n} activity rows")
