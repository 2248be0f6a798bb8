-- finish, step 1 (the call's slot: task, result and lease carry the call's tag): the outcome
-- into the leader task (unless it is no longer working: cancelled, or finished already), the
-- cache, the lease released (if it is still this execution's), the done signal published. One
-- atomic step, first of the finish: it makes the outcome visible. The gateway also runs it to
-- undo `submit_call.lua` when the job could not be queued. Then the worker settles the
-- identity (`identity_settle.lua`, with the bytes returned here) and acknowledges and deletes
-- the job (`XACK` + `XDEL`, the queue's slot).
-- KEYS: result, lease, task (as `submit_call.lua`).
-- ARGV: task id, status, message, result, now, cache ttl, done channel.
-- Returns the bytes of the result the task holds now (0: none; a task cancelled or gone).
if redis.call('HGET', KEYS[3], 'status') == 'working' then
  redis.call('HSET', KEYS[3], 'status', ARGV[2], 'updated', ARGV[5], 'result', ARGV[4])
  if ARGV[3] ~= '' then redis.call('HSET', KEYS[3], 'message', ARGV[3]) end
end
if tonumber(ARGV[6]) > 0 then redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[6]) end
if redis.call('HGET', KEYS[2], 'task') == ARGV[1] then redis.call('DEL', KEYS[2]) end
redis.call('PUBLISH', ARGV[7], ARGV[1])
return redis.call('HSTRLEN', KEYS[3], 'result')
