-- Keeps one connection slot of domain ARGV[4] for an idle connection, until ARGV[6] ms from now.
-- ARGV[5] the claim whose connection goes idle, [7] default domain concurrency.
-- The claim's slot becomes the hold `h:<claim>` (so the claim's remaining jobs no longer free it when they
-- finish); when the claim no longer has a slot (its jobs finished or its deadline passed) a free slot is
-- taken if the domain's limit allows. Calling it again for the same claim pushes the deadline out.
-- Returns {hold id, deadline} or false (the domain is at its limit: the connection must close).
local D, CLAIM, FOR, DEFLIM = ARGV[4], ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local sk = k('slots:' .. D)
local hold = 'h:' .. CLAIM
redis.call('ZREMRANGEBYSCORE', sk, '-inf', NOW)
if redis.call('ZREM', sk, CLAIM) == 0 and not redis.call('ZSCORE', sk, hold) then
  local lim = tonumber(redis.call('HGET', k('conc'), D) or DEFLIM)
  if redis.call('ZCARD', sk) >= lim then return false end
end
local deadline = string.format('%d', NOW + FOR)
redis.call('ZADD', sk, deadline, hold)
return {hold, deadline}
