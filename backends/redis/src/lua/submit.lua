-- submit: a cache hit, or join the identical call in flight (its lease), or take the lease and
-- queue a new job; writes the caller's task. One atomic step.
-- KEYS: result, lease, task, queue.
-- ARGV: task id, owner, now, task ttl, poll interval, hash, tool, read cache (1/0), lease ttl,
--       arguments, deadline, cache ttl.
-- Returns {kind, value}: {"cached", result}, {"joined", leader task id} or {"leader", task id}.
local function task(status, leader, cached, result)
  redis.call('HSET', KEYS[3], 'owner', ARGV[2], 'status', status, 'created', ARGV[3],
    'updated', ARGV[3], 'ttl', ARGV[4], 'poll', ARGV[5], 'hash', ARGV[6], 'tool', ARGV[7],
    'cached', cached)
  if leader ~= '' then redis.call('HSET', KEYS[3], 'leader', leader) end
  if result ~= '' then redis.call('HSET', KEYS[3], 'result', result) end
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
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
redis.call('HSET', KEYS[2], 'task', ARGV[1], 'waiters', 1)
redis.call('PEXPIRE', KEYS[2], ARGV[9])
task('working', '', '0', '')
redis.call('XADD', KEYS[4], '*', 'task', ARGV[1], 'hash', ARGV[6], 'tool', ARGV[7],
  'args', ARGV[10], 'deadline', ARGV[11], 'cache_ttl', ARGV[12])
return {'leader', ARGV[1]}
