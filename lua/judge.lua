-- judge: decide a student's claim (lua/claim.lua) for good from its
-- section. The claim's stamp is fenced here first: from then on the seat
-- script refuses that claim (and any older one of the student), so what the
-- section shows now is final for it. Used for a claim whose request may have
-- died (a crash, a lost connection) or is still on its way.
--
-- KEYS[1] meta, KEYS[2] enrolled, KEYS[3] waitlist, KEYS[4] fence (hash:
--         student id -> highest stamp fenced)
-- ARGV[1] student id, ARGV[2] the claim's stamp
--
-- Returns 1: the section holds a place for the student (enrolled or
-- waitlisted); 0: it does not; -1: the section has no state in Redis (the
-- fence stands: load the section, then judge again).
local fenced = tonumber(redis.call('HGET', KEYS[4], ARGV[1]) or '0')
if tonumber(ARGV[2]) > fenced then
  redis.call('HSET', KEYS[4], ARGV[1], ARGV[2])
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 or redis.call('ZSCORE', KEYS[3], ARGV[1]) then
  return 1
end
return 0
