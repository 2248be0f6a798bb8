-- history_read: a topic's stream facts and the events after a start, read at one instant (a
-- trim in between would hide a gap). Read-only.
-- KEYS: the stream.
-- ARGV: the exclusive start (`(<id>`), the count.
-- Returns {} when the stream does not exist, else {first id, last generated id, entries added,
-- length, entries}.
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local f = {}
for i = 1, #info, 2 do f[info[i]] = info[i + 1] end
local entries = {}
if tonumber(ARGV[2]) > 0 then
  entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
end
return {f['recorded-first-entry-id'], f['last-generated-id'], f['entries-added'], f['length'], entries}
