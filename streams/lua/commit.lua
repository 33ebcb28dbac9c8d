-- commit.lua: apply a batch of writes atomically, after checking all their preconditions.
--
-- Why atomic: a handler's outputs (entries, aggregate events, delayed work, handling status)
-- and the ack of its input must all happen or none; an optimistic-concurrency check must see
-- the state it guards. Redis runs a script without interleaving, so checks then writes in one
-- script is the commit. Every key is passed in KEYS (one cluster slot: callers keep all keys of
-- a commit under one hash tag); ARGV is a flat program of ops that name keys by KEYS index.
--
-- ARGV: a sequence of ops, each an opcode followed by its operands:
--   PUT    stream index byid ntag tag... strategy keep obj maxlen nfield field...
--          strategy: write | skip | raise | prune (keep the newest `keep` entries of obj;
--          byid is the per-object zset prune uses, 0 otherwise). maxlen 0 = no trim.
--   APPEND aggstream versions msgids events evindex aggid expected nevent
--          then per event: msgid ntag tag... nfield field...
--          expected -1 = no version check. Each event also goes to the events stream.
--   ACK    stream group nid id...
--   DELAY  zset score member
--   STATUS statushash history record newstatus nallowed allowed... entry
--          (allowed empty = any current status; absent status reads as AvailableByDefault)
--   DEL    key                         (delete a key, e.g. a consumed delayed member's body)
--   ZREM   zset member
--   TAKE   zset member                (remove member; if it is already gone, fail with GONE:
--                                      another bot took it, so this batch must not run)
--   OWNS   stream group consumer nid id...
--          (check only: each entry is still pending in group AND owned by consumer; if not,
--           fail with NOTOWNER: the entry was taken over by XAUTOCLAIM from a bot that was
--           slower than the visibility timeout, and the new owner will commit it instead.
--           Checked with the other preconditions, so a bot that lost its entry writes nothing)
--   TOUCH  stream group consumer idle nid id...
--          (for each entry still owned by consumer: XCLAIM it to itself with IDLE idle, JUSTID.
--           idle 0 keeps a long-running handler's claim; a huge idle releases the entry so
--           another bot's XAUTOCLAIM takes it at once. Entries owned by another are skipped)
--   OUTBOX outbox nfield field...
--          (XADD to the partition's outbox: an output bound for another cluster slot, encoded
--           as the KEYS and ARGV of a commit there; a relay forwards it, de-duplicated by id)
-- Returns: one reply per op, in order:
--   PUT -> {entry_id, written}   APPEND -> {version, {entry_id...}, written}
--   TOUCH -> {entry_id...} (the ones still owned)   OUTBOX -> entry_id   others -> 1
-- Errors (nothing is written): "CONFLICT <aggid> <expected> <actual>",
--   "DUPLICATE <obj> <entry_id>", "STATUS <record> <current>", "GONE <member>",
--   "NOTOWNER <stream> <entry_id>", "MIXED <aggid> <repeated> <total>" (an append whose
--   event ids are partly already stored).

local ops = {}
local i = 1
local function nxt()
  local v = ARGV[i]
  i = i + 1
  return v
end
local function key() return KEYS[tonumber(nxt())] end
local function list(n, f)
  local out = {}
  for _ = 1, n do out[#out + 1] = f() end
  return out
end
local function optkey()
  local k = tonumber(nxt())
  if k == 0 then return false end
  return KEYS[k]
end

-- Parse and check every op before writing anything.
while i <= #ARGV do
  local code = nxt()
  local op = {code = code}
  if code == 'PUT' then
    op.stream = key(); op.index = optkey(); op.byid = optkey()
    op.tags = list(tonumber(nxt()), key)
    op.strategy = nxt(); op.keep = tonumber(nxt()); op.obj = nxt()
    op.maxlen = tonumber(nxt())
    op.fields = list(tonumber(nxt()), nxt)
    if op.obj ~= '' and op.index and op.strategy ~= 'write' and op.strategy ~= 'prune' then
      local found = redis.call('HGET', op.index, op.obj)
      if found and #redis.call('XRANGE', op.stream, found, found) == 0 then
        found = false  -- the indexed record was trimmed: nothing to skip for or refuse
      end
      if found then
        if op.strategy == 'raise' then
          return redis.error_reply('DUPLICATE ' .. op.obj .. ' ' .. found)
        end
        op.existing = found
      end
    end
  elseif code == 'APPEND' then
    op.agg = key(); op.versions = key(); op.msgids = key(); op.events = key()
    op.evindex = optkey(); op.aggid = nxt(); op.expected = tonumber(nxt())
    op.list = list(tonumber(nxt()), function()
      local ev = {msgid = nxt()}
      ev.tags = list(tonumber(nxt()), key)
      ev.fields = list(tonumber(nxt()), nxt)
      return ev
    end)
    local originals = {}
    for _, ev in ipairs(op.list) do
      local seen = redis.call('HGET', op.msgids, ev.msgid)
      if seen then originals[#originals + 1] = seen end
    end
    op.actual = tonumber(redis.call('HGET', op.versions, op.aggid) or '0')
    if #originals > 0 and #originals < #op.list then
      -- Some ids repeat and some are new: not a retry of one append, and neither returning
      -- the originals (dropping the new events) nor writing (repeating the old) is right.
      return redis.error_reply(
        'MIXED ' .. op.aggid .. ' ' .. #originals .. ' ' .. #op.list)
    elseif #originals > 0 then
      op.originals = originals
    elseif op.expected >= 0 and op.expected ~= op.actual then
      return redis.error_reply(
        'CONFLICT ' .. op.aggid .. ' ' .. op.expected .. ' ' .. op.actual)
    end
  elseif code == 'ACK' then
    op.stream = key(); op.group = nxt(); op.ids = list(tonumber(nxt()), nxt)
  elseif code == 'DELAY' then
    op.zset = key(); op.score = nxt(); op.member = nxt()
  elseif code == 'STATUS' then
    op.hash = key(); op.history = key(); op.record = nxt(); op.status = nxt()
    local allowed = list(tonumber(nxt()), nxt)
    op.entry = nxt()
    if #allowed > 0 then
      local current = redis.call('HGET', op.hash, op.record) or 'AvailableByDefault'
      local ok = false
      for _, s in ipairs(allowed) do if s == current then ok = true end end
      if not ok then
        return redis.error_reply('STATUS ' .. op.record .. ' ' .. current)
      end
    end
  elseif code == 'DEL' then
    op.key = key()
  elseif code == 'ZREM' then
    op.zset = key(); op.member = nxt()
  elseif code == 'TAKE' then
    op.zset = key(); op.member = nxt()
    if not redis.call('ZSCORE', op.zset, op.member) then
      return redis.error_reply('GONE delayed entry already taken')
    end
    op.code = 'ZREM'
  elseif code == 'OWNS' then
    op.stream = key(); op.group = nxt(); op.consumer = nxt()
    for _, id in ipairs(list(tonumber(nxt()), nxt)) do
      -- pcall: a group that vanished (FLUSHALL) means the entry is not ours any more.
      local found = redis.pcall('XPENDING', op.stream, op.group, id, id, 1, op.consumer)
      if type(found) ~= 'table' or found.err or #found == 0 then
        return redis.error_reply('NOTOWNER ' .. op.stream .. ' ' .. id)
      end
    end
  elseif code == 'TOUCH' then
    op.stream = key(); op.group = nxt(); op.consumer = nxt(); op.idle = nxt()
    op.ids = list(tonumber(nxt()), nxt)
  elseif code == 'OUTBOX' then
    op.outbox = key(); op.fields = list(tonumber(nxt()), nxt)
  else
    return redis.error_reply('BADOP ' .. tostring(code))
  end
  ops[#ops + 1] = op
end

local function ms_of(id) return tonumber(string.match(id, '^(%d+)')) end
-- True if entry id a is older than b, comparing (ms, seq) as numbers, not as strings.
local function older(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if am ~= bm then return tonumber(am) < tonumber(bm) end
  return tonumber(as) < tonumber(bs)
end

-- XADD one entry, then index it by object id and by each tag key.
local function add(stream, index, tags, obj, fields, maxlen)
  local id
  if maxlen and maxlen > 0 then
    id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(fields))
  else
    id = redis.call('XADD', stream, '*', unpack(fields))
  end
  if index and obj ~= '' then redis.call('HSET', index, obj, id) end
  local ms = ms_of(id)
  for _, t in ipairs(tags) do redis.call('ZADD', t, ms, id) end
  return id
end

local replies = {}
for _, op in ipairs(ops) do
  local code = op.code
  if code == 'PUT' then
    if op.existing then
      replies[#replies + 1] = {op.existing, 0}
    else
      local id = add(op.stream, op.index, op.tags, op.obj, op.fields, op.maxlen)
      if op.byid and op.obj ~= '' then
        redis.call('ZADD', op.byid, ms_of(id), id)
        local extra = redis.call('ZCARD', op.byid) - op.keep
        if extra > 0 then
          -- Entries of one ms tie on score and ZRANGE would order them as strings
          -- ("5-10" before "5-9"), pruning the newest: sort by id as numbers instead.
          local all = redis.call('ZRANGE', op.byid, 0, -1)
          table.sort(all, older)
          local old = {}
          for k = 1, extra do old[k] = all[k] end
          redis.call('ZREM', op.byid, unpack(old))
          redis.call('XDEL', op.stream, unpack(old))
        end
      end
      replies[#replies + 1] = {id, 1}
    end
  elseif code == 'APPEND' then
    if op.originals then
      replies[#replies + 1] = {op.actual, op.originals, 0}
    else
      local version = op.actual
      local ids = {}
      for _, ev in ipairs(op.list) do
        version = version + 1
        ev.fields[#ev.fields + 1] = 'seq'
        ev.fields[#ev.fields + 1] = tostring(version)
        local id = redis.call('XADD', op.agg, '*', unpack(ev.fields))
        redis.call('HSET', op.msgids, ev.msgid, id)
        add(op.events, op.evindex, ev.tags, op.aggid, ev.fields, 0)
        ids[#ids + 1] = id
      end
      redis.call('HSET', op.versions, op.aggid, version)
      replies[#replies + 1] = {version, ids, 1}
    end
  elseif code == 'ACK' then
    if #op.ids > 0 then redis.call('XACK', op.stream, op.group, unpack(op.ids)) end
    replies[#replies + 1] = 1
  elseif code == 'DELAY' then
    redis.call('ZADD', op.zset, op.score, op.member)
    replies[#replies + 1] = 1
  elseif code == 'STATUS' then
    redis.call('HSET', op.hash, op.record, op.status)
    redis.call('RPUSH', op.history, op.entry)
    replies[#replies + 1] = 1
  elseif code == 'DEL' then
    redis.call('DEL', op.key)
    replies[#replies + 1] = 1
  elseif code == 'ZREM' then
    redis.call('ZREM', op.zset, op.member)
    replies[#replies + 1] = 1
  elseif code == 'OWNS' then
    replies[#replies + 1] = 1
  elseif code == 'TOUCH' then
    local kept = {}
    for _, id in ipairs(op.ids) do
      local found = redis.pcall('XPENDING', op.stream, op.group, id, id, 1, op.consumer)
      if type(found) == 'table' and not found.err and #found > 0 then
        redis.call('XCLAIM', op.stream, op.group, op.consumer, 0, id, 'IDLE', op.idle, 'JUSTID')
        kept[#kept + 1] = id
      end
    end
    replies[#replies + 1] = kept
  elseif code == 'OUTBOX' then
    replies[#replies + 1] = redis.call('XADD', op.outbox, '*', unpack(op.fields))
  end
end
return replies
