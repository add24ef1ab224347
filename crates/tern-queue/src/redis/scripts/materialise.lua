-- Creates the jobs of many messages that live in this shard, with their bodies, in one atomic call.
-- ARGV[4] "1" to record a 24 h materialised marker per message (intake path: a re-drive is then a no-op),
-- [5] message count M, then per message:
--   id, body ("" when solo), sender (lower-cased), created ms, tags (JSON), solo ("1": the message has
--   exactly one job in all, whose data `jd:<job>` then holds the body after the envelope, with no
--   `msg:`/`body:` keys), job count J, then per job:
--     id, domain, due ms, recipient count, recipients (newline-separated).
-- The caller has stored each job's data `jd:<job>` just before, with a TTL: its header line in the string
-- form 'q' (see common.lua), a newline, the envelope (JSON), and for a solo message a newline and the body.
-- A job whose data still has its TTL is new: PERSIST keeps it, and the job is indexed; data with no TTL is
-- a job that exists already (left alone). Data that no call keeps expires by itself (and is no job for any
-- other script meanwhile; see `promote`). A missing record fails the whole call, which then changes nothing.
-- A message with several jobs in this shard stores its body once in `body:<msg>` and counts its live jobs in
-- `msg:<msg>` (the last one to go deletes both).
-- Idempotent: an existing job is left alone. The `queued` events of the call go into one stream entry;
-- schedules, counters and stats are updated once per call. Returns the number of jobs created.
local MARK = ARGV[4] == '1'
local i = 6
local made_all, rcpts, msgs = 0, 0, 0
local due, dmin, dorder = {}, {}, {}
local live = {}
local listing = {}

-- First, reading only: which messages a re-drive has handled already (`mat:` marker), and whether every
-- other job's record is there (one EXISTS for all). A missing record fails the call before it changes
-- anything (nothing is half made, and no marker is left for a message that was not made).
local M = tonumber(ARGV[5])
local handled, dkeys = {}, {}
do
  local x = 6
  for m = 1, M do
    local MSG, J = ARGV[x], tonumber(ARGV[x + 6])
    handled[m] = MARK and redis.call('EXISTS', k('mat:' .. MSG)) == 1
    x = x + 7
    for _ = 1, J do
      if not handled[m] then dkeys[#dkeys + 1] = jdk(ARGV[x]) end
      x = x + 5
    end
  end
  local present = 0
  chunked(dkeys, 400, function(...) present = present + redis.call('EXISTS', ...) end)
  if present < #dkeys then
    return redis.error_reply('ERR ' .. (#dkeys - present) .. ' job records were not stored before materialise')
  end
end
local nextkey = 0

for m = 1, M do
  local MSG, BODY, SENDER, CREATED, TAGS, SOLO = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4],
                                                ARGV[i + 5]
  local J = tonumber(ARGV[i + 6])
  i = i + 7
  local skip = handled[m]
  if MARK and not skip then redis.call('SET', k('mat:' .. MSG), '1', 'EX', 86400) end
  local made = 0
  local ids = {}
  for _ = 1, J do
    local id, dom, due_s, nr_s, rl = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
    local at, nr = tonumber(due_s), tonumber(nr_s)
    i = i + 5
    if SOLO ~= '1' then ids[#ids + 1] = id end
    -- The job is its data alone, in the string form (see common.lua). A handled message's records that the
    -- caller just wrote again (its jobs ended since) go at once, rather than lingering until they expire.
    local new = false
    if skip then
      if redis.call('PTTL', jdk(id)) >= 0 then redis.call('DEL', jdk(id)) end
    else
      -- 1: the record had its TTL (a new job); 0: kept already (an existing job, or one listed twice).
      nextkey = nextkey + 1
      new = redis.call('PERSIST', dkeys[nextkey]) == 1
    end
    if new then
      local q = due[dom]
      if not q then q = {}; due[dom] = q; dorder[#dorder + 1] = dom; dmin[dom] = at end
      q[#q + 1] = due_s; q[#q + 1] = id
      if at < dmin[dom] then dmin[dom] = at end
      live[dom] = (live[dom] or 0) + 1
      listing[#listing + 1] = '0'; listing[#listing + 1] = id
      ev_add('queued', {id, MSG, dom, '0', TAGS}, rl, nil, nil)
      made = made + 1
      rcpts = rcpts + nr
    end
  end
  if made > 0 then
    if SOLO ~= '1' then
      local mk = k('msg:' .. MSG)
      redis.call('HINCRBY', mk, 'live', made)
      redis.call('HSET', mk, 'sender', SENDER, 'created', CREATED, 'ids', table.concat(ids, ' '))
      redis.call('SET', k('body:' .. MSG), BODY)
    end
    msgs = msgs + 1
    made_all = made_all + made
  end
end
if made_all > 0 then
  for _, d in ipairs(dorder) do
    local dk = k('due:' .. d)
    chunked(due[d], 400, function(...) redis.call('ZADD', dk, ...) end)
    index_add(d, dmin[d])
    redis.call('HINCRBY', k('dlive'), d, live[d])
  end
  chunked(listing, 400, function(...) redis.call('ZADD', k('jobs'), ...) end)
  redis.call('HINCRBY', k('cnt'), 'queued', made_all)
  stat('enqueued', rcpts)
  stat('messages', msgs)
  ev_flush()
end
return made_all
