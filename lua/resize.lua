-- resize: change a section's capacity, waitlist limit or active flag.
-- New seats go to the waitlist head first (one promote event each); a
-- capacity below the number enrolled is refused with nothing changed.
--
-- The active flag given here is the section's own (sections.is_active):
-- the config event carries it, so PostgreSQL records what the admin set.
-- What reserve.lua enforces (meta `active`) is that flag AND the
-- semester's (meta `semester_active`, written by load.lua): activating a
-- section of an inactive semester does not open it to registrations.
-- A state loaded before the flags were kept apart has neither field: its
-- `active` then stands for the section's flag and the semester counts as
-- active, which is what it meant then.
--
-- KEYS[1] meta, KEYS[2] seats, KEYS[3] enrolled, KEYS[4] waitlist,
-- KEYS[5] seq, KEYS[6] outbox, KEYS[7] since (KEYS[8] of reserve.lua)
-- ARGV[1] new capacity, or "" to keep it
-- ARGV[2] new waitlist limit, or "" to keep it
-- ARGV[3] the section's new own active flag "1"/"0", or "" to keep it
-- ARGV[4] now (unix ms)
--
-- Returns {code, events, enrolled}; events as lua/lib/emit.lua describes:
--   {"not_loaded", {}}
--   {"below_enrolled", {}, enrolled}       capacity would fall below the roster
--   {"resized", {config, promote...}}      the config event, then one promote
--                                          per waitlisted student given a seat
local capacity, limit, active, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'not_loaded', events}
end
local enrolled = redis.call('SCARD', KEYS[3])
if capacity == '' then
  capacity = redis.call('HGET', KEYS[1], 'capacity')
end
if tonumber(capacity) < enrolled then
  return {'below_enrolled', events, enrolled}
end
if limit == '' then
  limit = redis.call('HGET', KEYS[1], 'waitlist_limit')
end
if active == '' then
  active = redis.call('HGET', KEYS[1], 'section_active') or redis.call('HGET', KEYS[1], 'active')
end
local enforced = '0'
if active == '1' and (redis.call('HGET', KEYS[1], 'semester_active') or '1') == '1' then
  enforced = '1'
end
redis.call('HSET', KEYS[1], 'capacity', capacity, 'waitlist_limit', limit, 'active', enforced,
  'section_active', active)
emit('config', '', now, 'capacity', capacity, 'waitlist_limit', limit, 'active', active)
local free = tonumber(capacity) - enrolled
while free > 0 do
  local head = redis.call('ZRANGE', KEYS[4], 0, 0)[1]
  if not head then
    break
  end
  redis.call('ZREM', KEYS[4], head)
  redis.call('SADD', KEYS[3], head)
  redis.call('HSET', KEYS[7], head, emit('promote', head, now))
  free = free - 1
end
redis.call('SET', KEYS[2], free)
return {'resized', events}
