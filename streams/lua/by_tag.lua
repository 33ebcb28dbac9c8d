-- by_tag.lua: the records carrying one tag within a time range, in one round trip.
-- KEYS[1] tag index zset (entry id scored by ms), KEYS[2] the stream.
-- ARGV[1] min ms, ARGV[2] max ms, ARGV[3] limit (0 = none), ARGV[4] "1" for newest first.
-- Returns a list of {entry_id, {field, value, ...}}. Members whose entries were trimmed or
-- pruned are removed from the index as they are met, so the index heals itself.
local ids
local limit = tonumber(ARGV[3])
if ARGV[4] == '1' then
  if limit > 0 then
    ids = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[2], ARGV[1], 'LIMIT', 0, limit)
  else
    ids = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[2], ARGV[1])
  end
else
  if limit > 0 then
    ids = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, limit)
  else
    ids = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[2])
  end
end
local out = {}
for _, id in ipairs(ids) do
  local found = redis.call('XRANGE', KEYS[2], id, id)
  if #found == 0 then
    redis.call('ZREM', KEYS[1], id)
  else
    out[#out + 1] = found[1]
  end
end
return out
