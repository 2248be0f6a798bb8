-- Settles what a call holds against its identity (the identity's slot, like
-- `submit_identity.lua`), after the step on the call's slot decided: the call leaves (or never
-- took) the identity's running set; a refused call's task reservation is dropped; a result
-- stored in the task (a cached answer at submit, a leader's outcome at finish) counts its bytes
-- while the task is stored, once (a finish retried, or a job finished again by the worker that
-- reclaimed it, counts nothing more). Idempotent.
-- KEYS: identity's running, identity's tasks, identity's bytes.
-- ARGV: task id, now, drop the task (1/0), result bytes to count (0: none).
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[3] == '1' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 1
end
local bytes = tonumber(ARGV[4])
if bytes <= 0 then return 1 end
local expires = redis.call('ZSCORE', KEYS[2], ARGV[1])
local left = expires and (tonumber(expires) - tonumber(ARGV[2])) or 0
if left > 0 and not redis.call('HGET', KEYS[3], ARGV[1]) then
  redis.call('HSET', KEYS[3], ARGV[1], bytes)
  redis.call('HINCRBY', KEYS[3], '_total', bytes)
  if redis.call('PTTL', KEYS[3]) < left then redis.call('PEXPIRE', KEYS[3], left) end
end
return 1
