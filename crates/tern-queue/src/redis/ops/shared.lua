-- The shared part of tern's Redis Functions library: helpers defined once when the library is loaded (Redis
-- keeps them between calls), used by the operations' functions that follow (`ops/*.lua`, each in its own
-- `do ... end` block). `library.rs` puts the library together: a `#!lua name=tern_<version>` line and
-- `FUNCTION_PREFIX` first, then this file, then the operations.
--
-- Calling convention of every function: keys[1] is a key of the shard (it routes the call in a cluster);
-- args[1] is the shard's key prefix, e.g. "{tern:s07}:"; args[2] the caller's clock in Unix ms; args[3] the
-- events stream's approximate maximum length; args[4] the caller's minute (Unix ms div 60000, the
-- per-minute counters' bucket). The operation's own arguments start at args[5]. Every key a function
-- touches starts with args[1], so all of them hash to the same cluster slot. Times a function stores (lease
-- deadlines, push-backs) are computed by the caller from the same clock and passed as decimal strings.
--
-- The key and field layout is documented once, in `keys.rs`.
--
-- Per-call state lives in upvalues and is reset at the start of every call (`begin_call`, and each
-- operation's own): Redis runs one function at a time, and a call that failed half-way leaves nothing that
-- the next call reads.
--
-- Cost (measured with benches/callgrind; a small call is mostly Lua): a Lua function call costs some 500
-- instructions, a global's lookup 150, a new table 750, a string function 1000, tonumber() 2000 (strtod),
-- a Lua number given to redis.call 4000 (formatted with "%.14g"). So: the standard functions are kept in
-- upvalues (filled by the first call: they are not there while the library loads); keys are written out
-- as PREFIX .. name; arguments and scores stay decimal strings (`decimal` and `number_of` keep small
-- integers both ways, `below` compares times as text, `now` parses the clock only where arithmetic needs
-- it); hot paths keep their lists between calls and reuse them up to a count.

local PREFIX, NOW_TEXT, EVENTS_MAX_LEN, MINUTE
local NOW
local redis_call, string_sub, string_find, string_match, string_format, table_concat, table_unpack, to_number
local BOUNCE_SCHEDULE = '#bounce'

-- Decimal strings of small integers, each made once and kept with the library (the standard libraries are
-- not there while the library loads, so the table fills as numbers come).
local SMALL_DECIMALS = {}
local function decimal(n)
  local text = SMALL_DECIMALS[n]
  if text then return text end
  text = string_format('%d', n)
  if n >= -1000 and n <= 1000 then SMALL_DECIMALS[n] = text end
  return text
end

-- The number of a decimal string; small integers are parsed once and kept.
local SMALL_NUMBERS = {}
local function number_of(text)
  local n = SMALL_NUMBERS[text]
  if n then return n end
  n = to_number(text)
  if n and n >= -1000 and n <= 1000 and decimal(n) == text then SMALL_NUMBERS[text] = n end
  return n
end

-- Whether the time (or count) `a` is below `b`, both decimal strings of non-negative integers without
-- leading zeros (as every score and time here is written): compared as text.
local function below(a, b)
  local length_a, length_b = #a, #b
  if length_a ~= length_b then return length_a < length_b end
  return a < b
end

-- The caller's clock as a number, parsed on first use.
local function now()
  if not NOW then NOW = to_number(NOW_TEXT) end
  return NOW
end

local function job_hash_key(id) return PREFIX .. 'job:' .. id end
local function job_data_key(id) return PREFIX .. 'jd:' .. id end

-- A job's data `jd:<id>` is one string: a header line, a newline, the envelope (JSON, one line), and for a
-- message's only job (`solo`) a newline and the message body. The header's layout and forms ('q', 'i', 'h')
-- are in `keys.rs`: the form and the claim token first, fixed width so that SETRANGE changes them in place,
-- then tab-separated fields.
local TOKEN_WIDTH = 26
local HEADER_FORM, HEADER_TOKEN, HEADER_DOMAIN, HEADER_RECIPIENT_COUNT, HEADER_FIRST_QUEUED = 1, 2, 3, 4, 5
local HEADER_NEXT_DUE, HEADER_SENDER, HEADER_TAGS, HEADER_TRACE, HEADER_SOLO = 6, 7, 8, 9, 10
local HEADER_FIRST_RECIPIENT = 11

-- Splits a job's data into its header line, its envelope and its inline body (nil when the body is stored
-- in `body:<msg>`).
local function split_data(data)
  if not data then return '', '', nil end
  local first_newline = string_find(data, '\n', 1, true)
  if not first_newline then return data, '', nil end
  local second_newline = string_find(data, '\n', first_newline + 1, true)
  if not second_newline then
    return string_sub(data, 1, first_newline - 1), string_sub(data, first_newline + 1), nil
  end
  return string_sub(data, 1, first_newline - 1), string_sub(data, first_newline + 1, second_newline - 1),
         string_sub(data, second_newline + 1)
end

-- The fields of a header line: {form, token, domain, recipient count, first queued, next due, sender, tags,
-- trace, solo, recipient 1, ...} (indexes HEADER_*).
local function header_of(line)
  local fields = {string_sub(line, 1, 1), string_sub(line, 2, TOKEN_WIDTH + 1)}
  local from = TOKEN_WIDTH + 3
  while true do
    local tab = string_find(line, '\t', from, true)
    if not tab then
      fields[#fields + 1] = string_sub(line, from)
      return fields
    end
    fields[#fields + 1] = string_sub(line, from, tab - 1)
    from = tab + 1
  end
end

-- Counters: totals in `stats`, and a per-minute bucket kept for two hours.
local MINUTE_KEY
local function stat(name, n)
  if n == nil or n == 0 then return end
  local by = decimal(n)
  redis_call('HINCRBY', PREFIX .. 'stats', name, by)
  if not MINUTE_KEY then MINUTE_KEY = PREFIX .. 'min:' .. MINUTE end
  -- The call that creates the bucket (or the field) sets its expiry.
  if redis_call('HINCRBY', MINUTE_KEY, name, by) == n then redis_call('EXPIRE', MINUTE_KEY, '7200') end
end

-- Events. Every event starts with its `kind` field: a stream entry may hold several events (see
-- event_add). To keep entries small, defaults are left out: `msg` (the job id names its message), `att`
-- when 0, `tags` when empty, `ts` after the entry's first event (the events of one entry share their time),
-- and the shared fields (dom, att, tags, reply, mx, ip, tls, bounce) when equal to the previous event's in
-- the entry (the reader carries them forward; an empty value stands for none). A batch of completions of
-- one claim then writes the domain, attempt, reply, MX, IP and TLS once.
--
-- The entry being built: its fields in EVENT_BUFFER[1 .. EVENT_COUNT] (the table is kept and reused), and
-- the shared fields' values of its last event.
local EVENT_BUFFER, EVENT_COUNT = {}, 0
local LAST_DOMAIN, LAST_ATTEMPTS, LAST_TAGS, LAST_REPLY, LAST_MX, LAST_IP, LAST_TLS, LAST_BOUNCE

-- Message history (`hist:<msg>`, `hidx`; layout in keys.rs). Every event of a job is also recorded in its
-- message's history, in the same call, when the call keeps history: HISTORY_TTL is the retention (ms, a
-- decimal string) that the operation's caller passed (`history_keep`), nil when none is kept. A record is
-- the event's fields, each ended by the unit separator (US, \31), then the reply's length, a US and the
-- reply, so that a reply may hold any byte; no other field can hold a US (the client replaces it in the
-- attempt details). Records follow each other with nothing between them.
--
-- A job's `queued` record is written with its first change after the enqueue, from its header (the time:
-- when it was queued): when it leaves the string form (`promote`) or finishes in it (complete.lua). Until
-- then the job's record itself tells it (the `history` read view makes the record from its header). So an
-- enqueue writes no history but the index, and a job delivered at its first attempt writes both its records
-- with one SET.
--
-- The records of one message made in a row (those of one job's events, of a promotion and the event that
-- follows) are written together: HISTORY_RECORDS[1 .. HISTORY_COUNT] are records of HISTORY_MESSAGE not
-- written yet.
local US = '\31'
local HISTORY_TTL
local HISTORY_MESSAGE, HISTORY_RECORDS, HISTORY_COUNT = nil, {}, 0
-- The last job a record was made for, its message and its number in the message (`<msg>.<n>`): a job's
-- records are usually made one after another. Kept between calls (they depend on the id alone).
local HISTORY_JOB, HISTORY_JOB_MESSAGE, HISTORY_JOB_NUMBER

-- Keeps history in this call for `retention` (ms, a decimal string; '0', '' or nil: none). Each shard's part
-- of a message's history lives twice the retention after that shard's last record: the jobs of one message
-- finish at different times in different shards, and the part of the shard that finished first must outlive
-- the retention after the message's LAST event (in any shard) as long as the message stayed queued no longer
-- than the retention.
local function history_keep(retention)
  if retention and retention ~= '' and retention ~= '0' then
    HISTORY_TTL = string_format('%d', 2 * to_number(retention))
  end
end

-- Makes job `id` the one records are made for (HISTORY_JOB_MESSAGE, HISTORY_JOB_NUMBER).
local function history_job(id)
  if id ~= HISTORY_JOB then
    -- Job ids are `<message id: a ULID, 26 characters>.<n>`.
    HISTORY_JOB, HISTORY_JOB_MESSAGE, HISTORY_JOB_NUMBER = id, string_sub(id, 1, 26), string_sub(id, 28)
  end
end

-- Writes the records of HISTORY_MESSAGE not written yet, and keeps its history the retention from now: one
-- SET when the message has none in this shard yet (the usual case), else APPEND and PEXPIRE.
local function history_flush()
  local data
  if HISTORY_COUNT == 1 then
    data = HISTORY_RECORDS[1]
  else
    data = table_concat(HISTORY_RECORDS, '', 1, HISTORY_COUNT)
  end
  HISTORY_COUNT = 0
  local key = PREFIX .. 'hist:' .. HISTORY_MESSAGE
  if not redis_call('SET', key, data, 'NX', 'PX', HISTORY_TTL) then
    redis_call('APPEND', key, data)
    redis_call('PEXPIRE', key, HISTORY_TTL)
  end
end

-- Adds a record of the job history_job() named.
local function history_add(record)
  if HISTORY_JOB_MESSAGE ~= HISTORY_MESSAGE then
    if HISTORY_COUNT > 0 then history_flush() end
    HISTORY_MESSAGE = HISTORY_JOB_MESSAGE
  end
  HISTORY_COUNT = HISTORY_COUNT + 1
  HISTORY_RECORDS[HISTORY_COUNT] = record
end

-- The history record of the `queued` event of job `id`: queued at `first` (ms) for `domain`, with its
-- recipients (newline-separated), the message's sender (lower-cased, '' for <>) and tags (JSON).
local function queued_record(id, first, domain, recipients, sender, tags)
  history_job(id)
  if tags == '{}' then tags = '' end
  return 'queued' .. US .. first .. US .. HISTORY_JOB_NUMBER .. US .. domain .. US .. US .. recipients .. US ..
    US .. US .. US .. US .. sender .. US .. tags .. US .. '0' .. US
end

-- queued_record from a job's header fields (see header_of).
local function header_queued_record(id, header)
  local count = number_of(header[HEADER_RECIPIENT_COUNT]) or 1
  return queued_record(id, header[HEADER_FIRST_QUEUED], header[HEADER_DOMAIN],
                       table_concat(header, '\n', HEADER_FIRST_RECIPIENT, HEADER_FIRST_RECIPIENT + count - 1),
                       header[HEADER_SENDER] or '', header[HEADER_TAGS] or '')
end

-- Appends the stream entry being built to the shard's stream.
local function stream_flush()
  if EVENT_COUNT > 0 then
    local count = EVENT_COUNT
    EVENT_COUNT = 0
    redis_call('XADD', PREFIX .. 'events', 'MAXLEN', '~', EVENTS_MAX_LEN, '*',
               table_unpack(EVENT_BUFFER, 1, count))
  end
end

-- Writes what the call's events left to write: the history records and the stream entry.
local function events_flush()
  if HISTORY_COUNT > 0 then history_flush() end
  stream_flush()
end

-- Adds one event of job `id` to the entry being built (a new entry when there is none, or a new one after
-- 3000 fields), and to its message's history when the call keeps it (materialise keeps none: a job's
-- `queued` record comes later, see above).
-- `recipients` are the addresses joined with newlines; `mx`, `ip`, `tls` the attempt's details, `bounce`
-- '1' for an admin-bounced job, `owner` the owner of an expired lease, `dsn` the id of the DSN queued for a
-- failed or expired event's recipients; nil: none.
local function event_add(kind, id, domain, attempts, tags, recipients, reply, mx, ip, tls, bounce, owner, dsn)
  local out, n = EVENT_BUFFER, EVENT_COUNT
  recipients = recipients or ''
  out[n + 1] = 'kind'; out[n + 2] = kind; out[n + 3] = 'job'; out[n + 4] = id
  out[n + 5] = 'rcpts'; out[n + 6] = recipients
  if n == 0 then
    out[7] = 'ts'; out[8] = NOW_TEXT
    n = 8
    LAST_DOMAIN, LAST_ATTEMPTS, LAST_TAGS, LAST_REPLY = '', '', '', ''
    LAST_MX, LAST_IP, LAST_TLS, LAST_BOUNCE = '', '', '', ''
  else
    n = n + 6
  end
  domain, attempts, tags, reply = domain or '', attempts or '', tags or '', reply or ''
  mx, ip, tls, bounce = mx or '', ip or '', tls or '', bounce or ''
  if attempts == '0' then attempts = '' end
  if tags == '{}' then tags = '' end
  -- Unrolled (a loop over the names costs more in Lua than it saves in the stream).
  if LAST_DOMAIN ~= domain then LAST_DOMAIN = domain; out[n + 1] = 'dom'; out[n + 2] = domain; n = n + 2 end
  if LAST_ATTEMPTS ~= attempts then
    LAST_ATTEMPTS = attempts; out[n + 1] = 'att'; out[n + 2] = attempts; n = n + 2
  end
  if LAST_TAGS ~= tags then LAST_TAGS = tags; out[n + 1] = 'tags'; out[n + 2] = tags; n = n + 2 end
  if LAST_REPLY ~= reply then LAST_REPLY = reply; out[n + 1] = 'reply'; out[n + 2] = reply; n = n + 2 end
  if LAST_MX ~= mx then LAST_MX = mx; out[n + 1] = 'mx'; out[n + 2] = mx; n = n + 2 end
  if LAST_IP ~= ip then LAST_IP = ip; out[n + 1] = 'ip'; out[n + 2] = ip; n = n + 2 end
  if LAST_TLS ~= tls then LAST_TLS = tls; out[n + 1] = 'tls'; out[n + 2] = tls; n = n + 2 end
  if LAST_BOUNCE ~= bounce then
    LAST_BOUNCE = bounce; out[n + 1] = 'bounce'; out[n + 2] = bounce; n = n + 2
  end
  if owner then out[n + 1] = 'owner'; out[n + 2] = owner; n = n + 2 end
  if dsn and dsn ~= '' then out[n + 1] = 'dsn'; out[n + 2] = dsn; n = n + 2 end
  EVENT_COUNT = n
  if HISTORY_TTL then
    -- The record: kind, time, the job's number in its message, domain, attempt, recipients, MX, IP, TLS, DSN,
    -- sender and tags (both on queued records only), the reply's length, the reply.
    history_job(id)
    history_add(kind .. US .. NOW_TEXT .. US .. HISTORY_JOB_NUMBER .. US .. domain .. US .. attempts .. US ..
      recipients .. US .. mx .. US .. ip .. US .. tls .. US .. (dsn or '') .. US .. US .. US ..
      (SMALL_DECIMALS[#reply] or decimal(#reply)) .. US .. reply)
  end
  if n >= 3000 then stream_flush() end
end

-- One event of the job in the hash form (`recipients` a list of addresses), as its own stream entry.
local function job_event(kind, job_key, recipients, owner)
  local fields = redis_call('HMGET', job_key, 'dom', 'att', 'tags')
  -- Its own stream entry; its history records go with those made before it (a promotion's).
  stream_flush()
  local id = string_sub(job_key, #PREFIX + 5)
  local addresses = table_concat(recipients, '\n')
  event_add(kind, id, fields[1], fields[2], fields[3], addresses, nil, nil, nil, nil, nil, owner)
  events_flush()
end

-- The message id of a job id (`<msg>.<n>`).
local function message_of(id) return string_match(id, '^(.*)%.%d+$') end
-- The schedule a job waits on: its domain's, unless an admin bounce moved it (`sched`).
local function schedule_of(schedule, domain) return schedule or domain end

-- A domain-level event (suspend, resume) with no job.
local function domain_event(kind, domain, reply)
  local fields = {'kind', kind, 'dom', domain, 'ts', NOW_TEXT}
  if reply and reply ~= '' then fields[#fields + 1] = 'reply'; fields[#fields + 1] = reply end
  redis_call('XADD', PREFIX .. 'events', 'MAXLEN', '~', EVENTS_MAX_LEN, '*', table_unpack(fields))
end

-- Addresses of the job's recipients whose state is `state` ('p', 'd' or 'f'); nil means all.
local function recipients_in(job_key, state)
  local count = number_of(redis_call('HGET', job_key, 'n') or '0')
  local out = {}
  for i = 0, count - 1 do
    local fields = redis_call('HMGET', job_key, 'ra:' .. i, 'rs:' .. i)
    if state == nil or fields[2] == state then out[#out + 1] = fields[1] end
  end
  return out
end

-- Moves the job between the per-shard state counters (queued, deferred, inflight, held); nil removes it.
local function set_state(job_key, new_state)
  local old_state = redis_call('HGET', job_key, 'state')
  if old_state == new_state then return end
  if old_state then redis_call('HINCRBY', PREFIX .. 'cnt', old_state, '-1') end
  if new_state then
    redis_call('HINCRBY', PREFIX .. 'cnt', new_state, '1')
    redis_call('HSET', job_key, 'state', new_state)
  end
end

-- Whether any domain of this shard is suspended, asked once per call (almost always none).
local ANY_SUSPENDED
local function suspended(domain)
  if domain == BOUNCE_SCHEDULE then return false end
  if ANY_SUSPENDED == nil then ANY_SUSPENDED = redis_call('HLEN', PREFIX .. 'susp') > 0 end
  if not ANY_SUSPENDED then return false end
  return redis_call('HEXISTS', PREFIX .. 'susp', domain) == 1
end

-- The earliest due job of a schedule: its score as a string, or nil when the schedule is empty.
local function earliest_due(schedule)
  return redis_call('ZRANGE', PREFIX .. 'due:' .. schedule, '0', '0', 'WITHSCORES')[2]
end

-- A job of `schedule` became due at `due` (a decimal string): the domain must be found in the domain index
-- by then (ZADD LT only moves it earlier). Returns false for a suspended domain (left out of the index).
local function index_add(schedule, due)
  if suspended(schedule) then return false end
  redis_call('ZADD', PREFIX .. 'domains', 'LT', due, schedule)
  return true
end

-- Wakes. Idle workers block on the shard's wake list `wake` (BLPOP, see `redis/wake.rs`), and each token in
-- it wakes one of them. A function that makes work claimable (jobs due now, or a slot freed in a domain
-- with due jobs) pushes tokens, but only while the list holds fewer than WAKE_CAP: a shard where no one
-- waits keeps at most WAKE_CAP tokens; a claim that leaves nothing due in the shard drops them
-- (drop_old_wakes), so that few are old. A signal costs an LLEN, and an RPUSH when there is room.
local WAKE_CAP = 8
local WAKE_TOKENS = {'1', '1', '1', '1', '1', '1', '1', '1'}

-- How many tokens the wake list has room for.
local function wake_room()
  return WAKE_CAP - redis_call('LLEN', PREFIX .. 'wake')
end

-- Pushes `count` tokens (at most `room`, from wake_room(); nil: asks).
local function wake(count, room)
  if not room then room = wake_room() end
  if count > room then count = room end
  if count > 0 then redis_call('RPUSH', PREFIX .. 'wake', table_unpack(WAKE_TOKENS, 1, count)) end
end

-- Drops the shard's shared wake list when no domain of the shard is due by `claimable_by` (a decimal
-- string: now, or the next turn of a domain just claimed): its tokens announce work that is gone (taken by
-- claims that did not wait for them) and would each wake a worker to find nothing, whose claim, finding
-- nothing where the token pointed, then visits every shard. Work made claimable later pushes new ones. The
-- holders' own lists are left alone: a held domain can be claimable by its holder while out of the due part
-- of the index (other workers' claims push it back, the hold counting against its limit for them).
local function drop_old_wakes(claimable_by)
  local shared = PREFIX .. 'wake'
  if redis_call('EXISTS', shared) == 0 then return end
  if #redis_call('ZRANGEBYSCORE', PREFIX .. 'domains', '-inf', claimable_by, 'LIMIT', '0', '1') > 0 then return end
  redis_call('DEL', shared)
end

-- Who can claim `schedule` now (`default_limit`: the limit of a domain without its own, a decimal string):
-- true, any worker (a slot is free); the waiter id of a worker whose idle connection holds one of its
-- slots (a live hold `h:<claim>/<waiter>`, hold.lua: only that worker can use it); or nil (every slot is
-- busy, and the call that frees one wakes a worker). Lapsed slots count as taken: a claim drops them.
local function claimant(schedule, default_limit)
  if schedule == BOUNCE_SCHEDULE then return true end
  local limit = redis_call('HGET', PREFIX .. 'conc', schedule) or default_limit
  local slots_key = PREFIX .. 'slots:' .. schedule
  if redis_call('ZCARD', slots_key) < (SMALL_NUMBERS[limit] or number_of(limit)) then return true end
  -- Holds end sooner than claims (an idle time against a lease), so they come first.
  local live = redis_call('ZRANGEBYSCORE', slots_key, '(' .. NOW_TEXT, '+inf', 'LIMIT', '0', '8')
  for i = 1, #live do
    local waiter = string_match(live[i], '^h:[^/]*/(.+)$')
    if waiter then return waiter end
  end
  return nil
end

-- Wakes one worker, `waiter`, through its own wake list `wake:<waiter>` (capped as the shared one; a
-- worker that is gone leaves its list behind for ten minutes).
local function wake_waiter(waiter)
  local key = PREFIX .. 'wake:' .. waiter
  if redis_call('LLEN', key) < WAKE_CAP then
    redis_call('RPUSH', key, '1')
    redis_call('PEXPIRE', key, '600000')
  end
end

-- A slot of `schedule` may be free now: back into the index at its earliest due job (it may have been
-- pushed back at its limit) and, when the slot was freed indeed (`freed`) and that job is due, one waiting
-- worker woken (a claim that skipped the domain at its limit is waiting for this).
local function slot_freed(schedule, freed)
  local first = earliest_due(schedule)
  if first and index_add(schedule, first) and freed and not below(NOW_TEXT, first) then wake(1) end
end

-- Recomputes a schedule's place in the domain index from its earliest due job, never below `floor` (a
-- decimal string, or nil).
local function reindex(schedule, floor)
  if suspended(schedule) then redis_call('ZREM', PREFIX .. 'domains', schedule); return end
  local first = earliest_due(schedule)
  if not first then redis_call('ZREM', PREFIX .. 'domains', schedule); return end
  if floor and below(first, floor) then first = floor end
  redis_call('ZADD', PREFIX .. 'domains', first, schedule)
end

local function schedule_job(schedule, id, due)
  local due_text = string_format('%d', due)
  redis_call('ZADD', PREFIX .. 'due:' .. schedule, due_text, id)
  index_add(schedule, due_text)
end

-- `count` (default 1) jobs of claim `claim` (taken from `schedule`) are no longer in flight; the last one
-- frees the claim's slot.
local function claim_done(claim, schedule, count)
  if not claim or claim == '' then return end
  local left = redis_call('HINCRBY', PREFIX .. 'claims', claim, decimal(-(count or 1)))
  if left <= 0 then
    redis_call('HDEL', PREFIX .. 'claims', claim)
    redis_call('HDEL', PREFIX .. 'cinfo', claim)
    if schedule and schedule ~= '' then
      -- The slot is freed, unless a hold took it over (hold.lua) or it lapsed and went.
      slot_freed(schedule, redis_call('ZREM', PREFIX .. 'slots:' .. schedule, claim) == 1)
    end
  end
end

-- Takes a job in the hash form out of flight (owner, token, lease, slot).
local function unlease(job_key, id)
  -- The token is the claim id; `cdom` the schedule it was claimed from.
  local lease = redis_call('HMGET', job_key, 'tok', 'cdom')
  redis_call('HDEL', job_key, 'owner', 'tok', 'lease', 'cdom')
  redis_call('ZREM', PREFIX .. 'inflight', id)
  claim_done(lease[1], lease[2])
end

-- Puts a job in the hash form that is not in flight back on its schedule at `due` (a number).
local function requeue(job_key, id, due)
  local fields = redis_call('HMGET', job_key, 'sched', 'att', 'dom')
  if (fields[2] or '0') ~= '0' then set_state(job_key, 'deferred') else set_state(job_key, 'queued') end
  redis_call('HSET', job_key, 'next', string_format('%d', due))
  schedule_job(schedule_of(fields[1], fields[3]), id, due)
end

-- Drops one reference to a message's body: a job that holds its message's body inline (`solo`: the
-- message's only job) takes it along when its data (`jd:`) is deleted; otherwise the `msg:` record counts
-- the message's live jobs in this shard and the last one deletes it and `body:`.
local function drop_body_ref(id, solo)
  if solo == '1' then return end
  local message = message_of(id)
  local message_key = PREFIX .. 'msg:' .. message
  if redis_call('HINCRBY', message_key, 'live', '-1') <= 0 then
    redis_call('DEL', message_key, PREFIX .. 'body:' .. message)
  end
end

-- Removes a finished or deleted job in the hash form; the message body goes with the last job of the
-- message in this shard.
local function remove_job(job_key, id)
  local fields = redis_call('HMGET', job_key, 'sched', 'dom', 'state', 'solo')
  local domain, state = fields[2], fields[3]
  local schedule = schedule_of(fields[1], domain)
  if state == 'inflight' then unlease(job_key, id) end
  set_state(job_key, nil)
  local was_due = 0
  if state == 'held' then
    redis_call('ZREM', PREFIX .. 'held:' .. domain, id)
  elseif state ~= 'inflight' then
    was_due = redis_call('ZREM', PREFIX .. 'due:' .. schedule, id)
  end
  redis_call('ZREM', PREFIX .. 'jobs', id)
  redis_call('DEL', job_key, job_data_key(id))
  if was_due == 1 then reindex(schedule, nil) end
  if redis_call('HINCRBY', PREFIX .. 'dlive', domain, '-1') <= 0 then
    redis_call('HDEL', PREFIX .. 'dlive', domain)
  end
  drop_body_ref(id, fields[4])
end

-- redis.call(command, key, items of `list`...) in slices of at most 400 items, one call for a short list
-- (table_unpack() of a long list would overflow Lua's stack). `count`: the list's first items only; `key`
-- false: the items alone. For commands that answer a number: returns the sum (EXISTS counts, say).
local SLICE = 400
local function call_in_slices(command, key, list, count)
  local n = count or #list
  local total, first = 0, 1
  while first <= n do
    local last = first + SLICE - 1
    if last > n then last = n end
    local reply
    if key then
      reply = redis_call(command, key, table_unpack(list, first, last))
    else
      reply = redis_call(command, table_unpack(list, first, last))
    end
    total = total + reply
    first = last + 1
  end
  return total
end

-- The hash fields of a job in the string form, from its header fields (see header_of), as a flat list.
local function header_fields(id, header)
  local count = number_of(header[HEADER_RECIPIENT_COUNT]) or 0
  local fields = {'dom', header[HEADER_DOMAIN], 'n', header[HEADER_RECIPIENT_COUNT],
                  'first', header[HEADER_FIRST_QUEUED], 'next', header[HEADER_NEXT_DUE],
                  'sender', header[HEADER_SENDER], 'tags', header[HEADER_TAGS], 'att', '0'}
  local trace = header[HEADER_TRACE]
  if trace and trace ~= '' then fields[#fields + 1] = 'trace'; fields[#fields + 1] = trace end
  if header[HEADER_SOLO] == '1' then fields[#fields + 1] = 'solo'; fields[#fields + 1] = '1' end
  for r = 0, count - 1 do
    fields[#fields + 1] = 'ra:' .. r; fields[#fields + 1] = header[HEADER_FIRST_RECIPIENT + r] or ''
    fields[#fields + 1] = 'rs:' .. r; fields[#fields + 1] = 'p'
  end
  if header[HEADER_FORM] == 'i' then
    -- In flight: the claim's owner and schedule, and the job's lease deadline.
    local token = header[HEADER_TOKEN]
    local record = redis_call('HGET', PREFIX .. 'cinfo', token) or ''
    local owner, schedule = string_match(record, '^(.*)\t([^\t]*)$')
    if not owner then owner, schedule = record, header[HEADER_DOMAIN] end
    local lease = redis_call('ZSCORE', PREFIX .. 'inflight', id) or '0'
    fields[#fields + 1] = 'state'; fields[#fields + 1] = 'inflight'
    fields[#fields + 1] = 'owner'; fields[#fields + 1] = owner
    fields[#fields + 1] = 'tok'; fields[#fields + 1] = token
    fields[#fields + 1] = 'lease'; fields[#fields + 1] = lease
    fields[#fields + 1] = 'cdom'; fields[#fields + 1] = schedule
  else
    fields[#fields + 1] = 'state'; fields[#fields + 1] = 'queued'
  end
  return fields
end

-- Whether a record in the string form (header `line`) was stored for an enqueue that no materialise call
-- kept: it still has its TTL, and is no job (see enqueue.lua).
local function unkept(id, line)
  return string_sub(line, 1, 1) == 'q' and redis_call('PTTL', job_data_key(id)) >= 0
end

-- Appends to `out` the hash fields `<first_name>:<i>` and `<second_name>:<i>` of the job's recipients
-- 1 .. count-1 (recipient 0's come with the caller's first HMGET).
local function append_recipients(job_key, count, first_name, second_name, out)
  if count <= 1 then return end
  local names = {}
  for r = 1, count - 1 do
    names[#names + 1] = first_name .. ':' .. r
    names[#names + 1] = second_name .. ':' .. r
  end
  -- In slices: table_unpack() of a job with thousands of recipients would exceed Lua's stack, and an error
  -- after the caller's first write would leave its change half made.
  local from = 1
  while from <= #names do
    local to = from + SLICE - 1
    if to > #names then to = #names end
    local more = redis_call('HMGET', job_key, table_unpack(names, from, to))
    local base = #out
    for y = 1, #more do out[base + y] = more[y] end
    from = to + 1
  end
end

-- Turns a job in the string form into the hash form (nothing to do for one in the hash form already), and
-- records its `queued` event in the history when the call keeps it. Every function but the common paths of
-- claim, complete and extend works on the hash. Returns false when there is no job.
local function promote(id)
  local data_key = job_data_key(id)
  local form = redis_call('GETRANGE', data_key, '0', '0')
  if form == '' then return false end
  if form == 'h' then return true end
  if unkept(id, form) then return false end
  local header = header_of((split_data(redis_call('GET', data_key))))
  local fields = header_fields(id, header)
  local job_key = job_hash_key(id)
  call_in_slices('HSET', job_key, fields)
  redis_call('SETRANGE', data_key, '0', 'h')
  -- The job's `queued` record, which its record in the string form stood for until now.
  if HISTORY_TTL then history_add(header_queued_record(id, header)) end
  return true
end

-- The header line of a job's data ('' when there is no job): mostly within its first bytes.
local function header_line(id)
  local data_key = job_data_key(id)
  -- Every byte read costs in Lua: first the usual size, then more.
  local head = redis_call('GETRANGE', data_key, '0', '255')
  local newline = string_find(head, '\n', 1, true)
  if not newline and #head == 256 then
    head = redis_call('GETRANGE', data_key, '0', '65535')
    newline = string_find(head, '\n', 1, true)
  end
  if newline then return string_sub(head, 1, newline - 1) end
  if #head < 65536 then return head end
  return (split_data(redis_call('GET', data_key)))
end

-- The job's fields (as HGETALL would give them from the hash form), with `env` from its data (for read
-- views), and the size of its inline body (or -1). Reads only: a job in the string form is not promoted.
local function job_fields(id)
  local line, envelope, body = split_data(redis_call('GET', job_data_key(id)))
  if line == '' then return {}, -1 end
  if unkept(id, line) then return {}, -1 end
  local fields
  if string_sub(line, 1, 1) == 'h' then
    fields = redis_call('HGETALL', job_hash_key(id))
    if #fields == 0 then return fields, -1 end
  else
    fields = header_fields(id, header_of(line))
  end
  fields[#fields + 1] = 'id'; fields[#fields + 1] = id
  fields[#fields + 1] = 'env'; fields[#fields + 1] = envelope
  if body then return fields, #body end
  return fields, -1
end

-- Resets the per-call state from the calling convention's first arguments.
local function begin_call(args)
  if not redis_call then
    redis_call, string_sub, string_find, string_match, string_format, table_concat, table_unpack, to_number =
      redis.call, string.sub, string.find, string.match, string.format, table.concat, unpack, tonumber
  end
  PREFIX, NOW_TEXT, EVENTS_MAX_LEN, MINUTE = args[1], args[2], args[3], args[4]
  NOW, ANY_SUSPENDED, MINUTE_KEY, EVENT_COUNT = nil, nil, nil, 0
  HISTORY_TTL, HISTORY_MESSAGE, HISTORY_COUNT = nil, nil, 0
end

-- Function flags. By default a function may write, and Redis refuses it whole while it is out of memory
-- (`maxmemory` with `noeviction`): right for what stores new mail (materialise, intake), which must then
-- fail as an outage. What moves mail along and frees memory (claims, completions, heartbeats, the reaper,
-- operator actions) runs anyway, as scripts did before (they were refused only if their first write grew
-- memory), adding only small records; `read` writes nothing.
local RUNS_WHEN_FULL = {'allow-oom'}
local READ_ONLY = {'no-writes'}

-- Registers operation `name` as the function `<FUNCTION_PREFIX><name>`; `run(args)` does the work after the
-- per-call state is set. `flags` as redis.register_function takes them (nil: may write, not when full).
local function register(name, run, flags)
  redis.register_function{
    function_name = FUNCTION_PREFIX .. name,
    callback = function(_, args)
      begin_call(args)
      local reply = run(args)
      -- Records buffered by a step that then changed nothing (a job promoted to the hash form, whose
      -- `queued` record the promotion made, by an action that skipped it) are still the job's history.
      if HISTORY_COUNT > 0 then history_flush() end
      return reply
    end,
    flags = flags,
  }
end
