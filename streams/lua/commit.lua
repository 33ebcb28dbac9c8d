-- commit.lua: apply one or more commits, each atomically after checking its preconditions.
-- luacheck: globals KEYS ARGV redis unpack
--
-- Why atomic: a handler's outputs (entries, aggregate events, delayed work), its record's
-- handling status and the ack of its input must all happen or none; an optimistic-concurrency
-- check must see the state it guards. Redis runs a script without interleaving, so "check
-- every precondition of a commit, then write it" inside one script is the commit. One call
-- carries many independent commits (a bot's whole round): each is checked and applied on its
-- own, in order, so a later commit sees what an earlier one wrote, and one commit's failed
-- check (a version conflict, a lost entry) leaves the others untouched.
--
-- KEYS: every key the commits touch (declared for cluster routing and ACLs; on a cluster the
--       caller sends only commits of one hash tag per call).
-- ARGV: commits, each  BEGIN nkeys key... op...  where ops name keys by index into the
--       commit's own key list, and each op is an opcode followed by its operands:
--   INPUT  stream group consumer id   the input: checked to be still pending on this consumer
--          (a bot slower than the visibility timeout lost it to XAUTOCLAIM: NOTOWNER, nothing
--          is written, the new owner commits instead), then acked.
--   PUT    stream index byid ntag tag... strategy keep obj maxlen recent older token
--          nvalue value... nextra extra...
--          values are the envelope's, in the order of ENVELOPE below (the last, trace, only
--          when the envelope has one: nvalue is 10 or 11); extra are more
--          field/value pairs (a retry's attempt and concern).
--          strategy: write | skip | raise | prune (keep the newest `keep` entries of obj; byid
--          is the per-object zset prune uses, 0 otherwise). index 0 = no latest-by-id index.
--          maxlen 0 = no trim. skip/raise see a record of obj in the index (not trimmed).
--          recent/older (0 = none): for a standalone put, which redis-py may re-send after a
--          lost reply, the hashes of the puts made this minute and the minute before (token ->
--          entry id). The token is unique to this call, so a put found there is this very
--          call, re-sent: reply {that entry, 1} and write nothing. (A new put of the same
--          message, as a retry or an operator's re-put, has a new token and is written.)
--          Only the put's own script reads these hashes: a write-only client needs no read
--          grant on its stream.
--   APPEND agglist events evindex aggid expected nevent then per event:
--          element ntag tag... nvalue value...
--          agglist is the aggregate's own list of packed events (a msgpack array; the commit
--          adds the event's entry id in the events stream as its last item); an optional
--          first item "H<base>" says `base` older events were compacted away behind a
--          snapshot. version = base + events in the list; expected -1 = no version check.
--          The envelope goes to the subsystem's events stream with "seq" = the new version.
--          An append whose events are the aggregate's last ones (same message ids, the first
--          item of each element) is a replay: nothing is written, the originals' entry ids
--          are returned.
--   SNAPSHOT agglist version, then a PUT's operands (without the opcode)
--          the put (of a snapshot, into the snapshots stream) happens only if, when it is
--          applied, the aggregate is still at version (after this commit's own appends); a
--          state that moved on is not stored. Replies like PUT, {false, 0} when skipped.
--   RELEASE turns obj record waiting queue stream concern
--          a record of a concern handled in order per object (read_in_turn.lua) is settled
--          for good: if it holds obj's turn, the oldest entry parked behind it goes back into
--          stream, for concern only, holding the turn; with none parked the turn is free.
--   SETTLE hash record newstatus allowed entry
--          a record's handling status for one concern: the hash field holds
--          "<status>|<history entries, packed, oldest first>". Refused (STATUS) unless the
--          current status (absent = AvailableByDefault) is in allowed, a comma-separated
--          list ("" = any); a replay of this very change (status already newstatus, history
--          ending with entry) writes nothing and succeeds. As a commit's last op, a record
--          without a status (the common case) is set by one HSETNX in the check.
--   SWITCH hash log field newvalue nallowed allowed... entry
--          a stream or record switch: field = newvalue if the current value is allowed, and
--          entry pushed onto the switch log list.
--   DELAY  zset score member
--   TAKE   zset member                 remove a delayed member that must still be there; if
--                                      another mover took it: GONE
--   ZREM   zset member
--   DEL    key
--   TOUCH  stream group consumer idle nid id...
--          each entry still owned by consumer: XCLAIM to itself with IDLE idle, JUSTID (0 keeps
--          a long handler's claim; a huge idle hands it to the next XAUTOCLAIM).
--   OUTBOX outbox nfield field...     XADD to the partition's outbox (cluster: a commit for
--                                      another slot, forwarded by the relay)
--   LEASE  key token                   exclusive access as a fence: refused (LEASE) unless
--                                      the lease is still held by token (a holder whose lease
--                                      expired, or was taken over, writes nothing); then released
--   RECEIPT key nfield field... deleteat
--                                      a ticket's receipt: HSET the field/value pairs; with
--                                      deleteat > 0 the receipt expires then (PEXPIREAT)
--   CURSOR hash field expected new     a schedule's last due time: refused (TAKEN) unless the
--                                      field holds expected ("" = absent), then set to new; so
--                                      of many bots putting one due time, exactly one does
--   COMPACT agglist upto               drop an aggregate's events up to version upto (behind a
--                                      snapshot at that version), keeping the version in the
--                                      "H<base>" header item; nothing if already compacted
--   ONCE   key ttl value               a key set once: if it exists the commit is refused
--          (ONCE, with what it holds) and writes nothing; else it is SET to value for ttl ms
--          ("" = the entry id of the commit's last PUT before it). Only this script reads it,
--          so a write-only client can guard its puts (idempotency keys, tracking pointers)
--          without any read grant on its stream.
--   MARK   marks older ttl msgid      a relay's forward of an outbox entry, put first in the
--          forwarded commit: if msgid is a field of marks or older (the hashes of message
--          ids forwarded into this slot this period and the last), the commit was applied
--          before: DONE, nothing is written. Otherwise msgid is added to marks (kept ttl s).
--   UNQUEUE stream nid id...          XDEL entries of an outbox, the first of which must still
--                                      be there (else FORWARDED: another relay did it)
-- Returns: per commit, {1, {reply per op}} or {0, error}:
--   PUT -> {entry_id, written}  APPEND -> {version, {entry_id...}, written}
--   TOUCH -> {entry_id...} (still owned)  OUTBOX -> entry_id  COMPACT -> events dropped
--   ONCE -> the value set  UNQUEUE -> number deleted
--   others -> 1
--   errors: "CONFLICT <aggid> <expected> <actual>", "DUPLICATE <obj> <entry_id>",
--   "STATUS <record> <current>", "GONE <member>", "NOTOWNER <stream> <entry_id>",
--   "MIXED <aggid> <repeated> <total>" (an append repeating some of the last events' ids),
--   "LEASE <key>" (the lease is not held by this token), "TAKEN <field> <current>",
--   "ONCE <key> <value>" (a ONCE key already set; value: what it holds),
--   "DONE <msgid>" (MARK: forwarded before), "FORWARDED <id>" (UNQUEUE: gone already).

local ENVELOPE = {'id', 'type', 'schema', 'obj', 'corr', 'cause', 'at', 'tags', 'fmt', 'data', 'trace'}

local i = 1
local K = {}
local function nxt()
  local v = ARGV[i]
  i = i + 1
  return v
end
local function key() return K[tonumber(nxt())] end
local function optkey()
  local k = tonumber(nxt())
  if k == 0 then return false end
  return K[k]
end
local function list(n, f)
  local out = {}
  for _ = 1, n do out[#out + 1] = f() end
  return out
end
-- The field/value list of an entry: the envelope's values named, then extra pairs.
local function envelope_fields(nextra)
  local out = {}
  local n = tonumber(nxt())
  for k = 1, n do
    out[#out + 1] = ENVELOPE[k]
    out[#out + 1] = nxt()
  end
  for _ = 1, nextra and tonumber(nxt()) or 0 do out[#out + 1] = nxt() end
  return out
end

local function ms_of(id) return tonumber(string.match(id, '^(%d+)')) end
-- True if entry id a is older than b, comparing (ms, seq) as numbers, not as strings.
local function older(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if am ~= bm then return tonumber(am) < tonumber(bm) end
  return tonumber(as) < tonumber(bs)
end

-- The raw bytes of the first item of a msgpack array (the message id of a packed event).
local function first_item(packed)
  local h = string.byte(packed, 2)
  if not h then return '' end
  if h >= 0xa0 and h <= 0xbf then return string.sub(packed, 2, 2 + h - 0xa0) end
  if h == 0xd9 or h == 0xc4 then return string.sub(packed, 2, 3 + string.byte(packed, 3)) end
  if h == 0xda or h == 0xc5 then
    return string.sub(packed, 2, 4 + string.byte(packed, 3) * 256 + string.byte(packed, 4))
  end
  return string.sub(packed, 2, 2)
end
-- The last item of a packed event: its entry id in the events stream (a short str).
local function last_item(packed)
  local found = string.match(packed, '(%d+%-%d+)$')
  return found or ''
end

-- An aggregate's version and the number of packed events (and header) in its list.
local function aggregate_state(agg)
  local n = redis.call('LLEN', agg)
  if n == 0 then return 0, 0, 0 end
  local head = redis.call('LINDEX', agg, 0)
  if string.sub(head, 1, 1) == 'H' then return tonumber(string.sub(head, 2)) + n - 1, n - 1, 1 end
  return n, n, 0
end

local function status_of(value)
  if not value then return 'AvailableByDefault', '' end
  local bar = string.find(value, '|', 1, true)
  if not bar then return value, '' end
  return string.sub(value, 1, bar - 1), string.sub(value, bar + 1)
end

local function allowed_in(allowed, current)
  if type(allowed) == 'string' then
    return allowed == '' or string.find(',' .. allowed .. ',', ',' .. current .. ',', 1, true)
  end
  if #allowed == 0 then return true end
  for _, s in ipairs(allowed) do if s == current then return true end end
  return false
end

-- Parse one op (consuming its operands); return it, with what its check needs.
local function parse(code)
  local op = {code = code}
  if code == 'INPUT' then
    op.stream = key(); op.group = nxt(); op.consumer = nxt(); op.id = nxt()
  elseif code == 'PUT' then
    op.stream = key(); op.index = optkey(); op.byid = optkey()
    op.tags = list(tonumber(nxt()), key)
    op.strategy = nxt(); op.keep = tonumber(nxt()); op.obj = nxt()
    op.maxlen = tonumber(nxt()); op.recent = optkey(); op.older = optkey(); op.token = nxt()
    op.fields = envelope_fields(true)
  elseif code == 'APPEND' then
    op.agg = key(); op.events = key(); op.evindex = optkey(); op.aggid = nxt()
    op.expected = tonumber(nxt())
    op.list = list(tonumber(nxt()), function()
      local ev = {element = nxt()}
      ev.tags = list(tonumber(nxt()), key)
      ev.fields = envelope_fields(false)
      return ev
    end)
  elseif code == 'SNAPSHOT' then
    op.agg = key(); op.version = tonumber(nxt()); op.put = parse('PUT')
  elseif code == 'RELEASE' then
    op.hash = key(); op.obj = nxt(); op.record = nxt(); op.wait = key(); op.queue = key()
    op.stream = key(); op.concern = nxt()
  elseif code == 'SETTLE' then
    op.hash = key(); op.record = nxt(); op.status = nxt(); op.allowed = nxt(); op.entry = nxt()
  elseif code == 'SWITCH' then
    op.hash = key(); op.log = key(); op.field = nxt(); op.value = nxt()
    op.allowed = list(tonumber(nxt()), nxt); op.entry = nxt()
  elseif code == 'DELAY' then
    op.zset = key(); op.score = nxt(); op.member = nxt()
  elseif code == 'TAKE' or code == 'ZREM' then
    op.zset = key(); op.member = nxt()
  elseif code == 'DEL' then
    op.key = key()
  elseif code == 'TOUCH' then
    op.stream = key(); op.group = nxt(); op.consumer = nxt(); op.idle = nxt()
    op.ids = list(tonumber(nxt()), nxt)
  elseif code == 'OUTBOX' then
    op.outbox = key(); op.fields = list(tonumber(nxt()), nxt)
  elseif code == 'LEASE' then
    op.key = key(); op.token = nxt()
  elseif code == 'RECEIPT' then
    op.key = key(); op.fields = list(tonumber(nxt()), nxt); op.deleteat = tonumber(nxt())
  elseif code == 'CURSOR' then
    op.hash = key(); op.field = nxt(); op.expected = nxt(); op.new = nxt()
  elseif code == 'COMPACT' then
    op.agg = key(); op.upto = tonumber(nxt())
  elseif code == 'ONCE' then
    op.key = key(); op.ttl = nxt(); op.value = nxt()
  elseif code == 'MARK' then
    op.marks = key(); op.older = key(); op.ttl = nxt(); op.id = nxt()
  elseif code == 'UNQUEUE' then
    op.stream = key(); op.ids = list(tonumber(nxt()), nxt)
  else
    return nil, 'BADOP ' .. tostring(code)
  end
  return op
end

local function owned(stream, group, consumer, id)
  -- pcall: a group that vanished (FLUSHALL) means the entry is not ours any more.
  local found = redis.pcall('XPENDING', stream, group, id, id, 1, consumer)
  return type(found) == 'table' and not found.err and #found > 0
end

-- Check one op against the current state; return an error text to refuse the commit.
-- ``last``: no op after this one is checked.
local function check(op, last)
  local code = op.code
  if code == 'INPUT' then
    if not owned(op.stream, op.group, op.consumer, op.id) then
      return 'NOTOWNER ' .. op.stream .. ' ' .. op.id
    end
  elseif code == 'PUT' then
    if op.recent then
      local found = redis.call('HGET', op.recent, op.token)
      if not found and op.older then found = redis.call('HGET', op.older, op.token) end
      if found then
        op.existing = found; op.written = 1
        return nil
      end
    end
    if op.obj ~= '' and op.index and (op.strategy == 'skip' or op.strategy == 'raise') then
      local found = redis.call('HGET', op.index, op.obj)
      if found and #redis.call('XRANGE', op.stream, found, found) == 0 then
        found = false  -- the indexed record was trimmed: nothing to skip for or refuse
      end
      if found then
        if op.strategy == 'raise' then return 'DUPLICATE ' .. op.obj .. ' ' .. found end
        op.existing = found
      end
    end
  elseif code == 'APPEND' then
    local version, stored, header = aggregate_state(op.agg)
    op.actual = version
    local k = #op.list
    if k > 0 and stored > 0 then
      local tail = redis.call('LRANGE', op.agg, -math.min(k, stored), -1)
      local seen = {}
      for _, packed in ipairs(tail) do seen[first_item(packed)] = last_item(packed) end
      local repeated, originals = 0, {}
      for _, ev in ipairs(op.list) do
        local original = seen[first_item(ev.element)]
        if original then
          repeated = repeated + 1
          originals[#originals + 1] = original
        end
      end
      if repeated == k and #tail == k then
        op.originals = originals
        return nil
      elseif repeated > 0 then
        return 'MIXED ' .. op.aggid .. ' ' .. repeated .. ' ' .. k
      end
    end
    if op.expected >= 0 and op.expected ~= op.actual then
      return 'CONFLICT ' .. op.aggid .. ' ' .. op.expected .. ' ' .. op.actual
    end
  elseif code == 'SETTLE' then
    if last and allowed_in(op.allowed, 'AvailableByDefault') then
      -- Checked last, so nothing after it can refuse the commit: a record without a status
      -- (the common case) is settled by the check itself.
      if redis.call('HSETNX', op.hash, op.record, op.status .. '|' .. op.entry) == 1 then
        op.done = true
        return nil
      end
    end
    local current, history = status_of(redis.call('HGET', op.hash, op.record))
    op.history = history
    if current == op.status and string.sub(history, -#op.entry) == op.entry then
      op.replay = true  -- this very change, re-sent after a lost reply: already done
    elseif not allowed_in(op.allowed, current) then
      return 'STATUS ' .. op.record .. ' ' .. current
    end
  elseif code == 'SWITCH' then
    local current = redis.call('HGET', op.hash, op.field) or 'AvailableByDefault'
    if not allowed_in(op.allowed, current) then
      return 'STATUS ' .. op.field .. ' ' .. current
    end
  elseif code == 'TAKE' then
    if not redis.call('ZSCORE', op.zset, op.member) then return 'GONE delayed entry' end
  elseif code == 'LEASE' then
    if redis.call('GET', op.key) ~= op.token then return 'LEASE ' .. op.key end
  elseif code == 'CURSOR' then
    local current = redis.call('HGET', op.hash, op.field) or ''
    if current ~= op.expected then return 'TAKEN ' .. op.field .. ' ' .. current end
  elseif code == 'ONCE' then
    local held = redis.call('GET', op.key)
    if held then return 'ONCE ' .. op.key .. ' ' .. held end
  elseif code == 'MARK' then
    if redis.call('HEXISTS', op.marks, op.id) == 1 or redis.call('HEXISTS', op.older, op.id) == 1 then
      return 'DONE ' .. op.id
    end
  elseif code == 'UNQUEUE' then
    local first = op.ids[1]
    if first and #redis.call('XRANGE', op.stream, first, first) == 0 then
      return 'FORWARDED ' .. first
    end
  end
  return nil
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

-- Hand obj's turn from a settled record to the oldest entry parked behind it (read_in_turn.lua
-- parks them: members "obj \0 position \0 parked id", so a lex range is one object's queue).
local function release(op)
  if redis.call('HGET', op.hash, op.obj) ~= op.record then return 0 end
  local prefix = op.obj .. '\0'
  while true do
    local member = redis.call('ZRANGEBYLEX', op.queue, '(' .. prefix, '(' .. op.obj .. '\1',
      'LIMIT', 0, 1)[1]
    if not member then
      redis.call('HDEL', op.hash, op.obj)
      return 0
    end
    redis.call('ZREM', op.queue, member)
    local parked = string.sub(member, #prefix + 42)
    local found = redis.call('XRANGE', op.wait, parked, parked)[1]
    if found then
      redis.call('XDEL', op.wait, parked)
      local fields, record, concerned = found[2], nil, false
      for n = 1, #fields, 2 do
        if fields[n] == 'id' then record = fields[n + 1] end
        if fields[n] == 'for' then concerned = true end
      end
      if not concerned then
        fields[#fields + 1] = 'for'
        fields[#fields + 1] = op.concern
      end
      redis.call('XADD', op.stream, '*', unpack(fields))
      redis.call('HSET', op.hash, op.obj, record)
      return 1
    end
    -- A parked entry an operator deleted: the next one in line takes the turn.
  end
end

local last_put = ''  -- the entry id of the last PUT applied: what a ONCE with value "" keeps

local apply
apply = function(op)
  local code = op.code
  if code == 'INPUT' then
    redis.call('XACK', op.stream, op.group, op.id)
    return 1
  elseif code == 'PUT' then
    if op.existing then return {op.existing, op.written or 0} end
    local id = add(op.stream, op.index, op.tags, op.obj, op.fields, op.maxlen)
    if op.recent then
      redis.call('HSET', op.recent, op.token, id)
      redis.call('EXPIRE', op.recent, 150)
    end
    if op.byid and op.obj ~= '' then
      redis.call('ZADD', op.byid, ms_of(id), id)
      local extra = redis.call('ZCARD', op.byid) - op.keep
      if extra > 0 then
        -- Entries of one ms tie on score and ZRANGE would order them as strings
        -- ("5-10" before "5-9"), pruning the newest: sort by id as numbers instead.
        local all = redis.call('ZRANGE', op.byid, 0, -1)
        table.sort(all, older)
        local old = {}
        for n = 1, extra do old[n] = all[n] end
        redis.call('ZREM', op.byid, unpack(old))
        redis.call('XDEL', op.stream, unpack(old))
      end
    end
    return {id, 1}
  elseif code == 'APPEND' then
    if op.originals then return {op.actual, op.originals, 0} end
    local version = op.actual
    local ids, elements = {}, {}
    for _, ev in ipairs(op.list) do
      version = version + 1
      ev.fields[#ev.fields + 1] = 'seq'
      ev.fields[#ev.fields + 1] = tostring(version)
      local id = add(op.events, op.evindex, ev.tags, op.aggid, ev.fields, 0)
      ids[#ids + 1] = id
      elements[#elements + 1] = ev.element .. string.char(0xa0 + #id) .. id
    end
    if #elements > 0 then redis.call('RPUSH', op.agg, unpack(elements)) end
    return {version, ids, 1}
  elseif code == 'SNAPSHOT' then
    if aggregate_state(op.agg) ~= op.version then return {false, 0} end
    return apply(op.put)
  elseif code == 'RELEASE' then
    return release(op)
  elseif code == 'SETTLE' then
    if not (op.done or op.replay) then
      redis.call('HSET', op.hash, op.record, op.status .. '|' .. op.history .. op.entry)
    end
    return 1
  elseif code == 'SWITCH' then
    redis.call('HSET', op.hash, op.field, op.value)
    redis.call('RPUSH', op.log, op.entry)
    return 1
  elseif code == 'DELAY' then
    redis.call('ZADD', op.zset, op.score, op.member)
    return 1
  elseif code == 'TAKE' or code == 'ZREM' then
    redis.call('ZREM', op.zset, op.member)
    return 1
  elseif code == 'DEL' then
    redis.call('DEL', op.key)
    return 1
  elseif code == 'TOUCH' then
    local kept = {}
    for _, id in ipairs(op.ids) do
      if owned(op.stream, op.group, op.consumer, id) then
        redis.call('XCLAIM', op.stream, op.group, op.consumer, 0, id, 'IDLE', op.idle, 'JUSTID')
        kept[#kept + 1] = id
      end
    end
    return kept
  elseif code == 'OUTBOX' then
    return redis.call('XADD', op.outbox, '*', unpack(op.fields))
  elseif code == 'LEASE' then
    redis.call('DEL', op.key)
    return 1
  elseif code == 'RECEIPT' then
    redis.call('HSET', op.key, unpack(op.fields))
    if op.deleteat > 0 then redis.call('PEXPIREAT', op.key, op.deleteat) end
    return 1
  elseif code == 'CURSOR' then
    redis.call('HSET', op.hash, op.field, op.new)
    return 1
  elseif code == 'COMPACT' then
    local version, stored, header = aggregate_state(op.agg)
    local base = version - stored
    local upto = math.min(op.upto, version)
    if upto <= base then return 0 end
    -- Drop the header (if any) and the events up to `upto`, then put the new header first.
    redis.call('LTRIM', op.agg, header + upto - base, -1)
    redis.call('LPUSH', op.agg, 'H' .. upto)
    return upto - base
  elseif code == 'ONCE' then
    local value = op.value
    if value == '' then value = last_put end
    redis.call('SET', op.key, value, 'PX', op.ttl)
    return value
  elseif code == 'MARK' then
    redis.call('HSET', op.marks, op.id, 1)
    redis.call('EXPIRE', op.marks, op.ttl)
    return 1
  elseif code == 'UNQUEUE' then
    if #op.ids == 0 then return 0 end
    return redis.call('XDEL', op.stream, unpack(op.ids))
  end
end

local results = {}
while i <= #ARGV do
  if nxt() ~= 'BEGIN' then return redis.error_reply('BADOP a commit must start with BEGIN') end
  K = list(tonumber(nxt()), nxt)
  local ops, failed = {}, nil
  while i <= #ARGV and ARGV[i] ~= 'BEGIN' do
    local op, err = parse(nxt())
    if not op then return redis.error_reply(err) end
    ops[#ops + 1] = op
  end
  for n, op in ipairs(ops) do
    failed = check(op, n == #ops)
    if failed then break end
  end
  if failed then
    results[#results + 1] = {0, failed}
  else
    local replies = {}
    for _, op in ipairs(ops) do
      local reply = apply(op)
      if op.code == 'PUT' then last_put = reply[1] end
      replies[#replies + 1] = reply
    end
    results[#results + 1] = {1, replies}
  end
end
return results
