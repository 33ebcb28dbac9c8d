-- latest.lua: the latest record of one object id, in one round trip.
-- KEYS[1] index hash (object id -> entry id), KEYS[2] the stream.
-- ARGV[1] object id.
-- Returns {entry_id, {field, value, ...}}, or nil if there is none (or it was trimmed, in
-- which case the stale index entry is removed). Atomic so the index and the entry agree.
local id = redis.call('HGET', KEYS[1], ARGV[1])
if not id then return nil end
local found = redis.call('XRANGE', KEYS[2], id, id)
if #found == 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return nil
end
return found[1]
