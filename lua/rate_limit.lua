-- rate_limit: take one request's worth from a token bucket, or say how long
-- until it would be allowed (lua/lib/gcra.lua comes first).
--
-- KEYS[1] the bucket (string: TAT in microseconds since the epoch)
-- ARGV[1] emission interval in microseconds (1e6 / requests per second)
-- ARGV[2] burst: requests allowed at once after a quiet period (>= 1)
--
-- Returns:
--   {1, 0}               allowed; the bucket is charged
--   {0, retry_after_ms}  refused; nothing is charged
local wait = gcra_charge(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
if wait > 0 then
  return {0, wait}
end
return {1, 0}
