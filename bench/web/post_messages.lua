-- wrk script for bench/run-web: POST a chat message to a different conversation each request,
-- at a fixed offered rate (Debian's wrk 4.1 has no constant-rate mode; this approximates one).
--
--   wrk -t T -c C -d D --latency --timeout 30s -s post_messages.lua URL -- IDS_FILE APP RATE T
--
-- IDS_FILE  conversation ids, one a line, used round robin; thread i of T starts i / T of the
--           way into the list
-- APP       the app in the path, /v1/apps/APP/conversations/ID/messages
-- RATE      offered requests per second over all threads; 0 = unpaced (each connection sends
--           its next request as soon as its response is in: the maximum-throughput run)
-- T         wrk's thread count (-t), to split RATE between the threads
--
-- Pacing: each thread keeps a schedule of send times T / RATE seconds apart. wrk calls
-- delay() when a connection is ready to send its next request (after its previous response);
-- the connection takes the next free slot of its thread's schedule and waits for it. So,
-- while enough connections are free, requests leave at the offered rate whatever the
-- latency. When every connection of a thread is waiting for a response, the schedule slips
-- (the slot becomes "now"): the achieved rate falls below the offered one and the latency
-- of the requests that would have been sent in the meantime is not counted (coordinated
-- omission; wrk measures from the moment a request is written). Use enough connections:
-- C > RATE × p99 latency.
--
-- done() prints one JSON line (prefixed "RESULT ") with wrk's own figures.

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clock_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("bench_timespec")
local function now_us()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end

-- The threads, so that setup() can tell each its index (runs in the main Lua state).
local thread_count = 0
function setup(thread)
  thread:set("thread_index", thread_count)
  thread_count = thread_count + 1
end

local ids = {}
local next_id = 1
local app = "scent-advisor"
local interval_us = 0  -- between two sends of this thread; 0 = unpaced
local next_slot_us = nil

-- Realistic shopper messages (30-120 characters, one with non-ASCII text), cycled.
local texts = {
  "Something fresh and citrusy for summer days at the office, under $90",
  "A warm woody scent for winter evenings, nothing too sweet, no vanilla",
  "A gift for my sister who loves roses and jasmine, around $120",
  "I wear Terre d'Hermès most days; what else could I try for autumn?",
  "Quelque chose de léger pour le printemps, pas trop cher, j'adore la fleur d'oranger",
  "Something smoky and leathery for evenings out, budget is flexible",
  "Clean musk, like fresh laundry, for everyday wear",
  "My partner hates strong perfumes; something subtle for the office?",
}
local bodies = {}

function init(args)
  local path = args[1]
  app = args[2] or app
  local rate = tonumber(args[3] or "0")
  for line in io.lines(path) do
    if #line > 0 then ids[#ids + 1] = line end
  end
  assert(#ids > 0, "no conversation ids in " .. path)
  local threads = tonumber(args[4] or "1")
  -- Thread i starts i / T of the way into the ids, so the threads do not post in lockstep.
  next_id = math.floor((thread_index or 0) * #ids / threads) % #ids + 1
  if rate > 0 then
    interval_us = 1e6 * threads / rate
  else
    delay = nil  -- wrk checks for delay() after init: unpaced requests skip its timer
  end
  for i, text in ipairs(texts) do
    bodies[i] = '{"text": "' .. text .. '"}'
  end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

local request_count = 0
function request()
  local id = ids[next_id]
  next_id = next_id + 1
  if next_id > #ids then next_id = 1 end
  request_count = request_count + 1
  local body = bodies[(request_count % #bodies) + 1]
  return wrk.format("POST", "/v1/apps/" .. app .. "/conversations/" .. id .. "/messages", nil,
                    body)
end

function delay()
  if interval_us == 0 then return 0 end
  local now = now_us()
  if next_slot_us == nil or next_slot_us < now then next_slot_us = now end
  local slot = next_slot_us
  next_slot_us = next_slot_us + interval_us
  return math.floor((slot - now) / 1000 + 0.5)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "errors_connect": %d, ' ..
    '"errors_read": %d, "errors_write": %d, "errors_status": %d, "errors_timeout": %d, ' ..
    '"latency_p50_us": %d, "latency_p90_us": %d, "latency_p99_us": %d, ' ..
    '"latency_p999_us": %d, "latency_max_us": %d, "latency_mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
