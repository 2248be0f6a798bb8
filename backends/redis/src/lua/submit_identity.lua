-- submit, step 1 (the identity's slot: every key is `<p>:u:{<identity>}:*`): holds the caller's
-- identity to its caps and reserves what the call will count. Its stored tasks (a sorted set:
-- task id -> expiry), their result bytes (a hash: task id -> bytes, and `_total`) and its
-- executions not finished (a sorted set: leader task id -> lease expiry); expired entries are
-- dropped here (at most 100 tasks per call). Refuses on the tasks and bytes caps; otherwise
-- reserves the task, and a running slot when the identity is under max running (then the call
-- may lead: take the lease and queue a job). `submit_call.lua` decides the rest; the gateway
-- settles the reservations afterwards (`identity_settle.lua`).
-- KEYS: identity's running, identity's tasks, identity's bytes.
-- ARGV: task id, now, task ttl, lease ttl, max running, max tasks, max bytes (0: no cap).
-- Returns {"refused", "tasks" | "bytes"} (nothing reserved), or {"ok", "1" | "0"}: the task
-- reserved, and whether a running slot was too.
local now = tonumber(ARGV[2])
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)
for _, t in ipairs(gone) do
  local b = redis.call('HGET', KEYS[3], t)
  if b then
    redis.call('HINCRBY', KEYS[3], '_total', -tonumber(b))
    redis.call('HDEL', KEYS[3], t)
  end
  redis.call('ZREM', KEYS[2], t)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local max_tasks, max_bytes = tonumber(ARGV[6]), tonumber(ARGV[7])
if max_tasks > 0 and redis.call('ZCARD', KEYS[2]) >= max_tasks then
  return {'refused', 'tasks'}
end
if max_bytes > 0 and tonumber(redis.call('HGET', KEYS[3], '_total') or '0') >= max_bytes then
  return {'refused', 'bytes'}
end
-- Keeps a key at least `ms` longer.
local function last(key, ms)
  if redis.call('PTTL', key) < tonumber(ms) then redis.call('PEXPIRE', key, ms) end
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
last(KEYS[2], ARGV[3])
if redis.call('EXISTS', KEYS[3]) == 1 then last(KEYS[3], ARGV[3]) end
local max_running = tonumber(ARGV[5])
if max_running > 0 and redis.call('ZCARD', KEYS[1]) >= max_running then
  return {'ok', '0'}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
last(KEYS[1], ARGV[4])
return {'ok', '1'}
