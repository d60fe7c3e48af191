-- compensate: undo one event whose PostgreSQL write failed for good, at most
-- once (the event's sequence is remembered in KEYS[8]). An undone enrolment
-- gives its seat to the waitlist head, or back to the pool; the reason is
-- kept for the student's views.
--
-- KEYS[1] meta, KEYS[2] seats, KEYS[3] enrolled, KEYS[4] waitlist,
-- KEYS[5] seq, KEYS[6] outbox, KEYS[7] reverted (as in reserve.lua)
-- KEYS[8] undone   set of event sequences already compensated
-- ARGV[1] sequence of the failed event
-- ARGV[2] kind of the failed event: enroll | promote | waitlist
-- ARGV[3] student id
-- ARGV[4] reason (short text shown to the student)
-- ARGV[5] now (unix ms)
--
-- Returns {code, events}; events as lua/lib/emit.lua describes:
--   {"already", {}}                  this event was compensated before
--   {"nothing_to_undo", {}}          the student already left that state
--   {"not_undoable", {}}             the kind cannot be undone (drop, ...)
--   {"reverted", {revert}}           undone; a seat went back to the pool
--                                    (or a waitlist place was given up)
--   {"reverted", {revert, promote}}  undone; the seat went to the waitlist head
local failed, kind, student, reason, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if kind ~= 'enroll' and kind ~= 'promote' and kind ~= 'waitlist' then
  return {'not_undoable', events}
end
if redis.call('SADD', KEYS[8], failed) == 0 then
  return {'already', events}
end
local removed
if kind == 'waitlist' then
  removed = redis.call('ZREM', KEYS[4], student)
else
  removed = redis.call('SREM', KEYS[3], student)
end
if removed == 0 then
  return {'nothing_to_undo', events}
end
redis.call('HSET', KEYS[7], student, reason)
emit('revert', student, now, 'undoes', failed, 'reason', reason)
if kind == 'waitlist' then
  return {'reverted', events}
end
local head = redis.call('ZRANGE', KEYS[4], 0, 0)[1]
if head then
  redis.call('ZREM', KEYS[4], head)
  redis.call('SADD', KEYS[3], head)
  emit('promote', head, now)
  return {'reverted', events}
end
redis.call('INCR', KEYS[2])
return {'reverted', events}
