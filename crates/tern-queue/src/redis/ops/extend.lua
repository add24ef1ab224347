-- extend: pushes the lease of a job the caller owns out to args[8] (a heartbeat: now + the lease, in ms);
-- the claim's slot follows. args[5] job id, [6] owner, [7] token (the claim id).
-- Returns {"ok", deadline} | {"notowner"} | {"gone"}.
-- A lease that has run out is not extended, even before the reaper has returned the job: its claim's slot
-- may already have been given to another claim (claim.lua drops lapsed slots), and bringing it back would
-- let the domain run over its limit. The owner may still complete the job until the reaper takes it.
-- A job in the string form stays in it: its lease is its score in `inflight`, and its owner and schedule
-- are its claim's (`cinfo`: the owner, a tab, and the schedule as the claim recorded it). The schedule is
-- read from there, never rebuilt from the caller's domain: a domain's spelling (an address literal's
-- `IPv6:`) must not decide whether a heartbeat counts.

local GONE = {'gone'}
local NOT_OWNER = {'notowner'}

register('extend', function(args)
  local id, caller, claim, deadline = args[5], args[6], args[7], args[8]
  local inflight_key = PREFIX .. 'inflight'
  -- The form and the claim token.
  local head = redis_call('GETRANGE', PREFIX .. 'jd:' .. id, '0', '26')
  local schedule
  if head == 'i' .. claim then
    -- The string form, in flight for this claim.
    -- The claim's record: its owner (which may hold a tab) up to the last tab, then its schedule.
    local owner, claimed = string_match(redis_call('HGET', PREFIX .. 'cinfo', claim) or '', '^(.*)\t([^\t]*)$')
    if owner ~= caller then return NOT_OWNER end
    -- Its lease ran out.
    if not below(NOW_TEXT, redis_call('ZSCORE', inflight_key, id) or '0') then return NOT_OWNER end
    schedule = claimed
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
