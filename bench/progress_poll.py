#!/usr/bin/env python3
"""Triggers a run on a live tag-server and polls its status every 200 ms,
printing each change of stage or percent and, at the end, the longest time
the progress stood still (and where).

    python3 bench/progress_poll.py http://127.0.0.1:5000 [TOKEN]

Start the server over the data to watch first, for example the bench's 10M
users: tag-server --data-dir bench/out/data-10000000 --store sqlite:///tmp/t.db
"""
import json
import sys
import time
import urllib.request

BASE = sys.argv[1].rstrip("/")
TOKEN = sys.argv[2] if len(sys.argv) > 2 else None


def call(path, body=None):
    headers = {"Content-Type": "application/json"}
    if TOKEN:
        headers["Authorization"] = f"Bearer {TOKEN}"
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(BASE + path, data=data, headers=headers)) as r:
        return json.load(r)


task = call("/api/v1/tags/trigger", {"tag_ids": [1, 2, 3, 4, 5, 6, 7, 8], "as_of": "2025-01-15"})["task_id"]
start = time.time()
last, since, worst = None, start, (0.0, None)
while True:
    status = call(f"/api/v1/tasks/{task}/status")["status"]
    if status["status"] not in ("submitted", "running"):
        break
    progress = status.get("progress")
    if progress:
        key = (progress["stage"], progress["percent"])
        now = time.time()
        if key != last:
            if last is not None and now - since > worst[0]:
                worst = (now - since, last)
            print(f"{now - start:6.2f}s {progress['stage']:<11} {progress['percent']:5.1f}%  eta {progress['eta_seconds']}")
            last, since = key, now
    time.sleep(0.2)
# The last stage and percent stood until the task ended.
if last is not None and time.time() - since > worst[0]:
    worst = (time.time() - since, last)
print(f"{status['status']} in {time.time() - start:.1f} s; longest plateau {worst[0]:.2f} s at {worst[1]}")
