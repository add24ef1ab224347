-- Creates the jobs of one message that live in this shard, with the message body (stored once per message
-- and shard, removed with the last of those jobs).
-- ARGV[4] message id, [5] "1" to record a 24 h materialised marker (intake path: a re-drive is then a
-- no-op), [6] body, [7] sender, [8] created ms, [9] tags (JSON), [10] job count, then per job:
--   id, schedule (domain), due ms, recipient count, recipients (newline-separated), field count F, then F
--   field/value pairs (they include state = queued).
-- Idempotent: an existing job is left alone. Returns the number of jobs created.
local MSG = ARGV[4]
if ARGV[5] == '1' then
  if not redis.call('SET', k('mat:' .. MSG), '1', 'NX', 'EX', 86400) then return 0 end
end
local i = 11
local made, rcpts = 0, 0
local ids = {}
for _ = 1, tonumber(ARGV[10]) do
  local id, dom, due, nr, rl, nf = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), ARGV[i + 4],
                                  tonumber(ARGV[i + 5])
  i = i + 6
  local jkey = jk(id)
  ids[#ids + 1] = id
  if redis.call('EXISTS', jkey) == 0 then
    local chunk = {}
    for x = 0, nf * 2 - 1 do
      chunk[#chunk + 1] = ARGV[i + x]
      if #chunk >= 200 then redis.call('HSET', jkey, unpack(chunk)); chunk = {} end
    end
    if #chunk > 0 then redis.call('HSET', jkey, unpack(chunk)) end
    redis.call('HINCRBY', k('cnt'), 'queued', 1)
    redis.call('ZADD', k('jobs'), 0, id)
    redis.call('HINCRBY', k('dlive'), dom, 1)
    schedule(dom, id, due)
    event_of('queued', {id, MSG, dom, '0', ARGV[9]}, rl, nil, nil)
    made = made + 1
    rcpts = rcpts + nr
  end
  i = i + nf * 2
end
if made > 0 then
  local mk = k('msg:' .. MSG)
  redis.call('HINCRBY', mk, 'live', made)
  redis.call('HSET', mk, 'sender', ARGV[7], 'created', ARGV[8], 'ids', table.concat(ids, ' '))
  redis.call('SET', k('body:' .. MSG), ARGV[6])
  stat('enqueued', rcpts)
  stat('messages', 1)
end
return made
