-- conn_admit: counts a connection in its scope (an identity or an address) unless the scope
-- holds its cap of live ones. A sorted set per scope: member -> lease expiry (Unix ms).
-- KEYS: the scope's set.
-- ARGV: member, now, lease ttl, cap.
-- Returns 1 if admitted, 0 if the scope is full.
local now = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == false
    and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3], 'GT')
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
