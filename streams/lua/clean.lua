-- clean.lua: one step of the cleaner on one partition: forget, unindex, trim.
-- luacheck: globals KEYS ARGV redis unpack
--
-- KEYS: every key the ops name (one partition: one slot).
-- ARGV: ops, each an opcode then its operands; keys by index into KEYS:
--   FORGET hash n field value ...   HDEL each field that still holds exactly value (a record
--                                   reset or handled again meanwhile keeps its new status)
--   UNINDEX index n field value ... the same on a latest-by-id index (object -> entry id)
--   ZREM   zset n member ...        remove members (tag and per-object indexes)
--   TRIM   stream minid             XTRIM MINID: drop the entries older than minid
--   NOTE   hash n field value ...   HSET: what was cleaned, for `streamcqrs show`
-- Returns {forgotten, unindexed, trimmed}.
-- Why a script: a step's index entries and the entries they point at go together, so a
-- cleaner killed between steps leaves every index consistent with its stream, and the next
-- leader's run of the same step finds the same work (every op is conditional or idempotent).
local i, forgotten, unindexed, trimmed = 1, 0, 0, 0
local function nxt()
  local v = ARGV[i]
  i = i + 1
  return v
end
local function key() return KEYS[tonumber(nxt())] end
while i <= #ARGV do
  local code = nxt()
  if code == 'FORGET' or code == 'UNINDEX' then
    local hash = key()
    for _ = 1, tonumber(nxt()) do
      local field, value = nxt(), nxt()
      if redis.call('HGET', hash, field) == value then
        redis.call('HDEL', hash, field)
        if code == 'FORGET' then forgotten = forgotten + 1 else unindexed = unindexed + 1 end
      end
    end
  elseif code == 'ZREM' then
    local zset = key()
    local members = {}
    for _ = 1, tonumber(nxt()) do members[#members + 1] = nxt() end
    if #members > 0 then unindexed = unindexed + redis.call('ZREM', zset, unpack(members)) end
  elseif code == 'TRIM' then
    local stream = key()
    trimmed = trimmed + redis.call('XTRIM', stream, 'MINID', nxt())
  elseif code == 'NOTE' then
    local hash = key()
    local pairs_ = {}
    for _ = 1, tonumber(nxt()) do
      pairs_[#pairs_ + 1] = nxt()
      pairs_[#pairs_ + 1] = nxt()
    end
    if #pairs_ > 0 then redis.call('HSET', hash, unpack(pairs_)) end
  else
    return redis.error_reply('BADOP ' .. tostring(code))
  end
end
return {forgotten, unindexed, trimmed}
