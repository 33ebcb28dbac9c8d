-- read_in_turn.lua: read new entries for a concern that handles each object's entries in order.
-- luacheck: globals KEYS ARGV redis unpack
--
-- Why a script: two consumers of one group may read two entries of one object at nearly the
-- same time; if each then took the object's turn in a call of its own, the later entry could
-- win. Reading and taking turns in one script hands out turns in stream order.
--
-- KEYS: stream, turns (hash: object -> record holding its turn), waiting (stream of parked
--       entries), queue (sorted set by lex, members "object \0 position \0 parked entry id")
-- ARGV: group, consumer, count
--
-- An entry takes part when it carries a record id ("id") and an object ("obj") and is not a
-- copy meant for another concern ("for"). It is delivered when its object's turn is free
-- (it takes it) or already its record's (a retry coming back); otherwise it is parked behind
-- the holder and acked, and the commit that settles the holder for good hands the turn on
-- (RELEASE in commit.lua). Other entries are delivered as they are.
--
-- Reply: {entries, read, last}: the delivered entries as XREADGROUP gives them, how many were
-- read, and (when none was) the stream's last entry id, to block on with XREAD from there.
local stream, turns, waiting, queue = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, consumer, count = ARGV[1], ARGV[2], ARGV[3]

local function pad(digits) return string.rep('0', 20 - #digits) .. digits end

local function position(entry_id)
  local ms, seq = string.match(entry_id, '^(%d+)-(%d+)$')
  return pad(ms) .. pad(seq)
end

local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count,
  'STREAMS', stream, '>')
if not reply then
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
  return {{}, 0, last and last[1] or '0-0'}
end

local delivered = {}
local read = reply[1][2]
for _, entry in ipairs(read) do
  local fields, record, obj, only = entry[2], nil, nil, nil
  for n = 1, #fields, 2 do
    local name = fields[n]
    if name == 'id' then record = fields[n + 1]
    elseif name == 'obj' then obj = fields[n + 1]
    elseif name == 'for' then only = fields[n + 1] end
  end
  local holder = false
  if record and record ~= '' and obj and obj ~= '' and (not only or only == group) then
    holder = redis.call('HGET', turns, obj)
    if not holder then
      redis.call('HSET', turns, obj, record)
      holder = record
    end
  end
  if not holder or holder == record then
    delivered[#delivered + 1] = entry
  else
    local parked = redis.call('XADD', waiting, '*', unpack(fields))
    redis.call('ZADD', queue, 0, obj .. '\0' .. position(parked) .. '\0' .. parked)
    redis.call('XACK', stream, group, entry[1])
  end
end
return {delivered, #read, ''}
