-- rate_limit: take one request's worth from a token bucket, or say how long
-- until it would be allowed. GCRA form of the token bucket: the key holds
-- only the "theoretical arrival time" (TAT), so one GET and one SET.
-- The clock is Redis's own (TIME), so every server instance agrees.
--
-- KEYS[1] the bucket (string: TAT in microseconds since the epoch)
-- ARGV[1] emission interval in microseconds (1e6 / requests per second)
-- ARGV[2] burst: requests allowed at once after a quiet period (>= 1)
--
-- Returns:
--   {1, 0}               allowed; the bucket is charged
--   {0, retry_after_ms}  refused; nothing is charged (a refused flood does
--                        not push the caller's next allowed time further out)
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])

local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then
  tat = now
end
local new_tat = tat + interval
-- The request fits while the bucket is less than `burst` intervals ahead of now.
local allowed_at = new_tat - interval * burst
if allowed_at > now then
  return {0, math.ceil((allowed_at - now) / 1000)}
end
-- The key lives exactly as long as it carries information.
redis.call('SET', KEYS[1], string.format('%.0f', new_tat),
  'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, 0}
