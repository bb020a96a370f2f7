-- wrk script: GETs from a list, in turn, each thread its own share of it.
-- Environment: WRK_REQUESTS (file, one request a line: "path<TAB>token<TAB>etag", the
-- token and the ETag "-" when none), WRK_RATE (requests/s for the whole run, 0 = as fast
-- as possible), WRK_CONNECTIONS, WRK_THREADS.
-- Prints one JSON line "WRK_RESULT {...}" at the end for the harness to parse.

local requests = {}
local rate = tonumber(os.getenv("WRK_RATE") or "0")
local connections = tonumber(os.getenv("WRK_CONNECTIONS") or "1")
local thread_count = tonumber(os.getenv("WRK_THREADS") or "1")
local threads = {}

for line in io.lines(os.getenv("WRK_REQUESTS")) do
  local path, token, etag = line:match("^([^\t]+)\t([^\t]+)\t([^\t]+)$")
  local headers = {}
  if token ~= "-" then headers["Authorization"] = "Bearer " .. token end
  if etag ~= "-" then headers["If-None-Match"] = etag end
  requests[#requests + 1] = wrk.format("GET", path, headers)
end

function setup(thread)
  thread:set("id", #threads)
  threads[#threads + 1] = thread
end

function init(args)
  counter = id
  statuses = {}
end

function request()
  local req = requests[(counter % #requests) + 1]
  counter = counter + thread_count
  return req
end

function delay()
  if rate <= 0 then return 0 end
  -- Each connection paces itself so that together they offer `rate` requests/s.
  return 1000 * connections / rate
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local codes = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for code, n in pairs(s) do
      codes[code] = (codes[code] or 0) + n
    end
  end
  local parts = {}
  for code, n in pairs(codes) do
    parts[#parts + 1] = string.format('"%d":%d', code, n)
  end
  io.write(string.format(
    'WRK_RESULT {"duration_us":%d,"requests":%d,"errors_connect":%d,"errors_read":%d,' ..
    '"errors_timeout":%d,"statuses":{%s},"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}}\n',
    summary.duration, summary.requests, summary.errors.connect, summary.errors.read,
    summary.errors.timeout, table.concat(parts, ","),
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
