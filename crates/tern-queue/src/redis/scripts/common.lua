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

-- Counters: totals in `stats`, and a per-minute bucket kept for two hours.
local function stat(name, n)
  if n == nil or n == 0 then return end
  redis.call('HINCRBY', k('stats'), name, n)
  local mk = k('min:' .. math.floor(NOW / 60000))
  -- The call that creates the bucket (or the field) sets its expiry.
  if redis.call('HINCRBY', mk, name, n) == n then redis.call('EXPIRE', mk, 7200) end
end

-- Appends one event for job `jkey`; `rcpts` is a list of addresses, `extra` a flat list of more fields.
-- `j` holds the job's id, msg, dom, att and tags (as read by HMGET), `rcpts` is a list of addresses or
-- already joined with newlines.
local function event_of(kind, j, rcpts, reply, extra)
  if type(rcpts) == 'table' then rcpts = table.concat(rcpts, '\n') end
  local f = {'kind', kind, 'msg', j[2] or '', 'job', j[1] or '', 'dom', j[3] or '',
             'rcpts', rcpts or '', 'att', j[4] or '0', 'ts', string.format('%d', NOW)}
  if j[5] then f[#f + 1] = 'tags'; f[#f + 1] = j[5] end
  if reply and reply ~= '' then f[#f + 1] = 'reply'; f[#f + 1] = reply end
  if extra then for i = 1, #extra do f[#f + 1] = extra[i] end end
  redis.call('XADD', k('events'), 'MAXLEN', '~', EVMAX, '*', unpack(f))
end

local function event(kind, jkey, rcpts, reply, extra)
  event_of(kind, redis.call('HMGET', jkey, 'id', 'msg', 'dom', 'att', 'tags'), rcpts, reply, extra)
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

local function suspended(d)
  if d == BOUNCE then return false end
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

-- One job of claim `claim` (taken from schedule `d`) is no longer in flight; the last one frees the slot.
local function claim_done(claim, d)
  if not claim or claim == '' then return end
  local n = redis.call('HINCRBY', k('claims'), claim, -1)
  if n <= 0 then
    redis.call('HDEL', k('claims'), claim)
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
  local c = redis.call('HMGET', jkey, 'claim', 'cdom')
  redis.call('HDEL', jkey, 'owner', 'tok', 'lease', 'claim', 'cdom')
  redis.call('ZREM', k('inflight'), id)
  claim_done(c[1], c[2])
end

-- Puts a job that is not in flight back on its schedule at `at`.
local function requeue(jkey, id, at)
  local f = redis.call('HMGET', jkey, 'sched', 'att')
  if tonumber(f[2] or '0') > 0 then set_state(jkey, 'deferred') else set_state(jkey, 'queued') end
  redis.call('HSET', jkey, 'next', string.format('%d', at))
  schedule(f[1], id, at)
end

-- Removes a finished or deleted job; the message body goes with the last job of the message in this shard.
local function remove_job(jkey, id)
  local f = redis.call('HMGET', jkey, 'sched', 'msg', 'dom', 'state')
  if f[4] == 'inflight' then unlease(jkey, id) end
  set_state(jkey, nil)
  local was_due = 0
  if f[4] ~= 'inflight' then was_due = redis.call('ZREM', k('due:' .. f[1]), id) end
  redis.call('ZREM', k('jobs'), id)
  redis.call('DEL', jkey)
  if was_due == 1 then reindex(f[1], nil) end
  local live = redis.call('HINCRBY', k('dlive'), f[3], -1)
  if live <= 0 then redis.call('HDEL', k('dlive'), f[3]) end
  local mk = k('msg:' .. f[2])
  if redis.call('HINCRBY', mk, 'live', -1) <= 0 then
    redis.call('DEL', mk, k('body:' .. f[2]))
  end
end
