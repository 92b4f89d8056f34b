"""Audience counts under load, the same way for each system: CONNS threads,
each with its own connection, each asking EACH questions in turn (the
expressions below, each over up to eight tags), every answer timed on the
client from send to last byte. Prints one JSON line: the system, the
latencies' p50 / p99 / max in milliseconds, the questions per second, and
each expression's count (so the systems' answers can be compared).

  python audience_load.py server HOST:PORT CONNS EACH [LIMIT]
  python audience_load.py cold HOST:PORT
  python audience_load.py duckdb PARQUET CONNS EACH
  python audience_load.py postgres DSN TABLE CONNS EACH

`PARQUET` is an export of user_tags (user_id, tag_ids as a list of
integers); `TABLE` a PostgreSQL table (user_id, tag_ids jsonb).
"""
import http.client
import json
import os
import re
import sys
import threading
import time

# The questions, one expression per line (wrk's script reads the same file).
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "audience_expressions.txt")) as f:
    EXPRESSIONS = [line.strip() for line in f if line.strip()]


def to_sql(expr, holds):
    """The expression as a SQL condition: `holds(k)` is "the row holds tag k"."""
    out = re.sub(r"\b(\d+)\b", lambda m: holds(int(m.group(1))), expr)
    return out


def percentile(sorted_ms, p):
    if not sorted_ms:
        return None
    k = min(len(sorted_ms) - 1, max(0, int(round(p / 100.0 * len(sorted_ms) + 0.5)) - 1))
    return sorted_ms[k]


def run(ask, conns, each, connect):
    """`connect()` per thread gives a connection; `ask(conn, i)` answers
    expression i and returns its count."""
    times, counts, errors = [], {}, []
    lock = threading.Lock()

    def worker(w):
        try:
            conn = connect()
        except Exception as e:  # noqa: BLE001
            with lock:
                errors.append(repr(e))
            return
        local = []
        for k in range(each):
            i = (w + k) % len(EXPRESSIONS)
            start = time.perf_counter()
            count = ask(conn, i)
            local.append((time.perf_counter() - start) * 1000.0)
            with lock:
                counts.setdefault(EXPRESSIONS[i], count)
        with lock:
            times.extend(local)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(conns)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    times.sort()
    return {
        "questions": len(times),
        "p50_ms": round(percentile(times, 50), 2) if times else None,
        "p99_ms": round(percentile(times, 99), 2) if times else None,
        "max_ms": round(times[-1], 2) if times else None,
        "per_second": round(len(times) / wall, 1),
        "counts": counts,
        "errors": errors[:3],
    }


def server(address, conns, each, limit=0):
    host, port = address.rsplit(":", 1)

    def connect():
        return http.client.HTTPConnection(host, int(port), timeout=120)

    def ask(conn, i):
        body = json.dumps({"expr": EXPRESSIONS[i], "limit": limit})
        conn.request("POST", "/api/v1/audiences/query", body, {"Content-Type": "application/json"})
        reply = conn.getresponse()
        data = reply.read()
        if reply.status != 200:
            raise RuntimeError(data[:200])
        return json.loads(data)["count"]

    return run(ask, conns, each, connect)


def cold(address):
    """Each expression asked once on one connection, right after the
    server loaded the bitmaps: nothing remembered, every count computed."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    out = {}
    for e in EXPRESSIONS:
        start = time.perf_counter()
        conn.request("POST", "/api/v1/audiences/query", json.dumps({"expr": e, "limit": 0}), {"Content-Type": "application/json"})
        reply = conn.getresponse()
        reply.read()
        out[e] = round((time.perf_counter() - start) * 1000.0, 2)
    return {"first_ask_ms": out, "max_ms": max(out.values())}


def duckdb_counts(parquet, conns, each):
    import duckdb

    db = duckdb.connect()
    db.execute(f"CREATE VIEW user_tags AS SELECT * FROM read_parquet('{parquet}')")
    sql = [
        "SELECT count(*) FROM user_tags WHERE "
        + to_sql(e, lambda k: f"list_contains(tag_ids, {k})")
        for e in EXPRESSIONS
    ]

    def ask(conn, i):
        return conn.execute(sql[i]).fetchone()[0]

    return run(ask, conns, each, db.cursor)


def postgres_counts(dsn, table, conns, each):
    import psycopg

    sql = [
        f"SELECT count(*) FROM {table} WHERE "
        + to_sql(e, lambda k: f"tag_ids @> '[{k}]'::jsonb")
        for e in EXPRESSIONS
    ]

    def ask(conn, i):
        with conn.cursor() as cur:
            cur.execute(sql[i])
            return cur.fetchone()[0]

    return run(ask, conns, each, lambda: psycopg.connect(dsn, autocommit=True))


def main():
    kind = sys.argv[1]
    if kind == "server":
        limit = int(sys.argv[5]) if len(sys.argv) > 5 else 0
        result = server(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), limit)
    elif kind == "cold":
        result = cold(sys.argv[2])
    elif kind == "duckdb":
        result = duckdb_counts(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif kind == "postgres":
        result = postgres_counts(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        raise SystemExit(__doc__)
    result["system"] = kind
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
