-- claim.lua: claim records of one partition for one concern (set them Running), or say why not.
--
-- Why atomic: two bots that read the same record (a redelivery, a take-over after a crash)
-- must not both start handling it. Checking the stream switch, the record's disable flag and
-- its status, then setting Running and logging history, in one script means exactly one
-- claimer sees a claimable status. All keys are of one partition (one hash tag, one slot).
--
-- KEYS: 1 status hash of (kind, concern): record -> status (absent = AvailableByDefault)
--       2 flags hash of the kind: "stream:<concern>" -> DisabledForStream when the stream is
--         disabled for the concern; <record> -> DisabledForRecord when the record is disabled
--         for every concern
--       2+k history list of the k-th record
-- ARGV: concern reclaim nclaimable claimable... then per record: record claim_entry reclaim_entry
--       reclaim 1 = a Running record may be claimed again (a live bot takes over a dead
--       one's record); the entries are packed history entries for a claim and a reclaim.
-- Returns: per record {outcome, status}: outcome CLAIMED (status Running), SKIPPED (status
--          the record's current one), or BLOCKED (status DisabledForStream; nothing written).
-- Replays: a client re-sends a call whose reply a dropped connection lost. A Running record
--          whose last history entry is this call's own claim entry (same time, same actor)
--          is reported CLAIMED again without writing, so the replay does not skip (and ack)
--          an entry its caller was about to handle. A record twice in one call is claimed once.

local concern = ARGV[1]
local reclaim = ARGV[2] == '1'
local nclaimable = tonumber(ARGV[3])
local claimable = {}
for k = 1, nclaimable do claimable[ARGV[3 + k]] = true end
local at = 4 + nclaimable

local out = {}
local here = {}  -- records claimed by this call: a record twice in one call is claimed once
local blocked = redis.call('HGET', KEYS[2], 'stream:' .. concern) == 'DisabledForStream'
local k = 0
while at <= #ARGV do
  k = k + 1
  local record = ARGV[at]
  local claim_entry = ARGV[at + 1]
  local reclaim_entry = ARGV[at + 2]
  at = at + 3
  if blocked then
    out[#out + 1] = {'BLOCKED', 'DisabledForStream'}
  elseif redis.call('HGET', KEYS[2], record) == 'DisabledForRecord' then
    out[#out + 1] = {'SKIPPED', 'DisabledForRecord'}
  else
    local current = redis.call('HGET', KEYS[1], record) or 'AvailableByDefault'
    local entry = false
    if here[record] then
      entry = false
    elseif claimable[current] then
      entry = claim_entry
    elseif reclaim and current == 'Running' then
      entry = reclaim_entry
    end
    if entry then
      redis.call('HSET', KEYS[1], record, 'Running')
      redis.call('RPUSH', KEYS[2 + k], entry)
      here[record] = true
      out[#out + 1] = {'CLAIMED', 'Running'}
    elseif current == 'Running' and not here[record]
        and redis.call('LINDEX', KEYS[2 + k], -1) == claim_entry then
      -- This very call ran before and its reply was lost: the client re-sent it after a
      -- dropped connection. Its history entry is the last one, so the claim is already the
      -- caller's; skipping would ack the entry unhandled.
      here[record] = true
      out[#out + 1] = {'CLAIMED', 'Running'}
    else
      out[#out + 1] = {'SKIPPED', current}
    end
  end
end
return out
