-- session_attach: a new connection attaches a stored session: owner check, generation raised,
-- expiry, the takeover signal, and the whole hash back, in one step.
-- KEYS: the session.
-- ARGV: owner, node, ttl ms, session channel, session id.
-- Returns {0} (no such session), {-1} (another owner) or {1, fields...}.
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return {-1} end
local gen = redis.call('HINCRBY', KEYS[1], 'gen', 1)
redis.call('HSET', KEYS[1], 'node', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5] .. ' ' .. gen)
return {1, redis.call('HGETALL', KEYS[1])}
