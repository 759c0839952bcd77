-- post.lua - wrk script for kiln-W4: POST /v1/jobs with a valid body and a
-- bearer token, counting every answer that is not 202 (and remembering the
-- first such status) so bench/run.sh can report them.
local token = os.getenv("KILN_BENCH_TOKEN") or "bench-token"

wrk.method = "POST"
wrk.path = "/v1/jobs"
wrk.body = '{"prompt":"bench job: a red fox in fresh snow at dawn, watercolour on rough paper"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. token

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   non202 = 0
   first_bad = 0
end

function response(status, headers, body)
   if status ~= 202 then
      non202 = non202 + 1
      if first_bad == 0 then first_bad = status end
   end
end

function done(summary, latency, requests)
   local bad, first = 0, 0
   for _, t in ipairs(threads) do
      bad = bad + t:get("non202")
      local f = t:get("first_bad")
      if first == 0 and f ~= 0 then first = f end
   end
   local e = summary.errors
   io.write(string.format(
      "WRK requests=%d duration_us=%d p50_us=%d p99_us=%d non202=%d first_non202=%d " ..
      "connect_err=%d read_err=%d write_err=%d timeout_err=%d\n",
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
      bad, first, e.connect, e.read, e.write, e.timeout))
end
