"""The tag_engine_spark module driven the way a Spark executor will drive it.

    spark_module_check.py tags PLUGINS_DIR DATA_DIR AS_OF
        Loads the plugins, reads DATA_DIR/<table>.parquet (as typed_export.py
        writes them: DECIMAL, zoned timestamps, dictionary and view strings,
        nulls, duplicate users), keeps each user's newest row per table,
        left-joins the side tables on user_basic_info's users into one pyarrow RecordBatch of the tables' own
        Arrow types (columns named `table.column`; a user missing from a
        table has nulls there), evaluates every loaded tag over two slices
        of it, and prints {"tags": [...], "rejected": [...], "user_tags":
        {user_id: [tag ids]}} for the users holding at least one tag.
    spark_module_check.py misbehaving PLUGINS_DIR DATA_DIR AS_OF TAG_ID...
        Prints {"rejected": [...], "results": [...]}: the listed tags
        evaluated over the same batch in one call.
"""
import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import tag_engine_spark

TABLES = ("user_basic_info", "user_asset_summary", "user_activity_summary")


def newest_rows(table):
    """{user_id: row index} of each user's newest row, as the README's data
    rules say: a row without updated_time loses to any timed row; on a tie
    the later row wins."""
    users = table.column("user_id").to_pylist()
    times = table.column("updated_time").to_pylist()
    best = {}
    for i, (user, time) in enumerate(zip(users, times)):
        if user is None:
            continue
        held = times[best[user]] if user in best else None
        if user not in best or (time is not None and (held is None or time >= held)) or (time is None and held is None):
            best[user] = i
    return best


def take(array, picks):
    """Rows `picks` of `array` (None: a null row), keeping its Arrow type;
    pyarrow's take has no kernel for string views, so those are rebuilt."""
    try:
        return array.take(pa.array(picks, pa.int64()))
    except pa.ArrowNotImplementedError:
        values = array.to_pylist()
        return pa.array([None if i is None else values[i] for i in picks], array.type)


def joined_batch(data_dir):
    tables = {t: pq.read_table(f"{data_dir}/{t}.parquet") for t in TABLES}
    rows = {t: newest_rows(tables[t]) for t in TABLES}
    # The universe is user_basic_info; the side tables are left-joined on it.
    users = sorted(rows["user_basic_info"])
    names, arrays = ["user_id"], [pa.array(users, pa.string())]
    for t in TABLES:
        picks = [rows[t].get(u) for u in users]
        for name in tables[t].column_names:
            if name != "user_id":
                names.append(f"{t}.{name}")
                arrays.append(take(tables[t].column(name).combine_chunks(), picks))
    return users, pa.RecordBatch.from_arrays(arrays, names=names)


def evaluate_in_slices(evaluator, batch, tags, as_of):
    """Evaluates over two slices (so Arrow offsets are exercised): per tag,
    its matched row indices over the whole batch, or its error."""
    cut = batch.num_rows // 3
    outcome = {}
    for start, piece in ((0, batch.slice(0, cut)), (cut, batch.slice(cut))):
        for r in evaluator.evaluate(piece, [(t, None, 1) for t in tags], as_of):
            assert r["rule_version"] == 1, r
            matched, error = outcome.setdefault(r["tag_id"], ([], []))
            if r["error"] is not None:
                error.append(r["error"])
            else:
                matched.extend(start + i for i in r["matched"])
    return outcome


def tags_mode(plugins_dir, data_dir, as_of):
    evaluator = tag_engine_spark.Evaluator(plugins_dir)
    users, batch = joined_batch(data_dir)
    tags = [t["tag_id"] for t in evaluator.tags()]
    user_tags = {}
    for tag_id, (matched, errors) in evaluate_in_slices(evaluator, batch, tags, as_of).items():
        if errors:
            raise SystemExit(f"tag {tag_id} failed: {errors}")
        for row in matched:
            user_tags.setdefault(users[row], []).append(tag_id)
    print(json.dumps({
        "tags": evaluator.tags(),
        "rejected": evaluator.rejected(),
        "user_tags": {u: sorted(t) for u, t in user_tags.items()},
    }))


def misbehaving_mode(plugins_dir, data_dir, as_of, tag_ids):
    evaluator = tag_engine_spark.Evaluator(plugins_dir)
    _, batch = joined_batch(data_dir)
    results = evaluator.evaluate(batch, [(int(t), None, "v1") for t in tag_ids], as_of)
    print(json.dumps({"rejected": evaluator.rejected(), "results": results}))


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "tags":
        tags_mode(*args)
    elif mode == "misbehaving":
        misbehaving_mode(args[0], args[1], args[2], args[3:])
    else:
        raise SystemExit(f"unknown mode {mode}")
