-- Operator actions: `admin` (retry, delete, bounce, hold, unhold), `suspend` and `resume`.

-- admin: operator actions on jobs of this shard. args[5] action: retry | delete | bounce | hold | unhold;
-- args[6] "id" or "domain"; args[7] the job id or domain; args[8] the most jobs to handle in this call
-- (domain mode); args[9] the history retention (ms; "0": no history); args[10] the operator's reason for a
-- bounce ("" none).
--   retry:  a waiting job becomes due now (attempts unchanged). Jobs in flight or held are left alone.
--   delete: the job is removed (in flight too: its owner's later complete reports it gone).
--   bounce: the job is flagged admin_bounce (with the reason, `breason`) and moved to the reserved "#bounce"
--           schedule, due now, which is never suspended, so a worker claims it at once and sends the DSN; a
--           job in flight is flagged and goes to "#bounce" when its attempt ends without finishing it; a
--           held job is held no more.
--   hold:   a waiting job leaves its schedule for the domain's held jobs (`held:<domain>`), in state
--           `held`: no claim sees it, and it keeps its attempts and recipients. Jobs in flight or held
--           already are left alone.
--   unhold: a held job goes back to its schedule, due now (queued, or deferred once tried).
-- Domain mode handles up to args[8] jobs per call of the domain's waiting jobs (retry: those not due yet;
-- hold: all), held jobs (unhold), or both (delete, bounce: the waiting ones first); call again while the
-- number examined equals args[8]. Returns {jobs changed, jobs examined}.
local ACTIONS = {retry = true, delete = true, bounce = true, hold = true, unhold = true}
-- The call's bounce reason ('' none).
local reason

-- Applies `action` to job `id`; returns 1 when it changed the job, 0 when it left it alone, false when there
-- is no such job.
local function act(action, id)
  local job_key = job_hash_key(id)
  if not promote(id) then return false end
  local fields = redis_call('HMGET', job_key, 'state', 'sched', 'dom')
  local state, domain = fields[1], fields[3]
  local schedule = schedule_of(fields[2], domain)
  if action == 'delete' then
    local pending = recipients_in(job_key, 'p')
    job_event('deleted', job_key, pending)
    stat('deleted', #pending)
    remove_job(job_key, id)
    return 1
  elseif action == 'retry' then
    if state == 'inflight' or state == 'held' then return 0 end
    redis_call('ZREM', PREFIX .. 'due:' .. schedule, id)
    requeue(job_key, id, now())
    job_event('retried', job_key, recipients_in(job_key, 'p'))
    return 1
  elseif action == 'hold' then
    if state == 'inflight' or state == 'held' then return 0 end
    if redis_call('ZREM', PREFIX .. 'due:' .. schedule, id) == 1 then reindex(schedule, nil) end
    redis_call('ZADD', PREFIX .. 'held:' .. domain, NOW_TEXT, id)
    set_state(job_key, 'held')
    job_event('held', job_key, recipients_in(job_key, 'p'))
    return 1
  elseif action == 'unhold' then
    if state ~= 'held' then return 0 end
    redis_call('ZREM', PREFIX .. 'held:' .. domain, id)
    requeue(job_key, id, now())
    job_event('unheld', job_key, recipients_in(job_key, 'p'))
    return 1
  end
  -- bounce
  if reason ~= '' then
    redis_call('HSET', job_key, 'bounce', '1', 'breason', reason)
  else
    redis_call('HSET', job_key, 'bounce', '1')
  end
  if state == 'held' then redis_call('ZREM', PREFIX .. 'held:' .. domain, id) end
  if schedule ~= BOUNCE_SCHEDULE then
    redis_call('HSET', job_key, 'sched', BOUNCE_SCHEDULE)
    if redis_call('ZREM', PREFIX .. 'due:' .. schedule, id) == 1 then reindex(schedule, nil) end
  end
  if state ~= 'inflight' then requeue(job_key, id, now()) end
  job_event('bounced', job_key, recipients_in(job_key, 'p'))
  return 1
end

-- Jobs made due now (retry, bounce, unhold) wake one waiting worker; a deleted job in flight frees its
-- claim's slot (which wakes one when its domain has due jobs); a hold makes nothing claimable.
local function wake_for(action, changed)
  if changed > 0 and action ~= 'delete' and action ~= 'hold' then wake(1) end
end

register('admin', function(args)
  local action, mode, target, limit_text = args[5], args[6], args[7], args[8]
  if not ACTIONS[action] then return redis.error_reply('ERR unknown admin action ' .. tostring(action)) end
  history_keep(args[9])
  reason = args[10] or ''
  if mode == 'id' then
    local changed = act(action, target) or 0
    wake_for(action, changed)
    return {changed, 1}
  end
  local schedule_key = PREFIX .. 'due:' .. target
  local held_key = PREFIX .. 'held:' .. target
  local limit = number_of(limit_text)
  local ids
  if action == 'retry' then
    ids = redis_call('ZRANGEBYSCORE', schedule_key, '(' .. NOW_TEXT, '+inf', 'LIMIT', '0', limit_text)
  elseif action == 'unhold' then
    ids = redis_call('ZRANGE', held_key, '0', decimal(limit - 1))
  else
    ids = redis_call('ZRANGE', schedule_key, '0', decimal(limit - 1))
    if #ids < limit and (action == 'delete' or action == 'bounce') then
      -- Held jobs too, once the waiting ones are done.
      local held = redis_call('ZRANGE', held_key, '0', decimal(limit - #ids - 1))
      for k = 1, #held do ids[#ids + 1] = held[k] end
    end
  end
  local changed = 0
  for _, id in ipairs(ids) do
    local result = act(action, id)
    if not result then
      -- No such job any more: out of the indexes.
      redis_call('ZREM', schedule_key, id)
      redis_call('ZREM', held_key, id)
    elseif result == 0 then
      -- Not one this action changes, yet in the index it was found in (neither waiting nor held): out of it.
      if action == 'unhold' then redis_call('ZREM', held_key, id) else redis_call('ZREM', schedule_key, id) end
    else
      changed = changed + result
    end
  end
  wake_for(action, changed)
  return {changed, #ids}
end, RUNS_WHEN_FULL)

-- suspend: suspends a domain cluster-wide: it leaves the domain index, so no claim sees its jobs.
-- args[5] domain, [6] record (JSON: reason, since, until), [7] until ms or "" (no expiry).
register('suspend', function(args)
  local domain, record, until_text = args[5], args[6], args[7]
  redis_call('HSET', PREFIX .. 'susp', domain, record)
  if until_text ~= '' then
    redis_call('ZADD', PREFIX .. 'suspu', until_text, domain)
  else
    redis_call('ZREM', PREFIX .. 'suspu', domain)
  end
  redis_call('ZREM', PREFIX .. 'domains', domain)
  domain_event('suspended', domain, cjson.decode(record).reason)
  return 1
end, RUNS_WHEN_FULL)

-- resume: ends a domain's suspension: its earliest due job puts it back in the domain index.
-- args[5] domain. Returns 1 if it was suspended.
register('resume', function(args)
  local domain = args[5]
  local was = redis_call('HDEL', PREFIX .. 'susp', domain)
  redis_call('ZREM', PREFIX .. 'suspu', domain)
  reindex(domain, nil)
  if was == 1 then
    domain_event('resumed', domain, nil)
    -- Its due jobs are claimable again.
    local first = earliest_due(domain)
    if first and not below(NOW_TEXT, first) then wake(1) end
  end
  return was
end, RUNS_WHEN_FULL)
