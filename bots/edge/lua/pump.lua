-- pump.lua: one subscription's delivery state, and the lease that lets one sender at a time
-- deliver to it (so its receiver gets its deliveries in order).
-- luacheck: globals KEYS ARGV redis unpack
--
-- Why a script: taking the lease must read and write the holder atomically, and a sender
-- whose lease lapsed (it hung) must not move the cursor another sender now owns.
--
-- KEYS[1]  the pump hash: holder, until (server ms), done (the queue's last settled sequence
--          number), and per generation of the subscription: replayed, closed, and
--          replay:<stream> (the last entry of that stream delivered by the replay).
-- ARGV     mode holder lease_ms [field value ...]
--   take   take the lease if it is free, lapsed or already this holder's
--          -> {1 or 0, {field, value, ...}} (the hash, whether taken or not)
--   set    if this holder has the lease: set the field/value pairs and extend it -> 1 or 0
--   give   if this holder has the lease: give it up -> 1 or 0
local key, mode, holder, lease = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local current = redis.call('HGET', key, 'holder')
local expires = tonumber(redis.call('HGET', key, 'until') or '0')
local mine = current == holder

if mode == 'take' then
  local taken = 0
  if not current or mine or expires < now then
    redis.call('HSET', key, 'holder', holder, 'until', now + lease)
    taken = 1
  end
  return {taken, redis.call('HGETALL', key)}
elseif mode == 'set' then
  if not mine then return 0 end
  local values = {}
  for n = 4, #ARGV do values[#values + 1] = ARGV[n] end
  redis.call('HSET', key, 'until', now + lease, unpack(values))
  return 1
elseif mode == 'give' then
  if not mine then return 0 end
  redis.call('HDEL', key, 'holder', 'until')
  return 1
end
return redis.error_reply('BADOP pump mode must be take, set or give')
