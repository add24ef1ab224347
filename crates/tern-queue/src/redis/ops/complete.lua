-- complete: records the outcomes of delivery attempts of jobs owned by the caller: one job, or many
-- (typically the jobs of one claim), in one atomic call.
-- args[5] owner, [6] the history retention (ms; "0": no history), [7] job count, then per job: job id, the
-- attempt details: token (the claim id), kind (delivered|deferred|failed|expired), retry time ms (used when
-- recipients stay pending), reply, remote mx, remote ip, tls, the id of the DSN queued for the recipients
-- it failed or expired ("" none) (or "=" alone: the previous job's details), number of per-recipient
-- results, then that many triples: recipient index, state (d|p|f), reply.
-- Recipients not listed take the kind's state (deferred leaves them pending). When none is pending the job
-- is removed (and the body with the last job of the message); otherwise it waits for the retry time.
-- Each job is checked and changed on its own, in order (a job listed twice is seen changed the second
-- time); the call's events go into one stream entry, and the in-flight index, claim slots, counters and
-- stats are updated once per call.
-- Returns one reply per job: {"finished"} | {"deferred", at} | {"dup"} (this token already completed: a
-- repeated call) | {"notowner"} (the caller no longer owns the job) | {"gone"} (no such job).

local FINISHED = {'finished'}
local GONE = {'gone'}
local NOT_OWNER = {'notowner'}
local DUPLICATE = {'dup'}
-- A job's events go in this order of its recipients' new state: delivered, failed, still pending.
local STATE_ORDER = {'d', 'f', 'p'}
-- The head of a job's data (its first 256 bytes) in the string form: the form, the token (26 characters),
-- then from the header's fields (see keys.rs) the domain, recipient count, first-queued time, sender, tags,
-- solo and the first recipient, and the character after it: a newline ends the header (every recipient
-- read), a tab means more recipients. One pattern: each string function called from Lua costs about a
-- thousand instructions.
local HEAD_PATTERN = '^(.)(..........................)' ..
                     '\t([^\t]*)\t([^\t]*)\t([^\t]*)\t[^\t]*\t([^\t]*)\t([^\t]*)\t[^\t]*\t([^\t]*)' ..
                     '\t([^\t\n]*)([\t\n])'

-- The call's state, reset at its start. Lists are kept between calls and used up to their counts; the
-- first claim and the first domain of the call are kept in scalars (a call usually has one of each), any
-- other in the tables `other_claims` and `other_domains`, made when needed.
local owner, results
local leaving_ids, leaving_count = {}, 0
local first_claim, first_claim_schedule, first_claim_jobs, other_claims
local finished_ids, finished_count = {}, 0
local first_domain, first_domain_jobs, other_domains
local delivered_count, failed_count, expired_count, deferred_count
-- The last claim whose ownership was checked, and whether the caller owns it (string form).
local checked_claim, checked_claim_owned
-- The attempt details of the job being recorded (a job that sends "=" keeps the previous job's).
local token, kind, retry, reply, mx, ip, tls, dsn

-- The job leaves flight: out of the in-flight index, and one job fewer for its claim (taken from
-- `schedule`).
local function leave_flight(id, claim, schedule)
  leaving_count = leaving_count + 1
  leaving_ids[leaving_count] = id
  if claim == first_claim then
    first_claim_jobs = first_claim_jobs + 1
  elseif not first_claim then
    first_claim, first_claim_schedule, first_claim_jobs = claim, schedule, 1
  else
    if not other_claims then other_claims = {} end
    local entry = other_claims[claim]
    if entry then entry[1] = entry[1] + 1 else other_claims[claim] = {1, schedule} end
  end
end

-- A finished job goes (it is in flight, so on no schedule): its keys (`...`), its place in the listing, its
-- domain's live count, and its message's body with the message's last job.
local function finish(id, domain, solo, ...)
  redis_call('DEL', ...)
  finished_count = finished_count + 1
  finished_ids[finished_count] = id
  if domain == first_domain then
    first_domain_jobs = first_domain_jobs + 1
  elseif not first_domain then
    first_domain, first_domain_jobs = domain, 1
  else
    if not other_domains then other_domains = {} end
    other_domains[domain] = (other_domains[domain] or 0) + 1
  end
  if solo ~= '1' then drop_body_ref(id) end
end

-- Counts `n` recipients whose state became `state` ('d', 'f' or 'p'; failed as `failed_kind`).
local function count_outcome(state, failed_kind, n)
  if state == 'd' then
    delivered_count = delivered_count + n
  elseif state == 'p' then
    deferred_count = deferred_count + n
  elseif failed_kind == 'expired' then
    expired_count = expired_count + n
  else
    failed_count = failed_count + n
  end
end

-- Whether the caller owns claim `claim` of a job in the string form in `domain`: the claim's `cinfo` record
-- is the owner and the claim's schedule, which for such a job is its domain.
local function owns_claim(claim, domain)
  if claim ~= checked_claim then
    checked_claim = claim
    checked_claim_owned = redis_call('HGET', PREFIX .. 'cinfo', claim) == owner .. '\t' .. domain
  end
  return checked_claim_owned
end

-- The general path: the job in the hash form (promoted if needed). Records the outcome of job x whose
-- per-recipient results start at args[results_at], `result_count` of them.
local function complete_hashed(args, x, id, results_at, result_count, rest, failed_kind, first_state,
                               first_reply, only_first)
  local job_key = PREFIX .. 'job:' .. id
  -- Only the fields needed (each field asked of a hash costs a scan of it); the first recipient's state and
  -- address come with them (every job has one).
  local fields = redis_call('HMGET', job_key, 'n', 'rs:0', 'dom', 'att', 'tags', 'state', 'owner', 'tok',
                            'cdom', 'solo', 'bounce', 'ra:0')
  if not fields[6] then
    results[x] = GONE
    return
  elseif fields[6] ~= 'inflight' or fields[7] ~= owner or fields[8] ~= token then
    -- `donetok`: the last claim that completed (c:) or released (r:) the job.
    if redis_call('HGET', job_key, 'donetok') == 'c:' .. token then
      results[x] = DUPLICATE
    else
      results[x] = NOT_OWNER
    end
    return
  end
  local count, first_recipient_state, domain, tags = number_of(fields[1]), fields[2], fields[3], fields[5]
  local schedule, solo, first_recipient = fields[9], fields[10], fields[12]
  local bounce = nil
  if fields[11] == '1' then bounce = '1' end
  -- This attempt's number, for the events.
  local attempt = number_of(fields[4] or '0') + 1
  local attempt_text = decimal(attempt)
  leave_flight(id, token, schedule)
  local ends = first_state == 'd' or first_state == 'f'
  if count == 1 and first_recipient_state == 'p' and ends and only_first then
    if first_state == 'd' then
      event_add('delivered', id, domain, attempt_text, tags, first_recipient, first_reply, mx, ip, tls, bounce)
    else
      event_add(failed_kind, id, domain, attempt_text, tags, first_recipient, first_reply, mx, ip, tls, bounce,
                nil, dsn)
    end
    count_outcome(first_state, failed_kind, 1)
    finish(id, domain, solo, job_key, PREFIX .. 'jd:' .. id)
    results[x] = FINISHED
    return
  end
  local given = {}
  for y = 0, result_count - 1 do
    local at = results_at + y * 3
    given[number_of(args[at])] = {args[at + 1], args[at + 2]}
  end
  local pending = 0
  -- Recipients grouped by (state, reply), so that each event carries the reply its recipients got.
  local groups, group_order = {}, {}
  local changes = {}
  local recipients = {first_recipient_state, first_recipient}
  append_recipients(job_key, count, 'rs', 'ra', recipients)
  for r = 0, count - 1 do
    if recipients[2 * r + 1] == 'p' then
      local address = recipients[2 * r + 2]
      local state, recipient_reply = rest, reply
      local result = given[r]
      if result then
        state = result[1]
        if result[2] ~= '' then recipient_reply = result[2] end
      end
      if state ~= 'd' and state ~= 'f' then state = 'p' end
      if state ~= 'p' then changes[#changes + 1] = 'rs:' .. r; changes[#changes + 1] = state end
      if recipient_reply ~= '' then
        changes[#changes + 1] = 'rr:' .. r; changes[#changes + 1] = recipient_reply
      end
      if state == 'p' then pending = pending + 1 end
      count_outcome(state, failed_kind, 1)
      local group_key = state .. '\0' .. recipient_reply
      local group = groups[group_key]
      if not group then
        group = {state, recipient_reply, {}}
        groups[group_key] = group
        group_order[#group_order + 1] = group_key
      end
      group[3][#group[3] + 1] = address
    end
  end
  local event_kinds = {d = 'delivered', f = failed_kind, p = 'deferred'}
  for _, state in ipairs(STATE_ORDER) do
    -- The DSN is for the failed (or expired) recipients.
    local event_dsn = nil
    if state == 'f' then event_dsn = dsn end
    for _, group_key in ipairs(group_order) do
      local group = groups[group_key]
      if group[1] == state then
        local addresses = table_concat(group[3], '\n')
        event_add(event_kinds[state], id, domain, attempt_text, tags, addresses, group[2], mx, ip, tls,
                  bounce, nil, event_dsn)
      end
    end
  end
  if pending > 0 then
    local due = to_number(retry) or (now() + 60000)
    changes[#changes + 1] = 'att'; changes[#changes + 1] = attempt_text
    changes[#changes + 1] = 'donetok'; changes[#changes + 1] = 'c:' .. token
    if reply ~= '' then changes[#changes + 1] = 'err'; changes[#changes + 1] = reply end
    call_in_slices('HSET', job_key, changes)
    redis_call('HDEL', job_key, 'owner', 'tok', 'lease', 'cdom')
    requeue(job_key, id, due)
    results[x] = {'deferred', string_format('%d', due)}
  else
    finish(id, domain, solo, job_key, PREFIX .. 'jd:' .. id)
    results[x] = FINISHED
  end
end

-- Records the outcome of job x, whose arguments start at args[i]; returns where the next job's start.
local function complete_one(args, x, i)
  local id = args[i]
  if args[i + 1] == '=' and token then
    i = i + 2
  else
    token, kind, retry, reply = args[i + 1], args[i + 2], args[i + 3], args[i + 4]
    mx, ip, tls, dsn = args[i + 5], args[i + 6], args[i + 7], args[i + 8]
    i = i + 9
  end
  local result_count = SMALL_NUMBERS[args[i]] or number_of(args[i])
  local results_at = i + 1
  local next_job_at = results_at + result_count * 3
  local rest = 'f'
  if kind == 'delivered' then rest = 'd' elseif kind == 'deferred' then rest = 'p' end
  local failed_kind = 'failed'
  if kind == 'expired' then failed_kind = 'expired' end
  -- The first recipient's outcome, for the common case: one recipient, whose attempt ends it.
  local first_state, first_reply = rest, reply
  local only_first = result_count == 0 or args[results_at] == '0'
  if result_count > 0 and args[results_at] == '0' then
    first_state = args[results_at + 1]
    if args[results_at + 2] ~= '' then first_reply = args[results_at + 2] end
  end

  -- The string form: in flight for this claim, it needs no hash; its only recipient's attempt ends it, or
  -- it turns into the hash form for the general path.
  local data_key = PREFIX .. 'jd:' .. id
  local head = redis_call('GETRANGE', data_key, '0', '255')
  if head == '' then
    results[x] = GONE
    return next_job_at
  end
  local form, header_token, domain, count, first, sender, tags, solo, recipient, after =
    string_match(head, HEAD_PATTERN)
  if not form then
    -- A header longer than the head read: all of it. (One that still does not match, which tern does not
    -- write, takes the general path.)
    form, header_token, domain, count, first, sender, tags, solo, recipient, after =
      string_match(header_line(id) .. '\n', HEAD_PATTERN)
    if not form then form, header_token = string_sub(head, 1, 1), string_sub(head, 2, TOKEN_WIDTH + 1) end
  end
  if form == 'q' then
    results[x] = NOT_OWNER
    return next_job_at
  elseif form == 'i' and domain then
    if header_token ~= token or not owns_claim(token, domain) then
      results[x] = NOT_OWNER
      return next_job_at
    end
    if count == '1' and after == '\n' and (first_state == 'd' or first_state == 'f') and only_first then
      leave_flight(id, token, domain)
      -- The job's `queued` record, which its record stood for until now (see shared.lua).
      if HISTORY_TTL then history_add(queued_record(id, first, domain, recipient, sender, tags)) end
      if first_state == 'd' then
        event_add('delivered', id, domain, '1', tags, recipient, first_reply, mx, ip, tls)
      else
        event_add(failed_kind, id, domain, '1', tags, recipient, first_reply, mx, ip, tls, nil, nil, dsn)
      end
      count_outcome(first_state, failed_kind, 1)
      finish(id, domain, solo, data_key)
      results[x] = FINISHED
      return next_job_at
    end
  end
  -- A job in the hash form, or one in the string form that this attempt does not end.
  if form ~= 'h' then promote(id) end
  complete_hashed(args, x, id, results_at, result_count, rest, failed_kind, first_state, first_reply,
                  only_first)
  return next_job_at
end

register('complete', function(args)
  owner, results = args[5], {}
  history_keep(args[6])
  leaving_count, finished_count = 0, 0
  first_claim, first_claim_schedule, first_claim_jobs, other_claims = nil, nil, 0, nil
  first_domain, first_domain_jobs, other_domains = nil, 0, nil
  delivered_count, failed_count, expired_count, deferred_count = 0, 0, 0, 0
  checked_claim, checked_claim_owned = nil, false
  token, kind, retry, reply, mx, ip, tls, dsn = nil, nil, nil, nil, nil, nil, nil, nil

  local at = 8
  for x = 1, SMALL_NUMBERS[args[7]] or number_of(args[7]) do at = complete_one(args, x, at) end
  if leaving_count > 0 then
    call_in_slices('ZREM', PREFIX .. 'inflight', leaving_ids, leaving_count)
    claim_done(first_claim, first_claim_schedule, first_claim_jobs)
    if other_claims then
      for claim, entry in pairs(other_claims) do claim_done(claim, entry[2], entry[1]) end
    end
  end
  if finished_count > 0 then
    redis_call('HINCRBY', PREFIX .. 'cnt', 'inflight', decimal(-finished_count))
    call_in_slices('ZREM', PREFIX .. 'jobs', finished_ids, finished_count)
    local live_key = PREFIX .. 'dlive'
    if redis_call('HINCRBY', live_key, first_domain, decimal(-first_domain_jobs)) <= 0 then
      redis_call('HDEL', live_key, first_domain)
    end
    if other_domains then
      for domain, jobs in pairs(other_domains) do
        if redis_call('HINCRBY', live_key, domain, decimal(-jobs)) <= 0 then
          redis_call('HDEL', live_key, domain)
        end
      end
    end
  end
  if delivered_count > 0 then stat('delivered', delivered_count) end
  if failed_count > 0 then stat('failed', failed_count) end
  if expired_count > 0 then stat('expired', expired_count) end
  if deferred_count > 0 then stat('deferred', deferred_count) end
  events_flush()
  return results
end, RUNS_WHEN_FULL)
