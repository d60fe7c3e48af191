-- drop: take a student off a section's roster or waitlist. A seat freed
-- while students wait goes to the head of the waitlist in this same step, so
-- no one else can ever see it free.
--
-- KEYS[1] meta, KEYS[2] seats, KEYS[3] enrolled, KEYS[4] waitlist,
-- KEYS[5] seq, KEYS[6] outbox, KEYS[7] reverted, KEYS[8] since (as in
-- reserve.lua); a student who drops no longer has an undone registration
-- to be told about, nor a seat to be undone.
-- KEYS[9] offers (as in reserve.lua)
-- ARGV[1] student id
-- ARGV[2] now (unix ms)
-- ARGV[3] (optional) 'waitlist': leave the waitlist only, never a seat (a
--         student who became ineligible, src/registration.rs)
--
-- Returns {code, events}; events as lua/lib/emit.lua describes:
--   {"not_loaded", {}}               section state absent: load it, then retry
--   {"not_registered", {}}           neither enrolled nor waitlisted
--   {"dropped", {drop}}              the seat is free again
--   {"dropped", {drop, promote}}     the seat went to the waitlist head
--   {"left_waitlist", {unwait}}
-- In offer mode (lua/lib/seat.lua) due offers lapse first, a freed seat is
-- offered (an offer event) instead of promoted, and a student who leaves the
-- waitlist holding an offer declines it: it passes to the next in line.
local student, now = ARGV[1], ARGV[2]
local meta = redis.call('HMGET', KEYS[1], 'loaded', 'wl_mode', 'offer_ttl', 'offer_due')
if not meta[1] and redis.call('EXISTS', KEYS[1]) == 0 then
  return {'not_loaded', events}
end
local S = waitlist_settings({since = KEYS[8], offers = KEYS[9]}, meta[2], meta[3])
local clock = 0
if S.mode == 'offer' then
  clock = redis_ms()
  if meta[4] and tonumber(meta[4]) <= clock then
    lapse_offers(S, now, clock)
  end
end
if ARGV[3] ~= 'waitlist' and redis.call('SREM', KEYS[3], student) == 1 then
  redis.call('HDEL', KEYS[7], student)
  redis.call('HDEL', KEYS[8], student)
  emit('drop', student, now)
  if not give_seat(S, now, clock) then
    redis.call('INCR', KEYS[2])
  end
  return {'dropped', events}
end
if redis.call('ZREM', KEYS[4], student) == 1 then
  redis.call('HDEL', KEYS[7], student)
  emit('unwait', student, now)
  pass_offer(S, student, now, clock)
  return {'left_waitlist', events}
end
return {'not_registered', events}
