-- lapse: let a section's due offers lapse (lua/lib/seat.lua), each seat
-- passing to the next in line. The sweeper runs it for sections whose
-- offers are due in PostgreSQL, so a deadline is kept within a sweep
-- interval even when nobody touches the section; every other section
-- script lapses due offers itself, on its next call.
--
-- KEYS[1..6] the core keys (reserve.lua), KEYS[7] since, KEYS[8] offers
-- ARGV[1] now (unix ms)
--
-- Returns {code, events}; events as lua/lib/emit.lua describes:
--   {"not_loaded", {}}
--   {"lapsed", {unwait, offer | promote ...}}   empty when nothing was due
local now = ARGV[1]
local meta = redis.call('HMGET', KEYS[1], 'loaded', 'wl_mode', 'offer_ttl')
if not meta[1] and redis.call('EXISTS', KEYS[1]) == 0 then
  return {'not_loaded', events}
end
if meta[2] == 'offer' then
  local S = waitlist_settings({since = KEYS[7], offers = KEYS[8]}, meta[2], meta[3])
  lapse_offers(S, now, redis_ms())
end
return {'lapsed', events}
