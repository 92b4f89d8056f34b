-- wrk script for bench/audiences.sh: each connection asks the eight
-- expressions of bench/audience_load.py in turn, counts only, and wrk
-- times every answer (C, epoll: the client takes little of the CPU the
-- server needs, unlike the Python client). An answer other than 200 is
-- counted by wrk ("Non-2xx or 3xx responses").
--   wrk -t2 -c64 -d20s --latency -s bench/audience_wrk.lua http://HOST:PORT
local expressions = {
  "1",
  "2 AND 3",
  "(5 AND 2) AND NOT 3",
  "NOT 7",
  "1 OR 2 OR 3 OR 4 OR 5 OR 6 OR 7 OR 8",
  "1 AND 2 AND 3 AND 4 AND 5 AND 6 AND 7 AND 8",
  "(1 OR 6) AND NOT (3 OR 4)",
  "(1 AND 2) OR (5 AND NOT 8) OR (3 AND 7)",
}
local requests = {}
local next_one = 1

function init(args)
  for i, e in ipairs(expressions) do
    local body = string.format('{"expr": "%s", "limit": 0}', e)
    requests[i] = wrk.format("POST", "/api/v1/audiences/query",
      { ["Content-Type"] = "application/json" }, body)
  end
end

function request()
  local r = requests[next_one]
  next_one = next_one % #requests + 1
  return r
end
