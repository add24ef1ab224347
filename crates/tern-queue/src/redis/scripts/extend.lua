-- Pushes the lease of a job the caller owns to now + ARGV[7] ms (a heartbeat); the claim's slot follows.
-- ARGV[4] job id, [5] owner, [6] token. Returns {"ok", deadline} | {"notowner"} | {"gone"}.
-- A lease that has run out is not extended, even before the reaper has returned the job: its claim's slot
-- may already have been given to another claim (claim.lua drops lapsed slots), and bringing it back would
-- let the domain run over its limit. The owner may still complete the job until the reaper takes it.
local ID, OWNER, TOK = ARGV[4], ARGV[5], ARGV[6]
local jkey = jk(ID)
if not promote(ID) then return {'gone'} end
-- Not in flight, or its lease ran out.
if tonumber(redis.call('ZSCORE', k('inflight'), ID) or '0') <= NOW then return {'notowner'} end
local f = redis.call('HMGET', jkey, 'state', 'owner', 'tok', 'cdom')
if f[1] ~= 'inflight' or f[2] ~= OWNER or f[3] ~= TOK then return {'notowner'} end
local deadline = NOW + tonumber(ARGV[7])
local dl = string.format('%d', deadline)
redis.call('HSET', jkey, 'lease', dl)
redis.call('ZADD', k('inflight'), deadline, ID)
-- The token is the claim id. Its slot follows, unless it became a hold (hold.lua): the hold keeps the
-- connection's slot then, and the claim must not count twice.
if f[4] and redis.call('HEXISTS', k('claims'), TOK) == 1 then
  local sk = k('slots:' .. f[4])
  -- XX: the slot is there (its deadline is at least this job's lease, which has not run out).
  if not redis.call('ZSCORE', sk, 'h:' .. TOK) then redis.call('ZADD', sk, 'XX', 'GT', deadline, TOK) end
end
return {'ok', dl}
