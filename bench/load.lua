-- wrk script of bench/load.py: POST /execute with the token, answers counted by status.
-- The body and token come from the environment (KB_BODY, KB_TOKEN); load.py reads the
-- per-status counts from the last line ("result {...}"). A client refused with 503 and
-- Retry-After waits that long before its next request, as an HTTP client should (and as the
-- TypeScript client does, with a shorter backoff first): wrk's delay() holds the next request
-- of the thread for each refusal it saw.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  wrk.method = "POST"
  wrk.body = os.getenv("KB_BODY")
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "token " .. os.getenv("KB_TOKEN")
  counts = {}
  waits = {}
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
  if status == 503 then
    local after = tonumber(headers["Retry-After"])
    if after then
      table.insert(waits, after * 1000)
    end
  end
end

function delay()
  if #waits > 0 then
    return table.remove(waits, 1)
  end
  return 0
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    local c = thread:get("counts")
    for status, n in pairs(c) do
      total[status] = (total[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(total) do
    table.insert(parts, string.format('"%d": %d', status, n))
  end
  io.write(string.format(
    'result {"requests": %d, "seconds": %f, "p50_ms": %f, "p99_ms": %f, "max_ms": %f, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, ' ..
    '"non_2xx": %d, "statuses": {%s}}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3,
    latency:percentile(99) / 1e3, latency.max / 1e3, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout, summary.errors.status,
    table.concat(parts, ", ")))
end
