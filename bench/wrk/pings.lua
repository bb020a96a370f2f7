-- wrk script: POST /v1/pings with fresh ping ids, spread over many drivers' tokens.
-- Environment: WRK_TOKENS (file, one JWT per line), WRK_BATCH (pings per request),
-- WRK_RATE (requests/s for the whole run, 0 = as fast as possible), WRK_CONNECTIONS,
-- WRK_SHAPE: "trace" (a driver's flush after a dead zone: one fix a second along a road,
-- 10 m apart, the newest now) or "burst" (every ping at the same second at random places
-- across the city: all but one are `late`, and each lands in its own H3 cell).
-- Prints one JSON line "WRK_RESULT {...}" at the end for the harness to parse.

local tokens = {}
local batch = tonumber(os.getenv("WRK_BATCH") or "1")
local rate = tonumber(os.getenv("WRK_RATE") or "0")
local connections = tonumber(os.getenv("WRK_CONNECTIONS") or "1")
local shape = os.getenv("WRK_SHAPE") or "trace"
local threads = {}
local counter = 0

for line in io.lines(os.getenv("WRK_TOKENS")) do
  tokens[#tokens + 1] = line
end

function setup(thread)
  thread:set("id", #threads)
  threads[#threads + 1] = thread
end

local function uuid4()
  return string.format("%08x-%04x-4%03x-%04x-%012x",
    math.random(0, 0xffffffff), math.random(0, 0xffff), math.random(0, 0xfff),
    math.random(0x8000, 0xbfff), math.random(0, 0xffffffffffff))
end

function init(args)
  math.randomseed(os.time() * 1000 + id)
  counter = id * 7919
  accepted = 0
  statuses = {}
end

function request()
  counter = counter + 1
  local now = os.time()
  local parts = {}
  local lat, lon = 12.9 + math.random() * 0.15, 77.5 + math.random() * 0.2
  for i = 1, batch do
    local ts, speed = now, math.random() * 15
    if shape == "burst" then
      lat, lon = 12.9 + math.random() * 0.15, 77.5 + math.random() * 0.2
    else
      ts = now - (batch - i)
      lon = lon + 0.000092  -- about 10 m east at this latitude
      speed = 10.0
    end
    parts[i] = string.format(
      '{"ping_id":"%s","ts":"%s","lat":%.6f,"lon":%.6f,"speed_mps":%.1f,"heading_deg":%.1f,"accuracy_m":5.0}',
      uuid4(), os.date("!%Y-%m-%dT%H:%M:%SZ", ts), lat, lon, speed, math.random() * 359)
  end
  local body = '{"pings":[' .. table.concat(parts, ",") .. ']}'
  local token = tokens[(counter % #tokens) + 1]
  return wrk.format("POST", "/v1/pings",
    {["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"}, body)
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
