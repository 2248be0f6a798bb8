-- finish: the outcome into the leader task (unless cancelled meanwhile), the cache, the lease
-- released, the job acknowledged and deleted, the done signal published. One atomic step.
-- The execution leaves its identity's running set; the result's bytes count against the
-- identity while its task is stored (see submit.lua).
-- KEYS: task, result, lease, queue, identity's running, identity's tasks, identity's bytes.
-- ARGV: task id, status, message, result, now, cache ttl, entry id, group, done channel.
if redis.call('HGET', KEYS[1], 'status') == 'working' then
  redis.call('HSET', KEYS[1], 'status', ARGV[2], 'updated', ARGV[5], 'result', ARGV[4])
  if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'message', ARGV[3]) end
  local expires = redis.call('ZSCORE', KEYS[6], ARGV[1])
  local left = expires and (tonumber(expires) - tonumber(ARGV[5])) or 0
  if left > 0 and not redis.call('HGET', KEYS[7], ARGV[1]) then
    redis.call('HSET', KEYS[7], ARGV[1], #ARGV[4])
    redis.call('HINCRBY', KEYS[7], '_total', #ARGV[4])
    if redis.call('PTTL', KEYS[7]) < left then redis.call('PEXPIRE', KEYS[7], left) end
  end
end
redis.call('ZREM', KEYS[5], ARGV[1])
if tonumber(ARGV[6]) > 0 then redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[6]) end
if redis.call('HGET', KEYS[3], 'task') == ARGV[1] then redis.call('DEL', KEYS[3]) end
redis.call('XACK', KEYS[4], ARGV[8], ARGV[7])
redis.call('XDEL', KEYS[4], ARGV[7])
redis.call('PUBLISH', ARGV[9], ARGV[1])
return 1
