-- cancel: marks the caller's task cancelled *for the caller* (`ccancel`); a leader's `status` is
-- the shared execution's, which goes on while other callers wait for it. The execution itself
-- is cancelled (and the cancel signal published) when its last waiter goes.
-- One slot: the caller's task, the leader task and the lease all carry the call's tag (task ids
-- are `<call tag>.<...>`); an id from before the tags keeps its old key, which only a single
-- Redis can mix with the others.
-- KEYS: task, leader task, lease.
-- ARGV: leader id, now, cancel channel.
if redis.call('HGET', KEYS[1], 'status') ~= 'working' then return 0 end
if redis.call('HGET', KEYS[1], 'ccancel') == '1' then return 0 end
redis.call('HSET', KEYS[1], 'ccancel', '1', 'updated', ARGV[2])
if redis.call('HGET', KEYS[3], 'task') == ARGV[1] then
  if redis.call('HINCRBY', KEYS[3], 'waiters', -1) <= 0 then
    if redis.call('HGET', KEYS[2], 'status') == 'working' then
      redis.call('HSET', KEYS[2], 'status', 'cancelled', 'updated', ARGV[2])
    end
    redis.call('DEL', KEYS[3])
    redis.call('PUBLISH', ARGV[3], ARGV[1])
  end
end
return 1
