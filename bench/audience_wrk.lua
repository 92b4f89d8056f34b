-- wrk script for bench/audiences.sh: each connection asks the eight
-- expressions of bench/audience_expressions.txt in turn, counts only, and wrk
-- times every answer (C, epoll: the client takes little of the CPU the
-- server needs, unlike the Python client). An answer other than 200 is
-- counted by wrk ("Non-2xx or 3xx responses").
--   wrk -t2 -c64 -d20s --latency -s bench/audience_wrk.lua http://HOST:PORT
-- The questions, one expression per line (audience_load.py reads the
-- same file); run from the repository's root, as bench/audiences.sh does.
local expressions = {}
for line in io.lines("bench/audience_expressions.txt") do
  if line ~= "" then
    expressions[#expressions + 1] = line
  end
end
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
