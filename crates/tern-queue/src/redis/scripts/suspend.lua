-- Suspends a domain cluster-wide: it leaves the domain index, so no claim sees its jobs.
-- ARGV[4] domain, [5] record (JSON: reason, since, until), [6] until ms or "" (no expiry).
local D = ARGV[4]
redis.call('HSET', k('susp'), D, ARGV[5])
if ARGV[6] ~= '' then redis.call('ZADD', k('suspu'), tonumber(ARGV[6]), D) else redis.call('ZREM', k('suspu'), D) end
redis.call('ZREM', k('domains'), D)
local rec = cjson.decode(ARGV[5])
domain_event('suspended', D, rec.reason)
return 1
