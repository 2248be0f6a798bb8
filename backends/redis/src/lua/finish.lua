-- finish: the outcome into the leader task (unless cancelled meanwhile), the cache, the lease
-- released, the job acknowledged and deleted, the done signal published. One atomic step.
-- KEYS: task, result, lease, queue.
-- ARGV: task id, status, message, result, now, cache ttl, entry id, group, done channel.
if redis.call('HGET', KEYS[1], 'status') == 'working' then
  redis.call('HSET', KEYS[1], 'status', ARGV[2], 'updated', ARGV[5], 'result', ARGV[4])
  if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'message', ARGV[3]) end
end
if tonumber(ARGV[6]) > 0 then redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[6]) end
if redis.call('HGET', KEYS[3], 'task') == ARGV[1] then redis.call('DEL', KEYS[3]) end
redis.call('XACK', KEYS[4], ARGV[8], ARGV[7])
redis.call('XDEL', KEYS[4], ARGV[7])
redis.call('PUBLISH', ARGV[9], ARGV[1])
return 1
