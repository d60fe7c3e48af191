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
-- KEYS[8] offers (KEYS[10] of reserve.lua)
-- ARGV[1] new capacity, or "" to keep it
-- ARGV[2] new waitlist limit, or "" to keep it
-- ARGV[3] the section's new own active flag "1"/"0", or "" to keep it
-- ARGV[4] now (unix ms)
-- ARGV[5] waitlist mode "auto" | "offer", or "" to keep it
-- ARGV[6] offer lifetime (ms), or "" to keep it
--
-- Seats held by offers count as taken (lua/lib/seat.lua); new seats are
-- given as the mode says (promote or offer). Due offers lapse first.
-- Switching from offer to auto is refused while anyone waits: their places
-- were taken on the promise that a seat comes only by their registration
-- (which checks their credit limit, lua/claim.lua), and auto would enrol
-- them without one.
--
-- Returns {code, events, enrolled}; events as lua/lib/emit.lua describes:
--   {"not_loaded", {}}
--   {"waitlist_not_empty", {}, waiting}    offer to auto while students wait
--   {"below_enrolled", {}, taken}          capacity would fall below the roster
--                                          and the seats held by offers
--   {"resized", {..., config, promote...}} the config event (after any
--                                          lapses), then one promote (or
--                                          offer) per waitlisted student
--                                          given a seat
local capacity, limit, active, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local mode, ttl = ARGV[5], ARGV[6]
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'not_loaded', events}
end
local meta = redis.call('HMGET', KEYS[1], 'capacity', 'waitlist_limit', 'section_active', 'active',
  'wl_mode', 'offer_ttl', 'semester_active')
local clock = redis_ms()
local S = waitlist_settings({since = KEYS[7], offers = KEYS[8]}, meta[5], meta[6])
if S.mode == 'offer' then
  lapse_offers(S, now, clock)
end
local enrolled = redis.call('SCARD', KEYS[3])
local taken = enrolled + redis.call('HLEN', KEYS[8])
if capacity == '' then
  capacity = meta[1]
end
if tonumber(capacity) < taken then
  return {'below_enrolled', events, taken}
end
if limit == '' then
  limit = meta[2]
end
if active == '' then
  active = meta[3] or meta[4]
end
if mode == '' then
  mode = meta[5] or 'auto'
elseif mode ~= 'offer' and meta[5] == 'offer' then
  local waiting = redis.call('ZCARD', KEYS[4])
  if waiting > 0 then
    return {'waitlist_not_empty', events, waiting}
  end
end
if ttl == '' then
  ttl = meta[6] or '86400000'
end
local enforced = '0'
if active == '1' and (meta[7] or '1') == '1' then
  enforced = '1'
end
redis.call('HSET', KEYS[1], 'capacity', capacity, 'waitlist_limit', limit, 'active', enforced,
  'section_active', active, 'wl_mode', mode, 'offer_ttl', ttl)
emit('config', '', now, 'capacity', capacity, 'waitlist_limit', limit, 'active', active,
  'wl_mode', mode, 'offer_ttl', ttl)
S = waitlist_settings(S, mode, ttl)
local free = tonumber(capacity) - enrolled - redis.call('HLEN', KEYS[8])
while free > 0 and give_seat(S, now, clock) do
  free = free - 1
end
redis.call('SET', KEYS[2], free)
return {'resized', events}
