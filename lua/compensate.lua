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
-- Returns {code, seq, promoted}:
--   {"already"}                      this event was compensated before
--   {"nothing_to_undo"}              the student already left that state
--   {"not_undoable"}                 the kind cannot be undone (drop, ...)
--   {"reverted", seq}                undone; a seat went back to the pool
--   {"reverted", seq, promoted_id}   undone; the seat went to the waitlist head
local failed, kind, student, reason, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if kind ~= 'enroll' and kind ~= 'promote' and kind ~= 'waitlist' then
  return {'not_undoable'}
end
if redis.call('SADD', KEYS[8], failed) == 0 then
  return {'already'}
end
local removed
if kind == 'waitlist' then
  removed = redis.call('ZREM', KEYS[4], student)
else
  removed = redis.call('SREM', KEYS[3], student)
end
if removed == 0 then
  return {'nothing_to_undo'}
end
redis.call('HSET', KEYS[7], student, reason)
local seq = redis.call('INCR', KEYS[5])
redis.call('XADD', KEYS[6], seq .. '-0', 'kind', 'revert', 'student', student, 'at', now,
  'undoes', failed, 'reason', reason)
if kind == 'waitlist' then
  return {'reverted', seq}
end
local head = redis.call('ZRANGE', KEYS[4], 0, 0)[1]
if head then
  redis.call('ZREM', KEYS[4], head)
  redis.call('SADD', KEYS[3], head)
  local pseq = redis.call('INCR', KEYS[5])
  redis.call('XADD', KEYS[6], pseq .. '-0', 'kind', 'promote', 'student', head, 'at', now)
  return {'reverted', seq, head}
end
redis.call('INCR', KEYS[2])
return {'reverted', seq}
