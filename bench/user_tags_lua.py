"""Writes the wrk script for GET /api/v1/users/{user_id}/tags: each request
asks for a random one of up to 1000 user ids that hold tags in SQLITE_DB
(picked at random), and wrk's report ends with how many answers were 404 (a
user without tags: a fine answer, not an error) and how many had any other
status besides 200, as the lines "status 404: N" and "status other: N".

usage: user_tags_lua.py SQLITE_DB OUT_LUA
"""

import sys

from sqlite3 import connect

ids = [u for (u,) in connect(sys.argv[1]).execute("SELECT user_id FROM user_tags ORDER BY random() LIMIT 1000")]
if not ids:
    sys.exit(f"no user holds a tag in {sys.argv[1]}")
LUA = """local ids = {%s}
local threads = {}
local seeds = 0
function setup(thread)
  seeds = seeds + 1
  thread:set("seed", seeds)
  table.insert(threads, thread)
end
function init(args)
  math.randomseed(seed)
  n404 = 0
  nother = 0
end
function request()
  return wrk.format("GET", "/api/v1/users/" .. ids[math.random(#ids)] .. "/tags")
end
function response(status, headers, body)
  if status == 404 then n404 = n404 + 1 elseif status ~= 200 then nother = nother + 1 end
end
function done(summary, latency, requests)
  local a, b = 0, 0
  for _, t in ipairs(threads) do a = a + t:get("n404"); b = b + t:get("nother") end
  io.write(string.format("status 404: %%d\\nstatus other: %%d\\n", a, b))
end
"""
with open(sys.argv[2], "w") as f:
    f.write(LUA % ", ".join('"%s"' % u for u in ids))
print(f"   {len(ids)} user ids for the user-tags lookups")
