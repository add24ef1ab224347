-- Shared preamble of every tern-queue script (concatenated in front of each one at build time).
--
-- Calling convention: KEYS[1] is a key of the shard (it routes the call in a cluster); ARGV[1] is the
-- shard's key prefix, e.g. "{tern:s07}:"; ARGV[2] the caller's clock in Unix ms; ARGV[3] the events
-- stream's approximate maximum length. Script-specific arguments start at ARGV[4].
-- Every key a script touches starts with ARGV[1], so all of them hash to the same cluster slot.
local P = ARGV[1]
local NOW = tonumber(ARGV[2])
local EVMAX = ARGV[3]
local BOUNCE = '#bounce'

local function k(s) return P .. s end
local function jk(id) return P .. 'job:' .. id end
-- A job's data `jd:<id>` is one string: a header line, a newline, the envelope (JSON, one line), and for a
-- message's only job (`solo`) a newline and the message body.
-- The header starts with the job's form and claim token, fixed width so that SETRANGE changes them in place,
-- then tab-separated: dom, n, first, next, sender, tags, trace, solo, and the recipients' addresses (none of
-- these can hold a tab or a newline). Forms:
--   'q'  waiting, never tried: the header is the whole record (there is no hash);
--   'i'  the same, in flight for the claim whose id is the token (its owner and schedule are in `cinfo`,
--        the lease deadline is the job's score in `inflight`);
--   'h'  the hash `job:<id>` holds the job (the header's fields stay true, except `next`).
-- A job is stored in the string form and keeps it through a claim and a completion that ends it (the common
-- life of a job: a few Redis calls in all); anything else turns it into the hash form first (promote).
local TOKW = 26
local function jdk(id) return P .. 'jd:' .. id end
local HF_FORM, HF_TOK, HF_DOM, HF_N, HF_FIRST, HF_NEXT, HF_SENDER, HF_TAGS, HF_TRACE, HF_SOLO, HF_RCPT =
  1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11

-- Splits a job's data into its header line, its envelope and its inline body (nil when the body is stored
-- in `body:<msg>`).
local function split_data(v)
  if not v then return '', '', nil end
  local p = string.find(v, '\n', 1, true)
  if not p then return v, '', nil end
  local q = string.find(v, '\n', p + 1, true)
  if not q then return string.sub(v, 1, p - 1), string.sub(v, p + 1), nil end
  return string.sub(v, 1, p - 1), string.sub(v, p + 1, q - 1), string.sub(v, q + 1)
end

-- The fields of a header line: {form, token, dom, n, first, next, sender, tags, trace, solo, rcpt1, ...}.
local function header_of(line)
  local f = {string.sub(line, 1, 1), string.sub(line, 2, TOKW + 1)}
  local i = TOKW + 3
  while true do
    local j = string.find(line, '\t', i, true)
    if not j then
      f[#f + 1] = string.sub(line, i)
      return f
    end
    f[#f + 1] = string.sub(line, i, j - 1)
    i = j + 1
  end
end

-- Counters: totals in `stats`, and a per-minute bucket kept for two hours.
local function stat(name, n)
  if n == nil or n == 0 then return end
  redis.call('HINCRBY', k('stats'), name, n)
  local mk = k('min:' .. math.floor(NOW / 60000))
  -- The call that creates the bucket (or the field) sets its expiry.
  if redis.call('HINCRBY', mk, name, n) == n then redis.call('EXPIRE', mk, 7200) end
end

-- Fields that an event after the first of a stream entry leaves out when it has the previous event's value
-- (the reader carries them forward; an empty value stands for none). A batch of completions of one claim
-- then writes the domain, attempt, reply, MX, IP and TLS once.
-- (Shared: dom, att, tags, reply, mx, ip, tls, bounce.)
local EMPTY = {}

-- The fields of one event of job `j` (its id, msg, dom, att and tags, as read by HMGET), appended to `out`.
-- `rcpts` is a list of addresses or already joined with newlines; `extra` a table of more fields (name →
-- value; mx, ip, tls, bounce, owner). `last` holds the shared fields' values of the entry's previous event
-- (an empty table for an entry's first event: every shared field starts from none), and is updated.
-- Every event starts with its `kind` field: a stream entry may hold several events (see ev_add). To keep
-- entries small, defaults are left out: `msg` (the job id names its message), `att` when 0, `tags` when
-- empty, `ts` after the entry's first event (the events of one entry share their time), and shared fields
-- equal to the previous event's.
local function ev_fields(out, kind, j, rcpts, reply, extra, last)
  if type(rcpts) == 'table' then rcpts = table.concat(rcpts, '\n') end
  local n = #out
  out[n + 1] = 'kind'; out[n + 2] = kind; out[n + 3] = 'job'; out[n + 4] = j[1] or ''
  out[n + 5] = 'rcpts'; out[n + 6] = rcpts or ''
  n = n + 6
  if n == 6 then out[n + 1] = 'ts'; out[n + 2] = string.format('%d', NOW); n = n + 2 end
  local att, tags = j[4] or '', j[5] or ''
  if att == '0' then att = '' end
  if tags == '{}' then tags = '' end
  local x = extra or EMPTY
  -- Unrolled (a loop over the names costs more in Lua than it saves in the stream).
  local v = j[3] or ''
  if (last.dom or '') ~= v then last.dom = v; out[n + 1] = 'dom'; out[n + 2] = v; n = n + 2 end
  if (last.att or '') ~= att then last.att = att; out[n + 1] = 'att'; out[n + 2] = att; n = n + 2 end
  if (last.tags or '') ~= tags then last.tags = tags; out[n + 1] = 'tags'; out[n + 2] = tags; n = n + 2 end
  v = reply or ''
  if (last.reply or '') ~= v then last.reply = v; out[n + 1] = 'reply'; out[n + 2] = v; n = n + 2 end
  if x ~= last.x then
    -- The attempt's fields, compared only when the caller passes another table.
    last.x = x
    v = x.mx or ''
    if (last.mx or '') ~= v then last.mx = v; out[n + 1] = 'mx'; out[n + 2] = v; n = n + 2 end
    v = x.ip or ''
    if (last.ip or '') ~= v then last.ip = v; out[n + 1] = 'ip'; out[n + 2] = v; n = n + 2 end
    v = x.tls or ''
    if (last.tls or '') ~= v then last.tls = v; out[n + 1] = 'tls'; out[n + 2] = v; n = n + 2 end
    v = x.bounce or ''
    if (last.bounce or '') ~= v then last.bounce = v; out[n + 1] = 'bounce'; out[n + 2] = v; n = n + 2 end
  end
  if x.owner then out[n + 1] = 'owner'; out[n + 2] = x.owner end
end

-- Appends one event as its own stream entry.
local function event_of(kind, j, rcpts, reply, extra)
  local f = {}
  ev_fields(f, kind, j, rcpts, reply, extra, {})
  redis.call('XADD', k('events'), 'MAXLEN', '~', EVMAX, '*', unpack(f))
end

-- Batched events: scripts that change many jobs collect their events with ev_add and append them with
-- ev_flush as ONE stream entry (its fields are the events' fields one after another, each event starting
-- with `kind`), or a few entries when there are very many.
local EVBUF = {}
local EVLAST = {}
local function ev_flush()
  if #EVBUF > 0 then
    redis.call('XADD', k('events'), 'MAXLEN', '~', EVMAX, '*', unpack(EVBUF))
    EVBUF = {}
  end
end
local function ev_add(kind, j, rcpts, reply, extra)
  if #EVBUF == 0 then EVLAST = {} end
  ev_fields(EVBUF, kind, j, rcpts, reply, extra, EVLAST)
  if #EVBUF >= 3000 then ev_flush() end
end

-- The job id of a job key.
local function id_of(jkey) return string.sub(jkey, #P + 5) end
-- The message id of a job id (`<msg>.<n>`).
local function msg_of(id) return string.match(id, '^(.*)%.%d+$') end
-- The schedule a job waits on: its domain's, unless an admin bounce moved it (`sched`).
local function sched_of(sched, dom) return sched or dom end

local function event(kind, jkey, rcpts, reply, extra)
  local f = redis.call('HMGET', jkey, 'dom', 'att', 'tags')
  event_of(kind, {id_of(jkey), false, f[1], f[2], f[3]}, rcpts, reply, extra)
end

-- A domain-level event (suspend, resume) with no job.
local function domain_event(kind, dom, reply)
  local f = {'kind', kind, 'dom', dom, 'ts', string.format('%d', NOW)}
  if reply and reply ~= '' then f[#f + 1] = 'reply'; f[#f + 1] = reply end
  redis.call('XADD', k('events'), 'MAXLEN', '~', EVMAX, '*', unpack(f))
end

-- Addresses of the job's recipients whose state is `st` ('p', 'd' or 'f'); nil `st` means all.
local function rcpts_in(jkey, st)
  local n = tonumber(redis.call('HGET', jkey, 'n') or '0')
  local out = {}
  for i = 0, n - 1 do
    local v = redis.call('HMGET', jkey, 'ra:' .. i, 'rs:' .. i)
    if st == nil or v[2] == st then out[#out + 1] = v[1] end
  end
  return out
end

-- Moves the job between the per-shard state counters (queued, deferred, inflight); nil removes it.
local function set_state(jkey, new)
  local old = redis.call('HGET', jkey, 'state')
  if old == new then return end
  if old then redis.call('HINCRBY', k('cnt'), old, -1) end
  if new then
    redis.call('HINCRBY', k('cnt'), new, 1)
    redis.call('HSET', jkey, 'state', new)
  end
end

-- Whether any domain of this shard is suspended, asked once per call (almost always none).
local ANY_SUSP = nil
local function suspended(d)
  if d == BOUNCE then return false end
  if ANY_SUSP == nil then ANY_SUSP = redis.call('HLEN', k('susp')) > 0 end
  if not ANY_SUSP then return false end
  return redis.call('HEXISTS', k('susp'), d) == 1
end

-- Recomputes a schedule's place in the domain index from its earliest due job (never below `floor`).
local function reindex(d, floor)
  if suspended(d) then redis.call('ZREM', k('domains'), d); return end
  local first = redis.call('ZRANGE', k('due:' .. d), 0, 0, 'WITHSCORES')
  if #first == 0 then redis.call('ZREM', k('domains'), d); return end
  local s = tonumber(first[2])
  if floor and s < floor then s = floor end
  redis.call('ZADD', k('domains'), s, d)
end

-- A job of schedule `d` became due at `at`: the domain must be found by then (ZADD LT only moves it earlier).
local function index_add(d, at)
  if suspended(d) then return end
  redis.call('ZADD', k('domains'), 'LT', at, d)
end

local function schedule(d, id, at)
  redis.call('ZADD', k('due:' .. d), at, id)
  index_add(d, at)
end

-- `cnt` (default 1) jobs of claim `claim` (taken from schedule `d`) are no longer in flight; the last one
-- frees the slot.
local function claim_done(claim, d, cnt)
  if not claim or claim == '' then return end
  local n = redis.call('HINCRBY', k('claims'), claim, -(cnt or 1))
  if n <= 0 then
    redis.call('HDEL', k('claims'), claim)
    redis.call('HDEL', k('cinfo'), claim)
    if d and d ~= '' then
      redis.call('ZREM', k('slots:' .. d), claim)
      -- The domain may have been pushed back for being at its limit: a slot is free now.
      local first = redis.call('ZRANGE', k('due:' .. d), 0, 0, 'WITHSCORES')
      if #first > 0 then index_add(d, tonumber(first[2])) end
    end
  end
end

-- Takes the job out of flight (owner, token, lease, slot). Returns nothing.
local function unlease(jkey, id)
  -- The token is the claim id.
  local c = redis.call('HMGET', jkey, 'tok', 'cdom')
  redis.call('HDEL', jkey, 'owner', 'tok', 'lease', 'cdom')
  redis.call('ZREM', k('inflight'), id)
  claim_done(c[1], c[2])
end

-- Puts a job that is not in flight back on its schedule at `at`.
local function requeue(jkey, id, at)
  local f = redis.call('HMGET', jkey, 'sched', 'att', 'dom')
  if tonumber(f[2] or '0') > 0 then set_state(jkey, 'deferred') else set_state(jkey, 'queued') end
  redis.call('HSET', jkey, 'next', string.format('%d', at))
  schedule(sched_of(f[1], f[3]), id, at)
end

-- Drops one reference to a message's body: a job that holds its message's body inline (`solo`: the
-- message's only job) takes it along when its data (`jd:`) is deleted; otherwise the `msg:` record counts the
-- message's live jobs in this shard and the last one deletes it and `body:`.
local function drop_body_ref(id, solo)
  if solo == '1' then return end
  local msg = msg_of(id)
  local mk = k('msg:' .. msg)
  if redis.call('HINCRBY', mk, 'live', '-1') <= 0 then redis.call('DEL', mk, k('body:' .. msg)) end
end

-- Removes a finished or deleted job; the message body goes with the last job of the message in this shard.
local function remove_job(jkey, id)
  local f = redis.call('HMGET', jkey, 'sched', 'dom', 'dom', 'state', 'solo')
  -- f: schedule, -, domain, state, solo
  f[1] = sched_of(f[1], f[3])
  if f[4] == 'inflight' then unlease(jkey, id) end
  set_state(jkey, nil)
  local was_due = 0
  if f[4] ~= 'inflight' then was_due = redis.call('ZREM', k('due:' .. f[1]), id) end
  redis.call('ZREM', k('jobs'), id)
  redis.call('DEL', jkey, jdk(id))
  if was_due == 1 then reindex(f[1], nil) end
  local live = redis.call('HINCRBY', k('dlive'), f[3], -1)
  if live <= 0 then redis.call('HDEL', k('dlive'), f[3]) end
  drop_body_ref(id, f[5])
end

-- Runs `fn(args)` on slices of at most `step` items of the flat list `list` (keeps unpack() within
-- Lua's stack limit).
local function chunked(list, step, fn)
  local n = #list
  local i = 1
  while i <= n do
    local j = i + step - 1
    if j > n then j = n end
    fn(unpack(list, i, j))
    i = j + 1
  end
end

-- The hash fields of a job in the string form, from its header fields `hf` (see header_of), as a flat list.
local function header_fields(id, hf)
  local n = tonumber(hf[HF_N]) or 0
  local h = {'dom', hf[HF_DOM], 'n', hf[HF_N], 'first', hf[HF_FIRST], 'next', hf[HF_NEXT], 'sender', hf[HF_SENDER],
             'tags', hf[HF_TAGS], 'att', '0'}
  if hf[HF_TRACE] and hf[HF_TRACE] ~= '' then h[#h + 1] = 'trace'; h[#h + 1] = hf[HF_TRACE] end
  if hf[HF_SOLO] == '1' then h[#h + 1] = 'solo'; h[#h + 1] = '1' end
  for r = 0, n - 1 do
    h[#h + 1] = 'ra:' .. r; h[#h + 1] = hf[HF_RCPT + r] or ''
    h[#h + 1] = 'rs:' .. r; h[#h + 1] = 'p'
  end
  if hf[HF_FORM] == 'i' then
    -- In flight: the claim's owner and schedule, and the job's lease deadline.
    local ci = redis.call('HGET', k('cinfo'), hf[HF_TOK]) or ''
    -- owner, a tab, the schedule (which has no tab; the owner might).
    local owner, cdom = string.match(ci, '^(.*)\t([^\t]*)$')
    if not owner then owner, cdom = ci, hf[HF_DOM] end
    local lease = redis.call('ZSCORE', k('inflight'), id) or '0'
    h[#h + 1] = 'state'; h[#h + 1] = 'inflight'
    h[#h + 1] = 'owner'; h[#h + 1] = owner
    h[#h + 1] = 'tok'; h[#h + 1] = hf[HF_TOK]
    h[#h + 1] = 'lease'; h[#h + 1] = lease
    h[#h + 1] = 'cdom'; h[#h + 1] = cdom
  else
    h[#h + 1] = 'state'; h[#h + 1] = 'queued'
  end
  return h
end

-- Whether a record in the string form (header `line`) was stored for an enqueue that no materialise call
-- kept: it still has its TTL, and is no job (see materialise.lua).
local function unkept(id, line)
  return string.sub(line, 1, 1) == 'q' and redis.call('PTTL', jdk(id)) >= 0
end

-- Appends to `out` the hash fields `<a>:<i>` and `<b>:<i>` of the job's recipients 1 .. n-1 (recipient 0's
-- come with the caller's first HMGET).
local function append_recipients(jkey, n, a, b, out)
  if n <= 1 then return end
  local names = {}
  for r = 1, n - 1 do names[#names + 1] = a .. ':' .. r; names[#names + 1] = b .. ':' .. r end
  -- In slices: unpack() of a job with thousands of recipients would exceed Lua's stack, and an error after
  -- the caller's first write would leave its change half made.
  chunked(names, 400, function(...)
    local more = redis.call('HMGET', jkey, ...)
    local base = #out
    for y = 1, #more do out[base + y] = more[y] end
  end)
end

-- Turns a job in the string form into the hash form (nothing to do for one in the hash form already). Every
-- script but the common paths of claim and complete works on the hash. Returns false when there is no job.
local function promote(id)
  local dk = jdk(id)
  local form = redis.call('GETRANGE', dk, '0', '0')
  if form == '' then return false end
  if form == 'h' then return true end
  if unkept(id, form) then return false end
  local line = split_data(redis.call('GET', dk))
  local h = header_fields(id, header_of(line))
  local jkey = jk(id)
  chunked(h, 400, function(...) redis.call('HSET', jkey, ...) end)
  redis.call('SETRANGE', dk, '0', 'h')
  return true
end

-- The header line of a job's data ('' when there is no job): mostly within its first bytes.
local function header_line(id)
  local dk = jdk(id)
  -- Every byte read costs in Lua: first the usual size, then more.
  local head = redis.call('GETRANGE', dk, '0', '255')
  local nl = string.find(head, '\n', 1, true)
  if not nl and #head == 256 then
    head = redis.call('GETRANGE', dk, '0', '65535')
    nl = string.find(head, '\n', 1, true)
  end
  if nl then return string.sub(head, 1, nl - 1) end
  if #head < 65536 then return head end
  return (split_data(redis.call('GET', dk)))
end

-- The job's fields (as HGETALL would give them from the hash form), with `env` from its data (for read views),
-- and the size of its inline body (or -1). Reads only: a job in the string form is not promoted.
local function job_fields(id)
  local line, env, body = split_data(redis.call('GET', jdk(id)))
  if line == '' then return {}, -1 end
  if unkept(id, line) then return {}, -1 end
  local h
  if string.sub(line, 1, 1) == 'h' then
    h = redis.call('HGETALL', jk(id))
    if #h == 0 then return h, -1 end
  else
    h = header_fields(id, header_of(line))
  end
  h[#h + 1] = 'id'; h[#h + 1] = id
  h[#h + 1] = 'env'; h[#h + 1] = env
  if body then return h, #body end
  return h, -1
end
