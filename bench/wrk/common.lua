-- Shared by the wrk scripts (loaded with dofile from WRK_COMMON, which the harness sets):
-- pacing, counting answers by status, and the one "WRK_RESULT {...}" line the harness
-- parses at the end.

local common = {}

-- Defines wrk's delay, response and done callbacks. `rate`: requests/s for the whole run
-- (0: as fast as possible); `threads`: the list `setup` fills.
function common.install(rate, connections, threads)
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
end

return common
