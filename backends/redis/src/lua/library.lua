#!lua name=switchboard
-- The `switchboard` function library, loaded by every gateway (FUNCTION LOAD REPLACE) at start
-- and after every reconnection, so that any backend can FCALL it:
--   FCALL sb_publish 1 <prefix>:h:{<topic>} <json> [MAXLEN [TTL_MS]]
-- appends the event to the topic's history (trimmed exactly to MAXLEN, expiring after TTL_MS
-- when given and not 0) and publishes `#<id> <json>` on the topic's live channel; returns the id.
-- The default MAXLEN (the placeholder in sb_publish) is filled in when a gateway loads it, and
-- so is the publish command: PUBLISH on one Redis, SPUBLISH (sharded pub/sub, on the shard that
-- owns the topic's slot, which is also the history key's slot) in a Redis Cluster.
--
-- `sb_publish_prechecked` is the same for gateways, which checked the event already: it skips
-- decoding the event.
--
-- Refused before anything is written: a key that is not a history key (`<prefix>:h:{<topic>}`,
-- the prefix without braces, the topic of the topic alphabet), MAXLEN or TTL_MS that is not a
-- plain whole number (digits only: no sign, exponent or fraction), and an event that is not one
-- JSON value. A gateway's body `@<subject as a JSON string> <json>` (an event a client
-- published, with its publisher) is checked part by part.
local MAX_DIGITS = 15
local function whole(v, default)
  if v == nil or v == '' then return default end
  if type(v) ~= 'string' or #v > MAX_DIGITS or not string.match(v, '^%d+$') then return nil end
  return tonumber(v)
end
local function is_json(text)
  local ok = pcall(cjson.decode, text)
  return ok
end
-- Whether `body` is `<json>`, or `@"<subject>" <json>`.
local function valid_body(body)
  if string.sub(body, 1, 1) ~= '@' then return is_json(body) end
  if string.sub(body, 2, 2) ~= '"' then return false end
  local i, n = 3, #body
  while i <= n do
    local c = string.sub(body, i, i)
    if c == '\\' then
      i = i + 2
    elseif c == '"' then
      local subject = string.sub(body, 2, i)
      if string.sub(body, i + 1, i + 1) ~= ' ' then return false end
      local ok, decoded = pcall(cjson.decode, subject)
      return ok and type(decoded) == 'string' and is_json(string.sub(body, i + 2))
    else
      i = i + 1
    end
  end
  return false
end
-- Both functions below: `check_event` says whether the event is decoded to check it is JSON.
local function publish(keys, args, check_event)
  local stream = keys[1]
  if stream == nil or not string.match(stream, '^[^{}]*:h:{[%w_.:/@%-]+}$') then
    return redis.error_reply('sb_publish: the key must be a history key, <prefix>:h:{<topic>}')
  end
  local maxlen = whole(args[2], DEFAULT_MAXLEN)
  local ttl = whole(args[3], 0)
  if maxlen == nil or maxlen < 1 then
    return redis.error_reply('sb_publish: MAXLEN must be a whole number of at least 1')
  end
  if ttl == nil then
    return redis.error_reply('sb_publish: TTL_MS must be a whole number of milliseconds')
  end
  if args[1] == nil or (check_event and not valid_body(args[1])) then
    return redis.error_reply('sb_publish: the event must be one JSON value')
  end
  local id
  id = redis.call('XADD', stream, 'MAXLEN', maxlen, '*', 'd', args[1])
  if ttl > 0 then redis.call('PEXPIRE', stream, ttl) end
  local channel = string.gsub(stream, ':h:{', ':t:{', 1)
  redis.call(PUBLISH_COMMAND, channel, '#' .. id .. ' ' .. args[1])
  return id
end
-- What backends call.
redis.register_function('sb_publish', function(keys, args) return publish(keys, args, true) end)
-- What gateways call: they checked the event before (decoding it again here would cost Redis,
-- single-threaded, several times the XADD itself). Same arguments.
redis.register_function('sb_publish_prechecked', function(keys, args) return publish(keys, args, false) end)
