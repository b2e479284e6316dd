-- wrk script for the benchmark runner.
--
-- Argument 1 (after "--"): pipelining depth, default 1. With depth N every
-- write carries N copies of the GET request, like TechEmpower's plaintext
-- pipeline.lua; wrk counts each response as one request.
-- done() prints one line "WRKJSON {...}" that bench/wrk.py parses.

local depth = 1
local req = nil

function init(args)
  depth = tonumber(args[1]) or 1
  local r = {}
  for i = 1, depth do
    r[i] = wrk.format(nil, "/")
  end
  req = table.concat(r)
end

function request()
  return req
end

function done(summary, latency, requests)
  local e = summary.errors
  -- Read the percentiles one by one: inlined in the format call, wrk 4.1
  -- returned 0 for all but the first.
  local p50 = latency:percentile(50)
  local p90 = latency:percentile(90)
  local p99 = latency:percentile(99)
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"mean": %.1f, "p50": %d, "p90": %d, "p99": %d, "max": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, p50, p90, p99, latency.max))
end
