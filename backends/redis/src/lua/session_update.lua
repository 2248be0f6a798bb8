-- session_update: one change to a session, fenced by its generation: a connection that was
-- taken over can no longer write.
-- KEYS: the session.
-- ARGV: generation, ttl ms, number of fields to set, owner and node to recreate a missing
--       session with (empty: do not), the fields and values, then the fields to delete.
-- Returns 1 (applied), 0 (a newer generation holds it) or -1 (missing).
local g = redis.call('HGET', KEYS[1], 'gen')
if not g then
  if ARGV[4] == '' then return -1 end
  redis.call('HSET', KEYS[1], 'owner', ARGV[4], 'gen', ARGV[1], 'node', ARGV[5])
elseif g ~= ARGV[1] then
  return 0
end
local n = tonumber(ARGV[3])
for i = 0, n - 1 do
  redis.call('HSET', KEYS[1], ARGV[6 + 2 * i], ARGV[7 + 2 * i])
end
for i = 6 + 2 * n, #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
