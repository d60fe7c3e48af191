-- drop: take a student off a section's roster or waitlist. A seat freed
-- while students wait goes to the head of the waitlist in this same step, so
-- no one else can ever see it free.
--
-- KEYS[1] meta, KEYS[2] seats, KEYS[3] enrolled, KEYS[4] waitlist,
-- KEYS[5] seq, KEYS[6] outbox, KEYS[7] reverted (as in reserve.lua); a
-- student who drops no longer has an undone registration to be told about.
-- ARGV[1] student id
-- ARGV[2] now (unix ms)
--
-- Returns {code, seq, promoted}:
--   {"not_loaded"}                   section state absent: load it, then retry
--   {"not_registered"}               neither enrolled nor waitlisted
--   {"dropped", seq}                 the seat is free again
--   {"dropped", seq, promoted_id}    the seat went to the waitlist head
--   {"left_waitlist", seq}
local student, now = ARGV[1], ARGV[2]
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'not_loaded'}
end
if redis.call('SREM', KEYS[3], student) == 1 then
  redis.call('HDEL', KEYS[7], student)
  local seq = redis.call('INCR', KEYS[5])
  redis.call('XADD', KEYS[6], seq .. '-0', 'kind', 'drop', 'student', student, 'at', now)
  local head = redis.call('ZRANGE', KEYS[4], 0, 0)[1]
  if head then
    redis.call('ZREM', KEYS[4], head)
    redis.call('SADD', KEYS[3], head)
    local pseq = redis.call('INCR', KEYS[5])
    redis.call('XADD', KEYS[6], pseq .. '-0', 'kind', 'promote', 'student', head, 'at', now)
    return {'dropped', seq, head}
  end
  redis.call('INCR', KEYS[2])
  return {'dropped', seq}
end
if redis.call('ZREM', KEYS[4], student) == 1 then
  redis.call('HDEL', KEYS[7], student)
  local seq = redis.call('INCR', KEYS[5])
  redis.call('XADD', KEYS[6], seq .. '-0', 'kind', 'unwait', 'student', student, 'at', now)
  return {'left_waitlist', seq}
end
return {'not_registered'}
