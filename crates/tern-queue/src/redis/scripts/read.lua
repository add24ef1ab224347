-- Read-only views of this shard. ARGV[4] view:
--   "message": ARGV[5] message id -> {body size or -1, job1 fields, job2 fields, ...}
--   "body":    ARGV[5] message id -> the stored message (headers and body) or false
--   "job":     ARGV[5] job id -> job fields or false
--   "page":    ARGV[5] last job id seen or "", ARGV[6] how many to scan, ARGV[7] domain, ARGV[8] state,
--              ARGV[9] sender, ARGV[10] recipient ("" = any; sender and recipient compared lower-cased)
--              -> {last id scanned or "", done "1"/"0", job fields...}
--   "counts":  -> {queued, deferred, inflight, jobs, oldest due or -1, bounce due, suspended domains,
--              the smallest job id or "" (ids start with a ULID, so this is the oldest message)}
--   "depths":  ARGV[5] domain or "" for all -> {domain, waiting, due now, live jobs, earliest due or -1,
--              active claims, limit override or -1, suspension record or ""} repeated
local VIEW = ARGV[4]
if VIEW == 'message' then
  local mk = k('msg:' .. ARGV[5])
  local ids = redis.call('HGET', mk, 'ids')
  if not ids then
    -- A message with one job in all keeps no `msg:` record: its job's data holds the body.
    local id = ARGV[5] .. '.0'
    local h, size = job_fields(id)
    if size < 0 then return false end
    return {size, h}
  end
  local out = {redis.call('STRLEN', k('body:' .. ARGV[5]))}
  for id in string.gmatch(ids, '%S+') do
    local h = job_fields(id)
    if #h > 0 then out[#out + 1] = h end
  end
  return out
elseif VIEW == 'body' then
  local b = redis.call('GET', k('body:' .. ARGV[5]))
  if b then return b end
  -- A message's only job keeps the body after its envelope, past the first newline (JSON has none).
  local id = ARGV[5] .. '.0'
  local line, _, body = split_data(redis.call('GET', jdk(id)))
  if line == '' or unkept(id, line) then return false end
  return body or false
elseif VIEW == 'job' then
  local h = job_fields(ARGV[5])
  if #h == 0 then return false end
  return h
elseif VIEW == 'page' then
  local start = '-'
  if ARGV[5] ~= '' then start = '(' .. ARGV[5] end
  local ids = redis.call('ZRANGE', k('jobs'), start, '+', 'BYLEX', 'LIMIT', 0, tonumber(ARGV[6]))
  local DOM, ST, SND, RC = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
  local last = ''
  local out = {'', '0'}
  for _, id in ipairs(ids) do
    last = id
    -- The job's fields without its data: from the header of a job in the string form, else its hash.
    local m = {}
    local line = header_line(id)
    local h
    if line == '' then h = {}
    elseif string.sub(line, 1, 1) == 'h' then h = redis.call('HGETALL', jk(id))
    else h = header_fields(id, header_of(line)) end
    for x = 1, #h, 2 do m[h[x]] = h[x + 1] end
    local ok = m.dom ~= nil
    if ok and DOM ~= '' and m.dom ~= DOM then ok = false end
    if ok and ST ~= '' and m.state ~= ST then ok = false end
    if ok and SND ~= '' and string.lower(m.sender or '') ~= SND then ok = false end
    if ok and RC ~= '' then
      local hit = false
      for r = 0, tonumber(m.n or '0') - 1 do
        if string.lower(m['ra:' .. r] or '') == RC then hit = true; break end
      end
      ok = hit
    end
    if ok then out[#out + 1] = job_fields(id) end
  end
  out[1] = last
  if #ids < tonumber(ARGV[6]) then out[2] = '1' end
  return out
elseif VIEW == 'counts' then
  local c = redis.call('HMGET', k('cnt'), 'queued', 'deferred', 'inflight')
  local oldest = -1
  local function consider(d)
    local first = redis.call('ZRANGE', k('due:' .. d), 0, 0, 'WITHSCORES')
    if #first > 0 then
      local s = tonumber(first[2])
      if oldest < 0 or s < oldest then oldest = s end
    end
  end
  for _, d in ipairs(redis.call('ZRANGE', k('domains'), 0, -1)) do consider(d) end
  for _, d in ipairs(redis.call('HKEYS', k('susp'))) do consider(d) end
  local first_job = redis.call('ZRANGE', k('jobs'), 0, 0)[1] or ''
  return {tonumber(c[1] or '0'), tonumber(c[2] or '0'), tonumber(c[3] or '0'), redis.call('ZCARD', k('jobs')),
          oldest, redis.call('ZCARD', k('due:' .. BOUNCE)), redis.call('HLEN', k('susp')), first_job}
elseif VIEW == 'depths' then
  local doms = {}
  if ARGV[5] ~= '' then
    doms = {ARGV[5]}
  else
    local seen = {}
    local all = redis.call('HKEYS', k('dlive'))
    for _, d in ipairs(redis.call('HKEYS', k('susp'))) do all[#all + 1] = d end
    for _, d in ipairs(all) do
      if not seen[d] then seen[d] = true; doms[#doms + 1] = d end
    end
  end
  local out = {}
  for _, d in ipairs(doms) do
    local dk = k('due:' .. d)
    local first = redis.call('ZRANGE', dk, 0, 0, 'WITHSCORES')
    local e = -1
    if #first > 0 then e = tonumber(first[2]) end
    out[#out + 1] = d
    out[#out + 1] = redis.call('ZCARD', dk)
    out[#out + 1] = redis.call('ZCOUNT', dk, '-inf', NOW)
    out[#out + 1] = tonumber(redis.call('HGET', k('dlive'), d) or '0')
    out[#out + 1] = e
    out[#out + 1] = redis.call('ZCOUNT', k('slots:' .. d), '(' .. string.format('%d', NOW), '+inf')
    out[#out + 1] = tonumber(redis.call('HGET', k('conc'), d) or '-1')
    out[#out + 1] = redis.call('HGET', k('susp'), d) or ''
  end
  return out
end
return redis.error_reply('unknown view ' .. tostring(VIEW))
