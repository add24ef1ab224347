-- Takes up to MAX due jobs of ONE schedule (domain) of this shard, in due order.
-- ARGV[4] owner, [5] max batch, [6] lease ms, [7] default domain concurrency, [8] claim id (the token),
-- [9] how many due domains to look at (0: only the held ones), [10] how long (ms) a domain at its limit is pushed back,
-- [11] the number H of slot holds the caller passes, then H pairs (domain, hold id): slots the caller
-- keeps for idle connections (hold.lua). A claim of a held domain takes its hold over (the idle
-- connection carries the new claim), so the hold does not count against the domain's limit; held domains
-- with due work are looked at first, so that an idle connection is used before it times out.
-- Domains are visited in the order of the domain index (earliest due first). After a claim the domain is
-- put back at max(its next due time, now + 1), behind every domain already due: due domains take turns.
-- A domain at its concurrency limit (live claims and holds = slots, each with a deadline) is skipped and
-- pushed back. Suspended domains are not in the index; one found there (a race) is dropped from it.
-- Returns false, or {domain, claim id, deadline, hold taken over (or ''), job1, data1, body1, job2, ...}:
-- each job is the list of its fields id, dom, n, att, first, next, err, tags, trace, bounce, then rs:<i>,
-- rr:<i> per recipient, as they were BEFORE this claim (the caller knows the new state, owner and lease),
-- or for a job never tried the compact list att, n, first, tags, trace, next, id (codec.rs `claimed_job`);
-- data is the job's `jd:` string, and body false when that string holds the body after its envelope.
local OWNER, MAX, LEASE, DEFLIM, CLAIM = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local SCAN, PUSHBACK = tonumber(ARGV[9]), tonumber(ARGV[10])
local held, horder = {}, {}
for x = 0, tonumber(ARGV[11] or '0') - 1 do
  local d = ARGV[12 + 2 * x]
  if not held[d] then
    held[d] = ARGV[13 + 2 * x]
    horder[#horder + 1] = d
  end
end

-- Claims due jobs of `d` if its limit allows; `scanning` (found through the index) pushes a domain at its
-- limit back and re-indexes an empty one. Returns the reply, or nil.
local function take(d, scanning)
  local hold = nil
  if d ~= BOUNCE then
    if suspended(d) then
      redis.call('ZREM', k('domains'), d)
      return nil
    end
    local sk = k('slots:' .. d)
    redis.call('ZREMRANGEBYSCORE', sk, '-inf', NOW)
    local lim = tonumber(redis.call('HGET', k('conc'), d) or DEFLIM)
    local used = redis.call('ZCARD', sk)
    if held[d] and redis.call('ZSCORE', sk, held[d]) then
      hold = held[d]
      used = used - 1
    end
    if used >= lim then
      if scanning then redis.call('ZADD', k('domains'), NOW + PUSHBACK, d) end
      return nil
    end
  end
  local dk = k('due:' .. d)
  local ids = redis.call('ZRANGEBYSCORE', dk, '-inf', NOW, 'LIMIT', 0, MAX)
  if #ids == 0 then
    if scanning then reindex(d, nil) end
    return nil
  end
  local deadline = NOW + LEASE
  local dl = string.format('%d', deadline)
  local out = {d, CLAIM, dl, hold or ''}
  local taken = 0
  local moved = {}
  local inflight = {}
  -- They are the schedule's first #ids members (ZRANGEBYSCORE from -inf): one sweep from the head.
  redis.call('ZREMRANGEBYRANK', dk, 0, #ids - 1)
  for _, id in ipairs(ids) do
    local jkey = jk(id)
    -- Few fields are read: each one asked of a hash costs a scan of it, a missing one the whole hash. A job
    -- never tried (att 0, the common case) has all recipients pending with no reply, no error, state
    -- `queued`; any other job (and every admin bounce) reads the rest.
    local v = redis.call('HMGET', jkey, 'att', 'n', 'first', 'tags', 'trace', 'next')
    if v[2] then
      local att, n, state = v[1], tonumber(v[2]), 'queued'
      -- The claimer's fields, in a fixed order (codec.rs `claimed_job`): id, dom, n, att, first, next, err,
      -- tags, trace, bounce, then state and reply per recipient.
      -- A job never tried goes back as the compact list att, n, first, tags, trace, next, id.
      local job
      if att == '0' and d ~= BOUNCE then
        v[7] = id
        job = v
      else
        local w = redis.call('HMGET', jkey, 'dom', 'err', 'bounce', 'state', 'rs:0', 'rr:0')
        state = w[4]
        job = {id, w[1], v[2], att, v[3], v[6], w[2], v[4], v[5], w[3], w[5], w[6]}
        if n > 1 then
          local names = {}
          for r = 1, n - 1 do names[#names + 1] = 'rs:' .. r; names[#names + 1] = 'rr:' .. r end
          local more = redis.call('HMGET', jkey, unpack(names))
          for y = 1, #names do job[12 + y] = more[y] end
        end
      end
      moved[state] = (moved[state] or 0) + 1
      redis.call('HSET', jkey, 'state', 'inflight', 'owner', OWNER, 'tok', CLAIM, 'lease', dl, 'cdom', d)
      inflight[#inflight + 1] = deadline
      inflight[#inflight + 1] = id
      -- The job's data as stored: a solo job's holds its body after the envelope (the claimer splits it);
      -- the jobs of a message with several share `body:<msg>` (msg: the job id without its `.n`).
      local data = redis.call('GET', jdk(id)) or ''
      out[#out + 1] = job
      out[#out + 1] = data
      if string.find(data, '\n', 1, true) then
        out[#out + 1] = false
      else
        out[#out + 1] = redis.call('GET', k('body:' .. msg_of(id))) or ''
      end
      taken = taken + 1
    end
  end
  for from, n in pairs(moved) do redis.call('HINCRBY', k('cnt'), from, -n) end
  if taken > 0 then
    redis.call('HINCRBY', k('cnt'), 'inflight', taken)
    redis.call('ZADD', k('inflight'), unpack(inflight))
  end
  reindex(d, NOW + 1)
  if taken == 0 then return nil end
  local sk = k('slots:' .. d)
  if hold then redis.call('ZREM', sk, hold) end
  redis.call('ZADD', sk, deadline, CLAIM)
  redis.call('HSET', k('claims'), CLAIM, taken)
  return out
end

for _, d in ipairs(horder) do
  local r = take(d, false)
  if r then return r end
end
if SCAN > 0 then
  for _, d in ipairs(redis.call('ZRANGEBYSCORE', k('domains'), '-inf', NOW, 'LIMIT', 0, SCAN)) do
    local r = take(d, true)
    if r then return r end
  end
end
return false
