-- The MTA-STS policy cache (`sts.rs`): a policy domain's entry `sts:<domain>` (a hash) lives in that domain's
-- shard, beside its mail; `stsidx` lists the shard's entries for paging (a sorted set, every score 0, so that
-- ZRANGEBYLEX walks the domains in order); `stslock:<domain>` is the domain's refresh lock (its owner's name,
-- with a TTL). Entry fields (`keys.rs`): `p` policy, `id` policy id, `f` fetched at, `x` expires at, `e` last
-- error, `ea` its time. The domain comes lower-cased from the caller.
--
-- An entry has a Redis TTL some time after the policy expires (the caller computes the time): an abandoned
-- domain vanishes. Its index member stays behind until `sts_list` meets it and drops it.

-- sts_put: replaces the entry of domain args[5]. args[6] policy, [7] policy id, [8] fetched at (ms), [9]
-- expires at (ms), [10] when the entry goes (ms, PEXPIREAT), [11] '1' when there is a last error, [12] its
-- text, [13] its time or ''. Returns 1.
register('sts_put', function(args)
  local domain = args[5]
  local key = PREFIX .. 'sts:' .. domain
  redis_call('DEL', key)
  redis_call('HSET', key, 'p', args[6], 'id', args[7], 'f', args[8], 'x', args[9])
  if args[11] == '1' then redis_call('HSET', key, 'e', args[12]) end
  if args[13] ~= '' then redis_call('HSET', key, 'ea', args[13]) end
  redis_call('PEXPIREAT', key, args[10])
  redis_call('ZADD', PREFIX .. 'stsidx', '0', domain)
  return 1
end)

-- sts_error: records a failed fetch for domain args[5]: error args[6] at args[7] (ms). The policy, if any,
-- stays; a domain with no entry gets one without a policy. The entry is kept at least until args[8] (ms): a
-- later time it had already (its policy's expiry) stands. Returns 1.
register('sts_error', function(args)
  local domain = args[5]
  local key = PREFIX .. 'sts:' .. domain
  local existed = redis_call('EXISTS', key)
  redis_call('HSET', key, 'e', args[6], 'ea', args[7])
  if existed == 1 then
    redis_call('PEXPIREAT', key, args[8], 'GT')
  else
    redis_call('PEXPIREAT', key, args[8])
  end
  redis_call('ZADD', PREFIX .. 'stsidx', '0', domain)
  return 1
end)

-- sts_evict: removes the entry of domain args[5] (not its lock). Returns 1 when there was one, else 0.
register('sts_evict', function(args)
  local domain = args[5]
  local removed = redis_call('DEL', PREFIX .. 'sts:' .. domain)
  redis_call('ZREM', PREFIX .. 'stsidx', domain)
  return removed
end, RUNS_WHEN_FULL)

-- sts_list: up to args[6] entries of this shard in domain order, after domain args[5] ('': from the first).
-- Index members whose entry expired are dropped on the way. Returns {{domain, {field, value, ...}}, ...}.
register('sts_list', function(args)
  local index = PREFIX .. 'stsidx'
  local limit_text = args[6]
  local limit = to_number(limit_text)
  local from = '-'
  if args[5] ~= '' then from = '(' .. args[5] end
  local out = {}
  while #out < limit do
    local domains = redis_call('ZRANGEBYLEX', index, from, '+', 'LIMIT', '0', limit_text)
    if #domains == 0 then break end
    for _, domain in ipairs(domains) do
      if #out >= limit then break end
      local fields = redis_call('HGETALL', PREFIX .. 'sts:' .. domain)
      if #fields == 0 then
        redis_call('ZREM', index, domain)
      else
        out[#out + 1] = {domain, fields}
      end
    end
    from = '(' .. domains[#domains]
  end
  return out
end, RUNS_WHEN_FULL)

-- sts_lock: takes the refresh lock of domain args[5] for owner args[6] for args[7] ms, unless another owner
-- holds it; the owner taking it again starts its time anew. Returns {'ok'} or {'held', owner}.
register('sts_lock', function(args)
  local key, owner, ttl = PREFIX .. 'stslock:' .. args[5], args[6], args[7]
  if redis_call('SET', key, owner, 'NX', 'PX', ttl) then return {'ok'} end
  local holder = redis_call('GET', key)
  if holder ~= owner then return {'held', holder} end
  redis_call('SET', key, owner, 'PX', ttl)
  return {'ok'}
end, RUNS_WHEN_FULL)

-- sts_unlock: frees the refresh lock of domain args[5] if owner args[6] holds it (compare and delete, in one
-- step). Returns 1 if it did, else 0.
register('sts_unlock', function(args)
  local key = PREFIX .. 'stslock:' .. args[5]
  if redis_call('GET', key) ~= args[6] then return 0 end
  redis_call('DEL', key)
  return 1
end, RUNS_WHEN_FULL)
