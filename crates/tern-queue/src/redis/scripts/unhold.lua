-- Gives up hold ARGV[5] of domain ARGV[4] (its idle connection was closed or is used for another domain):
-- the slot is free for any worker at once. Only holds (`h:` ids) are dropped, never a claim's slot.
-- Returns 1 when the hold was there, 0 otherwise (expired, or already dropped: safe to repeat).
local D, H = ARGV[4], ARGV[5]
if string.sub(H, 1, 2) ~= 'h:' then return 0 end
if redis.call('ZREM', k('slots:' .. D), H) == 0 then return 0 end
-- The domain may have been pushed back for being at its limit: a slot is free now.
local first = redis.call('ZRANGE', k('due:' .. D), 0, 0, 'WITHSCORES')
if #first > 0 then index_add(D, tonumber(first[2])) end
return 1
