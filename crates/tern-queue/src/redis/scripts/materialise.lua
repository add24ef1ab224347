-- Creates the jobs of many messages that live in this shard, with their bodies, in one atomic call.
-- ARGV[4] "1" to record a 24 h materialised marker per message (intake path: a re-drive is then a no-op),
-- [5] message count M, then per message:
--   id, body ("" when solo), sender (lower-cased), created ms, tags (JSON), solo ("1": the message has
--   exactly one job in all, whose data `jd:<job>` then holds the body after the envelope, with no
--   `msg:`/`body:` keys), trace context or "",
--   job count J, then per job:
--     id, domain, due ms, recipient count, recipients (newline-separated), data: the envelope (JSON), and
--     for a solo message a newline and the body after it.
-- The job's hash fields (see codec.rs) are built here from these; its data goes to `jd:<job>`.
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
for _ = 1, tonumber(ARGV[5]) do
  local MSG, BODY, SENDER, CREATED, TAGS, SOLO, TRACE = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4],
                                                       ARGV[i + 5], ARGV[i + 6]
  local J = tonumber(ARGV[i + 7])
  i = i + 8
  local skip = MARK and not redis.call('SET', k('mat:' .. MSG), '1', 'NX', 'EX', 86400)
  local made = 0
  local ids = {}
  for _ = 1, J do
    local id, dom, due_s, nr_s, rl, data = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
    local at, nr = tonumber(due_s), tonumber(nr_s)
    i = i + 6
    local jkey = jk(id)
    if SOLO ~= '1' then ids[#ids + 1] = id end
    -- The data and the hash are created and deleted together: SET NX doubles as the existence check.
    if not skip and redis.call('SET', jdk(id), data, 'NX') then
      -- No `id`, `msg` or `sched` field: the key names the job, the job id its message, and the schedule is
      -- the domain's until an admin bounce sets `sched` (fewer fields make every access to the hash faster).
      local h = {'dom', dom, 'n', nr_s, 'tags', TAGS, 'att', '0',
                 'first', CREATED, 'next', due_s, 'sender', SENDER, 'state', 'queued'}
      if TRACE ~= '' then h[#h + 1] = 'trace'; h[#h + 1] = TRACE end
      if nr == 1 then
        h[#h + 1] = 'ra:0'; h[#h + 1] = rl; h[#h + 1] = 'rs:0'; h[#h + 1] = 'p'
      else
        local r = 0
        for addr in string.gmatch(rl, '[^\n]+') do
          h[#h + 1] = 'ra:' .. r; h[#h + 1] = addr; h[#h + 1] = 'rs:' .. r; h[#h + 1] = 'p'
          r = r + 1
        end
      end
      if SOLO == '1' then h[#h + 1] = 'solo'; h[#h + 1] = '1' end
      if #h <= 400 then
        redis.call('HSET', jkey, unpack(h))
      else
        chunked(h, 400, function(...) redis.call('HSET', jkey, ...) end)
      end
      local q = due[dom]
      if not q then q = {}; due[dom] = q; dorder[#dorder + 1] = dom; dmin[dom] = at end
      q[#q + 1] = at; q[#q + 1] = id
      if at < dmin[dom] then dmin[dom] = at end
      live[dom] = (live[dom] or 0) + 1
      listing[#listing + 1] = 0; listing[#listing + 1] = id
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
