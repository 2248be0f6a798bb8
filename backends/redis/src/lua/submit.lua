-- submit: a cache hit, or join the identical call in flight (its lease), or take the lease and
-- queue a new job; writes the caller's task. One atomic step. The caller's identity is held to
-- its caps first: its stored tasks (a sorted set: task id -> expiry), their result bytes (a
-- hash: task id -> bytes, and `_total`), and its executions not finished (a sorted set: task id
-- -> lease expiry); expired entries are dropped here (at most 100 tasks per call).
-- KEYS: result, lease, task, queue, identity's running, identity's tasks, identity's bytes.
-- ARGV: task id, owner, now, task ttl, poll interval, hash, tool, read cache (1/0), lease ttl,
--       arguments, deadline, cache ttl, identity, max running, max tasks, max bytes (0: no
--       cap), max result bytes, traceparent and tracestate (W3C trace context; empty: none).
-- Returns {kind, value}: {"cached", result}, {"joined", leader task id}, {"leader", task id}
-- or {"refused", "running" | "tasks" | "bytes"} (nothing written).
local now = tonumber(ARGV[3])
local gone = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now, 'LIMIT', 0, 100)
for _, t in ipairs(gone) do
  local b = redis.call('HGET', KEYS[7], t)
  if b then
    redis.call('HINCRBY', KEYS[7], '_total', -tonumber(b))
    redis.call('HDEL', KEYS[7], t)
  end
  redis.call('ZREM', KEYS[6], t)
end
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
local max_tasks, max_bytes = tonumber(ARGV[15]), tonumber(ARGV[16])
if max_tasks > 0 and redis.call('ZCARD', KEYS[6]) >= max_tasks then
  return {'refused', 'tasks'}
end
if max_bytes > 0 and tonumber(redis.call('HGET', KEYS[7], '_total') or '0') >= max_bytes then
  return {'refused', 'bytes'}
end
-- Keeps a key at least `ms` longer.
local function last(key, ms)
  if redis.call('PTTL', key) < tonumber(ms) then redis.call('PEXPIRE', key, ms) end
end
local function task(status, leader, cached, result)
  redis.call('HSET', KEYS[3], 'owner', ARGV[2], 'status', status, 'created', ARGV[3],
    'updated', ARGV[3], 'ttl', ARGV[4], 'poll', ARGV[5], 'hash', ARGV[6], 'tool', ARGV[7],
    'cached', cached)
  if leader ~= '' then redis.call('HSET', KEYS[3], 'leader', leader) end
  if result ~= '' then redis.call('HSET', KEYS[3], 'result', result) end
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
  redis.call('ZADD', KEYS[6], now + tonumber(ARGV[4]), ARGV[1])
  last(KEYS[6], ARGV[4])
  if result ~= '' then
    redis.call('HSET', KEYS[7], ARGV[1], #result)
    redis.call('HINCRBY', KEYS[7], '_total', #result)
  end
  if redis.call('EXISTS', KEYS[7]) == 1 then last(KEYS[7], ARGV[4]) end
end
if ARGV[8] == '1' then
  local r = redis.call('GET', KEYS[1])
  if r then
    task('completed', '', '1', r)
    return {'cached', r}
  end
end
local leader = redis.call('HGET', KEYS[2], 'task')
if leader then
  redis.call('HINCRBY', KEYS[2], 'waiters', 1)
  task('working', leader, '0', '')
  return {'joined', leader}
end
local max_running = tonumber(ARGV[14])
if max_running > 0 and redis.call('ZCARD', KEYS[5]) >= max_running then
  return {'refused', 'running'}
end
redis.call('ZADD', KEYS[5], now + tonumber(ARGV[9]), ARGV[1])
last(KEYS[5], ARGV[9])
redis.call('HSET', KEYS[2], 'task', ARGV[1], 'waiters', 1)
redis.call('PEXPIRE', KEYS[2], ARGV[9])
task('working', '', '0', '')
local job = {'task', ARGV[1], 'owner', ARGV[13], 'hash', ARGV[6], 'tool', ARGV[7],
  'args', ARGV[10], 'deadline', ARGV[11], 'cache_ttl', ARGV[12], 'max_result', ARGV[17]}
-- The submitting span's trace context, only when the gateway traces.
if ARGV[18] and ARGV[18] ~= '' then
  table.insert(job, 'traceparent'); table.insert(job, ARGV[18])
  if ARGV[19] ~= '' then table.insert(job, 'tracestate'); table.insert(job, ARGV[19]) end
end
redis.call('XADD', KEYS[4], '*', unpack(job))
return {'leader', ARGV[1]}
