-- schedule_init: rebuild a student's schedule (lua/claim.lua) when Redis
-- has none: their first registration, or Redis lost it (a restart without
-- persistence). The caller read the student's places from PostgreSQL and
-- checked each against its section's state in Redis; entries are held, with
-- stamp 0. Only the first of racing rebuilds writes: a schedule that exists
-- is never replaced (its claims are newer than any rebuild).
--
-- KEYS[1] schedule hash
-- ARGV    pairs: section id, entry ("h|semester|course|credits|meetings|0|0")
--
-- Returns 1 if written, 0 if a schedule was already there.
if redis.call('HEXISTS', KEYS[1], '#') == 1 then
  return 0
end
-- Stamps start at Redis's clock (ms): above any stamp a schedule lost
-- before had handed out, so no fence (lua/judge.lua) of those refuses a
-- new claim.
local time = redis.call('TIME')
local fields = {'#', tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)}
for i = 1, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], unpack(fields))
return 1
