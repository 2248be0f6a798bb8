-- rate_take: leases up to `want` tokens of one per-identity budget, a GCRA (generic cell rate
-- algorithm; switchboard_core::backend::gcra is the same steps, and documents them).
-- KEYS: the budget (<prefix>:rl:{<identity>}:<budget>), a string holding its theoretical
--       arrival time (TAT) in microseconds of this Redis server's clock.
-- ARGV: microseconds between two tokens, burst, want.
-- Returns {granted, retry_after_us}: retry_after_us, when nothing was granted, is how long until
-- one token is available. The key expires when the TAT passes (the budget is full again), so an
-- idle identity leaves nothing behind.
--
-- The clock is the server's (TIME), not the caller's: every gateway reads the same one, so a
-- node whose clock runs ahead cannot see a fuller budget than the others. Redis 7 replicates a
-- script's effects, so the SET below carries the value this server computed.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2]) * interval
local want = tonumber(ARGV[3])
local base = tonumber(redis.call('GET', KEYS[1]) or now) or now
if base < now then
  base = now
end
local room = now + capacity - base
local available = 0
if room > 0 then
  available = math.floor(room / interval)
end
local granted = math.min(want, available)
if granted <= 0 then
  local wait = base + interval - (now + capacity)
  if wait < 0 or want <= 0 then
    wait = 0
  end
  return {0, wait}
end
local tat = base + granted * interval
-- %.0f: a TAT (~1.7e15) is exact in a double, but tostring would print it as 1.7e+15.
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000))
return {granted, 0}
