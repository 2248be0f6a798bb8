-- extend: a worker's heartbeat on a running job. Resets the entry's idle time only while this
-- consumer still owns it; 0 when another worker has taken it over (fencing).
-- With ARGV[4] (ms), sets the idle time to it instead: a release, the entry left idle for so
-- long that the next reclaim takes it; fenced the same way, so a worker never takes back an
-- entry another worker has reclaimed meanwhile.
-- KEYS: queue.
-- ARGV: group, consumer, entry id[, idle ms].
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
if ARGV[4] then
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'IDLE', ARGV[4], 'JUSTID')
else
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
end
return 1
