-- login_guard: failed-login back-off for one account (known or unknown: the
-- key is a hash of the submitted student number, so answers reveal nothing).
--
-- KEYS[1] the account's record: hash {fails, until (ms since the epoch)}
-- ARGV[1] operation: "check" (before verifying a password), "fail" (after a
--         wrong one) or "success" (after a right one)
-- ARGV[2] failures allowed without a lock; each further one locks the account
-- ARGV[3] first lock in ms; each further failure doubles it
-- ARGV[4] longest lock in ms
-- ARGV[5] ms after the last failure when the count is forgotten
--
-- Returns:
--   {1, 0}          check: go ahead; success: record cleared
--   {0, wait_ms}    check or fail: the account is locked for wait_ms
--   {1, lock_ms}    fail: failure counted; lock_ms > 0 if it locked the account
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local op = ARGV[1]

if op == 'success' then
  redis.call('DEL', KEYS[1])
  return {1, 0}
end

local locked_until = tonumber(redis.call('HGET', KEYS[1], 'until')) or 0
if locked_until > now then
  return {0, locked_until - now}
end
if op == 'check' then
  return {1, 0}
end

-- op == 'fail'
local free = tonumber(ARGV[2])
local base = tonumber(ARGV[3])
local max = tonumber(ARGV[4])
local forget = tonumber(ARGV[5])
local fails = redis.call('HINCRBY', KEYS[1], 'fails', 1)
local lock = 0
if fails > free then
  -- Capped before exponentiation so a long attack cannot overflow the number.
  lock = math.min(max, base * 2 ^ math.min(fails - free - 1, 40))
  redis.call('HSET', KEYS[1], 'until', string.format('%.0f', now + lock))
end
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', forget + lock))
return {1, lock}
