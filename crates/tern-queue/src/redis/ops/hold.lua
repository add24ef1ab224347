-- Slot holds of idle connections: `hold` keeps a slot, `unhold` gives it up.

-- hold: keeps one connection slot of domain args[5] for an idle connection, until args[7] (ms).
-- args[6] the claim whose connection goes idle, [8] default domain concurrency, [9] the caller's waiter id
-- (its own wake list, `wake:<waiter>`; "" for none).
-- The claim's slot becomes the hold `h:<claim>/<waiter>` (so the claim's remaining jobs no longer free it
-- when they finish); when the claim no longer has a slot (its jobs finished or its deadline passed) a free
-- slot is taken if the domain's limit allows. Calling it again for the same claim pushes the deadline out.
-- The waiter in the hold's name is whom an enqueue wakes when the domain becomes due with every slot taken
-- and this hold among them (enqueue.lua): only the holder can use the slot.
-- Returns {hold id, deadline} or false (the domain is at its limit: the connection must close).
register('hold', function(args)
  local domain, claim, deadline, default_limit = args[5], args[6], args[7], args[8]
  local slots_key = PREFIX .. 'slots:' .. domain
  local hold = 'h:' .. claim
  if args[9] and args[9] ~= '' then hold = hold .. '/' .. args[9] end
  redis_call('ZREMRANGEBYSCORE', slots_key, '-inf', NOW_TEXT)
  if redis_call('ZREM', slots_key, claim) == 0 and not redis_call('ZSCORE', slots_key, hold) then
    local limit = number_of(redis_call('HGET', PREFIX .. 'conc', domain) or default_limit)
    if redis_call('ZCARD', slots_key) >= limit then return false end
  end
  redis_call('ZADD', slots_key, deadline, hold)
  return {hold, deadline}
end, RUNS_WHEN_FULL)

-- unhold: gives up hold args[6] of domain args[5] (its idle connection was closed or is used for another
-- domain): the slot is free for any worker at once, and one waiting worker is woken when the domain has due
-- jobs. Only holds (`h:` ids) are dropped, never a claim's
-- slot. Returns 1 when the hold was there, 0 otherwise (expired, or already dropped: safe to repeat).
register('unhold', function(args)
  local domain, hold = args[5], args[6]
  if string_sub(hold, 1, 2) ~= 'h:' then return 0 end
  if redis_call('ZREM', PREFIX .. 'slots:' .. domain, hold) == 0 then return 0 end
  -- The domain may have been pushed back for being at its limit: a slot is free now (and a worker is woken
  -- when it has due jobs).
  slot_freed(domain, true)
  return 1
end, RUNS_WHEN_FULL)
