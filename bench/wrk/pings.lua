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

dofile(os.getenv("WRK_COMMON")).install(rate, connections, threads)
