-- drop: take a student off a section's roster or waitlist. A seat freed
-- while students wait goes to the head of the waitlist in this same step, so
-- no one else can ever see it free.
--
-- KEYS[1] meta, KEYS[2] seats, KEYS[3] enrolled, KEYS[4] waitlist,
-- KEYS[5] seq, KEYS[6] outbox, KEYS[7] reverted, KEYS[8] since (as in
-- reserve.lua); a student who drops no longer has an undone registration
-- to be told about, nor a seat to be undone.
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
local student, now = ARGV[1], ARGV[2]
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'not_loaded', events}
end
if ARGV[3] ~= 'waitlist' and redis.call('SREM', KEYS[3], student) == 1 then
  redis.call('HDEL', KEYS[7], student)
  redis.call('HDEL', KEYS[8], student)
  emit('drop', student, now)
  local head = redis.call('ZRANGE', KEYS[4], 0, 0)[1]
  if head then
    redis.call('ZREM', KEYS[4], head)
    redis.call('SADD', KEYS[3], head)
    redis.call('HSET', KEYS[8], head, emit('promote', head, now))
  else
    redis.call('INCR', KEYS[2])
  end
  return {'dropped', events}
end
if redis.call('ZREM', KEYS[4], student) == 1 then
  redis.call('HDEL', KEYS[7], student)
  emit('unwait', student, now)
  return {'left_waitlist', events}
end
return {'not_registered', events}
