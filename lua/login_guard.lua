-- login_guard: failed-login throttling of one account. The account is named
-- by a hash of the submitted student number (known and unknown numbers are
-- tracked alike, so answers reveal nothing); every key is in its slot.
--
-- An attempt is counted when it BEGINS, before its password is verified, so
-- parallel guesses cannot slip past the count: N attempts at once get at
-- most the free allowance evaluated. Two limits apply:
--   * per (account, client address): `free` attempts, then each admitted
--     attempt locks this pair for base * 2^(attempts - free), capped at max;
--     a lock stops only this address, so one attacker cannot lock the owner
--     out from another;
--   * per account, across all addresses: a token bucket (GCRA, ms) much
--     larger than a pair's allowance, so guessing from many addresses is
--     slowed too. Addresses this account logged in from before ("known")
--     are exempt, so a distributed attack does not lock the owner out there.
--
-- KEYS[1] the pair's record: hash {fails, until (ms since the epoch)}
-- KEYS[2] the account's bucket: string, theoretical arrival time in ms
-- KEYS[3] the pair's "known address" marker
-- ARGV[1] "begin" (before verifying) or "success" (the password was right)
-- begin:
--   ARGV[2] free attempts of a pair; ARGV[3] first lock in ms;
--   ARGV[4] longest lock in ms; ARGV[5] ms after which a quiet pair's count
--   is forgotten; ARGV[6] account bucket interval in ms; ARGV[7] its burst
-- success:
--   ARGV[2] 1 if the attempt charged the account bucket; ARGV[3] its
--   interval in ms; ARGV[4] how long the address stays known, in ms
--
-- Returns:
--   begin:   {1, lock_ms, charged}  go ahead; lock_ms > 0 if this attempt
--                                   started a lock; charged = 1 if the
--                                   account bucket was charged
--            {0, wait_ms, 1}        this pair is locked for wait_ms
--            {0, wait_ms, 2}        the account's bucket is empty for wait_ms
--   success: {1, 0, 0}
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local op = ARGV[1]

if op == 'success' then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[4])
  if ARGV[2] == '1' then
    -- Give back what this attempt took: a right password is no guess.
    local tat = tonumber(redis.call('GET', KEYS[2]))
    if tat then
      tat = tat - tonumber(ARGV[3])
      if tat <= now then
        redis.call('DEL', KEYS[2])
      else
        redis.call('SET', KEYS[2], string.format('%.0f', tat), 'PX', string.format('%.0f', tat - now + 1))
      end
    end
  end
  return {1, 0, 0}
end

local locked_until = tonumber(redis.call('HGET', KEYS[1], 'until')) or 0
if locked_until > now then
  return {0, locked_until - now, 1}
end

local known = redis.call('EXISTS', KEYS[3]) == 1
local new_tat
if not known then
  local interval = tonumber(ARGV[6])
  local burst = tonumber(ARGV[7])
  local tat = tonumber(redis.call('GET', KEYS[2]))
  if not tat or tat < now then
    tat = now
  end
  new_tat = tat + interval
  local allowed_at = new_tat - interval * burst
  if allowed_at > now then
    return {0, allowed_at - now, 2}
  end
end

local free = tonumber(ARGV[2])
local base = tonumber(ARGV[3])
local max = tonumber(ARGV[4])
local forget = tonumber(ARGV[5])
local fails = redis.call('HINCRBY', KEYS[1], 'fails', 1)
local lock = 0
if fails >= free then
  -- Capped before exponentiation so a long attack cannot overflow the number.
  lock = math.min(max, base * 2 ^ math.min(fails - free, 40))
  redis.call('HSET', KEYS[1], 'until', string.format('%.0f', now + lock))
end
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', forget + lock))
if new_tat then
  redis.call('SET', KEYS[2], string.format('%.0f', new_tat), 'PX', string.format('%.0f', new_tat - now + 1))
  return {1, lock, 1}
end
return {1, lock, 0}
