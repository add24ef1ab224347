-- extend: pushes the lease of a job the caller owns out to args[8] (a heartbeat: now + the lease, in ms);
-- the claim's slot follows. args[5] job id, [6] owner, [7] token (the claim id), [9] the job's domain.
-- Returns {"ok", deadline} | {"notowner"} | {"gone"}.
-- A lease that has run out is not extended, even before the reaper has returned the job: its claim's slot
-- may already have been given to another claim (claim.lua drops lapsed slots), and bringing it back would
-- let the domain run over its limit. The owner may still complete the job until the reaper takes it.
-- A job in the string form stays in it: its lease is its score in `inflight`, and its owner and schedule
-- are its claim's (`cinfo`: the owner and the job's domain).

local GONE = {'gone'}
local NOT_OWNER = {'notowner'}

register('extend', function(args)
  local id, caller, claim, deadline, domain = args[5], args[6], args[7], args[8], args[9]
  local inflight_key = PREFIX .. 'inflight'
  -- The form and the claim token.
  local head = redis_call('GETRANGE', PREFIX .. 'jd:' .. id, '0', '26')
  local schedule
  if head == 'i' .. claim then
    -- The string form, in flight for this claim.
    if redis_call('HGET', PREFIX .. 'cinfo', claim) ~= caller .. '\t' .. domain then return NOT_OWNER end
    -- Its lease ran out.
    if not below(NOW_TEXT, redis_call('ZSCORE', inflight_key, id) or '0') then return NOT_OWNER end
    schedule = domain
  else
    local form = string_sub(head, 1, 1)
    if form == '' then return GONE end
    if form ~= 'h' then
      -- Waiting (or a record no enqueue kept: no job), or in flight for another claim.
      if form == 'q' and unkept(id, head) then return GONE end
      return NOT_OWNER
    end
    -- Not in flight, or its lease ran out.
    if not below(NOW_TEXT, redis_call('ZSCORE', inflight_key, id) or '0') then return NOT_OWNER end
    local job_key = PREFIX .. 'job:' .. id
    local fields = redis_call('HMGET', job_key, 'state', 'owner', 'tok', 'cdom')
    if fields[1] ~= 'inflight' or fields[2] ~= caller or fields[3] ~= claim then return NOT_OWNER end
    schedule = fields[4]
    redis_call('HSET', job_key, 'lease', deadline)
  end
  redis_call('ZADD', inflight_key, deadline, id)
  -- The claim's slot follows. XX: only while it is there, as the claim's (a hold that took it over, hold.lua,
  -- keeps the connection's slot under its own member; a claim whose jobs all left flight has none).
  if schedule then redis_call('ZADD', PREFIX .. 'slots:' .. schedule, 'XX', 'GT', deadline, claim) end
  return {'ok', deadline}
end, RUNS_WHEN_FULL)
