-- release: gives a job the caller owns back unchanged, due now (as on shutdown).
-- args[5] job id, [6] owner, [7] token, [8] the history retention (ms; "0": no history).
-- Returns {"ok"} | {"dup"} | {"notowner"} | {"gone"}.
register('release', function(args)
  local id, caller, claim = args[5], args[6], args[7]
  history_keep(args[8])
  local job_key = job_hash_key(id)
  if not promote(id) then return {'gone'} end
  -- `donetok`: the last claim that completed (c:) or released (r:) the job.
  local fields = redis_call('HMGET', job_key, 'state', 'owner', 'tok', 'donetok')
  if fields[1] ~= 'inflight' or fields[2] ~= caller or fields[3] ~= claim then
    if fields[4] == 'r:' .. claim then return {'dup'} end
    return {'notowner'}
  end
  redis_call('HSET', job_key, 'donetok', 'r:' .. claim)
  unlease(job_key, id)
  requeue(job_key, id, now())
  job_event('released', job_key, recipients_in(job_key, 'p'))
  -- The job is due now: one waiting worker is woken for it.
  wake(1)
  return {'ok'}
end, RUNS_WHEN_FULL)
