-- extend: a worker's heartbeat on a running job. Resets the entry's idle time only while this
-- consumer still owns it; 0 when another worker has taken it over (fencing).
-- KEYS: queue.
-- ARGV: group, consumer, entry id.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
