-- Enqueue: `materialise` stores the jobs of messages of one shard; `intake` and `intake_done` keep a whole
-- message in one shard while its jobs are materialised shard by shard (see enqueue.rs).

-- materialise: creates the jobs of many messages that live in this shard, with their bodies, in one
-- atomic call.
-- args[5] "1" to record a 24 h materialised marker per message (intake path: a re-drive is then a no-op),
-- [6] the name of the call's repeat set (fast path: `seen:<n>`, see below; "" for none), [7] how long that
-- set is kept after this call (ms), [8] the default domain concurrency (for wakes), [9] the history
-- retention (ms; "0": no history: the messages join no history index), [10] message count, then per message:
--   id, body ("" when solo), sender (lower-cased), created ms, tags (JSON), solo ("1": the message has
--   exactly one job in all, whose data `jd:<job>` then holds the body after the envelope, with no
--   `msg:`/`body:` keys), job count, the time in its id (ULID ms: its score in the history index `hidx`),
--   then per job:
--     id, domain, due ms, recipient count, recipients (newline-separated).
-- The caller has stored each job's data `jd:<job>` just before, with a TTL: its header line in the string
-- form 'q', a newline, the envelope (JSON), and for a solo message a newline and the body. A job whose data
-- still has its TTL is new: PERSIST keeps it, and the job is indexed; data with no TTL is a job that exists
-- already (left alone). Data that no call keeps expires by itself (and is no job for any other function
-- meanwhile; see `unkept`). A missing record fails the whole call, which then changes nothing (the records
-- it kept get their TTL back).
-- Repeats on the fast path: a writer that did not learn the outcome of a write (ingest) sends the same
-- message (same id) again, possibly after its jobs were delivered and removed. The repeat set `seen:<n>`
-- holds the ids of the messages materialised on the fast path whose id's time falls in the caller's bucket
-- <n> (so that a repeat names the same set), and lives for args[7] after the last call that added to it
-- (the writer's repeat window): a message found in it was made before, and a repeat of it makes nothing.
-- A message with several jobs in this shard stores its body once in `body:<msg>` and counts its live jobs
-- in `msg:<msg>` (the last one to go deletes both).
-- Idempotent: an existing job is left alone. The `queued` events of the call go into one stream entry (the
-- history records them with the jobs' first change, see shared.lua; here the messages join the index);
-- schedules, counters and stats are updated once per call. A domain that became due now (it was not due in
-- the index before) wakes one waiting worker, if one can claim it (see `claimant` in shared.lua). Returns
-- the number of jobs created.
local MESSAGE_FIELDS, JOB_FIELDS = 8, 5
local FIRST_MESSAGE = 11
-- The TTL of an unkept record (ms), as the client sets it (UNKEPT_DATA_TTL_MS in enqueue.rs).
local UNKEPT_TTL_MS = '3600000'

-- The call's records: their keys and whether each is a new job, kept between calls and used up to a count.
local record_keys, record_new = {}, {}
-- The call's schedules in first-seen order, each with its new jobs (ZADD arguments), earliest due time and
-- new jobs count; `schedule_index` maps a schedule to its place. Lists kept between calls, cleared by count.
local schedules, schedule_jobs, schedule_earliest, schedule_live, schedule_count = {}, {}, {}, {}, 0
local schedule_index = {}
-- The call's message ids (for the repeat set), the schedules that became due now, and the history index's
-- new entries (score, id, ...), kept between calls.
local message_ids, newly_due, history_entries = {}, {}, {}

-- Gives back their TTL to the first `count` records of the call (kept by PERSIST), so that the call changes
-- nothing.
local function unkeep(count)
  for k = 1, count do
    if record_new[k] then redis_call('PEXPIRE', record_keys[k], UNKEPT_TTL_MS) end
  end
end

-- The messages of the call that the repeat set `seen` holds already (nil: none), before anything is
-- written. One message is added at once (SADD answers whether it was there; a failed call takes it out
-- again); several are looked up together and added once the call has succeeded (`remember`).
local function repeats(args, seen, message_count)
  local at = FIRST_MESSAGE
  for m = 1, message_count do
    message_ids[m] = args[at]
    local job_count = SMALL_NUMBERS[args[at + 6]] or number_of(args[at + 6])
    at = at + MESSAGE_FIELDS + job_count * JOB_FIELDS
  end
  if message_count == 1 then
    if redis_call('SADD', seen, message_ids[1]) == 0 then return {true} end
    return nil
  end
  local found = nil
  local first = 1
  while first <= message_count do
    local last = first + SLICE - 1
    if last > message_count then last = message_count end
    local present = redis_call('SMISMEMBER', seen, table_unpack(message_ids, first, last))
    for k = 1, #present do
      if present[k] == 1 then
        if not found then found = {} end
        found[first + k - 1] = true
      end
    end
    first = last + 1
  end
  return found
end

-- Records the call's messages in the repeat set, which lives `ttl` (ms) from now.
local function remember(seen, ttl, message_count)
  if message_count > 1 then call_in_slices('SADD', seen, message_ids, message_count) end
  redis_call('PEXPIRE', seen, ttl)
end

local function materialise(args)
  local mark = args[5] == '1'
  local seen = nil
  if args[6] ~= '' then seen = PREFIX .. args[6] end
  -- History: the index only (the `queued` records come later, see shared.lua).
  local indexed = args[9] ~= '0' and args[9] ~= ''
  local message_count = SMALL_NUMBERS[args[10]] or number_of(args[10])
  for k = 1, schedule_count do schedule_index[schedules[k]] = nil end
  schedule_count = 0

  -- First, before anything else is written: which messages were made before (a re-drive of an intake
  -- record the shard handled, `mat:` marker; a repeat on the fast path, in the repeat set), and which
  -- records are new jobs (PERSIST answers 1 for a record that had its TTL). A missing record fails the
  -- call, and the records kept so far get their TTL back: nothing is half made, and no marker is left for a
  -- message that was not made.
  local handled = nil
  if seen then handled = repeats(args, seen, message_count) end
  local records = 0
  local at = FIRST_MESSAGE
  for m = 1, message_count do
    local message, job_count = args[at], SMALL_NUMBERS[args[at + 6]] or number_of(args[at + 6])
    local skip = handled and handled[m]
    if not skip and mark and redis_call('EXISTS', PREFIX .. 'mat:' .. message) == 1 then
      if not handled then handled = {} end
      handled[m] = true
      skip = true
    end
    at = at + MESSAGE_FIELDS
    for _ = 1, job_count do
      if not skip then
        records = records + 1
        local record_key = PREFIX .. 'jd:' .. args[at]
        record_keys[records] = record_key
        local new = redis_call('PERSIST', record_key) == 1
        record_new[records] = new
        if not new and redis_call('EXISTS', record_key) == 0 then
          unkeep(records - 1)
          if seen and message_count == 1 then redis_call('SREM', seen, message) end
          return redis.error_reply('ERR a job record was not stored before materialise: ' .. record_key)
        end
      end
      at = at + JOB_FIELDS
    end
  end
  if seen then remember(seen, args[7], message_count) end

  local made_all, recipients, messages, history_count = 0, 0, 0, 0
  local listing = {}
  local next_record = 0
  at = FIRST_MESSAGE
  for m = 1, message_count do
    local message, body, sender, created, tags, solo = args[at], args[at + 1], args[at + 2], args[at + 3],
                                                       args[at + 4], args[at + 5]
    local job_count = SMALL_NUMBERS[args[at + 6]] or number_of(args[at + 6])
    local id_time = args[at + 7]
    at = at + MESSAGE_FIELDS
    local skip = handled and handled[m]
    if mark and not skip then redis_call('SET', PREFIX .. 'mat:' .. message, '1', 'EX', '86400') end
    local made = 0
    local ids = nil
    if solo ~= '1' then ids = {} end
    for _ = 1, job_count do
      local id, domain, due, recipient_count, recipient_list = args[at], args[at + 1], args[at + 2],
                                                               args[at + 3], args[at + 4]
      at = at + JOB_FIELDS
      if ids then ids[#ids + 1] = id end
      -- The job is its data alone, in the string form. A handled message's records that the caller just
      -- wrote again (its jobs ended since) go at once, rather than lingering until they expire.
      local new = false
      if skip then
        local record_key = PREFIX .. 'jd:' .. id
        if redis_call('PTTL', record_key) >= 0 then redis_call('DEL', record_key) end
      else
        next_record = next_record + 1
        new = record_new[next_record]
      end
      if new then
        local index = schedule_index[domain]
        if not index then
          schedule_count = schedule_count + 1
          index = schedule_count
          schedule_index[domain] = index
          schedules[index] = domain
          schedule_jobs[index] = {due, id}
          schedule_earliest[index] = due
          schedule_live[index] = 1
        else
          local jobs = schedule_jobs[index]
          jobs[#jobs + 1] = due; jobs[#jobs + 1] = id
          if below(due, schedule_earliest[index]) then schedule_earliest[index] = due end
          schedule_live[index] = schedule_live[index] + 1
        end
        listing[#listing + 1] = '0'; listing[#listing + 1] = id
        event_add('queued', id, domain, '0', tags, recipient_list)
        made = made + 1
        recipients = recipients + (SMALL_NUMBERS[recipient_count] or number_of(recipient_count))
      end
    end
    if made > 0 then
      if ids then
        local message_key = PREFIX .. 'msg:' .. message
        redis_call('HINCRBY', message_key, 'live', decimal(made))
        redis_call('HSET', message_key, 'sender', sender, 'created', created, 'ids', table_concat(ids, ' '))
        redis_call('SET', PREFIX .. 'body:' .. message, body)
      end
      messages = messages + 1
      made_all = made_all + made
      if indexed then
        history_entries[history_count + 1] = id_time
        history_entries[history_count + 2] = message
        history_count = history_count + 2
      end
    end
  end
  if made_all > 0 then
    local live_key = PREFIX .. 'dlive'
    local due_count = 0
    for index = 1, schedule_count do
      local schedule = schedules[index]
      local earliest = schedule_earliest[index]
      call_in_slices('ZADD', PREFIX .. 'due:' .. schedule, schedule_jobs[index])
      -- Into the domain index (ZADD LT only moves a domain earlier). CH answers 1 when the domain was not
      -- there or comes earlier now: when that is now, it became due with this call, and no worker knows.
      if not suspended(schedule)
         and redis_call('ZADD', PREFIX .. 'domains', 'LT', 'CH', earliest, schedule) == 1
         and not below(NOW_TEXT, earliest) then
        due_count = due_count + 1
        newly_due[due_count] = schedule
      end
      local live = schedule_live[index]
      redis_call('HINCRBY', live_key, schedule, SMALL_DECIMALS[live] or decimal(live))
    end
    call_in_slices('ZADD', PREFIX .. 'jobs', listing)
    if history_count > 0 then call_in_slices('ZADD', PREFIX .. 'hidx', history_entries, history_count) end
    redis_call('HINCRBY', PREFIX .. 'cnt', 'queued', SMALL_DECIMALS[made_all] or decimal(made_all))
    stat('enqueued', recipients)
    stat('messages', messages)
    events_flush()
    -- One waiting worker per domain that became due: any one when the domain has a free slot (as many as
    -- the wake list has room for), the holder when an idle connection holds one; none when every slot is
    -- busy (the call that frees one wakes a worker).
    if due_count > 0 then
      local room = wake_room()
      local wakes = 0
      for k = 1, due_count do
        if wakes >= room then break end
        local who = claimant(newly_due[k], args[8])
        if who == true then
          wakes = wakes + 1
        elseif who then
          wake_waiter(who)
        end
      end
      wake(wakes, room)
    end
  end
  return made_all
end
register('materialise', materialise)

-- intake: durably records a whole message in ONE shard before it is acknowledged (the intake record), and
-- checks its idempotency key, which lives in this same shard. The jobs are then materialised shard by
-- shard; the reaper re-drives intake records that are still here after a few seconds.
-- args[5] message id, [6] payload (the message without its body), [7] body, [8] idempotency key or "",
-- [9] idempotency TTL in seconds.
-- Returns {"dup", first message id} when the key was seen within its TTL for another message, else
-- {"ok", message id}. The same message again (a call resent after its reply was lost) is "ok": it writes
-- the same record.
register('intake', function(args)
  local message, idempotency_key = args[5], args[8]
  if idempotency_key ~= '' then
    local record = PREFIX .. 'idem:' .. idempotency_key
    local first = redis_call('GET', record)
    if first and first ~= message then return {'dup', first} end
    if not first then redis_call('SET', record, message, 'EX', args[9]) end
  end
  redis_call('HSET', PREFIX .. 'intake:' .. message, 'p', args[6], 'b', args[7], 'at', NOW_TEXT)
  redis_call('ZADD', PREFIX .. 'intakes', NOW_TEXT, message)
  return {'ok', message}
end)

-- intake_done: drops an intake record once every shard has materialised its jobs. args[5] message id.
register('intake_done', function(args)
  redis_call('DEL', PREFIX .. 'intake:' .. args[5])
  return redis_call('ZREM', PREFIX .. 'intakes', args[5])
end, RUNS_WHEN_FULL)
