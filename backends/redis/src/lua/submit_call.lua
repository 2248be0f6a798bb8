-- submit, step 2 (the call's slot: the result, the lease and the task all carry the call's tag,
-- `{<first 16 hex digits of the call hash>}`): a cache hit, or join the identical call in
-- flight (its lease), or take the lease, and write the caller's task. One atomic step. Taking
-- the lease needs the running slot `submit_identity.lua` reserved ("may lead"); without it the
-- call is refused `running` and nothing is written. The job itself is queued by the gateway
-- after this step (`XADD` on the queue's slot); if that fails the gateway undoes this step
-- with `finish.lua` (the task failed, the lease released, the done signal).
-- KEYS: result, lease, task.
-- ARGV: task id, owner, now, task ttl, poll interval, hash, tool, read cache (1/0), lease ttl,
--       may lead (1/0).
-- Returns {kind, value}: {"cached", result}, {"joined", leader task id}, {"leader", task id}
-- or {"refused", "running"} (nothing written).
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
if ARGV[10] ~= '1' then
  return {'refused', 'running'}
end
redis.call('HSET', KEYS[2], 'task', ARGV[1], 'waiters', 1)
redis.call('PEXPIRE', KEYS[2], ARGV[9])
task('working', '', '0', '')
return {'leader', ARGV[1]}
