-- by_tag.lua: the records carrying one tag within a time range, in one round trip.
-- KEYS[1] tag index zset (entry id scored by ms), KEYS[2] the stream.
-- ARGV[1] min ms, ARGV[2] max ms, ARGV[3] limit (0 = none), ARGV[4] "1" for newest first.
-- Returns a list of {entry_id, {field, value, ...}} in entry-id order (oldest first, or newest
-- first), at most `limit` long. Members whose entries were trimmed or pruned are removed from
-- the index as they are met, so the index heals itself, and the read goes on past them so a
-- limit counts live records only. Atomic so that the index and the stream agree.
local low, high = ARGV[1], ARGV[2]
local limit = tonumber(ARGV[3])
local newest = ARGV[4] == '1'

local function parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function before(a, b)
  local am, as = parts(a)
  local bm, bs = parts(b)
  if am == bm then am, bm = as, bs end
  if newest then return am > bm end
  return am < bm
end

-- The candidate ids, in order. Members of one ms tie on score and the zset orders ties as
-- strings ("5-10" before "5-9"), so a limited read also takes every member of its last score,
-- and the ids are sorted as numbers.
local function candidates()
  local ids = {}
  if limit == 0 then
    ids = redis.call('ZRANGEBYSCORE', KEYS[1], low, high)
  else
    local page
    if newest then
      page = redis.call('ZREVRANGEBYSCORE', KEYS[1], high, low, 'WITHSCORES', 'LIMIT', 0, limit)
    else
      page = redis.call('ZRANGEBYSCORE', KEYS[1], low, high, 'WITHSCORES', 'LIMIT', 0, limit)
    end
    local last = page[#page]
    for k = 1, #page, 2 do
      if page[k + 1] ~= last then ids[#ids + 1] = page[k] end
    end
    if last then
      for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], last, last)) do
        ids[#ids + 1] = id
      end
    end
  end
  table.sort(ids, before)
  return ids
end

-- Each pass that meets stale members removes them, so passes end: at the latest when a pass
-- meets none, or as soon as `limit` live records are found.
local out
repeat
  out = {}
  local stale = 0
  for _, id in ipairs(candidates()) do
    local found = redis.call('XRANGE', KEYS[2], id, id)
    if #found == 0 then
      redis.call('ZREM', KEYS[1], id)
      stale = stale + 1
    elseif limit == 0 or #out < limit then
      out[#out + 1] = found[1]
    end
  end
until stale == 0 or limit == 0 or #out >= limit
return out
