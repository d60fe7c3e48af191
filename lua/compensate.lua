-- compensate: undo one event whose PostgreSQL write failed for good, at most
-- once (the event's sequence is remembered in KEYS[8]), and only the
-- incarnation it created: a student who has since left and come back (a
-- later enroll, promote or waitlist event) keeps their new place. An undone
-- enrolment gives its seat to the waitlist head, or back to the pool; the
-- reason is kept for the student's views.
--
-- KEYS[1] meta, KEYS[2] seats, KEYS[3] enrolled, KEYS[4] waitlist,
-- KEYS[5] seq, KEYS[6] outbox, KEYS[7] reverted (as in reserve.lua)
-- KEYS[8] undone   set of event sequences already compensated
-- KEYS[9] since    hash: enrolled student -> sequence of their seat's event
--                  (the waitlist's score is already its event's sequence)
-- KEYS[10] offers  (as in reserve.lua)
-- ARGV[1] sequence of the failed event
-- ARGV[2] kind of the failed event: enroll | promote | waitlist
-- ARGV[3] student id
-- ARGV[4] reason (short text shown to the student)
-- ARGV[5] now (unix ms)
--
-- Returns {code, events}; events as lua/lib/emit.lua describes:
--   {"already", {}}                  this event was compensated before
--   {"nothing_to_undo", {}}          the student already left that state (or
--                                    holds it through a later event)
--   {"not_undoable", {}}             the kind cannot be undone (drop, ...)
--   {"reverted", {revert}}           undone; a seat went back to the pool
--                                    (or a waitlist place was given up)
--   {"reverted", {revert, promote}}  undone; the seat went to the waitlist head
--                                    (in offer mode: {revert, offer}, held
--                                    for the next in line; an undone
--                                    waitlist place that held an offer
--                                    passes it on)
local failed, kind, student, reason, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if kind ~= 'enroll' and kind ~= 'promote' and kind ~= 'waitlist' then
  return {'not_undoable', events}
end
if redis.call('SADD', KEYS[8], failed) == 0 then
  return {'already', events}
end
-- The incarnation check: the student's current place must come from the
-- failed event itself.
local current
if kind == 'waitlist' then
  current = redis.call('ZSCORE', KEYS[4], student)
else
  current = redis.call('HGET', KEYS[9], student)
end
if not current or tonumber(current) ~= tonumber(failed) then
  return {'nothing_to_undo', events}
end
if kind == 'waitlist' then
  redis.call('ZREM', KEYS[4], student)
else
  redis.call('SREM', KEYS[3], student)
  redis.call('HDEL', KEYS[9], student)
end
redis.call('HSET', KEYS[7], student, reason)
emit('revert', student, now, 'undoes', failed, 'reason', reason)
local meta = redis.call('HMGET', KEYS[1], 'wl_mode', 'offer_ttl')
local S = waitlist_settings({since = KEYS[9], offers = KEYS[10]}, meta[1], meta[2])
local clock = 0
if S.mode == 'offer' then
  clock = redis_ms()
end
if kind == 'waitlist' then
  pass_offer(S, student, now, clock)
  return {'reverted', events}
end
if not give_seat(S, now, clock) then
  redis.call('INCR', KEYS[2])
end
return {'reverted', events}
