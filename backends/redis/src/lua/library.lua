#!lua name=switchboard
-- The `switchboard` function library, loaded by every gateway (FUNCTION LOAD REPLACE) at start
-- and after every reconnection, so that any backend can FCALL it:
--   FCALL sb_publish 1 <prefix>:h:{<topic>} <json> [MAXLEN [TTL_MS]]
-- appends the event to the topic's history (trimmed exactly to MAXLEN, expiring after TTL_MS
-- when given and not 0) and publishes `#<id> <json>` on the topic's live channel; returns the id.
-- The default MAXLEN (the placeholder in sb_publish) is filled in when a gateway loads it.
local function whole(v, default)
  if v == nil or v == '' then return default end
  local n = tonumber(v)
  if n == nil or n ~= math.floor(n) or n < 0 or n > 1e15 then return nil end
  return n
end
local function sb_publish(keys, args)
  local stream = keys[1]
  local maxlen = whole(args[2], DEFAULT_MAXLEN)
  local ttl = whole(args[3], 0)
  if maxlen == nil or maxlen < 1 then
    return redis.error_reply('sb_publish: MAXLEN must be a whole number of at least 1')
  end
  if ttl == nil then
    return redis.error_reply('sb_publish: TTL_MS must be a whole number of milliseconds')
  end
  local id
  id = redis.call('XADD', stream, 'MAXLEN', maxlen, '*', 'd', args[1])
  if ttl > 0 then redis.call('PEXPIRE', stream, ttl) end
  local channel = string.gsub(stream, ':h:{', ':t:{', 1)
  redis.call('PUBLISH', channel, '#' .. id .. ' ' .. args[1])
  return id
end
redis.register_function('sb_publish', sb_publish)
