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

function setup(thread)
  thread:set("id", #threads)
  threads[#threads + 1] = thread
end

function init(args)
  counter = id
  statuses = {}
  -- Formatted here, in each thread, where wrk has set the Host header (at the top of the
  -- script it has not yet: nginx answers a request without Host with 400).
  for line in io.lines(os.getenv("WRK_REQUESTS")) do
    local path, token, etag = line:match("^([^\t]+)\t([^\t]+)\t([^\t]+)$")
    local headers = {}
    if token ~= "-" then headers["Authorization"] = "Bearer " .. token end
    if etag ~= "-" then headers["If-None-Match"] = etag end
    requests[#requests + 1] = wrk.format("GET", path, headers)
  end
end

function request()
  local req = requests[(counter % #requests) + 1]
  counter = counter + thread_count
  return req
end

dofile(os.getenv("WRK_COMMON")).install(rate, connections, threads)
