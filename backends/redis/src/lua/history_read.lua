-- history_read: a topic's stream facts and a bounded page of the events after a start, read at
-- one instant (a trim in between would hide a gap). Read-only. The page is read in small
-- chunks and stops after the entry that brings its payloads to the byte bound, so one call
-- costs Redis about as much as the bytes it returns, whatever the events weigh.
-- KEYS: the stream.
-- ARGV: the exclusive start (`(<id>`), the most entries, the most payload bytes.
-- Returns {} when the stream does not exist, else {first id, last generated id, entries added,
-- length, entries, more (1: stopped at a bound)}.
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local f = {}
for i = 1, #info, 2 do f[info[i]] = info[i + 1] end
local want = tonumber(ARGV[2])
local budget = tonumber(ARGV[3])
local entries = {}
local bytes = 0
local more = 0
local start = ARGV[1]
while #entries < want do
  local ask = math.min(16, want - #entries)
  local chunk = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', ask)
  for _, e in ipairs(chunk) do
    entries[#entries + 1] = e
    local fields = e[2]
    for i = 2, #fields, 2 do bytes = bytes + #fields[i] end
    if bytes >= budget then break end
  end
  if bytes >= budget then
    more = 1
    break
  end
  if #chunk < ask then break end
  start = '(' .. chunk[#chunk][1]
end
if want > 0 and #entries >= want then more = 1 end
return {f['recorded-first-entry-id'], f['last-generated-id'], f['entries-added'], f['length'],
  entries, more}
