-- reap: returns jobs whose lease expired to their schedule (due now), with a lease-expired event each, and
-- ends suspensions whose time is up, and trims the history index. Safe to run on many nodes at once: each
-- job is handled by one call.
-- args[5] the most jobs to handle in this call, [6] the history retention (ms; "0": no history), [7] the
-- history index's horizon (ms: now - the retention): messages whose id's time is before it leave `hidx`
-- (their history lists expire by themselves), at most HISTORY_TRIM per call.
-- Returns {jobs returned, suspensions ended}.
local HISTORY_TRIM = 1000

register('reap', function(args)
  history_keep(args[6])
  local ids = redis_call('ZRANGEBYSCORE', PREFIX .. 'inflight', '-inf', NOW_TEXT, 'LIMIT', '0', args[5])
  local returned = 0
  for _, id in ipairs(ids) do
    local job_key = job_hash_key(id)
    local fields = {false}
    if promote(id) then fields = redis_call('HMGET', job_key, 'state', 'lease', 'owner') end
    if fields[1] ~= 'inflight' then
      redis_call('ZREM', PREFIX .. 'inflight', id)
    elseif to_number(fields[2] or '0') > now() then
      redis_call('ZADD', PREFIX .. 'inflight', fields[2], id)
    else
      unlease(job_key, id)
      requeue(job_key, id, now())
      job_event('lease-expired', job_key, recipients_in(job_key, 'p'), fields[3] or '')
      stat('lease_expired', 1)
      returned = returned + 1
    end
  end
  local ended = 0
  local expired = redis_call('ZRANGEBYSCORE', PREFIX .. 'suspu', '-inf', NOW_TEXT, 'LIMIT', '0', '100')
  for _, domain in ipairs(expired) do
    redis_call('ZREM', PREFIX .. 'suspu', domain)
    redis_call('HDEL', PREFIX .. 'susp', domain)
    reindex(domain, nil)
    domain_event('resumed', domain, 'suspension expired')
    ended = ended + 1
  end
  local index_key = PREFIX .. 'hidx'
  local old = redis_call('ZCOUNT', index_key, '-inf', '(' .. args[7])
  if old > 0 then
    if old > HISTORY_TRIM then old = HISTORY_TRIM end
    redis_call('ZREMRANGEBYRANK', index_key, '0', decimal(old - 1))
  end
  -- Returned jobs are due now, and a resumed domain may have due jobs: a waiting worker each (as many as the
  -- wake list takes).
  if returned + ended > 0 then wake(returned + ended) end
  return {returned, ended}
end, RUNS_WHEN_FULL)
