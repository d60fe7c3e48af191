-- gcra: the token bucket shared by the rate-limit scripts, in its GCRA form:
-- the key holds only the bucket's "theoretical arrival time" (TAT, in
-- microseconds since the epoch), so a charge is one GET and one SET. The
-- clock is Redis's own (TIME), so every server instance agrees.
--
-- gcra_charge(key, interval_us, burst) takes one request's worth (interval:
-- 1e6 / requests per second; burst: requests allowed at once after a quiet
-- period, >= 1). Returns 0 when charged, else the ms until it would be
-- allowed; a refusal charges nothing, so a refused flood does not push the
-- caller's next allowed time further out.
local function gcra_charge(key, interval, burst)
  local now_parts = redis.call('TIME')
  local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
  local tat = tonumber(redis.call('GET', key))
  if not tat or tat < now then
    tat = now
  end
  local new_tat = tat + interval
  -- The request fits while the bucket is less than `burst` intervals ahead of now.
  local allowed_at = new_tat - interval * burst
  if allowed_at > now then
    return math.ceil((allowed_at - now) / 1000)
  end
  -- The key lives exactly as long as it carries information.
  redis.call('SET', key, string.format('%.0f', new_tat),
    'PX', math.ceil((new_tat - now) / 1000) + 1)
  return 0
end

