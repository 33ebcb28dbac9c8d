-- lease.lua: take, renew or release exclusive access held under one key.
-- luacheck: globals KEYS ARGV redis
--
-- KEYS[1] the lease key (a string holding the holder's token, expiring after its ttl).
-- ARGV[1] take | renew | release
-- ARGV[2] the holder's token, ARGV[3] the ttl in ms (take, renew)
-- Returns 1 if the token holds the lease afterwards (take, renew) or held it before
-- (release), else 0.
--   take:    SET NX PX; a lease this token already holds is renewed (a holder re-running
--            after a conflict takes it again at once).
--   renew:   PEXPIRE if the token still holds it (a long handler keeps its lease).
--   release: DEL if the token still holds it (a handler that failed frees the key at once
--            instead of after the ttl; one that lost it frees nothing of the new holder's).
-- Why a script: "is it still mine, then change it" must not interleave with another holder.
local key, action, token = KEYS[1], ARGV[1], ARGV[2]
if action == 'take' then
  if redis.call('SET', key, token, 'NX', 'PX', ARGV[3]) then return 1 end
  if redis.call('GET', key) == token then
    redis.call('PEXPIRE', key, ARGV[3])
    return 1
  end
  return 0
elseif action == 'renew' then
  if redis.call('GET', key) == token then
    redis.call('PEXPIRE', key, ARGV[3])
    return 1
  end
  return 0
elseif action == 'release' then
  if redis.call('GET', key) == token then
    redis.call('DEL', key)
    return 1
  end
  return 0
end
return redis.error_reply('BADOP lease action ' .. tostring(action))
