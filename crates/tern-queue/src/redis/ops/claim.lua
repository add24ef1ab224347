-- claim: takes up to max due jobs of ONE schedule (domain) of this shard, in due order.
-- args[5] owner, [6] max batch, [7] the lease deadline (ms), [8] default domain concurrency, [9] claim id
-- (the token), [10] how many due domains to look at (0: only the held ones), [11] until when (ms) a domain
-- at its limit is pushed back, [12] the domain's next turn (ms: now + 1), [13] "1" when held domains are
-- looked at first, [14] the number of slot holds the caller passes, then that many pairs (domain, hold id):
-- slots the caller keeps for idle connections (hold.lua). A claim of a held domain takes its hold over (the
-- idle connection carries the new claim), so the hold does not count against the domain's limit. With
-- args[13] "1", held domains with due work are looked at first, so that an idle connection is used before
-- it times out; otherwise a held domain takes its hold when the scan comes to it (the caller alternates the
-- two after a claim that took a hold over, so that held domains that always have due work do not starve the
-- others).
-- Domains are visited in the order of the domain index (earliest due first). After a claim the domain is
-- put back at max(its next due time, now + 1), behind every domain already due: due domains take turns.
-- A domain at its concurrency limit (live claims and holds = slots, each with a deadline) is skipped and
-- pushed back. Suspended domains are not in the index; one found there (a race) is dropped from it.
-- Returns, when nothing was claimed, the earliest score of the domain index (a decimal string: when the
-- next domain is due or looked at again), or false when the index is empty or only held domains were
-- looked at (args[10] 0); else {domain, hold taken over (or ''), job1, job2, ...} (the caller knows the
-- claim id and the deadline):
-- each job is the list of its fields id, dom, n, att, first, next, err, tags, trace, bounce, then rs:<i>,
-- rr:<i> per recipient, then for an admin-bounced job the operator's reason (`breason`, or ""), as they
-- were BEFORE this claim (the caller knows the new state, owner and lease),
-- or for a job in the string form its id alone (the caller reads the job from the header of its data).
-- The caller then reads each job's data `jd:<id>` (header, envelope, and a solo job's body) and the shared
-- `body:<msg>` of the others. The claim's owner and schedule go to `cinfo` (for the jobs in the string form).

-- The call's request (set at the start of every call).
local owner, max_jobs_text, deadline, default_limit, claim_id, pushed_back_until, next_turn
-- A claimed job's header start: form 'i' and this claim's id as the token.
local in_flight_head
-- Domain → the hold id the caller passed for it (nil: no holds).
local held
-- How many due domains are read from the index at a time.
local SCAN_PAGE = 4
-- The claimed jobs' `inflight` entries (deadline, id, ...), kept between calls and used up to a count.
local inflight_entries = {}

-- Claims due jobs of `schedule` if its limit allows; `scanning` (found through the index) pushes a domain
-- at its limit back and re-indexes an empty one. Returns the reply, or nil.
local function take(schedule, scanning)
  local hold = nil
  if schedule ~= BOUNCE_SCHEDULE then
    if suspended(schedule) then
      redis_call('ZREM', PREFIX .. 'domains', schedule)
      return nil
    end
    local slots_key = PREFIX .. 'slots:' .. schedule
    local limit = redis_call('HGET', PREFIX .. 'conc', schedule) or default_limit
    limit = SMALL_NUMBERS[limit] or number_of(limit)
    -- Slots whose deadline passed (a dead worker's) are dropped only when the domain looks full, and the
    -- live ones counted again: a domain below its limit counting them is below it without them. (A slot is
    -- added only below the limit, so they do not pile up.)
    local used = redis_call('ZCARD', slots_key)
    if used >= limit and redis_call('ZREMRANGEBYSCORE', slots_key, '-inf', NOW_TEXT) > 0 then
      used = redis_call('ZCARD', slots_key)
    end
    if held and held[schedule] then
      -- The caller's hold, while it lasts, is the slot this claim takes over.
      local hold_until = redis_call('ZSCORE', slots_key, held[schedule])
      if hold_until and below(NOW_TEXT, hold_until) then
        hold = held[schedule]
        used = used - 1
      end
    end
    if used >= limit then
      if scanning then
        -- Out of the claim order until args[11], or until its first slot's deadline when that comes sooner
        -- (a slot that lapses frees itself without a call). A slot freed by a call (complete, release,
        -- unhold, reap) puts the domain back at once and wakes a worker.
        local back = pushed_back_until
        local lapse = redis_call('ZRANGE', slots_key, '0', '0', 'WITHSCORES')[2]
        if lapse and below(lapse, back) then back = lapse end
        redis_call('ZADD', PREFIX .. 'domains', back, schedule)
      end
      return nil
    end
  end
  local schedule_key = PREFIX .. 'due:' .. schedule
  local ids = redis_call('ZRANGEBYSCORE', schedule_key, '-inf', NOW_TEXT, 'LIMIT', '0', max_jobs_text)
  local found = #ids
  if found == 0 then
    if scanning then reindex(schedule, nil) end
    return nil
  end
  local out = {schedule, hold or ''}
  local taken, entries = 0, 0
  -- Jobs taken by the state they leave (`cnt`): queued, deferred, or (in a broken record) another.
  local from_queued, from_deferred, from_other = 0, 0, nil
  -- They are the schedule's first `found` members (ZRANGEBYSCORE from -inf): one sweep from the head.
  redis_call('ZREMRANGEBYRANK', schedule_key, '0', SMALL_DECIMALS[found - 1] or decimal(found - 1))
  for i = 1, found do
    local id = ids[i]
    local data_key = PREFIX .. 'jd:' .. id
    -- The form only: the data itself is read by the claimer with a plain MGET (moving a long string through
    -- Lua costs more than the rest of a claim).
    local form = redis_call('GETRANGE', data_key, '0', '0')
    local job, state = nil, 'queued'
    if form == 'q' and schedule ~= BOUNCE_SCHEDULE then
      -- 'q', the string form (never tried): the header becomes 'i' with this claim's id as the token, and
      -- the claimer reads the job from the header; the job goes back as its id alone.
      redis_call('SETRANGE', data_key, '0', in_flight_head)
      job = id
    elseif form ~= '' and promote(id) then
      local job_key = PREFIX .. 'job:' .. id
      -- Few fields are read: each one asked of a hash costs a scan of it, a missing one the whole hash.
      local fields = redis_call('HMGET', job_key, 'att', 'n', 'first', 'tags', 'trace', 'next', 'dom', 'err',
                                'bounce', 'state', 'rs:0', 'rr:0')
      local count = number_of(fields[2])
      state = fields[10]
      -- The claimer's fields, in a fixed order (claim.rs): id, dom, n, att, first, next, err, tags, trace,
      -- bounce, then state and reply per recipient.
      job = {id, fields[7], fields[2], fields[1], fields[3], fields[6], fields[8], fields[4], fields[5],
             fields[9], fields[11], fields[12]}
      append_recipients(job_key, count, 'rs', 'rr', job)
      -- Asked of bounced jobs only: a field missing from the hash costs a scan of all of it.
      if fields[9] == '1' then job[#job + 1] = redis_call('HGET', job_key, 'breason') or '' end
      redis_call('HSET', job_key, 'state', 'inflight', 'owner', owner, 'tok', claim_id, 'lease', deadline,
                 'cdom', schedule)
    end
    if job then
      if state == 'queued' then
        from_queued = from_queued + 1
      elseif state == 'deferred' then
        from_deferred = from_deferred + 1
      else
        if not from_other then from_other = {} end
        from_other[state] = (from_other[state] or 0) + 1
      end
      inflight_entries[entries + 1] = deadline
      inflight_entries[entries + 2] = id
      entries = entries + 2
      taken = taken + 1
      out[taken + 2] = job
    end
  end
  local counts_key = PREFIX .. 'cnt'
  if from_queued > 0 then redis_call('HINCRBY', counts_key, 'queued', decimal(-from_queued)) end
  if from_deferred > 0 then redis_call('HINCRBY', counts_key, 'deferred', decimal(-from_deferred)) end
  if from_other then
    for state, count in pairs(from_other) do redis_call('HINCRBY', counts_key, state, decimal(-count)) end
  end
  if taken > 0 then
    redis_call('HINCRBY', counts_key, 'inflight', SMALL_DECIMALS[taken] or decimal(taken))
    call_in_slices('ZADD', PREFIX .. 'inflight', inflight_entries, entries)
  end
  -- The domain's next turn: behind every domain already due (it was checked not suspended above).
  local first = redis_call('ZRANGE', schedule_key, '0', '0', 'WITHSCORES')[2]
  if not first then
    redis_call('ZREM', PREFIX .. 'domains', schedule)
  else
    if below(first, next_turn) then first = next_turn end
    redis_call('ZADD', PREFIX .. 'domains', first, schedule)
  end
  if taken == 0 then return nil end
  local slots_key = PREFIX .. 'slots:' .. schedule
  if hold then redis_call('ZREM', slots_key, hold) end
  redis_call('ZADD', slots_key, deadline, claim_id)
  redis_call('HSET', PREFIX .. 'claims', claim_id, SMALL_DECIMALS[taken] or decimal(taken))
  redis_call('HSET', PREFIX .. 'cinfo', claim_id, owner .. '\t' .. schedule)
  drop_old_wakes(next_turn)
  return out
end

register('claim', function(args)
  owner, max_jobs_text, deadline, default_limit, claim_id = args[5], args[6], args[7], args[8], args[9]
  local scan_text = args[10]
  pushed_back_until, next_turn = args[11], args[12]
  -- The claim id is the token in the job headers, which have room for exactly TOKEN_WIDTH characters.
  if #claim_id ~= TOKEN_WIDTH then
    return redis.error_reply('ERR claim id must be ' .. TOKEN_WIDTH .. ' characters')
  end
  -- A claim id that took jobs here already: this call is a repeat (a client that resent it after losing the
  -- reply). Taking more under the same id would merge two claims' counts; the first one's jobs come back to
  -- the schedule when their lease runs out.
  if redis_call('HEXISTS', PREFIX .. 'claims', claim_id) == 1 then return false end
  in_flight_head = 'i' .. claim_id
  held = nil
  local hold_count = SMALL_NUMBERS[args[14]] or number_of(args[14] or '0')
  if hold_count > 0 then
    held = {}
    local held_order = {}
    for x = 0, hold_count - 1 do
      local domain = args[15 + 2 * x]
      if not held[domain] then
        held[domain] = args[16 + 2 * x]
        held_order[#held_order + 1] = domain
      end
    end
    if args[13] == '1' then
      for _, domain in ipairs(held_order) do
        local reply = take(domain, false)
        if reply then return reply end
      end
    end
  end
  -- The due domains, a few at a time: a domain looked at and not claimed leaves the due part of the index
  -- (pushed back, re-indexed at its next due time, or dropped), so the next few are again the first ones.
  -- Most claims take the first domain, and each name read costs.
  local scan = SMALL_NUMBERS[scan_text] or number_of(scan_text)
  local domains_key = PREFIX .. 'domains'
  while scan > 0 do
    local page = SCAN_PAGE
    if page > scan then page = scan end
    local due = redis_call('ZRANGEBYSCORE', domains_key, '-inf', NOW_TEXT, 'LIMIT', '0', decimal(page))
    for i = 1, #due do
      local reply = take(due[i], true)
      if reply then return reply end
    end
    if #due < page then break end
    scan = scan - page
  end
  if scan_text == '0' then return false end
  drop_old_wakes(NOW_TEXT)
  -- Nothing claimable: the earliest time in the domain index (a domain skipped at its limit counts from
  -- when it is looked at again), up to which an idle worker may sleep unless woken.
  return redis_call('ZRANGE', domains_key, '0', '0', 'WITHSCORES')[2] or false
end, RUNS_WHEN_FULL)
